"""SQLAlchemy engines with the pool's timeouts, warming, checks, deadline and classification.

``dbresilience.sqlalchemy.create_engine(url, ...)`` and ``create_async_engine(url, ...)``
return ordinary SQLAlchemy engines (psycopg 3 driver) with what :class:`dbresilience.Pool`
gives a service, wired through SQLAlchemy's own events:

- the timeout layers through ``connect_args`` (connect, statement, lock, idle-in-transaction,
  keepalives, ``tcp_user_timeout``);
- warming: ``warm`` connections opened and checked, fatal errors (P1000, P1003, TLS) at once,
  transient ones retried within ``connect_timeout`` (``create_engine`` before it returns;
  ``create_async_engine`` returns at once, like SQLAlchemy's, and ``await
  warm_async_engine(engine)`` warms it);
- a bounded health check on checkout instead of ``pool_pre_ping``'s unbounded round trip: a
  zero-timeout poll for a server that hung up (free), and one round trip only for connections
  idle past ``idle_check_after``, under the watchdog;
- a hard deadline per statement (``query_timeout``): the watchdog shuts the socket down and
  the statement raises :class:`dbresilience.QueryTimeout`;
- ``handle_error`` feeding :func:`dbresilience.classify`: a failure that retires the connection's
  generation (57P01, 08xxx, 25006, ...) is marked a disconnect, so SQLAlchemy invalidates the
  whole pool at once.

Needs the ``sqlalchemy`` extra; imported only when this module is.
"""

from __future__ import annotations

from dbresilience._errors import require

require("sqlalchemy", extra="sqlalchemy", what="dbresilience.sqlalchemy")

from dbresilience._sqlalchemy import create_engine, warm_engine
from dbresilience._sqlalchemy_async import create_async_engine, warm_async_engine

__all__ = ["create_async_engine", "create_engine", "warm_async_engine", "warm_engine"]
