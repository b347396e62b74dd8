"""The slot generator end to end: correct slots, and terminated backends ridden out."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import psycopg
from hypothesis import given
from hypothesis import strategies as st

from dbresilience._examples.slot_generator import apply_schema, create_app, free_slots
from dbresilience.faults import TemporaryPostgres

from .test_example_interview import serve
from .test_pool import terminate_all

MONDAY = dt.date(2026, 11, 23)


def seed_course(dsn: str) -> str:
    """A 60-minute course for 2, Mondays 09:00-12:00; one 10:00 slot fully booked."""
    course = f"c-{uuid.uuid4().hex[:8]}"
    apply_schema(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute('INSERT INTO "Course" VALUES (%s, %s, 60, 2)', (course, "Pottery"))
        conn.execute(
            'INSERT INTO "CourseSchedule" ("courseId", weekday, "startTime", "endTime") '
            "VALUES (%s, 0, '09:00', '12:00')",
            (course,),
        )
        for user in ("a", "b"):
            conn.execute(
                'INSERT INTO "Booking" ("courseId", "slotStart", "userId") VALUES (%s, %s, %s)',
                (course, dt.datetime(2026, 11, 23, 10, 0), user),
            )
    return course


async def test_availability_lists_the_free_slots(pg_cluster: TemporaryPostgres) -> None:
    """09:00 and 11:00 are free (2 places each); 10:00 is full; bad input gets 400/404."""
    course = seed_course(pg_cluster.dsn)
    async with serve(create_app(pg_cluster.dsn, min_size=1)) as client:
        ok = await client.get(f"/api/courses/{course}/availability", params={"date": "2026-11-23"})
        bad = await client.get(f"/api/courses/{course}/availability", params={"date": "soon"})
        missing = await client.get("/api/courses/nope/availability", params={"date": "2026-11-23"})
    assert ok.status_code == 200
    assert ok.json()["slots"] == [
        {"start": "2026-11-23T09:00:00", "free": 2},
        {"start": "2026-11-23T11:00:00", "free": 2},
    ]
    assert bad.status_code == 400
    assert missing.status_code == 404


async def test_rides_out_terminated_backends(pg_cluster: TemporaryPostgres) -> None:
    """Backends terminated every 30 ms while 60 requests run: every request answers 200."""
    course = seed_course(pg_cluster.dsn)
    stop = asyncio.Event()

    async def storm() -> None:
        while not stop.is_set():
            await asyncio.to_thread(terminate_all, pg_cluster)
            await asyncio.sleep(0.03)

    async with serve(create_app(pg_cluster.dsn, min_size=2)) as client:
        killer = asyncio.create_task(storm())
        statuses = []
        for _ in range(60):
            r = await client.get(
                f"/api/courses/{course}/availability", params={"date": MONDAY.isoformat()}
            )
            statuses.append(r.status_code)
        stop.set()
        await killer
    assert statuses == [200] * 60


@given(
    duration=st.integers(15, 120),
    capacity=st.integers(1, 5),
    start_hour=st.integers(6, 12),
    hours=st.integers(1, 8),
)
def test_slots_fit_their_windows(duration: int, capacity: int, start_hour: int, hours: int) -> None:
    """Every slot starts inside its window and ends by its end; none is listed twice."""
    start = dt.time(start_hour)
    end = dt.time(start_hour + hours)
    slots = free_slots(MONDAY, duration, capacity, [(start, end)], {})
    starts = [dt.datetime.fromisoformat(s["start"]) for s in slots]
    assert len(starts) == len(set(starts)) == (hours * 60) // duration
    for s in starts:
        assert s.time() >= start
        assert s + dt.timedelta(minutes=duration) <= dt.datetime.combine(MONDAY, end)
