# WARNING: generated from _pool_async.py by tools/async_to_sync.py: DO NOT EDIT.
# Change the async source, then run `python tools/async_to_sync.py`.
"""``Pool``: psycopg_pool with warming, one deadline per call, fast recovery and
classification.

Locking and I/O only; the settings, timeouts and checks that need no I/O live in
:mod:`dbresilience._pool_base`, the deadline backstop in :mod:`dbresilience._watchdog`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar, overload

import psycopg
import psycopg_pool
from psycopg.abc import Params
from psycopg.rows import RowFactory

from dbresilience import _instrument
from dbresilience._acompat import sleep
from dbresilience._classify import classify
from dbresilience._deadline import seconds
from dbresilience._errors import DatabaseUnavailable
from dbresilience._lifecycle import ResourceState
from dbresilience._logsummary import CONNECT_SUMMARY
from dbresilience._pool_base import (
    PoolBase,
    PoolCounters,
    Query,
    cleanup_deadline,
    connection_is_dead,
    explain_connect_error,
    has_pending_input,
    lost_by_database,
    lost_in_commit,
    now,
)
from dbresilience._pool_compat import (
    PoolConnection,
    PoolerCursor,
    PoolerServerCursor,
    QuickReconnect,
)

__all__ = ["Pool", "Query"]

_monotonic = time.monotonic

T = TypeVar("T")

# open()'s warm-up (see _warm_calls): at most this many calls through the call path, beyond the
# two per connection only while the warm-up has taken less than _WARM_BUDGET seconds (measured
# in fresh processes: docs/pool.md; on loopback a call takes about 30 us).
_WARM_CALLS = 20
_WARM_BUDGET = 0.025
# A text no caller sends, unprepared: psycopg counts a statement's runs even with
# prepare=False, so a warm-up of "select 1" made a caller's first "select 1" prepare it (43 us)
_WARM_SQL = "select 1 /* dbresilience warm-up */"
R = TypeVar("R")
Conn = PoolConnection


class _CorePool(psycopg_pool.ConnectionPool[Conn]):
    """psycopg_pool, told to reconnect quickly and to remember why connecting failed: the two
    private overrides :mod:`dbresilience._pool_compat` lists."""

    _dbr_counters: PoolCounters
    _dbr_owner: PoolBase

    def _connect(self, timeout: float | None = None) -> Conn:
        counters = self._dbr_counters
        try:
            conn = super()._connect(timeout)
        except Exception as exc:
            # pooler="auto": a pooler refusing our startup options switches the pool over,
            # and psycopg_pool's next attempt (0.1 s later) connects without them
            if self._dbr_owner._detect_rejected_options(exc):
                raise
            counters.last_connect_error = exc
            counters.last_connect_error_at = now()
            if _instrument.hooks:
                _instrument.emit(
                    _instrument.ConnectionOpened(self.name, "failed", classify(exc).code)
                )
            if self._waiting:
                self._fail_waiting()
            raise
        CONNECT_SUMMARY.connected(self.name)
        if _instrument.hooks:
            _instrument.emit(_instrument.ConnectionOpened(self.name, "connected", None))
        conn._dbr_generation = counters.generation
        conn._dbr_used_at = now()
        if counters.last_connect_error is not None:
            counters.last_connect_error = None
            self._dbr_owner._recovered()  # connecting failed, and now works: the database is back
        return conn

    def _fail_waiting(self) -> None:
        """A connect just failed: every call waiting for a connection gets the answer a call
        made now would get (:class:`DatabaseUnavailable` when the database cannot be had)
        instead of waiting out its acquire timeout for a connection that is not coming.

        Only a failed connect says so: while one is still in progress (a database slow to
        accept), waiting calls go on waiting. A call that starts waiting just after this ran
        is answered by the next failed attempt (QuickReconnect: a quarter of a second apart
        at most).
        """
        owner = self._dbr_owner
        error = owner._unavailable()
        if error is None:
            return
        with self._lock:
            waiting = list(self._waiting)
            self._waiting.clear()
        why = classify(error)
        for pos in waiting:  # each its own exception: they are raised in separate calls
            if pos.fail(DatabaseUnavailable(str(error), why)):
                owner._counters.fail_fast += 1  # (a False: it had timed out already)

    def _add_connection(self, attempt: Any, growing: bool = False) -> None:
        super()._add_connection(attempt or QuickReconnect(timeout=self.reconnect_timeout), growing)


class Pool(PoolBase):
    """A pool of psycopg connections that fails fast, recovers fast and explains its failures.

    ``Pool(conninfo, min_size=2, max_size=10, connect_timeout=5.0, acquire_timeout=5.0,
    query_timeout=5.0)``; then ``with pool: row = pool.fetchone(...)``. Nothing
    happens until :meth:`open` or ``with pool:``.

    Every call of :meth:`fetchone`, :meth:`fetchall`, :meth:`execute` and :meth:`transaction`
    draws on one deadline (``timeout=``, default ``query_timeout``): waiting for a connection,
    every attempt and every backoff sleep. It is a hard deadline: when it passes during a query,
    the connection's socket is shut down (a frozen server cannot hold the call), the connection
    is discarded and :class:`QueryTimeout` (P1008) is raised. Time spent waiting for a
    connection ends in :class:`AcquireTimeout` (P2024). Reads are retried on transient
    failures; writes only when ``idempotent=True`` or when the failure came before anything
    was sent. Connections are in autocommit mode; use :meth:`transaction` (or psycopg's
    ``conn.transaction()``) for transactions.

    A circuit breaker (``breaker=``) and a retry budget (``budget=``) per pool are on by
    default; pass ``None`` to switch either off, or your own to share one.

    The deadline backstop is a watchdog thread shared by both twins: shutting a socket down
    wakes a thread blocked on it and the event loop's wait on it alike.
    """

    _pool: _CorePool

    def _core_pool(self) -> _CorePool:
        pool = _CorePool(
            self._conninfo,
            connection_class=PoolConnection,
            configure=self._configure,
            **self._core_options(),
        )
        pool._dbr_counters = self._counters
        pool._dbr_owner = self
        return pool

    def _connect_kwargs_for(self, mode: str | None) -> dict[str, Any]:
        kwargs = super()._connect_kwargs_for(mode)
        if mode == "transaction":  # refuses session state before it is sent
            kwargs["cursor_factory"] = PoolerCursor
        return kwargs

    # --- lifecycle --------------------------------------------------------------------------

    def open(self, wait: bool = True) -> Pool:
        """Open the pool and warm it; returns the pool (see :mod:`dbresilience._lifecycle`).

        With ``wait=True`` (the default, and what ``with pool:`` does) it returns once
        ``min_size`` connections are open and configured, and raises if that does not happen
        within ``connect_timeout``: at once for errors that waiting cannot fix (P1000 bad
        credentials, P1003 missing database, P1011 TLS), after ``connect_timeout`` for
        transient ones (the last connect error, or :class:`AcquireTimeout`). With
        ``wait=False`` it returns at once and warms in the background: a service can start
        while its database is down, and calls fail fast (:class:`DatabaseUnavailable`) until
        it is back.
        """
        if self._is_open:
            return self
        prior = self._state
        if prior is ResourceState.CLOSED:
            # a closed psycopg_pool cannot be opened again; calls still in flight keep theirs
            self._pool = self._core_pool()
        deadline_at = now() + self._config.connect_timeout
        self._watchdog.start()
        try:
            if wait:
                self._probe(deadline_at)
            self._pool.open(wait=wait, timeout=max(0.1, deadline_at - now()))
        except psycopg_pool.PoolTimeout:
            self._abort_open()
            raise self._open_failed() from None
        except BaseException:
            self._abort_open()
            raise
        self._state = ResourceState.OPEN
        self._log_mode()
        if wait:
            try:
                self._warm_calls(deadline_at)
            except BaseException:  # cancelled, interrupted: open() did not happen
                self._state = prior
                self._abort_open()
                raise
        return self

    def _warm_calls(self, deadline_at: float) -> None:
        """Run the whole call path over every warm connection before ``open()`` returns
        (psycopg_pool hands idle connections out in turn): the first caller then pays what a
        steady one does, as nearly as can be (docs/pool.md).

        Without it the first call after ``open()`` cost 3 times a steady one: the first pass
        over a connection's objects, the watchdog's first wake-up, the backend's wake-up, a
        fresh breaker's and budget's first use, and in a fresh process (a serverless cold
        start) bytecode the interpreter specialises only after several runs. So the calls go
        through the caller's own path (``_call``), **uncounted**: the breaker and budget are
        touched but asked and told nothing, no call hook (``PoolCallDone``, ``AcquireWaited``)
        hears of them, nothing is retried; what happens to a connection meanwhile (one lost,
        discarded or shut by its deadline) is still counted and announced as such. At least two
        per connection, up to ``_WARM_CALLS`` while they take less than ``_WARM_BUDGET`` (a
        database 80 ms away gets the two, one on loopback all of them in under a
        millisecond); ``min_size=0`` opens and warms nothing. ``_WARM_SQL``, unprepared: the
        warm-up leaves no server-side prepared statement behind and no count of a caller's
        statement (psycopg prepares a text on its fifth run), and shows as such in
        ``pg_stat_activity``. Best effort within ``connect_timeout``: a failure ends it and is
        left to the first caller to meet.
        """
        args = (_WARM_SQL, None, _fetchone, None, False, False)
        at_least = 2 * self._config.min_size
        began = now()
        self._warming = True
        try:
            for done in range(max(at_least, _WARM_CALLS) if at_least else 0):
                left = deadline_at - now()
                if left <= 0.01 or (done >= at_least and now() - began > _WARM_BUDGET):
                    return
                try:
                    self._call("fetchone", self._statement, args, min(left, 1.0), False, False)
                except Exception:
                    return
        finally:
            self._warming = False

    def _abort_open(self) -> None:
        self._pool.close(timeout=1.0)
        self._pool = self._core_pool()  # a closed psycopg_pool cannot be opened again
        self._watchdog.stop()

    def _probe(self, deadline_at: float) -> None:
        """Connect once, right now: a fatal error raises at once, a transient one is retried."""
        delay = 0.05
        while True:
            try:
                conn = psycopg.Connection.connect(self._conninfo, **self._connect_kwargs)
                try:
                    cur = conn.execute("select pg_backend_pid()")
                    row = cur.fetchone()
                    self._detect_pooler(conn.info.backend_pid, row[0] if row else None)
                finally:
                    conn.close()
                return
            except psycopg.Error as exc:
                if self._detect_rejected_options(exc):
                    continue  # connect again at once, without the startup options
                if not self._note_connect_error(exc) or now() + delay >= deadline_at:
                    explain_connect_error(exc)
                    raise
            sleep(delay)
            delay = min(delay * 2, 1.0)

    def _configure(self, conn: Conn) -> None:
        """Run on every new connection: the session-mode timeouts, the warm-up SQL, then one
        round trip, which also tells a pooler (``pooler="auto"``) by the backend's pid.

        A fresh backend's first query pays for its catalog caches (about 0.3 ms here): paying
        it while warming keeps it off the first caller.
        """
        if self._pooler == "session":
            conn.execute(self._config.session_sql())
        for statement in self._warm_statements():
            conn.execute(statement.encode())  # warm-up SQL is the operator's configuration
        row = conn.execute("select pg_backend_pid()").fetchone()
        if self._detect_pooler(conn.info.backend_pid, row[0] if row else None):
            conn.prepare_threshold = None
            conn.cursor_factory = PoolerCursor
        if issubclass(conn.cursor_factory, PoolerCursor):  # transaction mode
            conn.server_cursor_factory = PoolerServerCursor

    def close(self, timeout: float = 5.0) -> None:
        """Close the pool: idle connections at once, those in use when their call ends.

        Calls in flight are not waited for: each still ends by its own deadline (the watchdog
        keeps watching them) and gives its connection back to the closed pool, which closes
        it. Waiting for a connection, and any call made after, raises
        ``psycopg_pool.PoolClosed``. *timeout* bounds the wait for psycopg_pool's background
        workers. Idempotent.
        """
        if not self._is_open:
            return
        self._state = ResourceState.CLOSED
        self._pool.close(timeout=timeout)
        self._watchdog.stop()  # the thread ends once no call is watched

    def __enter__(self) -> Pool:
        return self.open(wait=True)

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- connections ------------------------------------------------------------------------

    def _acquire(self, pool: _CorePool, deadline_at: float) -> Conn:
        """A healthy connection from *pool* (``self._pool`` when the call started: the one it
        goes back to) before *deadline_at*, or AcquireTimeout / DatabaseUnavailable."""
        counters, idle_check_after = (self._counters, self._config.idle_check_after)
        while True:
            if counters.last_connect_error is None:
                wait = min(self._config.acquire_timeout, deadline_at - _monotonic())
                if wait <= 0:
                    wait = self._acquire_wait(deadline_at)  # raises AcquireTimeout
            else:
                wait = self._acquire_wait(deadline_at)
            waited_from = _monotonic() if _instrument.hooks and (not self._warming) else 0.0
            try:
                conn = pool.getconn(timeout=wait)
            except psycopg_pool.PoolTimeout:
                raise self._acquire_timed_out(wait) from None
            if waited_from:
                _instrument.emit(_instrument.AcquireWaited(self.name, _monotonic() - waited_from))
            if has_pending_input(conn) and connection_is_dead(conn):
                # the server hung up on it while it sat idle: nothing was sent, try another
                self._discard(pool, conn, "dead_idle")
                continue
            idle = _monotonic() - conn._dbr_used_at
            if idle > idle_check_after and (not self._ping(conn, deadline_at)):
                self._discard(pool, conn, "ping_failed")
                continue
            return conn

    def _ping(self, conn: Conn, deadline_at: float) -> bool:
        """A round trip on a connection that idled long: True when it answered in time."""
        entry = self._watchdog.watch(conn.pgconn.socket, min(deadline_at, now() + 2.0))
        try:
            conn.execute("")
            return True
        except psycopg.Error:
            return False
        finally:
            if self._watchdog.done(entry):
                conn.close()

    def _discard(self, pool: _CorePool, conn: Conn, reason: str) -> None:
        """Drop a connection found dead before use, and with it its whole generation."""
        self._counters.discarded += 1
        if _instrument.hooks:
            _instrument.emit(_instrument.ConnectionDiscarded(self.name, reason))
        self._new_generation(pool, conn)
        conn.close()
        pool.putconn(conn)

    def _new_generation(self, pool: _CorePool, conn: Conn) -> None:
        """A confirmed disconnect: retire every older idle connection without probing each."""
        if self._claims_generation(conn) and (not pool.closed):
            pool.drain()

    def _release(
        self, pool: _CorePool, conn: Conn, error: BaseException | None, deadline_at: float | None
    ) -> None:
        """Give *conn* back to *pool*, the one it came from (which may have been closed, and
        the pool opened again, meanwhile), after rolling back what the caller left open."""
        conn._dbr_used_at = _monotonic()
        if error is not None and lost_by_database(error, conn):
            if _instrument.hooks:
                _instrument.emit(_instrument.ConnectionLost(self.name, classify(error).code))
            self._new_generation(pool, conn)
        try:
            if conn.closed or conn.pgconn.status != psycopg.pq.ConnStatus.OK:
                self._counters.discarded += 1
                if _instrument.hooks:
                    _instrument.emit(_instrument.ConnectionDiscarded(self.name, "broken"))
            elif conn.pgconn.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                self._rollback(conn, deadline_at)
        finally:  # even when cancelled meanwhile: psycopg_pool closes a connection left busy
            pool.putconn(conn)

    def _rollback(self, conn: Conn, deadline_at: float | None) -> None:
        """Roll back a transaction the caller left open, under the watchdog: by the call's
        deadline, given at least 50 ms and at most 1 s (see :func:`cleanup_deadline`). A
        server that cannot answer in time costs the connection (closed, never reused), not
        the caller's time."""
        entry = self._watchdog.watch(conn.pgconn.socket, cleanup_deadline(deadline_at))
        try:
            conn.rollback()
        except psycopg.Error:
            conn.close()
        finally:
            if self._watchdog.done(entry):
                conn.close()

    @contextlib.contextmanager
    def connection(self, timeout: float | timedelta | None = None) -> Iterator[Conn]:
        """``with pool.connection() as conn:`` — a checked, autocommit psycopg connection.

        Waiting for it is bounded by ``acquire_timeout``; with *timeout*, the whole block is
        bounded too (the socket is shut down when it passes and :class:`QueryTimeout` raised).
        A transaction left open by the block is rolled back, by the deadline but given at least
        50 ms and at most 1 s, else the connection is closed; a broken one is discarded.
        """
        start = now()
        limit = None if timeout is None else seconds("timeout", timeout)
        deadline_at = None if limit is None else start + limit
        pool = self._pool
        conn = self._acquire(
            pool, start + (limit if limit is not None else self._config.acquire_timeout)
        )
        entry = None if limit is None else self._watchdog.watch(conn.pgconn.socket, start + limit)
        try:
            yield conn
        except BaseException as exc:
            fired = entry is not None and self._watchdog.done(entry)
            if fired:
                conn.close()
            self._release(pool, conn, exc, deadline_at)
            if fired and isinstance(exc, Exception):
                raise self._timed_out("a connection block", commit_unknown=True) from exc
            raise
        if entry is not None and self._watchdog.done(entry):
            conn.close()
        self._release(pool, conn, None, deadline_at)

    # --- calls ------------------------------------------------------------------------------

    def _call(
        self,
        what: str,
        attempt: Callable[..., T],
        args: tuple[Any, ...],
        timeout: float | timedelta | None,
        idempotent: bool | Callable[[], bool],
        counted: bool = True,
    ) -> T:
        """Run ``attempt(deadline_at, *args)`` under the breaker, budget and retry policy;
        ``counted=False`` (``open()``'s warm-up): once, counted by no breaker or budget, no
        call hook."""
        start, deadline_at, permit = self._begin(timeout, what, counted)
        failed = 0
        while True:
            try:
                result = attempt(deadline_at, *args)
            except Exception as exc:
                if permit < 0:
                    raise
                failed += 1
                safe = idempotent() if callable(idempotent) else idempotent
                delay = self._after_failure(what, exc, failed, start, deadline_at, permit, safe)
                if delay is None:
                    raise
                if delay > 0:
                    sleep(delay)
                continue
            except BaseException as exc:
                self._record(permit, exc, start, what, failed + 1)
                raise
            self._record(permit, None, start, what, failed + 1)
            return result

    def _statement(
        self,
        deadline_at: float,
        query: Query,
        params: Params | None,
        fetch: Callable[[psycopg.Cursor[Any]], T],
        row_factory: RowFactory[Any] | None,
        prepare: bool | None,
        write: bool,
    ) -> T:
        pool = self._pool
        conn = self._acquire(pool, deadline_at)
        watchdog = self._watchdog
        entry = watchdog.watch(conn.pgconn.socket, deadline_at)
        try:
            cur = conn.cursor(row_factory=row_factory) if row_factory else conn.cursor()
            cur.execute(query, params, prepare=prepare)
            result = fetch(cur)
        except BaseException as exc:
            fired = watchdog.done(entry)
            if fired:
                conn.close()
            self._release(pool, conn, exc, deadline_at)
            if fired and isinstance(exc, Exception):
                raise self._timed_out("a query", commit_unknown=write) from exc
            raise
        if watchdog.done(entry):
            conn.close()  # the answer came, but the socket is already shut
        self._release(pool, conn, None, deadline_at)
        return result

    @overload
    def fetchone(
        self,
        query: Query,
        params: Params | None = None,
        *,
        timeout: float | timedelta | None = None,
        prepare: bool | None = None,
    ) -> tuple[Any, ...] | None: ...

    @overload
    def fetchone(
        self,
        query: Query,
        params: Params | None = None,
        *,
        row_factory: RowFactory[R],
        timeout: float | timedelta | None = None,
        prepare: bool | None = None,
    ) -> R | None: ...

    def fetchone(
        self,
        query: Query,
        params: Params | None = None,
        *,
        row_factory: RowFactory[Any] | None = None,
        timeout: float | timedelta | None = None,
        prepare: bool | None = None,
    ) -> Any:
        """The first row of a read (a tuple, or what *row_factory* makes), or ``None``.

        Retried on transient failures within *timeout* (default ``query_timeout``). Raises the
        original error, :class:`QueryTimeout`, :class:`AcquireTimeout`,
        :class:`DatabaseUnavailable` or :class:`CircuitOpen`.
        """
        return self._call(
            "fetchone",
            self._statement,
            (query, params, _fetchone, row_factory, prepare, False),
            timeout,
            True,
        )

    @overload
    def fetchall(
        self,
        query: Query,
        params: Params | None = None,
        *,
        timeout: float | timedelta | None = None,
        prepare: bool | None = None,
    ) -> list[tuple[Any, ...]]: ...

    @overload
    def fetchall(
        self,
        query: Query,
        params: Params | None = None,
        *,
        row_factory: RowFactory[R],
        timeout: float | timedelta | None = None,
        prepare: bool | None = None,
    ) -> list[R]: ...

    def fetchall(
        self,
        query: Query,
        params: Params | None = None,
        *,
        row_factory: RowFactory[Any] | None = None,
        timeout: float | timedelta | None = None,
        prepare: bool | None = None,
    ) -> Any:
        """Every row of a read, as :meth:`fetchone` retries and bounds it."""
        return self._call(
            "fetchall",
            self._statement,
            (query, params, _fetchall, row_factory, prepare, False),
            timeout,
            True,
        )

    def execute(
        self,
        query: Query,
        params: Params | None = None,
        *,
        idempotent: bool = False,
        timeout: float | timedelta | None = None,
        prepare: bool | None = None,
    ) -> int:
        """Run a write in its own (autocommit) transaction; returns the row count.

        Retried on failures that came before anything was sent, or whose outcome is known
        (a serialization failure, a refused connection); a failure that leaves the write's
        fate unknown (the connection lost mid-statement) is re-run only with
        ``idempotent=True``.
        """
        rowcount: int = self._call(
            "execute",
            self._statement,
            (query, params, _rowcount, None, prepare, True),
            timeout,
            idempotent,
        )
        return rowcount

    def transaction(
        self,
        fn: Callable[[Conn], T],
        *,
        timeout: float | timedelta | None = None,
        idempotent: bool = False,
    ) -> T:
        """Run ``fn(conn)`` inside BEGIN … COMMIT and return its result; re-run it when safe.

        The whole transaction is re-run on a serialization failure or deadlock (P2034) and
        when the connection is lost before COMMIT was sent (nothing was committed). When the
        connection is lost, or the deadline passes, *during* COMMIT, it raises
        :class:`CommitUnknown` (P1017, ``commit_unknown``): the work may or may not be
        committed, and it is not re-run unless ``idempotent=True``. *fn* must not commit or
        roll back itself; it may use savepoints (``conn.transaction()``).
        """
        phase = ["begin"]

        def before_commit() -> bool:
            return idempotent or phase[0] != "commit"

        result: T = self._call(
            "transaction", self._transaction_attempt, (fn, phase), timeout, before_commit
        )
        return result

    def _transaction_attempt(
        self, deadline_at: float, fn: Callable[[Conn], T], phase: list[str]
    ) -> T:
        phase[0] = "begin"
        pool = self._pool
        conn = self._acquire(pool, deadline_at)
        watchdog = self._watchdog
        entry = watchdog.watch(conn.pgconn.socket, deadline_at)
        try:
            conn.execute(self._begin_sql)
            phase[0] = "body"
            result = fn(conn)
            phase[0] = "commit"
            conn.execute("COMMIT")
            phase[0] = "done"
        except BaseException as exc:
            fired = watchdog.done(entry)
            if fired:
                conn.close()
            self._release(pool, conn, exc, deadline_at)
            if not isinstance(exc, Exception):
                raise
            if phase[0] == "commit" and lost_in_commit(exc, fired):
                raise self._commit_unknown() from exc
            if fired:  # shut down before COMMIT: the server rolls it back
                raise self._timed_out("a transaction", commit_unknown=False) from exc
            raise
        if watchdog.done(entry):
            conn.close()
        self._release(pool, conn, None, deadline_at)
        return result


def _fetchone(cur: psycopg.Cursor[Any]) -> Any:
    return cur.fetchone()


def _fetchall(cur: psycopg.Cursor[Any]) -> Any:
    return cur.fetchall()


def _rowcount(cur: psycopg.Cursor[Any]) -> int:
    return cur.rowcount
