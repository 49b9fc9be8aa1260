"""Store extras (store/_contract.py "Extras") on every store.

Save, replace, delete, ``delete_func_extras`` (one kind and func only), a
restart, the durability barrier, coalescing and the retry of a failed batch
(store/_batch.py, with the memory store as the model), an old-layout SQLite
file, backups, big values; PostgreSQL's table creation on an older
deployment and its statement splitting.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_store import STORES

from periodic_fast.job import Job, JobState
from periodic_fast.store import Store
from periodic_fast.store._batch import Batch
from periodic_fast.store.memory import MemoryStore
from periodic_fast.store.sqlite import LAYOUT_VERSION, SqliteStore, SqliteStoreError

Pair = tuple[Store, Callable[[], Store]]
KINDS = ["policy", "attempt", "dead", "cron"]


@pytest.fixture(params=sorted(STORES))
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pair]:
    store, reopen = STORES[request.param](tmp_path)
    opened = [store]

    def tracked_reopen() -> Store:
        opened.append(reopen())
        return opened[-1]

    yield store, tracked_reopen
    for each in opened:
        each.close()


def extras(store: Store) -> dict[tuple[str, bytes, bytes], bytes]:
    """Everything ``store.load()`` returns as extras, keyed."""
    snap = store.load()
    out: dict[tuple[str, bytes, bytes], bytes] = {}
    for kind, rows in (snap.extras or {}).items():
        assert rows, "a kind without extras is left out"
        for func, name, value in rows:
            assert (kind, func, name) not in out
            out[(kind, func, name)] = value
    return out


def committed(store: Store) -> dict[tuple[str, bytes, bytes], bytes]:
    """The extras in the database itself (not in a pending batch)."""
    if isinstance(store, SqliteStore):
        with store._db_lock:  # the writer's connection (the file is exclusive)
            assert store._db is not None
            rows = store._db.execute("SELECT kind, func, name, value FROM extras")
            return {(k, f, n): v for k, f, n, v in rows}
    if isinstance(store, MemoryStore):
        return extras(store)
    import asyncpg

    async def fetch() -> list[Any]:
        conn = await asyncpg.connect(**store._connect_kwargs)  # type: ignore[attr-defined]
        try:
            table = store._t_extras  # type: ignore[attr-defined]
            return list(
                await conn.fetch(f"SELECT kind, func, name, value FROM {table}")
            )
        finally:
            await conn.close()

    return {(k, f, n): v for k, f, n, v in asyncio.run(fetch())}


def random_extra_op(rng: random.Random, stores: list[Any]) -> None:
    """One random extras write (every choice made first) to each of ``stores``."""
    kind = rng.choice(KINDS[:2])
    func = rng.choice([b"", b"f", b"g"])
    name = rng.choice([b"", b"a", b"b"])
    r = rng.random()
    if r < 0.55:
        value = rng.randbytes(rng.randrange(6))
        for s in stores:
            s.save_extra(kind, func, name, value)
    elif r < 0.85:
        for s in stores:
            s.delete_extra(kind, func, name)
    else:
        for s in stores:
            s.delete_func_extras(kind, func)


# -- the contract, on every store ---------------------------------------------------


def test_save_replace_delete_and_restart(pair: Pair) -> None:
    store, reopen = pair
    assert extras(store) == {}
    store.save_extra("policy", b"", b"", b'{"max_attempts":3}')
    store.save_extra("policy", b"f", b"", b"p1")
    store.save_extra("dead", b"f", b"job\x00\xff", b"\x00\x01")
    store.save_extra("cron", b"f", b"daily", b"c")
    store.flush()
    store.save_extra("policy", b"f", b"", b"p2")  # replaced
    store.delete_extra("cron", b"f", b"daily")
    store.delete_extra("cron", b"f", b"never saved")  # a no-op
    store.flush()
    want = {
        ("policy", b"", b""): b'{"max_attempts":3}',
        ("policy", b"f", b""): b"p2",
        ("dead", b"f", b"job\x00\xff"): b"\x00\x01",
    }
    assert extras(store) == want
    store = reopen()
    assert extras(store) == want
    snap = store.load()
    assert snap.extras is not None and set(snap.extras) == {"policy", "dead"}


def test_delete_func_extras_touches_one_kind_and_func(pair: Pair) -> None:
    store, reopen = pair
    for kind in ("attempt", "dead"):
        for func in (b"f", b"g", b"f2"):
            for name in (b"a", b"b"):
                store.save_extra(kind, func, name, kind.encode() + func + name)
    store.flush()
    store.delete_func_extras("dead", b"f")
    store.delete_func_extras("dead", b"nothing here")
    store.flush()
    left = extras(reopen())
    assert len(left) == 10
    assert not any(k[0] == "dead" and k[1] == b"f" for k in left)
    assert left[("attempt", b"f", b"a")] == b"attemptfa"
    assert left[("dead", b"f2", b"b")] == b"deadf2b"


def test_dropping_a_funcs_jobs_keeps_its_extras(pair: Pair) -> None:
    store, reopen = pair
    store.save_func(b"f")
    store.save_job(Job(b"f", b"a", b"w", 5), JobState.PENDING)
    store.save_extra("dead", b"f", b"b", b"dead job")
    store.flush()
    store.delete_func_jobs(b"f")
    store.delete_func(b"f")
    store.flush()
    store = reopen()
    assert list(store.load().jobs) == []
    assert extras(store) == {("dead", b"f", b"b"): b"dead job"}


def test_the_barrier_covers_extras(pair: Pair) -> None:
    """``on_durable`` fires only once the extras are in the database, and a
    restart right after ``flush`` finds them."""
    store, reopen = pair
    for i in range(50):
        store.save_extra("attempt", b"f", b"%d" % i, b"x" * i)
        if i % 10 == 9:
            fired = threading.Event()
            seen: list[BaseException | None] = []

            def cb(
                error: BaseException | None,
                seen: list[BaseException | None] = seen,
                fired: threading.Event = fired,
            ) -> None:
                seen.append(error)
                fired.set()

            store.on_durable(cb)
            assert fired.wait(30) and seen == [None]
            assert len(committed(store)) == i + 1
    store.delete_func_extras("attempt", b"f")
    store.save_extra("attempt", b"f", b"last", b"!")
    store.flush()
    assert committed(store) == {("attempt", b"f", b"last"): b"!"}
    assert store.metrics()["pending"] == 0
    assert extras(reopen()) == {("attempt", b"f", b"last"): b"!"}


@pytest.mark.parametrize("seed", range(4))
def test_random_writes_match_the_memory_store(pair: Pair, seed: int) -> None:
    """Random extras writes (mixed with job writes), flushed at random points,
    end where the memory store (the model) ends, and survive a restart."""
    store, reopen = pair
    rng = random.Random(seed)
    model = MemoryStore()
    for _ in range(300):
        random_extra_op(rng, [store, model])
        if rng.random() < 0.1:
            job = Job(b"f", rng.choice([b"a", b"b"]), b"w", rng.randrange(99))
            for s in (store, model):
                s.save_job(job, JobState.PENDING)
        if rng.random() < 0.05:
            store.flush()
            assert extras(store) == extras(model)
    store.flush()
    assert extras(store) == extras(model)
    assert extras(reopen()) == extras(model)


def test_a_big_value_round_trips(pair: Pair) -> None:
    store, reopen = pair
    big = random.Random(1).randbytes(8 << 20)
    store.save_extra("dead", b"f", b"big", big)
    store.save_extra("dead", b"f", b"small", b"s")
    store.flush()
    got = extras(reopen())
    assert got[("dead", b"f", b"big")] == big
    assert got[("dead", b"f", b"small")] == b"s"


# -- the batch ----------------------------------------------------------------------


def test_a_save_then_delete_in_one_batch_leaves_a_delete() -> None:
    batch = Batch()
    batch.save_extra("dead", b"f", b"a", b"v")
    batch.delete_extra("dead", b"f", b"a")
    assert batch.extras == {("dead", b"f", b"a"): None} and batch.writes == 2
    batch.save_extra("dead", b"f", b"b", b"v")
    batch.save_extra("dead", b"g", b"b", b"v")
    batch.save_extra("cron", b"f", b"b", b"v")
    batch.delete_func_extras("dead", b"f")  # forgets the batch's dead/f writes
    batch.save_extra("dead", b"f", b"c", b"after")
    assert batch.extras_dropped == {("dead", b"f")}
    assert batch.extras == {
        ("dead", b"g", b"b"): b"v",
        ("cron", b"f", b"b"): b"v",
        ("dead", b"f", b"c"): b"after",
    }


def test_merge_newer_keeps_the_order_of_extras_writes() -> None:
    old, new = Batch(), Batch()
    old.save_extra("dead", b"f", b"a", b"old")
    old.save_extra("dead", b"g", b"a", b"old")
    old.delete_func_extras("cron", b"f")
    new.delete_func_extras("dead", b"f")
    new.save_extra("dead", b"f", b"b", b"new")
    new.delete_extra("dead", b"g", b"a")
    old.merge_newer(new)
    assert old.extras_dropped == {("cron", b"f"), ("dead", b"f")}
    assert old.extras == {("dead", b"f", b"b"): b"new", ("dead", b"g", b"a"): None}
    assert old.writes == 6


def test_save_then_delete_before_a_commit_writes_nothing(tmp_path: Path) -> None:
    """Held in one batch (the writer busy with the previous commit), a save
    and a delete of the same key leave no row."""
    store = SqliteStore(tmp_path / "x.db")
    try:
        store.save_extra("dead", b"f", b"keep", b"1")
        store.flush()
        with store._db_lock:  # the writer waits at its next commit
            store.save_extra("dead", b"f", b"x", b"first")
            store.delete_extra("dead", b"f", b"x")
            store.save_extra("dead", b"f", b"y", b"gone too")
            store.delete_func_extras("dead", b"f")
            store.save_extra("dead", b"f", b"z", b"2")
        store.flush()
        assert committed(store) == {("dead", b"f", b"z"): b"2"}
    finally:
        store.close()


def test_a_failed_sqlite_batch_of_extras_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import periodic_fast.store.sqlite as sqlmod

    real = sqlmod._write_extras
    broken = threading.Event()
    broken.set()

    def flaky(db: sqlite3.Connection, batch: Batch) -> None:
        if broken.is_set():
            raise sqlite3.OperationalError("disk I/O error")
        real(db, batch)

    store = SqliteStore(tmp_path / "x.db", retry_min=0.001, retry_max=0.01)
    try:
        monkeypatch.setattr(sqlmod, "_write_extras", flaky)
        store.save_extra("dead", b"f", b"a", b"1")
        store.save_job(Job(b"f", b"j", b"w", 1), JobState.PENDING)
        errors: list[BaseException | None] = []
        store.on_durable(errors.append)
        with pytest.raises(sqlite3.OperationalError):
            store.flush()
        assert errors and isinstance(errors[0], sqlite3.OperationalError)
        assert committed(store) == {} and list(store.load().jobs) == []
        store.delete_extra("dead", b"f", b"a")
        store.save_extra("dead", b"f", b"b", b"2")
        broken.clear()
        store.flush()  # the retry commits the failed writes with the new ones
        assert committed(store) == {("dead", b"f", b"b"): b"2"}
        assert [j.name for j, _ in store.load().jobs] == [b"j"]
        assert store.metrics()["errors"] >= 1
    finally:
        store.close()


# -- SQLite layout --------------------------------------------------------------------

_LAYOUT_2 = (
    "CREATE TABLE jobs (func BLOB NOT NULL, name BLOB NOT NULL,"
    " workload BLOB NOT NULL, sched_at INTEGER NOT NULL, count INTEGER NOT NULL,"
    " timeout INTEGER NOT NULL, state INTEGER NOT NULL,"
    " gen INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (func, name)) WITHOUT ROWID;"
    "CREATE TABLE funcs (func BLOB NOT NULL PRIMARY KEY) WITHOUT ROWID;"
    "CREATE TABLE configs (name TEXT NOT NULL PRIMARY KEY,"
    " value INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE func_gens (func BLOB NOT NULL PRIMARY KEY,"
    " gen INTEGER NOT NULL) WITHOUT ROWID;"
    "INSERT INTO jobs VALUES (x'66', x'61', x'77', 5, 1, 2, 0, 0);"
    "INSERT INTO funcs VALUES (x'66');"
    "PRAGMA application_id = 1348883316; PRAGMA user_version = 2;"
)


def _tables(path: Path) -> set[str]:
    con = sqlite3.connect(path)
    try:
        rows = con.execute("SELECT name FROM sqlite_master WHERE type='table'")
        return {r[0] for r in rows}
    finally:
        con.close()


def test_a_layout_2_file_gets_the_extras_table(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    con = sqlite3.connect(path)
    con.executescript(_LAYOUT_2)
    con.close()
    assert "extras" not in _tables(path)
    store = SqliteStore(path)
    try:
        snap = store.load()
        assert list(snap.jobs) == [(Job(b"f", b"a", b"w", 5, 1, 2), JobState.PENDING)]
        assert list(snap.funcs) == [b"f"] and not snap.extras
        store.save_extra("cron", b"f", b"n", b"v")
    finally:
        store.close()
    assert "extras" in _tables(path)
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == LAYOUT_VERSION == 3
    con.close()
    store = SqliteStore(path)
    try:
        assert extras(store) == {("cron", b"f", b"n"): b"v"}
    finally:
        store.close()


def test_a_newer_layout_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    SqliteStore(path).close()
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {LAYOUT_VERSION + 1}")
    con.close()
    with pytest.raises(SqliteStoreError, match="newer than this release"):
        SqliteStore(path)


def test_a_backup_carries_the_extras(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "live.db")
    try:
        store.save_extra("dead", b"f", b"a", b"1" * 1000)
        store.save_extra("policy", b"", b"", b"p")
        store.flush()
        store.backup(tmp_path / "copy.db")
        want = extras(store)
    finally:
        store.close()
    copy = SqliteStore(tmp_path / "copy.db")
    try:
        assert extras(copy) == want and len(want) == 2
    finally:
        copy.close()


# -- PostgreSQL -----------------------------------------------------------------------


@pytest.fixture
def pg() -> Iterator[Pair]:
    from pg_fixture import postgres_pair

    store, reopen = postgres_pair(Path("."))
    opened = [store]

    def tracked_reopen() -> Store:
        opened.append(reopen())
        return opened[-1]

    yield store, tracked_reopen
    for each in opened:
        each.close()


def test_postgres_creates_the_table_on_an_older_deployment(pg: Pair) -> None:
    from pg_fixture import shared_cluster

    store, reopen = pg
    store.save_job(Job(b"f", b"a", b"w", 5), JobState.PENDING)
    store.flush()
    table = store._t_extras  # type: ignore[attr-defined]
    shared_cluster().psql(f"DROP TABLE {table}")  # as before extras existed
    store = reopen()
    assert [j.name for j, _ in store.load().jobs] == [b"a"]
    store.save_extra("cron", b"f", b"n", b"v")
    store.flush()
    assert extras(reopen()) == {("cron", b"f", b"n"): b"v"}


def test_postgres_refuses_an_extras_table_of_another_layout(pg: Pair) -> None:
    from pg_fixture import shared_cluster

    store, reopen = pg
    table = store._t_extras  # type: ignore[attr-defined]
    shared_cluster().psql(f"ALTER TABLE {table} ALTER COLUMN value TYPE text")
    with pytest.raises(ValueError, match="another layout"):
        reopen()


def test_postgres_splits_big_extras_batches(
    pg: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Extras over the statement limits go out as several statements in one
    transaction, with the same effect."""
    import periodic_fast.store.postgres as pgmod

    store, reopen = pg
    monkeypatch.setattr(pgmod, "_CHUNK_ROWS", 5)
    monkeypatch.setattr(pgmod, "_CHUNK_BYTES", 200)
    real = pgmod._extras_args
    seen: list[int] = []

    def spy(batch: Batch) -> Any:
        chunks = real(batch)
        seen.append(len(chunks))
        return chunks

    monkeypatch.setattr(pgmod, "_extras_args", spy)
    rng = random.Random(5)
    model = MemoryStore()
    for i in range(100):
        value = rng.randbytes(rng.randrange(80))
        for s in (store, model):
            s.save_extra("dead", b"h", b"%d" % i, value)
    for _ in range(200):
        random_extra_op(rng, [store, model])
    store.flush()
    assert extras(store) == extras(model)
    assert max(seen) > 3
    assert extras(reopen()) == extras(model)


def test_postgres_retries_a_failed_batch_of_extras(pg: Pair) -> None:
    """With the extras table gone the commits fail; the writes are kept,
    merged with newer ones, and land once it is back."""
    import asyncpg
    from pg_fixture import shared_cluster

    store, reopen = pg
    rng = random.Random(11)
    model = MemoryStore()
    for _ in range(50):
        random_extra_op(rng, [store, model])
    store.flush()
    table = store._t_extras  # type: ignore[attr-defined]
    shared_cluster().psql(f"ALTER TABLE {table} RENAME TO {table}_away")
    for _ in range(100):
        random_extra_op(rng, [store, model])
    with pytest.raises(asyncpg.UndefinedTableError):
        store.flush()
    for _ in range(100):
        random_extra_op(rng, [store, model])
    shared_cluster().psql(f"ALTER TABLE {table}_away RENAME TO {table}")
    deadline = time.monotonic() + 30
    while True:  # the retry (bounded backoff) or our flush commits everything
        try:
            store.flush()
            break
        except asyncpg.UndefinedTableError:
            assert time.monotonic() < deadline
    assert extras(store) == extras(model)
    assert extras(reopen()) == extras(model)
