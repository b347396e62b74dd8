"""Everything read from Redis is untrusted input: fuzzing the cache and the shared breaker state.

Whoever can write a key (another service, an operator, an attacker on the network) can put
anything there. Hypothesis writes garbage straight into the real Redis, under a namespace of
its own per example, and checks the promises:

- the cache treats every bad value as a miss: the loader runs and its value is returned; no
  error but the loader's reaches the caller, Redis is not given up on (a bad value is not Redis
  failing), and every call ends within a bounded time;
- the shared breaker state never turns garbage into an infinite or huge wait: the breaker goes
  on deciding (locally, or on honest signals) with finite ``retry_after`` values, and the
  poller lives on.

Hand-written (not generated): each example checks both cache twins.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msgspec.msgpack import Ext

import dbresilience as dbr

CREDS = {"id": 7, "credits": 12.5, "isPremium": False}
SIGNING_KEY = b"s" * 32
DEEP = 100_000  # nested lists: far past any recursion limit
CALL_BOUND = 2.0  # seconds one call may take against a garbage value (lease_ttl is 0.2 s)

FUZZ = settings(
    max_examples=60,
    deadline=None,  # time is asserted per call, with a bound that means something
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def store(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client to forge keys with; every key the examples made is deleted after."""
    client = redis.Redis.from_url(redis_url)
    yield client
    for key in client.scan_iter("dbr-untrusted-*"):
        client.delete(key)
    client.close()


def fresh_namespace() -> str:
    return f"dbr-untrusted-{uuid.uuid4().hex[:12]}"


# --- what a hostile writer can put in a cache key ---------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)


def _dumps(value: object) -> bytes:
    return json.dumps(value).encode()


# payloads of the right outline with something wrong: format version, keys, "not found" flag
wrong_versions = st.sampled_from([0, 2, -1, "1", True, 1.0, None, 10**30, [1]])
wrong_shapes = st.one_of(
    json_values.filter(lambda v: not isinstance(v, dict)).map(_dumps),
    st.builds(lambda f, d: _dumps({"f": f, "d": d}), wrong_versions, json_values),
    json_values.map(lambda d: _dumps({"d": d})),
    st.just(_dumps({"f": 1})),
    st.builds(lambda d, nf: _dumps({"f": 1, "d": d, "nf": nf}), json_values, json_values).filter(
        lambda raw: json.loads(raw)["nf"] != 1
    ),
    st.builds(lambda d, x: _dumps({"f": 1, "d": d, "x": x}), json_values, json_values),
)
bad_macs = st.builds(
    lambda d, m: _dumps({"f": 1, "d": d, "m": m}),
    json_values,
    st.one_of(st.text(max_size=70), st.integers(), st.none(), st.just("é" * 64)),
)
# --- the current format (``2 mp1 <kind>...``) with something wrong inside -----------------------

HEADER = b"2 mp1 "
MP = dbr.MsgpackSerializer()
_encode = msgspec.msgpack.encode


def _deep_tuples(depth: int) -> bytes:
    inner = _encode(None)
    for _ in range(depth):
        inner = _encode(Ext(1, inner))
    return inner


