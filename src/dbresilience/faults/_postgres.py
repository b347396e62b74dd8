"""Throwaway PostgreSQL clusters (:class:`TemporaryPostgres`) and streaming replicas of them
(:class:`TemporaryReplica`), finding and (as root) copying the server binaries, and listing or
terminating client backends."""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import logging
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

from dbresilience.faults import _reaper
from dbresilience.faults._common import _Fixture, free_port

_log = logging.getLogger("dbresilience.faults")


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
                _reaper.track(f"scratch:{base}", marker="", dirs=(base,))  # if we are killed
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


class TemporaryPostgres(_Fixture):
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

    def _create(self) -> None:
        """Make the data folder: a copy of the per-process ``initdb`` template."""
        assert self._base is not None
        assert self._bin is not None
        shutil.copytree(_template(self._bin, self._user), self._base / "data")

    def _pg_ctl(self, *args: str, timeout: float = 60) -> None:
        subprocess.run(
            [str((self._bin or self.bindir) / "pg_ctl"), "-D", str(self.data_dir), *args],
            user=self._user,
            check=True,
            capture_output=True,
            timeout=timeout,
        )

    def start(self) -> TemporaryPostgres:
        """Create the cluster on first use, then start it and wait until it accepts connections
        (nothing to do when it runs already)."""
        if self._base is not None and self.running:
            return self
        if self._base is None:
            self._bin = _server_bindir(self.bindir, self._user)
            root = _scratch_root(self._user)
            self._base = Path(tempfile.mkdtemp(prefix="pg-", dir=root))
            _chown_tree(self._base, self._user)
            try:
                self._create()
            except BaseException:
                shutil.rmtree(self._base, ignore_errors=True)
                self._base = None
                raise
            (self._base / "data").chmod(0o700)
            _chown_tree(self._base, self._user)
        # pg_ctl hands these to a shell: quote every value (paths may hold spaces)
        options = " ".join(f"-c {shlex.quote(f'{k}={v}')}" for k, v in self.settings.items())
        options += f" -p {self.port} -k {shlex.quote(str(self._base))}"
        log = str(self._base / "server.log")
        self._track()  # before the start: a kill during it must not leave a postmaster behind
        self._pg_ctl("-w", "-t", "60", "-l", log, "-o", options, "start", timeout=90)
        self._track()  # with its pid, in case postmaster.pid is removed before the reaping
        return self

    def _track(self) -> None:
        """Tell this process's watcher (see ``_reaper``) to stop the postmaster and delete the
        files if this process dies without closing the cluster."""
        assert self._base is not None
        pidfile = self.data_dir / "postmaster.pid"
        pid: int | None = None
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text().split("\n", 1)[0])
        _reaper.track(
            f"pg:{self._base}",
            marker=str(self.data_dir),
            pid=pid,
            pidfile=pidfile,
            dirs=(self._base,),
            postmaster=True,
        )

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

    def execute(self, query: str, params: tuple[object, ...] = ()) -> tuple[object, ...] | None:
        """Run one statement as the superuser on this server (autocommit); its first row."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            cur = conn.execute(query.encode(), params)  # the harness's own SQL
            return cur.fetchone() if cur.description else None

    def reload(self, expect: tuple[str, str] | None = None, timeout: float = 10.0) -> None:
        """``pg_reload_conf()``; with *expect* ``(setting, value)``, wait until a new session
        sees it (the postmaster applies a reload a moment later)."""
        self.execute("select pg_reload_conf()")
        deadline = time.monotonic() + timeout
        while expect is not None:
            row = self.execute("select current_setting(%s)", (expect[0],))
            if row and row[0] == expect[1]:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expect[0]} did not become {expect[1]!r} in {timeout:g} s")
            time.sleep(0.01)

    def current_lsn(self) -> str:
        """Where this primary's WAL ends (``0/3000148``), flushed first: one committed
        transaction with ``synchronous_commit`` on, so that everything written before it,
        asynchronous commits included, is on disk and can reach a replica."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute("set synchronous_commit = on")
            with conn.transaction():
                conn.execute("select pg_logical_emit_message(true, 'dbresilience', '')")
            row = conn.execute("select pg_current_wal_flush_lsn()::text").fetchone()
        assert row is not None
        return str(row[0])

    def start_replica(
        self,
        *,
        synchronous: bool = False,
        port: int | None = None,
        settings: Mapping[str, str | int] | None = None,
    ) -> TemporaryReplica:
        """A streaming replica of this (running) cluster, started and caught up: see
        :class:`TemporaryReplica`. The caller closes it (``with primary.start_replica() as r:``
        or ``r.close()``)."""
        replica = TemporaryReplica(self, synchronous=synchronous, port=port, settings=settings)
        try:
            return replica.start()
        except BaseException:
            replica.close()
            raise

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
        _reaper.forget(f"pg:{self._base}")
        self._base = None

    def __repr__(self) -> str:
        return f"TemporaryPostgres(port={self.port}, running={self._base is not None})"


