"""The public surface: __all__ complete and sorted, docstrings, lazy imports, the exceptions."""

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


def _exception_classes(namespace: dict[str, object]) -> dict[str, type[BaseException]]:
    return {
        name: value
        for name, value in namespace.items()
        if isinstance(value, type) and issubclass(value, BaseException)
    }


def test_every_exported_exception_lives_in_errors_under_the_root() -> None:
    """Every exception dbr exports is defined in _errors, is a DBResilienceError, shows as dbr.X."""
    from dbresilience import _errors

    exceptions = _exception_classes({name: getattr(dbr, name) for name in dbr.__all__})
    assert set(exceptions) == set(_errors.__all__)
    for name, cls in exceptions.items():
        assert getattr(_errors, name) is cls, name
        assert issubclass(cls, dbr.DBResilienceError), name
        assert cls.__module__ == "dbresilience", name
        assert repr(cls) == f"<class 'dbresilience.{name}'>"


def test_no_module_defines_an_exception_outside_errors() -> None:
    """Every exception class of the package found in any of its modules is one of _errors'."""
    import importlib
    import pkgutil

    from dbresilience import _errors

    ours = {getattr(_errors, name) for name in _errors.__all__}
    for info in pkgutil.walk_packages(dbr.__path__, "dbresilience."):
        if info.name.startswith("dbresilience._examples") or info.name.endswith("__main__"):
            continue  # examples are application code; __main__ runs the command
        module = importlib.import_module(info.name)
        for name, cls in _exception_classes(vars(module)).items():
            if cls.__module__.startswith("dbresilience"):
                assert cls in ours, f"{info.name}.{name} is defined outside _errors"


def test_exceptions_are_still_importable_from_their_old_modules() -> None:
    """QueueFull, QueueClosed (_queue_base) and the upstream errors (web) are the same classes."""
    from dbresilience import _queue_base, web

    assert _queue_base.QueueFull is dbr.QueueFull
    assert _queue_base.QueueClosed is dbr.QueueClosed
    assert web.UpstreamTimeout is dbr.UpstreamTimeout
    assert web.UpstreamError is dbr.UpstreamError


def test_exceptions_keep_their_standard_parents() -> None:
    """Existing except clauses for the standard parents still catch the library's errors."""
    import queue

    import psycopg
    import psycopg_pool

    assert issubclass(dbr.QueryTimeout, TimeoutError)
    assert issubclass(dbr.QueryTimeout, psycopg.OperationalError)
    assert issubclass(dbr.AcquireTimeout, psycopg_pool.PoolTimeout)
    assert issubclass(dbr.DatabaseUnavailable, psycopg.OperationalError)
    assert issubclass(dbr.CommitUnknown, psycopg.OperationalError)
    assert issubclass(dbr.QueueFull, queue.Full)
    assert issubclass(dbr.QueueClosed, RuntimeError)
    assert issubclass(dbr.UpstreamTimeout, TimeoutError)