BAD_EXTENSIONS = [
    Ext(3, b"not a decimal"),
    Ext(3, b"\xff"),
    Ext(3, b"1e999999999999999999999"),
    Ext(4, b"2020-01-01T00:00:00|0|z../../../etc/passwd"),
    Ext(4, b"2020-01-01T00:00:00|0|zNo/Such_Zone"),
    Ext(4, b"2020-01-01T00:00:00|0|o999999999999999"),
    Ext(4, b"2020-01-01T00:00:00|7|"),
    Ext(4, b"garbage"),
    Ext(6, b"25:00|0|"),
    Ext(5, b"2020-13-45"),
    Ext(7, b"999999999999,0,0"),
    Ext(7, b"1,2"),
    Ext(8, b"short"),
    Ext(9, b"999.1.1.1"),
    Ext(12, b"::1/129"),
    Ext(15, _encode([1, 2, 3])),
    Ext(15, _encode([[1], 2])),  # an unhashable key
    Ext(15, _encode({"not": "pairs"})),
    Ext(16, _encode([99, 1, 2, "[)"])),
    Ext(16, _encode([0, 1, 2, "<>"])),
    Ext(16, _encode([0, 1])),
    Ext(17, _encode([0, [1, 2]])),
    Ext(18, _encode([5, {}])),
    Ext(18, b"\xc1"),
    Ext(1, b"\xc1"),
    Ext(1, _encode(5)),  # a "tuple" of an int
    Ext(2, b""),
    Ext(99, b""),
    Ext(-1, b"\x00"),  # a timestamp of the wrong size
]
bad_extensions = st.sampled_from(BAD_EXTENSIONS)
current_format_garbage = st.one_of(
    st.builds(
        lambda kind, b: HEADER + kind + b,
        st.sampled_from([b"v", b"n", b"V", b"N", b"x"]),
        st.binary(max_size=80),
    ),
    st.tuples(json_values, st.integers(min_value=0, max_value=200)).map(
        lambda pair: HEADER + b"v" + _encode(pair[0])[: pair[1]]  # truncated MessagePack
    ),
    st.just(HEADER + b"v" + b"\x91" * DEEP + b"\xc0"),
    st.sampled_from([b"\xdd", b"\xdf", b"\xdb", b"\xc6", b"\xc9"]).map(
        lambda head: HEADER + b"v" + head + b"\xff\xff\xff\xff"  # 4 G items, none there
    ),
    st.just(HEADER + b"v" + _deep_tuples(5_000)),
    bad_extensions.map(lambda ext: HEADER + b"v" + _encode([1, ext])),
    st.just(HEADER + b"n" + _encode(1)),
    st.just(HEADER + b"N" + b"0" * 31),
    st.builds(lambda d: b"2 json1 v" + _dumps(d), json_values),  # another serializer's
    st.builds(lambda d: b"1 mp1 v" + _encode(d), json_values),  # another format
    st.builds(lambda d: HEADER + b"V" + b"\x00" * 32 + _encode(d), json_values),  # bad MAC
)


garbage = st.one_of(
    current_format_garbage,
    st.binary(max_size=300),
    st.binary(max_size=50).map(lambda b: b'{"f":1,"d":"\xff\xfe' + b + b'"}'),  # bad UTF-8
    st.tuples(json_values, st.integers(min_value=0, max_value=10_000))
    .map(
        lambda pair: _dumps({"f": 1, "d": pair[0]})[: pair[1]]  # truncated JSON
    )
    .filter(lambda raw: not _is_json(raw)),
    st.just(b"[" * DEEP + b"]" * DEEP),
    st.just(b'{"f":1,"d":' + b"[" * DEEP + b"]" * DEEP + b"}"),
    st.just(b'{"f":1,"d":' + b'{"a":' * DEEP + b"1" + b"}" * DEEP + b"}"),
    st.sampled_from([10**5, 4 * 10**6]).map(lambda n: b'"' + b"a" * n + b'"'),  # huge string
    st.sampled_from([10**5, 4 * 10**6]).map(lambda n: b"\xff" * n),
    wrong_shapes,
    bad_macs,
)


def _is_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except ValueError:
        return False
    return True


def _valid_unsigned(raw: bytes) -> bool:
    """What an unsigned cache rightly takes as a hit: exactly the frame it writes (a signed one
    too: an unsigned cache ignores the MAC), around bytes its serializer reads."""
    if not raw.startswith(HEADER) or len(raw) == len(HEADER):
        return False
    kind, body = raw[len(HEADER)], raw[len(HEADER) + 1 :]
    if kind in b"VN":
        if len(body) < 32:
            return False
        body = body[32:]
    if kind in b"nN":
        return body == b""
    if kind not in b"vV":
        return False
    try:
        MP.loads(body)
    except Exception:
        return False
    return True


