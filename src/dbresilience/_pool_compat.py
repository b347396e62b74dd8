"""What the pools take from psycopg_pool beyond its public API, in one place.

The pools use psycopg_pool's public hooks where there is one: ``connection_class`` (the
connection classes below declare the attributes the pool keeps on each connection),
``configure`` (warm-up SQL and one round trip per new connection), ``kwargs``, ``timeout``,
``max_lifetime`` and ``reconnect_timeout``. Three needs have no public hook:

- remembering why connecting failed, for the fail-fast decision: the core pools override
  ``_connect(self, timeout=None)``;
- answering the calls already waiting for a connection when a connect fails (else the first
  call after ``open(wait=False)`` during an outage waits out ``acquire_timeout``): the override
  takes the waiting clients out of ``_waiting`` under ``_lock`` and calls
  ``WaitingClient.fail(error)`` on each, as psycopg_pool's own ``close()`` does;
- refilling within a quarter of a second of the database's return: psycopg_pool's reconnect
  backoff starts at 1 s and doubles up to ``reconnect_timeout`` (psycopg #701, #1315); the core
  pools override ``_add_connection(self, attempt, growing=False)`` to start every attempt with
  :class:`QuickReconnect`, a subclass of the private ``psycopg_pool.base.AttemptWithBackoff``.

``check=`` and ``reset=`` are not used: psycopg_pool runs them without a deadline, and the pools'
own idle check and release path are bounded by the call's deadline. ``reconnect_failed=`` is
never called: ``reconnect_timeout`` is a year, because a pool that gives up on its slots stays
short of connections after the database returns.

:data:`PRIVATE_API` lists what is relied on; ``tests/test_pool_compat.py`` fails when a
psycopg_pool release changes any of it (the dependency is also pinned below 3.4).
"""

from __future__ import annotations

import select
from typing import Any

import psycopg
from psycopg.abc import Params
from psycopg_pool.base import AttemptWithBackoff
from typing_extensions import Self

from dbresilience._errors import SessionStateUnsupported
from dbresilience._pooler import check_query

__all__ = [
    "PRIVATE_API",
    "PRIVATE_ATTRIBUTES",
    "AsyncPoolConnection",
    "AsyncPoolerCursor",
    "AsyncPoolerServerCursor",
    "PoolConnection",
    "PoolerCursor",
    "PoolerServerCursor",
    "QuickReconnect",
]

#: psycopg_pool's private names the pools rely on, with the parameters they are called with
PRIVATE_API: dict[str, tuple[str, ...]] = {
    "ConnectionPool._connect": ("self", "timeout"),
    "ConnectionPool._add_connection": ("self", "attempt", "growing"),
    "AsyncConnectionPool._connect": ("self", "timeout"),
    "AsyncConnectionPool._add_connection": ("self", "attempt", "growing"),
    "base.AttemptWithBackoff": ("self", "timeout"),
    "base.AttemptWithBackoff.update_delay": ("self", "now"),
    "pool.WaitingClient.fail": ("self", "error"),
    "pool_async.WaitingClient.fail": ("self", "error"),
}

#: the private attributes of an open psycopg_pool pool the pools use (see above)
PRIVATE_ATTRIBUTES: tuple[str, ...] = ("_lock", "_waiting")


class PoolConnection(psycopg.Connection[Any]):
    """The pool's connections: psycopg's, with the attributes the pool keeps on them."""

    _dbr_generation: int = 0  # the pool generation it was opened in
    _dbr_used_at: float = 0.0  # monotonic time it was last handed back
    _dbr_poll: select.poll | None = None  # a poll object on its socket, made on first need


class AsyncPoolConnection(psycopg.AsyncConnection[Any]):
    """The asyncio pool's connections, with the same attributes as :class:`PoolConnection`."""

    _dbr_generation: int = 0
    _dbr_used_at: float = 0.0
    _dbr_poll: select.poll | None = None


