"""``dbresilience demo``: the interview service under real faults, naive versus dbresilience.

It starts an embedded PostgreSQL (the ``pgserver`` package's server, else the installed one),
puts the fault proxy in front of it, starts a throwaway Redis when
``redis-server`` is installed, creates the schema and a few dozen users, and runs the same
script twice: virtual users calling ``POST /api/realtime-session`` in-process while the demo
breaks things for real, in turn — a backend kill storm, a server restart (a network outage on a
database it did not start), frozen backends (SIGSTOP; a frozen network otherwise), a Redis
outage. First against the seeds' naive code, then against the service built on dbresilience
(whose users retry 503s with the same request id, as the seeds' client did). Then it counts, in
the database, what each run's successful requests left behind.

It never touches a database it did not start unless given one explicitly *and* told it may break
it (``--dsn DSN --yes-break-this-database``): there it creates the example's tables (``"User"``,
``"UsageEvent"``, ``"CreditLedger"``, ...), inserts rows, and terminates every client backend of
that database again and again. ``$DATABASE_URL`` is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg

from dbresilience._examples.interview_service import (
    Settings,
    apply_schema,
    create_app,
    create_naive_app,
    create_provider,
    start_session,
)
from dbresilience._validate import one_of
from dbresilience.faults import (
    FaultProxy,
    TemporaryPostgres,
    TemporaryRedis,
    client_backends,
    terminate_backends,
)


@dataclass(frozen=True)
class Profile:
    """How big and how long: virtual users, seconds per phase, think time between requests."""

    users: int
    phase: float
    think: float


PROFILES = {
    "default": Profile(users=16, phase=3.0, think=0.02),
    "short": Profile(users=6, phase=0.8, think=0.01),
}


@dataclass
class Run:
    """What one run's virtual users saw."""

    name: str
    latencies: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    succeeded: list[str] = field(default_factory=list)  # request ids answered 200
    committed: int = 0
    lost: int = 0
    doubled: int = 0
    started: float = field(default_factory=time.perf_counter)
    samples: list[tuple[float, float, bool]] = field(default_factory=list)  # (at s, ms, ok)
    phases: list[tuple[float, str]] = field(default_factory=list)  # (starts at s, fault)

    @property
    def requests(self) -> int:
        return sum(self.outcomes.values())

    def percentile(self, q: int) -> float:
        if len(self.latencies) < 2:
            return self.latencies[0] if self.latencies else float("nan")
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[q - 1]


@dataclass
class World:
    """The database, the proxy in front of it and Redis, and the faults they can suffer."""

    admin_dsn: str
    service_dsn: str
    proxy: FaultProxy
    cluster: TemporaryPostgres | None
    redis: TemporaryRedis | None

    @property
    def database(self) -> list[str]:
        """Only the demo's database: on a server given by DSN, others are not ours to break."""
        return [str(psycopg.conninfo.conninfo_to_dict(self.admin_dsn).get("dbname") or "postgres")]

    def kill_backends(self) -> None:
        terminate_backends(self.admin_dsn, self.database)

    def backends(self) -> list[int]:
        return client_backends(self.admin_dsn, self.database)


