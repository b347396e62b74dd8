"""Matched sync and async helpers for tests whose sync twin is generated.

The async test modules (``test_*_async.py``) are the sources; ``tools/async_to_sync.py`` writes
their sync twins, renaming each ``a``-name to its plain partner (``aspawn`` -> ``spawn``,
``agather`` -> ``gather``, ``asleep`` -> ``sleep``, ``AEvent`` -> ``Event``). A task becomes a
thread; ``await agather(*handles)`` becomes ``gather(*handles)``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from dbresilience._acompat import AEvent, Event

__all__ = ["AEvent", "Event", "agather", "asleep", "aspawn", "gather", "sleep", "spawn"]

sleep = time.sleep


async def asleep(seconds: float) -> None:
    """``asyncio.sleep``."""
    await asyncio.sleep(seconds)


class Spawned(threading.Thread):
    """A thread running ``fn(*args)`` that keeps its result or exception for :func:`gather`."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        super().__init__(daemon=True)
        self._fn, self._args = fn, args
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self._fn(*self._args)
        except BaseException as exc:
            self.error = exc


def spawn(fn: Callable[..., Any], *args: Any) -> Spawned:
    """Run ``fn(*args)`` in a started daemon thread."""
    thread = Spawned(fn, *args)
    thread.start()
    return thread


def aspawn(fn: Callable[..., Awaitable[Any]], *args: Any) -> asyncio.Task[Any]:
    """Run ``fn(*args)`` as a task of the running loop."""
    return asyncio.ensure_future(fn(*args))


def gather(*threads: Spawned, timeout: float = 60.0) -> list[Any]:
    """Wait for every thread (at most *timeout* s in all); their results in order, or the first
    one's exception."""
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            raise TimeoutError(f"a spawned thread still runs after {timeout} s")
    for thread in threads:
        if thread.error is not None:
            raise thread.error
    return [thread.result for thread in threads]


async def agather(*tasks: asyncio.Task[Any], timeout: float = 60.0) -> list[Any]:
    """Wait for every task (at most *timeout* s in all); their results in order, or the first
    one's exception."""
    return list(await asyncio.wait_for(asyncio.gather(*tasks), timeout))
