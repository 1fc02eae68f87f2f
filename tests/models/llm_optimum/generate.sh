#!/usr/bin/env bash
# Regenerate tests/models/llm_optimum/{llama,opt,gpt2}/ with optimum-cli (see README.md).
#
#   bash tests/models/llm_optimum/generate.sh            # all three
#   bash tests/models/llm_optimum/generate.sh llama opt  # some
#
# optimum-onnx needs transformers < 4.58, which conflicts with the project's own environment,
# so everything runs in a separate virtualenv ($OPTIMUM_VENV, default /tmp/optimum-venv). It is
# created on first use: torch from the local CPU wheel ($TORCH_WHEEL) first, then the rest with
# torch pinned by a constraints file so pip never swaps in a CUDA build. Nothing is downloaded
# from a model hub (HF_HUB_OFFLINE=1): checkpoints and tokenizers are built by make_checkpoints.py.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${OPTIMUM_VENV:-/tmp/optimum-venv}"
TORCH_WHEEL="${TORCH_WHEEL:-/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl}"
PINS=(
  "transformers==4.57.6" "optimum==2.1.0" "optimum-onnx==0.1.0" "onnx==1.22.0" "onnxruntime==1.31.1"
  "tokenizers==0.22.2" "huggingface-hub==0.36.2" "accelerate==1.15.0" "numpy==2.4.6"
)
ARCHS=("$@")
[ ${#ARCHS[@]} -eq 0 ] && ARCHS=(llama opt gpt2)

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

if ! "$VENV/bin/python" -c "import optimum.exporters.onnx, onnxruntime, accelerate, torch" 2>/dev/null; then
  echo "creating $VENV"
  python3 -m venv "$VENV"
  quiet() { "$@" 2> >(grep -v "WARNING: Location .* is ignored" >&2); }
  quiet "$VENV/bin/pip" install -q "$TORCH_WHEEL"
  echo "torch==2.13.0+cpu" > "$WORK/constraints.txt"
  # accelerate: optimum's tied-weight de-duplication is skipped without it.
  quiet "$VENV/bin/pip" install -q -c "$WORK/constraints.txt" "${PINS[@]}"
fi
"$VENV/bin/python" - "${PINS[@]}" <<'EOF'
import importlib.metadata as md, sys
want = dict(p.split("==") for p in sys.argv[1:])
want["torch"] = "2.13.0+cpu"
bad = {k: (md.version(k), v) for k, v in want.items() if md.version(k) != v}
if bad:
    print("warning: venv versions differ from the ones the fixtures were made with:", bad)
EOF

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$VENV/bin/python" "$HERE/make_checkpoints.py" "$WORK/ckpt" "${ARCHS[@]}"
for arch in "${ARCHS[@]}"; do
  echo "optimum-cli export onnx --task text-generation-with-past ($arch)"
  if ! "$VENV/bin/optimum-cli" export onnx --task text-generation-with-past \
      --model "$WORK/ckpt/$arch" "$WORK/onnx/$arch" >"$WORK/export_$arch.log" 2>&1; then
    tail -n 40 "$WORK/export_$arch.log"
    exit 1
  fi
  grep -v "TracerWarning\|^  \|torch_dtype" "$WORK/export_$arch.log" | sed 's/^/    /' || true
done
"$VENV/bin/python" "$HERE/finalize.py" "$WORK/ckpt" "$WORK/onnx" "$HERE" "${ARCHS[@]}"
