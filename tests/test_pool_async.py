"""AsyncPool: the same faults as tests/test_pool.py, through the asyncio twin."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

import dbresilience as dbr
from dbresilience.faults import FaultProxy, TemporaryPostgres, free_port

from .test_pool import MARGIN, backends, count, terminate_all


async def test_open_warms_and_serves(pg_dsn: str) -> None:
    """async with opens min_size connections; fetchone/fetchall/execute work."""
    async with dbr.AsyncPool(pg_dsn, min_size=3, max_size=5) as pool:
        assert pool.stats()["size"] >= 3
        assert await pool.fetchone("select 1") == (1,)
        assert await pool.fetchall("select generate_series(1, 2)") == [(1,), (2,)]
        assert await pool.fetchone("select 1 as a", row_factory=dict_row) == {"a": 1}
        assert await pool.execute("select 1") == 1


async def test_open_against_refused_port_fails_with_p1001(pg_dsn: str) -> None:
    """A refused port: P1001 after connect_timeout at most."""
    dsn = psycopg.conninfo.make_conninfo(pg_dsn, port=str(free_port()))
    pool = dbr.AsyncPool(dsn, connect_timeout=1.0)
    start = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as info:
        await pool.open()
    assert time.monotonic() - start < 1.0 + MARGIN
    assert dbr.classify(info.value).code == "P1001"


@pytest.mark.parametrize(("change", "code"), [("user", "P1000"), ("dbname", "P1003")])
async def test_open_fails_at_once_on_fatal_errors(pg_dsn: str, change: str, code: str) -> None:
    """Unknown role and missing database raise at once."""
    dsn = psycopg.conninfo.make_conninfo(pg_dsn, **{change: "dbr_missing_x"})
    pool = dbr.AsyncPool(dsn, connect_timeout=10.0)
    start = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as info:
        await pool.open()
    assert time.monotonic() - start < 1.0
    assert dbr.classify(info.value).code == code


async def test_open_without_wait_starts_while_the_database_is_down(
    pg_cluster: TemporaryPostgres,
) -> None:
    """open(wait=False) with the server down: calls fail fast, then serve once it is up."""
    pg_cluster.stop("fast")
    pool = dbr.AsyncPool(pg_cluster.dsn, min_size=2, query_timeout=2.0)
    await pool.open(wait=False)
    try:
        await asyncio.sleep(0.3)
        with pytest.raises(dbr.DatabaseUnavailable):
            await pool.fetchone("select 1")
        await asyncio.to_thread(pg_cluster.start)
        back = time.monotonic()
        while True:
            try:
                assert await pool.fetchone("select 1") == (1,)
                break
            except dbr.DatabaseUnavailable:
                assert time.monotonic() - back < 2.0
                await asyncio.sleep(0.02)
    finally:
        await pool.close()


async def test_frozen_backend_returns_within_the_deadline(pg_cluster: TemporaryPostgres) -> None:
    """Every backend SIGSTOPped: QueryTimeout at the deadline, and the event loop kept running."""
    async with dbr.AsyncPool(pg_cluster.dsn, min_size=2, max_size=4, query_timeout=1.0) as pool:
        for pid in backends(pg_cluster):
            pg_cluster.freeze(pid)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        tick_task = asyncio.create_task(ticker())
        start = time.monotonic()
        with pytest.raises(dbr.QueryTimeout) as info:
            await pool.fetchone("select 1")
        elapsed = time.monotonic() - start
        tick_task.cancel()
        assert 1.0 <= elapsed < 1.0 + MARGIN
        assert ticks > 30
        assert dbr.classify(info.value).code == "P1008"
        assert await pool.fetchone("select 2", timeout=3.0) == (2,)


async def test_proxy_freeze_ends_at_the_deadline(pg_proxy: tuple[FaultProxy, str]) -> None:
    """A silent network: QueryTimeout at the deadline; restored, it serves."""
    proxy, dsn = pg_proxy
    async with dbr.AsyncPool(dsn, min_size=1, max_size=2, query_timeout=0.8) as pool:
        proxy.freeze()
        start = time.monotonic()
        with pytest.raises(dbr.QueryTimeout):
            await pool.fetchone("select 1")
        assert time.monotonic() - start < 0.8 + MARGIN
        proxy.restore()
        assert await pool.fetchone("select 1") == (1,)


async def test_pool_busy_gives_p2024(pg_dsn: str) -> None:
    """With every connection held, AcquireTimeout (P2024) after the call's timeout."""
    pool = dbr.AsyncPool(pg_dsn, min_size=1, max_size=1, breaker=None)
    async with pool, pool.connection():
        start = time.monotonic()
        with pytest.raises(dbr.AcquireTimeout):
            await pool.fetchone("select 1", timeout=0.4)
        assert 0.3 < time.monotonic() - start < 0.4 + MARGIN


