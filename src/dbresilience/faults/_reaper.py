"""Throwaway servers die with their owner: one watcher process per owner process.

The owner starts the watcher (this file run as a script, standard library only) with a pipe on
its stdin whose write end only the owner holds (non-inheritable, so the servers it starts do not
keep it open). The owner tells it, one JSON line per change, which servers and folders it has
(:func:`track`) and which it has cleaned up itself (:func:`forget`). When the watcher reads EOF,
the owner has gone, however it went (SIGKILL included): it stops every server it was told about
(``SIGCONT`` first, so a frozen one can act, then ``SIGQUIT`` for a postmaster: immediate shutdown
that removes its shared memory; ``SIGKILL`` for the others and for whatever is left after 5 s),
removes the folders and exits.

A server's pid is checked before it is signalled, so a pid reused by another process is left
alone: a pid the owner reported must still have the start time it had then; a pid read from a
pid file must have the marker the owner gave (the data folder) in its command line. A
postmaster's pid is read from ``postmaster.pid`` at that moment (restarts change it) or, when
that file is gone, the last one the owner reported.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

_LOCK = threading.Lock()
_WATCHER: tuple[int, subprocess.Popen[bytes]] | None = None  # (owner pid, watcher)


def _send(message: dict[str, object]) -> None:
    """Write one line to this process's watcher, starting it on first use (again after a fork:
    the child gets its own)."""
    global _WATCHER
    line = (json.dumps(message) + "\n").encode()
    with _LOCK:
        if _WATCHER is None or _WATCHER[0] != os.getpid() or _WATCHER[1].poll() is not None:
            proc = subprocess.Popen(
                [sys.executable, "-I", str(Path(__file__).resolve())],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C or a signal to the owner's group spares it
            )
            _WATCHER = (os.getpid(), proc)
        stdin = _WATCHER[1].stdin
        assert stdin is not None
        try:
            stdin.write(line)
            stdin.flush()
        except OSError:  # the watcher died: the next message starts another
            _WATCHER = None


def _close_at_exit() -> None:
    """At a normal exit, close the pipe (the watcher reads EOF and stops whatever is still
    running) and wait for the watcher, so it is done before the interpreter is and Python does
    not warn about a child still running or a pipe left open."""
    global _WATCHER
    with _LOCK:
        watcher, _WATCHER = _WATCHER, None
    if watcher is None or watcher[0] != os.getpid():
        return
    proc = watcher[1]
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


atexit.register(_close_at_exit)


def track(
    key: str,
    *,
    marker: str,
    pid: int | None = None,
    pidfile: Path | None = None,
    dirs: tuple[Path, ...] = (),
    postmaster: bool = False,
) -> None:
    """Tell the watcher that *key* (replacing what it said before) is a server running as *pid*
    (or as the pid on the first line of *pidfile*, whose command line holds *marker*), and that
    *dirs* are to be removed once it is stopped. *postmaster*: stop it with ``SIGQUIT`` and its
    children too."""
    _send(
        {
            "op": "track",
            "key": key,
            "marker": marker,
            "pid": pid,
            "started": None if pid is None else _started(pid),
            "pidfile": None if pidfile is None else str(pidfile),
            "dirs": [str(d) for d in dirs],
            "postmaster": postmaster,
        }
    )


def forget(key: str) -> None:
    """Tell the watcher that the owner cleaned *key* up itself."""
    with _LOCK:
        if _WATCHER is None or _WATCHER[0] != os.getpid():
            return  # nothing was tracked by this process
    _send({"op": "forget", "key": key})


# --- the watcher ----------------------------------------------------------------------------


def _fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name (field 3 on), or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def _started(pid: int) -> str | None:
    """When *pid* started (clock ticks since boot): with the pid, names one process for good."""
    fields = _fields(pid)
    return None if fields is None else fields[19]


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of *pid*, or None when it is gone."""
    fields = _fields(pid)
    return None if fields is None else (fields[0], int(fields[1]))


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def _is_it(pid: int, record: dict[str, object]) -> bool:
    """Whether *pid* is still the server *record* names: the same start time as the pid the
    owner reported, or (a pid read from a pid file) a command line holding the marker."""
    if pid == record.get("pid") and isinstance(record.get("started"), str):
        return _started(pid) == record["started"]
    marker = record.get("marker")
    if not isinstance(marker, str) or not marker:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return marker.encode() in cmdline


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[1] == pid:
                found.append(int(entry.name))
    return found


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, sig)


def _pid_of(record: dict[str, object]) -> int | None:
    pidfile = record.get("pidfile")
    if isinstance(pidfile, str):
        with contextlib.suppress(OSError, ValueError):
            return int(Path(pidfile).read_text().split("\n", 1)[0])
    pid = record.get("pid")
    return pid if isinstance(pid, int) and pid > 1 else None


def _reap(records: dict[str, dict[str, object]]) -> None:
    """Stop every tracked server (all signalled first, then waited for), then remove folders."""
    waiting: list[tuple[int, list[int]]] = []
    for record in records.values():
        pid = _pid_of(record)
        if pid is None or not _is_it(pid, record):
            continue
        kids = _children(pid) if record.get("postmaster") else []
        for p in (pid, *kids):
            _signal(p, signal.SIGCONT)  # a frozen process acts on nothing else but SIGKILL
        _signal(pid, signal.SIGQUIT if record.get("postmaster") else signal.SIGKILL)
        waiting.append((pid, kids))
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid, _ in waiting) and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid, kids in waiting:
        for p in (pid, *kids):
            if _alive(p):
                _signal(p, signal.SIGKILL)
    for record in records.values():
        dirs = record.get("dirs")
        for d in dirs if isinstance(dirs, list) else []:
            if isinstance(d, str) and d:
                shutil.rmtree(d, ignore_errors=True)


def _watch() -> None:
    """Read the owner's messages until EOF, then reap what it left."""
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    records: dict[str, dict[str, object]] = {}
    for line in sys.stdin.buffer:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if not isinstance(message, dict) or not isinstance(message.get("key"), str):
            continue
        if message.get("op") == "track":
            records[message["key"]] = message
        elif message.get("op") == "forget":
            records.pop(message["key"], None)
    _reap(records)


if __name__ == "__main__":
    _watch()
