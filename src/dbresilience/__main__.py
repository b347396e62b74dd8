"""The ``dbresilience`` command: ``demo`` (real faults, before and after), ``check DSN``,
``doctor DSN`` and ``queue failed|replay|drain`` (the shared Redis write journal)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from dbresilience import __version__
from dbresilience._classify import classify
from dbresilience._errors import MissingExtra, require
from dbresilience._redact import redact_error, secrets_of

_TIMEOUT_SETTINGS = (
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "idle_session_timeout",
    "tcp_keepalives_idle",
    "tcp_user_timeout",
)


def check(dsn: str, *, connect_timeout: float = 5.0, as_json: bool = False) -> int:
    """Connect once to *dsn*; print latency, server version and timeouts, or the classification
    (as one JSON object with *as_json*).

    Returns 0 when the database answered, 1 otherwise. Neither the DSN nor its password is ever
    printed: a DSN that does not parse is reported without psycopg's message (which quotes it),
    and an error's text has every password of the DSN and of ``PGPASSWORD`` masked.
    """
    report = _probe(dsn, connect_timeout)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(report)
    return 0 if report["ok"] else 1


def _probe(dsn: str, connect_timeout: float) -> dict[str, Any]:
    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return {
            "ok": False,
            "error": "the DSN is not a valid libpq connection string or URL "
            "(not shown: it may hold a password)",
        }
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
            return {
                "ok": True,
                "host": info.host,
                "port": info.port,
                "database": info.dbname,
                "user": info.user,
                "server_version": version[0] if version else None,
                "connect_ms": round((connected - start) * 1000, 1),
                "queries_ms": round((done - connected) * 1000, 1),
                "settings": {
                    name: "off" if setting == "0" else f"{setting}{unit or ''}"
                    for name, setting, unit in settings
                },
            }
    except Exception as exc:
        c = classify(exc)
        return {
            "ok": False,
            "elapsed_ms": round((time.perf_counter() - start) * 1000),
            "code": c.code,
            "kind": c.kind.name,
            "retryable": c.retryable,
            "http_status": c.http_status,
            "retry_after": c.retry_after,
            "error_type": type(exc).__name__,
            "error": redact_error(exc, secrets),
        }


def _print_report(report: dict[str, Any]) -> None:
    if report["ok"]:
        print(
            f"ok: {report['host']}:{report['port']} database {report['database']} "
            f"as {report['user']}"
        )
        print(f"  server version   {report['server_version'] or '?'}")
        print(f"  connect          {report['connect_ms']:.1f} ms")
        print(f"  two queries      {report['queries_ms']:.1f} ms")
        for name, shown in report["settings"].items():
            print(f"  {name:<36} {shown}")
    elif "code" not in report:
        print(f"failed: {report['error']}")
    else:
        print(f"failed after {report['elapsed_ms']:.0f} ms: {report['code']} ({report['kind']})")
        print(f"  retryable {report['retryable']}, HTTP {report['http_status']}", end="")
        retry_after = report["retry_after"]
        print(f", Retry-After {retry_after:g} s" if retry_after else "")
        print(f"  {report['error_type']}: {report['error']}")


def _parser() -> argparse.ArgumentParser:
    """The command line: every command and argument, each with its help."""
    parser = argparse.ArgumentParser(prog="dbresilience", description=__doc__)
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}", help="print the version"
    )
    sub = parser.add_subparsers(dest="command", required=True, help="the command to run")
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
        "--plot",
        metavar="FILE",
        default=None,
        help="also write the report's picture (fault schedule, ok %% and p99 over time) to FILE "
        "as a PNG; needs matplotlib (pip install matplotlib), else only the text picture",
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
    chaos.add_argument(
        "--seconds", type=float, default=600.0, help="how long to run, in seconds (default 600)"
    )
    chaos.add_argument("--workers", type=int, default=3, help="worker processes (default 3)")
    chaos.add_argument("--phase", type=float, default=3.0, help="seconds per fault (default 3)")
    probe = sub.add_parser(
        "check",
        help="probe a database and classify any failure",
        description="Connects once to DSN and prints the latency, the server version and the "
        "timeout settings in force, or how dbresilience classifies the failure (code, "
        "retryable, HTTP status). Never prints the DSN or its password. Exit status 0 when "
        "the database answered, 1 otherwise.",
    )
    probe.add_argument(
        "dsn",
        nargs="?",
        default=os.environ.get("DATABASE_URL"),
        metavar="DSN",
        help="a libpq connection string or postgresql:// URL; default: $DATABASE_URL",
    )
    probe.add_argument(
        "--connect-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="give up connecting after this long (default 5; libpq counts whole seconds, "
        "at least 2)",
    )
    probe.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (ok, server_version, settings ... or code, kind, "
        "retryable, http_status, retry_after, error) instead of text",
    )
    doc = sub.add_parser(
        "doctor",
        help="read-only checks of a database: indexes, RLS, json, slow queries, timeouts",
        description="Reads the catalogs and statistics of the database behind DSN (in a read-only "
        "transaction) and reports what the seeds fixed by hand, with the SQL to fix each "
        "finding; never runs that SQL. See docs/doctor.md.",
    )
    doc.add_argument(
        "dsn",
        nargs="?",
        default=os.environ.get("DATABASE_URL"),
        metavar="DSN",
        help="a libpq connection string or postgresql:// URL; default: $DATABASE_URL",
    )
    doc.add_argument("--json", action="store_true", help="print the report as JSON")
    doc.add_argument("--schema", action="append", help="a schema to check (repeatable)")
    doc.add_argument("--fail-on", choices=["warning", "error"], help="exit 1 from this severity")
    from dbresilience._queue_cli import add_queue_parser

    add_queue_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dbresilience`` console script."""
    parser = _parser()
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
            profile=args.profile,
            dsn=args.dsn,
            break_this_database=args.yes_break_this_database,
            picture=args.plot,
        )
    if args.command == "queue":
        try:
            require("redis", extra="redis", what="dbresilience queue")
        except MissingExtra as exc:
            print(f"dbresilience: {exc}", file=sys.stderr)
            return 1
        from dbresilience._queue_cli import run_queue_command

        return run_queue_command(args)
    if not args.dsn:
        parser.error(f"{args.command} needs a DSN (or DATABASE_URL)")
    if args.command == "doctor":
        from dbresilience._doctor_render import run_doctor_command

        return run_doctor_command(
            args.dsn, as_json=args.json, schemas=args.schema, fail_on=args.fail_on
        )
    return check(args.dsn, connect_timeout=args.connect_timeout, as_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
