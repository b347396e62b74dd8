"""What the sync and async pools share and that does no I/O of its own.

Configuration (validated once, frozen), the layered timeouts turned into libpq parameters,
the cheap "did the server hang up on this idle connection?" test, the faster reconnect backoff
handed to psycopg_pool, and the counters behind ``stats()``.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import select
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from typing_extensions import LiteralString

from dbresilience import _instrument, _logsummary
from dbresilience._backoff import Backoff
from dbresilience._breaker import CircuitBreaker
from dbresilience._budget import RetryBudget
from dbresilience._classify import ErrorKind, classify
from dbresilience._errors import (
    AcquireTimeout,
    CircuitOpen,
    CommitUnknown,
    DatabaseUnavailable,
    QueryTimeout,
)
from dbresilience._lifecycle import Lifecycle
from dbresilience._pool_compat import AsyncPoolConnection, PoolConnection
from dbresilience._pooler import POOLER_CHOICES, rejected_startup_parameter, session_state_use
from dbresilience._retry import DEFAULT, RetryPolicy, _Default
from dbresilience._validate import (
    at_least,
    instance_or_none,
    non_negative_int,
    one_of,
    positive_int,
    seconds,
    str_or_none,
    string,
    strings,
)
from dbresilience._watchdog import Watchdog

__all__ = [
    "PoolBase",
    "PoolConfig",
    "PoolCounters",
    "Query",
    "explain_connect_error",
    "has_pending_input",
    "safe_target",
]

#: what the helpers accept: psycopg's queries (literal strings, composed SQL), bound params apart
Query = LiteralString | bytes | sql.SQL | sql.Composed

# Failures after which every older connection is suspect: the server went away or was demoted.
_GENERATION_KINDS = frozenset(
    {ErrorKind.CONNECTION_LOST, ErrorKind.IDLE_TIMEOUT, ErrorKind.READ_ONLY}
)
# Connect failures that say the database cannot be had right now: worth failing fast on.
# (A connection killed while psycopg_pool was still configuring it says nothing of the kind.)
_CANNOT_CONNECT = frozenset(
    {
        ErrorKind.UNREACHABLE,
        ErrorKind.CONNECT_TIMEOUT,
        ErrorKind.AUTH_FAILED,
        ErrorKind.DATABASE_MISSING,
        ErrorKind.ACCESS_DENIED,
        ErrorKind.TLS_ERROR,
        ErrorKind.TOO_MANY_CONNECTIONS,
        ErrorKind.CONFIGURATION,
    }
)
# Failures during COMMIT after which nobody knows whether it committed.
_LOST_IN_COMMIT = frozenset(
    {ErrorKind.CONNECTION_LOST, ErrorKind.COMPLETION_UNKNOWN, ErrorKind.QUERY_TIMEOUT}
)
RECONNECT_FOREVER = 365 * 24 * 3600.0  # psycopg_pool gives up on a slot after this long
# libpq and the server read these timeouts as a C int of milliseconds (about 24.8 days at most)
_MAX_MILLIS = 2**31 - 1

_log = logging.getLogger("dbresilience.pool")

# Every parameter this libpq knows; a key outside it is a typo, not an outage.
_LIBPQ_PARAMS = frozenset(o.keyword.decode() for o in psycopg.pq.Conninfo.get_defaults())
# psycopg's own connection options, which go to connect(), never into the connection string.
_CONNECTION_OPTIONS = frozenset({"prepare_threshold"})
# Parameters libpq reads as integers (a comma-separated list for port), with their range.
_INT_PARAMS: dict[str, tuple[int, int]] = {
    "port": (1, 65535),
    "connect_timeout": (0, _MAX_MILLIS),
    "keepalives": (0, 1),
    "keepalives_idle": (0, _MAX_MILLIS),
    "keepalives_interval": (0, _MAX_MILLIS),
    "keepalives_count": (0, _MAX_MILLIS),
    "tcp_user_timeout": (0, _MAX_MILLIS),
}
_CHOICE_PARAMS: dict[str, tuple[str, ...]] = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "target_session_attrs": (
        "any",
        "read-write",
        "read-only",
        "primary",
        "standby",
        "prefer-standby",
    ),
}


def check_params(params: dict[str, Any], argument: str) -> None:
    """Raise ``ValueError`` naming *argument* and the parameter when a connection parameter
    libpq would reject only when connecting (a port that is not a number, an unknown
    ``sslmode``): a configuration error fails at construction, not as an outage after retries.
    Never quotes a value that could be secret (only the integer and choice parameters)."""
    for key, value in params.items():
        if value is None:
            continue
        text = str(value).strip()
        if key in _INT_PARAMS:
            low, high = _INT_PARAMS[key]
            parts = text.split(",") if key == "port" else [text]
            for part in parts:
                part = part.strip()
                if key == "port" and not part:
                    continue  # an empty entry means the default port
                if not (part.lstrip("-").isdigit() and low <= int(part) <= high):
                    raise ValueError(
                        f"{argument}: {key} must be an integer from {low} to {high}"
                        f"{' (or a comma-separated list of them)' if key == 'port' else ''}, "
                        f"got {part[:40]!r}"
                    )
        elif key == "hostaddr":
            for part in text.split(","):
                part = part.strip()
                if part and not _is_ip(part):
                    raise ValueError(
                        f"{argument}: hostaddr must be numeric IP addresses (a comma-separated "
                        f"list, one per host; names go in host), got {part[:40]!r}"
                    )
        elif key in _CHOICE_PARAMS and text and text not in _CHOICE_PARAMS[key]:
            raise ValueError(
                f"{argument}: {key} must be one of {', '.join(_CHOICE_PARAMS[key])}, "
                f"got {text[:40]!r}"
            )


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def check_host_lists(params: dict[str, Any], argument: str) -> None:
    """``ValueError`` naming *argument* when the ``host``, ``hostaddr`` and ``port`` lists of the
    final parameters (connection string and ``kwargs`` together) do not match the way libpq
    requires: as many ``hostaddr`` entries as ``host`` entries when both are given, and one
    port or one per host. libpq refuses them only when it connects."""

    def count(key: str) -> int | None:
        value = params.get(key)
        text = "" if value is None else str(value)
        return text.count(",") + 1 if text else None

    hosts, addrs, ports = count("host"), count("hostaddr"), count("port")
    if hosts is not None and addrs is not None and hosts != addrs:
        raise ValueError(
            f"{argument}: {hosts} host entries but {addrs} hostaddr entries (one per host)"
        )
    n = hosts or addrs or 1
    if ports is not None and ports not in (1, n):
        raise ValueError(f"{argument}: {ports} port entries for {n} hosts (one, or one per host)")


def split_kwargs(kwargs: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """*kwargs* split into libpq connection parameters and psycopg connection options
    (``prepare_threshold``); ``ValueError`` for a key that is neither, or a bad value."""
    libpq: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for key, value in (kwargs or {}).items():
        if not isinstance(key, str):
            raise TypeError(f"kwargs keys must be str, got {type(key).__name__}")
        if key in _CONNECTION_OPTIONS:
            if value is not None:
                non_negative_int(f"kwargs[{key!r}]", value)
            options[key] = value
        elif key in _LIBPQ_PARAMS:
            libpq[key] = value
        else:
            raise ValueError(
                f"kwargs key {key!r} is neither a libpq connection parameter nor a psycopg "
                "connection option (prepare_threshold)"
            )
    check_params(libpq, "kwargs")
    return libpq, options


# What psycopg's connect() takes besides libpq parameters (SQLAlchemy's connect_args go there).
_CONNECT_KEYWORDS = frozenset(
    {"prepare_threshold", "autocommit", "row_factory", "cursor_factory", "context"}
)


def check_connect_args(connect_args: dict[str, Any]) -> None:
    """``ValueError`` for a SQLAlchemy ``connect_args`` key that is neither a libpq parameter
    nor one of psycopg's ``connect()`` keywords, or a libpq value it would reject."""
    for key in connect_args:
        if key not in _LIBPQ_PARAMS and key not in _CONNECT_KEYWORDS:
            raise ValueError(
                f"connect_args key {key!r} is neither a libpq connection parameter nor a "
                f"psycopg connect() keyword ({', '.join(sorted(_CONNECT_KEYWORDS))})"
            )
    check_params(connect_args, "connect_args")


