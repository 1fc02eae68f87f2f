"""The arm NEON f32 kernels under qemu: every `neon` variant of the elementwise, normalization, linear-algebra
(gemm, matmul) and attention (attention, kvattention) families (backends/arm/kernels_neon.py) against the numpy
references of the x86 kernel tests (tests/kernels/), on their edge-case shapes and layouts, with their
tolerances, each justified there and none loosened here (the NEON math header implements the same
algorithms as the AVX2 one, so the same contract applies: 2e-6 relative for the transcendentals, exact for the
correctly rounded IEEE ops, selects, casts and data movement, the fp32 summation bounds for reductions, dot
products (FP32_TOL * sqrt(K + 1) * |A| @ |B|: gemm, matmul) and attention (`attention_tol`)).

All calls of this module run in one static harness binary (tests/backends/arm_harness.py), run once per CPU:
qemu's default (`max`) and cortex-a53. The f32 kernels have no run-time feature dispatch, so the two runs
cover the same code; both are kept because the brief of issue 5 asks every ARM kernel to be checked on both.
Strided operands are passed as their dense base buffer plus element strides, so the layouts of the x86
tests (bshd, a dim stride of 2, reversed and broadcast views) reach the kernels unchanged.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from tcc.backends import get_backend
from tcc.backends.arm.target import cross_toolchain_missing
from tcc.codegen.families.packing import pack_f32_panels

from tests.kernels import test_elementwise as ew
from tests.kernels import test_kvattention as kv
from tests.kernels import test_linalg as la
from tests.kernels.conftest import elem_strides
from tests.kernels.test_linalg import FP32_TOL

from .arm_harness import POOL, At, Harness, shared_dir

MISSING = cross_toolchain_missing()
needs_toolchain = pytest.mark.skipif(MISSING is not None, reason=f"arm cross toolchain absent: {MISSING}")
CPUS = [None, "cortex-a53"]
CPU_IDS = ["qemu-max", "cortex-a53"]
BACKEND = get_backend("arm")
NEON = [s for s in BACKEND.variants if s.variant == "neon" and s.family not in
        ("quantize_acts", "qlinear_w4a8", "qlinear_w8a8", "qlinear_w4a32", "qlinear_w4a16")]  # test_arm.py
U = ew.U
SIZES = [0, 1, 3, 4, 5, 7, 8, 9, 17, 33, 1000]  # every remainder of the 4- and 8-float loops


def of(family):
    return [s for s in NEON if s.family == family]


def _i64(v):
    return np.ascontiguousarray(v, np.int64)


def _base(view: np.ndarray):
    """(dense buffer, element offset of view[0...], element strides of view) for a view of a dense array."""
    base = view if view.base is None else view.base
    while base.base is not None:
        base = base.base
    base = np.asarray(base)
    off = (view.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // view.itemsize
    return base, off, [s // view.itemsize for s in view.strides]


class Cases:
    """The module's harness calls; an item (one test) checks one call, or a group of calls (the shape sweeps,
    which the x86 tests also check per group), given every call's results."""

    def __init__(self):
        self.h, self.items, self.tested, self.errors = Harness(), [], set(), {}

    def add(self, name, spec, args, check):
        idx = self.h.call(spec, *args)
        self.tested.add(spec)
        self.items.append((f"{spec.name}-{name}", lambda res, idx=idx, check=check: check(res[idx])))
        return idx

    def add_group(self, name, spec, calls):
        """One item for [(args, check)]; each check gets its call's results."""
        idxs = [(self.h.call(spec, *args), check) for args, check in calls]
        self.tested.add(spec)

        def run(res):
            for idx, check in idxs:
                check(res[idx])
        self.items.append((f"{spec.name}-{name}", run))

    def expect_error(self, name, spec, args, message):
        """A call that must raise (the harness prints `call <index>: <message>` for it)."""
        idx = self.h.call(spec, *args)
        self.errors[idx] = message
        self.items.append((f"{spec.name}-{name}", lambda res, idx=idx: None))


def _pool(j):
    return POOL if j % 2 else None


