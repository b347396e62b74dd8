"""What the sync and async write queues share and that does no I/O.

Settings, the bounded buffer of submitted writes, batching (runs of one statement shape, COPY
for plain inserts), the triage of failures (retry the batch, or find and set aside the one bad
write), the ledger's SQL and the counters of ``stats()``.
"""

from __future__ import annotations

import collections
import datetime
import decimal
import functools
import hashlib
import itertools
import json
import operator
import os
import re
import secrets
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NamedTuple

import psycopg
from psycopg import sql

from dbresilience import _instrument
from dbresilience._classify import ErrorKind, classify
from dbresilience._errors import (
    DBResilienceError,
    QueueClosed,
    QueueFull,
    QueueStalled,
    WriteTooLarge,
)
from dbresilience._events import logger
from dbresilience._journal import Journal, Record
from dbresilience._lifecycle import Lifecycle, ResourceState
from dbresilience._serialize import Serializer, check_serializer
from dbresilience._validate import (
    callable_or_none,
    instance_or_none,
    non_empty_str,
    one_of,
    positive_int,
    seconds,
)

# QueueFull and QueueClosed are defined in _errors and still importable from here.
__all__ = ["FailedWrite", "QueueBase", "QueueClosed", "QueueFull"]

_OPEN = ResourceState.OPEN

# SQLSTATE classes in which the database judges the write itself: cardinality (21), data (22),
# integrity constraints (23), triggered data change (27), routine and external-routine
# exceptions (2F, 38, 39: a trigger or function refused it), syntax or access rule (42), WITH
# CHECK OPTION (44), program limits (54), feature not supported (0A), PL/pgSQL RAISE (P0). Only
# these set a write aside; anything else (the database unavailable, a lost connection, a timeout,
# the pool closed, the library's own errors, an error nobody classified) retries the batch.
_VERDICT_CLASSES = frozenset(
    {"0A", "21", "22", "23", "27", "2F", "38", "39", "42", "44", "54", "P0"}
)

# Failures that may be the write's own fault or the database's: a statement timeout (57014) or a
# lock never granted (55P03). Retried; after POISON_AFTER in a row, the batch is bisected and a
# single write that still fails this way while the database answers a probe is set aside.
_TIMEOUT_KINDS = frozenset({ErrorKind.QUERY_TIMEOUT, ErrorKind.LOCK_NOT_AVAILABLE})
POISON_AFTER = 3
_STALLED_AFTER = 3  # worker failures in a row, without a batch done, before submit refuses


class LedgerSQL(NamedTuple):
    """The ledger's statements, composed once per queue."""

    create: sql.Composed
    claim: sql.Composed
    insert: sql.Composed
    applied: sql.Composed
    prune: sql.Composed


# INSERT INTO table (a, b) VALUES (%s, %s) and nothing else: COPY gives the same result.
_PLAIN_INSERT = re.compile(
    r"""^\s*insert\s+into\s+
        (?P<table>(?:"[^"]+"|[a-z_][a-z0-9_$]*)(?:\.(?:"[^"]+"|[a-z_][a-z0-9_$]*))?)
        \s*\((?P<cols>[^()]*)\)\s*
        values\s*\(\s*(?P<marks>%s(?:\s*,\s*%s)*)\s*\)\s*;?\s*$""",
    re.IGNORECASE | re.VERBOSE,
)
COPY_MIN_ROWS = 64  # below this, executemany's pipeline is as fast


# INSERT INTO table (a, b) VALUES (%s, %s) [ON CONFLICT … DO NOTHING]: a run of these becomes
# one INSERT … SELECT * FROM unnest(…) (see fast_insert). No comments, no other placeholders.
_FAST_INSERT = re.compile(
    r"""^\s*insert\s+into\s+
        (?P<table>(?:"[^"]+"|[a-z_][a-z0-9_$]*)(?:\.(?:"[^"]+"|[a-z_][a-z0-9_$]*))?)
        \s*\((?P<cols>\s*(?:"[^"]+"|[a-z_][a-z0-9_$]*)(?:\s*,\s*(?:"[^"]+"|[a-z_][a-z0-9_$]*))*)\s*\)
        \s*values\s*\(\s*(?P<marks>%s(?:\s*,\s*%s)*)\s*\)
        (?P<tail>\s+on\s+conflict\b[^%;]*?\bdo\s+nothing)?\s*;?\s*$""",
    # ASCII: the server folds only A-Z in an unquoted name; Unicode [a-z] matched a KELVIN
    # SIGN, which .lower() made "k", another column than the one the server writes
    re.IGNORECASE | re.VERBOSE | re.ASCII,
)
FAST_MIN_ROWS = 2  # a lone write goes as itself: its verdict is always one INSERT's own

# The catalog facts the rewrite depends on, read once per statement (see fast_shape):
# the relation (a plain table, no INSERT rule, no INSERT trigger other than BEFORE … FOR EACH
# ROW, no foreign key to itself) and, per named column, the facts to choose its array type
# (none for an array, nor for a composite: unnest of several arrays expands one into its
# fields, and the rewrite failed, bisected down to one INSERT per write, every batch).
_REWRITABLE = """c.relkind = 'r' AND NOT c.relhasrules
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger g
                       WHERE g.tgrelid = c.oid AND NOT g.tgisinternal
                         AND g.tgtype & 4 <> 0 AND g.tgtype & 3 <> 3)
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k
                       WHERE k.conrelid = c.oid AND k.contype = 'f' AND k.confrelid = c.oid)"""
SHAPE_SQL = """
SELECT {rewritable},
       (SELECT array_agg(json_build_array(
                   a.attname,
                   t.typtype = 'b' AND t.oid IN (20, 21, 23, 700, 701, 1700, 25, 1042, 1043),
                   CASE WHEN t.typarray <> 0 AND t.typcategory NOT IN ('A', 'C')
                        THEN quote_ident(n.nspname) || '.' || quote_ident(at.typname) END,
                   t.typdelim::text,
                   quote_literal(a.attname),
                   a.atttypid::int8,
                   at.oid::int8))
          FROM pg_catalog.pg_attribute a
          JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
          LEFT JOIN pg_catalog.pg_type at ON at.oid = t.typarray
          LEFT JOIN pg_catalog.pg_namespace n ON n.oid = at.typnamespace
          WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
       c.oid::int8
  FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass(%s)
""".replace("{rewritable}", _REWRITABLE)

