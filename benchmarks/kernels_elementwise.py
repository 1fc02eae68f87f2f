"""Benchmark the AVX2 elementwise kernels (not a test): add, exp, softmax and rmsnorm, one thread.

    python benchmarks/kernels_elementwise.py [--repeat 10] [--threads 1] [--build-dir build/bench-elementwise]

- add f32, 16M elements (a + b -> out, 192 MiB moved): GB/s of memory traffic (reads + write).
- exp f32, 16M elements, in place: Gelem/s.
- softmax and rmsnorm over 4096 x 4096 f32 (64 MiB): GB/s (read + write) and ms per call.
Each figure is the best of --repeat calls with a null pool (one thread) unless --threads > 1. The scalar
variants are timed too, for comparison. Compare with the machine's memory bandwidth (shared/reference.md:
~13-15 GB/s read on one thread).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import time

import numpy as np

from tcc.backends.x86.kernels_elementwise import VARIANTS
from tcc.backends.x86.target import TARGET, host_supports
from tcc.codegen.cmake import REPO_ROOT, build_library
from tcc.codegen.kernels import write_kernels

N = 16 * 1024 * 1024
ROWS = COLS = 4096
BENCHED = {("binary", "add"), ("unary", "exp"), ("softmax", "softmax"), ("norm", "rmsnorm")}


def load(build_dir: str):
    specs = [s for s in VARIANTS if (s.family, s.param("op")) in BENCHED and s.param("dtype") == "f32"]
    lib = ctypes.CDLL(build_library(write_kernels(specs, os.path.join(build_dir, "kernels")), build_dir,
                                    TARGET, "bench_elementwise"))
    lib.tcc_pool_create.restype = ctypes.c_void_p
    lib.tcc_pool_create.argtypes = [ctypes.c_int]
    lib.tcc_pool_destroy.argtypes = [ctypes.c_void_p]
    kernels = {}
    for s in specs:
        fn = getattr(lib, s.name)
        fn.restype = None
        kernels[(s.family, s.variant)] = fn
    return lib, kernels


def best(call, repeat: int) -> float:
    call()  # warm pages, caches and the pool
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return min(times)


def bench(kernels, variant: str, pool, repeat: int) -> list[str]:
    rng = np.random.default_rng(0)
    p = ctypes.c_void_p
    a, b = rng.standard_normal(N, dtype=np.float32), rng.standard_normal(N, dtype=np.float32)
    out = np.empty_like(a)
    shape, strides = np.array([N], np.int64), np.array([1], np.int64)
    add = kernels[("binary", variant)]
    t = best(lambda: add(p(a.ctypes.data), p(b.ctypes.data), p(out.ctypes.data), ctypes.c_int32(1),
                         p(shape.ctypes.data), p(strides.ctypes.data), p(strides.ctypes.data), p(pool)), repeat)
    lines = [f"add     16M f32        {3 * 4 * N / t / 1e9:7.2f} GB/s   ({t * 1e3:7.2f} ms)"]

    x = (rng.standard_normal(N, dtype=np.float32) * 10).astype(np.float32)
    exp = kernels[("unary", variant)]
    t = best(lambda: exp(p(x.ctypes.data), p(out.ctypes.data), ctypes.c_int64(N), ctypes.c_float(0),
                         ctypes.c_float(0), p(pool)), repeat)
    lines.append(f"exp     16M f32        {N / t / 1e9:7.2f} Gelem/s ({t * 1e3:7.2f} ms)")

    x = rng.standard_normal((ROWS, COLS), dtype=np.float32)
    y = np.empty_like(x)
    softmax = kernels[("softmax", variant)]
    t = best(lambda: softmax(p(x.ctypes.data), p(y.ctypes.data), ctypes.c_int64(ROWS), ctypes.c_int64(COLS),
                             ctypes.c_int64(1), p(pool)), repeat)
    lines.append(f"softmax 4096x4096      {2 * x.nbytes / t / 1e9:7.2f} GB/s   ({t * 1e3:7.2f} ms)")

    gamma = rng.standard_normal(COLS, dtype=np.float32)
    rmsnorm = kernels[("norm", variant)]
    t = best(lambda: rmsnorm(p(x.ctypes.data), p(gamma.ctypes.data), None, p(y.ctypes.data), ctypes.c_int64(ROWS),
                             ctypes.c_int64(COLS), ctypes.c_float(1e-5), p(pool)), repeat)
    lines.append(f"rmsnorm 4096x4096      {2 * x.nbytes / t / 1e9:7.2f} GB/s   ({t * 1e3:7.2f} ms)")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="1: null pool; more: a pool of that many threads")
    ap.add_argument("--build-dir", default=os.path.join(REPO_ROOT, "build", "bench-elementwise"))
    args = ap.parse_args()
    ok, why = host_supports()
    if not ok:
        raise SystemExit(f"cannot run the x86 kernels here: {why}")
    lib, kernels = load(args.build_dir)
    pool = lib.tcc_pool_create(args.threads) if args.threads > 1 else None
    try:
        for variant in ("avx2", "scalar"):
            print(f"[{variant}, {args.threads} thread{'s' if args.threads > 1 else ''}]")
            for line in bench(kernels, variant, pool, args.repeat):
                print("  " + line)
    finally:
        if pool:
            lib.tcc_pool_destroy(pool)


if __name__ == "__main__":
    main()
