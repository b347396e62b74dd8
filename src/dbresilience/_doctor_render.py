"""Showing a :class:`~dbresilience.DoctorReport`: plain text, Rich when installed, JSON; and the
``dbresilience doctor`` command's body (``__main__`` only parses its arguments)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dbresilience._doctor import DoctorReport

_ORDER = ("error", "warning", "info")


def _evidence(evidence: dict[str, Any]) -> str:
    parts = []
    for key, value in evidence.items():
        if value is None or value == [] or value == {}:
            continue
        if key in ("query", "expression", "definition"):
            continue  # shown on a line of their own
        shown = ", ".join(map(str, value)) if isinstance(value, list) else value
        parts.append(f"{key}={shown}")
    return "; ".join(parts)


def render_text(report: DoctorReport) -> str:
    """The report as plain text, grouped by severity, each finding with its evidence and fix."""
    server = report.server
    lines = [
        f"dbresilience doctor: database {server.get('database', '?')} as "
        f"{server.get('user', '?')}, PostgreSQL {server.get('version', '?')}",
        f"schemas: {', '.join(server.get('schemas', [])) or '(none)'}",
    ]
    counts = {s: sum(1 for f in report.findings if f.severity.value == s) for s in _ORDER}
    lines.append(
        f"{counts['error']} error(s), {counts['warning']} warning(s), {counts['info']} info; "
        f"{len(report.skipped)} check(s) skipped or partial"
    )
    for severity in _ORDER:
        group = [f for f in report.findings if f.severity.value == severity]
        if not group:
            continue
        lines += ["", f"== {severity.upper()} ({len(group)}) " + "=" * 60]
        for f in group:
            lines.append(f"[{f.id}] {f.object}")
            lines.append(f"  why: {f.why}")
            evidence = dict(f.evidence)
            shown = _evidence(evidence)
            if shown:
                lines.append(f"  evidence: {shown}")
            for key in ("query", "expression", "definition"):
                if evidence.get(key):
                    lines.append(f"  {key}: {evidence[key]}")
            if f.fix_sql:
                lines.append("  fix (review, then run yourself):")
                lines += [f"    {line}" for line in f.fix_sql.splitlines()]
    if report.skipped:
        lines += ["", "== SKIPPED OR PARTIAL " + "=" * 60]
        lines += [f"[{s.id}] {s.reason}" for s in report.skipped]
    if not report.findings:
        lines += ["", "no findings"]
    return "\n".join(lines) + "\n"


def render_rich(report: DoctorReport, file: IO[str]) -> None:
    """The same report through Rich (colours, panels); requires ``rich``."""
    from rich.console import Console, Group
    from rich.markup import escape
    from rich.panel import Panel
    from rich.syntax import Syntax
    from rich.text import Text

    console = Console(file=file, soft_wrap=False)  # a terminal's own width, else 80
    server = report.server
    console.print(
        Text(
            f"dbresilience doctor: database {server.get('database', '?')} as "
            f"{server.get('user', '?')}, PostgreSQL {server.get('version', '?')}",
            style="bold",
        )
    )
    styles = {"error": "red", "warning": "yellow", "info": "blue"}
    for severity in _ORDER:
        group = [f for f in report.findings if f.severity.value == severity]
        if not group:
            continue
        console.rule(Text(f"{severity.upper()} ({len(group)})", style=f"bold {styles[severity]}"))
        for f in group:
            body: list[Any] = [Text(f.why)]
            shown = _evidence(dict(f.evidence))
            if shown:
                body.append(Text(f"evidence: {shown}", style="dim"))
            for key in ("query", "expression", "definition"):
                if f.evidence.get(key):
                    body.append(Text(f"{key}: {f.evidence[key]}", style="dim"))
            if f.fix_sql:
                body.append(Syntax(f.fix_sql, "sql", word_wrap=True))
            console.print(
                Panel(
                    Group(*body),
                    # names come from the database: escaped, or "[" in one would be markup
                    title=f"[{styles[severity]}]{f.id}[/] {escape(f.object)}",
                    title_align="left",
                )
            )
    if report.skipped:
        console.rule("SKIPPED OR PARTIAL")
        for s in report.skipped:
            console.print(Text(f"[{s.id}] {s.reason}"))
    if not report.findings:
        console.print("no findings")


def has_rich() -> bool:
    """Whether ``rich`` can be imported (without importing it)."""
    return importlib.util.find_spec("rich") is not None


def run_doctor_command(
    dsn: str,
    *,
    as_json: bool = False,
    schemas: list[str] | None = None,
    fail_on: str | None = None,
    plain: bool = False,
    out: IO[str] | None = None,
) -> int:
    """``dbresilience doctor``: print the report; exit status 1 when a finding reaches
    *fail_on*, 2 when the doctor could not connect, else 0. Never prints the DSN's password."""
    import psycopg

    from dbresilience._doctor import doctor
    from dbresilience._redact import redact_error, secrets_of

    stream = out or sys.stdout
    secrets = [*secrets_of(dsn), os.environ.get("PGPASSWORD", "")]
    try:
        report = doctor(dsn, schemas=schemas)
    except (psycopg.Error, ValueError, TypeError) as exc:
        message = redact_error(exc, secrets, default=type(exc).__name__)
        if as_json:
            stream.write(json.dumps({"error": message, "checks": [], "skipped": []}) + "\n")
        else:
            stream.write(f"doctor failed: {message}\n")
        return 2
    if as_json:
        stream.write(report.to_json() + "\n")  # holds no part of the DSN but names
    elif not plain and has_rich() and stream.isatty():
        render_rich(report, stream)
    else:
        stream.write(render_text(report))
    return 1 if fail_on and report.failed(fail_on) else 0
