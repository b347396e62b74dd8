"""Real faults for tests and demos: a TCP fault proxy and throwaway PostgreSQL and Redis servers.

Nothing here is imported by the rest of the library. It exists so that a service's own tests (and
``dbresilience demo``) can break a real database the ways production does: refused connections,
reset connections, a server that accepts and never answers, a network that stops forwarding on
live connections, a stopped or restarted server, a backend frozen with ``SIGSTOP``.

The proxy is a small hand-written one because no toxiproxy-like server can be installed from the
package registries this project may use; it is one selector thread, so every mode change happens
between two socket operations and resets are real RSTs (a linger-0 close from the owning thread).
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import importlib.util
import logging
import os
import pwd
import queue
import re
import selectors
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

__all__ = [
    "FaultProxy",
    "ProxyMode",
    "TemporaryPostgres",
    "TemporaryRedis",
    "client_backends",
    "find_pg_bindir",
    "free_port",
    "terminate_backends",
]

_log = logging.getLogger("dbresilience.faults")
_CHUNK = 65536
_MAX_BUFFER = 4 * 1024 * 1024


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on *host*."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ProxyMode(enum.Enum):
    """What a :class:`FaultProxy` does with traffic."""

    PASS = "pass"  # noqa: S105 - forward everything (not a password)
    DOWN = "down"  # nothing listens: new connections are refused, live ones were reset
    SILENT = "silent"  # new connections are accepted and never answered; live ones flow
    FROZEN = "frozen"  # nothing moves on any connection, new or live (a partition)


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


class FaultProxy:
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
        self._commands: queue.SimpleQueue[tuple[Callable[[], None], threading.Event]] = (
            queue.SimpleQueue()
        )
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

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

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
        self._call(lambda: setattr(self, "mode", ProxyMode.SILENT))

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
        done = threading.Event()
        self._commands.put((fn, done))
        self._wake_w.send(b"x")
        if not done.wait(5):
            raise RuntimeError("the fault proxy did not answer within 5 s")

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
        assert self._selector is not None
        selector = self._selector
        while not self._stopping:
            timeout = 0.5
            if self.delay:
                now = time.monotonic()
                dues = [link.delayed[0][0] for link in self._links if link.delayed]
                if dues:
                    timeout = max(0.0, min(min(dues) - now, timeout))
            for key, mask in selector.select(timeout):
                tag = key.data
                if tag == "wake":
                    self._drain_commands()
                elif tag == "listen":
                    self._accept()
                else:
                    link, sock = tag
                    if link.closed:
                        continue
                    if mask & selectors.EVENT_READ:
                        self._read(link, sock)
                    if mask & selectors.EVENT_WRITE and not link.closed:
                        self._write(link, sock)
            self._release_delayed()
            self._links = [link for link in self._links if not link.closed]
        for link in list(self._links):
            self._close_link(link, reset=True)
        self._close_listener()
        selector.close()

    def _drain_commands(self) -> None:
        assert self._wake_r is not None
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass
        while True:
            try:
                fn, done = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                fn()
            finally:
                done.set()

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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
        upstream.setblocking(False)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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


# --- throwaway servers ----------------------------------------------------------------------


def find_pg_bindir(prefer_embedded: bool = False) -> Path:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Looks at ``$DBR_PG_BINDIR``, then (first when *prefer_embedded*) the ``pgserver`` package's
    bundled server, then ``pg_config --bindir`` and ``/usr/lib/postgresql/<newest>/bin``.
    Raises ``FileNotFoundError`` naming the places it looked.
    """
    candidates: list[Path] = []
    env = os.environ.get("DBR_PG_BINDIR")
    if env:
        candidates.append(Path(env))
    embedded: list[Path] = []
    # find_spec, not import: importing pgserver has side effects (platformdirs, atexit hooks)
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin:
        embedded.append(Path(spec.origin).parent / "pginstall" / "bin")
    system: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            system.append(Path(out.stdout.strip()))
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    system.extend(versions)
    candidates += embedded + system if prefer_embedded else system + embedded
    for path in candidates:
        if (path / "initdb").exists() and (path / "pg_ctl").exists():
            return path
    raise FileNotFoundError(
        "no PostgreSQL server binaries found (looked at $DBR_PG_BINDIR, pgserver, pg_config, "
        "/usr/lib/postgresql/*/bin); install the server or `pip install dbresilience[embedded]`"
    )


