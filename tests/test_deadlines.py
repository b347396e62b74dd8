"""The deadline property: every pool call that takes a timeout returns within it plus 0.25 s.

For ``Pool`` and ``AsyncPool``, ``fetchone``, ``fetchall``, ``execute``, ``transaction`` and a
``connection(timeout=)`` block run together, one of each, under one fault:

- every backend of the pool frozen (SIGSTOP);
- the network frozen (a proxy that stops forwarding, connections left open);
- the backends frozen and the pool closed while the calls are in flight.

Hypothesis draws the timeout, from 1 ms to ``timedelta.max``. The fault is lifted after
``LIFT_AFTER`` s, so a call whose timeout is longer must then finish; each returns within
``min(timeout, LIFT_AFTER) + MARGIN`` of its start, succeeding or raising a library error
(``PoolClosed`` too, once the pool is closed) and nothing else. Then the pool, reopened if it
was closed, serves every call again. Breaker and budget are off: they may refuse calls after
such a run, by design, and this is about deadlines.

Every example costs real time (up to ``LIFT_AFTER`` plus opening a pool): few examples, no
shrinking past the failing one; the whole module takes well under a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
import uuid
from collections.abc import Awaitable, Iterator
from datetime import timedelta
from typing import Any

import psycopg
import psycopg_pool
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import dbresilience as dbr
from dbresilience.faults import FaultProxy, TemporaryPostgres

MARGIN = 0.25
LIFT_AFTER = 1.0  # the fault is lifted this long after it began
CALLS = ("fetchone", "fetchall", "execute", "transaction", "connection")
FAULTS = ("frozen backend", "frozen proxy", "closing pool")

#: 1 ms to timedelta.max: short ones end at the deadline, long ones after the fault is lifted
TIMEOUTS = st.one_of(
    st.floats(min_value=0.001, max_value=1.5),
    st.floats(min_value=1.5, max_value=1e12),
    st.timedeltas(min_value=timedelta(milliseconds=1)),
)

PROPERTY = settings(
    max_examples=3,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

Timeout = float | timedelta
# (call, seconds taken, error or None, monotonic start)
Outcome = tuple[str, float, BaseException | None, float]


def seconds_of(timeout: Timeout) -> float:
    return timeout.total_seconds() if isinstance(timeout, timedelta) else timeout


class GcPauses:
    """The interpreter's garbage collections while the calls run. A full collection in the
    test process (the objects of 1,600 tests) stops every thread, the watchdog's too, for as
    long as the margin or longer; the promise is about the library's own waits, so the time
    the interpreter stood still during a call is not held against it (and is said when one is
    late)."""

    def __init__(self) -> None:
        self.pauses: list[tuple[float, float]] = []
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.monotonic()
        else:
            self.pauses.append((self._started, time.monotonic()))

    def during(self, start: float, end: float) -> float:
        """Seconds the collections stopped the process between *start* and *end*."""
        return sum(max(0.0, min(end, b) - max(start, a)) for a, b in self.pauses)

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc_info: object) -> None:
        gc.callbacks.remove(self._callback)


def check(outcomes: list[Outcome], timeout: Timeout, fault: str, pauses: GcPauses) -> None:
    """Every call returned in time, with a result or a library error."""
    limit = min(seconds_of(timeout), LIFT_AFTER) + MARGIN
    allowed: tuple[type[BaseException], ...] = (dbr.DBResilienceError,)
    if fault == "closing pool":
        allowed += (psycopg_pool.PoolClosed,)
    assert sorted(call for call, _, _, _ in outcomes) == sorted(CALLS)
    for call, took, error, start in outcomes:
        stopped = pauses.during(start, start + took)
        assert took - stopped < limit, (
            f"{call} took {took:.3f} s, past {limit:.3f} s ({fault}, {timeout!r}; garbage "
            f"collections stopped the process {stopped:.3f} s of it, in "
            f"{len(pauses.pauses)} collections)"
        )
        assert error is None or isinstance(error, allowed), f"{call}: {error!r} ({fault})"


# --- faults ----------------------------------------------------------------------------------


class Fault:
    """One fault on one pool's connections: ``begin()`` now, ``lift()`` later (idempotent)."""

    def __init__(self, kind: str, cluster: TemporaryPostgres, proxy: FaultProxy, app: str) -> None:
        self.kind, self.cluster, self.proxy, self.app = kind, cluster, proxy, app
        self.pids: list[int] = []
        self._lock = threading.Lock()
        self._lifted = False

    def begin(self) -> None:
        if self.kind == "frozen proxy":
            self.proxy.freeze()
            return
        with psycopg.connect(self.cluster.dsn, autocommit=True) as conn:
            rows = conn.execute(
                "select pid from pg_stat_activity where application_name = %s", (self.app,)
            ).fetchall()
        self.pids = [int(pid) for (pid,) in rows]
        assert self.pids
        for pid in self.pids:
            self.cluster.freeze(pid)

    def lift(self) -> None:
        with self._lock:
            if self._lifted:
                return
            self._lifted = True
        if self.kind == "frozen proxy":
            self.proxy.restore()
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                TemporaryPostgres.thaw(pid)

    @contextlib.contextmanager
    def lifted_after(self, delay: float) -> Iterator[None]:
        """Lift the fault after *delay* s, or on leaving, whichever comes first."""
        timer = threading.Timer(delay, self.lift)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
            self.lift()


def pool_options(app: str) -> dict[str, Any]:
    return {
        "min_size": len(CALLS),
        "max_size": len(CALLS),
        "breaker": None,
        "budget": None,
        "kwargs": {"application_name": app},
    }


# --- the sync twin ---------------------------------------------------------------------------


