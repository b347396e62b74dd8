"""Shared fixtures: the real PostgreSQL and Redis, throwaway servers to break, fault proxies.

- ``pg_dsn``: the running PostgreSQL (``$DBR_TEST_DSN``, default the local trust server); where
  none answers, a throwaway cluster started from the installed server binaries.
- ``pg_cluster``: a throwaway cluster that a test may stop, restart or freeze; it is running and
  thawed when the test starts and put back that way after (the pytest plugin's
  ``dbr_postgres``, ``src/dbresilience/pytest_plugin.py``).
- ``redis_url``: the running Redis (``$DBR_TEST_REDIS``), else a throwaway ``redis-server``.
- ``redis_server``: a throwaway ``redis-server`` a test may stop and start (the plugin's
  ``dbr_redis``).
- ``make_proxy``: builds :class:`dbresilience.faults.FaultProxy` objects closed after the test.
- ``proxy``: a fault proxy in front of ``pg_cluster``.
- ``primary_with_replica(synchronous=, setup=)``: a throwaway primary and streaming replica.
- ``start_pgbouncer(upstream_dsn, **options)``: a :class:`dbresilience.faults.TemporaryPgBouncer`
  in front of an upstream (for module-scoped fixtures: one PgBouncer per module).

Under ``CI=true`` a service that cannot be had is an error, never a skip.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from dbresilience.faults import (
    FaultProxy,
    TemporaryPgBouncer,
    TemporaryPostgres,
    TemporaryRedis,
    TemporaryReplica,
)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
DEFAULT_DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres connect_timeout=5"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def _unavailable(what: str, why: BaseException | str) -> None:
    message = f"{what} is not available: {why}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: a missing service is an error)", pytrace=False)
    pytest.skip(message)


def _answers(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            conn.execute("select 1")
        return True
    except psycopg.Error:
        return False


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """A DSN for a running PostgreSQL the tests may use (but never stop or reconfigure)."""
    dsn = os.environ.get("DBR_TEST_DSN", DEFAULT_DSN)
    if _answers(dsn):
        yield dsn
        return
    try:
        cluster = TemporaryPostgres().start()
    except Exception as exc:
        _unavailable("PostgreSQL", f"{dsn!r} does not answer and no throwaway cluster: {exc}")
        return
    try:
        yield cluster.dsn
    finally:
        cluster.close()


@pytest.fixture
def pg_conn(pg_dsn: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """An autocommit connection to ``pg_dsn``, closed after the test."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def table_name(pg_conn: psycopg.Connection[tuple[object, ...]]) -> Iterator[str]:
    """A unique table name; whatever tables start with it are dropped after the test."""
    name = f"dbr_t_{uuid.uuid4().hex[:12]}"
    yield name
    rows = pg_conn.execute(
        "select tablename from pg_tables where tablename like %s", (name + "%",)
    ).fetchall()
    for (table,) in rows:
        pg_conn.execute(
            psycopg.sql.SQL("drop table if exists {} cascade").format(
                psycopg.sql.Identifier(str(table))
            )
        )


@pytest.fixture
def pg_cluster(dbr_postgres: TemporaryPostgres) -> TemporaryPostgres:
    """A throwaway cluster this test may stop, restart or freeze; restored afterwards (the
    plugin's ``dbr_postgres``: one cluster per session, thawed and running for each test)."""
    return dbr_postgres


@pytest.fixture
def table(pg_cluster: TemporaryPostgres) -> Iterator[psycopg.sql.Identifier]:
    """A fresh table ``(id serial, v int)`` on the throwaway cluster, dropped after."""
    name = psycopg.sql.Identifier(f"dbr_tbl_{uuid.uuid4().hex[:10]}")
    with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("create table {} (id serial primary key, v int)").format(name))
    yield name
    if pg_cluster.running:
        with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("drop table if exists {}").format(name))


