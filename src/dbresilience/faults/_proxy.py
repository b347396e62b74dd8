"""The TCP fault proxy: :class:`FaultProxy` and its :class:`ProxyMode`."""

from __future__ import annotations

import contextlib
import enum
import logging
import queue
import selectors
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from dbresilience.faults._common import _Fixture

logger = logging.getLogger("dbresilience.faults")

_CHUNK = 65536
_MAX_BUFFER = 4 * 1024 * 1024


class ProxyMode(enum.Enum):
    """What a :class:`FaultProxy` does with traffic."""

    PASS = "pass"  # noqa: S105 - forward everything (not a password)
    DOWN = "down"  # nothing listens: new connections are refused, live ones were reset
    SILENT = "silent"  # new connections are accepted and never answered; live ones flow
    FROZEN = "frozen"  # nothing moves on any connection, new or live (a partition)


@dataclass(eq=False)
class _Command:
    """A mode switch for the loop thread; the caller waits on *done* and re-raises *error*."""

    fn: Callable[[], None]
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


@dataclass(eq=False)
class _Link:
    client: socket.socket
    upstream: socket.socket | None = None
    held: bool = False
    # bytes waiting to be written, keyed by the socket they go to
    out: dict[socket.socket, bytearray] = field(default_factory=dict)
    # (due time, destination, data) chunks delayed by added latency
    delayed: deque[tuple[float, socket.socket, bytes]] = field(default_factory=deque)
    closed: bool = False


