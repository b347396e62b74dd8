"""Success-path overhead of overload protection: a breaker and a retry budget on every call."""

from __future__ import annotations

import pybreaker

import dbresilience as dbr

from ._common import per_call_async, per_call_sync, print_table


def _work() -> int:
    return 1


async def _awork() -> int:
    return 1


def run(quick: bool = False) -> float:
    """Print the table; return the µs that breaker + budget add to a sync with_retry call."""
    number = 20_000 if quick else 200_000
    plain = dbr.with_retry(budget=None)
    budgeted = dbr.with_retry(budget=dbr.RetryBudget("bench"))
    guarded = dbr.with_retry(budget=dbr.RetryBudget("bench"), breaker=dbr.CircuitBreaker("bench"))
    breaker = dbr.CircuitBreaker("bench-call")
    pyb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=5)
    sync = {
        "bare call": _work,
        "with_retry(budget=None)": plain(_work),
        "with_retry (default budget)": budgeted(_work),
        "with_retry + budget + breaker": guarded(_work),
        "CircuitBreaker.call": lambda: breaker.call(_work),
        "pybreaker call": lambda: pyb.call(_work),
    }
    timings = {name: per_call_sync(fn, number=number) for name, fn in sync.items()}
    async_timings = {
        "bare call": per_call_async(_awork, number=number // 2),
        "with_retry(budget=None)": per_call_async(plain(_awork), number=number // 2),
        "with_retry + budget + breaker": per_call_async(guarded(_awork), number=number // 2),
    }
    base = timings["with_retry(budget=None)"]
    rows = [
        (f"sync: {name}", t * 1e6, (t - timings["bare call"]) * 1e6, (t - base) * 1e6)
        for name, t in timings.items()
    ]
    abase = async_timings["with_retry(budget=None)"]
    rows += [
        (f"async: {name}", t * 1e6, (t - async_timings["bare call"]) * 1e6, (t - abase) * 1e6)
        for name, t in async_timings.items()
    ]
    print_table(
        "overload protection: success-path overhead (target: breaker + budget <= 0.5 us added)",
        ("call", "us/call", "us vs bare", "us vs with_retry(budget=None)"),
        rows,
    )
    return (timings["with_retry + budget + breaker"] - base) * 1e6