def _server_user() -> str | None:
    """PostgreSQL refuses to run as root: pick an unprivileged account when we are root.

    ``postgres`` (or pgserver's own account) when it exists, else ``nobody``; on a machine with
    neither, a system account ``postgres`` is created (root only) and a WARNING says so.
    """
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "pgserver", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    try:
        subprocess.run(
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "postgres"],
            check=True,
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(
            "PostgreSQL refuses to run as root and this machine has no unprivileged account "
            f"(postgres, nobody) to run it as; creating one failed ({exc}): create one, e.g. "
            "`useradd --system postgres`, or run as a non-root user"
        ) from None
    _log.warning("created the system account 'postgres' to run throwaway PostgreSQL servers")
    return "postgres"


def _chown_tree(path: Path, user: str | None) -> None:
    if user is None:
        return
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


def _reachable(path: Path, user: str | None, *, mode: str = "-x") -> bool:
    """Whether *user* can reach *path* (``test -x``: search or execute permission on it and every
    folder above it), checked as that user because ``os.access`` answers for root."""
    if user is None:
        return os.access(path, os.X_OK)
    result = subprocess.run(
        ["test", mode, str(path)], user=user, capture_output=True, check=False, timeout=30
    )
    return result.returncode == 0


# A Unix socket's path holds at most 107 bytes; the server's is <dir>/.s.PGSQL.<port>.
_MAX_SOCKET_DIR = 80
_SCRATCH: dict[str | None, Path] = {}
_SCRATCH_LOCK = threading.Lock()


def _scratch_root(user: str | None) -> Path:
    """A private folder (made once per process, removed at exit) for data folders, sockets and
    copied binaries, in a place the server's account can reach.

    Tries ``$DBR_TMPDIR``, the temporary folder (``$TMPDIR``), ``/tmp``, ``/var/tmp`` and
    ``/dev/shm`` in turn: as root, a ``TMPDIR`` of mode 0700 (or a clone under ``/root``) is out of
    the ``postgres`` account's reach, and a long path would not fit a Unix socket's name.
    """
    with _SCRATCH_LOCK:
        existing = _SCRATCH.get(user)
        if existing is not None and existing.is_dir():
            return existing
        candidates: list[str] = []
        if os.environ.get("DBR_TMPDIR"):
            candidates.append(os.environ["DBR_TMPDIR"])
        candidates += [tempfile.gettempdir(), "/tmp", "/var/tmp", "/dev/shm"]  # noqa: S108
        tried: list[str] = []
        for candidate in dict.fromkeys(candidates):
            parent = Path(candidate)
            if not parent.is_dir() or len(str(parent)) > _MAX_SOCKET_DIR - 20:
                tried.append(f"{candidate} (missing or path too long for a socket)")
                continue
            try:
                base = Path(tempfile.mkdtemp(prefix="dbr-", dir=parent))
            except OSError as exc:
                tried.append(f"{candidate} ({exc.strerror})")
                continue
            _chown_tree(base, user)
            if _reachable(base, user):
                atexit.register(shutil.rmtree, base, True)
                _SCRATCH[user] = base
                return base
            shutil.rmtree(base, ignore_errors=True)
            tried.append(f"{candidate} (the {user!r} account cannot reach it)")
        raise RuntimeError(
            "no folder for a throwaway PostgreSQL server that its account "
            f"{user or 'the current user'!r} can reach; tried: {'; '.join(tried)}. "
            "Set DBR_TMPDIR to a folder every user can traverse (mode 0755 or 01777 all the way up)"
        )


def _library_dirs(bindir: Path) -> list[Path]:
    """Folders outside the installation that its binaries load libraries from through a
    ``$ORIGIN``-relative run path (wheels built by auditwheel, such as pgserver's, keep libpq in
    ``site-packages/<name>.libs``). Read from the ELF string table: the run path is stored there
    as plain text."""
    found: list[Path] = []
    for name in ("postgres", "initdb", "pg_ctl"):
        with contextlib.suppress(OSError):
            data = (bindir / name).read_bytes()
            for match in re.findall(rb"\$ORIGIN[^\x00:]*", data):
                rel = match.decode(errors="replace").removeprefix("$ORIGIN").lstrip("/")
                path = (bindir / rel).resolve()
                if path.is_dir() and not path.is_relative_to(bindir.parent.resolve()):
                    found.append(path)
    return list(dict.fromkeys(found))


