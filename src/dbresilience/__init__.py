"""dbresilience: keep database-backed services answering when their database misbehaves.

::

    import dbresilience as dbr

    @dbr.with_retry(attempts=3, deadline=8.0)
    def load_user(user_id: int) -> tuple[int, float, bool] | None: ...

    try:
        load_user(42)
    except Exception as exc:
        c = dbr.classify(exc)          # c.code == "P1001", c.retryable, c.http_status == 503

The public surface is this module's ``__all__``; everything in ``dbresilience._*`` is private.
"""

from __future__ import annotations

from dbresilience._backoff import Backoff
from dbresilience._breaker import CircuitBreaker
from dbresilience._breaker_redis import RedisBreakerState
from dbresilience._breaker_redis_async import AsyncRedisBreakerState
from dbresilience._budget import RetryBudget
from dbresilience._cache import CredentialCache
from dbresilience._cache_async import AsyncCredentialCache
from dbresilience._classify import Classification, ErrorKind, classify
from dbresilience._deadline import Deadline
from dbresilience._doctor import DoctorFinding, DoctorReport, DoctorSkip, Severity, doctor
from dbresilience._errors import (
    AcquireTimeout,
    CircuitOpen,
    CommitUnknown,
    DatabaseUnavailable,
    DBResilienceError,
    JournalCorrupt,
    JournalLocked,
    KeyReused,
    LedgerUnavailable,
    MissingExtra,
    QueryTimeout,
    QueueClosed,
    QueueFull,
    QueueStalled,
    SessionStateUnsupported,
    UpstreamError,
    UpstreamTimeout,
    WriteTooLarge,
)
from dbresilience._events import (
    BreakerHook,
    BudgetExhausted,
    BudgetHook,
    CircuitState,
    CircuitStateChange,
    RetryDetails,
    RetryHook,
    log_retry,
)
from dbresilience._journal import Record
from dbresilience._lifecycle import ResourceState
from dbresilience._pool import Pool
from dbresilience._pool_async import AsyncPool
from dbresilience._queue import WriteQueue
from dbresilience._queue_async import AsyncWriteQueue
from dbresilience._queue_base import FailedWrite
from dbresilience._retry import RetryPolicy, testing, with_retry, withRetry
from dbresilience._router import ReadRouter, ReadSession
from dbresilience._router_async import AsyncReadRouter, AsyncReadSession
from dbresilience._router_base import Position
from dbresilience._serialize import JsonSerializer, MsgpackSerializer, Serializer

__version__ = "0.1.0.dev0"

__all__ = [
    "AcquireTimeout",
    "AsyncCredentialCache",
    "AsyncPool",
    "AsyncReadRouter",
    "AsyncReadSession",
    "AsyncRedisBreakerState",
    "AsyncWriteQueue",
    "Backoff",
    "BreakerHook",
    "BudgetExhausted",
    "BudgetHook",
    "CircuitBreaker",
    "CircuitOpen",
    "CircuitState",
    "CircuitStateChange",
    "Classification",
    "CommitUnknown",
    "CredentialCache",
    "DBResilienceError",
    "DatabaseUnavailable",
    "Deadline",
    "DoctorFinding",
    "DoctorReport",
    "DoctorSkip",
    "ErrorKind",
    "FailedWrite",
    "JournalCorrupt",
    "JournalLocked",
    "JsonSerializer",
    "KeyReused",
    "LedgerUnavailable",
    "MissingExtra",
    "MsgpackSerializer",
    "Pool",
    "Position",
    "QueryTimeout",
    "QueueClosed",
    "QueueFull",
    "QueueStalled",
    "ReadRouter",
    "ReadSession",
    "Record",
    "RedisBreakerState",
    "ResourceState",
    "RetryBudget",
    "RetryDetails",
    "RetryHook",
    "RetryPolicy",
    "Serializer",
    "SessionStateUnsupported",
    "Severity",
    "UpstreamError",
    "UpstreamTimeout",
    "WriteQueue",
    "WriteTooLarge",
    "classify",
    "doctor",
    "log_retry",
    "testing",
    "withRetry",
    "with_retry",
]

# Tracebacks and reprs show ``dbresilience.QueryTimeout``, the name users import, rather than
# ``dbresilience._errors.QueryTimeout`` (httpx does the same in its ``__init__``).
for _name in __all__:
    _value = globals()[_name]
    if isinstance(_value, type) and issubclass(_value, BaseException):
        _value.__module__ = __name__
del _name, _value
