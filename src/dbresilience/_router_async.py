"""``AsyncReadRouter``: reads to streaming replicas, writes to the primary. Locking and I/O only.

The settings, the staleness arithmetic and the choice of replicas live in
:mod:`dbresilience._router_base`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from psycopg.abc import Params
from psycopg.rows import AsyncRowFactory

from dbresilience._acompat import ASignal, AWorker, asleep, aspawn, await_worker
from dbresilience._classify import classify
from dbresilience._deadline import seconds
from dbresilience._errors import CircuitOpen
from dbresilience._events import logger
from dbresilience._lifecycle import Lifecycle, ResourceState
from dbresilience._pool_async import AsyncPool
from dbresilience._pool_base import Query
from dbresilience._pool_compat import AsyncPoolConnection
from dbresilience._router_base import (
    PRIMARY_FLUSHED,
    PRIMARY_POSITION,
    REPLAYED,
    REPLICA_STATUS,
    Position,
    RouterBase,
)
from dbresilience._validate import seconds as duration

__all__ = ["AsyncReadRouter", "AsyncReadSession"]

T = TypeVar("T")

# a read-your-writes session whose last write's position is unknown reads from the primary
_PRIMARY_ONLY = Position(2**64 - 1)
_POLL = 0.01  # between two looks at a replica's replay position, when asked to wait for it


def _falls_back(exc: Exception) -> bool:
    """True when a replica's failure says nothing about the read itself: try elsewhere."""
    return isinstance(exc, CircuitOpen) or classify(exc).transient


