"""``AsyncCredentialCache``: the asyncio twin of :class:`CredentialCache`, method for method."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from dbresilience._cache_base import (
    INVALIDATE,
    NOT_FOUND,
    SET_IF_VERSION,
    CacheBase,
    Entry,
    memory_key,
)
from dbresilience._events import logger

__all__ = ["AsyncCredentialCache"]

_monotonic = time.monotonic


class AsyncCredentialCache(CacheBase):
    """The asyncio twin of :class:`CredentialCache` (``redis.asyncio``; single-flight across
    tasks; the prober and the invalidation subscriber are tasks held by strong references).

    ``async with AsyncCredentialCache(redis_url=...) as cache:
    creds = await cache.get_or_load(user_id, async_loader)``. The loader is a coroutine
    function. Everything :class:`CredentialCache` promises holds here.
    """

    def _setup(self) -> None:
        self._flights: dict[str, asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._set_if_version: Any = None
        self._invalidate: Any = None

    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        if self.redis_url is None:
            return
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self._client = redis.asyncio.Redis.from_url(
            self.redis_url,
            socket_connect_timeout=self.timeout,
            socket_timeout=self.timeout,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self._set_if_version = self._client.register_script(SET_IF_VERSION)
        self._invalidate = self._client.register_script(INVALIDATE)
        self._spawn(self._subscriber())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(self._tasks.discard)

    # --- degraded mode ------------------------------------------------------------------------

    def _degrade(self, exc: BaseException) -> None:
        """Redis failed: memory only from now on, until the prober sees it answer again."""
        self.counters["redis_errors"] += 1
        if self.degraded or self._closed:
            return
        self.degraded = True
        logger.warning(
            "cache %r: Redis unavailable (%s); serving from memory, probing every %.1f s",
            self.namespace,
            type(exc).__name__,
            self.probe_interval,
        )
        self._spawn(self._probe())

    async def _probe(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.probe_interval)
            try:
                await self._client.ping()
            except Exception:
                self.counters["redis_errors"] += 1
                continue
            self.flush_memory()
            self.degraded = False
            logger.warning("cache %r: Redis is back; memory tier flushed", self.namespace)
            return

    async def _subscriber(self) -> None:
        while not self._closed:
            if self.degraded:
                await asyncio.sleep(self.probe_interval)
                continue
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                while not self._closed and not self.degraded:
                    message = await pubsub.get_message(timeout=0.2)
                    if message is not None and message.get("type") == "message":
                        self.received(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self._closed:
                    self._degrade(exc)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    # --- reading ------------------------------------------------------------------------------

    async def get_or_load(self, key: str | int, loader: Callable[[], Awaitable[Any]]) -> Any:
        """The cached value for *key*, or ``await loader()``'s (once per key at a time)."""
        k = memory_key(key)
        with self._lock:
            entry = self._memory.get(k)
        if entry is not None and entry.fresh_until > _monotonic():
            self.counters["memory_hits"] += 1
            if entry.value is NOT_FOUND:
                self.counters["negative_hits"] += 1
                return None
            return entry.value
        if not self._started:
            self._start()
        version = ""
        if self._client is not None and not self.degraded:
            try:
                ok, value = self.decode(k, await self._client.get(self.redis_key(k)))
                if ok:
                    self.counters["redis_hits"] += 1
                    self.remember(k, value)
                    return self.public(value)
                seen = await self._client.get(self.version_key(k))  # a miss: see CredentialCache
                version = seen.decode() if seen else ""
            except Exception as exc:
                self._degrade(exc)
        self.counters["misses"] += 1
        return await self._load(k, loader, version, entry)

    async def _load(
        self, k: str, loader: Callable[[], Awaitable[Any]], version: str, stale: Entry | None
    ) -> Any:
        flight = self._flights.get(k)
        if flight is not None:
            return self.public(await asyncio.shield(flight))
        flight = self._flights[k] = asyncio.get_running_loop().create_future()
        generation = self._generation.get(k, 0)
        try:
            shared = await self._wait_for_other_instance(k) if self.lease else None
            if shared is not None:
                flight.set_result(shared)
                return self.public(shared)
            try:
                value = self.stored(await loader())
            except Exception as exc:
                self.counters["load_failures"] += 1
                serve, old = self.stale_value(stale, exc)
                if not serve:
                    raise
                flight.set_result(old)
                return self.public(old)
            self.counters["loads"] += 1
            self.remember(k, value, generation)
            await self._share(k, value, version)
            flight.set_result(value)
            return self.public(value)
        except BaseException as exc:
            if not flight.done():
                flight.set_exception(exc)
                flight.exception()  # retrieved: no "never retrieved" warning if nobody waited
            raise
        finally:
            self._flights.pop(k, None)

    async def _share(self, k: str, value: Any, version: str) -> None:
        if self._client is None or self.degraded:
            return
        ttl_ms = max(1, int(self._ttl_for(value) * 1000))
        payload = self.encode(k, value)
        try:
            await self._set_if_version(
                keys=[self.redis_key(k), self.version_key(k)], args=[payload, ttl_ms, version]
            )
            if self.lease:
                await self._client.delete(self.lease_key(k))
        except Exception as exc:
            self._degrade(exc)

    async def _wait_for_other_instance(self, k: str) -> Any:
        if self._client is None or self.degraded:
            return None
        try:
            if await self._client.set(
                self.lease_key(k), secrets.token_hex(8), nx=True, px=int(self.lease_ttl * 1000)
            ):
                return None
            deadline = _monotonic() + self.lease_ttl
            while _monotonic() < deadline:
                await asyncio.sleep(0.02)
                ok, value = self.decode(k, await self._client.get(self.redis_key(k)))
                if ok:
                    self.counters["redis_hits"] += 1
                    self.remember(k, value)
                    return value
        except Exception as exc:
            self._degrade(exc)
        return None

    # --- invalidation and lifecycle -------------------------------------------------------------

    async def invalidate(self, key: str | int, *more: str | int) -> None:
        """Forget *key* (and *more*) here, in Redis (one pipeline), and in every other
        instance (see :meth:`CredentialCache.invalidate`)."""
        keys = [memory_key(k) for k in (key, *more)]
        for k in keys:
            self.forget(k)
        self.counters["invalidations"] += len(keys)
        if not self._started:
            self._start()
        if self._client is None or self.degraded:
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:  # closed: no leak
                for k in keys:
                    await self._invalidate(
                        keys=[self.redis_key(k), self.version_key(k)],
                        args=[self.channel, self.invalidation_message(k)],
                        client=pipe,
                    )
                await pipe.execute()
        except Exception as exc:
            self._degrade(exc)

    async def aclose(self) -> None:
        """Cancel the background tasks and close the Redis client. Idempotent."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()

    close = aclose

    async def __aenter__(self) -> AsyncCredentialCache:
        self._start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
