"""What the sync and async read routers share and that does no I/O.

Settings, WAL positions (``pg_lsn`` text as an int), the staleness bound of each replica and the
choice of replicas for a read. The twins (:mod:`dbresilience._router_async`, generated
:mod:`dbresilience._router`) add the pools' I/O and the monitor's thread or task.

How stale is a replica? Every check, the monitor reads the primary's flushed WAL position at
``t_p``, then each replica's replay position. A replica that has replayed that position holds
everything the primary had made durable at ``t_p``: its staleness is at most ``now - t_p``, however
old ``pg_last_xact_replay_timestamp()`` is (on an idle primary that timestamp ages while the
replica is fully caught up). A replica behind it is bounded two ways, and the smaller wins: by the
newest earlier primary sample it has replayed (``now - t`` of that sample), and by the age of the
last transaction it replayed (``now() - pg_last_xact_replay_timestamp()`` on the replica: every
commit after that one is missing, none before). Between checks the bound grows with the clock.
"""

from __future__ import annotations

import collections
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from dbresilience._validate import seconds, str_or_none

__all__ = [
    "PRIMARY_POSITION",
    "REPLICA_STATUS",
    "Position",
    "ReplicaStatus",
    "RouterBase",
    "lsn",
]

#: the primary's WAL position that covers every commit acknowledged so far: the insert position.
#: Not the flushed one, even where ``synchronous_commit`` is on: a transaction may have said
#: ``SET LOCAL synchronous_commit = off`` (invisible to this query), and its commit, acknowledged
#: before its flush, lies past the flushed position a replica may already have replayed
PRIMARY_POSITION = "select pg_current_wal_insert_lsn()::text"
#: the monitor's question to the primary: what a replica can have received by now
PRIMARY_FLUSHED = "select pg_current_wal_flush_lsn()::text"
#: the monitor's question to a replica
REPLICA_STATUS = (
    "select pg_is_in_recovery(), coalesce(pg_last_wal_replay_lsn(), '0/0')::text, "
    "extract(epoch from now() - pg_last_xact_replay_timestamp())::float8"
)
REPLAYED = "select coalesce(pg_last_wal_replay_lsn(), '0/0') >= %s::pg_lsn"

_SAMPLES = 256  # primary samples kept: at one a second, four minutes of history


def lsn(text: str) -> int:
    """A ``pg_lsn`` in its text form (``16/B374D848``) as an int; ``ValueError`` otherwise."""
    high, sep, low = str(text).partition("/")
    if not sep or not high or not low or len(high) > 8 or len(low) > 8:
        raise ValueError(f"not a WAL position: {text!r}")
    return (int(high, 16) << 32) | int(low, 16)


@dataclass(frozen=True, slots=True)
class Position:
    """A WAL position on the primary (``str(pos)`` is PostgreSQL's ``pg_lsn`` text): what a
    read-your-writes read waits for a replica to have replayed."""

    value: int

    @classmethod
    def parse(cls, text: str) -> Position:
        """From PostgreSQL's text form; ``ValueError`` for anything else."""
        return cls(lsn(text))

    def __str__(self) -> str:
        return f"{self.value >> 32:X}/{self.value & 0xFFFFFFFF:X}"


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """What the last check found on one replica (immutable: the monitor swaps a new one in)."""

    state: str  # "unknown" (never checked), "ok", "down", "promoted"
    checked_at: float = 0.0  # monotonic
    replayed: int = 0  # pg_last_wal_replay_lsn as an int
    lag: float = math.inf  # staleness bound at checked_at, seconds
    error: str = ""  # the classification code of the last failed check

    def lag_at(self, now: float) -> float:
        """The staleness bound now: the one found at the check, grown by the time since."""
        return self.lag + max(0.0, now - self.checked_at)


