"""The CPU SIMT emulator itself (runtime/simt/tcc_simt.h, runtime/device_simt.cpp, runtime/tcc_cuda_ptx.h).

Small hand-written kernels (tests/cuda/kernels/simt_tests.cu) against numpy: block reductions over 1024 threads,
shuffles with every mode and width, votes, atomics, static/dynamic shared memory, IEEE fp16 rounding, the
tensor-core helpers' fallbacks; and every error the emulator must report in one line through
tcc_exec_sync/tcc_exec_error instead of crashing or hanging. The same source compiles with nvcc for sm_80
and sm_90 (SASS checked).
"""
from __future__ import annotations

import os
from fractions import Fraction

import numpy as np
import pytest

from .harness import build_kernels, nvcc_compile, sass

KERNELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels", "simt_tests.cu")


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    lib = build_kernels([KERNELS], str(tmp_path_factory.mktemp("simt")))
    lib.set_seed(0)
    yield lib
    lib.set_seed(0)


def f32(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# -- reductions, shuffles, votes --------------------------------------------------------------------------
@pytest.mark.parametrize("threads,blocks,n", [(1024, 1, 5000), (32, 3, 100), (256, 4, 1), (64, 2, 0)])
def test_block_sum(lib, threads, blocks, n):
    x = f32(max(n, 1))[:n].copy()
    out = np.zeros(2 * blocks, np.float32)
    assert lib.run("simt_block_sum", x, out, n, blocks, threads) == ""
    # Each block sums a strided slice; fp32 sums of <= 5000 normal values: relative error well under 1e-4.
    for b in range(blocks):
        ref = sum(float(x[i]) for i in range(n) if (i // threads) % blocks == b)
        assert out[2 * b] == pytest.approx(ref, abs=1e-4 * (1 + np.abs(x).sum()))
        assert out[2 * b + 1] == out[2 * b]


def shfl_reference(values, mode, arg, width):
    """PTX shfl.sync semantics (the c operand CUDA's __shfl*_sync pass for `width`)."""
    out = []
    for t, v in enumerate(values):
        base, lane = t & ~31, t & 31
        segmask = 32 - width
        b = arg & 31
        seg_lo = lane & segmask
        if mode == 1:  # up: j >= first lane of the segment
            j = lane - b
            ok = j >= seg_lo
        else:
            max_lane = seg_lo | (31 & ~segmask)
            j = {0: seg_lo | (b & ~segmask), 2: lane + b, 3: lane ^ b}[mode]
            ok = j <= max_lane
        out.append(values[base + j] if ok else v)
    return np.array(out, values.dtype)


@pytest.mark.parametrize("mode", [0, 1, 2, 3], ids=["idx", "up", "down", "xor"])
@pytest.mark.parametrize("width", [32, 16, 8, 4, 2, 1])
def test_shuffles(lib, mode, width):
    values = np.arange(64, dtype=np.int32) * 7 + 3
    for arg in (0, 1, 3, 5, 17, 31, 33):
        out = np.zeros(64, np.int32)
        assert lib.run("simt_shfl", values, out, mode, arg, width, 64) == ""
        np.testing.assert_array_equal(out, shfl_reference(values, mode, arg, width), err_msg=f"arg {arg}")


def test_shuffle_wide_values(lib):
    x = f32(64, 4, seed=1)
    d = np.random.default_rng(2).standard_normal(64)
    out, dout = np.zeros_like(x), np.zeros_like(d)
    assert lib.run("simt_shfl_wide", x, out, d, dout, 64) == ""
    src = np.array([(t & ~31) + ((t + 5) & 31) for t in range(64)])
    np.testing.assert_array_equal(out, x[src])
    np.testing.assert_array_equal(dout, d[src])


def test_partial_last_warp_and_votes(lib):
    """48 threads: the second warp has 16 lanes; a full mask names only the lanes that exist."""
    rng = np.random.default_rng(3)
    for threads in (64, 48):
        pred = (rng.random(threads) < 0.5).astype(np.int32)
        pred[32:] = 1  # warp 1 all true: __all_sync is 1 there
        out = np.zeros(5 * threads, np.uint32)
        assert lib.run("simt_vote", pred, out, threads) == ""
        out = out.reshape(threads, 5)
        for w in range(0, threads, 32):
            lanes = pred[w:w + 32]
            ballot = sum(int(p) << i for i, p in enumerate(lanes))
            low = sum(int(p) << i for i, p in enumerate(lanes[:16]))
            for i in range(len(lanes)):
                assert tuple(out[w + i, :3]) == (ballot, int(lanes.any()), int(lanes.all()))
                assert out[w + i, 3] == (low if i < 16 else 0)
                assert out[w + i, 4] == lanes.sum()


@pytest.mark.parametrize("threads,n", [(96, 5), (64, 64), (1024, 1000)])
def test_syncthreads_count_and_or_activemask(lib, threads, n):
    out, out2 = np.zeros(3 * threads, np.int32), np.zeros(threads, np.uint32)
    out3 = np.zeros(threads, np.uint16)
    assert lib.run("simt_sync_vote", n, out, out2, out3, threads) == ""
    out = out.reshape(threads, 3)
    assert (out[:, 0] == (threads + 2) // 3).all()
    assert (out[:, 1] == int(n >= threads)).all()
    assert (out[:, 2] == int(n < threads)).all()
    lanes = np.arange(threads) & 31
    assert (out2[lanes < 20] == (1 << 20) - 1).all()
    h = (0.5 * np.arange(threads)).astype(np.float16)
    src = np.where(lanes < 31, np.arange(threads) + 1, np.arange(threads))
    np.testing.assert_array_equal(out3, h[src].view(np.uint16))


# -- atomics and shared memory ----------------------------------------------------------------------------
def test_atomics(lib):
    n = 1000
    x = np.round(f32(n, seed=4) * 8) / 8  # multiples of 1/8: the float sum is exact in any order
    counters = np.array([0, -1, 1 << 30, 0, 0], np.int32)
    fsum, hist = np.zeros(1, np.float32), np.zeros(16, np.uint32)
    assert lib.run("simt_atomics", x, n, counters, fsum, hist) == ""
    assert list(counters) == [n, n - 1, 0, 2 * n, 7]
    assert fsum[0] == x.astype(np.float64).sum()
    np.testing.assert_array_equal(hist, np.bincount(np.arange(n) % 16, minlength=16))


@pytest.mark.parametrize("rows", [1, 32, 70])
def test_static_shared_2d(lib, rows):
    x = f32(rows, 32, seed=rows)
    y = np.zeros((32, rows), np.float32)
    assert lib.run("simt_transpose", x, y, rows) == ""
    np.testing.assert_array_equal(y, x.T)


@pytest.mark.parametrize("threads", [1, 32, 100, 1024])
def test_dynamic_shared(lib, threads):
    x = f32(3 * threads, seed=5)
    y = np.zeros_like(x)
    assert lib.run("simt_reverse", x, y, 3, threads) == ""
    np.testing.assert_array_equal(y, x.reshape(3, threads)[:, ::-1].ravel())


def test_dynamic_shared_limit(lib):
    """Above 48 KiB a kernel must raise its limit (cudaFuncSetAttribute), as on the GPU."""
    n = 20000  # 80000 bytes
    y = np.zeros(1, np.float32)
    err = lib.run("simt_big_dyn", y, n, 0)
    assert "big_dyn_kernel: dynamic shared memory of 80000 bytes exceeds the kernel's limit of 49152" in err
    assert lib.run("simt_big_dyn", y, n, 1) == ""
    assert y[0] == n


# -- fp16 -----------------------------------------------------------------------------------------------------
def edge_floats():
    h = np.float32
    tiny = [2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -26, 2.0 ** -25 * 1.0000001, 2.0 ** -26, 5 * 2.0 ** -26,
            2.0 ** -14, 2.0 ** -14 - 2.0 ** -25, 2.0 ** -14 - 2.0 ** -26, 1023 * 2.0 ** -24 + 2.0 ** -25,
            1e-30, 1e-45]
    big = [65504, 65519.99, 65520, 65536, 1e10, 3.4e38, np.inf, 2048 + 1, 2048 + 3, 4096 + 2, 4096 + 6]
    ties = [1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11, 1 + 2.0 ** -11 + 2.0 ** -20, 0.1, 1 / 3, 0.0]
    vals = np.array(tiny + big + ties, np.float64)
    return np.concatenate([vals, -vals]).astype(h)


def test_half_conversions(lib):
    rng = np.random.default_rng(6)
    bits = rng.integers(0, 2 ** 32, 200000, dtype=np.uint64).astype(np.uint32)
    # Random floats concentrated on fp16's exponent range (2^-28 .. 2^17), plus raw random bit patterns.
    scaled = (rng.random(200000) * 2 - 1) * np.exp2(rng.integers(-28, 18, 200000))
    x = np.concatenate([edge_floats(), scaled.astype(np.float32), bits.view(np.float32)])
    n = len(x)
    hbits = np.arange(n, dtype=np.uint64).astype(np.uint16)  # every fp16 pattern, repeatedly
    h, back = np.zeros(n, np.uint16), np.zeros(n, np.float32)
    assert lib.run("simt_half_convert", x, h, hbits, back, n) == ""
    with np.errstate(over="ignore"):
        ref = x.astype(np.float16)
    nan = np.isnan(ref)
    assert np.isnan(h.view(np.float16)[nan]).all()
    np.testing.assert_array_equal(h[~nan], ref.view(np.uint16)[~nan])
    ref_back = hbits.view(np.float16).astype(np.float32)
    nan = np.isnan(ref_back)
    assert np.isnan(back[nan]).all()
    np.testing.assert_array_equal(back[~nan].view(np.uint32), ref_back[~nan].view(np.uint32))


def f16_round(value: Fraction) -> np.float16:
    """The binary16 nearest to an exact rational (ties to even; from 65520 = 65504 + half an ulp up: inf)."""
    if abs(value) >= 65520:
        return np.float16(np.inf if value > 0 else -np.inf)
    x = np.float16(float(value))
    candidates = [x, np.nextafter(x, np.float16(np.inf)), np.nextafter(x, np.float16(-np.inf))]
    candidates = [c for c in candidates if np.isfinite(c)]
    return min(candidates, key=lambda c: (abs(Fraction(float(c)) - value), int(c.view(np.uint16)) & 1))


def test_half_arithmetic(lib):
    rng = np.random.default_rng(7)
    n = 3000
    a = (rng.standard_normal(n) * np.exp2(rng.integers(-12, 8, n))).astype(np.float16)
    b = (rng.standard_normal(n) * np.exp2(rng.integers(-12, 8, n))).astype(np.float16)
    c = (rng.standard_normal(n) * np.exp2(rng.integers(-20, 10, n))).astype(np.float16)
    a[:4] = [1.0, 65504, 2.0 ** -24, 1.0]
    b[:4] = [2.0 ** -11, 2.0, 0.5, 1 + 2.0 ** -10]
    c[:4] = [2.0 ** -24, -1.0, 2.0 ** -24, -1.0]
    out = np.zeros(8 * n, np.uint16)
    assert lib.run("simt_half_ops", a.view(np.uint16), b.view(np.uint16), c.view(np.uint16), out, n) == ""
    out = out.reshape(n, 8).view(np.float16)
    a32, b32, c32 = a.astype(np.float32), b.astype(np.float32), c.astype(np.float32)
    # numpy's fp16 arithmetic rounds the float32 result once: the correctly rounded + - * / (float has
    # 24 >= 2*11 + 2 bits, so rounding twice is innocuous).
    for col, ref in enumerate([a32 + b32, a32 - b32, a32 * b32, a32 / b32]):
        with np.errstate(over="ignore"):
            ref = ref.astype(np.float16)
        np.testing.assert_array_equal(out[:, col].view(np.uint16), ref.view(np.uint16), err_msg=f"op {col}")
    fma = np.array([f16_round(Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z)))
                    for x, y, z in zip(a, b, c)], np.float16)
    np.testing.assert_array_equal(out[:, 4].view(np.uint16), fma.view(np.uint16))
    np.testing.assert_array_equal(out[:, 5], np.fmax(a, b))
    with np.errstate(over="ignore"):
        s_lo, m_hi = (a32 + b32).astype(np.float16), (c32 * b32).astype(np.float16)
    np.testing.assert_array_equal(out[:, 6].view(np.uint16), s_lo.view(np.uint16) ^ m_hi.view(np.uint16))
    with np.errstate(over="ignore"):
        m_lo, s_hi = (a32 * b32).astype(np.float16), (c32 + b32).astype(np.float16)
    ref7 = (m_lo.astype(np.float32) + s_hi.astype(np.float32)).astype(np.float16)
    np.testing.assert_array_equal(out[:, 7].view(np.uint16), ref7.view(np.uint16))


# -- tensor-core helpers ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fast", [True, False], ids=["gather", "shuffles"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mma_fallback(lib, seed, fast):
    """Both fallbacks (the emulator's one-exchange path and the portable __shfl_sync one) against numpy."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((16, 16)).astype(np.float16)
    B = rng.standard_normal((16, 8)).astype(np.float16)
    C = rng.standard_normal((16, 8)).astype(np.float32)
    D = np.zeros((16, 8), np.float32)
    lib.set_fast_fragments(fast)
    try:
        assert lib.run("simt_mma", A.view(np.uint16), B.view(np.uint16), C, D) == ""
    finally:
        lib.set_fast_fragments(True)
    A64, B64 = A.astype(np.float64), B.astype(np.float64)
    ref = A64 @ B64 + C
    # Exact fp16 products summed in fp32 (16 terms, then + C): error <= 17 * 2^-24 * (sum |a||b| + |c|).
    bound = 17 * 2.0 ** -24 * (np.abs(A64) @ np.abs(B64) + np.abs(C))
    assert (np.abs(D - ref) <= bound).all(), np.abs(D - ref).max()


def test_ldmatrix_cp_async_lop3(lib):
    m = np.random.default_rng(8).integers(0, 2 ** 16, 256, dtype=np.uint64).astype(np.uint16)
    out = np.zeros(416, np.uint32)
    assert lib.run("simt_ldmatrix", m, out) == ""
    mats = m.reshape(4, 8, 8).astype(np.uint32)
    for lane in range(32):
        r, c = lane // 4, 2 * (lane % 4)
        for i in range(4):
            assert out[4 * lane + i] == mats[i, r, c] | mats[i, r, c + 1] << 16
            assert out[128 + 4 * lane + i] == mats[i, c, r] | mats[i, c + 1, r] << 16
    np.testing.assert_array_equal(out[256:384], m.view(np.uint32))
    x, y, z = out[0:128:4], out[1:128:4], out[2:128:4]
    np.testing.assert_array_equal(out[384:416], (x & y) | (x & z) | (y & z))


# -- device-side errors, races ---------------------------------------------------------------------------------
def test_device_index_error(lib):
    table = np.arange(5, dtype=np.float32)
    out = np.zeros(100, np.float32)
    idx = np.arange(100, dtype=np.int64) % 5
    assert lib.run("simt_gather", idx, table, out, 100, 5) == ""
    np.testing.assert_array_equal(out, table[idx])
    idx[70] = 7
    assert lib.run("simt_gather", idx, table, out, 100, 5) == "gather_kernel: index 7 out of range [0, 5)"
    with lib.exec() as ex:  # cleared with the context's errors; the next launch is clean
        lib.call(ex, "simt_gather", idx, table, out, 100, 5)
        assert ex.sync() != ""
        ex.clear()
        assert ex.sync() == ""
        idx[70] = 1
        lib.call(ex, "simt_gather", idx, table, out, 100, 5)
        assert ex.sync() == ""


def test_shuffled_schedule_exposes_races(lib):
    results = {}
    try:
        for seed in (0, 1, 2):
            lib.set_seed(seed)
            for barrier in (0, 1):
                out = np.zeros(256, np.float32)
                assert lib.run("simt_race", out, barrier) == ""
                results[seed, barrier] = out
    finally:
        lib.set_seed(0)
    expected = np.arange(1, 257, dtype=np.float32)
    for seed in (0, 1, 2):  # race-free with the barrier: the same result in every order
        np.testing.assert_array_equal(results[seed, 1], expected)
    # Without it, thread t reads s[t+1] before or after thread t+1 writes it, depending on the order.
    assert np.isnan(results[0, 0][:255]).all()  # in order: never written yet (shared memory starts as NaN)
    assert not np.array_equal(results[1, 0], results[2, 0], equal_nan=True)
    assert not np.isnan(results[1, 0]).all()


def test_order_dependence_helper(lib):
    out = np.zeros(256, np.float32)
    assert lib.order_dependence("simt_race", out, 1) == ""
    assert lib.order_dependence("simt_race", out, 0).startswith("simt_race: array argument 0 differs between seed 0")
    x = f32(64, 4, seed=9)
    assert lib.order_dependence("simt_shfl_wide", x, np.zeros_like(x), np.ones(64), np.zeros(64), 64) == ""


ERRORS = [
    (0, 64, 0, "error_kernel: barrier divergence: waits at __syncthreads (", ""),
    (1, 64, 0, "error_kernel: thread exited while other threads of its block wait at __syncthreads (",
     "(block (0,0,0), thread (5,0,0))"),
    (2, 64, 0, "error_kernel: shared memory out of bounds: s[32] outside [0, 32) (declared at ",
     "(block (0,0,0), thread (32,0,0))"),
    (3, 32, 64, "error_kernel: shared memory out of bounds: dyn[16] outside [0, 16)", "thread (16,0,0))"),
    (4, 64, 0, "error_kernel: shared memory out of bounds: grid2[4] outside [0, 4)", "thread (32,0,0))"),
    (5, 32, 0, "error_kernel: lanes of mask 0xffffffff reached different collectives: __shfl_xor_sync (", ""),
    (6, 64, 0, "error_kernel: deadlock: waits at __shfl_sync (", "for lane 1, which waits at __syncthreads ("),
    (7, 32, 0, "error_kernel: __shfl_xor_sync (", "with mask 0xffffffff: lane 3 has exited"),
    (8, 32, 0, "error_kernel: stack overflow (the emulator gives each thread 256 KiB)", "thread (0,0,0))"),
    (9, 32, 0, "error_kernel: invalid memory access at address ", "thread (0,0,0))"),
    (10, 32, 0, "error_kernel: shared memory out of bounds: s[32] outside [0, 32)", "thread (16,0,0))"),
]


@pytest.mark.parametrize("what,threads,dyn,start,contains", ERRORS, ids=[
    "divergence", "exit-at-barrier", "static-oob", "dynamic-oob", "2d-oob", "mismatched-shuffles", "deadlock",
    "shuffle-after-exit", "stack-overflow", "bad-address", "pointer-oob"])
def test_errors_are_reported(lib, what, threads, dyn, start, contains):
    out = np.zeros(threads, np.float32)
    err = lib.run("simt_error", what, out, threads, dyn)
    assert err.startswith(start), err
    assert contains in err and "\n" not in err, err
    assert err.endswith(")")
    # The emulator is usable after an aborted launch.
    x, y = np.ones(1024, np.float32), np.zeros(2, np.float32)
    assert lib.run("simt_block_sum", x, y, 1024, 1, 1024) == "" and y[0] == 1024


def test_spin_wait_is_reported_not_hung(lib):
    lib.set_watchdog(1)
    try:
        err = lib.run("simt_error", 11, np.zeros(32, np.float32), 32, 0)
    finally:
        lib.set_watchdog(30)
    assert err.startswith("error_kernel: no progress for 1 s: the thread runs without reaching a barrier"), err
    assert err.endswith("(block (0,0,0), thread (0,0,0))") and "\n" not in err


def test_two_emulator_libraries_in_one_process(lib, tmp_path):
    """Each library has its own emulator; the later one's watchdog handler passes the signal on to the earlier."""
    x, y = np.ones(64, np.float32), np.zeros(2, np.float32)
    assert lib.run("simt_block_sum", x, y, 64, 1, 64) == ""  # lib's watchdog handler first, then other's
    other = build_kernels([KERNELS, 'extern "C" int simt_other(void) { return 7; }\n'], str(tmp_path))
    assert other._name != lib._name and other.simt_other() == 7
    assert other.run("simt_block_sum", x, y, 64, 1, 64) == "" and y[0] == 64
    lib.set_watchdog(1)
    try:
        err = lib.run("simt_error", 11, np.zeros(32, np.float32), 32, 0)
    finally:
        lib.set_watchdog(30)
    assert err.startswith("error_kernel: no progress for 1 s"), err
    assert other.run("simt_block_sum", x, y, 64, 1, 64) == "" and y[0] == 64


@pytest.mark.parametrize("threads", [2048, 0])
def test_bad_block_size(lib, threads):
    err = lib.run("simt_error", 0, np.zeros(4, np.float32), threads, 0)
    assert err.startswith(f"error_kernel: invalid launch configuration: block ({threads},1,1)"), err


def test_first_error_wins_until_cleared(lib):
    with lib.exec() as ex:
        out = np.zeros(64, np.float32)
        lib.call(ex, "simt_error", 2, out, 64, 0)
        lib.call(ex, "simt_error", 0, out, 64, 0)
        assert "shared memory out of bounds" in ex.sync()
        ex.clear()
        assert ex.sync() == ""


# -- nvcc -----------------------------------------------------------------------------------------------------
def test_nvcc_sm80_sm90(tmp_path):
    objects = nvcc_compile([KERNELS], archs=("sm_80", "sm_90"), tmpdir=str(tmp_path))
    code = sass(objects["simt_tests.cu"])
    # The tensor-core helpers are the real instructions on sm_80+: HMMA (mma.sync), LDSM (ldmatrix),
    # LDGSTS (cp.async), once per arch.
    for op in ("HMMA", "LDSM", "LDGSTS"):
        assert code.count(op) >= 2, op


# -- the other context switches ------------------------------------------------------------------------------------
MAIN = os.path.join(os.path.dirname(KERNELS), "simt_main.cpp")


@pytest.mark.parametrize("build", ["aarch64", "ucontext", "asan"])
def test_other_context_switches(tmp_path, build):
    """The hand-written aarch64 switch (under qemu), the ucontext fallback and an AddressSanitizer build (fiber
    switches annotated, no leak, no false stack report) run the same checks."""
    import shutil
    import subprocess

    from .harness import RUNTIME

    cxx, run = {"aarch64": ("aarch64-linux-gnu-g++", ["qemu-aarch64"]), "ucontext": ("g++", []),
                "asan": ("g++", [])}[build]
    missing = [t for t in (cxx, *run) if not shutil.which(t)]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (apt-get install g++-aarch64-linux-gnu qemu-user)")
    exe = str(tmp_path / "simt_main")
    flags = {"aarch64": ["-static"], "ucontext": ["-DTCC_SIMT_UCONTEXT"],
             "asan": ["-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]}[build]
    subprocess.run([cxx, "-std=c++17", "-O1", *flags, "-DTCC_SIMT", "-I", RUNTIME, "-x", "c++", KERNELS, "-x", "none",
                    os.path.join(RUNTIME, "device_simt.cpp"), MAIN, "-o", exe, "-lpthread"], check=True)
    proc = subprocess.run([*run, exe], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.endswith("0 failed\n"), proc.stdout + proc.stderr
    assert proc.stdout.count("ok ") == 7


def test_device_memory(lib):
    """tcc_device_alloc: zero-filled, aligned, small and large (mmap'd); copies in and out; not host-visible."""
    import ctypes

    lib.tcc_device_alloc.restype = ctypes.c_void_p
    lib.tcc_device_alloc.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
    lib.tcc_device_free.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    for name in ("tcc_device_copy_in", "tcc_device_copy_out"):
        getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    assert lib.tcc_device_host_visible() == 0
    with lib.exec() as ex:
        for size in (1, 1000, 3 << 20):
            p = lib.tcc_device_alloc(ex.handle, size, None)
            assert p and p % 64 == 0
            back = np.ones(size, np.uint8)
            lib.tcc_device_copy_out(ex.handle, back.ctypes.data, p, size)
            assert not back.any()
            data = np.arange(size, dtype=np.uint64).astype(np.uint8)
            lib.tcc_device_copy_in(ex.handle, p, data.ctypes.data, size)
            lib.tcc_device_copy_out(ex.handle, back.ctypes.data, p, size)
            np.testing.assert_array_equal(back, data)
            lib.tcc_device_free(ex.handle, p, size)
        why = ctypes.c_char_p()
        assert not lib.tcc_device_alloc(ex.handle, -1, ctypes.byref(why)) and why.value == b"negative allocation size"
