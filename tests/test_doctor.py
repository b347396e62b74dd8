"""dbr.doctor on a real cluster with pg_stat_statements preloaded: every planted problem found
with its id, every fix it writes makes its finding go away, a clean schema stays quiet, a role
without privileges hears what was skipped, and the command's JSON, exit codes and secrecy."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

import dbresilience as dbr
from dbresilience._doctor import CHECKS
from dbresilience.faults import TemporaryPostgres, free_port

SEEDS_SCHEMA = """
create extension pg_stat_statements;
create schema auth;
create function auth.uid() returns uuid language sql stable
  as $$ select nullif(current_setting('request.jwt.claim.sub', true), '')::uuid $$;
create function can_access_interview(owner uuid) returns boolean language plpgsql
  as $$ begin return owner = auth.uid(); end $$;
create table "User" (
  id uuid primary key, email text not null, "isPremium" boolean not null default false,
  credits int not null default 0, preferences json);
create table "InterviewSession" (
  id bigserial primary key, "userId" uuid not null references "User" (id),
  status text not null, "createdAt" timestamptz not null default now());
create table "Transcript" (
  id bigserial primary key, "sessionId" bigint not null references "InterviewSession" (id),
  content text not null);
create index on "Transcript" ("sessionId");
create table "Feedback" (
  id bigserial primary key, "sessionId" bigint not null references "InterviewSession" (id),
  "userId" uuid not null, data json, score int);
create index "Feedback_sessionId_idx" on "Feedback" ("sessionId");
create index "Feedback_sessionId_copy" on "Feedback" ("sessionId");
create index "Feedback_score_idx" on "Feedback" (score);
alter table "Feedback" enable row level security;
create policy "own feedback" on "Feedback" for select using ("userId" = auth.uid());
create table interviews (id serial primary key, user_id uuid, notes text);
alter table interviews enable row level security;
create policy "Users can view own interviews" on interviews for select using (
  user_id in (select id from "User" where email = current_user and "isPremium"));
create policy "insert own" on interviews for insert with check (can_access_interview(user_id));
create table "Audit" (id serial primary key, note text);
alter table "Audit" enable row level security;
"""

SEEDS_DATA = """
insert into "User" (id, email, "isPremium", credits, preferences)
  select gen_random_uuid(), 'u' || i || '@example.com', i % 3 = 0, i, '{"theme": "dark"}'
  from generate_series(1, 2000) i;
-- 120,000 sessions: the planted slow query (a scan of them) takes 3-4 ms on a fast machine;
-- 30,000 took 0.95 ms there, under the test's slow_ms=1.0
insert into "InterviewSession" ("userId", status)
  select u.id, (array['new', 'live', 'done', 'failed'])[1 + g % 4]
  from generate_series(1, 60) g cross join "User" u;
insert into "Transcript" ("sessionId", content)
  select 1 + i % 500, (select string_agg(md5(random()::text || i || k), '')
                       from generate_series(1, 120) k)
  from generate_series(1, 600) i;
insert into "Feedback" ("sessionId", "userId", data, score)
  select 1 + i % 500, gen_random_uuid(), '{"ok": true}', i % 5 from generate_series(1, 500) i;
insert into interviews (user_id, notes) select id, 'n' from "User" limit 100;
alter table "User" set (autovacuum_enabled = false);
"""

CLEAN_SCHEMA = """
create schema auth;
create function auth.uid() returns uuid language sql stable
  as $$ select nullif(current_setting('request.jwt.claim.sub', true), '')::uuid $$;
create table "User" (id uuid primary key, email text not null, preferences jsonb);
create table "InterviewSession" (
  id bigserial primary key, "userId" uuid not null references "User" (id), status text);
create index on "InterviewSession" ("userId", status);
create table "Feedback" (
  id bigserial primary key, "sessionId" bigint not null references "InterviewSession" (id),
  "userId" uuid not null, data jsonb);
