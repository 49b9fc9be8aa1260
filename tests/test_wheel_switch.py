"""periodic_fast.wheel picks the compiled twin unless the env var forbids it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CODE = (
    "import periodic_fast.wheel as w; print(w.IMPLEMENTATION, w.TimerWheel.__module__)"
)


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
    assert _run("1") == ["python", "periodic_fast._wheel_py"]


@pytest.mark.c_extension
def test_cython_by_default(request: pytest.FixtureRequest) -> None:
    if os.environ.get("PERIODIC_FAST_NO_EXTENSIONS") or request.config.getoption(
        "--no-c-extensions"
    ):
        pytest.skip("C extensions disabled")
    assert _run(None) == ["cython", "periodic_fast._wheel_c"]
