"""CUDA linear-algebra and quantized kernels (backends/cuda/kernels_linalg.py: gemm, qlinear_w4a16, matmul,
qgather) under the CPU SIMT emulator against numpy, and every variant compiled by nvcc for sm_80 and sm_90.

Tolerances (fp16 outputs). The references are exact (float64 sums of the kernels' own fp16 operands:
fp16(x), fp16 weights, Wh = fp16((q - z) * s) for w4a16). A product of two fp16 values is exact in fp32
(11 + 11 significant bits), so what rounds is (a) the fp32 accumulation of the K products, in any order
(per-lane chains + a warp tree on the GEMV path, the tensor cores' accumulators on the GEMM path), bounded
by K u S with S = sum_k |x_k| |w_k| and u = 2^-24; we take 2 u (K * 2^-23) because the tensor cores of
real GPUs may truncate rather than round their fp32 additions; and (b) the one rounding of y (+ bias,
added in fp32) to fp16: at most 2^-11 of its value (the fp16 unit roundoff; 2^-25 absolute in the
subnormal range). So |y - ref| <= 2^-11 |ref| + 1.01 K 2^-23 S + 2^-24. This is a bound, not a fit: one
int4 code off by one, a wrong scale or zero point or a dropped K tail moves an output by about |x| |s|,
far beyond it (test_tolerance_catches_one_code_off checks that on these shapes). fp32 outputs (matmul
f32): no final rounding beyond fp32's, |y - ref| <= 2^-24 |ref| + 1.01 K 2^-24 S. qgather is exact: a
row value (q - z) * s is exact in fp32 and rounds once to the output type (q8: the f32 product q * s,
then fp16), as the reference computes it.
"""
from __future__ import annotations

import ctypes
import re

import numpy as np
import pytest
from tcc.backends.cuda import kernels_linalg as kl
from tcc.backends.cuda import packing
from tcc.ir.quant_arith import dequantize, qlinear_reference, quantize_int4, quantize_int8, round_f16

from .harness import build_kernels, nvcc_compile, sass

SPEC = {(s.family, s.param("dtype"), s.param("bits")): s for s in kl.VARIANTS}
GEMM, QLIN = SPEC[("gemm", "f16", None)], SPEC[("qlinear_w4a16", "f16", None)]
U = 2.0 ** -24


def _argtypes(signature: str) -> list:
    params = signature[signature.index("(") + 1: signature.rindex(")")]
    types = []
    for p in (p.strip() for p in params.split(",")):
        if "*" in p:
            types.append(ctypes.c_void_p)
        else:
            types.append({"int64_t": ctypes.c_int64, "int32_t": ctypes.c_int32, "float": ctypes.c_float}[
                re.sub(r"\s+\w+$", "", p).strip()])
    return types


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    """Every variant of this area in one emulator library, and one execution context."""
    cdll = build_kernels(kl.VARIANTS, tmp_path_factory.mktemp("cuda_linalg"))
    cdll.tcc_exec_create.argtypes, cdll.tcc_exec_create.restype = [ctypes.c_int], ctypes.c_void_p
    cdll.tcc_exec_sync.argtypes, cdll.tcc_exec_sync.restype = [ctypes.c_void_p], ctypes.c_int
    cdll.tcc_exec_error.argtypes, cdll.tcc_exec_error.restype = [ctypes.c_void_p], ctypes.c_char_p
    cdll.tcc_exec_clear_error.argtypes, cdll.tcc_exec_clear_error.restype = [ctypes.c_void_p], None
    for spec in kl.VARIANTS:
        fn = getattr(cdll, spec.name)
        fn.argtypes, fn.restype = _argtypes(spec.signature), None
    cdll.exec = cdll.tcc_exec_create(1)
    cdll.tcc_simt_set_seed(7)  # threads run in a shuffled order between barriers: races show up as wrong results
    return cdll


def run(lib, spec, *args) -> None:
    """Launch and sync; the run must report no error."""
    getattr(lib, spec.name)(*args, lib.exec)
    assert lib.tcc_exec_sync(lib.exec) == 0, lib.tcc_exec_error(lib.exec).decode()


def p(a) -> int | None:
    return None if a is None else a.ctypes.data


def f16(rng, *shape, scale=1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float16)


def check_f16(y: np.ndarray, ref: np.ndarray, S: np.ndarray, K: int) -> None:
    """The bound of the module docstring for fp16 outputs (y fp16, ref exact, S = |x| . |w|)."""
    err = np.abs(y.astype(np.float64) - ref)
    tol = 2.0 ** -11 * np.abs(ref) + 1.01 * K * 2 * U * S + U
    bad = np.argwhere(err > tol)
    assert bad.size == 0, f"{len(bad)} outputs off, first {tuple(bad[0])}: {y[tuple(bad[0])]} vs {ref[tuple(bad[0])]}"


