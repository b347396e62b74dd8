"""Success-path overhead of a retry decorator: what every call pays when nothing fails."""

from __future__ import annotations

import statistics

import backoff
import stamina
import tenacity

import dbresilience as dbr

from ._common import interleaved_per_call, interleaved_per_call_async, paired, print_table, spread


def _work() -> int:
    return 1


async def _awork() -> int:
    return 1


def _sync_candidates() -> dict[str, object]:
    return {
        "bare call": _work,
        "dbresilience.with_retry": dbr.with_retry(attempts=3)(_work),  # default budget
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
    """Print the overhead table; return dbresilience's added µs per call (sync, async).

    Every decorator with 3 attempts and its defaults otherwise (with_retry's default
    per-policy retry budget on); medians (min-max) of 7 interleaved rounds, the added time
    paired round by round with the bare call.
    """
    number = 20_000 if quick else 200_000
    results: dict[str, float] = {}
    rows = []
    for flavour, timings in (
        ("sync", interleaved_per_call(_sync_candidates(), number=number)),  # type: ignore[arg-type]
        (
            "async",
            interleaved_per_call_async(_async_candidates(), number=number // 2),  # type: ignore[arg-type]
        ),
    ):
        bare = timings["bare call"]
        ours = statistics.median(paired(timings["dbresilience.with_retry"], bare))
        results[flavour] = ours * 1e6
        for name, seconds in timings.items():
            added = paired(seconds, bare)
            ratio = (
                ""
                if name in ("bare call", "dbresilience.with_retry")
                else (f"{statistics.median(added) / ours:,.0f}x ours" if ours > 0 else "n/a")
            )
            rows.append(
                (
                    f"{flavour}: {name}" + ("" if name == "bare call" else " (attempts=3)"),
                    spread(seconds, 1e6),
                    spread(added, 1e6) if name != "bare call" else "",
                    ratio,
                )
            )
    print_table(
        "with_retry: success-path overhead per call, median (min-max) of 7 interleaved rounds "
        "(target: <= 0.3 us added, >= 60x below tenacity)",
        ("decorator", "us/call", "us added", "added vs dbresilience"),
        rows,
    )
    return results
