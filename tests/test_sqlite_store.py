"""SQLite store specifics: failed commits (a full disk), durability modes,
opening errors, the default path, and restart semantics over a real server.

The store contract itself (every store) is tests/test_store.py.  A full disk is
simulated with ``PRAGMA max_page_count`` on the store's own connection: the
next commit that needs a new page fails with SQLITE_FULL, exactly as when the
file system is full, and raising the limit again is "space is back".
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from periodic_fast.client import Client
from periodic_fast.job import Job, JobState
from periodic_fast.store import open_store
from periodic_fast.store.sqlite import (
    SqliteStore,
    SqliteStoreError,
    default_path,
    parse_file_uri,
    prepare_default_path,
)
from periodic_fast.testing import ServerProcess, running_server

BIG = b"x" * 8000  # two pages per job: every save needs new pages


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "jobs.db"


@pytest.fixture
def store(db: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(db, retry_min=0.005, retry_max=0.05)
    yield s
    _space_back(s)
    s.close()


def _disk_full(store: SqliteStore) -> None:
    """No new page may be allocated from now on."""
    with store._db_lock:
        assert store._db is not None
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        store._db.execute(f"PRAGMA max_page_count = {pages}")


def _space_back(store: SqliteStore) -> None:
    with store._db_lock:
        if store._db is not None:
            store._db.execute("PRAGMA max_page_count = 1073741823")


def _names(store_path: Path) -> set[bytes]:
    check = SqliteStore(store_path)
    try:
        return {j.name for j, _ in check.load().jobs}
    finally:
        check.close()


class Barriers:
    """Thread-safe record of on_durable outcomes, in firing order."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fired: list[tuple[int, BaseException | None]] = []

    def cb(self, i: int) -> Callable[[BaseException | None], None]:
        def done(error: BaseException | None) -> None:
            with self.lock:
                self.fired.append((i, error))

        return done

    def wait(
        self, n: int, timeout: float = 10
    ) -> list[tuple[int, BaseException | None]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.fired) >= n:
                    return list(self.fired)
            time.sleep(0.005)
        raise AssertionError(f"only {len(self.fired)} of {n} barriers fired")


# -- failed commits -----------------------------------------------------------------


