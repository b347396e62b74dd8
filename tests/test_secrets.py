"""No secret is ever shown: a password planted in every accepted DSN and URL form appears in no
repr, no str, no error (message or chain), no log record and no CLI output.

The forms: a libpq conninfo (``password=``), a URL (``postgresql://u:PW@host/db``), a URL query
(``?password=PW``), ``kwargs={"password": PW}``, ``PGPASSWORD``; for Redis ``redis://:PW@host/0``,
``redis://user:PW@host/0`` and ``redis://host/0?password=PW``. Pools are opened against a refused
port and against the real server; everything logged is captured at DEBUG from every logger.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import traceback
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

import dbresilience as dbr
from dbresilience._pool_base import PoolConfig
from dbresilience.faults import free_port

PW = "hunter2-SECRET-x9"
# What a leak may look like besides the password itself: percent-encoded, or cut short.
NEEDLES = (PW, urllib.parse.quote(PW, safe=""), "SECRET-x9", "hunter2-SECRET")


def assert_hidden(text: str, where: str) -> None:
    """Fail when *text* shows the planted password in any form."""
    for needle in NEEDLES:
        assert needle not in text, f"the password shows in {where}: {text!r}"


def exception_texts(exc: BaseException) -> list[str]:
    """str and repr of every link of *exc*'s chain (``__cause__``, ``__context__``, ``.orig``,
    suppressed or not), and the traceback as Python would print it."""
    texts = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        link = todo.pop()
        if id(link) in seen:
            continue
        seen.add(id(link))
        texts += [str(link), repr(link), repr(link.args)]
        for linked in (link.__cause__, link.__context__, getattr(link, "orig", None)):
            if isinstance(linked, BaseException):
                todo.append(linked)
    return texts


def assert_exception_hidden(exc: BaseException, where: str) -> None:
    """Fail when the password shows anywhere in *exc* or its chain."""
    for text in exception_texts(exc):
        assert_hidden(text, f"{where} ({type(exc).__name__} chain)")


@pytest.fixture
def every_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every record of every logger at DEBUG and above, checked for the password afterwards."""
    caplog.set_level(logging.DEBUG)
    yield caplog
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    for record in caplog.records:
        text = formatter.format(record)  # includes the formatted exc_info, if any
        assert_hidden(text, f"a log record of {record.name}")
        assert_hidden(repr(record.args), f"the arguments of a log record of {record.name}")


# --- the PostgreSQL forms ----------------------------------------------------------------


@dataclass(frozen=True)
class Form:
    """One way to hand a pool the password."""

    name: str
    conninfo: str
    kwargs: dict[str, Any] | None = None
    env: dict[str, str] = field(default_factory=dict)


def pg_forms(host: str, port: int, dbname: str, user: str) -> list[Form]:
    """The password in every form a pool accepts, for a server at *host*:*port*."""
    plain = f"host={host} port={port} dbname={dbname} user={user}"
    return [
        Form("conninfo", f"{plain} password={PW}"),
        Form("conninfo-quoted", f"{plain} password='{PW}'"),
        Form("url", f"postgresql://{user}:{PW}@{host}:{port}/{dbname}"),
        Form("url-query", f"postgresql://{user}@{host}:{port}/{dbname}?password={PW}"),
        Form("kwargs", plain, kwargs={"password": PW}),
        Form("PGPASSWORD", plain, env={"PGPASSWORD": PW}),
    ]


FORM_NAMES = [f.name for f in pg_forms("h", 1, "d", "u")]


def refused_form(name: str) -> Form:
    """*name*'s form against a port nobody listens on."""
    return next(f for f in pg_forms("127.0.0.1", free_port(), "test", "postgres") if f.name == name)


def real_form(name: str, pg_dsn: str) -> Form:
    """*name*'s form against the real server (which trusts local connections)."""
    p = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    forms = pg_forms(
        str(p.get("host") or "127.0.0.1"),
        int(p.get("port") or 5432),
        str(p.get("dbname") or "postgres"),
        str(p.get("user") or "postgres"),
    )
    return next(f for f in forms if f.name == name)


