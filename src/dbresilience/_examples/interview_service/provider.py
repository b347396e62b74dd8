"""A local stand-in for the upstream realtime-session provider (OpenAI's, in the seeds).

``create_provider(latency=0.0, fail=None)`` returns a Starlette app answering
``POST /v1/realtime/sessions`` with a session id and a client secret. ``fail="timeout"`` makes
it sleep past any sane client timeout; ``fail="error"`` answers 500. Settings can be changed
while it runs (``app.state.latency``, ``app.state.fail``) to inject upstream faults.
"""

from __future__ import annotations

import asyncio
import secrets

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def _sessions(request: Request) -> JSONResponse:
    state = request.app.state
    if state.fail == "timeout":
        await asyncio.sleep(30)
    if state.fail == "error":
        return JSONResponse({"error": "upstream exploded"}, status_code=500)
    if state.latency:
        await asyncio.sleep(state.latency)
    body = await request.json()
    return JSONResponse(
        {
            "id": f"sess_{secrets.token_hex(8)}",
            "model": body.get("model", "gpt-4o-realtime-preview-2024-12-17"),
            "client_secret": {"value": f"ek_{secrets.token_hex(16)}"},
        }
    )


def create_provider(latency: float = 0.0, fail: str | None = None) -> Starlette:
    """The fake provider app (see the module docstring)."""
    app = Starlette(routes=[Route("/v1/realtime/sessions", _sessions, methods=["POST"])])
    app.state.latency = latency
    app.state.fail = fail
    return app
