# WARNING: generated from test_pool_async.py by tools/async_to_sync.py: DO NOT EDIT.
# Change the async source, then run `python tools/async_to_sync.py`.
"""Pool: warming, deadlines that hold against a frozen server, recovery, transactions.

tests/test_pool_async.py is the one source of the pool tests; tests/test_pool.py, for the
threaded twin, is generated from it by ``python tools/async_to_sync.py``.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg
import psycopg_pool
import pytest
from psycopg import sql
from psycopg.rows import dict_row

import dbresilience as dbr
from dbresilience.faults import (
    FaultProxy,
    TemporaryPostgres,
    client_backends,
    free_port,
    terminate_backends,
)

from .acompat import Event, gather, sleep, spawn

MARGIN = 0.25  # what "within its deadline plus a small margin" means in these tests

T = TypeVar("T")


def backends(cluster: TemporaryPostgres) -> list[int]:
    """The pids of every client backend on *cluster* (not the admin connection asking)."""
    return client_backends(cluster.dsn)


def terminate_all(cluster: TemporaryPostgres) -> int:
    """pg_terminate_backend on every client backend; returns how many."""
    return terminate_backends(cluster.dsn)


def count(cluster: TemporaryPostgres, table: sql.Identifier) -> int:
    with psycopg.connect(cluster.dsn, autocommit=True) as conn:
        row = conn.execute(sql.SQL("select count(*) from {}").format(table)).fetchone()
    assert row is not None
    return int(row[0])


def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, a slow blocking step (a server starting or stopping), run off the event
    loop so the pool's own tasks go on meanwhile; in threads, simply called."""
    return fn(*args)


