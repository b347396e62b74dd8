"""dbresilience.sqlalchemy: Core queries on engines under the same real faults as the pool."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest
import sqlalchemy as sa

import dbresilience as dbr
from dbresilience import sqlalchemy as dbr_sa
from dbresilience.faults import FaultProxy, TemporaryPostgres, free_port

from .test_pool import MARGIN, backends, terminate_all

SELECT_1 = sa.select(sa.literal(1))


def url_of(dsn: str, **changes: object) -> sa.URL:
    """A postgresql+psycopg URL for a libpq DSN."""
    p = psycopg.conninfo.conninfo_to_dict(dsn)
    url = sa.URL.create(
        "postgresql+psycopg",
        username=str(p.get("user") or "postgres"),
        host=str(p.get("host") or "127.0.0.1"),
        port=int(p.get("port") or 5432),
        database=str(p.get("dbname") or "postgres"),
    )
    return url.set(**changes)  # type: ignore[arg-type]


def test_engine_warms_and_sets_the_timeouts(pg_dsn: str) -> None:
    """The engine opens pool_size connections at creation; each has the server-side timeouts."""
    engine = dbr_sa.create_engine(url_of(pg_dsn), pool_size=3, query_timeout=4)
    try:
        assert engine.pool.checkedin() == 3
        with engine.connect() as conn:
            timeout = conn.execute(sa.text("show statement_timeout")).scalar_one()
            assert timeout == "4s"
            assert conn.execute(SELECT_1).scalar_one() == 1
    finally:
        engine.dispose()


def test_refused_port_fails_within_connect_timeout(pg_dsn: str) -> None:
    """Warming against a refused port raises P1001 after connect_timeout at most."""
    start = time.monotonic()
    with pytest.raises(sa.exc.OperationalError) as info:
        dbr_sa.create_engine(url_of(pg_dsn, port=free_port()), connect_timeout=1.0)
    assert time.monotonic() - start < 1.0 + MARGIN
    assert dbr.classify(info.value).code == "P1001"


def test_unknown_role_fails_at_once(pg_dsn: str) -> None:
    """An unknown role is not waited out: P1000 at once."""
    start = time.monotonic()
    with pytest.raises(sa.exc.OperationalError) as info:
        dbr_sa.create_engine(url_of(pg_dsn, username="dbr_nobody"), connect_timeout=10)
    assert time.monotonic() - start < 1.0
    assert dbr.classify(info.value).code == "P1000"


def test_terminated_backends_are_replaced_on_checkout(pg_cluster: TemporaryPostgres) -> None:
    """Every pooled connection terminated: the next Core query succeeds, no error surfaces."""
    engine = dbr_sa.create_engine(url_of(pg_cluster.dsn), pool_size=3)
    try:
        assert terminate_all(pg_cluster) == 3
        time.sleep(0.1)
        with engine.connect() as conn:
            assert conn.execute(SELECT_1).scalar_one() == 1
    finally:
        engine.dispose()


def test_frozen_backend_ends_at_the_statement_deadline(pg_cluster: TemporaryPostgres) -> None:
    """A SIGSTOPped backend: QueryTimeout at query_timeout; the engine serves again."""
    engine = dbr_sa.create_engine(url_of(pg_cluster.dsn), pool_size=1, query_timeout=1.0)
    try:
        for pid in backends(pg_cluster):
            pg_cluster.freeze(pid)
        start = time.monotonic()
        with pytest.raises(dbr.QueryTimeout), engine.connect() as conn:
            conn.execute(SELECT_1)
        assert time.monotonic() - start < 1.0 + MARGIN
        with engine.connect() as conn:
            assert conn.execute(SELECT_1).scalar_one() == 1
    finally:
        engine.dispose()


def test_restart_invalidates_the_pool_and_it_serves_again(pg_cluster: TemporaryPostgres) -> None:
    """After a restart the first failure is classified P1017 and the whole pool is refreshed."""
    engine = dbr_sa.create_engine(url_of(pg_cluster.dsn), pool_size=2)
    try:
        with engine.connect() as held:
            pg_cluster.restart()
            with pytest.raises(sa.exc.DBAPIError) as info:
                held.execute(SELECT_1)
            assert dbr.classify(info.value).code == "P1017"
            assert info.value.connection_invalidated
        with engine.connect() as conn:
            assert conn.execute(SELECT_1).scalar_one() == 1
    finally:
        engine.dispose()


def test_proxy_freeze_ends_at_the_deadline(pg_dsn: str, pg_proxy: tuple[FaultProxy, str]) -> None:
    """A silent network under SQLAlchemy: QueryTimeout at the deadline."""
    proxy, dsn = pg_proxy
    engine = dbr_sa.create_engine(url_of(dsn), pool_size=1, query_timeout=0.8)
    try:
        proxy.freeze()
        start = time.monotonic()
        with pytest.raises(dbr.QueryTimeout), engine.connect() as conn:
            conn.execute(SELECT_1)
        assert time.monotonic() - start < 0.8 + MARGIN
        proxy.restore()
        with engine.connect() as conn:
            assert conn.execute(SELECT_1).scalar_one() == 1
    finally:
        engine.dispose()


def test_bad_engine_arguments() -> None:
    """A non-PostgreSQL URL, another driver or a bad size fail before any I/O, naming it."""
    with pytest.raises(ValueError, match="url"):
        dbr_sa.create_engine("sqlite:///x.db")
    with pytest.raises(ValueError, match="psycopg"):
        dbr_sa.create_engine("postgresql+psycopg2://u@h/db")
    with pytest.raises(ValueError, match="warm"):
        dbr_sa.create_engine("postgresql+psycopg://u@h/db", pool_size=2, warm=5)
    with pytest.raises(ValueError, match="query_timeout"):
        dbr_sa.create_engine("postgresql+psycopg://u@h/db", query_timeout=0)


async def test_async_engine_frozen_backend_and_terminated_backends(
    pg_cluster: TemporaryPostgres,
) -> None:
    """The async engine: deadline against a frozen backend, replacement after terminations."""
    # one connection: after the kill, the next checkout replaces it, and that one is frozen
    engine = dbr_sa.create_async_engine(
        url_of(pg_cluster.dsn), pool_size=1, max_overflow=0, query_timeout=1.0
    )
    assert await dbr_sa.warm_async_engine(engine) is engine
    try:
        terminate_all(pg_cluster)
        await asyncio.sleep(0.1)
        async with engine.connect() as conn:
            assert (await conn.execute(SELECT_1)).scalar_one() == 1
        for pid in backends(pg_cluster):
            pg_cluster.freeze(pid)
        start = time.monotonic()
        with pytest.raises(dbr.QueryTimeout):
            async with engine.connect() as conn:
                await conn.execute(SELECT_1)
        assert time.monotonic() - start < 1.0 + MARGIN
    finally:
        await engine.dispose()


async def test_async_engine_is_returned_at_once_like_sqlalchemys(pg_dsn: str) -> None:
    """create_async_engine returns an AsyncEngine, not a coroutine, with no I/O: made while
    the database is down it starts nothing; warming it then fails as fast as it should."""
    from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

    refused = psycopg.conninfo.make_conninfo(pg_dsn, port=str(free_port()))
    engine = dbr_sa.create_async_engine(url_of(refused), pool_size=1, connect_timeout=0.5)
    try:
        assert isinstance(engine, AsyncEngine)
        start = time.monotonic()
        with pytest.raises(sa.exc.OperationalError):
            await dbr_sa.warm_async_engine(engine)
        assert time.monotonic() - start < 0.5 + MARGIN
    finally:
        await engine.dispose()
    engine = dbr_sa.create_async_engine(url_of(pg_dsn), pool_size=2)
    try:
        await dbr_sa.warm_async_engine(engine, 2)
        assert engine.sync_engine.pool.checkedin() == 2
    finally:
        await engine.dispose()
    plain = create_async_engine("postgresql+psycopg://u@127.0.0.1/db")  # not one of ours
    with pytest.raises(TypeError, match="engine"):
        await dbr_sa.warm_async_engine(plain)
    await plain.dispose()
