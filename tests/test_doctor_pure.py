"""The doctor's pure parts: reading node trees and statement texts from servers we do not
control (any text, no crash, bounded), identifiers and index names, and the report's shapes."""

from __future__ import annotations

import io
import json

from hypothesis import given, settings
from hypothesis import strategies as st

import dbresilience as dbr
from dbresilience._doctor_parse import (
    index_name,
    parse_node_tree,
    policy_shape,
    quote_ident,
    statement_shape,
)
from dbresilience._doctor_render import has_rich, render_rich, render_text

# pg_policy.polqual of: user_id in (select id from "User" where email = current_user)
ANY_SUBLINK = (
    "{SUBLINK :subLinkType 2 :subLinkId 0 :testexpr {OPEXPR :opno 2972 :opfuncid 2956 "
    ":opresulttype 16 :opretset false :opcollid 0 :inputcollid 0 :args ({VAR :varno 1 "
    ":varattno 2 :vartype 2950 :vartypmod -1 :varcollid 0 :varlevelsup 0 :varnosyn 1 "
    ":varattnosyn 2 :location 10} {PARAM :paramkind 2 :paramid 1 :paramtype 2950 "
    ':paramtypmod -1 :paramcollid 0 :location -1}) :location 18} :operName ("=") '
    ":subselect {QUERY :commandType 1 :rtable ({RANGETBLENTRY :alias <> :eref {ALIAS "
    ':aliasname User :colnames ("id" "email")} :rtekind 0 :relid 16400}) :targetList '
    "({TARGETENTRY :expr {VAR :varno 1 :varattno 1 :vartype 2950 :vartypmod -1 :varcollid 0 "
    ":varlevelsup 0 :varnosyn 1 :varattnosyn 1 :location 30} :resno 1 :resname id}) "
    ":jointree {FROMEXPR :fromlist ({RANGETBLREF :rtindex 1}) :quals {FUNCEXPR :funcid 745 "
    ":funcresulttype 19 :funcretset false :args <> :location 60}}} :location 18}"
)
# "userId" = (select auth.uid()): the wrapper, evaluated once
WRAPPED = (
    "{OPEXPR :opno 2972 :opfuncid 2956 :opresulttype 16 :args ({VAR :varno 1 :varattno 3 "
    ":vartype 2950 :varlevelsup 0 :location 5} {SUBLINK :subLinkType 4 :subLinkId 0 "
    ":testexpr <> :operName <> :subselect {QUERY :commandType 1 :rtable <> :targetList "
    "({TARGETENTRY :expr {FUNCEXPR :funcid 16390 :funcresulttype 2950 :args <> :location 20} "
    ":resno 1 :resname uid}) :jointree {FROMEXPR :fromlist <> :quals <>}} :location 14}) "
    ":location 12}"
)
# "userId" = auth.uid(): the bare call, once per row
BARE = (
    "{OPEXPR :opno 2972 :opfuncid 2956 :opresulttype 16 :args ({VAR :varno 1 :varattno 3 "
    ":vartype 2950 :varlevelsup 0 :location 5} {FUNCEXPR :funcid 16390 :funcresulttype 2950 "
    ":args <> :location 20}) :location 12}"
)


def test_policy_shapes() -> None:
    """A subquery over a table, the (select f()) wrapper and a bare call are told apart."""
    shape = policy_shape(parse_node_tree(ANY_SUBLINK))
    assert (shape.subqueries, shape.correlated) == (1, 0)
    assert shape.unwrapped == ()  # current_user inside the subquery is the subquery's business
    wrapped = policy_shape(parse_node_tree(WRAPPED))
    assert (wrapped.subqueries, wrapped.unwrapped, wrapped.row_functions) == (0, (), ())
    assert policy_shape(parse_node_tree(BARE)).unwrapped == (16390,)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('{}()[]<>: \\"SUBLINK:funcid 12VAR')), max_size=300))
def test_node_trees_never_crash(text: str) -> None:
    """Any text, hostile nesting included, gives a tree or None, never an exception."""
    policy_shape(parse_node_tree(text))


