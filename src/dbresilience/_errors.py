"""The exceptions dbresilience raises itself: one root, each under its closest standard parent.

The tree (standard parents in brackets; an ``except`` clause written for the parent still
catches the library's error)::

    DBResilienceError                    [Exception]
    ├── CircuitOpen                      a breaker is open: the call was not made (DBR4001)
    ├── QueryTimeout                     [TimeoutError, psycopg.OperationalError] (P1008)
    ├── AcquireTimeout                   [psycopg_pool.PoolTimeout] no free connection (P2024)
    ├── DatabaseUnavailable              [psycopg.OperationalError] the pool cannot connect
    ├── CommitUnknown                    [psycopg.OperationalError] lost during COMMIT (P1017)
    ├── QueueFull                        [queue.Full] a write queue has no room
    ├── WriteTooLarge                    [ValueError] a write larger than Redis takes
    ├── QueueClosed                      [RuntimeError] a write queue is not open
    ├── QueueStalled                     [RuntimeError] a write queue's worker keeps failing
    ├── JournalLocked                    [RuntimeError] another queue owns the journal
    ├── JournalCorrupt                   [ValueError] a journal line is not one the queue wrote
    ├── KeyReused                        [ValueError] an idempotency key reused for another write
    ├── LedgerUnavailable                the write ledger could not be set up (retried)
    ├── SessionStateUnsupported          [psycopg.NotSupportedError] behind a transaction pooler
    ├── UpstreamTimeout                  [TimeoutError] an upstream service timed out (HTTP 504)
    ├── UpstreamError                    an upstream service failed (HTTP 502)
    └── MissingExtra                     [ImportError] an optional dependency is not installed

Errors that come from the database or a driver are re-raised unchanged, never wrapped; invalid
arguments are plain ``TypeError`` / ``ValueError`` (see :mod:`dbresilience._validate`). Every
class here is exported from ``dbresilience`` and shows as ``dbresilience.X`` in tracebacks.
Imports only :mod:`dbresilience._classify` (below it) and the drivers' exception classes.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import queue

import psycopg
import psycopg_pool

from dbresilience._classify import Classification, ErrorKind, own_classification

__all__ = [
    "AcquireTimeout",
    "CircuitOpen",
    "CommitUnknown",
    "DBResilienceError",
    "DatabaseUnavailable",
    "JournalCorrupt",
    "JournalLocked",
    "KeyReused",
    "LedgerUnavailable",
    "MissingExtra",
    "QueryTimeout",
    "QueueClosed",
    "QueueFull",
    "QueueStalled",
    "SessionStateUnsupported",
    "UpstreamError",
    "UpstreamTimeout",
    "WriteTooLarge",
]


class DBResilienceError(Exception):
    """Root of every exception raised by dbresilience itself.

    Library errors also subclass the closest standard parent (``TimeoutError``,
    ``psycopg.OperationalError``) so that existing ``except`` clauses keep working.
    Errors that come from the database or a driver are re-raised unchanged, never wrapped
    in this class; :func:`dbresilience.classify` maps both.
    """


#: The longest wait a :class:`CircuitOpen` ever asks for, in seconds: an hour.
MAX_RETRY_AFTER = 3600.0


def bounded_wait(seconds: object) -> float:
    """*seconds* as a wait a caller can sleep on: a float in ``[0, MAX_RETRY_AFTER]``.

    Whatever it is given (a breaker's arithmetic on a shared state, a classification someone
    built): negative is 0, infinity or anything past an hour is an hour, and NaN, ``None`` or a
    non-number (no answer at all) is 1 s. Never raises.
    """
    if isinstance(seconds, int) and not isinstance(seconds, bool):
        seconds = max(0, min(seconds, int(MAX_RETRY_AFTER)))  # float() of a huge int overflows
    try:
        value = float(seconds)  # type: ignore[arg-type]  # anything else is caught below
    except (TypeError, ValueError):
        return 1.0
    if math.isnan(value):
        return 1.0
    return min(max(value, 0.0), MAX_RETRY_AFTER)


class CircuitOpen(DBResilienceError):
    """A circuit breaker is open: the call was not made. Classified DBR4001, HTTP 503.

    ``retry_after`` is the number of seconds until the breaker lets a probe through, always
    finite and at most an hour (:func:`bounded_wait`: a web answer's ``Retry-After`` and a
    queue worker's sleep are built from it); ``breaker`` its name. Never retried inside the
    call: retrying against an open circuit is what it is there to stop.
    """

    def __init__(self, breaker: str, retry_after: float, detail: str) -> None:
        self.breaker = breaker
        self.retry_after = bounded_wait(retry_after)
        super().__init__(
            f"circuit {breaker!r} is open ({detail}); next probe in {self.retry_after:.2f} s"
        )
        self._dbr_classification = own_classification(
            ErrorKind.CIRCUIT_OPEN,
            f"circuit {breaker!r} open",
            retry_after=max(0.1, round(self.retry_after, 1)),
        )


class QueryTimeout(DBResilienceError, TimeoutError, psycopg.OperationalError):
    """A pool call's deadline passed while a query ran: P1008, HTTP 503.

    The client-side backstop: the connection's socket was shut down at the deadline (a frozen
    server or a silent network cannot hold the call) and the connection was discarded.
    ``commit_unknown`` is true when the statement may have been a write that reached the server.
    """

    def __init__(self, message: str, *, commit_unknown: bool = False) -> None:
        super().__init__(message)
        classification = own_classification(
            ErrorKind.QUERY_TIMEOUT, "pool deadline", retry_after=2.0
        )
        self._dbr_classification = dataclasses.replace(
            classification, commit_unknown=commit_unknown
        )


class AcquireTimeout(DBResilienceError, psycopg_pool.PoolTimeout):
    """No pooled connection became free within the wait allowed: P2024, HTTP 503.

    A ``psycopg_pool.PoolTimeout``, so existing handlers keep working.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self._dbr_classification = own_classification(
            ErrorKind.POOL_TIMEOUT, "pool acquire timeout", retry_after=1.0
        )


