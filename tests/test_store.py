"""Contract suite of the :class:`~periodic_fast.store.Store` protocol.

Every store runs the same tests: add a factory to ``STORES`` (for a durable
store: one that reopens the same database, so ``reopen`` checks persistence).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from periodic_fast.job import Job, JobState
from periodic_fast.store import Store, StoreSnapshot, open_store
from periodic_fast.store.memory import MemoryStore

#: name -> factory(tmp_path) returning (store, reopen); ``reopen()`` closes the
#: store and returns a fresh instance over the same data.
Factory = Callable[[Path], tuple[Store, Callable[[], Store]]]


def _memory(tmp_path: Path) -> tuple[Store, Callable[[], Store]]:
    store = MemoryStore()

    def reopen() -> Store:
        store.close()
        return store  # the memory store's data lives in the instance

    return store, reopen


def _postgres(tmp_path: Path) -> tuple[Store, Callable[[], Store]]:
    from pg_fixture import postgres_pair  # skips (fails under CI) without PG

    return postgres_pair(tmp_path)


STORES: dict[str, Factory] = {"memory": _memory, "postgres": _postgres}


@pytest.fixture(params=sorted(STORES))
def pair(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Store, Callable[[], Store]]]:
    store, reopen = STORES[request.param](tmp_path)
    opened = [store]

    def tracked_reopen() -> Store:
        opened.append(reopen())
        return opened[-1]

    yield store, tracked_reopen
    for each in opened:
        each.close()


def _jobs(snap: StoreSnapshot) -> dict[tuple[bytes, bytes], tuple[Job, int]]:
    return {(j.func, j.name): (j, s) for j, s in snap.jobs}


A = Job(b"f", b"a", b"wl", 1700000000, 2, 30)
B = Job(b"f", b"b", b"", 1700000005)
C = Job(b"g", b"c", b"\x00\xff" * 100, 0, 0, 0)


def test_is_a_store(pair: tuple[Store, Callable[[], Store]]) -> None:
    store, _ = pair
    assert isinstance(store, Store)


def test_empty_load(pair: tuple[Store, Callable[[], Store]]) -> None:
    store, _ = pair
    snap = store.load()
    assert list(snap.jobs) == [] and list(snap.funcs) == [] and dict(snap.config) == {}


def test_save_replace_state_delete(pair: tuple[Store, Callable[[], Store]]) -> None:
    store, reopen = pair
    store.save_job(A, JobState.PENDING)
    store.save_job(B, JobState.RUNNING)
    store.save_job(C, JobState.LOCKED)
    store.save_job(A._replace(workload=b"new"), JobState.PENDING)  # replace
    store.set_state(b"f", b"b", JobState.LOCKED)
    store.set_state(b"f", b"missing", JobState.RUNNING)  # no-op
    store.delete_job(b"g", b"c")
    store.delete_job(b"g", b"missing")  # no-op
    store.flush()
    jobs = _jobs(reopen().load())
    assert jobs == {
        (b"f", b"a"): (A._replace(workload=b"new"), JobState.PENDING),
        (b"f", b"b"): (B, JobState.LOCKED),
    }
    assert all(isinstance(s, int) for _, s in jobs.values())


def test_delete_func_jobs(pair: tuple[Store, Callable[[], Store]]) -> None:
    store, reopen = pair
    for job in (A, B, C):
        store.save_job(job, JobState.PENDING)
    store.delete_func_jobs(b"f")
    store.delete_func_jobs(b"nothing")
    assert list(_jobs(reopen().load())) == [(b"g", b"c")]


def test_funcs(pair: tuple[Store, Callable[[], Store]]) -> None:
    store, reopen = pair
    store.save_func(b"f")
    store.save_func(b"f")
    store.save_func(b"g")
    store.delete_func(b"g")
    store.delete_func(b"missing")
    assert list(reopen().load().funcs) == [b"f"]


def test_config(pair: tuple[Store, Callable[[], Store]]) -> None:
    store, reopen = pair
    store.save_config("timeout", 30)
    store.save_config("timeout", 40)
    store.save_config("keepalive", 0)
    assert dict(reopen().load().config) == {"timeout": 40, "keepalive": 0}


def test_durability_hooks(pair: tuple[Store, Callable[[], Store]]) -> None:
    store, _ = pair
    calls: list[BaseException | None] = []
    store.save_job(A, JobState.PENDING)
    store.on_durable(calls.append)
    store.flush()
    assert calls == [None]


def test_close_is_idempotent(pair: tuple[Store, Callable[[], Store]]) -> None:
    store, _ = pair
    store.close()
    store.close()


def test_open_store_memory() -> None:
    store = open_store(":memory:")
    assert isinstance(store, MemoryStore)


@pytest.mark.parametrize(
    "uri", ["file://data.sqlite", "cache+file://x", "bogus"]
)
def test_open_store_other_schemes(uri: str) -> None:
    with pytest.raises(ValueError, match="not implemented yet|unknown store"):
        open_store(uri)
