"""classify() checked against references nobody here wrote.

- every SQLSTATE in PostgreSQL's own ``errcodes.txt`` (the installed server's share folder,
  pgserver's, or failing both psycopg's table of errors), raised for real by the server with
  ``RAISE … USING ERRCODE`` and judged class by class by PostgreSQL's documented meaning
  (Appendix A, "PostgreSQL Error Codes": the class titles are read from the file itself);
- every disconnect message fragment SQLAlchemy's PostgreSQL dialects treat as a disconnect,
  read from the installed ``sqlalchemy.dialects.postgresql`` source;
- PgBouncer's own error texts, produced by a real PgBouncer in front of a throwaway cluster;
- Prisma's published meaning of every P-code the table uses.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import inspect
import pkgutil
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import dbresilience as dbr
from dbresilience import ErrorKind as K
from dbresilience._classify import _SPECS
from dbresilience.faults import FaultProxy, TemporaryPgBouncer, TemporaryPostgres, free_port
from tests.conftest import start_pgbouncer

# --- PostgreSQL's errcodes.txt ---------------------------------------------------------------

_LINE = re.compile(r"^([0-9A-Z]{5})\s+([EWS])\s+\S+(?:\s+(\S+))?\s*$")
_SECTION = re.compile(r"^Section: Class ([0-9A-Z]{2}) - (.*)$")


def _errcodes_files() -> list[Path]:
    found: list[Path] = []
    found += sorted(Path("/usr/share/postgresql").glob("*/errcodes.txt"))
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin:
        found += sorted((Path(spec.origin).parent / "pginstall").glob("share/**/errcodes.txt"))
    return found


def _errcodes() -> tuple[dict[str, str], dict[str, str]]:
    """``({sqlstate: condition name}, {class: title})`` from every errcodes.txt found (their
    union: newer servers add codes); psycopg's table when there is none."""
    codes: dict[str, str] = {}
    classes: dict[str, str] = {}
    for path in _errcodes_files():
        for line in path.read_text().splitlines():
            if m := _SECTION.match(line):
                classes[m.group(1)] = m.group(2)
            elif m := _LINE.match(line):
                codes[m.group(1)] = m.group(3) or ""
    if not codes:  # no server share folder: psycopg knows every SQLSTATE of its release
        for name, obj in vars(psycopg.errors).items():
            sqlstate = getattr(obj, "sqlstate", None)
            if isinstance(sqlstate, str) and len(sqlstate) == 5:
                codes[sqlstate] = name
        classes = {code[:2]: "(psycopg's table)" for code in codes}
    return codes, classes


CODES, CLASSES = _errcodes()

