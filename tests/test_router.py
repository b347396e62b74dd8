"""Read replicas: ``AsyncReadRouter`` / ``ReadRouter`` against a real streaming replica that lags
(replay paused), stops, freezes (a fault proxy) and is promoted.

One primary and asynchronous replica serve the module (promotion gets a pair of its own). Which
server answered a read is told by the read itself: ``pg_is_in_recovery()`` is true on the replica.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

import dbresilience as dbr
from dbresilience._router_base import Position, ReplicaStatus, RouterBase, lsn
from dbresilience.faults import FaultProxy, TemporaryPostgres, TemporaryReplica
from tests.conftest import primary_with_replica

WHO = "select pg_is_in_recovery()"  # True: the replica answered


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[TemporaryPostgres, TemporaryReplica]]:
    """A throwaway primary with an asynchronous streaming replica, shared by the module."""
    with primary_with_replica() as pair:
        yield pair


@pytest.fixture
def table(pair: tuple[TemporaryPostgres, TemporaryReplica]) -> Iterator[str]:
    """A fresh table ``(k text)`` on the primary, replicated; the replica is running, replaying
    and caught up when the test starts, and put back that way after."""
    primary, replica = pair
    name = f"rt_{uuid.uuid4().hex[:10]}"
    primary.execute(f"create table {name} (k text)")
    replica.wait_caught_up()
    yield name
    if not replica.running:
        replica.start()
    replica.resume_replay()
    primary.execute(f"drop table {name}")


def pools(
    primary: TemporaryPostgres, *replica_dsns: str
) -> tuple[dbr.AsyncPool, list[dbr.AsyncPool]]:
    options = {"min_size": 1, "max_size": 3, "connect_timeout": 2.0}
    return dbr.AsyncPool(primary.dsn, **options), [
        dbr.AsyncPool(dsn, **options) for dsn in replica_dsns
    ]


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_reads_go_to_a_fresh_replica_and_writes_to_the_primary(
    pair: tuple[TemporaryPostgres, TemporaryReplica], table: str
) -> None:
    """A caught-up replica serves reads; writes go to the primary and reach the replica."""
    primary, replica = pair
    main, replicas = pools(primary, replica.dsn)
    async with dbr.AsyncReadRouter(main, replicas, check_interval=0.1) as router:
        assert await router.fetchone(WHO) == (True,)
        assert await router.execute(f"insert into {table} values ('a')") == 1
        replica.wait_caught_up()
        await router.check()
        assert await router.fetchall(f"select k, pg_is_in_recovery() from {table}") == [("a", True)]
        status = router.status()[0]
        assert status["state"] == "ok"
        assert status["lag"] < 0.5
        assert router.stats()["replica_reads"] == 2


async def test_an_idle_primary_does_not_make_a_caught_up_replica_stale(
    pair: tuple[TemporaryPostgres, TemporaryReplica], table: str
) -> None:
    """Long after the last write, pg_last_xact_replay_timestamp() is old, but the replica has
    replayed all the primary has: it still counts as fresh (LSNs are compared first)."""
    primary, replica = pair
    main, replicas = pools(primary, replica.dsn)
    async with dbr.AsyncReadRouter(main, replicas, max_lag=0.3, check_interval=0.1) as router:
        await router.execute(f"insert into {table} values ('a')")
        await asyncio.sleep(1.0)  # the replay timestamp is now a second old
        age = replica.execute("select extract(epoch from now() - pg_last_xact_replay_timestamp())")
        assert age is not None
        assert float(str(age[0])) > 0.3
        await router.check()
        assert router.status()[0]["lag"] < 0.3
        assert await router.fetchone(WHO) == (True,)


async def test_a_lagging_replica_is_left_until_it_catches_up(
    pair: tuple[TemporaryPostgres, TemporaryReplica], table: str
) -> None:
    """Replay paused: once its staleness bound passes max_lag, reads go to the primary (and see
    the new rows); resumed, the replica serves again."""
    primary, replica = pair
    main, replicas = pools(primary, replica.dsn)
    async with dbr.AsyncReadRouter(main, replicas, max_lag=0.5, check_interval=0.1) as router:
        replica.pause_replay()
        await router.execute(f"insert into {table} values ('new')")
        query = f"select count(*), pg_is_in_recovery() from {table}"
        # within max_lag the replica may still answer, with what it had
        assert await router.fetchone(query) in ((0, True), (1, False))
        await wait_for(lambda: router.status()[0]["lag"] > 0.5, 3.0)
        for _ in range(5):
            assert await router.fetchone(query) == (1, False)
        # a caller that accepts more staleness still gets the replica
        assert await router.fetchone(query, max_lag=60) == (0, True)
        replica.resume_replay()
        replica.wait_caught_up()
        await wait_for(lambda: router.status()[0]["lag"] < 0.5, 3.0)
        assert await router.fetchone(query) == (1, True)


async def test_read_your_writes_session(
    pair: tuple[TemporaryPostgres, TemporaryReplica], table: str
) -> None:
    """After its own write, a session reads it back (from the primary while the replica has
    not replayed it, from the replica once it has); a plain read may not see it."""
    primary, replica = pair
    main, replicas = pools(primary, replica.dsn)
    async with dbr.AsyncReadRouter(main, replicas, max_lag=60, check_interval=0.1) as router:
        replica.pause_replay()
        session = router.session()
        await session.execute(f"insert into {table} values ('mine')")
        query = f"select count(*), pg_is_in_recovery() from {table}"
        assert await session.fetchone(query) == (1, False)
        assert await router.fetchone(query) == (0, True)  # max_lag=60: stale is allowed
        position = await router.position()
        assert isinstance(position, Position)
        assert await router.fetchone(query, after=position) == (1, False)
        # a session that may wait: the replica catches up meanwhile and serves it
        waiting = router.session(wait=3.0)
        await waiting.execute(f"insert into {table} values ('again')")
        asyncio.get_running_loop().call_later(0.3, replica.resume_replay)
        assert await waiting.fetchone(query, timeout=10) == (2, True)


async def test_a_stopped_replica_costs_reads_nothing(
    pair: tuple[TemporaryPostgres, TemporaryReplica], table: str
) -> None:
    """Replica stopped: every read still succeeds from the primary, fast; its breaker opens, the
    monitor marks it down; started again, it serves again."""
    primary, replica = pair
    main, replicas = pools(primary, replica.dsn)
    async with dbr.AsyncReadRouter(main, replicas, check_interval=0.1) as router:
        assert await router.fetchone(WHO) == (True,)
        replica.stop("fast")
        slowest = 0.0
        for _ in range(40):
            start = time.monotonic()
            assert await router.fetchone(WHO, timeout=2.0) == (False,)
            slowest = max(slowest, time.monotonic() - start)
        assert slowest < 1.5
        await wait_for(lambda: router.status()[0]["state"] == "down")
        replica.start()
        await wait_for(lambda: router.status()[0]["state"] == "ok", 10.0)
        assert await router.fetchone(WHO) == (True,)


async def test_a_frozen_replica_falls_back_to_the_primary_within_the_deadline(
    pair: tuple[TemporaryPostgres, TemporaryReplica],
    table: str,
    make_proxy: Callable[[str, int], FaultProxy],
) -> None:
    """The network to the replica frozen (no answer, no error): a read with a 1 s deadline gets
    the primary's answer within it."""
    primary, replica = pair
    proxy = make_proxy("127.0.0.1", replica.port)
    main, replicas = pools(primary, proxy.dsn(replica.dsn))
    async with dbr.AsyncReadRouter(main, replicas, check_interval=5.0) as router:
        assert await router.fetchone(WHO) == (True,)
        proxy.freeze()
        start = time.monotonic()
        assert await router.fetchone(WHO, timeout=1.0) == (False,)
        assert time.monotonic() - start < 1.25
        assert router.stats()["fallbacks"] == 1
        proxy.restore()


