"""Starlette (and FastAPI) integration: request ids, timing lines, and errors as HTTP answers.

``install(app)`` adds:

- a request-id middleware: takes ``X-Request-ID`` (or makes one), keeps it in a context
  variable (:func:`request_id`), returns it on the response, and logs one line when the request
  starts and one when it ends, like the seeds' ``=== REALTIME SESSION REQUEST START [req_x] ===``;
- exception handlers that answer with what :func:`dbresilience.classify` says: 503 with
  ``Retry-After`` for transient database trouble or an open circuit, 504 for an upstream timeout
  (:class:`UpstreamTimeout`, ``httpx.TimeoutException``), 502 for an upstream error
  (:class:`UpstreamError`, other ``httpx.HTTPError``), the classification's status otherwise,
  always as JSON ``{"code", "message", "request_id"}``. The message is a fixed text per status,
  never the exception's own text (which can hold hosts, SQL or data).

:func:`timed` logs ``[req_x] DATABASE_QUERY_START - 12ms`` / ``… _END - 15ms`` lines around a
step. Needs the ``web`` extra (Starlette); imported only when this module is.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import uuid
from collections.abc import Iterator
from contextvars import ContextVar

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dbresilience._classify import classify
from dbresilience._errors import (
    DBResilienceError,
    UpstreamError,
    UpstreamTimeout,
    bounded_wait,
)

# UpstreamError and UpstreamTimeout are defined in _errors (also dbr.UpstreamError, ...).
__all__ = [
    "RequestIdMiddleware",
    "UpstreamError",
    "UpstreamTimeout",
    "error_response",
    "install",
    "request_id",
    "timed",
]

logger = logging.getLogger("dbresilience.web")

_REQUEST_ID: ContextVar[str | None] = ContextVar("dbresilience_request_id", default=None)
_REQUEST_START: ContextVar[float] = ContextVar("dbresilience_request_start", default=0.0)

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

    def __init__(self, app: ASGIApp, header: str = "x-request-id") -> None:
        self.app = app
        self.header = header.lower().encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(self.header)
        rid = _clean(given.decode("latin-1")) if given else None
        rid = rid or f"req_{uuid.uuid4().hex[:12]}"
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
    """A client's request id, if it is short and printable (it goes into logs and headers)."""
    value = value.strip()
    if 0 < len(value) <= 128 and all(c.isalnum() or c in "-_.:" for c in value):
        return value
    return None


def error_response(exc: BaseException) -> JSONResponse:
    """The HTTP answer for *exc*: status from the classification (504/502 for upstreams)."""
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
    body = {
        "code": code,
        "message": _MESSAGES.get(status, _MESSAGES[500]),
        "request_id": _REQUEST_ID.get(),
    }
    return JSONResponse(body, status_code=status, headers=headers)


def _is_httpx(exc: BaseException, name: str) -> bool:
    return any(c.__module__.startswith("httpx") and c.__name__ == name for c in type(exc).__mro__)


async def _handler(request: Request, exc: Exception) -> Response:
    status = error_response(exc)
    if status.status_code >= 500:
        logger.warning(
            "[%s] answered %d for %s", _REQUEST_ID.get(), status.status_code, type(exc).__name__
        )
    return status


def install(app: Starlette) -> Starlette:
    """Add the request-id middleware and the error handlers to *app*; returns it.

    Handled: ``psycopg.Error``, redis-py errors, :class:`DBResilienceError` (pool timeouts,
    open circuits, query timeouts, upstream errors), ``TimeoutError``, ``ConnectionError`` and
    ``httpx.HTTPError`` (when httpx is installed). Anything else is left to the framework.
    """
    import psycopg

    handled: list[type[Exception]] = [
        psycopg.Error,
        DBResilienceError,
        TimeoutError,
        ConnectionError,
    ]
    with contextlib.suppress(ImportError):
        import redis

        handled.append(redis.RedisError)
    with contextlib.suppress(ImportError):
        import httpx

        handled.append(httpx.HTTPError)
    for exc_class in handled:
        app.add_exception_handler(exc_class, _handler)
    app.add_middleware(RequestIdMiddleware)
    return app
