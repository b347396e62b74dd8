"""Failover: a real synchronous standby promoted after the primary crashed; time from the
promotion to the first committed write and the first successful read, with default settings.

Candidates, all with the same multi-host conninfo (``host=a,b target_session_attrs=read-write``):
``dbr.Pool`` + ``dbr.WriteQueue`` (keyed writes), ``dbr.Pool.execute`` in a loop, and what a user
would pick instead: psycopg_pool's ``ConnectionPool`` with its defaults, and SQLAlchemy's engine
with ``pool_pre_ping=True``, each writing in a loop that catches errors and tries again after
10 ms.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import psycopg_pool

import dbresilience as dbr
from dbresilience.faults import TemporaryPostgres

from ._common import print_table

INSERT = "insert into ev (k, v) values (%s, %s)"
TICK = 0.01  # a writer's pause between writes, and after a failed one


class Probe:
    """When the first write committed, and the first read succeeded, after the promotion."""

    def __init__(self) -> None:
        self.promoted_at: float | None = None
        self.first_write: float | None = None
        self.first_read: float | None = None

    def wrote(self) -> None:
        if self.promoted_at is not None and self.first_write is None:
            self.first_write = time.monotonic()

    def read(self) -> None:
        if self.promoted_at is not None and self.first_read is None:
            self.first_read = time.monotonic()

    def wait(self, timeout: float, tick: float) -> None:
        """Sleep *tick* at a time until the promotion, a write and a read after it are all
        seen, *timeout* seconds at most."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (
            self.promoted_at is None or self.first_write is None or self.first_read is None
        ):
            time.sleep(tick)


Candidate = Callable[[str, Probe, threading.Event], Iterator[None]]


def _loop(stop: threading.Event, step: Callable[[], None]) -> None:
    while not stop.is_set():
        with contextlib.suppress(Exception):
            step()
        time.sleep(TICK)