class AsyncReadRouter(RouterBase, Lifecycle):
    """Reads to streaming replicas, writes to the primary, over :class:`AsyncPool` s.

    ``AsyncReadRouter(primary_pool, replicas=[replica_pool, ...], max_lag=5.0)``; then
    ``async with router:`` opens every pool (the replicas without waiting: a replica that is
    down does not stop a service from starting) and starts a monitor (a task) that checks, every
    ``check_interval`` seconds, the primary's WAL position and each replica's: whether it
    answers, is still a standby, and how stale it can be at most (see
    :mod:`dbresilience._router_base`; LSNs first, so an idle primary does not make a caught-up
    replica look stale). Leaving the block closes the pools.

    - :meth:`fetchone` / :meth:`fetchall` go to a replica that answered its last check, is
      still a standby and whose staleness bound is within ``max_lag`` (per call: ``max_lag=``),
      round-robin. A replica that fails with a transient error, has its breaker open (each
      replica pool has its own breaker) or does not answer within ``replica_timeout`` (default:
      half of the call's time left) costs the read nothing but that time: the primary serves it
      within the same deadline (``timeout=``, default the primary's ``query_timeout``). With no
      replica fit, the primary serves at once. A failure that is the read's own (bad SQL)
      raises at once.
    - :meth:`execute`, :meth:`transaction` and :meth:`connection` are the primary's.
    - Read-your-writes: :meth:`session` returns an :class:`AsyncReadSession` that, after each of
      its writes, notes the primary's WAL position and reads only from a replica that has
      replayed it (waiting up to ``wait`` seconds for one), else from the primary;
      :meth:`position` and ``after=`` do the same across requests.
    """

    primary: AsyncPool
    replicas: tuple[AsyncPool, ...]

    def __init__(
        self,
        primary: AsyncPool,
        replicas: Sequence[AsyncPool],
        *,
        max_lag: float | timedelta = 5.0,
        replica_timeout: float | timedelta | None = None,
        check_interval: float | timedelta = 1.0,
        name: str | None = None,
    ) -> None:
        super().__init__(
            primary,
            replicas,
            max_lag=max_lag,
            replica_timeout=replica_timeout,
            check_interval=check_interval,
            name=name,
        )
        self._wake = ASignal()
        self._worker: AWorker | None = None

    @staticmethod
    def _pool_type() -> type:
        return AsyncPool

    # --- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> AsyncReadRouter:
        """Open the primary (waiting for it, as ``AsyncPool.open`` does), the replicas (without
        waiting), check every replica once, and start the monitor; returns the router."""
        if self._is_open:
            return self
        await self.primary.open()
        for replica in self.replicas:
            await replica.open(wait=False)
        self._epoch += 1
        self._forget()
        self._state = ResourceState.OPEN
        await self.check()
        self._worker = aspawn(self._monitor, "dbr-replica-monitor")
        return self

    async def aclose(self) -> None:
        """Stop the monitor and close every pool (replicas first). Idempotent."""
        if not self._is_open:
            return
        self._state = ResourceState.CLOSED
        self._epoch += 1
        self._wake.notify()
        if not await await_worker(self._worker, self.check_interval + 5.0):
            logger.error("the replica monitor of %r did not stop in time", self.name)
        self._worker = None
        for replica in self.replicas:
            await replica.aclose()
        await self.primary.aclose()

    if True:  # ASYNC
        close = aclose

    async def __aenter__(self) -> AsyncReadRouter:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- the monitor ----------------------------------------------------------------------------

    async def _monitor(self) -> None:
        epoch = self._epoch
        while True:
            seen = self._wake.count
            await self._wake.wait(seen, self.check_interval)
            if not self._running(epoch):
                return
            try:
                await self.check()
            except Exception:  # a bug: keep checking, say so
                logger.exception("the replica monitor of %r failed; checking on", self.name)

    async def check(self) -> None:
        """One round of the monitor, now: the primary's WAL position, then every replica's
        status. Each question may take up to ``min(check_interval, 1 s)``."""
        timeout = min(self.check_interval, 1.0)
        at = time.monotonic()
        try:
            row = await self.primary.fetchone(PRIMARY_FLUSHED, timeout=timeout)
        except Exception:  # no sample this round: the replicas' bounds grow meanwhile
            row = None
        if row is not None:
            self._note_primary(at, str(row[0]))
        for i, replica in enumerate(self.replicas):
            try:
                row = await replica.fetchone(REPLICA_STATUS, timeout=timeout)
            except Exception as exc:
                self._note_failure(i, time.monotonic(), classify(exc).code)
                continue
            if row is None:
                continue
            age = None if row[2] is None else float(row[2])
            self._note_replica(i, time.monotonic(), bool(row[0]), str(row[1]), age)
        self.counters["checks"] += 1

    # --- reads ----------------------------------------------------------------------------------

    async def _read(
        self,
        method: str,
        query: Query,
        params: Params | None,
        row_factory: AsyncRowFactory[Any] | None,
        timeout: float | timedelta | None,
        prepare: bool | None,
        max_lag: float | timedelta | None,
        after: Position | None,
        wait: float,
    ) -> Any:
        limit = (
            self.primary._config.query_timeout if timeout is None else seconds("timeout", timeout)
        )
        deadline_at = time.monotonic() + limit
        lag = self.max_lag if max_lag is None else duration("max_lag", max_lag, allow_zero=True)
        ready: list[int] = []
        if after is not _PRIMARY_ONLY:
            ready, behind = self._choose(lag, after)
            if not ready and behind and after is not None and wait > 0:
                found = await self._wait_replayed(
                    behind, after, min(wait, self._replica_budget(deadline_at))
                )
                if found is not None:
                    ready = [found]
        kwargs: dict[str, Any] = {"prepare": prepare}
        if row_factory is not None:
            kwargs["row_factory"] = row_factory
        for i in ready[:2]:
            budget = self._replica_budget(deadline_at)
            if budget <= 0.001:
                break
            replica = self.replicas[i]
            try:
                result = await getattr(replica, method)(query, params, timeout=budget, **kwargs)
            except Exception as exc:
                if not _falls_back(exc):
                    raise
                self.counters["fallbacks"] += 1
                continue
            self.counters["replica_reads"] += 1
            return result
        self.counters["primary_reads"] += 1
        left = max(0.001, deadline_at - time.monotonic())
        return await getattr(self.primary, method)(query, params, timeout=left, **kwargs)

    async def _wait_replayed(
        self, candidates: list[int], after: Position, wait: float
    ) -> int | None:
        """The first of *candidates* seen to have replayed *after* within *wait* seconds."""
        until = time.monotonic() + wait
        while True:
            for i in candidates:
                left = until - time.monotonic()
                if left <= 0:
                    return None
                try:
                    row = await self.replicas[i].fetchone(REPLAYED, (str(after),), timeout=left)
                except Exception:  # noqa: S112 - a replica that cannot say is not waited for
                    continue
                if row is not None and row[0]:
                    return i
            if time.monotonic() + _POLL >= until:
                return None
            await asleep(_POLL)

    async def fetchone(
        self,
        query: Query,
        params: Params | None = None,
        *,
        row_factory: AsyncRowFactory[Any] | None = None,
        timeout: float | timedelta | None = None,
        prepare: bool | None = None,
        max_lag: float | timedelta | None = None,
        after: Position | None = None,
    ) -> Any:
        """The first row of a read, from a fit replica or else the primary (see the class).

        ``max_lag`` overrides the router's for this read; ``after`` (a :class:`Position`, from
        :meth:`position`) admits only replicas that have replayed it.
        """
        return await self._read(
            "fetchone", query, params, row_factory, timeout, prepare, max_lag, after, 0.0
        )

    async def fetchall(
        self,
        query: Query,
        params: Params | None = None,
        *,
        row_factory: AsyncRowFactory[Any] | None = None,
        timeout: float | timedelta | None = None,
        prepare: bool | None = None,
        max_lag: float | timedelta | None = None,
        after: Position | None = None,
    ) -> Any:
        """Every row of a read, routed as :meth:`fetchone`."""
        return await self._read(
            "fetchall", query, params, row_factory, timeout, prepare, max_lag, after, 0.0
        )

    # --- writes ---------------------------------------------------------------------------------

    async def execute(
        self,
        query: Query,
        params: Params | None = None,
        *,
        idempotent: bool = False,
        timeout: float | timedelta | None = None,
        prepare: bool | None = None,
    ) -> int:
        """``primary.execute``: a write, on the primary."""
        return await self.primary.execute(
            query, params, idempotent=idempotent, timeout=timeout, prepare=prepare
        )

    async def transaction(
        self,
        fn: Callable[[AsyncPoolConnection], Awaitable[T]],
        *,
        timeout: float | timedelta | None = None,
        idempotent: bool = False,
    ) -> T:
        """``primary.transaction``: a transaction, on the primary."""
        return await self.primary.transaction(fn, timeout=timeout, idempotent=idempotent)

    async def position(self, timeout: float | timedelta | None = None) -> Position:
        """The primary's WAL position now, past every commit acknowledged so far: after your
        write, pass it as ``after=`` to read it back from a replica (or the primary)."""
        row = await self.primary.fetchone(PRIMARY_POSITION, timeout=timeout)
        if row is None:  # the query always returns a row
            raise RuntimeError("the primary returned no WAL position")
        return Position.parse(str(row[0]))

    def session(self, wait: float | timedelta = 0.0) -> AsyncReadSession:
        """A read-your-writes session (cheap: no I/O): see :class:`AsyncReadSession`."""
        return AsyncReadSession(self, wait=wait)


