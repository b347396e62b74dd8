"""The dbresilience command: the demo against real faults, and the connectivity check."""

from __future__ import annotations

import re

import psycopg
import pytest

from dbresilience.__main__ import main
from dbresilience._demo import run_demo
from dbresilience.faults import free_port


@pytest.mark.slow
def test_short_demo_profile_runs_and_dbresilience_loses_nothing() -> None:
    """The short demo breaks a real server four ways: the naive service fails requests,
    the dbresilience one loses and doubles no write (the command's exit status says so)."""
    lines: list[str] = []
    assert run_demo(profile="short", out=lines.append) == 0
    rows = {
        line.split()[0]: line.split()
        for line in lines
        if re.match(r"(naive|dbresilience)\s+\d", line)
    }
    naive, ours = rows["naive"], rows["dbresilience"]
    assert float(naive[2]) < 100.0  # the naive service failed requests
    assert (ours[6], ours[7]) == ("0", "0")  # dbresilience: nothing lost, nothing twice
    assert int(ours[5]) > 0


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