create index on "Feedback" ("sessionId");
alter table "Feedback" enable row level security;
create policy "own feedback" on "Feedback" for select using ("userId" = (select auth.uid()));
insert into "User" select gen_random_uuid(), 'u' || i from generate_series(1, 50) i;
"""

SLOW = 'select * from "InterviewSession" where "userId" = %s and status = %s'
WIDE = 'select * from "Transcript" where "sessionId" = %s'
NARROW = 'select id, "sessionId" from "Transcript" where "sessionId" = %s'


@pytest.fixture(scope="session")
def doctor_pg() -> Iterator[TemporaryPostgres]:
    """One throwaway cluster with pg_stat_statements preloaded, for every doctor test."""
    try:
        cluster = TemporaryPostgres(
            settings={"shared_preload_libraries": "pg_stat_statements", "log_min_messages": "fatal"}
        ).start()
    except Exception as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            raise
        pytest.skip(f"no throwaway PostgreSQL cluster: {exc}")
    try:
        yield cluster
    finally:
        cluster.close()


def _database(cluster: TemporaryPostgres, script: str) -> str:
    name = f"doctor_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(cluster.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    with psycopg.connect(cluster.conninfo(name), autocommit=True) as conn:
        conn.execute(script)
    return cluster.conninfo(name)


def _flush_stats(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Make this backend's table counters visible to others now (PostgreSQL 15+), or wait."""
    if conn.info.server_version >= 150000:
        conn.execute("select pg_stat_force_next_flush()")
        conn.execute("select 1")
    else:
        time.sleep(0.7)


def _workload(dsn: str, *, fixed: bool) -> None:
    """The seeds' service: the two-column session filter, transcripts fetched with SELECT *."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        users = [r[0] for r in conn.execute('select id from "User" order by id limit 12')]
        for user in users:
            conn.execute(SLOW, (user, "live"))
        for session in range(1, 11):
            conn.execute(NARROW if fixed else WIDE, (session,))
        _flush_stats(conn)


@pytest.fixture(scope="session")
def seeds_dsn(doctor_pg: TemporaryPostgres) -> str:
    """A database shaped like the seeds', every planted problem in it, after a workload."""
    dsn = _database(doctor_pg, SEEDS_SCHEMA)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SEEDS_DATA)
        conn.execute("analyze")
        _flush_stats(conn)  # or the set-up's own counters land after the reset
        conn.execute("select pg_stat_reset(), pg_stat_statements_reset()")
        conn.execute("analyze")  # live row counts again, after the reset
        conn.execute('update "User" set credits = credits + 1')
        conn.execute('update "User" set credits = credits + 1')
        _flush_stats(conn)
    _workload(dsn, fixed=False)
    return dsn


def _statements(fix_sql: str) -> list[str]:
    """The statements of a fix (comment lines dropped), each run on its own: CREATE INDEX
    CONCURRENTLY may not share a transaction."""
    body = "\n".join(line for line in fix_sql.splitlines() if not line.startswith("--"))
    return [s.strip() for s in body.split(";\n") if s.strip().rstrip(";")]


PLANTED = {
    ("fk-without-index", "public.InterviewSession (userId)"),
    ("json-not-jsonb", "public.User.preferences"),
    ("json-not-jsonb", "public.Feedback.data"),
    ("rls-per-row", "public.interviews policy 'Users can view own interviews' (USING)"),
    ("rls-per-row", "public.interviews policy 'insert own' (WITH CHECK)"),
    ("rls-per-row", "public.Feedback policy 'own feedback' (USING)"),
    ("missing-composite-index", "public.InterviewSession (userId, status)"),
    ("seq-scan-heavy", "public.InterviewSession"),
    ("duplicate-index", "public.Feedback_sessionId_copy"),
    ("bloat", "public.User"),
    ("vacuum", "public.User"),
    ("timeouts", "statement_timeout"),
    ("timeouts", "idle_in_transaction_session_timeout"),
}


# read from statistics: they describe the past, so they clear once the workload has run again
FROM_STATISTICS = {"slow-query", "seq-scan-heavy", "missing-composite-index", "wide-row-fetch"}


def _apply(dsn: str, finding: dbr.DoctorFinding) -> None:
    assert finding.fix_sql, finding
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in _statements(finding.fix_sql):
            conn.execute(statement)
        _flush_stats(conn)


