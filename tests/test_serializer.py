"""Values of the database's own types come back equal and of the same type: from memory, from
Redis, and from a journal replayed by another process.

Hypothesis draws values of the types psycopg returns and takes (``Decimal``, naive and aware
``datetime`` with ``ZoneInfo`` or fixed offsets, ``date``, ``time``, ``timedelta``, ``UUID``,
``bytes``, the ``ipaddress`` types, ``Range``/``Multirange``, ``Json``/``Jsonb``, huge ints,
``inf``/``nan``, tuples vs lists, dicts keyed by any of them) and checks each path with
:func:`same`: equal *and* of the same type, all the way down (a ``1.0`` is not a ``1``, a
tuple is not a list, ``+02:00`` is not ``Europe/Rome``). What cannot round-trip is refused
when it is put in, by name, with Redis or without.
"""

from __future__ import annotations

import binascii
import collections
import enum
import ipaddress
import json
import math
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types import multirange
from psycopg.types import range as pg_range
from psycopg.types.json import Json, Jsonb
from psycopg.types.numeric import Int4

import dbresilience as dbr
from dbresilience._journal import Journal, Record, format_line, parse_line

MP = dbr.MsgpackSerializer()


# --- equal and of the same type ---------------------------------------------------------------


def _same_tz(a: tzinfo | None, b: tzinfo | None) -> bool:
    if a is None or b is None:
        return a is b
    if type(a) is not type(b):
        return False
    if isinstance(a, timezone):
        return a == b and a.tzname(None) == b.tzname(None)
    return getattr(a, "key", a) == getattr(b, "key", b)


