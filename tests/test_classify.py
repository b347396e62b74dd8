"""classify() against real failures from PostgreSQL, psycopg, psycopg_pool, SQLAlchemy and Redis."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import psycopg
import psycopg_pool
import pytest
import redis
import sqlalchemy as sa
from psycopg import sql

import dbresilience as dbr
from dbresilience.faults import FaultProxy, TemporaryPostgres, free_port

Conn = psycopg.Connection[tuple[object, ...]]


def failure(fn: Callable[[], object]) -> BaseException:
    """Run *fn* and return what it raised; fail the test if it did not raise."""
    try:
        fn()
    except BaseException as exc:
        return exc
    pytest.fail("expected a failure")


def _dsn_with(pg_dsn: str, **changes: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    params.update(changes)
    return psycopg.conninfo.make_conninfo("", **params)


# --- reaching the server -------------------------------------------------------------------


def test_refused_connection_is_p1001(pg_dsn: str) -> None:
    """A port nobody listens on gives P1001, retryable, 503 with a Retry-After."""
    exc = failure(lambda: psycopg.connect(_dsn_with(pg_dsn, port=str(free_port()))))
    c = dbr.classify(exc)
    assert (c.code, c.retryable, c.commit_unknown, c.http_status) == ("P1001", True, False, 503)
    assert c.retry_after is not None
    assert c.kind is dbr.ErrorKind.UNREACHABLE


def test_unresolvable_host_is_p1001(pg_dsn: str) -> None:
    """A host name that does not resolve gives P1001."""
    exc = failure(lambda: psycopg.connect(_dsn_with(pg_dsn, host="no-such-host.invalid")))
    assert dbr.classify(exc).code == "P1001"


def test_silent_server_is_connect_timeout(pg_proxy: tuple[FaultProxy, str]) -> None:
    """A server that accepts but never answers gives P1002 within connect_timeout."""
    proxy, dsn = pg_proxy
    proxy.silent()
    exc = failure(lambda: psycopg.connect(dsn, connect_timeout=2))
    c = dbr.classify(exc)
    assert (c.code, c.retryable, c.kind) == ("P1002", True, dbr.ErrorKind.CONNECT_TIMEOUT)


def test_proxy_down_is_p1001_and_live_connection_reset_is_p1017(
    pg_proxy: tuple[FaultProxy, str],
) -> None:
    """Refused new connections are P1001; a reset live connection is P1017, commit unknown."""
    proxy, dsn = pg_proxy
    conn = psycopg.connect(dsn, autocommit=True)
    proxy.down()
    lost = dbr.classify(failure(lambda: conn.execute("select 1")))
    assert (lost.code, lost.retryable, lost.commit_unknown) == ("P1017", True, True)
    refused = dbr.classify(failure(lambda: psycopg.connect(dsn, connect_timeout=2)))
    assert refused.code == "P1001"
    conn.close()


def test_unknown_database_and_role_are_fatal(pg_dsn: str) -> None:
    """A missing database is P1003 and an unknown role P1000; neither is retryable."""
    db = dbr.classify(failure(lambda: psycopg.connect(_dsn_with(pg_dsn, dbname="dbr_no_such"))))
    assert (db.code, db.retryable, db.http_status) == ("P1003", False, 500)
    role = dbr.classify(failure(lambda: psycopg.connect(_dsn_with(pg_dsn, user="dbr_no_role"))))
    assert (role.code, role.retryable) == ("P1000", False)


def test_tls_required_by_client_but_not_offered_is_not_retryable(pg_dsn: str) -> None:
    """sslmode=require against a server without TLS is P1011, a configuration error."""
    c = dbr.classify(failure(lambda: psycopg.connect(_dsn_with(pg_dsn, sslmode="require"))))
    assert (c.code, c.retryable) == ("P1011", False)


def test_too_many_connections_for_role_is_p2037(pg_cluster: TemporaryPostgres) -> None:
    """Past a role's connection limit the server refuses with 'too many connections': P2037."""
    with psycopg.connect(pg_cluster.dsn, autocommit=True) as admin:
        admin.execute("drop role if exists dbr_limited")
        admin.execute("create role dbr_limited login connection limit 1")
        try:
            dsn = pg_cluster.conninfo().replace("user=postgres", "user=dbr_limited")
            with psycopg.connect(dsn):
                c = dbr.classify(failure(lambda: psycopg.connect(dsn)))
            assert (c.code, c.retryable, c.kind) == (
                "P2037",
                True,
                dbr.ErrorKind.TOO_MANY_CONNECTIONS,
            )
        finally:
            admin.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity "
                "where usename = 'dbr_limited'"
            )
            admin.execute("drop role if exists dbr_limited")