def _server_bindir(bindir: Path, user: str | None) -> Path:
    """*bindir*, or a copy of its installation the server's account can run.

    As root the server runs as another account, which cannot run binaries inside a checkout or a
    virtual environment under a private folder (mode 0700, ``/root``). Then the installation
    (``bin``, ``lib``, ``share``: PostgreSQL finds them relative to its own binary) and the library
    folders its run path names are copied once per process into the scratch folder, keeping their
    relative places so that ``$ORIGIN`` run paths still resolve.
    """
    if user is None or _reachable(bindir / "postgres", user):
        return bindir
    with _SCRATCH_LOCK:
        copy = _BINDIR_COPIES.get(str(bindir))
    if copy is not None and (copy / "postgres").exists():
        return copy
    install = bindir.resolve().parent
    libraries = _library_dirs(bindir.resolve())
    common = Path(os.path.commonpath([install, *libraries]))
    target = Path(tempfile.mkdtemp(prefix="pginstall-", dir=_scratch_root(user)))
    for folder in (install, *libraries):
        shutil.copytree(
            folder, target / folder.relative_to(common), symlinks=True, dirs_exist_ok=True
        )
    _chown_tree(target, user)
    copy = target / install.relative_to(common) / bindir.name
    if not _reachable(copy / "postgres", user):
        raise RuntimeError(
            f"the PostgreSQL binaries in {bindir} cannot be run by the {user!r} account, "
            f"not even copied to {copy}; set DBR_PG_BINDIR to an installation it can run"
        )
    _log.info("copied the PostgreSQL binaries from %s to %s for the %r account", bindir, copy, user)
    with _SCRATCH_LOCK:
        _BINDIR_COPIES[str(bindir)] = copy
    return copy


_BINDIR_COPIES: dict[str, Path] = {}
_TEMPLATES: dict[tuple[str, str | None], Path] = {}
_TEMPLATES_LOCK = threading.Lock()


def _template(bindir: Path, user: str | None) -> Path:
    """An initdb'd data folder, made once per process and copied for every server (fast)."""
    key = (str(bindir), user)
    with _TEMPLATES_LOCK:
        existing = _TEMPLATES.get(key)
        if existing is not None and (existing / "PG_VERSION").exists():
            return existing
        base = Path(tempfile.mkdtemp(prefix="template-", dir=_scratch_root(user)))
        data = base / "data"
        _chown_tree(base, user)
        result = subprocess.run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ],
            user=user,
            check=False,
            capture_output=True,
            timeout=120,
        )
        if result.returncode != 0:
            shutil.rmtree(base, ignore_errors=True)
            raise RuntimeError(
                f"initdb ({bindir}) failed with exit status {result.returncode}: "
                f"{result.stderr.decode(errors='replace').strip()[-2000:]}"
            )
        _TEMPLATES[key] = data
        return data


_CLIENT_BACKENDS = (
    "select pid from pg_stat_activity where backend_type = 'client backend' "
    "and pid <> pg_backend_pid() and datname = any(%s)"
)


def client_backends(dsn: str, databases: list[str] | None = None) -> list[int]:
    """The pids of the client backends on the server behind *dsn* (not the one asking), in
    *databases* (default: every database)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        if databases is None:
            databases = [str(r[0]) for r in conn.execute("select datname from pg_database")]
        rows = conn.execute(_CLIENT_BACKENDS, (databases,)).fetchall()
    return [int(r[0]) for r in rows]


def terminate_backends(dsn: str, databases: list[str] | None = None) -> int:
    """``pg_terminate_backend`` every client backend on the server behind *dsn* (not the one
    asking), in *databases* (default: every database); returns how many."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        if databases is None:
            databases = [str(r[0]) for r in conn.execute("select datname from pg_database")]
        rows = conn.execute(
            f"select pg_terminate_backend(pid) from ({_CLIENT_BACKENDS}) b",  # noqa: S608 - a constant
            (databases,),
        ).fetchall()
    return len(rows)


