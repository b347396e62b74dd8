"""``with_retry``: retry what the classifier calls transient, within attempts and a deadline.

Why not tenacity's ``Retrying`` here: the success path must build nothing (tenacity allocates a
``RetryCallState`` and runs its strategy chain on every call: ~18 µs sync, ~36 µs async measured
here), and the stop rule needs the classification of each failure (``commit_unknown`` versus
``idempotent``), a deadline measured from the first call (tenacity's ``stop_before_delay`` counts
from when its own machinery starts, after the first failure) and the jitter computed before the
stop decision. That loop is twenty lines; the schedule lives in :mod:`dbresilience._backoff`.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import timedelta
from typing import ParamSpec, TypeVar, cast, overload

from dbresilience import _instrument
from dbresilience._backoff import Backoff
from dbresilience._breaker import CircuitBreaker
from dbresilience._budget import RetryBudget
from dbresilience._classify import Classification, classify
from dbresilience._events import CircuitState, RetryDetails, RetryHook, call_hooks, log_retry
from dbresilience._retry_wrap import wrap
from dbresilience._retry_wrap_async import wrap_async
from dbresilience._validate import (
    at_least,
    boolean,
    callable_or_none,
    instance_or_none,
    positive_int,
    seconds,
)
from dbresilience._validate import hooks as hooks_of

__all__ = ["RetryPolicy", "testing", "with_retry"]

P = ParamSpec("P")
T = TypeVar("T")

_monotonic = time.monotonic


@dataclass(frozen=True, slots=True)
class _TestMode:
    attempts: int | None


class _Default:
    """The type of :data:`DEFAULT`: "use the library's default" where ``None`` means "off"."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT = _Default()

_TEST_MODE: ContextVar[_TestMode | None] = ContextVar("dbresilience_test_mode", default=None)


@contextlib.contextmanager
def testing(*, attempts: int | None = None) -> Iterator[None]:  # noqa: PT028 - not a test
    """Test mode for the current context: retries do not sleep (and, with *attempts*, are capped).

    Scoped with a :class:`contextvars.ContextVar`, so it covers this thread or task and the tasks
    it starts, and nothing else: parallel tests do not see each other's switch. ::

        with dbr.testing():
            assert flaky_read() == 42     # retried at once, no backoff sleeps
    """
    if attempts is not None:
        positive_int("attempts", attempts)
    token = _TEST_MODE.set(_TestMode(attempts))
    try:
        yield
    finally:
        _TEST_MODE.reset(token)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """An immutable retry policy; calling it on a function returns the retrying function.

    Build one with :func:`with_retry` (which validates the arguments); share it freely across
    threads and tasks. ``budget`` and ``breaker`` are shared, thread-safe state objects.
    """

    attempts: int = 3
    backoff: Backoff = field(default_factory=Backoff)
    deadline: float | None = 10.0
    idempotent: bool = False
    retry_on: Callable[[BaseException], bool] | None = None
    on_retry: tuple[RetryHook, ...] = ()
    budget: RetryBudget | None = None
    breaker: CircuitBreaker | None = None

    def should_retry(
        self, exc: Exception, idempotent: bool | None = None
    ) -> tuple[bool, Classification]:
        """Whether *exc* is worth another attempt under this policy, and its classification.

        *idempotent* overrides the policy's flag for one call (a pool read is idempotent).
        """
        classification = classify(exc)
        if self.retry_on is not None:
            return bool(self.retry_on(exc)), classification
        if not classification.retryable:
            return False, classification
        safe = self.idempotent if idempotent is None else idempotent
        return (safe or not classification.commit_unknown), classification

    def next_delay(
        self,
        name: str,
        exc: Exception,
        failed: int,
        start: float,
        *,
        deadline: float | None = None,
        idempotent: bool | None = None,
    ) -> float | None:
        """The sleep before attempt ``failed + 1``, or ``None`` to give up and re-raise.

        *deadline* (an absolute monotonic time) and *idempotent* override the policy's own for
        one call; the pool uses them for its per-call ``timeout=`` and read/write distinction.
        """
        test_mode = _TEST_MODE.get()
        attempts = self.attempts
        if test_mode is not None and test_mode.attempts is not None:
            attempts = min(attempts, test_mode.attempts)
        if failed >= attempts:
            _given_up(name, exc, failed, start, "attempts")
            return None
        retry, classification = self.should_retry(exc, idempotent)
        if not retry:
            _given_up(name, exc, failed, start, "not_retryable", classification)
            return None
        delay = 0.0 if test_mode is not None else self.backoff.delay(failed)
        now = _monotonic()
        elapsed = now - start
        if deadline is None and self.deadline is not None:
            deadline = start + self.deadline
        if deadline is not None and now + delay >= deadline:
            # never start a sleep that would end past the deadline
            _given_up(name, exc, failed, start, "deadline", classification)
            return None
        if self.breaker is not None and self.breaker.state is not CircuitState.CLOSED:
            # the circuit opened meanwhile, or this call is a half-open probe
            _given_up(name, exc, failed, start, "breaker", classification)
            return None
        if self.budget is not None and not self.budget.try_withdraw():
            self.budget.exhausted(name, classification.code)
            _given_up(name, exc, failed, start, "budget", classification)
            return None
        details = RetryDetails(
            name=name,
            attempt=failed + 1,
            attempts=attempts,
            delay=delay,
            elapsed=elapsed,
            classification=classification,
            exception=exc,
        )
        log_retry(details)
        if self.on_retry:
            call_hooks(self.on_retry, details)
        if _instrument.hooks:
            _instrument.emit(
                _instrument.RetryScheduled(
                    name, failed + 1, attempts, delay, elapsed, classification.code
                )
            )
        return delay

    def __call__(self, fn: Callable[P, T], /) -> Callable[P, T]:
        """Wrap *fn* (sync or async, function or method) so that it retries under this policy."""
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(f"with_retry cannot retry a generator function: {fn!r}")
        name = getattr(fn, "__qualname__", None) or repr(fn)
        if inspect.iscoroutinefunction(fn):
            return cast(Callable[P, T], wrap_async(self, fn, name))
        return wrap(self, fn, name)


