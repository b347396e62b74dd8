"""Argument validation: one module, one set of rules, every public constructor held to them.

Wrong type: TypeError; out of range: ValueError; always naming the argument; secrets never
shown; durations past a year capped (never an OverflowError later in a thread).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import dbresilience as dbr
from dbresilience import _validate as v
from dbresilience._validate import MAX_SECONDS

SECRET_PARTS = ("dsn", "conninfo", "url", "password", "passwd", "secret", "token", "signing_key")
names = st.from_regex(r"[a-z][a-z0-9_]{0,24}", fullmatch=True).filter(
    lambda n: not any(part in n for part in SECRET_PARTS)
)

# --- the validators -------------------------------------------------------------------------

not_numbers = st.one_of(
    st.booleans(),
    st.none(),
    st.text(max_size=5),
    st.binary(max_size=5),
    st.lists(st.integers(), max_size=2),
    st.complex_numbers(allow_nan=False),
)
not_ints = st.one_of(not_numbers, st.floats(allow_nan=False), st.timedeltas())
not_strs = st.one_of(
    st.booleans(), st.none(), st.integers(), st.floats(allow_nan=False), st.binary(max_size=5)
)
not_durations = st.one_of(
    st.booleans(), st.text(max_size=5), st.binary(max_size=5), st.lists(st.integers(), max_size=2)
)
non_finite = st.sampled_from([math.nan, math.inf, -math.inf])


@dataclass(frozen=True)
class Case:
    """One validator with settings, what it must reject as a type, and as a value."""

    label: str
    check: Callable[[str, Any], Any]
    wrong_type: st.SearchStrategy[Any]
    out_of_range: st.SearchStrategy[Any] | None
    accepted: st.SearchStrategy[Any]

    def __repr__(self) -> str:
        return self.label


CASES = [
    Case(
        "positive_int",
        v.positive_int,
        not_ints,
        st.integers(max_value=0),
        st.integers(min_value=1),
    ),
    Case(
        "positive_int(minimum=3, maximum=9)",
        lambda n, x: v.positive_int(n, x, minimum=3, maximum=9),
        not_ints,
        st.integers(max_value=2) | st.integers(min_value=10),
        st.integers(3, 9),
    ),
    Case(
        "non_negative_int",
        v.non_negative_int,
        not_ints,
        st.integers(max_value=-1),
        st.integers(min_value=0),
    ),
    Case(
        "number",
        v.number,
        not_numbers | st.timedeltas(),
        st.floats(max_value=-1e-9) | st.integers(max_value=-1) | non_finite,
        st.floats(min_value=0, allow_infinity=False) | st.integers(0, 10**300),
    ),
    Case(
        "fraction(low_open)",
        lambda n, x: v.fraction(n, x, low_open=True),
        not_numbers | st.timedeltas(),
        st.floats(max_value=0) | st.floats(min_value=1.0000001) | non_finite,
        st.floats(min_value=1e-9, max_value=1),
    ),
    Case(
        "seconds",
        v.seconds,
        not_durations | st.none(),
        st.floats(max_value=0) | st.integers(max_value=0) | non_finite,
        st.floats(min_value=1e-9, allow_infinity=False) | st.integers(min_value=1),
    ),
    Case(
        "seconds(allow_zero, allow_none)",
        lambda n, x: v.seconds(n, x, allow_zero=True, allow_none=True),
        not_durations,
        st.floats(max_value=-1e-9) | st.timedeltas(max_value=timedelta(microseconds=-1)),
        st.none() | st.floats(min_value=0, allow_infinity=False) | st.timedeltas(timedelta(0)),
    ),
    Case(
        "seconds(minimum=1, maximum=60)",
        lambda n, x: v.seconds(n, x, minimum=1.0, maximum=60.0),
        not_durations | st.none(),
        st.floats(max_value=0.999) | st.floats(min_value=60.001) | non_finite,
        st.floats(1, 60) | st.timedeltas(timedelta(seconds=1), timedelta(seconds=60)),
    ),
    Case(
        "one_of",
        lambda n, x: v.one_of(n, x, ("block", "raise")),
        not_strs,
        st.text().filter(lambda s: s not in ("block", "raise")),
        st.sampled_from(["block", "raise"]),
    ),
    Case("non_empty_str", v.non_empty_str, not_strs, st.just(""), st.text(min_size=1)),
    Case("str_or_none", v.str_or_none, not_strs.filter(lambda x: x is not None), None, st.text()),
    Case(
        "boolean",
        v.boolean,
        not_strs.filter(lambda x: not isinstance(x, bool)),
        None,
        st.booleans(),
    ),
    Case(
        "bytes_or_none(min_length=16)",
        lambda n, x: v.bytes_or_none(n, x, min_length=16),
        st.text() | st.integers() | st.lists(st.integers(0, 255)),
        st.binary(max_size=15),
        st.none() | st.binary(min_size=16),
    ),
    Case(
        "callable_or_none",
        v.callable_or_none,
        not_strs.filter(lambda x: x is not None),
        None,
        st.none() | st.just(print),
    ),
    Case(
        "strings",
        v.strings,
        st.text() | st.integers() | st.lists(st.integers(), min_size=1),
        None,
        st.lists(st.text()),
    ),
    Case(
        "instance_or_none(RetryBudget)",
        lambda n, x: v.instance_or_none(n, x, dbr.RetryBudget),
        not_strs.filter(lambda x: x is not None),
        None,
        st.none() | st.builds(dbr.RetryBudget),
    ),
]


@given(case=st.sampled_from(CASES), name=names, data=st.data())
def test_wrong_types_are_type_errors_naming_the_argument(
    case: Case, name: str, data: st.DataObject
) -> None:
    """Every validator raises TypeError for a wrong type, the message starting with the name."""
    value = data.draw(case.wrong_type, label="value")
    with pytest.raises(TypeError, match=rf"^{name} must be "):
        case.check(name, value)


@given(
    case=st.sampled_from([c for c in CASES if c.out_of_range is not None]),
    name=names,
    data=st.data(),
)
def test_values_out_of_range_are_value_errors_naming_the_argument(
    case: Case, name: str, data: st.DataObject
) -> None:
    """Every validator raises ValueError for a value of the right type out of range, naming it."""
    assert case.out_of_range is not None
    value = data.draw(case.out_of_range, label="value")
    with pytest.raises(ValueError, match=rf"^{name} must be "):
        case.check(name, value)


@given(case=st.sampled_from(CASES), name=names, data=st.data())
def test_valid_values_are_accepted(case: Case, name: str, data: st.DataObject) -> None:
    """What a validator's rules allow, it returns without raising."""
    case.check(name, data.draw(case.accepted, label="value"))


