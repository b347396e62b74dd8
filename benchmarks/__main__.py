"""`python -m benchmarks [--quick]`: every benchmark table, side by side with the alternatives."""

from __future__ import annotations

import platform
import sys

from . import (
    bench_breaker,
    bench_cache,
    bench_failover,
    bench_pool,
    bench_pooler,
    bench_queue,
    bench_recovery,
    bench_retry,
    bench_router,
    bench_serialize,
    bench_stream,
)


def main() -> int:
    quick = "--quick" in sys.argv
    print(f"# dbresilience benchmarks (Python {platform.python_version()}, {platform.machine()})")
    bench_retry.run(quick=quick)
    bench_breaker.run(quick=quick)
    bench_pool.run(quick=quick)
    bench_pooler.run(quick=quick)
    bench_cache.run(quick=quick)
    bench_serialize.run(quick=quick)
    bench_queue.run(quick=quick)
    bench_stream.run(quick=quick)
    bench_router.run(quick=quick)
    bench_failover.run(quick=quick)
    bench_recovery.run(quick=quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
