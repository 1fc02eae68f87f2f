"""x86 KV-cache attention: the AVX2 register tiles of `kvattention-avx2` (the family, its run-time paths and
the thresholds steering them: codegen/families/kv.py; the contract: docs/kernels.md, family kvattention).

AVX2 micro-tiles (16 ymm registers):
- QK: QK_ROWS=2 rows x QK_KEYS=4 keys of scores at a time: 8 accumulators + 4 K vectors + 2 q vectors
  = 14 registers; per 8 dims it loads 6 vectors for 8 FMAs, so it is FMA bound rather than load bound (a
  1-row x 1-key dot with a horizontal sum per score costs ~1.5x as much). The 4 keys' sums come out of
  one hadd tree as a 4-float vector (the reduction is written for exactly 4 keys).
- PV: PV_ROWS=2 rows x PV_CHUNKS=4 vectors (32 columns of Dv) of accumulators = 8 registers; each V
  row vector loaded serves both rows (6 loads per 8 FMAs).
- QT=8 query rows share each K/V block they read (a GQA group of 8 heads is one tile); JB=64 keys per
  block: a 64 x 128 K or V block is 32 KiB, so the block stays in L1/L2 while the tile's rows use it,
  and the 8 x 64 scores are exponentiated 8 lanes at a time.
"""
from __future__ import annotations

from ...codegen.kernels import KernelSpec, extended_context, register_target_context

TARGET = "x86"


# The register tiles of the shared vector driver (common/_attention_tiles_simd.inc.j2) on AVX2; the attention
# family's avx2 variant uses them too (kernels_linalg.py).
TILES = {"QT": 8, "JB": 64, "QK_ROWS": 2, "QK_KEYS": 4, "PV_ROWS": 2, "PV_CHUNKS": 4}
assert TILES["QK_KEYS"] == 4, "the QK score reduction (one hadd tree) is written for 4 keys"
assert TILES["JB"] % 8 == 0 and TILES["JB"] % TILES["QK_KEYS"] == 0, "score rows are exponentiated 8 lanes at a time"


def _tiles(spec: KernelSpec) -> dict:
    return dict(TILES) if spec.variant == "avx2" else {}


register_target_context(TARGET, "kvattention", extended_context("kvattention", _tiles))

VARIANTS: list[KernelSpec] = [KernelSpec.make(TARGET, "kvattention", variant, dtype="f32")
                              for variant in ("avx2", "scalar")]
