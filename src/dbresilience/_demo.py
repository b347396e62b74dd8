"""``dbresilience demo``: real faults against a throwaway PostgreSQL, naive client vs with_retry.

Two copies of the same tiny service (one long-lived connection, the seeds' raw-SQL credential
read) run side by side through one fault proxy while the demo breaks the database for real: the
network refuses connections, backends are terminated in a storm, the server restarts. The naive
copy surfaces every failure, as the seeds' code did; the other is the same function under
``with_retry``. Every failure is classified and the table shows what each client's users saw.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import psycopg

from dbresilience._classify import classify
from dbresilience._retry import with_retry
from dbresilience.faults import FaultProxy, TemporaryPostgres

USER_SQL = 'SELECT id, credits::float8 AS credits, "isPremium" FROM "User" WHERE id = %s LIMIT 1'


class CredentialService:
    """The seeds' credential read on one long-lived connection, reconnecting on the next call."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None

    def load_user(self, user_id: int) -> tuple[object, ...] | None:
        """Read one user's credentials; any database failure reaches the caller."""
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=2)
        try:
            return self._conn.execute(USER_SQL, (user_id,)).fetchone()
        except psycopg.OperationalError:
            self._conn.close()
            self._conn = None
            raise

    def close(self) -> None:
        """Close the connection, if any."""
        if self._conn is not None:
            self._conn.close()


class ResilientCredentialService(CredentialService):
    """The same read under ``with_retry``; reads are idempotent, so a lost connection is retried."""

    # Bound by the deadline, not by a count: an outage is measured in seconds, not attempts.
    load_user = with_retry(
        attempts=50, base_delay=0.05, max_delay=0.5, deadline=6.0, idempotent=True
    )(CredentialService.load_user)


@dataclass
class Tally:
    """What one client's callers saw during one scenario."""

    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def requests(self) -> int:
        return len(self.latencies) + sum(self.errors.values())

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        if len(self.latencies) == 1:
            return self.latencies[0]
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[int(q) - 1]


@dataclass(frozen=True)
class Scenario:
    """A named fault: ``inject`` runs in its own thread while the clients keep calling."""

    name: str
    inject: Callable[[], None]


def _drive(
    service: CredentialService, stop: threading.Event, tally: Tally, examples: dict[str, str]
) -> None:
    user_id = 0
    while not stop.is_set():
        user_id = user_id % 100 + 1
        start = time.perf_counter()
        try:
            service.load_user(user_id)
            tally.latencies.append((time.perf_counter() - start) * 1000)
        except Exception as exc:
            c = classify(exc)
            tally.errors[c.code] += 1
            examples.setdefault(
                c.code,
                f"{c.code} {c.kind.name.lower()}: retryable={c.retryable}, HTTP {c.http_status}"
                + (f", Retry-After {c.retry_after:g} s" if c.retry_after else "")
                + f" (from {type(exc).__name__}: {str(exc).splitlines()[0][:70]})",
            )
        time.sleep(0.02)


def _kill_storm(cluster: TemporaryPostgres, seconds: float) -> None:
    with psycopg.connect(cluster.dsn, autocommit=True) as admin:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            admin.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity "
                "where pid <> pg_backend_pid() and backend_type = 'client backend'"
            )
            time.sleep(0.1)


def _outage(proxy: FaultProxy, seconds: float) -> None:
    proxy.down()
    time.sleep(seconds)
    proxy.restore()


def _restart(cluster: TemporaryPostgres, seconds: float) -> None:
    cluster.stop("fast")
    time.sleep(seconds)
    cluster.start()


def _seed(cluster: TemporaryPostgres) -> None:
    with psycopg.connect(cluster.dsn, autocommit=True) as conn:
        conn.execute(
            'CREATE TABLE IF NOT EXISTS "User" (id int PRIMARY KEY, credits numeric NOT NULL, '
            '"isPremium" boolean NOT NULL DEFAULT false)'
        )
        conn.execute(
            'INSERT INTO "User" SELECT g, 10, g % 10 = 0 FROM generate_series(1, 100) g '
            "ON CONFLICT DO NOTHING"
        )


@contextlib.contextmanager
def _database(dsn: str | None) -> Iterator[TemporaryPostgres]:
    if dsn is not None:
        raise SystemExit(
            "the demo breaks its database on purpose (stops and restarts it), so it always runs "
            "on its own throwaway server; --dsn is not accepted here"
        )
    with TemporaryPostgres(prefer_embedded=True) as cluster:
        yield cluster


def run_demo(*, seconds: float = 2.0, out: Callable[[str], None] = print) -> int:
    """Run every scenario, print the table; 0 when the resilient client lost no request."""
    out("dbresilience demo: real faults against a throwaway PostgreSQL\n")
    with _database(None) as cluster, FaultProxy("127.0.0.1", cluster.port) as proxy:
        out(f"  server : PostgreSQL from {cluster.bindir} on 127.0.0.1:{cluster.port}")
        out(f"  proxy  : 127.0.0.1:{proxy.port} (the clients connect through it)\n")
        _seed(cluster)
        dsn = proxy.dsn(cluster.dsn)
        scenarios = [
            Scenario(
                f"network refuses connections for {seconds:g} s", lambda: _outage(proxy, seconds)
            ),
            Scenario(
                f"backends terminated every 100 ms for {seconds:g} s",
                lambda: _kill_storm(cluster, seconds),
            ),
            Scenario(f"server restart ({seconds:g} s down)", lambda: _restart(cluster, seconds)),
        ]
        rows: list[tuple[str, str, Tally]] = []
        examples: dict[str, str] = {}
        for scenario in scenarios:
            out(f"- {scenario.name} ...")
            tallies = {"naive": Tally(), "with_retry": Tally()}
            services = {
                "naive": CredentialService(dsn),
                "with_retry": ResilientCredentialService(dsn),
            }
            stop = threading.Event()
            threads = [
                threading.Thread(
                    target=_drive, args=(services[name], stop, tallies[name], examples)
                )
                for name in services
            ]
            for t in threads:
                t.start()
            time.sleep(0.3)  # steady state first
            scenario.inject()
            time.sleep(0.5)  # and after
            stop.set()
            for t in threads:
                t.join(15)
            for name, service in services.items():
                service.close()
                rows.append((scenario.name, name, tallies[name]))
        out("")
        header = (
            f"{'scenario':<44} {'client':<10} {'requests':>8} {'ok %':>6} "
            f"{'p50 ms':>7} {'p99 ms':>8}  errors"
        )
        out(header)
        out("-" * len(header))
        lost = 0
        for name, client, tally in rows:
            ok = 100.0 * len(tally.latencies) / tally.requests if tally.requests else 0.0
            errors = ", ".join(f"{code} x{n}" for code, n in sorted(tally.errors.items())) or "-"
            out(
                f"{name:<44} {client:<10} {tally.requests:>8} {ok:>6.1f} "
                f"{tally.percentile(50):>7.1f} {tally.percentile(99):>8.1f}  {errors}"
            )
            if client == "with_retry":
                lost += sum(tally.errors.values())
        out("\nWhat the naive client's callers got, classified by dbr.classify:")
        for line in examples.values():
            out(f"  {line}")
        verdict = "no request failed" if lost == 0 else f"{lost} requests FAILED"
        out(f"\nwith_retry: {verdict}.")
        return 0 if lost == 0 else 1
