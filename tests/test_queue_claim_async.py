"""The ledger's optimistic claim (AsyncWriteQueue; ``test_queue_claim.py`` is generated from it).

A keyed batch claims its keys with a plain INSERT and does not wait for its answer; a key already
in the ledger makes that INSERT fail, the whole transaction with it, and the batch goes again with
the careful ``ON CONFLICT DO NOTHING RETURNING`` claim. These tests try to make that fallback
apply a write twice, drop one, or take a write's own unique violation for the ledger's.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

import dbresilience as dbr
from dbresilience.faults import TemporaryPostgres, terminate_backends

from .acompat import agather, asleep, aspawn
from .queue_support import PARTITIONED_LEDGER, Ident, insert, rows


@pytest.fixture
def unique_kv(pg_cluster: TemporaryPostgres) -> Iterator[Ident]:
    """A table ``(k int primary key, v text)``: a write's own unique violation, and a second
    copy of a write, both show."""
    name = Ident(f"dbr_claim_{uuid.uuid4().hex[:10]}")
    with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create table {} (k int primary key, v text)").format(name))
    yield name
    with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("drop table if exists {}").format(name))
        conn.execute("drop table if exists dbr_queue_ledger")


@contextlib.contextmanager
def scratch_schema(dsn: str, prefix: str, *ddl: str) -> Iterator[Ident]:
    """A schema of this test's own (*prefix* and a random suffix), with *ddl* run in it
    (``{s}`` names the schema), dropped with all it holds at the end."""
    schema = Ident(f"{prefix}_{uuid.uuid4().hex[:8]}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create schema {}").format(schema))
        for statement in ddl:
            conn.execute(statement.format(s=schema.as_string()))
    try:
        yield schema
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("drop schema if exists {} cascade").format(schema))


def values(dsn: str, table: Ident) -> dict[int, str]:
    """Every row of *table* as ``{k: v}``."""
    with psycopg.connect(dsn) as conn:
        got = conn.execute(sql.SQL("select k, v from {}").format(table)).fetchall()
    return {int(k): str(v) for k, v in got}


async def test_a_batch_with_applied_keys_goes_again_carefully_and_then_fast(
    pg_cluster: TemporaryPostgres, events: Ident
) -> None:
    """Keys already applied in the middle of a fresh batch: the optimistic claim fails, nothing
    of the batch is applied by that attempt, the careful claim skips the applied keys, sets the
    reused one aside and applies the rest once. The next all-new batch is claimed carefully and
    turns the optimistic claim back on: a later conflict is counted again."""
    seen: list[dbr.FailedWrite] = []
    async with (
        dbr.AsyncPool(pg_cluster.dsn, min_size=1) as pool,
        dbr.AsyncWriteQueue(pool, flush_interval=60, on_failed=seen.append) as queue,
    ):
        for i in range(100):
            queue.submit(insert(events), (i, "a"), key=f"k{i}")
        assert await queue.flush(timeout=30)
        assert queue.stats()["ledger_conflicts"] == 0  # all new: no conflict, no retry

        for i in range(50, 150):  # 50..99 again, same parameters: duplicates
            queue.submit(insert(events), (i, "a"), key=f"k{i}")
        queue.submit(insert(events), (7, "reused"), key="k7")  # same key, other parameters
        assert await queue.flush(timeout=30)
        stats = queue.stats()
        assert (stats["written"], stats["duplicates"], stats["failed"]) == (150, 50, 1)
        assert stats["ledger_conflicts"] == 1

        for i in range(150, 250):  # all new, claimed carefully: optimistic again after it
            queue.submit(insert(events), (i, "a"), key=f"k{i}")
        assert await queue.flush(timeout=30)
        assert queue.stats()["ledger_conflicts"] == 1

        queue.submit(insert(events), (250, "a"), key="k250")
        queue.submit(insert(events), (0, "a"), key="k0")  # applied in the first batch
        assert await queue.flush(timeout=30)
        stats = queue.stats()
    assert stats["ledger_conflicts"] == 2  # the optimistic claim was back on, and failed
    assert (stats["written"], stats["duplicates"], stats["failed"]) == (251, 51, 1)
    assert rows(pg_cluster.dsn, events) == 251  # no unique constraint: a double would show
    assert [item.params for item in seen] == [[7, "reused"]]
    assert "KeyReused" in seen[0].error


async def test_a_writes_own_unique_violation_is_its_verdict_not_a_ledger_conflict(
    pg_cluster: TemporaryPostgres, unique_kv: Ident
) -> None:
    """A keyed write violating the table's own primary key (another key, same row) is set
    aside as a refused write: each optimistic attempt fails (counted in ledger_conflicts: the
    two violations are not told apart), the careful one shows it as the write's own, and its
    key is not left claimed: the same key with fixed parameters is applied later."""
    seen: list[dbr.FailedWrite] = []
    async with (
        dbr.AsyncPool(pg_cluster.dsn, min_size=1) as pool,
        dbr.AsyncWriteQueue(pool, flush_interval=60, on_failed=seen.append) as queue,
    ):
        for i in range(20):
            queue.submit(insert(unique_kv), (i, "a"), key=f"w{i}")
        queue.submit(insert(unique_kv), (5, "clash"), key="clash")  # k=5 twice: 23505
        assert await queue.flush(timeout=30)
        stats = queue.stats()
        assert stats["ledger_conflicts"] >= 1  # once per bisection step that held the write
        assert (stats["written"], stats["failed"]) == (20, 1)
        queue.submit(insert(unique_kv), (500, "fixed"), key="clash")  # not claimed before
        assert await queue.flush(timeout=30)
        assert queue.stats()["written"] == 21
    assert [item.params for item in seen] == [[5, "clash"]]
    assert "UniqueViolation" in seen[0].error or "23505" in seen[0].error
    assert len(values(pg_cluster.dsn, unique_kv)) == 21


async def test_a_partitioned_ledger_still_skips_applied_keys(
    pg_cluster: TemporaryPostgres, unique_kv: Ident
) -> None:
    """An operator made the ledger partitioned (by hash of the key): a conflict names the
    partition, not the ledger, and must still send the batch to the careful claim (duplicates
    skipped), not set the writes aside as refused."""
    ledger = f"led_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL(PARTITIONED_LEDGER).format(Ident(ledger)))
        for r in range(2):
            conn.execute(
                sql.SQL(
                    "create table {} partition of {} for values with (modulus 2, remainder {})"
                ).format(Ident(f"{ledger}_{r}"), Ident(ledger), sql.Literal(r))
            )
    try:
        async with (
            dbr.AsyncPool(pg_cluster.dsn, min_size=1) as pool,
            dbr.AsyncWriteQueue(pool, flush_interval=60, ledger_table=ledger) as queue,
        ):
            for i in range(30):
                queue.submit(insert(unique_kv), (i, "a"), key=f"p{i}")
            assert await queue.flush(timeout=30)
            for i in range(20, 40):  # 20..29 again: duplicates
                queue.submit(insert(unique_kv), (i, "a"), key=f"p{i}")
            assert await queue.flush(timeout=30)
            stats = queue.stats()
        assert (stats["written"], stats["duplicates"], stats["failed"]) == (40, 10, 0)
        assert sorted(values(pg_cluster.dsn, unique_kv)) == list(range(40))
    finally:
        with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("drop table if exists {}").format(Ident(ledger)))


async def test_a_lone_write_of_two_statements_is_refused_as_in_a_batch(
    pg_cluster: TemporaryPostgres, events: Ident
) -> None:
    """A write without parameters holding two statements: psycopg would send it alone by the
    simple protocol, which runs both; in a batch the extended protocol refuses it (42601). A
    lone write must get the same verdict as in a batch: set aside, nothing applied."""
    t = events.as_string()
    statement = f"insert into {t} (k, v) values (1, 'a'); insert into {t} (k, v) values (2, 'b')"
    seen: list[dbr.FailedWrite] = []
    async with (
        dbr.AsyncPool(pg_cluster.dsn, min_size=1) as pool,
        dbr.AsyncWriteQueue(pool, flush_interval=60, on_failed=seen.append) as queue,
    ):
        queue.submit(statement, ())
        assert await queue.flush(timeout=30)
        stats = queue.stats()
    assert (stats["written"], stats["failed"]) == (0, 1)
    assert rows(pg_cluster.dsn, events) == 0


@pytest.mark.parametrize("use_copy", [False, True])
async def test_two_instances_racing_for_the_same_keys_apply_each_once(
    pg_cluster: TemporaryPostgres, unique_kv: Ident, use_copy: bool
) -> None:
    """Two queues on two pools submit the same 3,000 keyed writes at once, in opposite orders
    (instances retrying the same requests): the optimistic claims collide mid-transaction, wait
    for each other and fail; every key is applied exactly once, every write is accounted for,
    none set aside. Claims go in key order, so the two never deadlock (a deadlock is retried,
    and would show in ``retried``)."""
    n = 3_000
    async with (
        dbr.AsyncPool(pg_cluster.dsn, min_size=1) as pool_a,
        dbr.AsyncPool(pg_cluster.dsn, min_size=1) as pool_b,
        dbr.AsyncWriteQueue(pool_a, flush_interval=60, batch_size=250, use_copy=use_copy) as a,
        dbr.AsyncWriteQueue(pool_b, flush_interval=60, batch_size=250, use_copy=use_copy) as b,
    ):
        for i in range(n):
            a.submit(insert(unique_kv), (i, "v"), key=f"r{i}")
            j = n - 1 - i
            b.submit(insert(unique_kv), (j, "v"), key=f"r{j}")
        flushes = [aspawn(a.flush, 60), aspawn(b.flush, 60)]
        assert all(await agather(*flushes))
        sa, sb = a.stats(), b.stats()
    assert sa["failed"] == sb["failed"] == 0
    assert sa["retried"] == sb["retried"] == 0
    assert sa["written"] + sb["written"] == n
    assert sa["duplicates"] + sb["duplicates"] == n
    assert sorted(values(pg_cluster.dsn, unique_kv)) == list(range(n))


async def test_batches_prepared_ahead_meet_bisection_and_killed_backends(
    pg_cluster: TemporaryPostgres, unique_kv: Ident
) -> None:
    """Batches are prepared while the one before is on the server; bisection (three refused
    writes) and backends killed mid-stream change which records a batch holds: a batch
    prepared for other records must never be applied in their place. Every value lands under
    its own key, once."""
    n = 3_000
    bad = {500, 1_700, 2_900}  # each repeats k = 0: the table's own unique violation
    seen: list[dbr.FailedWrite] = []
    async with (
        dbr.AsyncPool(pg_cluster.dsn, min_size=1, breaker=None) as pool,
        dbr.AsyncWriteQueue(pool, batch_size=100, flush_interval=60, on_failed=seen.append) as q,
    ):
        for i in range(n):
            q.submit(insert(unique_kv), (0 if i in bad else i, f"v{i}"), key=f"a{i}")
        flushing = aspawn(q.flush, 60)
        await asleep(0.05)
        terminate_backends(pg_cluster.dsn)
        assert await agather(flushing)
        stats = q.stats()
    assert stats["failed"] == 3
    assert stats["written"] + stats["duplicates"] == n - 3
    assert sorted(item.params[1] for item in seen) == sorted(f"v{i}" for i in bad)
    assert values(pg_cluster.dsn, unique_kv) == {i: f"v{i}" for i in range(n) if i not in bad}


async def test_claims_in_key_order_never_deadlock_two_instances(
    pg_cluster: TemporaryPostgres, unique_kv: Ident
) -> None:
    """A third session holds the ledger row of key r1500; queue A claims r1400…r1599 submitted
    in ascending order, queue B the same keys submitted descending. Both stop at r1500 holding
    what they claimed before it; once the row is let go, a claim in submission order would
    deadlock (A waits on B's upper keys, B on A's lower ones: 40P01, retried). In key order
    both take the keys in one order: no deadlock, each key applied once."""
    from dbresilience._queue_base import scope_of

    statement = insert(unique_kv)
    keys = [f"r{i}" for i in range(1400, 1600)]
    async with (
        dbr.AsyncPool(pg_cluster.dsn, min_size=1) as pool_a,
        dbr.AsyncPool(pg_cluster.dsn, min_size=1) as pool_b,
        dbr.AsyncWriteQueue(pool_a, flush_interval=60, batch_size=500) as a,
        dbr.AsyncWriteQueue(pool_b, flush_interval=60, batch_size=500) as b,
    ):
        a.submit(statement, (-1, "first"), key="first")  # the ledger exists after it
        assert await a.flush(timeout=30)
        blocker = psycopg.connect(pg_cluster.dsn)
        try:
            blocker.execute(
                "insert into dbr_queue_ledger (scope, key, digest) values (%s, 'r1500', 'x')",
                (scope_of(statement),),
            )
            for key in keys:
                a.submit(statement, (int(key[1:]), "v"), key=key)
            for key in reversed(keys):
                b.submit(statement, (int(key[1:]), "v"), key=key)
            flushes = [aspawn(a.flush, 30), aspawn(b.flush, 30)]
            await asleep(0.5)  # both claims are waiting on r1500
        finally:
            blocker.rollback()
            blocker.close()
        assert all(await agather(*flushes))
        sa, sb = a.stats(), b.stats()
    assert sa["retried"] == sb["retried"] == 0  # no 40P01
    assert sa["failed"] == sb["failed"] == 0
    assert sa["written"] + sb["written"] == len(keys) + 1
    assert sorted(values(pg_cluster.dsn, unique_kv)) == [-1, *range(1400, 1600)]


async def test_a_table_altered_under_steady_load_is_read_again_within_the_minute(
    pg_cluster: TemporaryPostgres,
) -> None:
    """Under steady load every batch is prepared ahead, while the one before is on the server:
    the cached table shapes must still be read again after a minute (the promise without the
    look-ahead). A ``date`` column altered to ``timestamp``: a rewrite made from the old shape
    parses ``'… 12:34:56'`` as a date and stores midnight, silently; the writes submitted after
    the minute must store what one INSERT per row stores."""
    name = Ident(f"dbr_shape_{uuid.uuid4().hex[:10]}")
    with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create table {} (k int primary key, d date)").format(name))
    statement = f"insert into {name.as_string()} (k, d) values (%s, %s)"
    altered: list[int] = []
    queue: dbr.AsyncWriteQueue | None = None

    async def alter_after_the_first_batch(batch: object) -> None:
        # the next batch is prepared by now, from the shape of the date column
        if not altered:
            altered.append(len(altered))
            with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("alter table {} alter d type timestamp").format(name))
            assert queue is not None
            queue._shapes_read -= 120  # the shapes were read more than a minute ago

    try:
        async with (
            dbr.AsyncPool(pg_cluster.dsn, min_size=1) as pool,
            dbr.AsyncWriteQueue(
                pool, batch_size=100, flush_interval=60, on_commit=alter_after_the_first_batch
            ) as queue,
        ):
            for i in range(300):
                queue.submit(statement, (i, "2024-05-06 12:34:56"), key=f"d{i}")
            assert await queue.flush(timeout=30)
            stats = queue.stats()
        assert (stats["written"], stats["failed"], stats["batches"]) == (300, 0, 3)
        with psycopg.connect(pg_cluster.dsn) as conn:
            got = conn.execute(
                sql.SQL("select d::text, count(*) from {} where k >= 100 group by d").format(name)
            ).fetchall()
        assert got == [("2024-05-06 12:34:56", 200)]
    finally:
        with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("drop table if exists {}").format(name))
            conn.execute("drop table if exists dbr_queue_ledger")


@pytest.mark.parametrize("keyed", [False, True])
async def test_a_table_altered_between_batches_is_written_with_its_new_types(
    pg_cluster: TemporaryPostgres, keyed: bool
) -> None:
    """A batch rewritten with the table's shape, then ``date`` altered to ``timestamp``, then
    the next batch at once (within the shapes' minute): the rewrite's guard sees the change,
    the batch goes again with the shape read anew, and the times are stored as one INSERT per
    row stores them (before: cast through the cached ``date[]``, every time became midnight).
    Then the table dropped and made again under the same name: the writes land in the new one.
    Nothing is set aside."""
    name = Ident(f"dbr_alter_{uuid.uuid4().hex[:8]}")
    ddl = sql.SQL("create table {} (k int, d date)").format(name)
    statement = f"insert into {name.as_string()} (k, d) values (%s, %s)"
    with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
        conn.execute(ddl)
    try:
        async with (
            dbr.AsyncPool(pg_cluster.dsn, min_size=1) as pool,
            dbr.AsyncWriteQueue(pool, flush_interval=60) as queue,
        ):
            for i in range(50):
                queue.submit(statement, (i, "2024-05-06"), key=f"a{i}" if keyed else None)
            assert await queue.flush(timeout=30)
            with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("alter table {} alter column d type timestamp").format(name))
            for i in range(50, 100):
                queue.submit(statement, (i, "2024-05-06 12:34:56"), key=f"a{i}" if keyed else None)
            assert await queue.flush(timeout=30)
            with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
                got = conn.execute(
                    sql.SQL("select d::text, count(*) from {} where k >= 50 group by 1").format(
                        name
                    )
                ).fetchall()
                assert got == [("2024-05-06 12:34:56", 50)]
                conn.execute(sql.SQL("drop table {}").format(name))
                conn.execute(ddl)
            for i in range(100, 150):
                queue.submit(statement, (i, "2024-05-07"), key=f"a{i}" if keyed else None)
            assert await queue.flush(timeout=30)
            stats = queue.stats()
        assert stats["failed"] == 0
        with psycopg.connect(pg_cluster.dsn) as conn:
            got = conn.execute(sql.SQL("select k, d::text from {} order by k").format(name))
            assert got.fetchall() == [(i, "2024-05-07") for i in range(100, 150)]
        assert stats["written"] == 150
    finally:
        with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("drop table if exists {}").format(name))


async def test_a_table_shadowed_in_the_search_path_is_written_with_its_own_types(
    pg_cluster: TemporaryPostgres,
) -> None:
    """``insert into t`` resolves through the search_path: a table of that name made in the
    user's own schema (``"$user"`` comes first) takes the writes from the next batch, with its
    own column types (the guard resolves the name again), not the shadowed table's."""
    name = f"dbr_shadow_{uuid.uuid4().hex[:8]}"
    statement = f"insert into {name} (k, d) values (%s, %s)"
    with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
        user = conn.execute("select current_user").fetchone()
        assert user is not None
        own = Ident(str(user[0]))
        conn.execute(sql.SQL("create table public.{} (k int, d date)").format(Ident(name)))
    try:
        async with (
            dbr.AsyncPool(pg_cluster.dsn, min_size=1) as pool,
            dbr.AsyncWriteQueue(pool, flush_interval=60) as queue,
        ):
            for i in range(20):
                queue.submit(statement, (i, "2024-05-06"))
            assert await queue.flush(timeout=30)
            with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("create schema {}").format(own))
                conn.execute(
                    sql.SQL("create table {}.{} (k int, d timestamp)").format(own, Ident(name))
                )
            for i in range(20, 40):
                queue.submit(statement, (i, "2024-05-06 12:34:56"))
            assert await queue.flush(timeout=30)
            assert queue.stats()["failed"] == 0
        with psycopg.connect(pg_cluster.dsn) as conn:
            shadow = conn.execute(
                sql.SQL("select d::text, count(*) from {}.{} group by 1").format(own, Ident(name))
            ).fetchall()
        assert shadow == [("2024-05-06 12:34:56", 20)]
    finally:
        with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("drop schema if exists {} cascade").format(own))
            conn.execute(sql.SQL("drop table if exists public.{}").format(Ident(name)))


