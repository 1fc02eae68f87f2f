"""x86 kernels for quantized Linear layers: the x86 packed block sizes, the AVX2 / VNNI tiles and the kernel list
of activation quantization and the three qlinear families (the families, signatures and portable contexts:
codegen/families/quant.py; contracts: docs/kernels.md and docs/formats.md).

x86 packs int4 weights in column tiles of NT=8 (w4a8 in the k-quad-major layout) and pads activation rows
to KPAD=64 (backends/x86/packing_quant.py). Each qlinear family has the five variants of an optimization
ablation (efficientml.ai lab 4 style): the portable naive, unroll and threads (codegen/families/quant.py),
simd (AVX2 integer dot / FMA, one column at a time, 1 thread) and all (simd + register tiling + threads +
prefetch, a GEMV path for decode (M <= 3) and a GEMM path for prefill, and a run-time dispatched AVX-VNNI
path for the int8 families). Tile sizes live here; the templates unroll them.

`all`, AVX2 (16 ymm registers, 48 KiB L1d, 2 MiB L2 on the machine this was tuned on):
- GEMV (M <= GEMV_MAX_M = 3, decode, memory bound): one column tile (8 columns) at a time. w4a8 reads the
  q4 quad layout (packing_quant.pack_q4_quad): each nibble plane of a 32-byte load is 4 k of the 8
  columns, dotted with a broadcast activation quad into the 8 lanes of an int32 accumulator (4
  accumulators per 64-block for independent chains), so a group's sums are one 8-column vector with no
  horizontal reduction. w8a8 and w4a32 keep 8 accumulators, one per column, fed by the same activation
  vectors, reduced at the group end into one 8-column vector (an hadd tree). w4a32 reads the quad layout
  too: a 32-bit lane is 8 codes of one column, so each nibble position is dequantized in place (AND + OR
  into the mantissa of a power of two, minus that power plus z: exact) into 8 columns at one k and FMA'd
  with a broadcast activation, 4 accumulators (AVX2; AVX-512: 8, two tiles per zmm) as independent chains.
  Either way the tile's 8 scales apply at once. Threads take contiguous runs of tiles, so each streams one contiguous range of
  the weights; PREFETCH_BYTES ahead of the stream is prefetched.
- GEMM (M > 3, prefill, compute bound), int8 (w4a8, w8a8): a tile pair (16 columns) is unpacked once per
  row block into a k-quad-major buffer (for each 4 k: 16 columns x 4 bytes = two ymm), so a register tile
  of GEMM_MR rows x 16 columns accumulates with 4-byte activation broadcasts (maddubs+madd, or one
  vpdpbusd with VNNI) and needs no horizontal sums. GEMM_MR rows x 2 vectors = 8 (AVX2: 4 x 2; the
  maddubs path needs temporaries) or 12 (VNNI: 6 x 2) accumulators.
- GEMM w4a32: a tile pair's codes are unpacked once per row block (as for w4a8), then per K block of
  W32_KC the pair is dequantized into a [W32_KC][16] f32 slice (exact: (q - z) * s has at most 15
  significant bits; 256 x 16 floats = 16 KiB, in L1) and W32_MR x 16 register tiles run over it as in the
  f32 gemm (6 x 2 = 12 accumulators + 2 slice vectors + 1 activation broadcast = 15 registers).
- Row blocks of at most GEMM_MC rows: a task is (row block, tile pair), so the unpack is amortized over
  up to GEMM_MC rows and the activation block (GEMM_MC x K bytes) stays in L2.
"""
from __future__ import annotations

from ...codegen.families.quant import NORM_OPS, QLINEAR_FAMILIES, QLINEAR_PORTABLE
from ...codegen.kernels import KernelSpec, extended_context, register_target_context
from .packing_quant import KB, KPAD, NT, Q8B

TARGET = "x86"
QLINEAR_VARIANTS = (*QLINEAR_PORTABLE, "simd", "all")
QUANTIZE_ACTS_VARIANTS = ("scalar", "avx2")

