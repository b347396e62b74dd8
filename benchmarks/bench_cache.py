"""CredentialCache: memory hits, Redis-tier hits, calls while Redis is down, a stampede."""

from __future__ import annotations

import json
import os
import random
import statistics
import threading
import time
import uuid

import cachetools
import redis

import dbresilience as dbr
from dbresilience.faults import FaultProxy, TemporaryRedis

from ._common import per_call_sync, print_table

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
    rows.append(("memory hit: cachetools.TTLCache.get", bare * 1e6, 1.0, ""))
    rows.append(("memory hit: CredentialCache.get_or_load", ours * 1e6, ours / bare, "<= 2x"))

    # 2. Redis-tier hit (memory misses every time) vs raw GET + json.loads
    ns = f"dbr-bench-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(REDIS)
    shared = dbr.CredentialCache(REDIS, namespace=ns, maxsize=1)
    try:
        for key in ("a", "b"):
            shared.get_or_load(key, _load)
        client.set("dbr-bench-raw", json.dumps(CREDS))
        keys = iter(range(10**9))

        def raw_get() -> object:
            return json.loads(client.get("dbr-bench-raw") or b"null")

        def tier_hit() -> object:
            return shared.get_or_load("ab"[next(keys) % 2], _load)  # maxsize 1: always a miss

        # alternated call by call in shuffled order, medians: the Redis server's scheduling
        # hits both alike (see bench_pool._interleaved)
        samples: dict[str, list[float]] = {"raw": [], "ours": []}
        calls = [("raw", raw_get), ("ours", tier_hit)]
        rng = random.Random(20261122)
        for _ in range(number // 20):
            rng.shuffle(calls)
            for name, fn in calls:
                start = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - start)
        raw_t = statistics.median(samples["raw"])
        tier_t = statistics.median(samples["ours"])
        assert shared.stats()["loads"] == 2  # every timed call was a Redis-tier hit
        rows.append(("Redis hit: raw GET + json.loads", raw_t * 1e6, 1.0, ""))
        rows.append(
            (
                "Redis hit: CredentialCache.get_or_load",
                tier_t * 1e6,
                tier_t / raw_t,
                "<= 1.2x",
            )
        )
    finally:
        shared.close()
        for key in client.scan_iter(f"{ns}:*"):
            client.delete(key)
        client.delete("dbr-bench-raw")
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
        rows.append(("Redis stopped: a hit (memory)", hit_t * 1e6, "", "<= 10 us"))
        rows.append(
            ("Redis stopped: a miss, loaded, kept (cache full: evicts)", down_t * 1e6, "", "")
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
            rows.append(("Redis silent: the first call (one timeout)", first * 1e6, "", "bounded"))
            rows.append(("Redis silent: every later miss", silent_t * 1e6, "", "<= 10 us"))
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
    rows.append(("32-thread stampede on a cold key: loader calls", calls, "", "1"))

    print_table(
        "credential cache (us per call unless said)",
        ("case", "us/call or count", "ratio", "target"),
        rows,
    )