def run_sync(pool: dbr.Pool, call: str, timeout: Timeout) -> None:
    if call == "fetchone":
        assert pool.fetchone("select 1", timeout=timeout) == (1,)
    elif call == "fetchall":
        assert pool.fetchall("select 1", timeout=timeout) == [(1,)]
    elif call == "execute":
        assert pool.execute("select 1", timeout=timeout) == 1
    elif call == "transaction":
        assert pool.transaction(lambda c: c.execute("select 1").fetchone(), timeout=timeout)
    else:
        with pool.connection(timeout=timeout) as conn:
            assert conn.execute("select 1").fetchone() == (1,)


def timed_sync(pool: dbr.Pool, call: str, timeout: Timeout, into: list[Outcome]) -> None:
    start = time.monotonic()
    error: BaseException | None = None
    try:
        run_sync(pool, call, timeout)
    except BaseException as exc:
        error = exc
    into.append((call, time.monotonic() - start, error, start))


def scenario_sync(
    fault: str, timeout: Timeout, close_after: float, cluster: TemporaryPostgres, proxy: FaultProxy
) -> None:
    app = f"dbr_deadline_{uuid.uuid4().hex[:8]}"
    dsn = proxy.dsn(cluster.dsn) if fault == "frozen proxy" else cluster.dsn
    pool = dbr.Pool(dsn, **pool_options(app))
    with pool:
        trouble = Fault(fault, cluster, proxy, app)
        trouble.begin()
        outcomes: list[Outcome] = []
        with trouble.lifted_after(LIFT_AFTER), GcPauses() as pauses:
            threads = [
                threading.Thread(target=timed_sync, args=(pool, call, timeout, outcomes))
                for call in CALLS
            ]
            for thread in threads:
                thread.start()
            if fault == "closing pool":
                time.sleep(close_after)
                pool.close()
            for thread in threads:
                thread.join(LIFT_AFTER + 5)
        check(outcomes, timeout, fault, pauses)
        pool.open()  # reopens a closed pool; does nothing on an open one
        for call in CALLS:
            run_sync(pool, call, 5.0)


# --- the asyncio twin ------------------------------------------------------------------------


async def run_async(pool: dbr.AsyncPool, call: str, timeout: Timeout) -> None:
    async def one_row(conn: psycopg.AsyncConnection[Any]) -> Any:
        return await (await conn.execute("select 1")).fetchone()

    if call == "fetchone":
        assert await pool.fetchone("select 1", timeout=timeout) == (1,)
    elif call == "fetchall":
        assert await pool.fetchall("select 1", timeout=timeout) == [(1,)]
    elif call == "execute":
        assert await pool.execute("select 1", timeout=timeout) == 1
    elif call == "transaction":
        assert await pool.transaction(one_row, timeout=timeout) == (1,)
    else:
        async with pool.connection(timeout=timeout) as conn:
            assert await one_row(conn) == (1,)


async def timed_async(
    pool: dbr.AsyncPool, call: str, timeout: Timeout, into: list[Outcome]
) -> None:
    start = time.monotonic()
    error: BaseException | None = None
    try:
        await run_async(pool, call, timeout)
    except Exception as exc:
        error = exc
    into.append((call, time.monotonic() - start, error, start))


async def scenario_async(
    fault: str, timeout: Timeout, close_after: float, cluster: TemporaryPostgres, proxy: FaultProxy
) -> None:
    app = f"dbr_deadline_{uuid.uuid4().hex[:8]}"
    dsn = proxy.dsn(cluster.dsn) if fault == "frozen proxy" else cluster.dsn
    pool = dbr.AsyncPool(dsn, **pool_options(app))
    async with pool:
        trouble = Fault(fault, cluster, proxy, app)
        await asyncio.to_thread(trouble.begin)
        outcomes: list[Outcome] = []
        with trouble.lifted_after(LIFT_AFTER), GcPauses() as pauses:
            calls: list[Awaitable[None]] = [
                timed_async(pool, call, timeout, outcomes) for call in CALLS
            ]
            tasks = [asyncio.ensure_future(c) for c in calls]
            if fault == "closing pool":
                await asyncio.sleep(close_after)
                await pool.aclose()
            await asyncio.wait_for(asyncio.gather(*tasks), LIFT_AFTER + 5)
        check(outcomes, timeout, fault, pauses)
        await pool.open()
        for call in CALLS:
            await run_async(pool, call, 5.0)


# --- the property ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULTS)
@PROPERTY
@given(timeout=TIMEOUTS, close_after=st.floats(min_value=0.0, max_value=0.1))
@example(timeout=timedelta.max, close_after=0.05)
@example(timeout=0.001, close_after=0.0)
def test_pool_calls_end_by_their_deadline(
    pg_cluster: TemporaryPostgres,
    proxy: FaultProxy,
    fault: str,
    timeout: Timeout,
    close_after: float,
) -> None:
    """Pool: under the fault, every call returns within min(timeout, lift) + 0.25 s with a
    result or a library error, and the pool serves afterwards."""
    scenario_sync(fault, timeout, close_after, pg_cluster, proxy)


@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULTS)
@PROPERTY
@given(timeout=TIMEOUTS, close_after=st.floats(min_value=0.0, max_value=0.1))
@example(timeout=timedelta.max, close_after=0.05)
@example(timeout=0.001, close_after=0.0)
def test_async_pool_calls_end_by_their_deadline(
    pg_cluster: TemporaryPostgres,
    proxy: FaultProxy,
    fault: str,
    timeout: Timeout,
    close_after: float,
) -> None:
    """AsyncPool: under the fault, every call returns within min(timeout, lift) + 0.25 s with
    a result or a library error, and the pool serves afterwards."""
    asyncio.run(scenario_async(fault, timeout, close_after, pg_cluster, proxy))
