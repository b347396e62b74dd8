"""Failover to a promoted standby: a real streaming replica (``pg_basebackup -R``), promoted while
keyed writes flow through the write queue and reads through the same pool.

Every test here builds its own primary and synchronous replica (a promotion cannot be undone).
The replica is synchronous so that a commit acknowledged to a client is on the standby: then a
lost acknowledged write is the library's fault, never the topology's.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import dbresilience as dbr
from dbresilience.faults import TemporaryPostgres, TemporaryReplica
from tests.conftest import primary_with_replica

# the promise checked here is the benchmark's target (promotion -> first committed write <= 2 s,
# default settings), given a margin for a loaded machine
FIRST_WRITE_WITHIN = 4.0
# and promotion -> first successful read <= 0.5 s, with the same margin (the code before #17
# kept reads out for 3.5 s)
READ_WITHIN = 1.0
INSERT = "insert into ev (k, v) values (%s, %s)"


@pytest.fixture
def pair() -> Iterator[tuple[TemporaryPostgres, TemporaryReplica]]:
    """A throwaway primary with a synchronous streaming replica and a table ``ev (k, v)``
    without a unique constraint: a write applied twice shows."""
    with primary_with_replica(synchronous=True, setup="create table ev (k text, v int)") as pair:
        yield pair


def multi_host(primary: TemporaryPostgres, replica: TemporaryReplica) -> str:
    """The conninfo a service uses across a failover: both hosts, read-write sessions only."""
    return (
        f"host=127.0.0.1,127.0.0.1 port={primary.port},{replica.port} user=postgres "
        "dbname=postgres target_session_attrs=read-write"
    )


class Load:
    """What a failover test records: acknowledged keys, and when the first write committed
    and the first read succeeded after the promotion."""

    def __init__(self) -> None:
        self.acked: list[str] = []
        self.promoted_at: float | None = None
        self.first_commit: float | None = None
        self.reads: list[tuple[float, str | None]] = []
        self.lock = threading.Lock()

    def on_commit(self, batch: Any) -> None:
        now = time.monotonic()
        with self.lock:
            self.acked.extend(record.key for record in batch)
            if self.promoted_at is not None and self.first_commit is None:
                self.first_commit = now

    @contextlib.contextmanager
    def running(self, pool: dbr.Pool, queue: dbr.WriteQueue, write_every: float) -> Iterator[None]:
        """While the block runs: keyed writes through *queue* every *write_every* seconds and a
        read (1 s deadline) on *pool* every 50 ms, each in its own thread, recorded here; when
        it ends, both threads stop and are joined."""
        stop = threading.Event()

        def write() -> None:
            i = 0
            while not stop.is_set():
                queue.submit(INSERT, (f"k{i}", i), key=f"k{i}")
                i += 1
                time.sleep(write_every)

        def read() -> None:
            while not stop.is_set():
                t = time.monotonic()
                try:
                    pool.fetchone("select 1", timeout=1.0)
                    self.reads.append((t, None))
                except Exception as exc:
                    self.reads.append((t, type(exc).__name__))
                time.sleep(0.05)

        threads = [threading.Thread(target=write), threading.Thread(target=read)]
        for thread in threads:
            thread.start()
        try:
            yield
        finally:
            stop.set()
            for thread in threads:
                thread.join()

    def check(self, new_primary: TemporaryPostgres, applied: int) -> dict[str, float]:
        """0 acknowledged writes lost, none applied twice; the recovery figures. *applied* is
        the queue's ``written + duplicates``: every key is submitted once, so a duplicate is a
        batch whose COMMIT reached the standby before the crash while its answer never reached
        the queue; going again, the queue found its keys in the replicated ledger."""
        with psycopg.connect(new_primary.dsn) as conn:
            keys = [str(r[0]) for r in conn.execute("select k from ev").fetchall()]
        assert len(keys) == len(set(keys)), "a keyed write was applied twice"
        lost = set(self.acked) - set(keys)
        assert not lost, f"{len(lost)} acknowledged writes lost"
        assert len(keys) == applied
        assert self.promoted_at is not None
        assert self.first_commit is not None
        first_write = self.first_commit - self.promoted_at
        assert first_write <= FIRST_WRITE_WITHIN
        ok = [t for t, error in self.reads if error is None and t >= self.promoted_at]
        return {
            "first_write": first_write,
            "first_read": ok[0] - self.promoted_at if ok else float("inf"),
        }


@pytest.mark.parametrize("how", ["immediate", "fast"])
def test_failover_after_a_crash_loses_no_acknowledged_write(
    pair: tuple[TemporaryPostgres, TemporaryReplica], how: str
) -> None:
    """Primary crashed (immediate stop: connections reset) or shut down (fast: 57P01), standby
    promoted: the pool finds the new primary, the queue's keyed writes all land exactly once,
    reads come back."""
    primary, replica = pair
    load = Load()
    with (
        dbr.Pool(multi_host(primary, replica), min_size=2, max_size=4) as pool,
        dbr.WriteQueue(pool, on_commit=load.on_commit) as queue,
    ):
        with load.running(pool, queue, write_every=0.005):
            time.sleep(0.5)
            primary.stop(how)
            time.sleep(0.5)
            load.promoted_at = replica.promote()
            deadline = time.monotonic() + FIRST_WRITE_WITHIN + 1
            while load.first_commit is None and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)
        assert queue.flush(20)
        stats = queue.stats()
        assert stats["failed"] == 0
        assert pool.stats()["generation"] >= 1  # the old primary's connections were retired
        assert pool.fetchone("select not pg_is_in_recovery(), current_setting('port')::int") == (
            True,
            replica.port,
        )
    figures = load.check(replica, stats["written"] + stats["duplicates"])
    assert figures["first_read"] <= FIRST_WRITE_WITHIN


async def test_async_failover_from_a_fenced_primary(
    pair: tuple[TemporaryPostgres, TemporaryReplica],
) -> None:
    """The old primary stays up but read-only (fenced, as failover tools do): writes get 25006,
    the pool retires that generation and reconnects to the promoted standby; keyed writes land
    exactly once."""
    primary, replica = pair
    load = Load()
    stop = asyncio.Event()
    async with (
        dbr.AsyncPool(multi_host(primary, replica), min_size=2, max_size=4) as pool,
        dbr.AsyncWriteQueue(pool, on_commit=load.on_commit) as queue,
    ):

        async def write() -> None:
            i = 0
            while not stop.is_set():
                queue.submit(INSERT, (f"k{i}", i), key=f"k{i}")
                i += 1
                await asyncio.sleep(0.005)

        tasks = [asyncio.create_task(write())]
        await asyncio.sleep(0.5)
        generation = pool.stats()["generation"]
        fence = "alter system set default_transaction_read_only = on"
        await asyncio.to_thread(primary.execute, fence)
        await asyncio.to_thread(primary.reload, ("default_transaction_read_only", "on"))
        await asyncio.sleep(0.3)
        load.promoted_at = await asyncio.to_thread(replica.promote)
        deadline = time.monotonic() + FIRST_WRITE_WITHIN + 1
        while load.first_commit is None and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # polls what the queue's on_commit hook records
        stop.set()
        await asyncio.gather(*tasks)
        assert await queue.flush(20)
        stats = queue.stats()
        assert stats["failed"] == 0
        assert pool.stats()["generation"] > generation  # 25006 retired the fenced generation
        row = await pool.fetchone("select not pg_is_in_recovery(), current_setting('port')::int")
        assert row == (True, replica.port)
        # the fenced primary kept every connection open and took no write after the fence
        with psycopg.connect(primary.dsn) as conn:
            on_old = conn.execute("select count(*) from ev").fetchone()
    load.check(replica, stats["written"] + stats["duplicates"])
    assert on_old is not None
    assert int(on_old[0]) <= stats["written"]


def test_replica_harness_lags_stops_and_promotes(
    pair: tuple[TemporaryPostgres, TemporaryReplica],
) -> None:
    """The harness itself: a paused replica keeps the old data, resumes and catches up, refuses
    writes (25006) until promoted."""
    primary, replica = pair
    primary.execute("insert into ev values ('a', 1)")
    replica.wait_caught_up()
    assert replica.execute("select count(*) from ev") == (1,)
    replica.pause_replay()
    primary.execute("insert into ev values ('b', 2)")
    time.sleep(0.2)
    assert replica.execute("select count(*) from ev") == (1,)
    with pytest.raises(TimeoutError):
        replica.wait_caught_up(timeout=0.3)
    replica.resume_replay()
    replica.wait_caught_up()
    assert replica.execute("select count(*) from ev") == (2,)
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        replica.execute("insert into ev values ('c', 3)")
    assert replica.in_recovery
    replica.promote()
    assert not replica.in_recovery
    replica.execute("insert into ev values ('c', 3)")


def test_reads_and_queued_writes_come_back_at_once_after_a_long_failover(
    pair: tuple[TemporaryPostgres, TemporaryReplica],
) -> None:
    """#17's scenario: no primary until failing reads have opened the pool's breaker; a reader
    calling fetchone every 50 ms succeeds within 0.5 s of the promotion and the first queued
    write commits within 2 s (the reconnect is evidence: the breaker probes at once instead of
    waiting out open_for, and wakes the queue's backoff).

    Nothing here depends on how many calls the machine manages: the breaker counts over 60 s,
    so the reads' failures open it however slowly they come, and the test waits for that state;
    it stays open for 60 s, so only the evidence can let reads in before the test ends; and
    the test waits for the first read and the first commit, not for a fixed time."""
    primary, replica = pair
    load = Load()
    breaker = dbr.CircuitBreaker(window=60, open_for=60)
    with (
        dbr.Pool(multi_host(primary, replica), breaker=breaker) as pool,
        dbr.WriteQueue(pool, on_commit=load.on_commit) as queue,
    ):

        def back() -> bool:
            with load.lock:
                committed = load.first_commit is not None
            return committed and any(
                error is None and t >= (load.promoted_at or 0) for t, error in list(load.reads)
            )

        with load.running(pool, queue, write_every=0.01):
            while not any(error is None for _, error in list(load.reads)):
                time.sleep(0.01)  # the pool serves before the crash
            primary.kill()
            hang = time.monotonic() + 120  # a guard against a hang, not a deadline
            while breaker.state is not dbr.CircuitState.OPEN:  # the reads' failures open it
                assert time.monotonic() < hang, "the breaker did not open"
                time.sleep(0.02)
            load.promoted_at = replica.promote()
            while not back():
                assert time.monotonic() < hang, "no read or no committed write after promotion"
                time.sleep(0.02)
        assert queue.flush(20)
        stats = queue.stats()
    figures = load.check(replica, stats["written"] + stats["duplicates"])
    assert figures["first_read"] <= READ_WITHIN
    assert figures["first_write"] <= FIRST_WRITE_WITHIN
