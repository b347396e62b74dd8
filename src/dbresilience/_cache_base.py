"""What the sync and async credential caches share and that does no I/O.

Settings, key escaping, the value format (a versioned frame around the serializer's bytes,
optionally HMAC-signed; never pickle), the memory tier (a bounded LRU with per-entry expiry,
so TTL jitter and stale windows work), single-flight bookkeeping, the degraded-mode rules and
``stats()``.
"""

from __future__ import annotations

import collections
import hmac
import random
import threading
import time
import urllib.parse
import uuid
from datetime import date, datetime, timedelta
from datetime import time as dtime
from decimal import Decimal
from typing import Any, NamedTuple

from dbresilience._classify import classify
from dbresilience._lifecycle import Lifecycle
from dbresilience._redact import check_redis_url, redact_url
from dbresilience._serialize import _IP_TYPES, Serializer, check_serializer
from dbresilience._validate import (
    bytes_or_none,
    fraction,
    non_empty_str,
    positive_int,
    seconds,
    str_or_none,
)

__all__ = ["CacheBase", "Entry", "Packed", "escape_key", "memory_key", "unescape_key"]

#: the key scheme (``{namespace}:v1:{key}``); the value format is in the value itself, so that
#: every version of the library deletes the same key on invalidation
FORMAT = 1
#: the value frame: ``2 <serializer name> <kind>[<HMAC-SHA256, 32 bytes>]<serializer bytes>``;
#: kind ``v`` a value, ``n`` "not found", ``V``/``N`` the same, signed. Format 1 (JSON
#: ``{"f": 1, "d": ...}``, before the serializer) is read as a miss and overwritten.
VALUE_FORMAT = 2
_VALUE, _NOT_FOUND, _SIGNED_VALUE, _SIGNED_NOT_FOUND = b"vnVN"
_MAC_SIZE = 32
#: what a loader's None is remembered as (for ``negative_ttl``); callers see None
NOT_FOUND: Any = object()
_random = random.random


def memory_key(key: str | int) -> str:
    """*key* as the memory tier holds it: ``42`` and ``"42"`` are the same user."""
    if type(key) is str:
        return key
    if isinstance(key, bool) or not isinstance(key, str | int):
        raise TypeError(f"key must be a str or an int, got {type(key).__name__}")
    return str(key)


def escape_key(key: str | int) -> str:
    """*key* as a Redis key part: percent-encoded, so no ``:`` and no two keys collide."""
    k = memory_key(key)
    if k.isascii() and k.isalnum():  # nothing to encode (user ids): a fifth of quote()'s cost
        return k
    return urllib.parse.quote(k, safe="")


class Packed(bytes):
    """A value that can be changed in place (a ``list``, a ``dict`` …), kept in memory as its
    serializer's bytes: every hit decodes its own copy, so a caller that changes what it got
    changes nothing that a later caller (or Redis, or another instance) sees."""

    __slots__ = ()


#: values nobody can change in place: kept and handed out as they are
_FROZEN = frozenset(
    {
        str,
        int,
        float,
        bool,
        type(None),
        bytes,
        Decimal,
        datetime,
        date,
        dtime,
        timedelta,
        uuid.UUID,
        *_IP_TYPES,
    }
)


def _frozen(value: Any, depth: int = 0) -> bool:
    """Whether *value* cannot be changed in place (a tuple of such values included)."""
    t = type(value)
    if t in _FROZEN:
        return True
    return t is tuple and depth < 16 and all(_frozen(item, depth + 1) for item in value)