def test_finds_every_planted_problem_and_each_fix_clears_it(seeds_dsn: str) -> None:
    """Each planted problem is found with its id; each fix the doctor wrote, applied alone,
    makes its finding disappear on the next run; the statistics findings clear after their
    fixes and a rerun of the (fixed) workload; nothing above info is left."""
    report = dbr.doctor(seeds_dsn, slow_ms=1.0)
    found = {(f.id, f.object) for f in report.findings}
    assert found >= PLANTED, sorted(PLANTED - found)
    slow = [f for f in report.by_id("slow-query") if f.severity is not dbr.Severity.INFO]
    assert any('"InterviewSession"' in f.evidence["query"] for f in slow)
    wide = report.by_id("wide-row-fetch")
    assert [f.evidence["wide_columns"] for f in wide] == [["content"]]
    assert ("rls-per-row", "public.Audit") in found  # RLS on, no policy: info
    assert ("unused-index", "public.Feedback_score_idx") in found
    for finding in report.findings:
        assert finding.id in CHECKS
        assert finding.why
        assert finding.object
    assert report.skipped == ()
    loud = [f for f in report.findings if f.severity is not dbr.Severity.INFO]
    for finding in [f for f in loud if f.id not in FROM_STATISTICS]:
        _apply(seeds_dsn, finding)
        after = dbr.doctor(seeds_dsn, slow_ms=1.0)
        assert (finding.id, finding.object) not in {(f.id, f.object) for f in after.findings}
    for finding in [f for f in loud if f.id in FROM_STATISTICS]:
        _apply(seeds_dsn, finding)
    _workload(seeds_dsn, fixed=True)
    again = dbr.doctor(seeds_dsn, slow_ms=1.0)
    assert [(f.id, f.object) for f in again.findings if f.severity is not dbr.Severity.INFO] == []
    with psycopg.connect(seeds_dsn, autocommit=True) as conn:
        policies = dict(conn.execute("select policyname, qual from pg_policies").fetchall())
        # the rewritten policy still lets the premium user with the role's email see their rows
        conn.execute(
            'insert into "User" (id, email, "isPremium") values (%s, current_user, true)',
            (uuid.UUID(int=7),),
        )
        conn.execute("insert into interviews (user_id) values (%s)", (uuid.UUID(int=7),))
        conn.execute('grant select on interviews, "User" to public')
        role = f"doctor_rls_{uuid.uuid4().hex[:6]}"
        conn.execute(sql.SQL("create role {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("grant {} to postgres").format(sql.Identifier(role)))
        conn.execute('update "User" set email = %s where id = %s', (role, uuid.UUID(int=7)))
        conn.execute(sql.SQL("set role {}").format(sql.Identifier(role)))
        seen = conn.execute("select user_id from interviews").fetchall()
        conn.execute("reset role")
        conn.execute(sql.SQL("drop owned by {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))
    assert "SELECT auth.uid()" in str(policies["own feedback"])
    assert seen == [(uuid.UUID(int=7),)]


def test_the_doctor_writes_nothing_and_bounds_its_statements(seeds_dsn: str) -> None:
    """The session is read-only and its statements carry the doctor's statement_timeout."""
    with psycopg.connect(seeds_dsn, autocommit=True) as conn:
        before = conn.execute("select count(*), sum(calls) from pg_stat_statements").fetchone()
    try:  # 1 ms: loading the catalog times out, or the checks that do are named
        report = dbr.doctor(seeds_dsn, statement_timeout=0.001)
    except psycopg.errors.QueryCanceled:
        pass
    else:
        for skip in report.skipped:
            assert "timed out after 0.001 s" in skip.reason, skip
    with psycopg.connect(seeds_dsn, autocommit=True) as conn:
        texts = [
            r[0]
            for r in conn.execute(
                "select query from pg_stat_statements where query like '%%dbresilience doctor%%'"
            )
        ]
    assert before is not None
    assert all(t.lstrip().startswith("/* dbresilience doctor */") for t in texts)
    assert not any(
        w in t.lower() for t in texts for w in ("insert ", "update ", "delete ", "create ")
    )


def test_a_clean_schema_gives_nothing_above_info(doctor_pg: TemporaryPostgres) -> None:
    """Indexed foreign keys, jsonb, a wrapped auth.uid() policy and bounded timeouts: quiet."""
    dsn = _database(doctor_pg, CLEAN_SCHEMA)
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(doctor_pg.dsn, autocommit=True) as conn:
        for setting, value in (
            ("statement_timeout", "5s"),
            ("lock_timeout", "2s"),
            ("idle_in_transaction_session_timeout", "60s"),
        ):
            conn.execute(
                sql.SQL("alter database {} set {} = {}").format(
                    sql.Identifier(str(name)), sql.Identifier(setting), sql.Literal(value)
                )
            )
    report = dbr.doctor(dsn)
    assert [f for f in report.findings if f.severity is not dbr.Severity.INFO] == []
    assert report.worst() in (None, dbr.Severity.INFO)
    assert not report.failed("warning")


def test_a_role_without_privileges_is_told_what_it_could_not_see(
    doctor_pg: TemporaryPostgres,
) -> None:
    """A plain login role gets the schema checks and a named skip for what needs grants."""
    seeds_dsn = _database(
        doctor_pg,
        "create extension pg_stat_statements; create table p (id int primary key);"
        " create table c (id int primary key, p int references p, doc json)",
    )
    role = f"doctor_ro_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(seeds_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create role {} login").format(sql.Identifier(role)))
    try:
        dsn = psycopg.conninfo.make_conninfo(seeds_dsn, user=role)
        report = dbr.doctor(dsn)
        skipped = {s.id: s.reason for s in report.skipped}
        for check in ("slow-query", "missing-composite-index", "wide-row-fetch", "connections"):
            assert "pg_read_all_stats" in skipped[check], skipped
        assert report.server["user"] == role
        assert report.by_id("json-not-jsonb")
        assert report.by_id("fk-without-index")
    finally:
        with psycopg.connect(seeds_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))


def test_without_pg_stat_statements_the_report_says_how_to_enable_it(
    doctor_pg: TemporaryPostgres,
) -> None:
    """No extension in the database: the statement checks are skipped with the way to enable."""
    dsn = _database(doctor_pg, "create table t (id int primary key, doc json)")
    report = dbr.doctor(dsn)
    skipped = {s.id: s.reason for s in report.skipped}
    for check in ("slow-query", "missing-composite-index", "wide-row-fetch"):
        assert "CREATE EXTENSION pg_stat_statements" in skipped[check]
    assert report.by_id("json-not-jsonb")


def test_a_pool_fleet_that_can_exhaust_the_server_is_an_error(
    doctor_pg: TemporaryPostgres,
) -> None:
    """100 instances of a max_size-10 pool against 300 slots: connections error; a pool that
    leaves statement_timeout to an unbounded server: timeouts warning naming the pool's."""
    dsn = _database(doctor_pg, "select 1")
    pool = dbr.Pool(dsn, max_size=10, query_timeout=3.0, statement_timeout=None)
    report = dbr.doctor(dsn, pool=pool, instances=100)
    (conn,) = report.by_id("connections")
    assert conn.severity is dbr.Severity.ERROR
    assert conn.evidence["fleet"] == 1000
    assert "max_size=" in (conn.fix_sql or "")
    fits = dbr.doctor(dsn, pool=pool, instances=2).by_id("connections")
    assert [f.severity for f in fits] == [dbr.Severity.INFO]
    apool = dbr.AsyncPool(dsn, max_size=10)  # only its settings are read: never opened
    (aconn,) = dbr.doctor(dsn, pool=apool, instances=100).by_id("connections")
    assert aconn.severity is dbr.Severity.ERROR
    (statement,) = [f for f in report.by_id("timeouts") if f.object == "statement_timeout"]
    assert statement.evidence["pool_query_timeout_s"] == 3.0
    assert "3000ms" in (statement.fix_sql or "")


def test_arguments_are_checked_by_name() -> None:
    """Bad arguments raise before any connection, naming the argument."""
    with pytest.raises(ValueError, match="instances"):
        dbr.doctor("host=127.0.0.1", instances=0)
    with pytest.raises(TypeError, match="pool"):
        dbr.doctor("host=127.0.0.1", pool="nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="statement_timeout"):
        dbr.doctor("host=127.0.0.1", statement_timeout=0)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dbresilience", "doctor", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PGPASSWORD": ""},
    )


