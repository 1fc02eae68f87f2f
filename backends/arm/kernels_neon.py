"""The arm NEON f32 kernels: per-op NEON expressions and tile sizes (the templates in
`codegen/templates/arm/<family>-neon.cpp.j2` only substitute and unroll them).

Each family keeps its portable context (the scalar C expressions of codegen/families/elementwise.py,
which the `scalar` variants and the NEON templates' scalar tails both use); for arm specs this module's
context adds the NEON vector expression and the NEON tile sizes. The vector
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

from ...codegen.families.elementwise import VECTOR_DOMAINS
from ...codegen.families.linalg import MIN_PARALLEL_FLOPS
from ...codegen.families.packing import NR
from ...codegen.kernels import KernelSpec, extended_context, register_target_context

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


assert NR == 16 and GEMM["GEMV_KU"] == 4, "the gemm tiles use 4 vectors / 4 lanes of a k quad"
assert all(t["QK_KEYS"] == 4 and t["JB"] % 4 == 0 for t in (KV, ATTN)), "the QK score reduction is written for 4 keys"


def _is_f32(spec: KernelSpec) -> bool:
    return spec.param("dtype") == "f32"


def _neon_tiles(tiles: dict[str, Any]):
    """A context adding `tiles` to the neon variant (the portable variant has none)."""
    return lambda spec: tiles if spec.variant == "neon" else {}


register_target_context(TARGET, "binary", extended_context("binary", lambda spec: {
    "vector_expr": _BINARY.get(spec.param("op")) if _is_f32(spec) else None}))
register_target_context(TARGET, "unary", extended_context("unary", lambda spec: {
    "vector_expr": _UNARY[spec.param("op")] if _is_f32(spec) else None}))
register_target_context(TARGET, "reduce", extended_context("reduce", lambda spec: {
    "vector_combine": _REDUCE[spec.param("op")] if _is_f32(spec) else None}))
register_target_context(TARGET, "gemm", extended_context("gemm", _neon_tiles(GEMM)))
register_target_context(TARGET, "matmul", extended_context("matmul", _neon_tiles(MATMUL)))
register_target_context(TARGET, "kvattention", extended_context("kvattention", _neon_tiles(KV)))
# The portable attention context is empty; attention-neon also reads the threading threshold.
register_target_context(TARGET, "attention", extended_context("attention", lambda spec: {
    "MIN_PARALLEL_FLOPS": MIN_PARALLEL_FLOPS, **_neon_tiles(ATTN)(spec)}))

# (family, params) of every NEON f32 kernel: each elementwise family's vector domain (as x86's avx2
# variants), then the linear algebra.
NEON_F32: list[tuple[str, dict]] = [
    *((family, params) for family, domain in VECTOR_DOMAINS.items() for params in domain),
    ("gemm", {"dtype": "f32"}),
    ("kvattention", {"dtype": "f32"}),
    ("matmul", {"dtype": "f32"}),
    ("attention", {"dtype": "f32"}),
]