@given(
    name=st.sampled_from(["dsn", "conninfo", "redis_url", "password", "signing_key", "api_token"]),
    secret=st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=12, max_size=20),
)
def test_secret_arguments_never_show_their_value(name: str, secret: str) -> None:
    """A value of an argument named like a secret is never in the message, only its type."""
    for check, value in (
        (v.seconds, f"postgresql://u:{secret}@h/db"),
        (v.positive_int, secret),
        (v.non_empty_str, secret.encode()),
        (v.bytes_or_none, secret),
        (lambda n, x: v.one_of(n, x, ("a", "b")), secret),
    ):
        with pytest.raises((TypeError, ValueError)) as info:
            check(name, value)
        assert secret not in str(info.value)
        assert name in str(info.value)


@given(
    value=st.floats(min_value=MAX_SECONDS, allow_infinity=False)
    | st.integers(min_value=int(MAX_SECONDS), max_value=10**400)
    | st.timedeltas(min_value=timedelta(seconds=MAX_SECONDS))
)
def test_huge_durations_are_capped_to_what_threads_accept(value: float | timedelta) -> None:
    """timedelta.max, 1e10 or 10**400 seconds come back as MAX_SECONDS: finite, a lock takes it."""
    capped = v.seconds("timeout", value)
    assert capped == MAX_SECONDS
    assert math.isfinite(capped)
    assert capped <= threading.TIMEOUT_MAX
    lock = threading.Lock()
    assert lock.acquire(timeout=capped)  # an OverflowError here is what the cap prevents
    lock.release()


@given(value=st.floats(min_value=1e-9, max_value=MAX_SECONDS) | st.integers(1, int(MAX_SECONDS)))
def test_durations_below_the_cap_are_kept_exactly(value: float) -> None:
    """Below the cap a duration comes back unchanged, as a float."""
    result = v.seconds("timeout", value)
    assert type(result) is float
    assert result == float(value)


