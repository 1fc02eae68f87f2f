"""Quantized Linear kernels (every x86 variant of quantize_acts, qlinear_w4a8, qlinear_w4a32, qlinear_w8a8)
against the numpy references of ir/ops/quant.py, the packers' round trips, and ONNX Runtime's
com.microsoft.MatMulNBits as an independent oracle for the int4 arithmetic.

Tolerances. The references dequantize both operands exactly (integer codes times f32 scales fit a
float64) and multiply in float64, so all error is the kernels' fp32 rounding. Every kernel forms the
integer part exactly (int8 dots in int32; (q - z) as an integer before w4a32 multiplies it), so what
rounds is a sum of n float terms t_i, each one or two roundings (a product of a scale, a scale or an
activation, and an exact integer) away from its exact value, in some order (sequential, 8 lanes + an
hadd tree, K blocks). The standard first-order bound for any summation order of n terms is
(n - 1) u sum|t_i| with u = 2^-24, plus the roundings inside each term, and sum|t_i| <= (|Xd| @ |Wd|^T
+ |bias|)[m, n] with Xd, Wd the exactly dequantized operands. So with n_add = the number of float
additions plus roundings per term:
    |y - ref| <= C * n_add * u * (|Xd| @ |Wd|^T + |bias|),   C = 2 (covers the second-order terms)
- w4a8: per group one term (xs*s) * (dot - z*xsum) (two roundings; dot - z*xsum is exact, < 2^24), G
  terms and the bias summed: n_add = G + 4.
- w8a8: per activation group a term xs * float(dot) (two roundings: float(dot) may exceed 2^24 when the
  group is K); the `all` GEMV with several groups adds one term per 32-k chunk instead (each chunk's int32
  lanes converted exactly and FMA'd with the group's scale); these terms summed, times s (one rounding),
  plus the bias: n_add = ceil(K / 32) + 5 bounds every kernel.
- w4a32: the dequantized weight q - z is exact (an integer, or the exponent-bias trick's exact
  difference) and a product rounds once; the naive, unroll, threads, simd variants and the `all` GEMV sum
  each group's products (sequentially, or in 4 / 8 interleaved chains + a 2-3 level add tree: <= group
  additions on any term's path), scale the group sum (1) and add it to G - 1 others and the bias: group +
  G + 4 roundings at most on any term's path. The `all` GEMM path multiplies exactly dequantized weights ((q - z) * s has
  <= 15 significant bits), sums each K block of W32_KC with a chain of FMAs, and adds the blocks into y
  and the bias: W32_KC + ceil(K / W32_KC) + 3. n_add = the larger of the two.
This is the worst case (all roundings one way); the largest errors measured on the cases below are ~12%
of it for w4a8 / w8a8 and ~1% for w4a32 (whose K-long sums cancel their roundings), while one code off
by one in a single weight moves an output by O(|x| |s|), well beyond (test_tolerance_catches_one_code_off
checks that on the shapes used here).
quantize_acts must be bit-exact (xq, xs, xsum), including all-zero groups, rounding ties, per-tensor
scales and rows whose K is not a multiple of the group.
"""
from __future__ import annotations


import numpy as np
import pytest
from tcc.backends.x86 import pack
from tcc.backends.x86 import packing_quant as pq
from tcc.backends.x86.kernels import VARIANTS, select
from tcc.backends.x86.kernels_quant import W32_KC
from tcc.backends.x86.tuning import corner_specs
from tcc.ir.quant_arith import dequantize, dequantize_activations, quantize_activations, quantize_int4, quantize_int8

from .conftest import cap_isa, ptr

U = 2.0 ** -24
C = 2
IDS = lambda spec: spec.name.split("__", 1)[1]  # the variant, and a tuned kernel's parameters

QA = [s for s in VARIANTS if s.family == "quantize_acts"]
# Every variant, and the `all` kernels with each --tune knob at its smallest and largest candidate.
FAMILY = {f: [s for s in [*VARIANTS, *corner_specs()] if s.family == f]
          for f in ("qlinear_w4a8", "qlinear_w4a32", "qlinear_w8a8")}
# Every variant, and the `all` variants once more with their run-time ISA dispatch capped at a lower path:
# the plain run tests the best path the CPU has (w4a8, w8a8: AVX-512 VNNI, then AVX-VNNI; w4a32: AVX-512),
# "all-avx2" the AVX2 path and, for w4a8 and w8a8, "all-vnni" the AVX-VNNI path (the same as AVX2 on a CPU
# without AVX-VNNI). On an AVX2-only CPU every run tests the AVX2 path.
ISA_BEST, ISA_AVX2, ISA_VNNI, ISA_AVX512 = 99, 0, 1, 2
DISPATCHED = ("qlinear_w4a8", "qlinear_w8a8", "qlinear_w4a32")  # the families whose `all` picks an ISA