async def test_every_connection_terminated_next_reads_and_writes_succeed(
    pg_cluster: TemporaryPostgres, table: sql.Identifier
) -> None:
    """Terminated backends: the next read and a non-idempotent write succeed, the write once."""
    async with dbr.AsyncPool(pg_cluster.dsn, min_size=4, max_size=4) as pool:
        assert terminate_all(pg_cluster) == 4
        await asyncio.sleep(0.1)
        assert await pool.fetchone("select 1") == (1,)
        terminate_all(pg_cluster)
        await asyncio.sleep(0.1)
        assert await pool.execute(sql.SQL("insert into {} (v) values (1)").format(table)) == 1
    assert count(pg_cluster, table) == 1


async def test_restart_serves_again_within_restart_time_plus_one_backoff_step(
    pg_cluster: TemporaryPostgres,
) -> None:
    """Server stopped and restarted: serving again within a second of it being up."""
    async with dbr.AsyncPool(pg_cluster.dsn, min_size=2, query_timeout=1.0) as pool:
        await asyncio.to_thread(pg_cluster.stop, "fast")
        with pytest.raises(psycopg.OperationalError):
            await pool.fetchone("select 1")
        await asyncio.sleep(1.5)
        await asyncio.to_thread(pg_cluster.start)
        back = time.monotonic()
        while True:
            try:
                await pool.fetchone("select 1")
                break
            except (psycopg.OperationalError, dbr.CircuitOpen):
                assert time.monotonic() - back < 1.5
                await asyncio.sleep(0.02)


async def test_transaction_is_rerun_on_serialization_failure(
    pg_cluster: TemporaryPostgres, table: sql.Identifier
) -> None:
    """A 40001 in the first attempt: the whole transaction runs again, committed once."""
    attempts = 0

    async def work(conn: psycopg.AsyncConnection[object]) -> str:
        nonlocal attempts
        attempts += 1
        await conn.execute(sql.SQL("insert into {} (v) values (1)").format(table))
        if attempts == 1:
            await conn.execute(
                "do $$ begin raise exception 'conflict' using errcode = '40001'; end $$"
            )
        return "ok"

    async with dbr.AsyncPool(pg_cluster.dsn, min_size=1) as pool:
        assert await pool.transaction(work) == "ok"
    assert attempts == 2
    assert count(pg_cluster, table) == 1


async def test_transaction_lost_during_commit_raises_commit_unknown(
    pg_proxy: tuple[FaultProxy, str],
    table_name: str,
    pg_conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    """The network freezes as COMMIT goes out: CommitUnknown, not re-run."""
    proxy, dsn = pg_proxy
    t = sql.Identifier(table_name)
    pg_conn.execute(sql.SQL("create table {} (v int)").format(t))
    attempts = 0

    async def work(conn: psycopg.AsyncConnection[object]) -> None:
        nonlocal attempts
        attempts += 1
        await conn.execute(sql.SQL("insert into {} values (1)").format(t))
        await asyncio.to_thread(proxy.freeze)

    async with dbr.AsyncPool(dsn, min_size=1, query_timeout=1.0) as pool:
        with pytest.raises(dbr.CommitUnknown):
            await pool.transaction(work)
        proxy.restore()
    assert attempts == 1


async def test_cancelling_a_call_gives_the_connection_back(pg_dsn: str) -> None:
    """A task cancelled mid-query does not leak its connection or count as a failure."""
    async with dbr.AsyncPool(pg_dsn, min_size=1, max_size=1) as pool:
        task = asyncio.create_task(pool.fetchone("select pg_sleep(5)"))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await pool.fetchone("select 1", timeout=3) == (1,)
        assert pool.stats()["failures"] == 0


def test_sync_and_async_pools_have_the_same_methods() -> None:
    """The twins stay parallel, method for method."""
    public = {n for n in dir(dbr.Pool) if not n.startswith("_")}
    apublic = {n for n in dir(dbr.AsyncPool) if not n.startswith("_")}
    assert public == apublic


async def test_an_async_pool_can_be_opened_again(pg_dsn: str) -> None:
    """close() then open() works for the async twin too."""
    pool = dbr.AsyncPool(pg_dsn, min_size=1)
    await pool.open()
    await pool.close()
    async with pool:
        assert await pool.fetchone("select 1") == (1,)
