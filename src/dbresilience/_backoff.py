"""Backoff schedules: exponential growth, capped, with full jitter. Pure arithmetic, no I/O."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Full-jitter exponential backoff: the *n*-th retry waits ``uniform(0, cap(n))`` seconds.

    ``cap(n) = min(max_delay, base_delay * 2 ** (n - 1))`` for ``n >= 1``. Full jitter spreads
    callers that failed together over the whole window, which is what keeps a fleet of clients
    from retrying in lock step (the AWS architecture blog's "Exponential Backoff and Jitter").
    """

    base_delay: float = 0.1
    max_delay: float = 2.0

    def __post_init__(self) -> None:
        check_non_negative("base_delay", self.base_delay)
        check_non_negative("max_delay", self.max_delay)

    def cap(self, retry: int) -> float:
        """The largest delay the *retry*-th retry (1-based) may wait."""
        if retry < 1:
            raise ValueError(f"retry must be >= 1, got {retry!r}")
        # 2 ** 1100 overflows a float; past 64 doublings every sane cap has been reached.
        return min(self.max_delay, self.base_delay * 2.0 ** min(retry - 1, 64))

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """A jittered delay for the *retry*-th retry (1-based), in ``[0, cap(retry)]``."""
        upper = self.cap(retry)
        return (rng or random).uniform(0.0, upper)


def check_non_negative(name: str, value: float) -> None:
    """Raise ``ValueError`` naming *name* unless *value* is a finite number ``>= 0``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
