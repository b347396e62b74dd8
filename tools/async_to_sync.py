#!/usr/bin/env python
"""Generate the sync twins of dbresilience's I/O modules (and their tests) from the async sources.

The asyncio code is the source; the threaded code is derived from it, as psycopg does for
psycopg_pool (``pool_async.py`` -> ``pool.py``). The transform works on the syntax tree
(``ast_comments`` keeps the comments):

- ``async def`` / ``async with`` / ``async for`` lose ``async``; ``await x`` becomes ``x``;
- names are renamed through ``NAMES`` (``AsyncPool`` -> ``Pool``, ``AEvent`` -> ``Event``,
  ``asleep`` -> ``sleep``, ``aclose`` -> ``close``, ...) and modules through ``MODULES``
  (``redis.asyncio`` -> ``redis``); ``Awaitable[T]`` and ``Coroutine[..., T]`` become ``T``;
- ``if True:  # ASYNC`` keeps only its ``else:`` branch: the few places where the twins really
  differ are written once, side by side, in the async source;
- docstrings get the same renames, so they speak of the sync names.

The output is then fixed and formatted by the project's ruff (unused imports dropped, imports
sorted, ``ruff format``), and starts with a header naming its source and this command.

    python tools/async_to_sync.py            # regenerate every sync twin
    python tools/async_to_sync.py --check    # exit 1 if a generated file is stale or was edited
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import ast_comments as ast

ROOT = Path(__file__).resolve().parent.parent

#: (async source, generated sync twin), relative to the repository root
PAIRS: list[tuple[str, str]] = [
    ("src/dbresilience/_pool_async.py", "src/dbresilience/_pool.py"),
    ("src/dbresilience/_queue_async.py", "src/dbresilience/_queue.py"),
    ("src/dbresilience/_cache_async.py", "src/dbresilience/_cache.py"),
    ("src/dbresilience/_breaker_redis_async.py", "src/dbresilience/_breaker_redis.py"),
    ("src/dbresilience/_retry_wrap_async.py", "src/dbresilience/_retry_wrap.py"),
    ("src/dbresilience/_sqlalchemy_async.py", "src/dbresilience/_sqlalchemy.py"),
    ("src/dbresilience/_router_async.py", "src/dbresilience/_router.py"),
    ("src/dbresilience/_journal_redis_async.py", "src/dbresilience/_journal_redis.py"),
    # the tests: the async tests are the source of the sync ones, so both twins are tested alike
    ("tests/test_pool_async.py", "tests/test_pool.py"),
    ("tests/test_cache_async.py", "tests/test_cache.py"),
    ("tests/test_queue_async.py", "tests/test_queue.py"),
    ("tests/test_queue_claim_async.py", "tests/test_queue_claim.py"),
]

NAMES: dict[str, str] = {
    # the library's twins
    "AsyncPool": "Pool",
    "_CoreAsyncPool": "_CorePool",
    "AsyncWriteQueue": "WriteQueue",
    "AsyncCredentialCache": "CredentialCache",
    "AsyncRedisBreakerState": "RedisBreakerState",
    "_AFlight": "_Flight",
    "wrap_async": "wrap",
    "_retry_async": "_retry",
    "create_async_engine": "create_engine",
    "AsyncEngine": "Engine",
    "warm_async_engine": "warm_engine",
    "ACommitHook": "CommitHook",
    "AFailedHook": "FailedHook",
    "AsyncReadRouter": "ReadRouter",
    "AsyncReadSession": "ReadSession",
    "AsyncStreamJournal": "StreamJournal",
    # dbresilience._acompat pairs
    "AEvent": "Event",
    "AWorker": "Worker",
    "ASignal": "Signal",
    "asleep": "sleep",
    "aspawn": "spawn",
    "await_worker": "join_worker",
    "acurrent": "current",
    # tests/acompat.py pairs
    "agather": "gather",
    # psycopg, psycopg_pool, the standard library
    "AsyncConnection": "Connection",
    "AsyncPoolConnection": "PoolConnection",
    "AsyncPoolerCursor": "PoolerCursor",
    "AsyncPoolerServerCursor": "PoolerServerCursor",
    "AsyncCursor": "Cursor",
    "AsyncRowFactory": "RowFactory",
    "AsyncConnectionPool": "ConnectionPool",
    "AsyncIterator": "Iterator",
    "AsyncGenerator": "Generator",
    "AsyncExitStack": "ExitStack",
    "asynccontextmanager": "contextmanager",
    "aclose": "close",
    "aclosing": "closing",
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "__aiter__": "__iter__",
    "__anext__": "__next__",
    "anext": "next",
}

MODULES: dict[str, str] = {
    "dbresilience._pool_async": "dbresilience._pool",
    "dbresilience._journal_redis_async": "dbresilience._journal_redis",
    "sqlalchemy.ext.asyncio": "sqlalchemy",
    "redis.asyncio": "redis",
    "redis.asyncio.retry": "redis.retry",
    "redis.asyncio.client": "redis.client",
}

#: type wrappers that disappear: Awaitable[T] -> T, Coroutine[Any, Any, T] -> T
UNWRAP = {"Awaitable", "Coroutine"}

HEADER = """\
# WARNING: generated from {source} by tools/async_to_sync.py: DO NOT EDIT.
# Change the async source, then run `python tools/async_to_sync.py`.
"""


class AsyncToSync(ast.NodeTransformer):  # type: ignore[misc]
    """Drop ``async``/``await`` and the async branch of ``if True:  # ASYNC`` blocks."""

    def visit_AsyncFunctionDef(self, node: Any) -> Any:
        new = ast.FunctionDef(
            name=node.name,
            args=node.args,
            body=node.body,
            decorator_list=node.decorator_list,
            returns=node.returns,
            type_comment=node.type_comment,
        )
        ast.copy_location(new, node)
        return self.visit(new)

    def visit_AsyncWith(self, node: Any) -> Any:
        new = ast.With(items=node.items, body=node.body, type_comment=node.type_comment)
        ast.copy_location(new, node)
        return self.visit(new)

    def visit_AsyncFor(self, node: Any) -> Any:
        new = ast.For(
            target=node.target,
            iter=node.iter,
            body=node.body,
            orelse=node.orelse,
            type_comment=node.type_comment,
        )
        ast.copy_location(new, node)
        return self.visit(new)

    def visit_comprehension(self, node: Any) -> Any:
        node.is_async = 0
        return self.generic_visit(node)

    def visit_Await(self, node: Any) -> Any:
        return self.visit(node.value)

    def visit_If(self, node: Any) -> Any:
        if _is_async_block(node):
            if not node.orelse:
                return None
            return [self.visit(child) for child in node.orelse]
        return self.generic_visit(node)


