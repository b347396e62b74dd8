"""The fault harness itself: each proxy mode and each server control does what it says."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import psycopg
import pytest
import redis

import dbresilience as dbr
from dbresilience.faults import (
    FaultProxy,
    ProxyMode,
    TemporaryPgBouncer,
    TemporaryPostgres,
    TemporaryRedis,
)


def _query_in_thread(
    conn: psycopg.Connection[tuple[object, ...]],
) -> tuple[threading.Event, list[object]]:
    done = threading.Event()
    result: list[object] = []

    def run() -> None:
        try:
            row = conn.execute("select 7").fetchone()
            result.append(row[0] if row else None)
        except Exception as exc:
            result.append(exc)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done, result


def test_proxy_passes_traffic(pg_proxy: tuple[FaultProxy, str]) -> None:
    """In PASS mode the proxy is transparent."""
    proxy, dsn = pg_proxy
    with psycopg.connect(dsn) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    assert proxy.mode is ProxyMode.PASS
    assert proxy.accepted >= 1


def test_down_refuses_and_restore_reopens_the_same_port(pg_proxy: tuple[FaultProxy, str]) -> None:
    """down() refuses new connections on the port; restore() listens there again."""
    proxy, dsn = pg_proxy
    port = proxy.port
    proxy.down()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(proxy.address, timeout=1).close()
    proxy.restore()
    assert proxy.port == port
    with psycopg.connect(dsn) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_freeze_holds_live_traffic_until_restore(pg_proxy: tuple[FaultProxy, str]) -> None:
    """freeze() stops a live query's answer without closing anything; restore() delivers it."""
    proxy, dsn = pg_proxy
    with psycopg.connect(dsn, autocommit=True) as conn:
        proxy.freeze()
        done, result = _query_in_thread(conn)
        assert not done.wait(0.5)
        proxy.restore()
        assert done.wait(5)
        assert result == [7]


def test_silent_holds_new_connections_but_not_live_ones(pg_proxy: tuple[FaultProxy, str]) -> None:
    """silent(): a new connection gets no answer; an open one keeps working."""
    proxy, dsn = pg_proxy
    with psycopg.connect(dsn, autocommit=True) as live:
        proxy.silent()
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(dsn, connect_timeout=2)
        assert dbr.classify(info.value).code == "P1002"
        assert live.execute("select 1").fetchone() == (1,)


def test_reset_kills_live_connections_only(pg_proxy: tuple[FaultProxy, str]) -> None:
    """reset() ends every live connection with an error; new ones work."""
    proxy, dsn = pg_proxy
    conn = psycopg.connect(dsn, autocommit=True)
    proxy.reset()
    with pytest.raises(psycopg.OperationalError):
        conn.execute("select 1")
    conn.close()
    with psycopg.connect(dsn) as fresh:
        assert fresh.execute("select 1").fetchone() == (1,)


def test_latency_is_added_to_each_round_trip(pg_proxy: tuple[FaultProxy, str]) -> None:
    """latency(s) delays every forwarded chunk: a round trip takes at least 2 s."""
    proxy, dsn = pg_proxy
    with psycopg.connect(dsn, autocommit=True) as conn:
        proxy.latency(0.15)
        start = time.monotonic()
        conn.execute("select 1")
        assert time.monotonic() - start >= 0.3  # request and answer, each held 0.15 s
        proxy.latency(0)


def test_frozen_backend_blocks_until_thawed(pg_cluster: TemporaryPostgres) -> None:
    """freeze(pid) (SIGSTOP) makes a backend stop answering; thaw(pid) lets it finish."""
    with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
        pid = conn.execute("select pg_backend_pid()").fetchone()
        assert pid is not None
        pg_cluster.freeze(int(str(pid[0])))
        done, result = _query_in_thread(conn)
        assert not done.wait(0.5)
        pg_cluster.thaw(int(str(pid[0])))
        assert done.wait(5)
        assert result == [7]


