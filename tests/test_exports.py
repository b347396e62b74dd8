"""The public surface: __all__ complete and sorted, docstrings, lazy optional imports."""

from __future__ import annotations

import subprocess
import sys
import types

import dbresilience as dbr


def test_all_is_sorted_and_complete() -> None:
    """__all__ is sorted and lists every public name the package defines."""
    assert dbr.__all__ == sorted(dbr.__all__)
    public = {
        name
        for name, value in vars(dbr).items()
        if not name.startswith("_")
        and name != "annotations"
        and not isinstance(value, types.ModuleType)  # submodules: faults, sqlalchemy
    }
    assert public == set(dbr.__all__)


def test_every_public_name_has_a_docstring() -> None:
    """Every exported class and function says what it promises."""
    for name in dbr.__all__:
        obj = getattr(dbr, name)
        assert (obj.__doc__ or "").strip(), name


def test_import_needs_only_the_core_dependencies() -> None:
    """import dbresilience imports none of redis, SQLAlchemy, pgserver, Starlette or httpx."""
    code = (
        "import sys, dbresilience, dbresilience.faults; "
        "print(sorted(m for m in ('redis', 'sqlalchemy', 'pgserver', 'starlette', 'httpx') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_classification_doc_lists_every_kind() -> None:
    """docs/classification.md has a row for every ErrorKind with its code."""
    from pathlib import Path

    from dbresilience._classify import _SPECS

    doc = (Path(__file__).parent.parent / "docs" / "classification.md").read_text()
    for kind, spec in _SPECS.items():
        assert f"| {kind.name} | {spec.code} |" in doc, kind
