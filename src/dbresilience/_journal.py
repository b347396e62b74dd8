"""A crash-safe local journal for the write queue: append-only lines, no pickle.

Each submitted write is one line, ``2 <serializer name> <base64 of the serializer's bytes for
[seq, sql, params, key]>`` (format 2: the parameters come back as the same types — a
``Decimal``, a ``datetime``, a tuple — see :mod:`dbresilience._serialize`), written with one
``os.write`` before ``submit`` returns, so it has reached the operating system: it survives
the process dying (``os._exit``, a crash, SIGKILL). With ``fsync="always"`` it is also on disk
before ``submit`` returns (survives power loss; costs a disk flush per write); ``"batch"``
(default) fsyncs before each database batch; ``"never"`` leaves it to the OS.

The queue commits in submission order, so what is done (committed or set aside) is always a
prefix: a line ``{"w": seq}`` records that every write up to ``seq`` is done. On open,
everything after the last watermark is returned for replay. A torn last line (the process died
mid-write) is dropped: that write's ``submit`` never returned. Compaction rewrites the file with
the pending writes only and renames it over the old one (atomic).

Lines of format 1 (``{"s": seq, "q": sql, "p": params, "k": key}``, JSON, written before the
serializer) are still read, so a journal left by an older version replays; new lines are
always format 2, and compaction rewrites old ones as new.

A journal has one owner. ``open`` takes an exclusive ``flock`` on ``<path>.lock`` (a file of its
own: compaction replaces the journal file, which would drop a lock held on it) and raises
:class:`dbresilience.JournalLocked` when another queue holds it, in this process or another. The
lock goes with the process, however it ends (SIGKILL included), so a crashed owner never blocks
the next one.
"""

from __future__ import annotations

import binascii
import errno
import fcntl
import json
import os
import re
import threading
from pathlib import Path
from typing import Any, NamedTuple

from dbresilience._errors import JournalCorrupt, JournalLocked
from dbresilience._serialize import DEFAULT, Serializer
from dbresilience._validate import one_of

__all__ = ["Journal", "Record", "format_line", "is_stream_url", "parse_line"]

#: ``journal=`` values naming a Redis stream (:mod:`dbresilience._journal_redis_async`)
STREAM_SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://", "redis+cluster://")


def is_stream_url(journal: object) -> bool:
    """Whether a ``journal=`` value names a Redis stream rather than a file."""
    return isinstance(journal, str) and journal.startswith(STREAM_SCHEMES)


_FSYNC_POLICIES = ("always", "batch", "never")


class Record(NamedTuple):
    """One submitted write: its sequence number, SQL, parameters and idempotency key.

    A named tuple rather than a frozen dataclass: it is made on every ``submit``, and a tuple
    is built in half the time.
    """

    seq: int
    sql: str
    params: Any
    key: str | None


_BASE64 = re.compile(rb"[A-Za-z0-9+/]*={0,2}")


def format_line(record: Record, serializer: Serializer = DEFAULT) -> bytes:
    """*record* as one journal line (what :func:`parse_line` reads back), newline included.

    Raises ``TypeError`` naming the type of a parameter *serializer* cannot give back as it is.
    """
    body = serializer.dumps([record.seq, record.sql, record.params, record.key])
    return b"2 %s %s" % (serializer.name.encode(), binascii.b2a_base64(body, newline=True))


def parse_line(line: bytes, serializer: Serializer = DEFAULT) -> Record | int:
    """One journal line: a :class:`Record`, or a watermark (an int). Anything else, whatever
    the bytes (the file is input like any other), raises ``ValueError`` saying why."""
    if line.startswith(b"2 "):
        return _parse_v2(line, serializer)
    try:
        item = json.loads(line)
    except (ValueError, RecursionError):  # bad UTF-8, bad JSON, absurdly deep JSON
        raise ValueError("not a journal line") from None
    if not isinstance(item, dict):
        raise ValueError("not a JSON object")
    if "w" in item:
        mark = item["w"]
        if type(mark) is not int or mark < 0:
            raise ValueError("a watermark that is not a sequence number")
        return mark
    return _record(item.get("s"), item.get("q"), item.get("p"), item.get("k"))


def _parse_v2(line: bytes, serializer: Serializer) -> Record:
    _, name, body = line.split(b" ", 2) if line.count(b" ") >= 2 else (b"", b"", b"")
    if name != serializer.name.encode():
        shown = name.decode(errors="replace")[:32]
        raise ValueError(
            f"a record written with serializer {shown!r}, not {serializer.name!r}: "
            "open the journal with the serializer that wrote it"
        )
    if not _BASE64.fullmatch(body):
        raise ValueError("a record that is not base64")
    try:
        item = serializer.loads(binascii.a2b_base64(body))
    except Exception:  # untrusted bytes: whatever the serializer raises is a corrupt line
        raise ValueError("a record the serializer cannot read") from None
    if type(item) is not list or len(item) != 4:
        raise ValueError("a record that is not [seq, sql, params, key]")
    return _record(*item)


def _record(seq: object, statement: object, params: object, key: object) -> Record:
    if type(seq) is not int or seq < 1:
        raise ValueError("a record without a sequence number")
    if not isinstance(statement, str):
        raise ValueError("a record without a statement")
    if params is not None and not isinstance(params, list | dict):
        raise ValueError("a record whose parameters are neither a list nor an object")
    if key is not None and not isinstance(key, str):
        raise ValueError("a record whose key is not a string")
    return Record(seq, statement, params, key)