def pooler_setting(value: object) -> str | None:
    """*value* if it is a valid ``pooler=``: ``None``, ``"auto"``, ``"session"`` or
    ``"transaction"``."""
    if value is None:
        return None
    return one_of("pooler", value, POOLER_CHOICES)


def _millis(value: float) -> int:
    """*value* seconds as the whole milliseconds libpq and the server accept: at least 1, at
    most ``_MAX_MILLIS`` (a longer duration, up to the year ``seconds()`` allows, means "as long
    as the server can wait")."""
    return min(_MAX_MILLIS, max(1, int(value * 1000)))


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """Validated pool settings; every duration in float seconds."""

    min_size: int
    max_size: int
    connect_timeout: float
    acquire_timeout: float
    query_timeout: float
    statement_timeout: float | None
    lock_timeout: float | None
    idle_in_transaction_timeout: float | None
    idle_check_after: float
    attempts: int
    warm_sql: tuple[str, ...]
    name: str
    max_lifetime: float
    extra: dict[str, Any] = field(default_factory=dict)
    pooler: str | None = "auto"
    connect_options: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        """Every setting, with the values of secret-looking ``kwargs`` (``password``,
        ``sslpassword`` …) masked: the dataclass repr showed them."""
        from dbresilience._redact import redact_params

        shown = {name: getattr(self, name) for name in self.__dataclass_fields__}
        shown["extra"] = redact_params(self.extra)
        return f"PoolConfig({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    @classmethod
    def build(
        cls,
        conninfo: str,
        *,
        min_size: int,
        max_size: int,
        connect_timeout: float | timedelta,
        acquire_timeout: float | timedelta,
        query_timeout: float | timedelta,
        statement_timeout: float | timedelta | bool | None,
        lock_timeout: float | timedelta | bool | None,
        idle_in_transaction_timeout: float | timedelta | None,
        idle_check_after: float | timedelta,
        attempts: int,
        warm_sql: Sequence[str],
        name: str | None,
        max_lifetime: float | timedelta,
        kwargs: dict[str, Any] | None,
        pooler: str | None = "auto",
    ) -> PoolConfig:
        """Validate everything, naming the argument in any ``ValueError``/``TypeError``."""
        conninfo = string("conninfo", conninfo)  # never shown: it may hold a password
        min_size = non_negative_int("min_size", min_size)
        max_size = positive_int("max_size", max_size)
        at_least("max_size", max_size, "min_size", min_size)
        attempts = positive_int("attempts", attempts)
        query = seconds("query_timeout", query_timeout)
        warm_sql = strings("warm_sql", warm_sql)
        name = str_or_none("name", name)
        try:
            params = dict(conninfo_to_dict(conninfo))
            valid = True
        except psycopg.ProgrammingError:
            valid = False
        if not valid:
            # raised outside the except block: psycopg's message quotes the bad part, which may
            # be the password, and would stay reachable as __context__ even with "from None"
            raise ValueError(
                "conninfo is not a valid libpq connection string or URL "
                "(an unknown parameter, or a syntax error)"
            )
        check_params(params, "conninfo")
        libpq_kwargs, connect_options = split_kwargs(kwargs)
        lists = ("host", "hostaddr", "port")
        check_host_lists(
            {**params, **libpq_kwargs},
            "kwargs" if any(k in libpq_kwargs for k in lists) else "conninfo",
        )
        pooler = pooler_setting(pooler)
        if pooler == "transaction":
            for statement in warm_sql:
                what = session_state_use(statement)
                if what is not None:
                    raise ValueError(
                        f"warm_sql holds {what}: with pooler='transaction' it would land on "
                        "one shared server connection, not on this pool's"
                    )
        if pooler == "transaction" and connect_options.get("prepare_threshold") is not None:
            raise ValueError(
                "kwargs['prepare_threshold'] must be None with pooler='transaction': a pooler "
                "in transaction mode cannot keep server-side prepared statements"
            )
        return cls(
            min_size=min_size,
            max_size=max_size,
            connect_timeout=seconds("connect_timeout", connect_timeout),
            acquire_timeout=seconds("acquire_timeout", acquire_timeout),
            query_timeout=query,
            statement_timeout=query
            if statement_timeout is True
            else seconds("statement_timeout", statement_timeout or None, allow_none=True),
            # below statement_timeout, so a lock wait ends in 55P03 (retryable), not 57014
            lock_timeout=query / 2
            if lock_timeout is True
            else seconds("lock_timeout", lock_timeout or None, allow_none=True),
            idle_in_transaction_timeout=seconds(
                "idle_in_transaction_timeout", idle_in_transaction_timeout, allow_none=True
            ),
            idle_check_after=seconds("idle_check_after", idle_check_after, allow_zero=True),
            attempts=attempts,
            warm_sql=warm_sql,
            name=name or safe_target(conninfo),
            max_lifetime=seconds("max_lifetime", max_lifetime),
            extra=libpq_kwargs,
            pooler=pooler,
            connect_options=connect_options,
        )

    def conninfo(self, conninfo: str, mode: str | None = None) -> str:
        """*conninfo* with every timeout layer the pool promises set on it (see
        :meth:`connect_params`), for pooler *mode* (``None``, ``"session"``,
        ``"transaction"``)."""
        return make_conninfo("", **self.connect_params(dict(conninfo_to_dict(conninfo)), mode))

    def connect_kwargs(self, mode: str | None) -> dict[str, Any]:
        """What ``connect()`` gets besides the connection string, for pooler *mode*."""
        kwargs: dict[str, Any] = {"autocommit": True, **self.connect_options}
        if mode == "transaction":
            kwargs["prepare_threshold"] = None
        return kwargs

    def _timeouts(self) -> list[tuple[str, int]]:
        return [
            (setting, _millis(value))
            for setting, value in (
                ("statement_timeout", self.statement_timeout),
                ("lock_timeout", self.lock_timeout),
                ("idle_in_transaction_session_timeout", self.idle_in_transaction_timeout),
            )
            if value is not None
        ]

    def session_sql(self) -> bytes:
        """The ``SET`` statements a session-mode pooler's connections start with (one round
        trip; the pooler's ``server_reset_query`` clears them when the client leaves)."""
        return "; ".join(f"SET {k} = {v}" for k, v in self._timeouts()).encode()

    def begin_sql(self, mode: str | None) -> bytes:
        """What :meth:`transaction` begins with: ``BEGIN``, and in transaction mode the
        server-side timeouts as ``SET LOCAL`` in the same message (one round trip; they end
        with the transaction, so they cannot reach another client of the pooler)."""
        if mode != "transaction":
            return b"BEGIN"
        return "; ".join(["BEGIN"] + [f"SET LOCAL {k} = {v}" for k, v in self._timeouts()]).encode()

    def connect_params(self, params: dict[str, Any], mode: str | None = None) -> dict[str, Any]:
        """Connection parameters *params* plus every timeout layer the pool promises.

        ``connect_timeout`` (libpq otherwise waits up to 130 s per host; libpq's minimum is
        2 s), server-side ``statement_timeout``, ``lock_timeout`` and
        ``idle_in_transaction_session_timeout`` through ``options`` (not behind a pooler,
        *mode* ``"session"`` or ``"transaction"``: poolers refuse that startup parameter), and
        TCP keepalives plus ``tcp_user_timeout`` so that a half-open socket dies instead of
        hanging. Values the caller already set win, except ``connect_timeout``.
        """
        params = dict(params)
        params.update(self.extra)
        params["connect_timeout"] = str(max(2, math.ceil(self.connect_timeout)))
        params.setdefault("keepalives", "1")
        params.setdefault("keepalives_idle", "10")
        params.setdefault("keepalives_interval", "5")
        params.setdefault("keepalives_count", "3")
        params.setdefault("tcp_user_timeout", str(_millis(max(self.query_timeout, 10.0))))
        options = [str(params.get("options") or "").strip()]
        if mode is None:
            for setting, value in self._timeouts():
                if setting not in options[0]:
                    options.append(f"-c {setting}={value}")
        params["options"] = " ".join(o for o in options if o) or None
        return params


