"""AsyncWriteQueue: the same guarantees through the asyncio twin."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

import dbresilience as dbr
from dbresilience.faults import TemporaryPostgres

from .test_pool import terminate_all
from .test_queue import Ident, events, insert, rows  # noqa: F401 - events is a fixture


async def test_async_kill_storm_keyed_writes_land_exactly_once(
    pg_cluster: TemporaryPostgres,
    events: Ident,  # noqa: F811
) -> None:
    """Connections killed every 50 ms while 5,000 keyed writes flow: exactly 5,000 rows."""
    stop = threading.Event()

    def killer() -> None:
        while not stop.is_set():
            terminate_all(pg_cluster)
            time.sleep(0.05)

    pool = dbr.AsyncPool(pg_cluster.dsn, min_size=2, breaker=None)
    async with pool, dbr.AsyncWriteQueue(pool, batch_size=200) as queue:
        thread = threading.Thread(target=killer)
        thread.start()
        start = time.perf_counter()
        for i in range(5_000):
            queue.submit(insert(events), (i, "a"), key=f"astorm-{i}")
        submit_time = time.perf_counter() - start
        assert await queue.flush(timeout=60)
        stop.set()
        thread.join()
        assert queue.stats()["written"] == 5_000
    assert submit_time < 5.0  # submit never waited on the database
    assert rows(pg_cluster.dsn, events) == 5_000


async def test_async_bad_write_set_aside_and_journal_replayed(
    pg_cluster: TemporaryPostgres,
    events: Ident,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A bad write is set aside; writes left in a journal are replayed by the next queue."""
    journal = str(tmp_path / "async.journal")
    pg_cluster.stop("fast")
    pool = dbr.AsyncPool(pg_cluster.dsn, min_size=1, breaker=None)
    await pool.open(wait=False)
    queue = await dbr.AsyncWriteQueue(pool, journal=journal, drain_timeout=0.2).open()
    for i in range(100):
        queue.submit(insert(events), (i, "j"), key=f"aj-{i}")
    queue.submit(insert(events), ("not a number", "bad"))
    await queue.aclose()  # the database is down: everything stays in the journal
    await pool.close()
    await asyncio.to_thread(pg_cluster.start)
    async with (
        dbr.AsyncPool(pg_cluster.dsn, min_size=1) as pool2,
        dbr.AsyncWriteQueue(pool2, journal=journal) as again,
    ):
        assert again.stats()["replayed"] == 101
        assert await again.flush(timeout=30)
        assert again.stats()["failed"] == 1
    assert rows(pg_cluster.dsn, events) == 100


async def test_async_queue_full_raises_at_once(pg_dsn: str) -> None:
    """submit() never blocks the loop: past max_pending it raises QueueFull."""
    with pytest.raises(ValueError, match="on_full"):
        dbr.AsyncWriteQueue(object(), on_full="block")
    async with dbr.AsyncPool(pg_dsn, min_size=1) as pool:
        queue = await dbr.AsyncWriteQueue(pool, max_pending=3, flush_interval=10).open()
        for i in range(3):
            queue.submit("select %s", (i,))
        with pytest.raises(dbr.QueueFull):
            queue.submit("select 4")
        assert await queue.flush(timeout=10)
        await queue.aclose()
