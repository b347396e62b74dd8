"""Throwaway servers and the demo start wherever the checkout lives, as root or not.

Each test runs a real interpreter in an unfriendly environment: the PostgreSQL binaries inside a
private folder (mode 0700, as ``/root`` and many container homes are) whose name holds a space,
``TMPDIR`` pointing into that folder, no ``XDG_RUNTIME_DIR`` and a read-only ``HOME``. As root
the server runs as another account, which can reach none of that.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from dbresilience.faults import find_pg_bindir
from dbresilience.faults._postgres import _library_dirs
from tests.test_demo_safety import tables_of


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system
        shutil.copy2(src, dst)


@pytest.fixture
def hostile_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """An environment whose PostgreSQL install, temporary folder and home sit in a 0700 folder
    with a space in its name (the clone-in-``mktemp -d`` case of the issue)."""
    try:
        bindir = find_pg_bindir(prefer_embedded=True)  # what `make demo` uses
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    private = tmp_path_factory.mktemp("private") / "a clone dir"
    private.mkdir()
    private.parent.chmod(0o700)
    private.chmod(0o700)
    # the installation and the library folders its run path names, in their relative places
    install, libraries = bindir.resolve().parent, _library_dirs(bindir.resolve())
    common = Path(os.path.commonpath([install, *libraries]))
    site = private / ".venv" / "site-packages"
    for folder in (install, *libraries):
        shutil.copytree(
            folder, site / folder.relative_to(common), symlinks=True, copy_function=_link_or_copy
        )
    tmp = private / "tmp"
    tmp.mkdir(mode=0o700)
    home = private / "home"
    home.mkdir()
    home.chmod(stat.S_IRUSR | stat.S_IXUSR)  # read-only home
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_RUNTIME_DIR", "DATABASE_URL")}
    env.update(
        {
            "DBR_PG_BINDIR": str(site / install.relative_to(common) / bindir.name),
            "TMPDIR": str(tmp),
            "HOME": str(home),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    env.pop("DBR_TMPDIR", None)
    try:
        yield env
    finally:
        home.chmod(0o700)


def _run(code: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.slow
def test_throwaway_cluster_starts_from_a_private_folder(hostile_env: dict[str, str]) -> None:
    """A TemporaryPostgres whose binaries and TMPDIR are out of the server account's reach
    starts, serves, restarts and leaves no file behind."""
    result = _run(
        """
        import os, psycopg
        from dbresilience.faults import TemporaryPostgres
        with TemporaryPostgres() as pg:
            with psycopg.connect(pg.dsn) as conn:
                assert conn.execute("select 41 + 1").fetchone() == (42,)
            pg.restart()
            with psycopg.connect(pg.dsn) as conn:
                assert conn.execute("select 1").fetchone() == (1,)
            base = pg.data_dir.parent
        assert not base.exists(), base
        print("ok", base)
        """,
        hostile_env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok ")
    assert "PermissionError" not in result.stderr


@pytest.mark.slow
def test_short_demo_runs_from_a_private_folder(
    hostile_env: dict[str, str], victim_dsn: str
) -> None:
    """The short demo, run as `dbresilience demo` would be from a clone in a 0700 folder:
    it prints its table, the naive service fails requests and dbresilience loses and doubles
    nothing (the command's exit status says so). ``DATABASE_URL`` names a real database: the
    demo leaves it untouched (a session held open there survives; no table appears)."""
    with psycopg.connect(victim_dsn, autocommit=True) as held:
        result = subprocess.run(
            [sys.executable, "-m", "dbresilience", "demo", "--profile", "short"],
            env={**hostile_env, "DATABASE_URL": victim_dsn},
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert held.execute("select 1").fetchone() == (1,)  # never terminated
    assert tables_of(victim_dsn) == []
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    rows = {
        line.split()[0]: line.split()
        for line in result.stdout.splitlines()
        if line.startswith(("naive ", "dbresilience "))
    }
    naive, ours = rows["naive"], rows["dbresilience"]
    assert float(naive[2]) < 100.0  # the naive service failed requests
    assert (ours[6], ours[7]) == ("0", "0")  # dbresilience: nothing lost, nothing twice
    assert int(ours[5]) > 0
    assert hostile_env["DBR_PG_BINDIR"] in result.stdout  # it used the private install


def test_unreachable_everywhere_fails_with_a_message_not_a_permission_error(
    tmp_path: Path,
) -> None:
    """When no folder can hold the server (DBR_TMPDIR, TMPDIR and the usual places all
    refused), start() says what to do instead of raising a bare PermissionError."""
    if os.geteuid() != 0:
        pytest.skip("only root runs the server as another account")
    code = """
        import tempfile, dbresilience.faults._postgres as f
        f._reachable = lambda path, user, mode="-x": False  # nobody can reach anything
        try:
            f.TemporaryPostgres().start()
        except RuntimeError as exc:
            print("message:", exc)
    """
    result = _run(code, dict(os.environ), timeout=60)
    assert "PermissionError" not in result.stderr, result.stderr
    assert "message:" in result.stdout
    assert "DBR_TMPDIR" in result.stdout