def test_full_disk_reports_errors_and_recovers(
    store: SqliteStore, db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store.save_job(Job(b"f", b"before"), JobState.PENDING)
    store.flush()
    _disk_full(store)
    bar = Barriers()
    for i in range(20):
        store.save_job(Job(b"f", b"full-%d" % i, BIG), JobState.PENDING)
    store.delete_job(b"f", b"before")  # merged into the failing batch
    store.on_durable(bar.cb(0))
    fired = bar.wait(1)
    assert fired[0][0] == 0 and isinstance(fired[0][1], sqlite3.OperationalError)
    assert "full" in str(fired[0][1])
    with pytest.raises(sqlite3.OperationalError, match="full"):
        store.flush(timeout=10)
    # a barrier with no new write still waits for the failed writes: error
    store.on_durable(bar.cb(1))
    assert bar.wait(2)[1][0] == 1 and bar.wait(2)[1][1] is not None
    figures = store.metrics()
    assert figures["healthy"] == 0.0 and figures["errors"] >= 2
    assert figures["pending"] >= 21
    assert any(
        "SQLite commit" in r.getMessage() and r.name == "periodic_fast.store"
        for r in caplog.records
        if r.levelno == logging.ERROR
    )
    # nothing of the failed batch reached the file
    assert store._db is not None
    with store._db_lock:
        rows = store._db.execute("SELECT name FROM jobs").fetchall()
    assert rows == [(b"before",)]

    store.save_job(Job(b"f", b"after"), JobState.PENDING)  # joins the retries
    _space_back(store)
    store.on_durable(bar.cb(2))
    store.flush(timeout=10)
    fired = bar.wait(3)
    assert [i for i, _ in fired] == [0, 1, 2] and fired[2][1] is None
    assert store.metrics()["healthy"] == 1.0 and store.metrics()["pending"] == 0
    store.close()
    assert _names(db) == {b"full-%d" % i for i in range(20)} | {b"after"}


def test_no_success_while_failing(store: SqliteStore) -> None:
    """Every barrier registered behind an uncommitted write gets an error,
    never None, however often the writer retries."""
    _disk_full(store)
    bar = Barriers()
    for i in range(30):
        store.save_job(Job(b"f", b"%d" % i, BIG), JobState.PENDING)
        store.on_durable(bar.cb(i))
        time.sleep(0.003)  # spread over several retries
    fired = bar.wait(30)
    assert [i for i, _ in fired] == list(range(30))
    assert all(error is not None for _, error in fired)
    assert store.metrics()["errors"] >= 2


def test_close_raises_when_the_last_commit_fails(db: Path) -> None:
    store = SqliteStore(db, retry_min=0.005, retry_max=0.02, close_timeout=0.5)
    store.save_job(Job(b"f", b"kept"), JobState.PENDING)
    store.flush()
    _disk_full(store)
    store.save_job(Job(b"f", b"lost", BIG), JobState.PENDING)
    with pytest.raises(sqlite3.OperationalError, match="full"):
        store.close()
    assert store.closed and not store._thread.is_alive()
    store.close()  # idempotent
    assert _names(db) == {b"kept"}


async def test_server_refuses_while_the_disk_is_full(db: Path) -> None:
    """SUBMIT_JOB gets NO_WORKER (never SUCCESS) while commits fail; the
    server keeps serving, and once space is back the job is stored."""
    store = SqliteStore(db, retry_min=0.005, retry_max=0.05)
    try:
        async with running_server(store=store, unix=False) as srv:
            async with Client(srv.addresses[0], timeout=30) as client:
                assert await asyncio.wait_for(client.submit_job("f", "ok"), 30)
                _disk_full(store)
                refused = client.submit_job("f", "refused", BIG)
                assert not await asyncio.wait_for(refused, 30)
                assert await asyncio.wait_for(client.ping(), 30)  # still serving
                _space_back(store)
                deadline = time.monotonic() + 30
                while not await asyncio.wait_for(client.submit_job("f", "later"), 30):
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
    finally:
        store.close()
    # the refused job stays in the scheduler, so its write was retried
    assert _names(db) == {b"ok", b"refused", b"later"}


# -- durability modes, opening ------------------------------------------------------


@pytest.mark.parametrize(("mode", "level"), [("strict", 2), ("relaxed", 1)])
def test_durability_modes(db: Path, mode: str, level: int) -> None:
    store = open_store(f"file://{db}", durability=mode)
    assert isinstance(store, SqliteStore)
    try:
        assert store._db is not None
        with store._db_lock:
            assert store._db.execute("PRAGMA synchronous").fetchone()[0] == level
            assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        store.save_job(Job(b"f", b"a", b"w", 2**40, 3, 7), JobState.RUNNING)
    finally:
        store.close()
    again = SqliteStore(db, durability="strict" if mode == "relaxed" else "relaxed")
    try:
        assert list(again.load().jobs) == [
            (Job(b"f", b"a", b"w", 2**40, 3, 7), JobState.PENDING)
        ]
    finally:
        again.close()


def test_bad_durability(db: Path) -> None:
    with pytest.raises(ValueError, match="durability 'fsync'"):
        SqliteStore(db, durability="fsync")
    assert not db.exists()


def test_one_server_per_file(db: Path) -> None:
    first = SqliteStore(db)
    try:
        with pytest.raises(SqliteStoreError, match="in use by another server"):
            SqliteStore(db)
        code = (
            "import sys; from periodic_fast.store.sqlite import SqliteStore\n"
            "try:\n    SqliteStore(sys.argv[1])\n"
            "except OSError as e:\n    print(e); sys.exit(3)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(db)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 3 and "in use by another server" in out.stdout
    finally:
        first.close()
    SqliteStore(db).close()  # free again


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(SqliteStoreError, match="no directory"):
        SqliteStore(tmp_path / "missing" / "x.db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(SqliteStoreError, match="not a database"):
        SqliteStore(junk)
    # the reference server's layout
    ref = tmp_path / "ref.db"
    con = sqlite3.connect(ref)
    con.execute(
        "CREATE TABLE jobs (func CHAR(256) NOT NULL, name CHAR(256) NOT NULL,"
        " value BLOB, state INTEGER DEFAULT 0, sched_at INTEGER DEFAULT 0,"
        " PRIMARY KEY(func, name))"
    )
    con.commit()
    con.close()
    with pytest.raises(SqliteStoreError, match="another layout.*reference"):
        SqliteStore(ref)
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("PRAGMA application_id = 1234")
    con.commit()
    con.close()
    with pytest.raises(SqliteStoreError, match="not a periodic_fast store"):
        SqliteStore(other)


def test_damaged_state_loads_as_pending(db: Path) -> None:
    SqliteStore(db).close()
    con = sqlite3.connect(db)
    con.execute(
        "INSERT INTO jobs (func, name, workload, sched_at, count, timeout, state)"
        " VALUES (x'66', x'61', x'', 5, 0, 0, 9)"
    )
    con.commit()
    con.close()
    store = SqliteStore(db)
    try:
        assert list(store.load().jobs) == [(Job(b"f", b"a", b"", 5), JobState.PENDING)]
    finally:
        store.close()


def test_parse_file_uri() -> None:
    assert parse_file_uri("file://a.db") == "a.db"
    assert parse_file_uri("file:///var/lib/a.db") == "/var/lib/a.db"
    assert parse_file_uri("cache+file://a.db") == "a.db"
    assert parse_file_uri("./a.db") == "./a.db"
    for bad in ("a.db", "file://", "file://dir/", "http://x/y", "file://a\x00b"):
        with pytest.raises(ValueError):
            parse_file_uri(bad)


# -- the default path ---------------------------------------------------------------


def test_default_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_path() == tmp_path / "xdg" / "periodic_fast" / "periodic.db"
    made = prepare_default_path()
    assert made.parent.is_dir() and (made.parent.stat().st_mode & 0o777) == 0o700
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for unset in ("", "relative/dir"):  # XDG rules: ignore a relative value
        monkeypatch.setenv("XDG_DATA_HOME", unset)
        want = tmp_path / "home" / ".local/share/periodic_fast/periodic.db"
        assert default_path() == want
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_path() == want


def test_periodicd_default_store_survives_restart(tmp_path: Path) -> None:
    """periodicd with no -p and no $PERIODIC_PATH keeps its jobs in the default
    file, says where, and finds them again after a restart."""
    xdg = tmp_path / "data"
    # an empty PERIODIC_PATH counts as unset; ServerProcess then adds no -p
    env = {"XDG_DATA_HOME": str(xdg), "PERIODIC_PATH": ""}
    proc = ServerProcess(["--log", "info"], env=env)
    assert "-p" not in proc.argv()
    path = xdg / "periodic_fast" / "periodic.db"
    with proc:

        async def submit() -> None:
            async with Client(proc.address, timeout=30) as c:
                assert await c.submit_job("f", "kept", "w", 2**33)

        asyncio.run(asyncio.wait_for(submit(), 60))
        assert path.exists()
        assert f"keeping jobs in {path}" in proc.output()
        proc.restart(crash=True)

        async def dump() -> list[Job]:
            async with Client(proc.address, timeout=30) as c:
                return await c.dump()

        assert asyncio.run(asyncio.wait_for(dump(), 60)) == [
            Job(b"f", b"kept", b"w", 2**33)
        ]


def test_server_process_defaults_to_memory() -> None:
    procs = [
        ServerProcess(),
        ServerProcess(env={"PERIODIC_PATH": "file://x.db"}),
        ServerProcess(["-p", "file://x.db"]),
        ServerProcess(["--path=file://x.db"]),
    ]
    try:
        assert procs[0].argv()[-2:] == ["-p", ":memory:"]
        assert "-p" not in procs[1].argv()
        assert procs[2].argv().count("-p") == 1
        assert procs[3].argv().count(":memory:") == 0
    finally:
        for proc in procs:  # never started: only their log directories
            shutil.rmtree(proc._logdir, ignore_errors=True)


# -- restart semantics over a real server -------------------------------------------


def test_restart_reloads_requeues_and_runs_due_jobs_in_order(tmp_path: Path) -> None:
    """Every job comes back; a job that was running when the server died runs
    again; jobs that fell due while it was down run in sched_at order as soon
    as a worker asks."""
    from periodic_fast.worker import Worker, WorkerJob

    db = tmp_path / "restart.db"
    now = int(time.time())
    with ServerProcess(["-p", f"file://{db}"]) as proc:

        async def phase1() -> None:
            async with Client(proc.address, timeout=30) as c:
                # due 2-4 s from now, submitted out of order
                # names against the time order: the order must be by time
                for name, delay in (("a", 4), ("x", 2), ("m", 3)):
                    assert await c.submit_job("later", name, "", now + delay)
                assert await c.submit_job("far", "future", "", now + 10**6)
                assert await c.submit_job("slow", "running", "")
            started = asyncio.Event()

            async def hang(job: WorkerJob) -> None:
                started.set()
                await asyncio.sleep(3600)

            worker = Worker(proc.address)
            await worker.add_func("slow", hang)
            task = asyncio.create_task(worker.work(size=1, signals=()))
            await asyncio.wait_for(started.wait(), 30)
            proc.kill()  # SIGKILL while "running" is running
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await worker.close()

        asyncio.run(asyncio.wait_for(phase1(), 60))
        time.sleep(max(0.0, now + 5 - time.time()))  # a, b, c fall due meanwhile
        proc.start()

        async def phase2() -> list[str]:
            order: list[str] = []
            done = asyncio.Event()

            async def record(job: WorkerJob) -> None:
                order.append(job.name)
                if len(order) == 4:
                    done.set()

            async with Client(proc.address, timeout=30) as c:
                names = sorted(j.name for j in await c.dump())
                assert names == [b"a", b"future", b"m", b"running", b"x"]
            worker = Worker(proc.address)
            await worker.add_func("later", record)
            await worker.add_func("slow", record)
            task = asyncio.create_task(worker.work(size=1, signals=()))
            try:
                await asyncio.wait_for(done.wait(), 30)
            finally:
                await worker.shutdown()
                await asyncio.wait_for(task, 30)
            return order

        order = asyncio.run(asyncio.wait_for(phase2(), 90))
        assert sorted(order) == ["a", "m", "running", "x"]
        assert [n for n in order if n != "running"] == ["x", "m", "a"]


def test_env_has_no_user_store() -> None:
    """The autouse fixture keeps test servers off the user's default file."""
    assert os.environ["PERIODIC_PATH"] == ":memory:"
    assert not str(default_path()).startswith(str(Path.home() / ".local"))


def test_scheduler_start_restores_the_gc(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading pauses the cyclic GC and always turns it back on, also when
    the construction fails; a big store's records are frozen out of it while
    the GC is still paused, a small store's are not."""
    import gc

    from periodic_fast.scheduler import _FREEZE_AT, Scheduler
    from periodic_fast.store.memory import MemoryStore

    # count the freezes (and whether the GC was on meanwhile) rather than read
    # gc.get_freeze_count(): compiled records are not GC-tracked, so how much
    # a freeze moves depends on the twin and on what ran before
    freezes: list[bool] = []
    monkeypatch.setattr(gc, "freeze", lambda: freezes.append(gc.isenabled()))
    assert gc.isenabled()
    small = MemoryStore()
    small.save_job(Job(b"f", b"a"), JobState.PENDING)
    Scheduler(small, time.time())
    assert gc.isenabled() and freezes == []

    store = SqliteStore(db)
    try:
        for i in range(_FREEZE_AT):
            store.save_job(Job(b"f", b"%d" % i, b"", 2**33), JobState.RUNNING)
        store.flush()
        with pytest.raises(ValueError, match="unknown config key"):
            Scheduler(store, time.time(), config={"no-such-key": 1})
        assert gc.isenabled() and freezes == []
        sched = Scheduler(store, time.time())
        assert gc.isenabled() and freezes == [False]  # once, with the GC off
        assert len(sched.jobs()) == _FREEZE_AT
        store.flush()  # the running jobs were written back as pending
    finally:
        store.close()
    check = SqliteStore(db)
    try:
        assert {s for _, s in check.load().jobs} == {JobState.PENDING}
    finally:
        check.close()
