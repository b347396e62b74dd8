"""`dbresilience.tenacity`, used with tenacity itself: it retries what `with_retry` retries,
keeps the commit-unknown rule, and waits what the classification asks."""

from __future__ import annotations

import random
import threading
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
        found["serialization"] = _serialization_failure(pg_dsn)
        found["deadlock"] = _deadlock(pg_dsn)
    found["commit_unknown"] = dbr.CommitUnknown("the connection was lost during COMMIT")
    found["circuit_open"] = dbr.CircuitOpen("db", 0.3, "5 failures")
    found["bug"] = KeyError("a bug")
    return found


def _serialization_failure(pg_dsn: str) -> Exception:
    """A real 40001: a repeatable-read update of a row another transaction changed."""
    table = f"dbr_ten_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_dsn, autocommit=True) as setup:
        setup.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v int)")
        setup.execute(f"INSERT INTO {table} VALUES (1, 0)")
        try:
            with psycopg.connect(pg_dsn) as a, psycopg.connect(pg_dsn) as b:
                a.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                a.execute(f"SELECT v FROM {table}")
                b.execute(f"UPDATE {table} SET v = 1 WHERE id = 1")
                b.commit()
                try:
                    a.execute(f"UPDATE {table} SET v = 2 WHERE id = 1")
                except psycopg.errors.SerializationFailure as exc:
                    return exc
                raise AssertionError("no serialization failure")
        finally:
            setup.execute(f"DROP TABLE {table}")


def _deadlock(pg_dsn: str) -> Exception:
    """A real 40P01: two transactions updating two rows in opposite orders."""
    table = f"dbr_ten_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_dsn, autocommit=True) as setup:
        setup.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)")
        setup.execute(f"INSERT INTO {table} VALUES (1), (2)")
        try:
            with psycopg.connect(pg_dsn) as a, psycopg.connect(pg_dsn) as b:
                b.execute("SET deadlock_timeout = '50ms'")
                a.execute(f"UPDATE {table} SET id = id WHERE id = 1")
                b.execute(f"UPDATE {table} SET id = id WHERE id = 2")
                blocked = threading.Thread(
                    target=lambda: a.execute(f"UPDATE {table} SET id = id WHERE id = 2")
                )
                blocked.start()
                try:
                    for _ in range(100):  # until a waits for b's row
                        row = setup.execute(
                            "SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted",
                            (a.info.backend_pid,),
                        ).fetchone()
                        if row and row[0]:
                            break
                        threading.Event().wait(0.01)
                    b.execute(f"UPDATE {table} SET id = id WHERE id = 1")
                except psycopg.errors.DeadlockDetected as exc:
                    return exc
                finally:
                    b.rollback()
                    blocked.join(5)
                    a.rollback()
                raise AssertionError("no deadlock")
        finally:
            setup.execute(f"DROP TABLE {table}")


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
        ("deadlock", 3, 3),
        ("serialization", 3, 3),
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


@pytest.mark.parametrize("name", ["deadlock", "serialization", "refused"])
def test_wait_is_what_with_retry_waits(failures: dict[str, Exception], name: str) -> None:
    """Under tenacity, wait_retry_after() sleeps exactly what with_retry() sleeps for the same
    failure and random draws: its backoff (full jitter from 0.1 s), not the 1 s Retry-After
    hint the classification carries for an HTTP client (before: at least 1 s per retry)."""
    exc = failures[name]
    random.seed(1307)
    _, tenacity_sleeps = _attempts(
        dbr_tenacity.retry_if_transient, exc, dbr_tenacity.wait_retry_after()
    )
    with_retry_sleeps: list[float] = []

    @dbr.with_retry(
        attempts=3,
        idempotent=True,
        on_retry=lambda details: with_retry_sleeps.append(details.delay),
        budget=None,
    )
    def fail() -> None:
        raise exc

    random.seed(1307)
    with pytest.raises(type(exc)):
        fail()
    assert len(tenacity_sleeps) == 2
    assert tenacity_sleeps == with_retry_sleeps
    assert 0 <= tenacity_sleeps[0] <= 0.1
    assert 0 <= tenacity_sleeps[1] <= 0.2


def test_wait_uses_the_fallback_and_honours_an_open_circuit(
    failures: dict[str, Exception],
) -> None:
    """A fallback replaces with_retry's backoff (capped by max); a failure with_retry does not
    retry but the strategy does (an open circuit) waits its retry_after."""
    refused = failures["refused"]
    wait = dbr_tenacity.wait_retry_after(tenacity.wait_fixed(3), max=2.5)
    assert _attempts(dbr_tenacity.retry_if_transient, refused, wait)[1] == [2.5, 2.5]
    wait = dbr_tenacity.wait_retry_after(tenacity.wait_fixed(0.05))
    assert _attempts(dbr_tenacity.retry_if_transient, failures["deadlock"], wait)[1] == [
        0.05,
        0.05,
    ]
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
