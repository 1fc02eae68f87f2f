"""The tcc runtime: thread pool, error state (through the kernel library), and the C++ helpers for
model programs (MappedFile, Arena, .npy I/O) through a self-test executable built with build_library."""
from __future__ import annotations

import ctypes
import os
import subprocess
import threading

import numpy as np
import pytest

from tcc.backends.x86.target import TARGET, host_supports

HERE = os.path.dirname(os.path.abspath(__file__))
TASK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int)


def parallel_for(lib, pool, n, grain, body):
    fn = lib.tcc_parallel_for
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, TASK, ctypes.c_void_p]
    cb = TASK(lambda ctx, b, e, t: body(b, e, t))
    fn(pool, n, grain, cb, None)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("n,grain", [(1, 1), (10, 1), (1000, 7), (1000, 5000), (17, 0)])
def test_parallel_for_covers_range(x86_kernel_lib, threads, n, grain):
    lib = x86_kernel_lib
    chunks, lock = [], threading.Lock()

    def body(b, e, t):
        with lock:
            chunks.append((b, e, t))

    with lib.pool(threads) as pool:
        assert lib.tcc_pool_threads(pool) == threads
        parallel_for(lib, pool, n, grain, body)
    covered = sorted((b, e) for b, e, _ in chunks)
    assert covered[0][0] == 0 and covered[-1][1] == n
    assert all(e0 == b1 for (_, e0), (b1, _) in zip(covered, covered[1:])), covered
    assert all(0 <= t < threads for _, _, t in chunks)
    assert all(e - b >= max(grain, 1) for b, e in covered[:-1]), "chunks smaller than grain"


def test_nested_parallel_for_runs_serially(x86_kernel_lib):
    lib = x86_kernel_lib
    inner, lock = [], threading.Lock()
    with lib.pool(2) as pool:
        def outer(b, e, t):
            def body(ib, ie, it):
                with lock:
                    inner.append((ib, ie, it == t))  # whole range, on the calling thread
            parallel_for(lib, pool, 50, 1, body)

        parallel_for(lib, pool, 8, 1, outer)
    assert inner and all(x == (0, 50, True) for x in inner)


def test_null_pool(x86_kernel_lib):
    lib = x86_kernel_lib
    assert lib.tcc_pool_threads(None) == 1
    seen = []
    parallel_for(lib, None, 100, 1, lambda b, e, t: seen.append((b, e, t)))
    assert seen == [(0, 100, 0)]
    lib.tcc_pool_destroy(None)  # a no-op


def test_first_error_wins(x86_kernel_lib):
    c = x86_kernel_lib
    c.tcc_clear_error()
    assert not c.tcc_error_pending() and c.tcc_error_message() == b""
    c.tcc_raise(b"Gather index %lld out of range [-%lld, %lld)", ctypes.c_longlong(7), ctypes.c_longlong(5),
                ctypes.c_longlong(5))
    c.tcc_raise(b"second error")
    assert c.tcc_error_pending()
    assert c.tcc_error_message() == b"Gather index 7 out of range [-5, 5)"
    c.tcc_clear_error()
    assert not c.tcc_error_pending()


@pytest.fixture(scope="module")
def selftest(tmp_path_factory):
    ok, reason = host_supports(TARGET)
    if not ok:
        pytest.skip(reason)
    from tcc.codegen.cmake import build_library

    build = tmp_path_factory.mktemp("runtime_selftest")
    lib_src = build / "empty_kernel.cpp"
    lib_src.write_text('#include "tcc_kernel.h"\nextern "C" int tcc_selftest_dummy() { return 0; }\n')
    build_library([str(lib_src)], str(build), TARGET, "selftest",
                  extra_executables={"runtime_selftest": [os.path.join(HERE, "runtime_selftest.cpp")]})
    exe = str(build / "runtime_selftest")

    def run(*args, ok=True):
        proc = subprocess.run([exe, *map(str, args)], capture_output=True, text=True)
        assert (proc.returncode == 0) == ok, proc.stderr
        return proc.stdout.strip() if ok else proc.stderr.strip()

    run.exe = exe
    return run


def test_selftest_binary_is_static_cxx(selftest):
    """extra_executables link libstdc++/libgcc statically, so the run binary travels alone."""
    ldd = subprocess.run(["ldd", selftest.exe], capture_output=True, text=True).stdout
    assert "libstdc++" not in ldd and "libgcc_s" not in ldd, ldd


@pytest.mark.parametrize("dtype,shape", [("<f4", (2, 3)), ("<f2", (5,)), ("<i8", ()), ("<i4", (0, 4)),
                                         ("|i1", (3, 1, 2)), ("|u1", (7,)), ("|b1", (2, 2))])
def test_npy_roundtrip(selftest, tmp_path, dtype, shape):
    rng = np.random.default_rng(0)
    a = (rng.standard_normal(shape) * 50).astype(np.dtype(dtype))
    src, dst = tmp_path / "in.npy", tmp_path / "out.npy"
    np.save(src, a)
    assert selftest("npy-copy", src, dst) == f"{dtype} {len(shape)}"
    b = np.load(dst)
    assert b.dtype == a.dtype and b.shape == a.shape
    np.testing.assert_array_equal(b, a)


@pytest.mark.parametrize("mutate,expected", [
    (lambda b: b"XX" + b[2:], "bad .npy header at offset 0"),
    (lambda b: b.replace(b"'<f4'", b"'>f4'"), "unsupported dtype '>f4'"),
    (lambda b: b.replace(b"False", b"True "), "Fortran-order"),
    (lambda b: b.replace(b"'shape': (2, 3)", b"'shape': (2, x)"), "bad .npy header at offset"),
    (lambda b: b[:-4], ".npy data has 20 bytes, expected 24"),
])
def test_npy_bad_files(selftest, tmp_path, mutate, expected):
    src = tmp_path / "in.npy"
    np.save(src, np.zeros((2, 3), np.float32))
    src.write_bytes(mutate(src.read_bytes()))
    err = selftest("npy-copy", src, tmp_path / "out.npy", ok=False)
    assert expected in err and str(src) in err and "\n" not in err


def test_mapped_file(selftest, tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(bytes(range(10)))
    assert "is past its end" in selftest("map", f, 10, ok=False)  # maps, sums, then the bounds check throws
    err = selftest("map", f, 12, ok=False)
    assert "has 10 bytes, expected 12" in err
    err = selftest("map", tmp_path / "missing.bin", -1, ok=False)
    assert "missing.bin" in err and "No such file" in err and "errno" in err


def test_arena(selftest):
    assert selftest("arena", 3 << 20) == "1 1"


def test_pool_stress_and_nesting(selftest):
    bad, inner_total, _us_per_call = selftest("pool", 2, 20000).split()
    assert bad == "0" and inner_total == str(64 * 100)
