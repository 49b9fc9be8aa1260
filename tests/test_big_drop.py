"""Issue 17 item 3: a big DROP commits in O(1) and its rows are purged apart.

The SQLite store bumps the func's generation in the commit that acknowledges
the drop; the old rows are deleted afterwards in slices of ``PURGE_SLICE``
between group commits, so other peers' acknowledgements never wait for a
delete of a hundred thousand rows.  Invisible from the start, the old rows
never come back, not after a crash either.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from periodic_fast.job import Job, JobState
from periodic_fast.store.sqlite import LAYOUT_VERSION, PURGE_SLICE, SqliteStore

PENDING = JobState.PENDING


def _fill(store: SqliteStore, func: bytes, n: int) -> None:
    for i in range(n):
        store.save_job(Job(func, b"%08d" % i, b"w", 2**33 + i), PENDING)
    store.flush()


def _rows(store: SqliteStore, func: bytes) -> int:
    """Rows of ``func`` in the table, of any generation (white box)."""
    with store._db_lock:
        assert store._db is not None
        sql = "SELECT count(*) FROM jobs WHERE func = ?"
        return int(store._db.execute(sql, (func,)).fetchone()[0])


def _wait_purged(store: SqliteStore, func: bytes, left: int) -> None:
    deadline = time.monotonic() + 30
    while _rows(store, func) != left:
        assert time.monotonic() < deadline, "the purge did not finish"
        time.sleep(0.01)


def test_acknowledgement_does_not_wait_for_the_delete(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    try:
        _fill(store, b"big", 30 * PURGE_SLICE)
        store.delete_func_jobs(b"big")
        store.save_job(Job(b"other", b"a", b"", 2**33), PENDING)
        seen: list[int] = []
        done = threading.Event()

        def acked(error: BaseException | None) -> None:
            assert error is None
            seen.append(_rows(store, b"big"))  # old rows left at that moment
            done.set()

        store.on_durable(acked)
        assert done.wait(30)
        # the drop and the SUBMIT were acknowledged while most old rows
        # still waited for the purge (one slice may run between commits)
        assert seen[0] >= 28 * PURGE_SLICE
        assert sorted(j.name for j, _ in store.load().jobs) == [b"a"]
        _wait_purged(store, b"big", 0)
    finally:
        store.close()


def test_jobs_written_after_the_drop_survive_the_purge(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    try:
        _fill(store, b"f", 3 * PURGE_SLICE)
        store.delete_func_jobs(b"f")
        store.save_job(Job(b"f", b"00000007", b"new", 2**34), PENDING)  # reused
        store.save_job(Job(b"f", b"fresh", b"", 2**34), PENDING)
        store.flush()
        _wait_purged(store, b"f", 2)
        store.delete_func_jobs(b"f")  # a second drop: a second generation
        store.save_job(Job(b"f", b"third", b"", 2**34), PENDING)
        store.flush()
        _wait_purged(store, b"f", 1)
    finally:
        store.close()
    again = SqliteStore(tmp_path / "s.db")
    try:
        assert [j.name for j, _ in again.load().jobs] == [b"third"]
    finally:
        again.close()


_CRASH = """
import os, sys
from periodic_fast.job import Job, JobState
from periodic_fast.store.sqlite import SqliteStore
store = SqliteStore(sys.argv[1])
store.delete_func_jobs(b"f")
store.save_job(Job(b"f", b"after", b"", 2**34), JobState.PENDING)
store.flush()  # acknowledged: the drop is durable
os._exit(0)  # a crash: the purge has barely started
"""


def test_a_crash_after_the_drop_keeps_none_of_the_old_jobs(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    _fill(store, b"f", 20 * PURGE_SLICE)
    store.save_job(Job(b"g", b"kept", b"", 2**34), PENDING)
    store.close()
    subprocess.run([sys.executable, "-c", _CRASH, str(path)], check=True)
    store = SqliteStore(path)
    try:
        names = sorted(j.name for j, _ in store.load().jobs)
        assert names == [b"after", b"kept"]
        _wait_purged(store, b"f", 1)  # the restart finishes the purge
    finally:
        store.close()


def test_a_layout_1_file_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    con = sqlite3.connect(path)
    con.executescript(
        "CREATE TABLE jobs (func BLOB NOT NULL, name BLOB NOT NULL,"
        " workload BLOB NOT NULL, sched_at INTEGER NOT NULL,"
        " count INTEGER NOT NULL, timeout INTEGER NOT NULL,"
        " state INTEGER NOT NULL, PRIMARY KEY (func, name)) WITHOUT ROWID;"
        "CREATE TABLE funcs (func BLOB NOT NULL PRIMARY KEY) WITHOUT ROWID;"
        "CREATE TABLE configs (name TEXT NOT NULL PRIMARY KEY,"
        " value INTEGER NOT NULL) WITHOUT ROWID;"
        "INSERT INTO jobs VALUES (x'66', x'61', x'77', 5, 1, 2, 0);"
        "PRAGMA application_id = 1348883316; PRAGMA user_version = 1;"
    )
    con.close()
    store = SqliteStore(path)
    try:
        assert list(store.load().jobs) == [(Job(b"f", b"a", b"w", 5, 1, 2), PENDING)]
        store.delete_func_jobs(b"f")
        store.flush()
        assert list(store.load().jobs) == []
    finally:
        store.close()
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == LAYOUT_VERSION
    con.close()
