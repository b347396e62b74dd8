"""The process-wide instrumentation registry and the events every part of the library emits.

Bottom layer: pure, no I/O, imported by retry, breaker, budget, pool, cache and queue. The public
face is :mod:`dbresilience.instrumentation`.

The zero-cost rule: an emitter checks ``if _instrument.hooks:`` (one module attribute and one
truth test) *before* it builds an event, so with no hook installed nothing is allocated::

    if _instrument.hooks:
        _instrument.emit(PoolCallDone(...))

Events carry names, codes, counts and durations: never a query text, a cache key, row data or
an exception message (which may hold a host name or a failing row).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "AcquireWaited",
    "BreakerStateChanged",
    "BudgetRefused",
    "CacheDegraded",
    "CacheHit",
    "CacheLoaded",
    "CacheMiss",
    "CacheRestored",
    "CacheStaleServed",
    "ConnectionDiscarded",
    "ConnectionLost",
    "ConnectionOpened",
    "DeadlineFired",
    "Event",
    "GenerationRetired",
    "Hook",
    "JournalReplayed",
    "PoolCallDone",
    "QueueBatchCommitted",
    "RetryGivenUp",
    "RetryScheduled",
    "WorkerRestarted",
    "WriteSetAside",
    "emit",
    "get_hooks",
    "hooks",
    "set_hooks",
]

_log = logging.getLogger("dbresilience")

#: The installed hooks. Emitters test it before building an event (see the module docstring);
#: replaced whole (never mutated) by :func:`set_hooks`, so a reader never sees a half update.
hooks: tuple[Hook, ...] = ()

_lock = threading.Lock()

#: Pools and queues alive in this process, for adapters that read gauges at scrape time
#: (psycopg_pool's ``get_stats()``, a queue's pending count). Weak: registering keeps nothing
#: alive. Registered at construction, never on a call's path.
pools: weakref.WeakSet[Any] = weakref.WeakSet()
queues: weakref.WeakSet[Any] = weakref.WeakSet()


class Event:
    """Base class of every instrumentation event: frozen, slotted, one per occurrence.

    ``kind`` is a short stable name (``"pool_call_done"``) for logs and adapters.
    """

    __slots__ = ()
    kind: str = "event"

    def fields(self) -> dict[str, Any]:
        """The event's fields as a dict (for structured logs)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}  # type: ignore[attr-defined]


class Hook(Protocol):
    """A process-wide hook: called with every :class:`Event`, synchronously, in the thread or
    task where it happened. It must be quick; one that raises is logged and skipped."""

    def __call__(self, event: Event, /) -> None: ...


def set_hooks(new: Iterable[Hook | Callable[[Event], Any]]) -> None:
    """Install *new* as the process-wide hooks, replacing the previous ones (``[]``: none)."""
    global hooks
    installed = tuple(new)
    for hook in installed:
        if not callable(hook):
            raise TypeError(f"hooks must be callables taking one event, got {hook!r}")
    with _lock:
        hooks = installed


def add_hook(hook: Hook | Callable[[Event], Any]) -> None:
    """Append *hook* to the installed hooks unless it is already there."""
    global hooks
    if not callable(hook):
        raise TypeError(f"hooks must be callables taking one event, got {hook!r}")
    with _lock:
        if hook not in hooks:
            hooks = (*hooks, hook)


def get_hooks() -> tuple[Hook, ...]:
    """The installed process-wide hooks, in the order they are called."""
    return hooks


def emit(event: Event) -> None:
    """Call every installed hook with *event*; a hook that raises is logged and skipped."""
    for hook in hooks:
        try:
            hook(event)
        except Exception:
            _log.exception("instrumentation hook %r failed on %s", hook, event.kind)


# --- retries, breakers, budgets -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryScheduled(Event):
    """A retry is about to sleep ``delay`` s before attempt ``attempt`` of ``attempts`` of
    ``name`` (a callable's qualified name, or ``"<pool> <operation>"``), after a ``code``
    failure, ``elapsed`` s after the first attempt started."""

    kind = "retry_scheduled"
    name: str
    attempt: int
    attempts: int
    delay: float
    elapsed: float
    code: str


@dataclass(frozen=True, slots=True)
class RetryGivenUp(Event):
    """``name`` stops after ``failed`` failed attempts; the last one's ``code`` is re-raised.

    ``reason``: ``"not_retryable"``, ``"attempts"``, ``"deadline"``, ``"breaker"`` or
    ``"budget"``.
    """

    kind = "retry_given_up"
    name: str
    failed: int
    elapsed: float
    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class BreakerStateChanged(Event):
    """Circuit breaker ``name`` moved from ``old`` to ``new`` (``"closed"``, ``"open"``,
    ``"half_open"``) for ``reason``."""

    kind = "breaker_state_changed"
    name: str
    old: str
    new: str
    reason: str


