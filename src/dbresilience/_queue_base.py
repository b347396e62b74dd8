"""What the sync and async write queues share and that does no I/O.

Settings, the bounded buffer of submitted writes, batching (runs of one statement shape, COPY
for plain inserts), the triage of failures (retry the batch, or find and set aside the one bad
write), the ledger's SQL and the counters of ``stats()``.
"""

from __future__ import annotations

import collections
import itertools
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from psycopg import sql

from dbresilience._classify import ErrorKind, classify
from dbresilience._errors import QueueClosed, QueueFull
from dbresilience._events import logger
from dbresilience._journal import Journal, Record
from dbresilience._lifecycle import Lifecycle, ResourceState
from dbresilience._validate import (
    callable_or_none,
    instance_or_none,
    non_empty_str,
    one_of,
    positive_int,
    seconds,
)

# QueueFull and QueueClosed are defined in _errors and still importable from here.
__all__ = ["FailedWrite", "QueueBase", "QueueClosed", "QueueFull"]

_OPEN = ResourceState.OPEN

# Failures that say nothing about the write itself: the batch is retried, never set aside.
_RETRY_KINDS = frozenset(
    {
        ErrorKind.UNREACHABLE,
        ErrorKind.CONNECT_TIMEOUT,
        ErrorKind.AUTH_FAILED,
        ErrorKind.DATABASE_MISSING,
        ErrorKind.TLS_ERROR,
        ErrorKind.TOO_MANY_CONNECTIONS,
        ErrorKind.CONNECTION_LOST,
        ErrorKind.CONNECTION_CLOSED,
        ErrorKind.IDLE_TIMEOUT,
        ErrorKind.READ_ONLY,
        ErrorKind.POOL_TIMEOUT,
        ErrorKind.QUERY_TIMEOUT,
        ErrorKind.SERIALIZATION_FAILURE,
        ErrorKind.DEADLOCK,
        ErrorKind.LOCK_NOT_AVAILABLE,
        ErrorKind.COMPLETION_UNKNOWN,
        ErrorKind.INSUFFICIENT_RESOURCES,
        ErrorKind.CIRCUIT_OPEN,
    }
)

# INSERT INTO table (a, b) VALUES (%s, %s) and nothing else: COPY gives the same result.
_PLAIN_INSERT = re.compile(
    r"""^\s*insert\s+into\s+
        (?P<table>(?:"[^"]+"|[a-z_][a-z0-9_$]*)(?:\.(?:"[^"]+"|[a-z_][a-z0-9_$]*))?)
        \s*\((?P<cols>[^()]*)\)\s*
        values\s*\(\s*(?P<marks>%s(?:\s*,\s*%s)*)\s*\)\s*;?\s*$""",
    re.IGNORECASE | re.VERBOSE,
)
COPY_MIN_ROWS = 64  # below this, executemany's pipeline is as fast


@dataclass(frozen=True, slots=True)
class FailedWrite:
    """A write that can never succeed, set aside with its error (``queue.failed_writes()``)."""

    sql: str
    params: Any
    key: str | None
    error: str
    code: str


def copy_statement(statement: str, n_params: int) -> str | None:
    """``COPY table (cols) FROM STDIN`` when *statement* is a plain parameterised INSERT."""
    m = _PLAIN_INSERT.match(statement)
    if m is None:
        return None
    cols = [c.strip() for c in m.group("cols").split(",")]
    if len(cols) != m.group("marks").count("%s") or len(cols) != n_params or not all(cols):
        return None
    return f"COPY {m.group('table')} ({', '.join(cols)}) FROM STDIN"


def runs(batch: Sequence[Record]) -> Iterator[tuple[str, list[Any]]]:
    """Consecutive writes of one statement, with their parameters (order kept)."""
    current: str | None = None
    params: list[Any] = []
    for record in batch:
        if record.sql != current:
            if current is not None:
                yield current, params
            current, params = record.sql, []
        params.append(record.params)
    if current is not None:
        yield current, params


