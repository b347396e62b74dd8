"""The client-side backstop for deadlines: one thread per pool, one heap of deadlines.

A server-side ``statement_timeout`` does nothing when the backend is frozen (SIGSTOP, a stuck
I/O) or the network silently drops packets, and psycopg's cancel path waits again without bound.
So when a call's deadline passes, the watchdog shuts down the connection's socket: the blocked
read (sync) or the awaited readiness (async) returns at once with an error, the pool discards
the connection, and the caller gets :class:`QueryTimeout`.

Cost per query: one small list, one ``heappush`` under a lock, one state change under the lock
when the query ends. No timer or thread per query; the thread sleeps until the earliest live
deadline. Finished entries are dropped lazily (and the heap is rebuilt when most are dead).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import socket
import threading
import time

__all__ = ["Watchdog"]

logger = logging.getLogger("dbresilience")

_ACTIVE, _DONE, _FIRED = 0, 1, 2
# entry layout: [deadline, sequence number, socket fd, state]
_DEADLINE, _SEQ, _FD, _STATE = 0, 1, 2, 3
Entry = list[float | int]


def shutdown_fd(fd: int) -> None:
    """Shut down (both ways) the socket behind *fd* without closing *fd* itself."""
    try:
        dup = os.dup(fd)
    except OSError:
        return
    try:
        with socket.socket(fileno=dup) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        with contextlib.suppress(OSError):
            os.close(dup)


class Watchdog:
    """Shuts down the socket of any watched connection whose deadline passes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.fired = 0
        self._heap: list[Entry] = []
        self._dead = 0
        # watch() and done() take the bare lock (a C-level context manager); the thread
        # waits on a Condition over the same lock
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def start(self) -> None:
        """Start the thread (idempotent)."""
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(
                target=self._run, name=f"dbr-watchdog-{self.name}", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread; watched connections are left alone."""
        with self._cond:
            thread, self._thread = self._thread, None
            self._stopping = True
            self._cond.notify()
        if thread is not None:
            thread.join(5)

    def watch(self, fd: int, deadline: float) -> Entry:
        """Watch the socket *fd* until :meth:`done`; returns the entry to pass to it."""
        entry: Entry = [deadline, next(self._seq), fd, _ACTIVE]
        with self._lock:
            heap = self._heap
            heapq.heappush(heap, entry)
            if heap[0] is entry:  # earlier than what the thread sleeps towards
                self._cond.notify()
            if self._dead > 1024 and self._dead * 2 > len(heap):
                self._heap = [e for e in heap if e[_STATE] == _ACTIVE]
                heapq.heapify(self._heap)
                self._dead = 0
        return entry

    def done(self, entry: Entry) -> bool:
        """Stop watching; True when the deadline had already fired (the socket is shut)."""
        with self._lock:
            if entry[_STATE] == _FIRED:
                return True
            entry[_STATE] = _DONE
            self._dead += 1
            return False

    def _run(self) -> None:
        cond = self._cond
        with cond:
            while not self._stopping:
                heap = self._heap
                while heap and heap[0][_STATE] != _ACTIVE:
                    heapq.heappop(heap)
                    self._dead = max(0, self._dead - 1)
                if not heap:
                    cond.wait()
                    continue
                wait = heap[0][_DEADLINE] - time.monotonic()
                if wait > 0:
                    cond.wait(wait)
                    continue
                entry = heapq.heappop(heap)
                entry[_STATE] = _FIRED
                self.fired += 1
                # Under the lock: the owner cannot mark it done and close (and the fd be
                # reused) before the shutdown happened.
                shutdown_fd(int(entry[_FD]))
                logger.warning(
                    "pool %r: deadline passed during a query; connection shut down", self.name
                )