def safe_target(conninfo: str) -> str:
    """``host:port/dbname`` of *conninfo*: what logs and reprs may show (never a password)."""
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.Error:
        return "postgresql"
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = str(params.get("port") or "5432")
    dbname = str(params.get("dbname") or params.get("user") or "")
    return f"{host}:{port}/{dbname}"


def explain_connect_error(exc: BaseException) -> None:
    """Add a note saying what to do to a connect error that a pooler's refusal of startup
    parameters caused (``unsupported startup parameter``); the error itself is unchanged."""
    if rejected_startup_parameter(exc) and hasattr(exc, "add_note"):
        exc.add_note(
            "a connection pooler (PgBouncer, Supavisor) refused a startup parameter: pass "
            "pooler='transaction' (or 'session') to the pool, and no 'options' in conninfo"
        )


def has_pending_input(conn: psycopg.BaseConnection[Any]) -> bool:
    """True when the server sent something to an idle connection (a FATAL, a close).

    One zero-timeout ``poll`` (a third of a microsecond, on a poll object kept with the
    connection) instead of a round trip: a backend terminated while the connection sat in the
    pool has already said so on the socket. A NOTIFY also makes the socket readable; the
    caller consumes input and looks again.
    """
    # the pools' connections declare _dbr_poll; SQLAlchemy's are plain psycopg connections
    poller: select.poll | None = getattr(conn, "_dbr_poll", None)
    if poller is None:
        try:
            poller = select.poll()
            poller.register(conn.pgconn.socket, select.POLLIN)
        except (OSError, ValueError, psycopg.OperationalError):
            return True
        setattr(conn, "_dbr_poll", poller)  # noqa: B010 - see above
    try:
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


