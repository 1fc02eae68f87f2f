"""x86 linear-algebra kernels: gemm (pre-packed weights), matmul (run-time operands), attention.

The families (signatures, the portable context) are codegen/families/linalg.py; the contracts are in
docs/kernels.md. The AVX2 tile sizes live here, not in the templates: the templates unroll over them.
They are chosen for 16 ymm registers and a 32-48 KiB L1 / >= 1 MiB L2:
- gemm/matmul micro-tile 6x16: 12 accumulators + 2 B vectors + 1 broadcast = 15 registers.
- KC=256: a 256 x 16 slice of a B panel is 16 KiB, so it stays in L1 while every row tile uses it.
- MC=144 rows per task: a 144 x 256 block of A is 144 KiB, which stays in L2; PB=32 panels (512
  columns) bound the C block one thread revisits for every K block (144 x 512 floats = 288 KiB).
- attention: the shared vector driver (common/_attention_simd.inc.j2) with kvattention's AVX2 register
  tiles (kernels_kv.py: TILES): QT=8 query rows share each K/V block they read; JB=64 keys per block: the
  scores of a block are exponentiated 8 at a time, and a 64 x 64 K or V block is 16 KiB.
"""
from __future__ import annotations

from ...codegen.families.linalg import LINALG_FAMILIES, MIN_PARALLEL_FLOPS
from ...codegen.kernels import KernelSpec, extended_context, register_target_context
from .kernels_kv import TILES as KV_TILES
from .kernels_quant import ISA_LEVEL

TARGET = "x86"

# Decode GEMV: software prefetch this many bytes ahead of each panel's stream (0: the hardware prefetcher only).
GEMV_PF = 4096  # measured (TinyLlama shapes, 2 threads): 12.8 -> 16.4 and 16.7 -> 18.2 GB/s


# gemm's AVX-512 F path (run-time dispatched, levels as the qlinear `all` kernels': 0 AVX2, 2 AVX-512): the
# M > 1 tiles only; the decode GEMV is memory bound and stays AVX2. The tile is MR rows x up to GEMM_NZ512
# panels (one zmm each), so one A broadcast feeds GEMM_NZ512 FMAs. Measured (benchmarks/kernels_gemm.py, M=128,
# K=N=4096, Intel Xeon Ice Lake-SP (zmm FMA peak about 150 GFLOP/s per core), AVX2 and AVX-512 interleaved):
# 2 panels 1.25-1.28x the AVX2 tile on 2 threads (202 vs 161 GFLOP/s), 3 panels 1.36-1.47x, 4 panels 1.42-1.51x
# (1 thread 116-121 vs 80-82, 2 threads 217-237 vs 156-161). K blocks of 128 / 192 / 256 for the 4-panel tile:
# 210-217 / 229-242 / 237 GFLOP/s, so it keeps KC. One panel per tile with even and odd k in separate
# accumulators (14 loads per 12 FMAs) measured 0.85x the AVX2 tile.
GEMM_ISAS = ("avx2", "avx512")
GEMM_AVX512_FEATURES = ("avx512f",)
GEMM_NZ512 = 4


def _gemm_tiles(spec: KernelSpec) -> dict:
    if spec.variant != "avx2":
        return {}
    return dict(MR=6, KC=256, MC=144, PB=32, GEMV_KU=4, GEMV_PF=GEMV_PF, ISAS=GEMM_ISAS, ISA_LEVEL=ISA_LEVEL,
                AVX512_FEATURES=GEMM_AVX512_FEATURES, NZ512=GEMM_NZ512)


def _matmul_tiles(spec: KernelSpec) -> dict:
    if spec.variant != "avx2":
        return {}
    # AXPY path (b_cs == 1): MR x NR register tiles, like gemm. DOT path (b_rs == a_cs == 1): tiles
    # of dot products; one row gets 8 columns so 8 independent FMA chains hide the FMA latency.
    # DOT_MAX_N: below this N the DOT path replaces AXPY (a narrow N wastes most of each 16-wide vector pair).
    return dict(MR=6, NR=16, KC=256, ROW_VECS=8, ROW_BLOCK=48, COL_BLOCK=256, DOT_TILES=[(1, 8), (2, 4)],
                DOT_ROW_BLOCK=16, DOT_COL_BLOCK=64, DOT_MAX_N=8)


def _attention_tiles(spec: KernelSpec) -> dict:
    return dict(KV_TILES, MIN_PARALLEL_FLOPS=MIN_PARALLEL_FLOPS) if spec.variant == "avx2" else {}


register_target_context(TARGET, "gemm", extended_context("gemm", _gemm_tiles))
register_target_context(TARGET, "matmul", extended_context("matmul", _matmul_tiles))
register_target_context(TARGET, "attention", extended_context("attention", _attention_tiles))

VARIANTS: list[KernelSpec] = [
    KernelSpec.make(TARGET, family, variant, dtype="f32")
    for family in LINALG_FAMILIES
    for variant in ("avx2", "scalar")
]
