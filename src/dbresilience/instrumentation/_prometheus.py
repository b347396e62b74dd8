"""Prometheus metrics from the event stream (the ``prometheus`` extra)."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import Any

from dbresilience._errors import require

require("prometheus_client", extra="prometheus", what="instrumentation.enable_prometheus()")

import prometheus_client  # noqa: E402 - after the check that names the extra
from prometheus_client.core import GaugeMetricFamily  # noqa: E402
from prometheus_client.registry import Collector  # noqa: E402

from dbresilience import _instrument as ins  # noqa: E402

__all__ = ["PrometheusHook", "enable"]

_STATES = {"closed": 0.0, "half_open": 1.0, "open": 2.0}
# seconds: from a warm-pool read (~0.2 ms) to a call that used its whole default deadline
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _ScrapeCollector(Collector):
    """Gauges read when scraped: psycopg_pool's full ``get_stats()`` per live pool, and each
    live queue's pending writes."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        # Summed by name: two open pools (or queues) with one name must not give Prometheus
        # two samples with the same labels, which fails the whole scrape. Closed ones are left.
        totals: dict[str, dict[str, float]] = {}
        for pool in list(ins.pools):
            core = getattr(pool, "_pool", None)
            if core is None or not getattr(pool, "_is_open", False):
                continue
            try:
                raw = core.get_stats()
            except Exception:  # noqa: S112 - a pool being rebuilt: skip it this scrape
                continue
            for key, value in raw.items():
                per_pool = totals.setdefault(key, {})
                per_pool[pool.name] = per_pool.get(pool.name, 0.0) + float(value)
        for key, per_pool in sorted(totals.items()):
            family = GaugeMetricFamily(
                f"dbresilience_pool_{key}",
                f"psycopg_pool get_stats()[{key!r}], summed over the open pools of that name",
                labels=["pool"],
            )
            for name, value in sorted(per_pool.items()):
                family.add_metric([name], value)
            yield family
        pending: dict[str, float] = {}
        for queue in list(ins.queues):
            try:
                count = queue._pending()
            except Exception:  # noqa: S112 - a queue closing: skip it this scrape
                continue
            pending[queue.name] = pending.get(queue.name, 0.0) + count
        family = GaugeMetricFamily(
            "dbresilience_queue_pending", "writes accepted but not yet written", labels=["name"]
        )
        for name, value in sorted(pending.items()):
            family.add_metric([name], value)
        yield family


