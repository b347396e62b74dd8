"""Starlette (and FastAPI) integration: request ids, timing lines, and errors as HTTP answers.

``install(app)`` adds:

- a request-id middleware: takes ``X-Request-ID`` (or makes one when there is none), keeps it in
  a context variable (:func:`request_id`), returns it on the response, and logs one line when
  the request starts and one when it ends, like the seeds' ``=== REALTIME SESSION REQUEST START
  [req_x] ===``. A client's id that is not safe to log is answered 400 (or hashed, as an option),
  never replaced: it is often the idempotency key of a retrying client;
- exception handlers for errors that come from the database, the pool, the cache or the queue
  (and upstream calls), and for exception groups made of them, answering with what
  :func:`dbresilience.classify` says: 503 with ``Retry-After`` for transient database trouble or
  an open circuit, 504 for an upstream timeout (:class:`UpstreamTimeout`,
  ``httpx.TimeoutException``), 502 for an upstream error (:class:`UpstreamError`, other
  ``httpx.HTTPError``), the classification's status otherwise, as JSON ``{"code", "message",
  "request_id"}`` (or FastAPI's ``{"detail": {...}}``). The message is a fixed text per status,
  never the exception's own text (which can hold hosts, SQL or data). Other errors are left to
  the framework.

:func:`lifespan` opens a pool, caches and queues at start-up without waiting for the database and
drains them at shutdown. :func:`timed` logs ``[req_x] DATABASE_QUERY_START - 12ms`` /
``… _END - 15ms`` lines around a step. Needs the ``web`` extra (Starlette); imported only when
this module is.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextvars import ContextVar
from typing import Any, Literal, Protocol, cast

from dbresilience._classify import classify
from dbresilience._errors import (
    DBResilienceError,
    UpstreamError,
    UpstreamTimeout,
    bounded_wait,
    require,
)

require("starlette", extra="web", what="dbresilience.web")

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dbresilience._validate import one_of

# UpstreamError and UpstreamTimeout are defined in _errors (also dbr.UpstreamError, ...).
__all__ = [
    "RequestIdMiddleware",
    "UpstreamError",
    "UpstreamTimeout",
    "error_response",
    "install",
    "lifespan",
    "request_id",
    "timed",
]

logger = logging.getLogger("dbresilience.web")

_REQUEST_ID: ContextVar[str | None] = ContextVar("dbresilience_request_id", default=None)
_REQUEST_START: ContextVar[float] = ContextVar("dbresilience_request_start", default=0.0)
_MAX_REQUEST_ID = 128

_MESSAGES = {
    400: "The request was not valid.",
    402: "Payment required.",
    404: "Not found.",
    409: "The request conflicts with existing data.",
    499: "The request was cancelled.",
    500: "Internal error.",
    502: "An upstream service failed; please retry.",
    503: "The service is temporarily unavailable; please retry.",
    504: "An upstream service timed out; please retry.",
}


def request_id() -> str | None:
    """The current request's id (inside a request handled under :func:`install`)."""
    return _REQUEST_ID.get()


@contextlib.contextmanager
def timed(step: str) -> Iterator[None]:
    """Log ``[req] STEP_START - N ms`` and ``[req] STEP_END - N ms`` (ms since the request
    started), and ``[req] STEP_FAILED - N ms`` when the block raises."""
    rid = _REQUEST_ID.get() or "-"
    started = _REQUEST_START.get() or time.perf_counter()

    def since() -> int:
        return int((time.perf_counter() - started) * 1000)

    logger.info("[%s] %s_START - %dms", rid, step, since())
    try:
        yield
    except BaseException:
        logger.info("[%s] %s_FAILED - %dms", rid, step, since())
        raise
    logger.info("[%s] %s_END - %dms", rid, step, since())