def test_server_starting_or_stopped_is_p1001(pg_cluster: TemporaryPostgres) -> None:
    """A stopped server refuses connections (P1001) and its live sessions get 57P01 (P1017)."""
    conn = psycopg.connect(pg_cluster.dsn, autocommit=True)
    pg_cluster.stop("fast")
    lost = dbr.classify(failure(lambda: conn.execute("select 1")))
    assert lost.code == "P1017"
    assert lost.retryable
    refused = dbr.classify(failure(lambda: psycopg.connect(pg_cluster.dsn, connect_timeout=2)))
    assert refused.code == "P1001"
    conn.close()


# --- a connection that was open ------------------------------------------------------------


def test_terminated_backend_is_p1017_commit_unknown(pg_dsn: str, pg_conn: Conn) -> None:
    """pg_terminate_backend gives P1017: retryable, but a write may or may not have happened."""
    victim = psycopg.connect(pg_dsn, autocommit=True)
    pid = victim.execute("select pg_backend_pid()").fetchone()
    assert pid is not None
    pg_conn.execute("select pg_terminate_backend(%s)", (pid[0],))
    time.sleep(0.05)
    c = dbr.classify(failure(lambda: victim.execute("select 1")))
    assert (c.code, c.retryable, c.commit_unknown, c.http_status) == ("P1017", True, True, 503)
    # the next use of the dead connection: it is closed, nothing was sent
    again = dbr.classify(failure(lambda: victim.execute("select 1")))
    assert (again.code, again.retryable, again.commit_unknown) == ("P1017", True, False)


def test_statement_timeout_is_p1008_not_retryable(pg_conn: Conn) -> None:
    """statement_timeout (57014) gives P1008, not retried by default, still a 503."""
    pg_conn.execute("set statement_timeout = 50")
    c = dbr.classify(failure(lambda: pg_conn.execute("select pg_sleep(2)")))
    assert (c.code, c.sqlstate, c.retryable, c.http_status) == ("P1008", "57014", False, 503)


def test_lock_timeout_is_retryable(pg_dsn: str, pg_conn: Conn, table_name: str) -> None:
    """lock_timeout (55P03) is retryable: the lock holder will finish."""
    table = sql.Identifier(table_name)
    pg_conn.execute(sql.SQL("create table {} (id int primary key)").format(table))
    pg_conn.execute(sql.SQL("insert into {} values (1)").format(table))
    with psycopg.connect(pg_dsn) as holder, psycopg.connect(pg_dsn) as waiter:
        holder.execute(sql.SQL("select * from {} where id = 1 for update").format(table))
        waiter.execute("set lock_timeout = 50")
        c = dbr.classify(
            failure(
                lambda: waiter.execute(sql.SQL("update {} set id = 2 where id = 1").format(table))
            )
        )
    assert (c.sqlstate, c.retryable, c.kind) == ("55P03", True, dbr.ErrorKind.LOCK_NOT_AVAILABLE)


