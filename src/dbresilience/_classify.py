"""Error classification: what went wrong, whether retrying can help, and what to answer.

The order of evidence is fixed: the library's own errors first (they know what they are), then
the SQLSTATE anywhere in the chain, then the exception class, then the message text, then the
state of the connection the error came from. The chain is the exception, SQLAlchemy's ``.orig``,
``__cause__`` and ``__context__``, walked breadth-first and cycle-safe.

Everything read here is untrusted: a message may be a megabyte long and built to make a regular
expression backtrack, a ``__str__`` or a property may raise anything (``KeyboardInterrupt``
included), a chain may loop or run ten thousand links deep. So the walk is bounded
(``_MAX_CHAIN`` links), only the head of each message is read (``_SCAN_CHARS``), texts are
matched as plain substrings (linear) plus one pattern whose quantifier is bounded and cannot
backtrack past a quote, and every attribute or ``str()`` of a foreign object is guarded.

Nothing here imports an optional dependency: SQLAlchemy and redis-py exceptions are recognised by
module and class name, so classifying costs no import and works whichever versions are installed.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import socket
from collections import deque
from dataclasses import dataclass

import psycopg
import psycopg_pool

__all__ = ["Classification", "ErrorKind", "classify"]

_MAX_CHAIN = 16
# libpq puts what happened first ("connection to server at … failed: FATAL: …"); a multi-host
# connection string lists one such line per host. What follows the head is not read.
_SCAN_CHARS = 4096


class ErrorKind(enum.Enum):
    """What kind of failure an exception is; :func:`classify` returns one in ``.kind``."""

    # reaching the server
    UNREACHABLE = "unreachable"
    CONNECT_TIMEOUT = "connect_timeout"
    AUTH_FAILED = "auth_failed"
    DATABASE_MISSING = "database_missing"
    ACCESS_DENIED = "access_denied"
    TLS_ERROR = "tls_error"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    CONFIGURATION = "configuration"
    # a connection that was open
    CONNECTION_LOST = "connection_lost"
    CONNECTION_CLOSED = "connection_closed"
    IDLE_TIMEOUT = "idle_timeout"
    READ_ONLY = "read_only"
    # pools and deadlines
    POOL_TIMEOUT = "pool_timeout"
    QUERY_TIMEOUT = "query_timeout"
    # transactions
    SERIALIZATION_FAILURE = "serialization_failure"
    DEADLOCK = "deadlock"
    LOCK_NOT_AVAILABLE = "lock_not_available"
    COMPLETION_UNKNOWN = "completion_unknown"
    INSUFFICIENT_RESOURCES = "insufficient_resources"
    SNAPSHOT_TOO_OLD = "snapshot_too_old"
    # the request itself is wrong
    UNIQUE_VIOLATION = "unique_violation"
    FOREIGN_KEY_VIOLATION = "foreign_key_violation"
    NOT_NULL_VIOLATION = "not_null_violation"
    CONSTRAINT_VIOLATION = "constraint_violation"
    VALUE_TOO_LONG = "value_too_long"
    INVALID_DATA = "invalid_data"
    TABLE_MISSING = "table_missing"
    COLUMN_MISSING = "column_missing"
    SYNTAX_ERROR = "syntax_error"
    QUERY_ERROR = "query_error"
    # the server itself
    SERVER_ERROR = "server_error"
    # Redis
    REDIS_UNAVAILABLE = "redis_unavailable"
    REDIS_TIMEOUT = "redis_timeout"
    REDIS_AUTH_FAILED = "redis_auth_failed"
    # overload protection
    CIRCUIT_OPEN = "circuit_open"
    # everything else
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class _Spec:
    code: str
    retryable: bool
    commit_unknown: bool
    http_status: int
    retry_after: float | None


_K = ErrorKind
# One row per kind: code, retryable, commit_unknown, HTTP status, suggested Retry-After (s).
# Every kind a client may retry later answers 503 with a Retry-After, even where retrying
# *inside* the call is off by default (a query timeout: the next request may well succeed).
_SPECS: dict[ErrorKind, _Spec] = {
    _K.UNREACHABLE: _Spec("P1001", True, False, 503, 1.0),
    _K.CONNECT_TIMEOUT: _Spec("P1002", True, False, 503, 1.0),
    _K.AUTH_FAILED: _Spec("P1000", False, False, 500, None),
    _K.DATABASE_MISSING: _Spec("P1003", False, False, 500, None),
    _K.ACCESS_DENIED: _Spec("P1010", False, False, 500, None),
    _K.TLS_ERROR: _Spec("P1011", False, False, 500, None),
    _K.TOO_MANY_CONNECTIONS: _Spec("P2037", True, False, 503, 2.0),
    _K.CONFIGURATION: _Spec("DBR1005", False, False, 500, None),
    _K.CONNECTION_LOST: _Spec("P1017", True, True, 503, 1.0),
    _K.CONNECTION_CLOSED: _Spec("P1017", True, False, 503, 1.0),
    _K.IDLE_TIMEOUT: _Spec("P1017", True, False, 503, 1.0),
    _K.READ_ONLY: _Spec("DBR1004", True, False, 503, 2.0),
    _K.POOL_TIMEOUT: _Spec("P2024", True, False, 503, 1.0),
    _K.QUERY_TIMEOUT: _Spec("P1008", False, False, 503, 2.0),
    _K.SERIALIZATION_FAILURE: _Spec("P2034", True, False, 503, 1.0),
    _K.DEADLOCK: _Spec("P2034", True, False, 503, 1.0),
    _K.LOCK_NOT_AVAILABLE: _Spec("DBR2001", True, False, 503, 1.0),
    _K.COMPLETION_UNKNOWN: _Spec("DBR2002", True, True, 503, 1.0),
    _K.INSUFFICIENT_RESOURCES: _Spec("DBR2003", False, False, 503, 5.0),
    _K.SNAPSHOT_TOO_OLD: _Spec("DBR2004", True, False, 503, 1.0),
    _K.UNIQUE_VIOLATION: _Spec("P2002", False, False, 409, None),
    _K.FOREIGN_KEY_VIOLATION: _Spec("P2003", False, False, 409, None),
    _K.NOT_NULL_VIOLATION: _Spec("P2011", False, False, 400, None),
    _K.CONSTRAINT_VIOLATION: _Spec("P2004", False, False, 400, None),
    _K.VALUE_TOO_LONG: _Spec("P2000", False, False, 400, None),
    _K.INVALID_DATA: _Spec("P2007", False, False, 400, None),
    _K.TABLE_MISSING: _Spec("P2021", False, False, 500, None),
    _K.COLUMN_MISSING: _Spec("P2022", False, False, 500, None),
    _K.SYNTAX_ERROR: _Spec("P2010", False, False, 500, None),
    _K.QUERY_ERROR: _Spec("P2010", False, False, 500, None),
    _K.SERVER_ERROR: _Spec("DBR2999", False, False, 500, None),
    _K.REDIS_UNAVAILABLE: _Spec("DBR3001", True, False, 503, 1.0),
    _K.REDIS_TIMEOUT: _Spec("DBR3002", True, False, 503, 1.0),
    _K.REDIS_AUTH_FAILED: _Spec("DBR3003", False, False, 500, None),
    _K.CIRCUIT_OPEN: _Spec("DBR4001", False, False, 503, 1.0),
    _K.CANCELLED: _Spec("DBR9001", False, False, 499, None),
    _K.UNKNOWN: _Spec("DBR9000", False, False, 500, None),
}


@dataclass(frozen=True, slots=True)
class Classification:
    """What :func:`classify` found out about an exception.

    ``retryable`` says whether running the same operation again can help; ``commit_unknown``
    says that a write may or may not have been applied (the connection was lost mid-write or
    during COMMIT), so only idempotent work should be re-run. ``http_status`` and
    ``retry_after`` (seconds, or ``None``) are what a web service should answer. ``reason``
    says which piece of evidence decided, e.g. ``"sqlstate 57P01"`` or ``"class PoolTimeout"``.
    """

    kind: ErrorKind
    code: str
    retryable: bool
    commit_unknown: bool
    http_status: int
    retry_after: float | None
    sqlstate: str | None
    reason: str

    @property
    def transient(self) -> bool:
        """True when the trouble is expected to pass (HTTP 503): retry now or a little later."""
        return self.http_status == 503


def _make(kind: ErrorKind, sqlstate: str | None, reason: str) -> Classification:
    spec = _SPECS[kind]
    return Classification(
        kind=kind,
        code=spec.code,
        retryable=spec.retryable,
        commit_unknown=spec.commit_unknown,
        http_status=spec.http_status,
        retry_after=spec.retry_after,
        sqlstate=sqlstate,
        reason=reason,
    )


def own_classification(kind: ErrorKind, reason: str, *, retry_after: float) -> Classification:
    """The classification a library error carries for itself, with its own Retry-After."""
    return dataclasses.replace(_make(kind, None, reason), retry_after=retry_after)


# --- SQLSTATE ---------------------------------------------------------------------------------

_SQLSTATE_EXACT: dict[str, ErrorKind] = {
    "57P03": _K.UNREACHABLE,  # cannot_connect_now: starting up, shutting down, in recovery
    "57P01": _K.CONNECTION_LOST,  # admin_shutdown (pg_terminate_backend, fast shutdown)
    "57P02": _K.CONNECTION_LOST,  # crash_shutdown
    "57P04": _K.DATABASE_MISSING,  # database_dropped: it will not come back
    "57P05": _K.IDLE_TIMEOUT,  # idle_session_timeout: nothing was in flight
    "25P03": _K.IDLE_TIMEOUT,  # idle_in_transaction_session_timeout: transaction rolled back
    "57014": _K.QUERY_TIMEOUT,  # query_canceled (statement_timeout or a cancel request)
    "40001": _K.SERIALIZATION_FAILURE,
    "40P01": _K.DEADLOCK,
    "40003": _K.COMPLETION_UNKNOWN,  # statement_completion_unknown
    "55P03": _K.LOCK_NOT_AVAILABLE,  # lock_timeout, NOWAIT
    "25006": _K.READ_ONLY,  # read_only_sql_transaction: a standby after failover
    "53300": _K.TOO_MANY_CONNECTIONS,
    "28P01": _K.AUTH_FAILED,
    "28000": _K.AUTH_FAILED,
    "3D000": _K.DATABASE_MISSING,
    "42501": _K.ACCESS_DENIED,
    "23505": _K.UNIQUE_VIOLATION,
    "23503": _K.FOREIGN_KEY_VIOLATION,
    "23502": _K.NOT_NULL_VIOLATION,
    "22001": _K.VALUE_TOO_LONG,
    "42P01": _K.TABLE_MISSING,
    "42703": _K.COLUMN_MISSING,
    "42601": _K.SYNTAX_ERROR,
    "08001": _K.UNREACHABLE,  # sqlclient_unable_to_establish_sqlconnection
    "08004": _K.UNREACHABLE,  # sqlserver_rejected_establishment_of_sqlconnection
    "08007": _K.CONNECTION_LOST,  # transaction_resolution_unknown
    "08003": _K.CONNECTION_CLOSED,  # connection_does_not_exist: nothing could be sent
    "40002": _K.CONSTRAINT_VIOLATION,  # transaction_integrity_constraint_violation
    "25P04": _K.IDLE_TIMEOUT,  # transaction_timeout (PostgreSQL 17): session ended, rolled back
    "72000": _K.SNAPSHOT_TOO_OLD,  # snapshot_too_old: a new snapshot (a retry) can succeed
}

# By the two-character SQLSTATE class, for codes not listed above.
_SQLSTATE_CLASS: dict[str, ErrorKind] = {
    "08": _K.CONNECTION_LOST,  # connection exception
    "22": _K.INVALID_DATA,  # data exception
    "23": _K.CONSTRAINT_VIOLATION,  # integrity constraint violation
    "42": _K.QUERY_ERROR,  # syntax error or access rule violation
    "0A": _K.QUERY_ERROR,  # feature not supported
    "21": _K.INVALID_DATA,  # cardinality violation
    "44": _K.CONSTRAINT_VIOLATION,  # with check option violation
    "53": _K.INSUFFICIENT_RESOURCES,
    "54": _K.QUERY_ERROR,  # program limit exceeded
    "58": _K.SERVER_ERROR,  # system error (I/O)
    "XX": _K.SERVER_ERROR,  # internal error
    "F0": _K.SERVER_ERROR,  # configuration file error
    "25": _K.QUERY_ERROR,  # invalid transaction state
    "2B": _K.QUERY_ERROR,
    "2D": _K.QUERY_ERROR,
    "34": _K.QUERY_ERROR,  # invalid cursor name
    "3F": _K.QUERY_ERROR,  # invalid schema name
    "P0": _K.QUERY_ERROR,  # PL/pgSQL raise
    "HV": _K.SERVER_ERROR,  # foreign data wrapper
    "28": _K.AUTH_FAILED,  # invalid authorization specification
    "3D": _K.DATABASE_MISSING,  # invalid catalog name
}

# PgBouncer answers with 08P01 and a text that says what really happened.
# Their meanings, from PgBouncer's documentation and sources (src/client.c, src/janitor.c):
_PGBOUNCER_08P01: tuple[tuple[str, ErrorKind], ...] = (
    # waited for a server connection longer than query_wait_timeout: nothing was sent
    ("query_wait_timeout", _K.POOL_TIMEOUT),
    # a statement ran past PgBouncer's query_timeout: its server connection was closed
    ("query_timeout", _K.QUERY_TIMEOUT),
    # idle in transaction past idle_transaction_timeout: closed, the transaction rolled back
    ("idle_transaction_timeout", _K.IDLE_TIMEOUT),
    ("no more connections allowed", _K.TOO_MANY_CONNECTIONS),
    ("pgbouncer cannot connect to server", _K.UNREACHABLE),
    ("server login has been failing", _K.UNREACHABLE),
    ("client_login_timeout", _K.UNREACHABLE),
    ("no such database", _K.DATABASE_MISSING),
    ("unsupported startup parameter", _K.CONFIGURATION),
    # the server connection died under a statement in flight: its fate is unknown
    ("server conn crashed", _K.CONNECTION_LOST),
)

_SQLSTATE_RE = re.compile(r"^[0-9A-Z]{5}$")


def _attr(obj: object, name: str) -> object:
    """``getattr(obj, name, None)``, or None when a property or ``__getattr__`` raises."""
    try:
        return getattr(obj, name, None)
    except BaseException:  # even KeyboardInterrupt from foreign code: classify never raises
        return None


def _sqlstate_of(exc: BaseException) -> str | None:
    # psycopg 3 and asyncpg: .sqlstate; psycopg2: .pgcode
    for attr in ("sqlstate", "pgcode"):
        value = _attr(exc, attr)
        if isinstance(value, str) and _SQLSTATE_RE.match(value):
            return value
    return None


def _by_sqlstate(sqlstate: str, exc: BaseException) -> Classification:
    reason = f"sqlstate {sqlstate}"
    if sqlstate == "08P01":
        text = _message_of(exc)
        for needle, kind in _PGBOUNCER_08P01:
            if needle in text:
                return _make(kind, sqlstate, f"{reason} ({needle})")
    kind = _SQLSTATE_EXACT.get(sqlstate) or _SQLSTATE_CLASS.get(sqlstate[:2], _K.SERVER_ERROR)
    return _make(kind, sqlstate, reason)


# --- exception classes ------------------------------------------------------------------------


def _module(cls: type) -> str:
    module = _attr(cls, "__module__")
    return module if isinstance(module, str) else ""


def _mro_names(exc: BaseException, module_prefix: str) -> list[str]:
    return [c.__name__ for c in type(exc).__mro__ if _module(c).startswith(module_prefix)]


def _by_class(exc: BaseException) -> ErrorKind | None:
    if isinstance(exc, psycopg_pool.TooManyRequests | psycopg_pool.PoolTimeout):
        return _K.POOL_TIMEOUT
    if isinstance(exc, psycopg.errors.ConnectionTimeout):
        return _K.CONNECT_TIMEOUT
    if isinstance(exc, psycopg.errors.CancellationTimeout):
        return _K.QUERY_TIMEOUT
    module = _module(type(exc))
    if module.startswith("sqlalchemy"):
        names = _mro_names(exc, "sqlalchemy")
        if "TimeoutError" in names:  # QueuePool limit reached
            return _K.POOL_TIMEOUT
        if "DisconnectionError" in names or _attr(exc, "connection_invalidated") is True:
            return _K.CONNECTION_LOST
        return None
    if module.startswith("redis"):
        names = _mro_names(exc, "redis")
        if "AuthenticationError" in names or "AuthorizationError" in names:
            return _K.REDIS_AUTH_FAILED
        if "TimeoutError" in names:
            return _K.REDIS_TIMEOUT
        if {"ConnectionError", "BusyLoadingError", "ReadOnlyError", "TryAgainError"} & set(names):
            return _K.REDIS_UNAVAILABLE
        return None
    if isinstance(exc, ConnectionRefusedError | socket.gaierror):
        return _K.UNREACHABLE
    if isinstance(exc, ConnectionResetError | ConnectionAbortedError | BrokenPipeError):
        return _K.CONNECTION_LOST
    if isinstance(exc, TimeoutError):  # a deadline: asyncio.timeout, socket.timeout, ...
        return _K.QUERY_TIMEOUT
    return None


# --- message text -----------------------------------------------------------------------------

# Order matters: the first row with a match decides. Connect-time failures carry no SQLSTATE
# in psycopg (libpq reports them as text), so these texts are the only evidence there is.
# Plain lower-case substrings, looked for with ``in`` in the lower-cased head of the message:
# linear in its length, with no pattern that can backtrack.
_MESSAGES: tuple[tuple[ErrorKind, tuple[str, ...]], ...] = (
    (
        _K.AUTH_FAILED,
        (
            "password authentication failed",
            "no pg_hba.conf entry",
            "authentication failed",
            "peer authentication",
        ),
    ),
    (_K.DATABASE_MISSING, ("no such database",)),  # and 'database "…" does not exist'
    (_K.ACCESS_DENIED, ("permission denied",)),
    (
        # the connection settings themselves are wrong: waiting cannot fix them
        _K.CONFIGURATION,
        (
            "unsupported startup parameter",
            "invalid connection option",
            "invalid integer value",
            "invalid port number",
            "invalid sslmode value",
            "invalid target_session_attrs value",
            "unrecognized configuration parameter",
            "invalid value for parameter",
        ),
    ),
    (
        _K.CONNECTION_LOST,
        (
            "ssl syscall error",
            "eof detected",
            "unexpected eof",
            "bad record mac",
            "ssl connection has been closed unexpectedly",
        ),
    ),
    (
        _K.TLS_ERROR,
        (
            "server does not support ssl",
            "certificate verify failed",
            "ssl certificate",
            "root certificate",
            "sslmode",
            "tlsv1 alert",
            "handshake failure",
            "wrong version number",
        ),
    ),
    (
        _K.TOO_MANY_CONNECTIONS,
        (
            "too many connections",
            "remaining connection slots are reserved",
            "no more connections allowed",
            "sorry, too many clients",
            "max client connections reached",
        ),
    ),
    (_K.POOL_TIMEOUT, ("query_wait_timeout",)),
    (
        _K.UNREACHABLE,
        (
            "the database system is starting up",
            "the database system is shutting down",
            "the database system is in recovery mode",
            "the database system is not yet accepting",
            "not yet accepting connections",
            "connection refused",
            "could not translate host name",
            "failed to resolve host",
            "name or service not known",
            "temporary failure in name resolution",
            "no route to host",
            "network is unreachable",
            "could not connect to server",
            "is the server running",
        ),
    ),
    # A live connection's socket failed (a reset, or keepalives / tcp_user_timeout giving up:
    # "could not receive data from server: Connection timed out"): before the connect-phase
    # timeouts below, whose "connection timed out" these texts also hold.
    (
        _K.CONNECTION_LOST,
        ("could not receive data from server", "could not send data to server"),
    ),
    (_K.CONNECT_TIMEOUT, ("timeout expired", "connection timeout", "connection timed out")),
    (
        _K.CONNECTION_CLOSED,
        (
            "connection is closed",
            "connection already closed",
            "connection not open",
            "cursor already closed",
        ),
    ),
    (
        _K.CONNECTION_LOST,
        (
            "closed the connection",
            "losed the connection unexpectedly",
            "connection has been closed unexpectedly",
            "network error",
            "consuming input failed",
            "sending query failed",
            "connection to server was lost",
            "connection to server lost",
            "lost synchronization with server",
            "the connection is lost",
            "no connection to the server",
            "terminating connection",
            "connection reset",
            "broken pipe",
            "connection is bad",
            "server conn crashed",
            "server_idle_timeout",
            "client_idle_timeout",
        ),
    ),
    (
        _K.QUERY_TIMEOUT,
        ("canceling statement due to statement", "canceling statement due to user request"),
    ),
    (_K.SERIALIZATION_FAILURE, ("could not serialize access",)),
    (_K.DEADLOCK, ("deadlock detected",)),
    (_K.READ_ONLY, ("in a read-only transaction",)),
)

# 'role "…" does not exist' (AUTH_FAILED), 'database "…" does not exist' (DATABASE_MISSING).
# The name cannot hold a quote and is at most 128 characters (PostgreSQL's are at most 63
# bytes), so a failed try at one position costs at most 128 steps, and tries at different
# positions read different characters: linear, where ``".*"`` was quadratic.
_QUOTED_NAME = re.compile(r'(role|database) "[^"\n]{0,128}" does not exist')
_QUOTED_KIND = {"role": _K.AUTH_FAILED, "database": _K.DATABASE_MISSING}


def _message_of(exc: BaseException) -> str:
    """The lower-cased head of ``str(exc)`` (at most ``_SCAN_CHARS``), or ``""`` when there is
    none: a ``__str__`` that raises anything, even ``KeyboardInterrupt``, or returns no str."""
    try:
        text = str(exc)
    except BaseException:  # foreign code: classify never raises
        return ""
    return text[:_SCAN_CHARS].lower()


def _by_message(exc: BaseException) -> ErrorKind | None:
    text = _message_of(exc)
    if not text:
        return None
    quoted = (
        {_QUOTED_KIND[m.group(1)] for m in _QUOTED_NAME.finditer(text)}
        if '" does not exist' in text
        else set()
    )
    for kind, needles in _MESSAGES:
        if kind in quoted or any(needle in text for needle in needles):
            return kind
    return None


def _connection_broken(exc: BaseException) -> bool:
    """True when a psycopg error came from a connection that is no longer usable."""
    if not isinstance(exc, psycopg.OperationalError):
        return False
    pgconn = _attr(exc, "pgconn")
    if pgconn is None:
        return False
    try:
        return bool(_attr(pgconn, "status") == psycopg.pq.ConnStatus.BAD)
    except BaseException:  # a foreign __eq__: no evidence
        return False


# --- the walk ---------------------------------------------------------------------------------


def _linked(exc: BaseException) -> list[tuple[BaseException, bool]]:
    """What *exc* wraps, each with whether it was named explicitly (``.orig``, ``__cause__``)
    rather than merely being handled when *exc* was raised (``__context__``)."""
    links: list[tuple[BaseException, bool]] = []
    for linked, explicit in (
        (_attr(exc, "orig"), True),
        (_attr(exc, "__cause__"), True),
        (_attr(exc, "__context__"), False),
    ):
        if isinstance(linked, BaseException) and all(linked is not seen for seen, _ in links):
            links.append((linked, explicit))
    return links


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception, then what it wraps, breadth-first, each once, at most ``_MAX_CHAIN``."""
    seen: set[int] = set()
    chain: list[BaseException] = []
    queue: deque[BaseException] = deque([exc])
    while queue and len(chain) < _MAX_CHAIN:
        current = queue.popleft()
        if id(current) in seen:
            continue
        seen.add(id(current))
        chain.append(current)
        queue.extend(linked for linked, _ in _linked(current) if id(linked) not in seen)
    return chain


