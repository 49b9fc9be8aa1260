#!/usr/bin/env bash
# Install periodic_fast with its test extras into .venv and run the whole suite
# twice: with the compiled Cython twins, then with PERIODIC_FAST_NO_EXTENSIONS=1.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# editable install: setup.py compiles the .pyx files in place (never committed)
"$VENV/bin/python" -m pip install -q -e '.[test,dev]'
export PYTHONHASHSEED=0
echo "== lint: ruff, mypy --strict =="
"$VENV/bin/ruff" check periodic_fast tests bench
"$VENV/bin/ruff" format --check periodic_fast tests bench
"$VENV/bin/mypy"
echo "== suite with the Cython twins =="
"$VENV/bin/python" -m pytest "$@"
echo "== suite with the pure-Python twins (PERIODIC_FAST_NO_EXTENSIONS=1) =="
PERIODIC_FAST_NO_EXTENSIONS=1 "$VENV/bin/python" -m pytest "$@"
