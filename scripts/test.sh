#!/usr/bin/env bash
# Install periodic_fast with its test extras into .venv and run the whole suite
# twice: with the compiled Cython twins, then with PERIODIC_FAST_NO_EXTENSIONS=1;
# then the fast part on Python 3.10 and 3.13 (scripts/test_pythons.sh; PYTHONS=
# skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian packages the tests drive: a throwaway PostgreSQL cluster (the
# PostgreSQL store's tests), headless Chromium (the status page test), curl
# (the seed's curl lines). Without them those tests skip with the reason,
# except under CI=true, where they fail. SKIP_APT=1 skips this step.
if [ -z "${SKIP_APT:-}" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== apt-get install postgresql chromium curl libfaketime =="
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends \
        postgresql chromium curl libfaketime >/dev/null
fi
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# editable install: setup.py compiles the .pyx files in place (never committed);
# the bench extra (rich, matplotlib, peer clients) lets the bench smoke test run
"$VENV/bin/python" -m pip install -q -e '.[test,dev,bench]'
export PYTHONHASHSEED=0
echo "== lint: ruff, mypy --strict =="
"$VENV/bin/ruff" check periodic_fast tests bench
"$VENV/bin/ruff" format --check periodic_fast tests bench
"$VENV/bin/mypy"
echo "== suite with the Cython twins =="
"$VENV/bin/python" -m pytest "$@"
echo "== suite with the pure-Python twins (PERIODIC_FAST_NO_EXTENSIONS=1) =="
PERIODIC_FAST_NO_EXTENSIONS=1 "$VENV/bin/python" -m pytest "$@"
# the oldest and newest supported interpreters, a chosen fast subset (the
# pytest arguments above are for the main runs, not passed on)
bash scripts/test_pythons.sh
