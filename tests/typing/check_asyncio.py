"""Checked by mypy (not run): the asyncio API is typed as users call it."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from typing_extensions import assert_type

import dbresilience as dbr
from dbresilience import sqlalchemy as dbr_sa

pool = dbr.AsyncPool("dbname=app")
cache = dbr.AsyncCredentialCache()


async def load_row() -> tuple[Any, ...] | None:
    return await pool.fetchone("select 1")


async def load_credits() -> float:
    return 1.0


async def committed(batch: list[dbr.Record]) -> None:
    await cache.invalidate(*(r.params[0] for r in batch))


async def use() -> None:
    # get_or_load is generic in the loader's value
    assert_type(await cache.get_or_load("u1", load_row), tuple[Any, ...] | None)
    assert_type(await cache.get_or_load("u1", load_credits), float)
    # a coroutine on_commit, typed options
    queue = dbr.AsyncWriteQueue(pool, batch_size=100, on_commit=committed, journal="/tmp/j")
    assert_type(queue, dbr.AsyncWriteQueue)
    dbr.AsyncWriteQueue(pool, batch_sise=100)  # type: ignore[call-arg]
    dbr.AsyncWriteQueue(pool, on_full="drop")  # type: ignore[arg-type]
    # an engine, like SQLAlchemy's: no await
    engine = dbr_sa.create_async_engine("postgresql+psycopg://app@db/app")
    assert_type(engine, AsyncEngine)
    assert_type(await dbr_sa.warm_async_engine(engine), AsyncEngine)