# -- packing ------------------------------------------------------------------------------------------

def test_q4_weight_layout_round_trip():
    q = np.random.default_rng(0).integers(0, 16, (5, 77)).astype(np.uint8)
    name, words = packing.pack("q4_weight", q)
    assert name == "cuda_q4_n32k" and words.dtype == np.uint32 and words.shape == (5, packing.q4_words(77)) == (5, 12)
    assert np.array_equal(packing.unpack_q4_weight(words, 77), q)
    # Word 0 of column 0 holds k = 0..7 in nibble slots 0 4 1 5 2 6 3 7 (the magic-number order).
    w = int(words[0, 0])
    assert [(w >> (4 * s)) & 15 for s in (0, 4, 1, 5, 2, 6, 3, 7)] == list(q[0, :8])
    assert np.all(packing.unpack_q4_weight(words, 96)[:, 77:] == 8)  # the K padding: code 8


def test_gemm_layout_and_refusals():
    b = np.arange(3 * 10, dtype=np.float32).reshape(3, 10)
    name, bp = packing.pack("gemm_f16", b)
    assert name == "cuda_f16_nk8" and bp.dtype == np.float16 and bp.shape == (10, 8)
    assert np.array_equal(bp[:, :3], b.T.astype(np.float16)) and not bp[:, 3:].any()
    # Scales arrive as f32 holding fp16 values (quantize_int4), or as f16 after an fp16 pass: same bits.
    sc = np.array([[0.5, 0.1], [3.0, 1e-3]], np.float32).astype(np.float16)
    assert np.array_equal(packing.pack("q4_scales", sc)[1], packing.pack("q4_scales", sc.astype(np.float32))[1])
    assert np.array_equal(packing.pack("q4_scales", sc)[1], sc.view(np.uint16))
    with pytest.raises(ValueError, match="not fp16 values"):
        packing.pack("q4_scales", np.array([[0.1]], np.float32))
    with pytest.raises(KeyError, match="no packing for 'q4_weight_i8'"):
        packing.pack("q4_weight_i8", np.zeros((2, 2), np.uint8))


# -- qlinear_w4a16 ------------------------------------------------------------------------------------

# (N, K, group, symmetric, bias, ldx pad, ldy pad): N and K not multiples of the 64 x 64 x 32 tiles, K not a
# multiple of the group (the last group partial), odd leading dimensions (unaligned rows: scalar loads).
QCASES = [
    (72, 200, 32, True, True, 0, 0),
    (40, 256, 128, False, False, 3, 1),
    (65, 96, 64, False, True, 0, 2),
    (9, 165, 128, True, False, 1, 0),
]


def qlinear_operands(rng, N, K, group, symmetric):
    w = rng.standard_normal((K, N)).astype(np.float32) * 0.5
    q, scales, zeros = quantize_int4(w, group, symmetric=symmetric)
    return q, scales, zeros


def run_qlinear(lib, rng, M, N, K, group, symmetric, with_bias, ldx_pad, ldy_pad, q=None):
    q0, scales, zeros = qlinear_operands(rng, N, K, group, symmetric)
    q = q0 if q is None else q
    ldx, ldy = K + ldx_pad, N + ldy_pad
    x = f16(rng, M, ldx)
    bias = f16(rng, N) if with_bias else None
    y = np.full((M, ldy), np.float16(7.0))  # the padding columns must stay untouched
    wp = packing.pack("q4_weight", q)[1]
    sp = packing.pack("q4_scales", scales)[1]
    zp = None if zeros is None else packing.pack("q4_zeros", zeros)[1]
    run(lib, QLIN, p(x), ldx, p(wp), p(sp), p(zp), p(bias), p(y), ldy, M, N, K, group)
    xs = x[:, :K].astype(np.float32)
    ref = qlinear_reference(xs, q0, scales, zeros, None if bias is None else bias.astype(np.float32), 4, group,
                            "f16").astype(np.float64)
    wh = round_f16(dequantize(q0, scales, zeros, 4, group))
    S = np.abs(xs.astype(np.float64)) @ np.abs(wh).T
    assert np.all(y[:, N:] == np.float16(7.0))
    return y[:, :N], ref, S


# A long K: a GEMV lane walks its column more than once (K > 32 lanes x 32 codes), the GEMM 35 K steps.
QCASES_LONG = [(24, 1100, 128, False, True, 0, 0)]
QID = lambda c: f"N{c[0]}-K{c[1]}-g{c[2]}-{'sym' if c[3] else 'asym'}{'-bias' if c[4] else ''}"


@pytest.mark.parametrize("case,rows", [(c, range(1, 18)) for c in QCASES] + [(c, (1, 3, 8, 9, 17)) for c in QCASES_LONG],
                         ids=lambda v: QID(v) if isinstance(v, tuple) else f"M{min(v)}-{max(v)}")
