"""PostgreSQL store specifics (the shared contract runs in test_store.py).

URI forms, 64-bit times, coalescing against the memory store as a model,
barrier order, the error paths (tables gone, server stopped) with recovery,
and a real server on ``-p postgres://...`` across restarts and a SIGKILL.
Destructive tests use their own cluster; the rest share one (pg_fixture).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pg_fixture import fresh_prefix, require_postgres, shared_cluster
from test_store_batch import random_op, snapshot

from periodic_fast.job import Job, JobState
from periodic_fast.store import open_store
from periodic_fast.store.memory import MemoryStore
from periodic_fast.testing import ServerProcess, running_server
from periodic_fast.testing_pg import PostgresCluster

pytestmark = pytest.mark.usefixtures("postgres_available")


@pytest.fixture
def postgres_available() -> None:
    require_postgres()


def _store(uri: str, **kwargs: Any) -> Any:
    from periodic_fast.store.postgres import PostgresStore, parse_postgres_uri

    connect, prefix = parse_postgres_uri(uri)
    return PostgresStore(connect, prefix=prefix, **kwargs)


@pytest.fixture
def cluster() -> PostgresCluster:
    return shared_cluster()


@pytest.fixture
def own_cluster() -> Iterator[PostgresCluster]:
    """A cluster this test may stop, restart and damage."""
    with PostgresCluster(fsync=False) as pg:
        yield pg


@pytest.fixture
def store(cluster: PostgresCluster) -> Iterator[Any]:
    st = _store(f"{cluster.uri}&prefix={fresh_prefix()}")
    yield st
    st.close()


# -- URIs ------------------------------------------------------------------------


def test_parse_uri_forms() -> None:
    from periodic_fast.store.postgres import parse_postgres_uri as parse

    assert parse("postgres://u:p@db.example:5433/periodic") == (
        {"dsn": "postgresql://u:p@db.example:5433/periodic"},
        "",
    )
    kw, prefix = parse("postgresql:///periodic?host=/run/pg&port=5432&prefix=x_")
    assert prefix == "x_" and "prefix" not in kw["dsn"] and "host=/run/pg" in kw["dsn"]
    assert (
        parse("postgresql://u@%2Frun%2Fpg/db")[0]["dsn"]
        == "postgresql://u@%2Frun%2Fpg/db"
    )
    kw, prefix = parse(
        "postgres://host='/run/pg' port=5432 dbname=periodic user=postgres"
        r" password='it\'s' prefix='a_' connect_timeout=3 application_name=me"
    )
    assert prefix == "a_"
    assert kw == {
        "host": "/run/pg",
        "port": "5432",
        "database": "periodic",
        "user": "postgres",
        "password": "it's",
        "timeout": 3.0,
        "server_settings": {"application_name": "me"},
    }


@pytest.mark.parametrize(
    "uri, match",
    [
        ("postgres://host=x bogus=1", "not supported"),
        ("postgres://host=x prefix='a b'", "prefix"),
        ("postgres://u@h/db?prefix=1x", "prefix"),
        ("postgres://u@h/db?prefix=x;drop", "prefix"),
        ("postgres://host=x connect_timeout=soon", "connect_timeout"),
        ("postgres://host=x 'oops'", "conninfo"),
        ("mysql://u@h/db", "not a postgres"),
    ],
)
def test_parse_uri_errors(uri: str, match: str) -> None:
    from periodic_fast.store.postgres import parse_postgres_uri

    with pytest.raises(ValueError, match=match):
        parse_postgres_uri(uri)


def test_open_store_uri_forms(cluster: PostgresCluster) -> None:
    prefix = fresh_prefix()
    conninfo = (
        f"postgres://host={cluster.sockdir} port={cluster.port}"
        f" dbname={cluster.dbname} user=postgres prefix={prefix}"
    )
    a = open_store(conninfo)
    assert a.deferred is True
    a.save_job(Job(b"f", b"a"), JobState.PENDING)
    a.close()
    b = open_store(f"{cluster.uri}&prefix={prefix}", durability="relaxed")
    try:
        assert [j.name for j, _ in b.load().jobs] == [b"a"]
        conn = b._conn  # type: ignore[attr-defined]
        assert b._call(conn.fetchval("SHOW synchronous_commit")) == "off"  # type: ignore[attr-defined]
    finally:
        b.close()
    # the reference's cache+postgres:// is the plain durable store here
    c = open_store(f"cache+{cluster.uri}&prefix={prefix}")
    try:
        assert type(c).__name__ == "PostgresStore"
        assert [j.name for j, _ in c.load().jobs] == [b"a"]
    finally:
        c.close()
    with pytest.raises(ValueError, match="durability"):
        open_store(cluster.uri, durability="sometimes")


def test_unreachable_server_is_a_clear_error(tmp_path: Any) -> None:
    from periodic_fast.store.postgres import PostgresStoreError

    started = time.monotonic()
    uri = f"postgresql://me:secret@/x?host={tmp_path}&port=1"
    with pytest.raises(
        PostgresStoreError, match="cannot open the PostgreSQL store"
    ) as info:
        open_store(uri)
    assert time.monotonic() - started < 15
    assert isinstance(info.value, OSError)  # reported like other start-up I/O errors
    assert str(tmp_path) in str(info.value) and "secret" not in str(info.value)
    with pytest.raises(PostgresStoreError, match="nosuchdb"):
        open_store(f"{shared_cluster().uri.replace('/periodic?', '/nosuchdb?')}")


def test_reference_layout_is_refused(cluster: PostgresCluster) -> None:
    prefix = fresh_prefix()
    # the reference server's table: value text (base64), 32-bit sched_at
    cluster.psql(
        f"CREATE TABLE {prefix}jobs (func VARCHAR(256), name VARCHAR(256), value text,"
        " state INT, sched_at INT, PRIMARY KEY (func, name))"
    )
    with pytest.raises(ValueError, match="another layout"):
        _store(f"{cluster.uri}&prefix={prefix}")


# -- data ------------------------------------------------------------------------


def test_64_bit_times_and_config(store: Any, cluster: PostgresCluster) -> None:
    far = [2**31, 2**32 + 5, 253402300799, 2**62, 2**63 - 1, -1]  # 2038 and beyond
    for i, t in enumerate(far):
        store.save_job(
            Job(b"f", b"%d" % i, b"\x00" * i, t, 2**31 - 1, 2**31 - 1), JobState.PENDING
        )
    store.save_config("timeout", 2**32 - 1)
    store.save_config("big", 2**40)
    store.flush()
    jobs, _, config = snapshot(store)
    assert sorted(j.sched_at for j, _ in jobs.values()) == sorted(far)
    assert config == {"timeout": 2**32 - 1, "big": 2**40}
    assert all(
        j.count == 2**31 - 1 and j.timeout == 2**31 - 1 for j, _ in jobs.values()
    )
    table = f"{store.prefix}jobs"
    assert cluster.psql(f"SELECT max(sched_at) FROM {table}").strip() == str(2**63 - 1)


def test_binary_names_and_workloads(store: Any) -> None:
    names = [bytes([i, 0, 255 - i]) for i in range(0, 256, 17)]
    for n in names:
        store.save_job(Job(b"\x00bin\xff", n, n * 100), JobState.LOCKED)
    store.save_func(b"\x00bin\xff")
    store.flush()
    jobs, funcs, _ = snapshot(store)
    assert sorted(k[1] for k in jobs) == sorted(names)
    # locked is stored as pending (it turns pending at start-up anyway)
    assert all(j.workload == j.name * 100 and s == 0 for j, s in jobs.values())
    assert funcs == [b"\x00bin\xff"]


@pytest.mark.parametrize("seed", range(6))
def test_coalescing_matches_the_memory_store(store: Any, seed: int) -> None:
    """Random write sequences, flushed at random points, end where the memory
    store (the reference model) ends."""
    rng = random.Random(seed)
    model = MemoryStore()
    for _ in range(400):
        random_op(rng, [store, model])
        if rng.random() < 0.05:
            store.flush()
            assert snapshot(store) == snapshot(model, as_stored=True)
    store.flush()
    assert snapshot(store) == snapshot(model, as_stored=True)


def test_big_batches_are_split_in_one_transaction(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch over the statement limits goes out as several statements in
    one transaction, with the same effect."""
    import periodic_fast.store.postgres as pgmod

    monkeypatch.setattr(pgmod, "_CHUNK_ROWS", 7)
    monkeypatch.setattr(pgmod, "_CHUNK_BYTES", 300)
    real = pgmod._statement_args
    seen: list[int] = []

    def spy(batch: Any) -> Any:
        chunks = real(batch)
        seen.append(len(chunks))
        return chunks

    monkeypatch.setattr(pgmod, "_statement_args", spy)
    rng = random.Random(3)
    model = MemoryStore()
    for i in range(200):
        job = Job(b"h", b"%d" % i, rng.randbytes(rng.randrange(100)))
        for s in (store, model):
            s.save_job(job, JobState.PENDING)
    for _ in range(300):
        random_op(rng, [store, model])
    store.flush()
    assert snapshot(store) == snapshot(model, as_stored=True)
    assert max(seen) > 10  # the 500 writes went out in a few big batches