def is_bad_write(exc: BaseException) -> bool:
    """True when *exc* condemns the write itself (bad SQL or data, a constraint), not the
    database's availability: such a write is found by bisection and set aside."""
    if not isinstance(exc, Exception):
        return False
    return classify(exc).kind not in _RETRY_KINDS


class QueueBase(Lifecycle):
    """Settings, buffer, journal and counters of a write queue (no database I/O)."""

    #: the worker's wake-up (``dbresilience._acompat.Signal`` / ``ASignal``), set by the twin
    _wakeup: Any

    def __init__(
        self,
        pool: Any,
        *,
        batch_size: int = 500,
        flush_interval: float | timedelta = 0.05,
        max_pending: int = 100_000,
        journal: str | None = None,
        fsync: str = "batch",
        on_full: str = "block",
        block_timeout: float | timedelta = 5.0,
        drain_timeout: float | timedelta = 10.0,
        ledger_table: str = "dbr_write_ledger",
        ledger_retention: float | timedelta = 7 * 24 * 3600.0,
        batch_timeout: float | timedelta = 30.0,
        on_failed: Callable[[FailedWrite], None] | None = None,
        on_commit: Callable[[Sequence[Record]], None] | None = None,
        use_copy: bool = True,
    ) -> None:
        """Validate the settings (``TypeError``/``ValueError`` naming the argument); no I/O."""
        self.pool = pool
        self.batch_size = positive_int("batch_size", batch_size)
        self.flush_interval = seconds("flush_interval", flush_interval)
        self.max_pending = positive_int("max_pending", max_pending)
        self.on_full = one_of("on_full", on_full, ("block", "raise", "spill"))
        instance_or_none("journal", journal, (str, os.PathLike), "a path")
        if on_full == "spill" and journal is None:
            raise ValueError("on_full='spill' needs a journal: spilled writes live only there")
        if not re.fullmatch(
            r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?", non_empty_str("ledger_table", ledger_table)
        ):
            raise ValueError(
                f"ledger_table must be a plain (schema.)table name, got {ledger_table!r}"
            )
        self.block_timeout = seconds("block_timeout", block_timeout, allow_zero=True)
        self.drain_timeout = seconds("drain_timeout", drain_timeout, allow_zero=True)
        self.ledger_retention = seconds("ledger_retention", ledger_retention)
        self.batch_timeout = seconds("batch_timeout", batch_timeout)
        self.use_copy = bool(use_copy)
        self._journal = None if journal is None else Journal(journal, fsync)
        self._state = ResourceState.UNOPENED  # in __init__: keeps the instance layout fixed
        self._on_failed = callable_or_none("on_failed", on_failed)
        self._on_commit = callable_or_none("on_commit", on_commit)
        schema, _, table = ledger_table.rpartition(".")
        self._ledger = sql.Identifier(schema, table) if schema else sql.Identifier(table)
        self._buffer: collections.deque[Record] = collections.deque()
        self._cond = threading.Condition()
        self._seq = 0  # last seq handed out
        self._done = 0  # every seq <= this is committed or set aside
        self._submitted_at: dict[int, float] = {}
        self._failed_writes: collections.deque[FailedWrite] = collections.deque(maxlen=1000)
        self._closing = False
        # spill mode: writes past max_pending live only in the journal, from this offset on
        self._spilled = 0
        self._spill_offset = 0
        self._spill_seq = 0
        self.counters = {
            "submitted": 0,
            "written": 0,
            "duplicates": 0,
            "failed": 0,
            "retried": 0,
            "batches": 0,
            "replayed": 0,
            "spilled": 0,
        }

    # --- submitting (thread-safe, never does database I/O) --------------------------------------

    def submit(
        self, statement: str, params: Sequence[Any] | None = (), *, key: str | None = None
    ) -> None:
        """Queue a write; returns once it is buffered (and journaled, with ``journal=``).

        *params* must be JSON-serialisable when a journal is used. *key* makes the write take
        effect at most once per key, across retries, restarts and instances. Raises
        :class:`QueueFull` (``on_full="raise"``, or ``"block"`` past ``block_timeout``),
        :class:`QueueClosed`, ``TypeError`` for a bad statement, params or key.
        """
        if not isinstance(statement, str):
            raise TypeError(f"statement must be a str, got {type(statement).__name__}")
        if key is not None and not isinstance(key, str):
            raise TypeError(f"key must be a str or None, got {type(key).__name__}")
        params = list(params) if params is not None else []
        with self._cond:
            if self._state is not _OPEN or self._closing:  # not the property: a hot path
                raise QueueClosed("the write queue is not open")
            if self._spilled or len(self._buffer) >= self.max_pending:
                if self.on_full == "spill":
                    self._spill(statement, params, key)  # in order: once spilling, keep spilling
                    return
                self._wait_for_room()
            self._seq += 1
            record = Record(self._seq, statement, params, key)
            if self._journal is not None:
                try:
                    self._journal.append(record)
                except (TypeError, ValueError) as exc:
                    self._seq -= 1
                    raise TypeError(
                        f"params must be JSON-serialisable with a journal: {exc}"
                    ) from None
            self._buffer.append(record)
            self._submitted_at[record.seq] = time.monotonic()
            self.counters["submitted"] += 1
            pending = len(self._buffer)
            if pending == 1 or pending == self.batch_size:
                # a lone write starts the worker's flush_interval clock; a full batch is due now
                self._wakeup.notify()

    def _spill(self, statement: str, params: list[Any], key: str | None) -> None:
        """Under the condition: journal the write without keeping it in memory."""
        assert self._journal is not None
        self._seq += 1
        record = Record(self._seq, statement, params, key)
        try:
            offset = self._journal.append_at(record)
        except (TypeError, ValueError) as exc:
            self._seq -= 1
            raise TypeError(f"params must be JSON-serialisable with a journal: {exc}") from None
        if not self._spilled:
            self._spill_offset, self._spill_seq = offset, record.seq
        self._spilled += 1
        self.counters["submitted"] += 1
        self.counters["spilled"] += 1

    def _unspill(self) -> None:
        """Under the condition: bring spilled writes back while there is room, in order."""
        assert self._journal is not None
        room = self.max_pending - len(self._buffer)
        if room <= 0 or not self._spilled:
            return
        records, self._spill_offset = self._journal.read_from(
            self._spill_offset, min(room, self._spilled), self._spill_seq
        )
        now = time.monotonic()
        for record in records:
            self._buffer.append(record)
            self._submitted_at[record.seq] = now
        self._spilled -= len(records)
        if records:
            self._spill_seq = records[-1].seq + 1

    def _wait_for_room(self) -> None:
        if self.on_full == "raise":
            raise QueueFull(f"{self.max_pending} writes are already waiting")
        deadline = time.monotonic() + self.block_timeout
        while len(self._buffer) >= self.max_pending:
            left = deadline - time.monotonic()
            if left <= 0 or not self._is_open:
                raise QueueFull(
                    f"{self.max_pending} writes still waiting after {self.block_timeout:.2f} s"
                )
            self._cond.wait(left)

    # --- the worker's side ------------------------------------------------------------------------

    def _take_batch(self, flush_requested: bool) -> list[Record]:
        """Under the condition: the next batch if one is due, else an empty list."""
        if self._spilled and len(self._buffer) < self.max_pending // 2 + 1:
            self._unspill()
        if not self._buffer:
            return []
        oldest = self._submitted_at.get(self._buffer[0].seq, 0.0)
        due = (
            len(self._buffer) >= self.batch_size
            or time.monotonic() - oldest >= self.flush_interval
            or flush_requested
            or self._closing
        )
        if not due:
            return []
        # islice walks the deque once; indexing it (buffer[i]) walks its blocks every time
        return list(itertools.islice(self._buffer, self.batch_size))

    def _wait_time(self) -> float | None:
        """How long the worker may sleep before the oldest write is due."""
        if not self._buffer:
            return None
        oldest = self._submitted_at.get(self._buffer[0].seq, time.monotonic())
        return max(0.0, self.flush_interval - (time.monotonic() - oldest))

    def _finish(self, batch: Sequence[Record], written: int, duplicates: int) -> None:
        """Under the condition: *batch* (the head of the buffer) is done."""
        for _ in batch:
            record = self._buffer.popleft()
            self._submitted_at.pop(record.seq, None)
        self._done = batch[-1].seq
        self.counters["written"] += written + duplicates
        self.counters["duplicates"] += duplicates
        self._cond.notify_all()

    def _set_aside(self, record: Record, exc: BaseException) -> FailedWrite:
        c = classify(exc)
        failed = FailedWrite(
            record.sql, record.params, record.key, f"{type(exc).__name__}: {exc}", c.code
        )
        self._failed_writes.append(failed)
        self.counters["failed"] += 1
        return failed

    def _start_state(self) -> None:
        """Under the condition, on open: replay the journal first, reset the worker's state."""
        self._spilled = 0  # spilled writes are in the journal: the replay brings them back
        if self._journal is not None:
            replay, top = self._journal.open()
            now = time.monotonic()
            for record in replay:
                self._buffer.append(record)
                self._submitted_at[record.seq] = now
            self._seq = max(self._seq, top)
            self._done = replay[0].seq - 1 if replay else self._seq
            self.counters["replayed"] += len(replay)
        else:
            self._done = self._seq
        self._state = ResourceState.OPEN
        self._closing = False
        self._flushers = 0
        self._ledger_ready = False
        self._last_prune = 0.0

    @staticmethod
    def _call_hook(hook: Callable[[Any], None], arg: Any) -> None:
        """Run a user hook; one that raises is logged, never allowed to stop the worker."""
        try:
            hook(arg)
        except Exception:
            logger.exception("write queue hook %r failed", hook)

    def failed_writes(self) -> list[FailedWrite]:
        """The last (up to 1000) writes set aside, with their errors."""
        return list(self._failed_writes)

    def _ledger_sql(self) -> tuple[sql.Composed, sql.Composed, sql.Composed]:
        create = sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (key text PRIMARY KEY, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        ).format(self._ledger)
        claim = sql.SQL(
            "INSERT INTO {} (key) SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING RETURNING key"
        ).format(self._ledger)
        prune = sql.SQL(
            "DELETE FROM {} WHERE applied_at < now() - %s * interval '1 second'"
        ).format(self._ledger)
        return create, claim, prune

    @staticmethod
    def _dedupe(batch: Sequence[Record], fresh: set[str]) -> tuple[list[Record], int]:
        """The writes to apply: unkeyed ones, and the first write of each key not yet applied."""
        todo: list[Record] = []
        seen: set[str] = set()
        for record in batch:
            if record.key is None:
                todo.append(record)
            elif record.key in fresh and record.key not in seen:
                seen.add(record.key)
                todo.append(record)
        return todo, len(batch) - len(todo)

    def stats(self) -> dict[str, Any]:
        """``submitted``, ``written`` (applied, or skipped as a duplicate key), ``pending``,
        ``failed`` (set aside), ``retried``, ``duplicates``, ``batches``, ``replayed`` (from the
        journal), ``spilled`` (kept in the journal only, ``on_full="spill"``),
        ``oldest_pending_age`` (s) and ``journal_bytes``. Always
        ``written + pending + failed == submitted + replayed``."""
        with self._cond:
            pending = len(self._buffer) + self._spilled
            oldest = (
                time.monotonic() - self._submitted_at.get(self._buffer[0].seq, time.monotonic())
                if self._buffer
                else 0.0
            )
        return {
            **self.counters,
            "pending": pending,
            "oldest_pending_age": oldest,
            "journal_bytes": self._journal.bytes if self._journal is not None else 0,
        }