def _unary(c: Cases, rng):
    for spec in of("unary"):
        op = spec.param("op")
        alpha, beta = -2.5, 3.0
        for j, n in enumerate([*SIZES, 20000]):
            x = ew.unary_inputs(op, "f32", n, rng)
            c.add(f"n{n}", spec, (x, np.zeros_like(x), n, alpha, beta, _pool(j)),
                  lambda r, x=x, s=spec, a=alpha, b=beta, n=n: ew.check_unary(s, x, r[1], a, b, f"{s.name} n={n}"))
        if op in ew.SPECIAL_CASES:
            xs, want = ew.SPECIAL_CASES[op]
            x, w = np.array(xs * 3, np.float32), np.array(want * 3, np.float32)
            c.add("special", spec, (x, np.zeros_like(x), x.size, 0.0, 0.0, None),
                  lambda r, w=w, s=spec: ew.assert_exact(r[1], w, s.name))
        if op == "clip":
            x = ew.unary_inputs("clip", "f32", 101, rng)
            for a, b in [(-math.inf, math.inf), (-math.inf, 5.0), (3.0, 1.0), (0.0, 0.0)]:
                c.add(f"clip{a},{b}", spec, (x, np.zeros_like(x), x.size, a, b, None),
                      lambda r, x=x, s=spec, a=a, b=b: ew.check_unary(s, x, r[1], a, b, s.name))


def _binary(c: Cases, rng):
    shapes = [s for s in ew.BINARY_SHAPES if np.prod(s[0]) < 50000] + [((4,), (4,)), ((5, 13), (13,)), ((17,), ())]
    for spec in of("binary"):
        op = spec.param("op")
        bool_out = op in ("equal", "less", "less_equal", "greater", "greater_equal")
        for j, (sa, sb) in enumerate(shapes):
            a, b = ew.binary_inputs(op, "f32", sa, rng), ew.binary_inputs(op, "f32", sb, rng)
            shape = np.broadcast_shapes(a.shape, b.shape)
            out = np.full(shape, 123, np.uint8 if bool_out else np.float32)
            c.add(f"{sa}x{sb}", spec, (a, b, out, len(shape), _i64(shape) if shape else np.zeros(1, np.int64),
                                        _i64(ew.elem_strides(a, shape)) if shape else np.zeros(1, np.int64),
                                        _i64(ew.elem_strides(b, shape)) if shape else np.zeros(1, np.int64),
                                        _pool(j)),
                  lambda r, a=a, b=b, s=spec, w=f"{sa}x{sb}": ew.check_binary(s, a, b, r[2], f"{s.name} {w}"))


def _where(c: Cases, rng):
    spec, = of("where")
    for j, (sc, sx, sy) in enumerate(ew.WHERE_SHAPES):
        cond = np.asarray(rng.integers(0, 2, sc) * 2, np.uint8)
        x, y = ew.where_inputs("f32", sx, rng), ew.where_inputs("f32", sy, rng)
        shape = np.broadcast_shapes(cond.shape, x.shape, y.shape)
        z = np.zeros(1, np.int64)
        st = [_i64(ew.elem_strides(a, shape)) if shape else z for a in (cond, x, y)]
        c.add(f"{sc}{sx}{sy}", spec, (cond, x, y, np.zeros(shape, np.float32), len(shape),
                                       _i64(shape) if shape else z, *st, _pool(j)),
              lambda r, cond=cond, x=x, y=y: ew.assert_exact(r[3], np.where(cond != 0, x, y), spec.name))


def _cast(c: Cases, rng):
    for spec in of("cast"):
        src, dst = spec.param("src"), spec.param("dst")
        for j, n in enumerate([*SIZES, 30000]):
            x = ew.cast_inputs(src, dst, n, rng)
            ref = ew.cast_ref(src, dst, x)

            def check(r, ref=ref, s=spec, n=n):
                y = r[1]
                nan = np.isnan(ref)  # NaN payloads may differ: NaN positions, then the bits of the rest
                assert np.array_equal(np.isnan(y), nan), f"{s.name} n={n}: NaN positions"
                assert np.array_equal(y[~nan].view(np.uint8), ref[~nan].view(np.uint8)), f"{s.name} n={n}"
            c.add(f"n{n}", spec, (x, np.zeros(n, ew.NP[dst]), n, _pool(j)), check)


