"""Attacks on issue #13's promises that found defects (each test failed before its fix).

Errors scoped to the database: an ``OSError``/``TimeoutError`` raised by the caller's own
code (an SMTP or HTTP client) inside ``pool.connection()`` says nothing about the database, so
it must not retire the pool's connections (a webhook outage would otherwise reconnect every
pooled connection on every request).
"""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

import dbresilience as dbr
from dbresilience.faults import FaultProxy


@pytest.mark.parametrize(
    "error",
    [ConnectionResetError("webhook peer reset"), BrokenPipeError(), TimeoutError("smtp")],
    ids=type,
)
def test_a_callers_os_error_in_a_block_keeps_the_pool(pg_dsn: str, error: Exception) -> None:
    with dbr.Pool(pg_dsn, min_size=2, max_size=2) as pool:
        with pool.connection() as conn:
            pid = conn.info.backend_pid
        with pytest.raises(type(error)), pool.connection():
            raise error
        assert pool.stats()["generation"] == 0
        with pool.connection() as conn:
            assert conn.info.backend_pid == pid  # the same idle connection, not a new one


def test_a_database_disconnect_in_a_block_still_retires_the_generation(
    pg_proxy: tuple[FaultProxy, str],
) -> None:
    proxy, dsn = pg_proxy
    with dbr.Pool(dsn, min_size=2, max_size=2) as pool:

        def lost_in_a_block() -> None:
            with pool.connection() as conn:
                proxy.reset()
                time.sleep(0.05)
                conn.execute("select 1")

        with pytest.raises(psycopg.OperationalError):
            lost_in_a_block()
        assert pool.stats()["generation"] == 1
        assert pool.fetchone("select 1") == (1,)


async def test_a_callers_os_error_in_an_async_block_keeps_the_pool(pg_dsn: str) -> None:
    async with dbr.AsyncPool(pg_dsn, min_size=2, max_size=2) as pool:

        async def smtp_down_in_a_block() -> None:
            async with pool.connection():
                await asyncio.sleep(0)
                raise ConnectionRefusedError("smtp down")

        with pytest.raises(ConnectionRefusedError):
            await smtp_down_in_a_block()
        assert pool.stats()["generation"] == 0
