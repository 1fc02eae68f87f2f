"""CUDA linear-algebra and quantized kernels: gemm (fp16 Linear), qlinear_w4a16 (int4 weights, fp16
activations), matmul (run-time operands) and qgather (quantized embedding rows).

The families (signatures) are codegen/families/{linalg,quant,llm}.py; the packed layouts are
backends/cuda/packing.py. The tile sizes live here; the templates (codegen/templates/cuda/) are written
for them:
- GEMV (decode, M <= GEMV_MAX_M rows): one warp per output column, GEMV_WARPS warps per block; every lane
  streams its column with 128-bit loads and keeps one fp32 accumulator per row (up to 8 rows share each
  weight load).
- Tensor-core GEMM (prefill, M > GEMV_MAX_M): 64 x 64 block tiles, K steps of 32, 4 warps of 32 x 32
  (2 x 4 mma.m16n8k16 with fp32 accumulators); A and B tiles in shared memory, k-contiguous rows padded
  to 40 halves (bank spread, 16-byte chunks stay aligned). qlinear dequantizes its B tile into shared
  memory with the magic-number trick.
- matmul: 16 x 16 shared-memory tiles, fp32 accumulation.
- qgather: one block of 128 threads per id, at most 65535 blocks (a grid-stride loop over the ids).
"""
from __future__ import annotations

from ...codegen.kernels import KernelSpec, extended_context, register_target_context

TARGET = "cuda"
VARIANT = "cuda"

GEMV_MAX_M = 8  # rows up to which the GEMV path runs (decode); above: tensor cores
GEMV_WARPS = 4  # output columns (warps) per GEMV block
MMA_TILES = dict(TILE_M=64, TILE_N=64, TILE_K=32, TILE_KP=40, MMA_THREADS=128)
MATMUL_TILE = 16
MAX_BATCH_DIMS = 8  # tcc_dims (runtime/tcc_cuda.h: TCC_CUDA_MAX_DIMS)
QGATHER_THREADS = 128
QGATHER_MAX_BLOCKS = 65535


def _gemm_context(spec: KernelSpec) -> dict:
    return dict(MMA_TILES, GEMV_MAX_M=GEMV_MAX_M, GEMV_WARPS=GEMV_WARPS)


def _matmul_context(spec: KernelSpec) -> dict:
    return dict(TILE=MATMUL_TILE, MAX_BATCH_DIMS=MAX_BATCH_DIMS)


def _qgather_context(spec: KernelSpec) -> dict:
    return dict(THREADS=QGATHER_THREADS, MAX_BLOCKS=QGATHER_MAX_BLOCKS)


register_target_context(TARGET, "gemm", extended_context("gemm", _gemm_context))
register_target_context(TARGET, "qlinear_w4a16", extended_context("qlinear_w4a16", _gemm_context))
register_target_context(TARGET, "matmul", extended_context("matmul", _matmul_context))
register_target_context(TARGET, "qgather", extended_context("qgather", _qgather_context))

# gemm and qlinear_w4a16 are fp16 only: their packed weights are fp16 (cuda_f16_nk8) or dequantize to
# fp16, and the tensor cores take fp16 operands. matmul and qgather also have the f32 form (same template).
VARIANTS: list[KernelSpec] = [
    KernelSpec.make(TARGET, "gemm", VARIANT, dtype="f16"),
    KernelSpec.make(TARGET, "qlinear_w4a16", VARIANT, dtype="f16"),
    *(KernelSpec.make(TARGET, "matmul", VARIANT, dtype=dt) for dt in ("f16", "f32")),
    *(KernelSpec.make(TARGET, "qgather", VARIANT, bits=bits, dtype=dt) for bits in (4, 8) for dt in ("f16", "f32")),
]
