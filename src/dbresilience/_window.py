"""A sliding window of counters in time slots: the bookkeeping under budgets and breakers.

Pure, no I/O. The hot path (counting a call) takes no lock: it indexes a slot and increments an
int, which under the GIL can at worst lose a count when two threads collide, and a lost *call*
only makes a budget or breaker more cautious. Counts that decide something (failures, retries)
are taken under the owner's lock.
"""

from __future__ import annotations

import threading

from dbresilience._validate import positive_int, seconds

__all__ = ["SlidingWindow"]

# the id of a slot never used: below any slot a clock can give (a clock may start below zero)
_NEVER = -(1 << 62)


class SlidingWindow:
    """Counts of calls, bad outcomes and slow calls over the last ``window`` seconds.

    The window is ``slots`` slots of ``window / slots`` seconds each; a slot is cleared when the
    clock comes back to it a window later, so a count expires between ``window - width`` and
    ``window`` seconds after it was made.
    """

    __slots__ = (
        "_lock",
        "_n",
        "_width",
        "bad",
        "calls",
        "cur",
        "end",
        "slot_ids",
        "slow",
        "window",
    )

    def __init__(self, window: float, slots: int = 10) -> None:
        self.window = window = seconds("window", window)
        self._n = slots = positive_int("slots", slots)
        self._width = window / slots
        self.slot_ids = [_NEVER] * slots
        self.calls = [0] * slots
        self.bad = [0] * slots
        self.slow = [0] * slots
        self._lock = threading.Lock()
        # the newest slot: its ring index and when it ends (the hot path compares and counts)
        self.cur = 0
        self.end = float("-inf")

    def count_call(self, now: float) -> None:
        """Count one call made at *now*: one comparison and one increment on the hot path.

        A call stamped a little before the newest slot began (a call that started earlier)
        counts in the newest slot: its count expires a slot late, never early.
        """
        if now < self.end:
            self.calls[self.cur] += 1
        else:
            self.calls[self.index(now)] += 1

    def index(self, now: float) -> int:
        """The ring index of the slot holding *now*, cleared first if it held an older slot.

        A stamp a window or more older than the newest slot (a call that started that long
        ago and ends now; its ring place may hold the newest slot) gets the newest slot, as
        :meth:`count_call` does: clearing its place would erase the newer slot's counts.
        """
        slot = int(now / self._width)
        i = slot % self._n
        if self.slot_ids[i] != slot:
            with self._lock:
                if slot <= self.slot_ids[self.cur] - self._n:
                    return self.cur
                if self.slot_ids[i] != slot:
                    self.calls[i] = self.bad[i] = self.slow[i] = 0
                    self.slot_ids[i] = slot
                    if (slot + 1) * self._width > self.end:
                        self.cur = i
                        self.end = (slot + 1) * self._width
        return i

    def totals(self, now: float) -> tuple[int, int, int]:
        """``(calls, bad, slow)`` summed over the slots inside the window ending at *now*."""
        slot = int(now / self._width)
        low = slot - self._n + 1
        calls = bad = slow = 0
        for i, held in enumerate(self.slot_ids):
            if low <= held <= slot:
                calls += self.calls[i]
                bad += self.bad[i]
                slow += self.slow[i]
        return calls, bad, slow

    def clear(self) -> None:
        """Forget every count."""
        with self._lock:
            self.end = float("-inf")
            for i in range(self._n):
                self.slot_ids[i] = _NEVER
                self.calls[i] = self.bad[i] = self.slow[i] = 0