class RequestIdMiddleware:
    """Pure ASGI middleware: request id in, request id out, one START and one END line."""

    def __init__(
        self,
        app: ASGIApp,
        header: str = "x-request-id",
        *,
        invalid: Literal["reject", "hash"] = "reject",
        shape: _Shape = "dbresilience",
    ) -> None:
        one_of("invalid", invalid, _INVALID)
        one_of("shape", shape, _SHAPES)
        self.app = app
        self.header = header.lower().encode()
        self.invalid = invalid
        self.shape: _Shape = shape

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = None
        for name, value in scope.get("headers") or ():
            if name == self.header:
                # the header twice with different values (a proxy that appended its own): no
                # one value is the client's, and the app (request.headers) reads the first
                # while the last would be logged; invalid, not "the last one wins"
                given = value if given is None or given == value else given + b"\n" + value
        if given is None:
            rid = f"req_{uuid.uuid4().hex[:12]}"
        else:
            clean = _clean(given.decode("latin-1"))
            if clean is not None:
                rid = clean
            elif self.invalid == "hash":
                rid = _hashed(given)
            else:  # never a fresh id: a retrying client's idempotency key would change
                logger.info("rejected a request with an invalid %s header", self.header.decode())
                answer = _answer(400, "INVALID_REQUEST_ID", {}, self.shape)
                await answer(scope, receive, send)
                return
        token = _REQUEST_ID.set(rid)
        start_token = _REQUEST_START.set(time.perf_counter())
        started = time.perf_counter()
        status = 500
        logger.info("=== REQUEST START [%s] %s %s ===", rid, scope.get("method"), scope.get("path"))

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers") or [])
                headers.append((self.header, rid.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            logger.info(
                "=== REQUEST END [%s] - %d - Total: %dms ===",
                rid,
                status,
                int((time.perf_counter() - started) * 1000),
            )
            _REQUEST_START.reset(start_token)
            _REQUEST_ID.reset(token)


def _clean(value: str) -> str | None:
    """A client's request id as given, if it is safe in logs and headers: 1 to 128 visible
    ASCII characters (spaces around it are dropped); ``None`` otherwise (two different values
    of a repeated header, joined by a newline, included)."""
    value = value.strip()
    if 0 < len(value) <= _MAX_REQUEST_ID and all("!" <= c <= "~" for c in value):
        return value
    return None


def _hashed(raw: bytes) -> str:
    """A safe id standing for an unsafe one: the same raw value always gives the same id (a
    retrying client keeps its idempotency key), and different values different ids."""
    return "sha256-" + hashlib.sha256(raw).hexdigest()[:32]


_Shape = Literal["dbresilience", "detail"]
_SHAPES = ("dbresilience", "detail")
_INVALID = ("reject", "hash")


def error_response(exc: BaseException, *, shape: _Shape = "dbresilience") -> JSONResponse:
    """The HTTP answer for *exc*: status from the classification (504/502 for upstreams).

    *shape* ``"dbresilience"`` answers ``{"code", "message", "request_id"}``; ``"detail"``
    answers FastAPI's shape, ``{"detail": {"code", "message", "request_id"}}``. An exception
    group is answered as the first error in it.
    """
    exc = _leaves(exc)[0] if _is_group(exc) else exc
    headers: dict[str, str] = {}
    if isinstance(exc, UpstreamTimeout) or _is_httpx(exc, "TimeoutException"):
        status, code = 504, "UPSTREAM_TIMEOUT"
    elif isinstance(exc, UpstreamError) or _is_httpx(exc, "HTTPError"):
        status, code = 502, "UPSTREAM_ERROR"
    else:
        c = classify(exc)
        status, code = c.http_status, c.code
        if status == 503:
            # whole seconds from 1 to 3600, whatever the classification holds (an error
            # built from a shared breaker state in Redis once carried infinity here)
            headers["Retry-After"] = str(max(1, math.ceil(bounded_wait(c.retry_after))))
    return _answer(status, code, headers, shape)


def _answer(status: int, code: str, headers: dict[str, str], shape: _Shape) -> JSONResponse:
    body: dict[str, object] = {
        "code": code,
        "message": _MESSAGES.get(status, _MESSAGES[500]),
        "request_id": _REQUEST_ID.get(),
    }
    if shape == "detail":
        body = {"detail": body}
    return JSONResponse(body, status_code=status, headers=headers)


def _is_httpx(exc: BaseException, name: str) -> bool:
    return any(c.__module__.startswith("httpx") and c.__name__ == name for c in type(exc).__mro__)


def _is_group(exc: BaseException) -> bool:
    """An ``ExceptionGroup`` (3.11+, or the ``exceptiongroup`` backport anyio uses on 3.10)."""
    return any(c.__name__ == "BaseExceptionGroup" for c in type(exc).__mro__) and isinstance(
        getattr(exc, "exceptions", None), tuple
    )


def _leaves(exc: BaseException, depth: int = 0) -> list[BaseException]:
    """The errors inside a (nested) exception group, in order; bounded like the classifier."""
    if not _is_group(exc) or depth > 8:
        return [exc]
    found: list[BaseException] = []
    for inner in exc.exceptions[:64]:  # type: ignore[attr-defined]
        found.extend(_leaves(inner, depth + 1))
    return found or [exc]


def _ours(exc: BaseException, handled: tuple[type[BaseException], ...]) -> bool:
    """Whether *exc* (every error in it, for a group) came from what :func:`install` answers
    for: the database driver or pool, dbresilience's pool, cache, queue or breakers, upstream
    calls, and the classes the caller added."""
    return all(isinstance(leaf, handled) for leaf in _leaves(exc))


def _database_errors() -> list[type[Exception]]:
    """The error classes that come from the database stack (and upstream calls)."""
    import psycopg

    handled: list[type[Exception]] = [psycopg.Error, DBResilienceError]  # pool errors included
    with contextlib.suppress(ImportError):
        from sqlalchemy import exc as sa

        handled += [sa.DBAPIError, sa.TimeoutError, sa.DisconnectionError]
    with contextlib.suppress(ImportError):
        import httpx

        handled.append(httpx.HTTPError)
    return handled


def install(
    app: Starlette,
    *,
    shape: _Shape = "dbresilience",
    invalid_request_id: Literal["reject", "hash"] = "reject",
    also: Sequence[type[Exception]] = (),
) -> Starlette:
    """Add the request-id middleware and the error handlers to *app*; returns it.

    Answered: errors that come from the database or the pool (``psycopg.Error``,
    ``psycopg_pool`` errors, SQLAlchemy's ``DBAPIError``, ``TimeoutError`` and
    ``DisconnectionError``), every :class:`DBResilienceError` (pool timeouts, open circuits,
    query timeouts, a full or closed queue, upstream errors), ``httpx.HTTPError`` (502/504),
    the classes in *also*, and exception groups (a ``TaskGroup``'s) made only of those. Any
    other error, a ``ConnectionRefusedError`` from an SMTP client or a bare ``TimeoutError``
    included, is left to the framework as if nothing were installed.

    *shape*: ``"dbresilience"`` (``{"code", "message", "request_id"}``) or ``"detail"``
    (FastAPI's ``{"detail": ...}`` around the same). *invalid_request_id*: what to do with an
    ``X-Request-ID`` that is not 1 to 128 visible ASCII characters (or is sent twice with
    different values): ``"reject"`` it with 400, or
    ``"hash"`` it to ``sha256-<32 hex>`` (the same header always gives the same id). A client's
    id is never replaced by a random one: a retrying client's idempotency key would change.
    """
    one_of("shape", shape, _SHAPES)
    one_of("invalid_request_id", invalid_request_id, _INVALID)
    for cls in also:
        if not (isinstance(cls, type) and issubclass(cls, Exception)):
            raise TypeError(f"also: expected exception classes, got {cls!r}")
    handled = tuple([*_database_errors(), *also])

    async def handler(request: Request, exc: Exception) -> Response:
        if not _ours(exc, handled):
            raise exc  # not the database's: the framework answers it as it would anyway
        answer = error_response(exc, shape=shape)
        if answer.status_code >= 500:
            logger.warning(
                "[%s] answered %d for %s",
                _REQUEST_ID.get(),
                answer.status_code,
                type(exc).__name__,
            )
        return answer

    groups = [c for c in (_builtin_group(),) if c is not None]
    for exc_class in [*handled, *groups]:
        app.add_exception_handler(exc_class, handler)
    app.add_middleware(RequestIdMiddleware, invalid=invalid_request_id, shape=shape)
    return app


def _builtin_group() -> type[Exception] | None:
    """``ExceptionGroup`` where there is one (3.11+, or the backport on 3.10)."""
    found = getattr(builtins, "ExceptionGroup", None)
    if found is None:
        with contextlib.suppress(ImportError):
            import exceptiongroup  # the backport anyio uses on 3.10

            found = exceptiongroup.ExceptionGroup
    return found if isinstance(found, type) else None


class _Opened(Protocol):
    async def aclose(self) -> None: ...


def lifespan(
    *resources: object,
) -> Callable[[object], contextlib.AbstractAsyncContextManager[None]]:
    """A Starlette/FastAPI ``lifespan`` that opens *resources* at start-up and closes them, in
    reverse order, at shutdown: ``FastAPI(lifespan=web.lifespan(pool, cache, queue))``.

    Start-up never waits for the database: an :class:`~dbresilience.AsyncPool` is opened with
    ``open(wait=False)`` (calls fail fast with :class:`~dbresilience.DatabaseUnavailable` until
    it is back), an engine from ``dbresilience.sqlalchemy.create_async_engine`` is warmed in a
    background task, caches and breaker states never wait for Redis, and a write queue replays
    its journal into memory. Shutdown drains each :class:`~dbresilience.AsyncWriteQueue`
    (within its ``drain_timeout``; what is left stays in its journal) before any pool or
    engine is closed, whatever order they are listed in; then caches and breaker states, then
    pools and engines, each group in reverse order. Accepts ``AsyncPool``,
    ``AsyncCredentialCache``, ``AsyncWriteQueue``, ``AsyncRedisBreakerState`` and SQLAlchemy
    ``AsyncEngine`` objects; anything else is a ``TypeError`` here, not at start-up.
    """
    from dbresilience._breaker_redis_async import AsyncRedisBreakerState
    from dbresilience._cache_async import AsyncCredentialCache
    from dbresilience._pool_async import AsyncPool
    from dbresilience._queue_async import AsyncWriteQueue

    ours = (AsyncPool, AsyncCredentialCache, AsyncWriteQueue, AsyncRedisBreakerState)
    for n, resource in enumerate(resources):
        if not (isinstance(resource, ours) or _is_async_engine(resource)):
            raise TypeError(
                f"resources[{n}]: expected an AsyncPool, AsyncCredentialCache, AsyncWriteQueue, "
                f"AsyncRedisBreakerState or SQLAlchemy AsyncEngine, got {type(resource).__name__}"
            )

    def rank(resource: object) -> int:
        """Shutdown order: queues drain first (through a pool still open), pools and engines
        close last, whatever order they were listed in."""
        if isinstance(resource, AsyncWriteQueue):
            return 0
        return 2 if isinstance(resource, AsyncPool) or _is_async_engine(resource) else 1

    @contextlib.asynccontextmanager
    async def run(app: object) -> AsyncIterator[None]:
        closers: list[tuple[int, Callable[[], Awaitable[None]]]] = []
        try:
            for resource in resources:
                closers.append((rank(resource), await _open(resource)))
            yield
        finally:
            # reverse listing order within a rank; sorted() is stable
            for _, close in sorted(reversed(closers), key=lambda c: c[0]):
                try:
                    await close()
                except Exception:  # one failing close must not keep the others open
                    logger.exception("closing a resource at shutdown failed")

    return run


def _is_async_engine(obj: object) -> bool:
    return any(
        c.__name__ == "AsyncEngine" and c.__module__.startswith("sqlalchemy")
        for c in type(obj).__mro__
    )


async def _open(resource: object) -> Callable[[], Awaitable[None]]:
    """Open *resource* without waiting for its server; returns how to close it."""
    from dbresilience._pool_async import AsyncPool

    if _is_async_engine(resource):
        from dbresilience._sqlalchemy_async import warm_async_engine

        engine: Any = resource
        task = asyncio.create_task(warm_async_engine(engine), name="dbr-warm-engine")

        async def dispose() -> None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            await engine.dispose()

        task.add_done_callback(_log_warming)
        return dispose
    if isinstance(resource, AsyncPool):
        await resource.open(wait=False)
    else:
        await resource.open()  # type: ignore[attr-defined]
    return cast(_Opened, resource).aclose


def _log_warming(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning(
            "warming the engine failed (%s); connections open on demand",
            type(task.exception()).__name__,
        )
