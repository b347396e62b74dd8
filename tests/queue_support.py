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