def _faults(world: World, seconds: float) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
    async def kill_storm() -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await asyncio.to_thread(world.kill_backends)
            await asyncio.sleep(0.1)

    async def restart() -> None:
        if world.cluster is not None:
            await asyncio.to_thread(world.cluster.stop, "fast")
            await asyncio.sleep(seconds)
            await asyncio.to_thread(world.cluster.start)
        else:
            await asyncio.to_thread(world.proxy.down)
            await asyncio.sleep(seconds)
            await asyncio.to_thread(world.proxy.restore)

    async def freeze() -> None:
        if world.cluster is not None:
            pids = []
            for pid in await asyncio.to_thread(world.backends):
                with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
                    TemporaryPostgres.freeze(pid)
                    pids.append(pid)
            try:
                await asyncio.sleep(seconds)
            finally:
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        TemporaryPostgres.thaw(pid)
        else:
            await asyncio.to_thread(world.proxy.freeze)
            await asyncio.sleep(seconds)
            await asyncio.to_thread(world.proxy.restore)

    async def redis_outage() -> None:
        assert world.redis is not None
        await asyncio.to_thread(world.redis.stop)
        await asyncio.sleep(seconds)
        await asyncio.to_thread(world.redis.start)

    async def steady() -> None:
        await asyncio.sleep(seconds)

    faults: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        ("steady state", steady),
        ("backends terminated every 100 ms", kill_storm),
        ("server restart" if world.cluster else "network outage", restart),
        ("backends frozen (SIGSTOP)" if world.cluster else "network frozen", freeze),
    ]
    if world.redis is not None:
        faults.append(("Redis outage", redis_outage))
    faults.append(("recovery", steady))
    return faults


async def _users(
    client: httpx.AsyncClient,
    run: Run,
    users: list[str],
    profile: Profile,
    retrying: bool,
    stop: asyncio.Event,
) -> None:
    async def user(uid: str) -> None:
        while not stop.is_set():
            rid = f"demo-{uuid.uuid4().hex[:12]}"
            start = time.perf_counter()
            try:
                if retrying:
                    response = await start_session(
                        client, uid, request_id=rid, delays=(0.2, 0.4, 0.8, 1.6, 2.0)
                    )
                else:
                    response = await client.post(
                        "/api/realtime-session",
                        headers={"Authorization": f"Bearer {uid}", "X-Request-ID": rid},
                    )
                status = response.status_code
                code = response.json().get("code") if status != 200 else None
            except Exception as exc:  # the naive app may fail outside any handler
                status, code = 500, type(exc).__name__
            run.latencies.append((time.perf_counter() - start) * 1000)
            run.samples.append((start - run.started, run.latencies[-1], status == 200))
            if status == 200:
                run.succeeded.append(rid)
                run.outcomes["200"] += 1
            else:
                run.outcomes[f"{status} {code}" if code else str(status)] += 1
            await asyncio.sleep(profile.think)

    await asyncio.gather(*(user(uid) for uid in users))


@contextlib.asynccontextmanager
async def _served(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://service", timeout=30
        ) as client:
            yield client


async def _run(
    name: str,
    app: Any,
    world: World,
    users: list[str],
    profile: Profile,
    retrying: bool,
    out: Callable[[str], None],
) -> Run:
    run = Run(name)
    async with _served(app) as client:
        stop = asyncio.Event()
        load = asyncio.create_task(_users(client, run, users, profile, retrying, stop))
        for label, fault in _faults(world, profile.phase):
            out(f"  [{name}] {label} …")
            run.phases.append((time.perf_counter() - run.started, label))
            await fault()
        stop.set()
        await load
    return run  # leaving the lifespan drained the service's write queue


def _count(world: World, run: Run) -> None:
    """Check, in the database, what the run's successful requests left behind."""
    with psycopg.connect(world.admin_dsn) as conn:
        rows = conn.execute(
            'SELECT "requestId", count(*) FROM "UsageEvent" WHERE "requestId" = ANY(%s) '
            'GROUP BY "requestId"',
            (run.succeeded,),
        ).fetchall()
        charges = conn.execute(
            'SELECT "requestId", count(*) FROM "CreditLedger" WHERE "requestId" = ANY(%s) '
            'GROUP BY "requestId"',
            (run.succeeded,),
        ).fetchall()
    usage: dict[str, int] = {str(rid): int(n) for rid, n in rows}
    run.committed = len(usage)
    run.lost = len(set(run.succeeded) - set(usage))
    run.doubled = sum(n > 1 for n in usage.values()) + sum(int(n) > 1 for _, n in charges)


