"""Through PgBouncer in transaction mode: the pool against raw psycopg_pool configured for it,
and the cost of each way of applying a server-side timeout there.

    python -m benchmarks.bench_pooler [--quick]

Needs ``pgbouncer`` (``apt-get install pgbouncer``); it is started on a free port in front of
``$DBR_TEST_DSN`` (default the local server), ``pool_mode=transaction``, ``default_pool_size=2``.
"""

from __future__ import annotations

import os
import statistics
import sys

import psycopg
import psycopg_pool

import dbresilience as dbr
from dbresilience.faults import TemporaryPgBouncer

from ._common import print_table
from .bench_pool import CPU_US, _interleaved, _p50_us

DSN = os.environ.get("DBR_TEST_DSN", "host=127.0.0.1 port=5432 dbname=test user=postgres")


def _bouncer() -> tuple[TemporaryPgBouncer, str]:
    params = psycopg.conninfo.conninfo_to_dict(DSN)
    dbname = str(params.get("dbname") or "postgres")
    bouncer = TemporaryPgBouncer(
        str(params.get("host") or "127.0.0.1"),
        int(params.get("port") or 5432),
        databases=[dbname],
        default_pool_size=2,
    ).start()
    return bouncer, bouncer.conninfo(dbname)


def pooled_select(dsn: str, rounds: int, per_round: int) -> None:
    """``select 1`` through the pooler: raw psycopg_pool (prepare_threshold=None, autocommit)
    vs ``dbr.Pool(pooler="transaction")``'s fetchone and connection()."""
    raw = psycopg_pool.ConnectionPool(
        dsn,
        min_size=2,
        max_size=2,
        open=True,
        kwargs={"autocommit": True, "prepare_threshold": None},
    )
    pool = dbr.Pool(dsn, pooler="transaction", min_size=2, max_size=2).open()

    def raw_call() -> object:
        with raw.connection() as conn:
            return conn.execute("select 1").fetchone()

    def dbr_fetchone() -> object:
        return pool.fetchone("select 1")

    def dbr_connection() -> object:
        with pool.connection() as conn:
            return conn.execute("select 1").fetchone()

    try:
        samples = _interleaved(
            {
                "psycopg_pool (prepare_threshold=None)": raw_call,
                'dbr.Pool(pooler="transaction").fetchone': dbr_fetchone,
                'dbr.Pool(pooler="transaction").connection()': dbr_connection,
            },
            rounds,
            per_round,
        )
    finally:
        raw.close()
        pool.close()
    base = _p50_us(samples["psycopg_pool (prepare_threshold=None)"])
    rows = [
        [name, _p50_us(s), _p50_us(s) / base, CPU_US[name], statistics.mean(s) * 1e6]
        for name, s in samples.items()
    ]
    print_table(
        "select 1 through PgBouncer (transaction mode, default_pool_size=2), per call",
        ["candidate", "p50 us", "ratio", "client CPU us", "mean us"],
        rows,
    )


def timeout_ways(dsn: str, rounds: int, per_round: int) -> None:
    """One parameterised statement with a server-side timeout, each way it can be applied
    through a transaction pooler, against the statement alone."""
    conn = psycopg.connect(dsn, autocommit=True, prepare_threshold=None)
    tx = psycopg.connect(dsn, autocommit=True, prepare_threshold=None)
    query = "select %s::int"

    def plain() -> object:
        return conn.execute(query, (1,)).fetchone()

    def set_then() -> object:  # leaks into whichever client gets this server connection next
        conn.execute("SET statement_timeout = 5000")
        return conn.execute(query, (1,)).fetchone()

    def set_local() -> object:  # BEGIN; SET LOCAL in one message, the statement, COMMIT
        conn.execute("BEGIN; SET LOCAL statement_timeout = 5000; SET LOCAL lock_timeout = 2500")
        row = conn.execute(query, (1,)).fetchone()
        conn.execute("COMMIT")
        return row

    def pipelined() -> object:  # the same four messages in one round trip
        with conn.pipeline():
            conn.execute("BEGIN")
            conn.execute("SELECT set_config('statement_timeout', '5000', true)")
            cur = conn.execute(query, (1,))
            conn.execute("COMMIT")
        return cur.fetchone()

    def tx_begin() -> object:  # what transaction() costs without a timeout
        tx.execute("BEGIN")
        row = tx.execute(query, (1,)).fetchone()
        tx.execute("COMMIT")
        return row

    def tx_begin_local() -> object:  # transaction() in transaction mode: SET LOCAL with BEGIN
        tx.execute("BEGIN; SET LOCAL statement_timeout = 5000; SET LOCAL lock_timeout = 2500")
        row = tx.execute(query, (1,)).fetchone()
        tx.execute("COMMIT")
        return row

    try:
        samples = _interleaved(
            {
                "statement alone (client deadline only)": plain,
                "SET, then the statement (leaks)": set_then,
                "BEGIN; SET LOCAL + statement + COMMIT": set_local,
                "pipeline: BEGIN, set_config(local), statement, COMMIT": pipelined,
                "transaction(): BEGIN + statement + COMMIT": tx_begin,
                "transaction(): BEGIN; SET LOCAL + statement + COMMIT": tx_begin_local,
            },
            rounds,
            per_round,
        )
    finally:
        conn.execute("RESET statement_timeout")
        conn.close()
        tx.close()
    base = _p50_us(samples["statement alone (client deadline only)"])
    tx_base = _p50_us(samples["transaction(): BEGIN + statement + COMMIT"])
    rows = [
        [
            name,
            _p50_us(s),
            _p50_us(s) / (tx_base if name.startswith("transaction()") else base),
        ]
        for name, s in samples.items()
    ]
    print_table(
        "a server-side timeout through a transaction pooler, per statement "
        "(ratio: to the statement alone; transaction() rows: to transaction() without it)",
        ["way", "p50 us", "ratio"],
        rows,
    )


def run(quick: bool = False) -> None:
    """Both tables; skipped with a note when pgbouncer is not installed."""
    try:
        bouncer, dsn = _bouncer()
    except FileNotFoundError as exc:
        print(f"\n## through PgBouncer: skipped ({exc})")
        return
    try:
        rounds, per_round = (3, 300) if quick else (5, 2000)
        pooled_select(dsn, rounds, per_round)
        timeout_ways(dsn, rounds, per_round // 2)
    finally:
        bouncer.close()


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