class RouterBase:
    """The parts of :class:`ReadRouter` and :class:`AsyncReadRouter` that do no I/O."""

    def __init__(
        self,
        primary: Any,
        replicas: Sequence[Any],
        *,
        max_lag: float | timedelta = 5.0,
        replica_timeout: float | timedelta | None = None,
        check_interval: float | timedelta = 1.0,
        name: str | None = None,
    ) -> None:
        """Validate everything (``TypeError``/``ValueError`` naming the argument); no I/O."""
        self.primary: Any = primary
        pool_type = self._pool_type()
        if not isinstance(primary, pool_type):
            raise TypeError(f"primary must be a {pool_type.__name__}, got {type(primary).__name__}")
        if isinstance(replicas, (str, bytes)) or not isinstance(replicas, Sequence):
            raise TypeError(f"replicas must be a sequence of {pool_type.__name__}")
        replicas = list(replicas)
        self.replicas: tuple[Any, ...] = tuple(replicas)
        for i, replica in enumerate(replicas):
            if not isinstance(replica, pool_type):
                raise TypeError(
                    f"replicas[{i}] must be a {pool_type.__name__}, got {type(replica).__name__}"
                )
            if replica is primary or any(replica is other for other in replicas[:i]):
                raise ValueError(f"replicas[{i}] is given twice (or is the primary)")
        self.max_lag = seconds("max_lag", max_lag, allow_zero=True)
        self.replica_timeout = seconds("replica_timeout", replica_timeout, allow_none=True)
        self.check_interval = seconds("check_interval", check_interval)
        self.name = str_or_none("name", name) or f"router({self.primary.name})"
        self._status: list[ReplicaStatus] = []
        self._samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=_SAMPLES)
        self._forget()
        self._next = random.randrange(len(self.replicas)) if self.replicas else 0
        self.counters = {"replica_reads": 0, "primary_reads": 0, "fallbacks": 0, "checks": 0}

    @staticmethod
    def _pool_type() -> type:
        raise NotImplementedError

    def _forget(self) -> None:
        """Start afresh (at every opening): nothing known about any replica yet."""
        self._status = [ReplicaStatus("unknown") for _ in self.replicas]
        self._samples.clear()

    # --- the monitor's arithmetic ---------------------------------------------------------------

    def _note_primary(self, at: float, position: str) -> None:
        """A sample of the primary's flushed position, read at *at*."""
        self._samples.append((at, lsn(position)))

    def _note_replica(
        self, i: int, now: float, in_recovery: bool, replayed: str, replay_age: float | None
    ) -> None:
        """The answer of replica *i* to :data:`REPLICA_STATUS`, read at *now*."""
        if not in_recovery:
            self._status[i] = ReplicaStatus("promoted", now, lsn(replayed), math.inf)
            return
        position = lsn(replayed)
        bound = math.inf
        for at, primary_position in reversed(self._samples):  # newest first
            if primary_position <= position:
                bound = max(0.0, now - at)
                break
        if replay_age is not None and math.isfinite(replay_age):
            bound = min(bound, max(0.0, replay_age))
        self._status[i] = ReplicaStatus("ok", now, position, bound)

    def _note_failure(self, i: int, now: float, code: str) -> None:
        """Replica *i* did not answer its check."""
        old = self._status[i]
        self._status[i] = ReplicaStatus("down", now, old.replayed, math.inf, code)

    # --- choosing ---------------------------------------------------------------------------

    def _choose(self, max_lag: float, after: Position | None) -> tuple[list[int], list[int]]:
        """Replicas to try for a read, in order: ``(fresh enough, behind *after* only)``.

        Fresh enough: checked ``ok``, staleness bound within *max_lag*, and (with *after*) its
        replay position at or past it. Round-robin between calls. The second list holds replicas
        that qualify but for *after*: a read-your-writes read may wait for one of them.
        """
        now = time.monotonic()
        n = len(self.replicas)
        start = self._next
        self._next = (start + 1) % n if n else 0
        ready: list[int] = []
        behind: list[int] = []
        for k in range(n):
            i = (start + k) % n
            status = self._status[i]
            if status.state != "ok" or status.lag_at(now) > max_lag:
                continue
            if after is not None and status.replayed < after.value:
                behind.append(i)
            else:
                ready.append(i)
        return ready, behind

    def _replica_budget(self, deadline_at: float) -> float:
        """How long one replica may take: ``replica_timeout``, else half of what is left (the
        other half is the primary's, should the replica not answer)."""
        left = deadline_at - time.monotonic()
        if self.replica_timeout is not None:
            return min(self.replica_timeout, left)
        return left / 2

    def status(self) -> list[dict[str, Any]]:
        """One dict per replica: ``name``, ``state`` (unknown, ok, down, promoted), ``lag`` (the
        staleness bound now, seconds; ``inf`` when unknown), ``replayed`` (its replay position)
        and its pool's ``breaker`` state."""
        now = time.monotonic()
        out = []
        for replica, status in zip(self.replicas, self._status, strict=True):
            breaker = replica.breaker
            out.append(
                {
                    "name": replica.name,
                    "state": status.state,
                    "lag": status.lag_at(now) if status.state == "ok" else math.inf,
                    "replayed": str(Position(status.replayed)),
                    "error": status.error,
                    "breaker": breaker.state.value if breaker is not None else "off",
                }
            )
        return out

    def stats(self) -> dict[str, Any]:
        """``replica_reads``, ``primary_reads``, ``fallbacks`` (reads a replica failed and the
        primary served), ``checks`` (monitor rounds) and ``replicas`` (:meth:`status`)."""
        return {**self.counters, "replicas": self.status()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, replicas={len(self.replicas)})"
