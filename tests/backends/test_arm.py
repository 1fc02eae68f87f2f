"""The arm backend under qemu: every arm quantized-linear kernel variant (w4a8, w8a8, w4a32, w4a16)
against the numpy references of ir/ops/quant.py on edge-case shapes, on qemu's default CPU (dotprod + i8mm
+ fp16: the `smmla` paths for M >= 2, `sdot` for M = 1), `-cpu cortex-a76` (dotprod and fp16, no i8mm: the
`sdot` paths) and `-cpu cortex-a53` (none: the vmull_s8 and f32 fallbacks), plus the arm packers and target.

All kernel calls of this module run in ONE harness binary per CPU (tests/backends/arm_harness.py), so the
whole module is three qemu launches. Tolerances are those of tests/kernels/test_qlinear.py (derived there):
|y - ref| <= C * n_add * u * (|Xd| @ |Wd|^T + |bias|) with n_add = G + 4 (w4a8: per group one term
(xs*s) * (dot - z*xsum), two roundings, G terms and the bias summed; the NEON epilogue's FMA rounds once
less), G + 5 (w8a8: per activation group xs * float(dot), the G terms summed, times s, plus the bias) and
group + G + 4 (w4a32, the portable variants: products
summed sequentially per group, the group sum scaled and added to the others and the bias).
quantize_acts must be bit-exact; w4a16's bounds (fp16 and f32 paths) are derived at `_w4a16_check`. The
portable elementwise / linear-algebra kernels are the templates the x86 kernel tests cover; under arm they
are exercised by the whole-model tests (test_arm_models.py).

Skips (with the reason) only where the cross toolchain (g++-aarch64-linux-gnu, qemu-user) is absent.
"""
from __future__ import annotations

import numpy as np
import pytest
from tcc.backends import get_backend
from tcc.backends.arm import packing as ap
from tcc.backends.arm.target import cross_toolchain_missing
from tcc.errors import TccError
from tcc.ir.quant_arith import dequantize, dequantize_activations, quantize_activations, quantize_int4, quantize_int8

from .arm_harness import POOL, Harness, shared_dir

MISSING = cross_toolchain_missing()
needs_toolchain = pytest.mark.skipif(MISSING is not None, reason=f"arm cross toolchain absent: {MISSING}")

U, C = 2.0 ** -24, 2
# qemu's default CPU ("max": dotprod and i8mm: the smmla paths for M >= 2), one with dotprod but no i8mm (the
# sdot paths) and one without either (the vmull_s8 fallbacks).
CPUS = [None, "cortex-a76", "cortex-a53"]
CPU_IDS = ["qemu-max", "cortex-a76", "cortex-a53"]
BACKEND = get_backend("arm")
VARIANTS = {f: [s for s in BACKEND.variants if s.family == f]
            for f in ("quantize_acts", "qlinear_w4a8", "qlinear_w8a8", "qlinear_w4a32", "qlinear_w4a16")}
# qgather reading a tied table out of a QLinear's packed weights: the arm layout, so tested here too.
VARIANTS["qgather"] = [s for s in BACKEND.variants if s.family == "qgather" and s.param("layout") == "tiles"]
HAS_FP16 = {None: True, "cortex-a76": True, "cortex-a53": False}  # FEAT_FP16 (asimdhp) of each emulated CPU

QA_CASES = [(1, 1, 32), (1, 31, 32), (1, 32, 32), (3, 33, 32), (1, 64, 128), (3, 100, 32), (17, 128, 128),
            (2, 1000, 64), (5, 130, 96), (17, 300, 128), (70, 200, 32)]
# M, N, K, group: K below / at / above the group, not a multiple of 16 / 32; N = 1, odd, not a multiple of
# the 4-column tile; M = 1 (decode), 2, 3 and > 4 (every remainder of the 4-row register tiles), 70
# (two 64-row tasks).
W4_CASES = [(1, 8, 64, 32), (1, 1, 10, 32), (3, 17, 100, 32), (1, 33, 128, 128), (17, 9, 300, 128),
            (2, 16, 40, 128), (1, 40, 1000, 128), (6, 31, 257, 64), (7, 1, 64, 64), (9, 23, 200, 32),
            (70, 5, 96, 96), (1, 7, 2048, 128)]