@contextlib.contextmanager
def ctrl_c_after(delay: float) -> Iterator[None]:
    """What Ctrl-C does to a thread's blocking call: KeyboardInterrupt in the main thread after
    *delay* seconds (through a signal, so a wait in a system call is interrupted too)."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGUSR1, interrupt)
    main = threading.main_thread().ident
    assert main is not None
    timer = threading.Timer(delay, signal.pthread_kill, (main, signal.SIGUSR1))
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        timer.join()
        signal.signal(signal.SIGUSR1, previous)


# --- open --------------------------------------------------------------------------------


def test_open_warms_min_size_connections(pg_dsn: str) -> None:
    """Entering the block opens min_size connections before the first call."""
    with dbr.Pool(pg_dsn, min_size=3, max_size=5) as pool:
        assert pool.stats()["size"] >= 3
        assert pool.fetchone("select 1") == (1,)
        assert pool.fetchall("select generate_series(1, 3)") == [(1,), (2,), (3,)]
        assert pool.execute("select 1") == 1


def test_open_against_refused_port_fails_with_p1001(pg_dsn: str) -> None:
    """A refused port: open retries within connect_timeout, then raises the P1001 error."""
    dsn = psycopg.conninfo.make_conninfo(pg_dsn, port=str(free_port()))
    pool = dbr.Pool(dsn, connect_timeout=1.0)
    start = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as info:
        pool.open()
    assert time.monotonic() - start < 1.0 + MARGIN
    assert dbr.classify(info.value).code == "P1001"


@pytest.mark.parametrize(("change", "code"), [("user", "P1000"), ("dbname", "P1003")])
def test_open_fails_at_once_on_fatal_errors(pg_dsn: str, change: str, code: str) -> None:
    """Unknown role and missing database are not waited out: open raises at once."""
    dsn = psycopg.conninfo.make_conninfo(pg_dsn, **{change: "dbr_missing_x"})
    pool = dbr.Pool(dsn, connect_timeout=10.0)
    start = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as info:
        pool.open()
    assert time.monotonic() - start < 1.0
    assert dbr.classify(info.value).code == code


def test_open_without_wait_starts_while_the_database_is_down(pg_cluster: TemporaryPostgres) -> None:
    """open(wait=False) returns at once with the server down; calls fail fast from the very
    first one (it never waits out acquire_timeout for a connect that already failed), then
    serve."""
    off_loop(pg_cluster.stop, "fast")
    pool = dbr.Pool(
        pg_cluster.dsn, min_size=2, connect_timeout=2.0, acquire_timeout=5.0, query_timeout=5.0
    )
    pool.open(wait=False)
    try:
        start = time.monotonic()  # no pause: the first call may come before the first connect
        with pytest.raises(dbr.DatabaseUnavailable) as info:
            pool.fetchone("select 1")
        assert time.monotonic() - start < 0.5
        assert dbr.classify(info.value).code == "P1001"
        off_loop(pg_cluster.start)
        back = time.monotonic()
        while True:
            try:
                assert pool.fetchone("select 1") == (1,)
                break
            except dbr.DatabaseUnavailable:
                assert time.monotonic() - back < 1.0 + 1.0  # one backoff step, plus margin
                sleep(0.02)
    finally:
        pool.close()


def serves_again_after_restore(pool: dbr.Pool, proxy: FaultProxy) -> None:
    """*proxy* restored: the pool serves within one reconnect step (1 s) plus a margin."""
    proxy.restore()
    back = time.monotonic()
    while True:
        try:
            assert pool.fetchone("select 1") == (1,)
            return
        except dbr.DatabaseUnavailable:
            assert time.monotonic() - back < 1.0 + 1.0
            sleep(0.02)


@pytest.mark.parametrize("fault", ["down", "silent"])
def test_first_call_after_open_without_wait_fails_fast(
    pg_proxy: tuple[FaultProxy, str], fault: str
) -> None:
    """A service started during an outage: its first call fails (DatabaseUnavailable) once the
    first connect has failed (at once for a refusal, after connect_timeout for a silent
    server), well before acquire_timeout; restored, the pool serves again."""
    proxy, dsn = pg_proxy
    getattr(proxy, fault)()
    pool = dbr.Pool(dsn, min_size=2, connect_timeout=2.0, acquire_timeout=5.0, query_timeout=5.0)
    pool.open(wait=False)
    try:
        start = time.monotonic()
        with pytest.raises(dbr.DatabaseUnavailable) as info:
            pool.fetchone("select 1")
        elapsed = time.monotonic() - start
        # the first connect's failure (at once / connect_timeout), the call's own two retry
        # sleeps (full jitter, 0.05 + 0.1 s at most), a margin; acquire_timeout is 5 s
        assert elapsed < (0.0 if fault == "down" else 2.0) + 0.15 + MARGIN
        assert dbr.classify(info.value).code == ("P1001" if fault == "down" else "P1002")
        start = time.monotonic()  # the next call knows at once
        with pytest.raises(dbr.DatabaseUnavailable):
            pool.fetchone("select 1")
        assert time.monotonic() - start < 0.5
        serves_again_after_restore(pool, proxy)
    finally:
        pool.close()


def test_a_connect_still_in_progress_is_waited_for(pg_proxy: tuple[FaultProxy, str]) -> None:
    """A database slow to accept (the connect has not failed yet) is no evidence of an outage:
    the first call after open(wait=False) waits for the connect and is served."""
    proxy, dsn = pg_proxy
    proxy.silent()
    pool = dbr.Pool(dsn, min_size=1, connect_timeout=3.0, query_timeout=5.0)
    pool.open(wait=False)
    try:

        def accept_later() -> None:
            sleep(0.6)
            off_loop(proxy.restore)

        accepting = spawn(accept_later)
        start = time.monotonic()
        assert pool.fetchone("select 1") == (1,)
        assert 0.5 < time.monotonic() - start < 0.6 + 1.0
        gather(accepting)
        assert pool.stats()["fail_fast"] == 0
    finally:
        pool.close()


def test_a_healthy_cold_start_serves_its_first_call(pg_dsn: str) -> None:
    """open(wait=False) on a healthy database: the first calls, made at once, are served."""
    pool = dbr.Pool(pg_dsn, min_size=2, max_size=4)
    pool.open(wait=False)
    try:
        results = gather(*(spawn(pool.fetchone, "select 1") for _ in range(6)))
        assert results == [(1,)] * 6
        assert pool.stats()["fail_fast"] == 0
    finally:
        pool.close()


# --- deadlines ---------------------------------------------------------------------------


def test_frozen_backend_returns_within_the_deadline_and_the_pool_serves_again(
    pg_cluster: TemporaryPostgres,
) -> None:
    """Every backend SIGSTOPped: the call ends at its deadline with QueryTimeout (P1008), other
    work runs on meanwhile, and the pool then serves on new connections."""
    with dbr.Pool(pg_cluster.dsn, min_size=2, max_size=4, query_timeout=1.0) as pool:
        for pid in backends(pg_cluster):
            pg_cluster.freeze(pid)
        ticks = 0
        stop = Event()

        def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                sleep(0.01)

        ticking = spawn(ticker)
        start = time.monotonic()
        try:
            with pytest.raises(dbr.QueryTimeout) as info:
                pool.fetchone("select 1")
            elapsed = time.monotonic() - start
        finally:
            stop.set()
            gather(ticking)
        assert 1.0 <= elapsed < 1.0 + MARGIN
        assert ticks > 5  # a blocked loop (or GIL) gives 0 or 1; more is a rate, not a promise
        assert isinstance(info.value, TimeoutError)
        assert dbr.classify(info.value).code == "P1008"
        # the frozen backends stay frozen; the pool connects anew and serves
        assert pool.fetchone("select 2", timeout=3.0) == (2,)
        assert pool.stats()["query_timeouts"] == 1


def test_raw_psycopg_would_wait_for_the_frozen_backend(pg_cluster: TemporaryPostgres) -> None:
    """The problem the watchdog solves: statement_timeout does nothing for a frozen backend."""
    conn = psycopg.Connection.connect(
        pg_cluster.dsn, autocommit=True, options="-c statement_timeout=300"
    )
    pid = conn.execute("select pg_backend_pid()").fetchone()
    assert pid is not None
    pg_cluster.freeze(int(pid[0]))
    done = Event()

    def query() -> None:
        conn.execute("select 1")
        done.set()

    querying = spawn(query)
    sleep(1.0)
    assert not done.is_set()  # three times its statement_timeout, still waiting
    pg_cluster.thaw(int(pid[0]))
    gather(querying, timeout=5)
    assert done.is_set()
    conn.close()


def test_proxy_freeze_ends_at_the_deadline(pg_proxy: tuple[FaultProxy, str]) -> None:
    """A network that stops forwarding: QueryTimeout at the deadline; restored, it serves."""
    proxy, dsn = pg_proxy
    with dbr.Pool(dsn, min_size=1, max_size=2, query_timeout=0.8) as pool:
        proxy.freeze()
        start = time.monotonic()
        with pytest.raises(dbr.QueryTimeout):
            pool.fetchone("select 1")
        assert time.monotonic() - start < 0.8 + MARGIN
        proxy.restore()
        assert pool.fetchone("select 1") == (1,)


def test_server_side_statement_timeout_keeps_the_connection(pg_dsn: str) -> None:
    """statement_timeout (the server layer) cancels a slow query with 57014; nothing is lost."""
    with dbr.Pool(pg_dsn, min_size=1, max_size=1, query_timeout=5, statement_timeout=0.2) as pool:
        with pytest.raises(psycopg.errors.QueryCanceled) as info:
            pool.fetchone("select pg_sleep(2)")
        assert dbr.classify(info.value).code == "P1008"
        assert pool.fetchone("select 1") == (1,)
        assert pool.stats()["watchdog_fired"] == 0


def test_connection_block_with_a_timeout(pg_dsn: str) -> None:
    """pool.connection(timeout=...) bounds the whole block."""
    with dbr.Pool(pg_dsn, min_size=1, max_size=2, statement_timeout=None) as pool:

        def slow_block() -> None:
            with pool.connection(timeout=0.5) as conn:
                conn.execute("select pg_sleep(3)")

        start = time.monotonic()
        with pytest.raises(dbr.QueryTimeout):
            slow_block()
        assert time.monotonic() - start < 0.5 + MARGIN


def test_pool_busy_gives_p2024(pg_dsn: str) -> None:
    """With every connection held, a call waits its timeout and ends in AcquireTimeout (P2024)."""
    with dbr.Pool(pg_dsn, min_size=1, max_size=1, breaker=None) as pool:
        with pool.connection():
            start = time.monotonic()
            with pytest.raises(dbr.AcquireTimeout) as info:
                pool.fetchone("select 1", timeout=0.4)
            assert 0.3 < time.monotonic() - start < 0.4 + MARGIN
        assert dbr.classify(info.value).code == "P2024"
        assert pool.stats()["acquire_timeouts"] >= 1


# --- recovery ----------------------------------------------------------------------------


def test_every_connection_terminated_next_reads_and_writes_succeed(
    pg_cluster: TemporaryPostgres, table: sql.Identifier
) -> None:
    """pg_terminate_backend on every pooled connection: the next reads and writes succeed,
    and a non-idempotent write is applied exactly once (nothing had been sent)."""
    with dbr.Pool(pg_cluster.dsn, min_size=4, max_size=4) as pool:
        assert terminate_all(pg_cluster) == 4
        sleep(0.1)
        assert pool.fetchone("select 1") == (1,)
        assert terminate_all(pg_cluster) >= 1
        sleep(0.1)
        insert = sql.SQL("insert into {} (v) values (1)").format(table)
        assert pool.execute(insert) == 1
        assert pool.stats()["generation"] >= 1
    assert count(pg_cluster, table) == 1


def test_restart_serves_again_within_restart_time_plus_one_backoff_step(
    pg_cluster: TemporaryPostgres,
) -> None:
    """Server stopped and restarted: the pool serves again within a second of it being up."""
    with dbr.Pool(pg_cluster.dsn, min_size=2, max_size=4, query_timeout=1.0) as pool:
        assert pool.fetchone("select 1") == (1,)
        off_loop(pg_cluster.stop, "fast")
        with pytest.raises(psycopg.OperationalError):
            pool.fetchone("select 1")
        sleep(1.5)  # long enough for psycopg_pool's own backoff to have reached 2 s
        off_loop(pg_cluster.start)
        back = time.monotonic()
        while True:
            try:
                pool.fetchone("select 1")
                break
            except (psycopg.OperationalError, dbr.CircuitOpen):
                assert time.monotonic() - back < 1.0 + 0.5  # QuickReconnect caps at 1 s
                sleep(0.02)


def test_proxy_reset_is_ridden_out(pg_proxy: tuple[FaultProxy, str]) -> None:
    """Every connection reset by the network: reads succeed on new connections."""
    proxy, dsn = pg_proxy
    with dbr.Pool(dsn, min_size=2, max_size=2) as pool:
        proxy.reset()
        sleep(0.05)
        assert pool.fetchone("select 1") == (1,)


def test_a_write_lost_mid_statement_is_not_rerun_unless_idempotent(
    pg_dsn: str,
    pg_proxy: tuple[FaultProxy, str],
    table_name: str,
    pg_conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    """The connection reset while an INSERT runs: P1017, commit unknown, not re-run."""
    proxy, dsn = pg_proxy
    t = sql.Identifier(table_name)
    pg_conn.execute(sql.SQL("create table {} (v int)").format(t))
    slow_insert = sql.SQL("insert into {} select 1 from pg_sleep(1)").format(t)

    def running() -> int:
        """INSERTs running on the server, seen on a connection that bypasses the proxy."""
        query = "select count(*) from pg_stat_activity where state = 'active' and query like %s"
        row = pg_conn.execute(query, (f"insert into %{table_name}%",)).fetchone()
        return int(str(row[0])) if row else 0

    def reset_soon() -> None:
        # once the INSERT runs on the server: a reset on a timer could come before it was
        # sent, or after it ended, on a loaded machine
        deadline = time.monotonic() + 10
        while not running():
            assert time.monotonic() < deadline, "the INSERT never ran"
            sleep(0.005)
        proxy.reset()

    with dbr.Pool(dsn, min_size=1, max_size=2) as pool:
        resetting = spawn(reset_soon)
        with pytest.raises(psycopg.OperationalError) as info:
            pool.execute(slow_insert)
        gather(resetting)
        assert dbr.classify(info.value).commit_unknown
        assert pool.stats()["retries"] == 0
        deadline = time.monotonic() + 10
        while running():  # the first INSERT's backend ends its sleep (unseen by the next reset)
            assert time.monotonic() < deadline
            sleep(0.02)
        resetting = spawn(reset_soon)
        pool.execute(slow_insert, idempotent=True)
        gather(resetting)
        assert pool.stats()["retries"] >= 1


# --- transactions --------------------------------------------------------------------------


def test_transaction_is_rerun_on_serialization_failure(
    pg_cluster: TemporaryPostgres, table: sql.Identifier
) -> None:
    """A 40001 raised by the server in the first attempt: the whole transaction runs again."""
    attempts = 0

    def work(conn: psycopg.Connection[object]) -> str:
        nonlocal attempts
        attempts += 1
        conn.execute(sql.SQL("insert into {} (v) values (%s)").format(table), (attempts,))
        if attempts == 1:
            conn.execute("do $$ begin raise exception 'conflict' using errcode = '40001'; end $$")
        return "ok"

    with dbr.Pool(pg_cluster.dsn, min_size=1, max_size=2) as pool:
        assert pool.transaction(work) == "ok"
    assert attempts == 2
    assert count(pg_cluster, table) == 1  # the first attempt was rolled back


def test_transaction_lost_before_commit_is_rerun(
    pg_cluster: TemporaryPostgres, table: sql.Identifier
) -> None:
    """Its backend terminated mid-transaction: nothing was committed, so it runs again."""
    attempts = 0

    def work(conn: psycopg.Connection[object]) -> None:
        nonlocal attempts
        attempts += 1
        conn.execute(sql.SQL("insert into {} (v) values (1)").format(table))
        if attempts == 1:
            terminate_all(pg_cluster)
            sleep(0.05)
        conn.execute(sql.SQL("insert into {} (v) values (2)").format(table))

    with dbr.Pool(pg_cluster.dsn, min_size=1, max_size=2) as pool:
        pool.transaction(work)
    assert attempts == 2
    assert count(pg_cluster, table) == 2


def test_transaction_lost_during_commit_raises_commit_unknown(
    pg_proxy: tuple[FaultProxy, str],
    table_name: str,
    pg_conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    """The network freezes as COMMIT goes out: CommitUnknown (P1017, commit unknown), no re-run."""
    proxy, dsn = pg_proxy
    t = sql.Identifier(table_name)
    pg_conn.execute(sql.SQL("create table {} (v int)").format(t))
    attempts = 0

    def work(conn: psycopg.Connection[object]) -> None:
        nonlocal attempts
        attempts += 1
        conn.execute(sql.SQL("insert into {} values (1)").format(t))
        proxy.freeze()  # the COMMIT that follows gets no answer

    with dbr.Pool(dsn, min_size=1, max_size=2, query_timeout=1.0) as pool:
        with pytest.raises(dbr.CommitUnknown) as info:
            pool.transaction(work)
        proxy.restore()
    c = dbr.classify(info.value)
    assert (c.code, c.commit_unknown) == ("P1017", True)
    assert attempts == 1


# --- cancellation ----------------------------------------------------------------------------


def test_cancelling_a_call_gives_the_connection_back(pg_dsn: str) -> None:
    """A call cancelled mid-query (its task cancelled; a thread's, by Ctrl-C) gives its
    connection back and does not count as a failure."""
    with dbr.Pool(pg_dsn, min_size=1, max_size=1) as pool:
        with ctrl_c_after(0.2), pytest.raises(KeyboardInterrupt):
            pool.fetchone("select pg_sleep(5)")
        assert pool.fetchone("select 1", timeout=3) == (1,)
        assert pool.stats()["failures"] == 0


# --- configuration and security -------------------------------------------------------------


def test_warm_sql_runs_on_every_connection(pg_dsn: str) -> None:
    """warm_sql statements run on each new connection before it is used."""
    with dbr.Pool(pg_dsn, min_size=2, warm_sql=["set application_name = 'dbr-warm'"]) as pool:
        assert pool.fetchone("show application_name") == ("dbr-warm",)


def test_row_factory(pg_dsn: str) -> None:
    """Rows are tuples unless a row_factory is passed."""
    with dbr.Pool(pg_dsn, min_size=1) as pool:
        assert pool.fetchone("select 1 as a") == (1,)
        assert pool.fetchone("select 1 as a", row_factory=dict_row) == {"a": 1}
        assert pool.fetchall("select 2 as b", row_factory=dict_row) == [{"b": 2}]


def test_timeouts_are_set_on_every_connection(pg_dsn: str) -> None:
    """statement_timeout, lock_timeout and idle_in_transaction_session_timeout are in force."""
    with dbr.Pool(pg_dsn, min_size=1, query_timeout=4) as pool:
        names = ["idle_in_transaction_session_timeout", "lock_timeout", "statement_timeout"]
        rows = pool.fetchall(
            "select name, setting from pg_settings where name = any(%s) order by name", (names,)
        )
    assert rows == [
        ("idle_in_transaction_session_timeout", "60000"),
        ("lock_timeout", "2000"),
        ("statement_timeout", "4000"),
    ]


def test_breaker_fails_fast_once_the_database_is_gone(pg_cluster: TemporaryPostgres) -> None:
    """The pool's breaker opens after repeated failures; then calls fail at once."""
    breaker = dbr.CircuitBreaker("db", minimum_calls=3, open_for=30)
    with dbr.Pool(pg_cluster.dsn, min_size=1, breaker=breaker, query_timeout=0.5) as pool:
        off_loop(pg_cluster.stop, "fast")
        for _ in range(3):
            with pytest.raises(psycopg.OperationalError):
                pool.fetchone("select 1")
        start = time.monotonic()
        with pytest.raises(dbr.CircuitOpen):
            pool.fetchone("select 1")
        assert time.monotonic() - start < 0.05
        assert pool.stats()["breaker"] == "open"


def test_no_password_in_repr_errors_or_logs(pg_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    """A DSN's password shows up in no repr, error message or log line."""
    caplog.set_level(logging.DEBUG)
    secret = "s3cret-Pa55"
    dsn = psycopg.conninfo.make_conninfo(pg_dsn, port=str(free_port()), password=secret)
    pool = dbr.Pool(dsn, connect_timeout=0.5)
    texts = [repr(pool), str(pool.stats())]
    with pytest.raises(psycopg.OperationalError) as info:
        pool.open()
    texts += [str(info.value), repr(info.value), caplog.text]
    good = psycopg.conninfo.make_conninfo(pg_dsn, password=secret)
    with dbr.Pool(good, min_size=1) as live:
        texts += [repr(live), str(live.stats())]
        with pytest.raises(psycopg.Error) as bad:
            live.fetchone("select * from dbr_no_table")
        texts += [str(bad.value), caplog.text]
    assert not any(secret in text for text in texts)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"min_size": -1}, "min_size"),
        ({"min_size": 5, "max_size": 2}, "max_size"),
        ({"query_timeout": 0}, "query_timeout"),
        ({"connect_timeout": -1}, "connect_timeout"),
        ({"attempts": 0}, "attempts"),
        ({"base_delay": 2, "max_delay": 1}, "max_delay"),
    ],
)
def test_bad_pool_arguments_fail_at_construction(kwargs: dict[str, float], name: str) -> None:
    """Invalid configuration raises ValueError naming the argument, before any I/O."""
    with pytest.raises(ValueError, match=name):
        dbr.Pool("host=127.0.0.1", **kwargs)  # type: ignore[arg-type]