class TemporaryPostgres:
    """A throwaway PostgreSQL cluster on ``127.0.0.1`` and a free port, for breaking on purpose.

    ``start()`` makes the cluster (a copy of a per-process ``initdb`` template) and starts it;
    ``stop(mode)``, ``restart()`` and ``kill()`` control it; ``freeze(pid)`` / ``thaw(pid)`` send
    ``SIGSTOP`` / ``SIGCONT`` to one backend; ``close()`` stops it and deletes every file.
    Durability is off (``fsync=off``): this is for tests and demos only. The trust-auth superuser
    is ``postgres`` and the database ``postgres``; ``dsn`` is a libpq connection string.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        bindir: Path | str | None = None,
        prefer_embedded: bool = False,
        settings: Mapping[str, str | int] | None = None,
    ) -> None:
        self.bindir = Path(bindir) if bindir else find_pg_bindir(prefer_embedded)
        self.port = port or free_port()
        self.settings: dict[str, str | int] = {
            "listen_addresses": "127.0.0.1",
            "max_connections": 300,
            "shared_buffers": "32MB",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "log_min_messages": "fatal",
        }
        self.settings.update(settings or {})
        self._user = _server_user()
        self._base: Path | None = None
        self._bin: Path | None = None  # bindir, or a copy the server's account can run

    @property
    def data_dir(self) -> Path:
        """The cluster's data folder (exists once started)."""
        if self._base is None:
            raise RuntimeError("the cluster has not been started")
        return self._base / "data"

    @property
    def dsn(self) -> str:
        """``host=127.0.0.1 port=… user=postgres dbname=postgres``."""
        return self.conninfo()

    def conninfo(self, dbname: str = "postgres") -> str:
        """A libpq connection string for *dbname* on this cluster."""
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def _pg_ctl(self, *args: str, timeout: float = 60) -> None:
        subprocess.run(
            [str((self._bin or self.bindir) / "pg_ctl"), "-D", str(self.data_dir), *args],
            user=self._user,
            check=True,
            capture_output=True,
            timeout=timeout,
        )

    def start(self) -> TemporaryPostgres:
        """Create the cluster on first use, then start it and wait until it accepts connections."""
        if self._base is None:
            self._bin = _server_bindir(self.bindir, self._user)
            root = _scratch_root(self._user)
            self._base = Path(tempfile.mkdtemp(prefix="pg-", dir=root))
            shutil.copytree(_template(self._bin, self._user), self._base / "data")
            (self._base / "data").chmod(0o700)
            _chown_tree(self._base, self._user)
        # pg_ctl hands these to a shell: quote every value (paths may hold spaces)
        options = " ".join(f"-c {shlex.quote(f'{k}={v}')}" for k, v in self.settings.items())
        options += f" -p {self.port} -k {shlex.quote(str(self._base))}"
        log = str(self._base / "server.log")
        self._pg_ctl("-w", "-t", "60", "-l", log, "-o", options, "start", timeout=90)
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``"fast"`` (backends get 57P01), ``"immediate"`` (crash-like)."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"mode must be smart, fast or immediate, got {mode!r}")
        self._pg_ctl("-w", "-t", "60", "-m", mode, "stop")

    def kill(self) -> None:
        """Stop at once, as a crash would (``immediate`` mode)."""
        self.stop("immediate")

    def restart(self, mode: str = "fast") -> None:
        """Stop, then start again on the same port."""
        self.stop(mode)
        self.start()

    @property
    def running(self) -> bool:
        """True while the postmaster is up."""
        if self._base is None:
            return False
        result = subprocess.run(
            [str((self._bin or self.bindir) / "pg_ctl"), "-D", str(self.data_dir), "status"],
            user=self._user,
            capture_output=True,
            check=False,
        )
        return result.returncode == 0

    @staticmethod
    def freeze(pid: int) -> None:
        """Freeze one process (a backend: ``select pg_backend_pid()``) with ``SIGSTOP``."""
        os.kill(pid, signal.SIGSTOP)

    @staticmethod
    def thaw(pid: int) -> None:
        """Let a frozen process run again (``SIGCONT``)."""
        os.kill(pid, signal.SIGCONT)

    def close(self) -> None:
        """Stop the server (immediately) and delete its files. Idempotent."""
        if self._base is None:
            return
        if self.running:
            with contextlib.suppress(subprocess.SubprocessError):
                self.stop("immediate")
        shutil.rmtree(self._base, ignore_errors=True)
        self._base = None

    def __enter__(self) -> TemporaryPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TemporaryPostgres(port={self.port}, running={self._base is not None})"


class TemporaryRedis:
    """A throwaway ``redis-server`` on ``127.0.0.1`` and a free port, keeping nothing on disk.

    ``start()`` / ``stop()`` may be called repeatedly (same port); ``close()`` stops it and
    deletes its folder. ``url`` is ``redis://127.0.0.1:<port>/0``.
    """

    def __init__(self, *, port: int | None = None, binary: str | None = None) -> None:
        found = binary or shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(found).exists():
            raise FileNotFoundError("redis-server is not installed")
        self.binary = found
        self.port = port or free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="dbr-redis-"))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> TemporaryRedis:
        """Start the server and wait (up to 10 s) until it answers PING."""
        if self._proc is not None and self._proc.poll() is None:
            return self
        self._proc = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self._dir),
                "--daemonize", "no",
                "--loglevel", "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s,
            ):
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within 10 s")

    def stop(self) -> None:
        """Stop the server (SIGKILL: nothing to save) and wait for it to exit."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait(10)
        self._proc = None

    def close(self) -> None:
        """Stop the server and delete its folder. Idempotent."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> TemporaryRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
