"""The course slot generator (seed 004): availability from schedules minus bookings.

Every query is wrapped in ``withRetry`` (reads: ``idempotent=True``) on a pooled connection,
exactly where the seed put its hand-written ``withRetry()``, so a terminated backend or a
restart costs a retry, not a failed request. ``GET /api/courses/{course_id}/availability
?date=YYYY-MM-DD`` answers the free slots of that day.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import psycopg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import dbresilience as dbr
from dbresilience import web

__all__ = ["apply_schema", "create_app", "free_slots"]

COURSE_SQL = 'SELECT "durationMinutes", capacity FROM "Course" WHERE id = %s'
WINDOWS_SQL = (
    'SELECT "startTime", "endTime" FROM "CourseSchedule" '
    'WHERE "courseId" = %s AND weekday = %s ORDER BY "startTime"'
)
BOOKED_SQL = (
    'SELECT "slotStart", count(*) FROM "Booking" WHERE "courseId" = %s '
    'AND "slotStart" >= %s AND "slotStart" < %s GROUP BY "slotStart"'
)


def apply_schema(dsn: str) -> None:
    """Create the tables and indexes if missing (idempotent)."""
    text = resources.files(__package__).joinpath("schema.sql").read_text()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(text.encode())


def free_slots(
    day: dt.date,
    duration: int,
    capacity: int,
    windows: list[tuple[dt.time, dt.time]],
    booked: dict[dt.datetime, int],
) -> list[dict[str, Any]]:
    """The slots of *day*: each window cut into *duration*-minute slots, those with room."""
    slots = []
    step = dt.timedelta(minutes=duration)
    for start_time, end_time in windows:
        start = dt.datetime.combine(day, start_time)
        end = dt.datetime.combine(day, end_time)
        while start + step <= end:
            taken = booked.get(start, 0)
            if taken < capacity:
                slots.append({"start": start.isoformat(), "free": capacity - taken})
            start += step
    return slots


def create_app(dsn: str, **pool_options: Any) -> Starlette:
    """The slot generator service on an :class:`~dbresilience.AsyncPool`."""
    state: dict[str, dbr.AsyncPool] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        options: dict[str, Any] = {"min_size": 2, "max_size": 8, "query_timeout": 3.0}
        options.update(pool_options)
        pool = dbr.AsyncPool(dsn, **options)
        await pool.open(wait=False)
        state["pool"] = pool
        try:
            yield
        finally:
            await pool.close()

    @dbr.withRetry(attempts=6, base_delay=0.05, max_delay=0.5, deadline=5.0, idempotent=True)
    async def read(query: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        async with state["pool"].connection(timeout=3.0) as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchall()

    async def availability(request: Request) -> JSONResponse:
        course_id = request.path_params["course_id"]
        try:
            day = dt.date.fromisoformat(request.query_params.get("date", ""))
        except ValueError:
            return JSONResponse({"code": "BAD_DATE", "request_id": web.request_id()}, 400)
        with web.timed("DATABASE_QUERY"):
            course = await read(COURSE_SQL, (course_id,))
            if not course:
                return JSONResponse({"code": "COURSE_NOT_FOUND"}, status_code=404)
            windows = await read(WINDOWS_SQL, (course_id, day.weekday()))
            start = dt.datetime.combine(day, dt.time())
            booked = await read(BOOKED_SQL, (course_id, start, start + dt.timedelta(days=1)))
        duration, capacity = course[0]
        slots = free_slots(
            day, int(duration), int(capacity), [(w[0], w[1]) for w in windows], dict(booked)
        )
        return JSONResponse({"courseId": course_id, "date": day.isoformat(), "slots": slots})

    app = Starlette(
        routes=[Route("/api/courses/{course_id}/availability", availability)], lifespan=lifespan
    )
    return web.install(app)