def test_bad_conninfo_fails_without_echoing_it() -> None:
    """An unparsable conninfo is a ValueError that does not quote it (it may hold a password)."""
    with pytest.raises(ValueError, match="conninfo") as info:
        dbr.Pool("host=x password='unterminated")
    assert "unterminated" not in str(info.value)
    with pytest.raises(TypeError, match="warm_sql"):
        dbr.Pool("host=x", warm_sql="set x = 1")


def test_database_unavailable_is_never_commit_unknown() -> None:
    """Failing fast happens before anything is sent: no write is in doubt, whatever the cause."""
    lost = psycopg.OperationalError("server closed the connection unexpectedly")
    exc = dbr.DatabaseUnavailable("no connection", dbr.classify(lost))
    c = dbr.classify(exc)
    assert (c.code, c.retryable, c.commit_unknown) == ("P1017", True, False)


def test_sync_and_async_pools_have_the_same_methods() -> None:
    """The twins stay parallel, method for method (beyond a-prefixed aliases of shared ones)."""
    pools = [getattr(dbr, name) for name in dbr.__all__ if name.endswith("Pool")]
    assert len(pools) == 2  # Pool and its asyncio twin
    public = [{n for n in dir(pool) if not n.startswith("_")} for pool in pools]
    shared = public[0] & public[1]
    assert "fetchone" in shared
    # the asyncio twin may also answer to the asyncio spelling of a shared method (a + name)
    assert all(n.startswith("a") and n[1:] in shared for n in public[0] ^ public[1])