def variants(family):
    out = [pytest.param(s, ISA_BEST, id=IDS(s)) for s in FAMILY[family]]
    capped = [(ISA_AVX2, "all-avx2")] + ([(ISA_VNNI, "all-vnni")] if family in ("qlinear_w4a8", "qlinear_w8a8") else [])
    if family in DISPATCHED:
        out += [pytest.param(s, isa, id=IDS(s).replace("all", name, 1))
                for isa, name in capped for s in FAMILY[family] if s.variant == "all"]
    return out


def set_isa(lib, spec, isa) -> int:
    """Cap the `all` variant's ISA path (no-op for the others); returns the path in use (0 AVX2, 1 AVX-VNNI,
    2 AVX-512)."""
    if spec.variant != "all" or spec.family not in DISPATCHED:
        return 0
    return cap_isa(lib, spec, isa)


@pytest.fixture
def isa_guard(x86_kernel_lib):
    """Restores every `all` kernel's automatic ISA choice after the test."""
    yield
    for specs in FAMILY.values():
        for s in specs:
            set_isa(x86_kernel_lib, s, ISA_BEST)


def check_close(got, ref, tol, what):
    err = np.abs(got.astype(np.float64) - ref)
    bad = ~(err <= tol)  # NaN fails too
    if bad.any():
        idx = tuple(np.argwhere(bad)[0])
        pytest.fail(f"{what}: {bad.sum()}/{bad.size} outputs off; first at {idx}: got {got[idx]!r}, want "
                    f"{ref[idx]!r}, |err| {err[idx]:.3g} > tol {tol[idx]:.3g}")
    return float((err / tol).max())


# ---------------------------------------------------------------------------------------- packing

PACK_SHAPES = [(1, 1), (1, 64), (8, 64), (9, 70), (17, 200), (24, 129), (3, 4096)]