def test_the_cap_is_one_year_or_timeout_max() -> None:
    """MAX_SECONDS is a year, or threading.TIMEOUT_MAX where that is smaller."""
    assert min(365 * 24 * 3600.0, threading.TIMEOUT_MAX) == MAX_SECONDS
    assert v.seconds("t", timedelta.max) == MAX_SECONDS
    assert v.seconds("t", 1e10) == MAX_SECONDS
    assert v.seconds("t", timedelta(milliseconds=250)) == 0.25


def test_messages_show_the_bad_value() -> None:
    """The message says what was wanted and what was given."""
    with pytest.raises(ValueError, match=r"^batch_size must be an int >= 1, got 0$"):
        v.positive_int("batch_size", 0)
    with pytest.raises(TypeError, match=r"^max_size must be an int >= 1, got True \(bool\)$"):
        v.positive_int("max_size", True)
    with pytest.raises(ValueError, match=r"^ttl must be between 1 and 60 seconds, got 0\.5$"):
        v.seconds("ttl", 0.5, minimum=1.0, maximum=60.0)
    with pytest.raises(ValueError, match=r"^failure_rate must be a number in \(0, 1\], got 1\.5$"):
        v.fraction("failure_rate", 1.5, low_open=True)


# --- every public constructor -----------------------------------------------------------------

INT_WRONG: tuple[Any, ...] = ("3", 2.5, True, None)
DURATION_WRONG: tuple[Any, ...] = ("5", True, [1])
NUMBER_WRONG: tuple[Any, ...] = ("0.5", True, None, timedelta(seconds=1))
DURATION_BAD: tuple[Any, ...] = (-1, -0.001, math.nan, math.inf, timedelta(seconds=-1))
POSITIVE_DURATION_BAD = (*DURATION_BAD, 0, timedelta(0))


def _pool(**kwargs: Any) -> Any:
    return dbr.Pool("host=127.0.0.1 port=1", **kwargs)


def _async_pool(**kwargs: Any) -> Any:
    return dbr.AsyncPool("host=127.0.0.1 port=1", **kwargs)


def _queue(**kwargs: Any) -> Any:
    return dbr.WriteQueue(_pool(min_size=0), **kwargs)


def _async_queue(**kwargs: Any) -> Any:
    return dbr.AsyncWriteQueue(_async_pool(min_size=0), **kwargs)


def _cache(**kwargs: Any) -> Any:
    return dbr.CredentialCache("redis://127.0.0.1:1/0", **kwargs)


def _async_cache(**kwargs: Any) -> Any:
    return dbr.AsyncCredentialCache("redis://127.0.0.1:1/0", **kwargs)


def _shared(**kwargs: Any) -> Any:
    return dbr.RedisBreakerState("redis://127.0.0.1:1/0", **kwargs)


def _async_shared(**kwargs: Any) -> Any:
    return dbr.AsyncRedisBreakerState("redis://127.0.0.1:1/0", **kwargs)


def _testing(**kwargs: Any) -> None:
    with dbr.testing(**kwargs):
        pass


def _engine(**kwargs: Any) -> Any:
    sqlalchemy = pytest.importorskip("dbresilience.sqlalchemy")
    return sqlalchemy.create_engine("postgresql+psycopg://u@127.0.0.1:1/db", **kwargs)


