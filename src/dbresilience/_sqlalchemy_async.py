"""``create_async_engine``: a SQLAlchemy engine with the pool's timeouts, warming, checks,
deadline and classification (see :mod:`dbresilience.sqlalchemy`)."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from dbresilience._acompat import asleep
from dbresilience._sqlalchemy_base import connect_delay, instrument, prepare

if True:  # ASYNC
    from sqlalchemy.ext.asyncio import create_async_engine as _sa_create_async_engine

__all__ = ["create_async_engine"]


async def create_async_engine(
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
    **engine_kwargs: Any,
) -> AsyncEngine:
    """A SQLAlchemy ``AsyncEngine`` (psycopg 3) with dbresilience's timeouts and deadline.

    ``engine = await create_async_engine("postgresql+psycopg://...")`` (the asyncio factory
    is a coroutine: warming is I/O). Opens and checks ``warm`` connections (default
    ``pool_size``) before returning: raises at once for errors waiting cannot fix (P1000,
    P1003, TLS) and after ``connect_timeout`` for transient ones. Every statement is bounded
    by ``query_timeout`` (the socket is shut down and :class:`dbresilience.QueryTimeout`
    raised). Other keyword arguments go to SQLAlchemy's engine factory. Invalid arguments
    raise ``TypeError``/``ValueError`` naming them.
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
    )
    if True:  # ASYNC
        engine = _sa_create_async_engine(parsed, **options)
        instrument(engine.sync_engine, config)
    else:
        engine = sa.create_engine(parsed, **options)
        instrument(engine, config)
    deadline_at = time.monotonic() + config.connect_timeout
    delay = 0.05
    held: list[AsyncConnection] = []
    try:
        while len(held) < n_warm:
            try:
                conn = await engine.connect()
                await conn.exec_driver_sql("select 1")
                held.append(conn)
            except sa.exc.DBAPIError as exc:
                delay = connect_delay(exc, delay, deadline_at)
                await asleep(delay)
    except BaseException:
        for conn in held:
            await conn.close()
        await engine.dispose()
        raise
    for conn in held:
        await conn.close()
    return engine