def same(a: Any, b: Any) -> bool:
    """*a* and *b* are equal and of the same type, all the way down (nan equals nan)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, Decimal):
        return str(a) == str(b)  # 1.0 and 1.00, NaN and sNaN: the same text
    if isinstance(a, list | tuple | multirange.Multirange):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb)
            for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True)
        )
    if isinstance(a, datetime | time):
        return (
            a.replace(tzinfo=None) == b.replace(tzinfo=None)
            and _same_tz(a.tzinfo, b.tzinfo)
            and a.fold == b.fold
        )
    if isinstance(a, pg_range.Range):
        return a.bounds == b.bounds and same(a.lower, b.lower) and same(a.upper, b.upper)
    if isinstance(a, Json | Jsonb):
        return same(a.obj, b.obj)
    return bool(a == b)


# --- what psycopg returns and takes -----------------------------------------------------------

offsets = st.timedeltas(min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23))
fixed_zones = st.one_of(
    st.builds(timezone, offsets),
    st.builds(timezone, offsets, st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ|:", max_size=6)),
    st.just(timezone.utc),
)
zones = st.one_of(st.none(), st.timezones(), fixed_zones)
datetimes = st.builds(
    lambda dt, fold: dt.replace(fold=fold),
    st.datetimes(timezones=zones, allow_imaginary=True),
    st.integers(0, 1),
)
times = st.builds(
    lambda t, fold: t.replace(fold=fold),
    st.times(timezones=st.none() | fixed_zones),
    st.integers(0, 1),
)
decimals = st.decimals(allow_nan=True, allow_infinity=True) | st.decimals(places=4)
ints = (
    st.integers()
    | st.integers(min_value=-(2**300), max_value=2**300)
    | st.sampled_from([2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**63) - 1])
)
addresses = st.ip_addresses(v=4) | st.ip_addresses(v=6)
networks = st.builds(
    lambda a, bits: ipaddress.ip_network(f"{a}/{bits % (a.max_prefixlen + 1)}", strict=False),
    addresses,
    st.integers(0, 128),
)
interfaces = st.builds(
    lambda a, bits: ipaddress.ip_interface(f"{a}/{bits % (a.max_prefixlen + 1)}"),
    addresses,
    st.integers(0, 128),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    ints,
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=20),
    decimals,
    datetimes,
    st.dates(),
    times,
    st.timedeltas(),
    st.uuids(),
    addresses,
    networks,
    interfaces,
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
BOUNDS = ["[)", "(]", "()", "[]"]


def _ranges(items: st.SearchStrategy[Any], classes: list[type[Any]]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.builds(
            lambda cls, a, b, bounds: cls(
                *sorted([a, b]) if None not in (a, b) else (a, b), bounds
            ),
            st.sampled_from(classes),
            st.none() | items,
            st.none() | items,
            st.sampled_from(BOUNDS),
        ),
        st.builds(lambda cls: cls(empty=True), st.sampled_from(classes)),
    )


ranges = st.one_of(
    _ranges(
        st.integers(-(2**31), 2**31 - 1), [pg_range.Range, pg_range.Int4Range, pg_range.Int8Range]
    ),
    _ranges(st.decimals(allow_nan=False, allow_infinity=False), [pg_range.NumericRange]),
    _ranges(st.dates(), [pg_range.DateRange]),
    _ranges(st.datetimes(), [pg_range.TimestampRange]),
    _ranges(st.datetimes(timezones=st.just(timezone.utc)), [pg_range.TimestamptzRange]),
)
multiranges = st.builds(
    lambda cls, items: cls(items),
    st.sampled_from([multirange.Multirange, multirange.Int4Multirange]),
    st.lists(_ranges(st.integers(-1000, 1000), [pg_range.Range]), max_size=3),
)
wrappers = st.builds(Json, json_values) | st.builds(Jsonb, json_values)
keys = st.one_of(
    st.text(max_size=8),
    st.integers(),
    st.tuples(st.integers(), st.text(max_size=4)),
    st.uuids(),
    st.dates(),
    st.booleans(),
    st.none(),
)
values = st.recursive(
    scalars | ranges | multiranges | wrappers,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=6), children, max_size=4),
        st.dictionaries(keys, children, max_size=3),
    ),
    max_leaves=16,
)


class Point(NamedTuple):
    x: int
    y: int


class Colour(enum.IntEnum):
    RED = 1


unstorable = st.sampled_from(
    [
        ({1, 2}, "set"),
        (frozenset({1}), "frozenset"),
        (bytearray(b"x"), "bytearray"),
        (collections.OrderedDict(a=1), "OrderedDict"),
        (Point(1, 2), "Point"),
        (Colour.RED, "Colour"),
        (object(), "object"),
        (Int4(5), "Int4"),
        (Json({"a": 1}, dumps=json.dumps), "dumps"),
    ]
).flatmap(
    lambda pair: st.sampled_from([pair, ([1, pair[0]], pair[1]), ({"k": (pair[0],)}, pair[1])])
)


# --- the serializer itself --------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(value=values)
def test_every_value_comes_back_the_same(value: Any) -> None:
    """MsgpackSerializer: dumps then loads gives a value equal and of the same type."""
    assert same(MP.loads(MP.dumps(value)), value)


@settings(max_examples=100, deadline=None)
@given(value=json_values)
def test_json_serializer_round_trips_json(value: Any) -> None:
    """JsonSerializer gives back JSON values as they were."""
    js = dbr.JsonSerializer()
    assert same(js.loads(js.dumps(value)), value)


@pytest.mark.parametrize(
    ("value", "named"),
    [((1, 2), "tuple"), (Decimal(1), "Decimal"), ({1: 2}, "int"), (float("inf"), "float")],
)
def test_json_serializer_refuses_what_json_would_change(value: object, named: str) -> None:
    """A tuple (back as a list), a Decimal, an int key (back as a str), inf: TypeError."""
    with pytest.raises(TypeError, match=named):
        dbr.JsonSerializer().dumps(value)


@settings(max_examples=60, deadline=None)
@given(case=unstorable)
def test_what_cannot_come_back_is_refused_by_name(case: tuple[object, str]) -> None:
    """Sets, subclasses (NamedTuple, IntEnum, OrderedDict, psycopg's Int4), a Json wrapper with
    its own dumps, anywhere in the value: TypeError naming the type."""
    value, named = case
    with pytest.raises(TypeError, match=named):
        MP.dumps(value)


def test_too_deep_or_circular_is_a_type_error() -> None:
    """A circular list and one nested 100,000 deep: TypeError, not RecursionError."""
    circular: list[object] = []
    circular.append(circular)
    deep: list[object] = []
    for _ in range(100_000):
        deep = [deep]
    for value in (circular, deep, (deep,)):
        with pytest.raises(TypeError, match="deep"):
            MP.dumps(value)


def test_a_lone_surrogate_is_a_type_error_naming_str() -> None:
    """A str that UTF-8 cannot encode (a lone surrogate): TypeError naming str, in the cache
    (memory-only too) as in the serializer."""
    with pytest.raises(TypeError, match="str"):
        MP.dumps(["ok", "\ud800"])
    with dbr.CredentialCache(None) as cache, pytest.raises(TypeError, match="str"):
        cache.get_or_load(1, lambda: {"name": "\udfff"})


def test_a_serializer_is_checked_at_construction() -> None:
    """serializer= takes anything with name/dumps/loads; anything else fails at construction,
    naming the argument."""

    class Upper:
        name = "upper"

        def dumps(self, value: Any) -> bytes:
            return str(value).upper().encode()

        def loads(self, data: bytes) -> Any:
            return data.decode()

    assert dbr.CredentialCache(None, serializer=Upper()).serializer.name == "upper"
    with pytest.raises(TypeError, match="serializer"):
        dbr.CredentialCache(None, serializer=json)  # type: ignore[arg-type]
    bad = Upper()
    bad.name = "has space"
    with pytest.raises(ValueError, match=r"serializer\.name"):
        dbr.WriteQueue(object(), serializer=bad)


# --- through the cache: memory, and Redis ------------------------------------------------------


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    """A unique namespace prefix; every key under it is deleted after the test."""
    ns = f"dbr-serial-{uuid.uuid4().hex[:10]}"
    yield ns
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{ns}*"):
        client.delete(key)
    client.close()


@settings(max_examples=150, deadline=None)
@given(value=values)
def test_memory_only_gives_back_the_value(value: Any) -> None:
    """Memory-only: every storable value is kept and given back, equal and of the same type
    (a value that can be changed in place as each hit's own copy)."""
    with dbr.CredentialCache(None) as cache:
        first = cache.get_or_load("k", lambda: value)
        again = cache.get_or_load("k", lambda: pytest.fail("loaded twice"))
    assert first is value or value is None
    assert same(again, value)


@pytest.fixture(scope="module")
def caches(redis_url: str) -> Iterator[dict[str, dbr.CredentialCache]]:
    """Writer and reader caches on one Redis namespace, unsigned and signed, and a memory-only
    one; every key they made is deleted after."""
    ns = f"dbr-serial-{uuid.uuid4().hex[:10]}"
    signed = {"namespace": f"{ns}-signed", "signing_key": b"s" * 32}
    made = {
        "writer": dbr.CredentialCache(redis_url, namespace=ns),
        "reader": dbr.CredentialCache(redis_url, namespace=ns),
        "signed writer": dbr.CredentialCache(redis_url, **signed),
        "signed reader": dbr.CredentialCache(redis_url, **signed),
        "memory": dbr.CredentialCache(None),
    }
    yield made
    for cache in made.values():
        cache.close()
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{ns}*"):
        client.delete(key)
    client.close()


@settings(max_examples=120, deadline=None)
@given(value=values, signed=st.booleans())
def test_redis_gives_back_the_same_value_and_type(
    caches: dict[str, dbr.CredentialCache], value: Any, signed: bool
) -> None:
    """What one instance loaded, a second reads from Redis: equal and of the same type; and
    what that Redis hit left in the second's memory (the bytes it read, not encoded again) is
    too, unchanged by the caller changing what it got."""
    prefix = "signed " if signed else ""
    writer, reader = caches[prefix + "writer"], caches[prefix + "reader"]
    key = uuid.uuid4().hex  # a miss in both memory tiers
    hits = reader.stats()["redis_hits"]
    writer.get_or_load(key, lambda: value)
    back = reader.get_or_load(key, lambda: pytest.fail("Redis missed"))
    assert reader.stats()["redis_hits"] == hits + 1
    assert same(back, value)
    if isinstance(back, list | dict):
        back.clear()
    memory_hits = reader.stats()["memory_hits"]
    again = reader.get_or_load(key, lambda: pytest.fail("memory missed"))
    assert reader.stats()["memory_hits"] == memory_hits + 1
    assert same(again, value)


@settings(max_examples=30, deadline=None)
@given(case=unstorable, backend=st.sampled_from(["memory", "writer"]))
def test_unstorable_values_are_refused_with_redis_or_without(
    caches: dict[str, dbr.CredentialCache], case: tuple[object, str], backend: str
) -> None:
    """A value Redis could not hold is the caller's TypeError in memory-only mode too, naming
    the type, and is kept nowhere: the next call loads again."""
    value, named = case
    calls = []

    def load() -> object:
        calls.append(1)
        return value

    cache = caches[backend]
    key = uuid.uuid4().hex
    for _ in range(2):
        with pytest.raises(TypeError, match=named):
            cache.get_or_load(key, load)
    assert cache._lookup(key) is None
    assert len(calls) == 2


def test_another_serializer_s_bytes_are_a_miss(redis_url: str, namespace: str) -> None:
    """A cache reading what a cache with another serializer wrote: a miss, then its own value."""
    with (
        dbr.CredentialCache(redis_url, namespace=namespace) as mp,
        dbr.CredentialCache(redis_url, namespace=namespace, serializer=dbr.JsonSerializer()) as js,
    ):
        assert mp.get_or_load(1, lambda: [1, 2]) == [1, 2]
        assert js.get_or_load(1, lambda: ["json"]) == ["json"]
        assert js.stats()["redis_hits"] == 0
        assert js.stats()["loads"] == 1


def test_rows_of_every_psycopg_type_through_redis(
    redis_url: str, namespace: str, pg_conn: psycopg.Connection[Any]
) -> None:
    """A row as psycopg returns it (numeric, timestamptz in the session's zone, timetz,
    interval, uuid, bytea, inet, cidr, ranges, a multirange, json, arrays, a record) comes back
    from Redis as psycopg gave it."""
    pg_conn.execute("set timezone to 'Europe/Rome'")
    row = pg_conn.execute(
        """select 12.50::numeric, 'NaN'::numeric, now(), localtimestamp, current_date,
                  '10:11:12+02'::timetz, '10:11:12'::time, '1 day 02:03:04.5'::interval,
                  gen_random_uuid(), '\\x00ff0a'::bytea, '10.1.2.3/8'::inet, '10.0.0.0/8'::cidr,
                  '::1'::inet, int4range(1, 5), numrange(1.5, 2.5, '[]'),
                  daterange(null, '2030-01-01'),
                  tstzrange(now(), null), '{[1,2), [5,7)}'::int4multirange,
                  '{"a": [1, 2.5, null]}'::jsonb, '[1, "x"]'::json, array[1, 2, null]::int[],
                  array[[1.5], [2.5]]::numeric[], row(1, 'x', 2.5::numeric), 'inf'::float8,
                  'nan'::float8, 9223372036854775807::int8, true, 'text', null"""
    ).fetchone()
    assert row is not None
    with (
        dbr.CredentialCache(redis_url, namespace=namespace) as writer,
        dbr.CredentialCache(redis_url, namespace=namespace) as reader,
    ):
        writer.get_or_load("row", lambda: row)
        back = reader.get_or_load("row", lambda: pytest.fail("Redis missed"))
    assert same(back, row)


# --- through the journal, across a process restart --------------------------------------------

WRITER = r"""
import binascii, os, sys
import dbresilience as dbr

class NoDatabase:  # the worker never takes a batch: flush_interval is an hour
    breaker = None

values = dbr.MsgpackSerializer().loads(binascii.a2b_base64(sys.stdin.buffer.read()))
queue = dbr.WriteQueue(NoDatabase(), journal=sys.argv[1], flush_interval=3600)
queue.open()
for n, value in enumerate(values):
    queue.submit("insert into t (v) values (%s)", [value], key=f"k{n}")
os._exit(0)  # no drain, no close: what is in the journal is all there is
"""


def _write_in_another_process(path: Path, items: list[Any]) -> None:
    # The values travel to the writer through the serializer itself; a serializer that lost
    # something would still be caught: the replay is compared with the originals, here.
    data = binascii.b2a_base64(MP.dumps(items))
    subprocess.run([sys.executable, "-c", WRITER, str(path)], input=data, check=True, timeout=60)


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(items=st.lists(values, min_size=1, max_size=25))
def test_a_journal_replayed_by_another_process_gives_back_the_same(
    tmp_path: Path, items: list[Any]
) -> None:
    """Parameters submitted by one interpreter (which then dies) are replayed by another equal
    and of the same type, in order, with their keys."""
    path = tmp_path / f"{uuid.uuid4().hex}.journal"
    _write_in_another_process(path, items)
    journal = Journal(path)
    try:
        replay, top = journal.open()
    finally:
        journal.close()
    assert top == len(items)
    assert [r.key for r in replay] == [f"k{n}" for n in range(len(items))]
    for record, value in zip(replay, items, strict=True):
        assert type(record.params) is list
        assert same(record.params[0], value)


@settings(max_examples=40, deadline=None)
@given(case=unstorable)
def test_a_journal_refuses_what_it_cannot_give_back_before_accepting(
    tmp_path_factory: pytest.TempPathFactory, case: tuple[object, str]
) -> None:
    """submit() with a journal: a parameter that cannot round-trip is a TypeError naming its
    type, raised before the write is numbered, journaled or counted."""
    value, named = case
    path = tmp_path_factory.mktemp("refuse") / "q.journal"
    with offline_queue(path) as queue:
        queue.submit("select %s", [1])
        with pytest.raises(TypeError, match=named):
            queue.submit("select %s", [value])
        queue.submit("select %s", [2])
        assert queue.stats()["submitted"] == 2
    journal = Journal(path)
    replay, _ = journal.open()
    journal.close()
    assert [(r.seq, r.params) for r in replay] == [(1, [1]), (2, [2])]


def offline_queue(path: Path) -> dbr.WriteQueue:
    """A queue on *path* that never reaches a database: what it is given stays journaled."""
    return dbr.WriteQueue(object(), journal=str(path), flush_interval=3600, drain_timeout=0)


TYPED_TABLE = """create table {} (
    n numeric, ts timestamptz, d date, i interval, u uuid, b bytea, a inet, r int4range,
    j jsonb, arr int[], t text)"""


def _typed_rows() -> list[tuple[Any, ...]]:
    rome = __import__("zoneinfo").ZoneInfo("Europe/Rome")
    return [
        (
            Decimal("12.50"),
            datetime(2026, 3, 29, 2, 30, tzinfo=rome),
            date(2026, 1, 2),
            timedelta(days=1, seconds=3, microseconds=5),
            uuid.uuid4(),
            b"\x00\n\xff",
            ipaddress.ip_interface("10.1.2.3/8"),
            pg_range.Range(1, 5),
            Jsonb({"a": [1, 2.5, None]}),
            [1, None, 3],
            "x",
        ),
        (
            Decimal("NaN"),
            None,
            None,
            None,
            None,
            b"",
            None,
            pg_range.Range(empty=True),
            Jsonb([]),
            [],
            None,
        ),
    ]


def test_old_and_new_journal_lines_replay_into_the_same_rows(
    pg_dsn: str, pg_conn: psycopg.Connection[Any], table_name: str, tmp_path: Path
) -> None:
    """A journal holding lines of the old JSON format (written before this version) and of the
    new one replays both: the new lines store exactly the typed values an INSERT of the
    originals stores; compaction rewrites everything in the new format."""
    table = psycopg.sql.Identifier(table_name)
    pg_conn.execute(psycopg.sql.SQL(TYPED_TABLE).format(table))
    insert = f"insert into {table_name} (n, ts, d, i, u, b, a, r, j, arr, t) values " + (
        "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    )
    old = {"s": 1, "q": f"insert into {table_name} (t, n) values (%s, %s)", "p": ["old", 1.5]}
    path = tmp_path / "mixed.journal"
    path.write_bytes(json.dumps({**old, "k": "old-1"}).encode() + b"\n")
    rows = _typed_rows()
    with offline_queue(path) as queue:  # replays the old line (into memory), appends after it
        for n, row in enumerate(rows):
            queue.submit(insert, row, key=f"new-{n}")
    lines = path.read_bytes().splitlines()
    assert lines[0].startswith(b"{")
    assert all(line.startswith(b"2 mp1 ") for line in lines[1:])
    with dbr.Pool(pg_dsn, min_size=1) as pool, dbr.WriteQueue(pool, journal=str(path)) as q:
        assert q.stats()["replayed"] == 3
        assert q.flush(timeout=30)
    stored = pg_conn.execute(
        psycopg.sql.SQL("select n, ts, d, i, u, b, a, r, j, arr, t from {} order by ctid").format(
            table
        )
    ).fetchall()
    assert (stored[0][0], stored[0][10]) == (Decimal("1.5"), "old")
    reference = f"{table_name}_ref"
    pg_conn.execute(psycopg.sql.SQL(TYPED_TABLE).format(psycopg.sql.Identifier(reference)))
    for row in rows:
        pg_conn.execute(insert.replace(table_name, reference, 1), row)
    expected = pg_conn.execute(
        psycopg.sql.SQL("select * from {} order by ctid").format(psycopg.sql.Identifier(reference))
    ).fetchall()
    assert same(stored[1:], expected)
    journal = Journal(path)
    journal.open()
    journal.compact([Record(9, "select %s", [Decimal("1.0"), (1,)], None)], 8)
    journal.close()
    assert all(line.startswith((b"2 mp1 ", b'{"w":')) for line in path.read_bytes().splitlines())
    assert same(
        parse_line(path.read_bytes().splitlines()[1]),
        Record(9, "select %s", [Decimal("1.0"), (1,)], None),
    )


def test_a_journal_written_with_another_serializer_is_refused_by_name(tmp_path: Path) -> None:
    """Opening a journal with a serializer other than the one that wrote it: JournalCorrupt
    naming both, never a misread."""
    path = tmp_path / "json.journal"
    js = dbr.JsonSerializer()
    path.write_bytes(b"".join(format_line(Record(n, "x", [n], None), js) for n in (1, 2)))
    journal = Journal(path)
    with pytest.raises(dbr.JournalCorrupt, match="json1"):
        journal.open()
    journal.close()
    journal = Journal(path, serializer=dbr.JsonSerializer())
    assert [r.params for r in journal.open()[0]] == [[1], [2]]
    journal.close()


def test_format_line_has_no_newline_inside(tmp_path: Path) -> None:
    """Whatever the parameters hold (newlines in bytes and text), a record is one line."""
    line = format_line(Record(1, "a\nb", [b"\n\n", "\n", ("\n",)], "\n"))
    assert line.count(b"\n") == 1
    assert line.endswith(b"\n")
    assert same(parse_line(line.rstrip(b"\n")), Record(1, "a\nb", [b"\n\n", "\n", ("\n",)], "\n"))


async def test_the_async_twins_use_the_same_serializer(
    redis_url: str, namespace: str, tmp_path: Path
) -> None:
    """AsyncCredentialCache shares typed values through Redis like the threaded one, and
    AsyncWriteQueue journals with the serializer it is given (its name on every line)."""
    row = (Decimal("1.10"), datetime(2026, 1, 1, tzinfo=timezone.utc), uuid.uuid4(), (1, [2]))
    async with (
        dbr.AsyncCredentialCache(redis_url, namespace=namespace) as writer,
        dbr.AsyncCredentialCache(redis_url, namespace=namespace) as reader,
    ):

        async def load() -> Any:
            return row

        async def never() -> Any:
            pytest.fail("Redis missed")

        await writer.get_or_load(1, load)
        assert same(await reader.get_or_load(1, never), row)
    path = tmp_path / "async.journal"
    queue = dbr.AsyncWriteQueue(
        object(),  # type: ignore[arg-type]
        journal=str(path),
        flush_interval=3600,
        drain_timeout=0,
        serializer=dbr.JsonSerializer(),
    )
    async with queue:
        queue.submit("select %s", [{"a": [1, 2.5]}])
        with pytest.raises(TypeError, match="tuple"):
            queue.submit("select %s", [(1, 2)])
    assert path.read_bytes().startswith(b"2 json1 ")
    journal = Journal(path, serializer=dbr.JsonSerializer())
    assert [r.params for r in journal.open()[0]] == [[{"a": [1, 2.5]}]]
    journal.close()


def test_spilled_writes_are_read_back_typed(tmp_path: Path) -> None:
    """on_full="spill" reads writes back from the journal (read_from): typed, like a replay."""
    row = [Decimal("0.10"), (1, "x"), b"\x00", uuid.uuid4(), date(2026, 1, 1)]
    journal = Journal(tmp_path / "spill.journal")
    journal.open()
    try:
        offset = journal.append_at(Record(1, "insert", row, "k"))
        journal.append(Record(2, "insert", [row], None))
        records, end = journal.read_from(offset, 10, 1)
    finally:
        journal.close()
    assert end == journal.bytes
    assert same(records, [Record(1, "insert", row, "k"), Record(2, "insert", [row], None)])
