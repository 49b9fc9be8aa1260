"""The write batch shared by the durable stores (store/_batch.py).

The coalescing rules and the merge of a failed batch with newer ones are
checked against the memory store as the model: a run of writes folded into
batches has the effect of the same writes applied one by one.  Needs no
database (the PostgreSQL and SQLite tests check the SQL side).
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from periodic_fast.job import Job, JobState
from periodic_fast.store import Store
from periodic_fast.store._batch import DELETE, Batch
from periodic_fast.store.memory import MemoryStore

FUNCS = [b"f", b"g"]
NAMES = [b"a", b"b", b"c", b"d"]


def random_op(rng: random.Random, stores: list[Any]) -> None:
    """Apply one random write (every choice made first) to each of ``stores``."""
    func = rng.choice(FUNCS)
    name = rng.choice(NAMES)
    r = rng.random()
    if r < 0.35:
        job = Job(func, name, rng.randbytes(rng.randrange(4)), rng.randrange(2**40))
        state = JobState(rng.randrange(3))
        for s in stores:
            s.save_job(job, state)
    elif r < 0.6:
        state = JobState(rng.randrange(3))
        for s in stores:
            s.set_state(func, name, state)
    elif r < 0.8:
        for s in stores:
            s.delete_job(func, name)
    elif r < 0.85:
        for s in stores:
            s.delete_func_jobs(func)
    elif r < 0.92:
        keep = rng.random() < 0.6
        for s in stores:
            (s.save_func if keep else s.delete_func)(func)
    else:
        key, value = rng.choice(["timeout", "keepalive"]), rng.randrange(2**32)
        for s in stores:
            s.save_config(key, value)


def snapshot(
    store: Store, *, as_stored: bool = False
) -> tuple[dict[Any, Any], list[bytes], dict[str, int]]:
    """A comparable view of everything ``store`` holds; ``as_stored`` shows
    every state as pending, as the durable stores keep them (running and
    locked turn pending at start-up anyway, store/_batch.py)."""
    snap = store.load()
    jobs = {(j.func, j.name): (j, 0 if as_stored else int(s)) for j, s in snap.jobs}
    return jobs, sorted(snap.funcs), dict(snap.config)


def apply_batch(batch: Batch, target: MemoryStore) -> None:
    """What a commit does, in the order the stores apply it."""
    for func in batch.dropped:
        target.delete_func_jobs(func)
    for (func, name), op in batch.jobs.items():
        if op is DELETE:
            target.delete_job(func, name)
        elif isinstance(op, int):
            target.set_state(func, name, JobState(op))
        else:
            target.save_job(op[0], JobState(op[1]))
    for func, keep in batch.funcs.items():
        (target.save_func if keep else target.delete_func)(func)
    for key, value in batch.config.items():
        target.save_config(key, value)


class _Splitter:
    """Store-like front for a run of batches: each write goes to the current
    batch; now and then the current batch closes and the next one opens."""

    def __init__(self, batches: list[Batch], rng: random.Random) -> None:
        self.batches = batches
        self.rng = rng
        self.i = 0

    def __getattr__(self, method: str) -> Any:
        if self.i < len(self.batches) - 1 and self.rng.random() < 0.1:
            self.i += 1
        return getattr(self.batches[self.i], method)


@pytest.mark.parametrize("seed", range(300))
def test_batches_have_the_effect_of_the_writes(seed: int) -> None:
    rng = random.Random(seed)
    model, target = MemoryStore(), MemoryStore()
    for _ in range(rng.randrange(12)):  # some starting state
        random_op(rng, [model, target])
    batches = [Batch() for _ in range(rng.randrange(1, 4))]
    splitter = _Splitter(batches, rng)
    writes = rng.randrange(1, 60)
    for _ in range(writes):
        random_op(rng, [model, splitter])
    merged = batches[0]
    for newer in batches[1:]:  # a failed batch absorbs the newer ones
        merged.merge_newer(newer)
    assert merged.writes <= writes  # changes to running/locked are not kept
    apply_batch(merged, target)
    assert snapshot(target, as_stored=True) == snapshot(model, as_stored=True)
    # what a batch writes is pending, whatever state the writes named
    assert all(op in (DELETE, 0) or op[1] == 0 for op in merged.jobs.values())


def test_coalescing_rules() -> None:
    a, b = Job(b"f", b"a", b"1"), Job(b"f", b"b", b"2")
    batch = Batch()
    assert batch.empty()
    batch.save_job(a, JobState.PENDING)
    batch.set_state(b"f", b"a", JobState.RUNNING)  # running: not written
    batch.delete_job(b"f", b"b")
    batch.set_state(b"f", b"b", JobState.PENDING)  # delete + state = delete
    batch.set_state(b"g", b"x", JobState.PENDING)  # state alone stays a state
    batch.set_state(b"g", b"y", JobState.LOCKED)  # locked: not written
    assert batch.jobs == {
        (b"f", b"a"): (a, 0),
        (b"f", b"b"): DELETE,
        (b"g", b"x"): 0,
    }
    batch.delete_func_jobs(b"f")  # forgets f's earlier writes
    batch.save_job(b, JobState.LOCKED)  # ... comes before later ones; pending
    assert batch.jobs == {(b"g", b"x"): 0, (b"f", b"b"): (b, 0)}
    assert batch.dropped == {b"f"} and batch.writes == 6
    calls: list[object] = []
    newer = Batch()
    newer.callbacks.append(calls.append)
    newer.save_func(b"f")
    batch.merge_newer(newer)
    assert batch.callbacks == [calls.append] and batch.funcs == {b"f": True}
