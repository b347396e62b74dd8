"""The dialect's first connection (``dialect.initialize``: server version, default schema,
isolation level, hstore lookup) on the SQLAlchemy engines, with a 1 ms ``query_timeout``.

SQLAlchemy runs those queries once, on the engine's first connection, and again on the next
connection only if they raised. They are bounded by ``connect_timeout`` (they are part of
opening the connection), not by the statement deadline; a failure among them raises a
SQLAlchemy error and leaves the engine to initialize on its next connection. Before: a
failed query there made the engine's error handler raise ``NotImplementedError``, which the
dialect takes for "unknown", and the connect raised ``TypeError`` (a failure in a later query
left the engine initialized with ``default_schema_name`` or the isolation level ``None``).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

import dbresilience as dbr
from dbresilience import sqlalchemy as dbr_sa
from dbresilience.faults import FaultProxy, TemporaryPostgres

from .test_sqlalchemy import url_of

ALLOWED = (dbr.DBResilienceError, sa.exc.SQLAlchemyError)
CONNECT_TIMEOUT = 2.0  # libpq's least
MARGIN = 0.5


@pytest.fixture
def proxy(
    pg_cluster: TemporaryPostgres, make_proxy: Callable[[str, int], FaultProxy]
) -> FaultProxy:
    params = psycopg.conninfo.conninfo_to_dict(pg_cluster.dsn)
    return make_proxy(str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432))


def make_engine(
    kind: str, dsn: str, query_timeout: float, pool_size: int = 1, app: str | None = None
) -> Any:
    factory = dbr_sa.create_engine if kind == "sync" else dbr_sa.create_async_engine
    return factory(
        url_of(dsn),
        pool_size=pool_size,
        max_overflow=0,
        query_timeout=query_timeout,
        acquire_timeout=5.0,
        connect_timeout=CONNECT_TIMEOUT,
        warm=0,
        pooler=None,
        connect_args={"application_name": app or f"dbr_first_{uuid.uuid4().hex[:8]}"},
    )


def sync_engine_of(engine: Any) -> sa.Engine:
    return engine if isinstance(engine, sa.Engine) else engine.sync_engine


def after_connect(engine: Any, fault: Callable[[], None]) -> None:
    """Run *fault* once, right after the engine's next DBAPI connection is open (before the
    dialect's first queries on it)."""
    fired: list[bool] = []

    @sa.event.listens_for(sync_engine_of(engine), "do_connect")
    def _connect(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        conn = dialect.connect(*cargs, **cparams)
        if not fired:
            fired.append(True)
            fault()
        return conn


def connect_and_select(engine: Any) -> object:
    """One connect and ``select 1``, on either engine, from a synchronous caller."""
    if isinstance(engine, sa.Engine):
        with engine.connect() as conn:
            return conn.exec_driver_sql("select 1").scalar_one()

    async def run() -> object:
        try:
            async with engine.connect() as conn:
                return (await conn.exec_driver_sql("select 1")).scalar_one()
        finally:
            await engine.dispose()

    return asyncio.run(run())


def serves(engine: Any) -> None:
    """The engine initialized its dialect and answers (a 1 ms deadline: one success asked)."""
    for _ in range(50):
        try:
            assert connect_and_select(engine) == 1
            break
        except ALLOWED:
            pass
    else:
        raise AssertionError("the engine never served after its first connect failed")
    dialect = sync_engine_of(engine).dialect
    assert dialect.server_version_info is not None
    assert dialect.server_version_info >= (12,)
    assert dialect.default_schema_name == "public"
    assert dialect.default_isolation_level == "READ COMMITTED"


def dispose(engine: Any) -> None:
    if isinstance(engine, sa.Engine):
        engine.dispose()
    else:
        asyncio.run(engine.dispose())


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_connection_lost_during_first_connect(
    pg_cluster: TemporaryPostgres, proxy: FaultProxy, kind: str
) -> None:
    """The connection reset under the dialect's first queries: the connect raises a SQLAlchemy
    error saying so (before: TypeError, or ResourceClosedError with the dialect left
    uninitialized), and the next connect initializes the dialect."""
    engine = make_engine(kind, proxy.dsn(pg_cluster.dsn), 0.001)
    try:
        after_connect(engine, proxy.reset)
        with pytest.raises(sa.exc.OperationalError) as raised:
            connect_and_select(engine)
        assert raised.value.connection_invalidated
        serves(engine)
    finally:
        dispose(engine)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_slow_first_connect_is_bounded_by_connect_timeout(
    pg_cluster: TemporaryPostgres, kind: str
) -> None:
    """The dialect's first queries wait 0.3 s on the server (the catalog locked by another
    session): with a 1 ms query_timeout they still complete (they belong to the connect,
    bounded by connect_timeout), and the engine serves."""
    locker = psycopg.connect(pg_cluster.dsn)
    released = threading.Event()

    def lock_catalog() -> None:
        locker.execute(b"lock table pg_catalog.pg_proc in access exclusive mode")

        def release() -> None:
            time.sleep(0.3)
            locker.rollback()
            released.set()

        threading.Thread(target=release, daemon=True).start()

    engine = make_engine(kind, pg_cluster.dsn, 0.001)
    try:
        after_connect(engine, lock_catalog)
        start = time.monotonic()
        failed: BaseException | None = None
        try:
            connect_and_select(engine)
        except ALLOWED as exc:  # the select itself may pass 1 ms; the connect must not fail
            failed = exc
        took = time.monotonic() - start
        assert released.wait(5)
        assert took < CONNECT_TIMEOUT + MARGIN
        dialect = sync_engine_of(engine).dialect
        assert dialect.server_version_info is not None, failed
        assert dialect.default_schema_name == "public"
        serves(engine)
    finally:
        released.wait(5)
        locker.close()
        dispose(engine)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_frozen_network_during_first_connect(
    pg_cluster: TemporaryPostgres, proxy: FaultProxy, kind: str
) -> None:
    """The network freezes right after the connection opens: the connect returns within
    connect_timeout (with an error), and the engine initializes once the network is back."""
    engine = make_engine(kind, proxy.dsn(pg_cluster.dsn), 0.001)
    try:
        after_connect(engine, proxy.freeze)
        start = time.monotonic()
        with pytest.raises(ALLOWED):
            connect_and_select(engine)
        took = time.monotonic() - start
        proxy.restore()
        assert took < CONNECT_TIMEOUT + MARGIN, f"the first connect took {took:.2f} s"
        serves(engine)
    finally:
        proxy.restore()
        dispose(engine)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_warming_counts_only_connections_that_passed_their_check(
    pg_cluster: TemporaryPostgres, proxy: FaultProxy, kind: str
) -> None:
    """The first warmed connection is cut right after it connects, so its ``select 1`` fails:
    warming goes on until two connections passed the check (before, the failed one counted,
    and the engine was left with one warm connection of the two asked)."""
    app = f"dbr_warm_{uuid.uuid4().hex[:8]}"
    engine = make_engine(kind, proxy.dsn(pg_cluster.dsn), 5.0, pool_size=2, app=app)
    fired: list[bool] = []

    @sa.event.listens_for(sync_engine_of(engine), "engine_connect")
    def _cut(conn: Any) -> None:
        if not fired:
            fired.append(True)
            proxy.reset()

    try:
        if kind == "sync":
            dbr_sa.warm_engine(engine, 2)
        else:
            asyncio.run(dbr_sa.warm_async_engine(engine, 2))
        assert fired
        with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
            open_ = conn.execute(
                "select count(*) from pg_stat_activity where application_name = %s", (app,)
            ).fetchone()
        assert open_ == (2,)
    finally:
        dispose(engine)