def test_real_deadlock_is_p2034(pg_dsn: str, pg_conn: Conn, table_name: str) -> None:
    """Two transactions locking rows in opposite order: one gets 40P01, P2034, retryable."""
    table = sql.Identifier(table_name)
    pg_conn.execute(sql.SQL("create table {} (id int primary key, v int)").format(table))
    pg_conn.execute(sql.SQL("insert into {} values (1, 0), (2, 0)").format(table))
    update = sql.SQL("update {} set v = v + 1 where id = %s").format(table)
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def worker(first: int, second: int) -> None:
        with psycopg.connect(pg_dsn) as conn:
            conn.execute("set deadlock_timeout = 50")
            try:
                conn.execute(update, (first,))
                barrier.wait(5)
                conn.execute(update, (second,))
                conn.commit()
            except psycopg.Error as exc:
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=args) for args in ((1, 2), (2, 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(errors) == 1
    c = dbr.classify(errors[0])
    assert (c.code, c.sqlstate, c.retryable) == ("P2034", "40P01", True)


def test_real_serialization_failure_is_p2034(pg_dsn: str, pg_conn: Conn, table_name: str) -> None:
    """Concurrent updates under REPEATABLE READ: the loser gets 40001, P2034, retryable."""
    table = sql.Identifier(table_name)
    pg_conn.execute(sql.SQL("create table {} (id int primary key, v int)").format(table))
    pg_conn.execute(sql.SQL("insert into {} values (1, 0)").format(table))
    update = sql.SQL("update {} set v = v + 1 where id = 1").format(table)
    with psycopg.connect(pg_dsn) as a, psycopg.connect(pg_dsn) as b:
        for conn in (a, b):
            conn.execute("set transaction isolation level repeatable read")
            conn.execute(sql.SQL("select v from {}").format(table))
        a.execute(update)
        done = threading.Event()
        errors: list[BaseException] = []

        def second() -> None:
            try:
                b.execute(update)
            except psycopg.Error as exc:
                errors.append(exc)
            done.set()

        threading.Thread(target=second).start()
        time.sleep(0.1)
        a.commit()
        assert done.wait(5)
    c = dbr.classify(errors[0])
    assert (c.code, c.sqlstate, c.retryable) == ("P2034", "40001", True)


def test_read_only_transaction_is_retryable(pg_dsn: str, pg_conn: Conn, table_name: str) -> None:
    """A write in a read-only transaction (what a demoted primary answers) is 25006, retryable."""
    table = sql.Identifier(table_name)
    pg_conn.execute(sql.SQL("create table {} (id int)").format(table))
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("set default_transaction_read_only = on")
        insert = sql.SQL("insert into {} values (1)").format(table)
        c = dbr.classify(failure(lambda: conn.execute(insert)))
    assert (c.sqlstate, c.retryable, c.kind) == ("25006", True, dbr.ErrorKind.READ_ONLY)


def test_idle_in_transaction_timeout_is_retryable(pg_conn: Conn, pg_dsn: str) -> None:
    """idle_in_transaction_session_timeout ends the session: 25P03, P1017, nothing committed."""
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("set idle_in_transaction_session_timeout = 50")
        conn.execute("select 1")
        time.sleep(0.3)
        c = dbr.classify(failure(lambda: conn.execute("select 1")))
    assert c.code == "P1017"
    assert c.retryable
    assert not c.commit_unknown


# --- the request itself is wrong -----------------------------------------------------------


def test_real_unique_and_foreign_key_violations(pg_conn: Conn, table_name: str) -> None:
    """Unique (23505) is P2002 and foreign key (23503) P2003; neither is retryable."""
    parent, child = sql.Identifier(table_name), sql.Identifier(table_name + "_child")
    pg_conn.execute(sql.SQL("create table {} (id int primary key)").format(parent))
    pg_conn.execute(
        sql.SQL("create table {} (id int, parent int references {})").format(child, parent)
    )
    pg_conn.execute(sql.SQL("insert into {} values (1)").format(parent))
    unique = dbr.classify(
        failure(lambda: pg_conn.execute(sql.SQL("insert into {} values (1)").format(parent)))
    )
    assert (unique.code, unique.sqlstate, unique.retryable, unique.http_status) == (
        "P2002",
        "23505",
        False,
        409,
    )
    fk = dbr.classify(
        failure(lambda: pg_conn.execute(sql.SQL("insert into {} values (1, 99)").format(child)))
    )
    assert (fk.code, fk.sqlstate, fk.retryable) == ("P2003", "23503", False)


@pytest.mark.parametrize(
    ("statement", "code", "sqlstate"),
    [
        ("select * from dbr_no_such_table", "P2021", "42P01"),
        ("select dbr_no_such_column from pg_class", "P2022", "42703"),
        ("selec 1", "P2010", "42601"),
        ("select 1/0", "P2007", "22012"),
        ("select 'x'::varchar(1)::char(1), 'abc'::varchar(2)", None, None),
    ],
)
def test_bad_sql_is_not_retryable(
    pg_conn: Conn, statement: str, code: str | None, sqlstate: str | None
) -> None:
    """Syntax errors, missing tables and columns, and bad data are never retried."""
    if code is None:  # a cast that truncates silently: no error, nothing to classify
        pg_conn.execute(statement)
        return
    c = dbr.classify(failure(lambda: pg_conn.execute(statement)))
    assert (c.code, c.sqlstate, c.retryable) == (code, sqlstate, False)


def test_value_too_long_and_not_null(pg_conn: Conn, table_name: str) -> None:
    """22001 (value too long) is P2000 and 23502 (not null) P2011, both HTTP 400."""
    table = sql.Identifier(table_name)
    pg_conn.execute(sql.SQL("create table {} (name varchar(3) not null)").format(table))
    long = dbr.classify(
        failure(lambda: pg_conn.execute(sql.SQL("insert into {} values ('abcdef')").format(table)))
    )
    null = dbr.classify(
        failure(lambda: pg_conn.execute(sql.SQL("insert into {} values (null)").format(table)))
    )
    assert (long.code, long.http_status) == ("P2000", 400)
    assert (null.code, null.http_status) == ("P2011", 400)


# Raised for real by the server: RAISE ... USING ERRCODE makes PostgreSQL send that SQLSTATE.
SERVER_RAISED = [
    ("57P03", "P1001", True, False),
    ("57P01", "P1017", True, True),
    ("57P02", "P1017", True, True),
    ("57P05", "P1017", True, False),
    ("25P03", "P1017", True, False),
    ("40001", "P2034", True, False),
    ("40P01", "P2034", True, False),
    ("40003", "DBR2002", True, True),
    ("53300", "P2037", True, False),
    ("55P03", "DBR2001", True, False),
    ("25006", "DBR1004", True, False),
    ("28P01", "P1000", False, False),
    ("28000", "P1000", False, False),
    ("3D000", "P1003", False, False),
    ("23505", "P2002", False, False),
    ("23503", "P2003", False, False),
    ("23502", "P2011", False, False),
    ("22001", "P2000", False, False),
    ("42P01", "P2021", False, False),
    ("42703", "P2022", False, False),
    ("42601", "P2010", False, False),
    ("08006", "P1017", True, True),
    ("08001", "P1001", True, False),
    ("XX000", "DBR2999", False, False),
]


@pytest.mark.parametrize(("sqlstate", "code", "retryable", "commit_unknown"), SERVER_RAISED)
def test_server_raised_sqlstates(
    pg_conn: Conn, sqlstate: str, code: str, retryable: bool, commit_unknown: bool
) -> None:
    """Every SQLSTATE in the table, raised by the real server, maps to its code and flags."""
    statement = sql.SQL("do $$ begin raise exception 'dbr test' using errcode = {}; end $$").format(
        sql.Literal(sqlstate)
    )
    c = dbr.classify(failure(lambda: pg_conn.execute(statement)))
    assert (c.sqlstate, c.code, c.retryable, c.commit_unknown) == (
        sqlstate,
        code,
        retryable,
        commit_unknown,
    )
    assert c.transient == (c.http_status == 503)
    if c.retryable:
        assert c.http_status == 503
        assert c.retry_after is not None
        assert c.retry_after > 0


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("ERROR: query_wait_timeout", "P2024"),
        ("no more connections allowed (max_client_conn)", "P2037"),
        ("server conn crashed?", "P1017"),
    ],
)
def test_pgbouncer_08p01_texts(pg_conn: Conn, text: str, code: str) -> None:
    """PgBouncer's 08P01 answers are read by their text (raised here by the real server)."""
    statement = sql.SQL("do $$ begin raise exception using message = {}, errcode = '08P01'; end $$")
    c = dbr.classify(failure(lambda: pg_conn.execute(statement.format(sql.Literal(text)))))
    assert (c.sqlstate, c.code, c.retryable) == ("08P01", code, True)


