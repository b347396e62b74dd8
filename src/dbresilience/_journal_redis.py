# WARNING: generated from _journal_redis_async.py by tools/async_to_sync.py: DO NOT EDIT.
# Change the async source, then run `python tools/async_to_sync.py`.
"""A write queue journal on Redis Streams, shared by every instance: ``StreamJournal``.

The second implementation of the queue's journal (the first is the local file of
:mod:`dbresilience._journal`). The file journal records one process's own writes; this one is a
stream every instance appends to and one instance at a time drains:

- ``append`` puts the write in a bounded memory outbox; a sender ``XADD``\\ s the outbox in
  pipelined batches (one Lua call per batch, which also enforces ``max_len``). The threaded
  twin's ``append`` returns once its write is in the stream; the asyncio twin's (a plain
  method: it cannot wait) returns at once, and ``flush()`` waits for the stream.
- Redis unavailable, or the stream at ``max_len`` (backpressure: nothing unapplied is ever
  trimmed): the write stays in the bounded outbox, said once in the log, and goes into the
  stream when Redis takes it again. A full outbox refuses new writes (``QueueFull``).
- Draining: the instance holding the stream's lease (``SET NX PX``, renewed by a task) reads
  through the consumer group (``XREADGROUP``); after it takes the lease over from an instance
  that died, it first claims what that one left pending (``XAUTOCLAIM``, in stream order). The
  queue commits each batch with its ledger, then this journal ``XACK``\\ s and ``XDEL``\\ s the
  batch (one Lua call, with the dead letters of the writes set aside): the stream holds exactly
  the writes not yet applied, so its length is the backlog.
- One drainer at a time keeps the stream's order: per-key order holds across instances.

Every key of one stream shares the hash tag ``{stream}``, so they live in one slot of a Redis
Cluster. Anything read from Redis is untrusted: an entry that does not parse is moved to the
dead-letter stream with its reason, never applied and never dropped in silence.
"""

from __future__ import annotations

import collections
import contextlib
import os
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import redis as aredis

from dbresilience._acompat import Signal, Worker, join_worker, sleep, spawn
from dbresilience._classify import classify
from dbresilience._errors import QueueFull, WriteTooLarge
from dbresilience._events import logger
from dbresilience._journal import Journal, Record, parse_line
from dbresilience._journal_redis_base import (
    APPEND,
    DONE,
    GONE,
    GROUP,
    LEASE,
    LEFT_AT_CLOSE,
    REDIS_MAX_BULK,
    RELEASE,
    REPLAY,
    SEND_BATCH,
    TOO_LARGE,
    TOO_LARGE_HELD,
    UNACKED,
    encode,
    producer_key,
    stream_keys,
    text,
)
from dbresilience._redact import redact_url
from dbresilience._serialize import DEFAULT, Serializer

__all__ = ["StreamJournal", "make_client"]


def make_client(url: str, timeout: float) -> Any:
    """A redis-py client for *url*: ``redis://`` / ``rediss://`` / ``unix://``,
    ``redis+sentinel://host:port[,host:port]/service[/db]`` (the service's master) or
    ``redis+cluster://host:port`` (a Redis Cluster; a stream's keys share one hash tag)."""
    options: dict[str, Any] = {
        "socket_connect_timeout": timeout,
        "socket_timeout": timeout,
        "retry_on_timeout": False,
        "health_check_interval": 0,
    }
    if url.startswith("redis+sentinel://"):
        parts = urllib.parse.urlsplit(url)
        hosts = []
        for item in parts.netloc.rpartition("@")[2].split(","):
            host, _, port = item.partition(":")
            hosts.append((host, int(port or 26379)))
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ValueError("a redis+sentinel:// journal names its service: …/service[/db]")
        db = int(path[1]) if len(path) > 1 else 0
        password = urllib.parse.unquote(parts.password) if parts.password else None
        sentinels: Any = aredis.Sentinel  # redis-py ships it untyped
        sentinel = sentinels(hosts, socket_timeout=timeout, password=password)
        return sentinel.master_for(path[0], db=db, **options)
    if url.startswith("redis+cluster://"):
        options.pop("health_check_interval")
        return aredis.RedisCluster.from_url("redis://" + url[len("redis+cluster://") :], **options)
    return aredis.Redis.from_url(url, **options)