class Loader:
    """A loader that counts its calls and returns CREDS."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> object:
        self.calls += 1
        return CREDS

    async def aload(self) -> object:
        self.calls += 1
        return CREDS


def _check_sync(url: str, options: dict[str, Any], key: str) -> tuple[object, float, Any, int]:
    loader = Loader()
    with dbr.CredentialCache(url, **options) as cache:
        start = time.monotonic()
        value = cache.get_or_load(key, loader)
        elapsed = time.monotonic() - start
        return value, elapsed, cache.stats(), loader.calls


async def _check_async(
    url: str, options: dict[str, Any], key: str
) -> tuple[object, float, Any, int]:
    loader = Loader()
    async with dbr.AsyncCredentialCache(url, **options) as cache:
        start = time.monotonic()
        value = await cache.get_or_load(key, loader.aload)
        elapsed = time.monotonic() - start
        return value, elapsed, cache.stats(), loader.calls


@FUZZ
@given(
    raw=garbage,
    version=st.none() | st.binary(max_size=20),
    lease=st.none() | st.binary(max_size=20),
    signed=st.booleans(),
    twin=st.sampled_from(["sync", "async"]),
)
def test_garbage_in_a_cache_key_is_a_miss(
    redis_url: str,
    store: redis.Redis,
    raw: bytes,
    version: bytes | None,
    lease: bytes | None,
    signed: bool,
    twin: str,
) -> None:
    """A bad value (bytes, bad UTF-8, truncated or 100,000-deep JSON, huge strings, wrong
    shape or version, a bad HMAC), also with garbage in the version and lease keys: the loader
    runs once, its value is returned within a bounded time, Redis stays in use, and the bad
    value is overwritten (a second instance hits)."""
    if not signed and _valid_unsigned(raw):
        return  # a value of the right format is a hit, rightly
    namespace = fresh_namespace()
    options: dict[str, Any] = {"namespace": namespace, "lease_ttl": 0.2}
    if signed:
        options["signing_key"] = SIGNING_KEY
    if lease is not None:
        options["lease"] = True
        store.set(f"{namespace}:lease:7", lease, px=200)
    store.set(f"{namespace}:v1:7", raw)
    if version is not None:
        store.set(f"{namespace}:ver:7", version)
    try:
        check = _check_sync if twin == "sync" else lambda *a: asyncio.run(_check_async(*a))
        value, elapsed, stats, calls = check(redis_url, options, "7")
        assert value == CREDS
        assert calls == 1
        assert elapsed < CALL_BOUND
        assert (stats["backend"], stats["redis_errors"]) == ("redis", 0)
        value, _, stats, calls = check(redis_url, options, "7")  # a new instance: shared now
        assert (value, calls, stats["redis_hits"]) == (CREDS, 0, 1)
    finally:
        store.delete(*(f"{namespace}:{part}:7" for part in ("v1", "ver", "lease")))


@settings(max_examples=8, deadline=None)
@given(messages=st.lists(st.binary(max_size=100), min_size=1, max_size=10))
def test_garbage_on_the_invalidation_channel_is_harmless(
    redis_url: str, store: redis.Redis, messages: list[bytes]
) -> None:
    """Anything published on the invalidation channel (bad UTF-8, no separator, empty) leaves
    the cache on Redis, and a real invalidation still arrives after it."""
    namespace = fresh_namespace()
    with (
        dbr.CredentialCache(redis_url, namespace=namespace) as cache,
        dbr.CredentialCache(redis_url, namespace=namespace) as peer,
    ):
        cache.get_or_load(7, Loader())
        channel = cache.channel
        deadline = time.monotonic() + 2.0
        while dict(store.pubsub_numsub(channel)).get(channel.encode(), 0) < 2:
            assert time.monotonic() < deadline, "the caches never subscribed"
            time.sleep(0.01)
        for message in messages:
            store.publish(channel, message)
        store.publish(channel, b"\xff\xfe|\xff")
        peer.invalidate(7)
        while cache._lookup("7") is not None:
            assert time.monotonic() < deadline, "the real invalidation never arrived"
            time.sleep(0.01)
        assert (cache.stats()["backend"], cache.stats()["redis_errors"]) == ("redis", 0)
    store.delete(f"{namespace}:v1:7", f"{namespace}:ver:7")


# --- the shared breaker state -------------------------------------------------------------------

replies = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.binary(max_size=20)
    | st.text(max_size=20)
    | st.sampled_from([b"inf", b"-inf", b"nan", b"1e400", "inf", b"\xff\xfe"]),
    lambda children: st.lists(children, max_size=8),
    max_leaves=30,
)


@settings(max_examples=100, deadline=None)
@given(reply=replies, quorum=st.integers(min_value=1, max_value=3))
def test_any_poll_reply_gives_a_finite_view(reply: object, quorum: int) -> None:
    """Whatever shape a poll reply has (not a list, odd lengths, non-numeric or non-finite
    scores, bad UTF-8 members, huge numbers), the view is a finite time within an hour."""
    state = dbr.RedisBreakerState("redis://unused", quorum=quorum)
    until = state._absorb(reply)  # type: ignore[arg-type]
    assert math.isfinite(until)
    assert until == 0.0 or until <= time.monotonic() + 3600


def _poll_twice(state: dbr.RedisBreakerState, name: str) -> None:
    """Wait for two fresh polls of *name* (each overwrites a planted sentinel): the second
    certainly read what was written before the first began."""
    for _ in range(2):
        state._views[name] = -1.0
        deadline = time.monotonic() + 2.0
        while state._views.get(name) == -1.0:
            assert time.monotonic() < deadline, "the poller stopped polling"
            time.sleep(0.005)


def _wait_asked(breaker: dbr.CircuitBreaker) -> float | None:
    """None when *breaker* lets a call through, else the retry_after it answers with."""
    try:
        breaker.acquire()
    except dbr.CircuitOpen as exc:
        return exc.retry_after
    return None


scores = st.one_of(
    st.floats(allow_nan=False),
    st.sampled_from([math.inf, -math.inf, 1e300, -1e300, 2**63]),
    st.floats(min_value=-3600e3, max_value=7200e3).map(lambda ahead: time.time() * 1000 + ahead),
)


@settings(max_examples=25, deadline=None)
@given(
    entries=st.dictionaries(st.binary(max_size=20), scores, max_size=8),
    wrong_type=st.sampled_from([None, "string", "list", "hash"]),
    quorum=st.integers(min_value=1, max_value=3),
)
def test_garbage_in_the_breaker_set_keeps_decisions_finite(
    redis_url: str,
    store: redis.Redis,
    entries: dict[bytes, float],
    wrong_type: str | None,
    quorum: int,
) -> None:
    """Garbage members and scores (infinite, huge, negative, far ahead, bad UTF-8), or a key
    of the wrong type: the view stays finite and within an hour, a rejection's retry_after is
    at most open_for, the poller keeps polling, and the breaker still opens on local evidence."""
    namespace = fresh_namespace()
    state = dbr.RedisBreakerState(redis_url, namespace=namespace, quorum=quorum, refresh=0.02)
    key = state.key("db")
    if wrong_type == "string":
        store.set(key, b"\xff garbage")
    elif wrong_type == "list":
        store.rpush(key, b"inf", b"\xff")
    elif wrong_type == "hash":
        store.hset(key, b"member", b"inf")
    elif entries:
        store.zadd(key, entries)  # type: ignore[arg-type]
    breaker = dbr.CircuitBreaker("db", minimum_calls=3, open_for=2.0, shared=state)
    try:
        state.open()
        _poll_twice(state, "db")
        assert math.isfinite(state.open_until("db"))
        assert state.open_until("db") <= time.monotonic() + 3600
        wait = _wait_asked(breaker)
        assert wait is None or 0 <= wait <= 2.0
        store.delete(key)
        _poll_twice(state, "db")  # the poller lives on, and sees the set gone
        assert state.open_until("db") == 0.0
        for _ in range(3):
            breaker.record(breaker.acquire(), ConnectionRefusedError(), time.monotonic())
        with pytest.raises(dbr.CircuitOpen) as info:
            breaker.acquire()
        assert 0 < info.value.retry_after <= 2.0
    finally:
        state.close()
        store.delete(key)


@pytest.mark.parametrize("signed", [False, True])
def test_every_bad_extension_is_a_miss_never_an_error(signed: bool) -> None:
    """Each forged extension (a bad Decimal, a time zone path outside the zone database, a huge
    timedelta, odd key/value pairs, an unhashable key, an unknown range class, 5,000 nested
    tuples ...) decodes as a miss (or, where the bytes happen to be valid, a value): never an
    exception."""
    cache = dbr.CredentialCache(None, signing_key=SIGNING_KEY if signed else None)
    for ext in BAD_EXTENSIONS:
        ok, _, _ = cache._read("7", HEADER + b"v" + _encode([1, ext]))
        assert ok is (not signed and _valid_unsigned(HEADER + b"v" + _encode([1, ext])))
    assert cache._read("7", HEADER + b"v" + _deep_tuples(5_000)) == (False, None, None)
