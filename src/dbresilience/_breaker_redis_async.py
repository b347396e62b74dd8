"""``AsyncRedisBreakerState``: shared circuit-breaker "open" signals through Redis.

Locking and I/O only; the settings, the Lua scripts and the quorum arithmetic live in
:mod:`dbresilience._breaker_redis_base`.
"""

from __future__ import annotations

import collections
import contextlib

from dbresilience._acompat import ASignal, AWorker, aspawn, await_worker
from dbresilience._breaker_redis_base import MAX_OPEN_MS, POLL, PUBLISH, SharedStateBase
from dbresilience._events import logger
from dbresilience._lifecycle import ResourceState

__all__ = ["AsyncRedisBreakerState"]


class AsyncRedisBreakerState(SharedStateBase):
    """Shared "open" signals for :class:`CircuitBreaker`: a publisher and a poller worker.

    ``state = AsyncRedisBreakerState("redis://…", quorum=2)``; ``await state.open()`` (or
    ``async with state:``); ``CircuitBreaker("orders-db", shared=state)``. Several breakers may
    share one state (one key each). Invalid arguments raise ``TypeError``/``ValueError`` naming
    them. :meth:`publish` may be called from any thread and never blocks.

    The asyncio state uses ``redis.asyncio`` and runs its workers as tasks of the loop that
    opened it; the threaded one uses ``redis`` and daemon threads.
    """

    def _setup(self) -> None:
        self._outbox: collections.deque[tuple[str, int]] = collections.deque()
        self._wakeup = ASignal()  # the publisher waits on it: a signal to send, or closing
        self._stop = ASignal()  # the poller waits on it between polls: closing
        self._workers: list[AWorker] = []

    async def open(self) -> AsyncRedisBreakerState:
        """Make the Redis client and start the publisher and the poller; returns self.

        Never raises a Redis error: an unreachable Redis is logged once and the breakers decide
        from local evidence until it answers.
        """
        if self._is_open:
            return self
        import redis.asyncio

        self._client = redis.asyncio.Redis.from_url(
            self.url,
            socket_connect_timeout=self.timeout,
            socket_timeout=self.timeout,
            retry=None,
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self._publish = self._client.register_script(PUBLISH)
        self._poll = self._client.register_script(POLL)
        self._state = ResourceState.OPEN
        self._epoch += 1
        epoch = self._epoch
        self._workers = [
            aspawn(lambda: self._publisher(epoch), "dbr-breaker-publish"),
            aspawn(lambda: self._poller(epoch), "dbr-breaker-poll"),
        ]
        return self

    async def aclose(self) -> None:
        """Send what is queued, stop the workers (2 s at most each) and close the client.
        Idempotent; :meth:`open` starts it again."""
        if not self._is_open:
            return
        self._state = ResourceState.CLOSED
        self._epoch += 1
        self._wakeup.notify()
        self._stop.notify()
        for worker in self._workers:
            if not await await_worker(worker, 2.0):
                logger.warning("shared breaker state: a worker did not stop within 2 s")
                if True:  # ASYNC
                    worker.cancel()
        self._workers = []
        self._views.clear()
        with contextlib.suppress(Exception):
            await self._client.aclose()

    if True:  # ASYNC
        close = aclose

    async def __aenter__(self) -> AsyncRedisBreakerState:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def publish(self, breaker: str, open_for: float) -> None:
        """Queue this instance's signal: open for *open_for* seconds (0: closed). Thread-safe,
        never blocks; dropped while the state is not open."""
        if not self._is_open:
            return
        self._outbox.append((breaker, self._open_ms(open_for)))
        self._wakeup.notify()

    # --- the workers ----------------------------------------------------------------------------

    async def _publisher(self, epoch: int) -> None:
        while True:
            seen = self._wakeup.count
            while self._outbox:
                breaker, open_ms = self._outbox.popleft()
                try:
                    await self._publish(
                        keys=[self.key(breaker)], args=[self.instance, open_ms, MAX_OPEN_MS]
                    )
                except Exception as exc:
                    self._failed(exc)
            if not self._running(epoch):
                return
            await self._wakeup.wait(seen, None)

    async def _poller(self, epoch: int) -> None:
        while True:
            seen = self._stop.count
            if not self._running(epoch):
                return
            await self._stop.wait(seen, self.refresh)
            if not self._running(epoch):
                return
            for breaker in list(self._breakers):
                try:
                    reply = await self._poll(
                        keys=[self.key(breaker)], args=[MAX_OPEN_MS, self.quorum + 1]
                    )
                except Exception as exc:
                    self._failed(exc)
                    self._views[breaker] = 0.0
                    continue
                self._views[breaker] = self._absorb(reply)
