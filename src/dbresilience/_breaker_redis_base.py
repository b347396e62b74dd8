"""Sharing circuit-breaker "open" signals between service instances through Redis: the part
of :class:`RedisBreakerState` and :class:`AsyncRedisBreakerState` that does no I/O.


What is shared is each instance's *decision* ("I opened until T"), never its raw counters: an
instance with a bad network path would otherwise pour its failures into everyone's failure rate.
An instance fails calls fast on the strength of others only when at least ``quorum`` other
instances currently report their circuit open, so one sick instance cannot open everyone's.

I/O stays off the call path: a transition hands one atomic Lua call (``ZADD`` or ``ZREM``, with
Redis's own clock, so instances on different hosts agree on time) to a background publisher,
and a poller refreshes the shared view every ``refresh`` seconds into a cached float that the
breaker reads without a round trip. When Redis fails, the state logs once, treats the shared
view as "nothing open" and the breaker goes on deciding from local evidence alone: no Redis
error ever reaches a caller. Needs the ``redis`` extra; ``redis`` is imported on ``open()``.
"""

from __future__ import annotations

import heapq
import math
import os
import socket
import time
import uuid
from datetime import timedelta
from typing import Any

from dbresilience._events import logger
from dbresilience._lifecycle import Lifecycle
from dbresilience._redact import check_redis_url, redact_url
from dbresilience._validate import non_empty_str, positive_int, seconds, str_or_none

__all__ = ["MAX_OPEN", "MAX_OPEN_MS", "POLL", "PUBLISH", "SharedStateBase"]

#: No instance publishes an opening longer than this (seconds); an entry further ahead was not
#: written by one of ours, and is dropped. CircuitOpen never asks for a longer wait either.
MAX_OPEN = 3600.0
MAX_OPEN_MS = int(MAX_OPEN * 1000)

# KEYS[1] the breaker's sorted set; ARGV: instance, open_for_ms (0 = closed), MAX_OPEN_MS.
# Whatever else is in the key is cleaned up on the way: a key of another type is replaced,
# entries in the past or further ahead than MAX_OPEN_MS (infinity included) are removed.
PUBLISH = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'zset' and kind ~= 'none' then redis.call('DEL', KEYS[1]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '(' .. (now + tonumber(ARGV[3])), '+inf')
local open_for = tonumber(ARGV[2])
if open_for > 0 then
  redis.call('ZADD', KEYS[1], now + open_for, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], open_for + 60000)
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return now
"""

# KEYS[1] the breaker's sorted set; ARGV: MAX_OPEN_MS, how many entries (quorum + 1: one may
# be ours). Returns {now_ms, member, until_ms, ...}: the latest live entries, at most MAX_OPEN_MS
# ahead, so a set stuffed with members costs one bounded reply; a key of another type: {now_ms}.
POLL = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
if redis.call('TYPE', KEYS[1])['ok'] ~= 'zset' then return {now} end
local live = redis.call('ZREVRANGEBYSCORE', KEYS[1], now + tonumber(ARGV[1]), '(' .. now,
  'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
table.insert(live, 1, now)
return live
"""


class SharedStateBase(Lifecycle):
    """Settings, the cached shared view and the arithmetic both twins use (no I/O)."""

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "dbresilience",
        quorum: int = 2,
        refresh: float | timedelta = 0.5,
        timeout: float | timedelta = 0.1,
        instance: str | None = None,
    ) -> None:
        """Validate the settings (``TypeError``/``ValueError`` naming the argument); no I/O.

        ``quorum``: an int ``>= 1``; ``refresh``: seconds in ``(0, 60]``; ``timeout``: seconds
        in ``(0, 10]``; ``namespace``: a non-empty prefix not ending in ``:``.
        """
        self.url = check_redis_url("url", non_empty_str("url", url), type(self).__name__)
        self.namespace = non_empty_str("namespace", namespace)
        if namespace.endswith(":"):
            raise ValueError(f"namespace must be a prefix not ending in ':', got {namespace!r}")
        self.quorum = positive_int("quorum", quorum)
        self.refresh = seconds("refresh", refresh, maximum=60.0)
        self.timeout = seconds("timeout", timeout, maximum=10.0)
        str_or_none("instance", instance)
        self.instance = instance or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._instance_bytes = self.instance.encode()  # how our own member comes back
        self.available = False
        self.errors = 0
        self._warned = False
        self._breakers: set[str] = set()
        self._views: dict[str, float] = {}  # breaker -> monotonic "open until" from the others
        self._client: Any = None  # the Redis client, made on open()
        self._publish: Any = None
        self._poll: Any = None
        self._setup()

    def _setup(self) -> None:
        """The twin's own state (threads or tasks); no I/O."""

    # --- what CircuitBreaker calls (never blocks, never raises) -----------------------------

    def attach(self, breaker: str) -> None:
        """Start polling *breaker*'s key."""
        self._breakers.add(breaker)

    def open_until(self, breaker: str) -> float:
        """Monotonic time until which other instances' quorum says *breaker* is open."""
        return self._views.get(breaker, 0.0)

    def key(self, breaker: str) -> str:
        """The Redis key of *breaker*'s signals: ``{namespace}:breaker:{name}``."""
        return f"{self.namespace}:breaker:{breaker}"

    def _open_ms(self, open_for: float) -> int:
        """*open_for* seconds as the milliseconds to publish: 0 (closed) to ``MAX_OPEN``."""
        if not open_for > 0:  # NaN too
            return 0
        return int(min(open_for, MAX_OPEN) * 1000)

    def _absorb(self, reply: object) -> float:
        """A poll reply as the monotonic time until which ``quorum`` *other* instances say
        "open" (0.0: not enough of them); never more than ``MAX_OPEN`` ahead. Never raises.

        The entries are whatever anyone who can write the key put there: untrusted input. A
        reply of another shape is "nothing open"; an entry whose score is not a finite number,
        or is in the past or more than ``MAX_OPEN`` ahead, is ignored; a member is compared as
        it came (bytes that are not UTF-8 are just another instance's name).
        """
        self.available = True
        self._warned = False
        if not isinstance(reply, list) or not reply:
            return 0.0
        now_ms = _finite(reply[0])
        if now_ms is None:
            return 0.0
        horizon = now_ms + MAX_OPEN_MS
        mine = (self.instance, self._instance_bytes)
        untils = []
        for i in range(1, len(reply) - 1, 2):
            until = _finite(reply[i + 1])
            if until is not None and now_ms < until <= horizon and reply[i] not in mine:
                untils.append(until)
        if len(untils) < self.quorum:
            return 0.0
        return time.monotonic() + (heapq.nlargest(self.quorum, untils)[-1] - now_ms) / 1000.0

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        self.available = False  # the caller drops its shared view: local evidence only
        if not self._warned:
            self._warned = True
            logger.warning(
                "shared breaker state on Redis unavailable (%s); deciding locally",
                type(exc).__name__,
            )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({redact_url(self.url)!r}, namespace={self.namespace!r}, "
            f"quorum={self.quorum}, available={self.available})"
        )


def _finite(value: object) -> float | None:
    """*value* (an integer or a string of digits, as Redis sends numbers) as a finite float;
    None for anything else: NaN, infinity, a huge number, text, a list, ``None``."""
    if isinstance(value, bool) or not isinstance(value, int | float | bytes | str):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None
