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

import os
import socket
import time
import uuid
from datetime import timedelta
from typing import Any

from dbresilience._events import logger
from dbresilience._lifecycle import Lifecycle
from dbresilience._validate import non_empty_str, positive_int, seconds, str_or_none

__all__ = ["POLL", "PUBLISH", "SharedStateBase"]

# KEYS[1] the breaker's sorted set; ARGV: instance, open_for_ms (0 = closed)
PUBLISH = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local open_for = tonumber(ARGV[2])
if open_for > 0 then
  redis.call('ZADD', KEYS[1], now + open_for, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], open_for + 60000)
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return now
"""

# KEYS[1] the breaker's sorted set; returns {now_ms, member, until_ms, member, until_ms, ...}
POLL = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')
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
        self.url = non_empty_str("url", url)
        self.namespace = non_empty_str("namespace", namespace)
        if namespace.endswith(":"):
            raise ValueError(f"namespace must be a prefix not ending in ':', got {namespace!r}")
        self.quorum = positive_int("quorum", quorum)
        self.refresh = seconds("refresh", refresh, maximum=60.0)
        self.timeout = seconds("timeout", timeout, maximum=10.0)
        str_or_none("instance", instance)
        self.instance = instance or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
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

    def _absorb(self, reply: list[Any]) -> float:
        """A poll reply as the monotonic time until which ``quorum`` *other* instances say
        "open" (0.0: not enough of them)."""
        now_ms = float(reply[0])
        mono = time.monotonic()
        untils = sorted(
            (
                float(reply[i + 1])
                for i in range(1, len(reply) - 1, 2)
                if _text(reply[i]) != self.instance
            ),
            reverse=True,
        )
        self.available = True
        self._warned = False
        if len(untils) >= self.quorum:
            return mono + (untils[self.quorum - 1] - now_ms) / 1000.0
        return 0.0

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        self.available = False  # the caller drops its shared view: local evidence only
        if not self._warned:
            self._warned = True
            logger.warning(
                "shared breaker state on Redis unavailable (%s); deciding locally",
                type(exc).__name__,
            )

    def _redact(self) -> str:
        """The URL without credentials, for reprs."""
        _, sep, tail = self.url.rpartition("@")
        return f"redis://…@{tail}" if sep else self.url

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self._redact()!r}, namespace={self.namespace!r}, "
            f"quorum={self.quorum}, available={self.available})"
        )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
