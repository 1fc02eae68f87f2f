"""Metal kernels (backends/metal/kernels.py): every variant type-checked by clang through tcc's MSL shim, and run
on the CPU SIMT emulator against numpy references on edge shapes.

Tolerances are the CUDA tests' bounds (tests/cuda/test_linalg.py, test_attention.py), for the same reasons:
- norm, softmax: the output's rounding (2^-11 relative for fp16, fp32's for f32) plus fp32 arithmetic before
  it, FP32 = 2^-14 of the magnitude of the terms combined;
- qlinear / gemm: the references are exact float64 sums of the kernels' own operands (fp16 x, fp16-rounded
  dequantized weights for w4a16; f32 for w4a32, where (q - z) * s is exact); the fp32 accumulation of K
  products in any order is bounded by K u S (S = sum |x||w|, u = 2^-24; doubled for the hardware's simdgroup
  matrix units, whose fp32 addition order is not specified), plus the output's rounding. One int4 code off by
  one moves an output by about |x||s|, far beyond it (test_qlinear_tolerance_catches_one_code_off);
- binary: one fp32 operation rounded once to the element type: exact against numpy's float32 result rounded
  the same way (pow excepted: libm's powf may differ from numpy's by an ulp, 2 ulps allowed).
"""
from __future__ import annotations

import numpy as np
import pytest

from tcc.backends.metal import kernels as mk
from tcc.backends.metal import packing
from tcc.ir.quant_arith import dequantize, qlinear_reference, quantize_int4, round_f16

from .harness import build_metal, msl_check

NP = {"f16": np.float16, "f32": np.float32}
FP32 = 2.0 ** -14
U = 2.0 ** -24
IDS = lambda spec: spec.name  # noqa: E731


def by_family(family):
    return [s for s in mk.VARIANTS if s.family == family]


# The families this file runs (test_attention.py and test_elementwise.py build the others).
FAMILIES = ("norm", "softmax", "binary", "qlinear_w4a16", "qlinear_w4a32", "gemm", "matmul")


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    lib = build_metal([s for s in mk.VARIANTS if s.family in FAMILIES], str(tmp_path_factory.mktemp("metal_kernels")))
    lib.set_seed(7)  # threads in a shuffled order between barriers: a missing barrier shows as a wrong result
    return lib


def call(lib, spec, *args):
    """Call the spec's launcher on a fresh context and sync; returns the error message or ''."""
    conv = [a.ctypes.data if isinstance(a, np.ndarray) else a for a in args]
    with lib.exec() as ex:
        lib.fn(spec.name)(*conv, ex.handle)
        return ex.sync()


def rnd(rng, shape, scale=1.0):
    """fp16-representable float32 values."""
    return (rng.standard_normal(shape) * scale).astype(np.float16).astype(np.float32)


def out_rounding(ref, dt):
    if dt == "f16":
        return np.abs(ref) * 2.0 ** -11 + 2.0 ** -25
    return np.abs(ref) * 2.0 ** -22 + 2.0 ** -140


def test_every_variant_type_checks_with_clang():
    """Every kernel variant, and the runtime's own .metal files (harness.RUNTIME_METAL: the token selection), is
    accepted by clang through runtime/metal/tcc_msl_shim.h."""
    failures = msl_check(mk.VARIANTS)
    assert not failures, "\n".join(f"{name}:\n{err[:2000]}" for name, err in failures.items())


def test_every_launcher_compiles_for_the_macos_host():
    """The host half of every variant (its launcher against runtime/metal/tcc_metal_host.h, the kernels #if'd
    out) compiles as the macOS build compiles it, less Objective-C."""
    failures = msl_check(mk.VARIANTS, host=True)
    assert not failures, "\n".join(f"{name}:\n{err[:2000]}" for name, err in failures.items())


def test_shim_rejects_a_type_error():
    """The check is a check: a kernel that mixes element types in min() (an error in MSL) fails it."""
    import os
    import subprocess
    import tempfile

    from tcc.backends.metal import msl

    from .harness import CLANG_FLAGS, RUNTIME, require_clang

    bad = ("#if TCC_METAL_DEVICE_CODE\nkernel void k(device float* y [[buffer(0)]], uint i [[thread_position_in_grid]])"
           " {\n  y[i] = min(i, y[i]) + simd_sum(half2(1.0f, 2.0f));\n}\n#endif\n")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bad.metal")
        with open(path, "w") as f:
            f.write(msl.finish_source("", "metal/tcc_metal.h", None, bad))
        proc = subprocess.run([require_clang(), *CLANG_FLAGS, "-I", RUNTIME, "-include",
                               os.path.join(RUNTIME, "metal", "tcc_msl_shim.h"), "-x", "c++", path],
                              capture_output=True, text=True)
    assert proc.returncode != 0 and "min" in proc.stderr


