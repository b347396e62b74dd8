"""What `pip install dbresilience` gets: the sdist and the wheel, built once as a release
would be, then read; and the command's `--version`, help texts and `check --json`."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from dbresilience.faults import free_port

ROOT = Path(__file__).resolve().parent.parent


class Built:
    """The built sdist and wheel, and what the build printed."""

    def __init__(self, folder: Path, log: str) -> None:
        self.sdist = tarfile.open(next(folder.glob("*.tar.gz")))  # noqa: SIM115 - the fixture closes
        self.wheel = zipfile.ZipFile(next(folder.glob("*.whl")))
        self.log = log

    def metadata(self) -> str:
        name = next(n for n in self.wheel.namelist() if n.endswith(".dist-info/METADATA"))
        return self.wheel.read(name).decode()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    """``python -m build`` (sdist, then the wheel from it) without isolation: no download."""
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    found = Built(out, result.stdout + result.stderr)
    yield found
    found.sdist.close()
    found.wheel.close()


def test_build_prints_no_setuptools_warning(built: Built) -> None:
    """The license is an SPDX expression: setuptools warns about nothing."""
    assert "SetuptoolsDeprecationWarning" not in built.log
    assert "deprecated" not in built.log.lower()


def test_license_and_project_urls_ship(built: Built) -> None:
    """LICENSE is in the sdist and the wheel; the metadata has the SPDX license and URLs."""
    assert any(n.endswith("/LICENSE") and n.count("/") == 1 for n in built.sdist.getnames())
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in built.wheel.namelist())
    metadata = built.metadata()
    assert "License-Expression: MIT" in metadata
    urls = {
        line.split(":", 1)[1].split(",")[0].strip()
        for line in metadata.splitlines()
        if line.startswith("Project-URL:")
    }
    assert {"Homepage", "Documentation", "Changelog", "Issues"} <= urls
    assert "Requires-Dist: tenacity" not in metadata.split("Provides-Extra")[0]


def test_wheel_holds_no_importable_examples(built: Built) -> None:
    """The wheel installs one top-level package; the example services inside it are private
    (``dbresilience._examples``, with their schema files, for ``dbresilience demo``)."""
    names = built.wheel.namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"dbresilience"}
    assert not [n for n in names if n.startswith("dbresilience/examples")]
    assert "dbresilience/_examples/interview_service/schema.sql" in names
    assert "dbresilience/py.typed" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = built.wheel.read(entry_points).decode()
    assert "[pytest11]\ndbresilience = dbresilience.pytest_plugin" in text


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dbresilience", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def test_version_and_help_on_every_argument() -> None:
    """`--version` prints the installed version; every argument of every command has help,
    and check's help says DSN falls back to $DATABASE_URL."""
    version = _cli("--version")
    assert version.stdout.strip() == f"dbresilience {importlib.metadata.version('dbresilience')}"
    from dbresilience.__main__ import _parser

    parser = _parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    for name, sub in {"": parser, **commands.choices}.items():
        for action in sub._actions:
            assert action.help, f"{name or 'dbresilience'} {action.dest} has no help"
    check_help = " ".join(_cli("check", "--help").stdout.split())
    assert "default: $DATABASE_URL" in check_help


def test_check_json(pg_dsn: str) -> None:
    """`check --json` prints one JSON object: the server's facts, or the classification of a
    refused connection without the password."""
    ok = _cli("check", "--json", pg_dsn)
    assert ok.returncode == 0
    report = json.loads(ok.stdout)
    assert report["ok"] is True
    assert "statement_timeout" in report["settings"]
    refused = psycopg.conninfo.make_conninfo(
        pg_dsn, port=str(free_port()), password="hunter2-secret"
    )
    env = {**os.environ, "DATABASE_URL": refused}
    failed = _cli("check", "--json", env=env)  # the DSN from $DATABASE_URL
    assert failed.returncode == 1
    report = json.loads(failed.stdout)
    assert (report["ok"], report["code"], report["retryable"]) == (False, "P1001", True)
    assert "hunter2" not in failed.stdout


def test_examples_folder_serves_the_example_apps() -> None:
    """The repository's examples/*.py build the two ASGI apps (nothing connects until they
    are served)."""
    code = (
        "import examples.interview_service as a, examples.slot_generator as b; "
        "print(type(a.app).__name__, type(b.app).__name__)"
    )
    env = {**os.environ, "DATABASE_URL": "host=127.0.0.1 dbname=nothing"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stdout.split() == ["Starlette", "Starlette"], result.stderr[-2000:]