class StreamJournal:
    """The Redis stream behind one or more write queues (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        stream: str,
        max_len: int,
        max_buffer: int,
        lease_ttl: float,
        on_full: str,
        block_timeout: float,
        drain: bool,
        serializer: Serializer = DEFAULT,
        fallback: str | os.PathLike[str] | None = None,
        fsync: str = "never",
        timeout: float = 2.0,
        dead_max: int = 100000,
    ) -> None:
        """Settings only, validated by the queue; no I/O."""
        self.url = url
        self.stream = stream
        self.key, self.dead_key, self.lease_key = stream_keys(stream)
        self.max_len = max_len
        self.max_buffer = max_buffer
        self.lease_ttl = lease_ttl
        self.on_full = on_full
        self.block_timeout = block_timeout
        self.drain = drain
        self.serializer = serializer
        # the outbox's copy on disk: what submit accepted survives this process while Redis
        # cannot take it (a local file journal, see dbresilience._journal)
        self._file = None if fallback is None else Journal(fallback, fsync, serializer)
        self._file_seq = 0
        self.timeout = timeout
        self.dead_max = dead_max
        self.consumer = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.producer_key = producer_key(stream, self.consumer)
        self._lock = threading.Lock()
        # (the write numbered in the fallback file, its payload), in submission order
        self._outbox: collections.deque[tuple[Record, str]] = collections.deque()
        self._send_lock = threading.Lock()  # one sender at a time (threaded twin)
        self._appended = 0  # tickets handed out
        self._sent = 0  # tickets in the stream (in order)
        self._stalled = False  # Redis down or the stream full: the outbox holds the writes
        self._why: str | None = None
        self._last_id: str | None = None  # the last entry this instance added
        # the largest payload Redis takes (its proto-max-bulk-len, asked once it answers; its
        # default until then): a larger one would cut the connection at every send, forever
        self._max_bytes = REDIS_MAX_BULK
        self._max_bytes_known = False
        self._wakeup = Signal()  # the sender waits on it
        self._progress = Signal()  # appenders and flush wait on it
        self._stop = Signal()  # the lease keeper waits on it between renewals: closing
        self._closing = False
        self._workers: list[Worker] = []
        self._client: Any = None
        self._append: Any = None
        self._holding = False  # this instance holds the drain lease
        # (monotonic) when that lease may have expired in Redis: it was set or renewed after
        # the renewal was sent. A process frozen past it (SIGSTOP, a suspended VM, a long
        # pause) may run its worker before its lease keeper: it must not read or commit then
        self._held_until = 0.0
        self._lease_error: str | None = None  # the lease keeper's failure, said once
        self._claim_from: str | None = None  # XAUTOCLAIM cursor after taking the lease
        self._group_ready = False
        self._ids: dict[int, bytes] = {}  # local seq -> entry id, for the batch in flight
        self._seq = 0
        self._read_error: str | None = None
        self.counters = {"sent": 0, "received": 0, "claimed": 0, "dead_lettered": 0, "too_large": 0}

    # --- lifecycle ---------------------------------------------------------------------------

    def open(self) -> StreamJournal:
        """Make the client and start the sender (and, to drain, the lease keeper). Never raises
        a Redis error: an unreachable Redis is logged once and retried."""
        if self._file is not None:  # what a previous process held: into the stream first
            replay, self._file_seq = self._file.open()
            with self._lock:
                for record in replay:
                    self._outbox.append((record, encode(record, self.serializer)))
                    self._appended += 1
            if replay:
                logger.warning(
                    "write queue: %d writes held in the fallback journal go to the stream",
                    len(replay),
                )
        self._client = make_client(self.url, self.timeout)
        self._append = self._client.register_script(APPEND)
        self._closing = False
        self._workers = [spawn(self._sender, "dbr-stream-send")]
        if self.drain:
            self._workers.append(spawn(self._lease_keeper, "dbr-stream-lease"))
        return self

    def close(self, timeout: float) -> int:
        """Send the outbox within *timeout*, release the lease, stop; the count left unsent
        (lost: it was only in memory)."""
        self.flushed(time.monotonic() + timeout, drained=False)
        self._closing = True
        self._wakeup.notify()
        self._progress.notify()
        self._stop.notify()
        for worker in self._workers:
            join_worker(worker, self.timeout + 2)
        if self._holding:
            with contextlib.suppress(aredis.RedisError):
                self._client.eval(RELEASE, 1, self.lease_key, self.consumer)
            self._holding = False
        with self._lock:
            left = len(self._outbox)
        if self.drain:  # this queue drained: what it leaves waits for another drainer
            with contextlib.suppress(aredis.RedisError):
                backlog = int(self._client.xlen(self.key))
                if backlog:
                    logger.warning(LEFT_AT_CLOSE, backlog, self.stream)
        if not left and self._sent:  # every append answered: the marker has no more use
            with contextlib.suppress(aredis.RedisError):
                self._client.delete(self.producer_key)
        with contextlib.suppress(aredis.RedisError):
            self._client.close()
        if self._file is not None:
            self._file.close()
            if left:
                logger.warning(
                    "write queue: %d writes kept in the fallback journal for the next open", left
                )
            return 0
        return left

    # --- appending ---------------------------------------------------------------------------

    def append(self, record: Record) -> None:
        """Queue *record* for the stream. The threaded twin returns once it is in the stream,
        or held in the outbox while Redis cannot take it (down, or the stream full).

        Raises ``TypeError`` for parameters JSON cannot carry and :class:`QueueFull` when the
        outbox holds ``max_buffer`` writes (``on_full="block"`` first waits ``block_timeout``).
        """
        payload = encode(record, self.serializer)
        size = len(payload.encode())
        if size > self._max_bytes:
            raise WriteTooLarge(TOO_LARGE % (size, self._max_bytes))
        with self._lock:
            if len(self._outbox) >= self.max_buffer and self.on_full != "block":
                raise QueueFull(
                    f"{self.max_buffer} writes wait for the stream ({self._why or 'busy'})"
                )
        deadline = time.monotonic() + self.block_timeout
        while True:
            seen = self._progress.count
            with self._lock:
                if len(self._outbox) < self.max_buffer:
                    break
            left = deadline - time.monotonic()
            if left <= 0:
                why = f"{self.block_timeout:.2f} s ({self._why or 'busy'})"
                raise QueueFull(f"{self.max_buffer} writes still wait for the stream after {why}")
            self._progress.wait(seen, left)
        with self._lock:
            if self._file is not None:  # raises OSError (a full disk): not accepted
                self._file_seq += 1
                record = Record(self._file_seq, record.sql, record.params, record.key)
                try:
                    self._file.append(record)
                except BaseException:
                    self._file_seq -= 1
                    raise
            self._appended += 1
            ticket = self._appended
            self._outbox.append((record, payload))
        if not self._stalled:  # sent from this thread: no hand-off to the sender
            self._send_once()
        if self._sent < ticket:
            self._wakeup.notify()
        # in the stream, or held while Redis cannot take it; bounded: a sender that is
        # slow to answer leaves the write in the outbox, which it will send
        deadline = time.monotonic() + self.timeout * 2
        while self._sent < ticket and (not self._stalled) and (not self._closing):
            seen = self._progress.count
            if self._sent >= ticket or self._stalled:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._progress.wait(seen, left)

    def _sender(self) -> None:
        delay = 0.05
        while True:
            seen = self._wakeup.count
            with self._lock:
                empty = not self._outbox
            if empty:
                if self._closing:
                    return
                self._wakeup.wait(seen, 1.0)
                continue
            sent = self._send_once()
            if sent is None:  # Redis unavailable
                if self._closing:
                    return
                self._wakeup.wait(self._wakeup.count, delay)
                delay = min(delay * 2, 1.0)
                continue
            delay = 0.05
            if sent is False:  # the stream is full: backpressure
                sleep(0.05)

    def _send_once(self) -> bool | None:
        """Send the head of the outbox in one script call: True when all of it went in, False
        when the stream is full, None when Redis does not answer."""
        if not self._send_lock.acquire(timeout=self.timeout * 2):
            return False  # another thread is sending (slowly): the wait decides
        try:
            if not self._max_bytes_known:
                try:
                    self._learn_max_bytes()
                except aredis.ResponseError as exc:
                    self._stall(self._refusal(exc))
                    return None
                except aredis.RedisError as exc:
                    self._stall(f"Redis unavailable: {type(exc).__name__}")
                    return None
            with self._lock:
                self._set_aside_too_large()
                chunk = _take(self._outbox, SEND_BATCH, self._max_bytes)
                first = self._sent + 1  # the head's ticket
            if not chunk:
                return True
            try:
                reply = self._append(
                    keys=[self.key, self.producer_key],
                    args=[self.max_len, first, *[payload for _, payload in chunk]],
                )
            except aredis.ResponseError as exc:  # Redis answers, and refuses: say why
                self._stall(self._refusal(exc))
                return None
            except aredis.RedisError as exc:
                self._max_bytes_known = False  # a write over the limit cuts the connection
                self._stall(f"Redis unavailable: {type(exc).__name__}")
                return None
            skipped, known, ids = (int(reply[0]), text(reply[1]), reply[2])
            n = skipped + len(ids)
            with self._lock:
                for _ in range(n):
                    self._outbox.popleft()
                self._sent += n
                if ids:
                    self._last_id = text(ids[-1])
                elif known:  # added by a call whose reply never came
                    self._last_id = known
                if n and self._file is not None:
                    self._file_done(chunk[n - 1][0].seq)
            self.counters["sent"] += n
            if n < len(chunk):
                self._stall(f"the stream holds max_len={self.max_len} writes")
                return False
            if self._stalled:
                with self._lock:
                    held = len(self._outbox)
                logger.warning(
                    "write queue: Redis takes writes again; the %d held ones are going in", held
                )
                self._stalled = False
                self._why = None
            self._progress.notify()
            return True
        finally:
            self._send_lock.release()

    def _learn_max_bytes(self) -> None:
        """Ask Redis the largest value it takes (``CONFIG GET proto-max-bulk-len``); a Redis
        that refuses CONFIG (a managed one) keeps the default."""
        try:
            reply = self._client.config_get("proto-max-bulk-len")
            value = reply.get("proto-max-bulk-len") or reply.get(b"proto-max-bulk-len")
            if value is not None:
                self._max_bytes = max(1024, int(value) - 1024)  # room for the command's framing
        except aredis.ResponseError as exc:
            if "WRONGTYPE" in str(exc):
                raise
        self._max_bytes_known = True

    def _set_aside_too_large(self) -> None:
        """Under the lock: writes at the head of the outbox larger than Redis takes (its limit
        lowered after they were accepted) leave it, logged as lost, so that they never hold
        back the writes behind them."""
        while self._outbox and len(self._outbox[0][1].encode()) > self._max_bytes:
            record, payload = self._outbox.popleft()
            self._sent += 1  # its ticket is spent: the marker skips nothing for it
            self.counters["too_large"] += 1
            logger.error(TOO_LARGE_HELD, len(payload.encode()), self._max_bytes)
            if self._file is not None:
                self._file_done(record.seq)
            self._progress.notify()

    def _file_done(self, seq: int) -> None:
        """Under the lock: the fallback file's writes up to *seq* are in the stream."""
        assert self._file is not None
        try:
            self._file.mark_done(seq)
            if self._file.bytes > 16 * 1024 * 1024:
                self._file.compact([record for record, _ in self._outbox], seq)
        except OSError as exc:  # the next send writes the watermark; a replay re-sends (keys)
            logger.error("write queue: the fallback journal cannot record progress: %s", exc)

    def _refusal(self, exc: BaseException) -> str:
        """What an error reply to the append says, for the log and ``stream_stalled``: the key
        and the fault (a value of the wrong type at the stream's key), never the URL."""
        said = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if said.startswith("WRONGTYPE"):
            return f"WRONGTYPE at key {self.key!r}: it holds a value that is not a stream"
        return f"Redis refuses the append to {self.key!r}: {said[:100]}"

    def _stall(self, why: str) -> None:
        if not self._stalled or why != self._why:
            logger.warning(
                "write queue: %s; writes are held in memory (up to %d) until it takes them",
                why,
                self.max_buffer,
            )
        self._stalled = True
        self._why = why
        self._progress.notify()

    def flushed(self, deadline: float, *, drained: bool) -> bool:
        """Whether, by *deadline* (monotonic), everything appended so far is in the stream,
        and with *drained* also applied (no entry up to this instance's last one is left)."""
        with self._lock:
            target = self._appended
        while self._sent < target:
            seen = self._progress.count
            if self._sent >= target:
                break
            left = deadline - time.monotonic()
            if left <= 0 or self._closing:
                return False
            self._wakeup.notify()
            self._progress.wait(seen, min(left, 0.05))
        if not drained or self._last_id is None:
            return True
        while True:
            try:
                left_over = self._client.xrange(self.key, "-", self._last_id, count=1)
                if not left_over:
                    return True
            except aredis.RedisError:
                pass
            if time.monotonic() >= deadline:
                return False
            sleep(min(0.02, max(0.0, deadline - time.monotonic())))

    # --- draining ----------------------------------------------------------------------------

    def _lease_keeper(self) -> None:
        ttl_ms = max(1, int(self.lease_ttl * 1000))
        while not self._closing:
            try:
                asked = time.monotonic()
                got = self._client.eval(LEASE, 1, self.lease_key, self.consumer, ttl_ms)
                if got == 2:
                    self._claim_from = "0-0"  # first, what the previous holder left pending
                self._holding = got != 0
                self._held_until = asked + self.lease_ttl
                self._lease_error = None
            except aredis.RedisError as exc:
                if self._lease_error is None:  # WRONGTYPE: garbage at the key
                    logger.warning(
                        "write queue: cannot take the drain lease of stream %r (%s)",
                        self.stream,
                        f"{type(exc).__name__}: {str(exc)[:100]}"
                        if isinstance(exc, aredis.ResponseError)
                        else type(exc).__name__,
                    )
                self._lease_error = type(exc).__name__
                self._holding = False
            # its own signal (closing only): the sender's, notified on every append, would
            # keep the lease from being renewed while writes flow
            self._stop.wait(self._stop.count, self.lease_ttl / 3)

    def holds_lease(self) -> bool:
        """Whether this instance holds the drain lease now, by its own clock: renewed less
        than ``lease_ttl`` ago (a renewal that has not run since, whatever held it up, says
        no: another instance may drain by now)."""
        return self._holding and time.monotonic() < self._held_until

    def receive_batch(self, limit: int, gather: float) -> list[Record]:
        """A batch to apply: up to *limit* writes, in stream order: what arrives within
        *gather* seconds (the local queue's ``flush_interval``) of the first one. Two reads a
        batch, whatever the rate: a read per arriving write would take the cores and the GIL
        from this process's own submits."""
        batch = self.receive(limit, gather)
        if not batch or len(batch) >= limit or self._claim_from is not None:
            return batch
        sleep(gather)
        if not self._closing:
            batch += self.receive(limit - len(batch), 0.001)
        return batch

    def reclaim(self) -> None:
        """Forget the batch in hand and claim every pending entry again before reading new
        ones (nothing is in flight when the worker calls :meth:`receive`, so whatever is
        pending is orphaned: a reply lost with a connection, a worker restarted mid-batch)."""
        self._ids.clear()
        self._claim_from = "0-0"

    def receive(self, limit: int, wait: float) -> list[Record]:
        """Up to *limit* writes to apply, in stream order, waiting up to *wait* seconds for
        one; empty when this instance does not hold the lease or Redis does not answer."""
        if not self.holds_lease():
            sleep(min(wait, self.lease_ttl / 3) if wait > 0 else 0)
            return []
        try:
            return self._receive(limit, wait)
        except BaseException:
            # XREADGROUP may have delivered entries whose reply never arrived (Redis restarted,
            # the connection cut): they are pending for this consumer and would never be read
            # again with ">"
            self.reclaim()
            raise

    def _receive(self, limit: int, wait: float) -> list[Record]:
        try:
            if not self._group_ready:
                self._create_group()
            if self._claim_from is not None:
                reply = self._client.xautoclaim(
                    self.key, GROUP, self.consumer, 0, self._claim_from, count=limit
                )
                cursor, entries = (text(reply[0]), reply[1])
                gone = [entry_id for entry_id in (reply[2] if len(reply) > 2 else [])]
                if gone:  # deleted while pending: nothing to apply
                    self._client.xack(self.key, GROUP, *gone)
                self._claim_from = None if cursor == "0-0" else cursor
                if self._claim_from is None:
                    self._forget_consumers()
                entries = [e for e in entries if e is not None]
                self.counters["claimed"] += len(entries)
            else:
                # the read ends before the lease may: an entry delivered to a consumer that no
                # longer holds the lease is pending with it, out of the next holder's claim
                held = self._held_until - time.monotonic() - min(0.05, self.lease_ttl / 10)
                if held < 0.002:
                    return []
                block = max(1, int(min(wait, 1.0, held) * 1000))
                reply = self._client.xreadgroup(
                    GROUP, self.consumer, {self.key: ">"}, count=limit, block=block
                )
                entries = reply[0][1] if reply else []
                if isinstance(reply, dict):  # RESP3
                    entries = next(iter(reply.values()), [[]])[0] if reply else []
        except aredis.ResponseError as exc:
            # the stream or its group is gone (NOGROUP; UNBLOCKED: deleted during a blocking
            # read): made again. What it held and was not applied is lost: said, never silent
            if "NOGROUP" in str(exc) or "UNBLOCKED" in str(exc):
                if self._group_ready:
                    logger.error(GONE, self.stream)
                self._group_ready = False
                self._claim_from = "0-0"
                return []
            raise
        except aredis.RedisError as exc:
            if self._read_error is None:
                logger.warning("write queue: cannot read the stream (%s)", type(exc).__name__)
            self._read_error = type(exc).__name__
            self._holding = False
            self.reclaim()
            sleep(min(wait, 0.2))
            return []
        if self._read_error is not None:
            logger.warning("write queue: reading the stream again")
            self._read_error = None
        return self._decode(entries)

    def _forget_consumers(self) -> None:
        """After a takeover's claim: drop the group's other consumers that hold nothing (the
        instances that drained before; each had a name of its own), so that a fleet of
        short-lived drainers does not grow the group without bound."""
        for consumer in self._client.xinfo_consumers(self.key, GROUP):
            name = text(consumer.get("name", b""))
            if name != self.consumer and int(consumer.get("pending", 1)) == 0:
                self._client.xgroup_delconsumer(self.key, GROUP, name)

    def _create_group(self) -> None:
        try:
            self._client.xgroup_create(self.key, GROUP, id="0", mkstream=True)
        except aredis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def _decode(self, entries: Sequence[Any]) -> list[Record]:
        records: list[Record] = []
        bad: list[tuple[bytes, str, str]] = []
        for entry_id, fields in entries:
            payload = fields.get(b"d") if isinstance(fields, dict) else None
            try:
                if not isinstance(payload, bytes):
                    raise ValueError("an entry without a payload")
                parsed = parse_line(payload, self.serializer)
                if isinstance(parsed, int):
                    raise ValueError("a watermark, not a write")
            except ValueError as exc:
                bad.append((entry_id, (payload or b"")[:4096].decode(errors="replace"), str(exc)))
                continue
            self._seq += 1
            records.append(Record(self._seq, parsed.sql, parsed.params, parsed.key))
            self._ids[self._seq] = entry_id
        if bad:
            logger.error("write queue: %d unreadable stream entries dead-lettered", len(bad))
            args: list[Any] = [GROUP, self.dead_max, len(bad)]
            for entry_id, payload, why in bad:
                args += [payload, f"unreadable entry: {why}", "unreadable", text(entry_id)]
            args += [entry_id for entry_id, _, _ in bad]
            self._client.eval(DONE, 2, self.key, self.dead_key, *args)
            self.counters["dead_lettered"] += len(bad)
        self.counters["received"] += len(records)
        return records

    def done(
        self,
        batch: Sequence[Record],
        set_aside: Sequence[tuple[Record, BaseException]],
        give_up: Callable[[], bool],
    ) -> None:
        """*batch* is committed (its *set_aside* writes with their errors): dead-letter those,
        then ``XACK`` and ``XDEL`` the batch, retried until Redis takes it or *give_up*()
        (then the entries stay pending: whoever drains next applies them again, which the
        ledger makes harmless for keyed writes)."""
        args: list[Any] = [GROUP, self.dead_max, len(set_aside)]
        for record, exc in set_aside:
            source = self._ids.get(record.seq, b"")
            args += [
                encode(record, self.serializer),
                f"{type(exc).__name__}: {exc}",
                classify(exc).code,
                source,
            ]
        ids = [self._ids.pop(record.seq) for record in batch if record.seq in self._ids]
        args += ids
        if not ids and (not set_aside):
            return
        delay = 0.05
        said = False
        while True:
            try:
                self._client.eval(DONE, 2, self.key, self.dead_key, *args)
                self.counters["dead_lettered"] += len(set_aside)
                if said:
                    logger.warning("write queue: the stream takes acknowledgements again")
                return
            except aredis.RedisError as exc:
                if not said:  # a stall said once: Redis down, or garbage at a key (WRONGTYPE)
                    said = True
                    logger.error(
                        UNACKED,
                        len(ids),
                        len(set_aside),
                        self.dead_key,
                        f"{type(exc).__name__}: {str(exc)[:100]}"
                        if isinstance(exc, aredis.ResponseError)
                        else type(exc).__name__,
                    )
                if give_up():
                    logger.error(
                        "write queue: %d committed writes not acknowledged in the stream (%s)",
                        len(ids),
                        type(exc).__name__,
                    )
                    return
                sleep(delay)
                delay = min(delay * 2, 1.0)

    # --- inspection --------------------------------------------------------------------------

    def length(self) -> int:
        """How many writes the stream holds (not yet applied)."""
        return int(self._client.xlen(self.key))

    def dead_letters(self, count: int = 1000) -> list[dict[str, Any]]:
        """The dead-letter stream's first *count* entries: id, sql, params, key, error, code."""
        out: list[dict[str, Any]] = []
        for entry_id, fields in self._client.xrange(self.dead_key, count=count):
            item: dict[str, Any] = {"id": text(entry_id)}
            try:
                parsed = parse_line(fields.get(b"d", b""), self.serializer)
                if isinstance(parsed, Record):
                    item.update(sql=parsed.sql, params=parsed.params, key=parsed.key)
            except ValueError:
                item.update(sql=None, params=None, key=None)
            item["error"] = text(fields.get(b"error", b""))
            item["code"] = text(fields.get(b"code", b""))
            out.append(item)
        return out

    def replay(self, ids: Sequence[str]) -> tuple[int, int]:
        """Move the dead letters *ids* back to the end of the stream while it holds fewer than
        ``max_len`` entries: ``(moved, held back)``, the ones held back (no room) left in the
        dead-letter stream; an id not found counts in neither."""
        if not ids:
            return (0, 0)
        reply = self._client.eval(REPLAY, 2, self.key, self.dead_key, self.max_len, *ids)
        return (int(reply[0]), int(reply[1]))

    def stats(self) -> dict[str, Any]:
        """Counters: ``stream_buffered`` (held in memory), ``stream_stalled`` (why, or None),
        ``stream_sent``, ``stream_received``, ``stream_claimed``, ``stream_dead_lettered``,
        ``stream_too_large`` (held writes dropped: larger than Redis takes), ``stream_draining``
        (this instance holds the lease)."""
        with self._lock:
            buffered = len(self._outbox)
        return {
            "stream_buffered": buffered,
            "stream_stalled": self._why,
            "stream_draining": self._holding,
            **{f"stream_{k}": v for k, v in self.counters.items()},
        }

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {redact_url(self.url)} stream={self.stream!r}>"


def _take(
    items: collections.deque[tuple[Record, str]], n: int, max_bytes: int
) -> list[tuple[Record, str]]:
    """The first *n* items, fewer to stay within *max_bytes* in all (at least the first, and
    never one larger than *max_bytes*): one call's arguments stay within what Redis reads."""
    out: list[tuple[Record, str]] = []
    total = 0
    for item in items:
        size = len(item[1].encode())
        if len(out) >= n or size > max_bytes or (out and total + size > max_bytes):
            break
        total += size
        out.append(item)
    return out
