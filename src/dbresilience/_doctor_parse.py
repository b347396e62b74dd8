"""The doctor's pure parts: reading PostgreSQL's expression trees and normalised statement texts.

No I/O. Everything here reads text the server produced (``pg_policy.polqual`` node trees,
``pg_stat_statements.query``) and must neither crash nor take more than linear time on any of it:
the doctor runs against databases we do not control, and a statement text is whatever a client
sent. Every function returns "nothing found" on text it does not understand.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Union

# --- identifiers ------------------------------------------------------------------------------


def quote_ident(name: str) -> str:
    """*name* as an SQL identifier: always double-quoted, inner quotes doubled (never unsafe)."""
    return '"' + name.replace("\x00", "").replace('"', '""') + '"'


def qualified(schema: str, name: str) -> str:
    """``"schema"."name"``."""
    return f"{quote_ident(schema)}.{quote_ident(name)}"


def index_name(table: str, columns: list[str], suffix: str = "idx") -> str:
    """``<table>_<col>_<col>_idx``, cut to PostgreSQL's 63 bytes with a short hash kept unique."""
    name = "_".join([table, *columns, suffix])
    if len(name.encode()) <= 63:
        return name
    digest = hashlib.sha1(name.encode(), usedforsecurity=False).hexdigest()[:8]
    head = name.encode()[: 63 - 9].decode(errors="ignore")
    return f"{head}_{digest}"


# --- expression trees (pg_node_tree text) -----------------------------------------------------

Node = Union["TreeNode", list["Node"], str, None]


@dataclass
class TreeNode:
    """One ``{TYPE :field value ...}`` of a ``pg_node_tree``."""

    type: str
    fields: dict[str, Node] = field(default_factory=dict)


_MAX_TREE = 2_000_000  # characters; policies are small, this only bounds hostile input


def _tokens(text: str) -> Iterator[str]:
    i, n = 0, min(len(text), _MAX_TREE)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in "{}()":
            yield ch
            i += 1
        elif ch == "[":  # a Const's datum bytes: one opaque token
            end = text.find("]", i)
            end = n if end < 0 else end + 1
            yield text[i:end]
            i = end
        else:
            out: list[str] = []
            while i < n and not text[i].isspace() and text[i] not in "{}()":
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                out.append(text[i])
                i += 1
            yield "".join(out)


def parse_node_tree(text: str) -> Node:
    """The tree of a ``pg_node_tree`` text (``pg_policy.polqual``), or ``None`` if unreadable."""
    tokens = list(_tokens(text))
    pos = 0

    def value() -> Node:
        nonlocal pos
        if pos >= len(tokens):
            raise ValueError("truncated")
        tok = tokens[pos]
        pos += 1
        if tok == "{":
            node = TreeNode(tokens[pos] if pos < len(tokens) else "")
            pos += 1
            while pos < len(tokens) and tokens[pos] != "}":
                key = tokens[pos]
                pos += 1
                if not key.startswith(":"):
                    continue
                if pos < len(tokens) and (tokens[pos] == "}" or tokens[pos].startswith(":")):
                    node.fields[key[1:]] = None
                    continue
                node.fields[key[1:]] = value()
            pos += 1
            return node
        if tok == "(":
            items: list[Node] = []
            while pos < len(tokens) and tokens[pos] != ")":
                items.append(value())
            pos += 1
            return items
        if tok in ("<>", ")", "}"):
            return None
        return tok

    # an iterative parser would be longer; node trees nest a few dozen levels, and a hostile
    # depth only raises RecursionError, which is caught below
    try:
        return value()
    except (ValueError, RecursionError):
        return None


def walk(node: Node) -> Iterator[TreeNode]:
    """Every :class:`TreeNode` under *node*, *node* included, depth first."""
    stack: list[Node] = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, TreeNode):
            yield current
            stack.extend(reversed(list(current.fields.values())))
        elif isinstance(current, list):
            stack.extend(reversed(current))


def _int(value: Node) -> int | None:
    return int(value) if isinstance(value, str) and value.lstrip("-").isdigit() else None


