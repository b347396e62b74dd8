"""The AI interview service's ``POST /api/realtime-session`` (seeds 000 and 001), twice.

``create_app(settings)`` is the service built on dbresilience: credentials by raw SQL through
an :class:`~dbresilience.AsyncPool` behind an :class:`~dbresilience.AsyncCredentialCache`; the
upstream realtime-session provider called with a timeout (504/502 when it fails); the session
row, the credit deduction and the usage event handed to an :class:`~dbresilience.AsyncWriteQueue`
keyed by the request id, so a client that retries is charged once; database trouble answered
as 503 with ``Retry-After`` by :mod:`dbresilience.web`.

``create_naive_app(settings)`` is the same endpoint as the seeds' code was before the fixes:
one connection, no retry, no cache, fire-and-forget writes that vanish on failure, generic 500s.
The demo runs both under the same faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import httpx
import psycopg
from psycopg.rows import dict_row
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import dbresilience as dbr
from dbresilience import web

__all__ = ["Settings", "apply_schema", "create_app", "create_naive_app", "schema_sql"]

USER_SQL = 'SELECT id, credits::float8 AS credits, "isPremium" FROM "User" WHERE id = %s LIMIT 1'
SESSION_SQL = (
    'INSERT INTO "InterviewSession" (id, "userId", "jobTitle", "requestId", config) '
    "VALUES (%s, %s, %s, %s, %s::jsonb)"
)
DEDUCT_SQL = (
    'WITH d AS (UPDATE "User" SET credits = credits - 1 WHERE id = %s AND credits >= 1 '
    'RETURNING id) INSERT INTO "CreditLedger" ("userId", "requestId", delta) '
    "SELECT id, %s, -1 FROM d"
)
USAGE_SQL = 'INSERT INTO "UsageEvent" ("userId", "eventType", "requestId") VALUES (%s, %s, %s)'
MODEL = "gpt-4o-realtime-preview-2024-12-17"


def schema_sql() -> str:
    """The service's tables and indexes (``schema.sql`` beside this module)."""
    return resources.files(__package__).joinpath("schema.sql").read_text()


