"""Quantization schemes, keyed by `--qm`: what the quantize pass makes of each Linear, and which calibration
improves it. The numerics of the quantized ops are in ir/ops/quant.py; which targets run a scheme is the
target description's business (`Target.qms`).

  fp32   no quantization
  fp16   no quantization, fp16 weights and activations (the GPU targets' baseline: passes/float16.py)
  w8a8   int8 weights per output channel (symmetric), int8 activations per row at run time; SmoothQuant
  w4a32  int4 group-wise weights, fp32 activations (the kernel dequantizes); AWQ
  w4a16  int4 group-wise weights, fp16 activations and fp16 arithmetic in the Linear layers (arm); AWQ
  w4a8   int4 group-wise weights, int8 activations per row and group at run time (int8 dot products); AWQ
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import TccError


# Scheme.act_group for one activation scale per row (a group of all of K).
ACT_ROW = -1
# w8a8's activation group along K: per row. Measured (docs/quantization.md): on the demo model per row and
# groups of 32 are within noise of each other (RTN +0.03% / +0.04% perplexity vs fp32; per tensor +0.36%),
# and both keep the x86 decode GEMV at the per-tensor speed, but groups of 32 cost the AVX2 prefill GEMM
# about 30% (an f32 epilogue every 8 k-quads); the kernels take any multiple of 32 (QLinear's act_group).
W8A8_ACT_GROUP = ACT_ROW


@dataclass(frozen=True)
class Scheme:
    name: str
    weight_bits: int | None  # None: not quantized
    act: str  # QLinear's act attribute: "f32", "f16", "i8_group", "i8_tensor"
    calibration: str | None  # "awq", "smoothquant" or None
    grouped: bool  # group-wise weights (--group-size applies); else one group per output channel
    zero_point: bool  # whether --asym (zero points) is available
    summary: str
    act_group: int = 0  # i8_group: activation group along K (QLinear's act_group); 0: the weight's group;
                        # ACT_ROW: one per row (act_group_for)


SCHEMES: dict[str, Scheme] = {s.name: s for s in (
    Scheme("fp32", None, "f32", None, False, False, "no quantization"),
    Scheme("fp16", None, "f16", None, False, False, "no quantization, fp16 weights and activations (cuda)"),
    Scheme("w8a8", 8, "i8_group", "smoothquant", False, False,
           "int8 per-channel weights, int8 activations per row at run time (SmoothQuant)",
           act_group=W8A8_ACT_GROUP),
    Scheme("w4a32", 4, "f32", "awq", True, True, "int4 group-wise weights, fp32 activations (AWQ)"),
    Scheme("w4a16", 4, "f16", "awq", True, True, "int4 group-wise weights, fp16 activations and arithmetic in the Linear layers (AWQ; arm, cuda)"),
    Scheme("w4a8", 4, "i8_group", "awq", True, True,
           "int4 group-wise weights, int8 activations per group at run time (AWQ)"),
)}


def act_group_for(scheme: Scheme, k: int) -> int:
    """QLinear's act_group for a weight with K input rows (0: the weight's group). One scale per row is a
    group of K rounded up to 32, the kernels' group alignment (the same scales as a group of exactly K)."""
    if scheme.act_group == ACT_ROW:
        return -(-k // 32) * 32
    return scheme.act_group


def get_scheme(name: str) -> Scheme:
    if name not in SCHEMES:
        raise TccError(f"unknown --qm {name!r}; known: {', '.join(SCHEMES)}")
    return SCHEMES[name]


def check_scheme(name: str, target, group_size: int | None = None, asym: bool = False) -> Scheme:
    """The scheme, or a TccError saying why `target` cannot run it (and what it can run)."""
    scheme = get_scheme(name)

    if name not in target.qms:
        why = dict(target.qm_refusals).get(name, "no kernels for it")
        raise TccError(f"target {target.name} cannot run --qm {name} ({why}); it supports: {', '.join(target.qms)}")
    if group_size is not None:
        if not scheme.grouped:
            raise TccError(f"--group-size does not apply to --qm {name} (one scale per output channel)")
        if group_size <= 0 or group_size % 32:
            raise TccError(f"--group-size must be a positive multiple of 32, got {group_size}")
    if asym and not scheme.zero_point:
        raise TccError(f"--asym does not apply to --qm {name}: its weights are symmetric")
    return scheme


def group_size(ctx) -> int:
    """The int4 group size of a compile: --group-size, else the target's default."""
    return int(ctx.options.get("group_size") or getattr(ctx.target, "default_group_size", 32))
