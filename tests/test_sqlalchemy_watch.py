"""The SQLAlchemy engine's statement deadline when statements nest or fail unseen.

The engine watches a statement from ``before_cursor_execute`` to ``after_cursor_execute`` (or
``handle_error``), keeping the watchdog entry on the connection. Two ways to break that pairing:

- a statement run on the same connection from inside another's ``before_cursor_execute`` (a
  listener setting a tenant or a search path with ``conn.exec_driver_sql``, a common pattern):
  the inner statement's entry replaced the outer one's, so the outer deadline fired unseen (a
  raw disconnect error instead of :class:`dbresilience.QueryTimeout`) and its entry leaked,
  firing later on whatever the connection was doing then;
- a statement that fails with ``skip_user_error_events`` (no ``handle_error``): its entry was
  never finished and fired later on an idle, healthy connection.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

import dbresilience as dbr
from dbresilience import sqlalchemy as dbr_sa

from .test_pool import MARGIN
from .test_sqlalchemy import url_of

DEADLINE = 0.5


@pytest.fixture
def engine(pg_dsn: str) -> Iterator[sa.Engine]:
    """One connection, a short deadline and no server-side statement timeout (so only the
    watchdog can end a long statement); a listener runs a nested statement before any
    statement that mentions pg_sleep, on the same connection."""
    engine = dbr_sa.create_engine(
        url_of(pg_dsn),
        pool_size=1,
        max_overflow=0,
        query_timeout=DEADLINE,
        statement_timeout=False,
    )

    @event.listens_for(engine, "before_cursor_execute")
    def set_tenant(conn: sa.Connection, cursor: Any, statement: str, *args: Any) -> None:
        if "pg_sleep" in statement:
            conn.exec_driver_sql("select set_config('app.tenant', 'acme', false)")

    yield engine
    engine.dispose()


def test_a_nested_statement_keeps_the_outer_deadline(engine: sa.Engine) -> None:
    """The outer statement still ends at its deadline with QueryTimeout, and the engine
    serves afterwards."""
    start = time.monotonic()
    with pytest.raises(dbr.QueryTimeout), engine.connect() as conn:
        conn.exec_driver_sql("select pg_sleep(5)")
    assert time.monotonic() - start < DEADLINE + MARGIN
    with engine.connect() as conn:
        assert conn.exec_driver_sql("select 1").scalar_one() == 1


def test_a_nested_statement_leaves_no_deadline_behind(engine: sa.Engine) -> None:
    """After a nested pair finished in time, nothing fires later on the connection: a
    statement started just before the outer deadline would have passed, and an idle wait
    past it, both succeed."""
    with engine.connect() as conn:
        conn.exec_driver_sql("select pg_sleep(0.01)")
        time.sleep(DEADLINE * 0.8)
        conn.exec_driver_sql("select pg_sleep(0.3)")  # across the outer's old deadline
        time.sleep(DEADLINE)
        assert conn.exec_driver_sql("select 1").scalar_one() == 1
    with engine.connect() as conn:
        assert conn.exec_driver_sql("select 1").scalar_one() == 1


def test_a_failure_without_error_events_leaves_no_deadline_behind(engine: sa.Engine) -> None:
    """A statement failing with skip_user_error_events (handle_error not called): its entry
    does not fire later on the healthy connection, in the same checkout or the next."""
    with engine.connect() as conn:
        quiet = conn.execution_options(skip_user_error_events=True)
        with pytest.raises(sa.exc.DataError):
            quiet.exec_driver_sql("select 1/0")
        conn.rollback()
        conn.exec_driver_sql("select 1")
        time.sleep(DEADLINE + 0.2)
        assert conn.exec_driver_sql("select 1").scalar_one() == 1
    with engine.connect() as conn:
        quiet = conn.execution_options(skip_user_error_events=True)
        with pytest.raises(sa.exc.DataError):
            quiet.exec_driver_sql("select 1/0")
    time.sleep(DEADLINE + 0.2)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("select 1").scalar_one() == 1