def _vouched(chain: list[BaseException]) -> set[int]:
    """The links a dbresilience error speaks for: what it was raised ``from`` (and what that
    names explicitly in turn). Their commit-unknown verdict is the library's to make: it raised
    knowing them (a ``QueryTimeout`` from a connection shut before COMMIT is no lost write).
    What was merely being handled (``__context__``) is not vouched for: it may be an earlier,
    unrelated failure, such as the write whose fate nobody knows."""
    members = {id(link) for link in chain}
    vouched: set[int] = set()
    todo = [link for link in chain if isinstance(_own(link), Classification)]
    while todo:
        current = todo.pop()
        for linked, explicit in _linked(current):
            if explicit and id(linked) in members and id(linked) not in vouched:
                vouched.add(id(linked))
                todo.append(linked)
    return vouched


def _own(exc: BaseException) -> object:
    return _attr(exc, "_dbr_classification")


# Kinds that speak of a connection that was open; for a failure while connecting, none applies.
_OPEN_CONNECTION_KINDS = frozenset({_K.CONNECTION_LOST, _K.CONNECTION_CLOSED, _K.IDLE_TIMEOUT})


def _while_connecting(exc: BaseException) -> bool:
    """True when *exc* is libpq's report of a failed connection attempt: psycopg's
    ``connection failed: …``, libpq's ``connection to server at … failed: …``, or a
    ``ConnectionTimeout``. Nothing can have been committed on a connection never opened."""
    if isinstance(exc, psycopg.errors.ConnectionTimeout):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    text = _message_of(exc)
    return text.startswith("connection failed:") or (
        "connection to server " in text and " failed: " in text
    )