async def test_a_value_carrying_the_guards_marker_is_set_aside_not_retried_for_ever(
    pg_cluster: TemporaryPostgres,
) -> None:
    """A string that is no integer fails its INSERT with a 22P02 quoting it: one reading
    ``dbresilience-shape-guard`` was taken for the rewrite's guard, never a verdict, and the
    batch was retried for ever behind it. Only the guard's own error (a token of this process)
    is "read the shapes again"; this write is set aside, the others are written."""
    with scratch_schema(pg_cluster.dsn, "dbr_marker", "create table {s}.t (k int)") as schema:
        statement = f"insert into {schema.as_string()}.t (k) values (%s)"
        async with (
            dbr.AsyncPool(pg_cluster.dsn, min_size=1) as pool,
            dbr.AsyncWriteQueue(pool, flush_interval=60) as queue,
        ):
            for value in (1, "dbresilience-shape-guard", 3, "dbresilience-shape-guard 0"):
                queue.submit(statement, (value,))
            assert await queue.flush(timeout=10)
            stats = queue.stats()
            failed = [w.params for w in queue.failed_writes()]
        assert stats["written"] == 2
        assert sorted(map(str, failed)) == [
            "['dbresilience-shape-guard 0']",
            "['dbresilience-shape-guard']",
        ]
        with psycopg.connect(pg_cluster.dsn) as conn:
            got = conn.execute(sql.SQL("select k from {}.t order by k").format(schema))
            assert got.fetchall() == [(1,), (3,)]


