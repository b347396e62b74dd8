"""Timing helpers and the table printer shared by every benchmark."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence


def _calibrated(number: int, probe_seconds: float, target: float) -> int:
    """Enough calls for one repeat to take about *target* seconds, at most *number*."""
    if probe_seconds <= 0:
        return number
    return max(1_000, min(number, int(target / probe_seconds)))


def per_call_sync(
    fn: Callable[[], object], *, number: int = 200_000, repeat: int = 7, target: float = 0.15
) -> float:
    """Best-of-*repeat* seconds per call of *fn* (best: least disturbed by the machine).

    Each repeat makes about *target* seconds of calls (at most *number*), so slow candidates
    cost the run no more than fast ones.
    """
    start = time.perf_counter()
    for _ in range(1_000):
        fn()
    number = _calibrated(number, (time.perf_counter() - start) / 1_000, target)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - start) / number)
    return best


def per_call_async(
    fn: Callable[[], Awaitable[object]],
    *,
    number: int = 100_000,
    repeat: int = 7,
    target: float = 0.15,
) -> float:
    """Best-of-*repeat* seconds per awaited call of *fn*, on one event loop (calibrated)."""

    async def run() -> float:
        nonlocal number
        start = time.perf_counter()
        for _ in range(1_000):
            await fn()
        number = _calibrated(number, (time.perf_counter() - start) / 1_000, target)
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            for _ in range(number):
                await fn()
            best = min(best, (time.perf_counter() - start) / number)
        return best

    return asyncio.run(run())


def interleaved(
    calls: Mapping[str, Callable[[], object]], *, rounds: int = 7, per_round: int = 2_000
) -> dict[str, list[float]]:
    """Per-round median seconds of each call, the calls alternated one by one in shuffled
    order: whatever the machine or the server does to one round, it does to every call alike.
    """
    medians: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls.items())
    rng = random.Random(20261122)
    for _ in range(rounds):
        samples: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(per_round):
            rng.shuffle(order)
            for name, fn in order:
                start = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - start)
        for name, values in samples.items():
            medians[name].append(statistics.median(values))
    return medians


def ratio_row(
    medians: Mapping[str, Sequence[float]], name: str, base: str | None
) -> tuple[float, float | str, str]:
    """``(median us, median ratio to base, "lowest-highest" per-round ratio)`` for *name*."""
    us = statistics.median(medians[name]) * 1e6
    if base is None:
        return us, 1.0, ""
    ratios = [a / b for a, b in zip(medians[name], medians[base], strict=True)]
    return us, statistics.median(ratios), f"{min(ratios):.2f}-{max(ratios):.2f}"


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a plain-text table with right-aligned columns after the first."""
    cells = [[str(c) for c in header]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n## {title}\n")
    for n, row in enumerate(cells):
        line = "  ".join(
            c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)
        )
        print(line.rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def interleaved_rounds(
    candidates: Sequence[tuple[str, Callable[[], float]]], rounds: int, seed: int = 19
) -> dict[str, list[float]]:
    """Run every candidate once per round, in a shuffled order each round; each call returns
    its own figure (rows/s, us …). Alternating candidates round by round lets all of them meet
    the same machine: on this shared 2-core box a block of one candidate can land in a quiet
    minute and the next in a busy one."""
    import random

    figures: dict[str, list[float]] = {name: [] for name, _ in candidates}
    order = list(candidates)
    rng = random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for name, fn in order:
            figures[name].append(fn())
    return figures


def spread(values: Sequence[float], scale: float = 1.0, unit: str = "") -> str:
    """``median (min-max)`` of *values* times *scale*, thousands separated."""
    import statistics

    def fmt(x: float) -> str:
        x *= scale
        return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.2f}"

    return f"{fmt(statistics.median(values))}{unit} ({fmt(min(values))}-{fmt(max(values))})"


def _numbers(
    candidates: dict[str, Callable[[], object]], number: int, target: float
) -> dict[str, int]:
    numbers = {}
    for name, fn in candidates.items():
        start = time.perf_counter()
        for _ in range(1_000):
            fn()
        numbers[name] = _calibrated(number, (time.perf_counter() - start) / 1_000, target)
    return numbers


def interleaved_per_call(
    candidates: dict[str, Callable[[], object]],
    *,
    number: int = 200_000,
    rounds: int = 7,
    target: float = 0.1,
) -> dict[str, list[float]]:
    """Seconds per call of each candidate, one figure per round: every round runs every
    candidate (about *target* seconds of calls each, at most *number*) in a shuffled order, so
    all of them meet the same machine. Report the median with its range (:func:`spread`)."""
    import random

    numbers = _numbers(candidates, number, target)
    figures: dict[str, list[float]] = {name: [] for name in candidates}
    order = list(candidates.items())
    rng = random.Random(19)
    for _ in range(rounds):
        rng.shuffle(order)
        for name, fn in order:
            n = numbers[name]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            figures[name].append((time.perf_counter() - start) / n)
    return figures


def interleaved_per_call_async(
    candidates: dict[str, Callable[[], Awaitable[object]]],
    *,
    number: int = 100_000,
    rounds: int = 7,
    target: float = 0.1,
) -> dict[str, list[float]]:
    """:func:`interleaved_per_call` for coroutine functions, on one event loop."""
    import random

    async def run() -> dict[str, list[float]]:
        numbers = {}
        for name, fn in candidates.items():
            start = time.perf_counter()
            for _ in range(1_000):
                await fn()
            numbers[name] = _calibrated(number, (time.perf_counter() - start) / 1_000, target)
        figures: dict[str, list[float]] = {name: [] for name in candidates}
        order = list(candidates.items())
        rng = random.Random(19)
        for _ in range(rounds):
            rng.shuffle(order)
            for name, fn in order:
                n = numbers[name]
                start = time.perf_counter()
                for _ in range(n):
                    await fn()
                figures[name].append((time.perf_counter() - start) / n)
        return figures

    return asyncio.run(run())


def paired(values: Sequence[float], base: Sequence[float]) -> list[float]:
    """Round-by-round differences (``values[i] - base[i]``): what a candidate adds."""
    return [v - b for v, b in zip(values, base, strict=True)]
