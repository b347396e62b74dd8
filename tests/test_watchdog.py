"""The watchdog: it never dies, never outlives a call it watches too early, and never shuts down
a socket that is not the connection's; the pools' clean-up (rollback, close) stays within the
call's deadline.

The pool tests come in pairs, ``Pool`` then ``AsyncPool``, with the same steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import psycopg
import psycopg_pool
import pytest

import dbresilience as dbr
from dbresilience._watchdog import Watchdog
from dbresilience.faults import TemporaryPostgres

MARGIN = 0.25  # what "within its deadline plus a small margin" means in these tests
SAFETY_THAW = 4.0  # a frozen backend is thawed after this long whatever happens: no test hangs


# --- helpers ---------------------------------------------------------------------------------


@contextlib.contextmanager
def watchdog() -> Iterator[Watchdog]:
    dog = Watchdog("test")
    dog.start()
    try:
        yield dog
    finally:
        dog.stop()


def shut_within(sock: socket.socket, limit: float) -> float:
    """Seconds until *sock* reads end-of-stream (its peer was shut down), at most *limit*."""
    start = time.monotonic()
    sock.settimeout(limit)
    try:
        assert sock.recv(1) == b""
    except TimeoutError:
        pytest.fail(f"the socket was not shut down within {limit:.2f} s")
    return time.monotonic() - start


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@contextlib.contextmanager
def frozen(cluster: TemporaryPostgres, pid: int) -> Iterator[None]:
    """SIGSTOP *pid* now; SIGCONT after ``SAFETY_THAW`` s at the latest (or on leaving)."""
    cluster.freeze(pid)
    timer = threading.Timer(SAFETY_THAW, _thaw, (pid,))
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        _thaw(pid)


@pytest.fixture
def freeze(pg_cluster: TemporaryPostgres) -> Iterator[Callable[[int], None]]:
    """``freeze(pid)``: SIGSTOP a backend, SIGCONT it after ``SAFETY_THAW`` s at the latest (and
    after the test), so that a call the library fails to bound fails the test, not hangs it."""
    timers: list[threading.Timer] = []

    def freeze_pid(pid: int) -> None:
        pg_cluster.freeze(pid)
        timer = threading.Timer(SAFETY_THAW, _thaw, (pid,))
        timer.daemon = True
        timer.start()
        timers.append(timer)

    yield freeze_pid
    for timer in timers:
        timer.cancel()
        _thaw(timer.args[0])  # type: ignore[index]


def _thaw(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        TemporaryPostgres.thaw(pid)


def backend_pids(cluster: TemporaryPostgres, application_name: str) -> list[int]:
    with psycopg.connect(cluster.dsn, autocommit=True) as conn:
        rows = conn.execute(
            "select pid from pg_stat_activity where application_name = %s", (application_name,)
        ).fetchall()
    return [int(pid) for (pid,) in rows]


def terminate(cluster: TemporaryPostgres, pid: int) -> None:
    with psycopg.connect(cluster.dsn, autocommit=True) as conn:
        conn.execute("select pg_terminate_backend(%s)", (pid,))


def reused_fd_socket(fd: int) -> tuple[socket.socket, socket.socket]:
    """A connected socket pair whose first socket has descriptor number *fd* (now free)."""
    pairs = []
    try:
        for _ in range(64):
            a, b = socket.socketpair()
            if a.fileno() == fd:
                return a, b
            pairs.append((a, b))
        pytest.fail(f"descriptor {fd} was not reused")
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def assert_works(a: socket.socket, b: socket.socket) -> None:
    """Both ways of the pair still carry data."""
    a.settimeout(2)
    b.settimeout(2)
    a.sendall(b"ping")
    assert b.recv(4) == b"ping"
    b.sendall(b"pong")
    assert a.recv(4) == b"pong"


# --- the watchdog itself (#11, #13, #14) ----------------------------------------------------


@pytest.mark.parametrize(
    "far", [math.inf, math.nan, 1e300, 1e10, timedelta.max.total_seconds()], ids=repr
)
def test_a_deadline_far_away_or_not_a_number_does_not_stop_the_watchdog(far: float) -> None:
    """An entry whose deadline is infinite, NaN or centuries away leaves the thread running:
    a near deadline watched after it still fires on time."""
    with watchdog() as dog, contextlib.ExitStack() as stack:
        a, b = socket.socketpair()
        c, d = socket.socketpair()
        for sock in (a, b, c, d):
            stack.enter_context(sock)
        far_entry = dog.watch(a.fileno(), time.monotonic() + far)
        time.sleep(0.05)  # the thread now sleeps towards that entry (or has choked on it)
        near = dog.watch(c.fileno(), time.monotonic() + 0.2)
        assert shut_within(d, 0.2 + MARGIN + 0.5) < 0.2 + MARGIN
        assert dog.done(near)
        # a deadline that is not a number has passed (fail safe); one far away has not
        assert dog.done(far_entry) is math.isnan(far)


def test_an_error_in_the_loop_does_not_stop_the_watchdog(caplog: pytest.LogCaptureFixture) -> None:
    """A log handler that raises, and an entry on a descriptor that is not a socket: the next
    deadline still fires."""

    class Exploding(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            raise RuntimeError("a broken log filter")

    logger = logging.getLogger("dbresilience")
    bad = Exploding()
    logger.addFilter(bad)
    read_end, write_end = os.pipe()
    try:
        with watchdog() as dog, contextlib.ExitStack() as stack:
            a, b = socket.socketpair()
            c, d = socket.socketpair()
            for sock in (a, b, c, d):
                stack.enter_context(sock)
            dog.watch(read_end, time.monotonic())  # not a socket
            first = dog.watch(a.fileno(), time.monotonic() + 0.05)
            shut_within(b, 1.0)  # fired, then the warning's filter raised
            logger.removeFilter(bad)
            second = dog.watch(c.fileno(), time.monotonic() + 0.1)
            assert shut_within(d, 0.1 + MARGIN + 0.5) < 0.1 + MARGIN
            assert dog.done(first)
            assert dog.done(second)
    finally:
        logger.removeFilter(bad)
        os.close(read_end)
        os.close(write_end)


def test_a_reused_descriptor_is_never_shut_down() -> None:
    """The watched socket is closed (as libpq does when the server hangs up) and its number
    reused by another socket: the deadline passing leaves the newcomer alone."""
    with watchdog() as dog:
        a, b = socket.socketpair()
        fd = a.fileno()
        entry = dog.watch(fd, time.monotonic() + 0.2)
        a.close()
        c, d = reused_fd_socket(fd)
        with b, c, d:
            time.sleep(0.2 + MARGIN)
            assert_works(c, d)
            dog.done(entry)
            assert_works(c, d)


def test_stop_lets_watched_calls_reach_their_deadline() -> None:
    """stop() with an entry live: the entry still fires on time, an entry added afterwards
    too, and the thread ends once nothing is watched."""
    dog = Watchdog("test")
    dog.start()
    with contextlib.ExitStack() as stack:
        a, b = socket.socketpair()
        c, d = socket.socketpair()
        for sock in (a, b, c, d):
            stack.enter_context(sock)
        entry = dog.watch(a.fileno(), time.monotonic() + 0.3)
        dog.stop()
        late = dog.watch(c.fileno(), time.monotonic() + 0.1)
        assert shut_within(d, 1.0) < 0.1 + MARGIN
        assert shut_within(b, 1.0) < 0.3 + MARGIN
        assert dog.done(entry)
        assert dog.done(late)
    deadline = time.monotonic() + 3
    while any(t.name == "dbr-watchdog-test" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the stopped watchdog's thread did not end"
        time.sleep(0.01)


def test_watching_keeps_no_descriptor() -> None:
    """Entries finished by their owner and entries that fired leave no descriptor open, and
    done() twice is harmless."""
    with watchdog() as dog:
        a, b = socket.socketpair()
        with a, b:
            before = open_fds()
            for _ in range(200):
                entry = dog.watch(a.fileno(), time.monotonic() + 60)
                assert not dog.done(entry)
                assert not dog.done(entry)
            assert open_fds() == before
            entry = dog.watch(a.fileno(), time.monotonic())
            shut_within(b, 1.0)
            time.sleep(0.05)
            assert dog.done(entry)
            assert dog.done(entry)
            assert open_fds() == before


# --- #11: a huge timeout, then a frozen backend ---------------------------------------------


def test_huge_timeouts_then_a_frozen_backend_ends_at_its_deadline(
    pg_cluster: TemporaryPostgres,
) -> None:
    """Calls with timedelta.max and 1e10 s, then a frozen backend: a 0.5 s call ends by 0.75 s."""
    with dbr.Pool(pg_cluster.dsn, min_size=1, max_size=1, breaker=None) as pool:
        assert pool.fetchone("select 1", timeout=timedelta.max) == (1,)
        assert pool.fetchone("select 1", timeout=1e10) == (1,)
        with pool.connection(timeout=timedelta.max) as conn:
            pid = conn.info.backend_pid
        with frozen(pg_cluster, pid):
            start = time.monotonic()
            with pytest.raises(dbr.QueryTimeout):
                pool.fetchone("select 1", timeout=0.5)
            assert time.monotonic() - start < 0.5 + MARGIN
        assert pool.fetchone("select 1", timeout=5) == (1,)


async def test_huge_timeouts_then_a_frozen_backend_ends_at_its_deadline_async(
    pg_cluster: TemporaryPostgres,
) -> None:
    """Calls with timedelta.max and 1e10 s, then a frozen backend: a 0.5 s call ends by 0.75 s."""
    async with dbr.AsyncPool(pg_cluster.dsn, min_size=1, max_size=1, breaker=None) as pool:
        assert await pool.fetchone("select 1", timeout=timedelta.max) == (1,)
        assert await pool.fetchone("select 1", timeout=1e10) == (1,)
        async with pool.connection(timeout=timedelta.max) as conn:
            pid = conn.info.backend_pid
        with frozen(pg_cluster, pid):
            start = time.monotonic()
            with pytest.raises(dbr.QueryTimeout):
                await pool.fetchone("select 1", timeout=0.5)
            assert time.monotonic() - start < 0.5 + MARGIN
        assert await pool.fetchone("select 1", timeout=5) == (1,)


# --- #12: the rollback after the caller's work is bounded ------------------------------------


class AppError(Exception):
    """An application's own exception, not the database's."""


def test_rollback_after_an_app_error_in_a_transaction_is_bounded(
    pg_cluster: TemporaryPostgres, freeze: Callable[[int], None]
) -> None:
    """fn raises its own error after its backend froze: the rollback cannot hang the call past
    its deadline, and the connection is closed, never reused."""
    with dbr.Pool(pg_cluster.dsn, min_size=1, max_size=1, breaker=None) as pool:
        pids: list[int] = []

        def work(conn: psycopg.Connection[Any]) -> None:
            pids.append(conn.info.backend_pid)
            conn.execute("select 1")
            freeze(pids[0])
            raise AppError

        start = time.monotonic()
        try:
            with pytest.raises(AppError):
                pool.transaction(work, timeout=1.0)
            assert time.monotonic() - start < 1.0 + MARGIN
        finally:
            _thaw(pids[0])
        with pool.connection() as conn:
            assert conn.info.backend_pid != pids[0]


async def test_rollback_after_an_app_error_in_a_transaction_is_bounded_async(
    pg_cluster: TemporaryPostgres, freeze: Callable[[int], None]
) -> None:
    """fn raises its own error after its backend froze: the rollback cannot hang the call past
    its deadline, and the connection is closed, never reused."""
    async with dbr.AsyncPool(pg_cluster.dsn, min_size=1, max_size=1, breaker=None) as pool:
        pids: list[int] = []

        async def work(conn: psycopg.AsyncConnection[Any]) -> None:
            pids.append(conn.info.backend_pid)
            await conn.execute("select 1")
            freeze(pids[0])
            raise AppError

        start = time.monotonic()
        try:
            with pytest.raises(AppError):
                await pool.transaction(work, timeout=1.0)
            assert time.monotonic() - start < 1.0 + MARGIN
        finally:
            _thaw(pids[0])
        async with pool.connection() as conn:
            assert conn.info.backend_pid != pids[0]


@pytest.mark.parametrize("timeout", [0.5, None])
def test_rollback_of_a_connection_block_left_in_a_transaction_is_bounded(
    pg_cluster: TemporaryPostgres, freeze: Callable[[int], None], timeout: float | None
) -> None:
    """A block that left a transaction open on a backend that then froze: leaving it takes
    at most its timeout (1 s without one) plus a margin; the connection is never reused."""
    with dbr.Pool(pg_cluster.dsn, min_size=1, max_size=1, breaker=None) as pool:
        start = time.monotonic()
        with pool.connection(timeout=timeout) as conn:
            pid = conn.info.backend_pid
            conn.execute("begin")
            conn.execute("select 1")
            freeze(pid)
        try:
            assert time.monotonic() - start < (timeout or 1.0) + MARGIN
        finally:
            _thaw(pid)
        with pool.connection() as conn:
            assert conn.info.backend_pid != pid


@pytest.mark.parametrize("timeout", [0.5, None])
async def test_rollback_of_a_connection_block_left_in_a_transaction_is_bounded_async(
    pg_cluster: TemporaryPostgres, freeze: Callable[[int], None], timeout: float | None
) -> None:
    """A block that left a transaction open on a backend that then froze: leaving it takes
    at most its timeout (1 s without one) plus a margin; the connection is never reused."""
    async with dbr.AsyncPool(pg_cluster.dsn, min_size=1, max_size=1, breaker=None) as pool:
        start = time.monotonic()
        async with pool.connection(timeout=timeout) as conn:
            pid = conn.info.backend_pid
            await conn.execute("begin")
            await conn.execute("select 1")
            freeze(pid)
        try:
            assert time.monotonic() - start < (timeout or 1.0) + MARGIN
        finally:
            _thaw(pid)
        async with pool.connection() as conn:
            assert conn.info.backend_pid != pid


# --- #13: closing the pool with calls in flight ---------------------------------------------


@pytest.mark.parametrize("reopen", [False, True], ids=["close", "close-and-reopen"])
def test_close_with_a_call_in_flight_lets_it_end_by_its_deadline(
    pg_cluster: TemporaryPostgres, reopen: bool
) -> None:
    """close() (and open() again) while a call waits on a frozen backend: the call ends at its
    own deadline with QueryTimeout, and the pool, opened again, serves."""
    name = f"dbr_close_{os.getpid()}_{reopen}"
    pool = dbr.Pool(
        pg_cluster.dsn, min_size=1, max_size=1, breaker=None, kwargs={"application_name": name}
    )
    with pool:
        (pid,) = backend_pids(pg_cluster, name)
        outcome: list[BaseException | float] = []

        def call() -> None:
            start = time.monotonic()
            try:
                pool.fetchone("select 1", timeout=1.0)
            except BaseException as exc:
                outcome.append(exc)
            outcome.append(time.monotonic() - start)

        with frozen(pg_cluster, pid):
            caller = threading.Thread(target=call)
            caller.start()
            deadline = time.monotonic() + 5
            while pool.stats()["idle"] != 0:  # min=max=1: the call holds the connection
                assert time.monotonic() < deadline
                time.sleep(0.005)
            time.sleep(0.05)  # and is waiting on the frozen backend
            pool.close()
            if reopen:
                pool.open()
            caller.join(SAFETY_THAW + 2)
        error, elapsed = outcome
        assert isinstance(error, dbr.QueryTimeout), repr(error)
        assert isinstance(elapsed, float)
        assert elapsed < 1.0 + MARGIN
        pool.open()
        assert pool.fetchone("select 1", timeout=5) == (1,)


@pytest.mark.parametrize("reopen", [False, True], ids=["close", "close-and-reopen"])
async def test_close_with_a_call_in_flight_lets_it_end_by_its_deadline_async(
    pg_cluster: TemporaryPostgres, reopen: bool
) -> None:
    """close() (and open() again) while a call waits on a frozen backend: the call ends at its
    own deadline with QueryTimeout, and the pool, opened again, serves."""
    name = f"dbr_close_{os.getpid()}_{reopen}_async"
    pool = dbr.AsyncPool(
        pg_cluster.dsn, min_size=1, max_size=1, breaker=None, kwargs={"application_name": name}
    )
    async with pool:
        (pid,) = backend_pids(pg_cluster, name)

        async def call() -> float:
            start = time.monotonic()
            with pytest.raises(dbr.QueryTimeout):
                await pool.fetchone("select 1", timeout=1.0)
            return time.monotonic() - start

        with frozen(pg_cluster, pid):
            caller = asyncio.ensure_future(call())
            await asyncio.sleep(0.2)
            await pool.aclose()
            if reopen:
                await pool.open()
            elapsed = await asyncio.wait_for(caller, SAFETY_THAW + 2)
        assert elapsed < 1.0 + MARGIN
        await pool.open()
        assert await pool.fetchone("select 1", timeout=5) == (1,)


def test_a_call_on_a_closed_pool_fails_at_once_with_pool_closed(pg_dsn: str) -> None:
    """After close(), a call fails at once (psycopg_pool.PoolClosed), never with ValueError."""
    pool = dbr.Pool(pg_dsn, min_size=1, max_size=1)
    pool.open()
    pool.close()
    start = time.monotonic()
    with pytest.raises(psycopg_pool.PoolClosed):
        pool.fetchone("select 1", timeout=timedelta.max)
    assert time.monotonic() - start < MARGIN


# --- #14: a descriptor libpq closed and another socket reused --------------------------------


def test_a_dead_connections_descriptor_reused_in_the_block_is_left_alone(
    pg_cluster: TemporaryPostgres,
) -> None:
    """The server hangs up inside a connection(timeout=) block (libpq closes the socket), the
    block opens another socket on the same descriptor number: the block's deadline passing
    does not shut that socket down."""
    with dbr.Pool(pg_cluster.dsn, min_size=1, max_size=1, breaker=None) as pool:
        with pool.connection(timeout=0.3) as conn:
            fd = conn.pgconn.socket
            terminate(pg_cluster, conn.info.backend_pid)
            with pytest.raises(psycopg.OperationalError):
                conn.execute("select 1")
            a, b = reused_fd_socket(fd)
            with a, b:
                time.sleep(0.3 + MARGIN)
                assert_works(a, b)
        assert pool.fetchone("select 1", timeout=5) == (1,)


async def test_a_dead_connections_descriptor_reused_in_the_block_is_left_alone_async(
    pg_cluster: TemporaryPostgres,
) -> None:
    """The server hangs up inside a connection(timeout=) block (libpq closes the socket), the
    block opens another socket on the same descriptor number: the block's deadline passing
    does not shut that socket down."""
    async with dbr.AsyncPool(pg_cluster.dsn, min_size=1, max_size=1, breaker=None) as pool:
        async with pool.connection(timeout=0.3) as conn:
            fd = conn.pgconn.socket
            terminate(pg_cluster, conn.info.backend_pid)
            with pytest.raises(psycopg.OperationalError):
                await conn.execute("select 1")
            a, b = reused_fd_socket(fd)
            with a, b:
                await asyncio.sleep(0.3 + MARGIN)
                assert_works(a, b)
        assert await pool.fetchone("select 1", timeout=5) == (1,)
