"""Limits of the write queue's Redis stream journal (#16 attack): a replay never pushes the
stream past its bound; a write larger than Redis takes is refused at submit and never holds
back the writes behind it; a wrong-type value at the stream's key is said as such; a drainer
closed after its pool says how many writes it left in the stream."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

import dbresilience as dbr
from dbresilience.__main__ import main
from dbresilience._journal import Record
from dbresilience._journal_redis_base import encode, stream_keys
from dbresilience._serialize import DEFAULT
from dbresilience.faults import TemporaryRedis

from .queue_support import Ident, drop_stream, insert, kv_table, rows


@pytest.fixture
def stream(redis_url: str) -> Iterator[str]:
    """A stream name of this test's own on the shared Redis, deleted after."""
    name = f"dbr-limits-{uuid.uuid4().hex[:10]}"
    yield name
    drop_stream(redis_url, name)


@pytest.fixture
def table(pg_dsn: str, table_name: str) -> Ident:
    """A table (k int, v text) on the shared server, dropped after (with its ledger)."""
    return kv_table(pg_dsn, table_name)


def test_replay_all_never_pushes_the_stream_past_its_bound(
    redis_url: str, stream: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`queue replay --all` with 20 dead letters and a stream of bound 10 already holding 6:
    4 go back, 16 stay dead letters, said, exit status 3; once the stream drained, the rest
    go back (it added all 20: 26 entries in a stream bounded at 10)."""
    key, dead, _ = stream_keys(stream)
    client = redis.Redis.from_url(redis_url)
    try:
        for i in range(6):
            client.xadd(key, {"d": encode(Record(1, "select 1", [i], f"s{i}"), DEFAULT)})
        for i in range(20):
            payload = encode(Record(1, "select 2", [i], f"d{i}"), DEFAULT)
            client.xadd(dead, {"d": payload, "error": "E", "code": "P2021", "from": ""})
        where = ["--journal", redis_url, "--stream", stream, "--max-len", "10"]
        capsys.readouterr()
        assert main(["queue", "replay", *where, "--all"]) == 3
        said = capsys.readouterr().out
        assert "replayed 4 of 20" in said, said
        assert "16 left in the dead-letter stream" in said, said
        assert client.xlen(key) == 10
        assert client.xlen(dead) == 16
        first = client.xrange(key, count=6)
        client.xdel(key, *[entry_id for entry_id, _ in first])  # drained
        assert main(["queue", "replay", *where, "--all"]) == 3
        assert (client.xlen(key), client.xlen(dead)) == (10, 10)
        assert main(["queue", "replay", *where[:-2], "--all"]) == 0  # the default bound
        assert (client.xlen(key), client.xlen(dead)) == (20, 0)
    finally:
        client.close()


def test_a_write_larger_than_redis_takes_is_refused_at_submit_and_blocks_nothing(
    pg_dsn: str, redis_server: TemporaryRedis, table: Ident, table_name: str
) -> None:
    """proto-max-bulk-len at 1 MB: a 2 MB write is refused at submit (WriteTooLarge naming
    the limit), and the writes before and after it are applied (before: the sender sent it
    forever, each send cutting the connection, and nothing behind it entered the stream). A
    limit lowered after a large write was accepted: that write is dropped, said, and the writes
    behind it go in."""
    client = redis.Redis.from_url(redis_server.url)
    client.config_set("proto-max-bulk-len", "1mb")
    stream = f"dbr-limits-{uuid.uuid4().hex[:10]}"
    try:
        with (
            dbr.Pool(pg_dsn, min_size=1) as pool,
            dbr.WriteQueue(
                pool,
                journal=redis_server.url,
                stream=stream,
                ledger_table=f"{table_name}_ledger",
                drain_timeout=5,
            ) as queue,
        ):
            queue.submit(insert(table), (1, "small"), key="k1")
            assert queue.flush(5)
            with pytest.raises(dbr.WriteTooLarge, match="proto-max-bulk-len=") as caught:
                queue.submit(insert(table), (2, "x" * (2 * 1024 * 1024)), key="k2")
            assert isinstance(caught.value, ValueError)
            queue.submit(insert(table), (3, "small"), key="k3")
            assert queue.flush(5)
            assert rows(pg_dsn, table) == 2
            # accepted under a larger limit, then the limit lowered: set aside, never blocking
            client.config_set("proto-max-bulk-len", "4mb")
            queue._stream._max_bytes_known = False
            queue.submit(insert(table), (4, "small"), key="k4")
            assert queue.flush(5)
            client.config_set("proto-max-bulk-len", "1mb")
            queue.submit(insert(table), (5, "x" * (2 * 1024 * 1024)), key="k5")
            queue.submit(insert(table), (6, "small"), key="k6")
            assert queue.flush(10)
            assert queue.stats()["stream_too_large"] == 1
        assert rows(pg_dsn, table) == 4
    finally:
        client.close()


def test_a_wrong_type_at_the_stream_key_is_said_as_such_without_the_password(
    redis_server: TemporaryRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """A string at the stream's key: the stall says WRONGTYPE at that key (it said "Redis
    unavailable: ResponseError"), never the URL's password; writes go in once it is removed."""
    client = redis.Redis.from_url(redis_server.url)
    client.config_set("requirepass", "s3cret-pw")
    client.close()
    url = redis_server.url.replace("redis://", "redis://:s3cret-pw@")
    client = redis.Redis.from_url(url)
    stream = f"dbr-limits-{uuid.uuid4().hex[:10]}"
    key = stream_keys(stream)[0]
    client.set(key, "garbage")
    try:
        with (
            caplog.at_level(logging.WARNING, logger="dbresilience"),
            dbr.WriteQueue(None, journal=url, stream=stream, drain=False) as queue,
        ):
            queue.submit("select 1", (), key="a")
            assert not queue.flush(0.5)
            why = queue.stats()["stream_stalled"]
            assert why is not None
            assert "WRONGTYPE" in why, why
            assert key in why, why
            said = [r.getMessage() for r in caplog.records]
            assert any("WRONGTYPE" in m and key in m for m in said), said
            assert not any("s3cret" in m for m in said), said
            client.delete(key)
            assert queue.flush(5)
        assert client.xlen(key) == 1
    finally:
        client.delete(*stream_keys(stream))
        client.close()


def test_a_drainer_closed_after_its_pool_says_what_it_left_in_the_stream(
    pg_dsn: str,
    redis_url: str,
    stream: str,
    table: Ident,
    table_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The pool closed before the queue: the writes stay in the stream for the next drainer
    (correct) and the close says how many, once (it said nothing)."""
    pool = dbr.Pool(pg_dsn, min_size=1).open()
    queue = dbr.WriteQueue(
        pool,
        journal=redis_url,
        stream=stream,
        ledger_table=f"{table_name}_ledger",
        drain_timeout=0.5,
    ).open()
    queue.submit(insert(table), (0, "x"), key="w0")
    assert queue.flush(5)
    pool.close()
    for i in range(1, 6):
        queue.submit(insert(table), (i, "x"), key=f"w{i}")
    time.sleep(0.2)
    with caplog.at_level(logging.WARNING, logger="dbresilience"):
        queue.close()
    said = [r.getMessage() for r in caplog.records if "next drainer" in r.getMessage()]
    assert len(said) == 1, said
    assert "closed with 5 writes left in the stream" in said[0], said
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.xlen(stream_keys(stream)[0]) == 5
    finally:
        client.close()
    assert rows(pg_dsn, table) == 1


def test_async_queue_refuses_a_write_larger_than_redis_takes(
    redis_server: TemporaryRedis,
) -> None:
    """AsyncWriteQueue (its submit cannot wait): the same refusal at submit, and the write
    after it goes into the stream."""
    client = redis.Redis.from_url(redis_server.url)
    client.config_set("proto-max-bulk-len", "1mb")
    stream = f"dbr-limits-{uuid.uuid4().hex[:10]}"

    async def run() -> None:
        async with dbr.AsyncWriteQueue(
            None, journal=redis_server.url, stream=stream, drain=False
        ) as queue:
            queue.submit("select 1", (), key="a")
            assert await queue.flush(5)  # the limit is known once Redis answered
            with pytest.raises(dbr.WriteTooLarge, match="1047552"):
                queue.submit("select %s", ("x" * 2_000_000,), key="b")
            queue.submit("select 2", (), key="c")
            assert await queue.flush(5)

    try:
        asyncio.run(run())
        assert client.xlen(stream_keys(stream)[0]) == 2
    finally:
        client.close()
