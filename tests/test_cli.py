"""The dbresilience command: the demo against real faults, and the connectivity check."""

from __future__ import annotations

import psycopg
import pytest

from dbresilience.__main__ import main
from dbresilience.faults import free_port


def test_check_reports_a_healthy_server(pg_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    """check prints the server version and the timeout settings in force, exit status 0."""
    assert main(["check", pg_dsn]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: ")
    assert "server version" in out
    assert "statement_timeout" in out


def test_check_classifies_a_refused_port_without_showing_the_password(
    pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A refused port is reported as P1001; the DSN's password appears nowhere."""
    dsn = psycopg.conninfo.make_conninfo(pg_dsn, port=str(free_port()), password="hunter2-secret")
    assert main(["check", dsn]) == 1
    out = capsys.readouterr().out
    assert "P1001" in out
    assert "hunter2" not in out


def test_cli_rejects_bad_arguments() -> None:
    """Nonsense arguments exit with a usage error, naming the problem."""
    with pytest.raises(SystemExit):
        main(["demo", "--profile", "enormous"])
    with pytest.raises(SystemExit):
        main(["frobnicate"])
