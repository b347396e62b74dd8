"""The library's own exceptions: one root, each also a subclass of the closest standard parent."""

from __future__ import annotations

__all__ = ["DBResilienceError"]


class DBResilienceError(Exception):
    """Root of every exception raised by dbresilience itself.

    Library errors also subclass the closest standard parent (``TimeoutError``,
    ``psycopg.OperationalError``) so that existing ``except`` clauses keep working.
    Errors that come from the database or a driver are re-raised unchanged, never wrapped
    in this class; :func:`dbresilience.classify` maps both.
    """
