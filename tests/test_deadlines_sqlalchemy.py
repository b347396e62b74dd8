"""The deadline property for the SQLAlchemy engines (``dbresilience.sqlalchemy``).

An engine's timeout is its ``query_timeout`` (and ``acquire_timeout``), set at construction;
hypothesis draws it from 1 ms to ``timedelta.max``. Under one fault, one call of each kind runs
at once:

- ``execute``: ``connect()`` and a statement (then the connection goes back: a rollback);
- ``begin``: ``begin()``, a statement, a commit;
- ``commit`` and ``rollback``: a statement run *before* the fault, then, once the fault has
  begun, the commit (or the rollback of leaving a ``connect()`` block): the fault lands in
  the middle of a transaction, on the round trips that are not statements;

and the faults are those of ``test_deadlines.py``: every backend of the engine frozen
(SIGSTOP), the network frozen (a proxy), the backends frozen and the engine disposed while the
calls are in flight. Each call returns within ``min(timeout, LIFT_AFTER) + 0.25 s`` of the
moment it met the fault (plus ``connect_timeout`` for a call that had to open a connection:
the engine bounds a connect by that, not by ``query_timeout``), with a result or an error of the
library or SQLAlchemy (never a bare Python error), and the engine serves afterwards (with a
1 ms deadline a healthy ``select 1`` may itself be too slow: then one success in 50 tries is
asked).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from hypothesis import example, given
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

import dbresilience as dbr
from dbresilience import sqlalchemy as dbr_sa
from dbresilience.faults import FaultProxy, TemporaryPostgres

from .test_deadlines import (
    FAULTS,
    LIFT_AFTER,
    MARGIN,
    PROPERTY,
    TIMEOUTS,
    Fault,
    GcPauses,
    seconds_of,
)
from .test_sqlalchemy import url_of

CALLS = ("execute", "begin", "commit", "rollback")
MID_TRANSACTION = ("commit", "rollback")
ALLOWED = (dbr.DBResilienceError, sa.exc.SQLAlchemyError)
CONNECT_TIMEOUT = 2.0  # libpq's least

Timeout = float | timedelta
# (call, s, error, had to connect, monotonic start)
Outcome = tuple[str, float, BaseException | None, bool, float]


def caller() -> object:
    """Who runs now: the asyncio task, else the thread."""
    try:
        return asyncio.current_task()
    except RuntimeError:
        return threading.get_ident()


def track_connects(engine: sa.Engine) -> set[object]:
    """The callers that opened a new connection (on checkout) from now on."""
    who: set[object] = set()

    @sa.event.listens_for(engine.pool, "connect")
    def _connected(dbapi_connection: Any, record: Any) -> None:
        who.add(caller())

    return who


@pytest.fixture
def proxy(
    pg_cluster: TemporaryPostgres, make_proxy: Callable[[str, int], FaultProxy]
) -> FaultProxy:
    """A fault proxy in front of the throwaway cluster, shared by a test's examples."""
    params = psycopg.conninfo.conninfo_to_dict(pg_cluster.dsn)
    return make_proxy(str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432))


def engine_options(timeout: Timeout, app: str) -> dict[str, Any]:
    return {
        "pool_size": len(CALLS),
        "max_overflow": 0,
        "query_timeout": timeout,
        "acquire_timeout": timeout,
        "connect_timeout": CONNECT_TIMEOUT,
        "warm": 0,
        "pooler": None,
        "connect_args": {"application_name": app},
    }


def check(outcomes: list[Outcome], timeout: Timeout, fault: str, pauses: GcPauses) -> None:
    """A call that had to open a connection also has connect_timeout to do that (libpq: at
    least 2 s; the engine promises no connect within query_timeout). The time garbage
    collections stopped the process during a call is not held against it (see the pool's
    twin, tests/test_deadlines.py: a rollback once took 0.31 s against 0.251 beside two busy
    processes, the watchdog having fired on time)."""
    assert sorted(call for call, _, _, _, _ in outcomes) == sorted(CALLS)
    for call, took, error, connected, start in outcomes:
        limit = min(seconds_of(timeout), LIFT_AFTER) + MARGIN
        if connected:
            limit += CONNECT_TIMEOUT
        stopped = pauses.during(start, start + took)
        assert took - stopped < limit, (
            f"{call} took {took:.3f} s, past {limit:.3f} s ({fault}, {timeout!r}; garbage "
            f"collections stopped the process {stopped:.3f} s of it, in "
            f"{len(pauses.pauses)} collections)"
        )
        assert error is None or isinstance(error, ALLOWED), f"{call}: {error!r} ({fault})"