def _lsn(text: str) -> int:
    """A ``pg_lsn`` in its text form (``16/B374D848``) as an int, for comparing."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


class TemporaryReplica(TemporaryPostgres):
    """A streaming replica of a :class:`TemporaryPostgres`, for failover and read-replica tests.

    ``start()`` makes it on first use with ``pg_basebackup -R`` from the running *primary* (a
    hot standby: it answers reads, refuses writes with 25006) and waits until it has replayed
    everything the primary had written. ``promote()`` makes it a primary (``pg_promote``);
    ``pause_replay()`` / ``resume_replay()`` stop and restart applying WAL (it keeps receiving
    it: a replica that lags); ``stop()`` / ``start()`` / ``kill()`` / ``close()`` as for any
    cluster.

    With ``synchronous=True`` the primary waits for this replica to confirm every commit
    (``synchronous_standby_names``, ``synchronous_commit=on``): a commit acknowledged to a client
    survives the primary's crash, so a failover test may demand that no acknowledged write is
    lost. (Then a stopped replica also stops every commit on the primary, as in production.)
    """

    def __init__(
        self,
        primary: TemporaryPostgres,
        *,
        synchronous: bool = False,
        port: int | None = None,
        settings: Mapping[str, str | int] | None = None,
    ) -> None:
        self.primary = primary
        self.synchronous = synchronous
        self.name = f"replica_{uuid.uuid4().hex[:8]}"
        merged: dict[str, str | int] = {
            k: v for k, v in primary.settings.items() if k not in ("port",)
        }
        merged.update(
            {
                # the walreceiver names itself after primary_conninfo's application_name: what
                # synchronous_standby_names matches
                "primary_conninfo": (
                    f"host=127.0.0.1 port={primary.port} user=postgres application_name={self.name}"
                ),
                "hot_standby": "on",
                "wal_receiver_status_interval": "1s",
                "wal_retrieve_retry_interval": "200ms",
            }
        )
        merged.update(settings or {})
        super().__init__(port=port, bindir=primary.bindir, settings=merged)

    def _create(self) -> None:
        """``pg_basebackup -R`` from the primary: a copy of its data folder that starts as a
        standby (``standby.signal``) and streams from it."""
        if not self.primary.running:
            raise RuntimeError("the primary must be running to start a replica of it")
        assert self._base is not None
        assert self._bin is not None
        data = self._base / "data"
        result = subprocess.run(
            [
                str(self._bin / "pg_basebackup"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.primary.port),
                "-U",
                "postgres",
                "-D",
                str(data),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ],
            user=self._user,
            check=False,
            capture_output=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"pg_basebackup failed with exit status {result.returncode}: "
                f"{result.stderr.decode(errors='replace').strip()[-2000:]}"
            )

    def start(self) -> TemporaryReplica:
        """Create the replica on first use, start it, and (while it is a standby and the
        primary runs) wait until it has replayed all the primary's WAL."""
        first = self._base is None
        super().start()
        if first and self.synchronous:
            self.primary.execute(
                f"alter system set synchronous_standby_names = '{self.name}'"  # [0-9a-z_] only
            )
            # the role's setting: the server's own (-c synchronous_commit=off) would win over
            # ALTER SYSTEM, never over a role's
            self.primary.execute("alter role postgres set synchronous_commit = 'on'")
            self.primary.reload(("synchronous_standby_names", self.name))
        if self.in_recovery and self.primary.running:
            self.wait_caught_up()
        return self

    @property
    def in_recovery(self) -> bool:
        """True while it is a standby (``pg_is_in_recovery()``); False once promoted."""
        row = self.execute("select pg_is_in_recovery()")
        return bool(row and row[0])

    def replay_lsn(self) -> str:
        """``pg_last_wal_replay_lsn()``: how far it has applied the primary's WAL."""
        row = self.execute("select coalesce(pg_last_wal_replay_lsn(), '0/0')::text")
        assert row is not None
        return str(row[0])

    def wait_caught_up(self, timeout: float = 30.0, lsn: str | None = None) -> None:
        """Wait until it has replayed *lsn* (default: the primary's WAL end now); raises
        ``TimeoutError`` after *timeout* seconds (a paused replay never catches up)."""
        target = _lsn(lsn or self.primary.current_lsn())
        deadline = time.monotonic() + timeout
        while _lsn(self.replay_lsn()) < target:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the replica did not replay up to {lsn or 'the primary'} in {timeout:g} s"
                )
            time.sleep(0.01)

    def pause_replay(self) -> None:
        """Stop applying WAL (``pg_wal_replay_pause()``): reads see the data as of now, and
        the replica's lag grows with every write on the primary."""
        self.execute("select pg_wal_replay_pause()")

    def resume_replay(self) -> None:
        """Apply WAL again (``pg_wal_replay_resume()``)."""
        self.execute("select pg_wal_replay_resume()")

    def promote(self, timeout: float = 60.0) -> float:
        """Make it a primary (``pg_promote``) and wait until it accepts writes; returns the
        monotonic time at which it did (a failover test's clock starts there).

        With ``synchronous=True`` the old primary's ``synchronous_standby_names`` is cleared
        first when it still runs, so that it does not wait for a standby that is gone.
        """
        if self.synchronous and self.primary.running:
            with contextlib.suppress(Exception):
                self.primary.execute("alter system reset synchronous_standby_names")
                self.primary.execute("select pg_reload_conf()")
        row = self.execute("select pg_promote(true, %s)", (max(1, int(timeout)),))
        if not (row and row[0]):
            raise RuntimeError(f"pg_promote did not finish within {timeout:g} s")
        return time.monotonic()

    def __repr__(self) -> str:
        return (
            f"TemporaryReplica(port={self.port}, primary={self.primary.port}, "
            f"running={self._base is not None})"
        )