@contextlib.contextmanager
def _world(dsn: str | None, out: Callable[[str], None]) -> Iterator[World]:
    with contextlib.ExitStack() as stack:
        cluster = None
        if dsn is None:
            cluster = stack.enter_context(TemporaryPostgres(prefer_embedded=True))
            dsn = cluster.dsn
            out(f"  database: throwaway PostgreSQL from {cluster.bindir}, port {cluster.port}")
        else:
            out("  database: the one given (it is not restarted; outages come from the proxy)")
        params = psycopg.conninfo.conninfo_to_dict(dsn)
        host = str(params.get("host") or "127.0.0.1")
        proxy = stack.enter_context(
            FaultProxy(
                "127.0.0.1" if host.startswith("/") else host, int(params.get("port") or 5432)
            )
        )
        redis = None
        try:
            redis = stack.enter_context(TemporaryRedis())
            out(f"  cache:    throwaway redis-server on port {redis.port}")
        except (FileNotFoundError, RuntimeError, OSError):
            out("  cache:    no redis-server: the cache runs memory-only")
        yield World(dsn, proxy.dsn(dsn), proxy, cluster, redis)


def _seed(dsn: str, n: int) -> list[str]:
    apply_schema(dsn)
    users = [f"demo-user-{uuid.uuid4().hex[:8]}" for _ in range(n)]
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany(
            'INSERT INTO "User" (id, credits, "isPremium") VALUES (%s, 1000000, false)',
            [(u,) for u in users],
        )
    return users


_BLOCKS = " ▁▂▃▄▅▆▇█"


def _spark(values: list[float | None], top: float) -> str:
    """One character per value, a block from empty (0) to full (*top*); ``·`` for no data."""
    chars = []
    for v in values:
        if v is None or math.isnan(v):
            chars.append("·")
        else:
            level = 0 if top <= 0 else round(min(1.0, max(0.0, v / top)) * (len(_BLOCKS) - 1))
            chars.append(_BLOCKS[level])
    return "".join(chars)


@dataclass
class Series:
    """*run*'s requests cut into time slices by start: ok % and p99 ms per slice (``None``
    where no request started)."""

    origin: float
    end: float  # seconds after origin of the last request's start
    width: float  # seconds per slice
    ok_pct: list[float | None]
    p99: list[float | None]


def series(run: Run, columns: int) -> Series:
    """*run*'s samples (at least one) in *columns* slices."""
    origin = min([at for at, _ in run.phases] + [at for at, _, _ in run.samples])
    end = max(at for at, _, _ in run.samples) - origin
    width = max(end, 1e-9) / columns
    slices: list[list[tuple[float, bool]]] = [[] for _ in range(columns)]
    for at, ms, ok in run.samples:
        slices[min(columns - 1, int((at - origin) / width))].append((ms, ok))
    ok_pct: list[float | None] = []
    p99: list[float | None] = []
    for cell in slices:
        if not cell:
            ok_pct.append(None)
            p99.append(None)
            continue
        ok_pct.append(100.0 * sum(ok for _, ok in cell) / len(cell))
        latencies = sorted(ms for ms, _ in cell)
        p99.append(latencies[min(len(latencies) - 1, math.ceil(0.99 * len(latencies)) - 1)])
    return Series(origin, end, width, ok_pct, p99)


def timeline(run: Run, columns: int = 48) -> list[str]:
    """A text picture of *run*: the fault schedule (one digit per phase, with a legend) over
    time, against ok % and p99 latency in each time slice."""
    if not run.samples:
        return [f"{run.name}: no requests"]
    cut = series(run, columns)
    origin, end, width, ok_pct, p99 = cut.origin, cut.end, cut.width, cut.ok_pct, cut.p99
    schedule = []
    for i in range(columns):
        at = origin + (i + 0.5) * width
        index = sum(1 for starts, _ in run.phases if starts <= at)
        schedule.append(str(index) if index else " ")
    worst = max((v for v in p99 if v is not None), default=0.0)
    legend = "  ".join(f"{i}={label}" for i, (_, label) in enumerate(run.phases, 1))
    return [
        f"{run.name}: {end:.1f} s, {columns} slices of {width:.2f} s by request start "
        "(· = none started: every user was waiting)",
        f"  fault   |{''.join(schedule)}|  {legend}",
        f"  ok %    |{_spark(ok_pct, 100.0)}|  0-100 %",
        f"  p99 ms  |{_spark(p99, worst)}|  0-{worst:.0f} ms",
    ]


