"""Helpers shared by the write-queue tests (both twins and the model tests)."""

from __future__ import annotations

import psycopg
from psycopg import sql

Ident = sql.Identifier


def insert(table: Ident) -> str:
    """An INSERT for *table* as the plain string a service would submit."""
    return f"insert into {table.as_string()} (k, v) values (%s, %s)"


def rows(dsn: str, table: Ident) -> int:
    """How many rows *table* holds."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(sql.SQL("select count(*) from {}").format(table)).fetchone()
    assert row is not None
    return int(row[0])


def kv_table(dsn: str, name: str) -> Ident:
    """Create a table *name* ``(k int, v text)`` on *dsn* (no unique constraint: a write
    applied twice shows); its identifier."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create table {} (k int, v text)").format(Ident(name)))
    return Ident(name)


def drop_stream(url: str, stream: str) -> None:
    """Delete a stream journal's keys (the stream, its dead letters, its lease) on *url*."""
    import redis  # here: the other queue tests need no redis

    from dbresilience._journal_redis_base import stream_keys

    client = redis.Redis.from_url(url)
    client.delete(*stream_keys(stream))
    client.close()


#: a process that submits 3,000 keyed writes to a journaled queue, then dies with os._exit
#: (no close, no drain: whatever was in flight is cut off); format with dsn, journal, insert
CRASH_CHILD = """
import os
import dbresilience as dbr
pool = dbr.Pool({dsn!r}, min_size=1)
pool.open()
queue = dbr.WriteQueue(pool, journal={journal!r}, batch_size=100).open()
for i in range(3000):
    queue.submit({insert!r}, (i, "crash"), key=f"crash-{{i}}")
print("submitted", flush=True)
os._exit(0)
"""

#: the same with the asyncio twin (it yields now and then, so the worker commits some)
CRASH_CHILD_ASYNC = """
import asyncio, os
import dbresilience as dbr
async def main():
    pool = dbr.AsyncPool({dsn!r}, min_size=1)
    await pool.open()
    queue = await dbr.AsyncWriteQueue(pool, journal={journal!r}, batch_size=100).open()
    for i in range(3000):
        queue.submit({insert!r}, (i, "crash"), key=f"crash-{{i}}")
        if i % 500 == 0:
            await asyncio.sleep(0.01)
    print("submitted", flush=True)
    os._exit(0)
asyncio.run(main())
"""


#: a process that owns a journal until it is killed; format with journal
OWNER_CHILD = """
import time
from dbresilience._journal import Journal
Journal({journal!r}).open()
print("owner", flush=True)
time.sleep(60)
"""

#: a process whose journal hits a file-size limit mid-run (RLIMIT_FSIZE, as a full disk would):
#: writes already journaled commit although their watermark cannot be written, submit refuses
#: what it cannot journal, the worker lives on; then the limit goes and the journal records
#: progress again. Prints one JSON line.
FULL_DISK_CHILD = """
import json, os, resource, signal
import dbresilience as dbr
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a killed process
pool = dbr.Pool({dsn!r}, min_size=1)
pool.open()
queue = dbr.WriteQueue(pool, journal={journal!r}, batch_size=10_000, flush_interval=60).open()
acked = []
def submit(i, v):
    queue.submit({insert!r}, (i, v), key=f"disk-{{i}}")
    acked.append(i)
for i in range(40):
    submit(i, "before")
assert queue.flush(timeout=30)
for i in range(40, 80):
    submit(i, "journaled")
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize({journal!r}), hard))  # no room left
assert queue.flush(timeout=30)  # committed; the watermark cannot be written
refused = 0
for i in range(80, 120):
    try:
        submit(i, "full")
    except OSError:
        refused += 1
during = queue.stats()
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
submit(1000, "after")
assert queue.flush(timeout=30)
after = queue.stats()
queue.close()
again = dbr.WriteQueue(pool, journal={journal!r}).open()
replayed = again.stats()["replayed"]
again.close()
pool.close()
print(json.dumps({{"acked": acked, "refused": refused, "during": during, "after": after,
                  "replayed": replayed}}))
"""

#: the same with the asyncio twin
FULL_DISK_CHILD_ASYNC = """
import asyncio, json, os, resource, signal
import dbresilience as dbr
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a killed process
async def main():
    pool = dbr.AsyncPool({dsn!r}, min_size=1)
    await pool.open()
    queue = await dbr.AsyncWriteQueue(pool, journal={journal!r}, batch_size=10_000,
                                      flush_interval=60).open()
    acked = []
    def submit(i, v):
        queue.submit({insert!r}, (i, v), key=f"disk-{{i}}")
        acked.append(i)
    for i in range(40):
        submit(i, "before")
    assert await queue.flush(timeout=30)
    for i in range(40, 80):
        submit(i, "journaled")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize({journal!r}), hard))
    assert await queue.flush(timeout=30)  # committed; the watermark cannot be written
    refused = 0
    for i in range(80, 120):
        try:
            submit(i, "full")
        except OSError:
            refused += 1
    during = queue.stats()
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    submit(1000, "after")
    assert await queue.flush(timeout=30)
    after = queue.stats()
    await queue.aclose()
    again = await dbr.AsyncWriteQueue(pool, journal={journal!r}).open()
    replayed = again.stats()["replayed"]
    await again.aclose()
    await pool.aclose()
    print(json.dumps({{"acked": acked, "refused": refused, "during": during, "after": after,
                      "replayed": replayed}}))
asyncio.run(main())
"""

