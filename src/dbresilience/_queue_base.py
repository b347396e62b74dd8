"""What the sync and async write queues share and that does no I/O.

Settings, the bounded buffer of submitted writes, batching (runs of one statement shape, COPY
for plain inserts), the triage of failures (retry the batch, or find and set aside the one bad
write), the ledger's SQL and the counters of ``stats()``.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import itertools
import json
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NamedTuple

import psycopg
from psycopg import sql

from dbresilience._classify import ErrorKind, classify
from dbresilience._errors import DBResilienceError, QueueClosed, QueueFull, QueueStalled
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

# SQLSTATE classes in which the database judges the write itself: cardinality (21), data (22),
# integrity constraints (23), triggered data change (27), routine and external-routine
# exceptions (2F, 38, 39: a trigger or function refused it), syntax or access rule (42), WITH
# CHECK OPTION (44), program limits (54), feature not supported (0A), PL/pgSQL RAISE (P0). Only
# these set a write aside; anything else (the database unavailable, a lost connection, a timeout,
# the pool closed, the library's own errors, an error nobody classified) retries the batch.
_VERDICT_CLASSES = frozenset(
    {"0A", "21", "22", "23", "27", "2F", "38", "39", "42", "44", "54", "P0"}
)

# Failures that may be the write's own fault or the database's: a statement timeout (57014) or a
# lock never granted (55P03). Retried; after POISON_AFTER in a row, the batch is bisected and a
# single write that still fails this way while the database answers a probe is set aside.
_TIMEOUT_KINDS = frozenset({ErrorKind.QUERY_TIMEOUT, ErrorKind.LOCK_NOT_AVAILABLE})
POISON_AFTER = 3
_STALLED_AFTER = 3  # worker failures in a row, without a batch done, before submit refuses


class LedgerSQL(NamedTuple):
    """The ledger's statements, composed once per queue."""

    create: sql.Composed
    claim: sql.Composed
    applied: sql.Composed
    prune: sql.Composed


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
    """True when *exc* is the database's (or the driver's) verdict on the write itself: bad SQL
    or data, a constraint, a trigger's refusal. Such a write is found by bisection and set
    aside; nothing else ever condemns a write (see ``_VERDICT_CLASSES``)."""
    if not isinstance(exc, Exception) or isinstance(exc, DBResilienceError):
        return False
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate:
        return sqlstate[:2] in _VERDICT_CLASSES
    # psycopg refusing the parameters before sending anything (cannot adapt a value, wrong
    # number of placeholders): the same write fails the same way every time
    return isinstance(exc, psycopg.ProgrammingError | psycopg.DataError)


def is_timeout(exc: BaseException) -> bool:
    """True for a statement timeout or a lock not granted: maybe the write, maybe the load."""
    return isinstance(exc, Exception) and classify(exc).kind in _TIMEOUT_KINDS


@functools.lru_cache(maxsize=1024)
def scope_of(statement: str) -> str:
    """The ledger scope of a keyed write: its statement (a key protects one statement's
    effect; another statement reusing the key is another write)."""
    return hashlib.sha256(statement.encode()).hexdigest()[:16]