def _verdict(link: BaseException) -> tuple[int, Classification] | None:
    """What *link* alone says, with the rank of its best evidence (0 = strongest): its own
    classification, its SQLSTATE, its class, its message, its connection's state.

    A failure while connecting is never commit-unknown, and a text that speaks of an open
    connection (or none recognised) is then read as "cannot reach the server" (P1001)."""
    own = _own(link)
    if isinstance(own, Classification):
        return 0, own
    found = _evidence(link)
    if not _while_connecting(link):
        return found
    if found is None or found[1].kind in _OPEN_CONNECTION_KINDS:
        reason = "while connecting" if found is None else f"{found[1].reason} while connecting"
        return (4 if found is None else found[0]), _make(
            _K.UNREACHABLE, None if found is None else found[1].sqlstate, reason
        )
    if found[1].commit_unknown:
        return found[0], dataclasses.replace(found[1], commit_unknown=False)
    return found


def _evidence(link: BaseException) -> tuple[int, Classification] | None:
    sqlstate = _sqlstate_of(link)
    if sqlstate is not None:
        return 1, _by_sqlstate(sqlstate, link)
    kind = _by_class(link)
    if kind is not None:
        return 2, _make(kind, None, f"class {type(link).__name__}")
    kind = _by_message(link)
    if kind is not None:
        return 3, _make(kind, None, f"message of {type(link).__name__}")
    if _connection_broken(link):
        return 4, _make(_K.CONNECTION_LOST, None, "connection state BAD")
    return None


