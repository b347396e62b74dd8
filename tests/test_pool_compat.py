"""The psycopg_pool surface the pools rely on beyond its public API is still there.

This fails when a psycopg_pool release renames or reshapes a private method the pools override
(``dbresilience._pool_compat.PRIVATE_API``): then the overrides must be revisited, not the test.
"""

from __future__ import annotations

import collections
import inspect

import psycopg_pool
import psycopg_pool.base
import pytest

import dbresilience as dbr
from dbresilience._pool_compat import (
    PRIVATE_API,
    PRIVATE_ATTRIBUTES,
    AsyncPoolConnection,
    PoolConnection,
)


@pytest.mark.parametrize("dotted", sorted(PRIVATE_API))
def test_private_psycopg_pool_api_is_unchanged(dotted: str) -> None:
    """Each private name exists with the parameters the overrides use."""
    target: object = psycopg_pool
    for part in dotted.split("."):
        assert hasattr(target, part), f"psycopg_pool no longer has {dotted}"
        target = getattr(target, part)
    func = target.__init__ if isinstance(target, type) else target  # type: ignore[misc]
    params = tuple(inspect.signature(func).parameters)
    assert params == PRIVATE_API[dotted], f"{dotted} now takes {params}"


def test_private_psycopg_pool_attributes_are_there(pg_dsn: str) -> None:
    """An open pool has the private attributes the pools use: a lock and a deque of waiters."""
    with dbr.Pool(pg_dsn, min_size=1) as pool:
        for name in PRIVATE_ATTRIBUTES:
            assert hasattr(pool._pool, name), f"psycopg_pool pools no longer have {name}"
        assert isinstance(pool._pool._waiting, collections.deque)


async def test_private_psycopg_pool_attributes_are_there_async(pg_dsn: str) -> None:
    """The same for the asyncio pool, whose lock is made when it opens."""
    async with dbr.AsyncPool(pg_dsn, min_size=1) as pool:
        for name in PRIVATE_ATTRIBUTES:
            assert hasattr(pool._pool, name), f"psycopg_pool pools no longer have {name}"
        assert isinstance(pool._pool._waiting, collections.deque)


def test_pools_hand_out_their_connection_class(pg_dsn: str) -> None:
    """connection_class is psycopg_pool's public hook: the pool's connections are ours."""
    with dbr.Pool(pg_dsn, min_size=1) as pool, pool.connection() as conn:
        assert isinstance(conn, PoolConnection)
        assert conn._dbr_used_at >= 0.0


async def test_async_pools_hand_out_their_connection_class(pg_dsn: str) -> None:
    """The same for AsyncPool."""
    async with dbr.AsyncPool(pg_dsn, min_size=1) as pool, pool.connection() as conn:
        assert isinstance(conn, AsyncPoolConnection)
