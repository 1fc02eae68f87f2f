"""Benchmark the x86 f32 gemm kernel (not a test): GEMV bandwidth at M=1 and GFLOP/s at M=128.

    python benchmarks/kernels_gemm.py [--repeat 20] [--build-dir build/bench-gemm]

M=1, K=N=4096 streams a 64 MiB packed weight matrix per call: reported as GB/s of weights read,
"hot" (the same matrix every call, which may sit in a large L3) and "cold" (rotating over copies
totalling more than the L3, so every call reads DRAM). M=128 is compute bound: GFLOP/s. Each figure
is the best of --repeat calls, with a null pool (1 thread) and with a pool of 2 threads. M=128 runs each ISA
path of the kernel the CPU has (AVX2, and AVX-512 F where present), interleaved, so their ratio is side by side.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import time

import numpy as np

from tcc.backends.x86.kernels_linalg import VARIANTS
from tcc.codegen.families.packing import pack_f32_panels
from tcc.backends.x86.target import TARGET, host_supports
from tcc.codegen.cmake import REPO_ROOT, build_library
from tcc.codegen.kernels import write_kernels


def load(build_dir: str):
    spec = next(s for s in VARIANTS if s.family == "gemm" and s.variant == "avx2")
    sources = write_kernels([spec], os.path.join(build_dir, "kernels"))
    lib = ctypes.CDLL(build_library(sources, build_dir, TARGET, "bench_gemm"))
    fn = getattr(lib, spec.name)
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                   ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.tcc_pool_create.restype = ctypes.c_void_p
    lib.tcc_pool_create.argtypes = [ctypes.c_int]
    lib.tcc_pool_destroy.argtypes = [ctypes.c_void_p]
    isa = getattr(lib, spec.name + "_isa")
    isa.argtypes, isa.restype = [ctypes.c_int], ctypes.c_int
    return lib, fn, isa


def aligned(a: np.ndarray, align: int = 64) -> np.ndarray:
    """A copy of a at a 64-byte aligned address, as weights sit in an artifact's weights.bin."""
    raw = np.empty(a.nbytes + align, np.uint8)
    off = -raw.ctypes.data % align
    out = raw[off:off + a.nbytes].view(a.dtype)
    out[:] = a
    return out


def best_time(fn, M, K, N, weights, pool, repeat):
    A = np.random.default_rng(0).standard_normal((M, K)).astype(np.float32)
    C = np.empty((M, N), np.float32)
    bias = np.zeros(N, np.float32)
    times = []
    for i in range(repeat + 1):
        Bp = weights[i % len(weights)]
        t = time.perf_counter()
        fn(A.ctypes.data, K, Bp.ctypes.data, bias.ctypes.data, C.ctypes.data, N, M, N, K, pool)
        times.append(time.perf_counter() - t)
    return min(times[1:])  # the first call warms pages and the pool


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--build-dir", default=os.path.join(REPO_ROOT, "build", "bench-gemm"))
    ap.add_argument("--cold-copies", type=int, default=4, help="weight copies for the cold GEMV (64 MiB each)")
    args = ap.parse_args()
    ok, why = host_supports()
    if not ok:
        raise SystemExit(f"cannot run the AVX2 benchmark here: {why}")
    lib, fn, set_isa = load(args.build_dir)
    paths = {"avx2": 0} | ({"avx512": 2} if set_isa(99) == 2 else {})
    K = N = 4096
    rng = np.random.default_rng(1)
    hot = [aligned(pack_f32_panels(rng.standard_normal((K, N)).astype(np.float32)))]
    cold = hot + [aligned(pack_f32_panels(rng.standard_normal((K, N)).astype(np.float32)))
                  for _ in range(args.cold_copies - 1)]
    nbytes = hot[0].nbytes
    for threads in (1, 2):
        pool = lib.tcc_pool_create(threads) if threads > 1 else None
        t_hot = best_time(fn, 1, K, N, hot, pool, args.repeat)
        t_cold = best_time(fn, 1, K, N, cold, pool, args.repeat)
        t_mm = {name: float("inf") for name in paths}
        for _ in range(3):  # rounds alternate the paths, so a busy moment does not favor one
            for name, level in paths.items():
                set_isa(level)
                t_mm[name] = min(t_mm[name], best_time(fn, 128, K, N, hot, pool, max(3, args.repeat // 4)))
        set_isa(99)
        mm = "  ".join(f"{name} {2 * 128 * K * N / t / 1e9:6.1f} GFLOP/s ({t * 1e3:.1f} ms)" for name, t in t_mm.items())
        print(f"threads={threads}: M=1 K=N=4096  hot {nbytes / t_hot / 1e9:6.1f} GB/s ({t_hot * 1e3:.2f} ms)"
              f"  cold {nbytes / t_cold / 1e9:6.1f} GB/s ({t_cold * 1e3:.2f} ms) | M=128 {mm}")
        if pool:
            lib.tcc_pool_destroy(pool)


if __name__ == "__main__":
    main()
