"""``AsyncWriteQueue``: fire-and-forget writes that still lose nothing. Locking and I/O only.

Settings, batching, the journal's use and the counters live in :mod:`dbresilience._queue_base`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, Literal

import psycopg

from dbresilience import _instrument
from dbresilience._acompat import ASignal, AWorker, aspawn, await_worker
from dbresilience._classify import classify
from dbresilience._errors import CircuitOpen, KeyReused, LedgerUnavailable, require
from dbresilience._events import CircuitState, logger
from dbresilience._journal import Record, is_stream_url
from dbresilience._lifecycle import ResourceState
from dbresilience._pool_async import AsyncPool
from dbresilience._queue_base import (
    COPY_MIN_ROWS,
    POISON_AFTER,
    SHAPE_SQL,
    ACommitHook,
    AFailedHook,
    Ahead,
    FailedWrite,
    LedgerSQL,
    QueueBase,
    copy_statement,
    fast_shape,
    fast_target,
    is_bad_write,
    is_timeout,
    keyed_count,
    runs,
)
from dbresilience._serialize import Serializer
from dbresilience._validate import instance_or_none, label, non_empty_str, positive_int, seconds

if True:  # ASYNC
    import asyncio
    import inspect
else:
    import atexit
    import signal
    from types import FrameType

__all__ = ["AsyncWriteQueue"]

_COMPACT_BYTES = 16 * 1024 * 1024
_LEDGER_LOCK = 0x64627251  # pg_advisory_xact_lock key serialising the ledger's creation


class AsyncWriteQueue(QueueBase):
    """Fire-and-forget writes over a :class:`dbresilience.AsyncPool`, batched, losing nothing.

    ``submit(sql, params, key=...)`` returns at once (a few microseconds); a background worker
    writes batches of up to ``batch_size`` (or whatever is ``flush_interval`` old) in one
    transaction each, the whole transaction in one pipeline: a run of a plain single-row
    ``INSERT … VALUES (%s, …)`` as one ``INSERT … SELECT * FROM unnest(…)`` storing what one
    INSERT per row would (see :func:`dbresilience._queue_base.fast_insert`; ``use_unnest``),
    anything else through ``executemany``; ``use_copy=True`` opts in to ``COPY``.

    - ``key``: the write takes effect at most once per key, across retries, restarts and
      instances (a ledger table, ``ledger_table``, written in the same transaction; rows older
      than ``ledger_retention`` are pruned).
    - Transient failures (the database down, a lost connection, a deadlock, the pool's breaker
      open …) retry the batch with backoff, for as long as it takes; a commit-unknown failure
      is safe for keyed writes (the ledger) and at-least-once for unkeyed ones.
    - A write that can never succeed (a constraint, bad SQL, bad data) is found by bisecting
      its batch, set aside with its error (``failed_writes()``, ``on_failed``, counted in
      ``stats()["failed"]``) and the rest commit.
    - ``journal=path``: every write reaches the OS before ``submit`` returns (see
      :mod:`dbresilience._journal`); opening a queue on the same journal applies what had not
      been committed, first. The journal is compacted as it grows.
    - ``journal="redis://host:port/db"`` (``stream=`` names it): a journal on a Redis stream
      shared by every instance; any instance drains it into PostgreSQL (one at a time, in
      stream order), or none does (``drain=False``: append only, for short-lived functions,
      with ``dbresilience queue drain`` applying). See ``docs/queue.md``.
    - Leaving the block (``aclose()``) drains within ``drain_timeout``; what is left stays in
      the journal, and is reported.

    The asyncio queue's ``submit`` is a plain method, not a coroutine: it never blocks the event
    loop, so ``on_full`` is ``"raise"`` (the default there) or ``"spill"``; its worker is a task
    held by a strong reference. The threaded queue's worker is a daemon thread, and its
    ``on_full`` defaults to ``"block"``.
    """

    def __init__(
        self,
        pool: AsyncPool | None,
        *,
        batch_size: int = 5000,
        flush_interval: float | timedelta = 0.05,
        max_pending: int = 100_000,
        journal: str | os.PathLike[str] | None = None,
        fsync: Literal["always", "batch", "never"] = "batch",
        on_full: Literal["block", "raise", "spill"] | None = None,
        block_timeout: float | timedelta = 5.0,
        drain_timeout: float | timedelta = 10.0,
        ledger_table: str = "dbr_queue_ledger",
        ledger_retention: float | timedelta = 7 * 24 * 3600.0,
        batch_timeout: float | timedelta = 30.0,
        on_failed: AFailedHook | None = None,
        on_commit: ACommitHook | None = None,
        use_copy: bool = False,
        use_unnest: bool = True,
        serializer: Serializer | None = None,
        stream: str = "dbr:queue",
        drain: bool = True,
        max_stream_len: int = 1_000_000,
        lease_ttl: float | timedelta = 10.0,
        fallback_journal: str | os.PathLike[str] | None = None,
        name: str | None = None,
    ) -> None:
        """See the class docstring and ``docs/queue.md``. ``on_full`` defaults to ``"raise"``
        for ``AsyncWriteQueue`` and ``"block"`` for ``WriteQueue``. ``AsyncWriteQueue``'s
        ``on_commit`` and ``on_failed`` may be coroutine functions: the worker awaits them (at
        most ``batch_timeout`` each) before its next batch. ``on_commit`` has run for a batch
        before :meth:`flush` counts that batch as done. *pool* may be None with
        ``journal="redis://…"`` and ``drain=False``. *name* is what metrics, events and the
        repr call the queue (default: its pool's name)."""
        self._name = None if name is None else label("name", name)
        if True:  # ASYNC
            on_full = "raise" if on_full is None else on_full
            if on_full == "block":
                raise ValueError(
                    "on_full must be 'raise' or 'spill' for AsyncWriteQueue: submit() cannot block"
                )
        else:
            on_full = "block" if on_full is None else on_full
        shared = is_stream_url(journal)
        if pool is None and not (shared and drain is False):
            raise TypeError("pool is required unless journal='redis://…' and drain=False")
        if shared and on_full == "spill":
            raise ValueError("on_full='spill' needs a file journal; a Redis journal holds back")
        super().__init__(
            pool,
            batch_size=batch_size,
            flush_interval=flush_interval,
            max_pending=max_pending,
            journal=None if shared else journal,
            fsync=fsync,
            on_full=on_full,
            block_timeout=block_timeout,
            drain_timeout=drain_timeout,
            ledger_table=ledger_table,
            ledger_retention=ledger_retention,
            batch_timeout=batch_timeout,
            on_failed=on_failed,
            on_commit=on_commit,
            use_copy=use_copy,
            use_unnest=use_unnest,
            serializer=serializer,
        )
        self._wakeup = ASignal()  # the worker waits on it: a due batch, a flush, closing
        self._progress = ASignal()  # flush() waits on it: a batch committed or set aside
        self._worker: AWorker | None = None
        self._lease_lapsed = False  # the stream's lease lapsed with the batch in hand
        if shared:  # a Redis stream: redis-py is the redis extra's, so say so here
            require("redis", extra="redis", what=f"{type(self).__name__}(journal='redis://...')")
            from dbresilience._journal_redis_async import AsyncStreamJournal
            from dbresilience._journal_redis_base import check_stream_url

            if not isinstance(drain, bool):
                raise TypeError(f"drain must be a bool, got {type(drain).__name__}")
            self._stream = AsyncStreamJournal(
                check_stream_url("journal", str(journal), type(self).__name__),
                stream=non_empty_str("stream", stream),
                max_len=positive_int("max_stream_len", max_stream_len),
                max_buffer=self.max_pending,
                lease_ttl=seconds("lease_ttl", lease_ttl),
                on_full=self.on_full,
                block_timeout=self.block_timeout,
                drain=drain,
                serializer=self.serializer,
                fallback=instance_or_none(
                    "fallback_journal", fallback_journal, (str, os.PathLike), "a path"
                ),
                fsync="never" if fsync == "batch" else fsync,
            )
        elif fallback_journal is not None:
            raise ValueError("fallback_journal is for journal='redis://…' (held writes)")

    async def open(self) -> AsyncWriteQueue:
        """Replay the journal (if any) and start the worker; returns self. Idempotent."""
        with self._cond:
            if self._is_open:
                return self
            self._start_state()
        hooks = getattr(self.pool, "_recovery_hooks", None)
        if isinstance(hooks, list):  # the pool connects again: cut a retry's backoff short
            hooks.append(self._wakeup.notify)
        if self._stream is not None:
            await self._stream.open()
            if not self._stream.drain:
                return self
        self._worker = aspawn(self._supervise, "dbr-write-queue")
        return self

    async def __aenter__(self) -> AsyncWriteQueue:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def flush(self, timeout: float | timedelta = 5.0) -> bool:
        """True once everything submitted so far is committed (or set aside); False if that
        did not happen within *timeout* (seconds or a ``timedelta``; anything up to
        ``timedelta.max`` is accepted and capped at a year)."""
        deadline = time.monotonic() + seconds("timeout", timeout, allow_zero=True)
        if self._stream is not None:  # in the stream (append only) or applied, by anyone
            return bool(await self._stream.flushed(deadline, drained=self._stream.drain))
        with self._cond:
            target = self._seq
            self._flushers += 1
        self._wakeup.notify()
        try:
            while True:
                seen = self._progress.count
                if self._done >= target:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                await self._progress.wait(seen, left)
        finally:
            with self._cond:
                self._flushers -= 1

    async def aclose(self) -> None:
        """Drain within ``drain_timeout``, stop the worker, close the journal. Idempotent.

        Writes still pending after that stay in the journal (replayed by the next queue
        opened on it) or, without a journal, are lost; either way they are logged.
        """
        with self._cond:
            if not self._is_open:
                return
            self._closing = True
            self._drain_deadline = time.monotonic() + self.drain_timeout
        self._wakeup.notify()
        if not await await_worker(self._worker, self.drain_timeout + self.batch_timeout + 5):
            logger.error("the write queue's worker did not stop in time")
            if True:  # ASYNC
                if self._worker is not None:
                    self._worker.cancel()
        hooks = getattr(self.pool, "_recovery_hooks", None)
        if isinstance(hooks, list):
            with contextlib.suppress(ValueError):
                hooks.remove(self._wakeup.notify)
        with self._cond:
            left = len(self._buffer) + self._spilled
            self._state = ResourceState.CLOSED
            self._cond.notify_all()
        if self._stream is not None:
            left = await self._stream.aclose(self.drain_timeout)
        if left:
            where = "kept in the journal" if self._journal is not None else "LOST (no journal)"
            if self._stream is not None:
                where = "LOST (held in memory while Redis could not take them)"
            logger.error("write queue closed with %d writes not committed: %s", left, where)
        if self._journal is not None:
            self._journal.close()

    if True:  # ASYNC
        close = aclose
    else:

        def close_on_exit(self) -> None:
            """Drain on interpreter exit and on SIGTERM (then the previous SIGTERM handler
            runs)."""
            atexit.register(self.close)
            previous = signal.getsignal(signal.SIGTERM)

            def on_sigterm(signum: int, frame: FrameType | None) -> None:
                self.close()
                if callable(previous):
                    previous(signum, frame)
                else:
                    raise SystemExit(128 + signum)

            signal.signal(signal.SIGTERM, on_sigterm)

    # --- the worker -----------------------------------------------------------------------------

    async def _supervise(self) -> None:
        """Run the worker; when it fails outside a batch's own triage (a bug, a journal that
        cannot be read back), log it, count it and start it again, with backoff."""
        delay = 0.1
        while True:
            try:
                await self._run()
                return
            except Exception as exc:
                with self._cond:
                    self._note_worker_failure(exc)
                    closing = self._closing
                logger.error(
                    "write queue worker failed (%s); restarting it in %.1f s",
                    type(exc).__name__,
                    delay,
                    exc_info=True,
                )
                if closing and time.monotonic() + delay > self._drain_deadline:
                    return
                seen = self._wakeup.count
                await self._wakeup.wait(seen, delay)
                delay = min(delay * 2, 5.0)

    async def _run(self) -> None:
        await self._prepare()
        if self._stream is not None:
            await self._run_stream()
            return
        while True:
            seen = self._wakeup.count
            with self._cond:
                batch = self._take_batch(self._flushers > 0)
                idle = not batch and self._closing and not self._buffer and not self._spilled
                wait = self._wait_time()
            if idle:
                return
            if not batch:
                await self._wakeup.wait(seen, wait)
                continue
            if self._journal is not None:
                self._journal.sync()
            if not await self._process(batch):
                return  # closing, and the drain deadline passed while retrying

    async def _prepare(self) -> None:
        """Before the first batch: create the ledger and prune it, so that a lone first write
        pays for its own transaction only. A failure is left to the first batch (which does
        both when they are not done, and retries)."""
        try:
            async with self.pool.connection(timeout=min(1.0, self.batch_timeout)) as conn:
                await self._maintain(conn, self._ledger_sql())
        except Exception:
            logger.debug("write queue: ledger not prepared before the first batch", exc_info=True)

    async def _maintain(self, conn: Any, ledger: LedgerSQL) -> None:
        """Create the ledger if not done yet; prune it every ten minutes."""
        if not self._ledger_ready:
            await self._ensure_ledger(conn, ledger)
        if time.monotonic() - self._last_prune > 600:
            await conn.execute(ledger.prune, (self.ledger_retention,))
            self._last_prune = time.monotonic()

    async def _run_stream(self) -> None:
        """Drain the shared stream: batches in stream order while this instance holds its
        lease; on closing, finish the batch in hand and leave the rest to the others."""
        with self._cond:  # a restarted worker: the batch it held is claimed again from Redis
            self._buffer.clear()
            self._submitted_at.clear()
        self._stream.reclaim()
        while not self._closing:
            batch = await self._stream.receive_batch(self.batch_size, self.flush_interval)
            if not batch:
                continue
            with self._cond:
                now = time.monotonic()
                for record in batch:
                    self._buffer.append(record)
                    self._submitted_at[record.seq] = now
                self.counters["received"] += len(batch)
            self._lease_lapsed = False
            if not await self._process(batch):
                return
            if self._lease_lapsed:  # the rest of the batch is the lease holder's now
                with self._cond:
                    left = len(self._buffer)
                    self._buffer.clear()
                    self._submitted_at.clear()
                self._stream.reclaim()
                logger.warning(
                    "write queue: the drain lease lapsed; %d writes left to its new holder",
                    left,
                )

    async def _process(self, batch: list[Record]) -> bool:
        """Commit *batch*: retry what says nothing about the writes, bisect to set aside a write
        the database refuses, and isolate one that keeps timing out while the database answers.
        False when closing and the drain deadline passed."""
        delay = 0.05
        timeouts = 0
        while True:
            if self._lease_lapsed or (self._stream is not None and not self._stream.holds_lease()):
                # another instance may hold the stream's lease and have claimed this batch:
                # committing it too would apply an unkeyed write twice, a keyed one out of order
                self._lease_lapsed = True
                return True
            started = time.monotonic()
            try:
                written, duplicates, reused = await self._attempt(batch)
            except Exception as exc:
                if self._ledger_conflict(exc):
                    # a key of the batch was in the ledger already (a retry of a write, a
                    # replay, another instance), or the write's own unique violation: rolled
                    # back whole, the batch goes again at once with the careful claim, whose
                    # answer decides (a write's own violation is then its verdict)
                    continue
                self._shapes.clear()  # a table altered under a cached rewrite: read it again
                bad = is_bad_write(exc)
                if not bad and is_timeout(exc):
                    timeouts += 1
                    if timeouts >= POISON_AFTER:
                        bad = len(batch) > 1 or await self._database_answers()
                if bad:
                    if len(batch) == 1:
                        await self._done_with(batch, 0, 0, [(batch[0], exc)])
                        return True
                    middle = len(batch) // 2
                    return await self._process(batch[:middle]) and await self._process(
                        batch[middle:]
                    )
                self.counters["retried"] += 1
                wait = exc.retry_after if isinstance(exc, CircuitOpen) else delay
                seen = self._wakeup.count
                if self._closing and time.monotonic() + wait > self._drain_deadline:
                    return False
                await self._wakeup.wait(seen, wait)  # closing cuts the backoff short
                delay = min(delay * 2, 2.0)
                continue
            if self._on_commit is not None:  # before flush() can return: it sees the hook's work
                await self._run_hook(self._on_commit, batch)
            await self._done_with(batch, written, duplicates, [(r, _reused(r)) for r in reused])
            if _instrument.hooks:
                _instrument.emit(
                    _instrument.QueueBatchCommitted(
                        self.name, written, time.monotonic() - started, self._pending()
                    )
                )
            return True

    async def _run_hook(self, hook: Callable[[Any], object], arg: Any) -> None:
        """Run a user hook, awaiting it (at most ``batch_timeout``) if it returns an awaitable;
        one that raises or overruns is logged, never allowed to stop the worker."""
        try:
            if True:  # ASYNC
                result = hook(arg)
                if inspect.isawaitable(result):
                    await asyncio.wait_for(result, self.batch_timeout)
            else:
                hook(arg)
        except Exception:
            logger.exception("write queue hook %r failed", hook)

    async def _database_answers(self) -> bool:
        """Whether the database answers a trivial query now: then a write that keeps timing out
        is the write's own problem (a lock never granted, a pathological trigger)."""
        try:
            await self.pool.fetchone("select 1", timeout=min(5.0, self.batch_timeout))
        except Exception:
            return False
        return True

    async def _done_with(
        self,
        batch: Sequence[Record],
        written: int,
        duplicates: int,
        set_aside: Sequence[tuple[Record, BaseException]] = (),
    ) -> None:
        """*batch* (the head of the buffer) is committed, or its one write set aside."""
        if self._stream is not None:  # acknowledged in the stream only after COMMIT
            await self._stream.done(
                batch,
                set_aside,
                lambda: self._closing and time.monotonic() > self._drain_deadline,
            )
        failed: list[FailedWrite] = []
        with self._cond:
            for record, exc in set_aside:
                failed.append(self._set_aside(record, exc))
            self._finish(batch, written, duplicates)
            if self._journal is not None:
                try:
                    self._journal.mark_done(batch[-1].seq)
                    if self._journal.bytes > _COMPACT_BYTES and not self._spilled:
                        self._journal.compact(list(self._buffer), self._done)
                    self._journal_error = None
                except OSError as exc:
                    self._note_journal_error(exc)
        self._progress.notify()
        if self._on_failed is not None:
            for item in failed:
                await self._run_hook(self._on_failed, item)

    async def _attempt(self, batch: list[Record]) -> tuple[int, int, list[Record]]:
        """One transaction for *batch*: ``(applied, skipped as already applied, key reused for
        another write)``.

        Not through the pool's breaker: the queue retries a batch for as long as the database is
        away, and those retries, counted as failures, kept the breaker that guards the
        service's reads open for its whole ``open_for`` after the database was back (a failover:
        about 300 of them, reads refused 5 s). The queue backs off on its own, woken when the
        pool connects again; a committed batch is, in turn, evidence for the breaker.
        """
        result = await self._transaction(batch)
        breaker = getattr(self.pool, "breaker", None)
        if breaker is not None and breaker.state is not CircuitState.CLOSED:
            breaker.evidence()
        return result

    async def _ensure_ledger(self, conn: Any, ledger: LedgerSQL) -> None:
        """Create the ledger table once, serialised between instances starting together (two
        concurrent CREATE TABLE IF NOT EXISTS collide on pg_type with a 23505)."""
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LEDGER_LOCK,))
                await conn.execute(ledger.create)
        except psycopg.Error as exc:
            raise LedgerUnavailable(
                f"could not create the write ledger ({classify(exc).code})"
            ) from exc
        self._ledger_ready = True

    async def _claim(
        self, conn: Any, ledger: LedgerSQL, batch: list[Record], ahead: Ahead | None = None
    ) -> tuple[list[Record], int, list[Record]]:
        """Claim the keys of *batch* in the ledger: ``(to apply, duplicates, key reused)``."""
        if ahead is not None:
            claims, arrays, keyed = ahead.claims, ahead.arrays, ahead.keyed
        else:
            claims = self._claims(batch)
            arrays = self._claim_arrays(claims) if claims else None
            keyed = keyed_count(batch)
        if not claims:
            return batch, 0, []
        if self._optimistic and len(claims) == keyed:
            # every key its own (the usual batch): claimed by a plain INSERT, whose answer the
            # batch does not wait for (one round trip, as without keys). A key already in the
            # ledger makes it fail with a unique violation, the transaction with it (nothing
            # of the batch is applied), and the batch goes again the careful way (_process)
            self._claimed_optimistically = True
            await conn.execute(ledger.insert, arrays)
            return batch, 0, []
        cur = await conn.execute(ledger.claim, arrays)
        first = await cur.fetchone()  # the answer arrives; its rows are not all parsed yet
        if cur.rowcount == len(claims) == keyed:
            # every key claimed, none twice in the batch: all of it is applied (what _dedupe
            # would answer, without its 2-4 ms a 5,000-write batch, nor the 2 ms of reading
            # the claimed keys back); the next batch may claim optimistically again
            self._optimistic = True
            return batch, 0, []
        rows = [] if first is None else [first, *await cur.fetchall()]
        fresh = {(row[0], row[1]) for row in rows}
        applied: dict[tuple[str, str], str] = {}
        if len(fresh) < len(claims):
            taken = [ident for ident in claims if ident not in fresh]
            cur = await conn.execute(ledger.applied, ([s for s, _ in taken], [k for _, k in taken]))
            applied = {(row[0], row[1]): row[2] for row in await cur.fetchall()}
        return self._dedupe(batch, claims, fresh, applied)

    async def _copy(self, conn: Any, todo: list[Record]) -> None:
        """``use_copy=True``: runs of a plain INSERT through COPY, the rest executemany."""
        cur = conn.cursor()
        for statement, params in runs(todo):
            copy = (
                copy_statement(statement, len(params[0]))
                if len(params) >= COPY_MIN_ROWS and all(type(p) is not dict for p in params)
                else None  # a dict (a replayed journal's, for %s) would be copied as its keys
            )
            if copy is not None:
                async with cur.copy(copy) as writer:
                    for row in params:
                        await writer.write_row(row)
            else:
                await _executemany(cur, statement, params)

    async def _read_shapes(self, cur: Any, work: list[tuple[str, list[Any]]]) -> None:
        """Read from the catalog what the rewrite of the statements of *work* needs (once)."""
        for statement in self._unknown_shapes(work):
            target = fast_target(statement)
            assert target is not None
            await cur.execute(SHAPE_SQL, (target[0],))
            self._shapes[statement] = fast_shape(statement, await cur.fetchone())

    async def _alone(self, conn: Any, batch: list[Record]) -> bool:
        """A batch of unkeyed writes of one rewritable statement: its one INSERT … SELECT
        FROM unnest(…) is a transaction by itself (autocommit), so it goes without BEGIN,
        COMMIT or a pipeline: one round trip, and one wait in which the worker gives up the
        GIL (each costs it up to the interpreter's 5 ms switch interval while the submitting
        thread runs). True when the batch was written so."""
        if keyed_count(batch):
            return False
        work = list(runs(batch))
        if len(work) != 1:
            return False
        await self._read_shapes(conn.cursor(), work)
        fast = self._rewrite(*work[0])
        if fast is None:
            return False
        self._ahead = None  # prepared for the pipeline only
        await conn.execute(fast[0], fast[1])
        self.counters["rewritten"] += len(batch)
        return True

    async def _pipelined(
        self, conn: Any, ledger: LedgerSQL, batch: list[Record]
    ) -> tuple[list[Record], int, list[Record], int]:
        """Inside the batch's pipeline: BEGIN, the claims, the runs, COMMIT."""
        rewritten = 0
        cur = conn.cursor()
        await cur.execute(b"BEGIN")
        ahead = self._ahead_for(batch)
        todo, duplicates, reused = await self._claim(conn, ledger, batch, ahead)
        if ahead is not None and todo is batch and self._fresh_rewrites(ahead):
            work, fasts = ahead.work, ahead.fast
        else:
            work = list(runs(todo))
            if self.use_unnest:
                await self._read_shapes(cur, work)
            fasts = [self._rewrite(*run) if self.use_unnest else None for run in work]
        for (statement, params), fast in zip(work, fasts, strict=True):
            if fast is not None:
                await cur.execute(fast[0], fast[1])
                rewritten += len(params)
            else:
                await _executemany(cur, statement, params)  # the caller's SQL
        await cur.execute(b"COMMIT")
        # every statement is on its way: while the server works on them, prepare the next
        # batch (its Python half, 10 ms a 5,000-write keyed batch, overlaps the server's)
        self._look_ahead(batch)
        return todo, duplicates, reused, rewritten

    async def _transaction(self, batch: list[Record]) -> tuple[int, int, list[Record]]:
        ledger = self._ledger_sql()
        self._claimed_optimistically = False
        async with self.pool.connection(timeout=self.batch_timeout) as conn:
            await self._maintain(conn, ledger)
            if self.use_copy:  # COPY cannot run inside a pipeline
                self._ahead = None  # prepared for the pipeline only
                async with conn.transaction():
                    todo, duplicates, reused = await self._claim(conn, ledger, batch)
                    await self._copy(conn, todo)
            elif len(batch) == 1 and batch[0].key is None and batch[0].params:
                # a lone unkeyed write (the usual one after a quiet spell): the statement by
                # itself, a transaction of its own (autocommit), without BEGIN, COMMIT or a
                # pipeline: one round trip and the least Python between flush_interval and it.
                # With parameters only: psycopg sends a statement without any by the simple
                # protocol, which would run "a; b" that a batch's extended protocol refuses
                self._ahead = None
                await _execute(conn.cursor(), batch[0].sql, batch[0].params)
                todo, duplicates, reused = batch, 0, []
            elif self.use_unnest and await self._alone(conn, batch):
                todo, duplicates, reused = batch, 0, []
            else:
                # one pipeline for the whole transaction: BEGIN, every statement and COMMIT go
                # out without waiting for each other's answers (one round trip for a batch of
                # unkeyed writes, two with keys: the ledger's answer decides what is applied;
                # a batch interleaving three statements once took 500); a run of a plain
                # INSERT is one INSERT … SELECT * FROM unnest(…), see fast_insert. After a
                # refused write the transaction is left aborted and the pool rolls it back.
                rewritten = 0
                failure: Exception | None = None
                try:
                    async with conn.pipeline():
                        try:
                            todo, duplicates, reused, rewritten = await self._pipelined(
                                conn, ledger, batch
                            )
                        except Exception as exc:
                            # surfaced early (an answer read while sending, a backend
                            # terminated mid-batch); let the pipeline end without an exception
                            # in flight (psycopg would log "error ignored terminating" with the
                            # connection's host and user) and raise this first error after it
                            failure = exc
                except psycopg.Error:
                    if failure is None:
                        raise
                if failure is not None:
                    raise failure
                self.counters["rewritten"] += rewritten
        self.counters["batches"] += 1
        return len(todo), duplicates, reused


async def _execute(cur: Any, statement: str, params: Any) -> None:
    """``cur.execute`` with psycopg's refusal to bind made the write's verdict (see
    :func:`_executemany`)."""
    try:
        await cur.execute(statement, params)
    except TypeError as exc:
        raise psycopg.ProgrammingError(f"cannot bind the parameters: {exc}") from exc


async def _executemany(cur: Any, statement: str, params: list[Any]) -> None:
    """``cur.executemany``, with psycopg's refusal to bind the parameters (a ``TypeError``: a
    mapping for ``%s`` placeholders, a list for named ones, read back from a journal that
    ``submit`` did not check) made the write's verdict: the write is set aside, where a
    ``TypeError`` would have been retried for ever, holding back every write after it."""
    try:
        await cur.executemany(statement, params)
    except TypeError as exc:
        raise psycopg.ProgrammingError(f"cannot bind the parameters: {exc}") from exc


def _reused(record: Record) -> KeyReused:
    return KeyReused(
        f"key {record.key!r} was already applied by this statement with other parameters"
    )
