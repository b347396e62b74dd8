"""One lifecycle for every resource, tested once for all of them, sync and async.

Unopened after the constructor (no thread, no task, no connection), ``open()`` returns the
resource, opening twice starts nothing twice, ``close()`` twice is harmless, a closed resource
opens again and works, ``with`` / ``async with`` hands back the resource and closes it, and every
background thread or task a resource started is gone after it is closed.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

import dbresilience as dbr

State = dbr.ResourceState


@dataclass
class Kind:
    """How to make one kind of resource and make it do one piece of work."""

    make: Callable[[dict[str, Any]], Any]
    work: Callable[[Any], Any]


def _ns() -> str:
    return f"dbr-life-{uuid.uuid4().hex[:8]}"


async def _aload() -> dict[str, int]:
    return {"v": 1}


SYNC: dict[str, Kind] = {
    "Pool": Kind(
        lambda env: dbr.Pool(env["dsn"], min_size=1),
        lambda pool: pool.fetchone("select 1") == (1,),
    ),
    "WriteQueue": Kind(
        lambda env: dbr.WriteQueue(env["pool"], flush_interval=0.01),
        lambda queue: queue.submit("select %s", (1,)) or queue.flush(timeout=10),
    ),
    "CredentialCache": Kind(
        lambda env: dbr.CredentialCache(redis_url=env["redis"], namespace=_ns()),
        lambda cache: cache.get_or_load("k", lambda: {"v": 1}) == {"v": 1},
    ),
    "CredentialCache(memory)": Kind(
        lambda env: dbr.CredentialCache(namespace=_ns()),
        lambda cache: cache.get_or_load("k", lambda: {"v": 1}) == {"v": 1},
    ),
    "RedisBreakerState": Kind(
        lambda env: dbr.RedisBreakerState(env["redis"], namespace=_ns(), refresh=0.05),
        lambda state: state.publish("b", 0.0) is None,
    ),
    # the "replica" is the primary itself: no standby, so the router reads from the primary
    "ReadRouter": Kind(
        lambda env: dbr.ReadRouter(
            dbr.Pool(env["dsn"], min_size=1),
            [dbr.Pool(env["dsn"], min_size=1)],
            check_interval=0.05,
        ),
        lambda router: router.fetchone("select 1") == (1,),
    ),
}

ASYNC: dict[str, Kind] = {
    "AsyncPool": Kind(
        lambda env: dbr.AsyncPool(env["dsn"], min_size=1),
        lambda pool: _equals(pool.fetchone("select 1"), (1,)),
    ),
    "AsyncWriteQueue": Kind(
        lambda env: dbr.AsyncWriteQueue(env["apool"], flush_interval=0.01),
        lambda queue: queue.submit("select %s", (1,)) or queue.flush(timeout=10),
    ),
    "AsyncCredentialCache": Kind(
        lambda env: dbr.AsyncCredentialCache(redis_url=env["redis"], namespace=_ns()),
        lambda cache: _equals(cache.get_or_load("k", _aload), {"v": 1}),
    ),
    "AsyncRedisBreakerState": Kind(
        lambda env: dbr.AsyncRedisBreakerState(env["redis"], namespace=_ns(), refresh=0.05),
        lambda state: _none(state.publish("b", 0.0)),
    ),
    "AsyncReadRouter": Kind(
        lambda env: dbr.AsyncReadRouter(
            dbr.AsyncPool(env["dsn"], min_size=1),
            [dbr.AsyncPool(env["dsn"], min_size=1)],
            check_interval=0.05,
        ),
        lambda router: _equals(router.fetchone("select 1"), (1,)),
    ),
}


async def _equals(result: Awaitable[Any], expected: Any) -> bool:
    return await result == expected


async def _none(value: None) -> bool:
    return value is None


def _threads() -> set[threading.Thread]:
    return set(threading.enumerate())


def _settle(before: set[threading.Thread], what: str) -> None:
    """Every thread started since *before* ends within 3 s (the watchdog may stay: shared)."""
    deadline = time.monotonic() + 3.0
    while True:
        extra = {t for t in _threads() - before if t.is_alive()}
        if not extra or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not extra, f"{what} left threads running: {sorted(t.name for t in extra)}"


@contextmanager
def _sync_env(pg_dsn: str, redis_url: str) -> Iterator[dict[str, Any]]:
    with dbr.Pool(pg_dsn, min_size=1) as pool:
        yield {"dsn": pg_dsn, "redis": redis_url, "pool": pool}


@asynccontextmanager
async def _async_env(pg_dsn: str, redis_url: str) -> AsyncIterator[dict[str, Any]]:
    async with dbr.AsyncPool(pg_dsn, min_size=1) as pool:
        yield {"dsn": pg_dsn, "redis": redis_url, "apool": pool}


@pytest.mark.parametrize("name", sorted(SYNC))
def test_sync_resource_lifecycle(name: str, pg_dsn: str, redis_url: str) -> None:
    """Unopened → open (returns self, idempotent) → works → closed (twice) → open again →
    works → closed; `with` returns the resource and closes it; no thread outlives it."""
    kind = SYNC[name]
    with _sync_env(pg_dsn, redis_url) as env:
        before = _threads()
        resource = kind.make(env)
        assert resource.state is State.UNOPENED
        assert _threads() == before, "the constructor started a thread"
        assert resource.open() is resource
        assert resource.state is State.OPEN
        running = _threads()
        assert resource.open() is resource  # a second open starts nothing more
        assert _threads() == running
        assert kind.work(resource)
        resource.close()
        assert resource.state is State.CLOSED
        resource.close()
        assert resource.state is State.CLOSED
        assert resource.open() is resource  # open again after close
        assert resource.state is State.OPEN
        assert kind.work(resource)
        resource.close()
        with resource as entered:
            assert entered is resource
            assert resource.state is State.OPEN
            assert kind.work(resource)
        assert resource.state is State.CLOSED
        _settle(before, name)


@pytest.mark.parametrize("name", sorted(ASYNC))
async def test_async_resource_lifecycle(name: str, pg_dsn: str, redis_url: str) -> None:
    """The same for the asyncio twins: `await open()`, `await aclose()` (`close` is an alias),
    `async with`; no task outlives the resource."""
    kind = ASYNC[name]
    async with _async_env(pg_dsn, redis_url) as env:
        tasks_before = asyncio.all_tasks()
        resource = kind.make(env)
        assert resource.state is State.UNOPENED
        assert asyncio.all_tasks() == tasks_before, "the constructor started a task"
        assert await resource.open() is resource
        assert resource.state is State.OPEN
        tasks_open = asyncio.all_tasks()
        assert await resource.open() is resource
        assert asyncio.all_tasks() == tasks_open
        assert await kind.work(resource)
        await resource.aclose()
        assert resource.state is State.CLOSED
        await resource.close()  # the alias
        assert resource.state is State.CLOSED
        assert await resource.open() is resource
        assert await kind.work(resource)
        await resource.aclose()
        async with resource as entered:
            assert entered is resource
            assert resource.state is State.OPEN
            assert await kind.work(resource)
        assert resource.state is State.CLOSED
        await asyncio.sleep(0)
        leftover = {t for t in asyncio.all_tasks() - tasks_before if not t.done()}
        assert not leftover, f"{name} left tasks running: {leftover}"


def test_every_resource_is_listed() -> None:
    """Every exported class with open() and close() is in this test's tables."""
    resources = {
        name
        for name in dbr.__all__
        if isinstance(getattr(dbr, name), type)
        and hasattr(getattr(dbr, name), "open")
        and hasattr(getattr(dbr, name), "close")
    }
    listed = {name.split("(")[0] for name in (*SYNC, *ASYNC)}
    assert resources <= listed, f"not tested here: {sorted(resources - listed)}"


async def test_open_cancelled_during_its_warm_up_did_not_open(pg_proxy: Any) -> None:
    """open() cancelled while it warms (a request timeout around start-up): it raises, and
    the pool is not left open with nobody to close it; opening again works."""
    proxy, dsn = pg_proxy
    proxy.latency(0.05)  # warm-up calls of 0.1 s
    pool = dbr.AsyncPool(dsn, min_size=2, connect_timeout=10)
    task = asyncio.create_task(pool.open())
    while pool.state is not State.OPEN:  # connected: the warm-up runs
        assert not task.done()
        await asyncio.sleep(0.002)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.state is State.UNOPENED
    proxy.latency(0)
    async with pool:
        assert await pool.fetchone("select 1") == (1,)
    assert pool.state is State.CLOSED
