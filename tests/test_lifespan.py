"""asyncio and FastAPI conventions, from the user's side: `web.lifespan` starts while the
database is down and drains at shutdown, `AsyncWriteQueue` awaits a coroutine `on_commit`,
and the README example never serves credits it has itself deducted."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI

import dbresilience as dbr
from dbresilience import web
from dbresilience.faults import free_port
from tests.conftest import forget_redis_keys

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture
def users(pg_conn: psycopg.Connection[Any], table_name: str) -> str:
    """A users table like the README's ``"User"``, with one user holding 10 credits."""
    pg_conn.execute(
        f'CREATE TABLE {table_name} (id text PRIMARY KEY, credits numeric, "isPremium" bool)'
    )
    pg_conn.execute(f"INSERT INTO {table_name} VALUES ('u1', 10, false)")
    return table_name


def service(pg_dsn: str, table: str, journal: Path, connect_timeout: float = 5.0) -> FastAPI:
    """The docs/web.md recipe: a pool, a cache and a queue opened by the lifespan; the queue's
    coroutine on_commit invalidates what it deducted."""
    pool = dbr.AsyncPool(
        pg_dsn, min_size=1, connect_timeout=connect_timeout, acquire_timeout=connect_timeout
    )
    cache = dbr.AsyncCredentialCache(ttl=60.0)
    deduct = f"UPDATE {table} SET credits = credits - 1 WHERE id = %s"

    async def forget(batch: list[dbr.Record]) -> None:
        await cache.invalidate(*{r.params[0] for r in batch})

    queue = dbr.AsyncWriteQueue(pool, journal=str(journal), on_commit=forget)
    app = web.install(FastAPI(lifespan=web.lifespan(pool, cache, queue)))
    app.state.queue = queue

    @app.post("/spend/{user}")
    async def spend(user: str) -> dict[str, float]:
        row = await cache.get_or_load(
            user,
            lambda: pool.fetchone(f"SELECT credits::float8 FROM {table} WHERE id = %s", (user,)),
        )
        assert row is not None
        queue.submit(deduct, (user,), key=f"{web.request_id()}:deduct")
        return {"credits": row[0]}

    return app


async def _post(app: FastAPI, path: str, rid: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        return await client.post(path, headers={"X-Request-ID": rid})


async def test_lifespan_starts_while_the_database_is_down(pg_dsn: str, tmp_path: Path) -> None:
    """With nothing listening on the pool's port, start-up does not wait for it (the old way,
    ``await pool.open()``, raised after connect_timeout) and requests are answered 503 P1001
    within the pool's timeouts (1 s here; the first call of a pool that never connected waits
    its acquire_timeout); shutdown is immediate."""
    down = psycopg.conninfo.make_conninfo(pg_dsn, port=str(free_port()))
    app = service(down, "nowhere", tmp_path / "j", connect_timeout=1.0)
    start = time.monotonic()
    async with app.router.lifespan_context(app):
        assert time.monotonic() - start < 0.5
        for n in range(2):
            asked = time.monotonic()
            response = await _post(app, "/spend/u1", f"r-{n}")
            assert (response.status_code, response.json()["code"]) == (503, "P1001")
            assert time.monotonic() - asked < 1.0 + 0.5
        closing = time.monotonic()
    assert time.monotonic() - closing < 0.5


async def test_lifespan_drains_and_on_commit_coroutine_invalidates(
    pg_dsn: str, pg_conn: psycopg.Connection[Any], users: str, tmp_path: Path
) -> None:
    """Each request deducts through the queue; the awaited on_commit coroutine invalidates the
    cache, so the next request sees the new credits; shutdown drains the last deduction."""
    app = service(pg_dsn, users, tmp_path / "j")
    async with app.router.lifespan_context(app):
        seen = []
        for n in range(3):
            seen.append((await _post(app, "/spend/u1", f"req-{n}")).json()["credits"])
            assert await app.state.queue.flush(5.0)  # on_commit has run when this returns
        assert seen == [10.0, 9.0, 8.0]
        await _post(app, "/spend/u1", "req-last")  # left for the shutdown to drain
    assert pg_conn.execute(f"SELECT credits FROM {users}").fetchone() == (6,)


def test_lifespan_refuses_what_it_cannot_open() -> None:
    """A resource it does not know is a TypeError when the lifespan is built, naming it."""
    with pytest.raises(TypeError, match=r"resources\[0\].*str"):
        web.lifespan("postgresql://db/app")


def _readme_example() -> str:
    text = README.read_text()
    block = re.search(r"## Example\n\n```python\n(.*?)```", text, re.S)
    assert block is not None
    return block.group(1)


def test_readme_example_serves_the_credits_it_deducted(
    pg_dsn: str, redis_url: str, users: str, tmp_path: Path
) -> None:
    """The README example, run as written (its DSN, Redis URL, journal and table swapped for
    the test's): after its own deduction commits, the next call shows the new credits."""
    code = _readme_example()
    for old, new in (
        ("host=db.internal dbname=app user=app", pg_dsn),
        ("redis://cache:6379/0", redis_url),
        ("/var/lib/app/writes.journal", str(tmp_path / "writes.journal")),
        ('"User"', users),
    ):
        assert old in code, old
        code = code.replace(old, new)
    setup, _, _ = code.partition("with pool, queue:")
    scope: dict[str, Any] = {}
    exec(compile(setup, "README.md", "exec"), scope)  # noqa: S102 - the README's own code
    pool, queue, cache, start_session = (
        scope[n] for n in ("pool", "queue", "cache", "start_session")
    )
    uid = users  # the table's name is unique: so is this user id, in the shared Redis too
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"INSERT INTO {users} VALUES (%s, 10, false)", (uid,))
    try:
        with pool, queue, cache:
            rid = uuid.uuid4().hex
            assert start_session(uid, f"{rid}-1")[1]["user"][1] == 10.0
            assert queue.flush(5.0)
            assert start_session(uid, f"{rid}-2")[1]["user"][1] == 9.0
    finally:
        # the cache's entry and its version key stay a day otherwise (tests clean up)
        forget_redis_keys(redis_url, f"*{uid}*")