# --- pools, SQLAlchemy, Redis, cancellation ------------------------------------------------


def test_psycopg_pool_timeout_is_p2024(pg_dsn: str) -> None:
    """Waiting too long for a pooled connection (PoolTimeout) is P2024, retryable."""
    pool = psycopg_pool.ConnectionPool(pg_dsn, min_size=1, max_size=1, open=True)
    with pool, pool.connection():
        exc = failure(lambda: pool.getconn(timeout=0.2))
    assert isinstance(exc, psycopg_pool.PoolTimeout)
    c = dbr.classify(exc)
    assert (c.code, c.retryable, c.http_status) == ("P2024", True, 503)


def test_psycopg_pool_too_many_waiting_is_p2024(pg_dsn: str) -> None:
    """A pool whose wait queue is full (TooManyRequests) is classified like a pool timeout."""
    pool = psycopg_pool.ConnectionPool(pg_dsn, min_size=1, max_size=1, max_waiting=1, open=True)
    with pool, pool.connection():
        waiter = threading.Thread(target=lambda: failure(lambda: pool.getconn(timeout=1)))
        waiter.start()
        deadline = time.monotonic() + 5
        while pool.get_stats().get("requests_waiting", 0) < 1:  # the waiter is queued
            assert time.monotonic() < deadline
            time.sleep(0.005)
        exc = failure(lambda: pool.getconn(timeout=1))
        waiter.join()
    assert isinstance(exc, psycopg_pool.TooManyRequests)
    assert dbr.classify(exc).code == "P2024"


