"""WriteQueue with the settings a user gets, beside what they would write by hand.

Every candidate writes the same rows ``(k int, v text)`` into its own table, once per round;
rounds alternate the candidates in a shuffled order, and each figure is the median of the
rounds with their range (min-max): the machine is shared, so a single run says little.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable

import psycopg
from psycopg import sql

import dbresilience as dbr

from ._common import interleaved_rounds, print_table, spread

DSN = os.environ.get("DBR_TEST_DSN", "host=127.0.0.1 port=5432 dbname=test user=postgres")

#: the library's defaults, printed beside every queue row
DEFAULTS = "batch_size=5000, flush_interval=0.05"


def _literal(values: list[str]) -> str:
    return "{" + ",".join('"' + v + '"' for v in values) + "}"


class _Bench:
    """The tables, the pool and one callable per candidate (each returns rows/s)."""

    def __init__(self, admin: psycopg.Connection[tuple[object, ...]], n: int) -> None:
        self.admin, self.n = admin, n
        self.tag = uuid.uuid4().hex[:8]
        self.tables: list[str] = []
        self.ledger = f"dbr_bench_ledger_{self.tag}"
        self.data = [(i, "v") for i in range(n)]
        self.pool = dbr.Pool(DSN, min_size=2, max_size=4)
        self.round = 0

    def table(self) -> str:
        name = f"dbr_bench_q_{self.tag}_{len(self.tables)}"
        self.admin.execute(sql.SQL("create table {} (k int, v text)").format(sql.Identifier(name)))
        self.tables.append(name)
        return name

    def close(self) -> None:
        self.pool.close()
        for name in [*self.tables, self.ledger]:
            self.admin.execute(sql.SQL("drop table if exists {}").format(sql.Identifier(name)))

    def _fresh(self, table: str) -> None:
        self.admin.execute(sql.SQL("truncate {}").format(sql.Identifier(table)))

    # --- baselines: what a user would write by hand, one transaction each ------------------

    def executemany(self, n: int) -> Callable[[], float]:
        t = self.table()

        def run() -> float:
            self._fresh(t)
            with psycopg.connect(DSN) as conn:
                start = time.perf_counter()
                conn.cursor().executemany(f"insert into {t} (k, v) values (%s, %s)", self.data[:n])
                conn.commit()
                return n / (time.perf_counter() - start)

        return run

    def copy(self) -> Callable[[], float]:
        t = self.table()

        def run() -> float:
            self._fresh(t)
            with psycopg.connect(DSN) as conn:
                start = time.perf_counter()
                with conn.cursor().copy(f"COPY {t} (k, v) FROM STDIN") as writer:
                    for row in self.data:
                        writer.write_row(row)
                conn.commit()
                return self.n / (time.perf_counter() - start)

        return run

    def unnest(self, batch: int = 5000) -> Callable[[], float]:
        """Hand-written: one INSERT … SELECT FROM unnest per batch, pipelined, literals."""
        t = self.table()
        statement = f"insert into {t} (k, v) select * from unnest(%s::int8[], %s::text[])"

        def run() -> float:
            self._fresh(t)
            with psycopg.connect(DSN) as conn:
                start = time.perf_counter()
                cur = conn.cursor()
                with conn.pipeline():
                    for at in range(0, self.n, batch):
                        chunk = self.data[at : at + batch]
                        keys = "{" + ",".join(str(k) for k, _ in chunk) + "}"
                        cur.execute(statement, (keys, _literal([v for _, v in chunk])))
                conn.commit()
                return self.n / (time.perf_counter() - start)

        return run

    # --- the queue ----------------------------------------------------------------------------

    def queue(
        self, keyed: bool = False, journal: bool = False, **options: object
    ) -> Callable[[], float]:
        t = self.table()
        statement = f"insert into {t} (k, v) values (%s, %s)"

        def run() -> float:
            self._fresh(t)
            self.round += 1
            r = self.round
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "q.journal") if journal else None
                with dbr.WriteQueue(
                    self.pool,
                    journal=path,
                    max_pending=10 * self.n,
                    ledger_table=self.ledger,
                    **options,  # type: ignore[arg-type]
                ) as queue:
                    submit = queue.submit
                    start = time.perf_counter()
                    if keyed:
                        for i in range(self.n):
                            submit(statement, (i, "v"), key=f"{r}:{i}")
                    else:
                        for i in range(self.n):
                            submit(statement, (i, "v"))
                    assert queue.flush(timeout=600)
                    return self.n / (time.perf_counter() - start)

        return run


def _submit_us(pool: dbr.Pool, ledger: str, table: str, n: int, **options: object) -> float:
    """Median us of one ``submit`` (each timed on its own), with *options*."""
    keyed = bool(options.pop("keyed", False))
    journal = bool(options.pop("journal", False))
    statement = f"insert into {table} (k, v) values (%s, %s)"
    samples = []
    tag = uuid.uuid4().hex[:6]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "q.journal") if journal else None
        with dbr.WriteQueue(pool, journal=path, max_pending=10 * n, ledger_table=ledger) as queue:
            clock = time.perf_counter
            for i in range(n):
                start = clock()
                queue.submit(statement, (i, "v"), key=f"{tag}{i}" if keyed else None)
                samples.append(clock() - start)
            assert queue.flush(timeout=600)
    return statistics.median(samples) * 1e6


def _lone_write_ms(pool: dbr.Pool, ledger: str, table: str, idle: float = 0.3) -> float:
    """ms from ``submit`` of a lone write (after *idle* s of quiet) to its commit, seen by
    ``on_commit``."""
    done = threading.Event()
    committed: list[float] = []

    def on_commit(batch: object) -> None:
        committed.append(time.perf_counter())
        done.set()

    with dbr.WriteQueue(pool, ledger_table=ledger, on_commit=on_commit) as queue:
        time.sleep(idle)
        start = time.perf_counter()
        queue.submit(f"insert into {table} (k, v) values (%s, %s)", (1, "lone"))
        assert done.wait(10)
        return (committed[0] - start) * 1e3


def _one_insert_ms(table: str) -> float:
    """ms of one INSERT committed on its own (autocommit psycopg): the round trip a lone
    write's batch adds to ``flush_interval``."""
    with psycopg.connect(DSN, autocommit=True) as conn:
        time.sleep(0.3)
        start = time.perf_counter()
        conn.execute(f"insert into {table} (k, v) values (%s, %s)", (1, "lone"))
        return (time.perf_counter() - start) * 1e3


