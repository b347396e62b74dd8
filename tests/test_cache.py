# WARNING: generated from test_cache_async.py by tools/async_to_sync.py: DO NOT EDIT.
# Change the async source, then run `python tools/async_to_sync.py`.
"""CredentialCache against a real Redis, including Redis failing.

Every behaviour is tested on both twins: the sync tests are generated from the async ones by
tools/async_to_sync.py. Tests that do no I/O (argument checks, key escaping) are in
tests/test_cache_base.py.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
import redis

import dbresilience as dbr
from dbresilience.faults import FaultProxy, TemporaryRedis

from .acompat import Event, gather, sleep, spawn

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


@pytest.fixture
def store(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client on ``redis_url``, to look at (or forge) what the caches keep there."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


# The Redis timeout of the tests that share values between instances through Redis: with the
# default (0.1 s) a loaded machine (two busy processes beside the suite) sometimes answered
# later, the cache degraded to memory only, and the test saw what it does not test.
SLOW = 2.0


def counting(value: object = CREDS, delay: float = 0.0) -> tuple[list[int], Callable[[], object]]:
    """A loader returning *value* after *delay* s, and the list its calls are counted in."""
    calls: list[int] = []

    def load() -> object:
        calls.append(1)
        if delay:
            sleep(delay)
        return value

    return (calls, load)


def creds() -> object:
    """The loader that always finds the user."""
    return CREDS


def until(condition: Callable[[], bool], seconds: float) -> float:
    """Wait until *condition()* holds (failing the test after *seconds*); the time it took."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if condition():
            return time.monotonic() - start
        sleep(0.01)
    pytest.fail(f"not within {seconds} s")


def both_subscribed(store: redis.Redis, cache: dbr.CredentialCache) -> None:
    """Until two instances listen on *cache*'s channel (each subscribes on a connection of its
    own after opening): an invalidation published before that is heard by nobody."""
    channel = cache.channel
    until(lambda: dict(store.pubsub_numsub(channel)).get(channel.encode(), 0) >= 2, 5.0)


def test_memory_only_caches_and_counts() -> None:
    """redis_url=None: the loader runs once, later calls are memory hits."""
    calls, load = counting()
    with dbr.CredentialCache(None, ttl=60) as cache:
        assert cache.get_or_load(7, load) == CREDS
        assert cache.get_or_load("7", load) == CREDS  # 7 and "7" are the same key
        assert len(calls) == 1
        stats = cache.stats()
        assert (stats["hits"], stats["misses"], stats["backend"]) == (1, 1, "memory")


def test_two_instances_share_values_and_redis_holds_the_serializer_bytes(
    redis_url: str, namespace: str, store: redis.Redis
) -> None:
    """What one instance loaded, another reads from Redis; Redis holds the format-2 frame around
    the serializer's bytes (MessagePack by default), never pickle."""
    calls, load = counting()
    with (
        dbr.CredentialCache(redis_url, namespace=namespace, timeout=SLOW) as a,
        dbr.CredentialCache(redis_url, namespace=namespace, timeout=SLOW) as b,
    ):
        assert a.get_or_load(7, load) == CREDS
        assert b.get_or_load(7, load) == CREDS
        assert len(calls) == 1
        assert b.stats()["redis_hits"] == 1
        raw = store.get(f"{namespace}:v1:7")
        assert raw is not None
        assert raw.startswith(b"2 mp1 v")
        assert dbr.MsgpackSerializer().loads(raw[len(b"2 mp1 v") :]) == CREDS


def test_invalidate_is_seen_by_the_other_instance_within_a_second(
    redis_url: str, namespace: str, store: redis.Redis
) -> None:
    """invalidate() on one instance drops the value from the other's memory and from Redis."""
    calls, load = counting()
    with (
        dbr.CredentialCache(redis_url, namespace=namespace, timeout=SLOW) as a,
        dbr.CredentialCache(redis_url, namespace=namespace, timeout=SLOW) as b,
    ):
        a.get_or_load(7, load)
        b.get_or_load(7, load)
        both_subscribed(store, a)
        a.invalidate(7)
        assert until(lambda: b._lookup("7") is None, 1.0) < 1.0
        assert b.get_or_load(7, load) == CREDS
        assert len(calls) == 2