# Every rewrite checks, in its own statement (one index look-up in the catalog, evaluated
# once), that the table is still what its shape was read from: the same relation (also as the
# statement's name resolves now), still rewritable, each named column of the same type.
# Otherwise it fails with this marker in a 22P02 (a cast of the marker to boolean: SQL has no
# RAISE outside PL/pgSQL), which the queue takes as "read the shapes again and retry", never
# as the write's verdict. Before it, a table altered under a cached shape (date -> timestamp)
# was written through the old type, silently, for up to a minute.
# The marker carries a token of this process: a write's own 22P02 quotes its value, and a value
# reading "dbresilience-shape-guard" was taken for the guard, never a verdict, and retried for
# ever, holding back every write after it.
SHAPE_GUARD_MARKER = "dbresilience-shape-guard"
_GUARD_TOKEN = f"{SHAPE_GUARD_MARKER} {secrets.token_hex(8)}"
_SHAPE_GUARD = """ WHERE (SELECT CASE WHEN coalesce({rewritable}
         AND c.oid = pg_catalog.to_regclass({name}){types}
         AND (SELECT count(*) FROM pg_catalog.pg_attribute a
              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                AND (a.attname, a.atttypid) IN ({columns})) = {n}, false)
    THEN true ELSE ('{token} ' || coalesce(c.oid::text, '-'))::bool END
  FROM (SELECT 1) AS one LEFT JOIN pg_catalog.pg_class c ON c.oid = {oid})"""


def _literal(text: str) -> str:
    """*text* as a string literal read alike whatever ``standard_conforming_strings`` (as the
    server's quote_literal writes it), a ``%`` doubled: the statement goes through psycopg."""
    quoted = "'" + text.replace("'", "''").replace("%", "%%") + "'"
    return "E" + quoted.replace("\\", "\\\\") if "\\" in text else quoted


def is_shape_changed(exc: BaseException) -> bool:
    """True when *exc* is a rewrite's shape guard failing: the table changed since its shape
    was read (retried with the shapes read again; never the write's verdict)."""
    if getattr(exc, "sqlstate", None) != "22P02":
        return False
    diag = getattr(exc, "diag", None)
    message = getattr(diag, "message_primary", None) or ""
    return _GUARD_TOKEN in message


class ColumnShape(NamedTuple):
    """What the rewrite needs to know about one target column."""

    widen_ints: bool  # int2/int4/int8 parameters all store the same here (a numeric or text type)
    text_array: str | None  # the column type's own array type, to parse str values as it would
    delim: str  # that type's array delimiter


class FastShape(NamedTuple):
    """A statement that can be rewritten: the rewrite's head and tail, and its columns."""

    head: str  # INSERT INTO t (a, b) SELECT * FROM unnest(
    tail: str  # ) ON CONFLICT … DO NOTHING
    columns: tuple[ColumnShape, ...]


def fast_target(statement: str) -> tuple[str, list[str], str, str] | None:
    """``(table, columns, column list as written, ON CONFLICT tail)`` when *statement* is a
    plain single-row ``INSERT INTO t (cols) VALUES (%s, …)``, else None."""
    m = _FAST_INSERT.match(statement)
    if m is None or "%" in m.group("table") or "%" in m.group("cols"):
        return None  # %% in a name is psycopg's %: another name than the catalog would read
    written = [c.strip() for c in m.group("cols").split(",")]
    if len(written) != m.group("marks").count("%s") or len(set(written)) != len(written):
        return None
    names = [c[1:-1] if c.startswith('"') else c.lower() for c in written]
    return m.group("table"), names, ", ".join(written), m.group("tail") or ""


def fast_shape(statement: str, row: Any) -> FastShape | None:
    """The rewrite of *statement* given its catalog row (``SHAPE_SQL``), or None."""
    target = fast_target(statement)
    if target is None or row is None or not row[0] or not row[1]:
        return None
    table, names, written, tail = target
    by_name = {item[0]: item for item in row[1]}
    columns = []
    checks = []
    types: dict[str, int] = {}
    for name in names:
        item = by_name.get(name)
        if item is None or len(item) < 7 or len(row) < 3:
            return None
        array = None if item[2] is None else str(item[2]).replace("%", "%%")
        columns.append(ColumnShape(bool(item[1]), array, item[3] or ","))
        if array is not None:  # cast to by name: a type renamed, another made of its name
            types[str(item[2])] = int(item[6])
        # the server's own quote_literal; a % doubled: the statement goes through psycopg
        literal = str(item[4]).replace("%", "%%")
        checks.append(f"({literal}, {int(item[5])})")
    # the table as the statement names it, resolved again: a table of that name made since
    # in an earlier schema of the search_path is another relation; and each array type the
    # strings are cast to, by name, still the one read
    guard = _SHAPE_GUARD.format(
        rewritable=_REWRITABLE,
        name=_literal(table),
        types="".join(
            f"\n         AND pg_catalog.to_regtype({_literal(cast)}) = {oid}"
            for cast, oid in types.items()
        ),
        columns=", ".join(checks),
        n=len(checks),
        token=_GUARD_TOKEN,
        oid=int(row[2]),
    )
    return FastShape(
        # the caller's own table, columns and ON CONFLICT clause, as matched: no data
        f"INSERT INTO {table} ({written}) SELECT * FROM unnest(",  # noqa: S608
        f"){guard}{tail}",
        tuple(columns),
    )


_NONE = type(None)
_INT_BANDS = (("int2", 1 << 15), ("int4", 1 << 31), ("int8", 1 << 63))
# Python types psycopg sends as one fixed PostgreSQL type whatever the value: a column of them
# goes as an array of that type, and the INSERT casts each element as it would the parameter.
_FIXED = {
    bool: "pg_catalog._bool",
    float: "pg_catalog._float8",
    decimal.Decimal: "pg_catalog._numeric",
    bytes: "pg_catalog._bytea",
    uuid.UUID: "pg_catalog._uuid",
    datetime.date: "pg_catalog._date",
    datetime.timedelta: "pg_catalog._interval",
}