@dataclass(frozen=True)
class PolicyShape:
    """What a policy expression does per row: its subqueries and its function calls."""

    subqueries: int = 0  # sublinks reading a table
    correlated: int = 0  # of which refer to the policy's own row
    row_functions: tuple[int, ...] = ()  # funcids called per row with row columns as arguments
    unwrapped: tuple[int, ...] = ()  # funcids called per row on no row column: wrap in (select)


def _refers_to_outer_row(node: Node, depth: int) -> bool:
    """Whether a Var inside *node* (a subquery *depth* levels down) reads the policy's row."""
    for sub in walk(node):
        if sub.type == "VAR" and _int(sub.fields.get("varlevelsup")) == depth:
            return True
    return False


def policy_shape(tree: Node) -> PolicyShape:
    """Subqueries and per-row function calls of a policy's ``USING``/``WITH CHECK`` tree."""
    subqueries = correlated = 0
    row_functions: list[int] = []
    unwrapped: list[int] = []

    def visit(node: Node, inside_select: bool) -> None:
        nonlocal subqueries, correlated
        if isinstance(node, list):
            for item in node:
                visit(item, inside_select)
            return
        if not isinstance(node, TreeNode):
            return
        if node.type == "SUBLINK":
            query = node.fields.get("subselect")
            reads_table = isinstance(query, TreeNode) and bool(query.fields.get("rtable"))
            if reads_table:
                subqueries += 1
                if _refers_to_outer_row(query, 1):
                    correlated += 1
            visit(node.fields.get("testexpr"), inside_select)
            # (select f()) without a FROM is the wrapper that makes f() an InitPlan run once
            visit(query, True)
            return
        if node.type == "FUNCEXPR" and not inside_select:
            funcid = _int(node.fields.get("funcid"))
            args = node.fields.get("args")
            if funcid is not None:
                reads_row = any(
                    v.type == "VAR" and _int(v.fields.get("varlevelsup")) == 0 for v in walk(args)
                )
                (row_functions if reads_row else unwrapped).append(funcid)
        for value in node.fields.values():
            visit(value, inside_select)

    try:
        visit(tree, False)
    except RecursionError:  # a tree nested past Python's limit: say nothing rather than crash
        return PolicyShape()
    return PolicyShape(subqueries, correlated, tuple(row_functions), tuple(unwrapped))


# --- normalised statements (pg_stat_statements.query) -----------------------------------------

_TOKEN = re.compile(
    r'\s+|--[^\n]{0,10000}|/\*.{0,10000}?\*/|"(?:[^"]|""){0,200}"|\'(?:[^\']|\'\'){0,10000}\''
    r"|\$\d{1,6}|[A-Za-z_][A-Za-z0-9_$]{0,200}|\d[\d.eE]{0,40}|<=|>=|<>|!=|::|\S",
    re.DOTALL,
)
_MAX_STATEMENT = 100_000


def _sql_tokens(text: str) -> list[str]:
    out = []
    for match in _TOKEN.finditer(text[:_MAX_STATEMENT]):
        tok = match.group(0)
        if tok[0].isspace() or tok.startswith(("--", "/*")):
            continue
        out.append(tok)
    return out


def _name(tok: str) -> str | None:
    if tok.startswith('"') and tok.endswith('"') and len(tok) >= 2:
        return tok[1:-1].replace('""', '"')
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*", tok):
        return tok.lower()
    return None


_CLAUSE_END = {"order", "group", "limit", "offset", "returning", "for", "having", "union",
               "window", "fetch", "except", "intersect"}  # fmt: skip
_NOT_ALIAS = _CLAUSE_END | {"where", "join", "inner", "left", "right", "full", "cross", "on",
                            "natural", "using", "set", "tablesample"}  # fmt: skip
_COMPARE = {"=", "<", ">", "<=", ">=", "in", "between", "is", "like", "ilike"}


