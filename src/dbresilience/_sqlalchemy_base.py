"""What the SQLAlchemy engine factories share: settings, the events, the warming delay (no
factory here; see :mod:`dbresilience.sqlalchemy`)."""

from __future__ import annotations

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
    PoolConfig,
    connection_is_dead,
    has_pending_input,
    starts_new_generation,
)
from dbresilience._validate import at_most, non_negative_int
from dbresilience._watchdog import Watchdog

__all__ = ["connect_delay", "instrument", "prepare", "warming_of"]

_WATCH = "dbr_watch"
_USED_AT = "dbr_used_at"
# engine -> (connections to warm, connect_timeout), set by instrument()
_WARMING: weakref.WeakKeyDictionary[sa.Engine, tuple[int, float]] = weakref.WeakKeyDictionary()


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
) -> tuple[sa.URL, PoolConfig, dict[str, Any], int]:
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
    )
    n_warm = pool_size if warm is None else non_negative_int("warm", warm)
    at_most("warm", n_warm, "pool_size", pool_size)
    connect_args = config.connect_params(dict(engine_kwargs.pop("connect_args", {}) or {}))
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
    """The psycopg connection behind SQLAlchemy's DBAPI connection (sync or async adapter)."""
    for candidate in (dbapi_connection, getattr(dbapi_connection, "_connection", None)):
        if isinstance(candidate, psycopg.BaseConnection):
            return candidate
    return None


def instrument(engine: sa.Engine, config: PoolConfig, warm: int) -> Watchdog:
    """Attach the checkout check, the statement deadline and the error classification; keep
    how many connections to warm, and within what time, for :func:`warming_of`."""
    _WARMING[engine] = (warm, config.connect_timeout)
    watchdog = Watchdog(config.name)
    watchdog.start()
    deadline = config.query_timeout

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

    @event.listens_for(engine.pool, "checkin")
    def _checkin(dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info[_USED_AT] = time.monotonic()

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn: sa.Connection, cursor: Any, statement: Any, *args: Any) -> None:
        driver = _driver_connection(conn.connection.dbapi_connection)
        if driver is not None:
            conn.info[_WATCH] = watchdog.watch(driver.pgconn.socket, time.monotonic() + deadline)

    @event.listens_for(engine, "after_cursor_execute")
    def _after(conn: sa.Connection, cursor: Any, statement: Any, *args: Any) -> None:
        entry = conn.info.pop(_WATCH, None)
        if entry is not None and watchdog.done(entry):
            conn.invalidate()  # the answer came, but the socket is already shut

    @event.listens_for(engine, "handle_error")
    def _handle_error(context: sa.engine.ExceptionContext) -> None:
        conn = context.connection
        entry = conn.info.pop(_WATCH, None) if conn is not None else None
        fired = entry is not None and watchdog.done(entry)
        original = context.original_exception
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


def connect_delay(exc: BaseException, delay: float, deadline_at: float) -> float:
    """The next warming retry's delay; re-raises *exc* when waiting cannot help."""
    if not classify(exc).retryable or time.monotonic() + delay >= deadline_at:
        raise exc
    return min(delay * 2, 1.0)