# What PostgreSQL's documentation says each class means, turned into what a caller may do.
# "retry": running the same work again can succeed; "unknown": a write may have been applied;
# "kinds": the only kinds allowed. Exceptions by code below.
FATAL_DATA = {K.INVALID_DATA, K.VALUE_TOO_LONG}
QUERY = {K.QUERY_ERROR, K.SYNTAX_ERROR, K.TABLE_MISSING, K.COLUMN_MISSING, K.ACCESS_DENIED}
NOT_AN_ERROR = {K.SERVER_ERROR, K.QUERY_ERROR, K.UNKNOWN}
JUDGED_CLASSES: dict[str, tuple[bool, bool, set[K]]] = {
    # class: (retry, commit unknown, allowed kinds)
    "00": (False, False, NOT_AN_ERROR),  # successful completion (cannot even be raised)
    "01": (False, False, NOT_AN_ERROR),  # warning
    "02": (False, False, NOT_AN_ERROR),  # no data
    "03": (False, False, QUERY | {K.SERVER_ERROR}),  # SQL statement not yet complete
    # connection exception: the connection is gone mid-flight; see the exceptions below
    "08": (True, True, {K.CONNECTION_LOST}),
    "09": (False, False, QUERY | {K.SERVER_ERROR}),  # triggered action exception
    "0A": (False, False, QUERY),  # feature not supported
    "0B": (False, False, QUERY | {K.SERVER_ERROR}),  # invalid transaction initiation
    "0F": (False, False, QUERY | {K.SERVER_ERROR}),  # locator exception
    "0L": (False, False, QUERY | {K.SERVER_ERROR}),  # invalid grantor
    "0P": (False, False, QUERY | {K.SERVER_ERROR}),  # invalid role specification
    "0Z": (False, False, QUERY | {K.SERVER_ERROR}),  # diagnostics exception
    "20": (False, False, QUERY | {K.SERVER_ERROR}),  # case not found
    "21": (False, False, FATAL_DATA),  # cardinality violation
    "22": (False, False, FATAL_DATA),  # data exception
    "23": (
        False,
        False,
        {
            K.UNIQUE_VIOLATION,
            K.FOREIGN_KEY_VIOLATION,
            K.NOT_NULL_VIOLATION,
            K.CONSTRAINT_VIOLATION,
        },
    ),  # integrity constraint violation
    "24": (False, False, QUERY | {K.SERVER_ERROR}),  # invalid cursor state
    "25": (False, False, QUERY),  # invalid transaction state (exceptions below)
    "26": (False, False, QUERY | {K.SERVER_ERROR}),  # invalid SQL statement name
    "27": (False, False, QUERY | {K.SERVER_ERROR}),  # triggered data change violation
    "28": (False, False, {K.AUTH_FAILED}),  # invalid authorization specification
    "2B": (False, False, QUERY),  # dependent privilege descriptors still exist
    "2D": (False, False, QUERY),  # invalid transaction termination
    "2F": (False, False, QUERY | {K.SERVER_ERROR}),  # SQL routine exception
    "34": (False, False, QUERY),  # invalid cursor name
    "38": (False, False, QUERY | {K.SERVER_ERROR}),  # external routine exception
    "39": (False, False, QUERY | {K.SERVER_ERROR}),  # external routine invocation exception
    "3B": (False, False, QUERY | {K.SERVER_ERROR}),  # savepoint exception
    "3D": (False, False, {K.DATABASE_MISSING}),  # invalid catalog name
    "3F": (False, False, QUERY),  # invalid schema name
    # transaction rollback: rolled back, so never "unknown" (but 40003); see below
    "40": (False, False, {K.SERVER_ERROR, K.CONSTRAINT_VIOLATION, K.QUERY_ERROR}),
    "42": (False, False, QUERY),  # syntax error or access rule violation
    "44": (False, False, {K.CONSTRAINT_VIOLATION}),  # WITH CHECK OPTION violation
    "53": (False, False, {K.INSUFFICIENT_RESOURCES}),  # insufficient resources
    "54": (False, False, QUERY),  # program limit exceeded
    "55": (False, False, QUERY | {K.SERVER_ERROR}),  # object not in prerequisite state
    "57": (False, False, {K.SERVER_ERROR}),  # operator intervention (see below)
    "58": (False, False, {K.SERVER_ERROR}),  # system error (I/O outside PostgreSQL)
    "72": (True, False, {K.SNAPSHOT_TOO_OLD}),  # snapshot failure: a new snapshot can work
    "F0": (False, False, {K.SERVER_ERROR}),  # configuration file error
    "HV": (False, False, {K.SERVER_ERROR}),  # foreign data wrapper error
    "P0": (False, False, {K.QUERY_ERROR}),  # PL/pgSQL error (RAISE, ASSERT)
    "XX": (False, False, {K.SERVER_ERROR}),  # internal error
}
JUDGED_CODES: dict[str, tuple[bool, bool, set[K]]] = {
    # connection exception, but not "lost with a write in flight"
    "08001": (True, False, {K.UNREACHABLE}),  # client unable to establish a connection
    "08004": (True, False, {K.UNREACHABLE}),  # server rejected establishment
    "08003": (True, False, {K.CONNECTION_CLOSED}),  # connection does not exist: nothing sent
    # invalid transaction state with a meaning of their own
    "25006": (True, False, {K.READ_ONLY}),  # read-only transaction: a demoted primary
    "25P03": (True, False, {K.IDLE_TIMEOUT}),  # idle in transaction: rolled back
    "25P04": (True, False, {K.IDLE_TIMEOUT}),  # transaction timeout: rolled back
    # transaction rollback
    "40001": (True, False, {K.SERIALIZATION_FAILURE}),
    "40P01": (True, False, {K.DEADLOCK}),
    "40002": (False, False, {K.CONSTRAINT_VIOLATION}),  # integrity violation at COMMIT
    "40003": (True, True, {K.COMPLETION_UNKNOWN}),  # statement completion unknown
    "53300": (True, False, {K.TOO_MANY_CONNECTIONS}),
    "55P03": (True, False, {K.LOCK_NOT_AVAILABLE}),  # lock not available (lock_timeout)
    # operator intervention
    "57014": (False, False, {K.QUERY_TIMEOUT}),  # query canceled: statement_timeout
    "57P01": (True, True, {K.CONNECTION_LOST}),  # admin shutdown: terminated mid-flight
    "57P02": (True, True, {K.CONNECTION_LOST}),  # crash shutdown
    "57P03": (True, False, {K.UNREACHABLE}),  # cannot connect now: starting, in recovery
    "57P04": (False, False, {K.DATABASE_MISSING}),  # database dropped: it will not come back
    "57P05": (True, False, {K.IDLE_TIMEOUT}),  # idle session timeout: nothing in flight
    "28000": (False, False, {K.AUTH_FAILED}),
    "42501": (False, False, {K.ACCESS_DENIED}),
}


