"""Success-path overhead of a retry decorator: what every call pays when nothing fails."""

from __future__ import annotations

import backoff
import stamina
import tenacity

import dbresilience as dbr

from ._common import per_call_async, per_call_sync, print_table


def _work() -> int:
    return 1


async def _awork() -> int:
    return 1


def _sync_candidates() -> dict[str, object]:
    return {
        "bare call": _work,
        "dbresilience.with_retry": dbr.with_retry(attempts=3)(_work),
        "tenacity.retry": tenacity.retry(
            stop=tenacity.stop_after_attempt(3),
            wait=tenacity.wait_random_exponential(multiplier=0.1, max=2),
            reraise=True,
        )(_work),
        "stamina.retry": stamina.retry(on=Exception, attempts=3)(_work),
        "backoff.on_exception": backoff.on_exception(backoff.expo, Exception, max_tries=3)(_work),
    }


def _async_candidates() -> dict[str, object]:
    return {
        "bare call": _awork,
        "dbresilience.with_retry": dbr.with_retry(attempts=3)(_awork),
        "tenacity.retry": tenacity.retry(
            stop=tenacity.stop_after_attempt(3),
            wait=tenacity.wait_random_exponential(multiplier=0.1, max=2),
            reraise=True,
        )(_awork),
        "stamina.retry": stamina.retry(on=Exception, attempts=3)(_awork),
        "backoff.on_exception": backoff.on_exception(backoff.expo, Exception, max_tries=3)(_awork),
    }


def run(quick: bool = False) -> dict[str, float]:
    """Print the overhead table; return dbresilience's added µs per call (sync, async)."""
    number = 20_000 if quick else 200_000
    results: dict[str, float] = {}
    rows = []
    for flavour, candidates, timer in (
        ("sync", _sync_candidates(), per_call_sync),
        ("async", _async_candidates(), per_call_async),
    ):
        timings = {
            name: timer(fn, number=number if flavour == "sync" else number // 2)  # type: ignore[arg-type]
            for name, fn in candidates.items()
        }
        bare = timings["bare call"]
        ours = timings["dbresilience.with_retry"] - bare
        results[flavour] = ours * 1e6
        for name, seconds in timings.items():
            added = seconds - bare
            ratio = (
                ""
                if name in ("bare call", "dbresilience.with_retry")
                else (f"{added / ours:,.0f}x ours" if ours > 0 else "n/a")
            )
            rows.append((f"{flavour}: {name}", seconds * 1e6, added * 1e6, ratio))
    print_table(
        "with_retry: success-path overhead per call (target: <= 0.3 us added, >= 60x below "
        "tenacity)",
        ("decorator", "us/call", "us added", "added vs dbresilience"),
        rows,
    )
    return results
