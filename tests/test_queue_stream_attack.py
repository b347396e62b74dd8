"""Attacks on the write queue's Redis stream journal (#16): a lease holder that stops running
past its lease (SIGSTOP, a long GC pause, a suspended VM) must not read the stream when it runs
again, while another instance drains."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable

import psycopg
import pytest
import redis
from psycopg import sql

import dbresilience as dbr
from dbresilience.__main__ import main
from dbresilience._journal import Record
from dbresilience._journal_redis_async import AsyncStreamJournal
from dbresilience._journal_redis_base import stream_keys
from dbresilience.faults import FaultProxy, TemporaryRedis

from .queue_support import Ident, drop_stream, insert, kv_table, rows


@pytest.fixture
def table(pg_dsn: str, table_name: str) -> Ident:
    """A table (k int, v text) on the shared server, dropped after (with its ledger)."""
    return kv_table(pg_dsn, table_name)


def _journal(url: str, stream: str, ttl: float) -> AsyncStreamJournal:
    return AsyncStreamJournal(
        url,
        stream=stream,
        max_len=1000,
        max_buffer=1000,
        lease_ttl=ttl,
        on_full="raise",
        block_timeout=1.0,
        drain=True,
    )


def test_a_holder_whose_lease_expired_while_it_was_frozen_reads_nothing(redis_url: str) -> None:
    """The holder's lease keeper has not run since its lease expired in Redis (the process was
    frozen; once thawed its worker may run first): another instance holds the lease now, and
    the thawed one must not take entries from the stream (two drainers: per-key order lost)."""
    stream = f"dbr-attack-{uuid.uuid4().hex[:10]}"
    ttl = 0.4

    async def run() -> list[Record]:
        a = await _journal(redis_url, stream, ttl).open()
        b = _journal(redis_url, stream, ttl)
        try:
            deadline = time.monotonic() + 5
            while not a.stats()["stream_draining"]:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            assert await a.receive(10, 0.01) == []  # makes the group; nothing yet
            a._workers[1].cancel()  # a's lease keeper stops running: "frozen"
            await asyncio.sleep(ttl + 0.2)  # a's lease expired in Redis
            await b.open()
            deadline = time.monotonic() + 5
            while not b.stats()["stream_draining"]:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            b.append(Record(1, "select 1", [], "k"))
            assert await b.flushed(time.monotonic() + 5, drained=False)
            return await a.receive(10, 0.05)  # "thawed": the worker runs before the keeper
            return await a.receive(10, 0.05)  # "thawed": the worker runs before the keeper
        finally:
            await a.aclose(1.0)
            await b.aclose(1.0)

    try:
        assert asyncio.run(run()) == []
    finally:
        drop_stream(redis_url, stream)


def test_a_drainer_that_lost_its_lease_mid_retry_does_not_commit_the_batch_again(
    pg_dsn: str,
    redis_url: str,
    table: Ident,
    table_name: str,
    pg_proxy: tuple[FaultProxy, str],
) -> None:
    """Instance A holds the lease and retries a batch its database connection cannot take; its
    lease lapses (its keeper stalled); B takes the lease over, claims the batch and commits
    it. When A's database comes back, A must not commit that batch too (an unkeyed write
    applied twice, a keyed one out of order): it leaves the batch to the lease holder."""
    proxy, proxied = pg_proxy
    stream = f"dbr-attack-{uuid.uuid4().hex[:10]}"
    ttl = 0.5

    async def wait_for(check: Callable[[], bool], within: float) -> None:
        deadline = time.monotonic() + within
        while not check():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)

    async def run() -> None:
        options = {"journal": redis_url, "stream": stream, "lease_ttl": ttl}
        ledger = f"{table_name}_ledger"
        async with (
            dbr.AsyncPool(proxied, min_size=0, breaker=None, connect_timeout=0.5) as pool_a,
            dbr.AsyncWriteQueue(pool_a, ledger_table=ledger, **options) as a,  # type: ignore[arg-type]
        ):
            journal_a = a._stream
            assert journal_a is not None
            await wait_for(lambda: bool(journal_a.stats()["stream_draining"]), 5)
            proxy.down()
            a.submit(insert(table), (1, "x"))
            await wait_for(lambda: a.stats()["retried"] >= 1, 5)
            journal_a._workers[1].cancel()  # A's lease keeper stalls: the lease lapses
            await asyncio.sleep(ttl + 0.1)
            async with (
                dbr.AsyncPool(pg_dsn, min_size=1) as pool_b,
                dbr.AsyncWriteQueue(pool_b, ledger_table=ledger, **options) as b,  # type: ignore[arg-type]
            ):
                await wait_for(lambda: b.stats()["written"] >= 1, 10)
                proxy.restore()
                await asyncio.sleep(2.5)  # A's backoff is at most 2 s
            assert a.stats()["written"] == 0

    try:
        asyncio.run(run())
        assert rows(pg_dsn, table) == 1
    finally:
        drop_stream(redis_url, stream)


def test_a_stream_deleted_under_the_drainer_is_said_and_garbage_at_the_lease_is_said(
    pg_dsn: str,
    redis_url: str,
    table: Ident,
    table_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The stream deleted under a running drainer (someone's DEL, or Redis restarted without
    persistence: what it held and had not applied is gone) is logged as an error, not made again
    in silence; a value of the wrong type at the lease key (it cannot drain) is logged too; the
    drainer goes on once the garbage is gone."""
    stream = f"dbr-attack-{uuid.uuid4().hex[:10]}"
    key, _, lease = stream_keys(stream)
    client = redis.Redis.from_url(redis_url)
    try:
        with (
            dbr.Pool(pg_dsn, min_size=1) as pool,
            dbr.WriteQueue(
                pool,
                journal=redis_url,
                stream=stream,
                ledger_table=f"{table_name}_ledger",
                lease_ttl=0.3,
            ) as queue,
        ):
            queue.submit(insert(table), (1, "x"))
            assert queue.flush(5)
            with caplog.at_level(logging.WARNING, logger="dbresilience"):
                client.delete(key)
                queue.submit(insert(table), (2, "x"))
                assert queue.flush(5)
                assert any(
                    r.levelno == logging.ERROR and "is gone" in r.getMessage()
                    for r in caplog.records
                ), [r.getMessage() for r in caplog.records]
                caplog.clear()
                client.delete(lease)
                client.hset(lease, "x", "y")  # garbage: the lease cannot be taken
                time.sleep(0.5)
                assert any("lease" in r.getMessage() for r in caplog.records), [
                    r.getMessage() for r in caplog.records
                ]
                client.delete(lease)
                queue.submit(insert(table), (3, "x"))
                assert queue.flush(5)
        assert rows(pg_dsn, table) == 3
    finally:
        client.delete(*stream_keys(stream))
        client.close()


