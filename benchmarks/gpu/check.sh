#!/usr/bin/env bash
# Issue 17's GPU check in one device call (benchmarks/gpu/check.py says what it does). From the repo root:
#   bash benchmarks/gpu/check.sh [check.py options]   # results in $OUT: check.json, check.md, check.log, logs
# The machine is bare and offline: nothing is installed. The working tree is copied to /tmp/tcc-pkg/tcc and
# used from there (the repository root is the `tcc` package, and pytest names test modules after the folder,
# which must be a Python identifier). Python packages the machine lacks can travel as wheels in .whl/ (the
# device tool's README: name .whl in `carry`); they are installed into /tmp/site without the network.
set -u
# `timeout -s TERM` signals the whole group: only check.py acts on it (it kills its builds and writes the report);
# this script and tee go on, so the output and the logs still come back.
trap '' TERM
REPO=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$REPO/build/gpucheck}
mkdir -p "$OUT"
rm -rf /tmp/tcc-pkg && mkdir -p /tmp/tcc-pkg && cp -a "$REPO" /tmp/tcc-pkg/tcc || exit 1
if ls "$REPO"/.whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$REPO"/.whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=/tmp/tcc-pkg:/tmp/tcc-pkg/tcc${PYTHONPATH:+:$PYTHONPATH}
export TCC_CACHE_DIR=${TCC_CACHE_DIR:-/tmp/tcc-cache} PYTHONUNBUFFERED=1 PATH=$PATH:/usr/local/cuda/bin
cd /tmp/tcc-pkg/tcc
python3 benchmarks/gpu/check.py --out "$OUT" --work /tmp/tcc-gpucheck "$@" 2>&1 | tee "$OUT/check.log"
rc=${PIPESTATUS[0]}
# the logs worth reading, at most 2 MB each (the tool brings back 8 files)
for f in kernels memcheck racecheck memcheck-small racecheck-small; do
  [ -f "/tmp/tcc-gpucheck/$f.log" ] && tail -c 2000000 "/tmp/tcc-gpucheck/$f.log" > "$OUT/$f.log"
done
exit "$rc"
