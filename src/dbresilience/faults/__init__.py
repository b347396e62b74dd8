"""Real faults for tests and demos: a TCP fault proxy and throwaway PostgreSQL and Redis servers.

Nothing here is imported by the rest of the library. It exists so that a service's own tests (and
``dbresilience demo``) can break a real database the ways production does: refused connections,
reset connections, a server that accepts and never answers, a network that stops forwarding on
live connections, a stopped or restarted server, a backend frozen with ``SIGSTOP``, a streaming
replica that lags, stops or is promoted in a failover (:class:`TemporaryReplica`), and a real
PgBouncer in transaction or session mode in front of it (:class:`TemporaryPgBouncer`).

The proxy is a small hand-written one because no toxiproxy-like server can be installed from the
package registries this project may use; it is one selector thread, so every mode change happens
between two socket operations and resets are real RSTs (a linger-0 close from the owning thread).
"""

from __future__ import annotations

from dbresilience.faults._common import free_port
from dbresilience.faults._pgbouncer import TemporaryPgBouncer, find_pgbouncer
from dbresilience.faults._postgres import (
    TemporaryPostgres,
    TemporaryReplica,
    client_backends,
    find_pg_bindir,
    terminate_backends,
)
from dbresilience.faults._proxy import FaultProxy, ProxyMode
from dbresilience.faults._redis import TemporaryRedis

__all__ = [
    "FaultProxy",
    "ProxyMode",
    "TemporaryPgBouncer",
    "TemporaryPostgres",
    "TemporaryRedis",
    "TemporaryReplica",
    "client_backends",
    "find_pg_bindir",
    "find_pgbouncer",
    "free_port",
    "terminate_backends",
]