def test_qlinear_w4a16(lib, case, rows):
    """M = 1..17: the GEMV path (M <= 8) and the tensor-core path (M > 8), the crossover on both sides."""
    rng = np.random.default_rng(sum(case[:3]))
    for M in rows:
        y, ref, S = run_qlinear(lib, rng, M, *case)
        check_f16(y, ref, S, case[1])


@pytest.mark.parametrize("M", [1, 12])
def test_tolerance_catches_one_code_off(lib, M):
    """The bound is tight enough that one int4 code off by one (in the K tail, a partial group) fails it."""
    N, K, group = 9, 165, 128
    rng = np.random.default_rng(5)
    q0, _, _ = qlinear_operands(np.random.default_rng(5), N, K, group, True)
    bad = q0.copy()
    bad[4, K - 1] = bad[4, K - 1] + 1 if bad[4, K - 1] < 15 else 14
    y, ref, S = run_qlinear(lib, rng, M, N, K, group, True, False, 0, 0, q=bad)
    with pytest.raises(AssertionError, match="outputs off"):
        check_f16(y, ref, S, K)


# -- gemm ---------------------------------------------------------------------------------------------

# (N, K, bias, lda pad, ldc pad): K not a multiple of 8 (the packing's zero padding), of 32 (the K step).
# (600: a GEMV lane reads its column more than once, 32 lanes x 8 values at a time.)
GCASES = [(72, 200, True, 0, 0), (33, 77, False, 5, 3), (130, 40, True, 1, 0), (20, 600, True, 0, 0)]


@pytest.mark.parametrize("case", GCASES, ids=lambda c: f"N{c[0]}-K{c[1]}{'-bias' if c[2] else ''}")
def test_gemm_f16(lib, case):
    N, K, with_bias, lda_pad, ldc_pad = case
    rng = np.random.default_rng(N + K)
    b = f16(rng, K, N, scale=0.3)
    bp = packing.pack("gemm_f16", b)[1]
    bias = f16(rng, N) if with_bias else None
    for M in range(1, 18):
        lda, ldc = K + lda_pad, N + ldc_pad
        a = f16(rng, M, lda)
        c = np.full((M, ldc), np.float16(7.0))
        run(lib, GEMM, p(a), lda, p(bp), p(bias), p(c), ldc, M, N, K)
        a64, b64 = a[:, :K].astype(np.float64), b.astype(np.float64)
        ref = a64 @ b64 + (0 if bias is None else bias.astype(np.float64))
        check_f16(c[:, :N], ref, np.abs(a64) @ np.abs(b64), K)
        assert np.all(c[:, N:] == np.float16(7.0))


def test_gemm_k0_is_bias(lib):
    rng = np.random.default_rng(1)
    bias = f16(rng, 5)
    for M in (1, 9):
        c = np.zeros((M, 5), np.float16)
        run(lib, GEMM, p(np.zeros((M, 1), np.float16)), 0, p(np.zeros((5, 8), np.float16)), p(bias), p(c), 5, M, 5, 0)
        assert np.array_equal(c, np.broadcast_to(bias, (M, 5)))


# -- matmul -------------------------------------------------------------------------------------------

