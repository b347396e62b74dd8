"""``dbresilience chaos``: a soak of the interview service under a schedule of real faults.

Several worker processes (separate interpreters) run the interview example on one throwaway
PostgreSQL and one throwaway Redis, each with its own virtual users, its own write journal and a
client that retries 503s with the same request id, as the seeds' client did. Meanwhile a fault
schedule cycles through: backends terminated every 100 ms, a server restart, every backend frozen
with SIGSTOP, a Redis outage, a worker process killed with SIGKILL (and started again on its
journal, as a supervisor would). At the end the workers are stopped with SIGTERM (they drain),
and a checker reads the database:

- **acknowledged**: requests answered 200 (each client writes the request id to a file the
  moment the answer arrives: an ``os.write``, so a SIGKILL right after cannot take it back);
- **lost**: acknowledged requests without their credit deduction in the database;
- **doubled**: requests charged more than once;
- **past deadline**: single HTTP requests slower than the service's own bound (the provider's
  timeout plus the pool's deadline plus a second);
- **secrets**: the planted database password found in any worker's logs or output;
- **replayed at end**: writes a worker left in its journal when its drain deadline passed,
  applied by the checker before it counts, as the worker's next start would.

It prints one table and exits 1 on any loss, double, overrun or secret.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

#: planted in every worker's DSN (trust authentication ignores it); must never be printed
SECRET = "chaos-SECRET-p4ssw0rd"  # noqa: S105 - a canary, not a credential
QUERY_TIMEOUT = 2.0
PROVIDER_TIMEOUT = 5.0
OVERRUN = PROVIDER_TIMEOUT + QUERY_TIMEOUT + 1.0


@dataclass
class Worker:
    """One worker process and the files it writes."""

    n: int
    journal: Path
    acks: Path
    log: Path
    users: list[str]
    generation: int = 0
    proc: subprocess.Popen[bytes] | None = None
    outputs: list[Path] = field(default_factory=list)


def _start(worker: Worker, dsn: str, redis_url: str | None, workdir: Path) -> None:
    worker.generation += 1
    out = workdir / f"worker-{worker.n}-{worker.generation}.out"
    worker.outputs.append(out)
    args = [
        sys.executable,
        "-m",
        "dbresilience._chaos",
        "worker",
        "--dsn",
        dsn,
        "--journal",
        str(worker.journal),
        "--acks",
        str(worker.acks),
        "--log",
        str(worker.log),
        "--users",
        ",".join(worker.users),
    ]
    if redis_url:
        args += ["--redis", redis_url]
    with open(out, "wb") as sink:
        worker.proc = subprocess.Popen(args, stdout=sink, stderr=subprocess.STDOUT)


# --- the worker process -------------------------------------------------------------------------


async def _serve(args: argparse.Namespace) -> int:
    import httpx

    from dbresilience._examples.interview_service import (
        Settings,
        create_app,
        create_provider,
        start_session,
    )

    logging.basicConfig(
        filename=args.log, level=logging.INFO, format="%(asctime)s %(name)s %(message)s"
    )
    settings = Settings(
        dsn=args.dsn,
        redis_url=args.redis,
        provider_url="http://provider",
        provider_transport=httpx.ASGITransport(app=create_provider(latency=0.002)),
        provider_timeout=PROVIDER_TIMEOUT,
        query_timeout=QUERY_TIMEOUT,
        journal=args.journal,
        pool_options={"min_size": 2, "max_size": 6, "connect_timeout": 2.0},
    )
    app = create_app(settings)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    acks = os.open(args.acks, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    class Timed(httpx.AsyncBaseTransport):
        """Counts single requests slower than the service's own bound."""

        def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
            self.inner = inner
            self.overruns = 0

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            start = time.monotonic()
            try:
                return await self.inner.handle_async_request(request)
            finally:
                if time.monotonic() - start > OVERRUN:
                    self.overruns += 1

    async def user(client: httpx.AsyncClient, uid: str) -> None:
        while not stop.is_set():
            rid = f"chaos-{uuid.uuid4().hex}"
            with contextlib.suppress(Exception):
                response = await start_session(
                    client, uid, request_id=rid, delays=(0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0)
                )
                if response.status_code == 200:
                    os.write(acks, (rid + "\n").encode())  # reached the OS: survives SIGKILL
            await asyncio.sleep(random.uniform(0.005, 0.02))

    timed = Timed(httpx.ASGITransport(app=app))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=timed, base_url="http://service", timeout=30) as client,
    ):
        users = [asyncio.create_task(user(client, uid)) for uid in args.users.split(",")]
        await stop.wait()
        await asyncio.gather(*users)
    overruns = timed.overruns
    # leaving the lifespan drained the write queue into the database (or its journal)
    print(json.dumps({"overruns": overruns}), flush=True)
    return 0


