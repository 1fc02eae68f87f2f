"""The arm NEON f32 kernels: per-op NEON expressions and tile sizes (the templates in
`codegen/templates/arm/<family>-neon.cpp.j2` only substitute and unroll them).

Each family keeps its portable context (the scalar C expressions of backends/x86/kernels_elementwise.py,
which the `scalar` variants and the NEON templates' scalar tails both use); for arm specs this module's
context replaces only the vector expression (the x86 one is AVX2) and adds the NEON tile sizes. The vector
math (`tcc::neon::exp_ps`, ...) is runtime/tcc_math_neon.h, the same algorithms and coefficients as the
AVX2 header, so the accuracy contract of docs/kernels.md (unary) holds unchanged.

NEON has 32 128-bit registers (4 floats each), twice the AVX2 register count at half the width, so the
register tiles are taller and narrower than x86's:
- gemm: MR=6 rows x the 16-column panel (4 vectors) = 24 accumulators + 4 B vectors + 2 A vectors (6 rows of
  A packed per k: one q and one d register, used with by-lane FMAs) = 30 registers. KC/MC/PB as on x86
  (the L1/L2 sizes of Cortex-A7x/Neoverse are as large or larger than the tuning machine's).
- matmul (both operands run-time tensors): the gemm tile, MR=6 x NR=16, over B rows read in place (A packed 6
  rows per k per K block of KC); one row (decode) in 1 x 4*ROW_VECS tiles (8 independent FMA chains); B
  transposed (q @ k^T) in DOT_TILES of dot products (4 rows x 4 columns: 16 accumulators + 4 A + 1 B, the 4
  column sums of a row out of two pairwise adds; 1 x 8 for leftover rows). Blocks: matmul-avx2's.
- kvattention / attention: QK tiles of 4 rows x 4 keys (16 accumulators + 4 K + 4 q = 24 registers; the 4
  key sums of a row come out of two pairwise adds), PV tiles of 4 rows x 4 vectors (16 floats of Dv).
"""
from __future__ import annotations

from typing import Any

from ...codegen.kernels import FAMILIES, KernelSpec, register_target_context
from ..x86 import kernels_elementwise as ew
from ..x86 import kernels_linalg

TARGET = "arm"

_CMP = {"equal": "vceqq_f32(a, b)", "less": "vcltq_f32(a, b)", "less_equal": "vcleq_f32(a, b)",
        "greater": "vcgtq_f32(a, b)", "greater_equal": "vcgeq_f32(a, b)"}  # ordered: NaN compares false
_BINARY = {"add": "vaddq_f32(a, b)", "sub": "vsubq_f32(a, b)", "mul": "vmulq_f32(a, b)", "div": "vdivq_f32(a, b)",
           "pow": "tcc::neon::pow_ps(a, b)", "max": "tcc::neon::max_ps(a, b)", "min": "tcc::neon::min_ps(a, b)",
           **_CMP}  # mod: per-lane fmodf (no vector form)
_UNARY = {
    "neg": "vnegq_f32(x)", "abs": "vabsq_f32(x)", "exp": "tcc::neon::exp_ps(x)", "log": "tcc::neon::log_ps(x)",
    "sqrt": "vsqrtq_f32(x)", "reciprocal": "vdivq_f32(vdupq_n_f32(1.0f), x)", "erf": "tcc::neon::erf_ps(x)",
    "tanh": "tcc::neon::tanh_ps(x)", "sigmoid": "tcc::neon::sigmoid_ps(x)", "relu": "tcc::neon::relu_ps(x)",
    "gelu_erf": "tcc::neon::gelu_erf_ps(x)", "gelu_tanh": "tcc::neon::gelu_tanh_ps(x)",
    "silu": "tcc::neon::silu_ps(x)",
    # vmaxq/vminq propagate NaN, like tcc_clip (a NaN x stays NaN); lo > hi gives hi as ONNX.
    "clip": "vminq_f32(vhi, vmaxq_f32(vlo, x))",
    "floor": "vrndmq_f32(x)", "ceil": "vrndpq_f32(x)", "sin": "tcc::neon::sin_ps(x)", "cos": "tcc::neon::cos_ps(x)",
    "sign": "tcc::neon::sign_ps(x)", "identity": "x",
}
_REDUCE = {"sum": "vaddq_f32(acc, v)", "mean": "vaddq_f32(acc, v)", "prod": "vmulq_f32(acc, v)",
           "max": "tcc::neon::max_ps(acc, v)", "min": "tcc::neon::min_ps(acc, v)"}