def _matmul_case(lib, spec, rng, a_shape, b_shape, transpose_b):
    dt = np.float16 if spec.param("dtype") == "f16" else np.float32
    a = rng.standard_normal(a_shape).astype(dt)
    bt = rng.standard_normal(b_shape[:-2] + (b_shape[-1], b_shape[-2])).astype(dt)
    b = np.swapaxes(bt, -1, -2) if transpose_b else np.ascontiguousarray(np.swapaxes(bt, -1, -2))
    M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    c = np.zeros(batch + (M, N), dt)

    def bstrides(x):
        st = [s // x.itemsize for s in x.strides[:-2]]
        lead = len(batch) - len(st)
        return np.array([0] * lead + [0 if x.shape[i] == 1 else st[i] for i in range(len(st))], np.int64)

    shape = np.array(batch, np.int64)
    a_b, b_b = bstrides(a), bstrides(b)
    run(lib, spec, p(a), p(b), p(c), M, N, K, a.strides[-2] // a.itemsize, a.strides[-1] // a.itemsize,
        b.strides[-2] // b.itemsize, b.strides[-1] // b.itemsize, len(batch), p(shape) if len(batch) else None,
        p(a_b) if len(batch) else None, p(b_b) if len(batch) else None)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    ref = np.matmul(a64, b64)
    S = np.matmul(np.abs(a64), np.abs(b64))
    if dt == np.float16:
        check_f16(c, ref, S, K)
    else:
        err = np.abs(c.astype(np.float64) - ref)
        assert np.all(err <= U * np.abs(ref) + 1.01 * K * U * S + 1e-30)


@pytest.mark.parametrize("dtype", ["f16", "f32"])
def test_matmul(lib, dtype):
    spec = SPEC[("matmul", dtype, None)]
    rng = np.random.default_rng(3)
    _matmul_case(lib, spec, rng, (17, 23), (23, 19), False)  # no batch
    _matmul_case(lib, spec, rng, (1, 5), (5, 33), True)  # one row, B transposed (column stride K)
    _matmul_case(lib, spec, rng, (2, 1, 3, 40), (1, 3, 40, 18), False)  # broadcast batch [2, 3]
    _matmul_case(lib, spec, rng, (3, 18, 7), (7, 17), True)  # B broadcast over the batch


# -- qgather ------------------------------------------------------------------------------------------

def _qgather_table(rng, bits, symmetric, V=6, K=37, group=32):
    t = rng.standard_normal((K, V)).astype(np.float32)  # the quantizer takes [K, N]: table rows are its columns
    if bits == 4:
        q, scales, zeros = quantize_int4(t, group, symmetric=symmetric)
        table = packing.pack("q4_rows", q)[1]
        sc = packing.pack("q4_row_scales", scales)[1]
        zp = zeros
    else:
        q, scales = quantize_int8(t)
        zeros, zp, group = None, None, K
        table = packing.pack("q8_rows", q)[1]
        sc = np.ascontiguousarray(scales, np.float32)
    return q, scales, zeros, table, sc, zp, group


# Every qgather variant; int4 tables symmetric and with zero points (int8 tables are symmetric).
QG_CASES = [(s, sym) for s in kl.VARIANTS if s.family == "qgather" for sym in ((True, False) if s.param("bits") == 4
                                                                             else (True,))]


@pytest.mark.parametrize("spec,symmetric", QG_CASES, ids=lambda v: v.name if hasattr(v, "name") else
                         ("sym" if v else "asym"))
def test_qgather(lib, spec, symmetric):
    bits, dt = spec.param("bits"), (np.float16 if spec.param("dtype") == "f16" else np.float32)
    rng = np.random.default_rng(bits)
    V, K = 6, 37
    q, scales, zeros, table, sc, zp, group = _qgather_table(rng, bits, symmetric)
    ids = np.array([0, 5, -1, 3, -6, 2, 2], np.int64)
    out = np.zeros((len(ids), K), dt)
    run(lib, spec, p(table), p(sc), p(zp), p(ids), p(out), len(ids), V, K, group)
    if bits == 4:
        rows = dequantize(q, scales, zeros, 4, group)  # exact: (q - z) * s has <= 15 significant bits
    else:
        rows = (q.astype(np.float32) * scales.astype(np.float32)).astype(np.float64)  # the f32 product q * s
    want = rows.astype(np.float32).astype(dt)[np.where(ids < 0, ids + V, ids)]
    assert np.array_equal(out, want)


@pytest.mark.parametrize("bits", [4, 8])
def test_qgather_index_out_of_range(lib, bits):
    spec = SPEC[("qgather", "f16", bits)]
    rng = np.random.default_rng(9)
    V, K = 6, 37
    _, _, _, table, sc, zp, group = _qgather_table(rng, bits, True)
    for bad in (6, -7):
        ids = np.array([1, bad, 0], np.int64)
        out = np.zeros((3, K), np.float16)
        getattr(lib, spec.name)(p(table), p(sc), p(zp), p(ids), p(out), 3, V, K, group, lib.exec)
        assert lib.tcc_exec_sync(lib.exec) != 0
        msg = lib.tcc_exec_error(lib.exec).decode()
        lib.tcc_exec_clear_error(lib.exec)
        assert f"{bad} out of range [-6, 6)" in msg and "\n" not in msg.strip()
        assert not out[1].any()  # the bad row is not written (nor read out of bounds)
    assert lib.tcc_exec_sync(lib.exec) == 0


# -- nvcc ---------------------------------------------------------------------------------------------

def test_nvcc_sm80_sm90_sass(tmp_path):
    """Every variant compiles for sm_80 and sm_90 (nvcc_compile checks each object holds SASS for both), and
    the tensor-core kernels' SASS has HMMA in every *_mma kernel (the mma.sync helper, not the fallback)."""
    objects = nvcc_compile(kl.VARIANTS, archs=("sm_80", "sm_90"), tmpdir=str(tmp_path))
    assert len(objects) == len(kl.VARIANTS)
    for spec in (GEMM, QLIN):
        listing = sass(objects[spec.name + ".cu"])
        for arch in ("sm_80", "sm_90"):
            assert f"code for {arch}" in listing, (spec.name, arch)
        mma = [blk for blk in listing.split("Function : ")[1:] if "_mma" in blk.split("\n", 1)[0]]
        assert len(mma) == 2 and all("HMMA" in blk for blk in mma), spec.name  # one per arch
