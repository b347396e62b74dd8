"""The write queue's shared Redis journal beside the local file journal and a plain XADD loop.

Each scenario runs in 1 and 4 producer processes (separate interpreters, started together);
each submits plain inserts ``(k int, v text)``, one at a time from one thread, and times every
``submit``. "rows/s" is from the first submit to the last row applied in PostgreSQL (for the
plain XADD loop and ``drain=False``: to the last entry in the stream, nothing applied; the
XADD loop is the physical limit of submitting to this Redis from Python). Also: Redis memory
per queued write, and one drainer applying a backlog.

    python -m benchmarks.bench_stream [--quick]
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import uuid
from typing import Any

import psycopg
import redis
from psycopg import sql

from ._common import print_table

DSN = os.environ.get("DBR_TEST_DSN", "host=127.0.0.1 port=5432 dbname=test user=postgres")
REDIS = os.environ.get("DBR_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _timed_submits(
    queue: Any, insert: str, base: int, n: int, times: list[float]
) -> tuple[float, float]:
    """*n* submits (keys *base*...), each one's seconds appended to *times*, then a flush;
    the wall-clock times of the first submit and of the flush's end."""
    perf = time.perf_counter
    began = time.time()
    for i in range(base, base + n):
        start = perf()
        queue.submit(insert, (i, "v"))
        times.append(perf() - start)
    queue.flush(300)
    return began, time.time()


def _producer(kind: str, table: str, stream: str, base: int, n: int, folder: str, out: Any) -> None:
    """One producer process: *n* submits of *kind*; sends back the submit times (s)."""
    import dbresilience as dbr

    insert = f"insert into {table} (k, v) values (%s, %s)"
    times: list[float] = []
    perf = time.perf_counter
    if kind == "xadd":
        client = redis.Redis.from_url(REDIS)
        key = "{" + stream + "}"
        began = time.time()
        for i in range(base, base + n):
            start = perf()
            client.xadd(key, {"d": f"{i}"})
            times.append(perf() - start)
        client.close()
        out.put((times, began, time.time()))
        return
    if kind == "append":  # drain=False: no pool, nothing applied here
        queue = dbr.WriteQueue(None, journal=REDIS, stream=stream, drain=False).open()
        began, ended = _timed_submits(queue, insert, base, n, times)
        queue.close()
        out.put((times, began, ended))
        return
    pool = dbr.Pool(DSN, min_size=1).open()
    if kind == "redis":
        queue = dbr.WriteQueue(pool, journal=REDIS, stream=stream, ledger_table=f"{table}_l")
    else:
        path = os.path.join(folder, f"{base}.journal")
        queue = dbr.WriteQueue(pool, journal=path, ledger_table=f"{table}_l")
    queue.open()
    began, ended = _timed_submits(queue, insert, base, n, times)
    queue.close()
    pool.close()
    out.put((times, began, ended))


def _scenario(kind: str, producers: int, n: int) -> tuple[float, float]:
    """(submit p50 in us, rows/s) for *producers* processes of *kind*."""
    table = f"dbr_bench_stream_{uuid.uuid4().hex[:8]}"
    stream = f"dbr-bench-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(DSN, autocommit=True) as admin:
        admin.execute(sql.SQL("create table {} (k int, v text)").format(sql.Identifier(table)))
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    client = redis.Redis.from_url(REDIS)
    try:
        with tempfile.TemporaryDirectory() as folder:
            procs = [
                ctx.Process(target=_producer, args=(kind, table, stream, p * 10**7, n, folder, out))
                for p in range(producers)
            ]
            for proc in procs:
                proc.start()
            times: list[float] = []
            starts: list[float] = []
            ends: list[float] = []
            for _ in procs:
                got, began, ended = out.get(timeout=600)
                times += got
                starts.append(began)
                ends.append(ended)
            for proc in procs:
                proc.join(60)
        elapsed = max(ends) - min(starts)  # first submit to last write applied (or in Redis)
        if kind in ("xadd", "append"):
            assert client.xlen("{" + stream + "}") == producers * n
        else:
            with psycopg.connect(DSN) as conn:
                row = conn.execute(
                    sql.SQL("select count(*) from {}").format(sql.Identifier(table))
                ).fetchone()
            assert row is not None, table
            assert row[0] == producers * n, row
        return statistics.median(times) * 1e6, producers * n / elapsed
    finally:
        _clean_up(client, stream, table)


