"""Named pipelines: the one place that says which passes run, in which order."""
from __future__ import annotations

# Target-independent cleanup and fusion. Folding runs again after the fusions because they leave
# constant subgraphs (e.g. scales) behind.
OPTIMIZE = [
    "fold-constants",
    "llm-interface",
    "eliminate-dead-code",
    "canonicalize",
    "fold-layout-roundtrips",
    "fuse-norms",
    "fuse-attention",
    "fuse-activations",
    "fold-constants",
    "eliminate-dead-code",
]

# Decoders with past inputs get their generation interface early in OPTIMIZE (so the fusions see the
# computed mask and positions) and their KV cache after fuse-attention; all are no-ops for other graphs.
LLM_AFTER = ["kv-cache", "fuse-rope", "slice-logits", "fold-constants", "eliminate-dead-code"]

# --qm: calibration (AWQ for int4 schemes, SmoothQuant for w8a8; no-ops without calibration data or for
# other schemes) rescales the fp32 weights, bit-allocation picks the layers of a 4-bit scheme kept at 8 bits,
# GPTQ rounds the others with error compensation where --quant-method asks, then quantize rounds the rest
# to nearest, and a tied embedding whose quantized table equals the LM head's reads the head's weights
# (tie-tables: stored once, on targets that can); int8 activations are quantized
# once per input, and in the normalization kernel where a norm feeds only them. All no-ops at fp32.
QUANTIZE = ["awq", "smoothquant", "bit-allocation", "gptq", "quantize", "tie-tables", "quantize-activations",
            "fuse-norm-quantize", "eliminate-dead-code"]

# Targets that compute in fp16 (the GPUs: Capabilities.activations) convert the quantized graph; a no-op on
# the CPUs.
PRECISION = ["float16"]

PIPELINES: dict[str, list[str]] = {
    # What `tcc compile` runs: optimize, quantize, rewrite ops into kernel-family forms, plan memory.
    "default": OPTIMIZE + LLM_AFTER + QUANTIZE + PRECISION + ["lower-ops", "eliminate-dead-code", "plan-memory"],
    # What `tcc ir` shows by default: everything but lowering and memory planning.
    "optimize": OPTIMIZE + LLM_AFTER + QUANTIZE + PRECISION,
    "cleanup": ["fold-constants", "eliminate-dead-code"],
}


def get_pipeline(name: str) -> list[str]:
    from ..errors import TccError

    if name not in PIPELINES:
        raise TccError(f"unknown pipeline {name!r}; known: {', '.join(sorted(PIPELINES))}")
    return list(PIPELINES[name])
