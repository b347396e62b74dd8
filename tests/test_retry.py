"""with_retry: rides out real outages, honours its deadline and the idempotency rule."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

import dbresilience as dbr
from dbresilience.faults import FaultProxy, free_port

Conn = psycopg.Connection[tuple[object, ...]]


def _restore_after(proxy: FaultProxy, seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, proxy.restore)
    timer.start()
    return timer


def test_rides_out_a_proxy_outage(pg_proxy: tuple[FaultProxy, str]) -> None:
    """A read through a proxy that is down for 0.6 s succeeds after several attempts."""
    proxy, dsn = pg_proxy
    calls = 0

    @dbr.with_retry(attempts=30, base_delay=0.05, max_delay=0.2, deadline=10)
    def read() -> object:
        nonlocal calls
        calls += 1
        with psycopg.connect(dsn, connect_timeout=2) as conn:
            row = conn.execute("select 42").fetchone()
            return row[0] if row else None

    proxy.down()
    timer = _restore_after(proxy, 0.6)
    assert read() == 42
    timer.join()
    assert calls > 1


async def test_async_rides_out_a_proxy_outage(pg_proxy: tuple[FaultProxy, str]) -> None:
    """The async twin rides out the same outage without blocking the event loop."""
    proxy, dsn = pg_proxy
    calls = 0

    @dbr.with_retry(attempts=30, base_delay=0.05, max_delay=0.2, deadline=10)
    async def read() -> object:
        nonlocal calls
        calls += 1
        async with await psycopg.AsyncConnection.connect(dsn, connect_timeout=2) as conn:
            cur = await conn.execute("select 42")
            row = await cur.fetchone()
            return row[0] if row else None

    proxy.down()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    tick_task = asyncio.create_task(ticker())
    timer = _restore_after(proxy, 0.6)
    assert await read() == 42
    tick_task.cancel()
    timer.join()
    assert calls > 1
    assert ticks > 20  # the loop kept running while we waited


def test_deadline_gives_up_and_reraises_the_last_exception_unchanged(pg_dsn: str) -> None:
    """With the server unreachable, it stops before the deadline and re-raises the last error."""
    dsn = psycopg.conninfo.make_conninfo(pg_dsn, port=str(free_port()))
    raised: list[BaseException] = []

    @dbr.with_retry(attempts=1000, base_delay=0.05, max_delay=0.1, deadline=0.5)
    def connect() -> None:
        try:
            psycopg.connect(dsn)
        except psycopg.OperationalError as exc:
            raised.append(exc)
            raise

    start = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as info:
        connect()
    elapsed = time.monotonic() - start
    assert elapsed < 0.5 + 0.5  # the promise: no sleep ends past the deadline (+ one connect)
    assert len(raised) > 1
    assert info.value is raised[-1]
    assert info.value.__context__ is None  # no attempt's failure chained onto another's
    assert dbr.classify(info.value).code == "P1001"


def test_attempts_bound_the_calls(pg_dsn: str) -> None:
    """attempts=3 means three calls at most, then the last error."""
    dsn = psycopg.conninfo.make_conninfo(pg_dsn, port=str(free_port()))
    calls = 0

    @dbr.with_retry(attempts=3, base_delay=0, max_delay=0)
    def connect() -> None:
        nonlocal calls
        calls += 1
        psycopg.connect(dsn)

    with pytest.raises(psycopg.OperationalError):
        connect()
    assert calls == 3


def _write_on_a_killed_connection(pg_dsn: str, admin: Conn, table: str) -> Callable[[], None]:
    """A write whose connection is terminated first: it fails with P1017 (commit unknown)."""

    def write() -> None:
        conn = psycopg.connect(pg_dsn, autocommit=True)
        pid = conn.execute("select pg_backend_pid()").fetchone()
        assert pid is not None
        if write.calls == 0:  # type: ignore[attr-defined]
            admin.execute("select pg_terminate_backend(%s)", (pid[0],))
            time.sleep(0.05)
        write.calls += 1  # type: ignore[attr-defined]
        try:
            conn.execute(sql.SQL("insert into {} values (1)").format(sql.Identifier(table)))
        finally:
            conn.close()

    write.calls = 0  # type: ignore[attr-defined]
    return write


def test_commit_unknown_is_not_retried_unless_idempotent(
    pg_dsn: str, pg_conn: Conn, table_name: str
) -> None:
    """A write that lost its connection is re-run only with idempotent=True."""
    pg_conn.execute(sql.SQL("create table {} (id int)").format(sql.Identifier(table_name)))

    unsafe = _write_on_a_killed_connection(pg_dsn, pg_conn, table_name)
    with pytest.raises(psycopg.OperationalError) as info:
        dbr.with_retry(base_delay=0)(unsafe)()
    assert dbr.classify(info.value).commit_unknown
    assert unsafe.calls == 1  # type: ignore[attr-defined]

    safe = _write_on_a_killed_connection(pg_dsn, pg_conn, table_name)
    dbr.with_retry(base_delay=0, idempotent=True)(safe)()
    assert safe.calls == 2  # type: ignore[attr-defined]
    count = pg_conn.execute(
        sql.SQL("select count(*) from {}").format(sql.Identifier(table_name))
    ).fetchone()
    assert count == (1,)


def test_permanent_errors_are_not_retried(pg_conn: Conn, table_name: str) -> None:
    """A unique violation is raised after one call."""
    table = sql.Identifier(table_name)
    pg_conn.execute(sql.SQL("create table {} (id int primary key)").format(table))
    pg_conn.execute(sql.SQL("insert into {} values (1)").format(table))
    calls = 0

    @dbr.with_retry
    def insert() -> None:
        nonlocal calls
        calls += 1
        pg_conn.execute(sql.SQL("insert into {} values (1)").format(table))

    with pytest.raises(psycopg.errors.UniqueViolation):
        insert()
    assert calls == 1


async def test_cancellation_is_never_retried() -> None:
    """A cancelled coroutine is not retried; the cancellation propagates at once."""
    calls = 0

    @dbr.with_retry(retry_on=lambda exc: True)
    async def slow() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(10)

    task = asyncio.create_task(slow())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls == 1


def test_keyboard_interrupt_is_never_retried() -> None:
    """KeyboardInterrupt passes straight through, even with a predicate that says yes."""
    calls = 0

    @dbr.with_retry(retry_on=lambda exc: True, base_delay=0)
    def interrupted() -> None:
        nonlocal calls
        calls += 1
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    assert calls == 1


def test_retry_on_predicate_replaces_the_classifier() -> None:
    """retry_on decides alone: a ValueError can be retried, a P1001 left alone."""
    calls = 0

    @dbr.with_retry(attempts=3, base_delay=0, retry_on=lambda e: isinstance(e, ValueError))
    def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ValueError("not yet")
        return "done"

    assert flaky() == "done"
    assert calls == 3

    refused = 0

    @dbr.with_retry(attempts=3, base_delay=0, retry_on=lambda e: False)
    def never() -> None:
        nonlocal refused
        refused += 1
        raise ConnectionRefusedError

    with pytest.raises(ConnectionRefusedError):
        never()
    assert refused == 1


def test_hooks_and_log_line(pg_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    """Each retry calls the hooks with details and logs one WARNING line with no DSN in it."""
    secret_dsn = psycopg.conninfo.make_conninfo(pg_dsn, port=str(free_port()), password="s3cret-pw")
    seen: list[dbr.RetryDetails] = []

    @dbr.with_retry(attempts=3, base_delay=0.01, max_delay=0.01, on_retry=seen.append)
    def load_user() -> None:
        psycopg.connect(secret_dsn)

    with (
        caplog.at_level(logging.WARNING, logger="dbresilience"),
        pytest.raises(psycopg.OperationalError),
    ):
        load_user()
    assert [d.attempt for d in seen] == [2, 3]
    assert all(d.attempts == 3 and d.classification.code == "P1001" for d in seen)
    assert all(0 <= d.delay <= 0.01 and d.elapsed >= 0 for d in seen)
    lines = [r.getMessage() for r in caplog.records if r.name == "dbresilience"]
    assert len(lines) == 2
    assert lines[0].startswith("retrying test_hooks_and_log_line.<locals>.load_user after P1001")
    assert "(attempt 2/3) in 0.0" in lines[0]
    assert not any("s3cret" in line or "port=" in line for line in lines)


def test_a_failing_hook_does_not_change_the_outcome() -> None:
    """A hook that raises is logged and ignored; retrying goes on."""
    calls = 0

    def bad_hook(details: dbr.RetryDetails) -> None:
        raise RuntimeError("hook bug")

    @dbr.with_retry(attempts=2, base_delay=0, on_retry=[bad_hook])
    def flaky() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionRefusedError
        return calls

    assert flaky() == 2


def test_testing_mode_removes_sleeps_and_caps_attempts() -> None:
    """Inside dbr.testing() retries do not sleep; attempts= caps them; outside nothing changes."""
    calls = 0

    @dbr.with_retry(attempts=5, base_delay=30, max_delay=30, deadline=None)
    def flaky() -> int:
        nonlocal calls
        calls += 1
        if calls < 5:
            raise ConnectionRefusedError
        return calls

    start = time.monotonic()
    with dbr.testing():
        assert flaky() == 5
    assert time.monotonic() - start < 5  # would be minutes with real sleeps
    calls = 0
    with dbr.testing(attempts=2), pytest.raises(ConnectionRefusedError):
        flaky()
    assert calls == 2


async def test_testing_mode_is_scoped_to_its_context() -> None:
    """A task outside the testing() block still sleeps: the switch is per context."""
    slept: list[float] = []

    @dbr.with_retry(
        attempts=2, base_delay=0.2, max_delay=0.2, on_retry=lambda d: slept.append(d.delay)
    )
    async def fails() -> None:
        raise ConnectionRefusedError

    async def outside() -> None:
        with pytest.raises(ConnectionRefusedError):
            await fails()

    with dbr.testing(), pytest.raises(ConnectionRefusedError):
        await fails()
    await outside()
    assert slept[0] == 0.0
    assert slept[1] >= 0.0


class Repo:
    """A class whose methods are retried."""

    def __init__(self) -> None:
        self.calls = 0

    @dbr.with_retry(attempts=2, base_delay=0)
    def get(self, key: str, *, default: int = 0) -> tuple[str, int]:
        """Return the key and the number of calls so far."""
        self.calls += 1
        if self.calls == 1:
            raise ConnectionRefusedError
        return key, self.calls

    @dbr.withRetry(attempts=2, base_delay=0)
    async def aget(self, key: str) -> str:
        """Async twin."""
        self.calls += 1
        if self.calls == 1:
            raise ConnectionRefusedError
        return key


async def test_methods_sync_and_async_keep_their_signature() -> None:
    """Methods are retried, keep their name, docstring and signature; withRetry is with_retry."""
    assert dbr.withRetry is dbr.with_retry
    repo = Repo()
    assert repo.get("a") == ("a", 2)
    arepo = Repo()
    assert await arepo.aget("b") == "b"
    assert Repo.get.__name__ == "get"
    assert Repo.get.__doc__ == "Return the key and the number of calls so far."
    params = list(inspect.signature(Repo.get).parameters)
    assert params == ["self", "key", "default"]
    assert inspect.iscoroutinefunction(Repo.aget)


def test_success_path_calls_once_and_returns_the_value() -> None:
    """A call that succeeds is made once and its value returned as is."""
    sentinel = object()
    calls = 0

    @dbr.with_retry
    def ok() -> object:
        nonlocal calls
        calls += 1
        return sentinel

    assert ok() is sentinel
    assert calls == 1


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"attempts": 0}, "attempts"),
        ({"attempts": -1}, "attempts"),
        ({"base_delay": -0.1}, "base_delay"),
        ({"max_delay": -1}, "max_delay"),
        ({"base_delay": 2, "max_delay": 1}, "max_delay"),
        ({"deadline": 0}, "deadline"),
        ({"deadline": -5}, "deadline"),
        ({"deadline": float("nan")}, "deadline"),
        ({"base_delay": float("inf")}, "base_delay"),
        ({"deadline": timedelta(seconds=-1)}, "deadline"),
    ],
)
def test_bad_arguments_fail_at_decoration_naming_the_argument(
    kwargs: dict[str, Any], name: str
) -> None:
    """Invalid configuration raises ValueError naming the argument, before any call."""
    with pytest.raises(ValueError, match=name):
        dbr.with_retry(**kwargs)


def test_wrong_types_fail_at_decoration() -> None:
    """Non-numbers, non-callables and generator functions are rejected with TypeError."""
    with pytest.raises(TypeError, match="attempts"):
        dbr.with_retry(attempts=2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="retry_on"):
        dbr.with_retry(retry_on=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="idempotent"):
        dbr.with_retry(idempotent="yes")  # type: ignore[arg-type]

    def gen() -> Any:
        yield 1

    with pytest.raises(TypeError, match="generator"):
        dbr.with_retry(gen)


def test_timedelta_durations_are_accepted() -> None:
    """Durations may be datetime.timedelta."""
    policy = dbr.with_retry(base_delay=timedelta(milliseconds=10), deadline=timedelta(seconds=2))
    assert policy.backoff.base_delay == pytest.approx(0.01)
    assert policy.deadline == 2.0