#: a process that tries to open a journal another queue owns; format with journal
LOCKED_CHILD = """
import dbresilience as dbr
try:
    dbr.WriteQueue(object(), journal={journal!r}).open()
except dbr.JournalLocked as exc:
    print("locked:", exc)
"""

#: one queue process of the multi-process model test (tests/test_queue_model_processes.py):
#: ``python -c MODEL_CHILD dsn journal app``. It opens a Pool and a journaled WriteQueue, prints
#: ``{"ready": ..., "stats": ...}``, then answers one JSON command per stdin line with one JSON
#: line: submit (an OSError or library error is a refusal, never an acknowledgement), stats (with
#: the writes set aside), full (a file-size limit at the journal's size: a full disk) and room,
#: close_pool, close (drain, then exit), exit (os._exit at once: no answer, no drain).
MODEL_CHILD = """
import json, os, resource, signal, sys
import dbresilience as dbr
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a killed process
dsn, journal, app = sys.argv[1:4]
pool = dbr.Pool(dsn, min_size=1, max_size=2, connect_timeout=1.0, acquire_timeout=1.0,
                query_timeout=1.0, breaker=None, budget=None,
                kwargs={"application_name": app})
pool.open()
queue = dbr.WriteQueue(pool, journal=journal, batch_size=50, flush_interval=0.01,
                       batch_timeout=1.0, drain_timeout=5.0).open()
limits = resource.getrlimit(resource.RLIMIT_FSIZE)

def stats():
    s = queue.stats()
    s["set_aside"] = [[f.params, f.key, f.code, type(f).__name__, f.error.split(":")[0]]
                      for f in queue.failed_writes()]
    return s

def say(obj):
    sys.stdout.write(json.dumps(obj, default=str) + "\\n")
    sys.stdout.flush()

say({"ready": True, "stats": stats()})
for line in sys.stdin:
    cmd = json.loads(line)
    op = cmd["op"]
    if op == "submit":
        try:
            queue.submit(cmd["sql"], cmd["params"], key=cmd["key"])
            say({"ok": True})
        except (OSError, dbr.DBResilienceError) as exc:
            say({"ok": False, "error": type(exc).__name__})
    elif op == "stats":
        say(stats())
    elif op == "flush":
        say({"ok": queue.flush(timeout=cmd["timeout"])})
    elif op == "full":
        resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(journal), limits[1]))
        say({"ok": True})
    elif op == "room":
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        say({"ok": True})
    elif op == "close_pool":
        pool.close()
        say({"ok": True})
    elif op == "close":
        queue.drain_timeout = cmd["drain"]
        queue.close()
        s = stats()
        pool.close()
        say(s)
        break
    elif op == "exit":
        os._exit(0)
"""


#: a process that submits keyed writes with named parameters (dicts) to a journaled queue,
#: commits 200 of them, journals 201 more (100 of them the same writes again, their keys
#: already applied and their dicts in another order; one a key reused with other parameters)
#: and dies with os._exit before committing those; format with dsn, journal, statement, ledger
NAMED_CHILD = """
import os
import dbresilience as dbr
pool = dbr.Pool({dsn!r}, min_size=1)
pool.open()
queue = dbr.WriteQueue(
    pool, journal={journal!r}, batch_size=10_000, flush_interval=60, ledger_table={ledger!r}
).open()
for i in range(200):
    queue.submit({statement!r}, {{"k": i, "v": f"n{{i}}"}}, key=f"named-{{i}}")
assert queue.flush(timeout=30)
print("committed", queue.stats()["written"], flush=True)
for i in range(100, 300):
    queue.submit({statement!r}, {{"v": f"n{{i}}", "k": i}}, key=f"named-{{i}}")
queue.submit({statement!r}, {{"k": 0, "v": "other"}}, key="named-0")
print("journaled", queue.stats()["pending"], flush=True)
os._exit(0)
"""

#: the same with the asyncio twin
NAMED_CHILD_ASYNC = """
import asyncio, os
import dbresilience as dbr
async def main():
    pool = dbr.AsyncPool({dsn!r}, min_size=1)
    await pool.open()
    queue = await dbr.AsyncWriteQueue(
        pool, journal={journal!r}, batch_size=10_000, flush_interval=60, ledger_table={ledger!r}
    ).open()
    for i in range(200):
        queue.submit({statement!r}, {{"k": i, "v": f"n{{i}}"}}, key=f"named-{{i}}")
    assert await queue.flush(timeout=30)
    print("committed", queue.stats()["written"], flush=True)
    for i in range(100, 300):
        queue.submit({statement!r}, {{"v": f"n{{i}}", "k": i}}, key=f"named-{{i}}")
    queue.submit({statement!r}, {{"k": 0, "v": "other"}}, key="named-0")
    print("journaled", queue.stats()["pending"], flush=True)
    os._exit(0)
asyncio.run(main())
"""


#: the write ledger as an operator may make it: partitioned by hash of the key; format with
#: its name
PARTITIONED_LEDGER = """create table {} (
    scope text collate "C" not null, key text collate "C" not null, digest text not null,
    applied_at timestamptz not null default now(), primary key (scope, key)
) partition by hash (key)"""
