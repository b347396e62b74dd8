"""What the instrumentation costs per call: no hook, Prometheus, OpenTelemetry (callgrind).

``python -m benchmarks.instrumentation`` (``make bench-instrumentation``). Instructions per call
of the success paths in this tree, counted as in :mod:`benchmarks.instructions` (two sizes, the
difference divided by the extra calls), with no hook installed, with ``enable_prometheus()`` and
with ``enable_opentelemetry()`` (the SDK's MeterProvider and TracerProvider, no exporter). The
"no hook" row against the commit before instrumentation is ``make bench-instructions``.
"""

from __future__ import annotations

import shutil

from benchmarks.instructions import DSN, ROOT, per_call

HOOKS = {
    "no hook": "",
    "Prometheus": "from dbresilience import instrumentation\ninstrumentation.enable_prometheus()\n",
    "OpenTelemetry (SDK)": (
        "from dbresilience import instrumentation\n"
        "from opentelemetry.sdk.metrics import MeterProvider\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "instrumentation.enable_opentelemetry(MeterProvider(), TracerProvider())\n"
    ),
}

WORKLOADS = {
    "with_retry success": ("f = dbr.with_retry(lambda: 1)", 5_000, 25_000),
    "CredentialCache memory hit": (
        "c = dbr.CredentialCache(namespace='x')\nload = lambda: {'v': 1}\n"
        "c.get_or_load('k', load)\nf = lambda: c.get_or_load('k', load)",
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


def main() -> int:
    """Print the table."""
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)")
        return 2
    print("## instructions per call with the instrumentation on (callgrind)\n")
    print(f"{'call':<28} {'hooks':<20} {'instructions':>12} {'ratio':>7}")
    print("-" * 70)
    for name, (setup, small, large) in WORKLOADS.items():
        base = 0.0
        for label, hook in HOOKS.items():
            count = per_call(ROOT / "src", hook + setup, small, large)
            base = base or count
            print(f"{name:<28} {label:<20} {count:>12,.0f} {count / base:>7.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