class PrometheusHook:
    """The hook :func:`enable_prometheus` installs; holds the metric objects."""

    def __init__(self, registry: Any) -> None:
        """Create and register every ``dbresilience_*`` metric on *registry*."""
        c, h, g = prometheus_client.Counter, prometheus_client.Histogram, prometheus_client.Gauge
        r = registry
        self.calls = c(
            "dbresilience_calls",
            "pool calls by outcome",
            ["pool", "operation", "outcome", "code"],
            registry=r,
        )
        self.call_duration = h(
            "dbresilience_call_duration_seconds",
            "pool call duration, all attempts and backoff included",
            ["pool", "operation", "outcome"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.retries = c("dbresilience_retries", "retries scheduled", ["name", "code"], registry=r)
        self.given_up = c(
            "dbresilience_retries_given_up",
            "retried calls that stopped failing",
            ["name", "code", "reason"],
            registry=r,
        )
        self.acquire_wait = h(
            "dbresilience_acquire_wait_seconds",
            "time waited for a pooled connection",
            ["pool"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.connections = c(
            "dbresilience_connection_events",
            "connections opened, failed, lost and discarded",
            ["pool", "event", "code"],
            registry=r,
        )
        self.generations = c(
            "dbresilience_generations_retired",
            "idle connection generations retired after a disconnect",
            ["pool"],
            registry=r,
        )
        self.deadlines = c(
            "dbresilience_deadlines_fired",
            "calls whose deadline shut their socket down",
            ["pool"],
            registry=r,
        )
        self.breaker_state = g(
            "dbresilience_breaker_state",
            "circuit breaker state: 0 closed, 1 half-open, 2 open",
            ["name"],
            registry=r,
        )
        self.breaker_transitions = c(
            "dbresilience_breaker_transitions",
            "circuit breaker transitions by new state",
            ["name", "state"],
            registry=r,
        )
        self.budget_refused = c(
            "dbresilience_budget_refused",
            "retries refused by a retry budget",
            ["name", "code"],
            registry=r,
        )
        self.cache_requests = c(
            "dbresilience_cache_requests",
            "cache lookups by result: hit_memory, hit_redis, hit_negative, miss, stale",
            ["name", "result"],
            registry=r,
        )
        self.cache_loads = c(
            "dbresilience_cache_loads", "cache loader runs", ["name", "outcome", "code"], registry=r
        )
        self.cache_load_duration = h(
            "dbresilience_cache_load_duration_seconds",
            "cache loader duration",
            ["name"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.cache_degraded = g(
            "dbresilience_cache_degraded",
            "1 while the cache runs without Redis",
            ["name"],
            registry=r,
        )
        self.queue_written = c(
            "dbresilience_queue_written", "writes committed by a queue", ["name"], registry=r
        )
        self.queue_batch_duration = h(
            "dbresilience_queue_batch_duration_seconds",
            "queue batch transaction duration",
            ["name"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.queue_failed = c(
            "dbresilience_queue_failed",
            "writes set aside (see failed_writes())",
            ["name", "code", "sqlstate"],
            registry=r,
        )
        self.journal_replayed = c(
            "dbresilience_journal_replayed",
            "writes found in a journal at start",
            ["name"],
            registry=r,
        )
        self.worker_restarts = c(
            "dbresilience_worker_restarts",
            "background workers restarted",
            ["name", "code"],
            registry=r,
        )
        registry.register(_ScrapeCollector())
        # labels() validates, locks and looks up on every call: keep each child once found
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def _child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, remembered."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def __call__(self, event: ins.Event, /) -> None:
        """Update the metrics for one event."""
        if type(event) is ins.PoolCallDone:
            self._child(
                self.calls, event.pool, event.operation, event.outcome, event.code or ""
            ).inc()
            self._child(self.call_duration, event.pool, event.operation, event.outcome).observe(
                event.duration
            )
        elif type(event) is ins.AcquireWaited:
            self._child(self.acquire_wait, event.pool).observe(event.waited)
        elif type(event) is ins.CacheHit:
            self._child(self.cache_requests, event.name, f"hit_{event.tier}").inc()
        elif type(event) is ins.RetryScheduled:
            self._child(self.retries, event.name, event.code).inc()
        elif type(event) is ins.RetryGivenUp:
            self._child(self.given_up, event.name, event.code, event.reason).inc()
        elif type(event) is ins.CacheMiss:
            self._child(self.cache_requests, event.name, "miss").inc()
        elif type(event) is ins.CacheStaleServed:
            self._child(self.cache_requests, event.name, "stale").inc()
        elif type(event) is ins.CacheLoaded:
            self._child(self.cache_loads, event.name, event.outcome, event.code or "").inc()
            self._child(self.cache_load_duration, event.name).observe(event.duration)
        elif type(event) is ins.CacheDegraded:
            self._child(self.cache_degraded, event.name).set(1)
        elif type(event) is ins.CacheRestored:
            self._child(self.cache_degraded, event.name).set(0)
        elif type(event) is ins.BreakerStateChanged:
            self._child(self.breaker_state, event.name).set(_STATES.get(event.new, -1.0))
            self._child(self.breaker_transitions, event.name, event.new).inc()
        elif type(event) is ins.BudgetRefused:
            self._child(self.budget_refused, event.name, event.code).inc()
        elif type(event) is ins.ConnectionOpened:
            self._child(self.connections, event.pool, event.outcome, event.code or "").inc()
        elif type(event) is ins.ConnectionLost:
            self._child(self.connections, event.pool, "lost", event.code).inc()
        elif type(event) is ins.ConnectionDiscarded:
            self._child(self.connections, event.pool, f"discarded_{event.reason}", "").inc()
        elif type(event) is ins.GenerationRetired:
            self._child(self.generations, event.pool).inc()
        elif type(event) is ins.DeadlineFired:
            self._child(self.deadlines, event.pool).inc()
        elif type(event) is ins.QueueBatchCommitted:
            self._child(self.queue_written, event.name).inc(event.rows)
            self._child(self.queue_batch_duration, event.name).observe(event.duration)
        elif type(event) is ins.WriteSetAside:
            self._child(self.queue_failed, event.name, event.code, event.sqlstate or "").inc()
        elif type(event) is ins.JournalReplayed:
            self._child(self.journal_replayed, event.name).inc(event.writes)
        elif type(event) is ins.WorkerRestarted:
            self._child(self.worker_restarts, event.name, event.code).inc()


_installed: weakref.WeakKeyDictionary[Any, PrometheusHook] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def enable(registry: Any = None) -> PrometheusHook:
    """See :func:`dbresilience.instrumentation.enable_prometheus`."""
    if registry is None:
        registry = prometheus_client.REGISTRY
    with _lock:
        hook = _installed.get(registry)
        if hook is None:
            hook = _installed[registry] = PrometheusHook(registry)
    ins.add_hook(hook)
    return hook
