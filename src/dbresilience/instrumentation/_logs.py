"""Structured logs: a hook that logs every event, a ``logging.Filter`` and a structlog
processor that add the current request id, and the psycopg_pool outage summary."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

from dbresilience import _instrument as ins
from dbresilience._errors import require
from dbresilience._logsummary import (
    CONNECT_SUMMARY,
    ConnectErrorSummary,
    ConninfoRedactor,
    DiscardSummary,
)

__all__ = [
    "ConnectErrorSummary",
    "ConninfoRedactor",
    "DiscardSummary",
    "LoggingHook",
    "RequestContextFilter",
    "StructlogHook",
    "add_request_context",
    "summarise_connect_errors",
]

#: The extra fields every record gets from :class:`RequestContextFilter` (``None`` if unset).
EXTRA_FIELDS = ("request_id", "code", "attempt", "elapsed")


def current_request_id() -> str | None:
    """The request id :mod:`dbresilience.web` set for the current request, or ``None``.

    Never imports the web module (which needs Starlette): if it was not imported, no request
    id can have been set.
    """
    web = sys.modules.get("dbresilience.web")
    if web is None:
        return None
    value: str | None = web.request_id()
    return value


class RequestContextFilter(logging.Filter):
    """Adds ``request_id`` (from :func:`dbresilience.web.request_id`), and ``code``,
    ``attempt`` and ``elapsed`` when the record did not bring them as ``extra=``, so a
    formatter or a JSON handler can always name them. Never drops a record.

    Attach it to a handler: ``handler.addFilter(RequestContextFilter())``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the fields; always True."""
        if getattr(record, "request_id", None) is None:
            record.request_id = current_request_id()
        for name in ("code", "attempt", "elapsed"):
            if not hasattr(record, name):
                setattr(record, name, None)
        return True


def add_request_context(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor: adds ``request_id`` from :mod:`dbresilience.web` when set."""
    if "request_id" not in event_dict:
        rid = current_request_id()
        if rid is not None:
            event_dict["request_id"] = rid
    return event_dict


_QUIET = frozenset({"cache_hit", "cache_miss", "pool_call_done", "acquire_waited"})


def _level(event: ins.Event) -> int:
    if event.kind in _QUIET:
        return logging.DEBUG
    if event.kind in {"retry_given_up", "write_set_aside", "cache_degraded", "deadline_fired"}:
        return logging.WARNING
    return logging.INFO


class LoggingHook:
    """A process-wide hook that logs every event on *logger* (default ``dbresilience.events``)
    with its fields as ``extra=`` (plus ``request_id``): calls and cache lookups at DEBUG,
    retries, reconnects and batches at INFO, give-ups, set-aside writes, degraded caches and
    fired deadlines at WARNING."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        """Log to *logger*, or ``logging.getLogger("dbresilience.events")``."""
        self.logger = logger or logging.getLogger("dbresilience.events")

    def __call__(self, event: ins.Event, /) -> None:
        """Log *event* (if its level is enabled)."""
        level = _level(event)
        if not self.logger.isEnabledFor(level):
            return
        fields = event.fields()
        extra = {"event_kind": event.kind, "request_id": current_request_id(), **fields}
        extra.pop("name", None)  # reserved by LogRecord
        text = " ".join(f"{k}={v}" for k, v in fields.items())
        self.logger.log(level, "%s %s", event.kind, text, extra=extra)


class StructlogHook:
    """A process-wide hook that logs every event through structlog: the event's ``kind`` as
    the event name, its fields as key/values, and ``request_id``. Needs the ``structlog``
    extra (``pip install 'dbresilience[structlog]'``)."""

    def __init__(self, logger: Any = None) -> None:
        """Log to *logger*, or ``structlog.get_logger("dbresilience")``."""
        require("structlog", extra="structlog", what="instrumentation.StructlogHook()")
        import structlog

        self.logger = logger if logger is not None else structlog.get_logger("dbresilience")

    def __call__(self, event: ins.Event, /) -> None:
        """Log *event* at its level (see :class:`LoggingHook`)."""
        level = _level(event)
        fields = event.fields()
        rid = current_request_id()
        if rid is not None:
            fields["request_id"] = rid
        if level >= logging.WARNING:
            self.logger.warning(event.kind, **fields)
        elif level >= logging.INFO:
            self.logger.info(event.kind, **fields)
        else:
            self.logger.debug(event.kind, **fields)


def summarise_connect_errors(enabled: bool = True) -> ConnectErrorSummary:
    """Install (or with ``False`` remove) the :class:`ConnectErrorSummary` filter on
    psycopg_pool's ``psycopg.pool`` logger. Pools install it when they open; returns it."""
    if enabled:
        CONNECT_SUMMARY.install()
    else:
        logging.getLogger("psycopg.pool").removeFilter(CONNECT_SUMMARY)
    return CONNECT_SUMMARY