def tiny(timeout: Timeout) -> bool:
    return seconds_of(timeout) < 0.05


def retried(fn: Callable[[], Any]) -> Any:
    """*fn* until it succeeds: with a 1 ms deadline, the dialect's first queries on a new
    connection (server version, settings) may themselves run past it."""
    for _ in range(99):
        try:
            return fn()
        except ALLOWED:
            pass
    return fn()


async def aretried(fn: Callable[[], Any]) -> Any:
    """:func:`retried` for coroutines."""
    for _ in range(99):
        try:
            return await fn()
        except ALLOWED:
            pass
    return await fn()


# --- the sync engine --------------------------------------------------------------------------


def call_sync(
    engine: sa.Engine,
    call: str,
    began: threading.Event,
    into: list[Outcome],
    ready: Any,
    connects: set[object],
) -> None:
    start = time.monotonic()
    error: BaseException | None = None
    try:
        if call == "execute":
            with engine.connect() as conn:
                conn.exec_driver_sql("select 1")
        elif call == "begin":
            with engine.begin() as conn:
                conn.exec_driver_sql("select 1")
        else:
            with engine.connect() as conn:
                try:
                    conn.exec_driver_sql("select 1")
                finally:
                    ready.release()
                began.wait(10)
                start = time.monotonic()  # the fault meets the commit or rollback
                if call == "commit":
                    conn.commit()
    except BaseException as exc:
        error = exc
    into.append((call, time.monotonic() - start, error, caller() in connects, start))


def serves_sync(engine: sa.Engine, timeout: Timeout) -> None:
    successes = 0
    for _ in range(50 if tiny(timeout) else len(CALLS)):
        try:
            with engine.connect() as conn:
                assert conn.exec_driver_sql("select 1").scalar_one() == 1
            successes += 1
        except ALLOWED:  # the client deadline, or the server's statement_timeout (57014)
            if not tiny(timeout):
                raise
    assert successes


def scenario_sync(
    fault: str, timeout: Timeout, close_after: float, cluster: TemporaryPostgres, proxy: FaultProxy
) -> None:
    app = f"dbr_sa_deadline_{uuid.uuid4().hex[:8]}"
    dsn = proxy.dsn(cluster.dsn) if fault == "frozen proxy" else cluster.dsn
    engine = dbr_sa.create_engine(url_of(dsn), **engine_options(timeout, app))
    try:
        held = [retried(engine.connect) for _ in CALLS]  # open the connections
        for conn in held:
            conn.close()
        trouble = Fault(fault, cluster, proxy, app)
        outcomes: list[Outcome] = []
        began = threading.Event()
        ready = threading.Semaphore(0)
        connects = track_connects(engine)
        threads = {
            call: threading.Thread(
                target=call_sync, args=(engine, call, began, outcomes, ready, connects)
            )
            for call in CALLS
        }
        for call in MID_TRANSACTION:
            threads[call].start()
        for _ in MID_TRANSACTION:
            assert ready.acquire(timeout=10)
        trouble.begin()
        with trouble.lifted_after(LIFT_AFTER), GcPauses() as pauses:
            began.set()
            for call in CALLS:
                if call not in MID_TRANSACTION:
                    threads[call].start()
            if fault == "closing pool":
                time.sleep(close_after)
                engine.dispose()
            for thread in threads.values():
                thread.join(LIFT_AFTER + 5)
        check(outcomes, timeout, fault, pauses)
        serves_sync(engine, timeout)
    finally:
        engine.dispose()


# --- the asyncio engine -----------------------------------------------------------------------