# w8a8 adds the activation group: 32 (the scheme's), 16 (one kQ8B chunk), 48 (three chunks) and per row (a
# group of K or more, G = 1).
ROW = 1 << 20
W8_CASES = [(1, 8, 64, 32), (1, 1, 10, 32), (3, 17, 100, 32), (17, 9, 300, 32), (2, 16, 40, 32), (1, 40, 1000, 32),
            (6, 31, 257, 32), (7, 1, 64, 32), (9, 23, 200, 32), (70, 5, 17, 32), (1, 7, 2048, 32),
            (1, 8, 64, 16), (5, 17, 100, 16), (4, 9, 300, 48), (1, 40, 1000, 48), (3, 17, 100, ROW), (1, 7, 2048, ROW),
            (70, 5, 17, ROW), (6, 31, 257, ROW)]


def _special_rows(rng, M, K, group):
    """Random rows plus an all-zero group (row 0) and exact rounding ties (row 1: amax 127, inv = 1)."""
    x = rng.standard_normal((M, K)).astype(np.float32)
    x[0, :min(K, group)] = 0.0
    if M > 1:
        x[1] = np.clip((np.arange(K) % 254 - 127 + 0.5).astype(np.float32), -126.5, 126.5)
        x[1, 0] = 127.0
        if K > group:
            x[1, group] = 127.0
    if M > 2:
        x[2] *= np.float32(10.0) ** rng.integers(-20, 20, K).astype(np.float32)
    return x


def _expected(xd, wd, bias, n_add):
    ref, mag = xd @ wd.T, np.abs(xd) @ np.abs(wd).T
    if bias is not None:
        ref, mag = ref + bias, mag + np.abs(bias)
    return ref, C * n_add * U * mag + 1e-37


def _gamma(n: int, u: float) -> float:
    """The classic bound on n successive roundings: |error| <= gamma * sum |terms|."""
    return n * u / (1 - n * u)


def _w4a16_rows(rng, M, K):
    """Random rows, plus rows in fp16's subnormal range (underflowing products) and large rows (fp16 block
    sums in the thousands, far from overflow)."""
    x = rng.standard_normal((M, K)).astype(np.float32)
    if M > 1:
        x[1] *= np.float32(2e-5)
    if M > 2:
        x[2] *= np.float32(1000.0)
    return x


def _w4a16_check(spec, x, wd, bias, K):
    """w4a16 tolerances (ir/ops/quant.py, act f16): the reference sums X = fp16(x) times Wh = fp16(W) exactly.
    - neon, fp16 path: per 32-k block each lane sums 4 products with vmulq_f16 + 3 vfmaq_f16, 4 fp16
      roundings (gamma_4 with u = 2^-11) of the lane's terms, plus at most 2^-25 each where a result is
      fp16-subnormal (one op per k: Kp ops); then f32: per lane 2 adds per block (lo + hi, into the
      accumulator), 2 pairwise levels and the bias: gamma_{2 nb + 4} with u = 2^-24.
    - neon, f32 path (no asimdhp): the same exact products, f32 only: per lane two FMA chains of 4, their
      sum, the block add, 2 pairwise levels and the bias: gamma_{nb + 8}.
    - portable (naive, threads): K products summed in order, then the bias: gamma_{K + 1}.
    Wrong data (a column, block or scale off) errs by O(sum |terms|), orders above all of these."""
    xh = x.astype(np.float16).astype(np.float64)
    wh = wd.astype(np.float16).astype(np.float64)
    ref, mag = xh @ wh.T, np.abs(xh) @ np.abs(wh).T
    if bias is not None:
        ref, mag = ref + bias, mag + np.abs(bias)
    kp, nb = ap.padded_k(K), ap.padded_k(K) // 32
    tol16 = (_gamma(4, 2.0 ** -11) + _gamma(2 * nb + 4, U)) * mag + kp * 2.0 ** -25
    tol32 = _gamma(nb + 8, U) * mag + 1e-37
    tolp = _gamma(K + 1, U) * mag + 1e-37
    N = wd.shape[0]

    def check(res, cpu):
        tol = tolp if spec.variant != "neon" else tol16 if HAS_FP16[cpu] else tol32
        _check_y(res[6], N, ref, tol)
    return check