class PoolerCursor(psycopg.Cursor[Any]):
    """psycopg's cursor, refusing before sending what a transaction pooler cannot serve
    (session state, ``prepare=True``: see :func:`dbresilience._pooler.check_query`)."""

    def execute(
        self,
        query: Any,
        params: Params | None = None,
        *,
        prepare: bool | None = None,
        binary: bool | None = None,
    ) -> Self:
        """``Cursor.execute``, after :func:`~dbresilience._pooler.check_query`."""
        check_query(query, self, prepare)
        return super().execute(query, params, prepare=prepare, binary=binary)

    def executemany(self, query: Any, params_seq: Any, *, returning: bool = False) -> None:
        """``Cursor.executemany``, after :func:`~dbresilience._pooler.check_query`."""
        check_query(query, self, None)
        super().executemany(query, params_seq, returning=returning)


class AsyncPoolerCursor(psycopg.AsyncCursor[Any]):
    """:class:`PoolerCursor` for asyncio connections."""

    async def execute(
        self,
        query: Any,
        params: Params | None = None,
        *,
        prepare: bool | None = None,
        binary: bool | None = None,
    ) -> Self:
        """``AsyncCursor.execute``, after :func:`~dbresilience._pooler.check_query`."""
        check_query(query, self, prepare)
        return await super().execute(query, params, prepare=prepare, binary=binary)

    async def executemany(self, query: Any, params_seq: Any, *, returning: bool = False) -> None:
        """``AsyncCursor.executemany``, after :func:`~dbresilience._pooler.check_query`."""
        check_query(query, self, None)
        await super().executemany(query, params_seq, returning=returning)


_WITH_HOLD = (
    "refused: a WITH HOLD cursor (it outlives its transaction); a pooler in transaction mode "
    "(pooler='transaction') shares server sessions between clients. Use a direct connection or "
    "a session-mode pooler for it (pooler='session')"
)


class PoolerServerCursor(psycopg.ServerCursor[Any]):
    """psycopg's named (server-side) cursor, refusing ``withhold=True`` behind a transaction
    pooler: the cursor would outlive its transaction on a server connection other clients
    share (raised before the object exists, so nothing is left to close)."""

    def __new__(cls, *args: Any, withhold: bool = False, **kwargs: Any) -> Self:
        """Refuse ``withhold=True`` with :class:`~dbresilience.SessionStateUnsupported`."""
        if withhold:
            raise SessionStateUnsupported(_WITH_HOLD)
        return super().__new__(cls)


class AsyncPoolerServerCursor(psycopg.AsyncServerCursor[Any]):
    """:class:`PoolerServerCursor` for asyncio connections."""

    def __new__(cls, *args: Any, withhold: bool = False, **kwargs: Any) -> Self:
        """Refuse ``withhold=True`` with :class:`~dbresilience.SessionStateUnsupported`."""
        if withhold:
            raise SessionStateUnsupported(_WITH_HOLD)
        return super().__new__(cls)


class QuickReconnect(AttemptWithBackoff):
    """psycopg_pool's reconnect backoff, started at 0.1 s and capped at 0.25 s.

    psycopg_pool starts at 1 s and doubles up to ``reconnect_timeout`` (5 minutes), so a pool
    could wait minutes to refill after its database came back (psycopg #701, #1315). Capping
    the delay keeps the refill within a quarter of a second of the database's return (a
    promoted standby, a restart), at the cost of four connection attempts per missing
    connection per second while it is down (a refused connect costs the server nothing; a
    standby answering ``session is read-only`` costs it a backend start each).
    """

    INITIAL_DELAY = 0.1
    MAX_DELAY = 0.25

    def update_delay(self, now: float) -> None:
        """Grow the delay as psycopg_pool does, but never past ``MAX_DELAY``."""
        super().update_delay(now)
        self.delay = min(self.delay, self.MAX_DELAY)
