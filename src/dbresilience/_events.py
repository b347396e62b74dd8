"""What the library tells the outside world: hook protocols and the frozen details they receive.

Hooks are installed per policy (``with_retry(on_retry=...)``), never process-wide, and cost
nothing on the success path: details objects are built only when something happened.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from dbresilience._classify import Classification

__all__ = [
    "BreakerHook",
    "BudgetExhausted",
    "BudgetHook",
    "CircuitState",
    "CircuitStateChange",
    "RetryDetails",
    "RetryHook",
    "log_retry",
    "logger",
]

D = TypeVar("D")

logger = logging.getLogger("dbresilience")
# A library logs, the application decides where it goes: without this, Python's last-resort
# handler would print every retry line to stderr of applications that never asked for it.
logger.addHandler(logging.NullHandler())


@dataclass(frozen=True, slots=True)
class RetryDetails:
    """One retry about to happen (or one given up on), as passed to a :class:`RetryHook`.

    ``attempt`` is the number of the attempt about to start (2 for the first retry) out of
    ``attempts``; ``delay`` the seconds it will sleep first; ``elapsed`` the seconds since the
    first attempt started. ``name`` is the qualified name of the retried callable.
    ``exception`` is the failure that caused the retry.
    """

    name: str
    attempt: int
    attempts: int
    delay: float
    elapsed: float
    classification: Classification
    exception: BaseException


class RetryHook(Protocol):
    """Called once before every retry sleep with a :class:`RetryDetails`.

    A hook that raises is logged and ignored: instrumentation never changes the outcome.
    """

    def __call__(self, details: RetryDetails, /) -> None: ...


def log_retry(details: RetryDetails) -> None:
    """The default hook: one WARNING line, e.g. ``retrying load_user after P1001 (attempt 2/3)
    in 0.18 s``. It names the code, never the exception text, which may hold a host name."""
    logger.warning(
        "retrying %s after %s (attempt %d/%d) in %.2f s",
        details.name,
        details.classification.code,
        details.attempt,
        details.attempts,
        details.delay,
        extra={
            "code": details.classification.code,
            "attempt": details.attempt,
            "elapsed": details.elapsed,
        },
    )


class CircuitState(enum.Enum):
    """Where a circuit breaker is: letting calls through, failing them fast, or probing."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class CircuitStateChange:
    """A circuit breaker moved from ``old`` to ``new``, as passed to a :class:`BreakerHook`.

    ``calls`` and ``failures`` are the counts in the window that decided (for an opening);
    ``open_for`` the seconds it stays open before probing (0 unless ``new`` is OPEN);
    ``reason`` a short text such as ``"12 of 20 calls failed"`` or ``"3 probes succeeded"``.
    """

    breaker: str
    old: CircuitState
    new: CircuitState
    calls: int
    failures: int
    open_for: float
    reason: str


class BreakerHook(Protocol):
    """Called with a :class:`CircuitStateChange` on every transition of a breaker."""

    def __call__(self, change: CircuitStateChange, /) -> None: ...


@dataclass(frozen=True, slots=True)
class BudgetExhausted:
    """A retry that did not happen because the retry budget was spent.

    ``budget`` is the budget's name, ``retried`` the callable that wanted to retry, ``code`` the
    classification code of its failure, ``calls`` and ``retries`` the counts in the window.
    """

    budget: str
    retried: str
    code: str
    calls: int
    retries: int


class BudgetHook(Protocol):
    """Called with a :class:`BudgetExhausted` each time a retry is refused by the budget."""

    def __call__(self, details: BudgetExhausted, /) -> None: ...


def call_hooks(hooks: Sequence[Callable[[D], Any]], details: D) -> None:
    """Run every hook; one that raises is logged and skipped."""
    for hook in hooks:
        try:
            hook(details)
        except Exception:
            logger.exception("retry hook %r failed", hook)