class Entry(NamedTuple):
    """A value in the memory tier: fresh until ``fresh_until``, servable stale until
    ``stale_until`` (monotonic seconds).

    A named tuple: one is made on every load and every Redis hit, and a frozen dataclass
    took five times as long to build.
    """

    value: Any
    fresh_until: float
    stale_until: float


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
        serializer: Serializer | None = None,
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
        self.serializer = check_serializer("serializer", serializer)
        self._dumps = self.serializer.dumps
        self._loads = self.serializer.loads
        self._header = b"%d %s " % (VALUE_FORMAT, self.serializer.name.encode())
        # The memory tier: least recently used first, at most maxsize entries. Expiry is read
        # from the entry by whoever finds it (an entry past stale_until is dead weight until it
        # is overwritten or evicted). cachetools' TLRUCache did the same with a heap and a
        # timer call per access: 4.3 us to insert into a full cache, 0.2 us here; the
        # Redis-hit path pays one insert.
        self._memory: collections.OrderedDict[str, Entry] = collections.OrderedDict()
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
        self._degraded_at = 0.0  # monotonic time Redis was lost (for CacheRestored)
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

    def _dump(self, value: Any) -> bytes:
        """*value*'s serializer bytes (``b""`` for "not found").

        Raises ``TypeError`` naming the type the serializer cannot give back as it is (too
        deep or circular included). Called on every load, with Redis or without: a value
        memory-only mode kept would be refused in production.
        """
        if value is NOT_FOUND:
            return b""
        try:
            return self._dumps(value)
        except TypeError:
            raise
        except (ValueError, ArithmeticError, RecursionError) as exc:  # a custom serializer
            raise TypeError(f"the cache's serializer refused the value: {exc}") from exc

    def _encode(self, key: str | int, value: Any, body: bytes | None = None) -> bytes:
        """*value* as stored in Redis (see ``VALUE_FORMAT``); *body* is :meth:`_dump`'s, when
        the caller already has it. Raises what :meth:`_dump` raises."""
        if body is None:
            body = self._dump(value)
        kind = _NOT_FOUND if value is NOT_FOUND else _VALUE
        if self._signing_key is None:
            return self._header + bytes((kind,)) + body
        head = self._header + bytes((kind - 32,))  # upper case: signed
        return head + self._mac(key, head, body) + body

    def _read(self, key: str | int, raw: bytes | None) -> tuple[bool, Any, bytes | None]:
        """``(True, value, body)`` for a valid payload; ``(False, None, None)`` for anything
        else — a missing, foreign, unsigned, badly signed or unknown-format value is a miss.

        *raw* is untrusted (anyone who can write the key chose it): another format or
        serializer, a bad kind, a MAC that does not match, bytes the serializer cannot read
        (truncated, too deep, an unknown extension, a bad date …): each is a miss, never an
        error. Whatever the serializer's ``loads`` raises counts as "cannot read". *body* is
        the serializer bytes the value was read from (``None`` for "not found" and a miss):
        what memory keeps of a Redis hit (:meth:`_kept`) without encoding the value again
        (0.4 us of a 2 us hit path for a small dict).
        """
        if raw is None or not raw.startswith(self._header):
            return False, None, None
        n = len(self._header)
        try:
            kind = raw[n]
            if kind == _VALUE and self._signing_key is None:  # the hit path
                body = raw[n + 1 :]
                return True, self._loads(body), body
            if kind == _NOT_FOUND and self._signing_key is None:
                return (True, NOT_FOUND, None) if len(raw) == n + 1 else (False, None, None)
            if kind not in (_SIGNED_VALUE, _SIGNED_NOT_FOUND) or len(raw) < n + 1 + _MAC_SIZE:
                return False, None, None
            body = raw[n + 1 + _MAC_SIZE :]
            if self._signing_key is not None and not hmac.compare_digest(
                raw[n + 1 : n + 1 + _MAC_SIZE], self._mac(key, raw[: n + 1], body)
            ):
                return False, None, None
            if kind == _SIGNED_NOT_FOUND:
                return (True, NOT_FOUND, None) if not body else (False, None, None)
            return True, self._loads(body), body
        except Exception:  # untrusted bytes: whatever the serializer raises is a miss
            return False, None, None

    def _mac(self, key: str | int, head: bytes, body: bytes) -> bytes:
        assert self._signing_key is not None
        message = b"%s\x00%s\x00%s%s" % (
            self.namespace.encode(),
            escape_key(key).encode(),
            head,
            body,
        )
        return hmac.digest(self._signing_key, message, "sha256")

    # --- the memory tier ----------------------------------------------------------------------

    def _ttl_for(self, value: Any) -> float:
        base = self.negative_ttl if value is NOT_FOUND else self.ttl
        if self.degraded:
            base = min(base, self.degraded_ttl)  # invalidations cannot reach us now
        # base * uniform(1 - jitter, 1 + jitter), without uniform()'s extra call
        return base * (1.0 + self.jitter * (2.0 * _random() - 1.0)) if self.jitter else base

    def _since(self) -> int:
        """A token for :meth:`_remember`, taken before a value is read (loaded or fetched)."""
        return self._tick

    def _kept(self, value: Any, body: bytes | None = None) -> Any:
        """*value* as memory keeps it: as it is when nobody can change it in place (a tuple
        row of scalars, a ``Decimal`` …), else as its serializer's bytes (:class:`Packed`;
        *body*, when the caller already has them from :meth:`_dump`)."""
        if value is NOT_FOUND or _frozen(value):
            return value
        if body is not None:
            return Packed(body)
        try:
            return Packed(self._dumps(value))
        except Exception:  # a custom serializer that cannot: shared as before
            return value

    def _copy(self, kept: Any) -> Any:
        """A caller's own copy of what :meth:`_kept` returned."""
        return self._loads(kept) if type(kept) is Packed else kept

    def _remember(self, key: str, value: Any, since: int, body: bytes | None = None) -> Any:
        """Keep *value* in memory unless an invalidation of *key* (or a flush) arrived after
        *since* was taken: a slow load, or a Redis hit whose key was invalidated between the
        GET and here, must not put back a value that is no longer valid. Returns the kept form
        (:meth:`_kept`), for callers waiting on the same load."""
        now = time.monotonic()
        fresh = now + self._ttl_for(value)
        kept = self._kept(value, body)
        entry = Entry(kept, fresh, fresh + self.stale_ttl)
        memory = self._memory
        with self._lock:
            if self._generation.get(key, self._floor) > since:
                return kept
            memory[key] = entry
            memory.move_to_end(key)
            if len(memory) > self.maxsize:
                memory.popitem(last=False)
        return kept

    def _lookup(self, key: str) -> Entry | None:
        """The memory entry for *key*, fresh or stale (within ``stale_ttl``), or None."""
        with self._lock:
            entry = self._memory.get(key)
        return entry if entry is not None and entry.stale_until > time.monotonic() else None

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
        """A stale value to serve when the loader failed transiently, within ``stale_ttl``
        (in its kept form: :meth:`_copy` it for each caller)."""
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
        ``redis_errors`` …), ``size`` of the memory tier (entries past their stale window count
        until overwritten or evicted) and ``backend``: ``"memory"`` (no
        Redis configured), ``"redis"`` or ``"degraded"`` (Redis failing: memory only)."""
        counters = dict(self.counters)
        counters["hits"] = counters["memory_hits"] + counters["redis_hits"]
        backend = "memory"
        if self.redis_url is not None:
            backend = "degraded" if self.degraded else "redis"
        return {**counters, "size": len(self._memory), "backend": backend}

    def pop_stats(self) -> dict[str, Any]:
        """:meth:`stats`, then every counter set back to 0 (``size`` and ``backend`` are
        gauges): for a scraper that reports increments. docs/observability.md lists every key."""
        stats = self.stats()
        with self._lock:  # subtract what was read: an increment meanwhile is not lost
            for name in self.counters:
                self.counters[name] -= stats[name]
        return stats

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


def unescape_key(escaped: str) -> str:
    """The memory-tier key of a key received (escaped) on the invalidation channel."""
    return urllib.parse.unquote(escaped)