POOL_ARGS: dict[str, tuple[tuple[Any, ...], tuple[Any, ...]]] = {
    "min_size": (INT_WRONG, (-1,)),
    "max_size": (INT_WRONG, (0, -3)),
    "attempts": (INT_WRONG, (0,)),
    "connect_timeout": (DURATION_WRONG, POSITIVE_DURATION_BAD),
    "acquire_timeout": (DURATION_WRONG, POSITIVE_DURATION_BAD),
    "query_timeout": (DURATION_WRONG, POSITIVE_DURATION_BAD),
    "statement_timeout": (("5", [1]), DURATION_BAD),
    "lock_timeout": (("5", [1]), DURATION_BAD),
    "idle_in_transaction_timeout": (DURATION_WRONG, POSITIVE_DURATION_BAD),
    "idle_check_after": (DURATION_WRONG, DURATION_BAD),
    "base_delay": (DURATION_WRONG, DURATION_BAD),
    "max_delay": (DURATION_WRONG, DURATION_BAD),
    "max_lifetime": (DURATION_WRONG, POSITIVE_DURATION_BAD),
}
QUEUE_ARGS: dict[str, tuple[tuple[Any, ...], tuple[Any, ...]]] = {
    "batch_size": (INT_WRONG, (0, -1)),
    "max_pending": (INT_WRONG, (0,)),
    "flush_interval": (DURATION_WRONG, POSITIVE_DURATION_BAD),
    "block_timeout": (DURATION_WRONG, DURATION_BAD),
    "drain_timeout": (DURATION_WRONG, DURATION_BAD),
    "ledger_retention": (DURATION_WRONG, POSITIVE_DURATION_BAD),
    "batch_timeout": (DURATION_WRONG, POSITIVE_DURATION_BAD),
}
CACHE_ARGS: dict[str, tuple[tuple[Any, ...], tuple[Any, ...]]] = {
    "ttl": (DURATION_WRONG, POSITIVE_DURATION_BAD),
    "maxsize": (INT_WRONG, (0,)),
    "negative_ttl": (DURATION_WRONG, DURATION_BAD),
    "stale_ttl": (DURATION_WRONG, DURATION_BAD),
    "jitter": (NUMBER_WRONG, (-0.1, 0.51, math.nan)),
    "degraded_ttl": (DURATION_WRONG, POSITIVE_DURATION_BAD),
    "timeout": (DURATION_WRONG, POSITIVE_DURATION_BAD),
    "probe_interval": (DURATION_WRONG, POSITIVE_DURATION_BAD),
    "lease_ttl": (DURATION_WRONG, POSITIVE_DURATION_BAD),
}
SHARED_ARGS: dict[str, tuple[tuple[Any, ...], tuple[Any, ...]]] = {
    "quorum": (INT_WRONG, (0,)),
    "refresh": ((*DURATION_WRONG, None), (*POSITIVE_DURATION_BAD, 60.5)),
    "timeout": ((*DURATION_WRONG, None), (*POSITIVE_DURATION_BAD, 10.5)),
}
TABLE: dict[str, tuple[Callable[..., Any], dict[str, tuple[tuple[Any, ...], tuple[Any, ...]]]]] = {
    "Pool": (_pool, POOL_ARGS),
    "AsyncPool": (_async_pool, POOL_ARGS),
    "WriteQueue": (_queue, QUEUE_ARGS),
    "AsyncWriteQueue": (_async_queue, QUEUE_ARGS),
    "CredentialCache": (_cache, CACHE_ARGS),
    "AsyncCredentialCache": (_async_cache, CACHE_ARGS),
    "CircuitBreaker": (
        dbr.CircuitBreaker,
        {
            "failure_rate": (NUMBER_WRONG, (0, -0.5, 1.01, math.nan)),
            "slow_call_rate": (NUMBER_WRONG, (0, 1.5, math.inf)),
            "minimum_calls": (INT_WRONG, (0,)),
            "half_open_calls": (INT_WRONG, (0,)),
            "window": (DURATION_WRONG, POSITIVE_DURATION_BAD),
            "open_for": (DURATION_WRONG, POSITIVE_DURATION_BAD),
            "slow_call_duration": (DURATION_WRONG, POSITIVE_DURATION_BAD),
        },
    ),
    "RetryBudget": (
        dbr.RetryBudget,
        {
            "ratio": (NUMBER_WRONG, (-0.1, 10.5, math.nan)),
            "min_per_second": (NUMBER_WRONG, (-1, math.inf, math.nan)),
            "ttl": (DURATION_WRONG, (*POSITIVE_DURATION_BAD, 0.5, 61, timedelta(minutes=2))),
        },
    ),
    "with_retry": (
        dbr.with_retry,
        {
            "attempts": (INT_WRONG, (0, -1)),
            "base_delay": (DURATION_WRONG, DURATION_BAD),
            "max_delay": (DURATION_WRONG, DURATION_BAD),
            "deadline": (DURATION_WRONG, POSITIVE_DURATION_BAD),
        },
    ),
    "testing": (_testing, {"attempts": (("3", 2.5, True), (0, -1))}),
    "RedisBreakerState": (_shared, SHARED_ARGS),
    "AsyncRedisBreakerState": (_async_shared, SHARED_ARGS),
    "Backoff": (
        dbr.Backoff,
        {
            "base_delay": (DURATION_WRONG, DURATION_BAD),
            "max_delay": (DURATION_WRONG, DURATION_BAD),
        },
    ),
    "Deadline": (dbr.Deadline, {"budget": (DURATION_WRONG, DURATION_BAD)}),
    "sqlalchemy.create_engine": (
        _engine,
        {
            "pool_size": (INT_WRONG, (-1,)),
            "max_overflow": (INT_WRONG, (-1,)),
            "warm": (("1", 1.0, True), (-1,)),
            "query_timeout": (DURATION_WRONG, POSITIVE_DURATION_BAD),
            "connect_timeout": (DURATION_WRONG, POSITIVE_DURATION_BAD),
        },
    ),
}


