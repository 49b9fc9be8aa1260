"""The repaired Linux wheel installs into a fresh virtualenv on a machine with
no C compiler, and the compiled twins are what runs there.

``scripts/build_wheel.sh`` builds the sdist, the wheel from it, and repairs the
wheel with auditwheel (a manylinux tag).  The wheel is then installed with
``PATH`` holding only the new venv's ``bin`` and ``CC``/``CXX``/``LDSHARED``
set to ``/bin/false``, every dependency as a binary wheel (``--only-binary``):
nothing may be compiled.  ``scripts/smoke_wheel.py`` (cibuildwheel's test
command too) then checks that ``codec``, ``wheel`` and ``rec`` report
``IMPLEMENTATION == "cython"`` from the installed package and that
``periodicd`` from the wheel starts and answers a PING.  A wheel without the extensions
fails here (the build script refuses it, and the import check would say
``python``).  Slow (a real build), so it runs once, in the compiled run.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import venv
import zipfile
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from periodic_fast._compat import NO_EXTENSIONS

F = TypeVar("F", bound=Callable[..., Any])
ROOT = pathlib.Path(__file__).resolve().parent.parent
TWINS = ("_codec_c", "_wheel_c", "_rec_c")

# the build and install tests: slow, once per suite (in the compiled run), Linux
BUILT_HERE = (
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        NO_EXTENSIONS or not sys.platform.startswith("linux"),
        reason="the wheel is built once, in the compiled run, on Linux (auditwheel)",
    ),
)


def built_here(test: F) -> F:
    """Mark ``test`` as one of the build-and-install tests."""
    for mark in BUILT_HERE:
        test = mark(test)
    return test


# what [tool.cibuildwheel] in pyproject.toml must select for a release
RELEASE_WHEELS = {
    "linux": [
        f"cp3{minor}-manylinux_{arch}"
        for arch in ("x86_64", "aarch64")
        for minor in (10, 11, 12, 13)
    ],
    "macos": [
        f"cp3{minor}-macosx_{arch}"
        for minor in (10, 11, 12, 13)
        for arch in ("x86_64", "arm64")
    ],
}


@pytest.mark.parametrize("platform", sorted(RELEASE_WHEELS))
def test_cibuildwheel_selects_the_release_wheels(platform: str) -> None:
    """cibuildwheel (dev extra) reads the config and lists the builds it would
    run; no container or macOS needed for that."""
    cibw = shutil.which("cibuildwheel", path=str(pathlib.Path(sys.executable).parent))
    if cibw is None:
        pytest.skip("cibuildwheel is not installed (pip install -e '.[dev]')")
    out = _run(
        [cibw, "--print-build-identifiers", "--platform", platform, str(ROOT)],
        dict(os.environ),
        ROOT,
        timeout=120,
    )
    assert sorted(out.split()) == sorted(RELEASE_WHEELS[platform])


def _run(
    cmd: list[str], env: dict[str, str], cwd: pathlib.Path, timeout: float = 600
) -> str:
    out = subprocess.run(
        cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


@pytest.fixture(scope="module")
def repaired_wheel(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The wheel ``scripts/build_wheel.sh`` makes from a clean copy of the
    tracked files (no in-place .so or .c can slip in)."""
    src = tmp_path_factory.mktemp("src") / "periodic_fast"
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("wheelhouse")
    env = {k: v for k, v in os.environ.items() if k != "PERIODIC_FAST_NO_EXTENSIONS"}
    env.update(PYTHON=sys.executable, SRC=str(src))
    _run(["bash", str(ROOT / "scripts" / "build_wheel.sh"), str(out)], env, src)
    (wheel,) = out.glob("*.whl")
    return wheel


@built_here
def test_repaired_wheel_is_manylinux_with_the_twins(
    repaired_wheel: pathlib.Path,
) -> None:
    assert "manylinux" in repaired_wheel.name, repaired_wheel.name
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    assert f"-{tag}-{tag}-" in repaired_wheel.name
    names = zipfile.ZipFile(repaired_wheel).namelist()
    for twin in TWINS:
        assert any(
            n.startswith(f"periodic_fast/{twin}.") and n.endswith(".so") for n in names
        ), f"{twin} missing from {repaired_wheel.name}"
    assert not any(n.endswith(".c") for n in names)


@built_here
def test_fresh_venv_without_a_compiler_runs_the_compiled_twins(
    repaired_wheel: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    where = tmp_path / "venv"
    venv.create(where, with_pip=True, clear=True)
    bindir = where / "bin"
    py = str(bindir / "python")
    # no compiler reachable: the venv's bin alone on PATH, and every compiler
    # variable a build would read points at /bin/false
    env = {
        "PATH": str(bindir),
        "HOME": os.environ.get("HOME", str(tmp_path)),
        "CC": "/bin/false",
        "CXX": "/bin/false",
        "LDSHARED": "/bin/false",
        "PYTHONHASHSEED": "0",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PERIODIC_PATH": ":memory:",
        "XDG_DATA_HOME": str(tmp_path / "xdg"),
    }
    for compiler in ("cc", "gcc", "c++", "g++", "clang", "ld"):
        assert shutil.which(compiler, path=env["PATH"]) is None, compiler
    cwd = tmp_path / "empty"  # the source tree must not shadow the install
    cwd.mkdir()
    _run(
        [py, "-m", "pip", "install", "-q", "--only-binary=:all:", str(repaired_wheel)],
        env,
        cwd,
    )
    # the same smoke check cibuildwheel runs on every wheel it builds
    smoke = str(ROOT / "scripts" / "smoke_wheel.py")
    lines = _run([py, smoke], env, cwd).splitlines()
    assert lines[-1] == "smoke ok", lines
    assert lines[0].startswith(str(where)), lines[0]  # the installed package
    for path, twin in zip(lines[1:4], TWINS, strict=True):
        assert path.startswith(str(where)) and twin in path and path.endswith(".so")
    assert "codec: cython, wheel: cython, rec: cython" in lines[4], lines[4]
    assert lines[5].startswith("pong from tcp://127.0.0.1:"), lines[5]
