"""classify() on untrusted input: huge and adversarial messages, odd exceptions, odd chains.

Messages come from servers, proxies and drivers; exceptions from any library. Whatever they
hold, ``classify`` answers quickly (bounded time, not proportional to the square of anything)
and never raises, ``KeyboardInterrupt`` from a ``__str__`` included.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dbresilience as dbr

# Generous: a call takes well under a millisecond; the quadratic patterns took seconds.
BOUND = 0.05
MIB = 1 << 20

# Pieces of the patterns classify looks for: repeated, they are what makes a regex backtrack.
FRAGMENTS = [
    'role "',
    '" does not',
    'database "',
    " does not exist",
    "connection to server ",
    "connection to server at ",
    " lost",
    "the database system is ",
    "canceling statement due to ",
    "SSL ",
    "password authentication",
    "server closed the connection",
    "query_wait_timeout",
    '"',
    " ",
    "\n",
    "\x00",
    "\udcff",
    "é",
    "x",
]


class WithSqlstate(Exception):
    """A driver error carrying a SQLSTATE (08P01 makes classify read PgBouncer's text)."""

    def __init__(self, message: object, sqlstate: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def best_time(fn: Callable[[], object], runs: int = 3) -> float:
    """The fastest of *runs* calls: what the call costs, without the neighbours' noise."""
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def classified_in_time(exc: BaseException) -> dbr.Classification:
    """classify(exc), asserting it answered within BOUND."""
    result: list[dbr.Classification] = []
    elapsed = best_time(lambda: result.append(dbr.classify(exc)))
    assert elapsed < BOUND, f"classify took {elapsed * 1000:.0f} ms"
    assert isinstance(result[0], dbr.Classification)
    return result[0]


# --- adversarial messages --------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        'role "' * 51_200,  # 300 KiB: role ".*" does not exist
        'database "' * 30_720,
        "connection to server " * 14_630,  # connection to server .* lost
        "connection to server at " * 12_800 + "lo",
        ('role "x' + " " * 1000) * 300,
    ],
    ids=["role", "database", "connection-to-server", "connection-to-server-at", "sparse"],
)
def test_300_kib_adversarial_message_is_classified_quickly(message: str) -> None:
    """A 300 KiB message built from a pattern's own fragments takes milliseconds, not seconds."""
    assert len(message) >= 300_000
    for exc in (psycopg.OperationalError(message), RuntimeError(message)):
        classified_in_time(exc)


def test_text_near_the_start_of_a_huge_message_still_decides() -> None:
    """The evidence libpq gives comes first; what follows a megabyte of junk changes nothing."""
    junk = "x" * MIB
    c = classified_in_time(psycopg.OperationalError("connection refused\n" + junk))
    assert c.kind is dbr.ErrorKind.UNREACHABLE
    c = classified_in_time(psycopg.OperationalError('role "' + junk + '" does not exist'))
    assert c.kind is dbr.ErrorKind.UNKNOWN