def test_cluster_restart_keeps_port_and_data(pg_cluster: TemporaryPostgres) -> None:
    """restart() brings the server back on the same port with its data."""
    with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
        conn.execute("create table if not exists dbr_restart_probe (v int)")
        conn.execute("insert into dbr_restart_probe values (1)")
    pg_cluster.restart()
    with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
        assert conn.execute("select count(*) from dbr_restart_probe").fetchone() == (1,)
        conn.execute("drop table dbr_restart_probe")


def test_redis_server_stop_and_start(redis_server: TemporaryRedis) -> None:
    """A throwaway redis-server answers, refuses while stopped, and answers again."""
    client = redis.Redis.from_url(redis_server.url, socket_connect_timeout=1)
    assert client.ping()
    redis_server.stop()
    with pytest.raises(redis.ConnectionError):
        client.ping()
    redis_server.start()
    assert client.ping()
    client.close()


def test_proxy_commands_need_a_started_proxy(make_proxy: Callable[[str, int], FaultProxy]) -> None:
    """Using a proxy that was never started is a clear error, not a hang."""
    proxy = FaultProxy("127.0.0.1", 1)
    with pytest.raises(RuntimeError, match="not started"):
        proxy.down()


def test_the_shared_redis_answers(redis_url: str) -> None:
    """The redis_url fixture points at a Redis that answers (a throwaway one if none runs)."""
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2)
    try:
        assert client.ping()
    finally:
        client.close()


def test_pgbouncer_serves_pauses_and_restarts(pg_dsn: str) -> None:
    """TemporaryPgBouncer serves queries in transaction mode, holds them while paused, serves
    again after resume and after a restart on the same port, and refuses unknown databases."""
    from tests.conftest import start_pgbouncer

    dbname = str(psycopg.conninfo.conninfo_to_dict(pg_dsn).get("dbname") or "postgres")
    bouncer = start_pgbouncer(pg_dsn, databases=[dbname], default_pool_size=1)
    try:
        with psycopg.connect(bouncer.conninfo(dbname), autocommit=True) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
            # PgBouncer answers with its own cancel key: the pid differs from the backend's
            row = conn.execute("select pg_backend_pid()").fetchone()
            assert row is not None
            assert row[0] != conn.info.backend_pid
        pools = bouncer.admin("SHOW POOLS")
        assert any(row[0] == dbname and row[-1] == "transaction" for row in pools)
        bouncer.pause()
        with psycopg.connect(bouncer.conninfo(dbname)) as held:
            done, result = _query_in_thread(held)
            assert not done.wait(0.3)
            bouncer.resume()
            assert done.wait(5)
            assert result == [7]
        port = bouncer.port
        bouncer.restart()
        assert bouncer.port == port
        with psycopg.connect(bouncer.conninfo(dbname)) as conn:
            assert conn.execute("select 2").fetchone() == (2,)
        with pytest.raises(psycopg.OperationalError, match="no such database"):
            psycopg.connect(bouncer.conninfo("dbr_not_listed"))
    finally:
        bouncer.close()
    assert not bouncer.running


def test_missing_pgbouncer_is_a_skip_outside_ci_and_an_error_under_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the pgbouncer binary the harness skips with the reason, and under CI=true
    fails instead: a CI run never passes by skipping what it should test."""
    import tests.conftest as conftest
    from dbresilience.faults import _pgbouncer

    def missing() -> str:
        raise FileNotFoundError("pgbouncer is not installed (test)")

    monkeypatch.setattr(_pgbouncer, "find_pgbouncer", missing)
    monkeypatch.setattr(conftest, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match="PgBouncer is not available"):
        conftest.start_pgbouncer("host=127.0.0.1 port=5432")
    monkeypatch.setattr(conftest, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        conftest.start_pgbouncer("host=127.0.0.1 port=5432")
    with pytest.raises(FileNotFoundError, match="no pgbouncer binary"):
        TemporaryPgBouncer(binary="/nonexistent/pgbouncer")
