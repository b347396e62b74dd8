"""``AsyncCredentialCache``: memory in front of Redis, single-flight loads, Redis trouble paid
once.

Locking and I/O only; settings, the value format, the memory tier and the counters live in
:mod:`dbresilience._cache_base`.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar, cast

from dbresilience import _instrument
from dbresilience._acompat import AEvent, asleep, aspawn, spawn
from dbresilience._cache_base import (
    INVALIDATE,
    NOT_FOUND,
    RELEASE_LEASE,
    SET_IF_VERSION,
    CacheBase,
    Entry,
    Packed,
    memory_key,
)
from dbresilience._classify import classify
from dbresilience._events import logger
from dbresilience._lifecycle import ResourceState

__all__ = ["AsyncCredentialCache"]

T = TypeVar("T")

if True:  # ASYNC
    import asyncio

_monotonic = time.monotonic


class _AFlight:
    """One load in progress; the callers that arrive meanwhile wait for its outcome.

    The event is made only when a second caller arrives (under the cache's lock): an
    uncontended load, the common case, pays for no event.
    """

    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done: AEvent | None = None
        self.result: Any = None
        self.error: BaseException | None = None

    async def wait(self) -> Any:
        assert self.done is not None
        await self.done.wait()
        if self.error is not None:
            raise self.error
        return self.result


class AsyncCredentialCache(CacheBase):
    """A memory cache in front of Redis (or memory only) for values loaded from the database.

    ``await cache.get_or_load(user_id, lambda: load_credentials(user_id))`` returns the cached
    value, or calls the loader once per key at a time (single-flight), keeps the result
    (``None`` is remembered as "not found" for ``negative_ttl``) and returns it. A loader that
    raises is not cached; within ``stale_ttl`` after expiry the last value is served instead
    when the failure is transient (counted as ``stale_served``).

    Values must be what ``serializer`` (default :class:`dbresilience.MsgpackSerializer`) gives
    back equal and of the same type — a row's ``Decimal``, ``datetime``, ``UUID``, tuple …; see
    docs/cache.md — with Redis or without: anything else is the caller's ``TypeError``, naming
    the type, and is not kept. With ``redis_url``, values are shared through Redis (that
    serializer's bytes, never pickle; keys start with ``namespace:``), and :meth:`invalidate`
    reaches every instance on the same Redis and namespace. Redis trouble never reaches the
    caller and is paid once: the first connection failure or timeout (100 ms by default,
    redis-py's retries off) switches the cache to memory only, with TTLs shortened to
    ``degraded_ttl``, while a background worker probes Redis every ``probe_interval``; when
    Redis answers again the memory tier is flushed and Redis is used again. Redis is contacted
    on first use (or :meth:`open`), not in the constructor.

    The asyncio cache uses ``redis.asyncio``, its loader is a coroutine function and its
    workers (the prober, the invalidation subscriber) are tasks held by strong references;
    the threaded cache's workers are daemon threads.
    """

    def _setup(self) -> None:
        self._flights: dict[str, _AFlight] = {}
        if True:  # ASYNC
            self._workers: set[asyncio.Task[None]] = set()
        self._set_if_version: Any = None
        self._invalidate: Any = None
        self._release: Any = None

    def _start(self) -> None:
        """Open: from unopened (explicitly or on first use) or again after a close."""
        with self._lock:
            if self._is_open:
                return
            if self._state is ResourceState.CLOSED:
                self._memory.clear()  # a reopened cache starts as a new one would
            self._state = ResourceState.OPEN
            self._epoch += 1
            epoch = self._epoch
            self.degraded = False
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
        self._release = self._client.register_script(RELEASE_LEASE)
        self._spawn(lambda: self._subscriber(epoch), "dbr-cache-invalidations")

    def _spawn(self, target: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        if True:  # ASYNC
            worker = aspawn(target, name)
            self._workers.add(worker)  # the loop keeps only a weak reference
            worker.add_done_callback(self._workers.discard)
        else:
            spawn(target, name)

    # --- degraded mode ------------------------------------------------------------------------

    def _degrade(self, exc: BaseException) -> None:
        """Redis failed: memory only from now on, until the prober sees it answer again."""
        self.counters["redis_errors"] += 1
        with self._lock:
            if self.degraded or not self._is_open:
                return
            self.degraded = True
            self._degraded_at = _monotonic()
            epoch = self._epoch
        if _instrument.hooks:
            _instrument.emit(_instrument.CacheDegraded(self.namespace, classify(exc).code))
        logger.warning(
            "cache %r: Redis unavailable (%s); serving from memory, probing every %.1f s",
            self.namespace,
            type(exc).__name__,
            self.probe_interval,
        )
        self._spawn(lambda: self._probe(epoch), "dbr-cache-probe")

    async def _probe(self, epoch: int) -> None:
        while self._running(epoch):
            await asleep(self.probe_interval)
            if not self._running(epoch):
                return
            try:
                await self._client.ping()
            except Exception:
                self.counters["redis_errors"] += 1
                continue
            self.flush_memory()  # what memory kept may have been invalidated meanwhile
            self.degraded = False
            logger.warning("cache %r: Redis is back; memory tier flushed", self.namespace)
            if _instrument.hooks:
                _instrument.emit(
                    _instrument.CacheRestored(self.namespace, _monotonic() - self._degraded_at)
                )
            return

    async def _subscriber(self, epoch: int) -> None:
        """Follow the invalidation channel; resubscribe after Redis comes back."""
        while self._running(epoch):
            if self.degraded:
                await asleep(self.probe_interval)
                continue
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                while self._running(epoch) and not self.degraded:
                    message = await pubsub.get_message(timeout=0.2)
                    if message is not None and message.get("type") == "message":
                        self._received(message["data"])
            except Exception as exc:
                if self._running(epoch):
                    self._degrade(exc)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    # --- reading ------------------------------------------------------------------------------

    async def get_or_load(self, key: str | int, loader: Callable[[], Awaitable[T]]) -> T:
        """The cached value for *key*, or ``await loader()``'s (called once per key at a time);
        typed as the loader's value.

        Raises only what the loader raised (when no stale value may be served) and
        ``TypeError`` for a key that is not a str or an int; never a Redis error.
        """
        k = memory_key(key)
        with self._lock:
            entry = self._memory.get(k)
            if entry is not None:
                self._memory.move_to_end(k)  # least recently used goes first
        if entry is not None and entry.fresh_until > _monotonic():
            self.counters["memory_hits"] += 1
            if _instrument.hooks:
                tier = "negative" if entry.value is NOT_FOUND else "memory"
                _instrument.emit(_instrument.CacheHit(self.namespace, tier))
            value = entry.value
            if value is NOT_FOUND:
                self.counters["negative_hits"] += 1
                return cast(T, None)  # only a loader that returned None leaves this entry
            if type(value) is Packed:  # a dict, a list …: the caller's own copy
                return self._loads(value)  # type: ignore[no-any-return]
            return value  # type: ignore[no-any-return]
        if self._state is ResourceState.UNOPENED:
            self._start()
        version = b""
        if self._client is not None and not self.degraded:
            since = self._tick  # before the GET: an invalidation arriving after it wins
            try:
                ok, value, body = self._read(k, await self._client.get(self.redis_key(k)))
                if ok:
                    self.counters["redis_hits"] += 1
                    if _instrument.hooks:
                        _instrument.emit(_instrument.CacheHit(self.namespace, "redis"))
                    self._remember(k, value, since, body)
                    return self._public(value)  # type: ignore[no-any-return]
                # a miss: the version the load's write-back must still find (read before
                # loading, so an invalidation during the load makes the write-back a no-op);
                # handed back as it came: whatever bytes are there, the script compares them
                version = await self._client.get(self.version_key(k)) or b""
            except Exception as exc:
                self._degrade(exc)
        self.counters["misses"] += 1
        if _instrument.hooks:
            _instrument.emit(_instrument.CacheMiss(self.namespace))
        return await self._load(k, loader, version, entry)  # type: ignore[no-any-return]

    async def _load(
        self, k: str, loader: Callable[[], Awaitable[Any]], version: bytes, stale: Entry | None
    ) -> Any:
        with self._lock:
            flight = self._flights.get(k)
            leader = flight is None
            if flight is None:
                flight = self._flights[k] = _AFlight()
            elif flight.done is None:
                flight.done = AEvent()
            since = self._since()
        if not leader:
            return self._public(self._copy(await flight.wait()))
        lease = None
        try:
            if self.lease:
                found, shared, lease = await self._lease_or_wait(k, since)
                if found:
                    flight.result = self._kept(shared)
                    return self._public(shared)
            started = _monotonic()
            try:
                value = self._stored(await loader())
            except Exception as exc:
                self.counters["load_failures"] += 1
                if _instrument.hooks:
                    self._loaded(started, exc)
                serve, old = self._stale_value(stale, exc)
                if not serve:
                    raise
                if _instrument.hooks:
                    _instrument.emit(
                        _instrument.CacheStaleServed(self.namespace, classify(exc).code)
                    )
                flight.result = old
                return self._public(self._copy(old))
            self.counters["loads"] += 1
            if _instrument.hooks:
                self._loaded(started, None)
            # Encoded with Redis or without (memory-only mode must not accept what production
            # refuses): a value the serializer cannot give back as it is is the caller's
            # TypeError, neither kept nor shared. Encoded once, on the load: a hit never pays.
            body = self._dump(value)
            payload = self._encode(k, value, body)
            flight.result = self._remember(k, value, since, body)  # not serialized again
            await self._share(k, value, payload, version)
            return self._public(value)
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                self._flights.pop(k, None)
                done = flight.done  # waiters made it under this lock, before the pop
            if done is not None:
                done.set()
            if lease is not None:  # stored or not: the next instance need not wait it out
                await self._release_lease(k, lease)

    def _loaded(self, started: float, exc: Exception | None) -> None:
        """Announce a loader run to the process-wide hooks."""
        code = None if exc is None else classify(exc).code
        outcome = "ok" if exc is None else "error"
        _instrument.emit(
            _instrument.CacheLoaded(self.namespace, _monotonic() - started, outcome, code)
        )

    async def _share(self, k: str, value: Any, payload: bytes, version: bytes) -> None:
        """Put a fresh value in Redis unless someone invalidated the key meanwhile."""
        if self._client is None or self.degraded:
            return
        ttl_ms = max(1, int(self._ttl_for(value) * 1000))
        try:
            await self._set_if_version(
                keys=[self.redis_key(k), self.version_key(k)], args=[payload, ttl_ms, version]
            )
        except Exception as exc:
            self._degrade(exc)

    async def _lease_or_wait(self, k: str, since: int) -> tuple[bool, Any, str | None]:
        """With ``lease=True``: take the lease and load, or wait for the holder's value.

        Returns ``(True, value, None)`` when another instance stored the value meanwhile;
        otherwise ``(False, None, token)``: we load, holding the lease when *token* is not
        None (released by the caller however the load ends) and without it when Redis is
        unavailable or the holder took longer than ``lease_ttl``.
        """
        if self._client is None or self.degraded:
            return False, None, None
        token = secrets.token_hex(8)
        try:
            if await self._client.set(
                self.lease_key(k), token, nx=True, px=int(self.lease_ttl * 1000)
            ):
                return False, None, token
            deadline = _monotonic() + self.lease_ttl
            while _monotonic() < deadline:
                await asleep(0.02)
                ok, value, body = self._read(k, await self._client.get(self.redis_key(k)))
                if ok:
                    self.counters["redis_hits"] += 1
                    self._remember(k, value, since, body)
                    return True, value, None
        except Exception as exc:
            self._degrade(exc)
        return False, None, None

    async def _release_lease(self, k: str, token: str) -> None:
        """Give back the lease taken with *token*, if it is still ours (else it expires)."""
        if self._client is None or self.degraded:
            return
        try:
            await self._release(keys=[self.lease_key(k)], args=[token])
        except Exception as exc:
            self._degrade(exc)

    # --- invalidation and lifecycle -------------------------------------------------------------

    async def invalidate(self, key: str | int, *more: str | int) -> None:
        """Forget *key* (and *more* keys) here, in Redis, and in every other instance.

        Several keys go to Redis in one pipeline: one round trip, one connection. While Redis
        is unavailable only this instance forgets; the others' memory TTLs are short
        (``degraded_ttl``) for exactly that reason. Never raises a Redis error.
        """
        keys = [memory_key(k) for k in (key, *more)]
        for k in keys:
            self._forget(k)
        self.counters["invalidations"] += len(keys)
        if self._state is ResourceState.UNOPENED:
            self._start()
        if self._client is None or self.degraded:
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:  # closed: no leak
                for k in keys:
                    await self._invalidate(
                        keys=[self.redis_key(k), self.version_key(k)],
                        args=[self.channel, self._invalidation_message(k)],
                        client=pipe,
                    )
                await pipe.execute()
        except Exception as exc:
            self._degrade(exc)

    async def open(self) -> AsyncCredentialCache:
        """Connect to Redis (when configured) and start following invalidations; returns self.

        Optional: the first :meth:`get_or_load` or :meth:`invalidate` does it too. Never raises
        a Redis error (an unreachable Redis makes the cache degraded, as on any call).
        """
        self._start()
        return self

    async def aclose(self) -> None:
        """Stop the background workers and close the Redis client. Idempotent.

        A closed cache still answers :meth:`get_or_load` from memory and the loader, without
        Redis; :meth:`open` starts it again.
        """
        with self._lock:
            if not self._is_open:
                return
            self._state = ResourceState.CLOSED
            self._epoch += 1
            client, self._client = self._client, None
        if True:  # ASYNC
            workers = list(self._workers)
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()

    if True:  # ASYNC
        close = aclose

    async def __aenter__(self) -> AsyncCredentialCache:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