async def test_a_bad_read_raises_at_once() -> None:
    """A failure that is the read's own (bad SQL) is raised, not retried on the primary."""
    with TemporaryPostgres() as primary, primary.start_replica() as replica:
        main, replicas = pools(primary, replica.dsn)
        async with dbr.AsyncReadRouter(main, replicas) as router:
            with pytest.raises(Exception, match="no_such_table"):
                await router.fetchone("select * from no_such_table")
            assert router.stats()["primary_reads"] == 0
            # promoted: the monitor sees it is no standby any more, reads go to the primary
            replica.promote()
            await router.check()
            assert router.status()[0]["state"] == "promoted"
            assert await router.fetchone("select current_setting('port')::int") == (primary.port,)


def test_sync_router_routes_and_falls_back(
    pair: tuple[TemporaryPostgres, TemporaryReplica], table: str
) -> None:
    """The generated sync twin: a replica read, a session's read-your-writes, a stopped replica."""
    primary, replica = pair
    options = {"min_size": 1, "max_size": 2, "connect_timeout": 2.0}
    main = dbr.Pool(primary.dsn, **options)
    replicas = [dbr.Pool(replica.dsn, **options)]
    with dbr.ReadRouter(main, replicas, check_interval=0.1) as router:
        assert router.fetchone(WHO) == (True,)
        session = router.session()
        session.execute(f"insert into {table} values ('s')")
        assert session.fetchone(f"select count(*) from {table}") == (1,)
        replica.stop("immediate")
        assert router.fetchone(WHO, timeout=2.0) == (False,)
        replica.start()


