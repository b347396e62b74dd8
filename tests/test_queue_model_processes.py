"""The write queue and its journal as a model, across several real processes.

Each example runs ``SLOTS`` queue processes (separate interpreters running
``queue_support.MODEL_CHILD``, each with its own journal, all through one fault proxy to a
throwaway cluster), driven over a pipe, one JSON command a line. Hypothesis draws the steps:
submit (unkeyed, keyed, a keyed write retried from any process, a key reused by another
statement, a key reused by the same statement with other parameters, a write the database
refuses), kill every backend, freeze the proxy (briefly, or past the batch timeout), ``os._exit``
a process and reopen its journal in a new one, close the pool before the queue, fill the disk (a
file-size limit at the journal's size, then room again or a crash while full).

Checked after every step: each process's ``stats()`` adds up
(``written + duplicates + failed + pending == submitted + replayed``), nothing is set aside but
by the database's own verdict (22P02 here) or a key reused by the same statement with other
parameters (``KeyReused``); in the database no refused submit and no refused write ever shows,
and no (statement, key) has two rows. At teardown every process drains and closes (nothing
left pending), and: every acknowledged keyed write is applied exactly once per (statement,
key), every acknowledged unkeyed write at least once (extra copies are counted and printed:
they come only from a commit whose answer was lost, or a crash before the journal recorded it),
and every write the database refused is reported set aside (unless a crash took the report).

``DBR_MODEL_EXAMPLES`` (default 3) and ``DBR_MODEL_STEPS`` (default 10) run it longer.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from psycopg import sql

from dbresilience.faults import FaultProxy, TemporaryPostgres, terminate_backends

from .queue_support import MODEL_CHILD, Ident

SLOTS = 2
EXAMPLES = int(os.environ.get("DBR_MODEL_EXAMPLES", "3"))
STEPS = int(os.environ.get("DBR_MODEL_STEPS", "10"))
VERDICT = "InvalidTextRepresentation"  # 22P02: 'bad' into an int column
TOTALS: Counter[str] = Counter()  # across examples, printed at the end


class Child:
    """One queue process on one journal, driven over its stdin/stdout."""

    def __init__(self, dsn: str, journal: str, app: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", MODEL_CHILD, dsn, journal, app],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._buf = b""

    def read(self, timeout: float = 30.0) -> Any:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            assert left > 0, "the queue process did not answer in time"
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                assert chunk, f"the queue process died (exit {self.proc.wait()})"
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return json.loads(line)

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        self.proc.stdin.flush()

    def ask(self, wait: float = 30.0, **cmd: Any) -> Any:
        self.send(**cmd)
        return self.read(wait)

    def wait(self) -> int:
        """The exit status once the process ends by itself (after ``close``)."""
        status = self.proc.wait(30)
        self.kill()
        return status

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        self.proc.wait(10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


@dataclass
class Write:
    wid: int
    stmt: str  # "a" or "b"
    key: str | None
    k: int | str
    bad: bool
    slot: int
    incarnation: int
    acked: bool = False

    @property
    def v(self) -> str:
        return f"w{self.wid}"


class ProcessesModel(RuleBasedStateMachine):
    """Real queue processes under real faults, checked against the database."""

    cluster: TemporaryPostgres
    proxy: FaultProxy

    def __init__(self) -> None:
        super().__init__()
        self.table = Ident(f"dbr_model_{uuid.uuid4().hex[:12]}")
        with psycopg.connect(self.cluster.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("create table {} (k int, v text, s text)").format(self.table))
        t = self.table.as_string()
        self.sql = {
            "a": f"insert into {t} (k, v, s) values (%s, %s, 'a')",
            "b": f"insert into {t} (s, v, k) values ('b', %s, %s)",
        }
        self.dir = tempfile.mkdtemp(prefix="dbr_model_")
        self.app = f"dbr_model_{uuid.uuid4().hex[:8]}"
        self.dsn = self.proxy.dsn(self.cluster.dsn)
        self.children: list[Child] = []
        self.incarnation = [0] * SLOTS
        self.crashed_from = [10**9] * SLOTS  # the first incarnation of a slot that crashed
        self.writes: list[Write] = []
        self.refused: list[Write] = []
        self.set_aside: dict[int, str] = {}  # wid -> error class name
        self.faults = Counter[str]()

    # --- processes ------------------------------------------------------------------------

    def _journal(self, slot: int) -> str:
        return os.path.join(self.dir, f"slot{slot}.journal")

    def _spawn(self, slot: int) -> Child:
        return Child(self.dsn, self._journal(slot), f"{self.app}_{slot}")

    def _ready(self, child: Child) -> None:
        first = child.read(60)
        assert first["ready"]
        self._note(first["stats"])

    @initialize()
    def start(self) -> None:
        self.children = [self._spawn(slot) for slot in range(SLOTS)]
        for child in self.children:
            self._ready(child)

    def _restart(self, slot: int) -> None:
        self.incarnation[slot] += 1
        self.children[slot] = self._spawn(slot)
        self._ready(self.children[slot])

    def _note(self, stats: dict[str, Any]) -> None:
        """Check one process's stats and record what it set aside."""
        s = stats
        assert s["written"] + s["duplicates"] + s["failed"] + s["pending"] == (
            s["submitted"] + s["replayed"]
        ), s
        for params, _key, _code, _kind, error in stats["set_aside"]:
            wid = int(next(p for p in params if isinstance(p, str) and p.startswith("w"))[1:])
            self.set_aside[wid] = error

    # --- writes ---------------------------------------------------------------------------

    def _submit(self, slot: int, stmt: str, key: str | None, k: int | str, wid: int) -> Write:
        write = Write(wid, stmt, key, k, k == "bad", slot, self.incarnation[slot])
        params = [k, write.v] if stmt == "a" else [write.v, k]
        answer = self.children[slot].ask(op="submit", sql=self.sql[stmt], params=params, key=key)
        write.acked = bool(answer["ok"])
        (self.writes if write.acked else self.refused).append(write)
        return write

    def _new(self, slot: int, stmt: str, keyed: bool, bad: bool) -> Write:
        wid = len(self.writes) + len(self.refused)
        key = f"key-{wid}" if keyed else None
        return self._submit(slot, stmt, key, "bad" if bad else wid, wid)

    def _good_keyed(self) -> list[Write]:
        return [w for w in self.writes if w.key is not None and not w.bad]

    @rule(
        slot=st.integers(0, SLOTS - 1),
        stmt=st.sampled_from("ab"),
        keyed=st.booleans(),
        bad=st.sampled_from([False, False, False, True]),
        n=st.integers(1, 20),
    )
    def submit(self, slot: int, stmt: str, keyed: bool, bad: bool, n: int) -> None:
        for i in range(n):
            self._new(slot, stmt, keyed, bad and i == 0)

    @precondition(lambda self: bool(self._good_keyed()))
    @rule(slot=st.integers(0, SLOTS - 1), pick=st.randoms(use_true_random=False))
    def retry_keyed(self, slot: int, pick: Any) -> None:
        """The same keyed write again (a client retrying), from any process."""
        w = pick.choice(self._good_keyed())
        self._submit(slot, w.stmt, w.key, w.k, w.wid)

    @precondition(lambda self: bool(self._good_keyed()))
    @rule(slot=st.integers(0, SLOTS - 1), pick=st.randoms(use_true_random=False))
    def reuse_key_other_statement(self, slot: int, pick: Any) -> None:
        """Another statement with the same key: another write, applied on its own."""
        w = pick.choice(self._good_keyed())
        other = "b" if w.stmt == "a" else "a"
        wid = len(self.writes) + len(self.refused)
        self._submit(slot, other, w.key, wid, wid)

    @precondition(lambda self: bool(self._good_keyed()))
    @rule(slot=st.integers(0, SLOTS - 1), pick=st.randoms(use_true_random=False))
    def reuse_key_other_params(self, slot: int, pick: Any) -> None:
        """The same statement and key with other parameters: one of them wins, the other is
        set aside (KeyReused)."""
        w = pick.choice(self._good_keyed())
        wid = len(self.writes) + len(self.refused)
        self._submit(slot, w.stmt, w.key, wid, wid)

    @rule(slot=st.integers(0, SLOTS - 1))
    def flush(self, slot: int) -> None:
        assert self.children[slot].ask(op="flush", timeout=20)["ok"]

    # --- faults ---------------------------------------------------------------------------

    @rule()
    def kill_backends(self) -> None:
        self.faults["backends killed"] += terminate_backends(self.cluster.dsn)

    @rule(
        slot=st.integers(0, SLOTS - 1),
        long=st.booleans(),
        n=st.integers(0, 10),
    )
    def freeze_proxy(self, slot: int, long: bool, n: int) -> None:
        """A partition (past the 1 s batch timeout when long); submits still acknowledge."""
        self.proxy.freeze()
        self.faults["freezes"] += 1
        try:
            for _ in range(n):
                self._new(slot, "a", bool(n % 2), False)
            time.sleep(1.3 if long else 0.2)
        finally:
            self.proxy.restore()

    @rule(slot=st.integers(0, SLOTS - 1), n=st.integers(0, 30), frozen=st.booleans())
    def crash(self, slot: int, n: int, frozen: bool) -> None:
        """A burst of writes, then os._exit at once (mid-batch, or with the network frozen so
        that nothing of the burst can have committed), then a new process on the journal."""
        self._note(self.children[slot].ask(op="stats"))
        if frozen:
            self.proxy.freeze()
        try:
            for i in range(n):
                self._new(slot, "a" if i % 3 else "b", i % 2 == 0, False)
            self.children[slot].send(op="exit")
            self.children[slot].kill()
        finally:
            self.proxy.restore()
        self.crashed_from[slot] = min(self.crashed_from[slot], self.incarnation[slot])
        self.faults["crashes"] += 1
        self._restart(slot)

    @rule(slot=st.integers(0, SLOTS - 1), n=st.integers(0, 5))
    def close_pool_first(self, slot: int, n: int) -> None:
        """The pool closed before the queue: nothing is condemned, the journal keeps it."""
        child = self.children[slot]
        assert child.ask(op="close_pool")["ok"]
        for _ in range(n):
            self._new(slot, "b", bool(n % 2), False)
        time.sleep(0.1)
        self._note(child.ask(op="close", drain=0.3))
        assert child.wait() == 0
        self.faults["pools closed first"] += 1
        self._restart(slot)

    @rule(slot=st.integers(0, SLOTS - 1), n=st.integers(1, 10), crash=st.booleans())
    def disk_full(self, slot: int, n: int, crash: bool) -> None:
        """No room for the journal: submits are refused (never acknowledged and lost), the
        worker lives on; then room again, or a crash while full."""
        child = self.children[slot]
        assert child.ask(op="full")["ok"]
        self.faults["disk full"] += 1
        for i in range(n):
            self._new(slot, "a", i % 2 == 0, False)
        child.ask(op="flush", timeout=5)
        self._note(child.ask(op="stats"))
        if crash:
            child.send(op="exit")
            child.kill()
            self.crashed_from[slot] = min(self.crashed_from[slot], self.incarnation[slot])
            self.faults["crashes"] += 1
            self._restart(slot)
        else:
            assert child.ask(op="room")["ok"]

    # --- invariants -----------------------------------------------------------------------

    def _rows(self) -> list[tuple[int | None, str, str]]:
        with psycopg.connect(self.cluster.dsn) as conn:
            return conn.execute(sql.SQL("select k, v, s from {}").format(self.table)).fetchall()

    @invariant()
    def stats_add_up_and_nothing_refused_shows(self) -> None:
        if not self.children:
            return
        for child in self.children:
            self._note(child.ask(op="stats"))
        for wid, error in self.set_aside.items():
            write = next(w for w in self.writes if w.wid == wid and w.acked)
            assert error in (VERDICT, "KeyReused"), (write, error)
            assert write.bad or error == "KeyReused", f"a good write set aside: {write}, {error}"
        rows = self._rows()
        seen = Counter(v for _, v, _ in rows)
        never = {w.v for w in self.refused} | {w.v for w in self.writes if w.bad}
        assert not never & set(seen), "a refused write, or one the database refused, shows"
        keyed = {(w.stmt, w.v): w.key for w in self.writes if w.key is not None}
        by_key = Counter((s, keyed[(s, v)]) for _, v, s in rows if (s, v) in keyed)
        assert all(n == 1 for n in by_key.values()), f"a key applied twice: {by_key}"

    def teardown(self) -> None:
        try:
            if len(self.children) == SLOTS:
                for child in self.children:
                    self._note(child.ask(wait=60, op="close", drain=20))
                for slot, child in enumerate(self.children):
                    status = child.wait()
                    assert status == 0, f"slot {slot} exited {status}"
                self._check_at_end()
        finally:
            for child in self.children:
                child.kill()
            shutil.rmtree(self.dir, ignore_errors=True)
            with psycopg.connect(self.cluster.dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("drop table if exists {}").format(self.table))

    def _check_at_end(self) -> None:
        rows = self._rows()
        seen = Counter(v for _, v, _ in rows)
        groups: dict[tuple[str, str], list[Write]] = {}
        for w in self.writes:
            if w.key is not None and not w.bad:
                groups.setdefault((w.stmt, w.key), []).append(w)
        for (stmt, key), ws in groups.items():
            vs = {w.v for w in ws}
            applied = sum(seen[v] for v in vs if any(r[2] == stmt and r[1] == v for r in rows))
            assert applied == 1, f"({stmt}, {key}) applied {applied} times (want exactly once)"
            for w in ws:
                if seen[w.v] == 0 and w.wid not in self.set_aside:
                    # another write of the key won; this one's params differ (a retry would
                    # share the winner's v): set aside as KeyReused, unless a crash took it
                    assert w.incarnation >= self.crashed_from[w.slot], f"dropped: {w}"
        for w in self.writes:
            if w.bad:
                assert seen[w.v] == 0
                if w.wid not in self.set_aside:
                    assert w.incarnation >= self.crashed_from[w.slot], f"not reported: {w}"
            elif w.key is None:
                assert seen[w.v] >= 1, f"an acknowledged write is lost: {w}"
                TOTALS["unkeyed doubles"] += seen[w.v] - 1
        TOTALS["acknowledged"] += len(self.writes)
        TOTALS["refused"] += len(self.refused)
        TOTALS["set aside"] += len(self.set_aside)
        TOTALS["examples"] += 1
        TOTALS.update(self.faults)


@pytest.mark.slow
@pytest.mark.timeout(max(120, EXAMPLES * STEPS * 4))
def test_queue_processes_keep_every_acknowledged_write(
    pg_cluster: TemporaryPostgres, proxy: FaultProxy
) -> None:
    """Several queue processes under kills, partitions, crashes, a closed pool and a full disk:
    every acknowledged write applied (once per key), or set aside by the database's verdict."""
    ProcessesModel.cluster = pg_cluster
    ProcessesModel.proxy = proxy
    TOTALS.clear()
    try:
        run_state_machine_as_test(
            ProcessesModel,
            settings=settings(
                max_examples=EXAMPLES,
                stateful_step_count=STEPS,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    finally:
        print(f"\nqueue process model: {dict(TOTALS)}")
        with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
            conn.execute("drop table if exists dbr_queue_ledger")
