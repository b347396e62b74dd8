"""Argument validation, in one place: every constructor in the package checks its arguments here.

The rules, the same for every argument of every class:

- A wrong **type** raises ``TypeError``; a value out of **range** raises ``ValueError``.
- Every message names the argument and shows the bad value:
  ``batch_size must be an int >= 1, got 0``. A value whose argument is named like a secret
  (``dsn``, ``conninfo``, ``url``, ``password``, ``signing_key`` …) is never shown, only its
  type: ``redis_url must be a str or None, got <hidden bytes>``.
- ``bool`` is not a number here: ``max_size=True`` is a ``TypeError``, not a pool of one.
- Durations (:func:`seconds`) are an ``int``, a ``float`` or a ``datetime.timedelta`` and come
  back as float seconds. NaN, infinity and negative durations are rejected; durations past
  :data:`MAX_SECONDS` are capped to it, here and nowhere else.

Pure, no I/O, no imports from the rest of the package: the bottom of the import graph.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any, Literal, TypeVar, overload

__all__ = [
    "MAX_SECONDS",
    "at_least",
    "at_most",
    "boolean",
    "bytes_or_none",
    "callable_or_none",
    "fraction",
    "hooks",
    "instance_or_none",
    "label",
    "non_empty_str",
    "non_negative_int",
    "number",
    "one_of",
    "positive_int",
    "seconds",
    "str_or_none",
    "string",
    "strings",
]

T = TypeVar("T")

#: The longest duration :func:`seconds` returns: one year, or ``threading.TIMEOUT_MAX`` where
#: that is smaller (about 49.7 days on Windows; about 292 years on Linux and macOS).
#:
#: Why cap rather than reject: ``timedelta.max`` or ``1e10`` say "practically forever", and a
#: caller should get that, not an ``OverflowError`` from ``Condition.wait`` in a background
#: thread minutes later (``threading`` refuses timeouts past ``TIMEOUT_MAX``). Why a year: it is
#: longer than any timeout, window, TTL or retention a service means, and small enough that
#: everything done with a duration afterwards stays finite and in range: ``monotonic() +
#: timeout``, thread and asyncio waits, conversions to milliseconds.
MAX_SECONDS: float = min(365 * 24 * 3600.0, threading.TIMEOUT_MAX)

# Arguments whose values may hold a password: messages show their type, never their value.
_SECRET_PARTS = ("dsn", "conninfo", "url", "password", "passwd", "secret", "token", "signing_key")
_MAX_SHOWN = 60


def _is_secret(name: str) -> bool:
    lowered = name.lower()
    return any(part in lowered for part in _SECRET_PARTS)


def _shown(name: str, value: object) -> str:
    """*value* as a message may show it: a short repr, or only its type for a secret."""
    if _is_secret(name):
        return f"<hidden {type(value).__name__}>"
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _type_error(name: str, expected: str, value: object) -> TypeError:
    shown = _shown(name, value)
    if not _is_secret(name):
        shown = f"{shown} ({type(value).__name__})"
    return TypeError(f"{name} must be {expected}, got {shown}")


def _value_error(name: str, expected: str, value: object) -> ValueError:
    return ValueError(f"{name} must be {expected}, got {_shown(name, value)}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --- integers ---------------------------------------------------------------------------------


def positive_int(name: str, value: object, *, minimum: int = 1, maximum: int | None = None) -> int:
    """*value* if it is an ``int`` (not a ``bool``) in ``[minimum, maximum]``.

    ``TypeError`` for any other type, ``ValueError`` out of range; both name *name*.
    """
    expected = (
        f"an int >= {minimum}" if maximum is None else f"an int between {minimum} and {maximum}"
    )
    if not isinstance(value, int) or isinstance(value, bool):
        raise _type_error(name, expected, value)
    if value < minimum or (maximum is not None and value > maximum):
        raise _value_error(name, expected, value)
    return value


def non_negative_int(name: str, value: object, *, maximum: int | None = None) -> int:
    """*value* if it is an ``int`` (not a ``bool``) ``>= 0`` (and ``<= maximum``)."""
    return positive_int(name, value, minimum=0, maximum=maximum)


# --- real numbers -----------------------------------------------------------------------------


def number(
    name: str,
    value: object,
    *,
    low: float = 0.0,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """*value* as a finite float in the interval from *low* to *high* (closed unless ``*_open``).

    Accepts ``int`` and ``float``, not ``bool``. ``TypeError`` for any other type; ``ValueError``
    for NaN, infinity or a value outside the interval.
    """
    if high == math.inf:
        expected = f"a finite number {'>' if low_open else '>='} {low:g}"
    else:
        expected = (
            f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        )
    if not _is_number(value):
        raise _type_error(name, expected, value)
    try:
        result = float(value)  # type: ignore[arg-type]  # checked just above
    except OverflowError:  # an int past 1e308: out of every range used here
        raise _value_error(name, expected, value) from None
    if (
        not math.isfinite(result)
        or result < low
        or (low_open and result == low)
        or result > high
        or (high_open and result == high)
    ):
        raise _value_error(name, expected, value)
    return result


def fraction(
    name: str,
    value: object,
    *,
    low: float = 0.0,
    high: float = 1.0,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """*value* as a float in ``[low, high]`` (``[0, 1]`` by default); see :func:`number`."""
    return number(name, value, low=low, high=high, low_open=low_open, high_open=high_open)


# --- durations --------------------------------------------------------------------------------


@overload
def seconds(
    name: str,
    value: object,
    *,
    allow_zero: bool = False,
    allow_none: Literal[False] = False,
    minimum: float | None = None,
    maximum: float | None = None,
) -> float: ...


@overload
def seconds(
    name: str,
    value: object,
    *,
    allow_zero: bool = False,
    allow_none: bool,
    minimum: float | None = None,
    maximum: float | None = None,
) -> float | None: ...


def seconds(
    name: str,
    value: object,
    *,
    allow_zero: bool = False,
    allow_none: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
) -> float | None:
    """*value* as float seconds: a duration ``> 0`` (``>= 0`` with *allow_zero*).

    Accepts ``int``, ``float`` and ``datetime.timedelta`` (not ``bool``); ``None`` only with
    *allow_none* (returned as ``None``). *minimum* and *maximum* (inclusive) narrow the range;
    *minimum* replaces the ``> 0`` / ``>= 0`` bound.

    Raises ``TypeError`` for any other type and ``ValueError`` for NaN, infinity, a negative
    duration, zero without *allow_zero*, or a value outside ``[minimum, maximum]``; both name
    *name*. A duration past :data:`MAX_SECONDS` (one year, or ``threading.TIMEOUT_MAX`` where
    that is smaller) is accepted and capped to it: ``timedelta.max`` and ``1e10`` mean
    "practically forever", and every wait built from the result stays within what threads,
    asyncio and the clock arithmetic accept.
    """
    if value is None and allow_none:
        return None
    if minimum is not None and maximum is not None:
        bound = f"between {minimum:g} and {maximum:g}"
    else:
        bound = f">= {minimum:g}" if minimum is not None else (">= 0" if allow_zero else "> 0")
        if maximum is not None:
            bound += f" and <= {maximum:g}"
    if isinstance(value, timedelta):
        result = value.total_seconds()
    elif _is_number(value):
        if isinstance(value, int):  # compared exactly: float() of a huge int overflows
            value = max(-MAX_SECONDS, min(value, MAX_SECONDS))
        result = float(value)  # type: ignore[arg-type]  # checked just above
    else:
        kinds = "an int, a float or a timedelta" + (", or None" if allow_none else "")
        raise _type_error(name, f"seconds ({kinds})", value)
    if not math.isfinite(result):
        raise _value_error(name, "a finite number of seconds", value)
    if (
        result < (minimum if minimum is not None else 0.0)
        or (result == 0 and minimum is None and not allow_zero)
        or (maximum is not None and result > maximum)
    ):
        raise _value_error(name, f"{bound} seconds", value)
    return min(result, MAX_SECONDS)


# --- strings, bytes, flags --------------------------------------------------------------------


def string(name: str, value: object) -> str:
    """*value* if it is a ``str`` (empty allowed); ``TypeError`` otherwise."""
    if not isinstance(value, str):
        raise _type_error(name, "a str", value)
    return value


def non_empty_str(name: str, value: object) -> str:
    """*value* if it is a non-empty ``str``: ``TypeError`` for another type, ``ValueError``
    for ``""``."""
    if not isinstance(value, str):
        raise _type_error(name, "a non-empty str", value)
    if not value:
        raise _value_error(name, "a non-empty str", value)
    return value


def label(name: str, value: object) -> str:
    """*value* if it can name something in metrics and logs: a non-empty, printable ``str`` of
    at most 200 characters (a Prometheus label value, a log line). ``TypeError`` for another
    type, ``ValueError`` otherwise."""
    text = non_empty_str(name, value)
    if len(text) > 200 or not text.isprintable():
        raise _value_error(name, "a printable str of at most 200 characters", value)
    return text


def str_or_none(name: str, value: object) -> str | None:
    """*value* if it is a ``str`` or ``None``; ``TypeError`` otherwise."""
    if value is not None and not isinstance(value, str):
        raise _type_error(name, "a str or None", value)
    return value


def strings(name: str, value: object) -> tuple[str, ...]:
    """*value* (a sequence of ``str``, not one ``str``) as a tuple; ``TypeError`` otherwise."""
    expected = "a sequence of str (not one str)"
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise _type_error(name, expected, value)
    items = tuple(value)
    for item in items:
        if not isinstance(item, str):
            raise _type_error(name, expected + " whose items are all str", item)
    return items


def one_of(name: str, value: object, choices: Iterable[str]) -> str:
    """*value* if it is one of the strings *choices*: ``TypeError`` for a value that is not a
    ``str``, ``ValueError`` for a ``str`` that is not a choice."""
    options = tuple(choices)
    expected = "one of " + ", ".join(repr(c) for c in options)
    if not isinstance(value, str):
        raise _type_error(name, expected, value)
    if value not in options:
        raise _value_error(name, expected, value)
    return value


def boolean(name: str, value: object) -> bool:
    """*value* if it is a ``bool``; ``TypeError`` otherwise (``1`` and ``"yes"`` included)."""
    if not isinstance(value, bool):
        raise _type_error(name, "a bool", value)
    return value


def bytes_or_none(name: str, value: object, *, min_length: int = 0) -> bytes | None:
    """*value* if it is ``None`` or ``bytes`` of at least *min_length*: ``TypeError`` for
    another type, ``ValueError`` when it is shorter."""
    if value is None:
        return None
    expected = f"bytes (at least {min_length} of them) or None"
    if not isinstance(value, bytes):
        raise _type_error(name, expected, value)
    if len(value) < min_length:
        raise _value_error(name, expected, value)
    return value


# --- objects ----------------------------------------------------------------------------------


def callable_or_none(name: str, value: T) -> T:
    """*value* if it is callable or ``None``; ``TypeError`` otherwise."""
    if value is not None and not callable(value):
        raise _type_error(name, "callable or None", value)
    return value


def hooks(name: str, value: Callable[..., Any] | Sequence[T] | None) -> tuple[T, ...]:
    """*value* as a tuple of callables: ``None`` is none, one callable is one; a sequence of
    callables is kept in order. ``TypeError`` for anything else."""
    if value is None:
        return ()
    if callable(value):
        return (value,)  # type: ignore[return-value]  # a hook of the caller's hook type
    expected = "a callable or a sequence of callables"
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise _type_error(name, expected, value)
    items = tuple(value)
    for item in items:
        if not callable(item):
            raise _type_error(name, expected, item)
    return items


@overload
def instance_or_none(
    name: str, value: object, kind: type[T], what: str | None = None
) -> T | None: ...


@overload
def instance_or_none(
    name: str, value: object, kind: tuple[type[Any], ...], what: str | None = None
) -> Any: ...


def instance_or_none(
    name: str, value: object, kind: type[Any] | tuple[type[Any], ...], what: str | None = None
) -> Any:
    """*value* if it is an instance of *kind* or ``None``; ``TypeError`` (saying *what*, by
    default the class name) otherwise."""
    if value is not None and not isinstance(value, kind):
        if what is None:
            kinds = kind if isinstance(kind, tuple) else (kind,)
            what = " or ".join(f"a {k.__name__}" for k in kinds)
        raise _type_error(name, f"{what} or None", value)
    return value


# --- relations between two arguments ----------------------------------------------------------


def at_least(name: str, value: float, other_name: str, other: float) -> None:
    """``ValueError`` naming *name* unless ``value >= other`` (*other* is *other_name*'s)."""
    if value < other:
        raise ValueError(
            f"{name} must be >= {other_name} ({_shown(other_name, other)}), "
            f"got {_shown(name, value)}"
        )


def at_most(name: str, value: float, other_name: str, other: float) -> None:
    """``ValueError`` naming *name* unless ``value <= other`` (*other* is *other_name*'s)."""
    if value > other:
        raise ValueError(
            f"{name} must be <= {other_name} ({_shown(other_name, other)}), "
            f"got {_shown(name, value)}"
        )
