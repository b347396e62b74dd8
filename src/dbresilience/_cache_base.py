"""What the sync and async credential caches share and that does no I/O.

Settings, key escaping, the JSON value format (versioned, optionally HMAC-signed; never
pickle), the memory tier (cachetools' TLRU cache: per-entry expiry, so TTL jitter and stale
windows work), single-flight bookkeeping, the degraded-mode rules and ``stats()``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import threading
import time
import urllib.parse
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import cachetools

from dbresilience._classify import classify
from dbresilience._lifecycle import Lifecycle
from dbresilience._redact import check_redis_url, redact_url
from dbresilience._validate import (
    bytes_or_none,
    fraction,
    non_empty_str,
    positive_int,
    seconds,
    str_or_none,
)

__all__ = ["CacheBase", "Entry", "escape_key", "memory_key", "unescape_key"]

FORMAT = 1
#: compact and canonical (the MAC is computed over it); made once: json.dumps with options
#: builds a new encoder per call, a third of the cost of encoding a small value
_JSON = json.JSONEncoder(separators=(",", ":"), sort_keys=True)
#: what a loader's None is remembered as (for ``negative_ttl``); callers see None
NOT_FOUND: Any = object()


def memory_key(key: str | int) -> str:
    """*key* as the memory tier holds it: ``42`` and ``"42"`` are the same user."""
    if type(key) is str:
        return key
    if isinstance(key, bool) or not isinstance(key, str | int):
        raise TypeError(f"key must be a str or an int, got {type(key).__name__}")
    return str(key)


def escape_key(key: str | int) -> str:
    """*key* as a Redis key part: percent-encoded, so no ``:`` and no two keys collide."""
    return urllib.parse.quote(memory_key(key), safe="")


@dataclass(frozen=True, slots=True)
class Entry:
    """A value in the memory tier: fresh until ``fresh_until``, servable stale until
    ``stale_until`` (monotonic seconds)."""

    value: Any
    fresh_until: float
    stale_until: float


def _entry_expiry(_key: Any, entry: Entry, _now: float) -> float:
    return entry.stale_until


class CacheBase(Lifecycle):
    """Settings, codec, memory tier and counters of a credential cache (no I/O)."""

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        ttl: float | timedelta = 60.0,
        namespace: str = "credentials",
        maxsize: int = 10_000,
        negative_ttl: float | timedelta = 5.0,
        stale_ttl: float | timedelta = 0.0,
        jitter: float = 0.1,
        degraded_ttl: float | timedelta | None = None,
        timeout: float | timedelta = 0.1,
        probe_interval: float | timedelta = 1.0,
        lease: bool = False,
        lease_ttl: float | timedelta = 5.0,
        signing_key: bytes | None = None,
    ) -> None:
        """Validate the settings (``TypeError``/``ValueError`` naming the argument); no I/O."""
        self.redis_url = str_or_none("redis_url", redis_url)
        if self.redis_url is not None:
            check_redis_url("redis_url", self.redis_url, type(self).__name__)
        self.ttl = seconds("ttl", ttl)
        self.namespace = non_empty_str("namespace", namespace)
        self.maxsize = positive_int("maxsize", maxsize)
        self.negative_ttl = seconds("negative_ttl", negative_ttl, allow_zero=True)
        self.stale_ttl = seconds("stale_ttl", stale_ttl, allow_zero=True)
        self.jitter = fraction("jitter", jitter, high=0.5)
        self.degraded_ttl = (
            min(self.ttl, 5.0) if degraded_ttl is None else seconds("degraded_ttl", degraded_ttl)
        )
        self.timeout = seconds("timeout", timeout)
        self.probe_interval = seconds("probe_interval", probe_interval)
        self.lease = bool(lease)
        self.lease_ttl = seconds("lease_ttl", lease_ttl)
        bytes_or_none("signing_key", signing_key, min_length=16)
        self._signing_key = signing_key
        self._memory: cachetools.TLRUCache[str, Entry] = cachetools.TLRUCache(
            maxsize, ttu=_entry_expiry, timer=time.monotonic
        )
        self._lock = threading.Lock()
        # The generation guard: a value read (from the loader or from Redis) is kept in memory
        # only if no invalidation of its key arrived after the read began. _tick counts
        # invalidations and flushes, _generation holds each key's last one, and a key that is
        # not there (never invalidated, or forgotten when the dict was emptied) counts as
        # invalidated at _floor, the tick of that emptying.
        self._tick = 0
        self._floor = 0
        self._generation: dict[str, int] = {}
        self.degraded = False  # True while Redis fails: memory only, short TTLs
        self.instance = f"{id(self):x}{random.getrandbits(32):08x}"  # to skip our own echoes
        self.counters = {
            "memory_hits": 0,
            "redis_hits": 0,
            "misses": 0,
            "loads": 0,
            "load_failures": 0,
            "stale_served": 0,
            "negative_hits": 0,
            "redis_errors": 0,
            "invalidations": 0,
            "flushes": 0,
        }
        self._client: Any = None  # the Redis client, made on first use
        self._setup()

    def _setup(self) -> None:
        """The twin's own state (flights, tasks or threads); no I/O."""

    # --- keys and values ----------------------------------------------------------------------

    def redis_key(self, key: str | int) -> str:
        """``{namespace}:v{FORMAT}:{escaped key}``."""
        return f"{self.namespace}:v{FORMAT}:{escape_key(key)}"

    def version_key(self, key: str | int) -> str:
        """Where *key*'s invalidation counter lives."""
        return f"{self.namespace}:ver:{escape_key(key)}"

    def lease_key(self, key: str | int) -> str:
        """Where *key*'s cross-instance load lease lives."""
        return f"{self.namespace}:lease:{escape_key(key)}"

    @property
    def channel(self) -> str:
        """The pub/sub channel invalidations travel on."""
        return f"{self.namespace}:invalidate"

    def _encode(self, key: str | int, value: Any) -> bytes:
        """*value* as the JSON stored in Redis.

        Raises ``TypeError`` if it is not JSON-serialisable (circular or too deep included).
        Called on every load, with Redis or without: a value memory-only mode kept would be
        refused in production.
        """
        payload: dict[str, Any] = {"f": FORMAT, "d": None if value is NOT_FOUND else value}
        if value is NOT_FOUND:
            payload["nf"] = 1
        try:
            if self._signing_key is not None:
                payload["m"] = self._mac(key, payload)
            return _JSON.encode(payload).encode()
        except (TypeError, ValueError, RecursionError) as exc:
            raise TypeError(f"a cached value must be JSON-serialisable: {exc}") from exc

    def _decode(self, key: str | int, raw: bytes | str | None) -> tuple[bool, Any]:
        """``(True, value)`` for a valid payload; ``(False, None)`` for anything else — a
        missing, foreign, unsigned, badly signed or unknown-format value is a miss.

        *raw* is untrusted (anyone who can write the key chose it): bytes that are not UTF-8,
        truncated or too deeply nested JSON, another shape or format version (``f`` must be
        the integer 1, not ``true`` or ``1.0``), a ``nf`` other than 1, an unknown field, a
        MAC that is not a hex string: each is a miss, never an error.
        """
        if raw is None:
            return False, None
        try:
            payload = json.loads(raw)
            if not _well_formed(payload):
                return False, None
            if self._signing_key is not None:
                mac = payload.pop("m", None)
                if not (
                    isinstance(mac, str)
                    and mac.isascii()  # compare_digest refuses other text
                    and hmac.compare_digest(mac, self._mac(key, payload))
                ):
                    return False, None
        except (ValueError, TypeError, RecursionError):  # UnicodeDecodeError is a ValueError
            return False, None
        return True, NOT_FOUND if "nf" in payload else payload["d"]

    def _mac(self, key: str | int, payload: dict[str, Any]) -> str:
        assert self._signing_key is not None
        body = _JSON.encode(payload)
        message = f"{self.namespace}\x00{escape_key(key)}\x00{body}".encode()
        return hmac.new(self._signing_key, message, hashlib.sha256).hexdigest()

    # --- the memory tier ----------------------------------------------------------------------

    def _ttl_for(self, value: Any) -> float:
        base = self.negative_ttl if value is NOT_FOUND else self.ttl
        if self.degraded:
            base = min(base, self.degraded_ttl)  # invalidations cannot reach us now
        return base * random.uniform(1 - self.jitter, 1 + self.jitter) if self.jitter else base

    def _since(self) -> int:
        """A token for :meth:`_remember`, taken before a value is read (loaded or fetched)."""
        return self._tick

    def _remember(self, key: str, value: Any, since: int) -> None:
        """Keep *value* in memory unless an invalidation of *key* (or a flush) arrived after
        *since* was taken: a slow load, or a Redis hit whose key was invalidated between the
        GET and here, must not put back a value that is no longer valid."""
        now = time.monotonic()
        fresh = now + self._ttl_for(value)
        entry = Entry(value, fresh, fresh + self.stale_ttl)
        with self._lock:
            if self._generation.get(key, self._floor) > since:
                return
            self._memory[key] = entry

    def _lookup(self, key: str) -> Entry | None:
        """The memory entry for *key*, fresh or stale, or None."""
        with self._lock:
            return self._memory.get(key)

    def _forget(self, key: str) -> None:
        """Drop *key* from memory and record its invalidation (one arrived)."""
        with self._lock:
            self._memory.pop(key, None)
            self._tick += 1
            self._generation[key] = self._tick
            if len(self._generation) > 4 * self.maxsize:  # bounded: every key counts as
                self._generation.clear()  # invalidated now, so no read in flight is kept
                self._floor = self._tick

    def flush_memory(self) -> None:
        """Empty the memory tier (Redis came back: what we kept may be stale); reads in flight
        are not kept either."""
        with self._lock:
            self._memory.clear()
            self._generation.clear()
            self._tick += 1
            self._floor = self._tick
        self.counters["flushes"] += 1

    def _stale_value(self, entry: Entry | None, exc: BaseException) -> tuple[bool, Any]:
        """A stale value to serve when the loader failed transiently, within ``stale_ttl``."""
        if entry is None or not self.stale_ttl or not classify(exc).transient:
            return False, None
        if time.monotonic() > entry.stale_until:
            return False, None
        self.counters["stale_served"] += 1
        return True, entry.value

    def _invalidation_message(self, key: str) -> str:
        """What goes on the channel: who invalidated, and the escaped key."""
        return f"{self.instance}|{urllib.parse.quote(key, safe='')}"

    def _received(self, data: object) -> None:
        """An invalidation arrived on the channel: drop the key here (unless it is our echo).

        Anyone may publish there: a message that is not ours in form drops at most some key
        from memory (a miss), and never raises.
        """
        text = data.decode(errors="replace") if isinstance(data, bytes) else str(data)
        origin, _, escaped = text.partition("|")
        if origin != self.instance and escaped:
            self._forget(unescape_key(escaped))

    # --- what callers see -------------------------------------------------------------------

    @staticmethod
    def _public(value: Any) -> Any:
        """A remembered "not found" is None to the caller."""
        return None if value is NOT_FOUND else value

    @staticmethod
    def _stored(value: Any) -> Any:
        """A loader's None is remembered as "not found" (briefly: ``negative_ttl``)."""
        return NOT_FOUND if value is None else value

    def stats(self) -> dict[str, Any]:
        """Counters (``hits`` = memory + Redis hits, ``misses``, ``loads``, ``stale_served``,
        ``redis_errors`` …), ``size`` of the memory tier and ``backend``: ``"memory"`` (no
        Redis configured), ``"redis"`` or ``"degraded"`` (Redis failing: memory only)."""
        counters = dict(self.counters)
        counters["hits"] = counters["memory_hits"] + counters["redis_hits"]
        backend = "memory"
        if self.redis_url is not None:
            backend = "degraded" if self.degraded else "redis"
        return {**counters, "size": len(self._memory), "backend": backend}

    def __repr__(self) -> str:
        where = "memory" if self.redis_url is None else redact_url(self.redis_url)
        return f"{type(self).__name__}({where!r}, namespace={self.namespace!r})"