# --- the parent: world, schedule, checker -------------------------------------------------------


def _faults(
    cluster: object, redis: object, workers: list[Worker], restart: Callable[[Worker], None]
) -> list[tuple[str, Callable[[float], None]]]:
    from dbresilience.faults import TemporaryPostgres, TemporaryRedis, client_backends
    from dbresilience.faults import terminate_backends as kill

    assert isinstance(cluster, TemporaryPostgres)

    def kill_storm(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            kill(cluster.dsn)
            time.sleep(0.1)

    def server_restart(seconds: float) -> None:
        cluster.stop("fast")
        time.sleep(seconds)
        cluster.start()

    def freeze(seconds: float) -> None:
        pids = client_backends(cluster.dsn)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                TemporaryPostgres.freeze(pid)
        try:
            time.sleep(seconds)
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    TemporaryPostgres.thaw(pid)

    def redis_outage(seconds: float) -> None:
        assert isinstance(redis, TemporaryRedis)
        redis.stop()
        time.sleep(seconds)
        redis.start()

    def sigkill_worker(seconds: float) -> None:
        worker = random.choice(workers)
        assert worker.proc is not None
        worker.proc.send_signal(signal.SIGKILL)
        worker.proc.wait(10)
        time.sleep(min(seconds, 0.5))
        restart(worker)  # on the same journal: it replays what the dead one acknowledged
        time.sleep(max(0.0, seconds - 0.5))

    def steady(seconds: float) -> None:
        time.sleep(seconds)

    schedule: list[tuple[str, Callable[[float], None]]] = [
        ("steady", steady),
        ("backends terminated every 100 ms", kill_storm),
        ("server restart", server_restart),
        ("backends frozen (SIGSTOP)", freeze),
        ("worker killed (SIGKILL) and restarted", sigkill_worker),
    ]
    if redis is not None:
        schedule.append(("Redis outage", redis_outage))
    return schedule


def run_chaos(
    *,
    seconds: float = 600.0,
    workers: int = 3,
    phase: float = 3.0,
    keep: bool = False,
    out: Callable[[str], None],
) -> int:
    """Run the soak for *seconds*; 0 when nothing was lost, doubled, overrun or leaked."""
    from dbresilience._demo import _seed
    from dbresilience._examples.interview_service import apply_schema
    from dbresilience.faults import TemporaryPostgres, TemporaryRedis

    out(f"dbresilience chaos: {workers} worker processes, {seconds:g} s of faults\n")
    with contextlib.ExitStack() as stack:
        if keep:
            workdir = Path(tempfile.mkdtemp(prefix="dbr-chaos-"))
            out(f"  keeping journals, logs and acks in {workdir}")
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dbr-chaos-")))
        cluster = stack.enter_context(TemporaryPostgres(prefer_embedded=True))
        redis: TemporaryRedis | None = None
        with contextlib.suppress(FileNotFoundError, RuntimeError, OSError):
            redis = stack.enter_context(TemporaryRedis())
        admin = cluster.dsn
        apply_schema(admin)
        service_dsn = psycopg.conninfo.make_conninfo(admin, password=SECRET)
        redis_url = redis.url if redis is not None else None
        users = _seed(admin, workers * 4)
        pool = [
            Worker(
                n,
                workdir / f"w{n}.journal",
                workdir / f"acks-{n}.txt",
                workdir / f"w{n}.log",
                users[n * 4 : n * 4 + 4],
            )
            for n in range(workers)
        ]

        def restart(worker: Worker) -> None:
            _start(worker, service_dsn, redis_url, workdir)

        try:
            for worker in pool:
                restart(worker)
            time.sleep(2.0)  # let them warm up
            schedule = _faults(cluster, redis, pool, restart)
            end = time.monotonic() + seconds
            i = 0
            while time.monotonic() < end:
                label, fault = schedule[i % len(schedule)]
                out(f"  [{time.monotonic() - end + seconds:6.1f} s] {label}")
                fault(min(phase, max(0.1, end - time.monotonic())))
                i += 1
            if not cluster.running:
                cluster.start()
            if redis is not None:
                redis.start()
            out("  stopping the workers (SIGTERM: they drain their queues)")
        finally:
            for worker in pool:
                if worker.proc is not None and worker.proc.poll() is None:
                    worker.proc.send_signal(signal.SIGTERM)
            for worker in pool:
                if worker.proc is not None:
                    try:
                        worker.proc.wait(60)
                    except subprocess.TimeoutExpired:
                        worker.proc.kill()
                        worker.proc.wait(10)
        recovered = _recover(admin, pool, out)
        return _check(admin, pool, recovered, out)


def _recover(admin: str, pool: list[Worker], out: Callable[[str], None]) -> int:
    """Apply what the workers left in their journals, as their next start would; how many."""
    import dbresilience as dbr

    recovered = 0
    with dbr.Pool(admin, min_size=1) as db:
        for worker in pool:
            if not worker.journal.exists():
                continue
            with dbr.WriteQueue(db, journal=str(worker.journal), drain_timeout=120) as queue:
                recovered += queue.stats()["replayed"]
                if not queue.flush(timeout=120):
                    out(f"  worker {worker.n}'s journal did not drain within 120 s")
    if recovered:
        out(f"  {recovered} writes were still in journals: applied now, as a restart would")
    return recovered


def _check(admin: str, pool: list[Worker], recovered: int, out: Callable[[str], None]) -> int:
    acked: list[str] = []
    overruns = 0
    leaked = 0
    for worker in pool:
        if worker.acks.exists():
            acked += [line for line in worker.acks.read_text().splitlines() if line]
        texts = [p.read_text(errors="replace") for p in worker.outputs if p.exists()]
        if worker.log.exists():
            texts.append(worker.log.read_text(errors="replace"))
        leaked += sum(text.count(SECRET) for text in texts)
        for text in texts:
            for line in text.splitlines():
                if line.startswith('{"overruns"'):
                    overruns += int(json.loads(line)["overruns"])
    with psycopg.connect(admin) as conn:
        charges: dict[str, int] = dict(
            conn.execute(
                'SELECT "requestId", count(*) FROM "CreditLedger" WHERE "requestId" = ANY(%s) '
                'GROUP BY "requestId"',
                (acked,),
            ).fetchall()
        )
    lost = sum(1 for rid in acked if rid not in charges)
    doubled = sum(1 for n in charges.values() if n > 1)
    kills: int = sum(w.generation - 1 for w in pool)
    header = (
        f"{'acknowledged':>12} {'lost':>5} {'doubled':>7} {'past deadline':>13} "
        f"{'secrets':>7} {'workers killed':>14} {'replayed at end':>15}"
    )
    out("")
    out(header)
    out("-" * len(header))
    out(
        f"{len(acked):>12} {lost:>5} {doubled:>7} {overruns:>13} {leaked:>7} {kills:>14} "
        f"{recovered:>15}"
    )
    bad = lost or doubled or overruns or leaked or not acked
    out("")
    out("FAILED: a promise broke" if bad else "ok: nothing lost, doubled, overrun or leaked")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m dbresilience._chaos worker ...`` (one worker process)."""
    parser = argparse.ArgumentParser(prog="dbresilience._chaos")
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker")
    worker.add_argument("--dsn", required=True)
    worker.add_argument("--redis", default=None)
    worker.add_argument("--journal", required=True)
    worker.add_argument("--acks", required=True)
    worker.add_argument("--log", required=True)
    worker.add_argument("--users", required=True)
    args = parser.parse_args(argv)
    return asyncio.run(_serve(args))


if __name__ == "__main__":
    sys.exit(main())
