"""Crash test (issue 5): nothing acknowledged is ever lost.

A real server process on SQLite (strict), several client connections
submitting as fast as they can and recording every job the server answered
with SUCCESS, and the server killed with SIGKILL at random moments, again and
again, and restarted on the same file.  Afterwards every acknowledged job is
in the DUMP, and with workers attached every acknowledged job completes.

Only the replies are trusted: a job whose reply never came (the kill cut the
connection) may or may not be stored; both are correct.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from pathlib import Path

import pytest

from periodic_fast.client import Client, ClientError
from periodic_fast.testing import ServerProcess
from periodic_fast.worker import Worker, WorkerJob

pytestmark = pytest.mark.slow

KILLS = 6
SUBMITTERS = 4


async def _submitter(
    address: str, tag: str, acked: set[str], stop: asyncio.Event
) -> None:
    """Submit distinct jobs until ``stop``; add each acknowledged name."""
    i = 0
    while not stop.is_set():
        try:
            async with Client(address, timeout=5, reconnect=False) as client:
                while not stop.is_set():
                    name = f"{tag}-{i}"
                    i += 1
                    if await client.submit_job("crash", name, name):
                        acked.add(name)
        except (ClientError, OSError, asyncio.TimeoutError):
            await asyncio.sleep(0.02)  # the server is down: try again


async def _round(
    proc: ServerProcess, rnd: int, acked: set[str], rng: random.Random
) -> None:
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(_submitter(proc.address, f"r{rnd}t{t}", acked, stop))
        for t in range(SUBMITTERS)
    ]
    await asyncio.sleep(rng.uniform(0.3, 1.2))  # a random moment under load
    before = len(acked)
    proc.kill()  # SIGKILL: no shutdown, no final commit
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert len(acked) >= before  # replies already read still count


def test_sigkill_loses_no_acknowledged_job(tmp_path: Path) -> None:
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    db = tmp_path / "crash.db"
    acked: set[str] = set()
    proc = ServerProcess(["-p", f"file://{db}", "--log", "warning"], start_timeout=60)
    try:
        for rnd in range(KILLS):
            proc.start()
            asyncio.run(asyncio.wait_for(_round(proc, rnd, acked, rng), 60))
        assert len(acked) > 100, f"too few submissions to mean anything (seed {seed})"
        proc.start()

        async def check() -> None:
            async with Client(proc.address, timeout=30) as client:
                stored = {j.name.decode() for j in await client.dump()}
            lost = acked - stored
            assert not lost, f"{len(lost)} acknowledged jobs lost (seed {seed})"
            done: set[str] = set()
            all_done = asyncio.Event()

            async def work(job: WorkerJob) -> None:
                done.add(job.name)
                if acked <= done:
                    all_done.set()

            workers = [Worker(proc.address) for _ in range(2)]
            tasks = []
            for w in workers:
                await w.add_func("crash", work)
                tasks.append(asyncio.create_task(w.work(size=16, signals=())))
            try:
                await asyncio.wait_for(all_done.wait(), 60)
            finally:
                for w in workers:
                    await w.shutdown(timeout=5)
                for t in tasks:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(t, 10)
            assert acked <= done
            # and they are gone from the store once done
            deadline = time.monotonic() + 10
            async with Client(proc.address, timeout=30) as client:
                while True:
                    left = {j.name.decode() for j in await client.dump()} & acked
                    if not left or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.05)
            assert not left

        asyncio.run(asyncio.wait_for(check(), 120))
    finally:
        proc.kill()
