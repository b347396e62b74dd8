"""Model tests of the threaded WriteQueue (hand-written, not generated): a hypothesis state
machine over good writes, bad writes and flushes, and the SIGTERM drain of ``close_on_exit``,
which only the threaded queue has."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from psycopg import sql

import dbresilience as dbr
from dbresilience.faults import TemporaryPostgres

from .queue_support import Ident, insert, rows


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
        assert s["written"] + s["duplicates"] + s["pending"] + s["failed"] == s["submitted"]

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
                conn.execute("drop table if exists dbr_queue_ledger")


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
