"""Every module imports on its own, and the layer table holds: the codec,
the wheel, the store and the scheduler leave asyncio, sockets and typer out."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

PKG = pathlib.Path(__file__).resolve().parent.parent / "periodic_fast"


def _modules() -> list[str]:
    mods = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods.append(".".join(parts))
    return mods


@pytest.mark.parametrize("module", _modules())
def test_module_imports_alone(module: str) -> None:
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True)


# L0-L3: nothing here may pull in the networking or CLI layers.
LOW_LAYERS = [
    "periodic_fast",
    "periodic_fast.constants",
    "periodic_fast.errors",
    "periodic_fast.job",
    "periodic_fast.codec",
    "periodic_fast.wheel",
    "periodic_fast.store",
    "periodic_fast.scheduler",
]
FORBIDDEN = ["asyncio", "socket", "typer", "uvloop", "periodic_fast.server"]


@pytest.mark.parametrize("module", LOW_LAYERS)
def test_low_layers_stay_sans_io(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


CLIENT_SIDE = [
    "periodic_fast.client",
    "periodic_fast.worker",
    "periodic_fast.cluster",
    "periodic_fast.sync",
    "periodic_fast.rsa_transport",
    "periodic_fast._rsa_client",
    "periodic_fast.pipe_worker",
    "periodic_fast.exec_worker",
]


@pytest.mark.parametrize("module", CLIENT_SIDE)
def test_client_never_imports_the_server(module: str) -> None:
    if not (PKG / (module.rsplit(".", 1)[1] + ".py")).exists():
        pytest.skip(f"{module} not written yet")
    code = (
        f"import sys, {module}\n"
        "bad = [m for m in ('periodic_fast.server', 'periodic_fast.scheduler',"
        " 'periodic_fast.store', 'periodic_fast.wheel') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_package_exports_resolve_lazily() -> None:
    """Every name in ``periodic_fast.__all__`` is reachable from the package
    and is the class of its module; none is imported before first use."""
    code = (
        "import sys, periodic_fast as p\n"
        "assert 'periodic_fast.client' not in sys.modules\n"
        "from periodic_fast.client import Client\n"
        "from periodic_fast.cluster import ClientCluster, WorkerCluster\n"
        "from periodic_fast.sync import SyncClient\n"
        "from periodic_fast.worker import Worker\n"
        "want = dict(Client=Client, ClientCluster=ClientCluster,\n"
        "    SyncClient=SyncClient, Worker=Worker, WorkerCluster=WorkerCluster)\n"
        "assert sorted(want) == sorted(n for n in p.__all__ if n != '__version__')\n"
        "for name, cls in want.items():\n"
        "    assert getattr(p, name) is cls, name\n"
        "try:\n"
        "    p.Nope\n"
        "except AttributeError:\n"
        "    pass\n"
        "else:\n"
        "    raise AssertionError('unknown name resolved')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