# -- norm, softmax ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cols", (1, 7, 64, 300, 4099))
@pytest.mark.parametrize("spec", by_family("norm"), ids=IDS)
def test_norm(lib, spec, cols):
    dt, rms = spec.param("dtype"), spec.param("op") == "rmsnorm"
    T = NP[dt]
    rng = np.random.default_rng(cols)
    rows = 3
    x = (rnd(rng, (rows, cols), 2.0) + 0.5).astype(np.float16).astype(np.float32)
    gamma, beta = rnd(rng, (cols,)), (None if rms or cols == 7 else rnd(rng, (cols,)))
    x64, eps = x.astype(np.float64), 1e-5
    if rms:
        ref = x64 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + eps) * gamma
        spread = np.sqrt((x64 ** 2).mean(-1, keepdims=True))
    else:
        c = x64 - x64.mean(-1, keepdims=True)
        ref = c / np.sqrt((c ** 2).mean(-1, keepdims=True) + eps) * gamma + (0 if beta is None else beta)
        spread = np.sqrt((c ** 2).mean(-1, keepdims=True) + eps)
    xd = x.astype(T)
    y = xd if cols >= 4096 else np.full_like(xd, np.nan)  # the long rows run in place (y == x)
    err = call(lib, spec, xd, gamma.astype(T), None if beta is None else beta.astype(T), y, rows, cols, eps)
    assert err == ""
    bound = out_rounding(ref, dt) + FP32 * (np.abs(x64) / spread + 1) * np.abs(gamma)
    bad = np.abs(y.astype(np.float64) - ref) > bound
    assert not bad.any(), (y[bad][:5], ref[bad][:5], np.argwhere(bad)[:5])


@pytest.mark.parametrize("shape", [(3, 1, 1), (3, 7, 1), (2, 4099, 1), (2, 64, 1), (2, 7, 3), (1, 1, 5),
                                   (2, 33, 300)], ids=str)
@pytest.mark.parametrize("spec", by_family("softmax"), ids=IDS)
def test_softmax(lib, spec, shape):
    dt, log = spec.param("dtype"), spec.param("op") == "logsoftmax"
    T = NP[dt]
    rng = np.random.default_rng(shape[1] * 10 + shape[2])
    x = rnd(rng, shape, 3.0)
    x64 = x.astype(np.float64)
    z = x64 - x64.max(1, keepdims=True)
    lse = np.log(np.exp(z).sum(1, keepdims=True))
    ref = z - lse if log else np.exp(z - lse)
    xd = x.astype(T)
    y = np.full_like(xd, np.nan)
    assert call(lib, spec, xd, y, *shape) == ""
    scale = (np.abs(z) + np.abs(lse)) if log else np.abs(ref)
    assert np.all(np.abs(y.astype(np.float64) - ref) <= out_rounding(ref, dt) + FP32 * scale)


# -- binary ----------------------------------------------------------------------------------------------------

NUMPY_BINARY = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "max": np.maximum,
                "min": np.minimum, "pow": np.power, "mod": np.fmod}
NPI = {"i64": np.int64, "i32": np.int32, "i8": np.int8, "u8": np.uint8, "bool": np.uint8}
# (shape of a, shape of b): equal, scalar, row and column broadcasts, size-1 dims, a rank that merges.
BCASTS = [((5, 7), (5, 7)), ((3, 1, 4), (1,)), ((2, 3, 4), (4,)), ((2, 3, 1), (2, 1, 5)), ((1,), (6, 1)),
          ((2, 1, 3, 1, 2, 1, 2, 1, 3), (2, 1, 3, 1, 2, 1, 2, 1, 3))]


def strides_of(shape_a, out_shape):
    """Broadcast element strides of an operand of shape_a in out_shape (0 on broadcast dims)."""
    pad = (1,) * (len(out_shape) - len(shape_a)) + tuple(shape_a)
    dense, st = 1, []
    for d in reversed(pad):
        st.append(dense if d != 1 else 0)
        dense *= d
    return np.array(st[::-1], np.int64)


