"""What the library tells the outside world: hook protocols and the frozen details they receive.

Hooks are installed per policy (``with_retry(on_retry=...)``), never process-wide, and cost
nothing on the success path: details objects are built only when something happened.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from dbresilience._classify import Classification

__all__ = ["RetryDetails", "RetryHook", "log_retry", "logger"]

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
    )


def call_hooks(hooks: Sequence[RetryHook], details: RetryDetails) -> None:
    """Run every hook; one that raises is logged and skipped."""
    for hook in hooks:
        try:
            hook(details)
        except Exception:
            logger.exception("retry hook %r failed", hook)