def test_cli_json_shape_exit_codes_and_no_password(doctor_pg: TemporaryPostgres) -> None:
    """--json has checks and skipped with the documented keys; --fail-on sets the exit status;
    the DSN's password is in neither output (trust auth ignores it)."""
    dsn = _database(doctor_pg, "create table t (id int primary key, doc json)")
    secret = "s3cr3t-Pa55word"
    with_password = psycopg.conninfo.make_conninfo(dsn, password=secret)
    out = _cli(with_password, "--json", "--fail-on", "warning")
    assert out.returncode == 1, out.stderr
    data = json.loads(out.stdout)
    assert set(data) >= {"checks", "skipped"}
    for check in data["checks"]:
        assert set(check) == {"id", "severity", "object", "evidence", "fix_sql", "why"}
        assert check["severity"] in ("info", "warning", "error")
    assert {"json-not-jsonb", "timeouts"} <= {c["id"] for c in data["checks"]}
    assert _cli(with_password, "--json", "--fail-on", "error").returncode == 0
    text = _cli(with_password, "--schema", "public")
    assert text.returncode == 0
    assert "[json-not-jsonb] public.t.doc" in text.stdout
    assert "== WARNING" in text.stdout
    url = f"postgresql://postgres:{secret}@127.0.0.1:{free_port()}/x?connect_timeout=2"
    refused = _cli(url, "--fail-on", "warning")
    assert refused.returncode == 2
    assert "doctor failed" in refused.stdout
    for result in (out, text, refused):
        assert secret not in result.stdout + result.stderr