def _sa_url(pg_dsn: str) -> sa.URL:
    p = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    return sa.URL.create(
        "postgresql+psycopg",
        username=str(p.get("user") or "postgres"),
        host=str(p.get("host") or "127.0.0.1"),
        port=int(p.get("port") or 5432),
        database=str(p.get("dbname") or "postgres"),
    )


def test_sqlalchemy_wrapped_errors(pg_dsn: str, table_name: str) -> None:
    """SQLAlchemy's DBAPIError is unwrapped through .orig: unique violation P2002, refused P1001."""
    engine = sa.create_engine(_sa_url(pg_dsn))
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"create table {table_name} (id int primary key)"))
            conn.execute(sa.text(f"insert into {table_name} values (1)"))
        with engine.connect() as conn:
            exc = failure(lambda: conn.execute(sa.text(f"insert into {table_name} values (1)")))
        assert isinstance(exc, sa.exc.IntegrityError)
        assert dbr.classify(exc).code == "P2002"
    finally:
        engine.dispose()
    refused = sa.create_engine(_sa_url(pg_dsn).set(port=free_port()))
    exc = failure(refused.connect)
    assert isinstance(exc, sa.exc.OperationalError)
    assert dbr.classify(exc).code == "P1001"
    refused.dispose()


def test_sqlalchemy_queue_pool_timeout_is_p2024(pg_dsn: str) -> None:
    """SQLAlchemy's QueuePool limit (sqlalchemy.exc.TimeoutError) is P2024."""
    engine = sa.create_engine(_sa_url(pg_dsn), pool_size=1, max_overflow=0, pool_timeout=0.2)
    try:
        with engine.connect():
            exc = failure(engine.connect)
        assert isinstance(exc, sa.exc.TimeoutError)
        assert dbr.classify(exc).code == "P2024"
    finally:
        engine.dispose()


def test_sqlalchemy_invalidated_connection_is_p1017(pg_dsn: str, pg_conn: Conn) -> None:
    """A terminated backend under SQLAlchemy is P1017."""
    engine = sa.create_engine(_sa_url(pg_dsn))
    try:
        with engine.connect() as conn:
            pid = conn.execute(sa.text("select pg_backend_pid()")).scalar_one()
            pg_conn.execute("select pg_terminate_backend(%s)", (pid,))
            time.sleep(0.05)
            exc = failure(lambda: conn.execute(sa.text("select 1")))
        assert isinstance(exc, sa.exc.DBAPIError)
        assert dbr.classify(exc).code == "P1017"
    finally:
        engine.dispose()