def test_writes_use_the_primary_key_on_a_bloated_table(
    store: Any, cluster: PostgresCluster
) -> None:
    """A queue table with few live rows in many pages (after an ANALYZE) must
    not turn each commit into a seq scan + hash join."""
    jobs = f"{store.prefix}jobs"
    cluster.psql(
        f"INSERT INTO {jobs} SELECT 'f', convert_to('n' || i, 'UTF8'), '', i, 0, 0, 0"
        " FROM generate_series(1, 100000) AS i"
    )
    cluster.psql(f"DELETE FROM {jobs} WHERE sched_at > 100")
    cluster.psql(f"ANALYZE {jobs}")
    names = [b"n%d" % i for i in range(1, 129)]
    e: list[Any] = []
    args = (
        e, e, [b"g"] * 128, names, [b""] * 128, [1] * 128, [0] * 128, [0] * 128,
        [0] * 128, [b"f"] * 128, names, [1] * 128, e, e, e, e,
    )  # fmt: skip
    conn = store._conn
    plan = store._call(conn.fetch("EXPLAIN " + store._sql_commit, *args))
    text = "\n".join(r[0] for r in plan)
    assert "Seq Scan" not in text and "Hash Join" not in text, text
    # load() still reads the table with a seq scan
    for i in range(5):
        store.set_state(b"f", b"n%d" % (i + 1), JobState.RUNNING)
    store.flush()
    assert len(list(store.load().jobs)) == 100


