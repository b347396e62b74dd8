"""Matched sync and async primitives for the generated twins.

The async modules (``_pool_async.py``, ``_queue_async.py``, ``_cache_async.py``) are the sources;
``tools/async_to_sync.py`` writes their sync twins by dropping ``async``/``await`` and renaming each
``A``-name here to its plain partner (``AEvent`` -> ``Event``, ``asleep`` -> ``sleep``, ``aspawn``
-> ``spawn`` ...). Each pair therefore has the same call shape: what the async source writes as
``await asleep(d)`` becomes ``sleep(d)``, ``aspawn(self._run, "name")`` becomes ``spawn(...)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = [
    "AEvent",
    "ASignal",
    "AWorker",
    "Event",
    "Signal",
    "Worker",
    "asleep",
    "aspawn",
    "await_worker",
    "join_worker",
    "sleep",
    "spawn",
]

Event = threading.Event
AEvent = asyncio.Event

#: a background worker: a daemon thread, or a task the owner keeps a strong reference to
Worker = threading.Thread
AWorker = asyncio.Task[None]

sleep = time.sleep


async def asleep(seconds: float) -> None:
    """``asyncio.sleep``, named to pair with :func:`time.sleep`."""
    await asyncio.sleep(seconds)


# A wait longer than this is no wait a service means; threading refuses > TIMEOUT_MAX anyway.
_LONGEST_WAIT = min(threading.TIMEOUT_MAX, 86_400.0)


def _bounded(timeout: float | None) -> float | None:
    return None if timeout is None else max(0.0, min(timeout, _LONGEST_WAIT))


class Signal:
    """A broadcast that cannot be missed: ``seen = s.count``, check your condition, then
    ``s.wait(seen, timeout)`` returns at once if :meth:`notify` ran after ``seen`` was read.

    :meth:`notify` may be called from any thread. ``wait`` returns True when notified, False on
    timeout (``None``: no timeout; any timeout is capped at a day).
    """

    __slots__ = ("_cond", "count")

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self.count = 0

    def notify(self) -> None:
        """Wake every waiter (and make the next ``wait(seen)`` return at once)."""
        with self._cond:
            self.count += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float | None) -> bool:
        """Until :meth:`notify` has run since ``count`` was *seen*, or *timeout* seconds."""
        with self._cond:
            return self._cond.wait_for(lambda: self.count != seen, _bounded(timeout))


class ASignal:
    """The asyncio twin of :class:`Signal`: waiters are tasks of one event loop (bound at the
    first wait); :meth:`notify` may be called from any thread, the loop's or another."""

    __slots__ = ("_loop", "_waiters", "count")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: set[asyncio.Future[None]] = set()
        self.count = 0

    def notify(self) -> None:
        """Wake every waiter (and make the next ``wait(seen)`` return at once)."""
        self.count += 1
        loop = self._loop
        if loop is None or not self._waiters:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake()
        elif not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed meanwhile: nobody left to wake
                loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self, seen: int, timeout: float | None) -> bool:
        """Until :meth:`notify` has run since ``count`` was *seen*, or *timeout* seconds."""
        if self.count != seen:
            return True
        self._loop = loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiters.add(waiter)
        try:
            if self.count != seen:  # notified from another thread meanwhile
                return True
            await asyncio.wait_for(waiter, _bounded(timeout))
            return True
        except asyncio.TimeoutError:  # not the builtin before Python 3.11
            return self.count != seen
        finally:
            self._waiters.discard(waiter)


def spawn(target: Callable[[], None], name: str) -> threading.Thread:
    """Run *target* in a daemon thread called *name*; returns the started thread."""
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


def aspawn(target: Callable[[], Coroutine[Any, Any, None]], name: str) -> asyncio.Task[None]:
    """Run *target* as a task of the running loop called *name*; returns the task.

    The loop keeps only a weak reference to a task: the caller must keep the returned one.
    """
    return asyncio.get_running_loop().create_task(target(), name=name)


def join_worker(worker: threading.Thread | None, timeout: float) -> bool:
    """Wait up to *timeout* seconds for *worker* to end; True when it has."""
    if worker is None:
        return True
    worker.join(timeout)
    return not worker.is_alive()


async def await_worker(worker: asyncio.Task[None] | None, timeout: float) -> bool:
    """Wait up to *timeout* seconds for *worker* to end (without cancelling it); True when it
    has."""
    if worker is None:
        return True
    done, _ = await asyncio.wait({worker}, timeout=timeout)
    return bool(done)
