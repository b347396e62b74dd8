"""CredentialCache: memory hits, Redis-tier hits, calls while Redis is down, a stampede."""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
import uuid

import cachetools
import msgspec
import redis

import dbresilience as dbr
from dbresilience.faults import FaultProxy, TemporaryRedis

from ._common import interleaved, per_call_sync, print_table, ratio_row

REDIS = os.environ.get("DBR_TEST_REDIS", "redis://127.0.0.1:6379/0")
CREDS = {"id": 7, "credits": 12.5, "isPremium": False}


def _load() -> object:
    return CREDS


def run(quick: bool = False) -> None:
    """Print the cache table."""
    number = 20_000 if quick else 200_000
    rows: list[tuple[object, ...]] = []

    # 1. memory hit vs a bare cachetools.TTLCache lookup
    ttl_cache: cachetools.TTLCache[str, object] = cachetools.TTLCache(10_000, 60)
    ttl_cache["7"] = CREDS
    memory = dbr.CredentialCache(None)
    memory.get_or_load(7, _load)
    bare = per_call_sync(lambda: ttl_cache.get("7"), number=number)
    ours = per_call_sync(lambda: memory.get_or_load(7, _load), number=number)
    rows.append(("memory hit: cachetools.TTLCache.get", bare * 1e6, 1.0, "", ""))
    rows.append(("memory hit: CredentialCache.get_or_load", ours * 1e6, ours / bare, "", "<= 2x"))

    # 2. Redis-tier hit (memory misses every time) vs raw redis-py GET + decode, with the default
    # serializer (MessagePack) and with JsonSerializer, each against its own decode
    ns = f"dbr-bench-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(REDIS)
    default = dbr.CredentialCache(REDIS, namespace=ns, maxsize=1)
    as_json = dbr.CredentialCache(
        REDIS, namespace=f"{ns}-json", maxsize=1, serializer=dbr.JsonSerializer()
    )
    try:
        for cache in (default, as_json):
            for key in ("a", "b"):
                cache.get_or_load(key, _load)
        client.set("dbr-bench-raw-mp", msgspec.msgpack.encode(CREDS))
        client.set("dbr-bench-raw-json", json.dumps(CREDS))
        decode = msgspec.msgpack.Decoder().decode
        default_keys = itertools.cycle("ab")  # maxsize 1: every call misses memory
        json_keys = itertools.cycle("ab")
        medians = interleaved(
            {
                "raw-mp": lambda: decode(client.get("dbr-bench-raw-mp") or b"\xc0"),
                "raw-json": lambda: json.loads(client.get("dbr-bench-raw-json") or b"null"),
                "default": lambda: default.get_or_load(next(default_keys), _load),
                "json": lambda: as_json.get_or_load(next(json_keys), _load),
            },
            rounds=3 if quick else 7,
            per_round=number // 100,
        )
        assert default.stats()["loads"] == 2  # every timed call was a Redis-tier hit
        assert as_json.stats()["loads"] == 2
        for label, name, base, target in (
            ("raw redis-py GET + msgspec.msgpack decode", "raw-mp", None, ""),
            ("raw redis-py GET + json.loads", "raw-json", None, ""),
            ("CredentialCache, defaults (MsgpackSerializer)", "default", "raw-mp", "<= 1.2x"),
            ("CredentialCache, serializer=JsonSerializer()", "json", "raw-json", ""),
        ):
            rows.append(("Redis hit: " + label, *ratio_row(medians, name, base), target))
    finally:
        default.close()
        as_json.close()
        for key in client.scan_iter(f"{ns}*"):
            client.delete(key)
        client.delete("dbr-bench-raw-mp", "dbr-bench-raw-json")
        client.close()

    # 3. per call while Redis is down (stopped) or silent (a frozen proxy)
    with TemporaryRedis() as server:
        down = dbr.CredentialCache(server.url, namespace="dbr-bench-down", probe_interval=60)
        down.get_or_load(0, _load)
        server.stop()
        counter = iter(range(10**9))
        down.get_or_load("trigger", _load)  # pays the one bounded failure
        hit_t = per_call_sync(lambda: down.get_or_load(0, _load), number=number)
        down_t = per_call_sync(lambda: down.get_or_load(next(counter), _load), number=number)
        rows.append(("Redis stopped: a hit (memory)", hit_t * 1e6, "", "", "<= 10 us"))
        rows.append(
            ("Redis stopped: a miss, loaded, kept (cache full: evicts)", down_t * 1e6, "", "", "")
        )
        down.close()
        server.start()
        with FaultProxy("127.0.0.1", server.port) as proxy:
            silent = dbr.CredentialCache(
                f"redis://127.0.0.1:{proxy.port}/0",
                namespace="dbr-bench-silent",
                probe_interval=60,
            )
            silent.get_or_load(0, _load)
            proxy.freeze()
            start = time.perf_counter()
            silent.get_or_load("first", _load)
            first = time.perf_counter() - start
            silent_t = per_call_sync(
                lambda: silent.get_or_load(next(counter), _load), number=number
            )
            rows.append(
                ("Redis silent: the first call (one timeout)", first * 1e6, "", "", "bounded")
            )
            rows.append(("Redis silent: every later miss", silent_t * 1e6, "", "", "<= 10 us"))
            proxy.restore()
            silent.close()

    # 4. a stampede of 32 threads on a cold key
    calls = 0
    lock = threading.Lock()

    def slow_load() -> object:
        nonlocal calls
        with lock:
            calls += 1
        time.sleep(0.05)
        return CREDS

    stampede = dbr.CredentialCache(None)
    barrier = threading.Barrier(32)

    def caller() -> None:
        barrier.wait()
        stampede.get_or_load("cold", slow_load)

    threads = [threading.Thread(target=caller) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows.append(("32-thread stampede on a cold key: loader calls", calls, "", "", "1"))

    print_table(
        "credential cache (us per call unless said; Redis hits: median of interleaved rounds,"
        " spread = lowest-highest per-round ratio)",
        ("case", "us/call or count", "ratio", "spread", "target"),
        rows,
    )
