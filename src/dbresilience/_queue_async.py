"""``AsyncWriteQueue``: the asyncio twin of :class:`WriteQueue`, method for method."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

from dbresilience._errors import CircuitOpen
from dbresilience._events import logger
from dbresilience._journal import Record
from dbresilience._queue_base import (
    COPY_MIN_ROWS,
    QueueBase,
    copy_statement,
    is_bad_write,
    runs,
)

__all__ = ["AsyncWriteQueue"]


class AsyncWriteQueue(QueueBase):
    """The asyncio twin of :class:`WriteQueue` over a :class:`dbresilience.AsyncPool`.

    ``submit`` is a plain method, not a coroutine: it never blocks the event loop, so
    ``on_full`` must be ``"raise"`` (the default here): a full queue raises :class:`QueueFull`
    at once. The worker is a task held by a strong reference. Everything else
    :class:`WriteQueue` promises holds here.
    """

    def __init__(self, pool: Any, **options: Any) -> None:
        options.setdefault("on_full", "raise")
        if options["on_full"] == "block":
            raise ValueError(
                "on_full must be 'raise' or 'spill' for AsyncWriteQueue: submit() cannot block"
            )
        super().__init__(pool, **options)
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _poke(self) -> None:
        """Wake the worker (from the loop thread or any other)."""
        loop, wakeup = self._loop, self._wakeup
        if loop is None or wakeup is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wakeup.set()
        else:
            loop.call_soon_threadsafe(wakeup.set)

    def submit(
        self, statement: str, params: Sequence[Any] | None = (), *, key: str | None = None
    ) -> None:
        """Queue a write at once (see :meth:`WriteQueue.submit`); never blocks the loop."""
        super().submit(statement, params, key=key)
        if len(self._buffer) >= self.batch_size:
            self._poke()

    async def open(self) -> AsyncWriteQueue:
        """Replay the journal (if any) and start the worker task; returns self."""
        with self._cond:
            if self._open:
                return self
            self._start_state()
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._progress = asyncio.Event()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aenter__(self) -> AsyncWriteQueue:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def flush(self, timeout: float = 5.0) -> bool:
        """True once everything submitted so far is committed (or set aside)."""
        deadline = time.monotonic() + timeout
        target = self._seq
        self._flushers += 1
        self._poke()
        try:
            while self._done < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._progress.clear()
                try:
                    await asyncio.wait_for(self._progress.wait(), left)
                except asyncio.TimeoutError:  # not the builtin before Python 3.11
                    return self._done >= target
            return True
        finally:
            self._flushers -= 1

    async def aclose(self) -> None:
        """Drain within ``drain_timeout``, stop the worker, close the journal. Idempotent."""
        with self._cond:
            if not self._open:
                return
            self._closing = True
            self._drain_deadline = time.monotonic() + self.drain_timeout
        self._poke()
        if self._task is not None:
            try:
                await asyncio.wait_for(
                    asyncio.shield(self._task), self.drain_timeout + self.batch_timeout + 5
                )
            except asyncio.TimeoutError:
                self._task.cancel()
        with self._cond:
            left = len(self._buffer) + self._spilled
            self._open = False
        if left:
            where = "kept in the journal" if self._journal is not None else "LOST (no journal)"
            logger.error("write queue closed with %d writes not committed: %s", left, where)
        if self._journal is not None:
            self._journal.close()

    close = aclose

    async def _run(self) -> None:
        assert self._wakeup is not None
        while True:
            with self._cond:
                batch = self._take_batch(self._flushers > 0)
                idle = not batch and self._closing and not self._buffer and not self._spilled
                wait = self._wait_time()
            if idle:
                return
            if not batch:
                self._wakeup.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), wait if wait is not None else 1.0)
                continue
            if self._journal is not None:
                self._journal.sync()
            if not await self._process(batch):
                return

    async def _process(self, batch: list[Record]) -> bool:
        delay = 0.05
        while True:
            try:
                written, duplicates = await self._attempt(batch)
            except Exception as exc:
                if is_bad_write(exc):
                    if len(batch) == 1:
                        failed = self._set_aside(batch[0], exc)
                        self._done_with(batch, 0, 0)
                        logger.error("write set aside (%s): %s", failed.code, failed.error)
                        if self._on_failed is not None:
                            self._call_hook(self._on_failed, failed)
                        return True
                    middle = len(batch) // 2
                    return await self._process(batch[:middle]) and await self._process(
                        batch[middle:]
                    )
                self.counters["retried"] += 1
                wait = exc.retry_after if isinstance(exc, CircuitOpen) else delay
                if self._closing and time.monotonic() + wait > self._drain_deadline:
                    return False
                await asyncio.sleep(wait)
                delay = min(delay * 2, 2.0)
                continue
            self._done_with(batch, written, duplicates)
            if self._on_commit is not None:
                self._call_hook(self._on_commit, batch)
            return True

    def _done_with(self, batch: Sequence[Record], written: int, duplicates: int) -> None:
        with self._cond:
            self._finish(batch, written, duplicates)
            if self._journal is not None:
                self._journal.mark_done(batch[-1].seq)
        self._progress.set()

    async def _attempt(self, batch: list[Record]) -> tuple[int, int]:
        breaker = getattr(self.pool, "breaker", None)
        permit = breaker.acquire() if breaker is not None else 0
        started = time.monotonic()
        try:
            result = await self._transaction(batch)
        except BaseException as exc:
            if breaker is not None:
                breaker.record(permit, exc, started)
            raise
        if breaker is not None:
            breaker.record(permit, None, started)
        return result

    async def _transaction(self, batch: list[Record]) -> tuple[int, int]:
        create, claim, prune = self._ledger_sql()
        async with self.pool.connection(timeout=self.batch_timeout) as conn:
            if not self._ledger_ready:
                await conn.execute(create)
                self._ledger_ready = True
            if time.monotonic() - self._last_prune > 600:
                await conn.execute(prune, (self.ledger_retention,))
                self._last_prune = time.monotonic()
            async with conn.transaction():
                todo, duplicates = batch, 0
                keys = list(dict.fromkeys(r.key for r in batch if r.key is not None))
                if keys:
                    cur = await conn.execute(claim, (keys,))
                    fresh = {row[0] for row in await cur.fetchall()}
                    todo, duplicates = self._dedupe(batch, fresh)
                cur = conn.cursor()
                for statement, params in runs(todo):
                    copy = (
                        copy_statement(statement, len(params[0]))
                        if self.use_copy and len(params) >= COPY_MIN_ROWS
                        else None
                    )
                    if copy is not None:
                        async with cur.copy(copy) as writer:
                            for row in params:
                                await writer.write_row(row)
                    else:
                        await cur.executemany(statement, params)  # the caller's SQL
        self.counters["batches"] += 1
        return len(todo), duplicates
