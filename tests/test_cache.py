"""CredentialCache / AsyncCredentialCache against a real Redis, including Redis failing."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

import dbresilience as dbr
from dbresilience._cache_base import escape_key, unescape_key
from dbresilience.faults import FaultProxy, TemporaryRedis

CREDS = {"id": 7, "credits": 12.5, "isPremium": False}


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    """A unique namespace; every key under it is deleted after the test."""
    ns = f"dbr-cache-{uuid.uuid4().hex[:10]}"
    yield ns
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{ns}:*"):
        client.delete(key)
    client.close()


def counting(value: object = CREDS, delay: float = 0.0) -> tuple[list[int], Callable[[], object]]:
    calls: list[int] = []

    def load() -> object:
        calls.append(1)
        if delay:
            time.sleep(delay)
        return value

    return calls, load


def until(condition: Callable[[], bool], seconds: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if condition():
            return time.monotonic() - start
        time.sleep(0.01)
    pytest.fail(f"not within {seconds} s")


def test_memory_only_caches_and_counts() -> None:
    """redis_url=None: the loader runs once, later calls are memory hits."""
    calls, load = counting()
    with dbr.CredentialCache(None, ttl=60) as cache:
        assert cache.get_or_load(7, load) == CREDS
        assert cache.get_or_load("7", load) == CREDS  # 7 and "7" are the same key
        assert len(calls) == 1
        stats = cache.stats()
        assert (stats["hits"], stats["misses"], stats["backend"]) == (1, 1, "memory")


def test_two_instances_share_values_and_redis_holds_json(redis_url: str, namespace: str) -> None:
    """What one instance loaded, another reads from Redis; the stored value is plain JSON."""
    calls, load = counting()
    with (
        dbr.CredentialCache(redis_url, namespace=namespace) as a,
        dbr.CredentialCache(redis_url, namespace=namespace) as b,
    ):
        assert a.get_or_load(7, load) == CREDS
        assert b.get_or_load(7, load) == CREDS
        assert len(calls) == 1
        assert b.stats()["redis_hits"] == 1
        raw = redis.Redis.from_url(redis_url).get(f"{namespace}:v1:7")
        assert raw is not None
        assert json.loads(raw) == {"f": 1, "d": CREDS}


def test_invalidate_is_seen_by_the_other_instance_within_a_second(
    redis_url: str, namespace: str
) -> None:
    """invalidate() on one instance drops the value from the other's memory and from Redis."""
    calls, load = counting()
    with (
        dbr.CredentialCache(redis_url, namespace=namespace) as a,
        dbr.CredentialCache(redis_url, namespace=namespace) as b,
    ):
        a.get_or_load(7, load)
        b.get_or_load(7, load)
        time.sleep(0.3)  # both subscribed
        a.invalidate(7)
        assert until(lambda: b.lookup("7") is None, 1.0) < 1.0
        assert b.get_or_load(7, load) == CREDS
        assert len(calls) == 2


def test_a_slow_load_cannot_put_back_an_invalidated_value(redis_url: str, namespace: str) -> None:
    """A load that started before an invalidation does not store its (old) value."""
    with dbr.CredentialCache(redis_url, namespace=namespace) as cache:
        started = threading.Event()

        def slow() -> object:
            started.set()
            time.sleep(0.3)
            return {"credits": 10}

        worker = threading.Thread(target=lambda: cache.get_or_load(7, slow))
        worker.start()
        started.wait(2)
        cache.invalidate(7)  # e.g. a credit deduction committed meanwhile
        worker.join()
        assert cache.lookup("7") is None
        assert redis.Redis.from_url(redis_url).get(f"{namespace}:v1:7") is None


def test_single_flight_for_32_threads() -> None:
    """A stampede of 32 threads on a cold key calls the loader once."""
    calls, load = counting(delay=0.1)
    cache = dbr.CredentialCache(None)
    barrier = threading.Barrier(32)
    results: list[object] = []

    def caller() -> None:
        barrier.wait()
        results.append(cache.get_or_load("hot", load))

    threads = [threading.Thread(target=caller) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert results == [CREDS] * 32


async def test_single_flight_for_tasks(redis_url: str, namespace: str) -> None:
    """A stampede of 32 tasks on a cold key awaits the loader once (async twin)."""
    calls = 0

    async def load() -> object:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.1)
        return CREDS

    async with dbr.AsyncCredentialCache(redis_url=redis_url, namespace=namespace) as cache:
        results = await asyncio.gather(*(cache.get_or_load("hot", load) for _ in range(32)))
        assert calls == 1
        assert results == [CREDS] * 32


