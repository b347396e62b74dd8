"""RetryBudget: retries stay within a fraction of calls plus the floor, deposits expire."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dbresilience as dbr
from dbresilience.faults import FaultProxy


class Clock:
    """A virtual monotonic clock for pure-logic tests."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@settings(max_examples=150)
@given(
    outcomes=st.lists(st.integers(0, 6), min_size=1, max_size=300),
    steps=st.lists(st.floats(0, 0.02), min_size=1, max_size=300),
    ratio=st.sampled_from([0.1, 0.2, 0.5]),
    floor=st.sampled_from([0.0, 0.5, 2.0]),
)
def test_retries_stay_within_ratio_plus_floor(
    outcomes: list[int], steps: list[float], ratio: float, floor: float
) -> None:
    """Whatever the mix of failures, retries <= ratio * calls + floor * ttl within a window."""
    clock = Clock()
    budget = dbr.RetryBudget(ratio=ratio, min_per_second=floor, ttl=10, clock=clock)
    calls = retries = 0
    for n, failures_before_success in enumerate(outcomes):
        clock.now += steps[n % len(steps)]  # < 6 s in all: one window, nothing expires
        budget.deposit()
        calls += 1
        for _ in range(failures_before_success):
            if not budget.try_withdraw():
                break
            retries += 1
    assert retries <= ratio * calls + floor * 10
    stats = budget.stats()
    assert stats["retries"] == retries
    assert stats["calls"] == calls


def test_deposits_expire_after_ttl() -> None:
    """Calls older than the ttl no longer pay for retries; only the floor is left."""
    clock = Clock()
    budget = dbr.RetryBudget(ratio=0.5, min_per_second=0.1, ttl=10, clock=clock)
    for _ in range(100):
        budget.deposit()
    clock.now += 11
    allowed = 0
    while budget.try_withdraw():
        allowed += 1
    assert allowed == 1  # the floor: 0.1/s * 10 s
    assert budget.stats()["exhausted"] == 1


def test_exhausted_budget_stops_with_retry_and_reports_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A spent budget makes with_retry give up at once, log a distinct line and call the hook."""
    seen: list[dbr.BudgetExhausted] = []
    budget = dbr.RetryBudget("db", ratio=0.0, min_per_second=0.1, ttl=10, on_exhausted=seen.append)
    calls = 0

    @dbr.with_retry(attempts=5, base_delay=0, budget=budget)
    def refused() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionRefusedError

    with caplog.at_level(logging.WARNING, logger="dbresilience"):
        with pytest.raises(ConnectionRefusedError):
            refused()  # the floor allows exactly one retry
        with pytest.raises(ConnectionRefusedError):
            refused()  # none left: one call, no retry
    assert calls == 3
    assert len(seen) == 2
    assert seen[0].budget == "db"
    assert seen[0].code == "P1001"
    assert seen[0].retried.endswith("refused")
    assert any("retry budget 'db' spent" in r.getMessage() for r in caplog.records)


def test_budget_none_switches_it_off() -> None:
    """budget=None retries up to attempts whatever the history."""
    calls = 0

    @dbr.with_retry(attempts=50, base_delay=0, deadline=None, budget=None)
    def refused() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionRefusedError

    with pytest.raises(ConnectionRefusedError):
        refused()
    assert calls == 50


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"ratio": -0.1}, "ratio"),
        ({"min_per_second": -1}, "min_per_second"),
        ({"ttl": 0.5}, "ttl"),
        ({"ttl": 61}, "ttl"),
    ],
)
def test_bad_budget_arguments(kwargs: dict[str, float], name: str) -> None:
    """Invalid budget configuration fails at construction, naming the argument."""
    with pytest.raises(ValueError, match=name):
        dbr.RetryBudget(**kwargs)


@pytest.mark.slow
def test_budget_bounds_a_storm_of_callers(pg_proxy: tuple[FaultProxy, str]) -> None:
    """200 concurrent callers against an unreachable database: attempts <= calls * 1.1 + floor.

    Without the budget each caller would make 5 attempts (1000 connection attempts).
    """
    proxy, dsn = pg_proxy
    proxy.down()
    budget = dbr.RetryBudget("storm", ratio=0.1, min_per_second=1, ttl=10)
    attempts = 0
    lock = threading.Lock()

    @dbr.with_retry(attempts=5, base_delay=0.01, max_delay=0.05, deadline=5, budget=budget)
    def connect() -> None:
        nonlocal attempts
        with lock:
            attempts += 1
        psycopg.connect(dsn, connect_timeout=2).close()

    errors: list[BaseException] = []
    barrier = threading.Barrier(200)

    def caller() -> None:
        barrier.wait()
        try:
            connect()
        except Exception as exc:
            errors.append(exc)

    run_threads(caller, 200)
    assert len(errors) == 200
    assert attempts <= 200 + 0.1 * 200 + 1 * 10  # the bound the budget promises
    assert budget.stats()["exhausted"] > 0


def run_threads(target: Callable[[], None], count: int) -> None:
    """Start *count* threads running *target* and wait for all of them."""
    threads = [threading.Thread(target=target) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
