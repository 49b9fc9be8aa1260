"""Shared fixtures: one parametrised fixture per accelerated unit.

``codec_impl`` and ``wheel_impl`` yield the twin modules with ids ``c`` and
``py``.  The ``c`` parameter carries the ``c_extension`` marker; it is skipped
when ``--no-c-extensions`` is given or ``PERIODIC_FAST_NO_EXTENSIONS`` is set,
and it *fails* (never skips) when the compiled module is missing otherwise, so
a broken build cannot pass silently.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

from periodic_fast._compat import NO_EXTENSIONS


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--no-c-extensions",
        action="store_true",
        default=False,
        help="skip the tests of the compiled Cython twins",
    )


def _twin(request: pytest.FixtureRequest, unit: str) -> ModuleType:
    if request.param == "py":
        return importlib.import_module(f"periodic_fast._{unit}_py")
    if NO_EXTENSIONS or request.config.getoption("--no-c-extensions"):
        pytest.skip("C extensions disabled")
    return importlib.import_module(f"periodic_fast._{unit}_c")


_PARAMS = [pytest.param("c", marks=pytest.mark.c_extension), "py"]


@pytest.fixture(params=_PARAMS, scope="session")
def codec_impl(request: pytest.FixtureRequest) -> ModuleType:
    """The codec twin under test (``_codec_c`` or ``_codec_py``)."""
    return _twin(request, "codec")


@pytest.fixture(params=_PARAMS, scope="session")
def wheel_impl(request: pytest.FixtureRequest) -> ModuleType:
    """The timer-wheel twin under test (``_wheel_c`` or ``_wheel_py``)."""
    return _twin(request, "wheel")


@pytest.fixture(autouse=True)
def _no_default_store(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Servers started by tests without ``-p`` (``periodicd``, ``periodic -d``
    subprocesses inherit the environment) run on ``:memory:``, and the default
    database path points into a temporary directory: no test ever touches the
    user's ``~/.local/share/periodic_fast/periodic.db``.  Tests of the default
    path itself unset ``PERIODIC_PATH``."""
    monkeypatch.setenv("PERIODIC_PATH", ":memory:")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg-data")))