class FillEmpty(ast.NodeTransformer):  # type: ignore[misc]
    """A block left with nothing but comments once its ``# ASYNC`` part is gone gets ``pass``."""

    def generic_visit(self, node: Any) -> Any:
        super().generic_visit(node)
        body = getattr(node, "body", None)
        if isinstance(body, list) and all(isinstance(n, ast.Comment) for n in body):
            body.append(ast.Pass())
        return node


def _is_async_block(node: Any) -> bool:
    test = node.test
    if not (isinstance(test, ast.Constant) and test.value is True and node.body):
        return False
    first = node.body[0]
    return isinstance(first, ast.Comment) and first.value.strip() == "# ASYNC"


def _rename_text(text: str) -> str:
    """The renames, applied to prose (docstrings): ``AsyncPool`` -> ``Pool``, ``async with``
    -> ``with``, ``await f()`` -> ``f()``."""
    text = re.sub(r"\basync (with|for|def)\b", r"\1", text)
    text = re.sub(r"\bawait ", "", text)
    for old, new in NAMES.items():
        text = re.sub(rf"(?<!\w){re.escape(old)}\b", new, text)
    return text


class Rename(ast.NodeTransformer):  # type: ignore[misc]
    """Apply ``NAMES`` and ``MODULES``; unwrap ``Awaitable``/``Coroutine`` annotations."""

    def visit_Name(self, node: Any) -> Any:
        node.id = NAMES.get(node.id, node.id)
        return node

    def visit_Constant(self, node: Any) -> Any:
        if isinstance(node.value, str) and node.value in NAMES:  # __all__, getattr names
            node.value = NAMES[node.value]
        return node

    def visit_Attribute(self, node: Any) -> Any:
        self.generic_visit(node)
        dotted = _dotted(node)
        if dotted is not None:
            for old, new in MODULES.items():
                if dotted == old or dotted.startswith(old + "."):
                    return ast.copy_location(_from_dotted(new + dotted[len(old) :]), node)
        node.attr = NAMES.get(node.attr, node.attr)
        return node

    def visit_FunctionDef(self, node: Any) -> Any:
        node.name = NAMES.get(node.name, node.name)
        self._docstring(node)
        return self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: Any) -> Any:
        node.name = NAMES.get(node.name, node.name)
        self._docstring(node)
        return self.generic_visit(node)

    def visit_Module(self, node: Any) -> Any:
        self._docstring(node)
        return self.generic_visit(node)

    def visit_arg(self, node: Any) -> Any:
        node.arg = NAMES.get(node.arg, node.arg)
        return self.generic_visit(node)

    def visit_keyword(self, node: Any) -> Any:
        if node.arg is not None:
            node.arg = NAMES.get(node.arg, node.arg)
        return self.generic_visit(node)

    def visit_Import(self, node: Any) -> Any:
        for alias in node.names:
            alias.name = MODULES.get(alias.name, alias.name)
        return node

    def visit_ImportFrom(self, node: Any) -> Any:
        if node.module is not None:
            node.module = MODULES.get(node.module, node.module)
        for alias in node.names:
            alias.name = NAMES.get(alias.name, alias.name)
            if alias.asname is not None:
                alias.asname = NAMES.get(alias.asname, alias.asname)
        # `from x import A, B` where both now have the same name (AEvent, Event): keep one
        unique: dict[tuple[str, str | None], Any] = {}
        for alias in node.names:
            unique.setdefault((alias.name, alias.asname), alias)
        node.names = list(unique.values())
        return node

    def visit_Subscript(self, node: Any) -> Any:
        self.generic_visit(node)
        base = node.value
        name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", None)
        if name in UNWRAP:
            inner = node.slice
            if isinstance(inner, ast.Tuple):  # Coroutine[Any, Any, T]
                inner = inner.elts[-1]
            return inner
        return node

    @staticmethod
    def _docstring(node: Any) -> None:
        body = [n for n in node.body if not isinstance(n, ast.Comment)]
        if (
            body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            body[0].value.value = _rename_text(body[0].value.value)


def _dotted(node: Any) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _from_dotted(dotted: str) -> Any:
    first, *rest = dotted.split(".")
    node: Any = ast.Name(id=first, ctx=ast.Load())
    for part in rest:
        node = ast.Attribute(value=node, attr=part, ctx=ast.Load())
    return node


class KeepBlanks(ast.NodeTransformer):  # type: ignore[misc]
    """Keep one blank line where the source had some between two statements (as an empty
    comment, which ``unparse`` writes as an empty line)."""

    def generic_visit(self, node: Any) -> Any:
        for field in ("body", "orelse", "finalbody"):
            block = getattr(node, field, None)
            if isinstance(block, list) and block:
                setattr(node, field, self._blanks(block))
        return super().generic_visit(node)

    @staticmethod
    def _blanks(body: list[Any]) -> list[Any]:
        out = [body[0]]
        for before, after in itertools.pairwise(body):
            end = getattr(before, "end_lineno", None)
            start = getattr(after, "lineno", None)
            if end is not None and start is not None and start - end > 1:
                out.append(ast.Comment(value="", inline=False))
            out.append(after)
        return out


def convert(source: str) -> str:
    """The sync twin of one async module's text, before formatting."""
    tree = ast.parse(source)
    tree = KeepBlanks().visit(tree)
    tree = AsyncToSync().visit(tree)
    tree = FillEmpty().visit(tree)
    tree = Rename().visit(tree)
    ast.fix_missing_locations(tree)
    return str(ast.unparse(tree)) + "\n"


def _ruff(args: list[str], text: str, filename: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *args, "--stdin-filename", filename, "-"],
        input=text,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if result.returncode not in (0, 1) or (result.returncode == 1 and "format" in args):
        raise RuntimeError(f"ruff {' '.join(args)} failed on {filename}:\n{result.stderr}")
    return result.stdout


def generate(source_path: str, target_path: str) -> str:
    """The full text of the generated twin of *source_path* (header, fixed, formatted)."""
    text = convert((ROOT / source_path).read_text())
    header = HEADER.format(source=Path(source_path).name)
    text = header + text
    fix = ["check", "--fix", "--select", "F401,I001,UP034", "--quiet", "--exit-zero"]
    text = _ruff(fix, text, target_path)
    return _ruff(["format"], text, target_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 when a generated file differs from what its source gives",
    )
    parser.add_argument(
        "files", nargs="*", help="async sources to convert (default: every pair in PAIRS)"
    )
    opts = parser.parse_args(argv)
    pairs = [p for p in PAIRS if not opts.files or p[0] in opts.files]
    stale = 0
    for source, target in pairs:
        expected = generate(source, target)
        path = ROOT / target
        current = path.read_text() if path.exists() else ""
        if current == expected:
            continue
        if opts.check:
            stale += 1
            diff = difflib.unified_diff(
                current.splitlines(keepends=True),
                expected.splitlines(keepends=True),
                fromfile=f"{target} (on disk)",
                tofile=f"{target} (generated from {source})",
                n=1,
            )
            sys.stdout.writelines(list(diff)[:60])
            print(f"stale or edited by hand: {target}; run `python tools/async_to_sync.py`")
        else:
            path.write_text(expected)
            print(f"wrote {target}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