def _judged(code: str) -> tuple[bool, bool, set[K]]:
    return JUDGED_CODES.get(code) or JUDGED_CLASSES[code[:2]]


def test_errcodes_reference_was_found() -> None:
    """PostgreSQL's list of SQLSTATEs is there to check against (>= 200 codes, >= 40 classes),
    and every class in it has a judgement here."""
    assert len(CODES) >= 200
    assert len(CLASSES) >= 40
    assert set(CLASSES) <= set(JUDGED_CLASSES), set(CLASSES) - set(JUDGED_CLASSES)


@pytest.fixture(scope="module")
def raiser(pg_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection with a function that raises any SQLSTATE (a temporary function)."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "create function pg_temp.dbr_raise(code text) returns void language plpgsql as "
            "$$ begin raise exception using errcode = code, message = 'dbr test ' || code; end $$"
        )
        yield conn


def test_every_sqlstate_raised_by_the_server_is_judged_by_its_meaning(
    raiser: psycopg.Connection[Any],
) -> None:
    """Each SQLSTATE of errcodes.txt, raised for real by the server, is classified as its
    class's documented meaning allows: retryable only where running it again can work,
    commit-unknown only where a write may have been applied, 503 for what is transient."""
    wrong: list[str] = []
    raised = 0
    for code in sorted(CODES):
        try:
            raiser.execute("select pg_temp.dbr_raise(%s)", (code,))
        except psycopg.Error as exc:
            error: psycopg.Error = exc
        else:  # pragma: no cover - RAISE EXCEPTION always raises
            pytest.fail(f"{code} did not raise")
        if error.sqlstate != code:
            assert code.startswith("00"), (code, error.sqlstate)  # RAISE refuses success
            continue
        raised += 1
        retry, unknown, kinds = _judged(code)
        c = dbr.classify(error)
        if (
            c.retryable != retry
            or c.commit_unknown != unknown
            or c.kind not in kinds
            or c.sqlstate != code
            or (c.retryable and c.http_status != 503)
        ):
            wrong.append(
                f"{code} ({CODES[code]}): got {c.kind.name} retryable={c.retryable} "
                f"commit_unknown={c.commit_unknown}; expected one of "
                f"{sorted(k.name for k in kinds)} retryable={retry} commit_unknown={unknown}"
            )
    assert wrong == []
    assert raised >= len(CODES) - 1


# --- SQLAlchemy's disconnect messages ----------------------------------------------------------