def test_garbage_at_the_dead_letter_key_is_said_and_the_write_waits_for_it(
    pg_dsn: str,
    redis_url: str,
    table: Ident,
    table_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A value of the wrong type at the dead-letter key: a refused write cannot be set aside
    there, so its batch is not acknowledged (never dropped); the drainer says so (it did not:
    a silent stall) and goes on once the key is fixed."""
    stream = f"dbr-attack-{uuid.uuid4().hex[:10]}"
    _, dead, _ = stream_keys(stream)
    client = redis.Redis.from_url(redis_url)
    try:
        with (
            dbr.Pool(pg_dsn, min_size=1) as pool,
            dbr.WriteQueue(
                pool, journal=redis_url, stream=stream, ledger_table=f"{table_name}_ledger"
            ) as queue,
            caplog.at_level(logging.WARNING, logger="dbresilience"),
        ):
            client.set(dead, "garbage")
            queue.submit(insert(table), ("not a number", "x"))
            assert not queue.flush(1.5)
            assert any("dead-letter" in r.getMessage() for r in caplog.records), [
                r.getMessage() for r in caplog.records
            ]
            client.delete(dead)
            assert queue.flush(5)
        assert client.xlen(dead) == 1
    finally:
        client.delete(*stream_keys(stream))
        client.close()


def test_the_drain_command_starts_while_the_database_is_down_and_applies_once_it_is_back(
    redis_url: str,
    table: Ident,
    table_name: str,
    pg_dsn: str,
    pg_proxy: tuple[FaultProxy, str],
) -> None:
    """A drainer started (by systemd, after a reboot) before its database answers: it exited
    with a traceback; now it waits for the database and drains. Its password is never printed."""
    proxy, proxied = pg_proxy
    stream = f"dbr-attack-{uuid.uuid4().hex[:10]}"
    try:
        with dbr.WriteQueue(None, journal=redis_url, stream=stream, drain=False) as queue:
            queue.submit(insert(table), (1, "x"), key="one")
            assert queue.flush(5)
        proxy.down()
        threading.Timer(6.0, proxy.restore).start()  # past connect_timeout (5 s)
        where = [
            "--journal",
            redis_url,
            "--stream",
            stream,
            "--ledger-table",
            f"{table_name}_ledger",
        ]
        assert (
            main(["queue", "drain", *where, "--until-empty", "--max-seconds", "20", proxied]) == 0
        )
        assert rows(pg_dsn, table) == 1
    finally:
        drop_stream(redis_url, stream)


def test_redis_frozen_mid_xadd_does_not_put_a_write_in_the_stream_twice(
    redis_server: TemporaryRedis,
) -> None:
    """Redis frozen (SIGSTOP) while it holds an XADD: the client times out and holds the write;
    when Redis runs again it executes the XADD it had, then gets the write again: it was in the
    stream twice (an unkeyed write applied twice). The append is idempotent per instance now."""
    client = redis.Redis.from_url(redis_server.url)
    with dbr.WriteQueue(None, journal=redis_server.url, stream="s", drain=False) as queue:
        queue.submit("select 1", ())
        pid = redis_server._proc.pid  # type: ignore[union-attr]
        os.kill(pid, signal.SIGSTOP)
        try:
            queue.submit("select %s", (2,))  # returns after the client's timeout: held
        finally:
            os.kill(pid, signal.SIGCONT)
        assert queue.flush(10)
        queue.submit("select %s", (3,))
        assert queue.flush(10)
    assert client.xlen(stream_keys("s")[0]) == 3
    client.close()


def test_an_acknowledgement_whose_reply_was_lost_does_not_dead_letter_a_write_twice(
    pg_dsn: str, table: Ident, table_name: str, redis_server: TemporaryRedis
) -> None:
    """The batch's acknowledgement (dead letters + XACK + XDEL, one script) reaches Redis, which
    is frozen (SIGSTOP) past the client's timeout: the client sends it again, and Redis, thawed,
    runs both. The refused write was dead-lettered twice (a `replay --all` applied it twice)."""
    stream = "s"
    _, dead, _ = stream_keys(stream)
    client = redis.Redis.from_url(redis_server.url)
    pid = redis_server._proc.pid  # type: ignore[union-attr]
    with (
        dbr.Pool(pg_dsn, min_size=1) as pool,
        dbr.WriteQueue(
            pool, journal=redis_server.url, stream=stream, ledger_table=f"{table_name}_ledger"
        ) as queue,
        psycopg.connect(pg_dsn) as locker,
    ):
        queue.submit(insert(table), (1, "x"))
        assert queue.flush(5)  # the ledger exists, the worker is warm
        locker.execute(sql.SQL("lock table {} in access exclusive mode").format(table))
        queue.submit(insert(table), ("not a number", "x"))  # waits for the lock
        time.sleep(0.5)
        os.kill(pid, signal.SIGSTOP)
        try:
            locker.commit()  # the write is refused: dead-lettered and acknowledged, in Redis
            time.sleep(2.5)  # past the client's 2 s timeout: it will send it again
        finally:
            os.kill(pid, signal.SIGCONT)
        assert queue.flush(10)
    assert client.xlen(dead) == 1
    client.close()