class Journal:
    """The append-only file behind a write queue (thread-safe)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        fsync: str = "batch",
        serializer: Serializer = DEFAULT,
    ) -> None:
        self.fsync = one_of("fsync", fsync, _FSYNC_POLICIES)
        self.serializer = serializer
        self.path = Path(path)
        self._fd: int | None = None
        self._owner_fd: int | None = None  # the flock on <path>.lock
        self._lock = threading.Lock()
        self.bytes = 0
        self.torn = 0  # torn lines dropped on open

    def open(self) -> tuple[list[Record], int]:
        """Open (creating) the file; return the writes not yet done and the highest seq seen.

        Raises :class:`dbresilience.JournalLocked` when another queue has it open.
        """
        self._take_ownership()
        try:
            return self._open()
        except BaseException:
            self._release_ownership()
            raise

    def _take_ownership(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise JournalLocked(
                f"journal {self.path} is open in another write queue (process {owner}); "
                "one journal has one owner: give each process its own path"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._owner_fd = fd

    def _release_ownership(self) -> None:
        if self._owner_fd is not None:
            os.close(self._owner_fd)  # closing the descriptor drops the flock
            self._owner_fd = None

    def _open(self) -> tuple[list[Record], int]:
        pending: dict[int, Record] = {}
        done = 0
        top = 0
        if self.path.exists():
            data = self.path.read_bytes()
            lines = data.split(b"\n")
            for n, line in enumerate(lines):
                if not line:
                    continue
                try:
                    item = parse_line(line, self.serializer)
                except ValueError as exc:
                    if n == len(lines) - 1:  # the last line, cut short by a crash
                        self.torn += 1
                        continue
                    raise JournalCorrupt(
                        f"journal {self.path} is corrupt at line {n + 1} ({exc}); "
                        "move it aside to start afresh"
                    ) from None
                if isinstance(item, int):
                    done = max(done, item)
                else:
                    pending[item.seq] = item
                    top = max(top, item.seq)
            top = max(top, done)
        replay = [pending[s] for s in sorted(pending) if s > done]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.torn:  # rewrite without the torn tail so later lines are not glued to it
            self._rewrite(replay, done)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.bytes = os.fstat(self._fd).st_size
        return replay, top

    def append(self, record: Record) -> None:
        """Write *record* to the OS (and to disk with ``fsync="always"``); raises on failure."""
        self._write(format_line(record, self.serializer), self.fsync == "always")

    def append_at(self, record: Record) -> int:
        """Like :meth:`append`, returning the byte offset where the record's line starts."""
        with self._lock:
            offset = self.bytes
        self.append(record)
        return offset

    def read_from(self, offset: int, limit: int, min_seq: int) -> tuple[list[Record], int]:
        """Up to *limit* records with ``seq >= min_seq`` from byte *offset* on, in file order,
        and the offset just past the last line read (a line still being written is left)."""
        records: list[Record] = []
        with open(self.path, "rb") as f:
            f.seek(offset)
            while len(records) < limit:
                line = f.readline()
                if not line.endswith(b"\n"):
                    break
                offset += len(line)
                try:
                    item = parse_line(line.rstrip(b"\n"), self.serializer)
                except ValueError as exc:
                    raise JournalCorrupt(f"journal {self.path} is corrupt ({exc})") from None
                if isinstance(item, Record) and item.seq >= min_seq:
                    records.append(item)
        return records, offset

    def mark_done(self, seq: int) -> None:
        """Record that every write up to *seq* is done (committed or set aside)."""
        self._write(b'{"w":%d}\n' % seq, self.fsync != "never")

    def sync(self) -> None:
        """Flush to disk (the "batch" policy calls this before each database batch)."""
        if self.fsync == "batch" and self._fd is not None:
            os.fsync(self._fd)

    def _write(self, data: bytes, sync: bool) -> None:
        """Append *data* whole, or not at all: a short write (a full disk, a file-size limit)
        is cut off again, so that no torn line ends up between two whole ones."""
        with self._lock:
            if self._fd is None:
                raise ValueError("the journal is not open")
            try:
                written = os.write(self._fd, data)
            except OSError:
                os.ftruncate(self._fd, self.bytes)
                raise
            if written != len(data):
                os.ftruncate(self._fd, self.bytes)
                raise OSError(errno.ENOSPC, f"journal {self.path}: short write, nothing kept")
            self.bytes += written
            if sync:
                os.fsync(self._fd)

    def compact(self, pending: list[Record], done: int) -> None:
        """Rewrite the file with only *pending* writes (atomic rename)."""
        with self._lock:
            self._rewrite(pending, done)
            if self._fd is not None:
                os.close(self._fd)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self.bytes = os.fstat(self._fd).st_size

    def _rewrite(self, pending: list[Record], done: int) -> None:
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        with open(tmp, "wb") as f:
            f.write(b'{"w":%d}\n' % done)
            for r in pending:
                f.write(format_line(r, self.serializer))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def close(self) -> None:
        """Close the file and give up ownership (idempotent)."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._release_ownership()
