"""One line when a pool's outage starts, one when it ends: a filter on psycopg_pool's logger.

psycopg_pool logs ``error connecting in 'pool': ...`` at WARNING for every failed reconnection
attempt (52 lines during one ``make demo``). :class:`ConnectErrorSummary` lets the first of an
outage through, rewritten to name the classification code and say that repeats are summarised,
drops the repeats while counting them, and when the pool connects again logs one line on the
same logger with the outage's duration and the number of failed attempts. Every
other psycopg_pool record passes untouched. Pools install it when they open; remove it with
``logging.getLogger("psycopg.pool").removeFilter(CONNECT_SUMMARY)`` to see every line again.

Two more filters pools install beside it (:func:`install`):

- :class:`DiscardSummary` on ``psycopg.pool``: psycopg_pool's ``discarding closed connection``
  and ``discarding broken connection`` WARNINGs (one per connection a server restart or a
  terminated backend broke: 7 in a short demo) become the first line of the burst, rewritten to
  say repeats are summarised, and one line with the count once no connection was discarded for
  :data:`DISCARD_QUIET` seconds.
- :class:`ConninfoRedactor` on ``psycopg`` and ``psycopg.pool``: psycopg's connection, pipeline
  and copy reprs carry ``(host=… user=… database=…)`` and its messages may quote a server's
  ``for user "…"``; the filter rewrites such a record's message without them (and without any
  ``password=…`` pair or URL credentials, :func:`dbresilience._redact.redact_text`). Records
  holding none of these pass untouched.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass

from dbresilience._classify import classify
from dbresilience._redact import redact_text

__all__ = [
    "CONNECT_SUMMARY",
    "CONNINFO_REDACTOR",
    "DISCARD_SUMMARY",
    "ConnectErrorSummary",
    "ConninfoRedactor",
    "DiscardSummary",
    "install",
]

_PSYCOPG_POOL_LOGGER = "psycopg.pool"
_PSYCOPG_LOGGER = "psycopg"
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


_DISCARDS = ("discarding closed connection: %s", "discarding broken connection: %s")

#: Seconds without a discarded connection after which a burst of discards is over and its
#: summary line is logged.
DISCARD_QUIET = 2.0


class DiscardSummary(logging.Filter):
    """A :class:`logging.Filter` for ``psycopg.pool`` that summarises a burst of psycopg_pool's
    "discarding closed/broken connection" WARNINGs: the first passes (rewritten, without the
    connection's repr), the rest are counted, and one line with the count is logged on the same
    logger once :data:`DISCARD_QUIET` seconds pass without another."""

    def __init__(self) -> None:
        """No burst in progress."""
        super().__init__()
        self._lock = threading.Lock()
        self._clock = time.monotonic
        self._started = 0.0
        self._last = 0.0
        self._count = 0  # discards in the burst in progress; 0: none in progress

    def filter(self, record: logging.LogRecord) -> bool:
        """Let the first discard of a burst through (rewritten), count and drop the repeats."""
        if record.msg not in _DISCARDS:
            return True
        now = self._clock()
        with self._lock:
            self._count += 1
            self._last = now
            if self._count > 1:
                return False
            self._started = now
        timer = threading.Timer(DISCARD_QUIET, self._check)
        timer.daemon = True
        timer.start()
        record.msg = (
            "discarding connections the server or the network closed; repeats are summarised "
            "until none is discarded for %.0f s"
        )
        record.args = (DISCARD_QUIET,)
        return True

    def _check(self) -> None:
        with self._lock:
            left = self._last + DISCARD_QUIET - self._clock()
            if left <= 0:
                count, elapsed = self._count, self._last - self._started
                self._count = 0
        if left > 0:
            timer = threading.Timer(left, self._check)
            timer.daemon = True
            timer.start()
            return
        _log.warning(
            "discarded %d closed connections in %.1f s (the server or the network closed them)",
            count,
            elapsed,
            extra={"elapsed": elapsed},
        )

    def install(self) -> None:
        """Add this filter to psycopg_pool's logger (once)."""
        logger = logging.getLogger(_PSYCOPG_POOL_LOGGER)
        if self not in logger.filters:
            logger.addFilter(self)


# psycopg's connection summary in reprs: "(host=127.0.0.1 port=5433 user=app database=db)"
_SUMMARY = re.compile(r" ?\((?:(?:host|hostaddr|port|user|database)=[^\s()]{0,256} ?){1,5}\)")
# a server's message naming a role: 'for user "app"', 'role "app" does not exist'
_ROLE = re.compile(r'\b(user|role) "(?:[^"]|""){0,128}"')


class ConninfoRedactor(logging.Filter):
    """A :class:`logging.Filter` for psycopg's and psycopg_pool's loggers that rewrites a
    record's message without the host, port, user and database of psycopg's connection reprs,
    without a role named by a server message, and without password pairs or URL credentials.
    Records holding none of these pass untouched."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite *record*'s message when it shows connection details; never drop it."""
        try:
            text = record.getMessage()
        except Exception:  # a record whose arguments do not fit its message: leave it
            return True
        shown = redact_text(_ROLE.sub(r'\1 "***"', _SUMMARY.sub("", text)))
        if shown != text:
            record.msg = shown
            record.args = None
        return True

    def install(self) -> None:
        """Add this filter to the ``psycopg`` and ``psycopg.pool`` loggers (once, last)."""
        for name in (_PSYCOPG_LOGGER, _PSYCOPG_POOL_LOGGER):
            logger = logging.getLogger(name)
            if self not in logger.filters:
                logger.addFilter(self)


#: Installed by pools beside :data:`CONNECT_SUMMARY`.
DISCARD_SUMMARY = DiscardSummary()
#: Installed by pools on ``psycopg`` and ``psycopg.pool``, after the summaries.
CONNINFO_REDACTOR = ConninfoRedactor()


def install() -> None:
    """The filters pools install when they are built: the outage and discard summaries, then
    the redactor (last, so that it sees the summaries' own lines)."""
    CONNECT_SUMMARY.install()
    DISCARD_SUMMARY.install()
    CONNINFO_REDACTOR.install()