HOSTILE = """
create schema auth;
create function auth.uid() returns uuid language sql stable
  as $$ select nullif(current_setting('request.jwt.claim.sub', true), '')::uuid $$;
create schema "we""ird sch";
create table "we""ird sch"."Par ent" (id int primary key);
create table "we""ird sch"."Tab ""x""; drop table t; --" (
  id int primary key, "pa rent" int references "we""ird sch"."Par ent" (id),
  "da""ta" json, "own er" uuid);
alter table "we""ird sch"."Tab ""x""; drop table t; --" enable row level security;
create policy "p""ol; --" on "we""ird sch"."Tab ""x""; drop table t; --"
  using ("own er" = auth.uid());
create table t (id int);
"""


def test_names_that_need_quoting_get_fixes_that_work(doctor_pg: TemporaryPostgres) -> None:
    """Quotes, spaces and semicolons in schema, table, column and policy names: the fixes run
    as written, touch only their object, and clear their findings."""
    dsn = _database(doctor_pg, HOSTILE)
    schema = ['we"ird sch']
    report = dbr.doctor(dsn, schemas=schema)

    def loud(r: dbr.DoctorReport) -> list[str]:  # the server's timeouts are not this test's
        return sorted(
            f.id for f in r.findings if f.severity is not dbr.Severity.INFO and f.id != "timeouts"
        )

    assert loud(report) == ["fk-without-index", "json-not-jsonb", "rls-per-row"]
    for finding in report.findings:
        if finding.id != "timeouts" and finding.severity is not dbr.Severity.INFO:
            _apply(dsn, finding)
    assert loud(dbr.doctor(dsn, schemas=schema)) == []
    with psycopg.connect(dsn) as conn:
        assert conn.execute("select count(*) from t").fetchone() == (0,)  # still there


def test_through_pgbouncer_in_transaction_mode(doctor_pg: TemporaryPostgres) -> None:
    """Through a PgBouncer in transaction mode the doctor runs the same and sees the pooler."""
    from tests.conftest import start_pgbouncer

    dsn = _database(doctor_pg, "create table t (id int primary key, doc json)")
    name = str(psycopg.conninfo.conninfo_to_dict(dsn)["dbname"])
    bouncer = start_pgbouncer(doctor_pg.dsn, pool_mode="transaction")
    try:
        report = dbr.doctor(bouncer.conninfo(name))
    finally:
        bouncer.close()
    assert report.by_id("json-not-jsonb")
    (conn,) = report.by_id("connections")
    assert conn.evidence["pooler"] is True
    assert report.server["database"] == name


def test_index_kinds_are_told_apart(doctor_pg: TemporaryPostgres) -> None:
    """A GIN index does not cover a foreign key, a hash one does; a pattern-ops index is no
    prefix duplicate of a default-ops one; a real prefix is (info)."""
    dsn = _database(
        doctor_pg,
        "create extension btree_gin;"
        " create table p (id int primary key);"
        " create table c (id int primary key, p int references p, q int references p, name text);"
        " create index c_p_gin on c using gin (p);"
        " create index c_q_hash on c using hash (q);"
        " create index c_name_pattern on c (name text_pattern_ops);"
        " create index c_name_id on c (name, id);"
        " create index c_name on c (name);",
    )
    report = dbr.doctor(dsn)
    assert [f.object for f in report.by_id("fk-without-index")] == ["public.c (p)"]
    dups = {f.object: f.severity for f in report.by_id("duplicate-index")}
    assert dups == {"public.c_name": dbr.Severity.INFO}


def test_the_command_uses_rich_on_a_terminal(doctor_pg: TemporaryPostgres) -> None:
    """On a terminal with Rich installed the command prints Rich's report; piped, plain text."""
    from dbresilience._doctor_render import has_rich, run_doctor_command

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    dsn = _database(doctor_pg, "create table t (id int primary key, doc json)")
    out = Terminal()
    assert run_doctor_command(dsn, fail_on="warning", out=out) == 1
    piped = io.StringIO()
    assert run_doctor_command(dsn, out=piped) == 0
    assert "[json-not-jsonb] public.t.doc" in piped.getvalue()
    if has_rich():
        assert "json-not-jsonb" in out.getvalue()
        assert "[json-not-jsonb] public.t.doc" not in out.getvalue()  # a panel, not the text