# Tile sizes (module docstring).
GEMM = {"MR": 6, "KC": 256, "MC": 144, "PB": 32, "GEMV_KU": 4}
MATMUL = {"MR": 6, "NR": 16, "KC": 256, "ROW_VECS": 8, "ROW_BLOCK": 48, "COL_BLOCK": 256,
          "DOT_TILES": [(1, 8), (4, 4)], "DOT_ROW_BLOCK": 16, "DOT_COL_BLOCK": 64, "DOT_MAX_N": 8}
KV = {"QT": 8, "JB": 64, "QK_ROWS": 4, "QK_KEYS": 4, "PV_ROWS": 4, "PV_CHUNKS": 4}
ATTN = dict(KV)


def _base(family: str, spec: KernelSpec) -> dict[str, Any]:
    return FAMILIES[family].context(spec)


def _binary(spec: KernelSpec) -> dict[str, Any]:
    ctx = _base("binary", spec)
    ctx["vector_expr"] = _BINARY.get(spec.param("op")) if spec.param("dtype") == "f32" else None
    return ctx


def _unary(spec: KernelSpec) -> dict[str, Any]:
    ctx = _base("unary", spec)
    ctx["vector_expr"] = _UNARY[spec.param("op")] if spec.param("dtype") == "f32" else None
    return ctx


def _reduce(spec: KernelSpec) -> dict[str, Any]:
    ctx = _base("reduce", spec)
    ctx["vector_combine"] = _REDUCE[spec.param("op")] if spec.param("dtype") == "f32" else None
    return ctx


def _gemm(spec: KernelSpec) -> dict[str, Any]:
    ctx = {"NR": kernels_linalg.NR, "MIN_PARALLEL_FLOPS": kernels_linalg.MIN_PARALLEL_FLOPS}
    if spec.variant == "neon":
        assert kernels_linalg.NR == 16 and GEMM["GEMV_KU"] == 4, "the tiles use 4 vectors / 4 lanes of a k quad"
        ctx.update(GEMM)
    return ctx


def _matmul(spec: KernelSpec) -> dict[str, Any]:
    ctx = {"MIN_PARALLEL_FLOPS": kernels_linalg.MIN_PARALLEL_FLOPS}
    if spec.variant == "neon":
        ctx.update(MATMUL)
    return ctx


def _kvattention(spec: KernelSpec) -> dict[str, Any]:
    ctx = {k: v for k, v in _base("kvattention", spec).items()}
    if spec.variant == "neon":
        assert KV["QK_KEYS"] == 4 and KV["JB"] % 4 == 0, "the QK score reduction is written for 4 keys"
        ctx.update(KV)
    return ctx


def _attention(spec: KernelSpec) -> dict[str, Any]:
    ctx = {"MIN_PARALLEL_FLOPS": kernels_linalg.MIN_PARALLEL_FLOPS}
    if spec.variant == "neon":
        assert ATTN["QK_KEYS"] == 4 and ATTN["JB"] % 4 == 0, "the QK score reduction is written for 4 keys"
        ctx.update(ATTN)
    return ctx


register_target_context(TARGET, "binary", _binary)
register_target_context(TARGET, "unary", _unary)
register_target_context(TARGET, "reduce", _reduce)
register_target_context(TARGET, "gemm", _gemm)
register_target_context(TARGET, "matmul", _matmul)
register_target_context(TARGET, "kvattention", _kvattention)
register_target_context(TARGET, "attention", _attention)


def _f32(domain):
    return [p for p in domain if p["dtype"] == "f32"]


# (family, params) of every NEON f32 kernel; the same domains as x86's avx2 variants.
NEON_F32: list[tuple[str, dict]] = [
    *(("binary", p) for p in _f32(ew.BINARY_DOMAIN)),
    *(("where", p) for p in _f32(ew.WHERE_DOMAIN)),
    *(("unary", p) for p in _f32(ew.UNARY_DOMAIN)),
    *(("cast", p) for p in ew.CAST_DOMAIN if {p["src"], p["dst"]} == {"f32", "f16"}),
    *(("reduce", p) for p in _f32(ew.REDUCE_DOMAIN)),
    *(("softmax", {"op": op, "dtype": "f32"}) for op in ("softmax", "logsoftmax")),
    *(("norm", {"op": op, "dtype": "f32"}) for op in ("layernorm", "rmsnorm")),
    *(("copy", {"esize": e}) for e in (1, 2, 4, 8)),
    ("gemm", {"dtype": "f32"}),
    ("kvattention", {"dtype": "f32"}),
    ("matmul", {"dtype": "f32"}),
    ("attention", {"dtype": "f32"}),
]