def test_deep_nesting_is_refused_not_crashed() -> None:
    """A tree nested past the recursion limit reads as None."""
    assert parse_node_tree("(" * 50_000) is None
    for depth in (300, 450, 600, 900, 5_000):
        policy_shape(parse_node_tree("{SUBLINK :subselect (" * depth))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_statement_texts_never_crash(text: str) -> None:
    """Any statement text gives a shape or None."""
    statement_shape(text)
    statement_shape("select * from t where " + text)


def test_statement_shapes() -> None:
    """Equality columns first, ranges after, aliases and quotes understood, OR and joins not."""
    shape = statement_shape(
        'SELECT u.* FROM public."User" AS u WHERE u."isPremium" = $1 AND credits > $2 LIMIT $3'
    )
    assert shape is not None
    assert (shape.schema, shape.table, shape.equal, shape.ranged, shape.select_star) == (
        "public", "User", ("isPremium",), ("credits",), True,
    )  # fmt: skip
    between = statement_shape("update t set a = $1 where b between $2 and $3 and c = $4")
    assert between is not None
    assert (between.equal, between.ranged) == (("c",), ("b",))
    either = statement_shape("select a from t where a = $1 or b = $2")
    assert either is not None
    assert either.equal == either.ranged == ()
    assert statement_shape("select * from a join b on a.id = b.id where a.x = $1") is None
    assert statement_shape("vacuum t") is None


@given(st.text(min_size=1, max_size=200))
def test_identifiers_are_always_quoted_safely(name: str) -> None:
    """quote_ident doubles inner quotes, drops NULs; index names fit in 63 bytes."""
    quoted = quote_ident(name)
    assert quoted.startswith('"')
    assert quoted.endswith('"')
    assert '"' not in quoted[1:-1].replace('""', "")
    assert len(index_name(name, [name, name]).encode()) <= 63


def _sample() -> dbr.DoctorReport:
    return dbr.DoctorReport(
        findings=(
            dbr.DoctorFinding(
                "fk-without-index",
                dbr.Severity.WARNING,
                "public.Feedback (sessionId)",
                {"columns": ["sessionId"], "table_rows": 10},
                'CREATE INDEX CONCURRENTLY "Feedback_sessionId_idx" ON "public"."Feedback" (x);',
                "No index leads with the foreign key's columns.",
            ),
        ),
        skipped=(dbr.DoctorSkip("slow-query", "pg_stat_statements is not installed"),),
        server={"database": "app", "user": "svc", "version": "15.2", "schemas": ["public"]},
    )


def test_report_shapes_and_fail_on() -> None:
    """JSON keys as documented, text grouped by severity, failed() by level."""
    report = _sample()
    data = json.loads(report.to_json())
    assert set(data["checks"][0]) == {"id", "severity", "object", "evidence", "fix_sql", "why"}
    assert data["skipped"] == [
        {"id": "slow-query", "reason": "pg_stat_statements is not installed"}
    ]
    assert report.failed("warning")
    assert not report.failed("error")
    assert report.worst() is dbr.Severity.WARNING
    text = render_text(report)
    assert "== WARNING (1)" in text
    assert "[slow-query] pg_stat_statements" in text
    assert str(report) == text


def test_rich_rendering_when_installed() -> None:
    """Rich, when there, renders every finding and skip."""
    if not has_rich():
        return
    out = io.StringIO()
    sample = _sample()
    hostile = dbr.DoctorFinding(
        "json-not-jsonb", dbr.Severity.ERROR, "public.[bold]t[/bold] [/]", {}, None, "why"
    )
    render_rich(dbr.DoctorReport((hostile, *sample.findings), sample.skipped), out)
    shown = out.getvalue()
    assert "public.[bold]t[/bold] [/]" in shown  # a name is shown as is, never as markup
    assert "fk-without-index" in shown
    assert "slow-query" in shown


def test_the_doc_lists_every_check_with_a_source() -> None:
    """docs/doctor.md has a row for every check id, each with a link to its source."""
    from pathlib import Path

    from dbresilience._doctor import CHECKS

    doc = (Path(__file__).parent.parent / "docs" / "doctor.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in doc.splitlines() if line.startswith("| `")}
    for check in CHECKS:
        assert f"`{check}`" in rows, check
        assert "https://" in rows[f"`{check}`"], check
