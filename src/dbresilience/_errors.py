"""The library's own exceptions: one root, each also a subclass of the closest standard parent."""

from __future__ import annotations

from dbresilience._classify import ErrorKind, own_classification

__all__ = ["CircuitOpen", "DBResilienceError"]


class DBResilienceError(Exception):
    """Root of every exception raised by dbresilience itself.

    Library errors also subclass the closest standard parent (``TimeoutError``,
    ``psycopg.OperationalError``) so that existing ``except`` clauses keep working.
    Errors that come from the database or a driver are re-raised unchanged, never wrapped
    in this class; :func:`dbresilience.classify` maps both.
    """


class CircuitOpen(DBResilienceError):
    """A circuit breaker is open: the call was not made. Classified DBR4001, HTTP 503.

    ``retry_after`` is the number of seconds until the breaker lets a probe through; ``breaker``
    its name. Never retried inside the call: retrying against an open circuit is what it is
    there to stop.
    """

    def __init__(self, breaker: str, retry_after: float, detail: str) -> None:
        self.breaker = breaker
        self.retry_after = max(0.0, retry_after)
        super().__init__(
            f"circuit {breaker!r} is open ({detail}); next probe in {self.retry_after:.2f} s"
        )
        self._dbr_classification = own_classification(
            ErrorKind.CIRCUIT_OPEN,
            f"circuit {breaker!r} open",
            retry_after=max(0.1, round(self.retry_after, 1)),
        )