def _clean_up(client: redis.Redis, stream: str, table: str) -> None:
    """Delete the stream's keys (then close *client*) and drop *table* and its ledger."""
    client.delete("{" + stream + "}", "{" + stream + "}:dead", "{" + stream + "}:lease")
    client.close()
    with psycopg.connect(DSN, autocommit=True) as admin:
        for name in (table, f"{table}_l"):
            admin.execute(sql.SQL("drop table if exists {}").format(sql.Identifier(name)))


def _drain_backlog(n: int) -> float:
    """rows/s of one draining instance applying a backlog of *n* writes from the stream."""
    import dbresilience as dbr

    table = f"dbr_bench_stream_{uuid.uuid4().hex[:8]}"
    stream = f"dbr-bench-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(REDIS)
    with psycopg.connect(DSN, autocommit=True) as admin:
        admin.execute(sql.SQL("create table {} (k int, v text)").format(sql.Identifier(table)))
    try:
        insert = f"insert into {table} (k, v) values (%s, %s)"
        with dbr.WriteQueue(None, journal=REDIS, stream=stream, drain=False) as appender:
            for i in range(n):
                appender.submit(insert, (i, "v"))
            appender.flush(60)
        with dbr.Pool(DSN, min_size=1) as pool:
            start = time.perf_counter()
            with dbr.WriteQueue(pool, journal=REDIS, stream=stream, ledger_table=f"{table}_l"):
                while client.xlen("{" + stream + "}"):
                    time.sleep(0.005)
                elapsed = time.perf_counter() - start
        return n / elapsed
    finally:
        _clean_up(client, stream, table)


def _memory_per_write(n: int) -> tuple[float, float]:
    """(bytes of the stream per queued write, used_memory growth per write)."""
    import dbresilience as dbr

    stream = f"dbr-bench-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(REDIS)
    before = int(client.info("memory")["used_memory"])
    try:
        with dbr.WriteQueue(None, journal=REDIS, stream=stream, drain=False) as queue:
            for i in range(n):
                queue.submit(
                    "insert into usage_event (user_id, kind) values (%s, %s)",
                    (i, "start"),
                    key=f"req-{i}",
                )
            queue.flush(60)
        after = int(client.info("memory")["used_memory"])
        usage = client.memory_usage("{" + stream + "}", samples=0) or 0
        return usage / n, (after - before) / n
    finally:
        client.delete("{" + stream + "}", "{" + stream + "}:dead", "{" + stream + "}:lease")
        client.close()


def run(quick: bool = False) -> None:
    """Print the shared-journal tables."""
    n = 3_000 if quick else 20_000
    rows = []
    for producers in (1, 4):
        kinds = ("xadd", "append", "file", "redis")
        figures = {kind: _scenario(kind, producers, n) for kind in kinds}
        xadd = figures["xadd"]
        for kind, label in (
            ("xadd", "plain XADD loop (redis-py, no queue, nothing applied)"),
            ("append", "WriteQueue, Redis journal, drain=False (into the stream only)"),
            ("file", "WriteQueue, local file journal (one per process)"),
            ("redis", "WriteQueue, Redis journal (shared stream)"),
        ):
            p50, rate = figures[kind]
            rows.append(
                (
                    f"{producers} x {label}",
                    f"{p50:.1f} us",
                    f"{rate:,.0f}",
                    f"{p50 / xadd[0]:.2f}",
                    f"{rate / xadd[1]:.2f}",
                )
            )
    print_table(
        f"shared journal: {n:,} plain inserts per producer process, submit p50 and rows/s "
        "(first submit to last row applied)",
        ("writer", "submit p50", "rows/s", "p50 x XADD", "rows/s x XADD"),
        rows,
    )
    backlog = 20_000 if quick else 100_000
    print_table(
        "shared journal: one drainer applying a backlog already in the stream",
        ("measure", "rows/s"),
        [(f"{backlog:,} plain inserts, batch_size=5000", f"{_drain_backlog(backlog):,.0f}")],
    )
    stream_bytes, memory = _memory_per_write(2_000 if quick else 10_000)
    print_table(
        "Redis memory per queued write (a keyed two-parameter insert)",
        ("measure", "bytes"),
        [
            ("MEMORY USAGE of the stream / writes", f"{stream_bytes:.0f}"),
            ("used_memory growth / writes", f"{memory:.0f}"),
        ],
    )


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
