"""``WriteQueue.submit`` p50, with and without a journal, on whatever dbresilience is imported.

Uses only what every version has, so the same script times an earlier commit::

    git archive <commit> src | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old/src .venv/bin/python -m benchmarks.submit_p50
    .venv/bin/python -m benchmarks.submit_p50

The worker never reaches a database (``flush_interval`` is an hour): only the caller's cost,
the journal write included, is timed. Prints the median of 5 rounds' p50 (lowest, highest).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Any

import dbresilience as dbr


class _NoDatabase:
    breaker = None

    def connection(self, timeout: float) -> Any:
        raise ConnectionRefusedError("no database in this benchmark")


def p50(journal: bool, n: int = 30_000, rounds: int = 5) -> tuple[float, float, float]:
    """Median, lowest and highest per-round p50 (µs) of ``submit(sql, (i, "v"))``."""
    results = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "q.journal") if journal else None
            queue = dbr.WriteQueue(
                _NoDatabase(),  # type: ignore[arg-type]
                journal=path,
                flush_interval=3600,
                batch_size=10**7,
                max_pending=10**7,
                drain_timeout=0,
            )
            queue.open()
            samples = []
            for i in range(n):
                start = time.perf_counter()
                queue.submit("insert into t (k, v) values (%s, %s)", (i, "v"))
                samples.append(time.perf_counter() - start)
            results.append(statistics.median(samples) * 1e6)
            queue.close()
    return statistics.median(results), min(results), max(results)


if __name__ == "__main__":
    print(dbr.__file__)
    for journal in (False, True):
        median, low, high = p50(journal)
        label = "journal   " if journal else "no journal"
        print(f"{label}  p50 {median:.2f} us  ({low:.2f}-{high:.2f})")
