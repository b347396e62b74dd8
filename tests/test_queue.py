"""WriteQueue against the real PostgreSQL: kill storms, crashes, frozen servers, bad writes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from psycopg import sql

import dbresilience as dbr
from dbresilience.faults import FaultProxy, TemporaryPostgres

from .test_pool import terminate_all

Ident = sql.Identifier


def insert(table: Ident) -> str:
    """An INSERT for *table* as the plain string a service would submit."""
    return f"insert into {table.as_string()} (k, v) values (%s, %s)"


def rows(dsn: str, table: Ident) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(sql.SQL("select count(*) from {}").format(table)).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def events(pg_cluster: TemporaryPostgres) -> Iterator[Ident]:
    """A table (k int, v text) with NO unique constraint: a write applied twice shows."""
    name = Ident(f"dbr_events_{time.monotonic_ns()}")
    with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create table {} (k int, v text)").format(name))
    yield name
    if pg_cluster.running:
        with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("drop table if exists {}").format(name))
            conn.execute("drop table if exists dbr_write_ledger")


def test_kill_storm_20000_keyed_writes_land_exactly_once(
    pg_cluster: TemporaryPostgres, events: Ident
) -> None:
    """Every connection killed every 50 ms while 20,000 keyed writes flow: exactly 20,000 rows."""
    stop = threading.Event()

    def killer() -> None:
        while not stop.is_set():
            terminate_all(pg_cluster)
            time.sleep(0.05)

    with dbr.Pool(pg_cluster.dsn, min_size=2, max_size=4, breaker=None) as pool:
        thread = threading.Thread(target=killer)
        with dbr.WriteQueue(pool, batch_size=200) as queue:
            thread.start()
            for i in range(20_000):
                queue.submit(insert(events), (i, "e"), key=f"storm-{i}")
            assert queue.flush(timeout=60)
            stop.set()
            thread.join()
            stats = queue.stats()
    assert rows(pg_cluster.dsn, events) == 20_000
    assert stats["written"] == 20_000
    assert stats["retried"] > 0  # the storm did hit batches


def test_a_bad_write_is_set_aside_while_the_others_commit(
    pg_dsn: str, table_name: str, pg_conn: psycopg.Connection[tuple[object, ...]]
) -> None:
    """A unique violation and bad SQL among 1,000 writes: 998 commit, 2 set aside with errors."""
    t = Ident(table_name)
    pg_conn.execute(sql.SQL("create table {} (k int primary key, v text)").format(t))
    seen: list[dbr.FailedWrite] = []
    with (
        dbr.Pool(pg_dsn, min_size=1) as pool,
        dbr.WriteQueue(pool, on_failed=seen.append, ledger_table=f"{table_name}_ledger") as queue,
    ):
        for i in range(998):
            queue.submit(insert(t), (i, "ok"))
        queue.submit(insert(t), (5, "duplicate primary key"))
        queue.submit(f"insert into {t.as_string()} (nope) values (%s)", (1,))
        assert queue.flush(timeout=30)
        stats = queue.stats()
    assert rows(pg_dsn, t) == 998
    assert stats["failed"] == 2
    assert sorted(f.code for f in seen) == ["P2002", "P2022"]
    assert "duplicate key" in seen[0].error or "duplicate key" in seen[1].error
    assert stats["written"] + stats["pending"] + stats["failed"] == stats["submitted"]
    pg_conn.execute(sql.SQL("drop table if exists {}").format(Ident(f"{table_name}_ledger")))


def test_crash_with_os_exit_then_reopen_applies_exactly_what_was_submitted(
    pg_cluster: TemporaryPostgres, events: Ident, tmp_path: Path
) -> None:
    """A process submits 3,000 keyed writes and dies with os._exit: reopening its journal
    applies the ones it had not committed, and none twice."""
    journal = tmp_path / "writes.journal"
    child = textwrap.dedent(
        f"""
        import os
        import dbresilience as dbr
        pool = dbr.Pool({pg_cluster.dsn!r}, min_size=1)
        pool.open()
        queue = dbr.WriteQueue(pool, journal={str(journal)!r}, batch_size=100).open()
        for i in range(3000):
            queue.submit({insert(events)!r}, (i, "crash"), key=f"crash-{{i}}")
        print("submitted", flush=True)
        os._exit(0)  # no close, no drain: whatever was in flight is cut off
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, timeout=60, check=True
    )
    assert "submitted" in out.stdout
    before = rows(pg_cluster.dsn, events)
    assert before < 3000  # the crash really cut writes off
    with (
        dbr.Pool(pg_cluster.dsn, min_size=1) as pool,
        dbr.WriteQueue(pool, journal=str(journal)) as queue,
    ):
        assert queue.stats()["replayed"] >= 3000 - before
        assert queue.flush(timeout=30)
    assert rows(pg_cluster.dsn, events) == 3000