def _reduce(c: Cases, rng):
    for spec in of("reduce"):
        op = spec.param("op")
        for j, shape in enumerate(ew.REDUCE_SHAPES):
            o, r, i = shape
            x = (rng.uniform(0.6, 1.5, shape) if op == "prod" else rng.standard_normal(shape) * 3).astype(np.float32)
            if op in ("max", "min") and x.size:
                x.reshape(-1)[rng.integers(0, x.size)] = np.nan

            def check(res, x=x, op=op, r=r, s=spec, shape=shape):
                ref, what = ew.reduce_ref(op, "f32", x), f"{s.name} {shape}"
                if op in ("max", "min"):
                    ew.assert_exact(res[1], ref, what)
                    return
                scale = np.abs(x.astype(np.float64)).sum(1) if op != "prod" else np.abs(ref)
                if op == "mean":
                    scale = scale / max(r, 1)
                ew.assert_close(res[1], ref, 2 * U, (r + 1) * U * scale, what)
            c.add(f"{shape}", spec, (x, np.zeros((o, i), np.float32), o, r, i, _pool(j)), check)


def _softmax(c: Cases, rng):
    for spec in of("softmax"):
        log = spec.param("op") == "logsoftmax"
        for j, shape in enumerate(ew.SOFTMAX_SHAPES + [(2, 3, 1), (3, 5, 2), (1, 4, 5)]):
            o, n, i = shape
            x = (rng.standard_normal(shape) * 4).astype(np.float32)
            if x.size:
                x[0] += 1e4
                x[-1, : max(n - 1, 0)] = -np.inf
            if n == 0:
                continue

            def check(res, x=x, n=n, s=spec, shape=shape, log=log):
                ref, centered, log_sum = ew.softmax_ref(x, log)
                with np.errstate(invalid="ignore"):
                    budget = (8 + n + np.nan_to_num(np.abs(centered), posinf=0.0)) * U
                if log:
                    ew.assert_close(res[1], ref, 2 * U, budget + (np.abs(log_sum) + 2) * U, f"{s.name} {shape}")
                else:
                    ew.assert_close(res[1], ref, budget, ew.SUBNORMAL_FLOOR, f"{s.name} {shape}")
            c.add(f"{shape}", spec, (x, np.full(shape, np.nan, np.float32), o, n, i, _pool(j)), check)


def _norm(c: Cases, rng):
    eps = 1e-5
    for spec in of("norm"):
        rms = spec.param("op") == "rmsnorm"
        for affine in ("gamma_beta", "gamma", "none"):
            for j, (rows, cols) in enumerate(ew.NORM_SHAPES + [(2, 4), (3, 5), (2, 17)]):
                x = (rng.standard_normal((rows, cols)) * 2 + 3).astype(np.float32)
                gamma = rng.uniform(0.5, 1.5, cols).astype(np.float32) if "gamma" in affine else None
                beta = rng.standard_normal(cols).astype(np.float32) if "beta" in affine else None

                def check(res, x=x, gamma=gamma, beta=beta, cols=cols, s=spec, w=f"{affine} {rows}x{cols}", rms=rms):
                    d = x.astype(np.float64)
                    g = np.ones(cols) if gamma is None else gamma.astype(np.float64)
                    b = np.zeros(cols) if beta is None or rms else beta.astype(np.float64)
                    mean = np.zeros((d.shape[0], 1)) if rms else d.mean(1, keepdims=True)
                    rstd = 1 / np.sqrt(((d - mean) ** 2).mean(1, keepdims=True) + eps)
                    ref = (d - mean) * rstd * g + b
                    tol = (cols + 8) * U * (np.abs(ref) + rstd * np.abs(g) * np.abs(d).max(1, keepdims=True) + np.abs(b))
                    ew.assert_close(res[3], ref, 0.0, tol, f"{s.name} {w}")
                c.add(f"{affine}-{rows}x{cols}", spec, (x, gamma, beta, np.zeros_like(x), rows, cols, eps, _pool(j)), check)


