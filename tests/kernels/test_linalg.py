"""gemm, matmul and attention kernels (every x86 variant) against float64 numpy references.

Tolerances. The inputs are exact float32 values, so the float64 reference is exact up to 1e-16; all
kernel error comes from fp32 rounding in an order that differs from any reference order (register
tiles, K blocks, 8-lane partial sums). For a dot product of length K the rounding error is at most
~K*u*sum|a_k*b_k| (u = 2^-24) and, because the roundings behave like independent random signs, about
sqrt(K)*u*sum|a_k*b_k| in practice. So each output is checked against
    FP32_TOL * sqrt(K + 1) * (|A| @ |B| + |bias|),
with FP32_TOL = 8u: ~20x the largest error measured on such inputs (0.36 u*sqrt(K)*|A|@|B|), and
far below what a wrong index or a dropped term produces (O(|a*b|), ~1e5 times larger). Scaling by |A|@|B| rather than
|C| keeps the bound honest under cancellation. Attention is a dot over D (scores), an exp (a few
ulp) and a convex combination over Skv keys; its bound is derived the same way in `attention_tol`.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from tcc.backends.x86.kernels import VARIANTS
from tcc.backends.x86.tuning import corner_specs
from tcc.codegen.families.packing import pack_f32_panels, packed_size, unpack_f32_panels

from .conftest import cap_isa, elem_strides, i64, ptr

FP32_TOL = 8 * 2.0 ** -24

# Every gemm variant, and the avx2 kernel with each --tune knob at its smallest and largest candidate.
GEMM = [s for s in [*VARIANTS, *corner_specs()] if s.family == "gemm"]
MATMUL = [s for s in VARIANTS if s.family == "matmul"]
ATTENTION = [s for s in VARIANTS if s.family == "attention"]
IDS = lambda spec: spec.name.split("__", 1)[1]  # noqa: E731  (the variant, and tuned parameters)

# gemm's avx2 variant picks its M > 1 tiles at run time (AVX-512 F where the CPU has it); each test runs the
# best path and, capped with <name>_isa(0), the AVX2 one ("-isa-avx2": the same path on an AVX2-only CPU).
ISA_BEST, ISA_AVX2 = 99, 0
GEMM_PARAMS = [pytest.param(s, ISA_BEST, id=IDS(s)) for s in GEMM] + [
    pytest.param(s, ISA_AVX2, id=IDS(s) + "-isa-avx2") for s in GEMM if s.variant == "avx2"]


def set_gemm_isa(lib, spec, isa) -> int:
    """Cap the avx2 gemm's ISA path (0 AVX2, 2 AVX-512); returns the path in use (0 for the scalar variant)."""
    if spec.variant != "avx2":
        return 0
    return cap_isa(lib, spec, isa)


@pytest.fixture
def gemm_isa(x86_kernel_lib, request):
    """Sets the test's ISA cap (its `isa` parameter) and restores the automatic choice after it."""
    spec, isa = request.getfixturevalue("spec"), request.getfixturevalue("isa")
    set_gemm_isa(x86_kernel_lib, spec, isa)
    yield
    set_gemm_isa(x86_kernel_lib, spec, ISA_BEST)

MS = [1, 2, 5, 6, 7, 13, 64]
NS = [1, 15, 16, 17, 33, 60, 100]  # the AVX-512 tiles: 1-4 panels, a partial 4th (60), 4 + 3 (100)
KS = [1, 3, 16, 31, 64, 257]


def check_dot(got, ref, scale, K, what):
    tol = FP32_TOL * np.sqrt(K + 1) * scale + 1e-37
    err = np.abs(got.astype(np.float64) - ref)
    bad = ~(err <= tol)
    if bad.any():
        idx = tuple(np.argwhere(bad)[0])
        pytest.fail(f"{what}: {bad.sum()} of {bad.size} outputs off; first at {idx}: got {got[idx]!r}, "
                    f"want {ref[idx]!r}, |err| {err[idx]:.3g} > tol {tol[idx] if np.ndim(tol) else tol:.3g}")


# ---------------------------------------------------------------------------------------- packing