def _build_cases():
    """Every call of the module: (test id, check function taking the call's results)."""
    rng = np.random.default_rng(20240607)
    h, cases = Harness(), []

    for spec in VARIANTS["quantize_acts"]:
        for per_tensor in (0, 1):
            for j, (M, K, group) in enumerate(QA_CASES):
                x = _special_rows(rng, M, K, group)
                Kp, G = ap.padded_k(K), 1 if per_tensor else -(-K // group)
                ldx, ldq = K + 3, Kp + 5
                xb = np.full((M, ldx), np.nan, np.float32)
                xb[:, :K] = x
                args = (xb, ldx, np.full((M, ldq), 77, np.int8), ldq, np.full(1 if per_tensor else M * G, np.nan, np.float32),
                        np.full(M * G, -999, np.int32), M, K, group, per_tensor, POOL if j % 2 else None)
                idx = h.call(spec, *args)
                ref = quantize_activations(x, None if per_tensor else group, pad_to=ap.KPAD)

                def check(res, M=M, Kp=Kp, ref=ref):
                    xq, xs, xsum = res[2], res[4], res[5]
                    assert (xq[:, Kp:] == 77).all(), "wrote past Kp into the ldq padding"
                    np.testing.assert_array_equal(xq[:, :Kp], ref[0])
                    np.testing.assert_array_equal(xs.view(np.uint32), np.asarray(ref[1], np.float32).reshape(-1).view(np.uint32))
                    np.testing.assert_array_equal(xsum.reshape(M, -1), ref[2].reshape(M, -1))
                cases.append((f"{spec.name}-{'tensor' if per_tensor else 'group'}-M{M}K{K}g{group}", idx, check))

    for j, (M, N, K, group) in enumerate(W4_CASES):
        for sym in (True, False):
            W = rng.standard_normal((K, N)).astype(np.float32)
            W[:, 0] *= 1e-3
            q, s, z = quantize_int4(W, group, symmetric=sym)
            x = rng.standard_normal((M, K)).astype(np.float32)
            bias = rng.standard_normal(N).astype(np.float32) if (j + sym) % 2 else None
            wp, sp, zp = ap.pack_q4(q), ap.pack_q4_scales(s), None if z is None else ap.pack_q4_zeros(z)
            G = -(-K // group)
            wd = dequantize(q, s, z, 4, group)
            xq, xs, xsum = quantize_activations(x, group, pad_to=ap.KPAD)
            ldq, ldy = xq.shape[1] + 16, N + 3
            xqb = np.zeros((M, ldq), np.int8)
            xqb[:, :xq.shape[1]] = xq
            ref8, tol8 = _expected(dequantize_activations(xq, xs, K, group), wd, bias, G + 4)
            ref32, tol32 = _expected(x.astype(np.float64), wd, bias, group + G + 4)
            pool = POOL if j % 2 else None
            tag = f"M{M}N{N}K{K}g{group}-{'sym' if sym else 'asym'}"
            for spec in VARIANTS["qlinear_w4a8"]:
                idx = h.call(spec, xqb, xs, xsum, ldq, wp, sp, zp, bias, np.full((M, ldy), np.nan, np.float32), ldy,
                             M, N, K, group, pool)
                cases.append((f"{spec.name}-{tag}", idx, lambda res, N=N, r=ref8, t=tol8: _check_y(res[8], N, r, t)))
            for spec in VARIANTS["qlinear_w4a32"]:
                xb = np.full((M, K + 5), np.nan, np.float32)
                xb[:, :K] = x
                idx = h.call(spec, xb, K + 5, wp, sp, zp, bias, np.full((M, ldy), np.nan, np.float32), ldy, M, N, K,
                             group, pool)
                cases.append((f"{spec.name}-{tag}", idx, lambda res, N=N, r=ref32, t=tol32: _check_y(res[6], N, r, t)))
            x16 = _w4a16_rows(rng, M, K)
            for spec in VARIANTS["qlinear_w4a16"]:
                xb = np.full((M, K + 5), np.nan, np.float32)
                xb[:, :K] = x16
                idx = h.call(spec, xb, K + 5, wp, sp, zp, bias, np.full((M, ldy), np.nan, np.float32), ldy, M, N, K,
                             group, pool)
                cases.append((f"{spec.name}-{tag}", idx, _w4a16_check(spec, x16, wd, bias, K)))
            _tied_table_cases(h, cases, 4, tag, (wp, sp, zp), wd, N, K, group, pool)

    for j, (M, N, K, group) in enumerate(W8_CASES):
        W = rng.standard_normal((K, N)).astype(np.float32)
        q, s = quantize_int8(W)
        x = rng.standard_normal((M, K)).astype(np.float32)
        x[0, 0] = 50.0  # an outlier: its group's other codes are small
        x[M - 1, K // 2:] *= 1e-3  # groups of very different scale within a row
        bias = rng.standard_normal(N).astype(np.float32) if j % 2 else None
        xq, xs, xsum = quantize_activations(x, group, pad_to=ap.KPAD)
        ldq, ldy = xq.shape[1] + 16, N + 3
        xqb = np.zeros((M, ldq), np.int8)
        xqb[:, :xq.shape[1]] = xq
        ref, tol = _expected(dequantize_activations(xq, xs, K, group), dequantize(q, s, None, 8, K), bias,
                             xs.shape[-1] + 5)
        for spec in VARIANTS["qlinear_w8a8"]:
            idx = h.call(spec, xqb, xs, xsum, ldq, ap.pack_q8(q), ap.pack_q8_scales(s), bias,
                         np.full((M, ldy), np.nan, np.float32), ldy, M, N, K, group, POOL if j % 2 else None)
            cases.append((f"{spec.name}-M{M}N{N}K{K}g{group}", idx,
                          lambda res, N=N, r=ref, t=tol: _check_y(res[7], N, r, t)))
        _tied_table_cases(h, cases, 8, f"N{N}K{K}", (ap.pack_q8(q), ap.pack_q8_scales(s), None),
                          dequantize(q, s, None, 8, K), N, K, K, POOL if j % 2 else None)
    return h, cases


def _tied_table_cases(h, cases, bits, tag, packed, wd, N, K, group, pool):
    """qgather of rows of a QLinear's packed [N, K] weights (a tied embedding): exact, every row, negative
    ids wrapping, in any order."""
    ids = np.array([N - 1, 0, -1, *range(N), -N], np.int64)
    want = wd[np.where(ids < 0, ids + N, ids)].astype(np.float32)
    for spec in (s for s in VARIANTS["qgather"] if s.param("bits") == bits):
        idx = h.call(spec, *packed, ids, np.full((ids.size, K), np.nan, np.float32), ids.size, N, K, group, pool)
        cases.append((f"{spec.name}-{tag}", idx, lambda res, w=want: np.testing.assert_array_equal(res[4], w)))


def _check_y(yb, N, ref, tol):
    assert np.isnan(yb[:, N:]).all(), "wrote past N into the ldy padding"
    y = yb[:, :N].astype(np.float64)
    err = np.abs(y - ref)
    bad = ~(err <= tol)
    if bad.any():
        i = tuple(np.argwhere(bad)[0])
        pytest.fail(f"{bad.sum()}/{bad.size} outputs off; first at {i}: got {y[i]!r}, want {ref[i]!r}, "
                    f"|err| {err[i]:.3g} > tol {tol[i]:.3g}")


HARNESS, CASES = _build_cases()


@pytest.fixture(scope="module")
def arm_results(tmp_path_factory):
    """Build the harness once (cross-compiled, static) and run it once per CPU under qemu."""
    if MISSING:
        pytest.skip(f"arm cross toolchain absent: {MISSING}")
    with shared_dir(tmp_path_factory, "arm_harness") as build_dir:
        HARNESS.build(str(build_dir))
    results, messages = {}, {}
    for cpu in CPUS:
        results[cpu] = HARNESS.run(cpu)
        messages[cpu] = HARNESS.messages
    # The run-time feature detection must see what qemu emulates: both kernel paths get tested.
    assert "features: dotprod=1 i8mm=1 fp16=1" in messages[None], messages[None][:200]
    assert "features: dotprod=1 i8mm=0 fp16=1" in messages["cortex-a76"], messages["cortex-a76"][:200]
    assert "features: dotprod=0 i8mm=0 fp16=0" in messages["cortex-a53"], messages["cortex-a53"][:200]
    for cpu, text in messages.items():
        assert "call " not in text, f"kernel errors under {cpu}: {text[:500]}"
    return results


@needs_toolchain
@pytest.mark.parametrize("cpu", CPUS, ids=CPU_IDS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_arm_kernel(arm_results, cpu, case):
    name, idx, check = case
    if "w4a16" in name:  # its tolerance depends on whether the CPU has fp16 arithmetic
        check(arm_results[cpu][idx], cpu)
    else:
        check(arm_results[cpu][idx])


@needs_toolchain
def test_every_quantized_arm_variant_is_tested():
    tested = {HARNESS.calls[c[1]][0] for c in CASES}
    assert {s for specs in VARIANTS.values() for s in specs} <= tested
    assert {s.variant for s in VARIANTS["qlinear_w4a8"]} >= {"neon", "naive", "unroll", "threads"}


# ---------------------------------------------------------------------------------------- no device needed

@pytest.mark.parametrize("N,K", [(1, 1), (1, 32), (4, 32), (9, 70), (17, 200), (3, 4096)])
def test_arm_pack_roundtrip(N, K):
    rng = np.random.default_rng(N * 1000 + K)
    q4 = rng.integers(0, 16, (N, K)).astype(np.uint8)
    p = ap.pack_q4(q4)
    Kp, Np = ap.padded_k(K), ap.padded_n(N)
    assert p.shape == (Np * Kp // 2,)
    np.testing.assert_array_equal(ap.unpack_q4(p, N, K), q4)
    for n, k in [(N - 1, K - 1), (0, 0), (N // 2, K // 2)]:  # docs/arm.md: one AND + one shift per block
        t, c, b, e = n // 4, n % 4, k // 32, k % 32
        byte = p[((t * (Kp // 32) + b) * 4 + c) * 16 + e % 16]
        assert (byte >> 4 if e >= 16 else byte & 15) == q4[n, k]
    q8 = rng.integers(-127, 128, (N, K)).astype(np.int8)
    np.testing.assert_array_equal(ap.unpack_q8(ap.pack_q8(q8), N, K), q8)
    G = -(-K // 32)
    z = rng.integers(0, 16, (N, G)).astype(np.uint8)
    np.testing.assert_array_equal(ap.unpack_tile_groups(ap.pack_q4_zeros(z), N, G), z)


def test_arm_target_and_selection():
    t = BACKEND.target
    assert t.name == "arm" and t.k_block == ap.KPAD and set(t.qms) == {"fp32", "w8a8", "w4a32", "w4a8", "w4a16"}
    assert "-march=armv8-a" in t.cxx_flags and t.static_executables
    assert BACKEND.select("qlinear_w4a8").variant == "neon"
    assert BACKEND.select("qlinear_w4a32").variant == "neon"
    assert BACKEND.select("qlinear_w4a16").variant == "neon"
    assert BACKEND.select("binary", op="add", dtype="f32").template == "arm/binary-neon.cpp.j2"
    assert BACKEND.select("binary", op="add", dtype="i64").template == "common/binary-scalar.cpp.j2"
    assert BACKEND.select("gemm", dtype="f32").variant == "neon"
    assert get_backend("arm", cpu="cortex-a76").target.features == ("dotprod", "fp16")
    with pytest.raises(TccError, match="unknown arm CPU"):
        get_backend("arm", cpu="pentium")
    with pytest.raises(TccError, match="--cpu does not apply"):
        get_backend("x86", cpu="cortex-a76")


def test_missing_cross_compiler_is_one_line_build_error(tmp_path):
    import dataclasses

    from tcc.codegen.cmake import build_library
    from tcc.errors import BuildError

    target = dataclasses.replace(BACKEND.target, cross_cxx="aarch64-nonexistent-g++")
    src = tmp_path / "k.cpp"
    src.write_text("int k() { return 0; }\n")
    with pytest.raises(BuildError, match="cross compiler aarch64-nonexistent-g\\+\\+ not found.*apt-get install") as e:
        build_library([str(src)], str(tmp_path / "b"), target, "k")
    assert "\n" not in str(e.value)


@needs_toolchain
def test_w4a16_fp16_path_runs_where_the_cpu_has_it(arm_results):
    """The neon w4a16 kernel's fp16 path (CPUs with asimdhp) and its f32 path (cortex-a53) both meet their
    bounds (test_arm_kernel); here: the two paths really differ, i.e. the fp16 one rounds in fp16, and the
    two fp16 CPUs agree bit for bit (same path, same instructions)."""
    differ = 0
    for name, idx, _ in CASES:
        if name.startswith("tcc_qlinear_w4a16__neon"):
            y = {cpu: arm_results[cpu][idx][6].view(np.uint32) for cpu in CPUS}
            assert np.array_equal(y[None], y["cortex-a76"]), name
            differ += not np.array_equal(y[None], y["cortex-a53"])
    assert differ >= len(W4_CASES), f"only {differ} w4a16 cases differ between the fp16 and f32 paths"


@needs_toolchain
def test_int8_paths_agree_bitwise(arm_results):
    """smmla (qemu max, M >= 2), sdot (cortex-a76) and vmull_s8 (cortex-a53) compute the same exact integer
    dots and share the float epilogue, so the neon int8 kernels' outputs must match bit for bit."""
    for name, idx, _ in CASES:
        if "__neon" in name and ("w4a8" in name or "w8a8" in name):
            y_arg = 8 if "w4a8" in name else 7  # y: after (xq, xs, xsum, ldq, w, ws, bias)
            outs = [arm_results[cpu][idx][y_arg] for cpu in CPUS]
            for cpu, o in zip(CPUS[1:], outs[1:]):
                assert np.array_equal(outs[0].view(np.uint32), o.view(np.uint32)), (name, cpu)