def _int_op(op, a, b, bits, signed):
    """The ONNX / CPU kernels' integer semantics on Python ints, wrapped to the type."""
    def wrap(v):
        v &= (1 << bits) - 1
        return v - (1 << bits) if signed and v >= 1 << (bits - 1) else v
    if op in ("add", "sub", "mul"):
        return wrap({"add": a + b, "sub": a - b, "mul": a * b}[op])
    if op == "div":
        return 0 if b == 0 else wrap(-a if b == -1 else int(a / b) if abs(a) < 2 ** 52 else a // b)
    if op == "mod":
        return 0 if b == 0 or (signed and b == -1) else a % b  # Python's %: the divisor's sign
    if op == "max":
        return max(a, b)
    if op == "min":
        return min(a, b)
    if b < 0:
        return 1 if a == 1 else ((-1 if b & 1 else 1) if a == -1 else 0)
    return wrap(pow(a, b, 1 << bits))


CMP = {"equal": np.equal, "less": np.less, "less_equal": np.less_equal, "greater": np.greater,
       "greater_equal": np.greater_equal, "and": np.logical_and, "or": np.logical_or, "xor": np.logical_xor}


def _operand(rng, shape, dt, op):
    if dt in ("f16", "f32"):
        a = rnd(rng, shape, 2.0).astype(NP[dt])
        return np.abs(a) + NP[dt](0.5) if op == "pow" else a
    if dt == "bool":
        return rng.integers(0, 2, shape).astype(np.uint8)
    info = np.iinfo(NPI[dt])
    hi = 6 if op == "pow" else min(info.max, 100)
    lo = -3 if op == "pow" and info.min < 0 else max(info.min, -100)
    return rng.integers(lo, hi + 1, shape).astype(NPI[dt])


@pytest.mark.parametrize("spec", by_family("binary"), ids=IDS)
def test_binary(lib, spec):
    dt, op = spec.param("dtype"), spec.param("op")
    rng = np.random.default_rng(len(op) + len(dt))
    for sa, sb in BCASTS:
        out_shape = np.broadcast_shapes(sa, sb)
        a, b = _operand(rng, sa, dt, op), _operand(rng, sb, dt, op)
        if op in ("div", "mod") and dt not in ("f16", "f32"):
            b.reshape(-1)[:1] = 0  # x / 0 and x % 0 are 0
            if np.iinfo(b.dtype).min < 0 and b.size > 1:
                b.reshape(-1)[1:2] = -1
        cmp = op in CMP
        out = np.full(out_shape, 77, np.uint8 if cmp else a.dtype)
        shape = np.array(out_shape, np.int64)
        err = call(lib, spec, a, b, out, len(out_shape), shape, strides_of(sa, out_shape), strides_of(sb, out_shape))
        assert err == ""
        A, B = np.broadcast_to(a, out_shape), np.broadcast_to(b, out_shape)
        if cmp:
            ref = CMP[op](A.astype(np.float32) if dt == "f16" else A, B.astype(np.float32) if dt == "f16" else B)
            np.testing.assert_array_equal(out, ref.astype(np.uint8), err_msg=str((sa, sb)))
        elif dt in ("f16", "f32"):
            T = NP[dt]
            with np.errstate(all="ignore"):
                ref = NUMPY_BINARY[op](A.astype(np.float32), B.astype(np.float32)).astype(T)
            ulps = 2 if op == "pow" else 0
            tol = ulps * np.spacing(np.abs(ref).astype(T)).astype(np.float64)
            assert np.all(np.abs(out.astype(np.float64) - ref.astype(np.float64)) <= tol), (sa, sb)
        else:
            info = np.iinfo(a.dtype)
            ref = np.array([_int_op(op, int(x), int(y), info.bits, info.min < 0) for x, y in zip(A.ravel(), B.ravel())],
                           np.int64).astype(a.dtype).reshape(out_shape)
            np.testing.assert_array_equal(out, ref, err_msg=str((sa, sb)))


def test_binary_refuses_a_rank_that_does_not_merge(lib):
    """Nine dims that merge to nine (alternating broadcasts) are refused on the context, nothing written."""
    spec = by_family("binary")[0]
    out_shape = (2,) * 9
    sa, sb = (2, 1, 2, 1, 2, 1, 2, 1, 2), (1, 2, 1, 2, 1, 2, 1, 2, 1)
    a, b = np.ones(sa, np.float16), np.ones(sb, np.float16)
    out = np.zeros(out_shape, np.float16)
    err = call(lib, spec, a, b, out, 9, np.array(out_shape, np.int64), strides_of(sa, out_shape),
               strides_of(sb, out_shape))
    assert "index 9 out of range [0, 9)" in err and not out.any()


# -- qlinear (w4a16, w4a32) ------------------------------------------------------------------------------------

def test_q4_layout_round_trip():
    q = np.random.default_rng(0).integers(0, 16, (5, 77)).astype(np.uint8)
    name, words = packing.pack("q4_weight", q)
    assert name == "metal_q4_simd32" and words.dtype == np.uint32 and words.shape == (5, 12)
    assert np.array_equal(packing.unpack_q4_weight(words, 77), q)
    w = int(words[0, 0])
    assert [(w >> (4 * i)) & 15 for i in range(8)] == list(q[0, :8])  # in order, k0 in the low nibble
    assert np.all(packing.unpack_q4_weight(words, 96)[:, 77:] == 8)


# (N, K, group, symmetric, bias, ldx pad, ldy pad): N not a multiple of the 4 columns of a threadgroup, K not
# of 32 (a lane's partial chunk) nor of the group, K > 1024 (a lane walks its column twice), odd strides.
QCASES = [(9, 165, 128, True, False, 1, 0), (13, 256, 64, False, True, 3, 1), (6, 1100, 128, False, True, 0, 2)]
QID = lambda c: f"N{c[0]}-K{c[1]}-g{c[2]}-{'sym' if c[3] else 'asym'}{'-bias' if c[4] else ''}"  # noqa: E731


def run_qlinear(lib, spec, rng, M, N, K, group, symmetric, with_bias, ldx_pad, ldy_pad, q=None):
    act = "f16" if spec.family == "qlinear_w4a16" else "f32"
    T = NP[act]
    w = rng.standard_normal((K, N)).astype(np.float32) * 0.5
    q0, scales, zeros = quantize_int4(w, group, symmetric=symmetric)
    q = q0 if q is None else q
    ldx, ldy = K + ldx_pad, N + ldy_pad
    x = rnd(rng, (M, ldx)).astype(T)
    bias = rnd(rng, (N,)).astype(T) if with_bias else None
    y = np.full((M, ldy), T(7.0))  # the padding columns must stay untouched
    wp = packing.pack("q4_weight", q)[1]
    sp = packing.pack("q4_scales", scales)[1]
    zp = None if zeros is None else packing.pack("q4_zeros", zeros)[1]
    assert call(lib, spec, x, ldx, wp, sp, zp, bias, y, ldy, M, N, K, group) == ""
    xs = x[:, :K].astype(np.float32)
    ref = qlinear_reference(xs, q0, scales, zeros, None if bias is None else bias.astype(np.float32), 4, group,
                            act).astype(np.float64)
    wd = dequantize(q0, scales, zeros, 4, group)
    S = np.abs(xs.astype(np.float64)) @ np.abs(round_f16(wd) if act == "f16" else wd).T
    assert np.all(y[:, N:] == T(7.0))
    return y[:, :N], ref, S, act


def check_linear(y, ref, S, K, act):
    err = np.abs(y.astype(np.float64) - ref)
    rounding = 2.0 ** -11 if act == "f16" else 2.0 ** -24
    tol = rounding * np.abs(ref) + 1.01 * K * 2 * U * S + U
    bad = np.argwhere(err > tol)
    assert bad.size == 0, f"{len(bad)} outputs off, first {tuple(bad[0])}: {y[tuple(bad[0])]} vs {ref[tuple(bad[0])]}"


QLIN = by_family("qlinear_w4a16") + by_family("qlinear_w4a32")


@pytest.mark.parametrize("case", QCASES, ids=QID)
@pytest.mark.parametrize("spec", QLIN, ids=IDS)
def test_qlinear(lib, spec, case):
    """M = 1..9 and 17: one row-block (decode) and several (prefill), the crossover on both sides."""
    rng = np.random.default_rng(sum(case[:3]))
    for M in (*range(1, 10), 17):
        y, ref, S, act = run_qlinear(lib, spec, rng, M, *case)
        check_linear(y, ref, S, case[1], act)


@pytest.mark.parametrize("M", [3, 12])  # the GEMV and the simdgroup_matrix path
@pytest.mark.parametrize("spec", QLIN, ids=IDS)
def test_qlinear_tolerance_catches_one_code_off(lib, spec, M):
    N, K, group = 9, 165, 128
    q0, _, _ = quantize_int4(np.random.default_rng(5).standard_normal((K, N)).astype(np.float32) * 0.5, group,
                             symmetric=True)
    bad = q0.copy()
    bad[4, K - 1] = bad[4, K - 1] + 1 if bad[4, K - 1] < 15 else 14
    y, ref, S, act = run_qlinear(lib, spec, np.random.default_rng(5), M, N, K, group, True, False, 0, 0, q=bad)
    with pytest.raises(AssertionError, match="outputs off"):
        check_linear(y, ref, S, K, act)


def test_qlinear_refuses_a_bad_group(lib):
    spec = QLIN[0]
    x, y = np.zeros((1, 64), np.float16), np.zeros((1, 4), np.float16)
    w, s = np.zeros((4, 8), np.uint32), np.zeros((4, 2), np.uint16)
    assert "out of range" in call(lib, spec, x, 64, w, s, None, None, y, 4, 1, 4, 64, 48)


# -- gemm (simdgroup_matrix) -----------------------------------------------------------------------------------

# (N, K, bias, lda pad, ldc pad): N, K not multiples of the 32 x 32 tile nor of its K step 16.
GCASES = [(72, 200, True, 0, 0), (33, 77, False, 5, 3), (8, 8, True, 0, 0)]


@pytest.mark.parametrize("case", GCASES, ids=lambda c: f"N{c[0]}-K{c[1]}{'-bias' if c[2] else ''}")
@pytest.mark.parametrize("spec", by_family("gemm"), ids=IDS)
def test_gemm(lib, spec, case):
    dt = spec.param("dtype")
    T = NP[dt]
    N, K, with_bias, lda_pad, ldc_pad = case
    rng = np.random.default_rng(N + K)
    b = rnd(rng, (K, N), 0.3).astype(T)
    bp = packing.pack(f"gemm_{dt}", b)[1]
    bias = rnd(rng, (N,)).astype(T) if with_bias else None
    for M in (1, 2, 7, 8, 9, 17, 33):
        lda, ldc = K + lda_pad, N + ldc_pad
        a = rnd(rng, (M, lda)).astype(T)
        c = np.full((M, ldc), T(7.0))
        assert call(lib, spec, a, lda, bp, bias, c, ldc, M, N, K) == ""
        a64, b64 = a[:, :K].astype(np.float64), b.astype(np.float64)
        ref = a64 @ b64 + (0 if bias is None else bias.astype(np.float64))
        check_linear(c[:, :N], ref, np.abs(a64) @ np.abs(b64), K, dt)
        assert np.all(c[:, N:] == T(7.0))


@pytest.mark.parametrize("spec", QLIN, ids=IDS)
def test_qlinear_tiles_have_no_race(lib, spec):
    """The prefill path (M > 8) gives the same bits in order and in two shuffled schedules."""
    rng = np.random.default_rng(4)
    M, N, K, group = 20, 40, 64, 32
    T = np.float16 if spec.family == "qlinear_w4a16" else np.float32
    q, scales, _ = quantize_int4(rng.standard_normal((K, N)).astype(np.float32), group, symmetric=True)
    x, y = rnd(rng, (M, K)).astype(T), np.zeros((M, N), T)
    wp, sp = packing.pack("q4_weight", q)[1], packing.pack("q4_scales", scales)[1]
    assert lib.order_dependence(spec.name, x, K, wp, sp, None, None, y, N, M, N, K, group) == ""
    lib.set_seed(7)


def test_gemm_has_no_race(lib):
    """The same result in order and in two shuffled schedules (a missing threadgroup barrier would differ)."""
    spec = by_family("gemm")[0]
    rng = np.random.default_rng(3)
    M, N, K = 20, 40, 40
    a, b = rnd(rng, (M, K)).astype(np.float16), rnd(rng, (K, N)).astype(np.float16)
    c = np.zeros((M, N), np.float16)
    assert lib.order_dependence(spec.name, a, K, b, None, c, N, M, N, K) == ""
    lib.set_seed(7)


@pytest.mark.parametrize("spec", by_family("matmul"), ids=IDS)
def test_matmul_batched_broadcast_strided(lib, spec):
    """C[b0, b1] = A[b0, b1] @ B[b1] with A's last two dims transposed (strided) and B broadcast over b0."""
    dt = spec.param("dtype")
    T = NP[dt]
    rng = np.random.default_rng(11)
    M, N, K = 5, 7, 9
    a = rnd(rng, (2, 3, K, M)).astype(T)  # stored [.., K, M]: A = a^T per batch
    b = rnd(rng, (3, K, N)).astype(T)
    c = np.full((2, 3, M, N), np.nan, T)
    e = a.itemsize
    shape, a_bs, b_bs = (np.array(v, np.int64) for v in ([2, 3], [a.strides[0] // e, a.strides[1] // e],
                                                          [0, b.strides[0] // e]))
    assert call(lib, spec, a, b, c, M, N, K, 1, M, N, 1, 2, shape, a_bs, b_bs) == ""
    a64, b64 = np.swapaxes(a, -1, -2).astype(np.float64), b.astype(np.float64)
    ref = a64 @ b64
    check_linear(c.reshape(-1, N), ref.reshape(-1, N), (np.abs(a64) @ np.abs(b64)).reshape(-1, N), K, dt)