def _threads(*targets: Callable[[], None]) -> list[threading.Thread]:
    threads = [threading.Thread(target=t, daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    return threads


@contextlib.contextmanager
def _load(
    stop: threading.Event, write: Callable[[], None], read: Callable[[], None]
) -> Iterator[None]:
    """A writer and a reader thread looping until *stop*; joined when the block ends."""
    threads = _threads(lambda: _loop(stop, write), lambda: _loop(stop, read))
    yield
    for thread in threads:
        thread.join()


@contextlib.contextmanager
def primary_and_standby(create: str) -> Iterator[tuple[TemporaryPostgres, TemporaryPostgres, str]]:
    """A fresh primary (*create* run on it) and a synchronous standby, and the multi-host
    conninfo (``target_session_attrs=read-write``) that finds whichever is the primary."""
    with TemporaryPostgres() as primary:
        primary.execute(create)
        with primary.start_replica(synchronous=True) as replica:
            dsn = (
                f"host=127.0.0.1,127.0.0.1 port={primary.port},{replica.port} user=postgres "
                "dbname=postgres target_session_attrs=read-write"
            )
            yield primary, replica, dsn


@contextlib.contextmanager
def dbr_queue(dsn: str, probe: Probe, stop: threading.Event) -> Iterator[None]:
    counter = iter(range(10**9))
    with (
        dbr.Pool(dsn) as pool,
        dbr.WriteQueue(pool, on_commit=lambda batch: probe.wrote()) as queue,
    ):

        def write() -> None:
            i = next(counter)
            queue.submit(INSERT, (f"k{i}", i), key=f"k{i}")

        def read() -> None:
            pool.fetchone("select 1")
            probe.read()

        with _load(stop, write, read):
            yield
        queue.flush(10)


@contextlib.contextmanager
def dbr_execute(dsn: str, probe: Probe, stop: threading.Event) -> Iterator[None]:
    counter = iter(range(10**9))
    with dbr.Pool(dsn) as pool:

        def write() -> None:
            i = next(counter)
            pool.execute(INSERT, (f"k{i}", i))
            probe.wrote()

        def read() -> None:
            pool.fetchone("select 1")
            probe.read()

        with _load(stop, write, read):
            yield


@contextlib.contextmanager
def psycopg_pool_defaults(dsn: str, probe: Probe, stop: threading.Event) -> Iterator[None]:
    counter = iter(range(10**9))
    with psycopg_pool.ConnectionPool(dsn, kwargs={"autocommit": True}) as pool:
        pool.wait()

        def write() -> None:
            i = next(counter)
            with pool.connection() as conn:
                conn.execute(INSERT, (f"k{i}", i))
            probe.wrote()

        def read() -> None:
            with pool.connection() as conn:
                conn.execute("select 1").fetchone()
            probe.read()

        with _load(stop, write, read):
            yield


@contextlib.contextmanager
def sqlalchemy_engine(
    dsn: str, probe: Probe, stop: threading.Event, prefix: str, **options: object
) -> Iterator[None]:
    """SQLAlchemy's ``create_engine`` with *options*, writing keys ``<prefix><n>``."""
    import sqlalchemy as sa

    counter = iter(range(10**9))
    engine = sa.create_engine(
        "postgresql+psycopg://", creator=lambda: psycopg.connect(dsn), **options
    )
    statement = sa.text("insert into ev (k, v) values (:k, :v)")

    def write() -> None:
        i = next(counter)
        with engine.begin() as conn:
            conn.execute(statement, {"k": f"{prefix}{i}", "v": i})
        probe.wrote()

    def read() -> None:
        with engine.connect() as conn:
            conn.execute(sa.text("select 1")).fetchone()
        probe.read()

    try:
        with _load(stop, write, read):
            yield
    finally:
        engine.dispose()


@contextlib.contextmanager
def sqlalchemy_pre_ping(dsn: str, probe: Probe, stop: threading.Event) -> Iterator[None]:
    """SQLAlchemy's engine with ``pool_pre_ping=True``."""
    with sqlalchemy_engine(dsn, probe, stop, "k", pool_pre_ping=True):
        yield


def one_failover(candidate: Candidate, outage: float) -> Probe:
    """A fresh primary and synchronous standby; the candidate's load for 0.5 s; the primary
    crashes; *outage* seconds later the standby is promoted; 5 s more of load."""
    probe = Probe()
    stop = threading.Event()
    with (
        primary_and_standby("create table ev (k text, v int)") as (primary, replica, dsn),
        candidate(dsn, probe, stop),
    ):
        time.sleep(0.5)
        primary.kill()
        time.sleep(outage)
        probe.promoted_at = replica.promote()
        probe.wait(10, 0.02)
        stop.set()
    return probe


def _one_breaker_opened() -> Probe:
    probe = Probe()
    stop = threading.Event()
    counter = iter(range(10**9))
    with (
        primary_and_standby("create table ev (k text, v int)") as (primary, replica, dsn),
        dbr.Pool(dsn) as pool,
        dbr.WriteQueue(pool, on_commit=lambda batch: probe.wrote()) as queue,
    ):

        def write() -> None:
            i = next(counter)
            queue.submit(INSERT, (f"k{i}", i), key=f"k{i}")

        def read() -> None:
            pool.fetchone("select 1", timeout=1.0)
            probe.read()
            time.sleep(0.04)  # with the loop's tick: one read every 50 ms

        with _load(stop, write, read):
            time.sleep(0.5)
            primary.kill()
            deadline = time.monotonic() + 20
            breaker = pool.breaker
            assert breaker is not None
            while breaker.state is not dbr.CircuitState.OPEN:
                if time.monotonic() > deadline:
                    raise RuntimeError("the reads did not open the breaker in 20 s")
                time.sleep(0.02)
            probe.promoted_at = replica.promote()
            probe.wait(10, 0.02)
            stop.set()
    return probe


def breaker_opened(repeat: int) -> tuple[float, float]:
    """#17's scenario: keyed writes through ``WriteQueue`` and a reader calling ``fetchone``
    (1 s deadline) every 50 ms on the same ``dbr.Pool`` (default settings); the primary crashes
    and the standby is promoted only once the reads' failures have opened the pool's breaker.
    Medians of (promotion -> first read, promotion -> first committed write)."""
    probes = [_one_breaker_opened() for _ in range(repeat)]
    return _median(probes, "first_read"), _median(probes, "first_write")


def _median(probes: list[Probe], attr: str) -> float:
    values = [
        (getattr(p, attr) - p.promoted_at) if getattr(p, attr) is not None else float("inf")
        for p in probes
        if p.promoted_at is not None
    ]
    return statistics.median(values)


def run(quick: bool = False) -> None:
    """Print the failover table."""
    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)
    logging.getLogger("dbresilience").setLevel(logging.ERROR)
    repeats = 1 if quick else 3
    candidates: list[tuple[str, Candidate, str]] = [
        ("dbr.Pool + WriteQueue (keyed)", dbr_queue, "<= 2 s"),
        ("dbr.Pool.execute loop", dbr_execute, "<= 2 s"),
        ("psycopg_pool defaults, loop", psycopg_pool_defaults, ""),
        ("SQLAlchemy pool_pre_ping, loop", sqlalchemy_pre_ping, ""),
    ]
    rows: list[tuple[object, ...]] = []
    for outage in (0.5, 5.0):
        base: float | None = None
        for label, candidate, target in candidates:
            probes = [one_failover(candidate, outage) for _ in range(repeats)]
            write = _median(probes, "first_write")
            read = _median(probes, "first_read")
            if base is None:
                base = write
            ratio = write / base if base > 0 else float("nan")
            rows.append((f"{label}, outage {outage:g} s", write, read, f"{ratio:.2f}x", target))
    print_table(
        f"failover: promotion -> first committed write / first read (median of {repeats}; "
        "a synchronous standby promoted after the primary crashed)",
        ("writer", "first write s", "first read s", "vs dbr", "target"),
        rows,
    )
    read, write = breaker_opened(repeats)
    print_table(
        f"failover after the reads opened the pool's breaker (median of {repeats}; reader every "
        "50 ms, keyed writes through WriteQueue, one dbr.Pool, default settings)",
        ("promotion ->", "seconds", "target"),
        [("first successful read", read, "<= 0.5 s"), ("first committed write", write, "<= 2 s")],
    )


if __name__ == "__main__":
    run()
