"""ReadRouter: what routing costs a read, and what a broken replica costs one.

A throwaway primary with a streaming replica on loopback. Rows: ``select 1`` through the
replica's own ``dbr.Pool`` (what a user would write by hand) and through ``dbr.ReadRouter`` (the
replica chosen per read); then reads while the replica is stopped (the primary serves them) and
while the network to it is frozen (a fault proxy), with a 1 s deadline.
"""

from __future__ import annotations

import logging
import statistics
import time

import dbresilience as dbr
from dbresilience.faults import FaultProxy, TemporaryPostgres

from ._common import per_call_sync, print_table


def _latencies(fn: object, n: int) -> tuple[float, float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3, max(samples) * 1e3


def run(quick: bool = False) -> None:
    """Print the read-router table."""
    logging.getLogger("dbresilience").setLevel(logging.CRITICAL)
    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)
    number = 20_000 if quick else 100_000
    rows: list[tuple[object, ...]] = []
    with (
        TemporaryPostgres() as primary,
        primary.start_replica() as replica,
        FaultProxy("127.0.0.1", replica.port) as proxy,
    ):
        main = dbr.Pool(primary.dsn)
        with (
            dbr.Pool(replica.dsn) as direct,
            dbr.ReadRouter(main, [dbr.Pool(replica.dsn)]) as router,
        ):
            base = routed = float("inf")
            for _ in range(3):  # interleaved: the machine's load changes between rounds
                base = min(base, per_call_sync(lambda: direct.fetchone("select 1"), number=number))
                routed = min(
                    routed, per_call_sync(lambda: router.fetchone("select 1"), number=number)
                )
            rows.append(("replica's dbr.Pool.fetchone", base * 1e6, "1.00x", ""))
            rows.append(
                ("dbr.ReadRouter.fetchone (replica)", routed * 1e6, f"{routed / base:.2f}x", "")
            )
            replica.stop("fast")
            p50, worst = _latencies(lambda: router.fetchone("select 1", timeout=1.0), 200)
            rows.append(("replica stopped: p50 / max ms", f"{p50:.2f} / {worst:.1f}", "", ""))
            replica.start()
        with dbr.ReadRouter(dbr.Pool(primary.dsn), [dbr.Pool(proxy.dsn(replica.dsn))]) as router:
            proxy.freeze()
            p50, worst = _latencies(lambda: router.fetchone("select 1", timeout=1.0), 5)
            rows.append(
                (
                    "network to replica frozen, 1 s deadline: p50 / max ms",
                    f"{p50:.0f} / {worst:.0f}",
                    "",
                    "<= 1000",
                )
            )
            proxy.restore()
    print_table(
        "read router: select 1 on loopback (us per call unless said)",
        ("read", "us", "ratio", "target"),
        rows,
    )


if __name__ == "__main__":
    run()
