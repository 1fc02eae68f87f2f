"""The linear-algebra families: gemm (pre-packed weights), matmul (run-time operands), attention.

The contracts are in docs/kernels.md. This module holds what every CPU backend shares: the signatures,
gemm's panel width (the packed B layout: codegen/families/packing.py) and the threading threshold the
portable `scalar` templates read. Each backend's register tiles and cache blocks extend these contexts
(backends/x86/kernels_linalg.py, backends/arm/kernels_neon.py).
"""
from __future__ import annotations

from ..kernels import KernelFamily, register_family
from .packing import NR

GEMM_SIGNATURE = (
    "void {name}(const {T}* A, int64_t lda, const {T}* Bp, const {T}* bias, {T}* C, int64_t ldc, "
    "int64_t M, int64_t N, int64_t K, tcc_exec* exec)"
)
MATMUL_SIGNATURE = (
    "void {name}(const {T}* A, const {T}* B, {T}* C, int64_t M, int64_t N, int64_t K, "
    "int64_t a_rs, int64_t a_cs, int64_t b_rs, int64_t b_cs, "
    "int32_t nbatch, const int64_t* batch_shape, const int64_t* a_bstrides, const int64_t* b_bstrides, "
    "tcc_exec* exec)"
)
ATTENTION_SIGNATURE = (
    "void {name}(const {T}* q, const {T}* k, const {T}* v, const {T}* mask, {T}* out, "
    "int64_t B, int64_t Hq, int64_t Hkv, int64_t Sq, int64_t Skv, int64_t D, int64_t Dv, "
    "const int64_t* q_strides, const int64_t* k_strides, const int64_t* v_strides, "
    "const int64_t* mask_strides, const int64_t* o_strides, float scale, int32_t causal, int64_t window, "
    "const {T}* alibi_slopes, float softcap, tcc_exec* exec)"
)
# With i' = i + Skv - Sq a query's position among the keys: window > 0 drops keys j <= i' - window;
# alibi_slopes (null or one per query head) add slope * (j - i'); softcap > 0 maps the scaled score s to
# softcap * tanh(s / softcap) before the bias and the mask are added.

# Work per parallel chunk below which threading costs more than it saves (in flops).
MIN_PARALLEL_FLOPS = 1 << 16

LINALG_FAMILIES = ("gemm", "matmul", "attention")

register_family(KernelFamily(
    "gemm", GEMM_SIGNATURE, lambda spec: {"NR": NR, "MIN_PARALLEL_FLOPS": MIN_PARALLEL_FLOPS},
    doc="C = A @ B + bias with B pre-packed into 16-column panels (Linear with constant weights)."))
register_family(KernelFamily(
    "matmul", MATMUL_SIGNATURE, lambda spec: {"MIN_PARALLEL_FLOPS": MIN_PARALLEL_FLOPS},
    doc="Batched, broadcast, strided C = A @ B with both operands computed at run time."))
register_family(KernelFamily(
    "attention", ATTENTION_SIGNATURE, lambda spec: {},
    doc="Fused scaled dot-product attention (MHA/GQA, causal, additive mask, sliding window, ALiBi, "
        "soft-capping) with online softmax."))

# The portable kernels every CPU backend emits.
PORTABLE: list[tuple[str, str, dict]] = [(family, "scalar", {"dtype": "f32"}) for family in LINALG_FAMILIES]
