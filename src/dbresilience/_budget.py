"""Retry budgets: retries allowed up to a fraction of recent calls plus a small floor.

A retry budget is what keeps retries from turning a database blip into a retry storm: when most
calls fail, at most ``ratio`` extra attempts per call (plus ``min_per_second`` a second) go out,
however many attempts each caller's policy would allow. The model is Finagle's and tower's
``RetryBudget``: every call deposits, every retry withdraws, deposits expire after ``ttl``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta

from dbresilience import _instrument
from dbresilience._events import BudgetExhausted, BudgetHook, call_hooks, logger
from dbresilience._validate import callable_or_none, number, seconds, string
from dbresilience._window import SlidingWindow

__all__ = ["RetryBudget"]


class RetryBudget:
    """A token budget for retries, shared by every caller that retries against one target.

    Over any ``ttl`` window, retries stay at or below ``ratio * calls + min_per_second * ttl``.
    ``deposit()`` counts a call (the first attempt), ``try_withdraw()`` asks for one retry.
    Thread-safe and usable from async code (nothing blocks). ``ratio`` is a number in
    ``[0, 10]``, ``min_per_second`` a finite number ``>= 0``, ``ttl`` between 1 and 60 seconds;
    invalid arguments raise ``TypeError`` (wrong type) or ``ValueError`` (out of range) naming
    the argument.
    """

    def __init__(
        self,
        name: str = "default",
        *,
        ratio: float = 0.2,
        min_per_second: float = 5.0,
        ttl: float | timedelta = 10.0,
        on_exhausted: BudgetHook | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = string("name", name)
        self.ratio = number("ratio", ratio, high=10.0)
        self.min_per_second = number("min_per_second", min_per_second)
        self.ttl = window = seconds("ttl", ttl, minimum=1.0, maximum=60.0)
        callable_or_none("on_exhausted", on_exhausted)
        self._reserve = self.min_per_second * window
        self._hooks = () if on_exhausted is None else (on_exhausted,)
        self._clock = clock
        self._window = SlidingWindow(window)
        self._lock = threading.Lock()
        self._exhausted = 0
        self._withdrawn = 0
        #: ``deposit_at(now)``: count a call made at *now* (seconds on the budget's clock).
        #: The hot path of ``with_retry``: no lock, no clock read, one comparison.
        self.deposit_at: Callable[[float], None] = self._window.count_call

    def deposit(self) -> None:
        """Count one call (the first attempt of an operation)."""
        self._window.count_call(self._clock())

    def _touch(self) -> None:
        """Touch what :meth:`deposit_at` touches, counting nothing (``Pool.open()``'s warm-up:
        the window's current slot is only moved to now on the budget's own clock)."""
        self._window.index(self._clock())

    def try_withdraw(self, now: float | None = None) -> bool:
        """Take one retry from the budget; ``False`` (and counted) when it is spent."""
        now = self._clock() if now is None else now
        with self._lock:
            calls, retries, _ = self._window.totals(now)
            if retries + 1 <= self.ratio * calls + self._reserve:
                self._window.bad[self._window.index(now)] += 1
                self._withdrawn += 1
                return True
            self._exhausted += 1
            return False

    def exhausted(self, retried: str, code: str) -> None:
        """Report that *retried* did not retry a *code* failure because the budget was spent."""
        calls, retries, _ = self._window.totals(self._clock())
        logger.warning(
            "retry budget %r spent: not retrying %s after %s (%d retries for %d calls in %.0f s)",
            self.name,
            retried,
            code,
            retries,
            calls,
            self.ttl,
        )
        if self._hooks:
            details = BudgetExhausted(
                budget=self.name, retried=retried, code=code, calls=calls, retries=retries
            )
            call_hooks(self._hooks, details)
        if _instrument.hooks:
            _instrument.emit(_instrument.BudgetRefused(self.name, retried, code))

    def stats(self) -> dict[str, float]:
        """``calls`` and ``retries`` in the current window, ``allowed`` retries in it,
        ``withdrawn`` and ``exhausted`` since creation."""
        calls, retries, _ = self._window.totals(self._clock())
        return {
            "calls": calls,
            "retries": retries,
            "allowed": self.ratio * calls + self._reserve,
            "withdrawn": self._withdrawn,
            "exhausted": self._exhausted,
        }

    def __repr__(self) -> str:
        return (
            f"RetryBudget({self.name!r}, ratio={self.ratio:g}, "
            f"min_per_second={self.min_per_second:g}, ttl={self.ttl:g})"
        )