def test_invalidate_several_keys_in_one_call(
    redis_url: str, namespace: str, store: redis.Redis
) -> None:
    """invalidate(a, b, c) drops all three here, in Redis and in the other instance."""
    with (
        dbr.CredentialCache(redis_url, namespace=namespace, timeout=SLOW) as a,
        dbr.CredentialCache(redis_url, namespace=namespace, timeout=SLOW) as b,
    ):
        for key in ("x", "y", "z"):
            a.get_or_load(key, creds)
            b.get_or_load(key, creds)
        both_subscribed(store, a)
        a.invalidate("x", "y", "z")
        until(lambda: all(b._lookup(k) is None for k in "xyz"), 1.0)
        assert all(store.get(f"{namespace}:v1:{k}") is None for k in "xyz")
        assert a.stats()["invalidations"] == 3


def test_a_slow_load_cannot_put_back_an_invalidated_value(
    redis_url: str, namespace: str, store: redis.Redis
) -> None:
    """A load that started before an invalidation does not store its (old) value."""
    with dbr.CredentialCache(redis_url, namespace=namespace, timeout=SLOW) as cache:
        started = Event()

        def slow() -> object:
            started.set()
            sleep(0.3)
            return {"credits": 10}

        loading = spawn(cache.get_or_load, 7, slow)
        started.wait()
        cache.invalidate(7)  # e.g. a credit deduction committed meanwhile
        assert gather(loading) == [{"credits": 10}]  # the caller still gets its value
        assert cache._lookup("7") is None
        assert store.get(f"{namespace}:v1:7") is None


def test_a_redis_hit_invalidated_before_it_is_kept_is_not_served_again(
    redis_url: str, namespace: str, store: redis.Redis
) -> None:
    """An invalidation arriving between a Redis hit's GET and its keeping in memory wins: the
    value is returned that once, not kept (the generation guard that loads use)."""
    with (
        dbr.CredentialCache(redis_url, namespace=namespace, timeout=SLOW) as a,
        dbr.CredentialCache(redis_url, namespace=namespace, timeout=SLOW) as b,
    ):
        a.get_or_load(7, creds)  # in Redis now
        both_subscribed(store, a)
        received: list[object] = []
        real_received, real_get = (b._received, b._client.get)

        def spy(data: bytes | str) -> None:
            real_received(data)
            received.append(data)

        def get_then_invalidated(name: str) -> object:
            raw = real_get(name)
            if not received:  # the first GET only: the invalidation lands right after it
                a.invalidate(7)
                until(lambda: bool(received), 1.0)
            return raw

        b._received = spy  # type: ignore[method-assign]
        b._client.get = get_then_invalidated
        assert b.get_or_load(7, creds) == CREDS
        assert b.stats()["redis_hits"] == 1
        assert b._lookup("7") is None