def _int_array(values: Sequence[Any], column: ColumnShape) -> str | None:
    """The array type for a column of ints: the one psycopg gives every value (int2, int4 or
    int8 by size), or int8 where the column stores any of them alike; None if they differ."""
    present = [v for v in values if v is not None] if None in values else values
    low, high = min(present), max(present)
    bound = max(-low, high + 1)
    if column.widen_ints:
        return "pg_catalog._int8" if bound <= 1 << 63 else None
    lower = 0
    for name, top in _INT_BANDS:
        if bound <= top:
            # every value must be in this band, not a smaller one: psycopg sends 5 as int2
            small = min(abs(v + (v < 0)) for v in present)
            return f"pg_catalog._{name}" if small >= lower else None
        lower = top
    return None


def _ints(values: Sequence[Any]) -> str:
    return ",".join("NULL" if v is None else str(v) for v in values)


def text_array(values: Sequence[Any], delim: str = ",") -> str | None:
    """*values* (str or None) as an array literal, each element parsed by the column type's
    input function as the one-row INSERT's untyped parameter would be; None if a value
    cannot be sent (a NUL character: psycopg refuses it, and so must the write)."""
    if None in values:
        parts = [
            "NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
            for v in values
        ]
        text = delim.join(parts)
        return None if "\x00" in text else "{" + text + "}"
    joined = "\x00".join(values)
    if joined.count("\x00") != len(values) - 1:
        return None
    escaped = joined.replace("\\", "\\\\").replace('"', '\\"')
    return '{"' + escaped.replace("\x00", '"' + delim + '"') + '"}'


def fast_insert(shape: FastShape, params: Sequence[Any]) -> tuple[str, list[Any]] | None:
    """One ``INSERT … SELECT * FROM unnest(…)`` for a run of *params* of one rewritable
    statement, storing what one INSERT per row would (each column as an array of the type its
    parameters have in that INSERT), or None when a column's values do not allow it (mixed
    Python types, lists, dicts, wrappers: the run goes through executemany)."""
    width = len(shape.columns)
    if not set(map(type, params)) <= {list, tuple} or set(map(len, params)) != {width}:
        return None  # a dict from a journal, a short row: executemany says what is wrong
    casts: list[str] = []
    arrays: list[Any] = []
    for column, values in zip(shape.columns, zip(*params, strict=True), strict=True):
        kinds = set(map(type, values))
        kinds.discard(_NONE)
        if not kinds or kinds == {str}:  # untyped in the INSERT: the column's type reads them
            if column.text_array is None:
                return None
            literal = text_array(values, column.delim)
            if literal is None:
                return None
            casts.append(f"%s::{column.text_array}")  # an untyped literal, as in the INSERT
            arrays.append(literal)
            continue
        if len(kinds) != 1:
            return None
        (kind,) = kinds
        if kind is int:
            array = _int_array(values, column)
            if array is not None:  # decimal digits: exact, and built in C, unlike a binary list
                casts.append(f"%s::{array}")
                text = ",".join(map(str, values)) if None not in values else _ints(values)
                arrays.append("{" + text + "}")
                continue
        elif kind is datetime.datetime or kind is datetime.time:
            aware = {v.tzinfo is not None for v in values if v is not None}
            if len(aware) != 1:
                return None
            zone = "tz" if aware.pop() else ""
            array = f"pg_catalog._{'timestamp' if kind is datetime.datetime else 'time'}{zone}"
        else:
            array = _FIXED.get(kind)
        if array is None:
            return None
        casts.append(f"%b::{array}")  # binary
        arrays.append(list(values))
    return shape.head + ", ".join(casts) + shape.tail, arrays


@dataclass(frozen=True, slots=True)
class FailedWrite:
    """A write that can never succeed, set aside with its error (``queue.failed_writes()``)."""

    sql: str
    params: Any
    key: str | None
    error: str
    code: str


def copy_statement(statement: str, n_params: int) -> str | None:
    """``COPY table (cols) FROM STDIN`` when *statement* is a plain parameterised INSERT."""
    m = _PLAIN_INSERT.match(statement)
    if m is None:
        return None
    cols = [c.strip() for c in m.group("cols").split(",")]
    if len(cols) != m.group("marks").count("%s") or len(cols) != n_params or not all(cols):
        return None
    return f"COPY {m.group('table')} ({', '.join(cols)}) FROM STDIN"


_SQL = operator.itemgetter(1)  # Record.sql
_PARAMS = operator.itemgetter(2)  # Record.params
_SEQ = operator.itemgetter(0)  # Record.seq
_KEY = operator.itemgetter(3)  # Record.key


def keyed_count(batch: Sequence[Record]) -> int:
    """How many writes of *batch* carry an idempotency key (a C loop: 5000 a batch)."""
    return len(batch) - list(map(_KEY, batch)).count(None)


def runs(batch: Sequence[Record]) -> Iterator[tuple[str, list[Any]]]:
    """Consecutive writes of one statement, with their parameters (order kept)."""
    for statement, group in itertools.groupby(batch, key=_SQL):  # C loops: 5000 a batch
        yield statement, list(map(_PARAMS, group))


class Ahead(NamedTuple):
    """A batch's Python half, prepared while the server works on the batch before it (see
    ``_look_ahead``): its claims and, per run, the unnest rewrite (or None: executemany)."""

    first: Record  # the batch it was made for: the same records, by identity
    last: Record
    size: int
    claims: dict[tuple[str, str], str]
    arrays: tuple[Any, Any, Any] | None
    keyed: int
    work: list[tuple[str, list[Any]]]
    fast: list[tuple[str, list[Any]] | None]
    shapes: list[FastShape | None]  # the shapes the rewrites were made from


def _claim_order(item: tuple[tuple[str, str], str]) -> tuple[str, str]:
    """Sort key of a claim: its key, then its scope (see QueueBase._claim_arrays)."""
    (scope, key), _ = item
    return key, scope


def is_bad_write(exc: BaseException) -> bool:
    """True when *exc* is the database's (or the driver's) verdict on the write itself: bad SQL
    or data, a constraint, a trigger's refusal. Such a write is found by bisection and set
    aside; nothing else ever condemns a write (see ``_VERDICT_CLASSES``)."""
    if not isinstance(exc, Exception) or isinstance(exc, DBResilienceError):
        return False
    if is_shape_changed(exc):
        return False  # the rewrite's guard: the table changed, the write may be fine
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate:
        return sqlstate[:2] in _VERDICT_CLASSES
    # psycopg refusing the parameters before sending anything (cannot adapt a value, wrong
    # number of placeholders): the same write fails the same way every time
    return isinstance(exc, psycopg.ProgrammingError | psycopg.DataError)


