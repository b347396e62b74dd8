"""Backoff schedules: exponential growth, capped, with full jitter. Pure arithmetic, no I/O."""

from __future__ import annotations

import random
from dataclasses import dataclass

from dbresilience._validate import positive_int, seconds

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Full-jitter exponential backoff: the *n*-th retry waits ``uniform(0, cap(n))`` seconds.

    ``cap(n) = min(max_delay, base_delay * 2 ** (n - 1))`` for ``n >= 1``. Full jitter spreads
    callers that failed together over the whole window, which is what keeps a fleet of clients
    from retrying in lock step (the AWS architecture blog's "Exponential Backoff and Jitter").

    Delays are seconds ``>= 0`` (an int, a float or a ``timedelta``, kept as float seconds);
    anything else raises ``TypeError``/``ValueError`` naming the field.
    """

    base_delay: float = 0.1
    max_delay: float = 2.0

    def __post_init__(self) -> None:
        # frozen: normalise through object.__setattr__ (a timedelta or an int becomes float s)
        object.__setattr__(
            self, "base_delay", seconds("base_delay", self.base_delay, allow_zero=True)
        )
        object.__setattr__(self, "max_delay", seconds("max_delay", self.max_delay, allow_zero=True))

    def cap(self, retry: int) -> float:
        """The largest delay the *retry*-th retry (1-based) may wait."""
        positive_int("retry", retry)
        # 2 ** 1100 overflows a float; past 64 doublings every sane cap has been reached.
        return min(self.max_delay, self.base_delay * 2.0 ** min(retry - 1, 64))

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """A jittered delay for the *retry*-th retry (1-based), in ``[0, cap(retry)]``."""
        upper = self.cap(retry)
        return (rng or random).uniform(0.0, upper)