async def test_a_type_renamed_and_replaced_under_a_cached_shape_is_not_cast_through(
    pg_cluster: TemporaryPostgres,
) -> None:
    """The rewrite casts strings through the column type's array type, by name. A migration
    renames the column's domain (``numeric(10,2)``) and makes a new one of the old name
    (``numeric(10,0)``): the column keeps its type, so the guard's column check passed, and
    '1.25' went through the new type, stored 1.00 where one INSERT per row stores 1.25. The
    guard also checks each such name still names the type the shape was read with."""
    with scratch_schema(
        pg_cluster.dsn,
        "dbr_retype",
        "create domain {s}.price as numeric(10,2)",
        "create table {s}.t (k int, x {s}.price)",
    ) as schema:
        statement = f"insert into {schema.as_string()}.t (k, x) values (%s, %s)"
        async with (
            dbr.AsyncPool(pg_cluster.dsn, min_size=1) as pool,
            dbr.AsyncWriteQueue(pool, flush_interval=60) as queue,
        ):
            for i in range(10):
                queue.submit(statement, (i, "1.25"))
            assert await queue.flush(timeout=30)
            with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("alter domain {}.price rename to price_old").format(schema))
                conn.execute(sql.SQL("create domain {}.price as numeric(10,0)").format(schema))
            for i in range(10, 20):
                queue.submit(statement, (i, "1.25"))
            assert await queue.flush(timeout=30)
            assert queue.stats()["failed"] == 0
        with psycopg.connect(pg_cluster.dsn) as conn:
            got = conn.execute(
                sql.SQL("select x::text, count(*) from {}.t group by 1").format(schema)
            )
            assert got.fetchall() == [("1.25", 20)]


