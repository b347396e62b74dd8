"""``dbresilience queue failed|replay|drain``: the shared Redis journal from the command line.

- ``failed``: the dead-letter stream (writes set aside, with their error), as JSON lines; the
  parameters only with ``--params`` (they are row data).
- ``replay``: dead letters back to the end of the stream (``--id``, repeatable, or ``--all``),
  to be applied again once their cause is fixed; never past the stream's bound (``--max-len``,
  the queues' ``max_stream_len``): what does not fit stays a dead letter, said, exit status 3.
- ``drain``: a long-lived drainer, for instances that only append (``drain=False``): applies
  the stream into the database until SIGTERM/SIGINT (or, ``--until-empty``, until the stream
  holds nothing).
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from typing import Any

from dbresilience._classify import classify
from dbresilience._journal_redis_base import check_stream_url
from dbresilience._redact import redact_url

__all__ = ["add_queue_parser", "run_queue_command"]


def add_queue_parser(sub: Any) -> None:
    """Add ``queue failed|replay|drain`` to the command's subparsers."""
    queue = sub.add_parser("queue", help="the shared Redis write journal: failed, replay, drain")
    actions = queue.add_subparsers(
        dest="action", required=True, help="failed (list), replay or drain"
    )
    for name, text in (
        ("failed", "list the dead letters (writes set aside, with their error) as JSON lines"),
        ("replay", "move dead letters back to the end of the stream, to be applied again"),
        ("drain", "apply the stream into the database (a long-lived drainer)"),
    ):
        p = actions.add_parser(name, help=text, description=text)
        p.add_argument(
            "--journal", required=True, help="redis://host:port/db (or Sentinel, Cluster)"
        )
        p.add_argument(
            "--stream", default="dbr:queue", help="the stream's name (default dbr:queue)"
        )
        if name == "failed":
            p.add_argument("--params", action="store_true", help="show parameters (row data)")
            p.add_argument("--count", type=int, default=1000, help="at most this many")
        elif name == "replay":
            p.add_argument("--id", action="append", default=[], help="a dead letter's id")
            p.add_argument("--all", action="store_true", help="every dead letter")
            p.add_argument(
                "--max-len",
                type=int,
                default=1_000_000,
                help="the stream's bound (the queues' max_stream_len, default 1,000,000): "
                "replay stops there",
            )
        else:
            p.add_argument("dsn", help="the database to apply into")
            p.add_argument("--batch-size", type=int, default=5000, help="writes a transaction")
            p.add_argument(
                "--ledger-table", default="dbr_queue_ledger", help="the queues' ledger table"
            )
            p.add_argument("--until-empty", action="store_true", help="exit once nothing is left")
            p.add_argument("--max-seconds", type=float, default=None, help="exit after this long")


def _journal(url: str, stream: str, max_len: int = 1) -> Any:
    from dbresilience._journal_redis import StreamJournal

    journal = StreamJournal(
        check_stream_url("--journal", url, "dbresilience queue"),
        stream=stream,
        max_len=max_len,
        max_buffer=1,
        lease_ttl=10.0,
        on_full="raise",
        block_timeout=0.0,
        drain=False,
    )
    return journal.open()


def run_queue_command(args: argparse.Namespace, out: Any = print) -> int:
    """Run ``queue <action>``; the exit status."""
    if args.action == "drain":
        return _drain(args, out)
    import redis

    max_len = getattr(args, "max_len", 1)
    if max_len < 1:
        out("--max-len: a positive number of entries")
        return 2
    journal = _journal(args.journal, args.stream, max_len)
    try:
        return _inspect(args, journal, out)
    except redis.RedisError as exc:  # its message names a host or an id, never a password
        out(f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        return 1
    finally:
        journal.close(0.0)


def _inspect(args: argparse.Namespace, journal: Any, out: Any) -> int:
    """``failed`` or ``replay`` on an open journal."""
    letters = journal.dead_letters(count=getattr(args, "count", 100_000))
    if args.action == "failed":
        for item in letters:
            if not args.params:
                item.pop("params", None)
            out(json.dumps(item, default=str))
        out(f"# {len(letters)} dead letters in {redact_url(args.journal)} {args.stream}")
        return 0
    if not args.all and not args.id:
        out("replay: name dead letters with --id (repeatable) or --all")
        return 2
    ids = [item["id"] for item in letters] if args.all else args.id
    moved, held = journal.replay(ids)
    out(f"replayed {moved} of {len(ids)} dead letters")
    if held:  # the stream at its bound: never pushed past it
        out(
            f"{held} left in the dead-letter stream: the stream holds --max-len={args.max_len} "
            "entries; replay them again once it has drained"
        )
        return 3
    return 0 if moved == len(ids) else 1


def _empty(journal: Any) -> bool:
    """Whether the stream holds nothing; False while Redis does not answer."""
    import redis

    try:
        return int(journal.length()) == 0
    except redis.RedisError:
        return False


def _drain(args: argparse.Namespace, out: Any) -> int:
    from dbresilience._pool import Pool
    from dbresilience._queue import WriteQueue

    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    started = time.monotonic()
    try:
        pool = Pool(args.dsn, min_size=1)
        try:
            pool.open()
        except Exception as exc:  # its message may name the user or the database: the code only
            found = classify(exc)
            if not found.retryable:  # bad credentials, no such database: waiting cannot help
                out(f"failed: the database refuses the drainer ({found.code})")
                return 1
            # a drainer started before its database (a reboot): it waits, then drains
            out(f"the database does not answer yet ({found.code}); draining once it does")
            pool = Pool(args.dsn, min_size=1).open(wait=False)
        with (
            pool,
            WriteQueue(
                pool,
                journal=args.journal,
                stream=args.stream,
                batch_size=args.batch_size,
                ledger_table=args.ledger_table,
            ) as queue,
        ):
            journal = queue._stream
            while not stop.is_set():
                if args.max_seconds is not None and time.monotonic() - started > args.max_seconds:
                    break
                if args.until_empty and queue.stats()["pending"] == 0 and _empty(journal):
                    break
                stop.wait(0.2)
        # counted once closed: a batch committed just before the signal is counted by the worker
        # after its commit (and the stream's XACK); read before, it said "0 written" once with
        # all 300 rows in the table
        stats = queue.stats()
        out(
            f"drained: {stats['written']} written, {stats['duplicates']} duplicates, "
            f"{stats['failed']} set aside (dead letters)"
        )
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