# KEYS: value key, version key. ARGV: payload, ttl ms, version seen before loading ("" = none).
# Stores only if nobody invalidated the key while the loader ran.
SET_IF_VERSION = """
local current = redis.call('GET', KEYS[2])
if (current or '') ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: lease key. ARGV: the token it was taken with. Deletes the lease only while it is still
# ours (it may have expired and been taken by another instance meanwhile).
RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: value key, version key. ARGV: channel, escaped key.
INVALIDATE = """
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], 86400000)
redis.call('DEL', KEYS[1])
return redis.call('PUBLISH', ARGV[1], ARGV[2])
"""


_FIELDS = frozenset({"f", "d", "nf", "m"})


def _well_formed(payload: object) -> bool:
    """*payload* has exactly the outline :meth:`CacheBase._encode` writes (MAC not checked)."""
    return (
        isinstance(payload, dict)
        and "d" in payload
        and _is_int(payload.get("f"), FORMAT)
        and ("nf" not in payload or _is_int(payload["nf"], 1))
        and payload.keys() <= _FIELDS
    )


def _is_int(value: object, expected: int) -> bool:
    return type(value) is int and value == expected


def unescape_key(escaped: str) -> str:
    """The memory-tier key of a key received (escaped) on the invalidation channel."""
    return urllib.parse.unquote(escaped)
