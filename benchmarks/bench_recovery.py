"""Recovery for every outage shape (#17): time from "the database accepts connections again" to
the first successful read and the first committed write, with default settings.

"Accepts connections again" is measured, not assumed: a separate raw ``psycopg.connect`` probe
(the clients' own conninfo, ``connect_timeout=2``) connects in a tight loop from just before the
fault is healed; the clock starts when its first connection is made. Every candidate then
counts the first read and the first write that *complete* after that instant.

Shapes: the server restarted (``pg_ctl stop -m fast`` / ``start``); every client backend
killed (``pg_terminate_backend``: the server never stops accepting, the clock starts when the
kill returns); PgBouncer (session mode) restarted; the network frozen for 1 s and thawed
(``FaultProxy.freeze`` / ``restore``); the primary crashed and a synchronous standby promoted
(multi-host conninfo with ``target_session_attrs=read-write``; the probe uses it too). Each
outage but the kill lasts 1 s.

Candidates, each with a reader and a writer looping (10 ms between calls, errors caught):
``dbr.Pool`` + ``dbr.WriteQueue`` (keyed writes; the figure is the first committed batch),
psycopg_pool's ``ConnectionPool`` with its defaults, and SQLAlchemy's ``create_engine`` with its
defaults (no ``pool_pre_ping``).
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import threading
import time
from collections.abc import Callable, Iterator

import psycopg

from dbresilience.faults import (
    FaultProxy,
    TemporaryPgBouncer,
    TemporaryPostgres,
    terminate_backends,
)

from ._common import print_table
from .bench_failover import (
    TICK,
    Candidate,
    Probe,
    dbr_queue,
    primary_and_standby,
    psycopg_pool_defaults,
    sqlalchemy_engine,
)

OUTAGE = 1.0  # seconds each fault lasts before it is healed
WAIT = 10.0  # seconds a candidate gets to read and write after the database is back
TARGETS = {
    "server restart": 0.5,
    "backends killed": 0.5,
    "PgBouncer restart": 0.5,
    "network frozen, thawed": 0.5,
    "failover to a promoted standby": 2.0,
}


@contextlib.contextmanager
def sqlalchemy_defaults(dsn: str, probe: Probe, stop: threading.Event) -> Iterator[None]:
    """SQLAlchemy's engine as ``create_engine`` makes it (QueuePool, no pre-ping)."""
    with sqlalchemy_engine(dsn, probe, stop, "s"):
        yield


class Back:
    """The probe: a raw connect in a tight loop; sets ``probe.promoted_at`` (the clock's start)
    at its first connection."""

    def __init__(self, dsn: str, probe: Probe) -> None:
        self.dsn = dsn
        self.probe = probe
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Back:
        self.thread.start()
        return self

    def _run(self) -> None:
        deadline = time.monotonic() + 60
        while not self.done.is_set() and time.monotonic() < deadline:
            try:
                with psycopg.connect(self.dsn, connect_timeout=2, autocommit=True):
                    pass
            except psycopg.Error:
                time.sleep(0.001)
                continue
            self.probe.promoted_at = time.monotonic()
            return

    def stop(self) -> None:
        self.done.set()
        self.thread.join(5)


# A shape: given the candidate, runs it through one outage and returns its probe.
Shape = Callable[[Candidate], Probe]


def _measure(
    candidate: Candidate, dsn: str, probe_dsn: str, fault: Callable[[], None],
    heal: Callable[[], None],
) -> Probe:  # fmt: skip
    """Warm the candidate 0.5 s, break, wait OUTAGE, start the probe, heal; wait until the
    candidate has read and written after the probe's first connection (WAIT at most)."""
    probe = Probe()
    stop = threading.Event()
    with candidate(dsn, probe, stop):
        time.sleep(0.5)
        fault()
        time.sleep(OUTAGE)
        back = Back(probe_dsn, probe).start()
        heal()
        probe.wait(WAIT, TICK)
        back.stop()
        stop.set()
    return probe


_EV = "create table if not exists ev (k text, v int)"