def _sqlalchemy_disconnect_fragments() -> dict[str, str]:
    """Every message fragment an ``is_disconnect`` method tests for (``"…" in str(e)``), and
    the psycopg2 dialect's ``_is_disconnect_messages``, in the installed
    ``sqlalchemy.dialects.postgresql`` modules, with the module it came from."""
    import sqlalchemy.dialects.postgresql as pg_dialects

    fragments: dict[str, str] = {}
    for info in pkgutil.iter_modules(pg_dialects.__path__):
        module = importlib.import_module(f"{pg_dialects.__name__}.{info.name}")
        try:
            tree = ast.parse(inspect.getsource(module))
        except (OSError, TypeError):  # pragma: no cover - no source shipped
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name in (
                "is_disconnect",
                "_is_disconnect_messages",
            ):
                for inner in ast.walk(node):
                    # `"text" in str(e)`, and the tuple of texts the psycopg2 dialect scans
                    candidates: list[ast.expr] = []
                    if isinstance(inner, ast.Compare) and isinstance(inner.ops[0], ast.In):
                        candidates.append(inner.left)
                    if isinstance(inner, ast.Tuple) and node.name == "_is_disconnect_messages":
                        candidates.extend(inner.elts)
                    for candidate in candidates:
                        if isinstance(candidate, ast.Constant) and isinstance(candidate.value, str):
                            fragments[candidate.value] = info.name
    return fragments


def test_every_sqlalchemy_disconnect_message_is_a_lost_or_closed_connection() -> None:
    """Each fragment SQLAlchemy's PostgreSQL dialects read as a disconnect is P1017 and
    retryable here too, alone and inside a driver's message."""
    fragments = _sqlalchemy_disconnect_fragments()
    assert len(fragments) >= 15  # psycopg2's list alone has 16
    wrong = []
    for fragment, module in fragments.items():
        for text in (fragment, f"consuming input failed: {fragment}"):
            c = dbr.classify(psycopg.OperationalError(text))
            if c.kind not in (K.CONNECTION_LOST, K.CONNECTION_CLOSED) or not c.retryable:
                wrong.append(f"{module}: {text!r} -> {c.kind.name}")
    assert wrong == []


# --- the two holes -----------------------------------------------------------------------------


def test_socket_timeout_mid_statement_is_commit_unknown_not_connect_timeout() -> None:
    """libpq's text when keepalives or tcp_user_timeout give up on a live connection is a lost
    connection with the write in doubt (P1017), not P1002, so with_retry does not re-run a
    non-idempotent write."""
    text = "consuming input failed: could not receive data from server: Connection timed out"
    c = dbr.classify(psycopg.OperationalError(text))
    assert (c.code, c.kind, c.commit_unknown) == ("P1017", K.CONNECTION_LOST, True)
    calls = []

    @dbr.with_retry(attempts=3, base_delay=0.001)
    def write() -> None:
        calls.append(1)
        raise psycopg.OperationalError(text)

    with pytest.raises(psycopg.OperationalError):
        write()
    assert len(calls) == 1
    send = dbr.classify(psycopg.OperationalError("could not send data to server: Broken pipe"))
    assert send.commit_unknown


def test_failure_while_connecting_with_unknown_text_is_not_commit_unknown() -> None:
    """A server that accepts and hangs up during the handshake: libpq's real error, with a
    text that speaks of a closed connection, is P1001 (can't reach), retryable, and never
    commit-unknown: nothing can be committed on a connection that never opened."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def hang_up() -> None:
        # libpq may try once or twice; once the test closed the listener, accept() fails (its
        # OSError, unhandled, failed whichever test ran next: seen beside two busy processes)
        with contextlib.suppress(OSError):
            for _ in range(2):
                conn, _ = listener.accept()
                conn.close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    try:
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(f"host=127.0.0.1 port={port} sslmode=disable connect_timeout=2")
    finally:
        listener.close()
    c = dbr.classify(info.value)
    assert (c.code, c.retryable, c.commit_unknown) == ("P1001", True, False), (
        str(info.value),
        c,
    )


def test_connect_failures_keep_their_specific_kinds(pg_dsn: str) -> None:
    """The connect-phase rule does not blur what is known: refused stays P1001, a missing
    database P1003."""
    refused = dbr.classify(
        _failure(lambda: psycopg.connect(f"host=127.0.0.1 port={free_port()} connect_timeout=2"))
    )
    assert refused.code == "P1001"
    params = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    params["dbname"] = "dbr_no_such_database"
    dsn = psycopg.conninfo.make_conninfo("", **params)
    missing = dbr.classify(_failure(lambda: psycopg.connect(dsn)))
    assert (missing.code, missing.retryable) == ("P1003", False)


# --- PgBouncer's own errors, from a real PgBouncer ---------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[TemporaryPostgres]:
    """A throwaway cluster of this module's own (its backends are killed here)."""
    try:
        c = TemporaryPostgres().start()
    except Exception as exc:  # pragma: no cover - the environment decides
        pytest.skip(f"no throwaway cluster: {exc}")
    yield c
    c.close()