def classify(exc: BaseException) -> Classification:
    """Classify *exc*: what went wrong, whether a retry can help, and the HTTP answer.

    Never raises, whatever *exc* is: a ``__str__`` or property raising ``KeyboardInterrupt``,
    a looping or 10,000-link chain, a megabyte of text built to make a pattern backtrack (only
    the first 16 links and the first 4 KiB of each message are read). A ``BaseException``
    that is not an ``Exception`` (cancellation, ``KeyboardInterrupt``, ``SystemExit``) is
    never retryable. When any link of the chain says a write may have been applied, the
    result says ``commit_unknown`` too. See ``docs/classification.md`` for the whole table.
    """
    try:
        return _classify(exc)
    except BaseException:  # pragma: no cover - defensive: classification must never raise
        return _make(_K.UNKNOWN, None, "classification failed")


def _classify(exc: BaseException) -> Classification:
    if not isinstance(exc, Exception):
        return _make(_K.CANCELLED, None, f"class {type(exc).__name__}")
    chain = _chain(exc)
    verdicts = [_verdict(link) for link in chain]
    # The strongest evidence decides; between equals, the link nearest the top.
    found = [(v[0], n, v[1]) for n, v in enumerate(verdicts) if v is not None]
    if not found:
        return _make(_K.UNKNOWN, None, f"class {type(exc).__name__}")
    result = min(found, key=lambda f: f[:2])[2]
    if result.commit_unknown:
        return result
    # A write whose fate is unknown, anywhere in the chain, makes the whole failure so: an
    # error raised while handling it (an audit insert refused) must not get it re-run.
    vouched = _vouched(chain)
    for link, verdict in zip(chain, verdicts, strict=True):
        if verdict is not None and verdict[1].commit_unknown and id(link) not in vouched:
            return dataclasses.replace(
                result,
                commit_unknown=True,
                reason=f"{result.reason}; commit unknown: {verdict[1].reason} in the chain",
            )
    return result