def _table(pg: TemporaryPostgres) -> None:
    pg.execute(_EV)


def server_restart(pg: TemporaryPostgres) -> Shape:
    def shape(candidate: Candidate) -> Probe:
        return _measure(candidate, pg.dsn, pg.dsn, lambda: pg.stop("fast"), lambda: pg.start())

    return shape


def backends_killed(pg: TemporaryPostgres) -> Shape:
    def shape(candidate: Candidate) -> Probe:
        probe = Probe()
        stop = threading.Event()
        with candidate(pg.dsn, probe, stop):
            time.sleep(0.5)
            terminate_backends(pg.dsn, ["postgres"])
            probe.promoted_at = time.monotonic()  # it never stopped accepting
            probe.wait(WAIT, TICK)
            stop.set()
        return probe

    return shape


def pgbouncer_restart(bouncer: TemporaryPgBouncer) -> Shape:
    def shape(candidate: Candidate) -> Probe:
        dsn = bouncer.conninfo()
        return _measure(candidate, dsn, dsn, bouncer.stop, lambda: bouncer.start())

    return shape


def network_frozen(proxy: FaultProxy, pg: TemporaryPostgres) -> Shape:
    def shape(candidate: Candidate) -> Probe:
        dsn = proxy.dsn(pg.dsn)
        return _measure(candidate, dsn, dsn, proxy.freeze, proxy.restore)

    return shape


def failover(candidate: Candidate) -> Probe:
    """A fresh primary and synchronous standby each time (a promotion cannot be undone)."""
    with primary_and_standby(_EV) as (primary, replica, dsn):
        return _measure(candidate, dsn, dsn, primary.kill, lambda: replica.promote())


def _median(probes: list[Probe], attr: str) -> float:
    values = [
        max(0.0, getattr(p, attr) - p.promoted_at)
        if getattr(p, attr) is not None and p.promoted_at is not None
        else float("inf")
        for p in probes
    ]
    return statistics.median(values)


def run(quick: bool = False) -> None:
    """Print the recovery table."""
    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)
    logging.getLogger("dbresilience").setLevel(logging.ERROR)
    logging.getLogger("sqlalchemy").setLevel(logging.CRITICAL)
    repeats = 1 if quick else 3
    candidates: list[tuple[str, Candidate]] = [
        ("dbr.Pool + WriteQueue", dbr_queue),
        ("psycopg_pool defaults", psycopg_pool_defaults),
        ("SQLAlchemy defaults", sqlalchemy_defaults),
    ]
    rows: list[tuple[object, ...]] = []
    with TemporaryPostgres() as pg:
        _table(pg)
        bouncer = TemporaryPgBouncer("127.0.0.1", pg.port, pool_mode="session",
                                     default_pool_size=10)  # fmt: skip
        with bouncer.start(), FaultProxy("127.0.0.1", pg.port) as proxy:
            shapes: list[tuple[str, Shape]] = [
                ("server restart", server_restart(pg)),
                ("backends killed", backends_killed(pg)),
                ("PgBouncer restart", pgbouncer_restart(bouncer)),
                ("network frozen, thawed", network_frozen(proxy, pg)),
                ("failover to a promoted standby", failover),
            ]
            for name, shape in shapes:
                probes: dict[str, list[Probe]] = {label: [] for label, _ in candidates}
                for _ in range(repeats):  # rounds interleave the candidates
                    for label, candidate in candidates:
                        probes[label].append(shape(candidate))
                for label, _ in candidates:
                    read = _median(probes[label], "first_read")
                    write = _median(probes[label], "first_write")
                    target = f"<= {TARGETS[name]:g} s" if label.startswith("dbr") else ""
                    rows.append((name, label, read, write, target))
    print_table(
        f"recovery: the database accepts connections again -> first read / first committed "
        f"write (median of {repeats}; outage {OUTAGE:g} s; default settings)",
        ("outage", "client", "first read s", "first write s", "target (dbr)"),
        rows,
    )


if __name__ == "__main__":
    run(quick=True)
