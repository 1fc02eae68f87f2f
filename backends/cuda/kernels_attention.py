"""CUDA attention, normalization, softmax and rotary kernels (issue 16; docs/cuda.md, section attention).

Families (signatures and semantics exactly the CPU ones: docs/kernels.md):
- kvattention: append this call's rotated k and raw v into the caches (a small element-wise kernel), then
  one tiled attention kernel for decode and prefill, with the keys optionally split over blocks
  (flash-decoding) and a combine kernel merging the splits' partial softmaxes (log-sum-exp);
- attention: the same tiled kernel over k / v tensors (additive mask, causal, window, ALiBi, softcap);
- norm (layernorm, rmsnorm), softmax (softmax, logsoftmax over the middle axis), rope.
Every family has an f16 variant (what f16 graphs select) and an f32 one (the same template with T=float).

The tiled attention kernel (codegen/templates/cuda/_attn_tile.inc.j2): a block handles QT query rows of one
(batch, kv head) -- the GQA group's heads at consecutive positions, so every K/V tile loaded into shared
memory serves the whole group -- and walks its keys KT at a time with an online softmax in fp32 (scores,
running max / sum and the accumulator live in shared memory: nothing of size S x S exists).
"""
from __future__ import annotations

from ...codegen.kernels import KernelSpec, extended_context, register_target_context

TARGET = "cuda"
DTYPES = ("f16", "f32")

# Threads of a tiled-attention block (4 warps).
ATTN_THREADS = 128
# Query rows per block: decode tiles the GQA group's heads (up to 8 share each K/V tile), prefill tiles
# 16 rows (positions x heads of the group).
ATTN_QT_DECODE = 8
ATTN_QT_PREFILL = 16
# Dynamic shared memory of a tiled block: at most the 48 KiB every device grants without an opt-in; the
# launcher picks the largest key tile KT (of ATTN_KT_CHOICES) that fits with QT rows.
ATTN_SHARED_BYTES = 48 * 1024
ATTN_KT_CHOICES = (64, 32, 16, 8, 4, 2, 1)
# Flash-decoding: with fewer than ATTN_TARGET_BLOCKS blocks a decode call splits each row's keys into up
# to ATTN_SPLIT_MAX chunks of at least ATTN_SPLIT_MIN_KEYS keys. The partial results (max, sum, Dv
# accumulators per row and split) go to a static device buffer of ATTN_PART_FLOATS floats; a call whose
# rows need more than that for 2 splits runs unsplit (it has B x Hq rows: enough blocks already), so the
# buffer bounds nothing but the split count.
ATTN_TARGET_BLOCKS = 264
ATTN_SPLIT_MIN_KEYS = 256
ATTN_SPLIT_MAX = 64
ATTN_PART_FLOATS = 1 << 20
# Row kernels (norm, softmax over the last axis): threads per block by row length.
ROW_THREADS_MAX = 256
# Element-wise kernels (append, rope, column softmax): threads per block and the most blocks of a
# grid-stride launch.
ELEM_THREADS = 256
ELEM_MAX_BLOCKS = 1 << 16


def _attn_context(spec: KernelSpec) -> dict:
    return dict(ATTN_THREADS=ATTN_THREADS, ATTN_QT_DECODE=ATTN_QT_DECODE, ATTN_QT_PREFILL=ATTN_QT_PREFILL,
                ATTN_SHARED_BYTES=ATTN_SHARED_BYTES, ATTN_KT_CHOICES=ATTN_KT_CHOICES,
                ATTN_TARGET_BLOCKS=ATTN_TARGET_BLOCKS, ATTN_SPLIT_MIN_KEYS=ATTN_SPLIT_MIN_KEYS,
                ATTN_SPLIT_MAX=ATTN_SPLIT_MAX, ATTN_PART_FLOATS=ATTN_PART_FLOATS,
                ELEM_THREADS=ELEM_THREADS, ELEM_MAX_BLOCKS=ELEM_MAX_BLOCKS,
                f16=spec.param("dtype") == "f16", kv=spec.family == "kvattention")


def _row_context(spec: KernelSpec) -> dict:
    return dict(ROW_THREADS_MAX=ROW_THREADS_MAX, ELEM_THREADS=ELEM_THREADS, ELEM_MAX_BLOCKS=ELEM_MAX_BLOCKS,
                f16=spec.param("dtype") == "f16")


for _family in ("kvattention", "attention"):
    register_target_context(TARGET, _family, extended_context(_family, _attn_context))
for _family in ("norm", "softmax", "rope"):
    register_target_context(TARGET, _family, extended_context(_family, _row_context))

VARIANTS: list[KernelSpec] = [
    *(KernelSpec.make(TARGET, "kvattention", "cuda", dtype=d) for d in DTYPES),
    *(KernelSpec.make(TARGET, "attention", "cuda", dtype=d) for d in DTYPES),
    *(KernelSpec.make(TARGET, "norm", "cuda", op=op, dtype=d) for op in ("layernorm", "rmsnorm") for d in DTYPES),
    *(KernelSpec.make(TARGET, "softmax", "cuda", op=op, dtype=d) for op in ("softmax", "logsoftmax")
      for d in DTYPES),
    *(KernelSpec.make(TARGET, "rope", "cuda", dtype=d) for d in DTYPES),
]
