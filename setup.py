"""Build the Cython twins when possible; fall back to a pure-Python install.

Environment variables (read here at build time only):

* ``PERIODIC_FAST_NO_EXTENSIONS`` - any non-empty value: build no extensions.
* ``PERIODIC_FAST_DEBUG_BUILD`` - ``-O0 -g``, Cython assertions and bounds checks on.
* ``PERIODIC_FAST_CYTHON_TRACE`` - line tracing for coverage of the .pyx files.
* ``PERIODIC_FAST_CYTHON_ANNOTATE`` - write the HTML annotation next to each .pyx.
"""

from __future__ import annotations

import os
import pathlib
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = pathlib.Path(__file__).parent
NO_EXTENSIONS = bool(os.environ.get("PERIODIC_FAST_NO_EXTENSIONS")) or (
    sys.implementation.name != "cpython"
)
DEBUG = bool(os.environ.get("PERIODIC_FAST_DEBUG_BUILD"))
TRACE = bool(os.environ.get("PERIODIC_FAST_CYTHON_TRACE"))
ANNOTATE = bool(os.environ.get("PERIODIC_FAST_CYTHON_ANNOTATE"))


class OptionalBuildExt(build_ext):
    """build_ext that turns a failed compile into a pure-Python install.

    A machine with no C compiler still gets a working package: the switch
    modules fall back to the ``_py`` twins at import time.
    """

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any compiler failure
            self._warn(exc)

    def build_extension(self, ext):  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._warn(exc)

    @staticmethod
    def _warn(exc: BaseException) -> None:
        print(
            "*" * 70 + "\nperiodic_fast: C extensions could not be built "
            f"({exc!r});\nthe pure-Python twins will be used.\n" + "*" * 70,
            file=sys.stderr,
        )


def extensions() -> list:
    if NO_EXTENSIONS:
        print("periodic_fast: PERIODIC_FAST_NO_EXTENSIONS set, pure-Python build")
        return []
    try:
        from Cython.Build import cythonize  # noqa: PLC0415 - optional at build
    except ImportError:
        print("periodic_fast: Cython missing, pure-Python build", file=sys.stderr)
        return []
    macros = [("CYTHON_TRACE_NOGIL", "1")] if TRACE else []
    cflags = ["-O0", "-g", "-UNDEBUG"] if DEBUG else ["-O3"]
    exts = [
        Extension(
            f"periodic_fast.{pyx.stem}",
            [str(pyx.relative_to(HERE))],
            define_macros=macros,
            extra_compile_args=cflags,
        )
        for pyx in sorted((HERE / "periodic_fast").glob("_*_c.pyx"))
    ]
    directives = {
        "language_level": "3",
        "boundscheck": DEBUG,
        "wraparound": DEBUG,
        "cdivision": True,
        "initializedcheck": DEBUG,
        "linetrace": TRACE,
        "profile": TRACE,
        "embedsignature": True,
    }
    print(f"periodic_fast: building {len(exts)} Cython extension(s)")
    return cythonize(exts, compiler_directives=directives, annotate=ANNOTATE)


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