class DatabaseUnavailable(DBResilienceError, psycopg.OperationalError):
    """The pool has no connection and its last attempt to connect failed: fail fast.

    Carries the classification of that connect failure (P1001 for a refused or unreachable
    server, P1000 for bad credentials, ...) so a caller gets the real reason at once instead of
    waiting out the acquire timeout.
    """

    def __init__(self, message: str, classification: Classification) -> None:
        super().__init__(message)
        # raised before anything was sent: whatever the connect error was, no write is in doubt
        self._dbr_classification = dataclasses.replace(classification, commit_unknown=False)


class CommitUnknown(DBResilienceError, psycopg.OperationalError):
    """The connection was lost (or the deadline passed) while COMMIT was in flight: P1017.

    The transaction may or may not have been committed. ``commit_unknown`` is true and the pool
    does not re-run it; make the work idempotent (a key, an upsert) to retry it safely.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self._dbr_classification = dataclasses.replace(
            own_classification(ErrorKind.CONNECTION_LOST, "lost during COMMIT", retry_after=1.0),
            commit_unknown=True,
        )


class QueueFull(DBResilienceError, queue.Full):
    """``submit`` found ``max_pending`` writes waiting (``on_full="raise"``, or a block that
    timed out). Nothing was queued.

    A ``queue.Full``, as the standard library's queues raise when they have no room.
    """


class WriteTooLarge(DBResilienceError, ValueError):
    """``submit`` to a queue on a Redis journal: the write is larger than Redis takes in one
    value (its ``proto-max-bulk-len``, 512 MB by default). Nothing was queued: it could never
    enter the stream, and would hold back every write behind it.

    A ``ValueError``: the write itself is at fault, not the queue's state.
    """


class QueueClosed(DBResilienceError, RuntimeError):
    """``submit`` on a queue that is not open (not yet opened, or closed).

    A ``RuntimeError``, as ``concurrent.futures`` raises for work submitted after shutdown.
    """


class UpstreamTimeout(DBResilienceError, TimeoutError):
    """A call to an upstream service (not the database) timed out: HTTP 504 under
    :func:`dbresilience.web.install`."""


class UpstreamError(DBResilienceError):
    """A call to an upstream service (not the database) failed: HTTP 502 under
    :func:`dbresilience.web.install`."""


class QueueStalled(DBResilienceError, RuntimeError):
    """``submit`` on a queue whose worker failed several times in a row without committing
    anything: the write would only pile up. ``stats()["worker_error"]`` says what failed; the
    worker keeps restarting, and ``submit`` accepts writes again once a batch commits."""


class JournalLocked(DBResilienceError, RuntimeError):
    """Another write queue (in this process or another) has the journal open.

    A journal has one owner: two queues appending to one file would collide on sequence numbers
    and mark each other's writes done. Give each process its own journal path (for example with
    the process id in it), or share a Redis stream instead.
    """


class KeyReused(DBResilienceError, ValueError):
    """An idempotency key already applied by the same statement with other parameters: the
    write is set aside with this error, never applied and never silently dropped."""


class LedgerUnavailable(DBResilienceError):
    """The write queue could not create or reach its ledger table; the batch is retried.

    Never a verdict on a write: a race between instances creating the table, for instance,
    answers 23505 on ``pg_type``, which must not be taken for the write's own unique violation.
    """


class JournalCorrupt(DBResilienceError, ValueError):
    """A journal line in the middle of the file is not one a write queue wrote (a torn last
    line is expected after a crash and dropped; this is not that). The queue refuses to open
    rather than guess which writes were acknowledged: move the file aside to start afresh."""


class MissingExtra(DBResilienceError, ImportError):
    """An optional dependency is not installed; the message says which extra brings it:
    ``CredentialCache(redis_url=...) needs redis: pip install 'dbresilience[redis]'``.

    Raised where the feature is asked for (a constructor, an import of the integration module,
    a command), never by ``import dbresilience``. ``extra`` is the extra's name, ``name`` the
    missing module's (as on any ``ImportError``).
    """

    def __init__(self, what: str, module: str, extra: str) -> None:
        super().__init__(f"{what} needs {module}: pip install 'dbresilience[{extra}]'", name=module)
        self.extra = extra


def require(module: str, *, extra: str, what: str) -> None:
    """Import *module*, or raise :class:`MissingExtra` saying that *what* needs the *extra*."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        missing = exc.name or ""
        if missing != module.split(".")[0] and not module.startswith(missing + "."):
            raise  # the package is there but broken: its own error says more
        raise MissingExtra(what, module.split(".")[0], extra) from exc


class SessionStateUnsupported(DBResilienceError, psycopg.NotSupportedError):
    """Refused before sending: the statement needs a server session of its own (LISTEN, a
    session advisory lock, a temporary table, a session-wide ``SET``, ``PREPARE``, a ``WITH
    HOLD`` cursor, ``prepare=True``), which a pooler in transaction mode does not give
    (``pooler="transaction"``). P2010, HTTP 500; never retried."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self._dbr_classification = dataclasses.replace(
            own_classification(
                ErrorKind.QUERY_ERROR, "session state behind a transaction pooler", retry_after=0.0
            ),
            retry_after=None,
        )