def _norm_quantize(c: Cases, rng):
    """The fused norm + int8 activations: bit-exact with quantize_activations (which quantize_acts-neon matches
    bit for bit, test_arm.py) of the NEON norm kernel's own output for the same rows, run in the same harness."""
    from tcc.backends.arm.packing import KPAD
    from tcc.ir.quant_arith import quantize_activations

    eps = 1e-5
    for spec in of("norm_quantize"):
        norm = BACKEND.select("norm", variant="neon", op=spec.param("op"), dtype="f32")
        for affine in ("gamma_beta", "gamma", "none"):
            for j, (rows, cols, group) in enumerate([(1, 1, 32), (3, 33, 32), (2, 100, 32), (5, 64, 64),
                                                     (17, 300, 128), (1, 2048, 32), (4, 257, 96)]):
                x = (rng.standard_normal((rows, cols)) * 2 + 3).astype(np.float32)
                gamma = rng.uniform(0.5, 1.5, cols).astype(np.float32) if "gamma" in affine else None
                beta = rng.standard_normal(cols).astype(np.float32) if "beta" in affine else None
                kp, g = -(-cols // KPAD) * KPAD, -(-cols // group)
                i_norm = c.h.call(norm, x, gamma, beta, np.zeros_like(x), rows, cols, eps, _pool(j))
                i_fused = c.h.call(spec, x, gamma, beta, np.full((rows, kp + 8), 77, np.int8), kp + 8,
                                   np.zeros(rows * g, np.float32), np.zeros(rows * g, np.int32), rows, cols, eps, group,
                                   _pool(j))
                c.tested.add(spec)

                def check(res, i_norm=i_norm, i_fused=i_fused, group=group, kp=kp, rows=rows):
                    rq, rs, rsum = quantize_activations(res[i_norm][3], group, pad_to=KPAD)
                    xq, xs, xsum = res[i_fused][3], res[i_fused][5], res[i_fused][6]
                    assert (xq[:, kp:] == 77).all(), "wrote past Kp into the ldq padding"
                    np.testing.assert_array_equal(xq[:, :kp], rq)
                    np.testing.assert_array_equal(xs.view(np.uint32), np.asarray(rs, np.float32).reshape(-1).view(np.uint32))
                    np.testing.assert_array_equal(xsum, rsum.reshape(-1))
                c.items.append((f"{spec.name}-{affine}-{rows}x{cols}-g{group}", check))
    for spec in of("norm_quantize"):
        x = np.ones((2, 64), np.float32)
        c.expect_error("bad-group", spec, (x, None, None, np.zeros((2, 64), np.int8), 64, np.zeros(4, np.float32),
                                           np.zeros(4, np.int32), 2, 64, eps, 0, None), "group 0 is not positive")


def _copy(c: Cases, rng):
    for spec in of("copy"):
        dtype = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[spec.param("esize")]
        for j, (src, dst_spec) in enumerate(ew.copy_cases(dtype, rng)):
            shape = src.shape
            sbase, soff, sstr = _base(src)
            if dst_spec is None:
                full = np.zeros(shape, dtype)
                dstr, doff = [s // full.itemsize for s in full.strides], 0
                want = np.array(src)
            else:
                full = rng.integers(0, 100, dst_spec[1]).astype(dtype)
                dview = full[dst_spec[2]]
                _, doff, dstr = _base(dview)
                want = full.copy()
                want[dst_spec[2]] = src
            z = np.zeros(1, np.int64)
            c.add(f"{shape}-{sstr}", spec, (At(sbase, soff), At(full, doff), len(shape), _i64(shape) if shape else z,
                                             _i64(sstr) if shape else z, _i64(dstr) if shape else z, _pool(j)),
                  lambda r, want=want, s=spec: ew.assert_exact(r[1], want, s.name))


def _gemm(c: Cases, rng):
    spec, = of("gemm")
    shapes = [(M, N, K) for M in (1, 2, 5, 6, 7, 13) for N in (1, 15, 16, 17, 33) for K in (1, 3, 16, 31, 257)]
    shapes += [(1, 1000, 1100), (150, 70, 600), (300, 33, 40), (64, 100, 64)]
    for j, (M, N, K) in enumerate(shapes):
        A = rng.standard_normal((M, K)).astype(np.float32)
        B = rng.standard_normal((K, N)).astype(np.float32)
        bias = rng.standard_normal(N).astype(np.float32) if (N + K) % 2 else None
        lda, ldc = K + 3, N + 2
        a_buf = np.full((M, lda), np.nan, np.float32)
        a_buf[:, :K] = A

        def check(res, A=A, B=B, bias=bias, N=N, K=K, w=f"M={M} N={N} K={K}"):
            c_buf = res[4]
            assert np.isnan(c_buf[:, N:]).all(), "gemm wrote past N into the ldc padding"
            A64, B64 = A.astype(np.float64), B.astype(np.float64)
            b64 = np.zeros(N) if bias is None else bias.astype(np.float64)
            ref, scale = A64 @ B64 + b64, np.abs(A64) @ np.abs(B64) + np.abs(b64)
            tol = FP32_TOL * np.sqrt(K + 1) * scale + 1e-37
            err = np.abs(c_buf[:, :N].astype(np.float64) - ref)
            assert (err <= tol).all(), f"{spec.name} {w}: max err/tol {np.nanmax(err / tol):.3g}"
        c.add(f"M{M}N{N}K{K}", spec, (a_buf, lda, pack_f32_panels(B), bias, np.full((M, ldc), np.nan, np.float32),
                                       ldc, M, N, K, _pool(j)), check)
    # NaN / inf propagate; K = 0 gives the bias.
    A = np.ones((2, 4), np.float32)
    A[0, 1], A[1, 2] = np.nan, np.inf
    c.add("naninf", spec, (A, 4, pack_f32_panels(np.ones((4, 3), np.float32)), None, np.zeros((2, 3), np.float32),
                           3, 2, 3, 4, None),
          lambda r: None if (np.isnan(r[4][0]).all() and np.isposinf(r[4][1]).all()) else pytest.fail("nan/inf"))
    bias = np.arange(5, dtype=np.float32)
    c.add("k0", spec, (np.zeros((3, 1), np.float32), 0, np.zeros(1, np.float32), bias, np.zeros((3, 5), np.float32),
                       5, 3, 5, 0, None),
          lambda r, bias=bias: np.testing.assert_array_equal(r[4], np.broadcast_to(bias, (3, 5))))


def _kvattention(c: Cases, rng):
    spec, = of("kvattention")
    for j, (name, case) in enumerate(kv.CASES.items()):
        B, Hq, Hkv, S, past, D, Dv, rd, mode, layout, spare, spare_b = case
        q, k, v, kc, vc, cos, sin = kv.make_case(rng, B, Hq, Hkv, S, past, D, Dv, rd, mode, layout, spare, spare_b)
        kc0, vc0 = kc.copy(), vc.copy()
        scale = 1.0 / np.sqrt(D)
        ref, _, tol = kv.kvattention_ref(q, k, v, kc0, vc0, past, cos, sin, mode, rd, scale)
        out = kv.strided(rng, B, Hq, S, Dv, layout, fill=np.nan)
        bufs, strides = [], []
        for a in (q, k, v, out):
            base, off, st = _base(a)
            assert off == 0
            bufs.append(base)
            strides.append(_i64(st))

        def check(res, q=q, k=k, v=v, ref=ref, tol=tol, out=out, kc0=kc0, vc0=vc0, cos=cos, sin=sin, past=past,
                  mode=mode, rd=rd, name=name):
            got_base = res[5]
            got = np.lib.stride_tricks.as_strided(got_base, out.shape, out.strides)
            kv.check_out(got, ref, tol, f"{spec.name} {name}")
            kv.check_cache(res[3], res[4], kc0, vc0, k, v, past, cos, sin, mode, rd, f"{spec.name} {name}")
        c.add(name, spec, (bufs[0], bufs[1], bufs[2], kc, vc, bufs[3], B, Hq, Hkv, S, past, kc.shape[2], D, Dv,
                           *strides, cos, sin, rd, mode, scale, 0, kc.shape[2], None, 0.0,
                           _pool(j) if S > 1 else POOL), check)


def _matmul_call(A, B, pool, what, spec):
    """(args, check) of C = A @ B with numpy broadcasting over the batch dims (tests/kernels/test_linalg.py:
    run_matmul / check_matmul): operands passed as their base buffers and element strides, C dense, NaN
    filled (every output must be written)."""
    M, K = A.shape[-2:]
    N = B.shape[-1]
    batch = np.broadcast_shapes(A.shape[:-2], B.shape[:-2])
    sa = elem_strides(np.broadcast_to(A, batch + (M, K)))  # stride 0 where broadcast
    sb = elem_strides(np.broadcast_to(B, batch + (K, N)))
    (a_base, a_off, _), (b_base, b_off, _) = _base(A), _base(B)
    z = np.zeros(1, np.int64)
    args = (At(a_base, a_off), At(b_base, b_off), np.full(batch + (M, N), np.nan, np.float32), M, N, K,
            sa[-2], sa[-1], sb[-2], sb[-1], len(batch), _i64(batch) if batch else z,
            _i64(sa[:-2]) if batch else z, _i64(sb[:-2]) if batch else z, pool)

    def check(res, A=A, B=B):
        A64, B64 = A.astype(np.float64), B.astype(np.float64)
        la.check_dot(res[2], A64 @ B64, np.abs(A64) @ np.abs(B64), K, f"{spec.name} {what}")
    return args, check


def _matmul(c: Cases, rng):
    """test_linalg's matmul tests: every (M, N, K) of its edge sizes in the dense, B-transposed (the DOT path,
    B read in place) and A-transposed layouts; batched with broadcasting and strided operands; the large
    shapes (several row, column and K blocks); empty K and an empty batch."""
    spec, = of("matmul")
    j = 0
    for layout in ("dense", "bT", "aT"):
        for M in la.MS:
            calls = []
            for N, K in itertools.product(la.NS, la.KS):
                A = la.make_operand(rng, (), M, K, "T" if layout == "aT" else "dense")
                B = la.make_operand(rng, (), K, N, "T" if layout == "bT" else "dense")
                j += 1
                calls.append(_matmul_call(A, B, _pool(j), f"{layout} M={M} N={N} K={K}", spec))
            c.add_group(f"{layout}-M{M}", spec, calls)
    for batches in la.BATCHES:
        for a_layout, b_layout in [("dense", "dense"), ("dense", "T"), ("T", "dense"), ("dense", "strided"),
                                   ("strided", "T")]:
            calls = []
            for M, N, K in [(1, 17, 64), (7, 33, 31), (13, 1, 257), (6, 100, 3), (64, 16, 16)]:
                A = la.make_operand(rng, batches[0], M, K, a_layout)
                B = la.make_operand(rng, batches[1], K, N, b_layout)
                j += 1
                calls.append(_matmul_call(A, B, _pool(j), f"batches={batches} A {a_layout} B {b_layout} "
                                                          f"M={M} N={N} K={K}", spec))
            c.add_group(f"batched{batches}-{a_layout}-{b_layout}", spec, calls)
    for layout in ("dense", "bT"):
        calls = []
        for M, N, K in [(1, 300, 70), (50, 300, 300), (7, 530, 16), (100, 20, 600)]:
            A = la.make_operand(rng, (2,), M, K, "dense")
            B = la.make_operand(rng, (2,), K, N, "T" if layout == "bT" else "dense")
            calls.append(_matmul_call(A, B, POOL, f"large {layout} M={M} N={N} K={K}", spec))
        c.add_group(f"large-{layout}", spec, calls)
    args, _ = _matmul_call(np.ones((2, 3, 0), np.float32), np.ones((2, 0, 4), np.float32), None, "K=0", spec)
    c.add("k0", spec, args, lambda r: np.testing.assert_array_equal(r[2], np.zeros((2, 3, 4), np.float32)))
    args, _ = _matmul_call(np.ones((0, 3, 2), np.float32), np.ones((0, 2, 4), np.float32), None, "no batch", spec)
    c.add("empty-batch", spec, args, lambda r: None)  # writes nothing and must not crash


def _attention_args(q, k, v, mask, out, scale, causal, pool):
    B, Hq, Sq, D = q.shape
    Hkv, Skv, Dv = k.shape[1], k.shape[2], v.shape[3]
    ms = [0, 0, 0, 0] if mask is None else elem_strides(np.broadcast_to(mask, (B, Hq, Sq, Skv)))
    bufs = []
    for a in (q, k, v, out):
        base, off, _ = _base(a)
        bufs.append(At(base, off))
    return (*bufs[:3], mask, bufs[3], B, Hq, Hkv, Sq, Skv, D, Dv,
            *[_i64(elem_strides(a)) for a in (q, k, v)], _i64(ms), _i64(elem_strides(out)), scale, causal, 0, None, 0.0,
            pool)


def _attention(c: Cases, rng):
    """test_linalg's attention cases (decode / prefill, GQA, causal with a cache offset, masks of broadcast
    shapes, a fully masked row, D = 1, D 7 / Dv 5, a dim stride of 2, no keys), its reference and tolerance."""
    spec, = of("attention")
    for j, (case, (B, Hq, Hkv, Sq, Skv, D, Dv, causal, mask_kind, layout)) in enumerate(la.ATTN_CASES.items()):
        q = la.qkv_array(rng, B, Hq, Sq, D, layout)
        k = la.qkv_array(rng, B, Hkv, Skv, D, layout)
        v = la.qkv_array(rng, B, Hkv, Skv, Dv, layout)
        mask = la.make_mask(rng, mask_kind, B, Hq, Sq, Skv)
        out = la.qkv_array(rng, B, Hq, Sq, Dv, "bshd" if layout == "bshd" else "bhsd")
        out[...] = np.nan
        scale = 1.0 / np.sqrt(max(D, 1))

        def check(res, q=q, k=k, v=v, mask=mask, out=out, scale=scale, causal=causal, case=case, mk=mask_kind, D=D,
                  Skv=Skv):
            got = np.lib.stride_tricks.as_strided(res[4], out.shape, out.strides)
            ref, smax, vmax = la.attention_ref(q, k, v, mask, scale, causal)
            tol = la.attention_tol(smax, vmax, D, Skv)
            err = np.abs(got.astype(np.float64) - ref)
            bad = ~(err <= tol)
            if bad.any():
                idx = tuple(np.argwhere(bad)[0])
                pytest.fail(f"{spec.name} {case}: {bad.sum()}/{bad.size} off; first at {idx}: got {got[idx]!r}, "
                            f"want {ref[idx]!r}, |err| {err[idx]:.3g} > tol {np.broadcast_to(tol, err.shape)[idx]:.3g}")
            if mk == "row_masked":
                assert (got[0, 0, 1] == 0).all(), "a row with every key masked must give zeros"
        c.add(case, spec, _attention_args(q, k, v, mask, out, scale, causal, POOL if j % 2 else None), check)
    q = np.zeros((1, 3, 1, 4), np.float32)
    k = np.zeros((1, 2, 2, 4), np.float32)
    c.expect_error("bad-heads", spec, _attention_args(q, k, k, None, np.zeros_like(q), 0.5, 0, None),
                   "3 query heads are not a multiple of 2 kv heads")


def _build():
    rng = np.random.default_rng(5)
    c = Cases()
    for part in (_unary, _binary, _where, _cast, _reduce, _softmax, _norm, _norm_quantize, _copy, _gemm, _kvattention, _matmul,
                 _attention):
        part(c, rng)
    return c


CASES = _build()


@pytest.fixture(scope="module")
def neon_results(tmp_path_factory):
    if MISSING:
        pytest.skip(f"arm cross toolchain absent: {MISSING}")
    with shared_dir(tmp_path_factory, "arm_neon_harness") as build_dir:
        CASES.h.build(str(build_dir))
    results = {}
    for cpu in CPUS:
        results[cpu] = CASES.h.run(cpu)
        errors = dict(line.split(": ", 1) for line in CASES.h.messages.splitlines() if line.startswith("call "))
        errors = {int(k[5:]): v for k, v in errors.items()}
        assert errors.keys() == CASES.errors.keys(), f"kernel errors under {cpu}: {CASES.h.messages[:500]}"
        for idx, want in CASES.errors.items():
            assert want in errors[idx], (cpu, idx, errors[idx], want)
    return results


@needs_toolchain
@pytest.mark.parametrize("cpu", CPUS, ids=CPU_IDS)
@pytest.mark.parametrize("case", CASES.items, ids=[c[0] for c in CASES.items])
def test_arm_neon_kernel(neon_results, cpu, case):
    _, check = case
    check(neon_results[cpu])


def test_every_neon_f32_variant_is_tested():
    assert set(NEON) <= CASES.tested, sorted(s.name for s in set(NEON) - CASES.tested)
