"""The switch modules pick the compiled twin unless PERIODIC_FAST_NO_EXTENSIONS
is set: a silent fallback to pure Python must fail here, not ship."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from periodic_fast import codec
from periodic_fast._compat import NO_EXTENSIONS

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "periodic_fast"
ROOT = PACKAGE.parent

# (switch module, a class it re-exports)
UNITS = [("codec", "Parser"), ("wheel", "TimerWheel")]


def _skip_missing(unit: str) -> None:
    if not (PACKAGE / f"{unit}.py").exists():
        pytest.skip(f"periodic_fast/{unit}.py does not exist yet")
    if not (PACKAGE / f"_{unit}_c.pyx").exists():
        pytest.skip(f"periodic_fast/_{unit}_c.pyx does not exist yet")


def _probe(unit: str, cls: str, no_extensions: bool) -> dict[str, str]:
    """Import the switch in a fresh interpreter with the env var set or unset."""
    env = dict(os.environ)
    env.pop("PERIODIC_FAST_NO_EXTENSIONS", None)
    if no_extensions:
        env["PERIODIC_FAST_NO_EXTENSIONS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p
    )
    script = (
        "import json, importlib\n"
        f"m = importlib.import_module('periodic_fast.{unit}')\n"
        f"c = m.{cls}\n"
        "print(json.dumps({'impl': m.IMPLEMENTATION, 'module': c.__module__}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_codec_implementation_in_this_process() -> None:
    if NO_EXTENSIONS:
        assert codec.IMPLEMENTATION == "python"
        assert codec.Parser.__module__ == "periodic_fast._codec_py"
    else:
        assert codec.IMPLEMENTATION == "cython"
        assert codec.Parser.__module__ == "periodic_fast._codec_c"


@pytest.mark.parametrize(("unit", "cls"), UNITS)
def test_env_var_set_forces_python(unit: str, cls: str) -> None:
    _skip_missing(unit)
    got = _probe(unit, cls, no_extensions=True)
    assert got == {"impl": "python", "module": f"periodic_fast._{unit}_py"}


@pytest.mark.parametrize(("unit", "cls"), UNITS)
def test_env_var_unset_uses_cython(unit: str, cls: str) -> None:
    _skip_missing(unit)
    if NO_EXTENSIONS:
        pytest.skip("pure-Python run: the compiled twins may not be built")
    got = _probe(unit, cls, no_extensions=False)
    assert got == {"impl": "cython", "module": f"periodic_fast._{unit}_c"}


def test_switch_exports_the_live_twin() -> None:
    from periodic_fast import _codec_py

    twin = _codec_py
    if codec.IMPLEMENTATION == "cython":
        from periodic_fast import _codec_c as twin  # type: ignore[no-redef]
    # codec's own helpers beside the twin's API (the LOAD size bound)
    own = {"LOAD_FRAME_OVERHEAD", "load_frame_size", "oversize_job"}
    assert set(_codec_py.__all__) | {"IMPLEMENTATION"} | own == set(codec.__all__)
    assert not own & set(_codec_py.__all__)
    assert set(twin.__all__) == set(_codec_py.__all__)
    for name in _codec_py.__all__:
        assert getattr(codec, name) is getattr(twin, name), name