def digest_of(params: Any) -> str:
    """A digest of a write's parameters, to tell a retry of a write from a reused key."""
    text = json.dumps(params, default=str, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


#: hooks of the threaded queue: plain functions
CommitHook = Callable[[list[Record]], None]
FailedHook = Callable[[FailedWrite], None]
#: hooks of the asyncio queue: plain functions or coroutine functions
ACommitHook = Callable[[list[Record]], Awaitable[None] | None]
AFailedHook = Callable[[FailedWrite], Awaitable[None] | None]


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
        journal: str | os.PathLike[str] | None = None,
        fsync: str = "batch",
        on_full: str = "block",
        block_timeout: float | timedelta = 5.0,
        drain_timeout: float | timedelta = 10.0,
        ledger_table: str = "dbr_queue_ledger",
        ledger_retention: float | timedelta = 7 * 24 * 3600.0,
        batch_timeout: float | timedelta = 30.0,
        on_failed: Callable[[FailedWrite], object] | None = None,
        on_commit: Callable[[list[Record]], object] | None = None,
        use_copy: bool = False,
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
        self._worker_failures = 0  # worker failures since the last batch was done
        self._worker_error: str | None = None
        self._journal_error: str | None = None
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
            "worker_restarts": 0,
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
            if self._worker_failures >= _STALLED_AFTER:
                raise QueueStalled(
                    f"the write queue's worker failed {self._worker_failures} times in a row "
                    f"({self._worker_error}); see stats()"
                )
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
                except BaseException:  # OSError (a full disk): not accepted, not numbered
                    self._seq -= 1
                    raise
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
        except BaseException:
            self._seq -= 1
            raise
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
        self._worker_failures = 0
        self.counters["written"] += written
        self.counters["duplicates"] += duplicates
        self._cond.notify_all()

    def _set_aside(self, record: Record, exc: BaseException) -> FailedWrite:
        """Under the condition: keep *record* with its error in ``failed_writes()``; log it by
        its classification only (the database's message may quote the row: personal data)."""
        c = classify(exc)
        failed = FailedWrite(
            record.sql, record.params, record.key, f"{type(exc).__name__}: {exc}", c.code
        )
        self._failed_writes.append(failed)
        self.counters["failed"] += 1
        logger.error(
            "write set aside: %s (%s, SQLSTATE %s); see failed_writes()",
            c.code,
            type(exc).__name__,
            c.sqlstate or "-",
        )
        return failed

    def _note_worker_failure(self, exc: BaseException) -> None:
        """Under the condition: the worker failed outside any batch's own triage."""
        self.counters["worker_restarts"] += 1
        self._worker_failures += 1
        self._worker_error = f"{type(exc).__name__} ({classify(exc).code})"

    def _note_journal_error(self, exc: OSError) -> None:
        """Under the condition: the journal could not record progress (a full disk, a file
        size limit). Committed writes stay committed; the watermark is written by the next
        batch that can, and until then a reopened queue replays (keyed writes are skipped by
        the ledger; unkeyed ones are at least once)."""
        if self._journal_error is None:
            logger.error("write queue journal cannot record progress: %s", exc.strerror or exc)
        self._journal_error = f"{type(exc).__name__}: {exc.strerror or exc}"

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
        self._worker_failures = 0
        self._ledger_ready = False
        self._last_prune = 0.0

    def failed_writes(self) -> list[FailedWrite]:
        """The last (up to 1000) writes set aside, with their errors."""
        return list(self._failed_writes)

    def _ledger_sql(self) -> LedgerSQL:
        return LedgerSQL(
            create=sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (scope text NOT NULL, key text NOT NULL, "
                "digest text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(), "
                "PRIMARY KEY (scope, key))"
            ).format(self._ledger),
            claim=sql.SQL(
                "INSERT INTO {} (scope, key, digest) "
                "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[]) "
                "ON CONFLICT DO NOTHING RETURNING scope, key"
            ).format(self._ledger),
            applied=sql.SQL(
                "SELECT scope, key, digest FROM {} "
                "WHERE (scope, key) IN (SELECT * FROM unnest(%s::text[], %s::text[]))"
            ).format(self._ledger),
            prune=sql.SQL(
                "DELETE FROM {} WHERE applied_at < now() - %s * interval '1 second'"
            ).format(self._ledger),
        )

    @staticmethod
    def _claims(batch: Sequence[Record]) -> dict[tuple[str, str], str]:
        """The ledger identities ``(scope, key)`` of the keyed writes in *batch*, each with the
        parameter digest of its first write in the batch."""
        claims: dict[tuple[str, str], str] = {}
        for record in batch:
            if record.key is not None:
                claims.setdefault((scope_of(record.sql), record.key), digest_of(record.params))
        return claims

    @staticmethod
    def _dedupe(
        batch: Sequence[Record],
        claims: dict[tuple[str, str], str],
        fresh: set[tuple[str, str]],
        applied: dict[tuple[str, str], str],
    ) -> tuple[list[Record], int, list[Record]]:
        """What to do with each write: ``(apply, skipped as already applied, key reused)``.

        Unkeyed writes are applied. The first write of a freshly claimed key is applied; a
        write whose key was applied before (or earlier in the batch) with the same parameters
        is a duplicate; with other parameters, the key was reused for another write.
        """
        todo: list[Record] = []
        duplicates = 0
        reused: list[Record] = []
        taken: set[tuple[str, str]] = set()
        for record in batch:
            if record.key is None:
                todo.append(record)
                continue
            ident = (scope_of(record.sql), record.key)
            if ident in fresh and ident not in taken:
                taken.add(ident)
                todo.append(record)
                continue
            prior = claims[ident] if ident in taken else applied.get(ident)
            if prior == digest_of(record.params):
                duplicates += 1
            else:
                reused.append(record)
        return todo, duplicates, reused

    def stats(self) -> dict[str, Any]:
        """``submitted``, ``written`` (applied), ``duplicates`` (skipped: their key was already
        applied with the same parameters), ``failed`` (set aside), ``pending``, ``retried``,
        ``batches``, ``replayed`` (from the journal), ``spilled`` (kept in the journal only,
        ``on_full="spill"``), ``worker_restarts``, ``worker_error`` and ``journal_error`` (the
        last failure, or None), ``oldest_pending_age`` (s) and ``journal_bytes``. Always
        ``written + duplicates + failed + pending == submitted + replayed``."""
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
            "worker_error": self._worker_error,
            "journal_error": self._journal_error,
        }
