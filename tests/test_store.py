"""Contract suite of the :class:`~periodic_fast.store.Store` protocol.

Every store runs the same tests: add a factory to ``STORES`` (for a durable
store: one that reopens the same database, so ``reopen`` checks persistence).
"""

from __future__ import annotations

import random
import threading
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


def _sqlite(tmp_path: Path) -> tuple[Store, Callable[[], Store]]:
    from periodic_fast.store.sqlite import SqliteStore

    path = tmp_path / "store.db"
    live = [SqliteStore(path)]

    def reopen() -> Store:
        live[-1].close()  # one open instance per file (exclusive lock)
        live.append(SqliteStore(path))
        return live[-1]

    return live[0], reopen


STORES: dict[str, Factory] = {
    "memory": _memory,
    "postgres": _postgres,
    "sqlite": _sqlite,
}


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


def _kept(store: Store, state: JobState) -> JobState:
    """The state ``store`` gives back for ``state``: the durable stores keep
    running and locked as pending (start-up turns them pending anyway; it
    spares a write per dispatched job, store/_batch.py)."""
    return JobState.PENDING if store.deferred else state


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
        (b"f", b"b"): (B, _kept(store, JobState.LOCKED)),
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
    "uri", ["bogus", "memory", "ftp://x/y", "file://", "x://", "cache+redis://x"]
)
def test_open_store_bad_uris(
    uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="not implemented yet|unknown store|no file"):
        open_store(uri)
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_open_store_bad_durability() -> None:
    for uri in (":memory:", "file:///nonexistent/x.db"):
        with pytest.raises(ValueError, match="durability 'fast'.*strict.*relaxed"):
            open_store(uri, durability="fast")


def test_open_store_sqlite_forms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from periodic_fast.store.sqlite import SqliteStore

    monkeypatch.chdir(tmp_path)
    forms = {
        "file://rel.db": tmp_path / "rel.db",  # relative to the working dir
        f"file://{tmp_path}/abs.db": tmp_path / "abs.db",  # file:///abs
        "cache+file://cached.db": tmp_path / "cached.db",
        "./bare.db": tmp_path / "bare.db",
    }
    for uri, path in forms.items():
        store = open_store(uri, durability="relaxed")
        try:
            assert isinstance(store, SqliteStore) and store.durability == "relaxed"
            store.save_job(A, JobState.PENDING)
        finally:
            store.close()
        assert path.exists(), uri


# -- coalescing, ordering and barriers (every store) ----------------------------


def test_delete_func_jobs_keeps_order(pair: tuple[Store, Callable[[], Store]]) -> None:
    """Writes after delete_func_jobs survive it; writes before it do not,
    whether or not they share a commit with it."""
    store, reopen = pair
    store.save_job(A, JobState.PENDING)
    store.save_job(B, JobState.PENDING)
    store.flush()  # A and B committed
    store.save_job(Job(b"f", b"x"), JobState.RUNNING)  # same batch, before
    store.delete_func_jobs(b"f")
    store.set_state(b"f", b"a", JobState.RUNNING)  # after: row gone, no-op
    store.save_job(B._replace(workload=b"again"), JobState.LOCKED)  # after
    store.delete_func_jobs(b"g")
    store.save_job(C, JobState.PENDING)
    assert _jobs(reopen().load()) == {
        (b"f", b"b"): (B._replace(workload=b"again"), _kept(store, JobState.LOCKED)),
        (b"g", b"c"): (C, JobState.PENDING),
    }


def test_coalescing_net_effect(pair: tuple[Store, Callable[[], Store]]) -> None:
    """Many changes to one key between two commits keep the last one."""
    store, reopen = pair
    store.save_job(A, JobState.PENDING)
    store.flush()
    # submit, dispatch, done of a job within one batch: gone
    store.save_job(B, JobState.PENDING)
    store.set_state(b"f", b"b", JobState.RUNNING)
    store.delete_job(b"f", b"b")
    # delete then state change: stays deleted
    store.delete_job(b"f", b"a")
    store.set_state(b"f", b"a", JobState.RUNNING)
    # delete then save: saved
    store.delete_job(b"g", b"c")
    store.save_job(C, JobState.PENDING)
    store.set_state(b"g", b"c", JobState.LOCKED)
    assert _jobs(reopen().load()) == {(b"g", b"c"): (C, _kept(store, JobState.LOCKED))}


