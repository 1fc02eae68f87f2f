"""Benchmark the kvattention kernels (not a test): decode latency and prefill throughput, TinyLlama shapes.

    python benchmarks/kernels_kvattention.py [--repeat 50] [--variant avx2] [--build-dir build/bench-kvattention]

Shapes are TinyLlama-1.1B's attention (Hq=32, Hkv=4, D=Dv=64, rotate-half RoPE over all 64 dims), B=1.
Decode (S=1) at past = 128, 512, 2048: the latency of one call (one layer), and the K/V cache bytes it reads
per second ((past + 1) * Hkv * (D + Dv) * 4 bytes; the cache of one layer is at most 2 MiB here, so it
is read from L2/L3, not DRAM). Prefill of 128 and 512 tokens into an empty cache: GFLOP/s counting
2 * (D + Dv) flops per (query head, attended key) pair, the causal half only. Each figure is the best of
--repeat calls, with a null pool (1 thread) and with a pool of 2 threads.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import time

import numpy as np
import tcc.codegen.families  # noqa: F401  (registers the kernel families the specs name)
from tcc.backends.x86.kernels_kv import VARIANTS
from tcc.backends.x86.target import TARGET, host_supports
from tcc.codegen.cmake import REPO_ROOT, build_library
from tcc.codegen.kernels import write_kernels

HQ, HKV, D, DV = 32, 4, 64, 64


def load(build_dir: str, variant: str):
    spec = next(s for s in VARIANTS if s.variant == variant)
    sources = write_kernels([spec], os.path.join(build_dir, "kernels"))
    lib = ctypes.CDLL(build_library(sources, build_dir, TARGET, f"bench_kvattention_{variant}"))
    fn = getattr(lib, spec.name)
    fn.restype = None
    P, I64, I32, F32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_float
    # ... rotary_dim, rope_mode, scale, window, cache_rows, alibi_slopes, softcap, pool
    fn.argtypes = [P] * 6 + [I64] * 8 + [P] * 6 + [I64, I32, F32, I64, I64, P, F32, P]
    lib.tcc_pool_create.restype = ctypes.c_void_p
    lib.tcc_pool_create.argtypes = [ctypes.c_int]
    lib.tcc_pool_destroy.argtypes = [ctypes.c_void_p]
    return lib, fn


class Problem:
    """Inputs and a cache of `capacity` positions for S new tokens after `past` cached ones."""

    def __init__(self, S: int, past: int):
        rng = np.random.default_rng(0)
        self.S, self.past = S, past
        capacity = past + S
        self.q = rng.standard_normal((1, HQ, S, D)).astype(np.float32)
        self.k = rng.standard_normal((1, HKV, S, D)).astype(np.float32)
        self.v = rng.standard_normal((1, HKV, S, DV)).astype(np.float32)
        self.kc = rng.standard_normal((1, HKV, capacity, D)).astype(np.float32)
        self.vc = rng.standard_normal((1, HKV, capacity, DV)).astype(np.float32)
        self.out = np.empty((1, HQ, S, DV), np.float32)
        ang = np.arange(capacity)[:, None] * 10000.0 ** (-np.arange(0, D, 2) / D)[None, :]
        self.cos, self.sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
        self.strides = [np.array([a.strides[i] // 4 for i in range(4)], np.int64)
                        for a in (self.q, self.k, self.v, self.out)]

    def call(self, fn, pool):
        fn(self.q.ctypes.data, self.k.ctypes.data, self.v.ctypes.data, self.kc.ctypes.data, self.vc.ctypes.data,
           self.out.ctypes.data, 1, HQ, HKV, self.S, self.past, self.kc.shape[2], D, DV,
           *(s.ctypes.data for s in self.strides), self.cos.ctypes.data, self.sin.ctypes.data, D, 1,
           1.0 / np.sqrt(D), 0, self.kc.shape[2], None, 0.0, pool)

    def kv_bytes(self) -> int:
        return (self.past + self.S) * HKV * (D + DV) * 4

    def flops(self) -> int:
        keys = sum(self.past + s + 1 for s in range(self.S))
        return 2 * (D + DV) * HQ * keys


def best_time(fn, problem: Problem, pool, repeat: int) -> float:
    times = []
    for _ in range(repeat + 1):
        t = time.perf_counter()
        problem.call(fn, pool)
        times.append(time.perf_counter() - t)
    return min(times[1:])  # the first call warms pages and the pool


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--variant", default="avx2", choices=[s.variant for s in VARIANTS])
    ap.add_argument("--build-dir", default=os.path.join(REPO_ROOT, "build", "bench-kvattention"))
    args = ap.parse_args()
    ok, why = host_supports()
    if not ok:
        raise SystemExit(f"cannot run the AVX2 benchmark here: {why}")
    lib, fn = load(args.build_dir, args.variant)
    print(f"kvattention {args.variant}: B=1 Hq={HQ} Hkv={HKV} D=Dv={D}, rope half over {D} dims")
    for threads in (1, 2):
        pool = lib.tcc_pool_create(threads) if threads > 1 else None
        for past in (128, 512, 2048):
            p = Problem(1, past)
            t = best_time(fn, p, pool, args.repeat)
            print(f"threads={threads} decode past={past:5d}: {t * 1e6:8.1f} us  {p.kv_bytes() / t / 1e9:6.1f} GB/s KV read"
                  f"  ({p.flops() / t / 1e9:5.1f} GFLOP/s)")
        for S in (128, 512):
            p = Problem(S, 0)
            t = best_time(fn, p, pool, max(3, args.repeat // 5))
            print(f"threads={threads} prefill S={S:4d}:   {t * 1e3:8.2f} ms  {p.flops() / t / 1e9:6.1f} GFLOP/s")
        if pool:
            lib.tcc_pool_destroy(pool)


if __name__ == "__main__":
    main()
