"""One line when a pool's outage starts, one when it ends: a filter on psycopg_pool's logger.

psycopg_pool logs ``error connecting in 'pool': ...`` at WARNING for every failed reconnection
attempt (52 lines during one ``make demo``). :class:`ConnectErrorSummary` lets the first of an
outage through, rewritten to name the classification code and say that repeats are summarised,
drops the repeats while counting them, and when the pool connects again logs one line on the
same logger with the outage's duration and the number of failed attempts. Every
other psycopg_pool record passes untouched. Pools install it when they open; remove it with
``logging.getLogger("psycopg.pool").removeFilter(CONNECT_SUMMARY)`` to see every line again.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from dbresilience._classify import classify

__all__ = ["CONNECT_SUMMARY", "ConnectErrorSummary"]

_PSYCOPG_POOL_LOGGER = "psycopg.pool"
# The end of an outage is told where its start was: on psycopg_pool's logger, so that whoever
# sees one line (a handler on "psycopg.pool", or Python's last-resort stderr) sees both.
_log = logging.getLogger(_PSYCOPG_POOL_LOGGER)
_CONNECT_ERROR = "error connecting in %r: %s"


# A pool that was closed during an outage never reports its end: an "outage" whose last error is
# older than this is over, and the next error starts a new one (pools retry every 0.25 s at most).
STALE_AFTER = 60.0


@dataclass
class _Outage:
    started: float
    failures: int
    code: str
    last: float


class ConnectErrorSummary(logging.Filter):
    """A :class:`logging.Filter` for psycopg_pool's ``psycopg.pool`` logger that summarises
    each outage's repeated "error connecting" WARNINGs as one line when it starts and one when
    it ends (see the module docstring)."""

    def __init__(self) -> None:
        """An empty summary: no outage in progress."""
        super().__init__()
        self._outages: dict[str, _Outage] = {}
        self._lock = threading.Lock()
        self._clock = time.monotonic

    def filter(self, record: logging.LogRecord) -> bool:
        """Let the first connect error of an outage through (rewritten), drop the repeats."""
        if record.msg != _CONNECT_ERROR or not isinstance(record.args, tuple):
            return True
        if len(record.args) != 2:
            return True
        name, error = record.args
        code = classify(error).code if isinstance(error, BaseException) else "unknown"
        now = self._clock()
        with self._lock:
            outage = self._outages.get(str(name))
            if outage is not None and now - outage.last < STALE_AFTER:
                outage.failures += 1
                outage.last = now
                return False
            self._outages[str(name)] = _Outage(now, 1, code, now)
        record.msg = (
            "pool %r cannot connect (%s): outage started; repeated connect errors are "
            "summarised until it connects again"
        )
        record.args = (name, code)
        record.code = code  # an extra field for structured logs
        return True

    def connected(self, pool: str) -> None:
        """The pool connected: when an outage was in progress, log its end and forget it."""
        if not self._outages:
            return
        with self._lock:
            outage = self._outages.pop(pool, None)
        if outage is None:
            return
        elapsed = self._clock() - outage.started
        _log.warning(
            "pool %r connects again after an outage of %.1f s (%d failed connection attempts, "
            "first %s)",
            pool,
            elapsed,
            outage.failures,
            outage.code,
            extra={"code": outage.code, "elapsed": elapsed},
        )

    def in_outage(self, pool: str) -> bool:
        """True while *pool*'s outage is in progress (a connect error seen, no success since)."""
        return pool in self._outages

    def install(self) -> None:
        """Add this filter to psycopg_pool's logger (once)."""
        logger = logging.getLogger(_PSYCOPG_POOL_LOGGER)
        if self not in logger.filters:
            logger.addFilter(self)


#: The filter pools install on psycopg_pool's logger when they open.
CONNECT_SUMMARY = ConnectErrorSummary()
