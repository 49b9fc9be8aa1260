"""The per-job record twins (periodic_fast.rec): same API, same results; the
compiled one is live unless the env var forbids it."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from periodic_fast import _rec_py
from periodic_fast.job import Job

TWINS: list[Any] = [_rec_py]
try:
    from periodic_fast import _rec_c  # type: ignore[attr-defined]

    TWINS.append(_rec_c)
except ImportError:  # pragma: no cover - pure build
    pass


@pytest.fixture(params=TWINS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def twin(request: pytest.FixtureRequest) -> Any:
    return request.param


def test_fields_and_defaults(twin: Any) -> None:
    job = Job(b"f", b"n", b"w", 123)
    rec = twin.JobRec(7, job)
    assert (rec.id, rec.job) == (7, job)
    assert (rec.state, rec.where, rec.epoch, rec.run, rec.confirmed) == (
        0,
        0,
        0,
        0,
        False,
    )
    rec.state = -1
    rec.where = 2
    rec.run += 3
    rec.run -= 1
    rec.epoch = -1
    rec.confirmed = True
    assert (rec.state, rec.where, rec.run, rec.epoch, rec.confirmed) == (
        -1,
        2,
        2,
        -1,
        True,
    )
    assert not hasattr(rec, "__dict__")
    with pytest.raises(AttributeError):
        rec.fs = None  # nothing but the job: a record can be in no cycle


def test_key_is_the_handle(twin: Any) -> None:
    rec = twin.JobRec(0, Job(b"func", b"name"))
    assert rec.key == b"\x04func\x04name"
    long = b"x" * 255
    rec = twin.JobRec(0, Job(long, long))
    assert rec.key == b"\xff" + long + b"\xff" + long


def test_repend_new_epoch_wraps(twin: Any) -> None:
    rec = twin.JobRec(0, Job(b"f", b"n"))
    rec.run = 2
    rec.confirmed = True
    rec.repend()
    assert (rec.epoch, rec.run, rec.confirmed) == (1, 0, False)
    rec.epoch = twin.EPOCH_MASK
    rec.repend()
    assert rec.epoch == 0


CODE = "import periodic_fast.rec as r; print(r.IMPLEMENTATION, r.JobRec.__module__)"


def _run(env_value: str | None) -> list[str]:
    env = dict(os.environ)
    env.pop("PERIODIC_FAST_NO_EXTENSIONS", None)
    if env_value is not None:
        env["PERIODIC_FAST_NO_EXTENSIONS"] = env_value
    out = subprocess.run(
        [sys.executable, "-c", CODE],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.split()


def test_env_var_forces_python() -> None:
    assert _run("1") == ["python", "periodic_fast._rec_py"]


@pytest.mark.c_extension
def test_cython_by_default(request: pytest.FixtureRequest) -> None:
    if os.environ.get("PERIODIC_FAST_NO_EXTENSIONS") or request.config.getoption(
        "--no-c-extensions"
    ):
        pytest.skip("C extensions disabled")
    assert _run(None) == ["cython", "periodic_fast._rec_c"]


def test_scheduler_uses_the_switch() -> None:
    from periodic_fast import rec, scheduler

    assert scheduler._JobRec is rec.JobRec


def test_compiled_record_is_small_and_untracked() -> None:
    if len(TWINS) < 2:
        pytest.skip("C extensions not built")
    import gc

    rec = TWINS[1].JobRec(0, Job(b"f", b"n"))
    assert not gc.is_tracked(rec)
    assert sys.getsizeof(rec) <= 48