def test_barriers_fire_in_order_once(store: Any) -> None:
    """Barriers registered between writes while commits are in flight fire in
    registration order, once each, on the writer thread, after their writes."""
    fired: list[int] = []
    threads: set[str] = set()
    seen_rows: list[int] = []

    def barrier(i: int) -> Callable[[BaseException | None], None]:
        def cb(error: BaseException | None) -> None:
            assert error is None
            fired.append(i)
            threads.add(threading.current_thread().name)

        return cb

    for i in range(3000):
        store.save_job(Job(b"f", b"%d" % i), JobState.PENDING)
        if i % 7 == 0:
            store.on_durable(barrier(i))
    store.flush()
    assert fired == list(range(0, 3000, 7))
    assert threads == {"periodic-pg-writer"}
    m = store.metrics()
    assert m["commits"] >= 1 and m["rows"] >= 3000 and m["pending"] == 0
    assert m["healthy"] == 1 and m["errors"] == 0
    seen_rows.append(len(list(store.load().jobs)))
    assert seen_rows == [3000]
    # nothing outstanding: the barrier runs at once, on this thread
    now: list[BaseException | None] = []
    store.on_durable(now.append)
    assert now == [None]


# -- errors and recovery ------------------------------------------------------------


def test_failed_commits_are_reported_and_retried(
    store: Any, cluster: PostgresCluster
) -> None:
    """With the table gone every barrier gets the error and flush raises; the
    writes are kept (and merged with newer ones) and land once it is back."""
    import asyncpg

    rng = random.Random(7)
    model = MemoryStore()
    for _ in range(100):
        random_op(rng, [store, model])
    store.flush()
    jobs = f"{store.prefix}jobs"
    cluster.psql(f"ALTER TABLE {jobs} RENAME TO {jobs}_away")
    errors: list[BaseException | None] = []
    for _ in range(150):
        random_op(rng, [store, model])
        if rng.random() < 0.1:
            store.on_durable(errors.append)
    with pytest.raises(asyncpg.UndefinedTableError):
        store.flush()
    assert errors and all(isinstance(e, asyncpg.UndefinedTableError) for e in errors)
    m = store.metrics()
    assert m["healthy"] == 0 and m["errors"] >= 1 and m["pending"] > 0
    for _ in range(150):  # more writes on top of the failed batch
        random_op(rng, [store, model])
    cluster.psql(f"ALTER TABLE {jobs}_away RENAME TO {jobs}")
    deadline = time.monotonic() + 30
    while True:  # the retry (bounded backoff) or our flush commits everything
        try:
            store.flush()
            break
        except asyncpg.UndefinedTableError:
            assert time.monotonic() < deadline
    assert snapshot(store) == snapshot(model)
    assert store.metrics()["healthy"] == 1 and store.metrics()["pending"] == 0