def is_timeout(exc: BaseException) -> bool:
    """True for a statement timeout or a lock not granted: maybe the write, maybe the load."""
    return isinstance(exc, Exception) and classify(exc).kind in _TIMEOUT_KINDS


@functools.lru_cache(maxsize=1024)
def scope_of(statement: str) -> str:
    """The ledger scope of a keyed write: its statement (a key protects one statement's
    effect; another statement reusing the key is another write)."""
    return hashlib.sha256(statement.encode()).hexdigest()[:16]


# json.dumps(params, default=str, sort_keys=True, separators=(",", ":")) without building an
# encoder per call (a third of a keyed write's cost in the worker); the same text
_DIGEST_JSON = json.JSONEncoder(default=str, sort_keys=True, separators=(",", ":")).encode


# The C encoder that _DIGEST_JSON builds on every call (JSONEncoder.iterencode), built once:
# the same text in two thirds of the time (digest_of was 1.5 us of a keyed write's 3 us in the
# worker). markers=None: no circular-reference check; a circular value recurses until
# RecursionError, and is then encoded again by _DIGEST_JSON for its ValueError.
_C_MAKE_ENCODER: Any = getattr(json.encoder, "c_make_encoder", None)
_DIGEST_C: Callable[[Any, int], list[str]] | None = (
    None
    if _C_MAKE_ENCODER is None
    else _C_MAKE_ENCODER(
        None, str, json.encoder.encode_basestring_ascii, None, ":", ",", True, False, True
    )
)


def digest_of(params: Any) -> str:
    """A digest of a write's parameters, to tell a retry of a write from a reused key (the
    ledger keeps it: the text must never change, see tests/test_queue_digest.py)."""
    if _DIGEST_C is not None:
        try:
            text = "".join(_DIGEST_C(params, 0))
        except (RecursionError, ValueError, TypeError):
            text = _DIGEST_JSON(params)
    else:  # pragma: no cover - CPython always has the C encoder
        text = _DIGEST_JSON(params)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# psycopg's reading of placeholders (psycopg._queries._re_placeholder, on str): %%, %(name)X, %X
_PLACEHOLDER = re.compile(r"%(?:\(([^)]+)\)(.)|(.))")


@functools.lru_cache(maxsize=1024)
def placeholders(statement: str) -> tuple[str, int, frozenset[str]]:
    """How psycopg reads *statement*'s placeholders: ``("named", n, names)`` for
    ``%(name)s``, ``("positional", n, ∅)`` for ``%s`` (n may be 0: no placeholder), and
    ``("", 0, ∅)`` for what psycopg refuses on its own (a mix, ``%x``: it says what is wrong
    when the write runs, and the write is set aside). ``%b`` and ``%t`` count as ``%s``;
    ``%%`` is a literal."""
    names: set[str] = set()
    named = positional = 0
    for m in _PLACEHOLDER.finditer(statement):
        name, fmt = m.group(1), m.group(2) or m.group(3)
        if m.group(0) == "%%":
            continue
        if fmt not in ("s", "b", "t"):
            return "", 0, frozenset()
        if name is None:
            positional += 1
        else:
            named += 1
            names.add(name)
    if named and positional:
        return "", 0, frozenset()
    if named:
        return "named", named, frozenset(names)
    return "positional", positional, frozenset()


#: statement -> its number of %s placeholders, once a tuple or list of that length was bound to
#: it: submit's fast path (a dict look-up) for the statements a service submits again and again
_ARITY: dict[str, int] = {}


def bound_params(statement: str, params: object) -> list[Any] | dict[str, Any]:
    """*params* as a queued write keeps them: a list for ``%s`` placeholders, a dict for
    ``%(name)s`` ones (psycopg takes either), copied so that changing them after ``submit``
    changes nothing.

    What psycopg could never bind to *statement* is a ``TypeError`` naming ``params`` here,
    before the write is accepted, rather than a write that fails later in the worker: a str or
    bytes, something neither a sequence nor a mapping, a mapping with a key that is not a str,
    a mapping for ``%s`` placeholders or a sequence for named ones, a missing name, a sequence
    of the wrong length. A statement psycopg cannot read (a literal ``%`` not written ``%%``,
    placeholders of both kinds) is a ``ValueError`` naming ``statement``.
    """
    style, count, _ = placeholders(statement)
    if not style:
        raise ValueError(
            "statement has a '%' that psycopg cannot read as a placeholder (only %s, %b, %t and "
            "%(name)s, not mixed): write '%%' for a literal '%' (a queued write is always sent "
            "with its parameters, so psycopg reads every '%')"
        )
    kind = type(params)
    values: list[Any]
    if kind is tuple or kind is list:
        values = list(params)  # type: ignore[call-overload]
    elif params is None:
        values = []
    elif isinstance(params, Mapping):
        return _bound_mapping(statement, params)
    elif isinstance(params, str | bytes | bytearray | memoryview) or not isinstance(
        params, Iterable
    ):
        raise TypeError(f"params must be a sequence or a mapping, got {kind.__name__}")
    else:
        values = list(params)
    if style == "named":
        raise TypeError(
            "params must be a mapping for a statement with named placeholders (%(name)s), "
            f"got {kind.__name__}"
        )
    if style == "positional" and len(values) != count:
        raise TypeError(
            f"params has {len(values)} values for a statement with {count} placeholders"
        )
    if style == "positional" and (kind is tuple or kind is list):
        if len(_ARITY) >= 1024:
            _ARITY.clear()  # bounded: statements built with data in them come and go
        _ARITY[statement] = count
    return values


def _bound_mapping(statement: str, params: Mapping[Any, Any]) -> dict[str, Any]:
    values = dict(params)
    for name in values:
        if type(name) is not str:
            raise TypeError(
                f"params keys must be str (the names of %(name)s placeholders), "
                f"got {type(name).__name__}"
            )
    style, count, names = placeholders(statement)
    if style == "positional" and count:  # (psycopg takes a mapping for no placeholder)
        raise TypeError(
            "params must be a sequence for a statement with positional placeholders (%s), "
            f"got {type(params).__name__}"
        )
    missing = names.difference(values)
    if missing:
        raise TypeError(f"params has no value for %({min(missing)})s")
    return values