def test_kill_storm_during_refill_does_not_fail_fast(pg_cluster: TemporaryPostgres) -> None:
    """Backends killed again and again, some while the pool is still configuring their
    replacements: a killed refill is not "the database is down", so reads keep succeeding."""
    with dbr.Pool(pg_cluster.dsn, min_size=3, max_size=3, query_timeout=5) as pool:
        for _ in range(20):
            terminate_all(pg_cluster)
            assert pool.fetchone("select 1") == (1,)
        assert pool.stats()["fail_fast"] == 0


@pytest.mark.parametrize(
    ("error", "fails_fast"),
    [
        (psycopg.OperationalError("connection failed: Connection refused"), True),
        (psycopg.OperationalError('FATAL:  password authentication failed for user "x"'), True),
        (psycopg.OperationalError("server closed the connection unexpectedly"), False),
        (psycopg.errors.AdminShutdown("terminating connection"), False),
    ],
)
def test_fail_fast_only_when_the_database_cannot_be_had(
    pg_dsn: str, error: Exception, fails_fast: bool
) -> None:
    """With no idle connection, a recent refused/auth connect error fails fast; a connection
    killed while it was being configured does not (the database answered)."""
    with dbr.Pool(pg_dsn, min_size=1, max_size=1, breaker=None) as pool:
        with pool.connection():
            pool._counters.last_connect_error = error
            pool._counters.last_connect_error_at = time.monotonic()
            if fails_fast:
                with pytest.raises(dbr.DatabaseUnavailable):
                    pool._maybe_fail_fast()
            else:
                pool._maybe_fail_fast()
        pool._counters.last_connect_error = None


def test_a_pool_can_be_opened_again(pg_dsn: str) -> None:
    """close() then open() works (psycopg_pool itself refuses to reopen a closed pool), and so
    does open() after a failed open()."""
    pool = dbr.Pool(pg_dsn, min_size=1)
    pool.open()
    pool.close()
    with pool:
        assert pool.fetchone("select 1") == (1,)
    refused = dbr.Pool(
        psycopg.conninfo.make_conninfo(pg_dsn, port=str(free_port())), connect_timeout=0.5
    )
    for _ in range(2):  # the same refusal each time, never psycopg_pool's PoolClosed
        with pytest.raises(psycopg.OperationalError) as info:
            refused.open()
        assert not isinstance(info.value, psycopg_pool.PoolClosed)
        assert dbr.classify(info.value).code == "P1001"