def connection_is_dead(conn: psycopg.BaseConnection[Any]) -> bool:
    """Consume what the server sent to an idle connection; True when it is no longer usable.

    A terminated backend sends a FATAL message and then closes: libpq takes the message on
    one read and sees the end of the stream only on the next, so keep reading while the
    socket stays readable (a few times at most: a chatty NOTIFY stream is not a death).
    """
    pgconn = conn.pgconn
    for _ in range(4):
        try:
            pgconn.consume_input()
        except psycopg.OperationalError:
            return True
        if pgconn.status != psycopg.pq.ConnStatus.OK or conn.closed:
            return True
        if not has_pending_input(conn):
            return False
    return False


def starts_new_generation(exc: BaseException) -> bool:
    """True for failures after which every older pooled connection is suspect."""
    return classify(exc).kind in _GENERATION_KINDS


def lost_by_database(
    exc: BaseException, conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]
) -> bool:
    """True when *exc*, raised out of a ``connection()`` block holding *conn*, says the
    database dropped connections (so every older pooled one is suspect): a driver error of
    that kind, or any error of that kind once *conn* itself is broken. An ``OSError`` or
    ``TimeoutError`` from the caller's own code in the block (an SMTP or HTTP client) says
    nothing about the database and keeps the pool as it is."""
    if not starts_new_generation(exc):
        return False
    if isinstance(exc, psycopg.Error):
        return True
    return conn.closed or conn.pgconn.status != psycopg.pq.ConnStatus.OK


