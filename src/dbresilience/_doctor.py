"""``dbr.doctor(conninfo)``: the seeds' database-side fixes, found on a live database, read-only.

The doctor opens one connection, starts a ``READ ONLY`` transaction with ``statement_timeout``
and ``lock_timeout`` bounded, reads the catalogs and the statistics views, and returns a
:class:`DoctorReport`: findings, each with a stable id, a severity, the object it concerns, the
numbers it read and the SQL that would fix it (never run by the doctor). Every check runs in its
own savepoint: one the role may not run, or that times out, is reported in ``skipped`` with the
reason and the others still run.

Sync only, on purpose: it is a one-shot diagnosis run from a command line, a CI job or a REPL,
never on a request path, so an ``async`` twin would add code and no use.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import errors as pg_errors

from dbresilience._doctor_parse import (
    TreeNode,
    index_name,
    parse_node_tree,
    policy_shape,
    qualified,
    quote_ident,
    statement_shape,
    walk,
)
from dbresilience._redact import redact_error, secrets_of
from dbresilience._validate import non_negative_int, positive_int, seconds, strings

if TYPE_CHECKING:
    from dbresilience._pool_base import PoolBase

__all__ = [
    "CHECKS",
    "DoctorFinding",
    "DoctorReport",
    "DoctorSkip",
    "Severity",
    "doctor",
]


class Severity(str, Enum):
    """How much a finding matters: ``info`` < ``warning`` < ``error``."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        """0 for info, 1 for warning, 2 for error."""
        return ("info", "warning", "error").index(self.value)


@dataclass(frozen=True)
class DoctorFinding:
    """One problem found: *id* (stable, e.g. ``fk-without-index``), *severity*, *object* (the
    table, index, policy, statement or setting), *evidence* (the numbers read), *fix_sql* (SQL
    to review and run yourself; ``None`` when there is nothing to run) and *why* it matters."""

    id: str
    severity: Severity
    object: str
    evidence: Mapping[str, Any]
    fix_sql: str | None
    why: str

    def to_dict(self) -> dict[str, Any]:
        """The finding as JSON-ready data."""
        return {
            "id": self.id,
            "severity": self.severity.value,
            "object": self.object,
            "evidence": dict(self.evidence),
            "fix_sql": self.fix_sql,
            "why": self.why,
        }


@dataclass(frozen=True)
class DoctorSkip:
    """A check (*id*) that did not run, or ran only in part, and *reason*: what it could not see
    and how to let it (a grant, an extension)."""

    id: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        """The skip as JSON-ready data."""
        return {"id": self.id, "reason": self.reason}


@dataclass(frozen=True)
class DoctorReport:
    """What :func:`doctor` found: *findings* (most severe first), *skipped* checks, and *server*
    (version, database, user; never a password)."""

    findings: tuple[DoctorFinding, ...]
    skipped: tuple[DoctorSkip, ...]
    server: Mapping[str, Any] = field(default_factory=dict)

    def worst(self) -> Severity | None:
        """The highest severity among the findings, ``None`` when there are none."""
        return max((f.severity for f in self.findings), key=lambda s: s.rank, default=None)

    def failed(self, fail_on: Severity | str) -> bool:
        """True when a finding is at least as severe as *fail_on* (``"warning"``/``"error"``)."""
        level = Severity(fail_on)
        return any(f.severity.rank >= level.rank for f in self.findings)

    def by_id(self, check_id: str) -> list[DoctorFinding]:
        """The findings of one check."""
        return [f for f in self.findings if f.id == check_id]

    def to_dict(self) -> dict[str, Any]:
        """``{"server": …, "checks": [finding…], "skipped": [{"id", "reason"}…]}``."""
        return {
            "server": dict(self.server),
            "checks": [f.to_dict() for f in self.findings],
            "skipped": [s.to_dict() for s in self.skipped],
        }

    def to_json(self, indent: int | None = 2) -> str:
        """:meth:`to_dict` as JSON text."""
        return json.dumps(self.to_dict(), indent=indent, default=str)

    def __str__(self) -> str:
        """The plain-text report (see :func:`dbresilience._doctor_render.render_text`)."""
        from dbresilience._doctor_render import render_text

        return render_text(self)


# id -> (what it finds, the default severity's reason); docs/doctor.md has the long form
CHECKS: dict[str, str] = {
    "fk-without-index": "foreign keys whose referencing columns lead no index",
    "json-not-jsonb": "json columns (text re-parsed on every access) instead of jsonb",
    "rls-per-row": "RLS policies that run a subquery or a function once per row",
    "slow-query": "the slowest statements in pg_stat_statements",
    "seq-scan-heavy": "large tables read mostly by sequential scans",
    "missing-composite-index": "statements filtering on columns no index leads with",
    "unused-index": "indexes never scanned since the statistics were reset",
    "duplicate-index": "indexes another index makes redundant",
    "wide-row-fetch": "SELECT * on tables with large text/jsonb values",
    "timeouts": "unbounded or long statement, lock and idle-in-transaction timeouts",
    "connections": "connection slots in use, and whether a fleet of pools can exhaust them",
    "bloat": "tables with many dead rows",
    "vacuum": "tables autovacuum skips or whose statistics are stale",
}

# Supabase's own schemas: the user does not own them and cannot change them
_MANAGED_SCHEMAS = (
    "pg_catalog", "information_schema", "pg_toast", "auth", "storage", "realtime", "_realtime",
    "supabase_functions", "supabase_migrations", "extensions", "graphql", "graphql_public",
    "net", "pgsodium", "pgsodium_masks", "vault", "pgbouncer", "cron", "_analytics",
)  # fmt: skip
_MARK = "/* dbresilience doctor */ "
_POOLERS = re.compile(r"pgbouncer|supavisor|odyssey|pgcat|pgpool|rds.?proxy", re.IGNORECASE)
_DML = re.compile(r"^\s*(select|with|update|delete|insert)\b", re.IGNORECASE)


@dataclass
class _Table:
    oid: int
    schema: str
    name: str
    rows: int
    size: int
    toast: int
    rls: bool
    options: tuple[str, ...]
    columns: dict[int, tuple[str, str]] = field(default_factory=dict)  # attnum -> (name, type)

    @property
    def qname(self) -> str:
        return qualified(self.schema, self.name)

    @property
    def label(self) -> str:
        return f"{self.schema}.{self.name}"

    def column_numbers(self, names: Iterable[str]) -> list[int] | None:
        by_name = {n: k for k, (n, _) in self.columns.items()}
        out = [by_name.get(n) for n in names]
        return None if None in out else [k for k in out if k is not None]


@dataclass
class _Index:
    oid: int
    table: int
    schema: str
    name: str
    keys: tuple[int, ...]  # attnums of the key columns, 0 for an expression
    unique: bool
    primary: bool
    partial: bool
    constraint: bool
    valid: bool
    size: int
    scans: int
    signature: tuple[Any, ...]  # what makes two indexes the same (am, opclasses, exprs, pred)
    definition: str

    def leads_with(self, attnums: Sequence[int]) -> bool:
        """Its first len(attnums) key columns are *attnums*, in any order: a valid, whole-table
        btree (or a one-column hash for one column) that an equality lookup on them can use."""
        n = len(attnums)
        usable = self.signature[0] == "btree" or (self.signature[0] == "hash" and n == 1)
        return (
            usable
            and self.valid
            and not self.partial
            and n > 0
            and len(self.keys) >= n
            and set(self.keys[:n]) == set(attnums)
        )


@dataclass
class _Statement:
    userid: int
    queryid: int
    query: str
    calls: int
    total_ms: float
    mean_ms: float
    rows: int


@dataclass
class _Options:
    schemas: tuple[str, ...] | None
    pool: PoolBase | None
    instances: int
    pooler: bool | None
    statement_timeout: float
    slow_ms: float
    min_rows: int
    top: int


class _Run:
    """One doctor session: the connection, what was loaded once, what was found."""

    def __init__(self, conn: psycopg.Connection[Any], options: _Options) -> None:
        self.conn = conn
        self.opts = options
        self.findings: list[DoctorFinding] = []
        self.skipped: list[DoctorSkip] = []
        self.tables: dict[int, _Table] = {}
        self.indexes: list[_Index] = []
        self.statements: list[_Statement] | None = None  # None: pg_stat_statements unreadable
        self.pgss_schema: str | None = None
        self.privileged = False
        self.schemas: list[str] = []
        self.user = ""
        self.database = ""

    def rows(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[Any]:
        return self.conn.execute(_MARK + sql, params).fetchall()

    def find(
        self,
        check: str,
        severity: Severity,
        obj: str,
        evidence: Mapping[str, Any],
        fix_sql: str | None,
        why: str,
    ) -> None:
        self.findings.append(DoctorFinding(check, severity, obj, evidence, fix_sql, why))

    def skip(self, check: str, reason: str) -> None:
        self.skipped.append(DoctorSkip(check, reason))

    def table_of(self, schema: str | None, name: str) -> _Table | None:
        """The table a statement names: schema-qualified, or the only one of that name."""
        found = [t for t in self.tables.values() if t.name == name and (schema in (None, t.schema))]
        if len(found) > 1 and schema is None and "public" in {t.schema for t in found}:
            found = [t for t in found if t.schema == "public"]
        return found[0] if len(found) == 1 else None

    def covered(self, table: int, attnums: Sequence[int]) -> bool:
        return any(i.table == table and i.leads_with(attnums) for i in self.indexes)


def doctor(
    conninfo: str,
    *,
    schemas: Sequence[str] | None = None,
    pool: PoolBase | None = None,
    instances: int = 1,
    pooler: bool | None = None,
    statement_timeout: float = 5.0,
    connect_timeout: float = 5.0,
    slow_ms: float = 100.0,
    min_rows: int = 10_000,
    top: int = 5,
) -> DoctorReport:
    """Diagnose the database behind *conninfo*; read-only, never applies a fix.

    *schemas*: the schemas to look at (default: every schema but the system's and Supabase's
    managed ones). *pool*: a :class:`dbresilience.Pool` or ``AsyncPool`` (only its settings are
    read; it need not be open) whose deadlines are compared with the
    server's timeouts and whose ``max_size`` times *instances* is compared with the server's free
    connection slots; *pooler*: whether a pooler (PgBouncer, Supavisor) sits in front, when you
    know (default: guessed). *statement_timeout*: the bound on each of the doctor's statements.
    *slow_ms*: the mean time from which a statement is slow. *min_rows*: tables smaller than
    this are never "large". *top*: how many statements the slow-query check lists.

    Runs in one ``READ ONLY`` transaction; each check in a savepoint, so one that the role may
    not run or that times out lands in ``report.skipped`` with the reason. Raises
    ``psycopg.OperationalError`` if it cannot connect (the message has any password masked),
    ``psycopg.errors.QueryCanceled`` if reading the catalog itself takes longer than
    *statement_timeout*, and ``ValueError``/``TypeError`` naming the argument for a bad argument.
    """
    if not isinstance(conninfo, str):
        raise TypeError("conninfo must be a str (a libpq connection string or URL)")
    from dbresilience._pool_base import PoolBase

    if pool is not None and not isinstance(pool, PoolBase):
        raise TypeError(
            f"pool must be a dbresilience.Pool, AsyncPool or None, got {type(pool).__name__}"
        )
    if pooler is not None and not isinstance(pooler, bool):
        raise TypeError("pooler must be True, False or None")
    options = _Options(
        schemas=strings("schemas", schemas) if schemas is not None else None,
        pool=pool,
        instances=positive_int("instances", instances),
        pooler=pooler,
        statement_timeout=seconds("statement_timeout", statement_timeout, maximum=3600),
        slow_ms=seconds("slow_ms", slow_ms),
        min_rows=non_negative_int("min_rows", min_rows),
        top=positive_int("top", top, maximum=1000),
    )
    timeout = seconds("connect_timeout", connect_timeout, maximum=3600)
    secrets = secrets_of(conninfo)
    try:
        # prepare_threshold=None: nothing prepared, so a PgBouncer in transaction mode is fine
        conn = psycopg.connect(
            conninfo, connect_timeout=max(2, round(timeout)), prepare_threshold=None
        )
    except psycopg.OperationalError as exc:
        message = redact_error(exc, secrets)
        raise psycopg.OperationalError(f"doctor could not connect: {message}") from None
    with conn:
        conn.read_only = True
        run = _Run(conn, options)
        # nothing is written; the rollback at the end also drops the session settings
        with conn.transaction(force_rollback=True):
            server = _prepare(run)
            if server["version_num"] < 130000:
                run.skip("doctor", f"PostgreSQL {server['version']} is older than 13: not checked")
            else:
                for check_id, check in _CHECKS:
                    _guard(run, check_id, check)
        server["statement_stats"] = run.statements is not None
        findings = sorted(run.findings, key=lambda f: (-f.severity.rank, f.id, f.object))
        report = DoctorReport(tuple(findings), tuple(run.skipped), server)
    return report


def _guard(run: _Run, check_id: str, check: Callable[[_Run], None]) -> None:
    """Run one check in a savepoint; a refusal or a timeout becomes a skip with the reason."""
    before = len(run.findings)
    try:
        with run.conn.transaction():
            check(run)
    except pg_errors.InsufficientPrivilege as exc:
        del run.findings[before:]
        run.skip(check_id, f"permission denied: {_first_line(exc)}")
    except pg_errors.QueryCanceled:
        del run.findings[before:]
        run.skip(
            check_id,
            f"timed out after {run.opts.statement_timeout:g} s (the doctor's statement_timeout)",
        )
    except psycopg.Error as exc:
        del run.findings[before:]
        run.skip(check_id, f"failed: {type(exc).__name__}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def _prepare(run: _Run) -> dict[str, Any]:
    """Bound the session, learn who we are and load the tables and indexes once."""
    ms = str(max(1, int(run.opts.statement_timeout * 1000)))
    run.rows(
        "select set_config('statement_timeout', %s, true), set_config('lock_timeout', %s, true)",
        (ms, ms),
    )
    version, version_num, user, database, privileged = run.rows(
        "select current_setting('server_version'), current_setting('server_version_num')::int,"
        " current_user, current_database(),"
        " (select rolsuper from pg_roles where rolname = current_user)"
        "   or pg_has_role(current_user, 'pg_read_all_stats', 'member')"
    )[0]
    run.user, run.database, run.privileged = str(user), str(database), bool(privileged)
    if run.opts.schemas is not None:
        run.schemas = list(run.opts.schemas)
    else:
        run.schemas = [
            str(r[0])
            for r in run.rows(
                "select nspname from pg_namespace where nspname <> all(%s)"
                " and nspname not like 'pg\\_%%'",
                (list(_MANAGED_SCHEMAS),),
            )
        ]
    for oid, schema, name, rows, size, toast, rls, options in run.rows(
        "select c.oid, n.nspname, c.relname, greatest(c.reltuples, 0)::bigint,"
        " pg_table_size(c.oid), coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0),"
        " c.relrowsecurity, coalesce(c.reloptions, '{}')"
        " from pg_class c join pg_namespace n on n.oid = c.relnamespace"
        " where c.relkind in ('r', 'p') and n.nspname = any(%s)",
        (run.schemas,),
    ):
        run.tables[int(oid)] = _Table(
            int(oid), str(schema), str(name), int(rows), int(size or 0), int(toast), bool(rls),
            tuple(options),
        )  # fmt: skip
    oids = list(run.tables)
    for rel, num, name, typ in run.rows(
        "select attrelid, attnum, attname, format_type(atttypid, atttypmod) from pg_attribute"
        " where attrelid = any(%s) and attnum > 0 and not attisdropped order by attnum",
        (oids,),
    ):
        run.tables[int(rel)].columns[int(num)] = (str(name), str(typ))
    for row in run.rows(
        "select i.indexrelid, i.indrelid, n.nspname, ic.relname, i.indkey::text, i.indnkeyatts,"
        " i.indisunique, i.indisprimary, i.indpred is not null, i.indisvalid,"
        " exists(select 1 from pg_constraint k where k.conindid = i.indexrelid"
        "        and k.contype in ('p', 'u', 'x')),"
        " pg_relation_size(i.indexrelid), coalesce(s.idx_scan, 0), am.amname,"
        " i.indclass::text, i.indcollation::text, i.indoption::text,"
        " coalesce(pg_get_expr(i.indexprs, i.indrelid), ''),"
        " coalesce(pg_get_expr(i.indpred, i.indrelid), ''), pg_get_indexdef(i.indexrelid)"
        " from pg_index i join pg_class ic on ic.oid = i.indexrelid"
        " join pg_namespace n on n.oid = ic.relnamespace join pg_am am on am.oid = ic.relam"
        " left join pg_stat_user_indexes s on s.indexrelid = i.indexrelid"
        " where i.indrelid = any(%s)",
        (oids,),
    ):
        all_keys = tuple(int(k) for k in str(row[4]).split())
        nkeys = int(row[5])
        run.indexes.append(
            _Index(
                oid=int(row[0]), table=int(row[1]), schema=str(row[2]), name=str(row[3]),
                keys=all_keys[:nkeys], unique=bool(row[6]), primary=bool(row[7]),
                partial=bool(row[8]), valid=bool(row[9]), constraint=bool(row[10]),
                size=int(row[11]), scans=int(row[12]),
                signature=(row[13], all_keys, row[14], row[15], row[16], row[17], row[18]),
                definition=str(row[19]),
            )
        )  # fmt: skip
    return {
        "version": str(version),
        "version_num": int(version_num),
        "database": run.database,
        "user": run.user,
        "schemas": run.schemas,
        "statement_stats": False,
    }


# --- the checks -------------------------------------------------------------------------------


def _fk_without_index(run: _Run) -> None:
    for name, rel, target, keys in run.rows(
        "select conname, conrelid, confrelid::regclass::text, conkey::int[] from pg_constraint"
        " where contype = 'f' and conrelid = any(%s) order by conname",
        (list(run.tables),),
    ):
        table = run.tables[int(rel)]
        attnums = [int(k) for k in keys]
        if run.covered(table.oid, attnums):
            continue
        cols = [table.columns[k][0] for k in attnums]
        idx = index_name(table.name, cols)
        run.find(
            "fk-without-index",
            Severity.WARNING,
            f"{table.label} ({', '.join(cols)})",
            {
                "constraint": str(name),
                "columns": cols,
                "references": str(target),
                "table_rows": table.rows,
                "table_bytes": table.size,
            },
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {quote_ident(idx)}"
            f" ON {table.qname} ({', '.join(map(quote_ident, cols))});",
            f"No index leads with the foreign key's columns: every DELETE or key UPDATE on "
            f"{target} scans all of {table.label} to check it, and joins on the key scan too.",
        )


def _json_not_jsonb(run: _Run) -> None:
    for table in run.tables.values():
        for name, typ in table.columns.values():
            if typ not in ("json", "json[]"):
                continue
            target = "jsonb[]" if typ.endswith("[]") else "jsonb"
            run.find(
                "json-not-jsonb",
                Severity.WARNING,
                f"{table.label}.{name}",
                {"type": typ, "table_rows": table.rows, "table_bytes": table.size},
                "-- rewrites the whole table under an ACCESS EXCLUSIVE lock (reads and writes\n"
                "-- wait until it ends): run it in a quiet window; views using the column must be\n"
                "-- dropped and recreated; jsonb drops duplicate keys and key order.\n"
                f"ALTER TABLE {table.qname} ALTER COLUMN {quote_ident(name)} TYPE {target}"
                f" USING {quote_ident(name)}::{target};",
                "json is stored as text and parsed again by every operator that reads it; jsonb "
                "is parsed once, is indexable (GIN) and faster to query.",
            )


def _rls(run: _Run) -> None:
    with_policy: set[int] = set()
    search_path = str(run.rows("select current_setting('search_path')")[0][0])
    policies = run.rows(
        "select p.polrelid, p.polname, p.polqual::text, p.polwithcheck::text,"
        " pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid)"
        " from pg_policy p where p.polrelid = any(%s) order by p.polname",
        (list(run.tables),),
    )
    funcids: set[int] = set()
    shapes = []
    for rel, name, qual, check, qual_sql, check_sql in policies:
        with_policy.add(int(rel))
        for which, tree_text, sql in (("USING", qual, qual_sql), ("WITH CHECK", check, check_sql)):
            if tree_text is None:
                continue
            tree = parse_node_tree(str(tree_text))
            shape = policy_shape(tree)
            funcids.update(shape.row_functions + shape.unwrapped)
            shapes.append((run.tables[int(rel)], str(name), which, tree, str(sql), shape))
    funcs: dict[int, tuple[str, str, str, str, int]] = {}
    if funcids:
        for oid, schema, fname, volatile, args, nargs in run.rows(
            "select p.oid, n.nspname, p.proname, p.provolatile,"
            " pg_get_function_identity_arguments(p.oid), p.pronargs"
            " from pg_proc p join pg_namespace n on n.oid = p.pronamespace where p.oid = any(%s)",
            (sorted(funcids),),
        ):
            funcs[int(oid)] = (str(schema), str(fname), str(volatile), str(args), int(nargs))
    for table, name, which, tree, sql, shape in shapes:
        obj = f"{table.label} policy {name!r} ({which})"
        alter = f"ALTER POLICY {quote_ident(name)} ON {table.qname} {which}"
        if shape.subqueries:
            fix = _subquery_fix(run, table, name, which, tree, sql, shape, search_path)
            run.find(
                "rls-per-row",
                Severity.WARNING,
                obj,
                {
                    "problem": "subquery",
                    "subqueries": shape.subqueries,
                    "correlated": shape.correlated,
                    "expression": sql[:500],
                    "table_rows": table.rows,
                },
                fix,
                "The policy runs a subquery for the rows it filters"
                + (" (correlated: once per row)" if shape.correlated else "")
                + " and the subquery's tables go through their own RLS; Supabase measures "
                "such policies 10x or more slower than a direct comparison.",
            )
        volatile = [f for f in shape.row_functions if funcs.get(f, ("", "", "s"))[2] == "v"]
        for fid in dict.fromkeys(volatile):
            schema, fname, _, args, _ = funcs[fid]
            run.find(
                "rls-per-row",
                Severity.WARNING,
                obj,
                {"problem": "volatile function", "function": f"{schema}.{fname}({args})"},
                "-- only if the function reads and never writes (STABLE lets the planner\n"
                "-- use indexes and cache it within a statement):\n"
                f"ALTER FUNCTION {qualified(schema, fname)}({args}) STABLE;",
                f"{schema}.{fname}() is VOLATILE (the default for a new function): it runs for "
                "every row and keeps the planner from using an index for the policy.",
            )
        wrap = [f for f in dict.fromkeys(shape.unwrapped) if f in funcs]
        if wrap:
            new_sql = sql
            for fid in wrap:
                schema, fname, _, _, nargs = funcs[fid]
                new_sql = _wrap_call(new_sql, schema, fname) if nargs == 0 else new_sql
            names = [f"{funcs[f][0]}.{funcs[f][1]}()" for f in wrap]
            fix = (
                f"{alter} ({new_sql});"
                if new_sql != sql
                else f"-- wrap each call in a scalar subquery, e.g. (select {names[0]}):\n"
                f"{alter} (<expression with (select …) around the calls>);"
            )
            run.find(
                "rls-per-row",
                Severity.WARNING,
                obj,
                {"problem": "function called per row", "functions": names},
                fix,
                f"{', '.join(names)} does not depend on the row but is called for each one; "
                "wrapped as (select f()) the planner runs it once per statement (an InitPlan), "
                "as Supabase's RLS performance guide recommends for auth.uid().",
            )
    for table in run.tables.values():
        if table.rls and table.oid not in with_policy:
            run.find(
                "rls-per-row",
                Severity.INFO,
                table.label,
                {"problem": "RLS enabled with no policy", "table_rows": table.rows},
                "-- every role but the owner and BYPASSRLS roles sees no row; if that is not\n"
                "-- intended, add a policy, e.g.:\n"
                f"-- CREATE POLICY ... ON {table.qname} FOR SELECT USING (...);",
                "Row level security is on and no policy allows anything: reads return no rows "
                "and writes fail for every role that does not bypass RLS.",
            )


def _wrap_call(sql: str, schema: str, fname: str) -> str:
    """*sql* with each ``[schema.]fname()`` not already wrapped replaced by ``( SELECT …)``."""
    names = [re.escape(quote_ident(fname)), re.escape(fname)]
    schemas = [re.escape(quote_ident(schema)), re.escape(schema)]
    pattern = re.compile(rf"(?<![\w\"$.])((?:(?:{'|'.join(schemas)})\.)?(?:{'|'.join(names)})\(\))")

    def repl(m: re.Match[str]) -> str:
        before = sql[max(0, m.start() - 8) : m.start()].upper()
        return m.group(1) if before.rstrip().endswith("SELECT") else f"( SELECT {m.group(1)})"

    return pattern.sub(repl, sql)


def _balanced(sql: str, start: int) -> int:
    """The index of the ``)`` closing the ``(`` at *start*, quote-aware; -1 if none."""
    depth, i, quote = 0, start, ""
    while i < len(sql):
        ch = sql[i]
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _result_type(node: object) -> int | None:
    if not isinstance(node, TreeNode):
        return None
    for key in ("vartype", "funcresulttype", "consttype", "opresulttype", "resulttype"):
        value = node.fields.get(key)
        if isinstance(value, str) and value.isdigit():
            return int(value)
    return None


def _subquery_fix(
    run: _Run,
    table: _Table,
    name: str,
    which: str,
    tree: object,
    sql: str,
    shape: Any,
    search_path: str,
) -> str:
    """For one uncorrelated ``x IN (SELECT …)``: a STABLE function returning the
    array once, and the policy compared with ``= ANY ((select f())::t[])``; else a template."""
    alter = f"ALTER POLICY {quote_ident(name)} ON {table.qname} {which}"
    template = (
        "-- rewrite the policy so that no subquery refers to the row: compare the row's column\n"
        "-- with a set computed once, e.g. team_id IN (SELECT team_id FROM team_user\n"
        "--   WHERE user_id = (SELECT auth.uid())), or move the lookup into a STABLE\n"
        "-- SECURITY DEFINER function called as (SELECT f()).\n"
        f"-- now: {' '.join(sql.split())[:400]}\n"
        f"-- {alter} (...);"
    )
    sublinks = [n for n in walk(tree) if n.type == "SUBLINK"]  # type: ignore[arg-type]
    reading = [
        n
        for n in sublinks
        if isinstance(n.fields.get("subselect"), TreeNode)
        and n.fields["subselect"].fields.get("rtable")  # type: ignore[union-attr]
    ]
    matches = list(re.finditer(r"\bIN \( SELECT\b", sql))
    if shape.correlated or len(reading) != 1 or len(matches) != 1:
        return template
    link = reading[0]
    if link.fields.get("subLinkType") not in ("2", "ANY_SUBLINK"):  # enum SubLinkType
        return template
    query = link.fields["subselect"]
    targets = query.fields.get("targetList") if isinstance(query, TreeNode) else None
    first = targets[0] if isinstance(targets, list) and targets else None
    elem = _result_type(first.fields.get("expr")) if isinstance(first, TreeNode) else None
    if elem is None:
        return template
    type_name = str(run.rows("select format_type(%s::oid, null)", (elem,))[0][0])
    open_at = matches[0].start() + 3
    close_at = _balanced(sql, open_at)
    if close_at < 0:
        return template
    inner = sql[open_at + 1 : close_at].strip()
    fname = index_name(re.sub(r"\W+", "_", table.name), [re.sub(r"\W+", "_", name)], "ids")
    func = qualified(table.schema, fname)
    head, tail = sql[: matches[0].start()], sql[close_at + 1 :]
    new_sql = f"{head}= ANY (( SELECT {func}() )::{type_name}[]){tail}"
    return (
        "-- the subquery moves into a function the policy calls once per statement, as the\n"
        "-- caller (SECURITY INVOKER: current_user and the RLS of the tables it reads are\n"
        "-- unchanged; SECURITY DEFINER would skip their RLS but change current_user).\n"
        f"CREATE OR REPLACE FUNCTION {func}() RETURNS {type_name}[]\n"
        f"  LANGUAGE sql STABLE SET search_path = {search_path}\n"
        f"  AS $doctor$ SELECT array({inner}) $doctor$;\n"
        f"{alter} ({new_sql});"
    )


def _load_statements(run: _Run) -> None:
    """pg_stat_statements for this database, once; a skip for each check that needs it if not."""
    row = run.rows(
        "select n.nspname from pg_extension e join pg_namespace n on n.oid = e.extnamespace"
        " where e.extname = 'pg_stat_statements'"
    )
    needs = ("slow-query", "missing-composite-index", "wide-row-fetch")
    if not row:
        preload = str(run.rows("select current_setting('shared_preload_libraries')")[0][0])
        how = (
            "run CREATE EXTENSION pg_stat_statements; in this database"
            if "pg_stat_statements" in preload
            else "add pg_stat_statements to shared_preload_libraries, restart the server, then "
            "CREATE EXTENSION pg_stat_statements; (on Supabase: enable it under Extensions)"
        )
        for check in needs:
            run.skip(check, f"pg_stat_statements is not installed in this database: {how}")
        return
    run.pgss_schema = str(row[0][0])
    try:
        with run.conn.transaction():
            rows = run.rows(
                "select s.userid, s.queryid, s.query, s.calls, s.total_exec_time,"
                " s.mean_exec_time, s.rows"
                f" from {qualified(run.pgss_schema, 'pg_stat_statements')} s"
                " where s.dbid = (select oid from pg_database where datname = current_database())"
                " and s.query not like '%%dbresilience doctor%%'"
                " order by s.total_exec_time desc limit 2000"
            )
    except psycopg.Error as exc:
        for check in needs:
            run.skip(check, f"pg_stat_statements cannot be read: {_first_line(exc)}")
        return
    run.statements = [
        _Statement(int(r[0]), int(r[1] or 0), str(r[2]), int(r[3]), float(r[4]), float(r[5]),
                   int(r[6]))
        for r in rows
    ]  # fmt: skip
    if not run.privileged:
        for check in needs:
            run.skip(
                check,
                f"partly: the statements of roles other than {run.user!r} are hidden "
                "(<insufficient privilege>); GRANT pg_read_all_stats TO "
                f"{quote_ident(run.user)}; to see them",
            )


def _dml(run: _Run) -> list[_Statement]:
    # only normalised DML: utility statements are stored as sent and may hold a password
    return [s for s in run.statements or [] if _DML.match(s.query)]


def _reset_sql(run: _Run, s: _Statement) -> str:
    func = qualified(run.pgss_schema or "public", "pg_stat_statements_reset")
    return (
        f"SELECT {func}({s.userid}, (SELECT oid FROM pg_database"
        f" WHERE datname = current_database()), {s.queryid});"
    )


def _without_statements(run: _Run, check: str) -> bool:
    """True (and a skip for *check*, unless one says why already) when pg_stat_statements
    could not be read."""
    if run.statements is not None:
        return False
    if not any(s.id == check for s in run.skipped):
        run.skip(check, "pg_stat_statements could not be read (see the slow-query skip)")
    return True


def _slow_query(run: _Run) -> None:
    if _without_statements(run, "slow-query"):
        return
    statements = _dml(run)
    slow = sorted(
        (s for s in statements if s.mean_ms >= run.opts.slow_ms),
        key=lambda s: -s.mean_ms,
    )[: run.opts.top]
    total = sum(s.total_ms for s in statements) or 1.0
    heavy = [s for s in statements[: run.opts.top] if s not in slow and s.total_ms / total >= 0.2]
    for s in slow + heavy:
        is_slow = s in slow
        severity = (
            Severity.ERROR
            if s.mean_ms >= 10 * run.opts.slow_ms and is_slow
            else Severity.WARNING
            if is_slow
            else Severity.INFO
        )
        run.find(
            "slow-query",
            severity,
            f"statement {s.queryid}",
            {
                "query": " ".join(s.query.split())[:500],
                "calls": s.calls,
                "mean_ms": round(s.mean_ms, 2),
                "total_ms": round(s.total_ms, 1),
                "share_of_total": round(s.total_ms / total, 3),
                "rows": s.rows,
            },
            "-- see where the time goes (put real values in place of $1, $2 …):\n"
            f"-- EXPLAIN (ANALYZE, BUFFERS) {' '.join(s.query.split())[:1000]};\n"
            "-- then fix the plan (see missing-composite-index / seq-scan-heavy), and forget\n"
            "-- this statement's history so the next run measures the new plan:\n"
            + _reset_sql(run, s),
            f"Averages {s.mean_ms:.1f} ms over {s.calls} calls"
            if is_slow
            else f"Takes {s.total_ms / total:.0%} of this database's statement time",
        )


def _filters(run: _Run) -> dict[int, list[tuple[_Statement, list[int]]]]:
    """Per table: the statements filtering it and the attnums they filter on (equalities first)."""
    out: dict[int, list[tuple[_Statement, list[int]]]] = {}
    for s in _dml(run):
        shape = statement_shape(s.query)
        if shape is None:
            continue
        table = run.table_of(shape.schema, shape.table)
        if table is None:
            continue
        attnums = table.column_numbers([*shape.equal, *shape.ranged][:4])
        out.setdefault(table.oid, []).append((s, attnums or []))
    return out


def _index_fix(table: _Table, attnums: Sequence[int]) -> str:
    cols = [table.columns[k][0] for k in attnums]
    return (
        f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {quote_ident(index_name(table.name, cols))}"
        f" ON {table.qname} ({', '.join(map(quote_ident, cols))});"
    )


def _missing_composite(run: _Run) -> None:
    if _without_statements(run, "missing-composite-index"):
        return
    seen: set[tuple[int, tuple[int, ...]]] = set()
    for oid, uses in _filters(run).items():
        table = run.tables[oid]
        for s, attnums in sorted(uses, key=lambda u: -u[0].total_ms):
            if len(attnums) < 2 or run.covered(oid, attnums):
                continue
            key = (oid, tuple(sorted(attnums)))
            if key in seen:
                continue
            seen.add(key)
            cols = [table.columns[k][0] for k in attnums]
            slow = s.mean_ms >= run.opts.slow_ms
            run.find(
                "missing-composite-index",
                Severity.WARNING if slow else Severity.INFO,
                f"{table.label} ({', '.join(cols)})",
                {
                    "suggestion": True,
                    "columns": cols,
                    "query": " ".join(s.query.split())[:500],
                    "calls": s.calls,
                    "mean_ms": round(s.mean_ms, 2),
                    "table_rows": table.rows,
                },
                "-- a suggestion read from the statement's text: check it with EXPLAIN first\n"
                + _index_fix(table, attnums),
                f"A statement filters {table.label} on {', '.join(cols)} and no index leads with "
                "these columns: PostgreSQL reads one index and filters the rest, or the table.",
            )


def _seq_scan_heavy(run: _Run) -> None:
    filters = _filters(run) if run.statements is not None else {}
    for rel, seq, seq_read, idx, live in run.rows(
        "select relid, seq_scan, seq_tup_read, coalesce(idx_scan, 0), n_live_tup"
        " from pg_stat_user_tables where relid = any(%s)",
        (list(run.tables),),
    ):
        table = run.tables.get(int(rel))
        if table is None or live < max(run.opts.min_rows, 1) or seq < 10 or seq <= idx:
            continue
        uses = sorted(filters.get(table.oid, []), key=lambda u: -u[0].total_ms)
        wanted = next((a for _, a in uses if a and not run.covered(table.oid, a)), None)
        reset = f"SELECT pg_stat_reset_single_table_counters({_regclass(table)});"
        fix = (
            (
                _index_fix(table, wanted)
                if wanted
                else "-- find its statements (pg_stat_statements), then index their filter"
            )
            + "\n-- then start its counters afresh (needs superuser or a grant):\n"
            + reset
        )
        run.find(
            "seq-scan-heavy",
            Severity.WARNING,
            table.label,
            {
                "seq_scan": int(seq),
                "seq_tup_read": int(seq_read),
                "idx_scan": int(idx),
                "live_rows": int(live),
                "filtered_on": [table.columns[k][0] for k in wanted] if wanted else None,
            },
            fix,
            f"{seq} sequential scans read {seq_read} rows of a {live}-row table, against "
            f"{idx} index scans: each scan reads the whole table.",
        )


def _regclass(table: _Table) -> str:
    literal = table.qname.replace("'", "''")
    return f"'{literal}'::regclass"


def _wide_row_fetch(run: _Run) -> None:
    if _without_statements(run, "wide-row-fetch"):
        return
    widths: dict[int, dict[str, int]] = {}
    for schema, name, column, width in run.rows(
        "select schemaname, tablename, attname, avg_width from pg_stats"
        " where schemaname = any(%s) and avg_width >= 500",
        (run.schemas,),
    ):
        table = run.table_of(str(schema), str(name))
        if table is not None:
            widths.setdefault(table.oid, {})[str(column)] = int(width)
    for s in _dml(run):
        shape = statement_shape(s.query)
        if shape is None or not shape.select_star:
            continue
        table = run.table_of(shape.schema, shape.table)
        if table is None:
            continue
        wide = widths.get(table.oid, {})
        if table.toast < 1_000_000 and not wide:
            continue
        big_types = ("text", "jsonb", "json", "bytea")
        wide_cols = [
            n for n, t in table.columns.values() if n in wide or (t in big_types and table.toast)
        ]
        keep = [n for n, _ in table.columns.values() if n not in wide_cols]
        run.find(
            "wide-row-fetch",
            Severity.WARNING,
            f"{table.label} statement {s.queryid}",
            {
                "query": " ".join(s.query.split())[:500],
                "calls": s.calls,
                "toast_bytes": table.toast,
                "wide_columns": wide_cols,
                "avg_width": wide,
            },
            "-- name the columns the caller needs instead of *, e.g.:\n"
            f"-- SELECT {', '.join(map(quote_ident, keep)) or '...'} FROM {table.qname} ...\n"
            "-- then forget the old statement's history:\n" + _reset_sql(run, s),
            f"SELECT * fetches {', '.join(wide_cols) or 'the large columns'} "
            f"({table.toast} bytes out of line) on each of {s.calls} calls, whether the caller "
            "uses them or not: detoasting and sending them dominates the statement.",
        )


def _index_findings(run: _Run) -> None:
    fk_cols: list[tuple[int, list[int]]] = [
        (int(rel), [int(k) for k in keys])
        for rel, keys in run.rows(
            "select conrelid, conkey::int[] from pg_constraint where contype = 'f'"
            " and conrelid = any(%s)",
            (list(run.tables),),
        )
    ]
    reset = run.rows("select stats_reset from pg_stat_database where datname = current_database()")[
        0
    ][0]
    redundant: set[int] = set()
    by_table: dict[int, list[_Index]] = {}
    for i in run.indexes:
        by_table.setdefault(i.table, []).append(i)
    for table_oid, indexes in by_table.items():
        table = run.tables[table_oid]
        for a in indexes:
            for b in indexes:
                if a is b or a.oid in redundant or b.oid in redundant:
                    continue
                same = a.signature == b.signature
                # a's keys a strict prefix of b's (plain btree, same opclasses there): a is spare
                prefix = (
                    not same
                    and a.signature[0] == b.signature[0] == "btree"
                    and not a.unique
                    and not a.partial
                    and not b.partial
                    and 0 not in a.keys
                    and len(a.keys) < len(b.keys)
                    and b.keys[: len(a.keys)] == a.keys
                    and not a.signature[5]
                    and str(b.signature[2]).split()[: len(a.keys)] == str(a.signature[2]).split()
                )
                if (
                    not (same or prefix)
                    or a.constraint
                    or (same and a.oid < b.oid and not b.constraint)
                ):
                    continue
                redundant.add(a.oid)
                run.find(
                    "duplicate-index",
                    Severity.WARNING if same else Severity.INFO,
                    f"{a.schema}.{a.name}",
                    {
                        "same_as" if same else "prefix_of": f"{b.schema}.{b.name}",
                        "index_bytes": a.size,
                        "scans": a.scans,
                        "definition": a.definition,
                        "table": table.label,
                    },
                    f"DROP INDEX CONCURRENTLY IF EXISTS {qualified(a.schema, a.name)};",
                    f"{b.name} serves every read {a.name} serves"
                    + ("" if same else " (its leading columns are the same)")
                    + ": every write to the table updates both.",
                )
    for i in run.indexes:
        if i.scans or i.unique or i.constraint or not i.valid or i.oid in redundant:
            continue
        table = run.tables[i.table]
        serves_fk = any(
            rel == i.table
            and i.leads_with(cols)
            and sum(
                1
                for j in run.indexes
                if j.table == rel and j.leads_with(cols) and j.oid not in redundant
            )
            == 1
            for rel, cols in fk_cols
        )
        if serves_fk:
            continue  # the only index for a foreign key: scanned by deletes on the parent
        run.find(
            "unused-index",
            Severity.INFO,
            f"{i.schema}.{i.name}",
            {
                "scans": 0,
                "index_bytes": i.size,
                "table": table.label,
                "stats_since": str(reset) if reset else "the cluster's start",
                "definition": i.definition,
            },
            "-- check the replicas too (their scans are counted there), then:\n"
            f"DROP INDEX CONCURRENTLY IF EXISTS {qualified(i.schema, i.name)};",
            "Never scanned since the statistics were reset, yet every INSERT and UPDATE of "
            f"{table.label} writes to it.",
        )


_TIMEOUT_SETTINGS = ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")


def _ms(value: str, unit: str | None) -> float:
    factor = {"ms": 1.0, "s": 1000.0, "min": 60000.0}.get(unit or "ms", 1.0)
    return float(value) * factor


def _timeouts(run: _Run) -> None:
    values = {
        str(name): _ms(str(reset), unit)
        for name, reset, unit in run.rows(
            "select name, reset_val, unit from pg_settings where name = any(%s)",
            (list(_TIMEOUT_SETTINGS),),
        )
    }
    overrides = [
        str(c)
        for (c,) in run.rows(
            "select unnest(setconfig) from pg_db_role_setting s"
            " where s.setdatabase in (0, (select oid from pg_database"
            "                             where datname = current_database()))"
            " and s.setrole in (0, (select oid from pg_roles where rolname = current_user))"
        )
        if str(c).split("=", 1)[0] in _TIMEOUT_SETTINGS
    ]
    target = f"ALTER ROLE {quote_ident(run.user)} IN DATABASE {quote_ident(run.database)} SET"
    pool = run.opts.pool
    config = pool._config if pool is not None else None
    deadline = config.query_timeout if config is not None else None
    statement = values.get("statement_timeout", 0.0)
    evidence_base: dict[str, Any] = {"role_or_database_settings": overrides}
    if deadline is not None:
        evidence_base["pool_query_timeout_s"] = deadline
    wanted = f"{int((deadline or 5.0) * 1000)}ms"
    if statement == 0 and not (config is not None and config.statement_timeout is not None):
        run.find(
            "timeouts",
            Severity.WARNING,
            "statement_timeout",
            {**evidence_base, "statement_timeout_ms": 0},
            f"{target} statement_timeout = '{wanted}';",
            "0 means no limit: a statement stuck on a lock or a bad plan holds its connection "
            "(and its pool slot) until someone kills it, long after the client gave up (the seeds "
            "chose 5 s, under the platform's function limit).",
        )
    elif (
        deadline is not None
        and config is not None
        and config.statement_timeout is None
        and (statement > deadline * 1000)
    ):
        run.find(
            "timeouts",
            Severity.WARNING,
            "statement_timeout",
            {**evidence_base, "statement_timeout_ms": statement},
            f"{target} statement_timeout = '{wanted}';",
            f"The pool gives up after {deadline:g} s but the server keeps running the statement "
            f"for up to {statement / 1000:g} s, holding the connection and its locks.",
        )
    elif statement > 30_000:
        run.find(
            "timeouts",
            Severity.INFO,
            "statement_timeout",
            {**evidence_base, "statement_timeout_ms": statement},
            f"{target} statement_timeout = '{wanted}';",
            f"{statement / 1000:g} s is longer than most HTTP platforms let a request run "
            "(seed 000: a 12 s timeout outlived the serverless function).",
        )
    if values.get("idle_in_transaction_session_timeout", 0.0) == 0 and not (
        config is not None and config.idle_in_transaction_timeout is not None
    ):
        run.find(
            "timeouts",
            Severity.WARNING,
            "idle_in_transaction_session_timeout",
            {**evidence_base, "idle_in_transaction_session_timeout_ms": 0},
            f"{target} idle_in_transaction_session_timeout = '60s';",
            "0 means no limit: a client that dies or hangs inside a transaction keeps its locks "
            "and its connection, and blocks VACUUM, until the server is told otherwise.",
        )
    if values.get("lock_timeout", 0.0) == 0 and not (
        config is not None and config.lock_timeout is not None
    ):
        run.find(
            "timeouts",
            Severity.INFO if statement else Severity.WARNING,
            "lock_timeout",
            {**evidence_base, "lock_timeout_ms": 0},
            f"{target} lock_timeout = '{int(max(1.0, (deadline or 5.0) / 2) * 1000)}ms';",
            "0 means a statement waits for a lock as long as statement_timeout allows"
            + (" (and that is unbounded too)" if not statement else "")
            + "; a short lock_timeout fails fast behind a migration instead of queueing.",
        )


def _connections(run: _Run) -> None:
    (max_conn, reserved, reserved16, used, used_db, role_limit, db_limit, port, app_pooler) = (
        run.rows(
            "select current_setting('max_connections')::int,"
            " current_setting('superuser_reserved_connections')::int,"
            " coalesce(current_setting('reserved_connections', true), '0')::int,"
            " (select count(*) from pg_stat_activity where backend_type = 'client backend'),"
            " (select count(*) from pg_stat_activity where backend_type = 'client backend'"
            "  and datname = current_database()),"
            " (select rolconnlimit from pg_roles where rolname = current_user),"
            " (select datconnlimit from pg_database where datname = current_database()),"
            " inet_server_port(),"
            " (select count(*) from pg_stat_activity where application_name ~* %s)",
            (_POOLERS.pattern,),
        )[0]
    )
    capacity = int(max_conn) - int(reserved) - int(reserved16)
    client_port = run.conn.info.port
    through_proxy = port is not None and client_port is not None and int(port) != client_port
    pooler = run.opts.pooler
    if pooler is None:
        pooler = through_proxy or bool(app_pooler)
    evidence: dict[str, Any] = {
        "max_connections": int(max_conn),
        "reserved": int(reserved) + int(reserved16),
        "available": capacity,
        "in_use": int(used),
        "in_use_this_database": int(used_db),
        "role_limit": int(role_limit) if role_limit is not None else None,
        "database_limit": int(db_limit) if db_limit is not None else None,
        "pooler": pooler,
    }
    others = max(0, int(used) - 1)  # the doctor's own connection is not the fleet's
    limits = [capacity] + [int(x) for x in (role_limit, db_limit) if x is not None and x >= 0]
    limit = min(limits)
    if not run.privileged:
        run.skip(
            "connections",
            "partly: application names and addresses of other roles' sessions are hidden, so a "
            f"pooler may go unseen; GRANT pg_read_all_stats TO {quote_ident(run.user)};",
        )
    pool = run.opts.pool
    if pool is not None:
        per = pool._config.max_size
        fleet = per * run.opts.instances
        evidence.update({"pool_max_size": per, "instances": run.opts.instances, "fleet": fleet})
        free = limit - others
        fits = max(1, (limit - others - 5) // run.opts.instances)
        if fleet > free:
            run.find(
                "connections",
                Severity.ERROR if fleet > limit else Severity.WARNING,
                run.database,
                evidence,
                f"-- {run.opts.instances} instances x max_size {per} = {fleet} connections, "
                f"{free} free:\n-- set max_size={fits} per instance, or put a pooler "
                "(PgBouncer, Supavisor) in transaction mode in front, or raise the limit\n"
                f"-- (restart needed): ALTER SYSTEM SET max_connections = {fleet + others + 20};",
                f"At full load the fleet's pools want {fleet} connections and the server has "
                f"{free} free: the rest fail with 'too many connections' (53300), as in seed 004.",
            )
            return
    if capacity and int(used) >= 0.8 * capacity:
        run.find(
            "connections",
            Severity.ERROR if int(used) >= 0.95 * capacity else Severity.WARNING,
            run.database,
            evidence,
            "-- lower the pools' max_size, or put a pooler in transaction mode in front",
            f"{used} of {capacity} connection slots are in use: new connections will soon be "
            "refused with 'too many connections' (53300).",
        )
        return
    run.find(
        "connections",
        Severity.INFO,
        run.database,
        evidence,
        None,
        f"{used} of {capacity} connection slots in use"
        + ("" if pooler else "; no pooler seen in front (pass pooler=True if there is one)"),
    )


def _bloat_and_vacuum(run: _Run) -> None:
    autovacuum = str(run.rows("select current_setting('autovacuum')")[0][0])
    if autovacuum != "on":
        run.find(
            "vacuum",
            Severity.WARNING,
            "autovacuum",
            {"autovacuum": autovacuum},
            "ALTER SYSTEM SET autovacuum = on;\nSELECT pg_reload_conf();",
            "With autovacuum off, dead rows pile up and statistics go stale in every table.",
        )
    for rel, live, dead, mod, vac, avac, ana, aana in run.rows(
        "select relid, n_live_tup, n_dead_tup, n_mod_since_analyze, last_vacuum,"
        " last_autovacuum, last_analyze, last_autoanalyze"
        " from pg_stat_user_tables where relid = any(%s)",
        (list(run.tables),),
    ):
        table = run.tables.get(int(rel))
        if table is None:
            continue
        live, dead, mod = int(live), int(dead), int(mod)
        last_vacuum = max((str(v) for v in (vac, avac) if v), default=None)
        if dead >= 1000 and dead >= 0.2 * (live + dead):
            run.find(
                "bloat",
                Severity.WARNING,
                table.label,
                {
                    "dead_rows": dead,
                    "live_rows": live,
                    "dead_share": round(dead / (live + dead), 3),
                    "last_vacuum": last_vacuum,
                    "table_bytes": table.size,
                },
                f"VACUUM (ANALYZE) {table.qname};",
                f"{dead} dead rows ({dead / (live + dead):.0%}) are still read by every scan "
                "and keep the table and its indexes larger than their data.",
            )
        if any(o.lower() == "autovacuum_enabled=false" for o in table.options):
            run.find(
                "vacuum",
                Severity.WARNING,
                table.label,
                {"reloptions": list(table.options), "last_vacuum": last_vacuum},
                f"ALTER TABLE {table.qname} RESET (autovacuum_enabled);",
                "Autovacuum is off for this table: its dead rows and statistics are left "
                "to manual VACUUM ANALYZE.",
            )
        elif live >= max(run.opts.min_rows, 1) and not (ana or aana) and mod >= 0.1 * live:
            run.find(
                "vacuum",
                Severity.INFO,
                table.label,
                {"live_rows": live, "changed_since_analyze": mod, "last_analyze": None},
                f"ANALYZE {table.qname};",
                "Never analyzed: the planner guesses its row counts and value spread.",
            )


_CHECKS: tuple[tuple[str, Callable[[_Run], None]], ...] = (
    ("fk-without-index", _fk_without_index),
    ("json-not-jsonb", _json_not_jsonb),
    ("rls-per-row", _rls),
    ("slow-query", _load_statements),  # loads the statements the next checks read
    ("slow-query", _slow_query),
    ("missing-composite-index", _missing_composite),
    ("seq-scan-heavy", _seq_scan_heavy),
    ("wide-row-fetch", _wide_row_fetch),
    ("duplicate-index", _index_findings),
    ("timeouts", _timeouts),
    ("connections", _connections),
    ("bloat", _bloat_and_vacuum),
)