def apply_schema(dsn: str) -> None:
    """Create the tables and indexes if missing (idempotent)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(schema_sql().encode())


@dataclass
class Settings:
    """Where the service finds its database, cache and provider, and how long it waits."""

    dsn: str
    redis_url: str | None = None
    provider_url: str = "http://provider.invalid"
    provider_transport: httpx.AsyncBaseTransport | None = None  # in-process fake provider
    provider_timeout: float = 5.0
    query_timeout: float = 2.0
    journal: str | None = None
    pool_options: dict[str, Any] = field(default_factory=dict)


def _user_of(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    user = auth.removeprefix("Bearer ").strip()
    return user or None


async def _job_title(request: Request) -> str:
    try:
        body = await request.json()
    except ValueError:
        body = {}
    title = body.get("jobTitle") if isinstance(body, dict) else None
    return str(title or "Software Engineer")[:200]


def create_app(settings: Settings) -> Starlette:
    """The interview service on dbresilience (see the module docstring)."""
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        options: dict[str, Any] = {
            "min_size": 2,
            "max_size": 10,
            "query_timeout": settings.query_timeout,
        }
        options.update(settings.pool_options)
        pool = dbr.AsyncPool(settings.dsn, **options)
        await pool.open(wait=False)  # start even while the database is down
        cache = dbr.AsyncCredentialCache(
            redis_url=settings.redis_url, ttl=30.0, stale_ttl=120.0, namespace="credentials"
        )
        await cache.__aenter__()
        tasks: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()

        def invalidate_credits(records: Sequence[dbr.Record]) -> None:
            # deductions committed: those users' cached credits are stale now. One call for
            # the batch (one Redis pipeline), not one task per record: a batch of 500 would
            # otherwise open hundreds of Redis connections at once.
            users = {
                r.key.rsplit(":deduct:", 1)[1] for r in records if r.key and ":deduct:" in r.key
            }
            if users:
                task = loop.create_task(cache.invalidate(*users))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        queue = dbr.AsyncWriteQueue(
            pool, journal=settings.journal, on_commit=invalidate_credits, max_pending=100_000
        )
        await queue.open()
        http = httpx.AsyncClient(
            base_url=settings.provider_url,
            transport=settings.provider_transport,
            timeout=settings.provider_timeout,
        )
        state.update(pool=pool, cache=cache, queue=queue, http=http)
        try:
            yield
        finally:
            await http.aclose()
            await queue.aclose()
            await cache.aclose()
            await pool.close()

    async def realtime_session(request: Request) -> JSONResponse:
        rid = web.request_id() or f"req_{uuid.uuid4().hex[:12]}"
        user = _user_of(request)
        if user is None:
            return JSONResponse({"code": "UNAUTHORIZED", "request_id": rid}, status_code=401)
        job_title = await _job_title(request)
        pool: dbr.AsyncPool = state["pool"]
        cache: dbr.AsyncCredentialCache = state["cache"]
        queue: dbr.AsyncWriteQueue = state["queue"]

        async def load() -> Any:
            return await pool.fetchone(USER_SQL, (user,), row_factory=dict_row)

        with web.timed("DATABASE_QUERY"):
            creds = await cache.get_or_load(user, load)
        if creds is None:
            return JSONResponse({"code": "USER_NOT_FOUND", "request_id": rid}, status_code=404)
        if creds["credits"] < 1 and not creds["isPremium"]:
            return JSONResponse(
                {"code": "INSUFFICIENT_CREDITS", "request_id": rid}, status_code=402
            )
        with web.timed("OPENAI_SESSION"):
            # one deadline for the whole call: httpx's timeouts are per phase (connect, read)
            try:
                response = await asyncio.wait_for(
                    state["http"].post(
                        "/v1/realtime/sessions", json={"model": MODEL, "voice": "alloy"}
                    ),
                    settings.provider_timeout,
                )
            except asyncio.TimeoutError:
                raise web.UpstreamTimeout(
                    f"the provider did not answer within {settings.provider_timeout:.1f} s"
                ) from None
            response.raise_for_status()  # httpx errors: 502
        session = response.json()
        config = json.dumps({"model": MODEL, "voice": "alloy"})
        queue.submit(
            SESSION_SQL, (session["id"], user, job_title, rid, config), key=f"{rid}:session"
        )
        if not creds["isPremium"]:
            queue.submit(DEDUCT_SQL, (user, rid), key=f"{rid}:deduct:{user}")
        queue.submit(USAGE_SQL, (user, "interview_start", rid), key=f"{rid}:usage")
        return JSONResponse(
            {
                "sessionId": session["id"],
                "clientSecret": session["client_secret"]["value"],
                "requestId": rid,
            }
        )

    async def health(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "pool": state["pool"].stats(),
                "cache": state["cache"].stats(),
                "queue": state["queue"].stats(),
            }
        )

    app = Starlette(
        routes=[
            Route("/api/realtime-session", realtime_session, methods=["POST"]),
            Route("/health", health),
        ],
        lifespan=lifespan,
    )
    app.state.service = state
    return web.install(app)


def create_naive_app(settings: Settings) -> Starlette:
    """The same endpoint as the seeds' code was: no pool, retry, cache or queue; 500s."""
    state: dict[str, Any] = {"conn": None, "tasks": set(), "lock": None}

    async def connection() -> psycopg.AsyncConnection[Any]:
        if state["lock"] is None:
            state["lock"] = asyncio.Lock()
        async with state["lock"]:  # one shared connection, opened by one caller at a time
            conn: psycopg.AsyncConnection[Any] | None = state["conn"]
            if conn is None or conn.closed:
                conn = await psycopg.AsyncConnection.connect(
                    settings.dsn, autocommit=True, connect_timeout=5
                )
                state["conn"] = conn
            return conn

    async def fire_and_forget(statement: str, params: tuple[Any, ...]) -> None:
        try:
            conn = await psycopg.AsyncConnection.connect(
                settings.dsn, autocommit=True, connect_timeout=5
            )
            async with conn:
                await conn.execute(statement, params)
        except Exception:  # noqa: S110 - exactly the seeds' bug: the write is gone
            pass

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        http = httpx.AsyncClient(
            base_url=settings.provider_url,
            transport=settings.provider_transport,
            timeout=settings.provider_timeout,
        )
        state["http"] = http
        try:
            yield
        finally:
            await http.aclose()
            for task in list(state["tasks"]):
                with contextlib.suppress(Exception):
                    await task
            if state["conn"] is not None:
                await state["conn"].close()

    async def realtime_session(request: Request) -> JSONResponse:
        rid = request.headers.get("x-request-id") or f"req_{uuid.uuid4().hex[:12]}"
        user = _user_of(request)
        if user is None:
            return JSONResponse({"code": "UNAUTHORIZED"}, status_code=401)
        job_title = await _job_title(request)
        try:
            conn = await connection()
            cur = await conn.execute(USER_SQL, (user,))
            row = await cur.fetchone()
        except Exception:
            if state["conn"] is not None:
                await state["conn"].close()
            return JSONResponse({"error": "Internal Server Error"}, status_code=500)
        if row is None:
            return JSONResponse({"code": "USER_NOT_FOUND"}, status_code=404)
        _, credits, premium = row
        if credits < 1 and not premium:
            return JSONResponse({"code": "INSUFFICIENT_CREDITS"}, status_code=402)
        try:
            response = await asyncio.wait_for(
                state["http"].post("/v1/realtime/sessions", json={"model": MODEL}),
                settings.provider_timeout,
            )
            response.raise_for_status()
        except (httpx.HTTPError, asyncio.TimeoutError):
            return JSONResponse({"error": "Internal Server Error"}, status_code=500)
        session = response.json()
        config = json.dumps({"model": MODEL})
        for statement, params in (
            (SESSION_SQL, (session["id"], user, job_title, rid, config)),
            (DEDUCT_SQL, (user, rid)) if not premium else (None, ()),
            (USAGE_SQL, (user, "interview_start", rid)),
        ):
            if statement is not None:
                task = asyncio.get_running_loop().create_task(fire_and_forget(statement, params))
                state["tasks"].add(task)
                task.add_done_callback(state["tasks"].discard)
        return JSONResponse({"sessionId": session["id"], "requestId": rid})

    return Starlette(
        routes=[Route("/api/realtime-session", realtime_session, methods=["POST"])],
        lifespan=lifespan,
    )