class FaultProxy(_Fixture):
    """A TCP proxy on ``127.0.0.1`` in front of *upstream* that can break on command.

    ``down()`` refuses new connections and resets live ones; ``silent()`` accepts new ones and
    never answers them (a connect-timeout); ``freeze()`` stops forwarding on every connection (a
    partition: no FIN, no RST, just silence); ``reset()`` resets live connections once;
    ``latency(s)`` delays every chunk; ``restore()`` goes back to forwarding (held data and held
    connections resume, as TCP would after a partition heals). Each call returns once the change
    is in force. Use as a context manager or call ``start()`` / ``close()``.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = listen_host
        self.port = listen_port
        self.mode = ProxyMode.PASS
        self.delay = 0.0
        self.accepted = 0
        self.resets = 0
        self._links: list[_Link] = []
        self._selector: selectors.BaseSelector | None = None
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._commands: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopping = False

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        """Start listening and forwarding; returns self."""
        if self._thread is not None:
            return self
        self._stopping = False
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._open_listener()
        self._thread = threading.Thread(target=self._run, name="dbr-fault-proxy", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Reset every connection, stop listening and stop the thread. Idempotent."""
        if self._thread is None:
            return
        assert self._wake_r is not None
        assert self._wake_w is not None
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._thread.join(5)
        self._thread = None
        self._wake_r.close()
        self._wake_w.close()

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` where clients should connect."""
        return self.host, self.port

    def dsn(self, conninfo: str) -> str:
        """*conninfo* (a libpq DSN or URL) with host and port pointing at this proxy."""
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        params = conninfo_to_dict(conninfo)
        params.pop("hostaddr", None)
        params.update(host=self.host, port=str(self.port))
        return make_conninfo("", **params)

    @property
    def live_connections(self) -> int:
        """Connections currently open through the proxy."""
        return sum(1 for link in self._links if not link.closed)

    # --- faults ---------------------------------------------------------------------------

    def restore(self) -> None:
        """Forward again: reopen the listener if down and release every held connection."""
        self._call(self._do_restore)

    def down(self) -> None:
        """Stop listening (new connections are refused) and reset every live connection."""
        self._call(self._do_down)

    def silent(self) -> None:
        """Accept new connections but never forward or answer them; live ones keep flowing."""
        self._call(self._do_silent)

    def freeze(self) -> None:
        """Stop forwarding on every connection, live and new, without closing anything."""
        self._call(self._do_freeze)

    def reset(self) -> None:
        """Reset (RST) every live connection now; the mode does not change."""
        self._call(self._reset_all)

    def latency(self, seconds: float) -> None:
        """Delay every forwarded chunk by *seconds* (0 to stop)."""
        self._call(lambda: setattr(self, "delay", max(0.0, float(seconds))))

    # --- the loop thread ------------------------------------------------------------------

    def _call(self, fn: Callable[[], None]) -> None:
        if self._thread is None or self._wake_w is None:
            raise RuntimeError("the proxy is not started")
        if not self._thread.is_alive():
            raise RuntimeError("the fault proxy's thread has stopped")
        command = _Command(fn)
        self._commands.put(command)
        with contextlib.suppress(BlockingIOError):  # a full wake buffer already wakes it
            self._wake_w.send(b"x")
        if not command.done.wait(5):
            raise RuntimeError("the fault proxy did not answer within 5 s")
        if command.error is not None:
            raise command.error

    def _open_listener(self) -> None:
        assert self._selector is not None
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(512)
        listener.setblocking(False)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._selector.register(listener, selectors.EVENT_READ, "listen")

    def _close_listener(self) -> None:
        if self._listener is not None:
            assert self._selector is not None
            self._selector.unregister(self._listener)
            self._listener.close()
            self._listener = None

    def _do_restore(self) -> None:
        if self._listener is None:
            self._open_listener()
        self.mode = ProxyMode.PASS
        for link in list(self._links):
            if link.held:
                link.held = False
                if link.upstream is None:
                    self._connect_upstream(link)
                self._update(link)

    def _do_down(self) -> None:
        self.mode = ProxyMode.DOWN
        self._close_listener()
        self._reset_all()

    def _do_silent(self) -> None:
        self.mode = ProxyMode.SILENT
        for link in self._links:  # live connections flow (a frozen one thaws); new ones wait
            if link.held and link.upstream is not None:
                link.held = False
                self._update(link)

    def _do_freeze(self) -> None:
        self.mode = ProxyMode.FROZEN
        for link in self._links:
            link.held = True
            self._update(link)

    def _reset_all(self) -> None:
        for link in list(self._links):
            self._close_link(link, reset=True)
            self.resets += 1

    def _run(self) -> None:
        """The loop: nothing but close() ends it (one bad event resets one connection).

        Events of one ``select`` round are handled in order, and an earlier one may change
        what a later one refers to: a command (``down()``) closes the listener whose accept
        event is next, a freeze holds a link whose read event is next, a closed socket's
        number is reused by a new one. So every event is checked against the current state
        before it is acted on.
        """
        assert self._selector is not None
        selector = self._selector
        while not self._stopping:
            timeout = 0.5
            dues = [link.delayed[0][0] for link in self._links if link.delayed and not link.held]
            if dues:
                timeout = max(0.0, min(min(dues) - time.monotonic(), timeout))
            try:
                events = selector.select(timeout)
            except InterruptedError:
                continue
            for key, mask in events:
                try:
                    self._handle(key, mask)
                except Exception:
                    logger.exception("fault proxy: an event failed; its connection is reset")
                    tag = key.data
                    if isinstance(tag, tuple):
                        with contextlib.suppress(Exception):
                            self._close_link(tag[0], reset=True)
            try:
                self._release_delayed()
            except Exception:
                logger.exception("fault proxy: releasing delayed data failed")
            self._links = [link for link in self._links if not link.closed]
        for link in list(self._links):
            with contextlib.suppress(Exception):
                self._close_link(link, reset=True)
        with contextlib.suppress(Exception):
            self._close_listener()
        selector.close()

    def _handle(self, key: selectors.SelectorKey, mask: int) -> None:
        tag = key.data
        if tag == "wake":
            self._drain_commands()
        elif tag == "listen":
            if key.fileobj is self._listener:  # not closed (down) by a command this round
                self._accept()
        else:
            link, sock = tag
            if link.closed or link.held:  # reset, or frozen, by an earlier event this round
                return
            if mask & selectors.EVENT_READ:
                self._read(link, sock)
            if mask & selectors.EVENT_WRITE and not link.closed and not link.held:
                self._write(link, sock)

    def _drain_commands(self) -> None:
        assert self._wake_r is not None
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                command.fn()
            except Exception as exc:  # the caller raises it; the loop goes on
                command.error = exc
            finally:
                command.done.set()

    def _accept(self) -> None:
        listener = self._listener
        if listener is None:
            return
        while True:
            try:
                client, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            try:
                client.setblocking(False)
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # the client reset it already
                client.close()
                continue
            self.accepted += 1
            link = _Link(client=client, held=self.mode in (ProxyMode.SILENT, ProxyMode.FROZEN))
            link.out[client] = bytearray()
            self._links.append(link)
            if not link.held:
                self._connect_upstream(link)
            self._update(link)

    def _connect_upstream(self, link: _Link) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=2.0)
        except OSError:
            # what a client of a proxy sees when the server behind it is gone
            self._close_link(link, reset=True)
            return
        try:
            upstream.setblocking(False)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            upstream.close()
            self._close_link(link, reset=True)
            return
        link.upstream = upstream
        link.out[upstream] = bytearray()

    def _peer(self, link: _Link, sock: socket.socket) -> socket.socket | None:
        return link.upstream if sock is link.client else link.client

    def _update(self, link: _Link) -> None:
        """(Re)register both sockets of *link* for what they need now."""
        assert self._selector is not None
        if link.closed:
            return
        for sock in (link.client, link.upstream):
            if sock is None:
                continue
            events = 0
            peer = self._peer(link, sock)
            if not link.held:
                if peer is not None and len(link.out[peer]) < _MAX_BUFFER:
                    events |= selectors.EVENT_READ
                if link.out[sock]:
                    events |= selectors.EVENT_WRITE
            try:
                key = self._selector.get_key(sock)
            except KeyError:
                key = None
            if key is None and events:
                self._selector.register(sock, events, (link, sock))
            elif key is not None and not events:
                self._selector.unregister(sock)
            elif key is not None and key.events != events:
                self._selector.modify(sock, events, (link, sock))

    def _read(self, link: _Link, sock: socket.socket) -> None:
        try:
            data = sock.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close_link(link, reset=True)
            return
        if not data:
            self._flush_and_close(link)
            return
        peer = self._peer(link, sock)
        if peer is None:
            return
        if self.delay:
            link.delayed.append((time.monotonic() + self.delay, peer, data))
        else:
            link.out[peer] += data
        self._update(link)

    def _write(self, link: _Link, sock: socket.socket) -> None:
        buf = link.out[sock]
        try:
            sent = sock.send(buf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close_link(link, reset=True)
            return
        del buf[:sent]
        self._update(link)

    def _release_delayed(self) -> None:
        now = time.monotonic()
        for link in self._links:
            if link.held or link.closed:
                continue
            moved = False
            while link.delayed and link.delayed[0][0] <= now:
                _, dest, data = link.delayed.popleft()
                link.out[dest] += data
                moved = True
            if moved:
                self._update(link)

    def _flush_and_close(self, link: _Link) -> None:
        for sock, buf in link.out.items():
            if buf:
                with contextlib.suppress(OSError):
                    sock.setblocking(True)
                    sock.settimeout(0.2)
                    sock.sendall(buf)
        self._close_link(link, reset=False)

    def _close_link(self, link: _Link, *, reset: bool) -> None:
        if link.closed:
            return
        link.closed = True
        assert self._selector is not None
        for sock in (link.client, link.upstream):
            if sock is None:
                continue
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
            if reset:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
