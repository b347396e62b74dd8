"""What the SQLAlchemy engine factories share: settings, the events, the warming delay (no
factory here; see :mod:`dbresilience.sqlalchemy`)."""

from __future__ import annotations

import logging
import math
import time
import weakref
from datetime import timedelta
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy import event

from dbresilience._classify import classify
from dbresilience._errors import QueryTimeout
from dbresilience._pool_base import (
    CLEANUP_AT_LEAST,
    CLEANUP_AT_MOST,
    PoolConfig,
    check_connect_args,
    connection_is_dead,
    explain_connect_error,
    has_pending_input,
    starts_new_generation,
)
from dbresilience._pooler import rejected_startup_parameter
from dbresilience._validate import at_most, non_negative_int
from dbresilience._watchdog import Watchdog

__all__ = ["connect_delay", "instrument", "prepare", "warming_of"]

_WATCH = "dbr_watch"
_USED_AT = "dbr_used_at"
# engine -> (connections to warm, connect_timeout), set by instrument()
_WARMING: weakref.WeakKeyDictionary[sa.Engine, tuple[int, float]] = weakref.WeakKeyDictionary()
_log = logging.getLogger("dbresilience.pool")


class PoolerState:
    """An engine's pooler mode: configured, or (``pooler="auto"``) found on its first
    connection: a refused ``options`` startup parameter, or a backend pid other than the one
    the server announced, switch it to transaction mode for every later connection."""

    def __init__(self, name: str, requested: str | None, cursor_factory: type | None) -> None:
        self.name = name
        self.auto = requested == "auto"
        self.mode = None if self.auto else requested
        self.checked = not self.auto
        self.cursor_factory = cursor_factory
        if not self.auto:
            _log.info("engine %r: pooler=%r (configured)", name, self.mode)

    def switch(self, why: str) -> None:
        """Use transaction mode from now on, and say so."""
        self.mode, self.checked = "transaction", True
        _log.warning(
            "engine %r: a connection pooler answers (%s): using pooler='transaction' settings "
            "(no prepared statements, no startup options, no session state); pass pooler= to "
            "say so and silence this",
            self.name,
            why,
        )

    def transaction_params(self, cparams: dict[str, Any]) -> None:
        """Make *cparams* (``connect()``'s keyword arguments) fit transaction mode."""
        cparams.pop("options", None)
        cparams["prepare_threshold"] = None
        if self.cursor_factory is not None:
            cparams["cursor_factory"] = self.cursor_factory


def prepare(
    url: str | sa.URL,
    *,
    connect_timeout: float | timedelta,
    acquire_timeout: float | timedelta,
    query_timeout: float | timedelta,
    statement_timeout: float | timedelta | bool | None,
    lock_timeout: float | timedelta | bool | None,
    idle_in_transaction_timeout: float | timedelta | None,
    idle_check_after: float | timedelta,
    pool_size: int,
    max_overflow: int,
    warm: int | None,
    engine_kwargs: dict[str, Any],
    pooler: str | None = "auto",
    cursor_factory: type | None = None,
) -> tuple[sa.URL, PoolConfig, dict[str, Any], int]:
    """Validate an engine factory's arguments: ``(url, config, engine options, n_warm)``.

    The connection arguments carry the timeout layers for the pooler mode, and in
    transaction mode ``prepare_threshold=None`` and *cursor_factory* (refusing session
    state)."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"url must be a PostgreSQL URL, got backend {parsed.get_backend_name()!r}")
    if parsed.get_driver_name() not in ("psycopg", "postgresql", ""):
        raise ValueError(
            f"url must use the psycopg (3) driver, got {parsed.get_driver_name()!r}: "
            "write postgresql+psycopg://..."
        )
    parsed = parsed.set(drivername="postgresql+psycopg")
    pool_size = non_negative_int("pool_size", pool_size)
    max_overflow = non_negative_int("max_overflow", max_overflow)
    name = f"{parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database or ''}"
    config = PoolConfig.build(
        "",
        min_size=pool_size,
        max_size=max(pool_size, 1) + max_overflow,
        connect_timeout=connect_timeout,
        acquire_timeout=acquire_timeout,
        query_timeout=query_timeout,
        statement_timeout=statement_timeout,
        lock_timeout=lock_timeout,
        idle_in_transaction_timeout=idle_in_transaction_timeout,
        idle_check_after=idle_check_after,
        attempts=1,
        warm_sql=(),
        name=name,
        max_lifetime=3600.0,
        kwargs=None,
        pooler=pooler,
    )
    n_warm = pool_size if warm is None else non_negative_int("warm", warm)
    at_most("warm", n_warm, "pool_size", pool_size)
    mode = None if config.pooler == "auto" else config.pooler
    given = dict(engine_kwargs.pop("connect_args", {}) or {})
    check_connect_args(given)
    connect_args = config.connect_params(given, mode)
    if mode == "transaction":
        connect_args["prepare_threshold"] = None
        if cursor_factory is not None:
            connect_args["cursor_factory"] = cursor_factory
    options: dict[str, Any] = {
        "pool_size": pool_size,
        "max_overflow": max_overflow,
        "pool_timeout": config.acquire_timeout,
        "pool_pre_ping": False,  # replaced by the bounded checkout check below
        "connect_args": connect_args,
    }
    options.update(engine_kwargs)
    return parsed, config, options, n_warm


def _driver_connection(dbapi_connection: Any) -> psycopg.BaseConnection[Any] | None:
    """The psycopg connection behind SQLAlchemy's DBAPI connection (sync or async adapter),
    or behind the pool's proxy for one (what the pool passes to a rollback on check-in)."""
    if isinstance(dbapi_connection, psycopg.BaseConnection):  # the common case, first
        return dbapi_connection
    for outer in (dbapi_connection, getattr(dbapi_connection, "dbapi_connection", None)):
        for candidate in (outer, getattr(outer, "_connection", None)):
            if isinstance(candidate, psycopg.BaseConnection):
                return candidate
    return None


