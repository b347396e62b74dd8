"""The process-wide event stream, Prometheus, OpenTelemetry and logs, after real faults."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import dbresilience as dbr
from dbresilience import _instrument, instrumentation
from dbresilience.faults import FaultProxy, TemporaryPostgres

KILL_SELF = "select pg_terminate_backend(pg_backend_pid())"


@pytest.fixture(autouse=True)
def _no_hooks() -> Iterator[None]:
    """Every test starts and ends with no process-wide hook installed."""
    instrumentation.set_hooks([])
    yield
    instrumentation.set_hooks([])


def scrape(registry: CollectorRegistry) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The registry's real exposition text, parsed: sample name -> [(labels, value)]."""
    text = generate_latest(registry).decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(
    samples: dict[str, list[tuple[dict[str, str], float]]], metric: str, **labels: str
) -> float:
    """The sum of *metric*'s samples whose labels include *labels* (0 when none)."""
    return sum(
        v for lab, v in samples.get(metric, []) if all(lab.get(k) == x for k, x in labels.items())
    )


def event_classes() -> list[type[_instrument.Event]]:
    """Every concrete event class."""
    return [
        obj
        for obj in vars(_instrument).values()
        if isinstance(obj, type)
        and issubclass(obj, _instrument.Event)
        and obj is not _instrument.Event
    ]


def test_every_event_is_frozen_and_exported() -> None:
    """Each occurrence has one frozen, slotted event class, exported by the public module."""
    classes = event_classes()
    assert len(classes) == 21
    for cls in classes:
        assert dataclasses.is_dataclass(cls)
        assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
        assert "__slots__" in vars(cls)
        assert getattr(instrumentation, cls.__name__) is cls
        assert cls.kind != "event"


