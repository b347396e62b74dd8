"""The client side of the seeds' fix: retry 502/503/504 with backoff, honouring Retry-After.

The same ``X-Request-ID`` goes with every retry, so the service charges the request once
however many times it is sent (its writes are keyed by the request id).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Sequence

import httpx

__all__ = ["start_session"]

RETRY_STATUSES = frozenset({502, 503, 504})


async def start_session(
    client: httpx.AsyncClient,
    user_id: str,
    job_title: str = "Software Engineer",
    *,
    request_id: str | None = None,
    delays: Sequence[float] = (1.0, 2.0, 4.0),
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> httpx.Response:
    """``POST /api/realtime-session``, retried on 502/503/504 after ``Retry-After`` seconds
    (or the next of *delays*: 1 s, 2 s, 4 s as in the seeds). Returns the last response."""
    rid = request_id or f"req_{uuid.uuid4().hex[:12]}"
    headers = {"Authorization": f"Bearer {user_id}", "X-Request-ID": rid}
    response = await client.post(
        "/api/realtime-session", json={"jobTitle": job_title}, headers=headers
    )
    for delay in delays:
        if response.status_code not in RETRY_STATUSES:
            break
        wait = delay
        retry_after = response.headers.get("retry-after")
        if retry_after is not None:
            with contextlib.suppress(ValueError):  # an HTTP date: keep our own delay
                wait = max(0.0, float(retry_after))
        await sleep(wait)
        response = await client.post(
            "/api/realtime-session", json={"jobTitle": job_title}, headers=headers
        )
    return response
