"""Attacks on issue #13's promises that found defects (each test failed before its fix).

Errors scoped to the database: an ``OSError``/``TimeoutError`` raised by the caller's own
code (an SMTP or HTTP client) inside ``pool.connection()`` says nothing about the database, so
it must not retire the pool's connections (a webhook outage would otherwise reconnect every
pooled connection on every request).
"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest
import redis
import tenacity
from fastapi import FastAPI, Request

import dbresilience as dbr
from dbresilience import tenacity as dbr_tenacity
from dbresilience import web
from dbresilience.faults import FaultProxy

from .test_extras import optional_modules, run_blocked


@pytest.mark.parametrize(
    "error",
    [ConnectionResetError("webhook peer reset"), BrokenPipeError(), TimeoutError("smtp")],
    ids=type,
)
def test_a_callers_os_error_in_a_block_keeps_the_pool(pg_dsn: str, error: Exception) -> None:
    with dbr.Pool(pg_dsn, min_size=2, max_size=2) as pool:
        with pool.connection() as conn:
            pid = conn.info.backend_pid
        with pytest.raises(type(error)), pool.connection():
            raise error
        assert pool.stats()["generation"] == 0
        with pool.connection() as conn:
            assert conn.info.backend_pid == pid  # the same idle connection, not a new one


def test_a_database_disconnect_in_a_block_still_retires_the_generation(
    pg_proxy: tuple[FaultProxy, str],
) -> None:
    proxy, dsn = pg_proxy
    with dbr.Pool(dsn, min_size=2, max_size=2) as pool:

        def lost_in_a_block() -> None:
            with pool.connection() as conn:
                proxy.reset()
                time.sleep(0.05)
                conn.execute("select 1")

        with pytest.raises(psycopg.OperationalError):
            lost_in_a_block()
        assert pool.stats()["generation"] == 1
        assert pool.fetchone("select 1") == (1,)


async def test_a_callers_os_error_in_an_async_block_keeps_the_pool(pg_dsn: str) -> None:
    async with dbr.AsyncPool(pg_dsn, min_size=2, max_size=2) as pool:

        async def smtp_down_in_a_block() -> None:
            async with pool.connection():
                await asyncio.sleep(0)
                raise ConnectionRefusedError("smtp down")

        with pytest.raises(ConnectionRefusedError):
            await smtp_down_in_a_block()
        assert pool.stats()["generation"] == 0


# --- the cache: a value changed by the caller who got it ------------------------------------
#
# The memory tier handed every caller the very object it kept (the loader's own): a caller
# that changed the dict it got (``row["credits"] -= 5``) changed the cached value for every
# later hit in this process, while Redis and the other instances kept the old one.


def _poisoned(key: object) -> object:
    raise AssertionError(f"loader ran again for {key!r}")


def test_a_value_changed_by_its_caller_is_not_changed_in_memory() -> None:
    with dbr.CredentialCache(None, ttl=60, stale_ttl=60) as cache:
        row = {"credits": Decimal("10"), "tags": ["a"], "seen": (1, [2])}
        got = cache.get_or_load(1, lambda: row)
        assert got is row  # the loader's own value to its caller
        row["credits"] -= 5
        row["tags"].append("b")
        row["seen"][1].append(3)
        hit = cache.get_or_load(1, lambda: _poisoned(1))
        assert hit == {"credits": Decimal("10"), "tags": ["a"], "seen": (1, [2])}
        hit["tags"].clear()
        assert cache.get_or_load(1, lambda: _poisoned(1))["tags"] == ["a"]
        # immutable values (a tuple row of scalars) are shared as they are: nothing to copy
        frozen = (1, "x", Decimal("2.5"), (3,))
        assert cache.get_or_load(2, lambda: frozen) is frozen
        assert cache.get_or_load(2, lambda: _poisoned(2)) is frozen


def test_memory_and_redis_agree_after_a_caller_changes_its_value(
    redis_url: str,
) -> None:
    namespace = f"break13-{uuid.uuid4().hex[:8]}"
    with (
        dbr.CredentialCache(redis_url, namespace=namespace) as a,
        dbr.CredentialCache(redis_url, namespace=namespace) as b,
    ):
        got = a.get_or_load("u", lambda: {"credits": 10})
        got["credits"] = 0
        from_b = b.get_or_load("u", lambda: _poisoned("u"))  # a Redis hit
        from_b["credits"] = -1
        assert a.get_or_load("u", lambda: _poisoned("u")) == {"credits": 10}
        assert b.get_or_load("u", lambda: _poisoned("u")) == {"credits": 10}
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{namespace}:*"):
        client.delete(key)
    client.close()


async def test_callers_waiting_on_one_load_each_get_their_own_value() -> None:
    async with dbr.AsyncCredentialCache(None) as cache:
        release = asyncio.Event()

        async def slow() -> dict[str, list[int]]:
            await release.wait()
            return {"ids": [1]}

        tasks = [asyncio.create_task(cache.get_or_load("k", slow)) for _ in range(3)]
        await asyncio.sleep(0.01)
        release.set()
        first, second, third = await asyncio.gather(*tasks)
        first["ids"].append(2)
        assert second == third == {"ids": [1]}
        assert second is not third


# --- tenacity: a fallback wait that is not a number a sleep takes -----------------------------
#
# wait_retry_after promised "never more than max seconds", but passed its fallback's NaN or
# negative wait straight to tenacity, whose time.sleep raises ValueError for both.


@pytest.mark.parametrize(
    ("fallback", "expected"),
    [(math.nan, 1.0), (-5.0, 0.0), (math.inf, 60.0), (-math.inf, 0.0)],
    ids=str,
)
def test_wait_retry_after_bounds_what_its_fallback_says(fallback: float, expected: float) -> None:
    answers = iter([None, ConnectionRefusedError("database restarting"), "ok"])

    def flaky() -> str | None:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer  # retryable: waits the fallback (with_retry's backoff)
        return answer

    slept: list[float] = []
    retrying = tenacity.Retrying(
        retry=dbr_tenacity.retry_if_transient | tenacity.retry_if_result(lambda r: r is None),
        wait=dbr_tenacity.wait_retry_after(lambda state: fallback),
        stop=tenacity.stop_after_attempt(3),
        sleep=slept.append,
        reraise=True,
    )
    assert retrying(flaky) == "ok"
    assert slept == [expected, expected]  # the refusal: the fallback, as with_retry's backoff
    assert all(0.0 <= s <= 60.0 for s in slept)


# --- web: X-Request-ID sent twice -----------------------------------------------------------
#
# The middleware took the last value while the app (request.headers) reads the first: a proxy
# that appends its own id per attempt replaced the client's idempotency key, silently.


def _rid_app(**options: object) -> httpx.AsyncClient:
    app = FastAPI()

    @app.get("/rid")
    async def rid(request: Request) -> dict[str, object]:
        return {"rid": web.request_id(), "first": request.headers.get("x-request-id")}

    web.install(app, **options)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app")


async def test_a_request_id_sent_twice_with_different_values_is_not_one_of_them() -> None:
    twice = [("X-Request-ID", "client-key-1"), ("X-Request-ID", "proxy-attempt-7")]
    async with _rid_app() as client:
        response = await client.get("/rid", headers=twice)
        assert response.status_code == 400
        assert response.json()["code"] == "INVALID_REQUEST_ID"
        same = [("X-Request-ID", "client-key-1"), ("X-Request-ID", "client-key-1")]
        response = await client.get("/rid", headers=same)
        assert response.status_code == 200
        assert response.json() == {"rid": "client-key-1", "first": "client-key-1"}
        assert response.headers.get_list("x-request-id") == ["client-key-1"]
    async with _rid_app(invalid_request_id="hash") as client:
        ids = {(await client.get("/rid", headers=twice)).json()["rid"] for _ in range(2)}
        (hashed,) = ids  # the same headers, the same id
        assert hashed.startswith("sha256-")
        assert hashed != (await client.get("/rid", headers=twice[:1])).json()["rid"]


# --- extras: a write queue on a Redis stream journal without redis ----------------------------


def test_a_stream_journal_without_redis_names_the_extra_at_construction() -> None:
    out = run_blocked(
        """
        import dbresilience as dbr

        url = "redis://:secret@cache:6379/0"
        for name, queue, pool in [
            ("queue", dbr.WriteQueue, dbr.Pool),
            ("aqueue", dbr.AsyncWriteQueue, dbr.AsyncPool),
        ]:
            try:
                queue(pool("host=127.0.0.1 dbname=nowhere"), journal=url)
            except dbr.MissingExtra as exc:
                out[name] = f"{exc} [{exc.extra}]"
            except Exception as exc:
                out[name] = f"{type(exc).__name__}: {exc}"
        """,
        optional_modules(),
    )
    assert out == {
        "queue": "WriteQueue(journal='redis://...') needs redis: "
        "pip install 'dbresilience[redis]' [redis]",
        "aqueue": "AsyncWriteQueue(journal='redis://...') needs redis: "
        "pip install 'dbresilience[redis]' [redis]",
    }


# --- configuration errors: what libpq refuses only when it connects ---------------------------
#
# hostaddr=notanip went through 4.6 s of retries as an outage (P1001); a port list that does not
# match the host list failed only at the first connection.


@pytest.mark.parametrize(
    ("conninfo", "kwargs", "says"),
    [
        ("hostaddr=notanip dbname=test", None, "hostaddr"),
        ("host=127.0.0.1 hostaddr=10.0.0.300 dbname=test", None, "hostaddr"),
        ("host=127.0.0.1,127.0.0.1,127.0.0.1 port=5432,5433 dbname=test", None, "port"),
        ("host=a,b hostaddr=127.0.0.1 dbname=test", None, "hostaddr"),
        ("host=127.0.0.1 dbname=test", {"hostaddr": "localhost"}, "hostaddr"),
        ("host=a,b dbname=test", {"port": "1,2,3"}, "port"),
    ],
)
def test_a_bad_host_list_fails_at_construction(
    conninfo: str, kwargs: dict[str, object] | None, says: str
) -> None:
    with pytest.raises(ValueError, match=says):
        dbr.Pool(conninfo, kwargs=kwargs)
    with pytest.raises(ValueError, match=says):
        dbr.AsyncPool(conninfo, kwargs=kwargs)


@pytest.mark.parametrize(
    "conninfo",
    [
        "hostaddr=127.0.0.1 dbname=test",
        "hostaddr=::1 dbname=test",
        "host=a,b,c port=5432 dbname=test",
        "host=a,b port=5432,5433 hostaddr=127.0.0.1,::1 dbname=test",
        "host=a,b hostaddr=,127.0.0.1 dbname=test",
        "postgresql://a:5432,b:5433/test",
    ],
)
def test_valid_host_lists_still_construct(conninfo: str) -> None:
    dbr.Pool(conninfo)


# --- web.lifespan: resources listed in the "wrong" order --------------------------------------
#
# lifespan(queue, pool) closed the pool first (reverse order), so the queue's shutdown drain had
# no pool to write through: without a journal the pending writes were lost.


async def test_lifespan_drains_queues_before_closing_pools_whatever_the_order(
    pg_dsn: str, pg_conn: psycopg.Connection[Any], table_name: str
) -> None:
    pg_conn.execute(f"CREATE TABLE {table_name} (k int)")
    pool = dbr.AsyncPool(pg_dsn, min_size=1)
    queue = dbr.AsyncWriteQueue(pool, flush_interval=60.0, drain_timeout=5.0)
    cache = dbr.AsyncCredentialCache()
    app = FastAPI(lifespan=web.lifespan(queue, cache, pool))
    async with app.router.lifespan_context(app):
        for k in range(3):
            queue.submit(f"INSERT INTO {table_name} VALUES (%s)", (k,))
    assert pg_conn.execute(f"SELECT count(*) FROM {table_name}").fetchone() == (3,)


# --- demo safety: libpq's environment -------------------------------------------------------
#
# Without --dsn the demo connects to "host=127.0.0.1 port=N", and libpq lets PGHOSTADDR win over
# host: every demo connection (the ones that terminate backends included) went to the address
# the environment named. 127.0.0.2 refuses here; a real server there would have been broken.


def test_the_demo_ignores_a_pghostaddr_naming_another_server() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["PGHOSTADDR"] = "127.0.0.2"
    result = subprocess.run(
        [sys.executable, "-m", "dbresilience", "demo", "--profile", "short"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "127.0.0.2" not in result.stdout + result.stderr