async def test_names_the_rewrite_could_misread_store_what_one_insert_per_row_stores(
    pg_cluster: TemporaryPostgres,
) -> None:
    """Names the rewrite read otherwise than the server: an unquoted KELVIN SIGN (Python's
    case-insensitive ``[a-z]`` matched it and lowered it to ``k``, another column, whose
    ``date`` then parsed the strings), a ``%%`` (psycopg's ``%``) in a table name (the shape
    was read of the table named with ``%%``), and a backslash in a table name under
    ``standard_conforming_strings=off`` (the guard's name literal read otherwise: the guard
    failed for ever). Each is written as one INSERT per row writes it, none held back."""
    k = chr(0x212A)  # KELVIN SIGN
    with scratch_schema(
        pg_cluster.dsn,
        "dbr_names",
        f'create table {{s}}.kt (k date, "{k}" text, n int)',
        'create table {s}."a%b" (d text)',
        'create table {s}."a%%b" (d date)',
        'create table {s}."b\\s" (k int, d date)',
    ) as schema:
        s = schema.as_string()
        kelvin = f"insert into {s}.kt ({k}, n) values (%s, %s)"
        percent = f'insert into {s}."a%%b" (d) values (%s)'
        backslash = f'insert into {s}."b\\s" (k, d) values (%s, %s)'
        dsn = pg_cluster.dsn + " options='-c standard_conforming_strings=off'"
        async with (
            dbr.AsyncPool(dsn, min_size=1) as pool,
            dbr.AsyncWriteQueue(pool, flush_interval=60) as queue,
        ):
            for i in range(5):
                queue.submit(kelvin, ("2024-5-6", i))
            for _ in range(5):
                queue.submit(percent, ("2024-5-6",))
            assert await queue.flush(timeout=30)
            for i in range(5):
                queue.submit(backslash, (i, "2024-05-06"))
            assert await queue.flush(timeout=10)
            assert queue.stats()["failed"] == 0
        with psycopg.connect(pg_cluster.dsn) as conn:
            got = conn.execute(f'select "{k}", count(*) from {s}.kt group by 1')
            assert got.fetchall() == [("2024-5-6", 5)]
            got = conn.execute(f'select d, count(*) from {s}."a%b" group by 1')
            assert got.fetchall() == [("2024-5-6", 5)]
            got = conn.execute(f'select count(*) from {s}."b\\s"')
            assert got.fetchall() == [(5,)]