def test_no_hook_means_no_event_is_built(
    pg_cluster: TemporaryPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no hook installed, retries, lost connections, give-ups and breaker moves build no
    event object at all (every event class refuses to be built)."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("an event was built with no hook installed")

    for cls in event_classes():
        monkeypatch.setattr(cls, "__init__", refuse)
    breaker = dbr.CircuitBreaker("nohook", minimum_calls=2, failure_rate=0.5, open_for=60)
    with dbr.Pool(pg_cluster.dsn, min_size=1, name="nohook", breaker=breaker) as pool:
        assert pool.fetchone("select 1") == (1,)
        with pytest.raises(psycopg.OperationalError):
            pool.fetchone(KILL_SELF)  # 1 of 2 calls failed: the breaker opens
        with pytest.raises(dbr.CircuitOpen):
            pool.fetchone("select 1")

    @dbr.with_retry(attempts=2, base_delay=0)
    def flaky() -> None:
        raise psycopg.errors.SerializationFailure("conflict")

    with pytest.raises(psycopg.errors.SerializationFailure):
        flaky()

    def down() -> object:
        raise psycopg.OperationalError("connection refused")

    with dbr.CredentialCache(None, namespace="nohook", ttl=0.01, stale_ttl=30, jitter=0) as cache:
        cache.get_or_load(1, lambda: 1)  # miss, load
        time.sleep(0.02)
        assert cache.get_or_load(1, down) == 1  # failed load, stale served


def test_warm_up_calls_are_neither_announced_nor_counted_nor_in_the_breaker(
    pg_cluster: TemporaryPostgres,
) -> None:
    """open() warms each connection outside the breaker, the budget and the counters: the hooks
    see no call, stats()["calls"] is 0, and three failures right after open() open a breaker
    with minimum_calls=3 (warm-up successes in its window would dilute them; with a slow-call
    threshold below the round trip, warm-up outcomes would open it before the first call)."""
    seen: list[instrumentation.Event] = []
    instrumentation.set_hooks([seen.append])
    breaker = dbr.CircuitBreaker(
        "warm", minimum_calls=3, open_for=30, slow_call_duration=0.000001, slow_call_rate=0.5
    )
    with dbr.Pool(pg_cluster.dsn, min_size=2, breaker=breaker, query_timeout=0.5) as pool:
        calls = (instrumentation.PoolCallDone, instrumentation.AcquireWaited)
        assert not [e for e in seen if isinstance(e, calls)]
        assert pool.stats()["calls"] == 0
        # unprepared: no statement of the warm-up is left prepared on either connection
        for _ in range(2):
            assert pool.fetchall("select name from pg_prepared_statements") == []
        assert breaker.state is dbr.CircuitState.CLOSED
        breaker = dbr.CircuitBreaker("warm2", minimum_calls=3, open_for=30)
    with dbr.Pool(pg_cluster.dsn, min_size=2, breaker=breaker, query_timeout=0.5) as pool:
        pg_cluster.stop("fast")
        try:
            for _ in range(3):
                with pytest.raises(psycopg.OperationalError):
                    pool.fetchone("select 1")
            assert breaker.state is dbr.CircuitState.OPEN
            assert pool.stats()["calls"] == 3
        finally:
            pg_cluster.start()


def test_warm_up_neither_counts_nor_probes_a_breaker_or_budget_it_shares(
    pg_cluster: TemporaryPostgres,
) -> None:
    """open()'s warm-up goes through the caller's call path uncounted: a shared budget and a
    closed breaker count no call, a half-open breaker (shared with a caller that saw the
    database fail) gives no probe slot to it and is not closed by it, an open one refuses
    nothing to it; the first real call is then the probe that decides."""
    budget = dbr.RetryBudget("warm-shared")
    breaker = dbr.CircuitBreaker("warm-shared", minimum_calls=2, open_for=60)
    with dbr.Pool(pg_cluster.dsn, min_size=2, breaker=breaker, budget=budget) as pool:
        assert budget.stats()["calls"] == 0
        assert breaker.stats()["calls"] == 0
        pool.fetchone("select 1")
        assert budget.stats()["calls"] == 1
        assert breaker.stats()["calls"] == 1
    breaker = dbr.CircuitBreaker("warm-open", minimum_calls=2, open_for=60, half_open_calls=2)
    for _ in range(2):
        breaker.record(
            breaker.acquire(), psycopg.OperationalError("connection refused"), time.monotonic()
        )
    assert breaker.state is dbr.CircuitState.OPEN
    with dbr.Pool(pg_cluster.dsn, min_size=2, breaker=breaker) as pool:
        stats = breaker.stats()
        assert stats["rejected"] == 0
        assert stats["probes"] == 0
        assert stats["state"] in ("open", "half_open")
        breaker.evidence()
        assert breaker.state is dbr.CircuitState.HALF_OPEN
        pool._warm_calls(time.monotonic() + 5.0)  # again, half-open: still no probe taken
        assert breaker.state is dbr.CircuitState.HALF_OPEN
        assert breaker.stats()["probes"] == 0
        for _ in range(2):
            assert pool.fetchone("select 1") == (1,)
        assert breaker.state is dbr.CircuitState.CLOSED


def test_warm_up_leaves_counts_on_their_own_clocks_and_never_erases_them(
    pg_dsn: str, pg_proxy: tuple[FaultProxy, str]
) -> None:
    """A breaker and a budget with clocks of their own (unlike the pool's) shared with other
    callers: open()'s warm-up neither stamps their windows with the pool's time nor erases the
    failures and retries others recorded while a warm-up call was slow (a call that outlived
    the window used to clear the newest slot when its end was counted at its start)."""
    fake = [1_000_000.0]
    refused = psycopg.OperationalError("connection refused")
    breaker = dbr.CircuitBreaker("warm-clock", minimum_calls=10, window=0.5, clock=lambda: fake[0])
    budget = dbr.RetryBudget("warm-clock", ratio=0.0, min_per_second=0.05, ttl=60.0)  # 3 retries
    withdrawn: list[bool] = []

    def others() -> None:  # another user of both, while the pool opens and warms
        for _ in range(6):
            time.sleep(0.1)
            breaker.record(breaker.acquire(), refused, fake[0])
            withdrawn.append(budget.try_withdraw())

    proxy, dsn = pg_proxy
    proxy.latency(0.1)  # warm-up calls of 0.2 s: longer than a breaker's slot
    thread = threading.Thread(target=others)
    thread.start()
    with dbr.Pool(dsn, min_size=1, breaker=breaker, budget=budget, connect_timeout=10):
        thread.join()
        assert withdrawn == [True, True, True, False, False, False]
        assert not budget.try_withdraw()
        stats = breaker.stats()
        assert (stats["calls"], stats["failures"]) == (6, 6)
        for _ in range(4):
            breaker.record(breaker.acquire(), refused, fake[0])
        assert breaker.state is dbr.CircuitState.OPEN


def test_a_call_older_than_the_window_erases_nothing() -> None:
    """A failure reported now for a call that started almost a window ago, whose ring place
    the newest slot holds, counts in the newest slot: it used to clear that slot, erasing the
    failures counted in it."""
    now = [100.0]
    refused = psycopg.OperationalError("connection refused")
    breaker = dbr.CircuitBreaker("stale", minimum_calls=6, window=1.0, clock=lambda: now[0])
    for _ in range(5):
        breaker.record(breaker.acquire(), refused, now[0])
    now[0] += 0.04
    breaker.record(breaker.acquire(), refused, 99.05)  # began 0.99 s ago: the same ring place
    stats = breaker.stats()
    assert (stats["calls"], stats["failures"]) == (6, 6)
    assert breaker.state is dbr.CircuitState.OPEN


def test_warm_up_is_short_for_a_distant_database(
    pg_dsn: str, pg_proxy: tuple[FaultProxy, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """open() warms with up to 20 calls on loopback (a fresh process's code and psycopg's
    prepared statement), but a database 20 ms away gets only the two per connection: open()
    must not spend a second of a cold start on warming."""
    starts: list[float] = []
    call = dbr.Pool._call

    def spy(self: dbr.Pool, *args: Any) -> Any:
        if args[-1] is False:  # counted=False: a warm-up call
            starts.append(time.monotonic())
        return call(self, *args)

    monkeypatch.setattr(dbr.Pool, "_call", spy)
    with dbr.Pool(pg_dsn, min_size=2):
        pass
    assert 4 <= len(starts) <= 20  # 20 unless a loaded machine took 25 ms for them
    proxy, dsn = pg_proxy
    proxy.latency(0.01)  # each way: a round trip of at least 20 ms
    starts.clear()
    with dbr.Pool(dsn, min_size=2, connect_timeout=10):
        pass
    assert len(starts) == 4


def test_min_size_zero_opens_nothing(pg_cluster: TemporaryPostgres) -> None:
    """A pool with min_size=0 (serverless, a pooler in front) opens no connection in open()."""
    with dbr.Pool(pg_cluster.dsn, min_size=0) as pool:
        assert pool.stats()["size"] == 0
        assert pool.fetchone("select 1") == (1,)


def test_hook_errors_never_change_the_outcome(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A hook that raises is logged and skipped; the call still answers."""

    def broken(event: instrumentation.Event) -> None:
        raise RuntimeError("hook bug")

    seen: list[instrumentation.Event] = []
    instrumentation.set_hooks([broken, seen.append])
    with dbr.Pool(pg_dsn, min_size=1, name="hookerr") as pool:
        assert pool.fetchone("select 1") == (1,)
    assert any(isinstance(e, instrumentation.PoolCallDone) for e in seen)
    assert "instrumentation hook" in caplog.text
    with pytest.raises(TypeError, match="callables"):
        instrumentation.set_hooks([3])  # type: ignore[list-item]


def test_prometheus_after_killed_backends_and_an_open_breaker(
    pg_cluster: TemporaryPostgres,
) -> None:
    """Backends killed under a call, then a breaker opening: the scraped exposition text has
    the calls, retries, give-ups, lost connections, retired generations, the breaker state and
    psycopg_pool's gauges, with low-cardinality labels (never the query text)."""
    registry = CollectorRegistry()
    hook = instrumentation.enable_prometheus(registry)
    assert instrumentation.enable_prometheus(registry) is hook  # idempotent per registry
    assert instrumentation.get_hooks() == (hook,)
    breaker = dbr.CircuitBreaker("prom-breaker", minimum_calls=2, failure_rate=0.5, open_for=60)
    with dbr.Pool(pg_cluster.dsn, min_size=2, name="prom", breaker=breaker) as pool:
        assert pool.fetchone("select 1") == (1,)
        with pytest.raises(psycopg.OperationalError):
            pool.fetchone(KILL_SELF)  # 1 of 2 calls failed: the breaker opens
        with pytest.raises(dbr.CircuitOpen):
            pool.fetchone("select 1")
        s = scrape(registry)
        assert value(s, "dbresilience_pool_pool_max", pool="prom") == 10  # read at scrape time
        assert "dbresilience_pool_connections_lost" in s or "dbresilience_pool_pool_size" in s
    ok = dict(pool="prom", operation="fetchone", outcome="ok", code="")
    assert value(s, "dbresilience_calls_total", **ok) == 1
    failed = dict(pool="prom", operation="fetchone", outcome="error", code="P1017")
    assert value(s, "dbresilience_calls_total", **failed) == 1
    assert value(s, "dbresilience_call_duration_seconds_count", pool="prom", outcome="error") == 1
    assert value(s, "dbresilience_retries_total", name="prom fetchone", code="P1017") >= 2
    given_up = dict(name="prom fetchone", code="P1017")
    assert value(s, "dbresilience_retries_given_up_total", **given_up) == 1
    assert value(s, "dbresilience_connection_events_total", pool="prom", event="lost") == 3
    assert value(s, "dbresilience_generations_retired_total", pool="prom") >= 1
    assert value(s, "dbresilience_breaker_state", name="prom-breaker") == 2  # open
    rejected = dict(pool="prom", outcome="rejected", code="DBR4001")
    assert value(s, "dbresilience_calls_total", **rejected) == 1  # failed fast: still counted
    assert (
        value(s, "dbresilience_breaker_transitions_total", name="prom-breaker", state="open") == 1
    )
    text = generate_latest(registry).decode()
    assert "pg_terminate_backend" not in text
    assert "select" not in text


def test_opentelemetry_spans_and_metrics_after_a_killed_backend(
    pg_cluster: TemporaryPostgres,
) -> None:
    """A pool call whose backend is killed under it becomes a CLIENT span with the database
    attributes, one span event per retry, ERROR status and the classification code as
    ``error.type``; the metrics are read back through the SDK's in-memory reader."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind, StatusCode

    reader = InMemoryMetricReader()
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentation.enable_opentelemetry(MeterProvider(metric_readers=[reader]), tracer_provider)
    with dbr.Pool(pg_cluster.dsn, min_size=1, name="otel", breaker=None) as pool:
        assert pool.fetchone("select 1") == (1,)
        with pytest.raises(psycopg.OperationalError):
            pool.fetchone(KILL_SELF)
    spans = [s for s in exporter.get_finished_spans() if s.name == "fetchone otel"]
    assert len(spans) == 2
    ok, failed = spans
    assert ok.kind is SpanKind.CLIENT
    assert ok.attributes is not None
    assert ok.attributes["db.system"] == "postgresql"
    assert ok.attributes["db.operation.name"] == "fetchone"
    assert ok.status.status_code is StatusCode.UNSET
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes is not None
    assert failed.attributes["error.type"] == "P1017"
    assert failed.attributes["db.response.status_code"] == "57P01"
    assert [e.name for e in failed.events] == ["retry", "retry"]
    assert failed.events[0].attributes == {
        "dbresilience.attempt": 2,
        "dbresilience.code": "P1017",
        "dbresilience.delay": pytest.approx(failed.events[0].attributes["dbresilience.delay"]),  # type: ignore[index]
    }
    assert failed.start_time is not None
    assert failed.end_time is not None
    assert failed.end_time > failed.start_time
    data = reader.get_metrics_data()
    assert data is not None
    points: dict[str, list[Any]] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
    calls = {
        (p.attributes["outcome"], p.attributes["code"]): p.value
        for p in points["dbresilience.calls"]
    }
    assert calls == {("ok", ""): 1, ("error", "P1017"): 1}
    retries = {p.attributes["code"]: p.value for p in points["dbresilience.retries"]}
    assert retries == {"P1017": 2}
    assert "dbresilience.call.duration" in points


def test_outage_logs_one_line_when_it_starts_and_one_when_it_ends(
    pg_cluster: TemporaryPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    """A stopped server: psycopg_pool's repeated "error connecting" WARNINGs become one line
    when the outage starts and one when the pool connects again, with the duration and the
    number of failed attempts."""
    caplog.set_level(logging.WARNING)
    with dbr.Pool(pg_cluster.dsn, min_size=2, name="outage", breaker=None) as pool:
        pg_cluster.stop(mode="immediate")
        with contextlib.suppress(psycopg.Error, dbr.DBResilienceError):
            pool.fetchone("select 1", timeout=0.5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and instrumentation_failures(pool) < 3:
            time.sleep(0.1)
        assert instrumentation_failures(pool) >= 3
        pg_cluster.start()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(psycopg.Error, dbr.DBResilienceError):
                if pool.fetchone("select 1", timeout=1) == (1,) and not _in_outage(pool):
                    break
            time.sleep(0.1)
    lines = [r.getMessage() for r in caplog.records]
    raw = [m for m in lines if m.startswith("error connecting in 'outage'")]
    started = [m for m in lines if "'outage' cannot connect" in m]
    ended = [m for m in lines if "'outage' connects again" in m]
    assert raw == []
    assert len(started) == 1
    assert "outage started" in started[0]
    assert len(ended) == 1
    assert " failed connection attempts" in ended[0]
    failures = int(ended[0].split("(")[1].split()[0])
    assert failures >= 3


def _in_outage(pool: dbr.Pool) -> bool:
    return instrumentation.summarise_connect_errors().in_outage(pool.name)


def instrumentation_failures(pool: dbr.Pool) -> int:
    """How many connect errors the summary has counted for *pool*'s current outage."""
    outage = instrumentation.summarise_connect_errors()._outages.get(pool.name)
    return 0 if outage is None else outage.failures


def test_request_context_filter_adds_the_request_id_and_extra_fields() -> None:
    """The logging filter gives every record request_id, code, attempt and elapsed; inside a
    request (dbresilience.web's context) request_id is that request's."""
    from dbresilience import web

    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "m", (), None)
    flt = instrumentation.RequestContextFilter()
    assert flt.filter(record)
    assert (record.request_id, record.code, record.attempt, record.elapsed) == (None,) * 4  # type: ignore[attr-defined]
    token = web._REQUEST_ID.set("req_abc")
    try:
        record = logging.LogRecord("x", logging.WARNING, __file__, 1, "m", (), None)
        flt.filter(record)
        assert record.request_id == "req_abc"  # type: ignore[attr-defined]
        assert instrumentation.add_request_context(None, "info", {})["request_id"] == "req_abc"
    finally:
        web._REQUEST_ID.reset(token)


def test_retry_log_lines_carry_code_attempt_and_elapsed(caplog: pytest.LogCaptureFixture) -> None:
    """The retry WARNING carries code, attempt and elapsed as extra fields."""

    @dbr.with_retry(attempts=2, base_delay=0, budget=None)
    def flaky() -> None:
        raise psycopg.errors.SerializationFailure("conflict")

    with caplog.at_level(logging.WARNING, "dbresilience"), pytest.raises(psycopg.Error):
        flaky()
    record = next(r for r in caplog.records if r.getMessage().startswith("retrying"))
    assert record.code == "P2034"  # type: ignore[attr-defined]
    assert record.attempt == 2  # type: ignore[attr-defined]
    assert record.elapsed >= 0  # type: ignore[attr-defined]


def test_structlog_and_logging_hooks_log_every_event() -> None:
    """The ready hooks turn events into structured log entries, fields as key/values."""
    import structlog

    with structlog.testing.capture_logs() as logs:
        hook = instrumentation.StructlogHook()
        hook(instrumentation.RetryScheduled("load", 2, 3, 0.1, 0.01, "P1001"))
    assert logs == [
        {
            "event": "retry_scheduled",
            "log_level": "info",
            "name": "load",
            "attempt": 2,
            "attempts": 3,
            "delay": 0.1,
            "elapsed": 0.01,
            "code": "P1001",
        }
    ]
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("dbresilience.test_events")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        instrumentation.LoggingHook(logger)(instrumentation.WriteSetAside("q", "P2002", "23505"))
    finally:
        logger.removeHandler(handler)
    assert records[0].levelno == logging.WARNING
    assert records[0].sqlstate == "23505"  # type: ignore[attr-defined]


def test_missing_extra_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without prometheus-client, enable_prometheus says which pip command installs it."""
    import sys

    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "dbresilience.instrumentation._prometheus", raising=False)
    with pytest.raises(dbr.MissingExtra, match=r"pip install 'dbresilience\[prometheus\]'"):
        instrumentation.enable_prometheus()
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.delitem(sys.modules, "dbresilience.instrumentation._otel", raising=False)
    with pytest.raises(dbr.MissingExtra, match=r"pip install 'dbresilience\[otel\]'"):
        instrumentation.enable_opentelemetry()
    monkeypatch.setitem(sys.modules, "structlog", None)
    with pytest.raises(dbr.MissingExtra, match=r"pip install 'dbresilience\[structlog\]'"):
        instrumentation.StructlogHook()


def test_instrumentation_imports_no_optional_dependency() -> None:
    """import dbresilience.instrumentation imports neither prometheus_client, OpenTelemetry nor
    structlog: each is imported only when its adapter is enabled."""
    import subprocess
    import sys

    code = (
        "import sys, dbresilience.instrumentation; "
        "print(sorted(m for m in ('prometheus_client', 'opentelemetry', 'structlog') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_prometheus_cache_series_when_redis_stops_and_returns(redis_server: Any) -> None:
    """A throwaway Redis stopped then started: the scrape shows misses, loads, memory and Redis
    hits, the cache degraded (1) and then restored (0); a failing loader with a stale value
    shows as a stale hit and a failed load. No key appears in any label."""
    registry = CollectorRegistry()
    instrumentation.enable_prometheus(registry)
    cache = dbr.CredentialCache(
        redis_server.url, namespace="obs-cache", probe_interval=0.1, ttl=60, stale_ttl=60
    )
    other = dbr.CredentialCache(redis_server.url, namespace="obs-cache")
    try:
        assert cache.get_or_load("secret-key-1", lambda: {"u": 1}) == {"u": 1}  # miss, load
        assert cache.get_or_load("secret-key-1", lambda: {"u": 2}) == {"u": 1}  # memory hit
        assert other.get_or_load("secret-key-1", lambda: {"u": 3}) == {"u": 1}  # Redis hit
        redis_server.stop()
        cache.get_or_load("secret-key-2", lambda: {"u": 4})
        assert value(scrape(registry), "dbresilience_cache_degraded", name="obs-cache") == 1
        redis_server.start()
        deadline = time.monotonic() + 5
        while cache.degraded and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not cache.degraded
    finally:
        cache.close()
        other.close()
    s = scrape(registry)
    assert value(s, "dbresilience_cache_degraded", name="obs-cache") == 0
    assert value(s, "dbresilience_cache_requests_total", name="obs-cache", result="miss") >= 2
    assert value(s, "dbresilience_cache_requests_total", name="obs-cache", result="hit_memory") == 1
    assert value(s, "dbresilience_cache_requests_total", name="obs-cache", result="hit_redis") == 1
    assert value(s, "dbresilience_cache_loads_total", name="obs-cache", outcome="ok") >= 2
    assert value(s, "dbresilience_cache_load_duration_seconds_count", name="obs-cache") >= 2
    assert "secret-key" not in generate_latest(registry).decode()

    def down() -> object:
        raise psycopg.OperationalError("connection refused")  # P1001: transient

    with dbr.CredentialCache(None, namespace="obs-stale", ttl=0.05, stale_ttl=30, jitter=0) as mem:
        mem.get_or_load(7, lambda: {"u": 7})
        time.sleep(0.06)
        assert mem.get_or_load(7, down) == {"u": 7}
    s = scrape(registry)
    assert value(s, "dbresilience_cache_requests_total", name="obs-stale", result="stale") == 1
    failed = dict(name="obs-stale", outcome="error", code="P1001")
    assert value(s, "dbresilience_cache_loads_total", **failed) == 1


def test_a_write_set_aside_is_counted_and_its_row_never_logged(
    pg_dsn: str, table_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A check-constraint violation in a write queue: the scrape shows the written rows, the
    write set aside with its code and SQLSTATE and the pending gauge; the row's data (which
    PostgreSQL quotes in ``DETAIL: Failing row contains (...)``) reaches no log record, even
    with the logging hook on, while failed_writes() keeps the full error."""
    secret = "PRIVATE-ROW-DATA-4711"
    registry = CollectorRegistry()
    instrumentation.enable_prometheus(registry)
    instrumentation.add_hook(instrumentation.LoggingHook())
    caplog.set_level(logging.DEBUG)
    t = psycopg.sql.Identifier(table_name)
    ledger = f"{table_name}_ledger"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            psycopg.sql.SQL("create table {} (k int, v text check (v not like 'PRIVATE%'))").format(
                t
            )
        )
    insert = f"insert into {t.as_string()} (k, v) values (%s, %s)"
    try:
        with (
            dbr.Pool(pg_dsn, min_size=1, name="obs-queue") as pool,
            dbr.WriteQueue(pool, ledger_table=ledger) as queue,
        ):
            s = scrape(registry)
            assert value(s, "dbresilience_queue_pending", name="obs-queue") == 0
            for i in range(20):
                queue.submit(insert, (i, "fine"))
            queue.submit(insert, (99, secret))
            assert queue.flush(timeout=30)
            failed = queue.failed_writes()
            s = scrape(registry)
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("drop table if exists {}").format(t))
            conn.execute(
                psycopg.sql.SQL("drop table if exists {}").format(psycopg.sql.Identifier(ledger))
            )
    assert len(failed) == 1
    assert secret in failed[0].error
    assert "Failing row contains" in failed[0].error
    aside = dict(name="obs-queue", code="P2004", sqlstate="23514")
    assert value(s, "dbresilience_queue_failed_total", **aside) == 1, s.get(
        "dbresilience_queue_failed_total"
    )
    assert value(s, "dbresilience_queue_written_total", name="obs-queue") == 20
    assert value(s, "dbresilience_queue_batch_duration_seconds_count", name="obs-queue") >= 1
    set_aside = [r for r in caplog.records if "set aside" in r.getMessage()]
    assert set_aside
    assert set_aside[0].sqlstate == "23514"
    for record in caplog.records:
        assert secret not in record.getMessage()
        assert secret not in repr(vars(record))
        if record.exc_info:
            assert secret not in logging.Formatter().formatException(record.exc_info)


def _doc_keys(section: str) -> list[str]:
    """The keys the table under *section* of docs/observability.md lists, in order."""
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "observability.md").read_text()
    part = doc.split(f"### {section}", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    keys: list[str] = []
    for line in part.splitlines():
        if line.startswith("| `"):
            keys += [k.strip(" `") for k in line.split("|")[1].split(",")]
    return keys


def test_stats_keys_are_documented_and_the_same_in_both_twins(pg_dsn: str) -> None:
    """Every stats() key of every resource is documented (counter, gauge, window or state) and
    the sync and async twins have exactly the same keys; no undocumented key."""
    pool, apool = dbr.Pool(pg_dsn, name="k"), dbr.AsyncPool(pg_dsn, name="k")
    cache, acache = dbr.CredentialCache(None), dbr.AsyncCredentialCache(None)
    queue, aqueue = dbr.WriteQueue(pool), dbr.AsyncWriteQueue(apool)
    pairs = {
        "`Pool.stats()` / `AsyncPool.stats()`": (pool.stats(), apool.stats()),
        "`CredentialCache.stats()` / `AsyncCredentialCache.stats()`": (
            cache.stats(),
            acache.stats(),
        ),
        "`WriteQueue.stats()` / `AsyncWriteQueue.stats()`": (queue.stats(), aqueue.stats()),
    }
    for section, (sync, async_) in pairs.items():
        assert list(sync) == list(async_), section
        assert sorted(_doc_keys(section)) == sorted(sync), section
    assert sorted(_doc_keys("`CircuitBreaker.stats()`")) == sorted(dbr.CircuitBreaker("b").stats())
    assert sorted(_doc_keys("`RetryBudget.stats()`")) == sorted(dbr.RetryBudget("b").stats())


def test_pop_stats_returns_the_counts_and_resets_only_counters(pg_dsn: str) -> None:
    """pop_stats() returns stats() and takes the counters off: the next pop sees only what
    happened since; gauges, states and the generation stay."""
    with dbr.Pool(pg_dsn, min_size=1, name="pop") as pool:
        for _ in range(3):
            pool.fetchone("select 1")
        first = pool.pop_stats()
        pool.fetchone("select 1")
        second = pool.pop_stats()
        assert (first["calls"], second["calls"], pool.stats()["calls"]) == (3, 1, 0)
        assert second["size"] >= 1
        assert second["breaker"] == "closed"
    with dbr.CredentialCache(None, namespace="pop") as cache:
        cache.get_or_load(1, lambda: 1)
        cache.get_or_load(1, lambda: 1)
        popped = cache.pop_stats()
        assert (popped["misses"], popped["memory_hits"], popped["size"]) == (1, 1, 1)
        after = cache.stats()
        assert (after["misses"], after["memory_hits"], after["size"]) == (0, 0, 1)
    queue = dbr.WriteQueue(object(), flush_interval=3600, batch_size=10**6)
    with queue:
        queue.submit("insert into t (k) values (%s)", (1,))
        popped = queue.pop_stats()
        assert (popped["submitted"], popped["pending"]) == (1, 1)
        assert (queue.stats()["submitted"], queue.stats()["pending"]) == (0, 1)
        queue._buffer.clear()  # nothing to write: the pool is not a pool


def test_grafana_dashboard_uses_only_exported_metric_names(pg_dsn: str) -> None:
    """Every dbresilience_* series the Grafana dashboard queries is one enable_prometheus()
    exports (its histograms' _bucket series included)."""
    import json
    import re
    from pathlib import Path

    path = Path(__file__).parent.parent / "docs" / "grafana" / "dbresilience-dashboard.json"
    dashboard = json.loads(path.read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"dbresilience_\w+", target["expr"])
    }
    registry = CollectorRegistry()
    instrumentation.enable_prometheus(registry)
    with dbr.Pool(pg_dsn, min_size=1, name="dash") as pool:
        text = generate_latest(registry).decode()
        assert pool.name in text
    exported = {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    } | {
        # families with no child yet expose only HELP/TYPE lines: take their declared names
        f"{family.name}{suffix}"
        for family in text_string_to_metric_families(text)
        for suffix in ("", "_total", "_bucket")
    }
    assert used
    assert used <= exported, used - exported


