"""The interview service end to end (httpx ASGI transport) on real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import psycopg
import pytest
from starlette.applications import Starlette

from dbresilience._examples.interview_service import (
    Settings,
    apply_schema,
    create_app,
    create_provider,
    start_session,
)
from dbresilience.faults import TemporaryPostgres
from tests.conftest import forget_redis_keys

_seeded: list[str] = []  # the user-id prefixes this test seeded


@pytest.fixture(autouse=True)
def _forget_cached_users(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test that used the shared Redis, delete the credentials the service cached
    there for the users it seeded (they would stay a day)."""
    _seeded.clear()
    yield
    if "redis_url" in request.fixturenames and _seeded:
        url = request.getfixturevalue("redis_url")
        forget_redis_keys(url, *(f"credentials:*{prefix}*" for prefix in _seeded))
    _seeded.clear()


def seed_users(dsn: str) -> str:
    """Fresh users: ``{p}rich`` (5 credits), ``{p}broke`` (0), ``{p}vip`` (premium, 0)."""
    prefix = f"u{uuid.uuid4().hex[:8]}-"
    _seeded.append(prefix)
    apply_schema(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name, credits, premium in (("rich", 5, False), ("broke", 0, False), ("vip", 0, True)):
            conn.execute(
                'INSERT INTO "User" (id, credits, "isPremium") VALUES (%s, %s, %s)',
                (prefix + name, credits, premium),
            )
    return prefix


def scalar(dsn: str, query: str, params: tuple[object, ...]) -> object:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    return row[0] if row else None


@contextlib.asynccontextmanager
async def serve(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and give a client that talks to it in-process."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            yield client


def make_app(
    dsn: str, redis_url: str | None, provider: Starlette, timeout: float = 5.0
) -> Starlette:
    return create_app(
        Settings(
            dsn=dsn,
            redis_url=redis_url,
            provider_url="http://provider",
            provider_transport=httpx.ASGITransport(app=provider),
            provider_timeout=timeout,
            pool_options={"min_size": 1, "max_size": 4, "connect_timeout": 2.0},
        )
    )


async def wait_for(condition: object, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    pytest.fail("condition not met")


async def test_a_session_is_created_and_charged_once(
    pg_cluster: TemporaryPostgres, redis_url: str
) -> None:
    """200 with a session; the deduction, the session row and the usage event land once."""
    p = seed_users(pg_cluster.dsn)
    app = make_app(pg_cluster.dsn, redis_url, create_provider())
    async with serve(app) as client:
        response = await client.post(
            "/api/realtime-session",
            json={"jobTitle": "Data Engineer"},
            headers={"Authorization": f"Bearer {p}rich", "X-Request-ID": "req-happy-1"},
        )
        assert response.status_code == 200
        assert response.headers["x-request-id"] == "req-happy-1"
        body = response.json()
        assert body["sessionId"].startswith("sess_")
        queue = app.state.service["queue"]
        assert await queue.flush(timeout=10)
    dsn = pg_cluster.dsn
    assert scalar(dsn, 'SELECT credits::int FROM "User" WHERE id = %s', (p + "rich",)) == 4
    assert (
        scalar(dsn, 'SELECT count(*) FROM "CreditLedger" WHERE "requestId" = %s', ("req-happy-1",))
        == 1
    )
    assert (
        scalar(dsn, 'SELECT count(*) FROM "UsageEvent" WHERE "requestId" = %s', ("req-happy-1",))
        == 1
    )
    assert (
        scalar(
            dsn,
            'SELECT "jobTitle" FROM "InterviewSession" WHERE "requestId" = %s',
            ("req-happy-1",),
        )
        == "Data Engineer"
    )


async def test_out_of_credits_unknown_user_and_no_auth(pg_cluster: TemporaryPostgres) -> None:
    """402 when out of credits and not premium (premium passes), 404 unknown, 401 no token."""
    p = seed_users(pg_cluster.dsn)
    async with serve(make_app(pg_cluster.dsn, None, create_provider())) as client:
        broke = await client.post(
            "/api/realtime-session", headers={"Authorization": f"Bearer {p}broke"}
        )
        vip = await client.post(
            "/api/realtime-session", headers={"Authorization": f"Bearer {p}vip"}
        )
        ghost = await client.post(
            "/api/realtime-session", headers={"Authorization": "Bearer nobody"}
        )
        anonymous = await client.post("/api/realtime-session")
    assert broke.status_code == 402
    assert broke.json()["code"] == "INSUFFICIENT_CREDITS"
    assert vip.status_code == 200
    assert ghost.status_code == 404
    assert anonymous.status_code == 401


async def test_database_down_answers_503_with_retry_after_then_recovers(
    pg_cluster: TemporaryPostgres,
) -> None:
    """With the database stopped: 503, Retry-After, a code and the request id; back: 200."""
    p = seed_users(pg_cluster.dsn)
    async with serve(make_app(pg_cluster.dsn, None, create_provider())) as client:
        await asyncio.to_thread(pg_cluster.stop, "fast")
        down = await client.post(
            "/api/realtime-session",
            headers={"Authorization": f"Bearer {p}rich", "X-Request-ID": "req-down-1"},
        )
        assert down.status_code == 503
        assert int(down.headers["retry-after"]) >= 1
        body = down.json()
        assert body["code"] in {"P1001", "P1017", "P2024"}
        assert body["request_id"] == "req-down-1"
        assert "127.0.0.1" not in body["message"]  # fixed texts, no internals
        await asyncio.to_thread(pg_cluster.start)
        for _ in range(100):
            back = await client.post(
                "/api/realtime-session", headers={"Authorization": f"Bearer {p}rich"}
            )
            if back.status_code == 200:
                break
            await asyncio.sleep(0.05)
        assert back.status_code == 200


async def test_client_retries_are_charged_once(
    pg_cluster: TemporaryPostgres, redis_url: str
) -> None:
    """A client that gets a 503, waits Retry-After and retries with the same request id,
    then sends it again: credits are deducted exactly once for that request id."""
    p = seed_users(pg_cluster.dsn)
    app = make_app(pg_cluster.dsn, redis_url, create_provider())
    async with serve(app) as client:
        await asyncio.to_thread(pg_cluster.stop, "fast")

        async def restart_then_wait(seconds: float) -> None:
            await asyncio.to_thread(pg_cluster.start)
            await asyncio.sleep(min(seconds, 0.5))

        first = await start_session(
            client, p + "rich", request_id="req-retry-1", sleep=restart_then_wait
        )
        assert first.status_code == 200
        again = await start_session(client, p + "rich", request_id="req-retry-1")
        assert again.status_code == 200
        assert await app.state.service["queue"].flush(timeout=15)
    dsn = pg_cluster.dsn
    assert (
        scalar(dsn, 'SELECT count(*) FROM "CreditLedger" WHERE "requestId" = %s', ("req-retry-1",))
        == 1
    )
    assert scalar(dsn, 'SELECT credits::int FROM "User" WHERE id = %s', (p + "rich",)) == 4
    assert (
        scalar(dsn, 'SELECT count(*) FROM "UsageEvent" WHERE "requestId" = %s', ("req-retry-1",))
        == 1
    )


async def test_cached_credits_are_refreshed_after_the_deduction_commits(
    pg_cluster: TemporaryPostgres, redis_url: str
) -> None:
    """The deduction's commit invalidates the cached credits: a user with 1 credit gets 402
    on the next request, not a free session from a stale cache."""
    p = seed_users(pg_cluster.dsn)
    with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
        conn.execute('UPDATE "User" SET credits = 1 WHERE id = %s', (p + "rich",))
    app = make_app(pg_cluster.dsn, redis_url, create_provider())
    async with serve(app) as client:
        headers = {"Authorization": f"Bearer {p}rich"}
        assert (await client.post("/api/realtime-session", headers=headers)).status_code == 200
        assert await app.state.service["queue"].flush(timeout=10)
        cache = app.state.service["cache"]
        await wait_for(lambda: cache._lookup(p + "rich") is None)
        assert (await client.post("/api/realtime-session", headers=headers)).status_code == 402


async def test_upstream_timeout_is_504_and_upstream_error_502(
    pg_cluster: TemporaryPostgres,
) -> None:
    """The provider hanging past its timeout answers 504; the provider failing answers 502."""
    p = seed_users(pg_cluster.dsn)
    provider = create_provider()
    app = make_app(pg_cluster.dsn, None, provider, timeout=0.3)
    async with serve(app) as client:
        headers = {"Authorization": f"Bearer {p}rich"}
        provider.state.fail = "timeout"
        slow = await client.post("/api/realtime-session", headers=headers)
        provider.state.fail = "error"
        broken = await client.post("/api/realtime-session", headers=headers)
    assert (slow.status_code, slow.json()["code"]) == (504, "UPSTREAM_TIMEOUT")
    assert (broken.status_code, broken.json()["code"]) == (502, "UPSTREAM_ERROR")
