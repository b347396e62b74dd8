"""The pytest plugin, as a user's test suite sees it (run by pytester in a fresh pytest
session): the docs' example passes, each fixture gives what it says and puts back what a test
broke."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

DOCS = Path(__file__).resolve().parent.parent / "docs" / "testing.md"


ARGS = (
    "-p",
    "no:randomly",
    "-p",
    "no:cacheprovider",
    "-o",
    "asyncio_default_fixture_loop_scope=function",
)


def documented_example() -> str:
    """The python block of docs/testing.md's plugin section."""
    text = DOCS.read_text()
    section = text[text.index("## The pytest plugin") :]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block is not None
    return block.group(1)


def test_documented_example_and_fixtures_restore_what_a_test_broke(
    pytester: pytest.Pytester,
) -> None:
    """In one user session (the plugin found through its entry point: no conftest, no import
    of it): docs/testing.md's 15-line example passes; a test that stops the cluster and one
    that freezes a backend leave it running, thawed and empty for the next; dbr_redis can be
    stopped; dbr_testing makes retries sleepless in sync and async tests."""
    example = documented_example()
    assert len([line for line in example.splitlines() if line.strip()]) == 15
    source = """
        import time

        import psycopg
        import pytest

        import dbresilience as dbr


        def test_stops_the_server(dbr_postgres):
            dbr_postgres.stop("immediate")


        def test_freezes_a_backend(dbr_postgres):
            held = psycopg.connect(dbr_postgres.dsn, autocommit=True)
            dbr_postgres.freeze(held.info.backend_pid)
            held.close()


        def test_finds_it_running(dbr_postgres):
            with psycopg.connect(dbr_postgres.dsn, connect_timeout=3) as conn:
                assert conn.execute("select count(*) from pg_stat_activity "
                                    "where backend_type = 'client backend'").fetchone() == (1,)


        def test_redis_outage(dbr_redis):
            cache = dbr.CredentialCache(redis_url=dbr_redis.url, ttl=60.0)
            with cache:
                assert cache.get_or_load("k", lambda: 1) == 1
                dbr_redis.stop()
                assert cache.get_or_load("k2", lambda: 2) == 2  # the loader, without Redis


        def _flaky():
            calls = []

            @dbr.with_retry(attempts=4, deadline=60.0, idempotent=True)
            def read():
                calls.append(1)
                if len(calls) < 4:
                    raise psycopg.OperationalError("server closed the connection unexpectedly")
                return len(calls)

            return read


        def test_no_sleeps(dbr_testing):
            start = time.monotonic()
            assert _flaky()() == 4
            assert time.monotonic() - start < 0.1


        @pytest.mark.asyncio
        async def test_no_sleeps_async(dbr_testing):
            calls = []

            @dbr.with_retry(attempts=4, deadline=60.0, idempotent=True)
            async def read():
                calls.append(1)
                if len(calls) < 4:
                    raise psycopg.OperationalError("server closed the connection unexpectedly")
                return len(calls)

            start = time.monotonic()
            assert await read() == 4
            assert time.monotonic() - start < 0.1
    """
    pytester.makepyfile(test_docs=example, test_user=textwrap.dedent(source))
    result = pytester.runpytest_inprocess(*ARGS)
    result.assert_outcomes(passed=7)


def test_fixtures_are_listed(pytester: pytest.Pytester) -> None:
    """`pytest --fixtures` lists the four fixtures with their help."""
    result = pytester.runpytest_inprocess("--fixtures", *ARGS)
    text = result.stdout.str()
    for name in ("dbr_postgres", "dbr_fault_proxy", "dbr_redis", "dbr_testing"):
        assert name in text
