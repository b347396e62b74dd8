"""The serializer: what it costs to encode and decode, and what it adds to a journaled submit.

MsgpackSerializer (the default, msgspec) beside JsonSerializer (the standard library's json,
the format the cache and the journal used before) and beside bare ``json.dumps``/``loads``.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import dbresilience as dbr
from dbresilience._journal import Record, format_line

from ._common import per_call_sync, print_table

CREDS = {"id": 7, "credits": 12.5, "isPremium": False}
ROW = (7, Decimal("12.50"), datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc), uuid.uuid4(), "x")
INSERT = "insert into usage_event (user_id, kind) values (%s, %s)"
ROW_INSERT = "insert into usage_row (id, amount, at, ref, note) values (%s, %s, %s, %s, %s)"


class _NoDatabase:
    """A pool the worker never reaches before close (``flush_interval`` is an hour): what is
    measured is submit's own cost, the journal write included."""

    breaker = None

    def connection(self, timeout: float) -> Any:
        raise ConnectionRefusedError("no database in this benchmark")


def _submit_p50s(serializer: dbr.Serializer, params: Any, n: int, rounds: int) -> list[float]:
    """Per-round median µs of ``submit`` with a journal (``fsync="batch"``, the default)."""
    medians = []
    statement = INSERT if len(params) == 2 else ROW_INSERT  # submit checks the placeholders
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            queue = dbr.WriteQueue(
                _NoDatabase(),  # type: ignore[arg-type]
                journal=os.path.join(tmp, "q.journal"),
                flush_interval=3600,
                max_pending=10 * n,
                drain_timeout=0,
                serializer=serializer,
            )
            queue.open()
            samples = []
            for _ in range(n):
                start = time.perf_counter()
                queue.submit(statement, params)
                samples.append(time.perf_counter() - start)
            medians.append(statistics.median(samples) * 1e6)
            queue.close()  # drain_timeout=0: what is journaled stays there
    return medians


def run(quick: bool = False) -> None:
    """Print the serializer table."""
    number = 20_000 if quick else 200_000
    mp, js = dbr.MsgpackSerializer(), dbr.JsonSerializer()
    encoder = json.JSONEncoder(separators=(",", ":"), sort_keys=True)
    rows: list[tuple[object, ...]] = []
    raw_json = encoder.encode(CREDS).encode()
    raw_mp = mp.dumps(CREDS)
    for label, fn in (
        ("credentials dict: json.dumps (bare, as the cache did)", lambda: encoder.encode(CREDS)),
        ("credentials dict: JsonSerializer.dumps", lambda: js.dumps(CREDS)),
        ("credentials dict: MsgpackSerializer.dumps", lambda: mp.dumps(CREDS)),
        ("credentials dict: json.loads (bare)", lambda: json.loads(raw_json)),
        ("credentials dict: JsonSerializer.loads", lambda: js.loads(raw_json)),
        ("credentials dict: MsgpackSerializer.loads", lambda: mp.loads(raw_mp)),
    ):
        rows.append((label, per_call_sync(fn, number=number) * 1e6, ""))
    packed_row = mp.dumps(ROW)
    rows.append(
        (
            "row (int, Decimal, datetime, UUID, str): MsgpackSerializer dumps",
            per_call_sync(lambda: mp.dumps(ROW), number=number) * 1e6,
            "json: TypeError",
        )
    )
    rows.append(
        (
            "row (int, Decimal, datetime, UUID, str): MsgpackSerializer loads",
            per_call_sync(lambda: mp.loads(packed_row), number=number) * 1e6,
            "",
        )
    )
    record = Record(12345, INSERT, [7, "start"], "req-1")

    def old_line() -> bytes:  # the journal's line before the serializer (format 1)
        line = {"s": record.seq, "q": record.sql, "p": record.params, "k": record.key}
        return json.dumps(line, separators=(",", ":")).encode() + b"\n"

    for label, fn in (
        ("journal line: format 1 (json.dumps, as before)", old_line),
        ("journal line: format 2, JsonSerializer", lambda: format_line(record, js)),
        ("journal line: format 2, MsgpackSerializer", lambda: format_line(record, mp)),
    ):
        rows.append((label, per_call_sync(fn, number=number) * 1e6, ""))
    n, rounds = (5_000, 3) if quick else (20_000, 7)
    for params, what in (([7, "start"], "(int, str)"), (list(ROW), "the row above")):
        # alternated round by round: the disk and the machine treat both alike
        results: dict[str, list[float]] = {"json": [], "mp": []}
        for _ in range(rounds):
            if what == "(int, str)":
                results["json"] += _submit_p50s(js, params, n, 1)
            results["mp"] += _submit_p50s(mp, params, n, 1)
        for name, serializer_label in (("json", "JsonSerializer"), ("mp", "MsgpackSerializer")):
            if not results[name]:
                rows.append((f"submit p50, journal, {what}: {serializer_label}", "-", "TypeError"))
                continue
            spread = f"{min(results[name]):.2f}-{max(results[name]):.2f} us"
            rows.append(
                (
                    f"submit p50, journal, {what}: {serializer_label}",
                    statistics.median(results[name]),
                    spread,
                )
            )
    print_table(
        "serializer (us per call; submit: median of per-round p50s, spread across rounds)",
        ("case", "us/call", "note / spread"),
        rows,
    )