def plot(runs: list[Run], path: str | os.PathLike[str], columns: int = 120) -> bool:
    """The picture as a PNG at *path*: for each run, ok % and p99 ms per time slice with the
    fault phases shaded and named. False (and nothing written) without matplotlib, which the
    demo does not install (``pip install matplotlib``, about 40 MB with numpy)."""
    try:
        import matplotlib as mpl
    except ImportError:
        return False
    mpl.use("Agg")  # a file, never a window
    import matplotlib.pyplot as plt

    shown = [run for run in runs if run.samples]
    fig, axes = plt.subplots(
        len(shown) or 1, 1, figsize=(10, 3.2 * max(1, len(shown))), squeeze=False
    )
    for ax, run in zip(axes[:, 0], shown, strict=False):
        cut = series(run, columns)
        times = [(i + 0.5) * cut.width for i in range(columns)]
        end = cut.end
        for i, (starts, label) in enumerate(run.phases):
            stop = run.phases[i + 1][0] - cut.origin if i + 1 < len(run.phases) else end
            begin = starts - cut.origin
            ax.axvspan(begin, stop, color=f"C{i % 10}", alpha=0.12, linewidth=0)
            ax.text(begin, 107, label, fontsize=7, va="bottom", rotation=20)
        ok = [math.nan if v is None else v for v in cut.ok_pct]
        ax.plot(times, ok, color="tab:green", label="ok %")
        ax.set_ylim(0, 105)
        ax.set_ylabel("ok %")
        ax.set_xlabel("seconds")
        ax.set_title(run.name, loc="left", fontsize=10, pad=24)
        latency = ax.twinx()
        latency.plot(
            times, [math.nan if v is None else v for v in cut.p99], color="tab:red", label="p99"
        )
        latency.set_ylabel("p99 ms")
        latency.set_ylim(bottom=0)
        lines = ax.get_lines() + latency.get_lines()
        ax.legend(lines, [str(line.get_label()) for line in lines], loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
    return True


def _report(runs: list[Run], out: Callable[[str], None]) -> None:
    header = (
        f"{'client':<14} {'requests':>8} {'ok %':>6} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'committed':>9} {'lost':>5} {'twice':>5}  errors (final answer x count)"
    )
    out("")
    out(header)
    out("-" * len(header))
    for run in runs:
        ok = 100.0 * run.outcomes["200"] / run.requests if run.requests else 0.0
        errors = (
            ", ".join(f"{k} x{v}" for k, v in sorted(run.outcomes.items()) if k != "200") or "-"
        )
        out(
            f"{run.name:<14} {run.requests:>8} {ok:>6.1f} {run.percentile(50):>8.1f} "
            f"{run.percentile(99):>8.1f} {run.committed:>9} {run.lost:>5} {run.doubled:>5}  "
            f"{errors}"
        )
    out("")
    for run in runs:
        for line in timeline(run):
            out(line)


async def _main(
    dsn: str | None,
    profile: Profile,
    out: Callable[[str], None],
    picture: str | os.PathLike[str] | None = None,
) -> int:
    out("dbresilience demo: the interview service under real faults\n")
    with _world(dsn, out) as world:
        users = _seed(world.admin_dsn, profile.users)
        provider = create_provider(latency=0.005)
        settings = Settings(
            dsn=world.service_dsn,
            redis_url=world.redis.url if world.redis else None,
            provider_url="http://provider",
            provider_transport=httpx.ASGITransport(app=provider),
            query_timeout=2.0,
            pool_options={"min_size": 4, "max_size": 10, "connect_timeout": 2.0},
        )
        out(f"  load:     {profile.users} virtual users, {profile.phase:g} s per phase\n")
        runs = []
        for name, app, retrying in (
            ("naive", create_naive_app(settings), False),
            ("dbresilience", create_app(settings), True),
        ):
            run = await _run(name, app, world, users, profile, retrying, out)
            await asyncio.to_thread(_count, world, run)
            runs.append(run)
        _report(runs, out)
        if picture is not None:
            _write_picture(runs, picture, out)
        ours = runs[-1]
        out("")
        if ours.lost or ours.doubled:
            out(f"dbresilience LOST {ours.lost} and applied {ours.doubled} twice: a bug.")
            return 1
        naive = runs[0]
        out(
            f"dbresilience: {ours.outcomes['200']} sessions, every write committed once "
            f"(naive: {100.0 * naive.outcomes['200'] / max(1, naive.requests):.0f} % ok, "
            f"{naive.lost} writes lost)."
        )
        return 0


def _write_picture(
    runs: list[Run], path: str | os.PathLike[str], out: Callable[[str], None]
) -> None:
    """The PNG at *path*, or a line saying why only the text picture above was made."""
    if plot(runs, path):
        out(f"\n  picture: {os.fspath(path)} (PNG)")
    else:
        out("\n  no PNG: matplotlib is not installed (pip install matplotlib); the text above")


def run_demo(
    *,
    profile: str = "default",
    dsn: str | None = None,
    break_this_database: bool = False,
    out: Callable[[str], None] = print,
    picture: str | os.PathLike[str] | None = None,
) -> int:
    """Run the demo; 0 when dbresilience lost and doubled nothing, 1 otherwise.

    Without *dsn* it uses only servers it starts itself (``$DATABASE_URL`` is ignored). A *dsn*
    is used only with ``break_this_database=True``: the demo creates tables and rows there and
    terminates that database's client backends; otherwise it raises ``ValueError`` and touches
    nothing. With *picture*, the report's picture is also written there as a PNG when
    matplotlib is installed (the text picture is printed either way).
    """
    one_of("profile", profile, PROFILES)
    if dsn is not None and not break_this_database:
        raise ValueError(
            "dsn: the demo creates tables in the given database and terminates every client "
            "backend of it, again and again; pass break_this_database=True "
            "(--yes-break-this-database) if that database may be broken"
        )
    if sys.platform == "win32":  # pragma: no cover - SIGSTOP and the server binaries
        raise SystemExit("the demo needs a POSIX system")
    if dsn is None and os.environ.get("DATABASE_URL"):
        out("  (DATABASE_URL is set and ignored: the demo breaks only what it starts)")
    if dsn is not None:
        return asyncio.run(_main(dsn, PROFILES[profile], out, picture))
    with _own_servers_only():
        return asyncio.run(_main(dsn, PROFILES[profile], out, picture))


#: libpq environment variables that can send a connection to ``host=127.0.0.1 port=N`` to
#: another server: PGHOSTADDR wins over host, and a service file can add a hostaddr
_REDIRECTING_ENV = ("PGHOSTADDR", "PGSERVICE", "PGSERVICEFILE", "PGSYSCONFDIR")


@contextlib.contextmanager
def _own_servers_only() -> Iterator[None]:
    """Without ``--dsn``: libpq's variables that could redirect a connection meant for the
    demo's own servers are unset while it runs (``PGHOSTADDR=<a real server>`` sent every
    connection, the ones that terminate backends included, to that address), then restored."""
    saved = {name: os.environ.pop(name) for name in _REDIRECTING_ENV if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)
