"""`dbresilience.tenacity`, used with tenacity itself: it retries what `with_retry` retries,
keeps the commit-unknown rule, and waits what the classification asks."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
import tenacity

import dbresilience as dbr
from dbresilience import tenacity as dbr_tenacity
from dbresilience.faults import free_port


@pytest.fixture(scope="module")
def failures(pg_dsn: str) -> dict[str, Exception]:
    """Real errors from the database (and the library's own), by name."""
    found: dict[str, Exception] = {}
    try:
        psycopg.connect(psycopg.conninfo.make_conninfo(pg_dsn, port=str(free_port())))
    except psycopg.OperationalError as exc:
        found["refused"] = exc
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        table = f"dbr_ten_{uuid.uuid4().hex[:10]}"
        conn.execute(f"CREATE TEMP TABLE {table} (id int PRIMARY KEY)")
        conn.execute(f"INSERT INTO {table} VALUES (1)")
        for name, statement in (
            ("unique", f"INSERT INTO {table} VALUES (1)"),
            ("syntax", "SELEC 1"),
            ("statement_timeout", "SET statement_timeout = 1; SELECT pg_sleep(1)"),
        ):
            try:
                conn.execute(statement)
            except psycopg.Error as exc:
                found[name] = exc
            conn.execute("SET statement_timeout = 0")
    found["commit_unknown"] = dbr.CommitUnknown("the connection was lost during COMMIT")
    found["circuit_open"] = dbr.CircuitOpen("db", 0.3, "5 failures")
    found["bug"] = KeyError("a bug")
    return found


def _attempts(retry: Any, exc: Exception, wait: Any = None) -> tuple[int, list[float]]:
    """How many attempts tenacity makes (at most 3) when every one raises *exc*, and the
    sleeps it asked for (recorded, not slept)."""
    calls, sleeps = 0, []

    def fail() -> None:
        nonlocal calls
        calls += 1
        raise exc

    retrying = tenacity.Retrying(
        retry=retry,
        stop=tenacity.stop_after_attempt(3),
        wait=wait or tenacity.wait_none(),
        sleep=sleeps.append,
        reraise=True,
    )
    with pytest.raises(type(exc)):
        retrying(fail)
    return calls, sleeps


def _with_retry_attempts(exc: Exception, idempotent: bool) -> int:
    calls = 0

    @dbr.with_retry(attempts=3, idempotent=idempotent)
    def fail() -> None:
        nonlocal calls
        calls += 1
        raise exc

    with dbr.testing(), pytest.raises(type(exc)):
        fail()
    return calls


@pytest.mark.parametrize(
    ("name", "transient", "safe"),
    [
        ("refused", 3, 3),
        ("unique", 1, 1),
        ("syntax", 1, 1),
        ("statement_timeout", 1, 1),
        ("commit_unknown", 3, 1),
        ("circuit_open", 1, 1),
        ("bug", 1, 1),
    ],
)
def test_tenacity_retries_what_with_retry_retries(
    failures: dict[str, Exception], name: str, transient: int, safe: int
) -> None:
    """With tenacity, retry_if_transient retries like with_retry(idempotent=True) and
    retry_if_safe_to_retry like with_retry(): a refused connection is retried, a unique
    violation, bad SQL, an open circuit or a bug is not, and a commit-unknown write only when
    the work is idempotent."""
    exc = failures[name]
    assert _attempts(dbr_tenacity.retry_if_transient, exc)[0] == transient
    assert _attempts(dbr_tenacity.retry_if_safe_to_retry, exc)[0] == safe
    assert _with_retry_attempts(exc, idempotent=True) == transient
    assert _with_retry_attempts(exc, idempotent=False) == safe


def test_wait_honours_the_retry_after(failures: dict[str, Exception]) -> None:
    """wait_retry_after sleeps the classification's retry_after (1 s for a refused server,
    capped by max), or the fallback's wait when that is longer."""
    refused = failures["refused"]
    _, sleeps = _attempts(dbr_tenacity.retry_if_transient, refused, dbr_tenacity.wait_retry_after())
    assert sleeps == [1.0, 1.0]
    wait = dbr_tenacity.wait_retry_after(tenacity.wait_fixed(3), max=2.5)
    assert _attempts(dbr_tenacity.retry_if_transient, refused, wait)[1] == [2.5, 2.5]
    # an open circuit's own wait: retried here only because the strategy says so
    circuit = failures["circuit_open"]
    _, sleeps = _attempts(
        tenacity.retry_if_exception_type(dbr.CircuitOpen), circuit, dbr_tenacity.wait_retry_after()
    )
    assert sleeps == [pytest.approx(0.3), pytest.approx(0.3)]
    with pytest.raises(ValueError, match="max"):
        dbr_tenacity.wait_retry_after(max=-1)


async def test_async_functions_and_combined_strategies(failures: dict[str, Exception]) -> None:
    """The strategies work under tenacity's asyncio support and combine with its own."""
    calls = 0
    retry = dbr_tenacity.retry_if_safe_to_retry | tenacity.retry_if_exception_type(KeyError)

    @tenacity.retry(retry=retry, stop=tenacity.stop_after_attempt(3), reraise=True)
    async def fail() -> None:
        nonlocal calls
        calls += 1
        raise failures["bug"]

    with pytest.raises(KeyError):
        await fail()
    assert calls == 3