def test_a_torn_journal_tail_is_recovered(
    pg_cluster: TemporaryPostgres, events: Ident, tmp_path: Path
) -> None:
    """A journal whose last line was cut mid-write: every complete write is applied."""
    journal = tmp_path / "torn.journal"
    lines = [
        json.dumps({"s": i, "q": insert(events), "p": [i, "t"], "k": f"torn-{i}"})
        for i in range(1, 51)
    ]
    journal.write_text("\n".join(lines) + "\n" + lines[0][: len(lines[0]) // 2])
    with (
        dbr.Pool(pg_cluster.dsn, min_size=1) as pool,
        dbr.WriteQueue(pool, journal=str(journal)) as queue,
    ):
        assert queue.stats()["replayed"] == 50
        assert queue.flush(timeout=30)
        queue.submit(insert(events), (51, "after"), key="torn-51")
        assert queue.flush(timeout=30)
    assert rows(pg_cluster.dsn, events) == 51


def test_frozen_database_submit_stays_fast_and_everything_lands_after(
    pg_cluster: TemporaryPostgres, events: Ident, make_proxy: object
) -> None:
    """The database silent behind the proxy: submit never waits; restored, every write lands."""
    proxy = make_proxy("127.0.0.1", pg_cluster.port)  # type: ignore[operator]
    assert isinstance(proxy, FaultProxy)
    dsn = proxy.dsn(pg_cluster.dsn)
    with (
        dbr.Pool(dsn, min_size=1, query_timeout=1.0, breaker=None) as pool,
        dbr.WriteQueue(pool, batch_timeout=1.0) as queue,
    ):
        proxy.freeze()
        slowest = 0.0
        for i in range(2_000):
            start = time.perf_counter()
            queue.submit(insert(events), (i, "frozen"), key=f"frozen-{i}")
            slowest = max(slowest, time.perf_counter() - start)
        assert slowest < 0.05  # the promise: submit returns at once, whatever the database does
        assert not queue.flush(timeout=1.5)
        proxy.restore()
        assert queue.flush(timeout=30)
    assert rows(pg_cluster.dsn, events) == 2_000


def test_server_restarted_mid_flush_loses_nothing(
    pg_cluster: TemporaryPostgres, events: Ident
) -> None:
    """The server restarts while 5,000 keyed writes are being written: all 5,000 land, once."""
    with (
        dbr.Pool(pg_cluster.dsn, min_size=2, breaker=None) as pool,
        dbr.WriteQueue(pool, batch_size=100) as queue,
    ):
        for i in range(5_000):
            queue.submit(insert(events), (i, "restart"), key=f"restart-{i}")
        pg_cluster.restart()
        assert queue.flush(timeout=60)
    assert rows(pg_cluster.dsn, events) == 5_000


def test_backpressure_raise_and_block(pg_cluster: TemporaryPostgres, events: Ident) -> None:
    """max_pending bounds memory: on_full='raise' raises QueueFull; 'block' waits, then raises."""
    pg_cluster.stop("fast")
    try:
        pool = dbr.Pool(pg_cluster.dsn, min_size=0, breaker=None)
        pool.open(wait=False)
        with dbr.WriteQueue(pool, max_pending=10, on_full="raise", drain_timeout=0) as queue:
            for i in range(10):
                queue.submit(insert(events), (i, "x"))
            with pytest.raises(dbr.QueueFull):
                queue.submit(insert(events), (11, "x"))
        with dbr.WriteQueue(pool, max_pending=5, block_timeout=0.2, drain_timeout=0) as queue:
            for i in range(5):
                queue.submit(insert(events), (i, "x"))
            start = time.monotonic()
            with pytest.raises(dbr.QueueFull):
                queue.submit(insert(events), (6, "x"))
            assert time.monotonic() - start >= 0.2
        pool.close()
    finally:
        pg_cluster.start()


def test_submit_checks_its_arguments_and_the_queue_state(pg_dsn: str) -> None:
    """Bad arguments are TypeErrors at submit; a closed queue raises QueueClosed."""
    with dbr.Pool(pg_dsn, min_size=1) as pool:
        queue = dbr.WriteQueue(pool)
        with pytest.raises(dbr.QueueClosed):
            queue.submit("select 1")
        with queue:
            with pytest.raises(TypeError):
                queue.submit(b"select 1")  # type: ignore[arg-type]
            with pytest.raises(TypeError):
                queue.submit("select 1", key=5)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="batch_size"):
            dbr.WriteQueue(pool, batch_size=0)
        with pytest.raises(ValueError, match="on_full"):
            dbr.WriteQueue(pool, on_full="spill")
        with pytest.raises(ValueError, match="ledger_table"):
            dbr.WriteQueue(pool, ledger_table="x; drop table y")


class QueueMachine(RuleBasedStateMachine):
    """Random good writes, bad writes and flushes: the counts always add up."""

    pool: dbr.Pool
    dsn: str

    def __init__(self) -> None:
        super().__init__()
        self.table = Ident(f"dbr_sm_{time.monotonic_ns()}")
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("create table {} (k int primary key, v text)").format(self.table))
        self.queue = dbr.WriteQueue(self.pool, flush_interval=0.01).open()
        self.next = 0

    @rule(n=st.integers(1, 30))
    def good(self, n: int) -> None:
        for _ in range(n):
            self.next += 1
            self.queue.submit(insert(self.table), (self.next, "ok"))

    @rule()
    def bad(self) -> None:
        self.queue.submit(insert(self.table), ("not a number", "bad"))

    @rule()
    def flush(self) -> None:
        assert self.queue.flush(timeout=30)
        assert self.queue.stats()["pending"] == 0

    @invariant()
    def counts_add_up(self) -> None:
        s = self.queue.stats()
        assert s["written"] + s["pending"] + s["failed"] == s["submitted"]

    def teardown(self) -> None:
        self.queue.close()
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("drop table if exists {}").format(self.table))