# `all`: the ISA paths rendered; "vnni" is used when the CPU has AVX-VNNI (checked once at run time).
ISAS = ("avx2", "vnni")
GEMM_MR = {"avx2": 4, "vnni": 6}  # rows of the 256-bit GEMM tiles (16 columns); AVX-512: TILES512
# qlinear_w4a8 and qlinear_w8a8 also have an AVX-512 VNNI path (run-time dispatched like AVX-VNNI: used where the
# CPU has avx512_vnni/bw/vl/dq): the GEMV is the AVX-VNNI one with the EVEX encoding of vpdpbusd; the GEMM tile is
# TILES512[family] = (rows, zmm): each zmm is 16 columns (two tiles, a k-quad of both = 64 contiguous bytes of
# the unpacked block), one accumulator per row and zmm. 6 x 4, 64 columns (x86/_int8_tiles512.inc.j2): per
# k-quad 6 broadcasts + 4 loads feed 24 vpdpbusd, where 8 x 1 needs 9 loads for 8 and keeps too few chains to
# hide vpdpbusd's latency.
# Measured (the bare tile, 96 rows x K 4096 in L2, 1 thread, Intel Xeon Ice Lake-SP; noisy VM, two runs):
# 8 x 1 263-316 GOPS, 6 x 3 444-510, 8 x 3 484-615, 7 x 3 491-589, 9 x 3 468-622, 5 x 4 441-468, 6 x 4 507-570.
# On CPUs with AVX-512 VNNI but no AVX-VNNI (AMD Zen 4) it replaces maddubs+madd (w8a8 128 x 4096 -> 4096,
# 2 threads, Zen 4, the 8 x 1 tile: AVX2 17.0 ms, AVX-512 5.37 ms).
TILES512 = {"qlinear_w4a8": (6, 4), "qlinear_w8a8": (6, 4)}
W4A8_ISAS = ("avx2", "vnni", "avx512")
W8A8_ISAS = ("avx2", "vnni", "avx512")
# qlinear_w4a32 has no integer dots, so no VNNI level: its AVX-512 path (AVX-512 F/VL/BW/DQ, no VNNI needed)
# dequantizes with one vpternlogd per 8 weights where AVX2 needs an AND and an OR.
W4A32_ISAS = ("avx2", "avx512")
# The run-time levels, the same for every family (tests and benchmarks cap a kernel with one number).
ISA_LEVEL = {"avx2": 0, "vnni": 1, "avx512": 2}
AVX512_FEATURES = {"qlinear_w4a8": ("avx512vnni", "avx512bw", "avx512vl", "avx512dq"),
                   "qlinear_w8a8": ("avx512vnni", "avx512bw", "avx512vl", "avx512dq"),
                   "qlinear_w4a32": ("avx512f", "avx512bw", "avx512vl", "avx512dq")}
# M above this takes the GEMM path. Measured (4096 -> 11008, 2 threads): the GEMM path's per-call unpack of
# every weight tile costs about two GEMV weight streams, so the GEMV (rows looped inside each tile, the
# tile read once from memory) wins up to M = 3 and the GEMM from M = 4..6 on.
GEMV_MAX_M = 3
# w4a8 GEMV unpacks each 64-block once for a group of GEMV_ROWS rows (batched decode: a row per client), so
# its cost per extra row is the dots alone. Measured (32000 x 2048, 1 thread, AMD EPYC Zen 4): M = 4 in
# 4.7-5.1 ms against the GEMM's 6.0 (M = 1: 1.7-1.9 ms); at M = 5 they tie and at 8 the GEMM wins (7.7 vs
# 9.0 ms: a second row group reads the tile again), so the GEMV serves one group.
GEMV_ROWS = 4
W4A8_GEMV_MAX_M = 4
# w4a32's AVX2 GEMV: independent FMA chains per tile (the accumulators of 8 columns). Measured (2048 x 1024,
# L2-resident, 1 thread, Intel Xeon Ice Lake): 4 chains 19.7 G weights/s, 8 chains 17.0 (the constants no
# longer fit the 16 ymm registers). The loop is bound by its 4 vector ops per 8 weights (AND, OR, SUB, FMA);
# AND + int-to-float conversion + FMA on activations pre-scaled by 2^-4p measured the same, 18.9-19.3.
W32_GEMV_ACC = 4
GEMM_MC = 96            # rows per task: 96 x 4096 int8 activations = 384 KiB, in L2
PREFETCH_BYTES = 2048   # GEMV: prefetch this far ahead of the weight stream (8 q4 blocks of a tile; measured
                        # 10-20% faster than none on one thread, weights read from DRAM)
