#!/usr/bin/env bash
# Issue 17's GPU check in one device call (benchmarks/gpu/check.py says what it does). From the repo root:
#   bash benchmarks/gpu/check.sh [check.py options]        # results in $OUT (check.json, check.md, logs)
# The machine is bare and offline: tcc is used from this working tree (a `tcc` link to the repo root on
# PYTHONPATH, nothing installed); Python packages it lacks can travel as wheels in .whl/ (the device tool's
# README: name .whl in `carry`), installed here into /tmp/site without the network.
set -u
REPO=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$REPO/build/gpucheck}
mkdir -p "$OUT" /tmp/tcc-pkg
ln -sfn "$REPO" /tmp/tcc-pkg/tcc
if ls "$REPO"/.whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$REPO"/.whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=/tmp/tcc-pkg:$REPO${PYTHONPATH:+:$PYTHONPATH}
export TCC_CACHE_DIR=${TCC_CACHE_DIR:-/tmp/tcc-cache} PYTHONUNBUFFERED=1 PATH=$PATH:/usr/local/cuda/bin
cd "$REPO"
python3 benchmarks/gpu/check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/check.log"
exit "${PIPESTATUS[0]}"