def check_pool_surface(pool: dbr.Pool | dbr.AsyncPool, where: str) -> None:
    """Every repr and str a pool offers."""
    for text in (repr(pool), str(pool), repr(pool.stats()), repr(pool.breaker), pool.name):
        assert_hidden(text, where)
    assert_hidden(repr(pool._config), f"{where} (PoolConfig)")


@pytest.mark.parametrize("name", FORM_NAMES)
def test_pool_against_a_refused_port_shows_no_password(
    name: str, every_log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pool, its config and WriteQueue: reprs, the errors of calls and of open(), every log."""
    form = refused_form(name)
    for key, value in form.env.items():
        monkeypatch.setenv(key, value)
    pool = dbr.Pool(form.conninfo, kwargs=form.kwargs, min_size=1, connect_timeout=1)
    check_pool_surface(pool, f"an unopened Pool ({name})")
    with pytest.raises(Exception) as opened:  # noqa: PT011 - whatever it is, it must not leak
        pool.open(wait=True)
    assert_exception_hidden(opened.value, f"Pool.open() ({name})")
    queue = dbr.WriteQueue(pool, drain_timeout=0.5)
    try:
        queue.open()
        queue.submit("insert into nowhere values (%s)", (1,))
        assert_hidden(repr(queue), f"a WriteQueue ({name})")
        assert_hidden(str(queue), f"a WriteQueue ({name})")
        with pytest.raises(Exception) as called:  # noqa: PT011
            pool.fetchone("select 1", timeout=1)
        assert_exception_hidden(called.value, f"a pool call ({name})")
        check_pool_surface(pool, f"an open Pool ({name})")
        assert_hidden(repr(queue.stats()), f"WriteQueue.stats() ({name})")
    finally:
        queue.close()
        pool.close()
    check_pool_surface(pool, f"a closed Pool ({name})")


@pytest.mark.parametrize("name", FORM_NAMES)
def test_async_pool_against_a_refused_port_shows_no_password(
    name: str, every_log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AsyncPool and AsyncWriteQueue: reprs, the errors of calls and of open(), every log."""
    form = refused_form(name)
    for key, value in form.env.items():
        monkeypatch.setenv(key, value)

    async def scenario() -> None:
        pool = dbr.AsyncPool(form.conninfo, kwargs=form.kwargs, min_size=1, connect_timeout=1)
        check_pool_surface(pool, f"an unopened AsyncPool ({name})")
        with pytest.raises(Exception) as opened:  # noqa: PT011
            await pool.open(wait=True)
        assert_exception_hidden(opened.value, f"AsyncPool.open() ({name})")
        queue = dbr.AsyncWriteQueue(pool, drain_timeout=0.5)
        try:
            await queue.open()
            queue.submit("insert into nowhere values (%s)", (1,))
            assert_hidden(repr(queue), f"an AsyncWriteQueue ({name})")
            with pytest.raises(Exception) as called:  # noqa: PT011
                await pool.fetchone("select 1", timeout=1)
            assert_exception_hidden(called.value, f"an async pool call ({name})")
            check_pool_surface(pool, f"an open AsyncPool ({name})")
        finally:
            await queue.aclose()
            await pool.aclose()

    asyncio.run(scenario())


@pytest.mark.parametrize("name", FORM_NAMES)
def test_pool_on_the_real_server_shows_no_password(
    name: str, pg_dsn: str, every_log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connecting for real (every DEBUG line of psycopg and psycopg_pool), queries, a queue."""
    form = real_form(name, pg_dsn)
    for key, value in form.env.items():
        monkeypatch.setenv(key, value)
    with dbr.Pool(form.conninfo, kwargs=form.kwargs, min_size=1) as pool:
        assert pool.fetchone("select 1") == (1,)
        with pytest.raises(psycopg.Error) as bad:
            pool.execute("select * from dbr_no_such_table_for_secrets")
        assert_exception_hidden(bad.value, f"a failed query ({name})")
        queue = dbr.WriteQueue(pool)
        with queue:
            queue.submit("select %s", (1,))
            assert queue.flush(5.0)
            assert_hidden(repr(queue), f"a WriteQueue ({name})")
        check_pool_surface(pool, f"an open Pool on the real server ({name})")


def test_pool_config_repr_hides_every_secret_looking_kwarg() -> None:
    """PoolConfig's repr masks kwargs such as password and sslpassword, and shows the rest."""
    pool = dbr.Pool(
        "host=127.0.0.1 dbname=test",
        kwargs={"password": PW, "sslpassword": PW, "application_name": "billing"},
    )
    text = repr(pool._config)
    assert_hidden(text, "PoolConfig")
    assert "billing" in text
    assert "password" in text  # the key is shown, its value is not
    assert isinstance(pool._config, PoolConfig)


# --- errors for bad configuration ----------------------------------------------------------

MALFORMED = [
    f"postgresql://u:{PW}%zz@127.0.0.1/db",  # invalid percent-encoded token: "…"
    f"postgresql://u:{PW}@[127.0.0.1/db",  # psycopg quotes the whole URI
    f"host=127.0.0.1 dbname=test {PW}",  # missing "=" after "…"
    f"postgresql://u@127.0.0.1/db?password={PW}%zz",
]


@pytest.mark.parametrize("dsn", MALFORMED, ids=["percent", "ipv6", "no-equals", "query-percent"])
def test_malformed_dsn_error_message_shows_no_password(dsn: str) -> None:
    """A DSN that does not parse: the ValueError's message names the argument, not its text."""
    for cls in (dbr.Pool, dbr.AsyncPool):
        with pytest.raises(ValueError, match="conninfo") as info:
            cls(dsn)
        assert_hidden(str(info.value), f"{cls.__name__}'s error message")
        assert_hidden("".join(traceback.format_exception(info.value)), "the printed traceback")


@pytest.mark.parametrize("dsn", MALFORMED, ids=["percent", "ipv6", "no-equals", "query-percent"])
def test_malformed_dsn_error_chain_shows_no_password(dsn: str) -> None:
    """A DSN that does not parse: nothing in the error's chain (__context__ included) leaks."""
    with pytest.raises(ValueError, match="conninfo") as info:
        dbr.Pool(dsn)
    assert_exception_hidden(info.value, "Pool's error for a malformed DSN")


@pytest.mark.parametrize(
    "value",
    [PW.encode(), [PW], {"password": PW}],
    ids=["bytes", "list", "dict"],
)
def test_wrong_type_errors_show_no_password(value: object) -> None:
    """A conninfo or URL of the wrong type: the TypeError shows its type, never its value."""
    for make in (
        lambda: dbr.Pool(value),  # type: ignore[arg-type]
        lambda: dbr.AsyncPool(value),  # type: ignore[arg-type]
        lambda: dbr.CredentialCache(redis_url=value),  # type: ignore[arg-type]
        lambda: dbr.AsyncCredentialCache(redis_url=value),  # type: ignore[arg-type]
        lambda: dbr.RedisBreakerState(value),  # type: ignore[arg-type]
        lambda: dbr.AsyncRedisBreakerState(value),  # type: ignore[arg-type]
    ):
        with pytest.raises(TypeError) as info:
            make()
        assert_exception_hidden(info.value, "a TypeError for a wrong type")


# --- Redis ---------------------------------------------------------------------------------


def redis_forms(host: str, port: int) -> list[str]:
    """The password in every Redis URL form redis-py accepts."""
    return [
        f"redis://:{PW}@{host}:{port}/0",
        f"redis://default:{PW}@{host}:{port}/0",
        f"redis://{host}:{port}/0?password={PW}",
        f"redis://{host}:{port}/0?socket_timeout=1&password={PW}",
        f"redis://{host}:{port}/0?Password={PW}",
        f"rediss://:{PW}@{host}:{port}/0",
        f"unix:///tmp/dbr-no-such.sock?db=0&password={PW}",
    ]


REDIS_IDS = ["userinfo", "user-userinfo", "query", "query-second", "query-case", "tls", "unix"]


def check_redis_surface(obj: object, where: str) -> None:
    """repr and str of a cache or breaker state (and its stats, where it has them)."""
    assert_hidden(repr(obj), where)
    assert_hidden(str(obj), where)
    stats = getattr(obj, "stats", None)
    if callable(stats):
        assert_hidden(repr(stats()), f"{where}.stats()")


@pytest.mark.parametrize("index", range(len(REDIS_IDS)), ids=REDIS_IDS)
def test_redis_reprs_show_no_password(index: int) -> None:
    """CredentialCache, AsyncCredentialCache, RedisBreakerState and the async twin hide it."""
    url = redis_forms("127.0.0.1", 6379)[index]
    for obj in (
        dbr.CredentialCache(redis_url=url),
        dbr.AsyncCredentialCache(redis_url=url),
        dbr.RedisBreakerState(url),
        dbr.AsyncRedisBreakerState(url),
    ):
        check_redis_surface(obj, type(obj).__name__)


@pytest.mark.parametrize("index", range(len(REDIS_IDS)), ids=REDIS_IDS)
def test_redis_in_use_shows_no_password(
    index: int, redis_url: str, every_log: pytest.LogCaptureFixture
) -> None:
    """Against the real Redis (which may refuse the password) and a refused port: reprs, the
    errors raised and every log record while opening, loading and closing."""
    parsed = urllib.parse.urlsplit(redis_url)
    real = redis_forms(parsed.hostname or "127.0.0.1", parsed.port or 6379)[index]
    refused = redis_forms("127.0.0.1", free_port())[index]
    for url in (real, refused):
        cache = dbr.CredentialCache(redis_url=url, namespace=f"dbr-secrets-{index}")
        breaker_state = dbr.RedisBreakerState(url, namespace=f"dbr-secrets-{index}", refresh=0.05)
        for obj in (cache, breaker_state):
            try:
                obj.open()
            except Exception as exc:
                assert_exception_hidden(exc, f"{type(obj).__name__}.open()")
            check_redis_surface(obj, f"an open {type(obj).__name__}")
        try:
            cache.get_or_load("k", lambda: {"v": 1})
        except Exception as exc:
            assert_exception_hidden(exc, "CredentialCache.get_or_load()")
        check_redis_surface(cache, "a used CredentialCache")
        cache.close()
        breaker_state.close()

    async def scenario() -> None:
        for url in (real, refused):
            cache = dbr.AsyncCredentialCache(redis_url=url, namespace=f"dbr-secrets-{index}")
            state = dbr.AsyncRedisBreakerState(url, namespace=f"dbr-secrets-{index}")
            for obj in (cache, state):
                try:
                    await obj.open()
                except Exception as exc:
                    assert_exception_hidden(exc, f"{type(obj).__name__}.open()")
                check_redis_surface(obj, f"an open {type(obj).__name__}")
            await cache.aclose()
            await state.aclose()

    asyncio.run(scenario())


# --- the command line ----------------------------------------------------------------------


def run_check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m dbresilience check …`` in a child process: stdout and stderr, as a user
    sees them."""
    return subprocess.run(
        [sys.executable, "-m", "dbresilience", "check", *args, "--connect-timeout", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.mark.parametrize("name", ["conninfo", "conninfo-quoted", "url", "url-query", "PGPASSWORD"])
def test_cli_check_of_a_refused_port_shows_no_password(name: str) -> None:
    """check against a free port: P1001, and the password in no output line."""
    form = refused_form(name)
    done = run_check(form.conninfo, env=form.env)
    assert done.returncode == 1
    assert "P1001" in done.stdout
    assert_hidden(done.stdout + done.stderr, f"the output of check ({name})")


def test_cli_check_from_database_url_shows_no_password() -> None:
    """check with the DSN in DATABASE_URL (no argument) hides it the same way."""
    form = refused_form("url")
    done = subprocess.run(
        [sys.executable, "-m", "dbresilience", "check", "--connect-timeout", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DATABASE_URL": form.conninfo},
        check=False,
    )
    assert done.returncode == 1
    assert_hidden(done.stdout + done.stderr, "the output of check (DATABASE_URL)")


@pytest.mark.parametrize("dsn", MALFORMED, ids=["percent", "ipv6", "no-equals", "query-percent"])
def test_cli_check_of_a_malformed_dsn_shows_no_password(dsn: str) -> None:
    """check of a DSN psycopg cannot parse: it says so without quoting psycopg's message."""
    done = run_check(dsn)
    assert done.returncode == 1
    assert "not a valid" in done.stdout
    assert_hidden(done.stdout + done.stderr, "the output of check (malformed DSN)")


@pytest.mark.parametrize(
    "argv",
    [
        ["host=127.0.0.1", f"password={PW}"],  # a DSN with a space, not quoted
        [f"--password={PW}"],
        ["host=127.0.0.1", "--connect-timeout", "2", f"postgresql://u:{PW}@h/db"],
    ],
    ids=["unquoted-space", "option-like", "two-dsns"],
)
def test_cli_usage_errors_show_no_password(argv: list[str]) -> None:
    """Arguments check cannot use are refused (exit 2) without being echoed back."""
    done = subprocess.run(
        [sys.executable, "-m", "dbresilience", "check", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "unrecognized" in done.stderr
    assert_hidden(done.stdout + done.stderr, "a usage error of check")


def test_cli_check_on_the_real_server_shows_no_password(pg_dsn: str) -> None:
    """check of a DSN holding a password, on the real server: the report never shows it."""
    done = run_check(real_form("url", pg_dsn).conninfo)
    assert done.returncode == 0, done.stdout + done.stderr
    assert_hidden(done.stdout + done.stderr, "the output of check (real server)")


# --- the redaction helper itself -----------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"redis://:{PW}@cache:6379/0", "redis://***@cache:6379/0"),
        (f"redis://app:{PW}@cache:6379/0", "redis://app:***@cache:6379/0"),
        (f"redis://cache:6379/0?password={PW}", "redis://cache:6379/0?password=***"),
        (f"redis://cache/0?db=1&pass%77ord={PW}&x=1", "redis://cache/0?db=1&pass%77ord=***&x=1"),
        (f"redis://:pa/ss?{PW}@cache/0", "redis://***@cache/0"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
        (
            f"postgresql://u:{PW}@db/app?sslpassword={PW}",
            "postgresql://u:***@db/app?sslpassword=***",
        ),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    """URLs keep scheme, user name, host, path and harmless parameters; secrets become ***."""
    from dbresilience._redact import redact_url

    assert redact_url(url) == shown


def test_redact_text_masks_pairs_urls_and_known_secrets() -> None:
    """Free text: key=value pairs, URL credentials and the secrets named are masked."""
    from dbresilience._redact import redact_text

    pairs = (
        f"password={PW} PASSWORD = '{PW}' sslpassword=\"{PW}\" "
        f"postgresql://u:{PW}@h/db redis://:{PW}@cache/0 x?db=0&password={PW}"
    )
    shown = redact_text(pairs)
    assert_hidden(shown, "redact_text without named secrets")
    assert "postgresql://" in shown
    assert "@h/db" in shown
    named = redact_text(f'missing "=" after "{PW}"', secrets=[PW])
    assert named == 'missing "=" after "***"'
    for harmless in ("connection refused", "fe_sendauth: no password supplied", "port=5432"):
        assert redact_text(harmless) == harmless


# --- psycopg's and psycopg_pool's own log lines in a real fault ------------------------------

PLANTED_USER = "dbr_planted_role_q7"


def test_a_real_fault_logs_no_password_and_no_user(pg_cluster: Any) -> None:
    """A pool and a queue logged in as a planted role with a planted password, on a throwaway
    cluster: backends terminated mid-batch, a write refused in a pipelined batch, a pipeline
    left with an error in flight (psycopg's "error ignored terminating <Pipeline (host=…
    user=…)>") and a restart. Every record of every logger, at DEBUG, shows neither."""
    import threading
    import time

    from dbresilience.faults import terminate_backends

    pg_cluster.execute(f"drop role if exists {PLANTED_USER}")
    pg_cluster.execute(f"create role {PLANTED_USER} login superuser password '{PW}'")
    port = psycopg.conninfo.conninfo_to_dict(pg_cluster.dsn)["port"]
    table = f"dbr_secret_{os.getpid()}"
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    root = logging.getLogger()
    keep, level = Keep(logging.DEBUG), root.level
    root.addHandler(keep)
    root.setLevel(logging.DEBUG)
    dsn = f"host=127.0.0.1 port={port} dbname=postgres user={PLANTED_USER} password={PW}"
    try:
        pg_cluster.execute(f"create table {table} (v int)")
        with dbr.Pool(dsn, min_size=2, name="planted") as pool:
            with pytest.raises(RuntimeError), pool.connection() as conn, conn.pipeline():  # noqa: PT012
                conn.execute("select * from dbr_no_such_table_here")
                raise RuntimeError("in flight")
            queue = dbr.WriteQueue(pool, use_unnest=False, flush_interval=0.01)
            with queue:
                for _ in range(2):
                    for i in range(10):
                        queue.submit(f"insert into {table} select %s from pg_sleep(0.02)", (i,))
                    time.sleep(0.08)
                    terminate_backends(pg_cluster.dsn)
                queue.submit(f"insert into {table} (nope) values (%s)", (1,))
                assert queue.flush(15.0)
            worker = threading.Thread(target=pg_cluster.restart)
            worker.start()
            for _ in range(40):  # calls during the restart: each fails or is retried through it
                with contextlib.suppress(Exception):
                    pool.fetchone("select 1", timeout=0.5)
                time.sleep(0.05)
            worker.join()
            deadline = time.monotonic() + 15
            while True:  # the pool answers again once it reconnected
                try:
                    assert pool.fetchone("select 1", timeout=2) == (1,)
                    break
                except dbr.DatabaseUnavailable:
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
    finally:
        root.removeHandler(keep)
        root.setLevel(level)
        pg_cluster.execute(f"drop table if exists {table}")
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    seen = {record.name for record in records}
    assert {"psycopg", "psycopg.pool"} <= seen, seen  # the fault was logged
    for record in records:
        text = formatter.format(record) + repr(record.args) + repr(record.__dict__)
        assert_hidden(text, f"a log record of {record.name}")
        assert PLANTED_USER not in text, f"the user shows in a record of {record.name}: {text}"


def test_conninfo_redactor_rewrites_only_what_shows_a_connection() -> None:
    """The filter on psycopg's loggers: a connection summary, a server's ``for user "…"``, a
    password pair and URL credentials are rewritten out; any other record (odd arguments
    included) passes with its message and arguments untouched; nothing is ever dropped."""
    from dbresilience._logsummary import ConninfoRedactor

    redactor = ConninfoRedactor()

    def record(msg: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord("psycopg", logging.WARNING, __file__, 1, msg, args, None)

    class Shows:
        def __repr__(self) -> str:
            summary = f"host=db.internal port=6432 user={PLANTED_USER} database=app"
            return f"<psycopg.Pipeline [IDLE] ({summary}) at 0x1>"

    for leaky in (
        record("error ignored terminating %r: %s", Shows(), "boom"),
        record(
            "connection failed: %s",
            f'FATAL:  password authentication failed for user "{PLANTED_USER}"',
        ),
        record("connecting with %s", f"host=db password={PW}"),
        record("connecting to %s", f"postgresql://{PLANTED_USER}:{PW}@db/app"),
    ):
        assert redactor.filter(leaky)
        shown = leaky.getMessage()
        assert PLANTED_USER not in shown
        assert "db.internal" not in shown
        assert_hidden(shown, "a redacted record")
    plain = record("pool %r is ready to use (%d%%)", "main", 5)
    assert redactor.filter(plain)
    assert (plain.msg, plain.args) == ("pool %r is ready to use (%d%%)", ("main", 5))
    odd = record("%s %s", "only one")  # a record whose arguments do not fit: left as it is
    assert redactor.filter(odd)
    assert odd.args == ("only one",)