W32_MR, W32_KC = 6, 256
# w4a32's AVX-512 GEMM: W32_MR512 rows x W32_NZ512 zmm (64 columns) over K blocks of W32_KC512 (a 128 x 64 f32
# slice = 32 KiB, in L1 beside the activation rows). Measured (the bare f32 tile over an L1 slice, 96 rows,
# 1 thread, Intel Xeon Ice Lake-SP, zmm FMA peak 150 GFLOP/s): 6 x 2 (the f32 gemm's) 84-89 GFLOP/s, 6 x 4 107-111,
# 8 x 3 111-119, 5 x 4 101-111, 12 x 2 100-112, 4 x 4 93-95; K blocks of 256 (64 KiB, past L1) lose 5-20%.
W32_MR512, W32_NZ512, W32_KC512 = 6, 4, 128


def packed_layout(q4_quad: bool = True) -> dict:
    """The packed-weight geometry the portable layout helpers index with (common/_qlinear_scalar.inc.j2):
    every x86 int4 weight is in the quad layout (k-quad major, packing_quant.pack_q4_quad); the families
    that read no int4 weights (w8a8) render the plain helper unused."""
    return {"NT": NT, "KB": KB, "Q8B": Q8B, "KPAD": KPAD, "Q4_QUAD": q4_quad}


def _qlinear_tiles(spec: KernelSpec) -> dict:
    ctx = packed_layout(spec.family in ("qlinear_w4a8", "qlinear_w4a32"))
    if spec.variant == "all":
        assert NT == 8, "the `all` epilogues reduce one tile into one 8-lane vector"
        assert W32_KC % 64 == 0 and W32_KC512 % 64 == 0, "w4a32 K blocks start on 64-blocks (and quads of one group)"
        isas = {"qlinear_w4a8": W4A8_ISAS, "qlinear_w8a8": W8A8_ISAS, "qlinear_w4a32": W4A32_ISAS}.get(spec.family, ISAS)
        assert isas[0] == "avx2" and set(isas) <= set(ISA_LEVEL), "AVX2 is the fallback of every `all`"
        mr512, nz512 = TILES512.get(spec.family, (1, 1))
        ctx.update(ISAS=isas, ISAS256=tuple(i for i in isas if i != "avx512"), MR512=mr512, NZ512=nz512,
                   BLOCK_TILES={"avx2": 2, "vnni": 2, "avx512": 2 * nz512}, ISA_LEVEL=ISA_LEVEL,
                   AVX512_FEATURES=AVX512_FEATURES.get(spec.family, ()),
                   GEMV_MAX_M=W4A8_GEMV_MAX_M if spec.family == "qlinear_w4a8" else GEMV_MAX_M,
                   GEMV_ROWS=GEMV_ROWS, GEMM_MR=GEMM_MR, GEMM_MC=GEMM_MC, PREFETCH_BYTES=PREFETCH_BYTES,
                   W32_MR=W32_MR, W32_KC=W32_KC, W32_GEMV_ACC=W32_GEMV_ACC,
                   W32_MR512=W32_MR512, W32_NZ512=W32_NZ512, W32_KC512=W32_KC512)
    return ctx


for _family in QLINEAR_FAMILIES:
    register_target_context(TARGET, _family, extended_context(_family, _qlinear_tiles))
for _family in ("quantize_acts", "norm_quantize"):
    register_target_context(TARGET, _family, extended_context(_family, lambda spec: {"KPAD": KPAD}))

VARIANTS: list[KernelSpec] = [
    *(KernelSpec.make(TARGET, "quantize_acts", v) for v in QUANTIZE_ACTS_VARIANTS),
    *(KernelSpec.make(TARGET, "norm_quantize", v, op=op, dtype="f32") for v in QUANTIZE_ACTS_VARIANTS
      for op in NORM_OPS),
    *(KernelSpec.make(TARGET, f, v) for f in QLINEAR_FAMILIES for v in QLINEAR_VARIANTS),
]