def test_running_and_locked_cost_no_commit(
    pair: tuple[Store, Callable[[], Store]],
) -> None:
    """Dispatching a job (pending -> running) or parking it on a lock writes
    nothing to a durable store: it is kept as pending, no commit is made."""
    store, reopen = pair
    if not store.deferred:
        pytest.skip("an immediate store keeps every state; it has no commits")
    store.save_job(A, JobState.PENDING)
    store.flush()
    before = store.metrics()["commits"]  # type: ignore[attr-defined]
    store.set_state(A.func, A.name, JobState.RUNNING)
    store.set_state(A.func, A.name, JobState.LOCKED)
    store.flush()
    figures = store.metrics()  # type: ignore[attr-defined]
    assert figures["commits"] == before and figures["pending"] == 0
    store.set_state(A.func, A.name, JobState.PENDING)  # written: may fix a row
    store.flush()
    assert store.metrics()["commits"] == before + 1  # type: ignore[attr-defined]
    assert _jobs(reopen().load()) == {(b"f", b"a"): (A, JobState.PENDING)}


def test_random_ops_match_a_model(pair: tuple[Store, Callable[[], Store]]) -> None:
    """Random writes with random commit points end where a dict model ends."""
    rng = random.Random(5)
    store, reopen = pair
    model: dict[tuple[bytes, bytes], tuple[Job, int]] = {}
    funcs: dict[bytes, None] = {}
    config: dict[str, int] = {}
    names = [b"n%d" % i for i in range(12)]
    for step in range(1500):
        func = rng.choice((b"f", b"g", b"h"))
        name = rng.choice(names)
        op = rng.random()
        if op < 0.35:
            job = Job(func, name, b"w%d" % step, rng.randrange(1 << 40), step % 7, 3)
            state = rng.choice(list(JobState))
            store.save_job(job, state)
            model[(func, name)] = (job, state)
        elif op < 0.6:
            state = rng.choice(list(JobState))
            store.set_state(func, name, state)
            if (func, name) in model:
                model[(func, name)] = (model[(func, name)][0], state)
        elif op < 0.8:
            store.delete_job(func, name)
            model.pop((func, name), None)
        elif op < 0.83:
            store.delete_func_jobs(func)
            for key in [k for k in model if k[0] == func]:
                del model[key]
        elif op < 0.9:
            store.save_func(func)
            funcs[func] = None
        elif op < 0.93:
            store.delete_func(func)
            funcs.pop(func, None)
        elif op < 0.97:
            store.save_config(func.decode(), step)
            config[func.decode()] = step
        else:
            store.flush()
    store.flush()
    snap = reopen().load()
    assert _jobs(snap) == {k: (j, _kept(store, s)) for k, (j, s) in model.items()}
    assert sorted(snap.funcs) == sorted(funcs)
    assert dict(snap.config) == config


def test_on_durable_in_order_once(pair: tuple[Store, Callable[[], Store]]) -> None:
    """Barriers fire once each, in registration order, with None; one
    registered with nothing outstanding fires too."""
    store, _ = pair
    fired: list[int] = []
    errors: list[BaseException | None] = []
    lock = threading.Lock()

    def barrier(i: int) -> Callable[[BaseException | None], None]:
        def cb(error: BaseException | None) -> None:
            with lock:
                fired.append(i)
                errors.append(error)

        return cb

    store.on_durable(barrier(-1))  # nothing written yet
    for i in range(300):
        if i % 3:
            store.save_job(Job(b"f", b"%d" % i), JobState.PENDING)
        if i % 7 == 0:
            store.delete_job(b"f", b"%d" % (i - 1))
        store.on_durable(barrier(i))
    store.flush()
    assert fired == [-1, *range(300)]
    assert errors == [None] * 301


def test_many_jobs_persist(pair: tuple[Store, Callable[[], Store]]) -> None:
    store, reopen = pair
    jobs = [
        Job(b"f%d" % (i % 3), b"job-%d" % i, b"x" * (i % 50), i) for i in range(20000)
    ]
    for job in jobs:
        store.save_job(job, JobState.PENDING)
    snap = reopen().load()
    assert sorted(j for j, _ in snap.jobs) == sorted(jobs)


def test_metrics_shape(pair: tuple[Store, Callable[[], Store]]) -> None:
    store, _ = pair
    metrics = getattr(store, "metrics", None)
    if metrics is None:
        pytest.skip("this store has no metrics()")
    store.save_job(A, JobState.PENDING)
    store.flush()
    figures = metrics()
    assert set(figures) >= {
        "commits",
        "rows",
        "commit_seconds_sum",
        "last_commit_seconds",
        "errors",
        "pending",
        "healthy",
    }
    assert figures["healthy"] == 1.0 and figures["pending"] == 0.0
    assert all(isinstance(v, float) for v in figures.values())