@pytest.mark.parametrize("failure", ["loader raises", "value not storable", "stale served"])
def test_a_failed_lease_holder_gives_the_lease_back(
    redis_url: str, namespace: str, store: redis.Redis, failure: str
) -> None:
    """With lease=True, a load that stores nothing releases its lease: the next instance loads
    at once instead of waiting out lease_ttl."""

    def broken() -> object:
        if failure == "value not storable":
            return {"roles": {"admin"}}
        raise psycopg.OperationalError("connection refused")  # transient

    # timeout=2: a Redis answer later than the default 0.1 s (a loaded machine) degrades the
    # cache to memory only, which is another test's subject, not this one's
    with (
        dbr.CredentialCache(
            redis_url, namespace=namespace, lease=True, ttl=0.1, jitter=0, stale_ttl=30, timeout=2
        ) as a,
        dbr.CredentialCache(
            redis_url, namespace=namespace, lease=True, lease_ttl=5, timeout=2
        ) as b,
    ):
        if failure == "stale served":
            a.get_or_load(7, creds)
            sleep(0.15)  # expired here and in Redis; still servable stale
            assert a.get_or_load(7, broken) == CREDS
        else:
            with pytest.raises((psycopg.OperationalError, TypeError)):
                a.get_or_load(7, broken)
        assert store.get(f"{namespace}:lease:7") is None
        start = time.monotonic()
        assert b.get_or_load(7, creds) == CREDS
        assert time.monotonic() - start < 1.0


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_values_must_be_storable_with_or_without_redis(
    redis_url: str, namespace: str, backend: str
) -> None:
    """A value the serializer cannot give back as it is (a set) is the caller's TypeError naming
    the type, memory-only as with Redis, and is never kept: the next call loads (and fails)
    again."""
    calls, load = counting({"roles": {"admin"}})
    url = redis_url if backend == "redis" else None
    with dbr.CredentialCache(url, namespace=namespace) as cache:
        for _ in range(2):
            with pytest.raises(TypeError, match="type set"):
                cache.get_or_load(7, load)
        assert len(calls) == 2
        assert cache._lookup("7") is None


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_single_flight_for_32_callers(redis_url: str, namespace: str, backend: str) -> None:
    """A stampede of 32 concurrent callers on a cold key calls the loader once."""
    calls, load = counting(delay=0.2)
    url = redis_url if backend == "redis" else None
    with dbr.CredentialCache(url, namespace=namespace) as cache:
        callers = [spawn(cache.get_or_load, "hot", load) for _ in range(32)]
        assert gather(*callers) == [CREDS] * 32
        assert len(calls) == 1
        assert cache.stats()["loads"] == 1


def test_cross_instance_lease_loads_a_cold_key_once(redis_url: str, namespace: str) -> None:
    """With lease=True, two instances stampeding a cold key call the loader once in all."""
    calls, load = counting(delay=0.2)
    # timeout=2: a Redis answer later than the default 0.1 s (seen beside two busy processes)
    # degrades both to memory only, and each then loads: not the lease's subject
    with (
        dbr.CredentialCache(redis_url, namespace=namespace, lease=True, timeout=SLOW) as a,
        dbr.CredentialCache(redis_url, namespace=namespace, lease=True, timeout=SLOW) as b,
    ):
        loads = [spawn(cache.get_or_load, 7, load) for cache in (a, b)]
        assert gather(*loads) == [CREDS, CREDS]
        assert len(calls) == 1


def test_failed_loads_are_not_cached() -> None:
    """A loader that raises: the caller gets its error; the next call loads again."""
    attempts = 0

    def flaky() -> object:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise psycopg.OperationalError("connection refused")
        return CREDS

    with dbr.CredentialCache(None) as cache:
        with pytest.raises(psycopg.OperationalError):
            cache.get_or_load(7, flaky)
        assert cache.get_or_load(7, flaky) == CREDS
        assert attempts == 2


def test_stale_served_within_stale_ttl_only() -> None:
    """After expiry, a transient loader failure serves the last value, but only within
    stale_ttl; a non-transient failure is never hidden."""

    def down() -> object:
        raise psycopg.OperationalError("connection refused")  # P1001: transient

    def bug() -> object:
        raise ValueError("a bug, not an outage")

    with dbr.CredentialCache(None, ttl=0.2, stale_ttl=1.0, jitter=0) as cache:
        cache.get_or_load(7, creds)
        sleep(0.3)
        assert cache.get_or_load(7, down) == CREDS
        assert cache.stats()["stale_served"] == 1
        with pytest.raises(ValueError, match="a bug"):
            cache.get_or_load(7, bug)
        sleep(1.0)  # past ttl + stale_ttl
        with pytest.raises(psycopg.OperationalError):
            cache.get_or_load(7, down)


