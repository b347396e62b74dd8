"""The pytest plugin (``pip install 'dbresilience[testing]'``): real faults for your own tests.

Registered through the ``pytest11`` entry point, so installing the extra is all it takes:

- ``dbr_postgres``: a throwaway PostgreSQL cluster (:class:`~dbresilience.faults.TemporaryPostgres`,
  one per test session) that a test may stop, restart, kill or freeze; it is running, thawed and
  without client sessions when each test starts.
- ``dbr_fault_proxy``: a :class:`~dbresilience.faults.FaultProxy` in front of ``dbr_postgres``
  (``dbr_fault_proxy.dsn(dbr_postgres.dsn)`` connects through it), closed after the test.
- ``dbr_redis``: a throwaway ``redis-server`` (:class:`~dbresilience.faults.TemporaryRedis`)
  the test may stop and start; ``dbr_redis.url``.
- ``dbr_testing``: :func:`dbresilience.testing` for the test: retries do not sleep.

A server that cannot be started (no PostgreSQL binaries, no ``redis-server``) skips the test
with the reason, or fails it when ``CI`` is ``true``. Nothing here runs unless a test asks for
one of these fixtures. See ``docs/testing.md``.
"""

from __future__ import annotations

from dbresilience._errors import require

require("pytest", extra="testing", what="dbresilience.pytest_plugin")

import contextlib
import os
from collections.abc import Iterator

import pytest

import dbresilience as dbr
from dbresilience.faults import FaultProxy, TemporaryPostgres, TemporaryRedis, terminate_backends

__all__ = ["dbr_fault_proxy", "dbr_postgres", "dbr_redis", "dbr_testing"]


def _unavailable(what: str, exc: BaseException) -> None:
    message = f"dbresilience: {what} could not be started: {exc}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{message} (CI=true: a missing service is an error)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def _dbr_cluster() -> Iterator[TemporaryPostgres]:
    try:
        cluster = TemporaryPostgres().start()
    except Exception as exc:
        _unavailable("a throwaway PostgreSQL", exc)
        return
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def dbr_postgres(_dbr_cluster: TemporaryPostgres) -> Iterator[TemporaryPostgres]:
    """A throwaway PostgreSQL cluster this test may stop, restart, kill or freeze
    (``dsn``, ``stop()``, ``start()``, ``freeze(pid)``...); put back running after the test."""
    cluster = _dbr_cluster
    if not cluster.running:
        cluster.start()
    frozen: list[int] = []
    freeze = cluster.freeze

    def tracking_freeze(pid: int) -> None:
        frozen.append(pid)
        freeze(pid)

    cluster.freeze = tracking_freeze  # type: ignore[method-assign]
    try:
        yield cluster
    finally:
        cluster.freeze = freeze  # type: ignore[method-assign]
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                TemporaryPostgres.thaw(pid)
        if cluster.running:
            terminate_backends(cluster.dsn)  # what the test left connected, frozen included
        else:
            cluster.start()


@pytest.fixture
def dbr_fault_proxy(dbr_postgres: TemporaryPostgres) -> Iterator[FaultProxy]:
    """A fault proxy in front of ``dbr_postgres``: connect with
    ``dbr_fault_proxy.dsn(dbr_postgres.dsn)``, then ``down()``, ``silent()``, ``freeze()``,
    ``reset()``, ``latency(s)``, ``restore()``. Closed after the test."""
    proxy = FaultProxy("127.0.0.1", dbr_postgres.port).start()
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture
def dbr_redis() -> Iterator[TemporaryRedis]:
    """A throwaway ``redis-server`` (``url``, ``stop()``, ``start()``), removed after the test."""
    try:
        server = TemporaryRedis().start()
    except Exception as exc:
        _unavailable("redis-server", exc)
        return
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def dbr_testing() -> Iterator[None]:
    """:func:`dbresilience.testing` for this test: ``with_retry`` and the pools' retries do not
    sleep between attempts."""
    with dbr.testing():
        yield