def test_failed_loads_are_not_cached() -> None:
    """A loader that raises: the caller gets its error; the next call loads again."""
    cache = dbr.CredentialCache(None)
    attempts = 0

    def flaky() -> object:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise psycopg.OperationalError("connection refused")
        return CREDS

    with pytest.raises(psycopg.OperationalError):
        cache.get_or_load(7, flaky)
    assert cache.get_or_load(7, flaky) == CREDS
    assert attempts == 2


def test_stale_served_within_stale_ttl_only() -> None:
    """After expiry, a transient loader failure serves the last value, but only within
    stale_ttl; a non-transient failure is never hidden."""
    cache = dbr.CredentialCache(None, ttl=0.1, stale_ttl=0.3, jitter=0)
    cache.get_or_load(7, lambda: CREDS)
    time.sleep(0.15)

    def down() -> object:
        raise psycopg.OperationalError("connection refused")  # P1001: transient

    assert cache.get_or_load(7, down) == CREDS
    assert cache.stats()["stale_served"] == 1

    def bug() -> object:
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError, match="a bug"):
        cache.get_or_load(7, bug)
    time.sleep(0.35)  # past ttl + stale_ttl
    with pytest.raises(psycopg.OperationalError):
        cache.get_or_load(7, down)


def test_not_found_is_cached_briefly() -> None:
    """A loader's None is remembered for negative_ttl only."""
    calls, load = counting(value=None)
    cache = dbr.CredentialCache(None, negative_ttl=0.1, jitter=0)
    assert cache.get_or_load("ghost", load) is None
    assert cache.get_or_load("ghost", load) is None
    assert len(calls) == 1
    assert cache.stats()["negative_hits"] == 1
    time.sleep(0.15)
    cache.get_or_load("ghost", load)
    assert len(calls) == 2


def test_redis_stopped_mid_run_then_restarted(redis_server: TemporaryRedis) -> None:
    """Redis stops: no error reaches a caller and calls stay fast; Redis returns: the cache
    uses it again and its memory tier was flushed."""
    cache = dbr.CredentialCache(redis_server.url, namespace="dbr-stop", probe_interval=0.1)
    try:
        cache.get_or_load(1, lambda: CREDS)
        assert cache.stats()["backend"] == "redis"
        redis_server.stop()
        start = time.monotonic()
        for i in range(200):
            assert cache.get_or_load(i, lambda: CREDS) == CREDS
        assert time.monotonic() - start < 0.5  # one bounded timeout at most, not 200
        assert cache.stats()["backend"] == "degraded"
        flushes = cache.stats()["flushes"]
        redis_server.start()
        until(lambda: cache.stats()["backend"] == "redis", 2.0)
        assert cache.stats()["flushes"] == flushes + 1
        assert cache.stats()["size"] == 0 or cache.lookup("1") is None
        cache.get_or_load(1, lambda: CREDS)
        assert redis.Redis.from_url(redis_server.url).get("dbr-stop:v1:1") is not None
    finally:
        cache.close()


def test_silent_redis_first_call_bounded_next_500_fast(
    redis_server: TemporaryRedis, make_proxy: Callable[[str, int], FaultProxy]
) -> None:
    """Redis accepts but never answers: the first call pays one timeout, the next 500 none."""
    proxy = make_proxy("127.0.0.1", redis_server.port)
    cache = dbr.CredentialCache(f"redis://127.0.0.1:{proxy.port}/0", namespace="dbr-silent")
    try:
        cache.get_or_load(1, lambda: CREDS)
        proxy.freeze()
        start = time.monotonic()
        assert cache.get_or_load(2, lambda: CREDS) == CREDS
        first = time.monotonic() - start
        assert first < 0.1 + 0.2
        start = time.monotonic()
        for i in range(500):
            cache.get_or_load(1000 + i, lambda: CREDS)
        assert time.monotonic() - start < 0.5  # under a millisecond each
        assert cache.stats()["backend"] == "degraded"
    finally:
        proxy.restore()
        cache.close()