def test_a_stale_connection_is_replaced_without_refusing(
    store: Any, cluster: PostgresCluster
) -> None:
    """The server dropped our idle connection (restart, idle timeout): the
    next commit reconnects and succeeds; nobody gets an error."""
    store.save_job(Job(b"f", b"a"), JobState.PENDING)
    store.flush()
    pid = store._call(store._conn.fetchval("SELECT pg_backend_pid()"))
    cluster.psql(f"SELECT pg_terminate_backend({pid})")
    got: list[BaseException | None] = []
    store.save_job(Job(b"f", b"b"), JobState.PENDING)
    store.on_durable(got.append)
    store.flush()
    assert got == [None]
    assert store.metrics()["errors"] == 0 and store.metrics()["healthy"] == 1
    assert sorted(snapshot(store)[0]) == [(b"f", b"a"), (b"f", b"b")]


def test_server_down_then_back(own_cluster: PostgresCluster) -> None:
    uri = f"{own_cluster.uri}&prefix=p_"
    store = _store(uri, retry_max=0.2)
    try:
        store.save_job(Job(b"f", b"before"), JobState.PENDING)
        store.flush()
        own_cluster.stop_server(mode="immediate")  # a crash of PostgreSQL
        got: list[BaseException | None] = []
        store.save_job(Job(b"f", b"during", b"x", 2**40), JobState.RUNNING)
        store.on_durable(got.append)
        with pytest.raises(Exception) as info:
            store.flush(timeout=30)
        assert not isinstance(info.value, TimeoutError)
        assert len(got) == 1 and got[0] is not None
        assert store.metrics()["healthy"] == 0
        own_cluster.start()
        store.save_job(Job(b"f", b"after"), JobState.PENDING)
        store.flush(timeout=30)
        assert store.metrics()["healthy"] == 1
    finally:
        store.close()
    again = _store(uri)
    try:
        jobs, _, _ = snapshot(again)
        assert sorted(jobs) == [(b"f", b"after"), (b"f", b"before"), (b"f", b"during")]
        assert jobs[(b"f", b"during")] == (Job(b"f", b"during", b"x", 2**40), 0)
    finally:
        again.close()


def test_close_with_the_server_down_raises(own_cluster: PostgresCluster) -> None:
    store = _store(f"{own_cluster.uri}&prefix=c_", close_timeout=5, retry_max=0.1)
    store.save_job(Job(b"f", b"a"), JobState.PENDING)
    store.flush()
    own_cluster.stop_server()
    store.save_job(Job(b"f", b"lost"), JobState.PENDING)
    with pytest.raises(Exception):  # noqa: B017 - whatever asyncpg/OS raised
        store.close()
    assert store.closed
    assert not store._thread.is_alive()
    store.close()  # idempotent


# -- a real server on PostgreSQL ------------------------------------------------------


