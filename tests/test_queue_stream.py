"""The write queue's shared journal on a Redis stream: several real processes, SIGKILL, PostgreSQL
connections terminated, Redis restarted, the dead-letter stream from the CLI, the drainer mode,
backpressure at ``max_stream_len``, and Redis unavailable (writes held, then moved in)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

import dbresilience as dbr
from dbresilience.__main__ import main
from dbresilience._journal import Record, parse_line
from dbresilience._journal_redis_base import stream_keys
from dbresilience.faults import TemporaryPostgres, TemporaryRedis, terminate_backends

from .queue_support import Ident, drop_stream, insert, kv_table, rows


@pytest.fixture
def stream(redis_url: str) -> Iterator[str]:
    """A stream name of this test's own on the shared Redis, deleted after."""
    name = f"dbr-test-{uuid.uuid4().hex[:10]}"
    yield name
    drop_stream(redis_url, name)


@pytest.fixture
def table(pg_dsn: str, table_name: str) -> Ident:
    """A table (k int, v text) on the shared server, dropped after (with its ledger)."""
    return kv_table(pg_dsn, table_name)


def _distinct(dsn: str, table: Ident) -> tuple[int, int]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            sql.SQL("select count(*), count(distinct k) from {}").format(table)
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_keyed_writes_are_applied_once_and_a_refused_one_is_dead_lettered(
    pg_dsn: str, redis_url: str, stream: str, table: Ident, table_name: str
) -> None:
    """Writes go through the stream into PostgreSQL; a refused one lands in the dead-letter
    stream with its error, and the stream ends empty (XACK + XDEL only after COMMIT)."""
    with (
        dbr.Pool(pg_dsn, min_size=1) as pool,
        dbr.WriteQueue(
            pool,
            journal=redis_url,
            stream=stream,
            ledger_table=f"{table_name}_ledger",
            lease_ttl=1.0,
        ) as queue,
    ):
        for i in range(300):
            queue.submit(insert(table), (i, "x"), key=f"k{i}")
        queue.submit(insert(table), ("not a number", "x"), key="bad")
        for i in range(300):  # the same keys again: duplicates, never applied twice
            queue.submit(insert(table), (i, "x"), key=f"k{i}")
        assert queue.flush(20)
        stats = queue.stats()
    assert _distinct(pg_dsn, table) == (300, 300)
    assert (stats["written"], stats["duplicates"], stats["failed"]) == (300, 300, 1)
    assert stats["written"] + stats["duplicates"] + stats["failed"] == stats["received"] == 601
    client = redis.Redis.from_url(redis_url)
    key, dead, _ = stream_keys(stream)
    assert client.xlen(key) == 0
    (letter,) = client.xrange(dead)
    assert letter[1][b"code"] == b"P2007"
    record = parse_line(letter[1][b"d"])
    assert isinstance(record, Record)
    assert (record.params, record.key) == (["not a number", "x"], "bad")
    client.close()


