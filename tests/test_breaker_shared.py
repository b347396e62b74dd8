"""Shared breaker state in Redis: decisions cross processes; Redis trouble stays local."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

import dbresilience as dbr
from dbresilience.faults import TemporaryRedis

REFUSED = ConnectionRefusedError("connection refused")


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    """A unique key namespace; every key under it is deleted after the test."""
    ns = f"dbr-test-{uuid.uuid4().hex[:10]}"
    yield ns
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{ns}:*"):
        client.delete(key)
    client.close()


def open_breaker(breaker: dbr.CircuitBreaker) -> None:
    """Record enough transient failures to open *breaker*."""
    for _ in range(breaker.minimum_calls):
        permit = breaker.acquire()
        breaker.record(permit, REFUSED, time.monotonic())
    assert breaker.state is dbr.CircuitState.OPEN


def wait_until(condition: object, seconds: float) -> float:
    """Poll *condition* (a callable) until true; return the seconds it took, or fail."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if condition():  # type: ignore[operator]
            return time.monotonic() - start
        time.sleep(0.02)
    pytest.fail(f"condition not met within {seconds} s")


def test_an_opening_in_one_process_is_seen_by_another(redis_url: str, namespace: str) -> None:
    """Process B fails fast once process A's breaker opens, and flows again once A closes."""
    child = textwrap.dedent(
        f"""
        import sys, time
        import dbresilience as dbr
        with dbr.RedisBreakerState({redis_url!r}, namespace={namespace!r}, quorum=1,
                                   refresh=0.1) as state:
            breaker = dbr.CircuitBreaker("orders-db", shared=state)
            print("ready", flush=True)
            seen_open = None
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                try:
                    breaker.acquire()
                    if seen_open is not None:
                        print("closed-again", flush=True)
                        sys.exit(0)
                except dbr.CircuitOpen as exc:
                    if seen_open is None:
                        seen_open = time.monotonic()
                        print("open", round(exc.retry_after, 1), flush=True)
                time.sleep(0.02)
            sys.exit(1)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        with dbr.RedisBreakerState(redis_url, namespace=namespace, refresh=0.1) as state:
            breaker = dbr.CircuitBreaker("orders-db", minimum_calls=5, open_for=2.0, shared=state)
            opened_at = time.monotonic()
            open_breaker(breaker)
            line = proc.stdout.readline().split()
            assert line[0] == "open"
            assert time.monotonic() - opened_at < 1.0  # refresh 0.1 s, with margin
            assert 0 < float(line[1]) <= 2.0
            breaker.reset()  # closes here, and the signal is withdrawn
            assert proc.stdout.readline().strip() == "closed-again"
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_one_instance_alone_does_not_open_the_others_below_quorum(
    redis_url: str, namespace: str
) -> None:
    """With quorum 2, one sick instance opening does not open its peers; a second one does."""
    a = dbr.RedisBreakerState(redis_url, namespace=namespace, refresh=0.05).open()
    b = dbr.RedisBreakerState(redis_url, namespace=namespace, refresh=0.05).open()
    c = dbr.RedisBreakerState(redis_url, namespace=namespace, refresh=0.05).open()
    try:
        sick = dbr.CircuitBreaker("db", minimum_calls=3, open_for=5, shared=a)
        peer = dbr.CircuitBreaker("db", minimum_calls=3, open_for=5, shared=b)
        watcher = dbr.CircuitBreaker("db", shared=c)
        open_breaker(sick)
        time.sleep(0.3)
        watcher.acquire()  # one instance open: below quorum, calls flow
        open_breaker(peer)
        wait_until(lambda: c.open_until("db") > time.monotonic(), 2.0)
        with pytest.raises(dbr.CircuitOpen):
            watcher.acquire()
    finally:
        for state in (a, b, c):
            state.close()


def test_redis_down_falls_back_to_local_state_without_errors(
    redis_server: TemporaryRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """A stopped Redis: transitions and calls go on locally; nothing reaches the caller."""
    state = dbr.RedisBreakerState(redis_server.url, namespace="dbr-down", refresh=0.05).open()
    try:
        # the breaker's own clock, moved by hand: a stall of 0.2 s on a loaded machine
        # half-opened it on the real clock before the test could see it open
        clock = [time.monotonic()]
        breaker = dbr.CircuitBreaker(
            "db", minimum_calls=3, open_for=0.2, shared=state, clock=lambda: clock[0]
        )
        breaker.acquire()
        redis_server.stop()
        start = time.monotonic()
        for _ in range(3):  # publishing the opening fails in the background
            breaker.record(breaker.acquire(), REFUSED, clock[0])
        assert breaker.state is dbr.CircuitState.OPEN
        with pytest.raises(dbr.CircuitOpen):
            breaker.acquire()
        clock[0] += 0.3
        for _ in range(3):  # half-open probes succeed: closed, all while Redis is gone
            breaker.record(breaker.acquire(), None, clock[0])
        assert breaker.state is dbr.CircuitState.CLOSED
        assert time.monotonic() - start < 1.5  # no Redis timeout was paid on the call path
        wait_until(lambda: state.errors > 0, 2.0)
        assert not state.available
        assert sum("deciding locally" in r.getMessage() for r in caplog.records) == 1
    finally:
        state.close()


async def test_async_state_shares_openings(redis_url: str, namespace: str) -> None:
    """The asyncio twin: an opening on one instance is seen by the other (quorum 1)."""
    a = await dbr.AsyncRedisBreakerState(redis_url, namespace=namespace, refresh=0.05).open()
    b = await dbr.AsyncRedisBreakerState(
        redis_url, namespace=namespace, refresh=0.05, quorum=1
    ).open()
    try:
        sick = dbr.CircuitBreaker("db", minimum_calls=3, open_for=5, shared=a)
        other = dbr.CircuitBreaker("db", shared=b)
        open_breaker(sick)
        for _ in range(100):
            try:
                other.acquire()
            except dbr.CircuitOpen:
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail("the async state never saw the opening")
    finally:
        await a.close()
        await b.close()


def test_bad_shared_state_arguments() -> None:
    """Invalid configuration fails at construction, naming the argument; no password in repr."""
    with pytest.raises(ValueError, match="quorum"):
        dbr.RedisBreakerState("redis://x", quorum=0)
    with pytest.raises(ValueError, match="refresh"):
        dbr.RedisBreakerState("redis://x", refresh=0)
    state = dbr.RedisBreakerState("redis://:hunter2@cache:6379/0")
    assert "hunter2" not in repr(state)


def test_garbage_in_the_shared_set_never_holds_callers_forever(
    redis_url: str, namespace: str
) -> None:
    """Whoever can write the breaker's key: infinite, huge and bad-UTF-8 entries are ignored
    (no infinite wait), and the poller lives on to see honest openings."""
    client = redis.Redis.from_url(redis_url)
    state = dbr.RedisBreakerState(redis_url, namespace=namespace, quorum=2, refresh=0.05).open()
    try:
        breaker = dbr.CircuitBreaker("db", open_for=5.0, shared=state)
        key = state.key("db")
        client.zadd(key, {b"forever-1": "inf", b"forever-2": "inf", b"\xff\xfe-huge": 1e300})
        time.sleep(0.3)
        assert state.open_until("db") == 0.0  # none of them is a signal an instance writes
        breaker.acquire()
        client.delete(key)
        now_ms = int(time.time() * 1000)
        client.zadd(key, {b"peer-1": now_ms + 3000, b"peer-2": now_ms + 3000})
        wait_until(lambda: state.open_until("db") > time.monotonic(), 2.0)
        with pytest.raises(dbr.CircuitOpen) as info:
            breaker.acquire()
        assert 0 < info.value.retry_after <= 3.5
    finally:
        state.close()
        client.close()
