"""tenacity strategies that decide like :func:`dbresilience.with_retry`.

For code already written with tenacity (``pip install 'dbresilience[tenacity]'``)::

    import tenacity
    from dbresilience import tenacity as dbr_tenacity

    @tenacity.retry(
        retry=dbr_tenacity.retry_if_safe_to_retry,     # a write that is not idempotent
        wait=dbr_tenacity.wait_retry_after(tenacity.wait_exponential_jitter(0.05, 2.0)),
        stop=tenacity.stop_after_attempt(5) | tenacity.stop_after_delay(10),
        reraise=True,
    )
    def deduct(user_id: str) -> None: ...

- :data:`retry_if_transient`: retry when :func:`dbresilience.classify` calls the failure
  ``retryable`` (a refused or lost connection, a pool timeout, a deadlock, a serialization
  failure, a Redis outage …); never for a unique violation, bad SQL, a wrong password, an open
  circuit or a cancelled task. For idempotent work (reads, upserts, keyed writes): it retries a
  commit-unknown failure too, like ``with_retry(idempotent=True)``.
- :data:`retry_if_safe_to_retry`: the same, except a failure whose write may have been applied
  (``commit_unknown``: the connection died during the statement or the COMMIT) is not re-run,
  like ``with_retry()``.
- :class:`wait_retry_after`: wait what ``with_retry`` would: for a failure it retries (a
  deadlock, a serialization failure, an unreachable server …) the backoff (*fallback*, by
  default ``with_retry``'s own: full jitter from 0.1 s doubling up to 2 s); for one it does
  not but your strategy does (an open circuit) the classification's ``retry_after`` (the
  circuit's time until its next probe), or *fallback*'s wait when that is longer; at most
  *max* seconds.

tenacity runs these strategies on every call that fails; ``with_retry`` stays the cheaper
choice for new code (it builds nothing on the success path). Combine them with tenacity's own
(``retry_if_transient | tenacity.retry_if_exception_type(MyError)``).
"""

from __future__ import annotations

from dbresilience._backoff import Backoff
from dbresilience._classify import Classification, classify
from dbresilience._errors import bounded_wait, require

require("tenacity", extra="tenacity", what="dbresilience.tenacity")

from tenacity import RetryCallState
from tenacity.retry import retry_base
from tenacity.wait import wait_base

from dbresilience._validate import seconds

__all__ = [
    "retry_if_classified",
    "retry_if_safe_to_retry",
    "retry_if_transient",
    "wait_retry_after",
]


def _classification(retry_state: RetryCallState) -> Classification | None:
    """The classification of the attempt's failure, or ``None`` when it returned."""
    outcome = retry_state.outcome
    if outcome is None or not outcome.failed:
        return None
    exc = outcome.exception()
    return None if exc is None else classify(exc)


class retry_if_classified(retry_base):  # noqa: N801 - tenacity's naming, for its users
    """Retry a failure that :func:`dbresilience.classify` calls ``retryable``; with
    ``idempotent=False`` not one whose write may have been applied (``commit_unknown``)."""

    def __init__(self, *, idempotent: bool) -> None:
        self.idempotent = bool(idempotent)

    def __call__(self, retry_state: RetryCallState) -> bool:
        """Whether tenacity should make another attempt."""
        c = _classification(retry_state)
        if c is None or not c.retryable:
            return False
        return self.idempotent or not c.commit_unknown

    def __repr__(self) -> str:
        return f"retry_if_classified(idempotent={self.idempotent})"


#: Retry what :func:`dbresilience.classify` calls retryable, commit-unknown failures included
#: (idempotent work).
retry_if_transient = retry_if_classified(idempotent=True)
#: Retry what :func:`dbresilience.classify` calls retryable, except a write that may have been
#: applied (``commit_unknown``): what ``with_retry()`` does by default.
retry_if_safe_to_retry = retry_if_classified(idempotent=False)


class wait_retry_after(wait_base):  # noqa: N801 - tenacity's naming, for its users
    """Wait what :func:`dbresilience.with_retry` would wait, never more than *max* seconds.

    A failure :func:`dbresilience.classify` calls ``retryable`` (what ``with_retry`` retries:
    a deadlock, a serialization failure, a lost connection …) waits the backoff: *fallback*'s
    wait, or without one ``with_retry``'s default (full jitter, ``uniform(0, min(2, 0.1 *
    2 ** (n - 1)))`` before retry *n*). Its ``retry_after`` is the hint for an HTTP client
    (``Retry-After``), not for a retry inside the call: ``with_retry`` does not wait it either.

    A failure ``with_retry`` does not retry but your strategy does (an open circuit, a query
    timeout) waits its ``Classification.retry_after`` (the circuit's time to its next probe),
    or *fallback*'s wait when that is longer. A result that tenacity retries waits
    *fallback*'s time (0 without one). A fallback's negative wait is 0 and its NaN 1 s, so
    the sleep always gets a number in ``[0, max]``. ``TypeError``/``ValueError`` for a bad
    *fallback* or *max*.
    """

    _BACKOFF = Backoff(0.1, 2.0)  # with_retry's defaults: base_delay=0.1, max_delay=2.0

    def __init__(self, fallback: wait_base | None = None, *, max: float = 60.0) -> None:
        if fallback is not None and not callable(fallback):
            raise TypeError(f"fallback must be a tenacity wait, got {type(fallback).__name__}")
        self.fallback = fallback
        self.max = seconds("max", max)

    def __call__(self, retry_state: RetryCallState) -> float:
        """Seconds to sleep before the next attempt."""
        c = _classification(retry_state)
        if self.fallback is not None:
            # bounded like a retry-after: a fallback's NaN or negative wait would make
            # time.sleep raise (NaN counts as no answer: 1 s), infinity waits max
            wait = bounded_wait(self.fallback(retry_state))
        elif c is not None and c.retryable:
            wait = self._BACKOFF.delay(max(1, retry_state.attempt_number))
        else:
            wait = 0.0
        if c is not None and not c.retryable and c.retry_after is not None:
            wait = max(wait, bounded_wait(c.retry_after))
        return min(wait, self.max)

    def __repr__(self) -> str:
        return f"wait_retry_after({self.fallback!r}, max={self.max:g})"
