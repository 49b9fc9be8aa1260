#!/usr/bin/env bash
# The fast part of the suite on the oldest and the newest supported CPython
# (3.10 and 3.13; the main run in scripts/test.sh uses python3, 3.11 here).
#
#   bash scripts/test_pythons.sh [PYTEST_ARGS...]
#
# For each version in PYTHONS (default "3.10 3.13"; empty skips this step):
# a venv .venv-pyX.Y from pyenv's interpreter, an editable install with the
# test extra (the Cython twins compiled for that version), then pytest on the
# FAST_TESTS files below with the compiled twins, -m "not slow". The list keeps
# one or more files per layer and leaves out what is slow and does not depend
# on the interpreter (the long parity, fuzz, restart, load, pipe-worker, most
# interop and CLI tests run in the main suite): about 2-3 minutes a version on
# 2 cores, the install included; the versions run side by side. An interpreter that
# is missing is skipped with a line saying so, except under CI=true, where it
# fails. README.md (Test) says the same.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHONS=${PYTHONS-3.10 3.13}
FAST_TESTS=(
    # L0/L1: the twins compiled for this version, names, layering, rights
    tests/test_codec.py tests/test_codec_errors.py tests/test_wheel.py
    tests/test_rec.py tests/test_switch.py tests/test_imports.py
    tests/test_public_names.py tests/test_layering.py tests/test_auth.py
    tests/test_defaults.py
    # L2/L3: the stores (SQLite, and PostgreSQL through asyncpg), the scheduler
    tests/test_store.py tests/test_sqlite_store.py tests/test_postgres_store.py
    tests/test_scheduler.py tests/test_clock.py
    # the job features beyond the protocol (zoneinfo and cron arithmetic vary
    # with the interpreter): retries, cron, the job browser, the series
    tests/test_retry_policy.py tests/test_cron.py tests/test_cron_sched.py
    tests/test_browse.py tests/test_series.py tests/test_store_extras.py
    # L4: server, client and worker on asyncio and uvloop, HTTP, RSA/AES
    # (cryptography), and aio-periodic against the server on both loops
    tests/test_server.py tests/test_conformance.py tests/test_client_worker.py
    tests/test_http.py tests/test_auth_http.py tests/test_rsa_v2.py
    tests/test_cluster.py tests/test_hostile_server.py tests/test_hostile_rights.py
    tests/test_limits.py
    "tests/test_interop_aio.py::test_broadcast_reaches_every_worker[asyncio-tcp]"
    "tests/test_interop_aio.py::test_broadcast_reaches_every_worker[uvloop-unix]"
    # L5: the CLI's options and messages
    tests/test_cli_ux.py
)

find_python() {
    # pyenv's build of version $1, else python$1 on PATH
    local v=$1 root=${PYENV_ROOT:-$HOME/.pyenv} cand
    for cand in "$root"/versions/"$v".*/bin/python"$v"; do
        [ -x "$cand" ] && { echo "$cand"; return 0; }
    done
    cand=$(command -v "python$v" 2>/dev/null) && "$cand" -V >/dev/null 2>&1 \
        && { echo "$cand"; return 0; }
    return 1
}

export PYTHONHASHSEED=0
# The versions' tests run side by side (one pytest process each; the machine
# has at least 2 cores), each into its own log, printed when all are done; the
# installs run one after the other (they compile in the same source tree).
run_tests() {
    local v=$1 venv=.venv-py$1 start
    start=$(date +%s)
    "$venv/bin/python" -m pytest -q -m "not slow" "${FAST_TESTS[@]}" "${@:2}"
    echo "== Python $v tests done in $(($(date +%s) - start)) s =="
}
pids=()
logs=()
versions=()
for v in $PYTHONS; do
    if ! py=$(find_python "$v"); then
        if [ "${CI:-}" = true ]; then
            echo "test_pythons.sh: Python $v not found (pyenv or python$v)" >&2
            exit 1
        fi
        echo "== SKIPPED: the fast suite on Python $v (no python$v here) =="
        continue
    fi
    venv=.venv-py$v
    echo "== fast suite on $("$py" -V) ($py): ${#FAST_TESTS[@]} test paths," \
        "Cython twins, -m 'not slow' =="
    [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install -q -e '.[test]'
    versions+=("$v")
done
for v in "${versions[@]}"; do
    log=$(mktemp "${TMPDIR:-/tmp}/test-py$v.XXXXXX")
    run_tests "$v" "$@" >"$log" 2>&1 &
    pids+=($!)
    logs+=("$log")
done
status=0
for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || status=1
    cat "${logs[$i]}"
    rm -f "${logs[$i]}"
done
exit $status