def _redis_answers(url: str) -> bool:
    try:
        import redis
    except ImportError:
        return False
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def forget_redis_keys(url: str, *patterns: str) -> int:
    """Delete the keys matching ``patterns`` (``SCAN`` globs) in the Redis at ``url``: a test
    that wrote to the shared Redis through the library (whose keys it does not name itself)
    removes what it left. Returns how many keys went."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        keys = {key for pattern in patterns for key in client.scan_iter(match=pattern, count=500)}
        return int(client.delete(*keys)) if keys else 0
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A URL for a running Redis the tests may use (keys are namespaced per test)."""
    url = os.environ.get("DBR_TEST_REDIS", DEFAULT_REDIS)
    if _redis_answers(url):
        yield url
        return
    try:
        server = TemporaryRedis().start()
    except Exception as exc:
        _unavailable("Redis", f"{url!r} does not answer and no redis-server: {exc}")
        return
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture
def redis_server(dbr_redis: TemporaryRedis) -> TemporaryRedis:
    """A throwaway ``redis-server`` this test may stop and start (the plugin's ``dbr_redis``)."""
    return dbr_redis


@pytest.fixture
def make_proxy() -> Iterator[Callable[[str, int], FaultProxy]]:
    """``make_proxy(host, port)`` starts a fault proxy in front of an upstream; closed after."""
    proxies: list[FaultProxy] = []

    def make(host: str, port: int) -> FaultProxy:
        proxy = FaultProxy(host, port).start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


def _tcp_address(dsn: str) -> tuple[str, int]:
    """``(host, port)`` of the server of *dsn* over TCP (a socket folder is 127.0.0.1)."""
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    host = str(params.get("host") or "127.0.0.1")
    if host.startswith("/"):
        host = "127.0.0.1"
    return host, int(params.get("port") or 5432)


@pytest.fixture
def pg_proxy(pg_dsn: str, make_proxy: Callable[[str, int], FaultProxy]) -> tuple[FaultProxy, str]:
    """A fault proxy in front of ``pg_dsn`` and the DSN that goes through it."""
    proxy = make_proxy(*_tcp_address(pg_dsn))
    return proxy, proxy.dsn(pg_dsn)


@pytest.fixture
def proxy(
    pg_cluster: TemporaryPostgres, make_proxy: Callable[[str, int], FaultProxy]
) -> FaultProxy:
    """A fault proxy in front of ``pg_cluster`` (shared by a test's examples), closed after."""
    return make_proxy(*_tcp_address(pg_cluster.dsn))


@pytest.fixture
def events(pg_cluster: TemporaryPostgres) -> Iterator[psycopg.sql.Identifier]:
    """A table (k int, v text) with NO unique constraint: a write applied twice shows."""
    name = psycopg.sql.Identifier(f"dbr_events_{uuid.uuid4().hex[:12]}")
    with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("create table {} (k int, v text)").format(name))
    yield name
    if pg_cluster.running:
        with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("drop table if exists {}").format(name))
            conn.execute("drop table if exists dbr_queue_ledger")


@pytest.fixture
def victim_dsn(pg_dsn: str) -> Iterator[str]:
    """A database of its own on the shared server, dropped after the test."""
    name = f"dbr_victim_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("create database {}").format(psycopg.sql.Identifier(name)))
    try:
        yield psycopg.conninfo.make_conninfo(pg_dsn, dbname=name)
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                psycopg.sql.SQL("drop database if exists {} with (force)").format(
                    psycopg.sql.Identifier(name)
                )
            )


@contextlib.contextmanager
def primary_with_replica(
    *, synchronous: bool = False, setup: str | None = None
) -> Iterator[tuple[TemporaryPostgres, TemporaryReplica]]:
    """A throwaway primary (*setup* run on it first) with a streaming replica, both closed on
    leaving; no throwaway PostgreSQL is a skip."""
    try:
        primary = TemporaryPostgres().start()
    except Exception as exc:
        pytest.skip(f"no throwaway PostgreSQL: {exc}")
    try:
        if setup is not None:
            primary.execute(setup)
        replica = primary.start_replica(synchronous=synchronous)
        try:
            yield primary, replica
        finally:
            replica.close()
    finally:
        primary.close()


def start_pgbouncer(upstream_dsn: str, **options: Any) -> TemporaryPgBouncer:
    """A started :class:`TemporaryPgBouncer` in front of the server of *upstream_dsn*.

    A missing ``pgbouncer`` binary is a skip with the reason outside CI and an error under
    ``CI=true`` (``make test`` installs it as root: ``apt-get install pgbouncer``).
    """
    try:
        bouncer = TemporaryPgBouncer(*_tcp_address(upstream_dsn), **options)
    except FileNotFoundError as exc:
        _unavailable("PgBouncer", exc)
        raise  # pragma: no cover - _unavailable always raises
    return bouncer.start()