class AsyncReadSession:
    """Read-your-writes over an :class:`AsyncReadRouter`: after a write made through the session,
    its reads see that write.

    Each write (:meth:`execute`, :meth:`transaction`) is followed by one query on the primary
    for its WAL position (the cost of asking for this); a read then goes to a replica only when
    the replica has replayed that position (per the monitor's last check, or, with
    ``wait > 0``, seen replaying it within ``wait`` seconds), else to the primary. When a write
    fails or the position cannot be read, the session reads from the primary until its next
    write: a write that may have committed is never hidden from its own caller.
    """

    def __init__(self, router: AsyncReadRouter, *, wait: float | timedelta = 0.0) -> None:
        self.router = router
        self.wait = duration("wait", wait, allow_zero=True)
        self.position: Position | None = None

    async def _advance(self) -> None:
        self.position = _PRIMARY_ONLY  # until the position is known
        position = await self.router.position()
        self.position = position

    async def execute(
        self,
        query: Query,
        params: Params | None = None,
        *,
        idempotent: bool = False,
        timeout: float | timedelta | None = None,
        prepare: bool | None = None,
    ) -> int:
        """A write on the primary, as ``AsyncPool.execute``; later reads of the session see it."""
        self.position = _PRIMARY_ONLY
        rowcount = await self.router.execute(
            query, params, idempotent=idempotent, timeout=timeout, prepare=prepare
        )
        await self._advance()
        return rowcount

    async def transaction(
        self,
        fn: Callable[[AsyncPoolConnection], Awaitable[T]],
        *,
        timeout: float | timedelta | None = None,
        idempotent: bool = False,
    ) -> T:
        """A transaction on the primary; later reads of the session see it."""
        self.position = _PRIMARY_ONLY
        result = await self.router.transaction(fn, timeout=timeout, idempotent=idempotent)
        await self._advance()
        return result

    async def fetchone(
        self,
        query: Query,
        params: Params | None = None,
        *,
        row_factory: AsyncRowFactory[Any] | None = None,
        timeout: float | timedelta | None = None,
        prepare: bool | None = None,
        max_lag: float | timedelta | None = None,
    ) -> Any:
        """The first row of a read that sees the session's writes."""
        return await self.router._read(
            "fetchone",
            query,
            params,
            row_factory,
            timeout,
            prepare,
            max_lag,
            self.position,
            self.wait,
        )

    async def fetchall(
        self,
        query: Query,
        params: Params | None = None,
        *,
        row_factory: AsyncRowFactory[Any] | None = None,
        timeout: float | timedelta | None = None,
        prepare: bool | None = None,
        max_lag: float | timedelta | None = None,
    ) -> Any:
        """Every row of a read that sees the session's writes."""
        return await self.router._read(
            "fetchall",
            query,
            params,
            row_factory,
            timeout,
            prepare,
            max_lag,
            self.position,
            self.wait,
        )
