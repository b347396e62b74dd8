"""Success-path overhead of overload protection: a breaker and a retry budget on every call."""

from __future__ import annotations

import statistics

import pybreaker

import dbresilience as dbr

from ._common import interleaved_per_call, interleaved_per_call_async, paired, print_table, spread


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
    timings = interleaved_per_call(sync, number=number)
    async_timings = interleaved_per_call_async(
        {
            "bare call": _awork,
            "with_retry(budget=None)": plain(_awork),
            "with_retry + budget + breaker": guarded(_awork),
        },
        number=number // 2,
    )
    rows = []
    for flavour, figures in (("sync", timings), ("async", async_timings)):
        bare, base = figures["bare call"], figures["with_retry(budget=None)"]
        rows += [
            (
                f"{flavour}: {name}",
                spread(t, 1e6),
                spread(paired(t, bare), 1e6),
                spread(paired(t, base), 1e6),
            )
            for name, t in figures.items()
        ]
    print_table(
        "overload protection: success-path overhead, median (min-max) of 7 interleaved rounds "
        "(defaults: RetryBudget and CircuitBreaker as constructed with a name only; pybreaker "
        "fail_max=5, reset_timeout=5) (target: breaker + budget <= 0.5 us added)",
        ("call", "us/call", "us vs bare", "us vs with_retry(budget=None)"),
        rows,
    )
    base = timings["with_retry(budget=None)"]
    return statistics.median(paired(timings["with_retry + budget + breaker"], base)) * 1e6
