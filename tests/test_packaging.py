"""The package builds as a wheel and an sdist, installs into a fresh virtualenv
and works there; it also builds and works with no extensions and with no C
compiler.  Slow (real builds), so each build happens once per session."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import venv

import pytest

from periodic_fast._compat import NO_EXTENSIONS

ROOT = pathlib.Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        NO_EXTENSIONS, reason="packaging is checked once, in the compiled run"
    ),
]

CHECK = """
import periodic_fast, periodic_fast.codec as c, periodic_fast.wheel as w
from periodic_fast.job import Job
f = c.encode_request(1, 13, c.encode_job(Job(b"f", b"n", b"w")))
p = c.Parser(requests=True)
assert p.feed(f)[0].payload == f[17:]
t = w.TimerWheel(); t.add(1, 5); assert t.advance(10) == [1]
print(c.IMPLEMENTATION, w.IMPLEMENTATION)
"""


def _run(cmd: list[str], **kw: object) -> str:
    env = dict(os.environ)
    env.pop("PERIODIC_FAST_NO_EXTENSIONS", None)
    env.update(kw.pop("env", {}))  # type: ignore[arg-type]
    out = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=600, **kw
    )  # type: ignore[call-overload]
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return str(out.stdout)


def _pip_wheel(source: pathlib.Path, out: pathlib.Path, env: dict[str, str]) -> None:
    """Build one wheel of ``source`` into ``out`` with extra build ``env``."""
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps"]
    _run([*pip, "-w", str(out), str(source)], env=env)


def _fresh_python(where: pathlib.Path) -> str:
    venv.create(where, with_pip=True, clear=True)
    return str(where / "bin" / "python")


def _install_and_check(tmp: pathlib.Path, wheel: pathlib.Path) -> str:
    py = _fresh_python(tmp / "venv")
    # --no-deps: the check needs only the stdlib, and stays offline-friendly
    _run([py, "-m", "pip", "install", "-q", "--no-deps", str(wheel)])
    # run from an empty directory so the source tree cannot shadow the install
    return _run([py, "-c", CHECK], cwd=str(tmp)).split()[-2:]  # type: ignore[return-value]


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A clean copy of the tracked files (no in-place .so or .c)."""
    dst = tmp_path_factory.mktemp("src") / "periodic_fast"
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        src = ROOT / name
        if src.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)
    return dst


def test_build_wheel_and_sdist_compiled(
    source_copy: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    out = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--outdir", str(out), str(source_copy)])
    wheels = list(out.glob("*.whl"))
    sdists = list(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    assert "none-any" not in wheels[0].name  # a platform wheel with the .so files
    names = subprocess.run(
        [sys.executable, "-m", "zipfile", "-l", str(wheels[0])],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "_codec_c" in names and "_wheel_c" in names
    assert ".c " not in names and ".pyx" in names
    assert _install_and_check(tmp_path, wheels[0]) == ["cython", "cython"]


def test_pure_build_with_env_var(
    source_copy: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    out = tmp_path / "dist"
    _pip_wheel(source_copy, out, {"PERIODIC_FAST_NO_EXTENSIONS": "1"})
    (wheel,) = out.glob("*.whl")
    assert wheel.name.endswith("py3-none-any.whl")
    assert _install_and_check(tmp_path, wheel) == ["python", "python"]


def test_build_without_a_c_compiler(
    source_copy: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    out = tmp_path / "dist"
    # 'false' stands in for a missing compiler: every compile step fails
    _pip_wheel(source_copy, out, {"CC": "false", "CXX": "false", "LDSHARED": "false"})
    (wheel,) = out.glob("*.whl")
    assert _install_and_check(tmp_path, wheel) == ["python", "python"]