def run(quick: bool = False) -> None:
    """Print the write-queue tables."""
    n = 20_000 if quick else 100_000
    rounds = 3 if quick else 5
    with psycopg.connect(DSN, autocommit=True) as admin:
        bench = _Bench(admin, n)
        try:
            bench.pool.open()
            em_rows = max(2_000, n // 5)
            candidates = [
                (
                    f"psycopg executemany, one transaction ({em_rows:,} rows)",
                    bench.executemany(em_rows),
                ),
                ("psycopg COPY, one transaction", bench.copy()),
                ("hand-written INSERT … SELECT unnest, 5000/statement, pipelined", bench.unnest()),
                (f"WriteQueue, defaults ({DEFAULTS})", bench.queue()),
                ("WriteQueue, keyed, defaults", bench.queue(keyed=True)),
                ("WriteQueue, journal (fsync=batch), defaults", bench.queue(journal=True)),
                ("WriteQueue, batch_size=500 (the old default)", bench.queue(batch_size=500)),
                ("WriteQueue, keyed, batch_size=500", bench.queue(keyed=True, batch_size=500)),
                ("WriteQueue, use_unnest=False (executemany)", bench.queue(use_unnest=False)),
                ("WriteQueue, use_copy=True (opt-in COPY)", bench.queue(use_copy=True)),
            ]
            figures = interleaved_rounds(candidates, rounds)
            t = bench.table()
            submit = {
                "no journal": [],
                "journal (fsync=batch)": [],
                "keyed": [],
            }
            lone: list[float] = []
            one_insert: list[float] = []
            for _ in range(rounds):
                submit["no journal"].append(_submit_us(bench.pool, bench.ledger, t, n // 2))
                submit["journal (fsync=batch)"].append(
                    _submit_us(bench.pool, bench.ledger, t, n // 2, journal=True)
                )
                submit["keyed"].append(_submit_us(bench.pool, bench.ledger, t, n // 2, keyed=True))
                lone.append(_lone_write_ms(bench.pool, bench.ledger, t))
                one_insert.append(_one_insert_ms(t))
        finally:
            bench.close()
    copy = statistics.median(figures["psycopg COPY, one transaction"])
    targets = {
        f"WriteQueue, defaults ({DEFAULTS})": ">= 250k",
        "WriteQueue, keyed, defaults": ">= 150k",
    }
    print_table(
        f"write queue: {n:,} rows (k int, v text) on loopback, from first submit to last commit; "
        f"median (min-max) of {rounds} interleaved rounds",
        ("writer", "rows/s", "x COPY", "target"),
        [
            (name, spread(values), f"{statistics.median(values) / copy:.2f}", targets.get(name, ""))
            for name, values in figures.items()
        ],
    )
    print_table(
        f"write queue with defaults ({DEFAULTS}): submit cost and a lone write's latency; "
        f"median (min-max) of {rounds} rounds",
        ("measure", "figure", "target"),
        [
            ("submit p50, no journal", spread(submit["no journal"], unit=" us"), "<= 2 us"),
            (
                "submit p50, journal (fsync=batch)",
                spread(submit["journal (fsync=batch)"], unit=" us"),
                "<= 6 us",
            ),
            ("submit p50, keyed, no journal", spread(submit["keyed"], unit=" us"), ""),
            (
                "lone write: submit to committed, after 0.3 s idle",
                spread(lone, unit=" ms"),
                "<= 50 ms + 1 round trip",
            ),
            (
                "baseline: one INSERT committed alone (psycopg, autocommit), after 0.3 s idle",
                spread(one_insert, unit=" ms"),
                "(the round trip)",
            ),
        ],
    )