def test_redis_refused_and_silent(make_proxy: Callable[[str, int], FaultProxy]) -> None:
    """redis-py's ConnectionError (refused) and TimeoutError (silent server) are retryable."""
    refused = redis.Redis(port=free_port(), socket_connect_timeout=1, retry=None)
    c = dbr.classify(failure(refused.ping))
    assert (c.kind, c.retryable, c.http_status) == (dbr.ErrorKind.REDIS_UNAVAILABLE, True, 503)
    silent_target = make_proxy("127.0.0.1", free_port())
    silent_target.silent()
    silent = redis.Redis(port=silent_target.port, socket_timeout=0.3, retry=None)
    c = dbr.classify(failure(silent.ping))
    assert (c.kind, c.retryable) == (dbr.ErrorKind.REDIS_TIMEOUT, True)


def test_cancellation_is_never_retryable() -> None:
    """CancelledError, KeyboardInterrupt and SystemExit are never retryable."""
    for exc in (asyncio.CancelledError(), KeyboardInterrupt(), SystemExit(1)):
        c = dbr.classify(exc)
        assert c.kind is dbr.ErrorKind.CANCELLED
        assert not c.retryable


def test_cause_chain_is_followed(pg_dsn: str) -> None:
    """An application error raised from a database error is classified by its cause."""

    def load() -> None:
        try:
            psycopg.connect(_dsn_with(pg_dsn, port=str(free_port())))
        except psycopg.OperationalError as inner:
            raise RuntimeError("could not load the user") from inner

    with pytest.raises(RuntimeError) as info:
        load()
    assert dbr.classify(info.value).code == "P1001"


def test_plain_timeout_error_is_p1008_and_unknown_is_not_retryable() -> None:
    """A deadline's TimeoutError is P1008; an unknown error is DBR9000, not retryable, 500."""
    assert dbr.classify(TimeoutError()).code == "P1008"
    unknown = dbr.classify(ValueError("nope"))
    assert (unknown.code, unknown.retryable, unknown.http_status) == ("DBR9000", False, 500)


# --- chains: a write whose fate is unknown anywhere in the chain wins ----------------------

STARTING_UP = sql.SQL(
    "do $$ begin raise exception 'the database system is starting up' using errcode = '57P03';"
    " end $$"
)


def _lost_write(pg_dsn: str, admin: Conn) -> psycopg.OperationalError:
    """A real write on a connection whose backend was terminated: 57P01, commit unknown."""
    victim = psycopg.connect(pg_dsn, autocommit=True)
    pid = victim.execute("select pg_backend_pid()").fetchone()
    assert pid is not None
    admin.execute("select pg_terminate_backend(%s)", (pid[0],))
    time.sleep(0.05)
    try:
        exc = failure(lambda: victim.execute("create temporary table dbr_charge (id int)"))
    finally:
        victim.close()
    assert isinstance(exc, psycopg.OperationalError)
    return exc


def test_commit_unknown_behind_a_later_sqlstate_wins(pg_dsn: str, pg_conn: Conn) -> None:
    """A lost write hidden behind a later 57P03 (P1001) from the audit insert: commit unknown."""
    try:
        raise _lost_write(pg_dsn, pg_conn)
    except psycopg.OperationalError:
        audit = failure(lambda: pg_conn.execute(STARTING_UP))  # its __context__: the lost write
    assert audit.__context__ is not None
    c = dbr.classify(audit)
    assert (c.code, c.sqlstate, c.retryable, c.commit_unknown) == ("P1001", "57P03", True, True)
    assert "commit unknown" in c.reason


