"""Instructions per call on the success paths, this tree against an earlier commit.

``python -m benchmarks.instructions [REV]`` (default ``HEAD~1``; ``make bench-instructions
REV=...``). Wall-clock figures on a shared 2-core machine move by ±30 % between runs; the
instructions valgrind's callgrind counts do not (the same binary and inputs give the same count,
whatever else the machine does). Each workload runs at two sizes and the difference is divided by
the extra calls, so start-up and imports cancel out (``PYTHONHASHSEED=0``: the same dict layouts
in every run). Breakers and budgets count in time slots, so their figures still move by a few
per cent with how long a run takes under valgrind. Both trees run in the same interpreter and
virtual environment: only ``src/`` differs (the earlier one from a ``git worktree``).

Pool.fetchone counts the client's instructions only (the server is another process).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DSN = os.environ.get("DBR_TEST_DSN", "host=127.0.0.1 port=5432 dbname=test user=postgres")

#: name -> (setup code defining f, small N, large N)
WORKLOADS: dict[str, tuple[str, int, int]] = {
    "with_retry (default budget)": ("f = dbr.with_retry(lambda: 1)", 5_000, 25_000),
    "with_retry + budget + breaker": (
        "f = dbr.with_retry(budget=dbr.RetryBudget('b'), breaker=dbr.CircuitBreaker('b'))"
        "(lambda: 1)",
        5_000,
        25_000,
    ),
    "CircuitBreaker.call": (
        "b = dbr.CircuitBreaker('c')\nw = lambda: 1\nf = lambda: b.call(w)",
        5_000,
        25_000,
    ),
    "CredentialCache memory hit": (
        "c = dbr.CredentialCache(namespace='x')\nload = lambda: {'v': 1}\n"
        "c.get_or_load('k', load)\nf = lambda: c.get_or_load('k', load)",
        5_000,
        25_000,
    ),
    "WriteQueue.submit (no journal)": (
        "q = dbr.WriteQueue(object(), batch_size=10**7, flush_interval=3600, "
        "max_pending=10**7)\nq.open()\nn = iter(range(10**8))\n"
        "f = lambda: q.submit('insert into t (k) values (%s)', (next(n),))",
        5_000,
        25_000,
    ),
    "Pool.fetchone('select 1')": (
        f"pool = dbr.Pool({DSN!r}, min_size=1, max_size=1)\npool.open()\n"
        "f = lambda: pool.fetchone('select 1')",
        500,
        2_500,
    ),
}

_SCRIPT = """
import os, sys
import dbresilience as dbr
{setup}
for _ in range({n}):
    f()
os._exit(0)
"""


def _count(src: Path, setup: str, n: int) -> int:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as script:
        script.write(_SCRIPT.format(setup=setup, n=n))
    try:
        result = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
             script.name],
            env={**os.environ, "PYTHONPATH": str(src), "PYTHONHASHSEED": "0"},
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"the workload failed:\n{result.stderr[-3000:]}")
    finally:
        os.unlink(script.name)
    match = re.search(r"Collected : (\d+)", result.stderr)
    if match is None:
        raise RuntimeError(f"callgrind printed no total:\n{result.stderr[-2000:]}")
    return int(match.group(1))


def per_call(src: Path, setup: str, small: int, large: int) -> float:
    """Instructions per call of ``f()`` with the package from *src*."""
    return (_count(src, setup, large) - _count(src, setup, small)) / (large - small)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rev", nargs="?", default="HEAD~1", help="the commit to compare with")
    opts = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)")
        return 2
    with tempfile.TemporaryDirectory(prefix="dbr-bench-") as tmp:
        old = Path(tmp) / "old"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "-q", str(old), opts.rev], cwd=ROOT, check=True
        )
        try:
            print(f"## instructions per call: this tree against {opts.rev} (callgrind)\n")
            print(f"{'call':<34} {opts.rev[:12]:>12} {'this tree':>12} {'ratio':>7}")
            print("-" * 68)
            for name, (setup, small, large) in WORKLOADS.items():
                before = per_call(old / "src", setup, small, large)
                after = per_call(ROOT / "src", setup, small, large)
                print(f"{name:<34} {before:>12,.0f} {after:>12,.0f} {after / before:>7.3f}")
        finally:
            remove = ["git", "worktree", "remove", "--force", str(old)]
            subprocess.run(remove, cwd=ROOT, check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
