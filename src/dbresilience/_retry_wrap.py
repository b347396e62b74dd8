# WARNING: generated from _retry_wrap_async.py by tools/async_to_sync.py: DO NOT EDIT.
# Change the async source, then run `python tools/async_to_sync.py`.
"""How ``with_retry`` wraps a function: the success path builds nothing, retries run outside
any ``except`` block, one breaker outcome per call."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from dbresilience._acompat import sleep

if TYPE_CHECKING:
    from dbresilience._retry import RetryPolicy

__all__ = ["wrap"]

P = ParamSpec("P")
T = TypeVar("T")

_monotonic = time.monotonic


def wrap(policy: RetryPolicy, fn: Callable[P, T], name: str) -> Callable[P, T]:
    """*fn* retried under *policy* (its breaker and budget included); *name* for logs."""
    breaker = policy.breaker
    deposit = policy.budget.deposit_at if policy.budget is not None else None

    @functools.wraps(fn)
    def retrying(*args: P.args, **kwargs: P.kwargs) -> T:
        start = _monotonic()
        if deposit is not None:
            deposit(start)
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            failure = exc
        return _retry(policy, fn, name, args, kwargs, failure, start)

    if breaker is None:
        return retrying

    # The permit pattern is inlined here (not dbresilience._breaker.Permit): this is
    # with_retry's measured success path (make bench, overload table; a Permit object adds
    # about 0.45 µs per call), and the outcome must be recorded once per call, not per attempt.

    @functools.wraps(fn)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
        start = _monotonic()
        permit = breaker.acquire()  # CircuitOpen: fail fast, nothing deposited or retried
        if deposit is not None:
            deposit(start)
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            failure = exc
        except BaseException as exc:
            breaker.record(permit, exc, start)
            raise
        else:
            breaker.record(permit, None, start)
            return result
        try:
            result = _retry(policy, fn, name, args, kwargs, failure, start)
        except BaseException as exc:
            breaker.record(permit, exc, start)  # one outcome per call, not per attempt
            raise
        breaker.record(permit, None, start)
        return result

    return guarded


def _retry(
    policy: RetryPolicy,
    fn: Callable[..., T],
    name: str,
    args: Any,
    kwargs: Any,
    failure: Exception,
    start: float,
) -> T:
    # Retries run outside any except block so that no attempt's exception gets the previous
    # one as __context__: the caller sees the last failure exactly as it was raised.
    failed = 1
    while True:
        delay = policy.next_delay(name, failure, failed, start)
        if delay is None:
            raise failure
        if delay > 0:
            sleep(delay)
        failed += 1
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            failure = exc