_RESETTABLE = (
    "calls",
    "retries",
    "failures",
    "acquire_timeouts",
    "query_timeouts",
    "discarded",
    "fail_fast",
    "commit_unknown",
)


@dataclass
class PoolCounters:
    """The pool's own counters, added to psycopg_pool's in ``stats()``."""

    calls: int = 0
    retries: int = 0
    failures: int = 0
    acquire_timeouts: int = 0
    query_timeouts: int = 0
    discarded: int = 0
    generation: int = 0
    fail_fast: int = 0
    commit_unknown: int = 0
    last_connect_error: BaseException | None = None
    last_connect_error_at: float = 0.0

    def subtract(self, seen: dict[str, Any]) -> None:
        """Take the counts in *seen* (a snapshot) off the counters, ``generation`` excepted (it
        names the connections' generation): increments since the snapshot are kept."""
        for name in _RESETTABLE:
            setattr(self, name, getattr(self, name) - seen[name])

    def snapshot(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return {
            "calls": self.calls,
            "retries": self.retries,
            "failures": self.failures,
            "acquire_timeouts": self.acquire_timeouts,
            "query_timeouts": self.query_timeouts,
            "discarded": self.discarded,
            "generation": self.generation,
            "fail_fast": self.fail_fast,
            "commit_unknown": self.commit_unknown,
        }


def now() -> float:
    """The pool's clock."""
    return time.monotonic()


# Rolling back what a call left open is given at least this long, even past the call's deadline
# (a rollback takes well under a millisecond on a live server) ...
CLEANUP_AT_LEAST = 0.05
# ... and at most this long, even before it (a server that cannot roll back in a second is
# better left: closing the connection rolls the transaction back on the server's side).
CLEANUP_AT_MOST = 1.0


def cleanup_deadline(deadline_at: float | None) -> float:
    """When the clean-up after a call (a rollback) must be over: the call's deadline, moved
    into ``[now + CLEANUP_AT_LEAST, now + CLEANUP_AT_MOST]``; ``now + CLEANUP_AT_MOST`` for a
    call without one (``connection()`` without ``timeout=``)."""
    t = now()
    if deadline_at is None:
        return t + CLEANUP_AT_MOST
    return min(t + CLEANUP_AT_MOST, max(deadline_at, t + CLEANUP_AT_LEAST))


class PoolBase(Lifecycle):
    """The parts of :class:`Pool` and :class:`AsyncPool` that do no I/O.

    Settings, the retry policy with its breaker and budget, counters, the watchdog, the
    fail-fast decision, the per-call bookkeeping and ``stats()``. The twins add locking and I/O.
    """

    _pool: Any  # the psycopg_pool pool: ConnectionPool or AsyncConnectionPool

    def __init__(
        self,
        conninfo: str = "",
        *,
        min_size: int = 2,
        max_size: int = 10,
        connect_timeout: float | timedelta = 5.0,
        acquire_timeout: float | timedelta = 5.0,
        query_timeout: float | timedelta = 5.0,
        statement_timeout: float | timedelta | bool | None = True,
        lock_timeout: float | timedelta | bool | None = True,
        idle_in_transaction_timeout: float | timedelta | None = 60.0,
        idle_check_after: float | timedelta = 10.0,
        attempts: int = 3,
        base_delay: float | timedelta = 0.05,
        max_delay: float | timedelta = 1.0,
        warm_sql: Sequence[str] = (),
        breaker: CircuitBreaker | _Default | None = DEFAULT,
        budget: RetryBudget | _Default | None = DEFAULT,
        name: str | None = None,
        max_lifetime: float | timedelta = 3600.0,
        kwargs: dict[str, Any] | None = None,
        pooler: str | None = "auto",
    ) -> None:
        """Validate everything (``ValueError``/``TypeError`` naming the argument); no I/O.

        ``statement_timeout`` and ``lock_timeout`` default (``True``) to ``query_timeout`` and
        half of it; ``None`` leaves the server's. ``idle_check_after``: connections idle longer
        answer one round trip before use. ``attempts``, ``base_delay``, ``max_delay``: the
        retry policy of reads and safe writes. ``warm_sql``: run on every new connection.
        ``kwargs``: extra libpq connection parameters, and psycopg's ``prepare_threshold``
        (given to ``connect()``). A bad port, an unknown parameter in *conninfo* or *kwargs*
        raise ``ValueError`` here, not as an outage at ``open()``. ``pooler``: what sits in
        front of the server: ``None``, ``"session"``, ``"transaction"`` or ``"auto"`` (the
        default: detected; see :mod:`dbresilience._pooler` and docs/topology.md).
        """
        config = PoolConfig.build(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            connect_timeout=connect_timeout,
            acquire_timeout=acquire_timeout,
            query_timeout=query_timeout,
            statement_timeout=statement_timeout,
            lock_timeout=lock_timeout,
            idle_in_transaction_timeout=idle_in_transaction_timeout,
            idle_check_after=idle_check_after,
            attempts=attempts,
            warm_sql=warm_sql,
            name=name,
            max_lifetime=max_lifetime,
            kwargs=kwargs,
            pooler=pooler,
        )
        base = seconds("base_delay", base_delay, allow_zero=True)
        cap = seconds("max_delay", max_delay, allow_zero=True)
        at_least("max_delay", cap, "base_delay", base)
        breaker = (
            CircuitBreaker(config.name)
            if isinstance(breaker, _Default)
            else instance_or_none("breaker", breaker, CircuitBreaker)
        )
        budget = (
            RetryBudget(config.name)
            if isinstance(budget, _Default)
            else instance_or_none("budget", budget, RetryBudget)
        )
        self._config = config
        self._policy = RetryPolicy(
            attempts=attempts,
            backoff=Backoff(base, cap),
            deadline=None,
            budget=budget,
            breaker=breaker,
        )
        self._counters = PoolCounters()
        self._watchdog = Watchdog(config.name)
        self._target = conninfo  # may hold a password: never shown
        self._pooler: str | None = None if config.pooler == "auto" else config.pooler
        self._pooler_why = "configured" if config.pooler != "auto" else "nothing detected"
        self._conninfo = config.conninfo(conninfo, self._pooler)  # never shown either
        self._connect_kwargs = self._connect_kwargs_for(self._pooler)
        self._begin_sql = config.begin_sql(self._pooler)
        # called when a connection is made after connecting failed (the write queue's wake-up)
        self._recovery_hooks: list[Callable[[], None]] = []
        # open()'s warm-up runs: its acquires are not announced (AcquireWaited)
        self._warming = False
        self._pool = self._core_pool()
        _instrument.pools.add(self)  # weak: for gauges read at scrape time
        _logsummary.install()  # one line per outage, not one per failed reconnect; no conninfo

    def _connect_kwargs_for(self, mode: str | None) -> dict[str, Any]:
        """``connect()``'s keyword arguments for pooler *mode* (the twin adds its cursor)."""
        return self._config.connect_kwargs(mode)

    def _warm_statements(self) -> tuple[str, ...]:
        """``warm_sql`` for the mode in use: in transaction mode (detected: configured ones
        are refused at construction) the session-state statements are left out."""
        if self._pooler != "transaction":
            return self._config.warm_sql
        return tuple(s for s in self._config.warm_sql if session_state_use(s) is None)

    @property
    def pooler(self) -> str | None:
        """The pooler mode in use: ``None`` (a direct connection), ``"session"`` or
        ``"transaction"`` (configured, or detected with ``pooler="auto"``)."""
        return self._pooler

    def _use_pooler(self, mode: str, why: str) -> None:
        """Switch to pooler *mode* (detected by ``pooler="auto"``): new connections are made
        for it, and the pooler and the reason are logged."""
        if self._pooler == mode:
            return
        self._pooler, self._pooler_why = mode, why
        self._conninfo = self._config.conninfo(self._target, mode)
        self._connect_kwargs = self._connect_kwargs_for(mode)
        self._begin_sql = self._config.begin_sql(mode)
        pool = getattr(self, "_pool", None)
        if pool is not None:  # psycopg_pool reads both on every new connection
            pool.conninfo = self._conninfo
            pool.kwargs = self._connect_kwargs
        _log.warning(
            "pool %r: a connection pooler answers (%s): using pooler=%r settings (no "
            "prepared statements, no startup options, no session state); pass pooler= to "
            "say so and silence this",
            self.name,
            why,
            mode,
        )
        skipped = len(self._config.warm_sql) - len(self._warm_statements())
        if skipped:
            _log.warning(
                "pool %r: %d warm_sql statement(s) set session state and are no longer run "
                "(behind a transaction pooler they would land on a shared server connection)",
                self.name,
                skipped,
            )

    def _detect_pooler(self, announced_pid: int, backend_pid: object) -> bool:
        """With ``pooler="auto"`` and no pooler known yet: True (and switched to transaction
        mode) when the pid the server announced at startup is not the backend's own, which
        means a pooler answered with its own cancel key."""
        if self._config.pooler != "auto" or self._pooler is not None:
            return False
        if backend_pid == announced_pid:
            return False
        self._use_pooler("transaction", "the backend pid differs from the one announced at startup")
        return True

    def _detect_rejected_options(self, exc: BaseException) -> bool:
        """With ``pooler="auto"``: True (and switched to transaction mode) when connecting
        failed because the server refused the startup parameter ``options``."""
        if self._config.pooler != "auto" or self._pooler is not None:
            return False
        if not rejected_startup_parameter(exc):
            return False
        self._use_pooler("transaction", "the server refused the startup parameter 'options'")
        return True

    def _log_mode(self) -> None:
        """Say which pooler mode the pool opened with, and why."""
        _log.info("pool %r opened: pooler=%r (%s)", self.name, self._pooler, self._pooler_why)

    def _core_pool(self) -> Any:
        """The twin's psycopg_pool pool, built closed."""
        raise NotImplementedError

    def _core_options(self) -> dict[str, Any]:
        """The psycopg_pool constructor arguments both twins use."""
        config = self._config
        return {
            "min_size": config.min_size,
            "max_size": config.max_size,
            "open": False,
            "kwargs": self._connect_kwargs,
            "name": config.name,
            "timeout": config.acquire_timeout,
            "max_lifetime": config.max_lifetime,
            "reconnect_timeout": RECONNECT_FOREVER,
            "num_workers": max(3, min(config.min_size, 8)),
        }

    @property
    def name(self) -> str:
        """``host:port/dbname`` unless named: what logs, errors and breakers call this pool."""
        return self._config.name

    @property
    def breaker(self) -> CircuitBreaker | None:
        """The pool's circuit breaker, or ``None`` when switched off."""
        return self._policy.breaker

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.name!r}, min_size={self._config.min_size}, "
            f"max_size={self._config.max_size}, {self._state.value})"
        )

    def _open_failed(self) -> BaseException:
        """What ``open(wait=True)`` raises when psycopg_pool did not fill in time."""
        error = self._counters.last_connect_error
        if error is not None:
            return error
        return AcquireTimeout(
            f"pool {self.name!r} did not open {self._config.min_size} connections "
            f"within {self._config.connect_timeout:.2f} s"
        )

    def _recovered(self) -> None:
        """A connection was made after connecting had failed: evidence the database is back.

        The breaker turns half-open now, so that the next calls probe it instead of waiting out
        ``open_for`` (a failover or a restart that ended early), and whoever waits for the
        database (the write queue's backoff) is woken.
        """
        breaker = self._policy.breaker
        if breaker is not None:
            breaker.evidence()
        for hook in tuple(self._recovery_hooks):
            try:
                hook()
            except Exception:
                _log.exception("a recovery hook of pool %r failed", self.name)

    def _note_connect_error(self, exc: BaseException) -> bool:
        """Record a failed direct connect; True when waiting could help (retry the probe)."""
        self._counters.last_connect_error = exc
        self._counters.last_connect_error_at = now()
        return classify(exc).retryable

    def _unavailable(self) -> DatabaseUnavailable | None:
        """The DatabaseUnavailable a call gets now (not yet counted), or None: when the last
        attempt to connect failed lately, for a reason that says the database cannot be had
        (refused, unreachable, timed out, bad credentials, full ...), and no connection is
        idle."""
        counters = self._counters
        error = counters.last_connect_error
        if error is None:
            return None
        age = now() - counters.last_connect_error_at
        if age > max(3.0, self._config.connect_timeout + 1.5):
            return None  # stale: let getconn drive a new attempt
        c = classify(error)
        if c.kind not in _CANNOT_CONNECT or self._pool.get_stats().get("pool_available", 0):
            return None
        return DatabaseUnavailable(
            f"pool {self.name!r} has no connection and its last attempt to connect failed "
            f"{age:.1f} s ago ({c.code})",
            c,
        )

    def _maybe_fail_fast(self) -> None:
        """Raise DatabaseUnavailable when connecting fails and no connection is idle."""
        error = self._unavailable()
        if error is not None:
            self._counters.fail_fast += 1
            raise error

    def _acquire_wait(self, deadline_at: float) -> float:
        """How long the next getconn may wait; raises when no time is left."""
        if self._counters.last_connect_error is not None:
            self._maybe_fail_fast()
        wait = min(self._config.acquire_timeout, deadline_at - now())
        if wait <= 0:
            self._counters.acquire_timeouts += 1
            raise AcquireTimeout(f"no time left to get a connection from pool {self.name!r}")
        return wait

    def _acquire_timed_out(self, wait: float) -> AcquireTimeout:
        """Count an acquire timeout; fail fast instead when connecting is what fails."""
        self._counters.acquire_timeouts += 1
        if self._counters.last_connect_error is not None:
            self._maybe_fail_fast()
        return AcquireTimeout(
            f"couldn't get a connection from pool {self.name!r} after {wait:.2f} s"
        )

    def _claims_generation(self, conn: PoolConnection | AsyncPoolConnection) -> bool:
        """True when a disconnect on *conn* should retire its whole generation (once)."""
        counters = self._counters
        if conn._dbr_generation != counters.generation:
            return False  # already retired with its generation
        counters.generation += 1
        if _instrument.hooks:
            _instrument.emit(_instrument.GenerationRetired(self.name, counters.generation - 1))
        return True

    def _begin(
        self, timeout: float | timedelta | None, what: str, counted: bool = True
    ) -> tuple[float, float, int]:
        """Start *what*: ``(start, deadline_at, breaker permit)``; may raise CircuitOpen (then
        announced to the process-wide hooks as a call ``rejected`` with its code).

        The permit pattern is split between this and ``_record`` rather than a
        :class:`~dbresilience._breaker.Permit`: a pool call's success path is measured against
        psycopg_pool's (make bench, pool table, target <= 1.10x), and one permit spans every
        attempt of the call.

        ``counted=False`` (``open()``'s warm-up) asks the breaker nothing and counts nothing:
        the permit is ``-1``, which ``_record`` and ``_call`` know.
        """
        start = now()
        limit = self._config.query_timeout if timeout is None else seconds("timeout", timeout)
        policy = self._policy
        if not counted:
            self._touch()
            return start, start + limit, -1
        try:
            permit = policy.breaker.acquire() if policy.breaker is not None else 0
        except CircuitOpen as exc:
            if _instrument.hooks:
                self._emit_call_done(exc, start, what, 0)
            raise
        if policy.budget is not None:
            policy.budget.deposit_at(start)
        self._counters.calls += 1
        return start, start + limit, permit

    def _after_failure(
        self,
        what: str,
        exc: Exception,
        failed: int,
        start: float,
        deadline_at: float,
        permit: int,
        idempotent: bool,
    ) -> float | None:
        """The sleep before the next attempt, or None: then the outcome is recorded."""
        delay = self._policy.next_delay(
            f"{self.name} {what}", exc, failed, start, deadline=deadline_at, idempotent=idempotent
        )
        if delay is None:
            self._counters.failures += 1
            self._record(permit, exc, start, what, failed)
        else:
            self._counters.retries += 1
        return delay

    def _record(
        self, permit: int, exc: BaseException | None, start: float, what: str, attempts: int
    ) -> None:
        """Record a call's outcome: to the breaker, and to the process-wide hooks if any; an
        uncounted call's (permit ``-1``) to nobody."""
        if permit < 0:
            return
        breaker = self._policy.breaker
        if breaker is not None:
            breaker.record(permit, exc, start)
        if _instrument.hooks:
            self._emit_call_done(exc, start, what, attempts)

    def _touch(self) -> None:
        """Touch the breaker and budget as a call would, counting nothing (warm-up)."""
        policy = self._policy
        if policy.breaker is not None:
            policy.breaker._touch()
        if policy.budget is not None:
            policy.budget._touch()

    def _emit_call_done(
        self, exc: BaseException | None, start: float, what: str, attempts: int
    ) -> None:
        if exc is None:
            outcome, code, sqlstate = "ok", None, None
        elif isinstance(exc, CircuitOpen):
            outcome, code, sqlstate = "rejected", classify(exc).code, None
        elif isinstance(exc, Exception):
            outcome, code = "error", classify(exc).code
            sqlstate = getattr(exc, "sqlstate", None)
        else:
            outcome, code, sqlstate = "cancelled", None, None
        _instrument.emit(
            _instrument.PoolCallDone(
                self.name, what, now() - start, outcome, code, sqlstate, attempts
            )
        )

    def _timed_out(self, what: str, *, commit_unknown: bool) -> QueryTimeout:
        self._counters.query_timeouts += 1
        if _instrument.hooks:
            _instrument.emit(_instrument.DeadlineFired(self.name, what))
        return QueryTimeout(
            f"{what} on pool {self.name!r} did not finish by its deadline; "
            "the connection was shut down",
            commit_unknown=commit_unknown,
        )

    def _commit_unknown(self) -> CommitUnknown:
        self._counters.commit_unknown += 1
        return CommitUnknown(
            f"the connection to pool {self.name!r} was lost during COMMIT; "
            "the transaction may or may not have been committed"
        )

    def stats(self) -> dict[str, Any]:
        """``size``, ``idle``, ``waiting`` (from psycopg_pool), the pool's own counters
        (``calls``, ``retries``, ``failures``, ``acquire_timeouts``, ``query_timeouts``,
        ``discarded``, ``generation``, ``fail_fast``, ``commit_unknown``), ``watchdog_fired``
        and the ``breaker`` state."""
        raw = self._pool.get_stats()
        breaker = self._policy.breaker
        return {
            "size": raw.get("pool_size", 0),
            "idle": raw.get("pool_available", 0),
            "waiting": raw.get("requests_waiting", 0),
            **self._counters.snapshot(),
            "watchdog_fired": self._watchdog.fired,
            "breaker": breaker.state.value if breaker is not None else "off",
        }

    def pop_stats(self) -> dict[str, Any]:
        """:meth:`stats`, then the counters set back to 0 (``calls``, ``retries``,
        ``failures``, ``acquire_timeouts``, ``query_timeouts``, ``discarded``, ``fail_fast``,
        ``commit_unknown``, ``watchdog_fired``): for a scraper that reports increments, as
        psycopg_pool's ``pop_stats()``. Gauges, ``generation`` and ``breaker`` are not reset.
        docs/observability.md lists every key."""
        stats = self.stats()
        self._counters.subtract(stats)
        self._watchdog.fired -= stats["watchdog_fired"]
        return stats


def lost_in_commit(exc: BaseException, fired: bool) -> bool:
    """True when a failure during COMMIT leaves the transaction's fate unknown."""
    return fired or classify(exc).kind in _LOST_IN_COMMIT