def _rows() -> Iterator[Any]:
    for label, (factory, args) in TABLE.items():
        for arg, (wrong, bad) in args.items():
            for value in wrong:
                yield pytest.param(factory, arg, value, TypeError, id=f"{label}-{arg}-{value!r}")
            for value in bad:
                yield pytest.param(factory, arg, value, ValueError, id=f"{label}-{arg}-{value!r}")


@pytest.mark.parametrize(("factory", "arg", "value", "error"), list(_rows()))
def test_every_constructor_checks_every_numeric_argument(
    factory: Callable[..., Any], arg: str, value: Any, error: type[Exception]
) -> None:
    """A wrong type is a TypeError, a value out of range a ValueError; the message names it."""
    with pytest.raises(error) as info:
        factory(**{arg: value})
    assert type(info.value) is error
    assert str(info.value).startswith(f"{arg} must be "), str(info.value)


@pytest.mark.parametrize(
    ("factory", "kwargs", "name"),
    [
        (_pool, {"min_size": 5, "max_size": 2}, "max_size"),
        (_pool, {"base_delay": 2, "max_delay": 1}, "max_delay"),
        (dbr.with_retry, {"base_delay": 2, "max_delay": 1}, "max_delay"),
        (_engine, {"pool_size": 2, "warm": 3}, "warm"),
    ],
)
def test_relations_between_arguments_are_value_errors(
    factory: Callable[..., Any], kwargs: dict[str, Any], name: str
) -> None:
    """max_size < min_size, max_delay < base_delay, warm > pool_size: ValueError naming it."""
    with pytest.raises(ValueError, match=rf"^{name} must be [<>]= "):
        factory(**kwargs)


@pytest.mark.parametrize(
    ("factory", "kwargs", "stored"),
    [
        (
            dbr.CircuitBreaker,
            {"open_for": timedelta.max, "window": 1e10},
            lambda b: (b.open_for, b.window),
        ),
        (_cache, {"ttl": timedelta.max, "stale_ttl": 1e12}, lambda c: (c.ttl, c.stale_ttl)),
        (
            _queue,
            {"block_timeout": timedelta.max, "ledger_retention": 10**30},
            lambda q: (q.block_timeout, q.ledger_retention),
        ),
        (
            dbr.with_retry,
            {"deadline": timedelta.max, "max_delay": 1e10},
            lambda p: (p.deadline, p.backoff.max_delay),
        ),
        (
            _pool,
            {"query_timeout": timedelta.max, "acquire_timeout": 1e10},
            lambda p: (p._config.query_timeout, p._config.acquire_timeout),
        ),
        (dbr.Deadline, {"budget": timedelta.max}, lambda d: (d.budget,)),
        (dbr.Backoff, {"max_delay": timedelta.max}, lambda b: (b.max_delay,)),
    ],
)
def test_constructors_take_huge_durations_capped(
    factory: Callable[..., Any], kwargs: dict[str, Any], stored: Callable[[Any], tuple[float, ...]]
) -> None:
    """timedelta.max, 1e10 and 10**30 s are accepted everywhere and kept as MAX_SECONDS."""
    assert stored(factory(**kwargs)) == (MAX_SECONDS,) * len(kwargs)


def test_a_pool_with_huge_timeouts_asks_the_server_for_what_it_accepts() -> None:
    """Capped durations still fit libpq's and the server's int milliseconds."""
    pool = _pool(query_timeout=timedelta.max, idle_in_transaction_timeout=1e10)
    params = pool._config.connect_params({})
    assert int(params["tcp_user_timeout"]) == 2**31 - 1
    assert "-c statement_timeout=2147483647" in params["options"]
    assert "-c idle_in_transaction_session_timeout=2147483647" in params["options"]