def test_append_only_then_the_cli_drains_lists_and_replays_a_dead_letter(
    pg_dsn: str,
    redis_url: str,
    stream: str,
    table: Ident,
    table_name: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """drain=False needs no pool: writes wait in the stream; `queue drain` applies them;
    `queue failed` shows a write set aside; `queue replay` puts it back once fixed."""
    later = Ident(f"{table_name}_later")
    ledger = ["--ledger-table", f"{table_name}_ledger"]
    with dbr.WriteQueue(None, journal=redis_url, stream=stream, drain=False) as queue:
        for i in range(50):
            queue.submit(insert(table), (i, "x"), key=f"a{i}")
        queue.submit(insert(later), (1, "later"), key="later-1")  # no such table yet: P2021
        assert queue.flush(5)  # in the stream: nothing applied yet
    assert rows(pg_dsn, table) == 0
    where = ["--journal", redis_url, "--stream", stream]
    assert main(["queue", "drain", *where, *ledger, "--until-empty", pg_dsn]) == 0
    assert rows(pg_dsn, table) == 50
    capsys.readouterr()
    assert main(["queue", "failed", *where]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [(x["code"], x["key"]) for x in lines] == [("P2021", "later-1")]
    assert "params" not in lines[0]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create table {} (k int, v text)").format(later))
    assert main(["queue", "replay", *where, "--id", lines[0]["id"]]) == 0
    assert main(["queue", "drain", *where, *ledger, "--until-empty", pg_dsn]) == 0
    assert rows(pg_dsn, later) == 1
    capsys.readouterr()
    assert main(["queue", "failed", *where]) == 0
    assert "# 0 dead letters" in capsys.readouterr().out
    assert main(["queue", "replay", *where, "--id", "not-an-id"]) == 1
    assert "failed: ResponseError" in capsys.readouterr().out


def test_a_long_lived_drainer_process_applies_what_functions_append_and_stops_on_sigterm(
    pg_dsn: str, redis_url: str, stream: str, table: Ident, table_name: str
) -> None:
    """`dbresilience queue drain` in its own interpreter applies what append-only queues (no
    pool) put in the stream, as it arrives, and exits 0 on SIGTERM."""
    command = [sys.executable, "-m", "dbresilience", "queue", "drain", "--journal", redis_url]
    command += ["--stream", stream, "--ledger-table", f"{table_name}_ledger", pg_dsn]
    drainer = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    started = time.monotonic()
    try:
        for burst in range(3):  # three short-lived "functions", one after the other
            with dbr.WriteQueue(None, journal=redis_url, stream=stream, drain=False) as queue:
                for i in range(100):
                    queue.submit(insert(table), (burst * 100 + i, "fn"), key=f"f{burst}-{i}")
                assert queue.flush(5)
        deadline = time.monotonic() + 30
        while (seen := rows(pg_dsn, table)) < 300 and time.monotonic() < deadline:
            time.sleep(0.05)
        waited = time.monotonic() - started
        drainer.send_signal(signal.SIGTERM)
        out, err = drainer.communicate(timeout=30)
    finally:
        if drainer.poll() is None:
            drainer.kill()
            drainer.wait()
    assert drainer.returncode == 0, err[-2000:]
    # once (beside two busy processes) it said "0 written" with nothing more: say all there is
    assert b"300 written" in out, (seen, f"{waited:.1f} s", out, err[-3000:])
    assert _distinct(pg_dsn, table) == (300, 300)


def test_the_stream_bound_holds_writes_back_and_then_refuses(
    pg_dsn: str, redis_url: str, stream: str, table: Ident, table_name: str
) -> None:
    """At max_stream_len nothing is trimmed: writes are held in memory (max_pending), then
    refused with QueueFull; once drained, the held ones go in and are applied."""
    with dbr.WriteQueue(
        None,
        journal=redis_url,
        stream=stream,
        drain=False,
        max_stream_len=5,
        max_pending=3,
        on_full="raise",
    ) as queue:
        for i in range(8):
            queue.submit(insert(table), (i, "x"), key=f"b{i}")
        with pytest.raises(dbr.QueueFull):
            queue.submit(insert(table), (99, "x"), key="b99")
        client = redis.Redis.from_url(redis_url)
        assert client.xlen(stream_keys(stream)[0]) == 5
        assert queue.stats()["stream_buffered"] == 3
        assert queue.stats()["stream_stalled"] is not None
        with (
            dbr.Pool(pg_dsn, min_size=1) as pool,
            dbr.WriteQueue(
                pool, journal=redis_url, stream=stream, ledger_table=f"{table_name}_ledger"
            ) as drainer,
        ):
            assert queue.flush(10)  # the held writes are in the stream now
            deadline = time.monotonic() + 10
            while rows(pg_dsn, table) < 8 and time.monotonic() < deadline:
                drainer.flush(1)
                time.sleep(0.05)
        client.close()
    assert _distinct(pg_dsn, table) == (8, 8)


def test_the_lease_is_renewed_while_writes_flow(
    pg_dsn: str, redis_url: str, stream: str, table: Ident, table_name: str
) -> None:
    """The draining instance keeps its lease (never expires, never changes hands) while
    submits flow for several lease lifetimes (the asyncio twin: every submit wakes its
    sender)."""
    client = redis.Redis.from_url(redis_url)
    lease = stream_keys(stream)[2]

    async def run() -> tuple[set[bytes | None], int, dict[str, object]]:
        holders: set[bytes | None] = set()
        expired = 0
        async with (
            dbr.AsyncPool(pg_dsn, min_size=1) as pool,
            dbr.AsyncWriteQueue(
                pool,
                journal=redis_url,
                stream=stream,
                ledger_table=f"{table_name}_ledger",
                lease_ttl=0.6,  # renewed every 0.2 s: a loaded machine's stall stays below it
            ) as queue,
        ):
            # the window opens once the lease is held: the keeper's first EVAL, from a task
            # that open() starts, may come after the first samples on a loaded machine
            deadline = time.monotonic() + 10
            while client.get(lease) is None:
                assert time.monotonic() < deadline, "the queue never took the lease"
                await asyncio.sleep(0.01)
            end = time.monotonic() + 1.5
            i = 0
            while time.monotonic() < end:
                queue.submit(insert(table), (i, "x"))
                i += 1
                await asyncio.sleep(0.001)
                if i % 20 == 0:
                    holders.add(client.get(lease))
                    expired += client.pttl(lease) == -2
            assert await queue.flush(10)
            return holders, expired, queue.stats()

    holders, expired, stats = asyncio.run(run())
    client.close()
    assert expired == 0
    assert len(holders - {None}) == 1
    assert stats["stream_claimed"] == 0


def test_per_key_order_holds_across_instances_and_a_lease_handoff(
    pg_dsn: str, redis_url: str, stream: str, table_name: str
) -> None:
    """Two instances submit numbered writes for their own keys into one stream while both may
    drain; the draining one closes midway and the other takes over: every key's writes are
    applied in the order they were submitted (the serial id shows the order of application)."""
    import threading

    ordered = Ident(f"{table_name}_ordered")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create table {} (id bigserial, p int, seq int)").format(ordered))
    statement = f"insert into {ordered.as_string()} (p, seq) values (%s, %s)"
    with dbr.Pool(pg_dsn, min_size=2) as pool:
        options: dict[str, object] = {
            "journal": redis_url,
            "stream": stream,
            "ledger_table": f"{table_name}_ledger",
            "lease_ttl": 0.5,
            "batch_size": 20,
        }
        first = dbr.WriteQueue(pool, **options).open()  # type: ignore[arg-type]
        second = dbr.WriteQueue(pool, **options).open()  # type: ignore[arg-type]

        def produce(queue: dbr.WriteQueue, producer: int) -> None:
            for n in range(400):
                queue.submit(statement, (producer, n), key=f"{producer}-{n}")
                if n == 200 and producer == 0:
                    first.close()  # the drainer (or not) leaves: the other one drains
                    return

        threads = [
            threading.Thread(target=produce, args=(second, 1)),
            threading.Thread(target=produce, args=(first, 0)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert second.flush(20)
        second.close()
    client = redis.Redis.from_url(redis_url)
    consumers = client.xinfo_consumers(stream_keys(stream)[0], "dbr")
    client.close()
    assert len(consumers) <= 1  # a takeover forgets the consumers that held nothing
    with psycopg.connect(pg_dsn) as conn:
        got = conn.execute(sql.SQL("select p, seq from {} order by id").format(ordered))
        applied: dict[int, list[int]] = {0: [], 1: []}
        for producer, n in got:
            applied[producer].append(n)
    assert applied[1] == list(range(400))
    assert applied[0] == list(range(201))


def test_an_unreadable_entry_is_dead_lettered_not_applied(
    pg_dsn: str, redis_url: str, stream: str, table: Ident, table_name: str
) -> None:
    """Anything read from Redis is untrusted: a payload that does not parse is moved to the
    dead-letter stream with its reason; the writes around it are applied."""
    client = redis.Redis.from_url(redis_url)
    key, dead, _ = stream_keys(stream)
    with (
        dbr.Pool(pg_dsn, min_size=1) as pool,
        dbr.WriteQueue(
            pool, journal=redis_url, stream=stream, ledger_table=f"{table_name}_ledger"
        ) as queue,
    ):
        queue.submit(insert(table), (1, "x"))
        client.xadd(key, {"d": b'{"s":1,"q":42}'})
        client.xadd(key, {"other": b"x"})
        queue.submit(insert(table), (2, "x"))
        assert queue.flush(10)
    assert rows(pg_dsn, table) == 2
    assert [e[1][b"code"] for e in client.xrange(dead)] == [b"unreadable", b"unreadable"]
    client.close()


def test_redis_down_holds_writes_in_memory_and_moves_them_in_when_back(
    pg_dsn: str, table: Ident, table_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis stopped: submit keeps answering (held in memory, said once in the log); Redis back:
    the held writes go into the stream and are applied, none lost, none twice."""
    server = TemporaryRedis(persist=True).start()
    try:
        with (
            dbr.Pool(pg_dsn, min_size=1) as pool,
            dbr.WriteQueue(
                pool,
                journal=server.url,
                stream="down",
                ledger_table=f"{table_name}_ledger",
                lease_ttl=1.0,
            ) as queue,
        ):
            queue.submit(insert(table), (0, "x"), key="c0")
            assert queue.flush(10)
            server.stop()
            with caplog.at_level(logging.WARNING, logger="dbresilience"):
                for i in range(1, 40):
                    queue.submit(insert(table), (i, "x"), key=f"c{i}")
            assert queue.stats()["stream_buffered"] > 0
            held = [r for r in caplog.records if "held in memory" in r.getMessage()]
            assert len(held) == 1
            server.start()
            assert queue.flush(20)
        assert _distinct(pg_dsn, table) == (40, 40)
    finally:
        server.close()


HOLDER = """
import os, sys
import dbresilience as dbr
url, journal, insert = sys.argv[1:4]
queue = dbr.WriteQueue(None, journal=url, stream="held", drain=False, fallback_journal=journal)
queue.open()
for i in range(50):
    queue.submit(insert, (i, "held"), key=f"h{i}")
assert queue.stats()["stream_buffered"] == 50
print("acknowledged", flush=True)
os.kill(os.getpid(), 9)
"""


def test_writes_held_while_redis_is_down_survive_the_process_with_a_fallback_journal(
    pg_dsn: str, table: Ident, table_name: str, tmp_path: Path
) -> None:
    """Redis down, a process acknowledges 50 writes (held) and dies with SIGKILL; the next
    queue on its fallback journal puts them into the stream once Redis is back: all applied."""
    server = TemporaryRedis(persist=True)  # not started: Redis is down
    journal = tmp_path / "held.journal"
    try:
        done = subprocess.run(
            [sys.executable, "-c", HOLDER, server.url, str(journal), insert(table)],
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert b"acknowledged" in done.stdout, done.stderr[-2000:]
        assert done.returncode == -signal.SIGKILL
        server.start()
        with (
            dbr.Pool(pg_dsn, min_size=1) as pool,
            dbr.WriteQueue(
                pool,
                journal=server.url,
                stream="held",
                fallback_journal=journal,
                ledger_table=f"{table_name}_ledger",
            ) as queue,
        ):
            deadline = time.monotonic() + 20
            while rows(pg_dsn, table) < 50 and time.monotonic() < deadline:
                queue.flush(1)
                time.sleep(0.05)
        assert _distinct(pg_dsn, table) == (50, 50)
    finally:
        server.close()


def test_async_queue_on_the_stream(
    pg_dsn: str, redis_url: str, stream: str, table: Ident, table_name: str
) -> None:
    """AsyncWriteQueue: submit never waits; flush() waits for the stream and the commit."""

    async def run() -> dict[str, object]:
        async with (
            dbr.AsyncPool(pg_dsn, min_size=1) as pool,
            dbr.AsyncWriteQueue(
                pool, journal=redis_url, stream=stream, ledger_table=f"{table_name}_ledger"
            ) as queue,
        ):
            for i in range(200):
                queue.submit(insert(table), (i, "x"), key=f"d{i}")
            assert await queue.flush(20)
            return queue.stats()

    stats = asyncio.run(run())
    assert stats["written"] == 200
    assert _distinct(pg_dsn, table) == (200, 200)


def test_configuration_is_checked_at_construction(redis_url: str) -> None:
    """A pool is needed to drain; spill needs a file; a URL redis-py cannot parse is refused
    without quoting it."""
    with pytest.raises(TypeError, match="pool is required"):
        dbr.WriteQueue(None, journal=redis_url)
    with pytest.raises(ValueError, match="spill"):
        dbr.WriteQueue(None, journal=redis_url, drain=False, on_full="spill")
    with pytest.raises(ValueError, match="fallback_journal"):
        dbr.WriteQueue(object(), fallback_journal="x.journal")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_stream_len"):
        dbr.WriteQueue(None, journal=redis_url, drain=False, max_stream_len=0)
    with pytest.raises(ValueError, match="not a Redis URL") as info:
        dbr.WriteQueue(None, journal="redis://u:se#cret@h:1/0", drain=False)
    assert "se#cret" not in str(info.value)


def test_sentinel_and_cluster_forms_are_accepted() -> None:
    """redis+sentinel:// and redis+cluster:// make clients (lazily); a stream's keys share one
    hash tag, so one slot of a cluster."""
    from redis.cluster import key_slot

    from dbresilience._journal_redis import make_client

    url = "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster/2"
    dbr.WriteQueue(None, journal=url, drain=False)  # accepted at construction
    dbr.WriteQueue(None, journal="redis+cluster://127.0.0.1:7000", drain=False)
    with pytest.raises(ValueError, match="service"):
        dbr.WriteQueue(None, journal="redis+sentinel://127.0.0.1:26379", drain=False)
    sentinel = make_client(url, 1.0)
    assert sentinel.connection_pool.service_name == "mymaster"
    slots = {key_slot(k.encode()) for k in stream_keys("orders")}
    assert len(slots) == 1


PRODUCER = """
import sys, time
import dbresilience as dbr
dsn, url, table, base, n, ack = sys.argv[1:7]
base, n = int(base), int(n)
pool = dbr.Pool(dsn, min_size=1).open()
queue = dbr.WriteQueue(pool, journal=url, stream="shared", batch_size=50, lease_ttl=1.0,
                       flush_interval=0.01).open()
with open(ack, "a") as out:
    for i in range(base, base + n):
        queue.submit(f"insert into {table} (k, v) values (%s, %s)", (i, "p"), key=str(i))
        out.write(f"{i}\\n")
        out.flush()
        time.sleep(0.001)
assert queue.flush(60), queue.stats()
queue.close()
pool.close()
print("done", flush=True)
"""


def test_processes_sigkill_terminated_backends_and_a_redis_restart_lose_nothing(
    pg_cluster: TemporaryPostgres, events: Ident, tmp_path: Path
) -> None:
    """Three interpreters submit keyed writes into one stream; the one draining is killed with
    SIGKILL mid-batch, PostgreSQL's connections are terminated, Redis restarts: every
    acknowledged write is applied exactly once."""
    server = TemporaryRedis(persist=True).start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for n in range(3):
            args = [pg_cluster.dsn, server.url, events.as_string(), str(n * 100_000), "1200"]
            command = [sys.executable, "-c", PRODUCER, *args, str(tmp_path / f"ack{n}")]
            procs.append(subprocess.Popen(command, stderr=subprocess.DEVNULL))
        client = redis.Redis.from_url(server.url)
        lease = stream_keys("shared")[2]
        victim = None
        deadline = time.monotonic() + 20
        key = stream_keys("shared")[0]
        while victim is None and time.monotonic() < deadline:
            holder = client.get(lease)
            if holder and rows(pg_cluster.dsn, events) > 100:
                # the drainer with a batch delivered and not acknowledged: mid-batch
                held = client.xpending_range(key, "dbr", "-", "+", 1, consumername=holder)
                if held:
                    victim = int(holder.split(b":")[1])
                    os.kill(victim, signal.SIGKILL)
            time.sleep(0.005)
        assert victim is not None
        for _ in range(3):
            time.sleep(0.3)
            terminate_backends(pg_cluster.dsn)
        server.stop()  # SIGKILL; every acknowledged XADD is in the fsynced append-only file
        time.sleep(0.5)
        server.start()
        client.close()
        for proc in procs:
            proc.wait(timeout=60)
        survivors = [p for p in procs if p.pid != victim]
        assert all(p.returncode == 0 for p in survivors), [p.returncode for p in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        server.close()
    acked = set()
    for n in range(3):
        acked |= {int(x) for x in (tmp_path / f"ack{n}").read_text().split()}
    with psycopg.connect(pg_cluster.dsn) as conn:
        applied = [r[0] for r in conn.execute(sql.SQL("select k from {}").format(events))]
    assert len(applied) == len(set(applied)), "a write applied twice"
    assert acked <= set(applied), f"{len(acked - set(applied))} acknowledged writes lost"
    assert len(acked) > 2400


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("append"), st.integers(1, 30)),
            st.tuples(st.just("drain"), st.integers(1, 40), st.sets(st.integers(0, 39))),
        ),
        max_size=12,
    )
)
def test_the_stream_holds_exactly_the_writes_not_yet_done_in_order(
    redis_url: str, steps: list[tuple[object, ...]]
) -> None:
    """A model of the journal against real Redis: whatever the interleaving of appends and
    batches done (some of their writes set aside), the stream holds exactly the writes not
    done, they come out in the order they went in, and the dead-letter stream holds exactly the
    ones set aside."""
    from dbresilience._journal_redis import StreamJournal

    name = f"dbr-model-{uuid.uuid4().hex[:10]}"
    key, dead, _ = stream_keys(name)
    journal = StreamJournal(
        redis_url,
        stream=name,
        max_len=10_000,
        max_buffer=10_000,
        lease_ttl=10.0,
        on_full="raise",
        block_timeout=0.0,
        drain=True,
    ).open()
    client = redis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 5
        while not journal.stats()["stream_draining"] and time.monotonic() < deadline:
            time.sleep(0.01)
        appended: list[str] = []
        done = 0
        set_aside = 0
        for step in steps:
            if step[0] == "append":
                for _ in range(int(step[1])):  # type: ignore[call-overload]
                    write = f"w{len(appended)}"
                    journal.append(Record(1, "insert into t (k) values (%s)", [write], write))
                    appended.append(write)
                continue
            _, limit, bad = step
            batch = journal.receive(int(limit), 0.01)  # type: ignore[call-overload]
            assert [r.key for r in batch] == appended[done : done + len(batch)]
            refused = [(r, ValueError("refused")) for n, r in enumerate(batch) if n in bad]
            journal.done(batch, refused, lambda: False)
            done += len(batch)
            set_aside += len(refused)
            assert client.xlen(key) == len(appended) - done
            assert client.xlen(dead) == set_aside
    finally:
        journal.close(1.0)
        client.delete(*stream_keys(name))
        client.close()
