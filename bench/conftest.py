"""Benchmark fixtures: the same ``codec_impl`` ids ``[c]``/``[py]`` as tests/.

Duplicated (not imported) from tests/conftest.py so ``pytest bench`` works on
its own; ``--no-c-extensions`` is honoured when tests/conftest.py registered it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

from periodic_fast._compat import NO_EXTENSIONS


def _twin(request: pytest.FixtureRequest, unit: str) -> ModuleType:
    if request.param == "py":
        return importlib.import_module(f"periodic_fast._{unit}_py")
    if NO_EXTENSIONS or request.config.getoption("--no-c-extensions", False):
        pytest.skip("C extensions disabled")
    return importlib.import_module(f"periodic_fast._{unit}_c")  # fails if not built


_PARAMS = [pytest.param("c", marks=pytest.mark.c_extension), "py"]


@pytest.fixture(params=_PARAMS, scope="session")
def codec_impl(request: pytest.FixtureRequest) -> ModuleType:
    """The codec twin under benchmark (``_codec_c`` or ``_codec_py``)."""
    return _twin(request, "codec")
