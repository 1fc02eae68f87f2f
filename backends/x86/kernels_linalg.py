"""x86 linear-algebra kernels: gemm (pre-packed weights), matmul (run-time operands), attention.

The contracts are in docs/kernels.md. Tile sizes live here, not in the templates: the templates unroll
over them. The AVX2 numbers are chosen for 16 ymm registers and a 32-48 KiB L1 / >= 1 MiB L2:
- gemm/matmul micro-tile 6x16: 12 accumulators + 2 B vectors + 1 broadcast = 15 registers.
- KC=256: a 256 x 16 slice of a B panel is 16 KiB, so it stays in L1 while every row tile uses it.
- MC=144 rows per task: a 144 x 256 block of A is 144 KiB, which stays in L2; PB=32 panels (512
  columns) bound the C block one thread revisits for every K block (144 x 512 floats = 288 KiB).
- attention QT=8 query rows share each K/V block they read; JB=64 keys per block: the scores of a
  block are exponentiated 8 at a time, and a 64 x 64 K or V block is 16 KiB.
"""
from __future__ import annotations

from ...codegen.kernels import KernelFamily, KernelSpec, register_family
from .packing import NR

GEMM_SIGNATURE = (
    "void {name}(const float* A, int64_t lda, const float* Bp, const float* bias, float* C, int64_t ldc, "
    "int64_t M, int64_t N, int64_t K, tcc_pool* pool)"
)
MATMUL_SIGNATURE = (
    "void {name}(const float* A, const float* B, float* C, int64_t M, int64_t N, int64_t K, "
    "int64_t a_rs, int64_t a_cs, int64_t b_rs, int64_t b_cs, "
    "int32_t nbatch, const int64_t* batch_shape, const int64_t* a_bstrides, const int64_t* b_bstrides, "
    "tcc_pool* pool)"
)
ATTENTION_SIGNATURE = (
    "void {name}(const float* q, const float* k, const float* v, const float* mask, float* out, "
    "int64_t B, int64_t Hq, int64_t Hkv, int64_t Sq, int64_t Skv, int64_t D, int64_t Dv, "
    "const int64_t* q_strides, const int64_t* k_strides, const int64_t* v_strides, "
    "const int64_t* mask_strides, const int64_t* o_strides, float scale, int32_t causal, tcc_pool* pool)"
)

# Decode GEMV: software prefetch this many bytes ahead of each panel's stream (0: the hardware prefetcher only).
GEMV_PF = 4096  # measured (TinyLlama shapes, 2 threads): 12.8 -> 16.4 and 16.7 -> 18.2 GB/s
# Work per parallel chunk below which threading costs more than it saves (in flops).
MIN_PARALLEL_FLOPS = 1 << 16


def _gemm_context(spec: KernelSpec) -> dict:
    ctx = {"NR": NR, "MIN_PARALLEL_FLOPS": MIN_PARALLEL_FLOPS}
    if spec.variant == "avx2":
        ctx.update(MR=6, KC=256, MC=144, PB=32, GEMV_KU=4, GEMV_PF=GEMV_PF)
    return ctx


def _matmul_context(spec: KernelSpec) -> dict:
    ctx = {"MIN_PARALLEL_FLOPS": MIN_PARALLEL_FLOPS}
    if spec.variant == "avx2":
        # AXPY path (b_cs == 1): MR x NR register tiles, like gemm. DOT path (b_rs == a_cs == 1): tiles
        # of dot products; one row gets 8 columns so 8 independent FMA chains hide the FMA latency.
        ctx.update(MR=6, NR=16, KC=256, ROW_VECS=8, ROW_BLOCK=48, COL_BLOCK=256, DOT_TILES=[(1, 8), (2, 4)],
                   DOT_ROW_BLOCK=16, DOT_COL_BLOCK=64)
    return ctx


def _attention_context(spec: KernelSpec) -> dict:
    ctx = {}
    if spec.variant == "avx2":
        ctx.update(QT=8, JB=64, AXPY_CHUNKS=4)
    return ctx


register_family(KernelFamily(
    "gemm", GEMM_SIGNATURE, _gemm_context,
    doc="C = A @ B + bias with B pre-packed into 16-column panels (Linear with constant weights)."))
register_family(KernelFamily(
    "matmul", MATMUL_SIGNATURE, _matmul_context,
    doc="Batched, broadcast, strided C = A @ B with both operands computed at run time."))
register_family(KernelFamily(
    "attention", ATTENTION_SIGNATURE, _attention_context,
    doc="Fused scaled dot-product attention (MHA/GQA, causal, additive mask) with online softmax."))

VARIANTS: list[KernelSpec] = [
    KernelSpec.make("x86", family, variant, dtype="f32")
    for family in ("gemm", "matmul", "attention")
    for variant in ("avx2", "scalar")
]
