"""Pools, engines and the write queue through a real PgBouncer (transaction and session mode).

One PgBouncer per mode for the whole module, in front of the shared server (nothing here breaks
it); ``default_pool_size=2``, so four client connections share two server connections and any
session state a client left behind would show up in another client's queries.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from psycopg import sql

import dbresilience as dbr
from dbresilience._pooler import session_state_use
from dbresilience.faults import TemporaryPgBouncer
from dbresilience.sqlalchemy import create_async_engine, create_engine, warm_async_engine
from tests.conftest import start_pgbouncer

N_QUERIES = 10_000
WORKERS = 4


def _dbname(dsn: str) -> str:
    return str(psycopg.conninfo.conninfo_to_dict(dsn).get("dbname") or "postgres")


@pytest.fixture(scope="module")
def bouncer(pg_dsn: str) -> Iterator[TemporaryPgBouncer]:
    """PgBouncer in transaction mode, default_pool_size=2, serving only the test database."""
    b = start_pgbouncer(pg_dsn, databases=[_dbname(pg_dsn)], default_pool_size=2)
    yield b
    b.close()


@pytest.fixture(scope="module")
def session_bouncer(pg_dsn: str) -> Iterator[TemporaryPgBouncer]:
    """PgBouncer in session mode in front of the same server."""
    b = start_pgbouncer(pg_dsn, databases=[_dbname(pg_dsn)], pool_mode="session")
    yield b
    b.close()


@pytest.fixture
def tx_dsn(bouncer: TemporaryPgBouncer, pg_dsn: str) -> str:
    """The test database through the transaction-mode PgBouncer."""
    return bouncer.conninfo(_dbname(pg_dsn))


# --- 10,000 parameterised queries, four connections, no error -------------------------------


def test_sync_pool_serves_10000_queries_through_transaction_pooler(tx_dsn: str) -> None:
    """Pool(pooler="transaction"): 10,000 repeated parameterised queries from 4 threads on 4
    connections (2 server connections behind them), every answer right, no error, no retry
    (psycopg's prepared statements would collide here: `_pg3_0 already exists`)."""
    errors: list[BaseException] = []
    wrong: list[int] = []
    with dbr.Pool(tx_dsn, pooler="transaction", min_size=WORKERS, max_size=WORKERS) as pool:

        def work(w: int) -> None:
            for i in range(w, N_QUERIES, WORKERS):
                try:
                    row = pool.fetchone("select %s::int + %s::int", (i, w))
                except BaseException as exc:
                    errors.append(exc)
                    return
                if row != (i + w,):
                    wrong.append(i)

        threads = [threading.Thread(target=work, args=(w,)) for w in range(WORKERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = pool.stats()
    assert errors == []
    assert wrong == []
    assert (stats["failures"], stats["retries"]) == (0, 0)
    assert stats["calls"] == N_QUERIES


async def test_async_pool_serves_10000_queries_through_transaction_pooler(tx_dsn: str) -> None:
    """AsyncPool(pooler="transaction"): 10,000 parameterised queries from 4 tasks, 0 errors."""
    async with dbr.AsyncPool(
        tx_dsn, pooler="transaction", min_size=WORKERS, max_size=WORKERS
    ) as pool:

        async def work(w: int) -> int:
            bad = 0
            for i in range(w, N_QUERIES, WORKERS):
                row = await pool.fetchone("select %s::int + %s::int", (i, w))
                bad += row != (i + w,)
            return bad

        results = await asyncio.gather(*(work(w) for w in range(WORKERS)))
        stats = pool.stats()
    assert results == [0] * WORKERS
    assert (stats["failures"], stats["retries"], stats["calls"]) == (0, 0, N_QUERIES)


def test_sqlalchemy_engine_serves_10000_queries_through_transaction_pooler(
    bouncer: TemporaryPgBouncer, pg_dsn: str
) -> None:
    """create_engine(pooler="transaction"): 10,000 parameterised queries from 4 threads on a
    4-connection engine, 0 errors (a plain engine fails on its prepared statements)."""
    url = f"postgresql+psycopg://postgres@127.0.0.1:{bouncer.port}/{_dbname(pg_dsn)}"
    engine = create_engine(url, pooler="transaction", pool_size=WORKERS, max_overflow=0)
    errors: list[BaseException] = []
    query = sa.text("select cast(:a as int) + cast(:b as int)")

    def work(w: int) -> None:
        try:
            with engine.connect() as conn:
                for i in range(w, N_QUERIES, WORKERS):
                    assert conn.execute(query, {"a": i, "b": w}).scalar_one() == i + w
                    conn.commit()
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=work, args=(w,)) for w in range(WORKERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        engine.dispose()
    assert errors == []


async def test_async_sqlalchemy_engine_through_transaction_pooler(
    bouncer: TemporaryPgBouncer, pg_dsn: str
) -> None:
    """create_async_engine(pooler="transaction") serves repeated parameterised queries."""
    url = f"postgresql+psycopg://postgres@127.0.0.1:{bouncer.port}/{_dbname(pg_dsn)}"
    engine = create_async_engine(url, pooler="transaction", pool_size=2, max_overflow=0)
    try:
        await warm_async_engine(engine)
        async with engine.connect() as conn:
            for i in range(200):
                result = await conn.execute(sa.text("select cast(:a as int)"), {"a": i})
                assert result.scalar_one() == i
    finally:
        await engine.dispose()


def test_sqlalchemy_engine_refuses_session_state(bouncer: TemporaryPgBouncer, pg_dsn: str) -> None:
    """The engine in transaction mode refuses LISTEN before sending it."""
    url = f"postgresql+psycopg://postgres@127.0.0.1:{bouncer.port}/{_dbname(pg_dsn)}"
    engine = create_engine(url, pooler="transaction", pool_size=1, max_overflow=0)
    try:
        with engine.connect() as conn, pytest.raises(sa.exc.DBAPIError) as info:
            conn.execute(sa.text("listen dbr_channel"))
        assert isinstance(info.value.orig, dbr.SessionStateUnsupported)
    finally:
        engine.dispose()


# --- the keyed write queue lands each write once ---------------------------------------------


async def test_write_queue_keyed_writes_land_exactly_once(tx_dsn: str, pg_conn: Any) -> None:
    """AsyncWriteQueue over AsyncPool(pooler="transaction"): 2,000 keyed inserts, 500 of them
    submitted twice more (the same key), land exactly once each."""
    table = f"dbr_pooler_q_{uuid.uuid4().hex[:10]}"
    pg_conn.execute(sql.SQL("create table {} (k int)").format(sql.Identifier(table)))
    insert = f'insert into "{table}" (k) values (%s)'  # the queue takes str statements
    try:
        async with (
            dbr.AsyncPool(tx_dsn, pooler="transaction", min_size=2, max_size=4) as pool,
            dbr.AsyncWriteQueue(pool, batch_size=200, flush_interval=0.01) as queue,
        ):
            for k in range(2000):
                queue.submit(insert, (k,), key=f"{table}:{k}")
            for k in range(0, 2000, 4):
                queue.submit(insert, (k,), key=f"{table}:{k}")
            assert await queue.flush(timeout=30)
            for k in range(0, 2000, 4):
                queue.submit(insert, (k,), key=f"{table}:{k}")
            assert await queue.flush(timeout=30)
            stats = queue.stats()
        counts = pg_conn.execute(
            sql.SQL("select count(*), count(distinct k) from {}").format(sql.Identifier(table))
        ).fetchone()
    finally:
        pg_conn.execute(sql.SQL("drop table if exists {}").format(sql.Identifier(table)))
    assert counts == (2000, 2000)
    assert stats["failed"] == 0


def test_sync_write_queue_keyed_and_plain_writes_through_transaction_pooler(
    tx_dsn: str, pg_conn: Any
) -> None:
    """WriteQueue over Pool(pooler="transaction"): 1,000 keyed inserts (each key submitted
    twice) land once each, and 1,000 unkeyed inserts (the queue's one-statement path) land
    once each."""
    table = f"dbr_pooler_sq_{uuid.uuid4().hex[:10]}"
    pg_conn.execute(sql.SQL("create table {} (k int, keyed bool)").format(sql.Identifier(table)))
    insert = f'insert into "{table}" (k, keyed) values (%s, %s)'
    try:
        with (
            dbr.Pool(tx_dsn, pooler="transaction", min_size=2, max_size=4) as pool,
            dbr.WriteQueue(pool, batch_size=250, flush_interval=0.01) as queue,
        ):
            for k in range(1000):
                queue.submit(insert, (k, True), key=f"{table}:{k}")
                queue.submit(insert, (k, False))
                queue.submit(insert, (k, True), key=f"{table}:{k}")
            assert queue.flush(timeout=30)
            assert queue.stats()["failed"] == 0
        counts = pg_conn.execute(
            sql.SQL(
                "select count(*) filter (where keyed), count(distinct k) filter (where keyed), "
                "count(*) filter (where not keyed) from {}"
            ).format(sql.Identifier(table))
        ).fetchone()
    finally:
        pg_conn.execute(sql.SQL("drop table if exists {}").format(sql.Identifier(table)))
    assert counts == (1000, 1000, 1000)


async def test_keyed_writes_land_once_across_pgbouncer_restarts_and_a_kill(
    pg_dsn: str, pg_conn: Any
) -> None:
    """PgBouncer restarted twice and SIGKILLed once under a keyed write load (batches cut in
    flight, commits of unknown fate): every keyed write lands exactly once."""
    b = start_pgbouncer(pg_dsn, databases=[_dbname(pg_dsn)], default_pool_size=2)
    table = f"dbr_pooler_rq_{uuid.uuid4().hex[:10]}"
    pg_conn.execute(sql.SQL("create table {} (k int)").format(sql.Identifier(table)))
    insert = f'insert into "{table}" (k) values (%s)'
    n = 1500
    try:
        async with (
            dbr.AsyncPool(
                b.conninfo(_dbname(pg_dsn)), pooler="transaction", min_size=2, max_size=2
            ) as pool,
            dbr.AsyncWriteQueue(pool, batch_size=50, flush_interval=0.005) as queue,
        ):

            async def faults() -> None:
                for action in (b.restart, b.restart, b.kill):
                    await asyncio.sleep(0.25)
                    await asyncio.to_thread(action)
                await asyncio.sleep(0.1)
                await asyncio.to_thread(b.start)

            chaos = asyncio.create_task(faults())
            for k in range(n):
                queue.submit(insert, (k,), key=f"{table}:{k}")
                if k % 10 == 0:
                    await asyncio.sleep(0.01)
            await chaos
            assert await queue.flush(timeout=30)
            stats = queue.stats()
            assert pool.stats()["generation"] >= 2  # the faults did cut live connections
        counts = pg_conn.execute(
            sql.SQL("select count(*), count(distinct k) from {}").format(sql.Identifier(table))
        ).fetchone()
    finally:
        b.close()
        pg_conn.execute(sql.SQL("drop table if exists {}").format(sql.Identifier(table)))
    assert counts == (n, n)
    assert stats["failed"] == 0


# --- what transaction mode refuses, and what it allows ---------------------------------------

REFUSED = [
    "listen dbr_channel",
    "LISTEN dbr_channel",
    "select pg_advisory_lock(42)",
    "select pg_try_advisory_lock(42)",
    "create temp table dbr_tmp (a int)",
    "CREATE TEMPORARY TABLE dbr_tmp (a int)",
    "set statement_timeout = 0",
    "set session statement_timeout = 0",
    "prepare dbr_stmt as select 1",
    "declare c cursor with hold for select 1",
]


@pytest.mark.parametrize("query", REFUSED)
def test_transaction_mode_refuses_session_state(tx_dsn: str, query: str) -> None:
    """Each session-state statement is refused before sending, with SessionStateUnsupported
    (P2010, not retried), through the helpers and through pool.connection() alike."""
    with dbr.Pool(tx_dsn, pooler="transaction", min_size=1, max_size=2) as pool:
        with pytest.raises(dbr.SessionStateUnsupported, match="transaction mode") as info:
            pool.execute(query.encode())
        c = dbr.classify(info.value)
        assert (c.code, c.retryable) == ("P2010", False)
        with pool.connection() as conn, pytest.raises(dbr.SessionStateUnsupported):
            conn.execute(query.encode())
        assert pool.stats()["retries"] == 0


def test_transaction_mode_allows_transaction_scoped_state(tx_dsn: str) -> None:
    """Transaction-scoped equivalents pass: pg_advisory_xact_lock and SET LOCAL in a
    transaction, SET TRANSACTION, a column named like a keyword; prepare=True is refused."""
    with dbr.Pool(tx_dsn, pooler="transaction", min_size=1, max_size=2) as pool:

        def body(conn: psycopg.Connection[Any]) -> object:
            conn.execute("set transaction isolation level repeatable read")
            conn.execute("select pg_advisory_xact_lock(42)")
            conn.execute("set local lock_timeout = 1000")
            row = conn.execute("show lock_timeout").fetchone()
            return row[0] if row else None

        assert pool.transaction(body) == "1s"
        assert pool.fetchone("select 1 as listen_count, 'set x' as settings") == (1, "set x")
        with pytest.raises(dbr.SessionStateUnsupported, match="prepare=True"):
            pool.fetchone("select 1", prepare=True)


def test_server_timeouts_apply_in_transactions_and_never_leak(tx_dsn: str) -> None:
    """In transaction mode the timeouts go with BEGIN as SET LOCAL: a transaction() running
    past statement_timeout is cancelled by the server (57014), and no other client of the
    same two server connections ever sees the setting (SHOW from raw connections)."""
    with dbr.Pool(
        tx_dsn, pooler="transaction", statement_timeout=0.2, query_timeout=5, min_size=2
    ) as pool:
        with pytest.raises(psycopg.errors.QueryCanceled):
            pool.transaction(lambda conn: conn.execute("select pg_sleep(1)"))
        assert pool.transaction(
            lambda c: (c.execute("show statement_timeout").fetchone() or ("",))[0]
        ) == ("200ms")
        seen = set()
        with (
            psycopg.connect(tx_dsn, autocommit=True, prepare_threshold=None) as a,
            psycopg.connect(tx_dsn, autocommit=True, prepare_threshold=None) as b,
        ):
            for _ in range(50):
                pool.transaction(lambda c: c.execute("select 1"))
                for raw in (a, b):
                    row = raw.execute("show statement_timeout").fetchone()
                    seen.add(row[0] if row else None)
    assert seen == {"0"}


# --- opening: detection and configuration errors ---------------------------------------------


def test_auto_detects_the_pooler_and_logs_it(tx_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    """pooler="auto" (the default) opens through PgBouncer: the refused startup options are a
    signal, the pool switches to transaction mode, says so in the log, and serves."""
    caplog.set_level(logging.INFO, logger="dbresilience.pool")
    with dbr.Pool(tx_dsn, min_size=2, max_size=2) as pool:
        assert pool.pooler == "transaction"
        for i in range(50):
            assert pool.fetchone("select %s::int", (i,)) == (i,)
    text = caplog.text
    assert "refused the startup parameter 'options'" in text
    assert "pooler='transaction'" in text


def test_auto_detects_a_pooler_that_ignores_options(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A PgBouncer told to ignore `options` accepts them silently: the backend pid that differs
    from the announced one still tells, and the pool uses transaction mode."""
    b = start_pgbouncer(
        pg_dsn,
        databases=[_dbname(pg_dsn)],
        settings={"ignore_startup_parameters": "options"},
    )
    try:
        caplog.set_level(logging.INFO, logger="dbresilience.pool")
        with dbr.Pool(b.conninfo(_dbname(pg_dsn)), min_size=2, max_size=2) as pool:
            assert pool.pooler == "transaction"
            for i in range(200):
                assert pool.fetchone("select %s::int", (i,)) == (i,)
        assert "backend pid differs" in caplog.text
    finally:
        b.close()


def test_direct_connection_is_not_taken_for_a_pooler(pg_dsn: str) -> None:
    """pooler="auto" straight to PostgreSQL stays direct (startup options, prepared statements)."""
    with dbr.Pool(pg_dsn, min_size=1, max_size=1) as pool:
        assert pool.pooler is None
        with pool.connection() as conn:
            assert conn.prepare_threshold is not None


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"pooler": None}, "DBR1005"),  # unsupported startup parameter: options
        ({"dbname": "dbr_no_such_db"}, "P1003"),  # PgBouncer: no such database
        ({"user": "dbr_no_such_user"}, "P1000"),  # PgBouncer: authentication failed
    ],
)
def test_pooler_configuration_errors_fail_open_at_once(
    bouncer: TemporaryPgBouncer, pg_dsn: str, change: dict[str, Any], code: str
) -> None:
    """A configuration error from the pooler fails open() at once (not after connect_timeout
    of retries), classified by its cause and not retryable."""
    pooler = change.pop("pooler", "transaction")
    params = {"dbname": _dbname(pg_dsn), "user": "postgres", **change}
    dsn = bouncer.conninfo(params["dbname"], params["user"])
    pool = dbr.Pool(dsn, pooler=pooler, connect_timeout=5)
    start = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as info:
        pool.open()
    elapsed = time.monotonic() - start
    c = dbr.classify(info.value)
    assert (c.code, c.retryable) == (code, False)
    assert elapsed < 1.0
    if pooler is None:
        assert "pooler='transaction'" in " ".join(getattr(info.value, "__notes__", []))


# --- session mode ----------------------------------------------------------------------------


def test_session_mode_keeps_prepared_statements_and_sets_timeouts(
    session_bouncer: TemporaryPgBouncer, pg_dsn: str
) -> None:
    """pooler="session": no startup options (PgBouncer refuses them), the timeouts are SET on
    each new connection, prepared statements and LISTEN work."""
    dsn = session_bouncer.conninfo(_dbname(pg_dsn))
    with dbr.Pool(dsn, pooler="session", statement_timeout=3, min_size=1, max_size=2) as pool:
        assert pool.fetchone("show statement_timeout") == ("3s",)
        for i in range(20):
            assert pool.fetchone("select %s::int", (i,), prepare=True) == (i,)
        pool.execute("listen dbr_channel")


def test_sqlalchemy_engine_detects_the_pooler(
    bouncer: TemporaryPgBouncer, pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """create_engine() with the default pooler="auto" through PgBouncer: its refused startup
    options switch the engine to transaction mode on the first connection, logged; then 500
    repeated parameterised queries on two connections pass."""
    caplog.set_level(logging.INFO, logger="dbresilience.pool")
    url = f"postgresql+psycopg://postgres@127.0.0.1:{bouncer.port}/{_dbname(pg_dsn)}"
    engine = create_engine(url, pool_size=2, max_overflow=0)
    try:
        with engine.connect() as a, engine.connect() as b:
            for i in range(250):
                for conn in (a, b):
                    assert conn.execute(sa.text("select :v"), {"v": i}).scalar_one() == i
                    conn.commit()
    finally:
        engine.dispose()
    assert "refused the startup parameter 'options'" in caplog.text


# --- the pooler itself failing ---------------------------------------------------------------


def test_pool_rides_through_a_pgbouncer_restart(pg_dsn: str) -> None:
    """PgBouncer restarted under a read load (its client connections all cut): reads are
    retried on fresh connections; a read that finds no connection while PgBouncer is down
    fails fast with a transient 503 (DatabaseUnavailable, the pool's policy for an outage),
    never with a write in doubt or past its deadline; the generation is retired and reads
    go on at once after."""
    b = start_pgbouncer(pg_dsn, databases=[_dbname(pg_dsn)], default_pool_size=2)
    errors: list[BaseException] = []
    stop = threading.Event()
    try:
        with dbr.Pool(
            b.conninfo(_dbname(pg_dsn)), pooler="transaction", min_size=2, max_size=2
        ) as pool:

            def reader() -> None:
                i = 0
                while not stop.is_set():
                    start = time.monotonic()
                    try:
                        assert pool.fetchone("select %s::int", (i,), timeout=2) == (i,)
                    except BaseException as exc:
                        errors.append(exc)
                        assert time.monotonic() - start < 2.5
                    i += 1

            threads = [threading.Thread(target=reader) for _ in range(2)]
            for t in threads:
                t.start()
            time.sleep(0.2)
            b.restart()
            time.sleep(0.5)
            stop.set()
            for t in threads:
                t.join()
            assert pool.fetchone("select 1", timeout=2) == (1,)
            assert pool.stats()["generation"] >= 1
    finally:
        stop.set()
        b.close()
    for exc in errors:
        c = dbr.classify(exc)
        assert c.transient, (exc, c)
        assert not c.commit_unknown, (exc, c)


async def test_paused_pgbouncer_holds_calls_to_their_deadline(
    bouncer: TemporaryPgBouncer, pg_dsn: str
) -> None:
    """PAUSE (a maintenance switch-over): a call waits in PgBouncer, ends by its own deadline
    with QueryTimeout (P1008) and not later; after RESUME calls are served again."""
    dsn = bouncer.conninfo(_dbname(pg_dsn))
    async with dbr.AsyncPool(dsn, pooler="transaction", min_size=1, max_size=2) as pool:
        assert await pool.fetchone("select 1") == (1,)
        await asyncio.to_thread(bouncer.pause)
        try:
            start = time.monotonic()
            with pytest.raises(dbr.QueryTimeout):
                await pool.fetchone("select 1", timeout=0.5)
            assert time.monotonic() - start < 0.5 + 0.5
        finally:
            await asyncio.to_thread(bouncer.resume)
        assert await pool.fetchone("select 2", timeout=5) == (2,)


# --- what counts as session state: no false alarms on ordinary SQL ---------------------------

_WORDS = st.sampled_from(
    ["listen", "set", "temp", "temporary", "prepare", "hold", "lock", "advisory", "session"]
)
_NAMES = st.builds(lambda a, b: f"{a}_{b}", _WORDS, st.text("abcxyz", min_size=1, max_size=5))


@given(_NAMES, _NAMES)
def test_ordinary_statements_naming_keywords_are_not_refused(column: str, table: str) -> None:
    """Columns and tables named after the keywords (listen_count, set_x, temp_y) and UPDATE …
    SET are ordinary SQL: never taken for session state."""
    for query in (
        f"select {column} from {table} where {column} = %s",
        f"update {table} set {column} = %s where id = %s",
        f"insert into {table} ({column}) values (%s) on conflict do nothing",
        f"with {table} as (select 1 as {column}) select * from {table}",
    ):
        assert session_state_use(query) is None, query


@given(
    st.sampled_from(REFUSED),
    st.sampled_from(["", " ", "\n\t", "select 1; "]),
    st.booleans(),
)
def test_session_statements_are_refused_whatever_their_spelling(
    query: str, prefix: str, upper: bool
) -> None:
    """The refused statements stay refused in any case, after whitespace or another
    statement."""
    text = prefix + (query.upper() if upper else query)
    assert session_state_use(text) is not None, text


def test_session_state_in_warm_sql_is_refused_or_left_out(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """warm_sql that sets session state: refused at construction with pooler="transaction";
    with a pooler detected ("auto") it is left out, with a warning, and the pool still fills."""
    with pytest.raises(ValueError, match="warm_sql"):
        dbr.Pool("host=127.0.0.1", pooler="transaction", warm_sql=["set work_mem = '8MB'"])
    b = start_pgbouncer(
        pg_dsn, databases=[_dbname(pg_dsn)], settings={"ignore_startup_parameters": "options"}
    )
    try:
        with dbr.Pool(
            b.conninfo(_dbname(pg_dsn)),
            warm_sql=["set work_mem = '8MB'", "select 1"],
            min_size=2,
            max_size=2,
        ) as pool:
            assert pool.pooler == "transaction"
            for _ in range(5):
                assert pool.fetchone("select 1", timeout=2) == (1,)
            assert pool.stats()["size"] == 2
    finally:
        b.close()
    assert "no longer run" in caplog.text


async def test_async_pool_fails_open_at_once_on_a_pooler_configuration_error(
    bouncer: TemporaryPgBouncer,
) -> None:
    """AsyncPool: PgBouncer's `no such database` fails open() at once (P1003, no retries)."""
    pool = dbr.AsyncPool(bouncer.conninfo("dbr_no_such_db"), pooler="transaction")
    start = time.monotonic()
    with pytest.raises(psycopg.OperationalError, match="no such database") as info:
        await pool.open()
    assert time.monotonic() - start < 1.0
    assert dbr.classify(info.value).code == "P1003"


def test_sqlalchemy_engine_in_session_mode_sets_the_timeouts(
    session_bouncer: TemporaryPgBouncer, pg_dsn: str
) -> None:
    """create_engine(pooler="session") through a session-mode PgBouncer: no startup options,
    the statement timeout SET on each new connection."""
    url = f"postgresql+psycopg://postgres@127.0.0.1:{session_bouncer.port}/{_dbname(pg_dsn)}"
    engine = create_engine(url, pooler="session", statement_timeout=3, pool_size=1)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("show statement_timeout")).scalar_one() == "3s"
    finally:
        engine.dispose()


# --- break12: spellings that slipped past the check, and literals that tripped it ------------

BYPASSES = [
    "/* hint */ set statement_timeout = 1234",
    "-- why\nset statement_timeout = 1234",
    "set/**/statement_timeout = 1234",
    "set/* c */session statement_timeout = 1234",
    "select 1;/* c */set statement_timeout = 1234",
    "select set_config('statement_timeout', '1234', false)",
    "SELECT SET_CONFIG ( 'statement_timeout' , '1234' , FALSE )",
    "select set_config('statement_timeout', '1234', 'f'::bool)",
    "do $$begin set statement_timeout = 1234; end$$",
    "do $$ begin perform set_config('statement_timeout', '1234', false); end $$",
    "select 1; listen/**/dbr_channel",
    "prepare/**/dbr_stmt as select 1",
    "create/**/temp table dbr_tmp (a int)",
    "select pg_advisory_lock/**/(42)",
    "declare c cursor with/**/hold for select 1",
    'select "pg_advisory_lock"(42)',
    "update pg_settings set setting = '1234' where name = 'statement_timeout'",
    "select 1" + " " * 70_000 + "; set statement_timeout = 1234",
]

NOT_SESSION_STATE = [
    "select 'a; listen x'",
    "select 'a; set statement_timeout = 0' as note",
    "select 'declare c cursor with hold' as doc",
    "select 'pg_advisory_lock(1)' as name",
    "select E'a\\'; set statement_timeout = 0' as note",
    "select 1 -- ; set statement_timeout = 0",
    "select 1 /* ; listen x */",
    "select set_config('statement_timeout', '1234', true)",
    "select set_config('app.x', format('%%s', 1), true)",
    'select 1 as "; listen x"',
]


@pytest.mark.parametrize("query", BYPASSES, ids=[q[:48] for q in BYPASSES])
def test_session_state_is_refused_behind_comments_and_set_config(
    tx_dsn: str, pg_dsn: str, query: str
) -> None:
    """A comment before or inside the keyword, set_config(..., false) and a DO block set
    session state as surely as the plain statement: refused before sending. Before break12
    these went through and, with a second client on the same server connection, its SHOW
    statement_timeout said 1234ms."""
    assert session_state_use(query) is not None, query
    with dbr.Pool(tx_dsn, pooler="transaction", min_size=1, max_size=1) as pool:
        with pytest.raises(dbr.SessionStateUnsupported):
            pool.execute(query)
        with pool.connection() as conn, pytest.raises(dbr.SessionStateUnsupported):
            conn.execute(query)
        assert pool.fetchone("show statement_timeout") != ("1234ms",)


@pytest.mark.parametrize("query", NOT_SESSION_STATE)
def test_keywords_inside_literals_and_comments_are_not_refused(query: str) -> None:
    """Keywords inside string literals, dollar quotes, quoted names and comments, and
    set_config(..., true), are not session state."""
    assert session_state_use(query) is None, query


def test_a_temporary_table_dropped_at_commit_is_allowed_in_a_transaction(tx_dsn: str) -> None:
    """CREATE TEMP TABLE … ON COMMIT DROP ends with its transaction, like SET LOCAL: it passes
    in transaction(); another temp table in the same text is still refused (break12: refused)."""
    with dbr.Pool(tx_dsn, pooler="transaction", min_size=1, max_size=1) as pool:
        scratch = "create temp table dbr_scratch (a int) on commit drop"

        def body(conn: psycopg.Connection[Any]) -> object:
            conn.execute(scratch)
            conn.execute("insert into dbr_scratch values (1), (2)")
            row = conn.execute("select count(*) from dbr_scratch").fetchone()
            return row[0] if row else None

        assert pool.transaction(body) == 2
        assert session_state_use(f"{scratch}; create temp table dbr_kept (a int)") is not None
        assert session_state_use("create temp table t (a int); select 'on commit drop'") is not None


def test_a_with_hold_server_cursor_is_refused(tx_dsn: str) -> None:
    """conn.cursor(name, withhold=True) declares a WITH HOLD cursor that outlives the
    transaction, on a server connection other clients share: refused, like the statement
    (break12: it went through and another client saw it in pg_cursors)."""
    with dbr.Pool(tx_dsn, pooler="transaction", min_size=1, max_size=1) as pool:
        with pool.connection() as conn, pytest.raises(dbr.SessionStateUnsupported):
            conn.cursor("dbr_hold", withhold=True)
        # without hold it is fine
        with pool.connection() as conn, conn.transaction(), conn.cursor("dbr_plain") as cur:
            cur.execute("select 1")
            assert cur.fetchone() == (1,)
        assert pool.fetchall("select name from pg_cursors") == []


async def test_a_with_hold_server_cursor_is_refused_async(tx_dsn: str) -> None:
    """The same through AsyncPool, whose pooler is detected ("auto")."""
    async with dbr.AsyncPool(tx_dsn, min_size=1, max_size=1) as pool:
        await pool.fetchone("select 1")
        assert pool.pooler == "transaction"
        async with pool.connection() as conn:
            with pytest.raises(dbr.SessionStateUnsupported):
                conn.cursor("dbr_hold", withhold=True)
