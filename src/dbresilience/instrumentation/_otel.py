"""OpenTelemetry metrics and spans from the event stream (the ``otel`` extra).

Spans are recorded when the occurrence ends, with its real start time (the event carries the
duration): a pool call's span therefore costs nothing while the call runs, and is the child of
whatever span was current where the call was made. Retries of a pool call become events of its
span; the classification code of a failure is its ``error.type``.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from typing import Any

from dbresilience._errors import require

require("opentelemetry", extra="otel", what="instrumentation.enable_opentelemetry()")

from opentelemetry import metrics, trace  # noqa: E402 - after the check that names the extra
from opentelemetry.trace import SpanKind, Status, StatusCode  # noqa: E402

from dbresilience import _instrument as ins  # noqa: E402

__all__ = ["OpenTelemetryHook", "enable"]

_STATES = {"closed": 0, "half_open": 1, "open": 2}

# The retries of the pool call running in this thread or task, kept until the call ends (its
# PoolCallDone becomes the span that gets them as events). Set only when a retry happened. The
# list is tagged with its owner (task or thread): a task inherits its parent's context, and
# must not add its retries to its parent's list, nor take the parent's.
_PENDING: contextvars.ContextVar[tuple[int, list[tuple[int, ins.RetryScheduled]]] | None] = (
    contextvars.ContextVar("dbresilience_otel_retries", default=None)
)
# Retries of with_retry outside any pool call are never taken: keep only the latest few.
_KEEP = 32


def _owner() -> int:
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no event loop in this thread
        task = None
    return id(task) if task is not None else threading.get_ident()


def _pending(create: bool) -> list[tuple[int, ins.RetryScheduled]] | None:
    """This task's or thread's pending retries (a new list when *create*)."""
    tagged = _PENDING.get()
    if tagged is not None and tagged[0] == _owner():
        return tagged[1]
    if not create:
        return None
    pending: list[tuple[int, ins.RetryScheduled]] = []
    _PENDING.set((_owner(), pending))
    return pending


class OpenTelemetryHook:
    """The hook :func:`enable_opentelemetry` installs; holds the instruments and the tracer."""

    def __init__(self, meter_provider: Any, tracer_provider: Any) -> None:
        """Create the instruments on *meter_provider* and the tracer on *tracer_provider*."""
        from dbresilience import __version__

        meter = (meter_provider or metrics.get_meter_provider()).get_meter(
            "dbresilience", __version__
        )
        self.tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer(
            "dbresilience", __version__
        )
        self.calls = meter.create_counter("dbresilience.calls", "{call}", "pool calls by outcome")
        self.call_duration = meter.create_histogram(
            "dbresilience.call.duration", "s", "pool call duration, all attempts included"
        )
        self.retries = meter.create_counter("dbresilience.retries", "{retry}", "retries scheduled")
        self.given_up = meter.create_counter(
            "dbresilience.retries.given_up", "{call}", "retried calls that stopped failing"
        )
        self.acquire_wait = meter.create_histogram(
            "dbresilience.acquire.wait", "s", "time waited for a pooled connection"
        )
        self.connections = meter.create_counter(
            "dbresilience.connection.events", "{event}", "connections opened, lost, discarded"
        )
        self.generations = meter.create_counter(
            "dbresilience.generations.retired", "{generation}", "generations retired"
        )
        self.deadlines = meter.create_counter(
            "dbresilience.deadlines.fired", "{call}", "calls whose deadline fired"
        )
        self.breaker_transitions = meter.create_counter(
            "dbresilience.breaker.transitions", "{transition}", "breaker transitions"
        )
        self.breaker_state = meter.create_up_down_counter(
            "dbresilience.breaker.state", "1", "breaker state: 0 closed, 1 half-open, 2 open"
        )
        self.budget_refused = meter.create_counter(
            "dbresilience.budget.refused", "{retry}", "retries refused by a budget"
        )
        self.cache_requests = meter.create_counter(
            "dbresilience.cache.requests", "{request}", "cache lookups by result"
        )
        self.cache_loads = meter.create_counter(
            "dbresilience.cache.loads", "{load}", "cache loader runs"
        )
        self.cache_load_duration = meter.create_histogram(
            "dbresilience.cache.load.duration", "s", "cache loader duration"
        )
        self.cache_degraded = meter.create_up_down_counter(
            "dbresilience.cache.degraded", "1", "1 while the cache runs without Redis"
        )
        self.queue_written = meter.create_counter(
            "dbresilience.queue.written", "{write}", "writes committed by a queue"
        )
        self.queue_batch_duration = meter.create_histogram(
            "dbresilience.queue.batch.duration", "s", "queue batch transaction duration"
        )
        self.queue_failed = meter.create_counter(
            "dbresilience.queue.failed", "{write}", "writes set aside"
        )
        self.journal_replayed = meter.create_counter(
            "dbresilience.journal.replayed", "{write}", "writes found in a journal at start"
        )
        self.worker_restarts = meter.create_counter(
            "dbresilience.worker.restarts", "{restart}", "background workers restarted"
        )
        self._states: dict[str, int] = {}
        self._degraded: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, event: ins.Event, /) -> None:
        """Record one event: metrics, and a span for pool calls, queue batches, cache loads."""
        if type(event) is ins.PoolCallDone:
            self._pool_call(event)
        elif type(event) is ins.RetryScheduled:
            self.retries.add(1, {"name": event.name, "code": event.code})
            pending = _pending(create=True)
            assert pending is not None
            pending.append((time.time_ns(), event))
            if len(pending) > _KEEP:
                del pending[:-_KEEP]
        elif type(event) is ins.RetryGivenUp:
            attrs = {"name": event.name, "code": event.code, "reason": event.reason}
            self.given_up.add(1, attrs)
        elif type(event) is ins.AcquireWaited:
            self.acquire_wait.record(event.waited, {"pool": event.pool})
        elif type(event) is ins.CacheHit:
            self.cache_requests.add(1, {"name": event.name, "result": f"hit_{event.tier}"})
        elif type(event) is ins.CacheMiss:
            self.cache_requests.add(1, {"name": event.name, "result": "miss"})
        elif type(event) is ins.CacheStaleServed:
            self.cache_requests.add(1, {"name": event.name, "result": "stale"})
        elif type(event) is ins.CacheLoaded:
            self._cache_load(event)
        elif type(event) is ins.CacheDegraded:
            self._level(self.cache_degraded, self._degraded, event.name, 1)
        elif type(event) is ins.CacheRestored:
            self._level(self.cache_degraded, self._degraded, event.name, 0)
        elif type(event) is ins.BreakerStateChanged:
            self.breaker_transitions.add(1, {"name": event.name, "state": event.new})
            self._level(self.breaker_state, self._states, event.name, _STATES.get(event.new, 0))
        elif type(event) is ins.BudgetRefused:
            self.budget_refused.add(1, {"name": event.name, "code": event.code})
        elif type(event) is ins.ConnectionOpened:
            attrs = {"pool": event.pool, "event": event.outcome, "code": event.code or ""}
            self.connections.add(1, attrs)
        elif type(event) is ins.ConnectionLost:
            self.connections.add(1, {"pool": event.pool, "event": "lost", "code": event.code})
        elif type(event) is ins.ConnectionDiscarded:
            attrs = {"pool": event.pool, "event": f"discarded_{event.reason}", "code": ""}
            self.connections.add(1, attrs)
        elif type(event) is ins.GenerationRetired:
            self.generations.add(1, {"pool": event.pool})
        elif type(event) is ins.DeadlineFired:
            self.deadlines.add(1, {"pool": event.pool})
        elif type(event) is ins.QueueBatchCommitted:
            self._queue_batch(event)
        elif type(event) is ins.WriteSetAside:
            attrs = {"name": event.name, "code": event.code, "sqlstate": event.sqlstate or ""}
            self.queue_failed.add(1, attrs)
        elif type(event) is ins.JournalReplayed:
            self.journal_replayed.add(event.writes, {"name": event.name})
        elif type(event) is ins.WorkerRestarted:
            self.worker_restarts.add(1, {"name": event.name, "code": event.code})

    def _level(self, counter: Any, levels: dict[str, int], name: str, value: int) -> None:
        """Move an up-down counter used as a gauge to *value*."""
        with self._lock:
            old = levels.get(name, 0)
            levels[name] = value
        if value != old:
            counter.add(value - old, {"name": name})

    def _pool_call(self, event: ins.PoolCallDone) -> None:
        attrs = {"pool": event.pool, "operation": event.operation, "outcome": event.outcome}
        self.call_duration.record(event.duration, attrs)
        self.calls.add(1, {**attrs, "code": event.code or ""})
        end = time.time_ns()
        span = self.tracer.start_span(
            f"{event.operation} {event.pool}",
            kind=SpanKind.CLIENT,
            start_time=end - int(event.duration * 1e9),
            attributes={
                "db.system": "postgresql",
                "db.system.name": "postgresql",
                "db.operation": event.operation,
                "db.operation.name": event.operation,
                "db.namespace": event.pool,
                "dbresilience.pool": event.pool,
                "dbresilience.attempts": event.attempts,
            },
        )
        pending = _pending(create=False) if _PENDING.get() is not None else None
        if pending:
            prefix = f"{event.pool} {event.operation}"
            for at, retry in pending:
                if retry.name == prefix:
                    span.add_event(
                        "retry",
                        {
                            "dbresilience.attempt": retry.attempt,
                            "dbresilience.code": retry.code,
                            "dbresilience.delay": retry.delay,
                        },
                        timestamp=at,
                    )
            pending.clear()
        if event.outcome != "ok":
            code = event.code or event.outcome
            span.set_attribute("error.type", code)
            span.set_attribute("dbresilience.code", code)
            if event.sqlstate:
                span.set_attribute("db.response.status_code", event.sqlstate)
            span.set_status(Status(StatusCode.ERROR, code))
        span.end(end_time=end)

    def _cache_load(self, event: ins.CacheLoaded) -> None:
        attrs = {"name": event.name, "outcome": event.outcome, "code": event.code or ""}
        self.cache_loads.add(1, attrs)
        self.cache_load_duration.record(event.duration, {"name": event.name})
        end = time.time_ns()
        span = self.tracer.start_span(
            f"cache load {event.name}",
            kind=SpanKind.INTERNAL,
            start_time=end - int(event.duration * 1e9),
            attributes={"dbresilience.cache": event.name},
        )
        if event.outcome != "ok":
            span.set_attribute("error.type", event.code or event.outcome)
            span.set_status(Status(StatusCode.ERROR, event.code or event.outcome))
        span.end(end_time=end)

    def _queue_batch(self, event: ins.QueueBatchCommitted) -> None:
        self.queue_written.add(event.rows, {"name": event.name})
        self.queue_batch_duration.record(event.duration, {"name": event.name})
        end = time.time_ns()
        span = self.tracer.start_span(
            f"queue batch {event.name}",
            kind=SpanKind.CLIENT,
            start_time=end - int(event.duration * 1e9),
            attributes={
                "db.system": "postgresql",
                "db.system.name": "postgresql",
                "db.operation.name": "BATCH",
                "db.operation.batch.size": event.rows,
                "dbresilience.queue": event.name,
            },
        )
        span.end(end_time=end)


def enable(meter_provider: Any = None, tracer_provider: Any = None) -> OpenTelemetryHook:
    """See :func:`dbresilience.instrumentation.enable_opentelemetry`."""
    hook = OpenTelemetryHook(meter_provider, tracer_provider)
    ins.add_hook(hook)
    return hook