def test_unsigned_or_foreign_values_are_misses(redis_url: str, namespace: str) -> None:
    """With a signing key, a value written without it (or tampered with) is a miss."""
    client = redis.Redis.from_url(redis_url)
    client.set(f"{namespace}:v1:7", json.dumps({"f": 1, "d": {"credits": 1e9}}))
    client.set(f"{namespace}:v1:8", b"\x80\x04pickle-looking bytes")
    signed = dbr.CredentialCache(redis_url, namespace=namespace, signing_key=b"k" * 32)
    try:
        assert signed.get_or_load(7, lambda: CREDS) == CREDS  # the forged value was ignored
        assert signed.get_or_load(8, lambda: CREDS) == CREDS
        assert signed.stats()["redis_hits"] == 0
        other = dbr.CredentialCache(redis_url, namespace=namespace, signing_key=b"k" * 32)
        assert other.get_or_load(7, lambda: {"wrong": True}) == CREDS  # signed, shared
        other.close()
    finally:
        signed.close()
        client.close()


def test_cross_instance_lease_loads_a_cold_key_once(redis_url: str, namespace: str) -> None:
    """With lease=True, two instances stampeding a cold key call the loader once in all."""
    calls, load = counting(delay=0.2)
    a = dbr.CredentialCache(redis_url, namespace=namespace, lease=True)
    b = dbr.CredentialCache(redis_url, namespace=namespace, lease=True)
    try:
        threads = [threading.Thread(target=lambda c=c: c.get_or_load(7, load)) for c in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(calls) == 1
    finally:
        a.close()
        b.close()


async def test_async_twin_shares_invalidates_and_degrades(
    redis_server: TemporaryRedis,
) -> None:
    """The async cache: values shared, invalidation seen, Redis stop survived."""

    async def load() -> object:
        return CREDS

    async with (
        dbr.AsyncCredentialCache(
            redis_url=redis_server.url, namespace="dbr-async", probe_interval=0.1
        ) as a,
        dbr.AsyncCredentialCache(redis_url=redis_server.url, namespace="dbr-async") as b,
    ):
        await a.get_or_load(7, load)
        assert await b.get_or_load(7, load) == CREDS
        assert b.stats()["redis_hits"] == 1
        await asyncio.sleep(0.3)
        await a.invalidate(7)
        for _ in range(100):
            if b.lookup("7") is None:
                break
            await asyncio.sleep(0.01)
        assert b.lookup("7") is None
        redis_server.stop()
        for i in range(100):
            assert await a.get_or_load(100 + i, load) == CREDS
        assert a.stats()["backend"] == "degraded"


@given(st.one_of(st.text(), st.integers()))
def test_key_escaping_is_injective_and_colon_free(key: str | int) -> None:
    """Escaped keys never contain ':' and decode back to the key (so no two keys collide)."""
    escaped = escape_key(key)
    assert ":" not in escaped
    assert unescape_key(escaped) == str(key)
    assert escaped == urllib.parse.quote(str(key), safe="")


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"ttl": 0}, "ttl"),
        ({"maxsize": 0}, "maxsize"),
        ({"jitter": 0.9}, "jitter"),
        ({"namespace": ""}, "namespace"),
        ({"signing_key": b"short"}, "signing_key"),
        ({"stale_ttl": -1}, "stale_ttl"),
    ],
)
def test_bad_cache_arguments(kwargs: dict[str, object], name: str) -> None:
    """Invalid configuration fails at construction, naming the argument."""
    with pytest.raises(ValueError, match=name):
        dbr.CredentialCache(None, **kwargs)  # type: ignore[arg-type]


def test_bad_keys_and_values_and_no_password_in_repr() -> None:
    """A key that is not str/int is a TypeError; the repr hides the Redis password."""
    cache = dbr.CredentialCache("redis://:hunter2@cache:6379/0")
    assert "hunter2" not in repr(cache)
    with pytest.raises(TypeError):
        cache.get_or_load(1.5, lambda: 1)  # type: ignore[arg-type]


def test_invalidate_several_keys_in_one_call(redis_url: str, namespace: str) -> None:
    """invalidate(a, b, c) drops all three here, in Redis and in the other instance."""
    with (
        dbr.CredentialCache(redis_url, namespace=namespace) as a,
        dbr.CredentialCache(redis_url, namespace=namespace) as b,
    ):
        for key in ("x", "y", "z"):
            a.get_or_load(key, lambda: CREDS)
            b.get_or_load(key, lambda: CREDS)
        time.sleep(0.3)
        a.invalidate("x", "y", "z")
        until(lambda: all(b.lookup(k) is None for k in "xyz"), 1.0)
        client = redis.Redis.from_url(redis_url)
        assert all(client.get(f"{namespace}:v1:{k}") is None for k in "xyz")
        client.close()
        assert a.stats()["invalidations"] == 3