@dataclass(frozen=True, slots=True)
class BudgetRefused(Event):
    """Retry budget ``name`` refused a retry of ``retried`` after a ``code`` failure."""

    kind = "budget_refused"
    name: str
    retried: str
    code: str


# --- pool ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PoolCallDone(Event):
    """One pool call (``operation``: ``fetchone``, ``fetchall``, ``execute``, ``transaction``)
    ended after ``duration`` s and ``attempts`` attempts. ``outcome`` is ``"ok"``, ``"error"``,
    ``"rejected"`` (an open breaker failed it fast: 0 attempts) or ``"cancelled"``; ``code``
    the classification code of the error (``None`` when ok) and ``sqlstate`` PostgreSQL's,
    when it sent one."""

    kind = "pool_call_done"
    pool: str
    operation: str
    duration: float
    outcome: str
    code: str | None
    sqlstate: str | None
    attempts: int


@dataclass(frozen=True, slots=True)
class AcquireWaited(Event):
    """A call waited ``waited`` s for a connection from ``pool``."""

    kind = "acquire_waited"
    pool: str
    waited: float


@dataclass(frozen=True, slots=True)
class ConnectionOpened(Event):
    """``pool`` opened a connection (``"connected"``) or failed to (``"failed"``, with the
    classification ``code``)."""

    kind = "connection_opened"
    pool: str
    outcome: str
    code: str | None


@dataclass(frozen=True, slots=True)
class ConnectionLost(Event):
    """A connection of ``pool`` died under a call (``code``: why)."""

    kind = "connection_lost"
    pool: str
    code: str


@dataclass(frozen=True, slots=True)
class ConnectionDiscarded(Event):
    """``pool`` dropped a connection: ``reason`` is ``"dead_idle"`` (found dead before use),
    ``"ping_failed"`` or ``"broken"`` (given back unusable)."""

    kind = "connection_discarded"
    pool: str
    reason: str


@dataclass(frozen=True, slots=True)
class GenerationRetired(Event):
    """``pool`` retired every idle connection older than ``generation`` after a disconnect."""

    kind = "generation_retired"
    pool: str
    generation: int


@dataclass(frozen=True, slots=True)
class DeadlineFired(Event):
    """The deadline of ``what`` (``"a query"``, ``"a transaction"`` …) on ``pool`` passed: its
    socket was shut down."""

    kind = "deadline_fired"
    pool: str
    what: str


# --- cache --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CacheHit(Event):
    """Cache ``name`` answered from ``tier`` (``"memory"``, ``"redis"`` or ``"negative"``)."""

    kind = "cache_hit"
    name: str
    tier: str


@dataclass(frozen=True, slots=True)
class CacheMiss(Event):
    """Cache ``name`` had no value: a load follows (or a wait for another caller's)."""

    kind = "cache_miss"
    name: str


@dataclass(frozen=True, slots=True)
class CacheLoaded(Event):
    """Cache ``name`` ran its loader for ``duration`` s: ``outcome`` ``"ok"`` or ``"error"``
    (with ``code``)."""

    kind = "cache_loaded"
    name: str
    duration: float
    outcome: str
    code: str | None


@dataclass(frozen=True, slots=True)
class CacheStaleServed(Event):
    """Cache ``name`` served an expired value because its loader failed with ``code``."""

    kind = "cache_stale_served"
    name: str
    code: str


@dataclass(frozen=True, slots=True)
class CacheDegraded(Event):
    """Cache ``name`` lost Redis (``code``) and serves from memory only."""

    kind = "cache_degraded"
    name: str
    code: str


@dataclass(frozen=True, slots=True)
class CacheRestored(Event):
    """Cache ``name`` has Redis back after ``duration`` s degraded."""

    kind = "cache_restored"
    name: str
    duration: float


# --- queue --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueBatchCommitted(Event):
    """Queue ``name`` committed ``rows`` writes in one transaction of ``duration`` s;
    ``pending`` writes remain."""

    kind = "queue_batch_committed"
    name: str
    rows: int
    duration: float
    pending: int


@dataclass(frozen=True, slots=True)
class WriteSetAside(Event):
    """Queue ``name`` set a write aside (see ``failed_writes()``): classification ``code`` and
    PostgreSQL's ``sqlstate``. Never the row."""

    kind = "write_set_aside"
    name: str
    code: str
    sqlstate: str | None


@dataclass(frozen=True, slots=True)
class JournalReplayed(Event):
    """Queue ``name`` found ``writes`` unwritten writes in its journal at start."""

    kind = "journal_replayed"
    name: str
    writes: int


@dataclass(frozen=True, slots=True)
class WorkerRestarted(Event):
    """The background worker of ``name`` died (``code``) and was started again."""

    kind = "worker_restarted"
    name: str
    code: str
