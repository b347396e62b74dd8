# WARNING: generated from _sqlalchemy_async.py by tools/async_to_sync.py: DO NOT EDIT.
# Change the async source, then run `python tools/async_to_sync.py`.
"""``create_engine`` and ``warm_engine``: a SQLAlchemy engine with the pool's
timeouts, warming, checks, deadline and classification (see :mod:`dbresilience.sqlalchemy`)."""

from __future__ import annotations

import contextlib
import time
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from dbresilience._acompat import sleep
from dbresilience._pool_compat import PoolerCursor
from dbresilience._sqlalchemy_base import connect_delay, instrument, prepare, warming_of
from dbresilience._validate import non_negative_int

__all__ = ["create_engine", "warm_engine"]


def create_engine(
    url: str | sa.URL,
    *,
    pool_size: int = 5,
    max_overflow: int = 5,
    connect_timeout: float | timedelta = 5.0,
    acquire_timeout: float | timedelta = 5.0,
    query_timeout: float | timedelta = 5.0,
    statement_timeout: float | timedelta | bool | None = True,
    lock_timeout: float | timedelta | bool | None = True,
    idle_in_transaction_timeout: float | timedelta | None = 60.0,
    idle_check_after: float | timedelta = 10.0,
    warm: int | None = None,
    pooler: str | None = "auto",
    **engine_kwargs: Any,
) -> Engine:
    """A SQLAlchemy ``Engine`` (psycopg 3) with dbresilience's timeouts and deadline.

    Every statement is bounded by ``query_timeout`` (the socket is shut down and
    :class:`dbresilience.QueryTimeout` raised). Other keyword arguments go to SQLAlchemy's
    engine factory. Invalid arguments raise ``TypeError``/``ValueError`` naming them, before
    any I/O. ``pooler``: ``None``, ``"session"``, ``"transaction"`` or ``"auto"`` (the
    default: detected on the first connection), as for :class:`dbresilience.Pool`.

    Warming opens and checks ``warm`` connections (default ``pool_size``): errors waiting
    cannot fix (P1000, P1003, TLS) raise at once, transient ones after ``connect_timeout``. The
    threaded factory warms before it returns. The asyncio factory returns the engine at once,
    like SQLAlchemy's (no I/O: a service starts while its database is down); warm it with
    ``warm_engine(engine)`` (``dbresilience.web.lifespan`` does that in the
    background).
    """
    parsed, config, options, n_warm = prepare(
        url,
        connect_timeout=connect_timeout,
        acquire_timeout=acquire_timeout,
        query_timeout=query_timeout,
        statement_timeout=statement_timeout,
        lock_timeout=lock_timeout,
        idle_in_transaction_timeout=idle_in_transaction_timeout,
        idle_check_after=idle_check_after,
        pool_size=pool_size,
        max_overflow=max_overflow,
        warm=warm,
        engine_kwargs=dict(engine_kwargs),
        pooler=pooler,
        cursor_factory=PoolerCursor,
    )
    engine = sa.create_engine(parsed, **options)
    instrument(engine, config, n_warm, PoolerCursor)
    try:
        warm_engine(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


def warm_engine(engine: Engine, connections: int | None = None) -> Engine:
    """Open and check *connections* connections of *engine* (default: its ``warm`` setting);
    returns the engine.

    Raises at once for errors waiting cannot fix (P1000, P1003, TLS) and after the engine's
    ``connect_timeout`` for transient ones (the last connect error). The connections go back to
    the engine's pool, ready for the first requests.
    """
    n_warm, connect_timeout = warming_of(engine)
    if connections is not None:
        n_warm = non_negative_int("connections", connections)
    deadline_at = time.monotonic() + connect_timeout
    delay = 0.05
    held: list[Connection] = []
    try:
        while len(held) < n_warm:
            try:
                conn = engine.connect()
                try:
                    conn.exec_driver_sql("select 1")
                    # end the check's transaction: behind a transaction pooler an open one
                    # holds a server connection, and warming more than it has would wait forever
                    conn.rollback()
                except BaseException:
                    with contextlib.suppress(Exception):  # the check's error is the one to see
                        conn.close()  # not warm: it does not count (it did, once)
                    raise
                held.append(conn)
            except sa.exc.DBAPIError as exc:
                delay = connect_delay(exc, delay, deadline_at)
                sleep(delay)
    finally:
        for conn in held:
            conn.close()
    return engine
