"""Deadlines: computed once from a budget, then asked how much time is left. Pure, no I/O.

``seconds`` (how every duration argument is checked) lives in :mod:`dbresilience._validate`;
it is imported here too, where the twins have always found it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

from dbresilience._validate import seconds

__all__ = ["Deadline", "seconds"]


class Deadline:
    """A point on the monotonic clock: ``Deadline(5.0)`` ends five seconds from now.

    Compute it once at the start of an operation and hand ``remaining()`` down to every step,
    so that waiting, attempts and sleeps all draw on one budget.
    """

    __slots__ = ("_at", "_clock", "budget")

    def __init__(
        self, budget: float | timedelta, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """*budget*: seconds (or a ``timedelta``) ``>= 0``; ``TypeError``/``ValueError`` naming
        it otherwise (see :func:`dbresilience._validate.seconds`)."""
        self.budget = budget = seconds("budget", budget, allow_zero=True)
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
