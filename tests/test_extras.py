"""A core-only install imports nothing optional, and each missing extra fails where the
feature is asked for, with the pip command in the message.

Each check runs in a fresh interpreter whose import system refuses every package that only an
extra brings (a ``sys.meta_path`` finder raising ``ModuleNotFoundError``), as in a virtual
environment where ``pip install dbresilience`` alone was run.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


# distributions whose import name is not their normalised name
_IMPORT_NAMES = {"opentelemetry_api": "opentelemetry", "psycopg_pool": "psycopg_pool"}


def _module(requirement: str) -> str:
    name = re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("-", "_")
    return _IMPORT_NAMES.get(name, name)


def optional_modules() -> list[str]:
    """Every package an extra names that the core dependencies do not."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_module(r) for r in project["dependencies"]}
    extras = {_module(r) for reqs in project["optional-dependencies"].values() for r in reqs}
    return sorted(m for m in extras - core if not m.startswith("types_"))


BLOCKER = """
import sys

class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _Blocked())
"""


def run_blocked(code: str, blocked: list[str]) -> dict[str, str]:
    """Run *code* (which fills ``out``) with *blocked* packages refused; returns ``out``."""
    script = (
        f"BLOCKED = {set(blocked)!r}\n{BLOCKER}\nout = {{}}\n{textwrap.dedent(code)}\n"
        "import json; print(json.dumps(out))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(json.loads(result.stdout.splitlines()[-1]))


def test_core_install_imports_nothing_optional_and_each_extra_names_its_fix() -> None:
    """With every optional package blocked: ``import dbresilience`` works and loads none of them,
    a memory-only cache works, and each feature that needs an extra raises MissingExtra (an
    ImportError) at construction or import, with ``pip install 'dbresilience[extra]'``."""
    blocked = optional_modules()
    assert {"redis", "sqlalchemy", "starlette", "httpx", "tenacity"} <= set(blocked)
    out = run_blocked(
        """
        import contextlib, io
        import dbresilience as dbr
        import dbresilience.faults
        out["loaded"] = ",".join(sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
        out["memory"] = repr(dbr.CredentialCache().get_or_load("k", lambda: 41 + 1))

        def attempt(name, make):
            try:
                make()
            except dbr.MissingExtra as exc:
                assert isinstance(exc, ImportError)
                out[name] = f"{exc} [{exc.extra}]"
            else:
                out[name] = "no error"

        url = "redis://:secret@cache:6379/0"
        attempt("cache", lambda: dbr.CredentialCache(redis_url=url))
        attempt("acache", lambda: dbr.AsyncCredentialCache(redis_url=url))
        attempt("breaker", lambda: dbr.RedisBreakerState(url))
        attempt("abreaker", lambda: dbr.AsyncRedisBreakerState(url))
        attempt("sqlalchemy", lambda: __import__("dbresilience.sqlalchemy"))
        attempt("web", lambda: __import__("dbresilience.web"))
        attempt("tenacity", lambda: __import__("dbresilience.tenacity"))
        from dbresilience.__main__ import main
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            out["demo_status"] = str(main(["demo"]))
        out["demo"] = err.getvalue().strip()
        """,
        blocked,
    )
    assert out.pop("loaded") == ""
    assert out.pop("memory") == "42"
    assert out.pop("demo_status") == "1"
    assert out == {
        "cache": "CredentialCache(redis_url=...) needs redis: pip install 'dbresilience[redis]'"
        " [redis]",
        "acache": "AsyncCredentialCache(redis_url=...) needs redis: "
        "pip install 'dbresilience[redis]' [redis]",
        "breaker": "RedisBreakerState(url=...) needs redis: pip install 'dbresilience[redis]'"
        " [redis]",
        "abreaker": "AsyncRedisBreakerState(url=...) needs redis: "
        "pip install 'dbresilience[redis]' [redis]",
        "sqlalchemy": "dbresilience.sqlalchemy needs sqlalchemy: "
        "pip install 'dbresilience[sqlalchemy]' [sqlalchemy]",
        "web": "dbresilience.web needs starlette: pip install 'dbresilience[web]' [web]",
        "tenacity": "dbresilience.tenacity needs tenacity: "
        "pip install 'dbresilience[tenacity]' [tenacity]",
        "demo": "dbresilience: dbresilience demo needs starlette: pip install 'dbresilience[demo]'",
    }


def test_core_dependencies_are_what_the_core_imports() -> None:
    """Every core dependency is imported by ``import dbresilience`` (none is dead weight:
    tenacity was declared and never imported)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_module(r) for r in project["dependencies"]}
    out = run_blocked(
        """
        import dbresilience
        out["loaded"] = ",".join(sorted({m.split(".")[0] for m in sys.modules}))
        """,
        [],
    )
    assert core <= set(out["loaded"].split(","))
