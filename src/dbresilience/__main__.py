"""The ``dbresilience`` command: ``demo`` (real faults, before and after), ``check DSN`` and
``doctor DSN``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

import psycopg
from psycopg.conninfo import conninfo_to_dict

from dbresilience._classify import classify
from dbresilience._errors import MissingExtra, require
from dbresilience._redact import redact_text, secrets_of

_TIMEOUT_SETTINGS = (
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "idle_session_timeout",
    "tcp_keepalives_idle",
    "tcp_user_timeout",
)


def check(dsn: str, *, connect_timeout: float = 5.0) -> int:
    """Connect once to *dsn*; print latency, server version and timeouts, or the classification.

    Returns 0 when the database answered, 1 otherwise. Neither the DSN nor its password is ever
    printed: a DSN that does not parse is reported without psycopg's message (which quotes it),
    and an error's text has every password of the DSN and of ``PGPASSWORD`` masked.
    """
    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        print(
            "failed: the DSN is not a valid libpq connection string or URL "
            "(not shown: it may hold a password)"
        )
        return 1
    secrets = [*secrets_of(dsn), os.environ.get("PGPASSWORD", "")]
    start = time.perf_counter()
    try:
        with psycopg.connect(dsn, connect_timeout=max(2, round(connect_timeout))) as conn:
            connected = time.perf_counter()
            version = conn.execute("show server_version").fetchone()
            settings = conn.execute(
                "select name, setting, unit from pg_settings where name = any(%s) order by name",
                (list(_TIMEOUT_SETTINGS),),
            ).fetchall()
            done = time.perf_counter()
            info = conn.info
            print(f"ok: {info.host}:{info.port} database {info.dbname} as {info.user}")
            print(f"  server version   {version[0] if version else '?'}")
            print(f"  connect          {(connected - start) * 1000:.1f} ms")
            print(f"  two queries      {(done - connected) * 1000:.1f} ms")
            for name, setting, unit in settings:
                shown = "off" if setting == "0" else f"{setting}{unit or ''}"
                print(f"  {name:<36} {shown}")
            return 0
    except Exception as exc:
        c = classify(exc)
        print(
            f"failed after {(time.perf_counter() - start) * 1000:.0f} ms: {c.code} ({c.kind.name})"
        )
        print(f"  retryable {c.retryable}, HTTP {c.http_status}", end="")
        print(f", Retry-After {c.retry_after:g} s" if c.retry_after else "")
        lines = str(exc).splitlines()
        print(f"  {type(exc).__name__}: {redact_text(lines[0] if lines else '', secrets)}")
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dbresilience`` console script."""
    parser = argparse.ArgumentParser(prog="dbresilience", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="the interview service under real faults: naive vs dbresilience",
        description="Runs the interview example twice (the seeds' naive code, then on "
        "dbresilience) while it kills backends, restarts or freezes the server and stops Redis, "
        "and prints what each run lost or applied twice. By default it starts a throwaway "
        "PostgreSQL and Redis and touches nothing else; DATABASE_URL is ignored.",
    )
    demo.add_argument(
        "--profile",
        choices=["default", "short"],
        default="default",
        help="default: 16 users, 3 s per fault (about 50 s); short: 6 users, 0.8 s per fault",
    )
    demo.add_argument(
        "--dsn",
        default=None,
        help="break this database instead of a throwaway one (needs --yes-break-this-database): "
        'the demo creates the example\'s tables ("User", "UsageEvent", "CreditLedger", ...) '
        "and rows in it, terminates every client backend of that database every 100 ms, and "
        "cuts it off through a proxy",
    )
    demo.add_argument(
        "--yes-break-this-database",
        action="store_true",
        help="confirm that the database given by --dsn may be written to and have its "
        "connections killed",
    )
    chaos = sub.add_parser(
        "chaos",
        help="a soak: worker processes of the interview service under a fault schedule",
        description="Runs the interview example in several worker processes on a throwaway "
        "PostgreSQL and Redis while backends are killed and frozen, the server restarts, Redis "
        "goes away and workers are killed with SIGKILL; then counts, in the database, "
        "acknowledged writes lost or applied twice, calls past their deadline and secrets "
        "seen in logs. Exit status 1 on any of them. Touches nothing it did not start.",
    )
    chaos.add_argument("--seconds", type=float, default=600.0, help="how long (default 600)")
    chaos.add_argument("--workers", type=int, default=3, help="worker processes (default 3)")
    chaos.add_argument("--phase", type=float, default=3.0, help="seconds per fault (default 3)")
    probe = sub.add_parser("check", help="probe a database and classify any failure")
    probe.add_argument("dsn", nargs="?", default=os.environ.get("DATABASE_URL"))
    probe.add_argument("--connect-timeout", type=float, default=5.0)
    doc = sub.add_parser(
        "doctor",
        help="read-only checks of a database: indexes, RLS, json, slow queries, timeouts",
        description="Reads the catalogs and statistics of the database behind DSN (in a read-only "
        "transaction) and reports what the seeds fixed by hand, with the SQL to fix each "
        "finding; never runs that SQL. See docs/doctor.md.",
    )
    doc.add_argument("dsn", nargs="?", default=os.environ.get("DATABASE_URL"))
    doc.add_argument("--json", action="store_true", help="print the report as JSON")
    doc.add_argument("--schema", action="append", help="a schema to check (repeatable)")
    doc.add_argument("--fail-on", choices=["warning", "error"], help="exit 1 from this severity")
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse would echo them, and a DSN with a space splits into two of them
        parser.error(
            f"unrecognized arguments ({len(unknown)}, not shown: they may hold a password; "
            "quote a DSN that has spaces)"
        )
    if args.command in ("demo", "chaos"):
        try:  # the example service: a Starlette app driven through httpx
            for module in ("starlette", "httpx"):
                require(module, extra="demo", what=f"dbresilience {args.command}")
        except MissingExtra as exc:
            print(f"dbresilience: {exc}", file=sys.stderr)
            return 1
    if args.command == "chaos":
        from dbresilience._chaos import run_chaos

        return run_chaos(seconds=args.seconds, workers=args.workers, phase=args.phase, out=print)
    if args.command == "demo":
        from dbresilience._demo import run_demo

        if args.dsn is not None and not args.yes_break_this_database:
            parser.error(
                "demo --dsn creates tables in that database and terminates its connections; "
                "add --yes-break-this-database if it may be broken (without --dsn the demo "
                "starts its own throwaway servers)"
            )
        return run_demo(
            profile=args.profile, dsn=args.dsn, break_this_database=args.yes_break_this_database
        )
    if not args.dsn:
        parser.error(f"{args.command} needs a DSN (or DATABASE_URL)")
    if args.command == "doctor":
        from dbresilience._doctor_render import run_doctor_command

        return run_doctor_command(
            args.dsn, as_json=args.json, schemas=args.schema, fail_on=args.fail_on
        )
    return check(args.dsn, connect_timeout=args.connect_timeout)


if __name__ == "__main__":
    sys.exit(main())