def test_arguments_are_checked() -> None:
    """Wrong pool types, a replica given twice and bad durations are refused at construction."""
    a, b = dbr.Pool("dbname=x"), dbr.Pool("dbname=y")
    with pytest.raises(TypeError, match="primary"):
        dbr.ReadRouter("dbname=x", [b])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"replicas\[0\]"):
        dbr.ReadRouter(a, [dbr.AsyncPool("dbname=y")])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="replicas"):
        dbr.ReadRouter(a, "dbname=y")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"replicas\[1\]"):
        dbr.ReadRouter(a, [b, b])
    with pytest.raises(ValueError, match="max_lag"):
        dbr.ReadRouter(a, [b], max_lag=-1)
    with pytest.raises(ValueError, match="check_interval"):
        dbr.ReadRouter(a, [b], check_interval=0)
    with pytest.raises(ValueError, match="wait"):
        dbr.ReadRouter(a, [b]).session(wait=-1)


def test_staleness_bound() -> None:
    """LSNs first: a replica at the primary's sampled position is as stale as the sample is old,
    whatever the replay timestamp says; one behind is bounded by the newer of its replayed
    sample and its replay age; between checks the bound grows with the clock."""

    class Router(RouterBase):
        @staticmethod
        def _pool_type() -> type:
            return dbr.Pool

    router = Router(dbr.Pool("dbname=x"), [dbr.Pool("dbname=y")])
    router._note_primary(100.0, "0/100")
    router._note_primary(101.0, "0/200")
    router._note_replica(0, 101.5, True, "0/200", 3600.0)
    assert router._status[0].lag == 0.5
    router._note_replica(0, 101.5, True, "0/150", 3600.0)
    assert router._status[0].lag == 1.5
    router._note_replica(0, 101.5, True, "0/150", 0.7)
    assert router._status[0].lag == 0.7
    router._note_replica(0, 101.5, True, "0/50", None)
    assert router._status[0].lag == math.inf
    router._note_replica(0, 101.5, False, "0/200", 0.0)
    assert router._status[0].state == "promoted"
    assert ReplicaStatus("ok", 10.0, 0, 1.0).lag_at(12.0) == 3.0
    assert lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert str(Position.parse("16/B374D848")) == "16/B374D848"
    for bad in ("", "16", "/1", "x/1", "123456789/0"):
        with pytest.raises(ValueError):  # noqa: PT011 - int() or ours, both ValueError
            lsn(bad)


async def test_read_your_writes_with_an_asynchronous_commit(
    pair: tuple[TemporaryPostgres, TemporaryReplica], table: str
) -> None:
    """A session's transaction that commits asynchronously (SET LOCAL synchronous_commit = off,
    which the position query cannot see) is still read back: its position is past the commit
    record, not merely past what was flushed (break12: the flushed position, which the replica
    had already replayed, sent the read to a replica without the row)."""
    primary, replica = pair
    row = primary.execute("select current_database()")
    dbname = str(row[0]) if row else "postgres"
    primary.execute(f'alter database "{dbname}" set synchronous_commit = on')
    main, replicas = pools(primary, replica.dsn)
    try:
        await _read_back_async_commits(main, replicas, replica, table)
    finally:
        primary.execute(f'alter database "{dbname}" reset synchronous_commit')


async def _read_back_async_commits(
    main: dbr.AsyncPool, replicas: list[dbr.AsyncPool], replica: TemporaryReplica, table: str
) -> None:
    async with dbr.AsyncReadRouter(main, replicas, max_lag=60, check_interval=60) as router:
        assert await main.fetchone("show synchronous_commit") == ("on",)
        query = f"select count(*) from {table} where k = %s"
        for n in range(20):
            replica.wait_caught_up()
            await router.check()  # the replica has everything flushed so far

            async def write(conn: dbr.AsyncPoolConnection, k: str = f"async-{n}") -> None:
                await conn.execute("set local synchronous_commit = off")
                await conn.execute(f"insert into {table} values (%s)", (k,))

            session = router.session()
            await session.transaction(write)
            assert await session.fetchone(query, (f"async-{n}",)) == (1,), n