def test_with_retry_does_not_charge_twice_behind_a_refused_audit_insert(
    pg_dsn: str, pg_conn: Conn
) -> None:
    """with_retry(idempotent=False) runs a charge once when a pool's P1001 hides the lost write."""
    audit_pool = dbr.Pool(
        _dsn_with(pg_dsn, port=str(free_port())), min_size=0, connect_timeout=1, acquire_timeout=1
    )
    audit_pool.open(wait=False)
    calls = 0

    @dbr.with_retry(attempts=3, idempotent=False)
    def charge() -> None:
        nonlocal calls
        calls += 1
        try:
            raise _lost_write(pg_dsn, pg_conn)
        except psycopg.OperationalError:
            audit_pool.execute("insert into audit values ('charge failed')")

    try:
        with dbr.testing(), pytest.raises(dbr.DatabaseUnavailable) as info:
            charge()
    finally:
        audit_pool.close()
    assert calls == 1
    c = dbr.classify(info.value)
    assert (c.code, c.commit_unknown) == ("P1001", True)


def test_with_retry_idempotent_still_retries_such_a_chain(pg_dsn: str, pg_conn: Conn) -> None:
    """The same chain is retried when the work is idempotent: commit unknown only guards writes."""
    calls = 0

    @dbr.with_retry(attempts=2, idempotent=True)
    def upsert() -> None:
        nonlocal calls
        calls += 1
        try:
            raise _lost_write(pg_dsn, pg_conn)
        except psycopg.OperationalError:
            pg_conn.execute(STARTING_UP)

    with dbr.testing(), pytest.raises(psycopg.OperationalError):
        upsert()
    assert calls == 2


def test_commit_unknown_under_sqlalchemy_orig_wins(pg_dsn: str, pg_conn: Conn) -> None:
    """A lost write wrapped by SQLAlchemy (.orig), then a 57P03 from the audit: commit unknown."""
    engine = sa.create_engine(_sa_url(pg_dsn))
    try:
        with engine.connect() as conn:
            pid = conn.execute(sa.text("select pg_backend_pid()")).scalar_one()
            pg_conn.execute("select pg_terminate_backend(%s)", (pid,))
            time.sleep(0.05)
            lost = failure(lambda: conn.execute(sa.text("create temporary table t (id int)")))
    finally:
        engine.dispose()
    assert isinstance(lost, sa.exc.DBAPIError)
    try:
        raise RuntimeError("could not record the charge") from lost
    except RuntimeError:
        audit = failure(lambda: pg_conn.execute(STARTING_UP))
    c = dbr.classify(audit)
    assert (c.code, c.commit_unknown) == ("P1001", True)


def test_library_error_vouches_for_what_it_was_raised_from(pg_dsn: str, pg_conn: Conn) -> None:
    """QueryTimeout(commit_unknown=False) from a lost connection keeps the pool's verdict."""
    lost = _lost_write(pg_dsn, pg_conn)
    try:
        raise dbr.QueryTimeout("rolled back before COMMIT", commit_unknown=False) from lost
    except dbr.QueryTimeout as exc:
        timeout = exc
    assert not dbr.classify(timeout).commit_unknown


def test_library_error_does_not_vouch_for_an_earlier_failure(pg_dsn: str, pg_conn: Conn) -> None:
    """A vouched-for cause whose own context is an earlier lost write: commit unknown wins."""
    try:
        raise _lost_write(pg_dsn, pg_conn)
    except psycopg.OperationalError:
        refused = failure(lambda: pg_conn.execute(STARTING_UP))  # __context__: the lost write
        try:
            raise dbr.QueryTimeout("deadline", commit_unknown=False) from refused
        except dbr.QueryTimeout as exc:
            timeout = exc
    assert dbr.classify(timeout).commit_unknown


class _WithSqlstate(Exception):
    """A driver error carrying a SQLSTATE."""

    def __init__(self, message: str, sqlstate: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def test_deep_commit_unknown_link_wins_over_every_kind_of_evidence() -> None:
    """Below an own, a SQLSTATE and a class verdict, a 57P01 link still makes it commit unknown."""
    lost = _WithSqlstate("terminating connection due to administrator command", "57P01")
    unique = _WithSqlstate("duplicate key", "23505")
    unique.__context__ = lost
    top = dbr.AcquireTimeout("no connection")
    top.__context__ = unique
    c = dbr.classify(top)
    assert (c.code, c.commit_unknown, c.retryable) == ("P2024", True, True)
    assert dbr.classify(unique).commit_unknown
    assert not dbr.classify(_WithSqlstate("duplicate key", "23505")).commit_unknown
