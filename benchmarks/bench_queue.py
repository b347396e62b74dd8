"""WriteQueue: what submit costs the caller, and sustained rows per second."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
import uuid

import psycopg
from psycopg import sql

import dbresilience as dbr

from ._common import print_table

DSN = os.environ.get("DBR_TEST_DSN", "host=127.0.0.1 port=5432 dbname=test user=postgres")


def _table(conn: psycopg.Connection[tuple[object, ...]]) -> str:
    name = f"dbr_bench_q_{uuid.uuid4().hex[:8]}"
    conn.execute(sql.SQL("create table {} (k int, v text)").format(sql.Identifier(name)))
    return name


def _submit_p50(queue: dbr.WriteQueue, statement: str, n: int, keyed: bool) -> float:
    samples = []
    for i in range(n):
        start = time.perf_counter()
        queue.submit(statement, (i, "v"), key=f"b{i}" if keyed else None)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def run(quick: bool = False) -> None:
    """Print the write-queue table."""
    n = 20_000 if quick else 100_000
    rows: list[tuple[object, ...]] = []
    with psycopg.connect(DSN, autocommit=True) as admin:
        tables: list[str] = []
        try:
            # baselines: one transaction of executemany, and COPY
            t = _table(admin)
            tables.append(t)
            data = [(i, "v") for i in range(n)]
            with psycopg.connect(DSN) as conn:
                start = time.perf_counter()
                conn.cursor().executemany(f"insert into {t} (k, v) values (%s, %s)", data)
                conn.commit()
                em = n / (time.perf_counter() - start)
                start = time.perf_counter()
                with conn.cursor().copy(f"COPY {t} (k, v) FROM STDIN") as copy:
                    for row in data:
                        copy.write_row(row)
                conn.commit()
                cp = n / (time.perf_counter() - start)
            rows.append(("executemany, one transaction", "-", f"{em:,.0f}", ""))
            rows.append(("COPY, one transaction", "-", f"{cp:,.0f}", ""))
            with dbr.Pool(DSN, min_size=2) as pool:
                for label, journal, keyed, target in (
                    ("WriteQueue, plain inserts", False, False, ">= 250k rows/s, submit <= 5 us"),
                    ("WriteQueue, plain, journal", True, False, "submit <= 10 us"),
                    ("WriteQueue, keyed inserts", False, True, ">= 100k rows/s"),
                ):
                    t = _table(admin)
                    tables.append(t)
                    with tempfile.TemporaryDirectory() as tmp:
                        path = os.path.join(tmp, "q.journal") if journal else None
                        with dbr.WriteQueue(
                            pool, batch_size=5_000, journal=path, max_pending=10 * n
                        ) as queue:
                            start = time.perf_counter()
                            p50 = _submit_p50(
                                queue, f"insert into {t} (k, v) values (%s, %s)", n, keyed
                            )
                            assert queue.flush(timeout=300)
                            rate = n / (time.perf_counter() - start)
                    rows.append((label, p50, f"{rate:,.0f}", target))
        finally:
            for t in tables:
                admin.execute(sql.SQL("drop table if exists {}").format(sql.Identifier(t)))
            admin.execute("drop table if exists dbr_queue_ledger")
    print_table(
        f"write queue: {n:,} rows (k int, v text) on loopback",
        ("writer", "submit p50 us", "rows/s (submit to committed)", "target"),
        rows,
    )