async def test_server_refuses_when_the_commit_fails(
    own_cluster: PostgresCluster,
) -> None:
    from periodic_fast.client import Client

    async with running_server(store=f"{own_cluster.uri}&prefix=s_", unix=False) as srv:
        async with Client(srv.addresses[0], timeout=30) as client:
            assert await asyncio.wait_for(client.submit_job("f", "ok"), 30)
            await asyncio.to_thread(own_cluster.stop_server)
            assert not await asyncio.wait_for(client.submit_job("f", "refused"), 30)
            await asyncio.to_thread(own_cluster.start)
            deadline = time.monotonic() + 30
            while not await asyncio.wait_for(client.submit_job("f", "later"), 30):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
    # the refused job was kept by the scheduler and retried into the database
    check = _store(f"{own_cluster.uri}&prefix=s_")
    try:
        names = sorted(j.name for j, _ in check.load().jobs)
        assert b"ok" in names and b"later" in names
    finally:
        check.close()


def test_periodicd_on_postgres_keeps_jobs_across_restarts(
    cluster: PostgresCluster,
) -> None:
    from periodic_fast.client import Client
    from periodic_fast.worker import Worker, WorkerJob

    uri = f"{cluster.uri}&prefix={fresh_prefix()}"
    with ServerProcess(["-p", uri]) as proc:

        async def submit() -> None:
            async with Client(proc.address, timeout=30) as c:
                for i in range(50):
                    assert await c.submit_job("work", f"job-{i}", f"w{i}", 2**33 + i)
                assert await c.submit_job("now", "due", "payload")

        asyncio.run(asyncio.wait_for(submit(), 60))
        proc.restart()  # SIGTERM and start again

        async def dump() -> list[Job]:
            async with Client(proc.address, timeout=30) as c:
                return await c.dump()

        jobs = asyncio.run(asyncio.wait_for(dump(), 60))
        assert len(jobs) == 51
        assert {j.sched_at for j in jobs if j.func == b"work"} == {
            2**33 + i for i in range(50)
        }
        proc.restart(crash=True)  # SIGKILL: acknowledged writes are committed

        async def run_due() -> bytes:
            got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            worker = Worker(proc.address)

            async def handler(job: WorkerJob) -> None:
                if not got.done():
                    got.set_result(job.workload)

            await worker.add_func("now", handler)
            await worker.start(1)
            try:
                return await asyncio.wait_for(got, 30)
            finally:
                await worker.close()

        assert asyncio.run(asyncio.wait_for(run_due(), 60)) == b"payload"
        jobs = asyncio.run(asyncio.wait_for(dump(), 60))
        assert len([j for j in jobs if j.func == b"work"]) == 50


# -- the throwaway cluster and the skip rule ----------------------------------------


def test_cluster_helper(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncpg

    from periodic_fast.testing_pg import (
        PostgresCommandError,
        PostgresUnavailable,
        find_pg_bindir,
    )

    with PostgresCluster(tcp=True, fsync=False, dbname="other") as pg:
        assert pg.running and pg.sockdir.is_dir()
        pg.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (7)")
        with pytest.raises(PostgresCommandError, match="nosuch"):
            pg.psql("SELECT * FROM nosuch")
        pg.restart()  # data kept

        async def over_tcp() -> int:
            conn = await asyncpg.connect(pg.uri_tcp)
            try:
                return int(await conn.fetchval("SELECT x FROM t"))
            finally:
                await conn.close()

        assert asyncio.run(over_tcp()) == 7
        tmp = pg.tmpdir
    assert tmp is not None and not tmp.exists()  # stop() deleted everything
    monkeypatch.setenv("PERIODIC_FAST_PG_BIN", str(tmp_path))
    with pytest.raises(PostgresUnavailable, match="lacks"):
        find_pg_bindir()
    with pytest.raises(PostgresUnavailable):
        PostgresCluster()


@pytest.mark.parametrize("ci, outcome", [("true", "fail"), ("", "skip")])
def test_missing_postgres_skips_except_under_ci(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, ci: str, outcome: str
) -> None:
    import pg_fixture

    monkeypatch.setenv("PERIODIC_FAST_PG_BIN", str(tmp_path))  # no binaries
    monkeypatch.setenv("CI", ci)
    expected = pytest.fail.Exception if outcome == "fail" else pytest.skip.Exception
    with pytest.raises(expected, match="initdb"):
        pg_fixture.require_postgres()