@pytest.mark.parametrize("N,K", PACK_SHAPES)
def test_pack_q4_quad_roundtrip(N, K, rng):
    """The int4 layout of w4a8 and w4a32: per (tile, 64-block) 8 vectors; byte 32v + 4c + i holds q[n, 64b+4v+i]
    in its low nibble and q[n, 64b+32+4v+i] in its high one (docs/formats.md)."""
    q = rng.integers(0, 16, (N, K)).astype(np.uint8)
    p = pq.pack_q4_quad(q)
    Kp, Np = pq.padded_k(K), pq.padded_n(N)
    assert p.dtype == np.uint8 and p.shape == (Np * Kp // 2,) == (pq.q4_packed_size(N, K),)
    np.testing.assert_array_equal(pq.unpack_q4_quad(p, N, K), q)
    full = pq.unpack_q4_quad(p, N, K, padded=True)
    assert not full[N:].any() and not full[:, K:].any(), "padding must be 0"
    for n, k in [(N - 1, K - 1), (0, 0), (N // 2, K // 2), (N - 1, min(K - 1, 37))]:
        t, c, b, kk = n // pq.NT, n % pq.NT, k // 64, k % 64
        byte = p[(t * (Kp // 64) + b) * 256 + 32 * ((kk % 32) // 4) + 4 * c + kk % 4]
        assert (byte >> 4 if kk >= 32 else byte & 15) == q[n, k]
    for kind in ("q4_weight", "q4_weight_i8"):  # f32 and int8 activations read the same layout
        name, packed = pack(kind, q)
        assert name == pq.q4_quad_layout_name() == f"x86_q4quad_nt{pq.NT}" and np.array_equal(packed, p)
    # Dword c of vector v (the 8 codes that w4a32 dequantizes in place) is column c's k = 64b + 4v .. 4v+3
    # (low nibbles) and 64b + 32 + 4v .. (high nibbles), the nibble at bits 4p being k = 4v + p // 2 + 32 (p % 2).
    full = pq.unpack_q4_quad(p, N, K, padded=True)
    dw = p.view(np.uint32).reshape(Np // pq.NT, Kp // 64, 8, pq.NT)  # [t, b, v, c]
    t, b, v, c = Np // pq.NT - 1, Kp // 64 - 1, 5, pq.NT - 1
    for pos in range(8):
        assert (dw[t, b, v, c] >> (4 * pos)) & 15 == full[pq.NT * t + c, 64 * b + 4 * v + pos // 2 + 32 * (pos % 2)]


@pytest.mark.parametrize("N,K", PACK_SHAPES)
@pytest.mark.parametrize("group", [32, 128])
def test_pack_q4_scales_zeros_roundtrip(N, K, group, rng):
    G = -(-K // group)
    s = (rng.standard_normal((N, G)) * 0.01).astype(np.float16).astype(np.float32)
    z = rng.integers(0, 16, (N, G)).astype(np.uint8)
    ps, pz = pq.pack_q4_scales(s), pq.pack_q4_zeros(z)
    Np = pq.padded_n(N)
    assert ps.dtype == np.uint16 and ps.shape == (Np * G,) and pz.dtype == np.uint8 and pz.shape == (Np * G,)
    np.testing.assert_array_equal(pq.unpack_q4_scales(ps, N, G), s)
    np.testing.assert_array_equal(pq.unpack_q4_zeros(pz, N, G), z)
    assert not pq.unpack_q4_scales(ps, N, G, padded=True)[N:].any()
    assert not pq.unpack_q4_zeros(pz, N, G, padded=True)[N:].any()
    n, g = N - 1, G - 1  # [t][G][c]
    i = ((n // pq.NT) * G + g) * pq.NT + n % pq.NT
    assert ps[i] == s[n, g].astype(np.float16).view(np.uint16) and pz[i] == z[n, g]
    assert pack("q4_scales", s)[0] == pq.q4_scales_layout_name() and pack("q4_zeros", z)[0] == pq.q4_zeros_layout_name()
    with pytest.raises(ValueError, match="fp16"):
        pq.pack_q4_scales(s + np.float32(1e-4))  # not fp16 values


@pytest.mark.parametrize("N,K", PACK_SHAPES)
def test_pack_q8_roundtrip(N, K, rng):
    q = rng.integers(-127, 128, (N, K)).astype(np.int8)
    s = rng.random((N, 1)).astype(np.float32)
    p, ps = pq.pack_q8(q), pq.pack_q8_scales(s)
    Kp, Np = pq.padded_k(K), pq.padded_n(N)
    assert p.dtype == np.int8 and p.shape == (Np * Kp,) and ps.dtype == np.float32 and ps.shape == (Np,)
    np.testing.assert_array_equal(pq.unpack_q8(p, N, K), q)
    np.testing.assert_array_equal(pq.unpack_q8_scales(ps, N), s)
    full = pq.unpack_q8(p, N, K, padded=True)
    assert full.shape == (Np, Kp) and not full[N:].any() and not full[:, K:].any() and not ps[N:].any()
    n, k = N - 1, K - 1  # [t][Kp/32][c][32]
    assert p[((n // pq.NT * (Kp // 32) + k // 32) * pq.NT + n % pq.NT) * 32 + k % 32] == q[n, k]
    assert pack("q8_weight", q)[0] == pq.q8_layout_name() and pack("q8_scales", s)[0] == pq.q8_scales_layout_name()


def test_pack_rejects_bad_codes():
    with pytest.raises(ValueError):
        pq.pack_q4_quad(np.full((2, 3), 16, np.uint8))
    with pytest.raises(ValueError):
        pq.pack_q8(np.full((2, 3), -128, np.int8))


def test_select_prefers_all():
    assert select("qlinear_w4a8").variant == "all"
    assert select("qlinear_w4a32").variant == "all"
    assert select("qlinear_w8a8").variant == "all"
    assert select("quantize_acts").variant == "avx2"
    assert select("qlinear_w4a8", variant="naive").variant == "naive"
    assert select("gemm", dtype="f32").variant == "avx2"  # other families unchanged


# ---------------------------------------------------------------------------------------- quantize_acts

QA_CASES = [  # M, K, group (the last two split the rows, and a per-tensor amax, over several chunks)
    (1, 1, 32), (1, 31, 32), (1, 32, 32), (3, 33, 32), (1, 64, 128), (3, 100, 32), (17, 128, 128),
    (3, 300, 128), (2, 1000, 64), (1, 4096, 128), (5, 130, 96), (17, 4096, 128), (70, 1000, 32),
]


def run_quantize_acts(lib, spec, x, group, per_tensor, pool, ldx_pad=3, ldq_pad=5):
    M, K = x.shape
    Kp = pq.padded_k(K)
    G = 1 if per_tensor else -(-K // group)
    xb = np.full((M, K + ldx_pad), np.nan, np.float32)  # the row padding must never be read
    xb[:, :K] = x
    xq = np.full((M, Kp + ldq_pad), 77, np.int8)          # ... nor written past Kp
    xs = np.full(1 if per_tensor else M * G, np.nan, np.float32)
    xsum = np.full(M * G, -999, np.int32)
    lib.kernel(spec)(ptr(xb), K + ldx_pad, ptr(xq), Kp + ldq_pad, ptr(xs), ptr(xsum), M, K, group, per_tensor, pool)
    assert (xq[:, Kp:] == 77).all(), "wrote past Kp into the ldq padding"
    return xq[:, :Kp], xs, xsum.reshape(M, G)


def special_rows(rng, M, K, group):
    """Random rows with extras: an all-zero group (row 0), exact rounding ties (row 1, amax 127 so
    inv = 1: x = k + 0.5 must round to even), a huge dynamic range (row 2), the largest |x| in the last
    row."""
    x = rng.standard_normal((M, K)).astype(np.float32)
    x[0, :min(K, group)] = 0.0
    if M > 1:
        ties = (np.arange(K) % 254 - 127 + 0.5).astype(np.float32)
        x[1] = np.clip(ties, -126.5, 126.5)
        x[1, 0] = 127.0
        if K > group:
            x[1, group] = 127.0
    if M > 2:
        x[2] *= np.float32(10.0) ** rng.integers(-20, 20, K).astype(np.float32)
    if M > 3:
        x[-1, K // 2] = np.float32(-3e25)  # the per-tensor amax in the last row (the last row chunk)
    return x


@pytest.mark.parametrize("spec", QA, ids=IDS)
@pytest.mark.parametrize("per_tensor", [0, 1], ids=["group", "tensor"])
@pytest.mark.parametrize("M,K,group", QA_CASES)
def test_quantize_acts_bitexact(x86_kernel_lib, spec, per_tensor, M, K, group, x86_pool, rng):
    x = special_rows(rng, M, K, group)
    xq, xs, xsum = run_quantize_acts(x86_kernel_lib, spec, x, group, per_tensor, x86_pool)
    rq, rs, rsum = quantize_activations(x, None if per_tensor else group, pad_to=pq.KPAD)
    np.testing.assert_array_equal(xq, rq)
    np.testing.assert_array_equal(xs.view(np.uint32), np.asarray(rs, np.float32).reshape(-1).view(np.uint32))
    np.testing.assert_array_equal(xsum, rsum.reshape(M, -1))


@pytest.mark.parametrize("spec", QA, ids=IDS)
def test_quantize_acts_empty(x86_kernel_lib, spec, x86_pool):
    x86_kernel_lib.kernel(spec)(None, 64, None, 64, None, None, 0, 64, 32, 0, x86_pool)  # M = 0: nothing touched


@pytest.mark.parametrize("spec", QA, ids=IDS)
def test_quantize_acts_all_zero(x86_kernel_lib, spec, x86_pool):
    x = np.zeros((3, 70), np.float32)
    for per_tensor in (0, 1):
        xq, xs, xsum = run_quantize_acts(x86_kernel_lib, spec, x, 32, per_tensor, x86_pool)
        assert not xq.any() and not xs.any() and not xsum.any()


# ---------------------------------------------------------------------------------------- qlinear

# M, N, K, group: K below / at / above the group and not a multiple of 32 or 64, N not a multiple of
# NT (and N = 1). M = 1, 2, 3 take the `all` GEMV path, larger M its GEMM path: 6, 7, 9, 10, 17 give
# every row-tile remainder of the AVX2 (4-row) and VNNI (6-row) register tiles, 100 two row blocks.
W4_CASES = [
    (1, 8, 64, 32), (1, 1, 10, 32), (3, 17, 100, 32), (1, 33, 128, 128), (17, 9, 300, 128),
    (2, 16, 40, 128), (1, 40, 1000, 128), (17, 50, 513, 32), (3, 24, 96, 96), (100, 20, 70, 32),
    (1, 7, 4096, 128), (6, 31, 257, 64), (7, 1, 64, 64), (9, 23, 200, 32), (10, 8, 129, 128),
    # w4a8: the GEMV's largest row group (4, batched decode), the GEMM just past it (5), two groups' worth (8)
    (4, 19, 160, 32), (5, 8, 64, 64), (8, 33, 320, 32),
    # the AVX-512 GEMMs' column blocks (w4a32: 8 tiles, K blocks of 128): a last block of 1, 5 and 7 tiles,
    # several K blocks with a partial last 64-block, and K below one half-block (no second group)
    (13, 130, 96, 32), (7, 100, 300, 64), (10, 120, 256, 128), (6, 70, 20, 32),
]
# w8a8 adds the activation group: 32 (the scheme's), 64, 96 (a group of three 32-k chunks: the GEMV's inner
# loop and the GEMM's group K range are not the 64-k padding), and per row (G = 1: a group of K or more,
# the `all` kernel's path without per-group epilogues).
ROW = 1 << 20
W8_CASES = [
    (1, 8, 64, 32), (1, 1, 10, 32), (3, 17, 100, 32), (17, 9, 300, 32), (2, 16, 40, 32), (1, 40, 1000, 32),
    (17, 50, 513, 32), (100, 20, 70, 32), (1, 7, 4096, 32), (6, 31, 257, 32), (7, 1, 64, 32), (9, 23, 200, 32),
    (10, 8, 129, 32), (4, 19, 160, 32), (8, 33, 320, 32),
    (1, 8, 64, 64), (3, 17, 100, 64), (17, 50, 513, 64), (1, 40, 1000, 96), (9, 23, 200, 96), (2, 16, 40, 96),
    (1, 8, 64, ROW), (1, 1, 10, ROW), (3, 17, 100, ROW), (17, 50, 513, ROW), (100, 20, 70, ROW), (1, 7, 4096, ROW),
    (6, 31, 257, ROW), (9, 23, 200, 256),
    # the AVX-512 GEMM's 6-row x 64-column tile: with the cases above every row remainder 1..5 (13, 14, 15, 11,
    # 10: 1, 2, 3, 5, 4 rows) and whole tiles (24); column blocks of 8 tiles: a last block of 1 tile (130: 17
    # tiles), of 7 (120: an absent tile in the last zmm), of 5 (100: 3 zmm), whole blocks (128)
    (13, 19, 96, 32), (14, 9, 200, ROW), (15, 33, 129, 64), (11, 17, 100, 32), (24, 16, 64, 32),
    (13, 130, 96, 32), (10, 120, 64, ROW), (7, 100, 200, 64), (24, 128, 160, ROW), (98, 72, 64, 32),
]


def w4_problem(rng, M, N, K, group, sym, with_bias):
    W = rng.standard_normal((K, N)).astype(np.float32)
    W[:, 0] *= 1e-3  # columns of very different scale
    q, s, z = quantize_int4(W, group, symmetric=sym)
    x = rng.standard_normal((M, K)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32) if with_bias else None
    return x, q, s, z, bias


def w4a32_n_add(K, group, spec=None):
    G = -(-K // group)
    kc = dict(spec.tuning).get("W32_KC", W32_KC) if spec is not None else W32_KC  # a tuned K block
    return max(group + G + 4, kc + -(-K // kc) + 3)


def w4_pack(q, s, z):
    """Packed int4 operands (w4a8 and w4a32 read the same quad layout)."""
    return pq.pack_q4_quad(q), pq.pack_q4_scales(s), None if z is None else pq.pack_q4_zeros(z)


def expected(xd, wd, bias, n_add):
    ref = xd @ wd.T
    mag = np.abs(xd) @ np.abs(wd).T
    if bias is not None:
        ref, mag = ref + bias, mag + np.abs(bias)
    return ref, C * n_add * U * mag + 1e-37


def run_w4a8(lib, spec, xq, xs, xsum, K, group, wp, sp, zp, bias, N, pool, ldy_pad=3):
    M = xq.shape[0]
    y = np.full((M, N + ldy_pad), np.nan, np.float32)  # the ldy padding must never be written
    lib.kernel(spec)(ptr(xq), ptr(xs), ptr(xsum), xq.shape[1], ptr(wp), ptr(sp), ptr(zp), ptr(bias), ptr(y),
                     N + ldy_pad, M, N, K, group, pool)
    assert np.isnan(y[:, N:]).all(), "wrote past N into the ldy padding"
    return y[:, :N]


@pytest.mark.parametrize("spec,isa", variants("qlinear_w4a8"))
@pytest.mark.parametrize("M,N,K,group", W4_CASES)
@pytest.mark.parametrize("sym", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
def test_qlinear_w4a8(x86_kernel_lib, spec, isa, M, N, K, group, sym, with_bias, x86_pool, rng, isa_guard):
    set_isa(x86_kernel_lib, spec, isa)
    x, q, s, z, bias = w4_problem(rng, M, N, K, group, sym, with_bias)
    xq, xs, xsum = quantize_activations(x, group, pad_to=pq.KPAD)
    ldq = xq.shape[1] + 16  # a row stride larger than Kp
    xqb = np.zeros((M, ldq), np.int8)
    xqb[:, :xq.shape[1]] = xq
    y = run_w4a8(x86_kernel_lib, spec, xqb, xs, xsum, K, group, *w4_pack(q, s, z), bias, N, x86_pool)
    G = -(-K // group)
    ref, tol = expected(dequantize_activations(xq, xs, K, group), dequantize(q, s, z, 4, group), bias, G + 4)
    check_close(y, ref, tol, f"{spec.name} M={M} N={N} K={K} group={group}")


@pytest.mark.parametrize("spec,isa", [p for p in variants("qlinear_w4a8") if p.values[0].variant == "all"])
@pytest.mark.parametrize("M,K,group", [(4, 320, 32), (3, 4096, 128), (8, 200, 64)])  # GEMV, GEMV, GEMM
def test_qlinear_w4a8_row_does_not_depend_on_the_batch(x86_kernel_lib, spec, isa, M, K, group, x86_pool, rng,
                                                       isa_guard):
    """Batched decode (tcc_model_run_rows) runs one row per client through one call: every row's output is
    bit for bit that row run alone (integer dots, the same epilogue order, GEMV or GEMM), so batching cannot
    change a w4a8 model's tokens."""
    set_isa(x86_kernel_lib, spec, isa)
    N = 37
    x, q, s, z, bias = w4_problem(rng, M, N, K, group, False, True)
    xq, xs, xsum = quantize_activations(x, group, pad_to=pq.KPAD)
    packed = w4_pack(q, s, z)
    y = run_w4a8(x86_kernel_lib, spec, xq, xs, xsum, K, group, *packed, bias, N, x86_pool)
    for m in range(M):
        alone = run_w4a8(x86_kernel_lib, spec, xq[m:m + 1].copy(), xs[m:m + 1].copy(), xsum[m:m + 1].copy(), K,
                         group, *packed, bias, N, x86_pool)
        assert np.array_equal(y[m], alone[0]), f"row {m} of {M} differs from the row alone"


def run_w4a32(lib, spec, x, K, group, wp, sp, zp, bias, N, pool, ldx_pad=5, ldy_pad=3):
    M = x.shape[0]
    xb = np.full((M, K + ldx_pad), np.nan, np.float32)  # x is not padded: never read past K
    xb[:, :K] = x
    y = np.full((M, N + ldy_pad), np.nan, np.float32)
    lib.kernel(spec)(ptr(xb), K + ldx_pad, ptr(wp), ptr(sp), ptr(zp), ptr(bias), ptr(y), N + ldy_pad, M, N, K,
                     group, pool)
    assert np.isnan(y[:, N:]).all(), "wrote past N into the ldy padding"
    return y[:, :N]


@pytest.mark.parametrize("spec,isa", variants("qlinear_w4a32"))
@pytest.mark.parametrize("M,N,K,group", W4_CASES)
@pytest.mark.parametrize("sym", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
def test_qlinear_w4a32(x86_kernel_lib, spec, isa, M, N, K, group, sym, with_bias, x86_pool, rng, isa_guard):
    set_isa(x86_kernel_lib, spec, isa)
    x, q, s, z, bias = w4_problem(rng, M, N, K, group, sym, with_bias)
    y = run_w4a32(x86_kernel_lib, spec, x, K, group, *w4_pack(q, s, z), bias, N, x86_pool)
    ref, tol = expected(x.astype(np.float64), dequantize(q, s, z, 4, group), bias, w4a32_n_add(K, group, spec))
    check_close(y, ref, tol, f"{spec.name} M={M} N={N} K={K} group={group}")


def run_w8a8(lib, spec, xq, xs, xsum, K, group, wp, sp, bias, N, pool, ldy_pad=3):
    M = xq.shape[0]
    y = np.full((M, N + ldy_pad), np.nan, np.float32)
    lib.kernel(spec)(ptr(xq), ptr(xs), ptr(xsum), xq.shape[1], ptr(wp), ptr(sp), ptr(bias), ptr(y), N + ldy_pad, M, N,
                     K, group, pool)
    assert np.isnan(y[:, N:]).all(), "wrote past N into the ldy padding"
    return y[:, :N]


@pytest.mark.parametrize("spec,isa", variants("qlinear_w8a8"))
@pytest.mark.parametrize("M,N,K,group", W8_CASES)
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
def test_qlinear_w8a8(x86_kernel_lib, spec, isa, M, N, K, group, with_bias, x86_pool, rng, isa_guard):
    set_isa(x86_kernel_lib, spec, isa)
    x, q, s, bias = w8_problem(rng, M, N, K, with_bias)
    xq, xs, xsum = quantize_activations(x, group, pad_to=pq.KPAD)
    y = run_w8a8(x86_kernel_lib, spec, xq, xs, xsum, K, group, pq.pack_q8(q), pq.pack_q8_scales(s), bias, N, x86_pool)
    ref, tol = expected(dequantize_activations(xq, xs, K, group), dequantize(q, s, None, 8, K), bias, -(-K // 32) + 5)
    check_close(y, ref, tol, f"{spec.name} M={M} N={N} K={K} group={group}")


def w8_problem(rng, M, N, K, with_bias):
    W = rng.standard_normal((K, N)).astype(np.float32)
    q, s = quantize_int8(W)
    q[0, :] = np.where(np.arange(K) % 2, 127, -127)  # extreme codes: the sign trick's limits
    x = rng.standard_normal((M, K)).astype(np.float32)
    x[0, 0] = 50.0  # one outlier, so most codes of its group are small and some are +-127
    x[M - 1, K // 2:] *= 1e-3  # groups of very different scale within a row
    bias = rng.standard_normal(N).astype(np.float32) if with_bias else None
    return x, q, s, bias


@pytest.mark.parametrize("spec,isa", variants("qlinear_w8a8"))
def test_qlinear_w8a8_uses_each_group_scale(x86_kernel_lib, spec, isa, x86_pool, rng, isa_guard):
    """Swapping two groups' activation scales moves the outputs far beyond the bound: a kernel that read one
    scale per row (or per tensor) would not see it."""
    set_isa(x86_kernel_lib, spec, isa)
    for M in (1, 5):  # the GEMV and the GEMM paths
        x, q, s, _ = w8_problem(rng, M, 16, 128, False)
        x[:, 32:64] *= 8.0
        xq, xs, xsum = quantize_activations(x, 32, pad_to=pq.KPAD)
        swapped = xs.copy()
        swapped[:, [0, 1]] = swapped[:, [1, 0]]
        y = run_w8a8(x86_kernel_lib, spec, xq, swapped, xsum, 128, 32, pq.pack_q8(q), pq.pack_q8_scales(s), None, 16,
                     x86_pool)
        ref, tol = expected(dequantize_activations(xq, xs, 128, 32), dequantize(q, s, None, 8, 128), None, 4 + 5)
        assert (np.abs(y - ref) > 100 * tol).mean() > 0.9, spec.name


@pytest.mark.parametrize("family", list(FAMILY))
def test_empty_shapes(x86_kernel_lib, family, x86_pool):
    """M = 0 or N = 0 must return without touching anything (all pointers may be null then)."""
    for spec in FAMILY[family]:
        fn = x86_kernel_lib.kernel(spec)
        for M, N in [(0, 8), (3, 0), (0, 0)]:
            if family == "qlinear_w4a8":
                fn(None, None, None, 64, None, None, None, None, None, 8, M, N, 64, 32, x86_pool)
            elif family == "qlinear_w4a32":
                fn(None, 64, None, None, None, None, None, 8, M, N, 64, 32, x86_pool)
            else:
                fn(None, None, None, 64, None, None, None, None, 8, M, N, 64, 32, x86_pool)


@pytest.mark.parametrize("family", ["qlinear_w4a8", "qlinear_w4a32"])
def test_bad_group_raises(x86_kernel_lib, family, rng):
    """The vectorized kernels need group % 32 == 0: another group is reported, not computed wrongly."""
    lib = x86_kernel_lib
    x, q, s, z, _ = w4_problem(rng, 2, 8, 64, 32, True, False)
    wp, sp, _ = w4_pack(q, s, z)
    for spec in FAMILY[family]:
        if spec.variant not in ("simd", "all"):
            continue
        y = np.zeros((2, 8), np.float32)
        if family == "qlinear_w4a8":
            xq, xs, xsum = quantize_activations(x, 32, pad_to=pq.KPAD)
            lib.kernel(spec)(ptr(xq), ptr(xs), ptr(xsum), 64, ptr(wp), ptr(sp), None, None, ptr(y), 8, 2, 8, 64, 16, None)
        else:
            lib.kernel(spec)(ptr(x), 64, ptr(wp), ptr(sp), None, None, ptr(y), 8, 2, 8, 64, 16, None)
        assert lib.tcc_error_pending() and b"multiple of 32" in lib.tcc_error_message(), spec.name
        lib.tcc_clear_error()
    spec = next(s for s in QA if s.variant == "avx2")
    xq, xs, xsum = np.zeros((2, 64), np.int8), np.zeros(8, np.float32), np.zeros(8, np.int32)
    lib.kernel(spec)(ptr(x), 64, ptr(xq), 64, ptr(xs), ptr(xsum), 2, 64, 16, 0, None)
    assert lib.tcc_error_pending() and b"multiple of 32" in lib.tcc_error_message()
    lib.tcc_clear_error()


def test_w8a8_bad_group_raises(x86_kernel_lib, rng):
    """w8a8's activation group: the vectorized variants need a multiple of 32, the portable ones a positive
    group; another is reported (before anything is written), not computed wrongly."""
    lib = x86_kernel_lib
    x, q, s, _ = w8_problem(rng, 2, 8, 64, False)
    xq, xs, xsum = quantize_activations(x, 32, pad_to=pq.KPAD)
    wp, sp = pq.pack_q8(q), pq.pack_q8_scales(s)
    for spec in FAMILY["qlinear_w8a8"]:
        for group in ((16, 0) if spec.variant in ("simd", "all") else (0, -32)):
            y = np.full((2, 8), 7.0, np.float32)
            lib.kernel(spec)(ptr(xq), ptr(xs), ptr(xsum), 64, ptr(wp), ptr(sp), None, ptr(y), 8, 2, 8, 64, group, None)
            want = b"multiple of 32" if spec.variant in ("simd", "all") else b"not positive"
            assert lib.tcc_error_pending() and want in lib.tcc_error_message(), (spec.name, group)
            assert (y == 7.0).all(), spec.name
            lib.tcc_clear_error()


def test_vnni_dispatch_reported(x86_kernel_lib, isa_guard):
    """The `all` kernels use the best path the CPU has (w4a8 and w8a8: AVX-512 VNNI, then AVX-VNNI; w4a32:
    AVX-512), and can be capped at a lower one."""
    from tcc.backends.x86.target import cpu_flags

    flags = cpu_flags()
    vnni = int("avx_vnni" in flags)
    avx512 = all(f in flags for f in ("avx512_vnni", "avx512bw", "avx512vl", "avx512dq"))
    spec = next(s for s in FAMILY["qlinear_w4a8"] if s.variant == "all")
    assert set_isa(x86_kernel_lib, spec, ISA_BEST) == (2 if avx512 else vnni)
    assert set_isa(x86_kernel_lib, spec, ISA_AVX512) == (2 if avx512 else vnni)
    assert set_isa(x86_kernel_lib, spec, ISA_VNNI) == vnni
    assert set_isa(x86_kernel_lib, spec, ISA_AVX2) == 0
    spec = next(s for s in FAMILY["qlinear_w8a8"] if s.variant == "all")
    assert set_isa(x86_kernel_lib, spec, ISA_BEST) == (2 if avx512 else vnni)
    assert set_isa(x86_kernel_lib, spec, ISA_VNNI) == vnni
    assert set_isa(x86_kernel_lib, spec, ISA_AVX2) == 0
    # w4a32 has no VNNI level (f32 activations) and its AVX-512 path needs no VNNI: AVX-512 F/VL/BW/DQ
    avx512f = all(f in flags for f in ("avx512f", "avx512vl", "avx512bw", "avx512dq"))
    spec = next(s for s in FAMILY["qlinear_w4a32"] if s.variant == "all")
    assert set_isa(x86_kernel_lib, spec, ISA_BEST) == (2 if avx512f else 0)
    assert set_isa(x86_kernel_lib, spec, ISA_VNNI) == 0
    assert set_isa(x86_kernel_lib, spec, ISA_AVX2) == 0


def test_tolerance_catches_one_code_off(rng):
    """The bounds above are well below the effect of one code off by one in one weight."""
    for M, N, K, group in W4_CASES:
        x, q, s, z, _ = w4_problem(rng, M, N, K, group, False, False)
        G = -(-K // group)
        wd = dequantize(q, s, z, 4, group)
        n = N - 1  # the last column (a padded tile's, for N % 8 != 0)
        k = K // 2  # inside a whole group (a one-element last group may have a tiny scale)
        q2 = q.copy()
        q2[n, k] = q2[n, k] + 1 if q2[n, k] < 15 else q2[n, k] - 1
        cases = [(dequantize_activations(*quantize_activations(x, group)[:2], K, group), G + 4)]
        cases += [(x.astype(np.float64), w4a32_n_add(K, group, spec)) for spec in FAMILY["qlinear_w4a32"]]
        for xd, n_add in cases:
            ref, tol = expected(xd, wd, None, n_add)
            hit = np.abs(xd[:, k]) > 0.05 * np.abs(xd).max()  # rows where that activation matters
            moved = xd @ dequantize(q2, s, z, 4, group).T
            assert (np.abs(moved - ref)[hit, n] > 2 * tol[hit, n]).all(), (M, N, K, group, n_add)


# ---------------------------------------------------------------------------------------- ONNX Runtime oracle

def matmulnbits(x, q, s, z, K, N, block):
    """com.microsoft.MatMulNBits on the same int4 weights, run by ONNX Runtime: B uint8 [N, K/block,
    block/2] with element 2i in the low nibble and 2i+1 in the high one, scales [N, K/block], zero
    points packed two per byte (low nibble first) [N, ceil(K/block / 2)], 8 when absent."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    nblk = -(-K // block)
    qp = np.zeros((N, nblk * block), np.uint8)
    qp[:, :K] = q
    qp = qp.reshape(N, nblk, block // 2, 2)
    inits = [numpy_helper.from_array((qp[..., 0] | (qp[..., 1] << 4)).astype(np.uint8), "B"),
             numpy_helper.from_array(s.reshape(N, nblk).astype(np.float32), "scales")]
    inputs = ["A", "B", "scales"]
    if z is not None:
        zz = np.zeros((N, 2 * (-(-nblk // 2))), np.uint8)
        zz[:, :nblk] = z
        inits.append(numpy_helper.from_array((zz[:, 0::2] | (zz[:, 1::2] << 4)).astype(np.uint8), "zp"))
        inputs.append("zp")
    node = helper.make_node("MatMulNBits", inputs, ["Y"], domain="com.microsoft", K=K, N=N, bits=4, block_size=block)
    M = x.shape[0]
    graph = helper.make_graph([node], "matmulnbits", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [M, K])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [M, N])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    assert onnx
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"A": x})[0]


@pytest.mark.parametrize("M,N,K,group", [(1, 40, 256, 32), (5, 33, 300, 128), (3, 17, 100, 32), (1, 64, 4096, 128),
                                         (17, 64, 1024, 64)])
@pytest.mark.parametrize("sym", [True, False], ids=["sym", "asym"])
def test_w4a32_matches_onnxruntime_matmulnbits(x86_kernel_lib, M, N, K, group, sym, x86_pool, rng, isa_guard):
    """Both results are within fp32 summation error of the exact product, so they differ by at most the
    sum of two such bounds. ORT's fp32 path may dequantize as q*s - z*s (rounding relative to
    (q + z) s rather than |q - z| s) and sums in an order we do not know (n_add = K + G + 4, the bound
    for any order): both bounds are taken over |x| @ ((q + z) |s|)^T, which covers ours too."""
    spec = next(s for s in FAMILY["qlinear_w4a32"] if s.variant == "all")
    x, q, s, z, _ = w4_problem(rng, M, N, K, group, sym, False)
    y = run_w4a32(x86_kernel_lib, spec, x, K, group, *w4_pack(q, s, z), None, N, x86_pool)
    y_ort = matmulnbits(x, q, s, z, K, N, group)
    G = -(-K // group)
    zk = 8.0 if z is None else np.repeat(z.astype(np.float64), group, axis=1)[:, :K]
    mag = np.abs(x.astype(np.float64)) @ ((q + zk) * np.repeat(np.abs(s.astype(np.float64)), group, axis=1)[:, :K]).T
    tol = C * (K + G + 4 + w4a32_n_add(K, group)) * U * mag + 1e-37
    check_close(y, y_ort.astype(np.float64), tol, f"w4a32 vs MatMulNBits M={M} N={N} K={K} group={group}")