def test_constructors_start_nothing() -> None:
    """Building every public class with valid settings starts no thread and connects nowhere."""
    before = threading.active_count()
    built = [
        factory()
        for factory in (
            *(_pool, _async_pool, _queue, _async_queue, _cache, _async_cache),
            *(dbr.CircuitBreaker, dbr.RetryBudget, dbr.with_retry, _shared, _async_shared),
        )
    ]
    built.append(dbr.CircuitBreaker(shared=built[-2]))
    assert threading.active_count() == before


def test_old_messages_keep_their_shape() -> None:
    """The errors of constructors read as before: what, the bound, what was given."""
    with pytest.raises(TypeError, match=r"^max_size must be an int >= 1, got '3' \(str\)$"):
        _pool(max_size="3")
    with pytest.raises(TypeError, match=r"^batch_size must be an int >= 1, got '3' \(str\)$"):
        _queue(batch_size="3")
    with pytest.raises(ValueError, match=r"^on_full must be one of 'block', 'raise', 'spill'"):
        _queue(on_full="drop")
    with pytest.raises(TypeError, match=r"^redis_url must be a str or None, got <hidden bytes>$"):
        dbr.CredentialCache(b"redis://:hunter2@h")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^conninfo must be a str, got <hidden bytes>$"):
        dbr.Pool(b"password=hunter2")  # type: ignore[arg-type]


# --- configuration errors are not outages (#13 item 8) ---------------------------------------


@pytest.mark.parametrize(
    ("conninfo", "kwargs", "message"),
    [
        ("host=127.0.0.1 port=notaport", None, "conninfo: port must be an integer"),
        ("host=127.0.0.1 port=5432,99999", None, "conninfo: port must be an integer"),
        ("postgresql://u@127.0.0.1:5432/db?sslmode=sometimes", None, "conninfo: sslmode"),
        ("host=127.0.0.1 dbnme=test", None, "conninfo is not a valid"),
        ("host=127.0.0.1", {"nosuch": "1"}, "kwargs key 'nosuch'"),
        ("host=127.0.0.1", {"port": "http"}, "kwargs: port must be an integer"),
        ("host=127.0.0.1", {"connect_timeout": "soon"}, "kwargs: connect_timeout"),
        ("host=127.0.0.1", {"target_session_attrs": "writable"}, "target_session_attrs"),
        ("host=127.0.0.1", {"prepare_threshold": -1}, "prepare_threshold"),
    ],
)
def test_bad_connection_settings_fail_at_construction(
    conninfo: str, kwargs: dict[str, object] | None, message: str
) -> None:
    """A bad port, an unknown conninfo keyword, a kwargs key that is no libpq parameter: a
    ValueError naming it when the pool is made, not P1001 after seconds of retries at open."""
    for cls in (dbr.Pool, dbr.AsyncPool):
        with pytest.raises(ValueError, match=message):
            cls(conninfo, kwargs=kwargs)


def test_bad_pooler_setting_is_named() -> None:
    """pooler= accepts None, "auto", "session", "transaction" only."""
    with pytest.raises(ValueError, match="pooler"):
        dbr.Pool("host=127.0.0.1", pooler="statement")
    with pytest.raises(TypeError, match="pooler"):
        dbr.Pool("host=127.0.0.1", pooler=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prepare_threshold"):
        dbr.Pool("host=127.0.0.1", pooler="transaction", kwargs={"prepare_threshold": 5})


def test_prepare_threshold_goes_to_the_connection(pg_dsn: str) -> None:
    """kwargs={"prepare_threshold": None} reaches psycopg's connection (it used to vanish from
    the DSN), and a number is kept as given."""
    for threshold in (None, 0):
        pool = dbr.Pool(pg_dsn, min_size=1, max_size=1, kwargs={"prepare_threshold": threshold})
        with pool, pool.connection() as conn:
            assert conn.prepare_threshold == threshold


@pytest.mark.parametrize(
    ("connect_args", "message"),
    [
        ({"nosuch": 1}, "connect_args key 'nosuch'"),
        ({"port": "notaport"}, "connect_args: port must be an integer"),
        ({"sslmode": "always"}, "connect_args: sslmode"),
    ],
)
def test_bad_engine_connect_args_fail_at_construction(
    connect_args: dict[str, object], message: str
) -> None:
    """The engines check connect_args like the pools check kwargs: at construction, no I/O."""
    from dbresilience.sqlalchemy import create_async_engine, create_engine

    for factory in (create_engine, create_async_engine):
        with pytest.raises(ValueError, match=message):
            factory("postgresql+psycopg://u@127.0.0.1:1/db", connect_args=connect_args)
