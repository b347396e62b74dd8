"""A throwaway PgBouncer in front of a PostgreSQL server: :class:`TemporaryPgBouncer`."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from dbresilience.faults import _reaper
from dbresilience.faults._common import _Fixture, free_port, wait_until
from dbresilience.faults._postgres import _chown_tree, _scratch_root, _server_user

__all__ = ["TemporaryPgBouncer", "find_pgbouncer"]

_POOL_MODES = ("session", "transaction", "statement")


def find_pgbouncer() -> str:
    """The ``pgbouncer`` binary: ``$DBR_PGBOUNCER``, then ``PATH``, then ``/usr/sbin``.

    Raises ``FileNotFoundError`` saying how to install it (Debian: ``apt-get install
    pgbouncer``; ``make test`` does it when run as root).
    """
    for candidate in (
        os.environ.get("DBR_PGBOUNCER"),
        shutil.which("pgbouncer"),
        "/usr/sbin/pgbouncer",
        "/usr/local/sbin/pgbouncer",
        "/usr/local/bin/pgbouncer",
    ):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(
        "pgbouncer is not installed (looked at $DBR_PGBOUNCER, PATH, /usr/sbin): "
        "`apt-get install pgbouncer` (Debian/Ubuntu) or `brew install pgbouncer`"
    )


class TemporaryPgBouncer(_Fixture):
    """A throwaway PgBouncer on ``127.0.0.1`` and a free port, in front of *upstream*.

    ``TemporaryPgBouncer("127.0.0.1", 5432, pool_mode="transaction", default_pool_size=2)``;
    ``start()`` writes its own configuration into a private folder and starts it, ``stop()``
    (immediate shutdown: clients are disconnected), ``restart()``, ``kill()`` (``SIGKILL``),
    ``pause()`` / ``resume()`` (the admin console's ``PAUSE`` and ``RESUME``: new queries wait)
    control it; ``close()`` stops it and deletes its folder. Authentication is ``trust`` for
    the users in *users* (default ``postgres``), who are also admins of the ``pgbouncer``
    console. *databases* lists the databases it serves (default every one: ``*``); a database
    not listed is refused with PgBouncer's own ``no such database``. *settings* adds or
    overrides ``[pgbouncer]`` settings (e.g. ``{"query_wait_timeout": 1}``). As root it runs
    as an unprivileged account (PgBouncer refuses to run as root), as PostgreSQL does.
    """

    def __init__(
        self,
        upstream_host: str = "127.0.0.1",
        upstream_port: int = 5432,
        *,
        pool_mode: str = "transaction",
        default_pool_size: int = 2,
        port: int | None = None,
        databases: Sequence[str] | None = None,
        users: Sequence[str] = ("postgres",),
        settings: Mapping[str, str | int] | None = None,
        binary: str | None = None,
    ) -> None:
        if pool_mode not in _POOL_MODES:
            raise ValueError(
                f"pool_mode must be one of {', '.join(_POOL_MODES)}, got {pool_mode!r}"
            )
        if binary is not None and not Path(binary).is_file():
            raise FileNotFoundError(f"no pgbouncer binary at {binary}")
        self.binary = binary or find_pgbouncer()
        self.upstream = (upstream_host, int(upstream_port))
        self.pool_mode = pool_mode
        self.port = port or free_port()
        self.databases = tuple(databases) if databases is not None else None
        self.users = tuple(users)
        self.settings: dict[str, str | int] = {
            "listen_addr": "127.0.0.1",
            "unix_socket_dir": "",
            "auth_type": "trust",
            "pool_mode": pool_mode,
            "default_pool_size": default_pool_size,
            "max_client_conn": 200,
            "admin_users": ",".join(self.users),
            "server_login_retry": 1,
            "server_connect_timeout": 5,
            "query_wait_timeout": 30,
            "log_connections": 0,
            "log_disconnections": 0,
        }
        self.settings.update(settings or {})
        self._user = _server_user()
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # --- addresses --------------------------------------------------------------------------

    def conninfo(self, dbname: str = "postgres", user: str = "postgres") -> str:
        """A libpq connection string for *dbname* through this PgBouncer."""
        return f"host=127.0.0.1 port={self.port} user={user} dbname={dbname}"

    @property
    def dsn(self) -> str:
        """``host=127.0.0.1 port=… user=postgres dbname=postgres``."""
        return self.conninfo()

    @property
    def log_path(self) -> Path | None:
        """PgBouncer's log file (exists once started)."""
        return None if self._dir is None else self._dir / "pgbouncer.log"

    # --- control ----------------------------------------------------------------------------

    def _write_config(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="pgbouncer-", dir=_scratch_root(self._user)))
        host, port = self.upstream
        target = f"host={host} port={port}"
        names = self.databases if self.databases is not None else ("*",)
        lines = ["[databases]", *(f"{name} = {target}" for name in names), "", "[pgbouncer]"]
        settings = dict(self.settings)
        settings.update(
            {
                "listen_port": self.port,
                "auth_file": str(self._dir / "users.txt"),
                "logfile": str(self._dir / "pgbouncer.log"),
                "pidfile": str(self._dir / "pgbouncer.pid"),
            }
        )
        lines += [f"{key} = {value}" for key, value in settings.items()]
        (self._dir / "pgbouncer.ini").write_text("\n".join(lines) + "\n")
        (self._dir / "users.txt").write_text("".join(f'"{u}" ""\n' for u in self.users))
        _chown_tree(self._dir, self._user)
        return self._dir / "pgbouncer.ini"

    def start(self, timeout: float = 10.0) -> TemporaryPgBouncer:
        """Write the configuration, start PgBouncer and wait until it accepts connections."""
        if self.running:
            return self
        config = self._write_config()
        command = [self.binary]
        if self._user is not None:
            command += ["-u", self._user]
        command.append(str(config))
        self._proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self._track(self._proc.pid)
        if wait_until(self._listening, timeout, 0.02):
            return self
        self.kill()
        raise RuntimeError(f"pgbouncer did not listen on port {self.port} within {timeout} s")

    def _listening(self) -> bool:
        """True once it accepts a connection; raises if the process exited instead."""
        proc = self._proc
        assert proc is not None
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            self._proc = None
            raise RuntimeError(f"pgbouncer exited at start: {err.strip()[-2000:]}{self._log()}")
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            return True
        return False

    def _log(self) -> str:
        path = self.log_path
        if path is None or not path.exists():
            return ""
        return "; log: " + path.read_text(errors="replace")[-2000:]

    @property
    def running(self) -> bool:
        """True while the PgBouncer process runs."""
        return self._proc is not None and self._proc.poll() is None

    def _signal(self, sig: signal.Signals) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()
        self._proc = None
        self._track(None)

    def _track(self, pid: int | None) -> None:
        """Tell this process's watcher (see ``_reaper``) to kill PgBouncer and delete its
        folder if this process dies without closing it."""
        assert self._dir is not None
        config = self._dir / "pgbouncer.ini"
        _reaper.track(f"pgbouncer:{self._dir}", marker=str(config), pid=pid, dirs=(self._dir,))

    def stop(self) -> None:
        """Shut down at once (``SIGTERM``): every client and server connection is closed."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """Kill the process (``SIGKILL``), as a crash would."""
        self._signal(signal.SIGKILL)

    def restart(self) -> None:
        """Stop, then start again on the same port with the same configuration."""
        self.stop()
        self.start()

    def admin(self, command: str) -> list[tuple[str | None, ...]]:
        """Run *command* (a constant such as ``"SHOW POOLS"``) on the admin console; its rows.

        The console speaks only the simple query protocol, so the command is sent as it is:
        never put untrusted text in it.
        """
        import psycopg

        with psycopg.connect(self.conninfo("pgbouncer"), autocommit=True) as conn:
            result = conn.pgconn.exec_(command.encode())
            if result.status not in (
                psycopg.pq.ExecStatus.COMMAND_OK,
                psycopg.pq.ExecStatus.TUPLES_OK,
            ):
                message = (result.error_message or b"").decode(errors="replace").strip()
                raise RuntimeError(f"pgbouncer {command!r} failed: {message}")
            return [
                tuple(
                    None if (v := result.get_value(r, c)) is None else v.decode()
                    for c in range(result.nfields)
                )
                for r in range(result.ntuples)
            ]

    def pause(self, database: str | None = None) -> None:
        """``PAUSE``: wait until server connections are released, then hold new queries."""
        self.admin("PAUSE" if database is None else f"PAUSE {_identifier(database)}")

    def resume(self, database: str | None = None) -> None:
        """``RESUME`` after :meth:`pause`: held queries run."""
        self.admin("RESUME" if database is None else f"RESUME {_identifier(database)}")

    def close(self) -> None:
        """Stop PgBouncer and delete its folder. Idempotent."""
        self.stop()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            _reaper.forget(f"pgbouncer:{self._dir}")
            self._dir = None

    def __repr__(self) -> str:
        return (
            f"TemporaryPgBouncer(port={self.port}, pool_mode={self.pool_mode!r}, "
            f"running={self.running})"
        )


def _identifier(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"database must be a plain name, got {name!r}")
    return name
