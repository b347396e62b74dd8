"""`dbresilience demo` cannot hurt a real database: DATABASE_URL is ignored, --dsn needs consent.

The short demo run with ``DATABASE_URL`` naming a database of the test's own is in
``test_hostile_env.py`` (one demo run serves both tests: it costs about 11 s).
"""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest


def tables_of(dsn: str) -> list[str]:
    """The tables of the database behind *dsn*, outside the system schemas."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "select tablename from pg_tables where schemaname not in ('pg_catalog', "
            "'information_schema')"
        ).fetchall()
    return [str(r[0]) for r in rows]


def _demo(*args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dbresilience", "demo", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_demo_refuses_a_dsn_without_consent(victim_dsn: str) -> None:
    """--dsn alone is a usage error that names the flag; the database is left as it was."""
    with psycopg.connect(victim_dsn, autocommit=True) as held:
        result = _demo("--dsn", victim_dsn, env=dict(os.environ), timeout=60)
        assert result.returncode == 2
        assert "--yes-break-this-database" in result.stderr
        assert held.execute("select 1").fetchone() == (1,)
    assert tables_of(victim_dsn) == []


def test_run_demo_refuses_a_dsn_without_consent() -> None:
    """The Python entry point refuses too, before it connects anywhere."""
    from dbresilience._demo import run_demo

    with pytest.raises(ValueError, match="break_this_database"):
        run_demo(profile="short", dsn="host=192.0.2.1 dbname=prod")


def test_demo_help_says_what_it_does_to_a_given_database() -> None:
    """`demo --help` says a given database gets tables and killed connections."""
    result = _demo("--help", env=dict(os.environ), timeout=60)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "--yes-break-this-database" in text
    assert "terminates every client backend" in text
    assert "DATABASE_URL is ignored" in text