@pytest.mark.parametrize("K,N", [(1, 1), (3, 16), (5, 17), (64, 100), (2, 33)])
def test_pack_roundtrip(K, N, rng):
    w = rng.standard_normal((K, N)).astype(np.float32)
    packed = pack_f32_panels(w)
    assert packed.dtype == np.float32 and packed.shape == (packed_size(K, N),)
    np.testing.assert_array_equal(unpack_f32_panels(packed, K, N), w)
    # Layout of docs/kernels.md: B[k, n] at ((n // 16) * K + k) * 16 + n % 16, zero padding after N.
    k, n = K - 1, N - 1
    assert packed[((n // 16) * K + k) * 16 + n % 16] == w[k, n]
    tail = packed.reshape(-1, K, 16)[-1][:, N - (N - 1) // 16 * 16:]
    assert not tail.any()


# ---------------------------------------------------------------------------------------- gemm

def run_gemm(lib, spec, A, B, bias, pool, lda_pad=3, ldc_pad=2):
    M, K = A.shape
    N = B.shape[1]
    lda, ldc = K + lda_pad, N + ldc_pad
    a_buf = np.full((M, lda), np.nan, dtype=np.float32)  # padding must never be read
    a_buf[:, :K] = A
    c_buf = np.full((M, ldc), np.nan, dtype=np.float32)  # padding must never be written
    Bp = pack_f32_panels(B)
    lib.kernel(spec)(ptr(a_buf), lda, ptr(Bp), ptr(bias), ptr(c_buf), ldc, M, N, K, pool)
    assert np.isnan(c_buf[:, N:]).all(), "gemm wrote past N into the ldc padding"
    return c_buf[:, :N]


@pytest.mark.parametrize("spec,isa", GEMM_PARAMS)
@pytest.mark.parametrize("M", MS)
def test_gemm(x86_kernel_lib, spec, M, x86_pool, rng, isa, gemm_isa):
    for N, K in itertools.product(NS, KS):
        A = rng.standard_normal((M, K)).astype(np.float32)
        B = rng.standard_normal((K, N)).astype(np.float32)
        bias = rng.standard_normal(N).astype(np.float32) if (N + K) % 2 else None
        got = run_gemm(x86_kernel_lib, spec, A, B, bias, x86_pool)
        A64, B64 = A.astype(np.float64), B.astype(np.float64)
        b64 = np.zeros(N) if bias is None else bias.astype(np.float64)
        check_dot(got, A64 @ B64 + b64, np.abs(A64) @ np.abs(B64) + np.abs(b64), K,
                  f"{spec.name} M={M} N={N} K={K} bias={bias is not None}")


@pytest.mark.parametrize("spec,isa", GEMM_PARAMS)
def test_gemm_large(x86_kernel_lib, spec, x86_pool, rng, isa, gemm_isa):
    """Several K blocks, several row groups, panels split over threads."""
    for M, N, K in [(1, 1000, 1100), (150, 70, 600), (300, 33, 40)]:
        A = rng.standard_normal((M, K)).astype(np.float32)
        B = rng.standard_normal((K, N)).astype(np.float32)
        bias = rng.standard_normal(N).astype(np.float32)
        got = run_gemm(x86_kernel_lib, spec, A, B, bias, x86_pool, lda_pad=0, ldc_pad=0)
        A64, B64 = A.astype(np.float64), B.astype(np.float64)
        check_dot(got, A64 @ B64 + bias, np.abs(A64) @ np.abs(B64) + np.abs(bias), K, f"{spec.name} M={M} N={N} K={K}")


@pytest.mark.parametrize("spec,isa", GEMM_PARAMS)
def test_gemm_empty_k_gives_bias(x86_kernel_lib, spec, isa, gemm_isa):
    bias = np.arange(5, dtype=np.float32)
    got = run_gemm(x86_kernel_lib, spec, np.zeros((3, 0), np.float32), np.zeros((0, 5), np.float32), bias, None)
    np.testing.assert_array_equal(got, np.broadcast_to(bias, (3, 5)))


@pytest.mark.parametrize("spec,isa", GEMM_PARAMS)
def test_gemm_propagates_nan_and_inf(x86_kernel_lib, spec, isa, gemm_isa):
    A = np.ones((2, 4), np.float32)
    A[0, 1] = np.nan
    A[1, 2] = np.inf
    got = run_gemm(x86_kernel_lib, spec, A, np.ones((4, 3), np.float32), None, None)
    assert np.isnan(got[0]).all() and np.isposinf(got[1]).all()


def test_gemm_dispatch_reported(x86_kernel_lib):
    """The avx2 gemm uses AVX-512 F tiles where the CPU has avx512f, and can be capped at AVX2."""
    from tcc.backends.x86.target import cpu_flags

    spec = next(s for s in GEMM if s.variant == "avx2")
    best = 2 if "avx512f" in cpu_flags() else 0
    try:
        assert set_gemm_isa(x86_kernel_lib, spec, ISA_BEST) == best
        assert set_gemm_isa(x86_kernel_lib, spec, 1) == 0  # no AVX-VNNI level: the next lower one
        assert set_gemm_isa(x86_kernel_lib, spec, ISA_AVX2) == 0
    finally:
        set_gemm_isa(x86_kernel_lib, spec, ISA_BEST)


# ---------------------------------------------------------------------------------------- matmul

def make_operand(rng, batch, rows, cols, layout):
    """A float32 array of shape batch + (rows, cols) stored as `layout`: 'dense', 'T' (transposed
    storage: unit row stride) or 'strided' (neither stride is 1)."""
    shape = tuple(batch) + (rows, cols)
    if layout == "dense":
        return rng.standard_normal(shape).astype(np.float32)
    if layout == "T":
        return np.swapaxes(rng.standard_normal(tuple(batch) + (cols, rows)).astype(np.float32), -1, -2)
    big = rng.standard_normal(tuple(batch) + (rows * 2, cols * 3)).astype(np.float32)
    return big[..., ::2, ::3]


def run_matmul(lib, spec, A, B, pool):
    """C = A @ B with numpy broadcasting over the batch dims, through the kernel."""
    M, K = A.shape[-2:]
    N = B.shape[-1]
    batch = np.broadcast_shapes(A.shape[:-2], B.shape[:-2])
    Ab = np.broadcast_to(A, batch + (M, K))  # stride 0 where A is broadcast
    Bb = np.broadcast_to(B, batch + (K, N))
    sa, sb = elem_strides(Ab), elem_strides(Bb)
    C = np.full(batch + (M, N), np.nan, dtype=np.float32)
    shape, a_bs, b_bs = i64(batch), i64(sa[:-2]), i64(sb[:-2])  # kept alive across the call
    lib.kernel(spec)(ptr(A), ptr(B), ptr(C), M, N, K, sa[-2], sa[-1], sb[-2], sb[-1], len(batch),
                     ptr(shape), ptr(a_bs), ptr(b_bs), pool)
    return C


def check_matmul(lib, spec, A, B, pool, what):
    got = run_matmul(lib, spec, A, B, pool)
    A64, B64 = A.astype(np.float64), B.astype(np.float64)
    check_dot(got, A64 @ B64, np.abs(A64) @ np.abs(B64), A.shape[-1], what)


@pytest.mark.parametrize("spec", MATMUL, ids=IDS)
@pytest.mark.parametrize("layout", ["dense", "bT", "aT"])
def test_matmul_shapes(x86_kernel_lib, spec, layout, x86_pool, rng):
    for M, N, K in itertools.product(MS, NS, KS):
        A = make_operand(rng, (), M, K, "T" if layout == "aT" else "dense")
        B = make_operand(rng, (), K, N, "T" if layout == "bT" else "dense")
        check_matmul(x86_kernel_lib, spec, A, B, x86_pool, f"{spec.name} {layout} M={M} N={N} K={K}")


# (A batch dims, B batch dims): nbatch 0, 1, 2, with broadcasting on either side (stride 0).
BATCHES = [((), ()), ((3,), (3,)), ((3,), ()), ((), (2,)), ((2, 3), (2, 3)), ((2, 1), (1, 3)), ((1, 3), (2, 3))]


@pytest.mark.parametrize("spec", MATMUL, ids=IDS)
@pytest.mark.parametrize("batches", BATCHES, ids=str)
@pytest.mark.parametrize("a_layout,b_layout", [("dense", "dense"), ("dense", "T"), ("T", "dense"),
                                               ("dense", "strided"), ("strided", "T")])
def test_matmul_batched(x86_kernel_lib, spec, batches, a_layout, b_layout, x86_pool, rng):
    for M, N, K in [(1, 17, 64), (7, 33, 31), (13, 1, 257), (6, 100, 3), (64, 16, 16)]:
        A = make_operand(rng, batches[0], M, K, a_layout)
        B = make_operand(rng, batches[1], K, N, b_layout)
        check_matmul(x86_kernel_lib, spec, A, B, x86_pool,
                     f"{spec.name} batches={batches} A {a_layout} B {b_layout} M={M} N={N} K={K}")


@pytest.mark.parametrize("spec", MATMUL, ids=IDS)
@pytest.mark.parametrize("layout", ["dense", "bT"])
def test_matmul_large(x86_kernel_lib, spec, layout, x86_pool, rng):
    """Several column blocks, row blocks and K blocks per batch."""
    for M, N, K in [(1, 300, 70), (50, 300, 300), (7, 530, 16), (100, 20, 600)]:
        A = make_operand(rng, (2,), M, K, "dense")
        B = make_operand(rng, (2,), K, N, "T" if layout == "bT" else "dense")
        check_matmul(x86_kernel_lib, spec, A, B, x86_pool, f"{spec.name} {layout} M={M} N={N} K={K}")


@pytest.mark.parametrize("spec", MATMUL, ids=IDS)
def test_matmul_empty(x86_kernel_lib, spec):
    got = run_matmul(x86_kernel_lib, spec, np.ones((2, 3, 0), np.float32), np.ones((2, 0, 4), np.float32), None)
    np.testing.assert_array_equal(got, np.zeros((2, 3, 4), np.float32))
    # A zero-sized batch writes nothing (and must not crash).
    run_matmul(x86_kernel_lib, spec, np.ones((0, 3, 2), np.float32), np.ones((0, 2, 4), np.float32), None)


# ---------------------------------------------------------------------------------------- attention

def attention_ref(q, k, v, mask, scale, causal):
    """float64 reference on [B, H, S, D] views; all-masked rows give zeros."""
    B, Hq, Sq, D = q.shape
    Hkv, Skv = k.shape[1], k.shape[2]
    g = Hq // Hkv
    q64 = q.astype(np.float64)
    k64 = np.repeat(k.astype(np.float64), g, axis=1)
    v64 = np.repeat(v.astype(np.float64), g, axis=1)
    s = scale * q64 @ np.swapaxes(k64, -1, -2)
    if mask is not None:
        s = s + mask.astype(np.float64)
    allowed = np.ones((Sq, Skv), bool)
    if causal:
        allowed = np.arange(Skv)[None, :] <= np.arange(Sq)[:, None] + (Skv - Sq)
    s = np.where(allowed, s, -np.inf)
    m = s.max(axis=-1, keepdims=True) if Skv else np.full(s.shape[:-1] + (1,), -np.inf)
    p = np.where(np.isfinite(m), np.exp(s - np.where(np.isfinite(m), m, 0.0)), 0.0)
    l = p.sum(axis=-1, keepdims=True)
    out = np.where(l > 0, (p @ v64) / np.where(l > 0, l, 1.0), 0.0)
    # Error scale per row: the score magnitudes the fp32 dot products round at, and max |v|.
    sabs = np.abs(scale) * np.abs(q64) @ np.swapaxes(np.abs(k64), -1, -2)
    if mask is not None:
        sabs = sabs + np.abs(np.where(np.isfinite(mask), mask, 0.0))
    smax = np.where(allowed, sabs, 0.0).max(axis=-1, keepdims=True) if Skv else np.zeros_like(m)
    vmax = np.abs(v64).max(axis=(-1, -2), keepdims=True) if Skv else np.zeros((B, Hq, 1, 1))
    return out, smax, vmax


def attention_tol(smax, vmax, D, Skv):
    """A score error δ (fp32 dot over D: ~sqrt(D)*u*smax, plus exp's few ulp) changes a weight by a
    relative δ, so the output by <= 2δ*max|v|; the normalizing sum over Skv keys adds ~sqrt(Skv)*u."""
    return FP32_TOL * (np.sqrt(D + 1) * smax + np.sqrt(Skv + 1) + 4.0) * vmax + 1e-30


def qkv_array(rng, B, H, S, D, layout):
    """A [B, H, S, D] float32 view stored as `layout`: 'bhsd', 'bshd' or 'dimstride' (dim stride 2)."""
    if layout == "bshd":
        return np.swapaxes(rng.standard_normal((B, S, H, D)).astype(np.float32), 1, 2)
    if layout == "dimstride":
        return rng.standard_normal((B, H, S, 2 * D)).astype(np.float32)[..., ::2]
    return rng.standard_normal((B, H, S, D)).astype(np.float32)


# B, Hq, Hkv, Sq, Skv, D, Dv, causal, mask kind, layout
ATTN_CASES = {
    "decode_gqa": (1, 8, 2, 1, 37, 64, 64, 1, None, "bhsd"),
    "decode_gqa_long": (2, 8, 2, 1, 200, 64, 64, 1, None, "bshd"),
    "decode_mha": (1, 4, 4, 1, 65, 80, 80, 0, None, "bhsd"),
    "prefill_causal": (2, 4, 4, 13, 13, 80, 80, 1, None, "bhsd"),
    "prefill_cache_offset": (1, 8, 2, 5, 70, 64, 64, 1, None, "bshd"),
    "prefill_long": (1, 2, 1, 100, 130, 16, 16, 1, None, "bhsd"),
    "mask_causal_2d": (2, 4, 2, 9, 9, 7, 7, 0, "causal2d", "bhsd"),
    "mask_padding": (2, 8, 2, 6, 40, 64, 64, 1, "padding", "bshd"),
    "mask_random_full": (2, 2, 2, 5, 11, 8, 8, 0, "full", "bhsd"),
    "fully_masked_row": (1, 2, 1, 4, 10, 16, 16, 0, "row_masked", "bhsd"),
    "more_queries_than_keys": (1, 2, 2, 6, 3, 8, 8, 1, None, "bhsd"),
    "d1": (1, 3, 1, 3, 5, 1, 1, 1, None, "bhsd"),
    "d7_dv5": (2, 4, 2, 4, 9, 7, 5, 0, "padding", "bshd"),
    "dimstride": (1, 4, 2, 3, 20, 8, 12, 1, None, "dimstride"),
    "no_keys": (1, 2, 2, 2, 0, 8, 8, 0, None, "bhsd"),
}


def make_mask(rng, kind, B, Hq, Sq, Skv):
    """An additive mask of a broadcastable shape (so the kernel sees stride-0 dims)."""
    if kind is None:
        return None
    if kind == "causal2d":  # [1, 1, Sq, Skv]: 0 / -inf
        return np.where(np.tril(np.ones((Sq, Skv), bool)), 0.0, -np.inf).astype(np.float32)[None, None]
    if kind == "padding":  # [B, 1, 1, Skv]: the first key(s) of each batch are padding
        m = np.zeros((B, 1, 1, Skv), np.float32)
        for b in range(B):
            m[b, ..., : b + 1] = -np.inf
        return m
    if kind == "full":  # [B, Hq, Sq, Skv] finite random biases plus a few -inf
        m = rng.standard_normal((B, Hq, Sq, Skv)).astype(np.float32)
        m[rng.random(m.shape) < 0.2] = -np.inf
        return m
    if kind == "row_masked":  # [1, Hq, Sq, Skv]: query row 1 of head 0 sees no key at all
        m = np.zeros((1, Hq, Sq, Skv), np.float32)
        m[0, 0, 1, :] = -np.inf
        m[0, 1, 2, ::2] = -np.inf
        return m
    raise ValueError(kind)


def run_attention(lib, spec, q, k, v, mask, out, scale, causal, pool):
    B, Hq, Sq, D = q.shape
    Hkv, Skv, Dv = k.shape[1], k.shape[2], v.shape[3]
    ms = [0, 0, 0, 0] if mask is None else elem_strides(np.broadcast_to(mask, (B, Hq, Sq, Skv)))
    strides = [i64(elem_strides(a)) for a in (q, k, v)] + [i64(ms), i64(elem_strides(out))]  # kept alive
    lib.kernel(spec)(ptr(q), ptr(k), ptr(v), ptr(mask), ptr(out), B, Hq, Hkv, Sq, Skv, D, Dv,
                     *[ptr(s) for s in strides], scale, causal, 0, None, 0.0, pool)


@pytest.mark.parametrize("spec", ATTENTION, ids=IDS)
@pytest.mark.parametrize("case", list(ATTN_CASES), ids=str)
def test_attention(x86_kernel_lib, spec, case, x86_pool, rng):
    B, Hq, Hkv, Sq, Skv, D, Dv, causal, mask_kind, layout = ATTN_CASES[case]
    q = qkv_array(rng, B, Hq, Sq, D, layout)
    k = qkv_array(rng, B, Hkv, Skv, D, layout)
    v = qkv_array(rng, B, Hkv, Skv, Dv, layout)
    mask = make_mask(rng, mask_kind, B, Hq, Sq, Skv)
    out = qkv_array(rng, B, Hq, Sq, Dv, "bshd" if layout == "bshd" else "bhsd")
    out[...] = np.nan
    scale = 1.0 / np.sqrt(max(D, 1))
    run_attention(x86_kernel_lib, spec, q, k, v, mask, out, scale, causal, x86_pool)

    ref, smax, vmax = attention_ref(q, k, v, mask, scale, causal)
    tol = attention_tol(smax, vmax, D, Skv)
    err = np.abs(out.astype(np.float64) - ref)
    bad = ~(err <= tol)
    if bad.any():
        idx = tuple(np.argwhere(bad)[0])
        pytest.fail(f"{spec.name} {case}: {bad.sum()}/{bad.size} off; first at {idx}: got {out[idx]!r}, "
                    f"want {ref[idx]!r}, |err| {err[idx]:.3g} > tol {np.broadcast_to(tol, err.shape)[idx]:.3g}")
    if mask_kind == "row_masked":
        assert (out[0, 0, 1] == 0).all(), "a row with every key masked must give zeros"


@pytest.mark.parametrize("spec", ATTENTION, ids=IDS)
def test_attention_bad_heads_raises(x86_kernel_lib, spec):
    lib = x86_kernel_lib
    q = np.zeros((1, 3, 1, 4), np.float32)
    k = np.zeros((1, 2, 2, 4), np.float32)
    out = np.zeros_like(q)
    lib.tcc_clear_error()
    try:
        run_attention(lib, spec, q, k, k, None, out, 0.5, 0, None)
        assert lib.tcc_error_pending()
        assert b"3 query heads" in lib.tcc_error_message()
    finally:
        lib.tcc_clear_error()


# ---------------------------------------------------------------------------------------- build

def test_missing_compiler_is_build_error(tmp_path, monkeypatch):
    from tcc.backends.x86.target import TARGET
    from tcc.codegen.cmake import build_library
    from tcc.errors import BuildError

    src = tmp_path / "k.cpp"
    src.write_text('extern "C" int f() { return 1; }\n')
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.delenv("TCC_CXX", raising=False)
    with pytest.raises(BuildError, match="no-such-compiler"):
        build_library([str(src)], str(tmp_path / "build"), TARGET, "k")


def test_broken_compiler_is_build_error(tmp_path, monkeypatch):
    """A 'compiler' CMake cannot use fails at configure: one line naming the problem and the log."""
    from tcc.backends.x86.target import TARGET
    from tcc.codegen.cmake import build_library
    from tcc.errors import BuildError

    src = tmp_path / "k.cpp"
    src.write_text('extern "C" int f() { return 1; }\n')
    monkeypatch.setenv("CXX", "/bin/false")
    monkeypatch.delenv("TCC_CXX", raising=False)
    with pytest.raises(BuildError) as info:
        build_library([str(src)], str(tmp_path / "build"), TARGET, "k")
    msg = str(info.value)
    assert "\n" not in msg and "build.log" in msg and (tmp_path / "build" / "build.log").exists()


def test_compile_error_is_build_error(tmp_path):
    from tcc.backends.x86.target import TARGET
    from tcc.codegen.cmake import build_library
    from tcc.errors import BuildError

    src = tmp_path / "bad.cpp"
    src.write_text("int f() { return undefined_thing; }\n")
    with pytest.raises(BuildError, match=r"bad\.cpp:1:.*error.*undefined_thing.*build\.log"):
        build_library([str(src)], str(tmp_path / "build"), TARGET, "bad")