async def call_async(
    engine: AsyncEngine,
    call: str,
    began: asyncio.Event,
    into: list[Outcome],
    ready: Any,
    connects: set[object],
) -> None:
    start = time.monotonic()
    error: BaseException | None = None
    try:
        if call == "execute":
            async with engine.connect() as conn:
                await conn.exec_driver_sql("select 1")
        elif call == "begin":
            async with engine.begin() as conn:
                await conn.exec_driver_sql("select 1")
        else:
            async with engine.connect() as conn:
                try:
                    await conn.exec_driver_sql("select 1")
                finally:
                    ready.release()
                await asyncio.wait_for(began.wait(), 10)
                start = time.monotonic()
                if call == "commit":
                    await conn.commit()
    except Exception as exc:
        error = exc
    into.append((call, time.monotonic() - start, error, caller() in connects, start))


async def serves_async(engine: AsyncEngine, timeout: Timeout) -> None:
    successes = 0
    for _ in range(50 if tiny(timeout) else len(CALLS)):
        try:
            async with engine.connect() as conn:
                assert (await conn.exec_driver_sql("select 1")).scalar_one() == 1
            successes += 1
        except ALLOWED:  # the client deadline, or the server's statement_timeout (57014)
            if not tiny(timeout):
                raise
    assert successes


async def scenario_async(
    fault: str, timeout: Timeout, close_after: float, cluster: TemporaryPostgres, proxy: FaultProxy
) -> None:
    app = f"dbr_sa_deadline_{uuid.uuid4().hex[:8]}"
    dsn = proxy.dsn(cluster.dsn) if fault == "frozen proxy" else cluster.dsn
    engine = dbr_sa.create_async_engine(url_of(dsn), **engine_options(timeout, app))
    try:
        held = [await aretried(engine.connect) for _ in CALLS]
        for conn in held:
            await conn.close()
        trouble = Fault(fault, cluster, proxy, app)
        outcomes: list[Outcome] = []
        began = asyncio.Event()
        ready = asyncio.Semaphore(0)
        connects = track_connects(engine.sync_engine)
        tasks = [
            asyncio.ensure_future(call_async(engine, call, began, outcomes, ready, connects))
            for call in MID_TRANSACTION
        ]
        for _ in MID_TRANSACTION:
            await asyncio.wait_for(ready.acquire(), 10)
        await asyncio.to_thread(trouble.begin)
        with trouble.lifted_after(LIFT_AFTER), GcPauses() as pauses:
            began.set()
            tasks += [
                asyncio.ensure_future(call_async(engine, call, began, outcomes, ready, connects))
                for call in CALLS
                if call not in MID_TRANSACTION
            ]
            if fault == "closing pool":
                await asyncio.sleep(close_after)
                await engine.dispose()
            await asyncio.wait_for(asyncio.gather(*tasks), LIFT_AFTER + 5)
        check(outcomes, timeout, fault, pauses)
        await serves_async(engine, timeout)
    finally:
        await engine.dispose()


# --- the property -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULTS)
@PROPERTY
@given(timeout=TIMEOUTS, close_after=st.floats(min_value=0.0, max_value=0.1))
@example(timeout=timedelta.max, close_after=0.05)
@example(timeout=0.001, close_after=0.0)
def test_engine_calls_end_by_their_deadline(
    pg_cluster: TemporaryPostgres,
    proxy: FaultProxy,
    fault: str,
    timeout: Timeout,
    close_after: float,
) -> None:
    """create_engine: under the fault, every call returns within min(timeout, lift) + 0.25 s
    with a result or a library/SQLAlchemy error, and the engine serves afterwards."""
    scenario_sync(fault, timeout, close_after, pg_cluster, proxy)


@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULTS)
@PROPERTY
@given(timeout=TIMEOUTS, close_after=st.floats(min_value=0.0, max_value=0.1))
@example(timeout=timedelta.max, close_after=0.05)
@example(timeout=0.001, close_after=0.0)
def test_async_engine_calls_end_by_their_deadline(
    pg_cluster: TemporaryPostgres,
    proxy: FaultProxy,
    fault: str,
    timeout: Timeout,
    close_after: float,
) -> None:
    """create_async_engine: the same, on the asyncio engine."""
    asyncio.run(scenario_async(fault, timeout, close_after, pg_cluster, proxy))
