"""One event stream for the whole library: process-wide hooks, Prometheus, OpenTelemetry, logs.

Every part of dbresilience (retries, breakers, budgets, pools, caches, queues) emits one typed,
frozen :class:`Event` per occurrence to the hooks installed here. With none installed, emitting
costs one attribute test and builds nothing. ::

    from dbresilience import instrumentation

    instrumentation.enable_prometheus()          # dbresilience_* metrics on the default registry
    instrumentation.enable_opentelemetry()       # the same as OTel instruments, plus spans
    instrumentation.set_hooks([*instrumentation.get_hooks(), print])   # any callable

The per-object hooks (``with_retry(on_retry=...)``, ``CircuitBreaker(on_change=...)``,
``RetryBudget(on_exhausted=...)``) keep working beside these. See docs/observability.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dbresilience._instrument import (
    AcquireWaited,
    BreakerStateChanged,
    BudgetRefused,
    CacheDegraded,
    CacheHit,
    CacheLoaded,
    CacheMiss,
    CacheRestored,
    CacheStaleServed,
    ConnectionDiscarded,
    ConnectionLost,
    ConnectionOpened,
    DeadlineFired,
    Event,
    GenerationRetired,
    Hook,
    JournalReplayed,
    PoolCallDone,
    QueueBatchCommitted,
    RetryGivenUp,
    RetryScheduled,
    WorkerRestarted,
    WriteSetAside,
    add_hook,
    get_hooks,
    set_hooks,
)
from dbresilience.instrumentation._logs import (
    ConnectErrorSummary,
    ConninfoRedactor,
    DiscardSummary,
    LoggingHook,
    RequestContextFilter,
    StructlogHook,
    add_request_context,
    summarise_connect_errors,
)

if TYPE_CHECKING:
    from dbresilience.instrumentation._otel import OpenTelemetryHook
    from dbresilience.instrumentation._prometheus import PrometheusHook

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
    "ConnectErrorSummary",
    "ConnectionDiscarded",
    "ConnectionLost",
    "ConnectionOpened",
    "ConninfoRedactor",
    "DeadlineFired",
    "DiscardSummary",
    "Event",
    "GenerationRetired",
    "Hook",
    "JournalReplayed",
    "LoggingHook",
    "PoolCallDone",
    "QueueBatchCommitted",
    "RequestContextFilter",
    "RetryGivenUp",
    "RetryScheduled",
    "StructlogHook",
    "WorkerRestarted",
    "WriteSetAside",
    "add_hook",
    "add_request_context",
    "enable_opentelemetry",
    "enable_prometheus",
    "get_hooks",
    "set_hooks",
    "summarise_connect_errors",
]


def enable_prometheus(registry: Any = None) -> PrometheusHook:
    """Register the ``dbresilience_*`` metrics on *registry* (default: prometheus_client's
    global ``REGISTRY``) and install the hook that updates them; returns that hook.

    Idempotent per registry. Labels are low-cardinality (``pool``, ``name``, ``operation``,
    ``outcome``, ``code``, ...): never a query text or a cache key. Pool gauges are read from
    psycopg_pool's ``get_stats()`` at scrape time. Needs the ``prometheus`` extra
    (``pip install 'dbresilience[prometheus]'``); raises ``ImportError`` saying so without it.
    """
    from dbresilience.instrumentation._prometheus import enable

    return enable(registry)


def enable_opentelemetry(
    meter_provider: Any = None, tracer_provider: Any = None
) -> OpenTelemetryHook:
    """Create the same metrics as OpenTelemetry instruments, and spans for pool calls (database
    semantic conventions, retries as span events), queue batches and cache loads; install the
    hook and return it. Default providers: OpenTelemetry's global ones. Needs the ``otel``
    extra (``pip install 'dbresilience[otel]'``); raises ``ImportError`` saying so without it.
    """
    from dbresilience.instrumentation._otel import enable

    return enable(meter_provider, tracer_provider)