def test_opentelemetry_spans_for_cache_loads_and_queue_batches(
    pg_dsn: str, table_name: str
) -> None:
    """A cache load and a failed one, and a queue batch, each become a span (the failed load
    with ERROR and its code); the cache lookups are counted by result."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    reader = InMemoryMetricReader()
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentation.enable_opentelemetry(MeterProvider(metric_readers=[reader]), tracer_provider)

    def down() -> object:
        raise psycopg.OperationalError("connection refused")

    with dbr.CredentialCache(None, namespace="otel-cache") as cache:
        cache.get_or_load(1, lambda: 1)
        cache.get_or_load(1, lambda: 1)
        with pytest.raises(psycopg.OperationalError):
            cache.get_or_load(2, down)
    t = psycopg.sql.Identifier(table_name)
    ledger = f"{table_name}_ledger"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("create table {} (k int)").format(t))
    try:
        with (
            dbr.Pool(pg_dsn, min_size=1, name="otel-queue") as pool,
            dbr.WriteQueue(pool, ledger_table=ledger) as queue,
        ):
            for i in range(5):
                queue.submit(f"insert into {t.as_string()} (k) values (%s)", (i,))
            assert queue.flush(timeout=30)
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("drop table if exists {}").format(t))
            conn.execute(
                psycopg.sql.SQL("drop table if exists {}").format(psycopg.sql.Identifier(ledger))
            )
    spans = exporter.get_finished_spans()
    loads = [s for s in spans if s.name == "cache load otel-cache"]
    assert [s.status.status_code for s in loads] == [StatusCode.UNSET, StatusCode.ERROR]
    assert loads[1].attributes is not None
    assert loads[1].attributes["error.type"] == "P1001"
    batches = [s for s in spans if s.name == "queue batch otel-queue"]
    assert batches
    assert sum(s.attributes["db.operation.batch.size"] for s in batches) == 5  # type: ignore[index,misc]
    data = reader.get_metrics_data()
    assert data is not None
    results = {
        p.attributes["result"]: p.value
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "dbresilience.cache.requests"
        for p in m.data.data_points
    }
    assert results == {"miss": 2, "hit_memory": 1}


def test_connect_summary_starts_a_new_outage_after_a_long_quiet() -> None:
    """A pool closed mid-outage never reports its end: a connect error a minute after the last
    one starts a new outage (shown), instead of being swallowed as a repeat."""
    from dbresilience._logsummary import ConnectErrorSummary

    summary = ConnectErrorSummary()
    now = [1000.0]
    summary._clock = lambda: now[0]  # type: ignore[method-assign]

    def record() -> logging.LogRecord:
        error = psycopg.OperationalError("connection refused")
        args = ("p", error)
        return logging.LogRecord(
            "psycopg.pool", 30, "f", 1, "error connecting in %r: %s", args, None
        )

    assert summary.filter(record())  # the start is shown
    now[0] += 0.25
    assert not summary.filter(record())  # a repeat is counted, not shown
    now[0] += 120
    shown = record()
    assert summary.filter(shown)  # a lone error after a long quiet: a new outage
    assert "outage started" in shown.getMessage()
    other = logging.LogRecord("psycopg.pool", 30, "f", 1, "pool %r is ready", ("p",), None)
    assert summary.filter(other)
    assert other.getMessage() == "pool 'p' is ready"


async def test_the_fastapi_wiring_in_the_docs_runs_and_is_at_most_15_lines() -> None:
    """docs/observability.md's FastAPI wiring is at most 15 lines and runs as written: the
    metrics are served under /metrics and log lines carry the request id."""
    from pathlib import Path

    import httpx

    doc = (Path(__file__).parent.parent / "docs" / "observability.md").read_text()
    code = doc.split("## Wiring it into FastAPI", 1)[1].split("```python\n", 1)[1].split("```")[0]
    assert len(code.strip().splitlines()) <= 15
    namespace: dict[str, Any] = {}
    exec(compile(code, "observability.md", "exec"), namespace)  # noqa: S102 - our own docs
    try:
        transport = httpx.ASGITransport(app=namespace["app"])
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.get("/metrics/", headers={"X-Request-ID": "req-1"})
        text = response.text
        assert response.headers["x-request-id"] == "req-1"
        assert "dbresilience_calls_total" in text or "# TYPE dbresilience_calls" in text
    finally:
        logging.getLogger("dbresilience").removeHandler(namespace["handler"])


async def test_opentelemetry_retries_stay_with_their_own_task(
    pg_cluster: TemporaryPostgres,
) -> None:
    """Two tasks started after a retried call, each retried twice on the same pool: each span
    gets its own two retries, never its sibling's or its parent's."""
    import asyncio

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentation.enable_opentelemetry(tracer_provider=tracer_provider)
    async with dbr.AsyncPool(pg_cluster.dsn, min_size=2, name="tasks", breaker=None) as pool:
        with pytest.raises(psycopg.OperationalError):
            await pool.fetchone(KILL_SELF)  # the parent's context now holds a retry list

        async def child() -> None:
            with pytest.raises(psycopg.OperationalError):
                await pool.fetchone(KILL_SELF)

        await asyncio.gather(child(), child())
    spans = [s for s in exporter.get_finished_spans() if s.name == "fetchone tasks"]
    assert len(spans) == 3
    assert [len(s.events) for s in spans] == [2, 2, 2]
    for span in spans:
        assert [e.attributes["dbresilience.attempt"] for e in span.events] == [2, 3]  # type: ignore[index]


def test_pool_gauges_never_repeat_a_label_set(pg_dsn: str) -> None:
    """Two open pools with one name, and a closed one: each dbresilience_pool_* gauge has one
    sample per name (Prometheus refuses a scrape with duplicate samples), summed, and the
    closed pool is left out."""
    registry = CollectorRegistry()
    instrumentation.enable_prometheus(registry)
    closed = dbr.Pool(pg_dsn, min_size=1, name="twin")
    with closed:
        pass
    with dbr.Pool(pg_dsn, min_size=1, name="twin"), dbr.Pool(pg_dsn, min_size=1, name="twin"):
        s = scrape(registry)
    samples = [labels for labels, _ in s["dbresilience_pool_pool_max"] if labels["pool"] == "twin"]
    assert len(samples) == 1
    assert value(s, "dbresilience_pool_pool_max", pool="twin") == 20  # two open pools of 10


def test_discarded_connections_log_one_line_and_a_count(
    pg_cluster: TemporaryPostgres, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Backends terminated under six busy calls: psycopg_pool's "discarding closed connection"
    WARNING (one per broken connection) becomes one line when the burst starts and one with the
    count once it is quiet; the count is psycopg_pool's own ``returns_bad``."""
    import threading

    from dbresilience import _logsummary
    from dbresilience.faults import terminate_backends

    monkeypatch.setattr(_logsummary, "DISCARD_QUIET", 0.3)
    caplog.set_level(logging.WARNING)
    deadline = time.monotonic() + 5  # an earlier test's burst (a restart's discards) ends first
    while _logsummary.DISCARD_SUMMARY._count and time.monotonic() < deadline:
        time.sleep(0.05)
    caplog.clear()
    with dbr.Pool(pg_cluster.dsn, min_size=6, name="discards", breaker=None) as pool:
        pool._pool.wait(10)

        def busy() -> None:
            with contextlib.suppress(psycopg.Error, dbr.DBResilienceError):
                pool.fetchone("select pg_sleep(1)", timeout=5)

        workers = [threading.Thread(target=busy) for _ in range(6)]
        for worker in workers:
            worker.start()
        with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
            deadline = time.monotonic() + 10  # all six on the server, then the burst
            while (
                conn.execute(
                    "select count(*) from pg_stat_activity where query = 'select pg_sleep(1)'"
                    " and state = 'active'"
                ).fetchone()
                or (0,)
            )[0] < 6:
                assert time.monotonic() < deadline
                time.sleep(0.01)
        terminate_backends(pg_cluster.dsn)
        for worker in workers:
            worker.join()
        bad = pool._pool.get_stats().get("returns_bad", 0)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(
            "closed connections in" in r.getMessage() for r in caplog.records
        ):
            time.sleep(0.05)
    lines = [r.getMessage() for r in caplog.records if r.name == "psycopg.pool"]
    assert bad >= 3, lines
    assert [m for m in lines if m.startswith("discarding closed connection")] == []
    started = [m for m in lines if m.startswith("discarding connections the server")]
    ended = [m for m in lines if "closed connections in" in m]
    assert len(started) == 1, lines
    assert len(ended) == 1, lines
    assert ended[0].startswith(f"discarded {bad} closed connections in ")


