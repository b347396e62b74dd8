"""Deadlines: computed once from a budget, then asked how much time is left. Pure, no I/O."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

__all__ = ["Deadline", "seconds"]


def seconds(name: str, value: float | timedelta, *, allow_zero: bool = False) -> float:
    """*value* as float seconds; ``ValueError`` naming *name* unless it is a positive duration.

    Accepts ``int``, ``float`` and ``datetime.timedelta``; ``0`` only with ``allow_zero``.
    """
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be seconds (a number or a timedelta), got {value!r}")
    value = float(value)
    if value != value or value == float("inf"):
        raise ValueError(f"{name} must be a finite number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound} seconds, got {value!r}")
    return value


class Deadline:
    """A point on the monotonic clock: ``Deadline(5.0)`` ends five seconds from now.

    Compute it once at the start of an operation and hand ``remaining()`` down to every step,
    so that waiting, attempts and sleeps all draw on one budget.
    """

    __slots__ = ("_at", "_clock", "budget")

    def __init__(self, budget: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget = budget
        self._clock = clock
        self._at = clock() + budget

    @property
    def at(self) -> float:
        """When it ends, on the clock it was made with."""
        return self._at

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self._at - self._clock())

    def elapsed(self) -> float:
        """Seconds since the deadline was made."""
        return self._clock() - (self._at - self.budget)

    def expired(self) -> bool:
        """True once no time is left."""
        return self._clock() >= self._at

    def allows(self, delay: float) -> bool:
        """True when a sleep of *delay* seconds started now would end before the deadline."""
        return self._clock() + delay < self._at

    def __repr__(self) -> str:
        return f"Deadline(budget={self.budget:.3f}, remaining={self.remaining():.3f})"