def _given_up(
    name: str,
    exc: Exception,
    failed: int,
    start: float,
    reason: str,
    classification: Classification | None = None,
) -> None:
    """Announce that *name* stops retrying (to the process-wide hooks, if any)."""
    if _instrument.hooks:
        code = (classification or classify(exc)).code
        _instrument.emit(_instrument.RetryGivenUp(name, failed, _monotonic() - start, code, reason))


@overload
def with_retry(fn: Callable[P, T], /) -> Callable[P, T]: ...


@overload
def with_retry(
    *,
    attempts: int = 3,
    base_delay: float | timedelta = 0.1,
    max_delay: float | timedelta = 2.0,
    deadline: float | timedelta | None = 10.0,
    idempotent: bool = False,
    retry_on: Callable[[BaseException], bool] | None = None,
    on_retry: RetryHook | Sequence[RetryHook] | None = None,
    budget: RetryBudget | _Default | None = DEFAULT,
    breaker: CircuitBreaker | None = None,
) -> RetryPolicy: ...


def with_retry(
    fn: Callable[P, T] | None = None,
    /,
    *,
    attempts: int = 3,
    base_delay: float | timedelta = 0.1,
    max_delay: float | timedelta = 2.0,
    deadline: float | timedelta | None = 10.0,
    idempotent: bool = False,
    retry_on: Callable[[BaseException], bool] | None = None,
    on_retry: RetryHook | Sequence[RetryHook] | None = None,
    budget: RetryBudget | _Default | None = DEFAULT,
    breaker: CircuitBreaker | None = None,
) -> Callable[P, T] | RetryPolicy:
    """Retry a sync or async function when :func:`classify` says its failure is transient.

    Use bare (``@with_retry``) or with arguments (``@with_retry(attempts=5)``). Retries only
    exceptions whose classification is ``retryable``; one with ``commit_unknown`` (the connection
    died mid-write) is re-run only when ``idempotent=True``. ``retry_on=predicate`` replaces the
    classifier. Never retries a ``BaseException`` that is not an ``Exception`` (cancellation).

    Waits full-jitter exponential backoff between attempts (``base_delay`` doubling up to
    ``max_delay``) and never starts a sleep that would end past ``deadline`` seconds after the
    first call started (``None``: attempts alone bound it). The deadline does not interrupt a
    running attempt: bound those with the pool's ``query_timeout``.

    When it gives up it re-raises the last exception, unchanged. Every retry logs one WARNING on
    the ``dbresilience`` logger and calls the ``on_retry`` hooks with a :class:`RetryDetails`.

    Overload protection sits outside the retries: ``budget`` (a :class:`RetryBudget`; by default
    one per policy, ``None`` to switch off) refuses retries past its share of calls, and
    ``breaker`` (a :class:`CircuitBreaker`) fails calls fast with :class:`CircuitOpen` while open,
    stops retrying once it opens, and records one outcome per call.

    Raises, at decoration time and naming the argument, ``ValueError`` for ``attempts < 1``,
    negative, NaN or infinite delays, ``max_delay < base_delay`` or ``deadline <= 0``, and
    ``TypeError`` for a wrong type (``attempts=2.5``, ``idempotent="yes"``, ``retry_on=3``).
    Durations past a year are capped to a year (:data:`dbresilience._validate.MAX_SECONDS`).
    """
    positive_int("attempts", attempts)
    base = seconds("base_delay", base_delay, allow_zero=True)
    cap = seconds("max_delay", max_delay, allow_zero=True)
    at_least("max_delay", cap, "base_delay", base)
    total = seconds("deadline", deadline, allow_none=True)
    boolean("idempotent", idempotent)
    callable_or_none("retry_on", retry_on)
    hooks: tuple[RetryHook, ...] = hooks_of("on_retry", on_retry)
    budget = (
        RetryBudget("with_retry")
        if isinstance(budget, _Default)
        else instance_or_none("budget", budget, RetryBudget)
    )
    instance_or_none("breaker", breaker, CircuitBreaker)
    policy = RetryPolicy(
        attempts=attempts,
        backoff=Backoff(base, cap),
        deadline=total,
        idempotent=idempotent,
        retry_on=retry_on,
        on_retry=hooks,
        budget=budget,
        breaker=breaker,
    )
    if fn is not None:
        return policy(fn)
    return policy


#: ``with_retry`` under the name of the TypeScript helper the seeds' services used
#: (``withRetry``), kept as an alias for teams moving from it; the package's own names are
#: snake_case.
withRetry = with_retry  # noqa: N816 - the alias the public API promises
