"""Throwaway servers die with their owner: a process that starts a TemporaryPostgres, a
TemporaryRedis and a TemporaryPgBouncer and is then SIGKILLed (also with its postmaster frozen,
or after restarting all three), SIGTERMed or just exits without closing them leaves no server
process and no scratch folder behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dbresilience.faults import find_pgbouncer

_OWNER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from dbresilience.faults import TemporaryPgBouncer, TemporaryPostgres, TemporaryRedis

    pg = TemporaryPostgres().start()
    conn = __import__("psycopg").connect(pg.dsn)  # one backend, a child of the postmaster
    backend = conn.info.backend_pid
    red = TemporaryRedis().start()
    bouncer = TemporaryPgBouncer("127.0.0.1", pg.port).start()
    if sys.argv[1] == "restart":  # new pids: the watcher must follow them
        conn.close()
        pg.restart()
        red.stop()
        red.start()
        bouncer.restart()
        conn = __import__("psycopg").connect(pg.dsn)
        backend = conn.info.backend_pid
    postmaster = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
    print(json.dumps({
        "postmaster": postmaster,
        "backend": backend,
        "pids": [postmaster, backend, red._proc.pid, bouncer._proc.pid],
        "dirs": [str(pg._base), str(pg._base.parent), str(red._dir), str(bouncer._dir)],
    }), flush=True)
    if sys.argv[1] == "exit":
        sys.exit(0)  # leaves without closing anything
    time.sleep(120)
    """
)


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaps is gone for this purpose)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rfind(")") + 2] not in "ZX"


def _run_owner(how: str) -> dict[str, object]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _OWNER, how],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            _, err = proc.communicate(timeout=30)
            pytest.fail(f"the owner failed: {err.decode(errors='replace')[-2000:]}")
        info: dict[str, object] = json.loads(line)
        pids = info["pids"]
        assert isinstance(pids, list)
        assert all(_alive(pid) for pid in pids)
        if how == "frozen":
            for pid in (info["postmaster"], info["backend"]):
                assert isinstance(pid, int)
                os.kill(pid, signal.SIGSTOP)
        if how == "term":
            proc.terminate()  # Python's default handler: die at once, no atexit
        elif how != "exit":
            proc.kill()
        assert proc.wait(30) in (0, -signal.SIGKILL, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    return info


@pytest.mark.parametrize("how", ["kill", "frozen", "restart", "term", "exit"])
def test_servers_die_with_their_owner(how: str) -> None:
    try:
        find_pgbouncer()
    except FileNotFoundError as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(str(exc))
    info = _run_owner(how)
    started = time.monotonic()
    pids = info["pids"]
    dirs = info["dirs"]
    assert isinstance(pids, list)
    assert isinstance(dirs, list)
    deadline = started + 10
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids) and not any(Path(d).exists() for d in dirs):
            break
        time.sleep(0.05)
    left = [p for p in pids if _alive(p)]
    for pid in left:  # clean up after a failure, then report it
        os.kill(pid, signal.SIGKILL)
    assert left == [], f"still running {time.monotonic() - started:.1f} s after the owner died"
    assert [d for d in dirs if Path(d).exists()] == []
