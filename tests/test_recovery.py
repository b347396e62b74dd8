"""No self-inflicted outage: once the database is back, the library does not keep its own door
shut (#17). The write queue's retries stay out of the breaker that guards reads, and a connection
made after connecting failed turns an open breaker half-open at once."""

from __future__ import annotations

import contextlib
import time

import psycopg
import pytest

import dbresilience as dbr
from dbresilience import CircuitState as S
from dbresilience.faults import TemporaryPostgres

REFUSED = ConnectionRefusedError("connection refused")


def test_evidence_turns_an_open_circuit_half_open() -> None:
    """evidence() ends an opening early; probes still decide; closed or half-open it does
    nothing."""
    now = [1000.0]
    breaker = dbr.CircuitBreaker("db", minimum_calls=2, open_for=60, half_open_calls=1,
                                 clock=lambda: now[0])  # fmt: skip
    breaker.evidence()
    assert breaker.state is S.CLOSED
    for _ in range(2):
        permit = breaker.acquire()
        breaker.record(permit, REFUSED, now[0])
    assert breaker.state is S.OPEN
    with pytest.raises(dbr.CircuitOpen):
        breaker.acquire()
    breaker.evidence()
    assert breaker.state is S.HALF_OPEN
    permit = breaker.acquire()  # the probe
    breaker.evidence()  # half-open: nothing changes, the probe slot stays taken
    with pytest.raises(dbr.CircuitOpen):
        breaker.acquire()
    breaker.record(permit, REFUSED, now[0])  # the probe failed: open for open_for again
    assert breaker.state is S.OPEN
    assert breaker.retry_after() == 60
    breaker.evidence()
    permit = breaker.acquire()
    breaker.record(permit, None, now[0])
    assert breaker.state is S.CLOSED


def test_queue_retries_do_not_trip_the_pools_breaker(pg_cluster: TemporaryPostgres) -> None:
    """The database stopped under a write queue: its batch retries leave the pool's breaker
    closed and uncounted; reads are judged by reads alone."""
    breaker = dbr.CircuitBreaker("db", minimum_calls=3, open_for=60)
    with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
        conn.execute("create table if not exists rq (k text)")
        conn.execute("truncate rq")
    with (
        dbr.Pool(pg_cluster.dsn, min_size=1, acquire_timeout=1.0, breaker=breaker) as pool,
        dbr.WriteQueue(pool, flush_interval=0.01) as queue,
    ):
        pg_cluster.stop("fast")
        for i in range(20):
            queue.submit("insert into rq (k) values (%s)", (f"k{i}",), key=f"k{i}")
        deadline = time.monotonic() + 10
        while queue.stats()["retried"] < 3:  # 4 failed attempts: the old code opened it
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert breaker.state is S.CLOSED
        assert breaker.stats()["calls"] == 0
        pg_cluster.start()
        assert queue.flush(10)
        assert queue.stats()["written"] == 20


def test_a_reconnect_ends_an_opening_early(pg_cluster: TemporaryPostgres) -> None:
    """Reads open the breaker while the database is down (open_for=30 s); once it is back, the
    pool's reconnect is evidence: reads succeed within a second, not after 30 s."""
    breaker = dbr.CircuitBreaker("db", minimum_calls=5, open_for=30)
    with dbr.Pool(pg_cluster.dsn, min_size=1, breaker=breaker) as pool:
        pg_cluster.stop("fast")
        deadline = time.monotonic() + 10
        while breaker.state is not S.OPEN:
            assert time.monotonic() < deadline
            with contextlib.suppress(Exception):  # failing is the point
                pool.fetchone("select 1", timeout=0.5)
            time.sleep(0.02)
        pg_cluster.start()
        back = time.monotonic()
        while True:
            try:
                assert pool.fetchone("select 1", timeout=1.0) == (1,)
                break
            except dbr.CircuitOpen:
                assert time.monotonic() - back < 1.0, "the breaker kept reads out"
                time.sleep(0.05)
        assert breaker.stats()["opened"] == 1