def _messages() -> st.SearchStrategy[str | bytes]:
    piece = st.sampled_from(FRAGMENTS) | st.text(max_size=12)
    unit = st.lists(piece, min_size=1, max_size=6).map("".join).filter(bool)

    def repeat(pair: tuple[str, int]) -> str:
        text, times = pair
        return text * max(1, min(times, MIB // len(text)))

    times = st.integers(1, 64) | st.integers(1, MIB) | st.just(MIB)
    repeated = st.tuples(unit, times).map(repeat)
    binary = st.tuples(st.binary(min_size=1, max_size=64), st.integers(1, 1 << 14)).map(
        lambda pair: pair[0] * pair[1]  # str() of bytes is their repr: up to 4 MiB of text
    )
    return repeated | binary | st.text(max_size=200)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    message=_messages(),
    make=st.sampled_from(
        [
            psycopg.OperationalError,
            RuntimeError,
            lambda m: WithSqlstate(m, "08P01"),
            lambda m: WithSqlstate(m, "XX000"),
        ]
    ),
)
def test_classify_time_is_bounded_for_any_message(
    message: str | bytes, make: Callable[[object], BaseException]
) -> None:
    """Any message up to a MiB, text or bytes, adversarial or not: classified within BOUND."""
    c = classified_in_time(make(message))
    assert c.code


# --- odd exceptions --------------------------------------------------------------------------


def _raising(what: BaseException) -> Callable[..., object]:
    def raise_it(*_: object) -> object:
        raise what

    return raise_it


ODD_RAISES = [
    KeyboardInterrupt(),
    SystemExit(3),
    GeneratorExit(),
    RecursionError(),
    MemoryError(),
    RuntimeError("no text"),
]


@pytest.mark.parametrize("raised", ODD_RAISES, ids=lambda e: type(e).__name__)
def test_str_that_raises_anything_is_still_classified(raised: BaseException) -> None:
    """An exception whose __str__ raises (KeyboardInterrupt included) is classified, not raised."""
    odd = type("OddStr", (Exception,), {"__str__": _raising(raised)})
    c = classified_in_time(odd("x"))
    assert c.kind is dbr.ErrorKind.UNKNOWN
    lost = WithSqlstate("terminating connection", "57P01")
    outer = odd("y")
    outer.__context__ = lost
    assert classified_in_time(outer).commit_unknown  # the rest of the chain still counts


@pytest.mark.parametrize("raised", ODD_RAISES, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("attribute", ["orig", "sqlstate", "pgcode", "_dbr_classification"])
def test_attribute_that_raises_anything_is_still_classified(
    raised: BaseException, attribute: str
) -> None:
    """A property (``.orig``, ``.sqlstate`` …) that raises, even SystemExit, does not escape."""
    odd = type("OddAttr", (Exception,), {attribute: property(_raising(raised))})
    c = classified_in_time(odd("server closed the connection unexpectedly"))
    assert c.kind is dbr.ErrorKind.CONNECTION_LOST


@pytest.mark.parametrize("raised", ODD_RAISES, ids=lambda e: type(e).__name__)
def test_getattr_that_raises_anything_is_still_classified(raised: BaseException) -> None:
    """An exception whose every unknown attribute raises (a proxy object) is classified."""
    odd = type("Proxy", (Exception,), {"__getattr__": _raising(raised)})
    assert classified_in_time(odd("connection refused")).kind is dbr.ErrorKind.UNREACHABLE


def test_str_returning_garbage_is_still_classified() -> None:
    """A __str__ returning a non-str (str() raises TypeError) or a huge string is survived."""
    not_str = type("NotStr", (Exception,), {"__str__": lambda self: 42})
    assert classified_in_time(not_str()).kind is dbr.ErrorKind.UNKNOWN
    huge = type("Huge", (Exception,), {"__str__": lambda self: "connection refused " * 60_000})
    assert classified_in_time(huge()).kind is dbr.ErrorKind.UNREACHABLE


def test_odd_module_names_are_still_classified() -> None:
    """A class whose __module__ is not a str (set by some code generators) does not break it."""
    odd = type("NoModule", (Exception,), {"__module__": None})
    assert classified_in_time(odd("connection refused")).kind is dbr.ErrorKind.UNREACHABLE


@pytest.mark.parametrize("link", ["__cause__", "__context__"])
def test_cycles_are_walked_once(link: str) -> None:
    """A chain that loops back on itself (through cause or context) is walked once."""
    a, b, c = RuntimeError("a"), RuntimeError("b"), WithSqlstate("deadlock detected", "40P01")
    setattr(a, link, b)
    setattr(b, link, c)
    setattr(c, link, a)
    assert classified_in_time(a).code == "P2034"
    selfish = RuntimeError("me")
    selfish.__context__ = selfish
    assert classified_in_time(selfish).code == "DBR9000"


def test_orig_cycle_is_walked_once() -> None:
    """SQLAlchemy-style ``.orig`` pointing back up the chain is walked once."""
    top = RuntimeError("wrapper")
    inner = WithSqlstate("x", "23505")
    top.orig = inner  # type: ignore[attr-defined]
    inner.orig = top  # type: ignore[attr-defined]
    assert classified_in_time(top).code == "P2002"


@pytest.mark.parametrize("link", ["__cause__", "__context__", "orig"])
def test_a_chain_of_ten_thousand_links_is_bounded(link: str) -> None:
    """10,000 chained exceptions: classify looks at a bounded head of the chain, quickly."""
    top: BaseException = WithSqlstate("the bottom", "57P01")
    for n in range(10_000):
        outer = RuntimeError(f"link {n}")
        setattr(outer, link, top)
        top = outer
    c = classified_in_time(top)
    assert c.kind is dbr.ErrorKind.UNKNOWN  # the bottom is past the walk's bound


def test_a_chain_with_exponentially_many_paths_is_bounded() -> None:
    """Two links per level, each wrapping both of the level below: each is looked at once."""
    level: list[BaseException] = [WithSqlstate("x", "40001"), RuntimeError("y")]
    for n in range(64):
        a, b = RuntimeError(f"a{n}"), RuntimeError(f"b{n}")
        a.__cause__, a.__context__ = level
        b.__cause__, b.__context__ = level
        level = [a, b]
    assert classified_in_time(level[0]).kind is dbr.ErrorKind.UNKNOWN
