"""The journal reader on files nobody should trust: truncated, garbled, hostile.

A journal is input like any other (a disk error, a bad copy, someone's editor). Opening one
either replays exactly the whole, valid records after the last watermark, or raises
:class:`dbresilience.JournalCorrupt` naming the line; it never raises anything else, never
hangs, and a torn last line (a crash mid-write) is dropped, not fatal.
"""

from __future__ import annotations

import binascii
import json
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dbresilience as dbr
from dbresilience._journal import Journal, Record, format_line, parse_line

_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _line(record: Record) -> bytes:
    """A line of format 1 (JSON), as journals written before the serializer hold."""
    return json.dumps({"s": record.seq, "q": record.sql, "p": record.params, "k": record.key})\
        .encode()  # fmt: skip


def _new_line(record: Record) -> bytes:
    """A line of format 2 (the serializer's), without its newline."""
    return format_line(record).rstrip(b"\n")


LINE_FORMATS = {"old": _line, "new": _new_line}


records = st.builds(
    Record,
    seq=st.integers(1, 10_000),
    sql=st.text(max_size=40),
    params=st.lists(st.integers() | st.text(max_size=10) | st.none(), max_size=4),
    key=st.none() | st.text(max_size=10),
)


def _open(path: Path) -> tuple[list[Record], int]:
    journal = Journal(path)
    try:
        return journal.open()
    finally:
        journal.close()


@_SETTINGS
@given(data=st.binary(max_size=4096))
def test_random_bytes_open_or_raise_journal_corrupt(tmp_path: Path, data: bytes) -> None:
    """Any bytes at all: open() returns or raises JournalCorrupt, quickly."""
    path = tmp_path / "random.journal"
    path.write_bytes(data)
    start = time.monotonic()
    outcome: tuple[list[Record], int] | dbr.JournalCorrupt
    try:
        outcome = _open(path)
    except dbr.JournalCorrupt as exc:
        outcome = exc
    if isinstance(outcome, dbr.JournalCorrupt):
        assert "corrupt at line" in str(outcome)
    else:
        replay, top = outcome
        assert all(isinstance(r, Record) and r.seq >= 1 for r in replay)
        assert top >= 0
    assert time.monotonic() - start < 1.0


@_SETTINGS
@given(
    good=st.lists(records, max_size=20, unique_by=lambda r: r.seq),
    cut=st.integers(0, 200),
    formats=st.lists(st.sampled_from(sorted(LINE_FORMATS)), min_size=21, max_size=21),
)
def test_a_torn_tail_loses_only_the_torn_write(
    tmp_path: Path, good: list[Record], cut: int, formats: list[str]
) -> None:
    """Whole records (old and new line formats mixed) then a last line cut anywhere: every
    whole record is replayed, in order, and the torn one is dropped (its submit never
    returned)."""
    torn = Record(20_000, "insert into t values (%s)", [1], "torn")
    lines = [LINE_FORMATS[f](r) for f, r in zip(formats, good, strict=False)]
    torn_line = LINE_FORMATS[formats[-1]](torn)
    tail = torn_line[: cut % len(torn_line)]
    path = tmp_path / "torn.journal"
    path.write_bytes(b"".join(line + b"\n" for line in lines) + tail)
    replay, _ = _open(path)
    assert replay == sorted(good, key=lambda r: r.seq)


def _b64(data: bytes) -> bytes:
    return b"2 mp1 " + binascii.b2a_base64(data, newline=False)


_mp = dbr.MsgpackSerializer()
new_format_garbage = st.one_of(
    st.binary(max_size=100).map(_b64),  # bytes that are not MessagePack
    st.text("ABCDEFabcdef0123456789+/=!-_ ", max_size=60).map(lambda t: b"2 mp1 " + t.encode()),
    st.builds(
        lambda r, cut: _b64(_mp.dumps([r.seq, r.sql, r.params, r.key])[:cut]),  # truncated
        records,
        st.integers(0, 30),
    ),
    st.sampled_from(
        [
            _b64(b"\x91" * 100_000 + b"\xc0"),  # 100,000 nested arrays
            _b64(b"\xdd\xff\xff\xff\xff"),  # an array of 4 G items, none there
            _b64(_mp.dumps([1, 2, 3])),
            _b64(_mp.dumps(["1", "x", [], None])),
            _b64(_mp.dumps([0, "x", [], None])),
            _b64(_mp.dumps([1, 5, [], None])),
            _b64(_mp.dumps([1, "x", "notalist", None])),
            _b64(_mp.dumps([1, "x", (1, 2), None])),
            _b64(_mp.dumps([1, "x", [], 7])),
            _b64(_mp.dumps({"s": 1})),
            _b64(b"\xc7\x01\x63\x00"),  # an unknown extension
            b"2 json1 " + binascii.b2a_base64(b'[1,"x",[],null]', newline=False),
            b"2 mp1",
            b"2 ",
            b"2 mp1 " + b"=" * 8,
        ]
    ),
)


@_SETTINGS
@given(
    before=st.lists(records, min_size=1, max_size=5, unique_by=lambda r: r.seq),
    garbage=st.one_of(
        st.binary(min_size=1, max_size=200).filter(lambda b: b"\n" not in b),
        st.sampled_from(
            [
                b"[]",
                b"null",
                b'"text"',
                b'{"s": "1", "q": "x"}',
                b'{"s": 1, "q": 5}',
                b'{"s": 1, "q": "x", "k": 7}',
                b'{"s": 1, "q": "x", "p": "notalist"}',
                b'{"w": -1}',
                b'{"w": 1.5}',
                b'{"w": true}',
                b"\xff\xfe\xfd",
                b"[" * 100_000,
                b'{"s": 1e400, "q": "x"}',
            ]
        ),
        new_format_garbage,
    ),
)
def test_garbage_in_the_middle_is_refused_by_name(
    tmp_path: Path, before: list[Record], garbage: bytes
) -> None:
    """A line in the middle that is not a record or a watermark: JournalCorrupt naming its line
    number, never a KeyError, TypeError or RecursionError."""
    try:
        parse_line(garbage)
    except ValueError:
        pass
    else:
        return  # hypothesis made a valid line: nothing to refuse
    path = tmp_path / "garbled.journal"
    lines = [_line(r) for r in before] + [garbage, _line(Record(99_999, "x", [], None))]
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    with pytest.raises(dbr.JournalCorrupt, match=f"line {len(before) + 1}"):
        _open(path)


def test_a_watermark_hides_what_it_covers(tmp_path: Path) -> None:
    """Records up to the last watermark are done: only those after it are replayed."""
    path = tmp_path / "marked.journal"
    rs = [Record(i, "x", [i], None) for i in range(1, 6)]
    body = b"".join(_line(r) + b"\n" for r in rs[:3]) + b'{"w":3}\n'
    body += b"".join(_line(r) + b"\n" for r in rs[3:])
    path.write_bytes(body)
    replay, top = _open(path)
    assert replay == rs[3:]
    assert top == 5