@dataclass(frozen=True)
class StatementShape:
    """A single-table statement: its table, its filter columns, and whether it reads ``*``."""

    schema: str | None
    table: str
    equal: tuple[str, ...]  # columns compared with =, IN or IS
    ranged: tuple[str, ...]  # columns compared with <, >, BETWEEN, LIKE
    select_star: bool


def statement_shape(text: str) -> StatementShape | None:
    """The table and filter columns of a one-table ``SELECT``/``UPDATE``/``DELETE``, or ``None``.

    Best effort on the normalised text: a statement with a join, a subquery in its ``FROM``, a
    top-level ``OR`` or anything not understood gives ``None`` or no columns.
    """
    toks = _sql_tokens(text)
    low = [t.lower() for t in toks]
    if not low or low[0] not in ("select", "update", "delete"):
        return None
    if low.count("select") > 1 or "join" in low:
        return None
    if low[0] == "update":
        start = 1
    elif "from" in low:
        start = low.index("from") + 1
    else:
        return None
    if low[0] == "update" and start < len(low) and low[start] == "only":
        start += 1
    if start >= len(toks):
        return None
    first = _name(toks[start])
    if first is None:
        return None
    schema, table, i = None, first, start + 1
    if i + 1 < len(toks) and toks[i] == "." and _name(toks[i + 1]):
        schema, table, i = first, _name(toks[i + 1]) or "", i + 2
    alias = None
    if i < len(low) and low[i] == "as":
        i += 1
    if i < len(low) and low[i] not in _NOT_ALIAS and _name(toks[i]) and toks[i] != ",":
        alias = _name(toks[i])
        i += 1
    if i < len(toks) and toks[i] == ",":
        return None  # FROM a, b
    star = low[0] == "select" and (
        (len(low) > 1 and low[1] == "*")
        or any(
            low[k] == "." and low[k + 1] == "*" and k > 0 for k in range(1, min(len(low) - 1, 400))
        )
    )
    owners = {table} | ({alias} if alias else set())
    if schema:
        owners.add(schema)
    equal: list[str] = []
    ranged: list[str] = []
    if "where" in low[i:]:
        w = low.index("where", i) + 1
        depth = 0
        conds: list[list[int]] = [[]]
        for k in range(w, len(low)):
            t = low[k]
            if t == "(":
                depth += 1
            elif t == ")":
                depth -= 1
                if depth < 0:
                    break
            if depth == 0 and t in _CLAUSE_END:
                break
            if depth == 0 and t == "or":
                return StatementShape(schema, table, (), (), star)
            if depth == 0 and t == "and" and not _in_between(low, conds[-1]):
                conds.append([])
                continue
            conds[-1].append(k)
        for cond in conds:
            column, op = _condition(toks, low, cond, owners)
            if column is None:
                continue
            target = equal if op in ("=", "in", "is") else ranged
            if column not in equal and column not in ranged:
                target.append(column)
    return StatementShape(schema, table, tuple(equal), tuple(ranged), star)


def _in_between(low: list[str], cond: list[int]) -> bool:
    """An ``AND`` right after ``x BETWEEN a`` belongs to the BETWEEN."""
    words = [low[k] for k in cond]
    return "between" in words and words.count("and") == 0 and words[-1] != "between"


def _condition(
    toks: list[str], low: list[str], cond: list[int], owners: set[str]
) -> tuple[str | None, str | None]:
    """``column op …`` → (column, op); the column may be qualified by the table or its alias."""
    if not cond:
        return None, None
    k = 0
    while k < len(cond) and low[cond[k]] in ("(", "not"):
        k += 1
    parts = [toks[j] for j in cond[k:]]
    lows = [low[j] for j in cond[k:]]
    if len(parts) >= 3 and parts[1] == "." and _name(parts[0]) in owners:
        parts, lows = parts[2:], lows[2:]
    if len(parts) < 2:
        return None, None
    column = _name(parts[0])
    if column is None or lows[0] in ("not", "exists", "select", "true", "false"):
        return None, None
    op = lows[1]
    if op == "not" and len(lows) > 2:
        op = lows[2]
    if op not in _COMPARE:
        return None, None
    return column, op