def instrument(
    engine: sa.Engine, config: PoolConfig, warm: int, cursor_factory: type | None = None
) -> Watchdog:
    """Attach the checkout check, the statement deadline and the error classification, the
    pooler settings (and detection, with ``pooler="auto"``); keep how many connections to
    warm, and within what time, for :func:`warming_of`."""
    _WARMING[engine] = (warm, config.connect_timeout)
    watchdog = Watchdog(config.name)
    watchdog.start()
    deadline = config.query_timeout
    state = PoolerState(config.name, config.pooler, cursor_factory)
    session_sql = config.session_sql() if config.pooler == "session" else b""

    if session_sql:

        @event.listens_for(engine.pool, "connect")
        def _session(dbapi_connection: Any, record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute(session_sql)
            cursor.close()
            dbapi_connection.commit()

    if state.auto:

        @event.listens_for(engine, "do_connect")
        def _do_connect(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
            if state.mode == "transaction":
                state.transaction_params(cparams)
            if state.checked:
                return None  # SQLAlchemy connects as usual
            try:
                conn = dialect.connect(*cargs, **cparams)
            except Exception as exc:
                if not rejected_startup_parameter(exc):
                    raise
                state.switch("the server refused the startup parameter 'options'")
                state.transaction_params(cparams)
                return dialect.connect(*cargs, **cparams)
            driver = _driver_connection(conn)
            if driver is None:
                return conn
            cursor = conn.cursor()
            cursor.execute("select pg_backend_pid()")
            row = cursor.fetchone()
            cursor.close()
            conn.rollback()  # no transaction left open: a pooler would hold a server for it
            if row is not None and row[0] != driver.info.backend_pid:
                state.switch("the backend pid differs from the one announced at startup")
                state.transaction_params(cparams)
                driver.prepare_threshold = None
                if cursor_factory is not None:  # sync or asyncio: the twin's cursor class
                    setattr(driver, "cursor_factory", cursor_factory)  # noqa: B010
            else:
                state.checked = True
                _log.info("engine %r: pooler=None (a direct connection)", config.name)
            return conn

    @event.listens_for(engine.pool, "checkout")
    def _checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        driver = _driver_connection(dbapi_connection)
        if driver is None:
            return
        if has_pending_input(driver) and connection_is_dead(driver):
            raise sa.exc.DisconnectionError("the server closed this idle connection")
        used = record.info.get(_USED_AT)
        if used is not None and time.monotonic() - used > config.idle_check_after:
            entry = watchdog.watch(driver.pgconn.socket, time.monotonic() + 2.0)
            try:
                cursor = dbapi_connection.cursor()
                cursor.execute("select 1")
                cursor.close()
            except Exception as exc:
                raise sa.exc.DisconnectionError("idle connection failed its check") from exc
            finally:
                watchdog.done(entry)

    def _finish_all(info: dict[Any, Any]) -> None:
        """Finish every entry left on a connection (statements that ended unseen)."""
        for _, entry in info.pop(_WATCH, ()):
            watchdog.done(entry)

    @event.listens_for(engine.pool, "checkin")
    def _checkin(dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info[_USED_AT] = time.monotonic()
            _finish_all(record.info)  # no deadline outlives its checkout
            if getattr(record, "_ConnectionRecord__pool", engine.pool) is not engine.pool:
                # checked out before engine.dispose(): SQLAlchemy would keep it in the old
                # pool, closed only by the garbage collector (psycopg: a ResourceWarning)
                record.invalidate()

    @event.listens_for(engine.pool, "invalidate")
    def _invalidate(dbapi_connection: Any, record: Any, exc: BaseException | None) -> None:
        if record is not None:
            _finish_all(record.info)

    # The entries of a connection are a stack of (cursor, entry): a statement may run on the
    # same connection from inside another's before_cursor_execute (a listener setting a
    # tenant), and each keeps its own deadline. An entry whose cursor is closed belongs to a
    # statement that failed unseen (skip_user_error_events: no handle_error); it is finished
    # when the next statement starts, and whatever is left when the connection is checked in.
    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn: sa.Connection, cursor: Any, statement: Any, *args: Any) -> None:
        driver = _driver_connection(conn.connection.dbapi_connection)
        if driver is None:
            return
        stack = conn.info.get(_WATCH)
        if stack is None:
            stack = conn.info[_WATCH] = []
        elif stack:
            for item in [item for item in stack if _cursor_closed(item[0])]:
                stack.remove(item)
                watchdog.done(item[1])
        stack.append((cursor, watchdog.watch(driver.pgconn.socket, time.monotonic() + deadline)))

    def _pop(conn: sa.Connection | None, cursor: Any) -> Any:
        """The entry of *cursor*'s statement, taken off the connection's stack (or None)."""
        stack = _info_of(conn).get(_WATCH)
        if not stack:
            return None
        for i in range(len(stack) - 1, -1, -1):
            if stack[i][0] is cursor:
                return stack.pop(i)[1]
        return None

    @event.listens_for(engine, "after_cursor_execute")
    def _after(conn: sa.Connection, cursor: Any, statement: Any, *args: Any) -> None:
        entry = _pop(conn, cursor)
        if entry is not None and watchdog.done(entry):
            conn.invalidate()  # the answer came, but the socket is already shut

    _bound_transaction_ends(engine.dialect, watchdog, config)
    _bound_initialize(engine.dialect, watchdog, config)

    @event.listens_for(engine, "handle_error")
    def _handle_error(context: sa.engine.ExceptionContext) -> None:
        conn = context.connection
        entry = _pop(conn, getattr(context.execution_context, "cursor", None))
        fired = entry is not None and watchdog.done(entry)
        original = context.original_exception
        if isinstance(original, QueryTimeout):  # a commit or rollback past its deadline
            context.is_disconnect = True
            return
        if fired:
            context.is_disconnect = True
            raise QueryTimeout(
                f"a statement on engine {config.name!r} ran past {deadline:.2f} s; "
                "the connection was shut down",
                commit_unknown=True,
            ) from original
        if starts_new_generation(original) or classify(original).kind.name == "CONNECTION_CLOSED":
            context.is_disconnect = True  # SQLAlchemy then invalidates the whole pool

    return watchdog


def warming_of(engine: sa.Engine) -> tuple[int, float]:
    """``(connections to warm, connect_timeout)`` of an engine made by dbresilience's factories;
    ``TypeError`` for another engine."""
    try:
        return _WARMING[engine]
    except (KeyError, TypeError):
        raise TypeError(
            "engine: expected an engine made by dbresilience.sqlalchemy's create_engine or "
            f"create_async_engine, got {type(engine).__name__}"
        ) from None


def _bound_transaction_ends(dialect: Any, watchdog: Watchdog, config: PoolConfig) -> None:
    """Put the dialect's commit and rollback under the watchdog, as statements are.

    They are round trips but not statements (no cursor events): against a frozen server or
    network a commit, an explicit rollback or the pool's rollback when a connection is checked
    in waited without bound. A commit gets ``query_timeout``, a rollback the pool's clean-up
    bound (``query_timeout`` moved into [50 ms, 1 s]: a connection closed rolls back on the
    server's side too). Past it the socket is shut and :class:`QueryTimeout` raised (commit
    unknown for a commit); SQLAlchemy invalidates the connection.
    """
    plain_commit, plain_rollback = dialect.do_commit, dialect.do_rollback
    rollback_for = min(CLEANUP_AT_MOST, max(config.query_timeout, CLEANUP_AT_LEAST))

    def bounded(plain: Any, what: str, limit: float) -> Any:
        def run(dbapi_connection: Any) -> None:
            driver = _driver_connection(dbapi_connection)
            try:
                fd = None if driver is None or driver.closed else driver.pgconn.socket
            except psycopg.Error:
                fd = None
            if fd is None:
                plain(dbapi_connection)
                return
            entry = watchdog.watch(fd, time.monotonic() + limit)
            try:
                plain(dbapi_connection)
            except Exception as exc:
                if watchdog.done(entry):
                    raise QueryTimeout(
                        f"a {what} on engine {config.name!r} ran past {limit:.2f} s; "
                        "the connection was shut down",
                        commit_unknown=what == "commit",
                    ) from exc
                raise
            watchdog.done(entry)

        return run

    dialect.do_commit = bounded(plain_commit, "commit", config.query_timeout)
    dialect.do_rollback = bounded(plain_rollback, "rollback", rollback_for)


def _info_of(conn: sa.Connection | None) -> dict[Any, Any]:
    """*conn*'s ``info`` dictionary; empty (and not kept) for the connection SQLAlchemy gives
    the dialect's first-connect queries, which has none (its ``info`` raises
    ``NotImplementedError``: raised from the error handler, the dialect took it for "this
    server cannot say" and initialized with ``server_version_info=None``)."""
    if conn is None:
        return {}
    try:
        return conn.info
    except NotImplementedError:
        return {}


def _bound_initialize(dialect: Any, watchdog: Watchdog, config: PoolConfig) -> None:
    """Bound the dialect's first-connect queries by ``connect_timeout``, not the statement
    deadline.

    SQLAlchemy runs ``dialect.initialize`` (server version, default schema, isolation level,
    hstore lookup) on the engine's first connection, and again on a later one only if it
    raised. They are part of opening a connection: with a small ``query_timeout`` the server's
    ``statement_timeout`` and ``lock_timeout`` (set from it) cancelled them on a busy server.
    They run under ``connect_timeout`` on both sides: ``SET LOCAL`` of the two server
    settings (undone by the rollback that ends the initialization) and the watchdog on the
    socket (past it the socket is shut and the connect raises; the next connect
    initializes again).
    """
    plain_initialize = dialect.initialize
    limit = config.connect_timeout
    millis = max(1, math.ceil(limit * 1000))
    relax = f"SET LOCAL statement_timeout = {millis}; SET LOCAL lock_timeout = {millis}"

    def initialize(connection: sa.Connection) -> None:
        driver = _driver_connection(connection.connection)
        try:
            fd = None if driver is None or driver.closed else driver.pgconn.socket
        except psycopg.Error:
            fd = None
        if fd is None:
            plain_initialize(connection)
            return
        entry = watchdog.watch(fd, time.monotonic() + limit)
        try:
            connection.exec_driver_sql(relax)
            plain_initialize(connection)
        except Exception as exc:
            if watchdog.done(entry) and hasattr(exc, "add_note"):
                exc.add_note(
                    f"the dialect's first-connect queries on engine {config.name!r} ran past "
                    f"connect_timeout ({limit:.2f} s); the connection was shut down"
                )
            raise
        if watchdog.done(entry):
            raise sa.exc.DisconnectionError(
                f"the dialect's first-connect queries on engine {config.name!r} ran past "
                f"connect_timeout ({limit:.2f} s); the connection was shut down"
            )

    dialect.initialize = initialize


def _cursor_closed(cursor: Any) -> bool:
    """Whether a DBAPI cursor (psycopg's, or SQLAlchemy's asyncio adapter around one) is
    closed: its statement is over."""
    inner = getattr(cursor, "_cursor", cursor)  # the asyncio adapter keeps psycopg's cursor
    return inner is None or bool(getattr(inner, "closed", False))


def connect_delay(exc: BaseException, delay: float, deadline_at: float) -> float:
    """The next warming retry's delay; re-raises *exc* when waiting cannot help."""
    if not classify(exc).retryable or time.monotonic() + delay >= deadline_at:
        explain_connect_error(exc)
        raise exc
    return min(delay * 2, 1.0)
