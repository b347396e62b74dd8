"""A throwaway ``redis-server``: :class:`TemporaryRedis`."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from dbresilience.faults import _reaper
from dbresilience.faults._common import _Fixture, free_port, wait_until


class TemporaryRedis(_Fixture):
    """A throwaway ``redis-server`` on ``127.0.0.1`` and a free port, keeping nothing on disk.

    ``start()`` / ``stop()`` may be called repeatedly (same port); ``close()`` stops it and
    deletes its folder. ``url`` is ``redis://127.0.0.1:<port>/0``. With ``persist=True`` it
    keeps an append-only file fsynced on every write, so a restart (even after SIGKILL) finds
    everything it acknowledged.
    """

    def __init__(
        self, *, port: int | None = None, binary: str | None = None, persist: bool = False
    ) -> None:
        found = binary or shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(found).exists():
            raise FileNotFoundError("redis-server is not installed")
        self.binary = found
        self.port = port or free_port()
        self.persist = persist
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
                "--appendonly", "yes" if self.persist else "no",
                "--appendfsync", "always",
                "--dir", str(self._dir),
                "--daemonize", "no",
                "--loglevel", "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self._track(self._proc.pid)
        if wait_until(self._answers, 10, 0.05):
            return self
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within 10 s")

    def _answers(self) -> bool:
        """True once it answers PING."""
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s,
        ):
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return True
        return False

    def stop(self) -> None:
        """Stop the server (SIGKILL: nothing to save) and wait for it to exit."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait(10)
        self._proc = None
        self._track(None)

    def _track(self, pid: int | None) -> None:
        """Tell this process's watcher (see ``_reaper``) to kill the server and delete its
        folder if this process dies without closing it."""
        _reaper.track(f"redis:{self._dir}", marker=str(self._dir), pid=pid, dirs=(self._dir,))

    def close(self) -> None:
        """Stop the server and delete its folder. Idempotent."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
        _reaper.forget(f"redis:{self._dir}")