@pytest.fixture(scope="module")
def upstream(cluster: TemporaryPostgres) -> Iterator[FaultProxy]:
    """A fault proxy between PgBouncer and the cluster: cutting it crashes server connections."""
    proxy = FaultProxy("127.0.0.1", cluster.port).start()
    yield proxy
    proxy.close()


@pytest.fixture(scope="module")
def bouncer(upstream: FaultProxy) -> Iterator[TemporaryPgBouncer]:
    """PgBouncer, transaction mode, one server connection, short waits, four clients at most."""
    b = start_pgbouncer(
        f"host=127.0.0.1 port={upstream.port}",
        databases=["postgres"],
        default_pool_size=1,
        settings={
            "query_wait_timeout": 1,
            "max_client_conn": 4,
            "server_login_retry": 1,
            "server_connect_timeout": 1,
        },
    )
    yield b
    b.close()


def _until_served(bouncer: TemporaryPgBouncer, within: float = 15.0) -> None:
    """Wait until *bouncer* serves a query again: after a login failure PgBouncer refuses
    clients for ``server_login_retry`` ("server login has been failing"), and the next test on
    this module's PgBouncer (any order: pytest-randomly) must find it as it was."""
    deadline = time.monotonic() + within
    while True:
        try:
            with psycopg.connect(bouncer.dsn, autocommit=True, connect_timeout=2) as conn:
                conn.execute("select 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _failure(fn: Any) -> BaseException:
    try:
        fn()
    except BaseException as exc:
        return exc
    pytest.fail("expected a failure")


def test_pgbouncer_startup_errors_are_configuration_errors(bouncer: TemporaryPgBouncer) -> None:
    """`unsupported startup parameter` (DBR1005) and `no such database` (P1003): not retryable."""
    rejected = dbr.classify(
        _failure(lambda: psycopg.connect(bouncer.dsn + " options=-cwork_mem=1MB"))
    )
    assert (rejected.kind, rejected.retryable) == (K.CONFIGURATION, False)
    missing = _failure(lambda: psycopg.connect(bouncer.conninfo("dbr_not_served")))
    assert "no such database" in str(missing)
    c = dbr.classify(missing)
    assert (c.code, c.retryable, c.commit_unknown) == ("P1003", False, False)


def test_pgbouncer_query_wait_timeout_and_client_limit(bouncer: TemporaryPgBouncer) -> None:
    """`query_wait_timeout` (nothing was sent: P2024, retryable) and `no more connections
    allowed` (P2037, retryable), both as PgBouncer says them."""
    with psycopg.connect(bouncer.dsn) as holder:
        holder.execute("select 1")  # an open transaction holds the one server connection
        with psycopg.connect(bouncer.dsn, autocommit=True) as waiter:
            waited = _failure(lambda: waiter.execute("select 1"))
        assert "query_wait_timeout" in str(waited)
        c = dbr.classify(waited)
        assert (c.code, c.retryable, c.commit_unknown) == ("P2024", True, False)
        holder.rollback()
        extra = [psycopg.connect(bouncer.dsn) for _ in range(3)]
        try:
            refused = _failure(lambda: extra.append(psycopg.connect(bouncer.dsn)))
        finally:
            for conn in extra:
                conn.close()
    assert "no more connections allowed" in str(refused)
    c = dbr.classify(refused)
    assert (c.code, c.retryable, c.commit_unknown) == ("P2037", True, False)


def test_pgbouncer_server_crash_and_login_failures(
    bouncer: TemporaryPgBouncer, upstream: FaultProxy
) -> None:
    """A server connection dying under a statement: `server conn crashed?`, P1017 with the
    write in doubt; then, the server unreachable: `query_wait_timeout` and `server login has
    been failing`, P2024 / P1001, retryable, nothing in doubt."""
    conn = psycopg.connect(bouncer.dsn, autocommit=True)
    try:
        conn.execute("select 1")
        threading.Timer(0.3, upstream.down).start()
        crashed = _failure(lambda: conn.execute("select pg_sleep(3)"))
    finally:
        conn.close()
    assert "server conn crashed" in str(crashed)
    c = dbr.classify(crashed)
    assert (c.code, c.retryable, c.commit_unknown) == ("P1017", True, True)
    try:
        seen = set()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "server login has been failing" not in seen:
            with psycopg.connect(bouncer.dsn, autocommit=True) as client:
                exc = _failure(lambda c=client: c.execute("select 1"))  # type: ignore[misc]
            c = dbr.classify(exc)
            assert c.retryable, (str(exc), c)
            assert not c.commit_unknown
            assert c.code in ("P2024", "P1001")
            seen.add(str(exc).split(",")[0])
        assert "server login has been failing" in seen
    finally:
        upstream.restore()
        _until_served(bouncer)
    # PgBouncer's check_fast_fail() text (src/janitor.c): not produced by 1.18 here
    c = dbr.classify(psycopg.errors.ProtocolViolation("pgbouncer cannot connect to server"))
    assert (c.code, c.retryable) == ("P1001", True)


# --- Prisma's published meaning of each P-code -------------------------------------------------

# From Prisma's error reference (https://www.prisma.io/docs/orm/reference/error-reference),
# paraphrased; the kinds that may carry each code by that meaning.
PRISMA: dict[str, tuple[str, set[K]]] = {
    "P1000": ("Authentication failed against database server", {K.AUTH_FAILED}),
    "P1001": ("Can't reach database server", {K.UNREACHABLE}),
    "P1002": ("The database server was reached but timed out", {K.CONNECT_TIMEOUT}),
    "P1003": ("Database does not exist", {K.DATABASE_MISSING}),
    "P1008": ("Operations timed out", {K.QUERY_TIMEOUT}),
    "P1010": ("User was denied access on the database", {K.ACCESS_DENIED}),
    "P1011": ("Error opening a TLS connection", {K.TLS_ERROR}),
    "P1017": (
        "Server has closed the connection",
        {K.CONNECTION_LOST, K.CONNECTION_CLOSED, K.IDLE_TIMEOUT},
    ),
    "P2000": ("The provided value for the column is too long", {K.VALUE_TOO_LONG}),
    "P2002": ("Unique constraint failed", {K.UNIQUE_VIOLATION}),
    "P2003": ("Foreign key constraint failed", {K.FOREIGN_KEY_VIOLATION}),
    "P2004": ("A constraint failed on the database", {K.CONSTRAINT_VIOLATION}),
    "P2007": ("Data validation error", {K.INVALID_DATA}),
    "P2010": ("Raw query failed", {K.QUERY_ERROR, K.SYNTAX_ERROR}),
    "P2011": ("Null constraint violation", {K.NOT_NULL_VIOLATION}),
    "P2021": ("The table does not exist in the current database", {K.TABLE_MISSING}),
    "P2022": ("The column does not exist in the current database", {K.COLUMN_MISSING}),
    "P2024": ("Timed out fetching a new connection from the connection pool", {K.POOL_TIMEOUT}),
    "P2034": (
        "Transaction failed due to a write conflict or a deadlock",
        {K.SERIALIZATION_FAILURE, K.DEADLOCK},
    ),
    "P2037": ("Too many database connections opened", {K.TOO_MANY_CONNECTIONS}),
}


def test_every_prisma_code_is_used_with_its_published_meaning() -> None:
    """Every P-code in the table is one Prisma publishes, carried only by kinds that mean what
    Prisma says it means; everything else has a DBR code of the library's own."""
    wrong = []
    for kind, spec in _SPECS.items():
        if spec.code.startswith("P"):
            meaning = PRISMA.get(spec.code)
            if meaning is None or kind not in meaning[1]:
                wrong.append(f"{kind.name} uses {spec.code}")
        else:
            assert spec.code.startswith("DBR"), (kind, spec.code)
    assert wrong == []
