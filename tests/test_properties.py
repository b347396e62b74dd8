"""Hypothesis properties of the pure parts: classification, backoff and deadlines."""

from __future__ import annotations

import random
import string

import psycopg
from hypothesis import given, settings
from hypothesis import strategies as st

import dbresilience as dbr
from dbresilience._classify import _SPECS

SQLSTATE_CHARS = string.digits + string.ascii_uppercase
sqlstates = st.text(alphabet=SQLSTATE_CHARS, min_size=5, max_size=5)


class WithSqlstate(Exception):
    """An exception from some driver that carries a SQLSTATE attribute."""

    def __init__(self, message: str, sqlstate: object) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class BrokenStr(Exception):
    """An exception whose __str__ raises."""

    def __str__(self) -> str:
        raise RuntimeError("no text for you")


def _exceptions() -> st.SearchStrategy[BaseException]:
    messages = st.text(max_size=200) | st.sampled_from(
        [
            "connection refused",
            "server closed the connection unexpectedly",
            "timeout expired",
            'database "x" does not exist',
            "SSL SYSCALL error: EOF detected",
            "query_wait_timeout",
        ]
    )
    leaf = st.one_of(
        st.builds(
            WithSqlstate, messages, st.one_of(sqlstates, st.none(), st.integers(), st.text())
        ),
        st.builds(psycopg.OperationalError, messages),
        st.builds(ValueError, messages),
        st.builds(TimeoutError, messages),
        st.builds(OSError, messages),
        st.just(BrokenStr()),
        st.just(KeyboardInterrupt()),
    )

    def chain(children: st.SearchStrategy[BaseException]) -> st.SearchStrategy[BaseException]:
        def link(pair: tuple[BaseException, BaseException]) -> BaseException:
            outer, inner = pair
            outer.__cause__ = inner
            return outer

        return st.tuples(leaf, children).map(link)

    return st.recursive(leaf, chain, max_leaves=5)


@given(_exceptions())
def test_classify_never_raises_and_is_consistent(exc: BaseException) -> None:
    """Whatever the exception, SQLSTATE or message, classify answers with a coherent result."""
    c = dbr.classify(exc)
    spec = _SPECS[c.kind]
    assert (c.code, c.retryable, c.http_status) == (spec.code, spec.retryable, spec.http_status)
    if not isinstance(exc, Exception):
        assert not c.retryable
    if c.retryable:
        assert c.http_status == 503
        assert c.retry_after is not None


def test_classify_survives_cycles() -> None:
    """An exception chain that loops back on itself is walked once."""
    a, b = ValueError("a"), ValueError("b")
    a.__context__, b.__context__ = b, a
    assert dbr.classify(a).code == "DBR9000"


@given(sqlstates)
def test_every_sqlstate_has_a_classification(sqlstate: str) -> None:
    """Any five-character SQLSTATE maps to some kind; only known transient ones are retryable."""
    c = dbr.classify(WithSqlstate("x", sqlstate))
    assert c.sqlstate == sqlstate
    if c.retryable:
        assert sqlstate[:2] in {"08", "40", "53", "55", "57", "25"}


@given(
    base=st.floats(0, 10, allow_nan=False),
    extra=st.floats(0, 100, allow_nan=False),
    retry=st.integers(1, 10_000),
    seed=st.integers(),
)
def test_backoff_delay_within_bounds(base: float, extra: float, retry: int, seed: int) -> None:
    """Every delay lies in [0, min(max_delay, base * 2**(n-1))]; caps never shrink."""
    backoff = dbr.Backoff(base, base + extra)
    rng = random.Random(seed)
    delay = backoff.delay(retry, rng)
    assert 0 <= delay <= backoff.cap(retry) <= backoff.max_delay
    if retry > 1:
        assert backoff.cap(retry - 1) <= backoff.cap(retry)


@settings(max_examples=200)
@given(
    attempts=st.integers(1, 50),
    base=st.floats(0, 1, allow_nan=False),
    extra=st.floats(0, 5, allow_nan=False),
    deadline=st.floats(0.001, 10, allow_nan=False),
    seed=st.integers(),
)
def test_schedule_never_sleeps_past_the_deadline(
    attempts: int, base: float, extra: float, deadline: float, seed: int
) -> None:
    """Simulated on a virtual clock: no sleep the policy starts ends past the deadline."""
    import dbresilience._retry as retry_module

    clock = [0.0]
    policy = dbr.with_retry(
        attempts=attempts, base_delay=base, max_delay=base + extra, deadline=deadline
    )
    original = retry_module._monotonic
    random.seed(seed)
    retry_module._monotonic = lambda: clock[0]
    try:
        failed = 1
        while True:
            delay = policy.next_delay("f", ConnectionRefusedError(), failed, 0.0)
            if delay is None:
                break
            assert 0 <= delay <= policy.backoff.cap(failed)
            clock[0] += delay
            assert clock[0] < deadline
            failed += 1
        assert failed <= attempts
    finally:
        retry_module._monotonic = original


@given(budget=st.floats(0.001, 1e6, allow_nan=False), spent=st.floats(0, 2e6, allow_nan=False))
def test_deadline_arithmetic(budget: float, spent: float) -> None:
    """remaining() is budget minus time spent, never negative; allows() agrees with it."""
    now = [100.0]
    deadline = dbr.Deadline(budget, clock=lambda: now[0])
    now[0] += spent
    assert deadline.remaining() == max(0.0, (100.0 + budget) - now[0])
    assert deadline.expired() == (now[0] >= 100.0 + budget)
    assert deadline.allows(0.0) == (not deadline.expired())


@settings(max_examples=500)
@given(
    st.lists(
        st.sampled_from(["%", "%%", "%s", "%b", "%t", "%(a)s", "%(bb)t", "%(", ")", "x", " ", "\n"])
        | st.text(alphabet="%()sbtax \n", max_size=3),
        max_size=12,
    ).map("".join)
)
def test_the_queue_reads_placeholders_as_psycopg_does(statement: str) -> None:
    """The write queue's reading of a statement's placeholders (what submit checks params
    against) agrees with psycopg's own parser (its private _split_query, the oracle): the same
    style, count and names wherever psycopg accepts the statement, and "" (refused at submit)
    exactly where psycopg refuses it."""
    from psycopg._queries import _split_query

    from dbresilience._queue_base import placeholders

    style, count, names = placeholders(statement)
    try:
        parts = _split_query(statement.encode())
    except psycopg.ProgrammingError:
        assert style == ""
        return
    assert style != ""  # submit refuses only what psycopg refuses
    items = [part.item for part in parts[:-1]]
    if any(isinstance(item, str) for item in items):
        assert (style, count, names) == ("named", len(items), frozenset(items))
    else:
        assert (style, count) == ("positional", len(items))
