"""One serializer for the cache and the journal: the same value, of the same type, back.

A value put in the cache or submitted with a journal comes back — from memory, from Redis,
after a replay in another process — equal to what went in and of the same type: a tuple stays
a tuple, a ``Decimal`` a ``Decimal``, an aware ``datetime`` keeps its ``ZoneInfo``. What cannot
come back that way is refused when it is put in (``TypeError`` naming the type), never after.

:class:`MsgpackSerializer` (the default) is MessagePack through msgspec, with an extension type
per Python type that MessagePack has no word for. :class:`JsonSerializer` is plain JSON (the
format before this one), for values that are JSON already. Anything with ``name``, ``dumps``
and ``loads`` (:class:`Serializer`) can stand in for them. Never pickle: ``loads`` builds only
the types listed here, whatever the bytes say.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
import uuid
import zoneinfo
from collections.abc import Callable
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

import msgspec
from msgspec.msgpack import Ext
from psycopg.types import multirange as _multirange
from psycopg.types import range as _range
from psycopg.types.json import Json, Jsonb

__all__ = ["DEFAULT", "JsonSerializer", "MsgpackSerializer", "Serializer", "check_serializer"]


@runtime_checkable
class Serializer(Protocol):
    """What the cache (``serializer=``) and the write queue's journal need to store values.

    - ``name``: a short ASCII word (letters, digits, ``.``, ``_``, ``-``; at most 32) stored
      with every value, so that bytes written by one serializer are never read by another (in
      the cache they are a miss; in a journal, a line naming another serializer is corrupt).
    - ``dumps(value) -> bytes``: raises ``TypeError`` naming the type of a value it cannot
      give back *equal and of the same type*. Called before anything is kept or acknowledged.
    - ``loads(data) -> value``: the inverse. *data* is untrusted (anyone who can write the
      Redis key or the file chose it); whatever it raises makes the value a miss (cache) or
      the line corrupt (journal). It must not execute or import anything the bytes name.
    """

    name: str

    def dumps(self, value: Any) -> bytes:
        """*value* as bytes; ``TypeError`` naming the type of what cannot round-trip."""
        ...

    def loads(self, data: bytes) -> Any:
        """The value *data* holds; raises (anything) for bytes that are not one."""
        ...


_NAME = re.compile(r"[A-Za-z0-9._-]{1,32}")


def check_serializer(name: str, value: object) -> Serializer:
    """*value* if it is a :class:`Serializer` with a valid ``name``, else ``TypeError``
    (``ValueError`` for a bad name), naming the argument."""
    if value is None:
        return DEFAULT
    if not isinstance(value, Serializer):
        raise TypeError(
            f"{name} must have name, dumps() and loads() (dbresilience.Serializer), "
            f"got {type(value).__name__}"
        )
    tag = value.name
    if not isinstance(tag, str) or not _NAME.fullmatch(tag):
        raise ValueError(
            f"{name}.name must be 1-32 ASCII letters, digits, '.', '_' or '-', got {tag!r}"
        )
    return value


def _type_name(value: object) -> str:
    t = type(value)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _refuse(value: object, serializer: str, hint: str = "") -> TypeError:
    return TypeError(
        f"{serializer} cannot store a value of type {_type_name(value)}"
        f"{hint}: it would not come back as the same type (see docs/cache.md, 'Values')"
    )


# --- MessagePack ------------------------------------------------------------------------------

# extension codes (0-127 are the application's; msgspec reads -1, a timestamp, by itself)
_TUPLE = 1
_BIGINT = 2
_DECIMAL = 3
_DATETIME = 4
_DATE = 5
_TIME = 6
_TIMEDELTA = 7
_UUID = 8
_IP_TYPES: tuple[type[Any], ...] = (
    ipaddress.IPv4Address,
    ipaddress.IPv6Address,
    ipaddress.IPv4Network,
    ipaddress.IPv6Network,
    ipaddress.IPv4Interface,
    ipaddress.IPv6Interface,
)
_IP_BASE = 9  # 9 .. 14, in the order of _IP_TYPES
_PAIRS = 15  # a dict whose keys MessagePack cannot key a map with (tuples, Decimals ...)
_RANGE = 16
_MULTIRANGE = 17
_JSON = 18

_RANGES: tuple[type[Any], ...] = (
    _range.Range,
    _range.Int4Range,
    _range.Int8Range,
    _range.NumericRange,
    _range.DateRange,
    _range.TimestampRange,
    _range.TimestamptzRange,
)
_MULTIRANGES: tuple[type[Any], ...] = (
    _multirange.Multirange,
    _multirange.Int4Multirange,
    _multirange.Int8Multirange,
    _multirange.NumericMultirange,
    _multirange.DateMultirange,
    _multirange.TimestampMultirange,
    _multirange.TimestamptzMultirange,
)
_JSONS: tuple[type[Any], ...] = (Json, Jsonb)

_LOW, _HIGH = -(2**63), 2**64 - 1  # MessagePack's integers
#: what MessagePack holds as it is (int: within _LOW.._HIGH)
_SCALARS = frozenset({str, float, bool, type(None), bytes})
_MP = "MsgpackSerializer"


#: tz spec by (zone, its name), and zone by spec: a datetime column repeats a handful of zones.
#: Bounded (emptied when full): the specs decoded come from untrusted bytes.
_SPECS: dict[tuple[tzinfo, str | None], str] = {}
_ZONES: dict[str, tzinfo] = {}
_ZONES_MAX = 256


def _tz_spec(tz: tzinfo) -> str:
    """A time zone as text: ``o<offset µs>[:<name>]`` or ``z<ZoneInfo key>``."""
    ident = (tz, tz.tzname(None))  # timezone(h) == timezone(h, "name"): the name tells them apart
    spec = _SPECS.get(ident)
    if spec is not None:
        return spec
    if type(tz) is timezone:
        offset = tz.utcoffset(None)
        spec = f"o{offset // timedelta(microseconds=1)}"
        if tz.tzname(None) != timezone(offset).tzname(None):
            spec += f":{tz.tzname(None)}"
    elif type(tz) is zoneinfo.ZoneInfo and tz.key is not None:
        spec = f"z{tz.key}"
    else:
        raise _refuse(tz, _MP, " as a tzinfo (datetime.timezone and zoneinfo.ZoneInfo are)")
    if len(_SPECS) >= _ZONES_MAX:
        _SPECS.clear()
    _SPECS[ident] = spec
    return spec


def _tz_from(spec: str) -> tzinfo | None:
    if not spec:
        return None
    zone = _ZONES.get(spec)
    if zone is not None:
        return zone
    if spec[0] == "o":
        offset, sep, name = spec[1:].partition(":")
        delta = timedelta(microseconds=int(offset))
        zone = timezone(delta, name) if sep else timezone(delta)
    elif spec[0] == "z":
        zone = zoneinfo.ZoneInfo(spec[1:])
    else:
        raise ValueError("unknown time zone")
    if len(_ZONES) >= _ZONES_MAX:
        _ZONES.clear()
    _ZONES[spec] = zone
    return zone


def _dump_zoned(code: int, value: datetime | time) -> Ext:
    """A datetime or time as ``<naive iso>|<fold>|<zone spec or nothing>``."""
    tz = value.tzinfo
    if tz is None:
        return Ext(code, f"{value.isoformat()}|{value.fold}|".encode())
    naive = value.replace(tzinfo=None).isoformat()
    return Ext(code, f"{naive}|{value.fold}|{_tz_spec(tz)}".encode())


def _dump_datetime(value: datetime) -> Ext:
    return _dump_zoned(_DATETIME, value)


def _load_datetime(data: bytes) -> datetime:
    naive, fold, tz = data.decode().split("|", 2)
    return datetime.fromisoformat(naive).replace(tzinfo=_tz_from(tz), fold=int(fold))


def _dump_time(value: time) -> Ext:
    return _dump_zoned(_TIME, value)


def _load_time(data: bytes) -> time:
    naive, fold, tz = data.decode().split("|", 2)
    return time.fromisoformat(naive).replace(tzinfo=_tz_from(tz), fold=int(fold))


def _load_timedelta(data: bytes) -> timedelta:
    days, secs, micros = data.decode().split(",")
    return timedelta(days=int(days), seconds=int(secs), microseconds=int(micros))


def _dump_text(code: int, value: object) -> Ext:
    return Ext(code, str(value).encode())


def _load_text(cls: Callable[[str], Any], data: bytes) -> Any:
    return cls(data.decode())


def _load_bigint(data: bytes) -> int:
    return int.from_bytes(data, "big", signed=True)


def _load_decimal(data: bytes) -> Decimal:
    return Decimal(data.decode("ascii"))


def _load_uuid(data: bytes) -> uuid.UUID:
    return uuid.UUID(bytes=data)


class MsgpackSerializer:
    """The default serializer: MessagePack (msgspec) with an extension per Python type.

    Round-trips, equal and of the same type: ``None``, ``bool``, ``int`` (any size), ``float``
    (``inf``, ``nan``, ``-0.0``), ``str``, ``bytes``, ``list``, ``tuple``, ``dict`` (keys of
    any of these types), ``Decimal`` (``NaN``, ``Infinity`` too), ``datetime`` (naive, or
    aware with a ``datetime.timezone`` or a ``zoneinfo.ZoneInfo``; ``fold`` kept), ``date``,
    ``time`` (likewise), ``timedelta``, ``UUID``, the six ``ipaddress`` address, network and
    interface types, psycopg's ``Range`` and ``Multirange`` (and their ``Int4Range`` …
    subclasses) and its ``Json`` / ``Jsonb`` parameter wrappers. Types are matched exactly: a
    subclass (an ``IntEnum``, a ``NamedTuple``, an ``OrderedDict``, psycopg's ``Int4``) is
    refused, as are ``set``, ``bytearray`` and anything else, with a ``TypeError`` naming it.
    """

    name = "mp1"

    def __init__(self) -> None:
        """Stateless apart from its msgspec encoder and decoder (made once)."""
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(ext_hook=self._ext).decode
        self._dumpers: dict[type[Any], Callable[[Any], Any]] = {
            tuple: self._dump_tuple,
            int: self._dump_int,
            Decimal: lambda v: Ext(_DECIMAL, str(v).encode()),
            datetime: _dump_datetime,
            date: lambda v: Ext(_DATE, v.isoformat().encode()),
            time: _dump_time,
            timedelta: lambda v: Ext(_TIMEDELTA, f"{v.days},{v.seconds},{v.microseconds}".encode()),
            uuid.UUID: lambda v: Ext(_UUID, v.bytes),
            list: self._pack_list,
            dict: self._pack_dict,
        }
        for n, cls in enumerate(_IP_TYPES):
            self._dumpers[cls] = functools.partial(_dump_text, _IP_BASE + n)
        for n, cls in enumerate(_RANGES):
            self._dumpers[cls] = functools.partial(self._dump_range, n)
        for n, cls in enumerate(_MULTIRANGES):
            self._dumpers[cls] = functools.partial(self._dump_multirange, n)
        for n, cls in enumerate(_JSONS):
            self._dumpers[cls] = functools.partial(self._dump_json, n)
        self._loaders: dict[int, Callable[[bytes], Any]] = {
            _TUPLE: lambda data: tuple(self._decode(data)),
            _BIGINT: _load_bigint,
            _DECIMAL: _load_decimal,
            _DATETIME: _load_datetime,
            _DATE: lambda data: date.fromisoformat(data.decode()),
            _TIME: _load_time,
            _TIMEDELTA: _load_timedelta,
            _UUID: _load_uuid,
            _PAIRS: self._load_pairs,
            _RANGE: self._load_range,
            _MULTIRANGE: self._load_multirange,
            _JSON: self._load_json,
        }
        for n, cls in enumerate(_IP_TYPES):
            self._loaders[_IP_BASE + n] = functools.partial(_load_text, cls)

    def __repr__(self) -> str:
        return "MsgpackSerializer()"

    def dumps(self, value: Any) -> bytes:
        """*value* as MessagePack; ``TypeError`` naming the first type that cannot round-trip
        (or saying the value is too deeply nested, or circular)."""
        try:
            if type(value) is list:  # a journal record: skip a dispatch
                return self._encode(self._pack_list(value))
            return self._encode(self._pack(value))
        except RecursionError:
            raise TypeError(
                f"{_MP} cannot store this value: too deeply nested (or circular)"
            ) from None
        except UnicodeEncodeError:
            raise TypeError(
                f"{_MP} cannot store a str that is not valid Unicode (a lone surrogate)"
            ) from None

    def loads(self, data: bytes) -> Any:
        """The value *data* holds. Raises ``msgspec.DecodeError`` (a ``ValueError``),
        ``RecursionError`` or another ``ValueError``/``ArithmeticError`` for bytes that are
        not one; builds nothing but the types listed in the class docstring."""
        return self._decode(data)

    # packing: a tree msgspec encodes as it is; the value itself when it needs no extension

    def _pack(self, value: Any) -> Any:
        t = type(value)
        if t in _SCALARS:
            return value
        if t is int and _LOW <= value <= _HIGH:
            return value
        dumper = self._dumpers.get(t)
        if dumper is None:
            raise _refuse(value, _MP)
        return dumper(value)

    def _pack_list(self, items: list[Any]) -> list[Any]:
        packed: list[Any] | None = None  # a copy, made at the first item that changes
        for n, item in enumerate(items):
            t = type(item)
            if t in _SCALARS or (t is int and _LOW <= item <= _HIGH):
                if packed is not None:
                    packed.append(item)
                continue
            new = self._pack_list(item) if t is list else self._pack(item)
            if packed is None and new is not item:
                packed = items[:n]
            if packed is not None:
                packed.append(new)
        return items if packed is None else packed

    def _dump_tuple(self, value: tuple[Any, ...]) -> Ext:
        return Ext(_TUPLE, self._encode(self._pack_list(list(value))))

    def _dump_int(self, value: int) -> Any:
        if _LOW <= value <= _HIGH:
            return value
        return Ext(_BIGINT, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))

    def _pack_dict(self, value: dict[Any, Any]) -> Any:
        plain = True
        for key, item in value.items():
            kt = type(key)
            if not (kt is str or (kt is int and _LOW <= key <= _HIGH)):
                break
            t = type(item)
            if not (t in _SCALARS or (t is int and _LOW <= item <= _HIGH)):
                plain = False
        else:
            if plain:
                return value
            return {key: self._pack(item) for key, item in value.items()}
        pairs: list[Any] = []
        for key, item in value.items():
            pairs.append(self._pack(key))
            pairs.append(self._pack(item))
        return Ext(_PAIRS, self._encode(pairs))

    def _dump_range(self, n: int, value: Any) -> Ext:
        bounds = value.bounds if not value.isempty else ""
        body = [n, self._pack(value.lower), self._pack(value.upper), bounds]
        return Ext(_RANGE, self._encode(body))

    def _dump_multirange(self, n: int, value: Any) -> Ext:
        return Ext(_MULTIRANGE, self._encode([n, [self._dump_range(0, r) for r in value]]))

    def _dump_json(self, n: int, value: Any) -> Ext:
        if value.dumps is not None:
            raise TypeError(
                f"{_MP} cannot store a psycopg {type(value).__name__} with a dumps function"
            )
        return Ext(_JSON, self._encode([n, self._pack(value.obj)]))

    # unpacking (untrusted bytes): only the types above are ever built

    def _ext(self, code: int, data: memoryview) -> Any:
        loader = self._loaders.get(code)
        if loader is None:
            raise ValueError(f"unknown extension type {code}")
        return loader(bytes(data))

    def _load_pairs(self, data: bytes) -> dict[Any, Any]:
        pairs = self._decode(data)
        if type(pairs) is not list or len(pairs) % 2:
            raise ValueError("bad key/value pairs")
        return dict(zip(pairs[::2], pairs[1::2], strict=True))

    def _load_range(self, data: bytes) -> Any:
        n, lower, upper, bounds = self._decode(data)
        cls = _RANGES[n] if type(n) is int and 0 <= n < len(_RANGES) else None
        if cls is None or type(bounds) is not str:
            raise ValueError("bad range")
        return cls(empty=True) if bounds == "" else cls(lower, upper, bounds)

    def _load_multirange(self, data: bytes) -> Any:
        n, ranges = self._decode(data)
        cls = _MULTIRANGES[n] if type(n) is int and 0 <= n < len(_MULTIRANGES) else None
        if cls is None or type(ranges) is not list:
            raise ValueError("bad multirange")
        return cls(ranges)

    def _load_json(self, data: bytes) -> Any:
        n, obj = self._decode(data)
        if type(n) is not int or not 0 <= n < len(_JSONS):
            raise ValueError("bad json wrapper")
        return _JSONS[n](obj)


# --- JSON -------------------------------------------------------------------------------------

#: compact; made once (json.dumps with options builds a new encoder per call)
_JSON_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_JSON_SCALARS = frozenset({str, int, float, bool, type(None)})


class JsonSerializer:
    """Plain JSON (the standard library's), for values that are JSON already.

    Round-trips ``None``, ``bool``, ``int``, finite ``float``, ``str``, ``list`` and ``dict``
    with ``str`` keys, and refuses everything else (a ``tuple`` too: JSON would give it back
    as a list) with a ``TypeError`` naming the type. Slower than the default and narrower; for
    caches whose values other programs read.
    """

    name = "json1"

    def __repr__(self) -> str:
        return "JsonSerializer()"

    def dumps(self, value: Any) -> bytes:
        """*value* as compact JSON; ``TypeError`` for a type JSON does not round-trip."""
        try:
            self._check(value)
            return _JSON_ENCODER.encode(value).encode()
        except RecursionError:
            raise TypeError(
                "JsonSerializer cannot store this value: too deeply nested (or circular)"
            ) from None
        except ValueError as exc:  # inf, nan; an int past the int-to-str digit limit
            raise TypeError(f"JsonSerializer cannot store this value: {exc}") from None

    def loads(self, data: bytes) -> Any:
        """The value *data* holds (``ValueError``/``RecursionError`` for anything else)."""
        return json.loads(data)

    def _check(self, value: Any) -> None:
        t = type(value)
        if t in _JSON_SCALARS:
            return
        if t is list:
            for item in value:
                if type(item) not in _JSON_SCALARS:
                    self._check(item)
            return
        if t is dict:
            for key, item in value.items():
                if type(key) is not str:
                    raise _refuse(key, "JsonSerializer", " as a dict key")
                if type(item) not in _JSON_SCALARS:
                    self._check(item)
            return
        raise _refuse(value, "JsonSerializer")


#: the serializer used when none is given
DEFAULT: Serializer = MsgpackSerializer()