#: hooks of the threaded queue: plain functions
CommitHook = Callable[[list[Record]], None]
FailedHook = Callable[[FailedWrite], None]
#: hooks of the asyncio queue: plain functions or coroutine functions
ACommitHook = Callable[[list[Record]], Awaitable[None] | None]
AFailedHook = Callable[[FailedWrite], Awaitable[None] | None]


class QueueBase(Lifecycle):
    """Settings, buffer, journal and counters of a write queue (no database I/O)."""

    #: the worker's wake-up (``dbresilience._acompat.Signal`` / ``ASignal``), set by the twin
    _wakeup: Any

    def __init__(
        self,
        pool: Any,
        *,
        batch_size: int = 5000,
        flush_interval: float | timedelta = 0.05,
        max_pending: int = 100_000,
        journal: str | os.PathLike[str] | None = None,
        fsync: str = "batch",
        on_full: str = "block",
        block_timeout: float | timedelta = 5.0,
        drain_timeout: float | timedelta = 10.0,
        ledger_table: str = "dbr_queue_ledger",
        ledger_retention: float | timedelta = 7 * 24 * 3600.0,
        batch_timeout: float | timedelta = 30.0,
        on_failed: Callable[[FailedWrite], object] | None = None,
        on_commit: Callable[[list[Record]], object] | None = None,
        use_copy: bool = False,
        use_unnest: bool = True,
        serializer: Serializer | None = None,
    ) -> None:
        """Validate the settings (``TypeError``/``ValueError`` naming the argument); no I/O."""
        self.pool = pool
        _instrument.queues.add(self)  # weak: for the pending gauge read at scrape time
        self.batch_size = positive_int("batch_size", batch_size)
        self.flush_interval = seconds("flush_interval", flush_interval)
        self.max_pending = positive_int("max_pending", max_pending)
        self.on_full = one_of("on_full", on_full, ("block", "raise", "spill"))
        instance_or_none("journal", journal, (str, os.PathLike), "a path")
        if on_full == "spill" and journal is None:
            raise ValueError("on_full='spill' needs a journal: spilled writes live only there")
        if not re.fullmatch(
            r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?", non_empty_str("ledger_table", ledger_table)
        ):
            raise ValueError(
                f"ledger_table must be a plain (schema.)table name, got {ledger_table!r}"
            )
        self.block_timeout = seconds("block_timeout", block_timeout, allow_zero=True)
        self.drain_timeout = seconds("drain_timeout", drain_timeout, allow_zero=True)
        self.ledger_retention = seconds("ledger_retention", ledger_retention)
        self.batch_timeout = seconds("batch_timeout", batch_timeout)
        self.use_copy = bool(use_copy)
        self.use_unnest = bool(use_unnest)
        # statement -> its unnest rewrite (None: not rewritable), read from the catalog once
        # per statement and again after a failed batch or a minute (a table altered meanwhile)
        self._shapes: dict[str, FastShape | None] = {}
        self._shapes_read = 0.0
        self.serializer = check_serializer("serializer", serializer)
        self._journal = None if journal is None else Journal(journal, fsync, self.serializer)
        # a shared journal on a Redis stream (journal="redis://…"), set by the twin; None: the
        # writes submitted here are the ones this queue applies
        self._stream: Any = None
        self._state = ResourceState.UNOPENED  # in __init__: keeps the instance layout fixed
        self._on_failed = callable_or_none("on_failed", on_failed)
        self._on_commit = callable_or_none("on_commit", on_commit)
        schema, _, table = ledger_table.rpartition(".")
        self._ledger = sql.Identifier(schema, table) if schema else sql.Identifier(table)
        self._buffer: collections.deque[Record] = collections.deque()
        self._cond = threading.Condition()
        self._seq = 0  # last seq handed out
        self._done = 0  # every seq <= this is committed or set aside
        self._submitted_at: dict[int, float] = {}
        self._failed_writes: collections.deque[FailedWrite] = collections.deque(maxlen=1000)
        self._closing = False
        self._worker_failures = 0  # worker failures since the last batch was done
        self._worker_error: str | None = None
        self._journal_error: str | None = None
        # spill mode: writes past max_pending live only in the journal, from this offset on
        self._spilled = 0
        self._spill_offset = 0
        self._spill_seq = 0
        self.counters = {
            "submitted": 0,
            "written": 0,
            "duplicates": 0,
            "failed": 0,
            "retried": 0,
            "batches": 0,
            "rewritten": 0,
            "replayed": 0,
            "spilled": 0,
            "worker_restarts": 0,
            "received": 0,
            "ledger_conflicts": 0,
        }
        # claim keys with a plain INSERT (see _claim) until one meets a key already in the
        # ledger; a careful claim that finds every key new turns it back on
        self._optimistic = True
        self._claimed_optimistically = False  # the attempt in progress did
        self._ahead: Ahead | None = None  # the next batch's Python half, made in advance

    # --- submitting (thread-safe, never does database I/O) --------------------------------------

    def submit(
        self,
        statement: str,
        params: Sequence[Any] | Mapping[str, Any] | None = (),
        *,
        key: str | None = None,
    ) -> None:
        """Queue a write; returns once it is buffered (and journaled, with ``journal=``).

        With a journal, *params* must be what ``serializer`` (default
        :class:`dbresilience.MsgpackSerializer`: ``Decimal``, ``datetime``, ``UUID``, ``bytes``,
        tuples …, see docs/queue.md) gives back equal and of the same type; anything else is a
        ``TypeError`` naming the type, before the write is accepted. *key* makes the write take
        effect at most once per key, across retries, restarts and instances. *params* is a
        sequence for ``%s`` placeholders or a mapping (str keys) for ``%(name)s`` ones, as
        psycopg takes them; what psycopg could never bind is refused here (see
        :func:`bound_params`). Raises :class:`QueueFull` (``on_full="raise"``, or ``"block"``
        past ``block_timeout``), :class:`QueueClosed`, ``TypeError`` for a bad statement,
        params or key, ``ValueError`` for a statement whose ``%`` psycopg cannot read.
        """
        if not isinstance(statement, str):
            raise TypeError(f"statement must be a str, got {type(statement).__name__}")
        if key is not None and not isinstance(key, str):
            raise TypeError(f"key must be a str or None, got {type(key).__name__}")
        if (type(params) is tuple or type(params) is list) and _ARITY.get(statement) == len(params):
            params = list(params)  # a statement seen before: checked then (see bound_params)
        else:
            params = bound_params(statement, params)
        if self._stream is not None:
            self._submit_to_stream(statement, params, key)
            return
        with self._cond:
            if self._state is not _OPEN or self._closing:  # not the property: a hot path
                raise QueueClosed("the write queue is not open")
            if self._worker_failures >= _STALLED_AFTER:
                raise QueueStalled(
                    f"the write queue's worker failed {self._worker_failures} times in a row "
                    f"({self._worker_error}); see stats()"
                )
            if self._spilled or len(self._buffer) >= self.max_pending:
                if self.on_full == "spill":
                    self._spill(statement, params, key)  # in order: once spilling, keep spilling
                    return
                self._wait_for_room()
            self._seq += 1
            record = Record(self._seq, statement, params, key)
            if self._journal is not None:
                try:
                    self._journal.append(record)
                except (TypeError, ValueError, ArithmeticError, RecursionError) as exc:
                    self._seq -= 1
                    raise TypeError(f"params cannot be journaled: {exc}") from None
                except BaseException:  # OSError (a full disk): not accepted, not numbered
                    self._seq -= 1
                    raise
            self._buffer.append(record)
            self._submitted_at[record.seq] = time.monotonic()
            self.counters["submitted"] += 1
            pending = len(self._buffer)
            if pending == 1 or pending == self.batch_size:
                # a lone write starts the worker's flush_interval clock; a full batch is due now
                self._wakeup.notify()

    def _submit_to_stream(
        self, statement: str, params: list[Any] | dict[str, Any], key: str | None
    ) -> None:
        """``journal="redis://…"``: the write goes to the shared stream (see
        :mod:`dbresilience._journal_redis_async`), not to this queue's buffer."""
        if self._state is not _OPEN or self._closing:
            raise QueueClosed("the write queue is not open")
        try:
            self._stream.append(Record(1, statement, params, key))
        except WriteTooLarge:  # larger than Redis takes: said as such, nothing queued
            raise
        except (TypeError, ValueError, ArithmeticError, RecursionError) as exc:
            raise TypeError(f"params cannot be journaled: {exc}") from None
        with self._cond:
            self.counters["submitted"] += 1

    def _spill(self, statement: str, params: list[Any] | dict[str, Any], key: str | None) -> None:
        """Under the condition: journal the write without keeping it in memory."""
        assert self._journal is not None
        self._seq += 1
        record = Record(self._seq, statement, params, key)
        try:
            offset = self._journal.append_at(record)
        except (TypeError, ValueError, ArithmeticError, RecursionError) as exc:
            self._seq -= 1
            raise TypeError(f"params cannot be journaled: {exc}") from None
        except BaseException:
            self._seq -= 1
            raise
        if not self._spilled:
            self._spill_offset, self._spill_seq = offset, record.seq
        self._spilled += 1
        self.counters["submitted"] += 1
        self.counters["spilled"] += 1

    def _unspill(self) -> None:
        """Under the condition: bring spilled writes back while there is room, in order."""
        assert self._journal is not None
        room = self.max_pending - len(self._buffer)
        if room <= 0 or not self._spilled:
            return
        records, self._spill_offset = self._journal.read_from(
            self._spill_offset, min(room, self._spilled), self._spill_seq
        )
        now = time.monotonic()
        for record in records:
            self._buffer.append(record)
            self._submitted_at[record.seq] = now
        self._spilled -= len(records)
        if records:
            self._spill_seq = records[-1].seq + 1

    def _wait_for_room(self) -> None:
        if self.on_full == "raise":
            raise QueueFull(f"{self.max_pending} writes are already waiting")
        deadline = time.monotonic() + self.block_timeout
        while len(self._buffer) >= self.max_pending:
            left = deadline - time.monotonic()
            if left <= 0 or not self._is_open:
                raise QueueFull(
                    f"{self.max_pending} writes still waiting after {self.block_timeout:.2f} s"
                )
            self._cond.wait(left)

    # --- the worker's side ------------------------------------------------------------------------

    def _take_batch(self, flush_requested: bool) -> list[Record]:
        """Under the condition: the next batch if one is due, else an empty list."""
        if self._spilled and len(self._buffer) < self.max_pending // 2 + 1:
            self._unspill()
        if not self._buffer:
            return []
        oldest = self._submitted_at.get(self._buffer[0].seq, 0.0)
        due = (
            len(self._buffer) >= self.batch_size
            or time.monotonic() - oldest >= self.flush_interval
            or flush_requested
            or self._closing
        )
        if not due:
            return []
        # islice walks the deque once; indexing it (buffer[i]) walks its blocks every time
        return list(itertools.islice(self._buffer, self.batch_size))

    def _wait_time(self) -> float | None:
        """How long the worker may sleep before the oldest write is due."""
        if not self._buffer:
            return None
        oldest = self._submitted_at.get(self._buffer[0].seq, time.monotonic())
        return max(0.0, self.flush_interval - (time.monotonic() - oldest))

    def _finish(self, batch: Sequence[Record], written: int, duplicates: int) -> None:
        """Under the condition: *batch* (the head of the buffer) is done."""
        popleft, forget = self._buffer.popleft, self._submitted_at.pop
        for _ in range(len(batch)):
            forget(popleft()[0], None)
        self._done = batch[-1].seq
        self._worker_failures = 0
        self.counters["written"] += written
        self.counters["duplicates"] += duplicates
        self._cond.notify_all()

    def _set_aside(self, record: Record, exc: BaseException) -> FailedWrite:
        """Under the condition: keep *record* with its error in ``failed_writes()``; log it by
        its classification only (the database's message may quote the row: personal data)."""
        c = classify(exc)
        failed = FailedWrite(
            record.sql, record.params, record.key, f"{type(exc).__name__}: {exc}", c.code
        )
        self._failed_writes.append(failed)
        self.counters["failed"] += 1
        logger.error(
            "write set aside: %s (%s, SQLSTATE %s); see failed_writes()",
            c.code,
            type(exc).__name__,
            c.sqlstate or "-",
            extra={"code": c.code, "sqlstate": c.sqlstate},
        )
        if _instrument.hooks:
            _instrument.emit(_instrument.WriteSetAside(self.name, c.code, c.sqlstate))
        return failed

    _name: str | None = None

    @property
    def name(self) -> str:
        """What metrics, events and the repr call this queue: ``name=``, else its pool's name
        (two queues on one pool share their series unless named)."""
        return self._name or str(getattr(self.pool, "name", "queue"))

    def __repr__(self) -> str:
        """The queue's name and pending count (never a statement, a row or a password)."""
        return f"{type(self).__name__}(name={self.name!r}, pending={self._pending()})"

    def _pending(self) -> int:
        """Writes accepted and not yet written (read without the lock: a gauge)."""
        return len(self._buffer) + self._spilled

    def _note_worker_failure(self, exc: BaseException) -> None:
        """Under the condition: the worker failed outside any batch's own triage."""
        self.counters["worker_restarts"] += 1
        self._worker_failures += 1
        code = classify(exc).code
        self._worker_error = f"{type(exc).__name__} ({code})"
        if _instrument.hooks:
            _instrument.emit(_instrument.WorkerRestarted(self.name, code))

    def _note_journal_error(self, exc: OSError) -> None:
        """Under the condition: the journal could not record progress (a full disk, a file
        size limit). Committed writes stay committed; the watermark is written by the next
        batch that can, and until then a reopened queue replays (keyed writes are skipped by
        the ledger; unkeyed ones are at least once)."""
        if self._journal_error is None:
            logger.error("write queue journal cannot record progress: %s", exc.strerror or exc)
        self._journal_error = f"{type(exc).__name__}: {exc.strerror or exc}"

    def _start_state(self) -> None:
        """Under the condition, on open: replay the journal first, reset the worker's state."""
        self._spilled = 0  # spilled writes are in the journal: the replay brings them back
        if self._journal is not None:
            replay, top = self._journal.open()
            now = time.monotonic()
            for record in replay:
                self._buffer.append(record)
                self._submitted_at[record.seq] = now
            self._seq = max(self._seq, top)
            self._done = replay[0].seq - 1 if replay else self._seq
            self.counters["replayed"] += len(replay)
            if replay and _instrument.hooks:
                _instrument.emit(_instrument.JournalReplayed(self.name, len(replay)))
        else:
            self._done = self._seq
        self._state = ResourceState.OPEN
        self._closing = False
        self._flushers = 0
        self._worker_failures = 0
        self._ledger_ready = False
        self._last_prune = 0.0

    def failed_writes(self) -> list[FailedWrite]:
        """The last (up to 1000) writes set aside, with their errors."""
        return list(self._failed_writes)

    def _ledger_sql(self) -> LedgerSQL:
        return LedgerSQL(
            create=sql.SQL(
                'CREATE TABLE IF NOT EXISTS {} (scope text COLLATE "C" NOT NULL, '
                'key text COLLATE "C" NOT NULL, '
                "digest text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(), "
                "PRIMARY KEY (scope, key))"
            ).format(self._ledger),
            claim=sql.SQL(
                "INSERT INTO {} (scope, key, digest) "
                "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[]) "
                "ON CONFLICT DO NOTHING RETURNING scope, key"
            ).format(self._ledger),
            # the optimistic claim (see _claim): a plain INSERT costs the server about 60 % of
            # the ON CONFLICT one (no speculative insertion: two WAL records a key, not three)
            insert=sql.SQL(
                "INSERT INTO {} (scope, key, digest) "
                "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[])"
            ).format(self._ledger),
            applied=sql.SQL(
                "SELECT scope, key, digest FROM {} "
                "WHERE (scope, key) IN (SELECT * FROM unnest(%s::text[], %s::text[]))"
            ).format(self._ledger),
            prune=sql.SQL(
                "DELETE FROM {} WHERE applied_at < now() - %s * interval '1 second'"
            ).format(self._ledger),
        )

    def _expire_shapes(self) -> None:
        """Forget the cached table shapes once a minute (a table altered since they were read:
        a column's new type parses a string otherwise than its old one did)."""
        now = time.monotonic()
        if now - self._shapes_read > 60.0:
            self._shapes.clear()
            self._shapes_read = now

    def _unknown_shapes(self, work: Sequence[tuple[str, list[Any]]]) -> list[str]:
        """The statements of *work* worth a catalog look-up: rewritable, not looked up yet."""
        self._expire_shapes()
        unknown = []
        for statement, params in work:
            if len(params) >= FAST_MIN_ROWS and statement not in self._shapes:
                if fast_target(statement) is None:
                    self._shapes[statement] = None
                else:
                    unknown.append(statement)
        return unknown

    def _rewrite(self, statement: str, params: list[Any]) -> tuple[str, list[Any]] | None:
        """The unnest rewrite of a run (see :func:`fast_insert`), or None for executemany."""
        if len(params) < FAST_MIN_ROWS:
            return None
        shape = self._shapes.get(statement)
        return None if shape is None else fast_insert(shape, params)

    def _ledger_conflict(self, exc: BaseException) -> bool:
        """True when *exc* ended an attempt that claimed its keys optimistically with a unique
        violation: a key of the batch was already in the ledger, or the write's own (the two
        are not told apart by the table named in the error: a ledger made partitioned names its
        partition). The batch goes again with the careful claim, whose ``ON CONFLICT DO
        NOTHING`` never raises one on the ledger: a violation then is the write's verdict."""
        if not (self._claimed_optimistically and isinstance(exc, psycopg.errors.UniqueViolation)):
            return False
        self._claimed_optimistically = False
        self._optimistic = False
        self.counters["ledger_conflicts"] += 1
        return True

    def _look_ahead(self, current: Sequence[Record]) -> None:
        """Prepare the batch after *current* (the head of the buffer) while the server works on
        *current*: the worker would otherwise spend that Python time (a parameter digest per
        keyed write, the claim's and the rewrite's array literals: 10 ms a 5,000-write batch)
        after the answer, with the server idle. Only a full batch is prepared (a shorter one may
        still grow); whatever fails here is left to the batch's own turn."""
        size = len(current)
        with self._cond:
            if not self._buffer or self._buffer[0] is not current[0]:
                return
            nxt = list(itertools.islice(self._buffer, size, size + self.batch_size))
        if len(nxt) < self.batch_size:
            return
        try:
            self._ahead = self._prepare_ahead(nxt)
        except Exception:  # the batch's own turn raises it where it belongs
            self._ahead = None

    def _prepare_ahead(self, batch: list[Record]) -> Ahead | None:
        work = list(runs(batch))
        fast: list[tuple[str, list[Any]] | None] = []
        shapes: list[FastShape | None] = []
        for statement, params in work:
            if self.use_unnest and len(params) >= FAST_MIN_ROWS:
                if statement not in self._shapes:
                    return None  # read from the catalog in the batch's transaction
                shapes.append(self._shapes[statement])
                fast.append(self._rewrite(statement, params))
            else:
                shapes.append(None)
                fast.append(None)
        claims = self._claims(batch)
        keyed = keyed_count(batch)
        arrays = self._claim_arrays(claims) if claims else None
        return Ahead(batch[0], batch[-1], len(batch), claims, arrays, keyed, work, fast, shapes)

    def _ahead_for(self, batch: Sequence[Record]) -> Ahead | None:
        """The prepared half of *batch* if it was made for these very records (and taken once),
        else None."""
        ahead, self._ahead = self._ahead, None
        if (
            ahead is None
            or ahead.size != len(batch)
            or ahead.first is not batch[0]
            or ahead.last is not batch[-1]
        ):
            return None
        return ahead

    def _fresh_rewrites(self, ahead: Ahead) -> bool:
        """True when the rewrites in *ahead* were made from the shapes cached now (a failed
        batch or a minute clears them: a table may have been altered). The minute is checked
        here too: under steady load every batch is prepared ahead and never reads the shapes
        through ``_unknown_shapes``, so a shape read before an ALTER was used for ever."""
        self._expire_shapes()
        get = self._shapes.get
        return all(
            shape is None or get(statement) is shape
            for (statement, _), shape in zip(ahead.work, ahead.shapes, strict=True)
        )

    @staticmethod
    def _claim_arrays(claims: dict[tuple[str, str], str]) -> tuple[Any, Any, Any]:
        """The claim's three arrays (scopes, keys, digests), as array literals where they can
        be (psycopg's list dumper costs microseconds an element)."""
        # in key order: instances claiming the same keys lock them in the same order (no
        # deadlock between them), and the ledger's index takes sorted keys 12 % faster (random
        # keys; 1 ms of sorting for 5,000, mostly in the look-ahead, off the critical path)
        items = sorted(claims.items(), key=_claim_order)
        scopes = [scope for (scope, _), _ in items]
        keys = [key for (_, key), _ in items]
        digests = [digest for _, digest in items]
        literals = (text_array(scopes), text_array(keys), text_array(digests))
        return literals if None not in literals else (scopes, keys, digests)

    @staticmethod
    def _claims(batch: Sequence[Record]) -> dict[tuple[str, str], str]:
        """The ledger identities ``(scope, key)`` of the keyed writes in *batch*, each with the
        parameter digest of its first write in the batch."""
        claims: dict[tuple[str, str], str] = {}
        for record in batch:
            if record.key is not None:
                claims.setdefault((scope_of(record.sql), record.key), digest_of(record.params))
        return claims

    @staticmethod
    def _dedupe(
        batch: Sequence[Record],
        claims: dict[tuple[str, str], str],
        fresh: set[tuple[str, str]],
        applied: dict[tuple[str, str], str],
    ) -> tuple[list[Record], int, list[Record]]:
        """What to do with each write: ``(apply, skipped as already applied, key reused)``.

        Unkeyed writes are applied. The first write of a freshly claimed key is applied; a
        write whose key was applied before (or earlier in the batch) with the same parameters
        is a duplicate; with other parameters, the key was reused for another write.
        """
        todo: list[Record] = []
        duplicates = 0
        reused: list[Record] = []
        taken: set[tuple[str, str]] = set()
        for record in batch:
            if record.key is None:
                todo.append(record)
                continue
            ident = (scope_of(record.sql), record.key)
            if ident in fresh and ident not in taken:
                taken.add(ident)
                todo.append(record)
                continue
            prior = claims[ident] if ident in taken else applied.get(ident)
            if prior == digest_of(record.params):
                duplicates += 1
            else:
                reused.append(record)
        return todo, duplicates, reused

    def stats(self) -> dict[str, Any]:
        """``submitted``, ``written`` (applied), ``duplicates`` (skipped: their key was already
        applied with the same parameters), ``failed`` (set aside), ``pending``, ``retried``,
        ``batches``, ``rewritten`` (applied through the unnest rewrite), ``replayed`` (from
        the journal), ``spilled`` (kept in the journal only, ``on_full="spill"``),
        ``worker_restarts``, ``worker_error`` and ``journal_error`` (the last failure, or
        None), ``oldest_pending_age`` (s) and ``journal_bytes``. Always
        ``written + duplicates + failed + pending == submitted + replayed``; with a Redis
        journal, ``received`` (read from the stream) replaces the right side, and the
        ``stream_*`` counters of :meth:`AsyncStreamJournal.stats` are added."""
        with self._cond:
            pending = len(self._buffer) + self._spilled
            oldest = (
                time.monotonic() - self._submitted_at.get(self._buffer[0].seq, time.monotonic())
                if self._buffer
                else 0.0
            )
        return {
            **self.counters,
            "pending": pending,
            "oldest_pending_age": oldest,
            "journal_bytes": self._journal.bytes if self._journal is not None else 0,
            "worker_error": self._worker_error,
            "journal_error": self._journal_error,
            **(self._stream.stats() if self._stream is not None else {}),
        }

    def pop_stats(self) -> dict[str, Any]:
        """:meth:`stats`, then every counter (``submitted`` … ``worker_restarts``) set back to
        0 (gauges: ``pending``, ``oldest_pending_age``, ``journal_bytes``; the last errors stay):
        for a scraper that reports increments. The identity of :meth:`stats` then holds for
        the increments plus the pending count at the previous pop. docs/observability.md lists
        every key."""
        stats = self.stats()
        with self._cond:  # subtract what was read: an increment meanwhile is not lost
            for name in self.counters:
                self.counters[name] -= stats[name]
        return stats