def test_counts_always_add_up(pg_dsn: str) -> None:
    """A hypothesis state machine keeps written + pending + failed == submitted."""
    with dbr.Pool(pg_dsn, min_size=1) as pool:
        QueueMachine.pool = pool
        QueueMachine.dsn = pg_dsn
        from hypothesis.stateful import run_state_machine_as_test

        try:
            run_state_machine_as_test(
                QueueMachine,
                settings=settings(max_examples=15, stateful_step_count=12, deadline=None),
            )
        finally:
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                conn.execute("drop table if exists dbr_write_ledger")


def test_sigterm_drains_the_queue_before_exit(
    pg_cluster: TemporaryPostgres, events: Ident, tmp_path: Path
) -> None:
    """close_on_exit(): a SIGTERM drains what is pending, then the process exits (143)."""
    journal = tmp_path / "term.journal"
    child = textwrap.dedent(
        f"""
        import time
        import dbresilience as dbr
        pool = dbr.Pool({pg_cluster.dsn!r}, min_size=1)
        pool.open()
        queue = dbr.WriteQueue(pool, journal={str(journal)!r}, flush_interval=60,
                               batch_size=10_000).open()
        queue.close_on_exit()
        for i in range(500):
            queue.submit({insert(events)!r}, (i, "term"), key=f"term-{{i}}")
        print("ready", flush=True)
        time.sleep(60)  # nothing would be written for a minute: only the drain writes
        """
    )
    with subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        assert rows(pg_cluster.dsn, events) == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 128 + signal.SIGTERM
    assert rows(pg_cluster.dsn, events) == 500
    with (
        dbr.Pool(pg_cluster.dsn, min_size=1) as pool,
        dbr.WriteQueue(pool, journal=str(journal)) as queue,
    ):
        assert queue.stats()["replayed"] == 0  # the journal says everything was done


def test_spill_keeps_memory_bounded_and_loses_nothing(
    pg_cluster: TemporaryPostgres, tmp_path: Path
) -> None:
    """on_full='spill': past max_pending, writes live in the journal only; all land, in order."""
    table = Ident(f"dbr_spill_{time.monotonic_ns()}")
    with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create table {} (id serial, k int, v text)").format(table))
    try:
        with (
            dbr.Pool(pg_cluster.dsn, min_size=1) as pool,
            dbr.WriteQueue(
                pool,
                journal=str(tmp_path / "spill.journal"),
                max_pending=50,
                on_full="spill",
                batch_size=20,
            ) as queue,
        ):
            largest = 0
            for i in range(2_000):
                queue.submit(insert(table), (i, "s"), key=f"spill-{i}")
                largest = max(largest, len(queue._buffer))
            assert largest <= 50  # memory stayed bounded
            assert queue.stats()["spilled"] > 0
            assert queue.flush(timeout=60)
            stats = queue.stats()
        assert stats["written"] == 2_000
        assert stats["pending"] == 0
        with psycopg.connect(pg_cluster.dsn) as conn:
            ks = [r[0] for r in conn.execute(sql.SQL("select k from {} order by id").format(table))]
        assert ks == list(range(2_000))  # applied once each, in submission order
    finally:
        with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("drop table if exists {}").format(table))
            conn.execute("drop table if exists dbr_write_ledger")
