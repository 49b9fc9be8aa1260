"""One server per store (issue 18): a second server without ``--cluster``
on the same PostgreSQL database and prefix, or on the same SQLite file,
refuses to start with a message that names ``--cluster`` instead of handing
out the same jobs twice.  A PostgreSQL store that lost its connection and
finds another server took the prefix meanwhile stops committing for good.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pg_fixture import fresh_prefix, require_postgres, shared_cluster

from periodic_fast.job import Job, JobState
from periodic_fast.testing import ServerProcess
from periodic_fast.testing_pg import PostgresCluster


@pytest.fixture
def cluster() -> PostgresCluster:
    require_postgres()
    return shared_cluster()


@pytest.fixture
def uri(cluster: PostgresCluster) -> str:
    return f"{cluster.uri}&prefix={fresh_prefix()}"


def _store(uri: str, **kwargs: Any) -> Any:
    from periodic_fast.store.postgres import PostgresStore, parse_postgres_uri

    connect, prefix = parse_postgres_uri(uri)
    return PostgresStore(connect, prefix=prefix, **kwargs)


@pytest.fixture
def first(uri: str) -> Iterator[Any]:
    st = _store(uri)
    yield st
    st.close()


def _backend_pid(store: Any) -> int:
    return int(store._call(store._conn.fetchval("SELECT pg_backend_pid()")))


def _terminate(cluster: PostgresCluster, pid: int) -> None:
    """Kill one backend and wait until it is gone (its locks with it)."""
    cluster.psql(f"SELECT pg_terminate_backend({pid})")
    deadline = time.monotonic() + 10
    while f"|{pid}|" in cluster.psql(
        f"SELECT '|' || pid || '|' FROM pg_stat_activity WHERE pid = {pid}"
    ):
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_second_store_on_a_prefix_is_refused(first: Any, uri: str) -> None:
    from periodic_fast.store.postgres import PostgresStoreError, PrefixInUseError

    started = time.monotonic()
    with pytest.raises(PrefixInUseError) as info:
        _store(uri, lock_wait=0.3)
    assert time.monotonic() - started < 10
    msg = str(info.value)
    assert "--cluster" in msg and first.prefix in msg
    assert "in use by another server" in msg
    assert isinstance(info.value, PostgresStoreError)  # an OSError for the CLI


def test_other_prefixes_and_a_closed_owner_are_free(
    first: Any, cluster: PostgresCluster, uri: str
) -> None:
    other = _store(f"{cluster.uri}&prefix={fresh_prefix()}")
    other.close()
    first.save_job(Job(b"f", b"a"), JobState.PENDING)
    first.close()
    again = _store(uri)  # the lock went with the connection
    try:
        assert [j.name for j, _ in again.load().jobs] == [b"a"]
    finally:
        again.close()


def test_a_dropped_connection_is_taken_back(
    first: Any, cluster: PostgresCluster
) -> None:
    """Our own session died (server restart, network): the store reconnects
    and takes its lock again; nobody sees an error."""
    first.save_job(Job(b"f", b"a"), JobState.PENDING)
    first.flush()
    _terminate(cluster, _backend_pid(first))
    first.save_job(Job(b"f", b"b"), JobState.PENDING)
    first.flush(timeout=30)
    assert first.metrics()["healthy"] == 1


def test_a_store_whose_prefix_was_taken_over_stops_writing(
    first: Any, cluster: PostgresCluster, uri: str
) -> None:
    """While our connection was gone another server took the prefix: our
    writes would overwrite its jobs, so every commit fails from now on, even
    after the other server left."""
    from periodic_fast.store.postgres import OwnershipLostError

    first.save_job(Job(b"f", b"mine"), JobState.PENDING)
    first.flush()
    _terminate(cluster, _backend_pid(first))
    second = _store(uri)
    second.save_job(Job(b"f", b"theirs"), JobState.PENDING)
    second.flush()
    first.save_job(Job(b"f", b"mine"), JobState.RUNNING)
    first.delete_job(b"f", b"theirs")
    with pytest.raises(OwnershipLostError, match="--cluster"):
        first.flush(timeout=30)
    assert first.metrics()["healthy"] == 0
    second.close()
    with pytest.raises(OwnershipLostError):
        first.flush(timeout=30)  # fenced for good: its memory is stale
    check = _store(uri)  # first never takes the lock again
    try:
        names = sorted(j.name for j, _ in check.load().jobs)
        assert names == [b"mine", b"theirs"]
    finally:
        check.close()
    with pytest.raises(OwnershipLostError):
        first.close()


def test_a_second_periodicd_on_postgres_refuses_to_start(uri: str) -> None:
    with ServerProcess(["-p", uri]):
        second = ServerProcess(["-p", uri], start_timeout=60)
        try:
            with pytest.raises(RuntimeError, match="server exited") as info:
                second.start()
        finally:
            second.stop()
        assert "--cluster" in str(info.value)
        assert "in use by another server" in str(info.value)


def test_periodicd_restarts_on_its_own_prefix(uri: str) -> None:
    """The lock of a killed or stopped server is free again at once."""
    with ServerProcess(["-p", uri]) as proc:
        proc.restart(crash=True)
        proc.restart()


def test_a_second_periodicd_on_a_sqlite_file_names_cluster(tmp_path: Path) -> None:
    path = f"file://{tmp_path / 'one.db'}"
    with ServerProcess(["-p", path]):
        second = ServerProcess(["-p", path], start_timeout=60)
        try:
            with pytest.raises(RuntimeError, match="server exited") as info:
                second.start()
        finally:
            second.stop()
        assert "in use by another server" in str(info.value)
        assert "--cluster" in str(info.value)