def test_not_found_is_cached_briefly() -> None:
    """A loader's None is remembered for negative_ttl only."""
    calls, load = counting(value=None)
    with dbr.CredentialCache(None, negative_ttl=0.5, jitter=0) as cache:
        assert cache.get_or_load("ghost", load) is None
        assert cache.get_or_load("ghost", load) is None
        assert len(calls) == 1
        assert cache.stats()["negative_hits"] == 1
        sleep(0.6)
        assert cache.get_or_load("ghost", load) is None
        assert len(calls) == 2


def test_unsigned_or_foreign_values_are_misses(
    redis_url: str, namespace: str, store: redis.Redis
) -> None:
    """With a signing key, a value written without it (or tampered with) is a miss."""
    store.set(f"{namespace}:v1:7", json.dumps({"f": 1, "d": {"credits": 1000000}}))
    store.set(f"{namespace}:v1:8", b"\x80\x04pickle-looking bytes")
    _, wrong = counting({"wrong": True})
    key = b"k" * 32
    with (
        dbr.CredentialCache(
            redis_url, namespace=namespace, signing_key=key, timeout=SLOW
        ) as signed,
        dbr.CredentialCache(redis_url, namespace=namespace, signing_key=key, timeout=SLOW) as other,
    ):
        assert signed.get_or_load(7, creds) == CREDS  # the forged value was ignored
        assert signed.get_or_load(8, creds) == CREDS
        assert signed.stats()["redis_hits"] == 0
        assert other.get_or_load(7, wrong) == CREDS  # signed, shared
        assert other.stats()["redis_hits"] == 1


def test_bad_key_is_a_type_error_and_no_password_in_repr() -> None:
    """A key that is not str/int is a TypeError; the repr hides the Redis password."""
    cache = dbr.CredentialCache("redis://:hunter2@cache:6379/0")
    assert "hunter2" not in repr(cache)
    with pytest.raises(TypeError, match="key must be a str or an int"):
        cache.get_or_load(1.5, creds)  # type: ignore[arg-type]
    cache.close()


def test_redis_stopped_mid_run_then_restarted(redis_server: TemporaryRedis) -> None:
    """Redis stops: no error reaches a caller and calls stay fast; Redis returns: the cache
    uses it again and its memory tier was flushed."""
    cache = dbr.CredentialCache(redis_server.url, namespace="dbr-stop", probe_interval=0.1)
    client = redis.Redis.from_url(redis_server.url)
    try:
        cache.get_or_load(1, creds)
        assert cache.stats()["backend"] == "redis"
        redis_server.stop()
        start = time.monotonic()
        for i in range(200):
            assert cache.get_or_load(i, creds) == CREDS
        assert time.monotonic() - start < 0.5  # one bounded timeout at most, not 200
        assert cache.stats()["backend"] == "degraded"
        flushes = cache.stats()["flushes"]
        redis_server.start()
        until(lambda: cache.stats()["backend"] == "redis", 2.0)
        assert cache.stats()["flushes"] == flushes + 1
        assert cache._lookup("1") is None  # flushed: it may have been invalidated meanwhile
        cache.get_or_load(1, creds)
        assert client.get("dbr-stop:v1:1") is not None
    finally:
        client.close()
        cache.close()


def test_silent_redis_first_call_bounded_next_500_fast(
    redis_server: TemporaryRedis, make_proxy: Callable[[str, int], FaultProxy]
) -> None:
    """Redis accepts but never answers: the first call pays one timeout, the next 500 none."""
    proxy = make_proxy("127.0.0.1", redis_server.port)
    cache = dbr.CredentialCache(f"redis://127.0.0.1:{proxy.port}/0", namespace="dbr-silent")
    try:
        cache.get_or_load(1, creds)
        proxy.freeze()
        start = time.monotonic()
        assert cache.get_or_load(2, creds) == CREDS
        assert time.monotonic() - start < 0.1 + 0.2  # the 100 ms timeout, once
        start = time.monotonic()
        for i in range(500):
            assert cache.get_or_load(1000 + i, creds) == CREDS
        assert time.monotonic() - start < 0.5  # under a millisecond each
        assert cache.stats()["backend"] == "degraded"
    finally:
        proxy.restore()
        cache.close()
