"""The client-side backstop for deadlines: one thread per pool, one heap of deadlines.

A server-side ``statement_timeout`` does nothing when the backend is frozen (SIGSTOP, a stuck
I/O) or the network silently drops packets, and psycopg's cancel path waits again without bound.
So when a call's deadline passes, the watchdog shuts down the connection's socket: the blocked
read (sync) or the awaited readiness (async) returns at once with an error, the pool discards
the connection, and the caller gets :class:`QueryTimeout`.

What it promises besides:

- **It never dies.** A deadline that is infinite or centuries away is slept towards an hour at
  a time; one that is not a number has passed; an error while firing an entry (a descriptor
  that is not a socket, a log handler that raises) is logged and the loop goes on.
- **It shuts down only the connection's own socket.** When the server hangs up, libpq closes
  the connection's descriptor, and the number may be reused at once by any other socket of the
  process (a Redis client's, say) while the entry is still live. So :meth:`Watchdog.watch`
  duplicates the descriptor and the watchdog acts on its duplicate, which nobody else can close
  or reuse; the duplicate is closed by :meth:`Watchdog.done` or when the entry fires.
- **It outlives the calls it watches.** :meth:`Watchdog.stop` (a pool closing) lets the thread
  end once no entry is live; an entry watched after it starts the thread again.

Cost per query: one ``dup`` and one ``close`` (two system calls, about 1 µs), one small list,
one ``heappush`` under a lock, one state change under the lock when the query ends. No timer or
thread per query; the thread sleeps until the earliest live deadline. Finished entries are
dropped lazily (and the heap is rebuilt when most are dead).
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
from typing import Any

__all__ = ["Watchdog"]

logger = logging.getLogger("dbresilience")

_ACTIVE, _DONE, _FIRED = 0, 1, 2
# entry layout: [deadline, sequence number, descriptor, state, inode]; inode is 0 when the
# descriptor is the watchdog's own duplicate, else the socket's inode (see _watch_fallback)
_DEADLINE, _SEQ, _FD, _STATE, _INODE = 0, 1, 2, 3, 4
Entry = list[Any]

# Any deadline at or past this (monotonic seconds: about 31 million years of uptime) means
# "practically never"; infinity and absurd values become it, so the heap holds only numbers.
_FAR = 1e15
# The longest single sleep: a far deadline is approached an hour at a time (threading refuses
# a wait past threading.TIMEOUT_MAX, and an OverflowError here would stop every deadline).
_LONGEST_WAIT = 3600.0


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
        """Start the thread (idempotent; undoes a :meth:`stop` whose thread still runs)."""
        with self._lock:
            self._stopping = False
            if self._thread is None:
                self._spawn()

    def stop(self) -> None:
        """Let the thread end once no entry is live; live entries still fire on time.

        Returns at once: a pool closing with calls in flight must not wait for them, and those
        calls must still end by their deadlines.
        """
        with self._lock:
            self._stopping = True
            self._cond.notify()

    def watch(self, fd: int, deadline: float) -> Entry:
        """Watch the socket *fd* until :meth:`done`; returns the entry to pass to it.

        *deadline* is on the :func:`time.monotonic` clock; infinity (or anything past
        ``_FAR``) means never, NaN means now. Never raises for a bad *fd*: the entry then
        watches nothing.
        """
        if not deadline < _FAR:
            deadline = _FAR if deadline >= _FAR else 0.0  # NaN: an unknown deadline has passed
        try:
            entry: Entry = [deadline, next(self._seq), os.dup(fd), _ACTIVE, 0]
        except OSError:
            entry = _watch_fallback(fd, deadline, next(self._seq))
        with self._lock:
            heap = self._heap
            heapq.heappush(heap, entry)
            if heap[0] is entry:  # earlier than what the thread sleeps towards
                self._cond.notify()
            if self._thread is None:
                self._spawn()  # stopped (the pool closed) or never started
            if self._dead > 1024 and self._dead * 2 > len(heap):
                self._heap = [e for e in heap if e[_STATE] == _ACTIVE]
                heapq.heapify(self._heap)
                self._dead = 0
        return entry

    def done(self, entry: Entry) -> bool:
        """Stop watching; True when the deadline had already fired (the socket is shut).

        Idempotent: a second call changes nothing and says the same.
        """
        with self._lock:
            state = entry[_STATE]
            if state != _ACTIVE:
                return bool(state == _FIRED)
            entry[_STATE] = _DONE
            self._dead += 1
            if not entry[_INODE]:
                try:  # noqa: SIM105 - the hot path: suppress() costs a context manager
                    os.close(entry[_FD])  # under the lock: the thread may be firing it
                except OSError:
                    pass
            return False

    # --- the thread -------------------------------------------------------------------------

    def _spawn(self) -> None:
        """Start the thread (the caller holds the lock); out of threads, the next watch retries."""
        thread = threading.Thread(target=self._run, name=f"dbr-watchdog-{self.name}", daemon=True)
        try:
            thread.start()
        except RuntimeError:
            logger.exception("pool %r: could not start the deadline watchdog", self.name)
            return
        self._thread = thread

    def _run(self) -> None:
        """Fire every entry whose deadline passes, until stopped with nothing left to watch.

        Nothing stops this loop but that: one bad entry or a broken log handler would otherwise
        end every deadline of the pool for the rest of the process.
        """
        me = threading.current_thread()
        while True:
            try:
                with self._cond:
                    fired = self._step()
                    if fired is None:
                        if self._thread is me:
                            self._thread = None
                        return
                if fired:
                    logger.warning(
                        "pool %r: deadline passed during a query; connection shut down", self.name
                    )
            except BaseException:  # there is nobody to raise to: log and go on
                with contextlib.suppress(BaseException):
                    logger.exception("pool %r: the deadline watchdog recovered", self.name)
                time.sleep(0.01)  # never a busy loop, whatever keeps failing

    def _step(self) -> bool | None:
        """Under the lock: wait for, or fire, the earliest live entry. True when one fired;
        None when stopped and nothing is left to watch."""
        heap = self._heap
        while heap and heap[0][_STATE] != _ACTIVE:
            heapq.heappop(heap)
            self._dead = max(0, self._dead - 1)
        if not heap:
            if self._stopping:
                return None
            self._cond.wait()
            return False
        wait = heap[0][_DEADLINE] - time.monotonic()
        if wait > 0:
            self._cond.wait(min(wait, _LONGEST_WAIT))
            return False
        entry = heapq.heappop(heap)
        entry[_STATE] = _FIRED
        self.fired += 1
        # Under the lock: the owner cannot close the descriptor meanwhile (done() waits).
        try:
            _shut(entry)
        except Exception:  # one bad entry must not stop the others
            logger.exception("pool %r: could not shut a connection down", self.name)
        return True


def _watch_fallback(fd: int, deadline: float, seq: int) -> Entry:
    """An entry for *fd* when it cannot be duplicated (the process is out of descriptors).

    The watchdog then acts on *fd* itself, after checking that it is still the same socket
    (its inode): that leaves a window of a few instructions for a reuse, where the duplicate
    leaves none. A descriptor that is not open gives an entry that watches nothing.
    """
    try:
        inode = os.fstat(fd).st_ino
    except (OSError, ValueError, TypeError):
        return [deadline, seq, -1, _DONE, -1]
    return [deadline, seq, fd, _ACTIVE, inode or -1]


def _shut(entry: Entry) -> None:
    """Shut down (both ways) the socket of a fired *entry*, and close its duplicate.

    A socket the server already closed, or a descriptor that is not a socket, is left as is.
    """
    fd, inode = entry[_FD], entry[_INODE]
    if inode:  # not ours: act only if the number still names the socket it named
        if os.fstat(fd).st_ino != inode:
            return
        sock = socket.socket(fileno=fd)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            sock.detach()
        return
    try:
        sock = socket.socket(fileno=fd)
    except OSError:  # not a socket
        os.close(fd)
        return
    with sock, contextlib.suppress(OSError):  # closes the duplicate
        sock.shutdown(socket.SHUT_RDWR)