def test_two_named_queues_on_one_pool_give_two_label_sets(pg_dsn: str, table_name: str) -> None:
    """``name=``: two queues on one pool are two series in a real scrape (written, batch
    duration, pending) and in their reprs; without it, a queue is still called by its pool."""
    registry = CollectorRegistry()
    instrumentation.enable_prometheus(registry)
    t = psycopg.sql.Identifier(table_name)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("create table {} (k int)").format(t))
    insert = f"insert into {t.as_string()} (k) values (%s)"
    try:
        with (
            dbr.Pool(pg_dsn, min_size=1, name="shared-pool") as pool,
            dbr.WriteQueue(pool, name="orders", ledger_table=f"{table_name}_l") as orders,
            dbr.WriteQueue(pool, name="audit", ledger_table=f"{table_name}_l") as audit,
            dbr.WriteQueue(pool, ledger_table=f"{table_name}_l") as plain,
        ):
            for i in range(3):
                orders.submit(insert, (i,))
            for i in range(5):
                audit.submit(insert, (i,))
            plain.submit(insert, (9,))
            assert all(q.flush(10) for q in (orders, audit, plain))
            s = scrape(registry)
            assert repr(orders) == "WriteQueue(name='orders', pending=0)"
            assert plain.name == "shared-pool"
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("drop table if exists {}").format(t))
            conn.execute(
                psycopg.sql.SQL("drop table if exists {}").format(
                    psycopg.sql.Identifier(f"{table_name}_l")
                )
            )
    written = {lab["name"]: v for lab, v in s["dbresilience_queue_written_total"]}
    assert written == {"orders": 3, "audit": 5, "shared-pool": 1}
    pending = {lab["name"] for lab, _ in s["dbresilience_queue_pending"]}
    assert {"orders", "audit", "shared-pool"} <= pending
    batches = {lab["name"] for lab, _ in s["dbresilience_queue_batch_duration_seconds_count"]}
    assert {"orders", "audit"} <= batches


@pytest.mark.parametrize(
    ("bad", "error"),
    [("", ValueError), ("a\nb", ValueError), ("x" * 201, ValueError), (7, TypeError)],
)
def test_queue_name_is_validated(bad: object, error: type[Exception]) -> None:
    """``name=`` must be a non-empty printable str of at most 200 characters; the message
    names the argument."""
    for cls in (dbr.WriteQueue, dbr.AsyncWriteQueue):
        with pytest.raises(error, match="name"):
            cls(dbr.Pool("host=127.0.0.1 dbname=test"), name=bad)  # type: ignore[arg-type]
