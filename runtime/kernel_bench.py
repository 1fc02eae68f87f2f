"""Kernel ablation benchmarks: time every variant of a quantized Linear kernel on one shape.

    from tcc.runtime.kernel_bench import qlinear_ablation, format_table
    print(format_table(qlinear_ablation("w4a8", 1, 4096, 32000, threads=2, repeat=10)))

`qlinear_ablation` builds the five x86 variants of a qlinear family (naive, unroll, threads, simd, all;
backends/x86/kernels_quant.py) into one shared library with the tcc runtime (codegen/cmake.py:
build_library, ccache makes rebuilds cheap), makes random packed weights of the shape (int4 codes with
fp16 scales, symmetric, for w4a8 / w4a32; int8 per-channel for w8a8) and times each variant: the first
call warms pages and the thread pool, then `repeat` timed calls (slow variants get fewer, so that one
variant takes about `budget_s`). Figures per variant: best and median ms, GB/s of packed weights read
(codes + scales + zeros, at the best time), GOPS (2*M*N*K / best) and the speedup of the best time over
naive's. The activations are quantized beforehand (per row and group), so only
the qlinear kernel is timed. `threads` sizes the pool given to every variant (naive, unroll and simd
ignore it).
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import statistics
import time

import numpy as np

QMODES = ("w4a8", "w4a32", "w8a8")
ORDER = ("naive", "unroll", "threads", "simd", "all")

_P, _I64, _I32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32
_libs: dict[str, ctypes.CDLL] = {}


def load_kernels(specs, build_dir: str) -> ctypes.CDLL:
    """A shared library of the given x86 kernels plus the runtime (thread pool), built in `build_dir`
    (ccache makes rebuilds cheap) and loaded once per process. The library's name carries a digest of
    the kernel names: dlopen caches by path, so a library rebuilt with other kernels needs a new one."""
    import hashlib

    from ..backends.x86.target import TARGET, host_supports
    from ..codegen.cmake import build_library
    from ..codegen.kernels import write_kernels

    names = sorted({s.name for s in specs})
    name = "tcc_bench_" + hashlib.sha256("\n".join(names).encode()).hexdigest()[:12]
    key = os.path.join(build_dir, name)
    if key not in _libs:
        ok, why = host_supports(TARGET)
        if not ok:
            raise RuntimeError(f"cannot run the x86 kernels here: {why}")
        os.makedirs(build_dir, exist_ok=True)
        # Processes sharing the build directory (two benchmarks, two compiles with --tune) take turns: one
        # builds, the next finds the library current; none loads a half-written one.
        with open(os.path.join(build_dir, ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            sources = write_kernels(specs, os.path.join(build_dir, "kernels", name))
            lib = ctypes.CDLL(build_library(sources, build_dir, TARGET, name))
        # the execution context (tcc_device.h); tcc_pool_create/destroy are its older names (backends/x86/tuning.py)
        for create, destroy in (("tcc_exec_create", "tcc_exec_destroy"), ("tcc_pool_create", "tcc_pool_destroy")):
            getattr(lib, create).argtypes, getattr(lib, create).restype = [ctypes.c_int], ctypes.c_void_p
            getattr(lib, destroy).argtypes, getattr(lib, destroy).restype = [ctypes.c_void_p], None
        _libs[key] = lib
    return _libs[key]


def _load(build_dir: str) -> ctypes.CDLL:
    """The library of every quantized kernel variant."""
    from ..backends.x86.kernels_quant import VARIANTS

    return load_kernels(VARIANTS, build_dir)


def _fn(lib, spec):
    fn = getattr(lib, spec.name)
    fn.restype = None
    if spec.family == "qlinear_w4a8":
        fn.argtypes = [_P, _P, _P, _I64, _P, _P, _P, _P, _P, _I64, _I64, _I64, _I64, _I64, _P]
    elif spec.family == "qlinear_w4a32":
        fn.argtypes = [_P, _I64, _P, _P, _P, _P, _P, _I64, _I64, _I64, _I64, _I64, _P]
    elif spec.family == "qlinear_w8a8":
        fn.argtypes = [_P, _P, _P, _I64, _P, _P, _P, _P, _I64, _I64, _I64, _I64, _I64, _P]
    elif spec.family == "gemm":
        fn.argtypes = [_P, _I64, _P, _P, _P, _I64, _I64, _I64, _I64, _P]
    else:
        raise ValueError(f"no benchmark operands for kernel family {spec.family!r}")
    return fn


class _Problem:
    """Random operands of one Linear kernel call (qm "w4a8", "w4a32", "w8a8" or "f32"), packed for the x86
    kernels, and the call itself.

    `copies` > 1 keeps that many copies of the packed weights and each call reads the next one, so that a
    decode GEMV streams its weights from memory as in a model (one copy of a small layer stays in cache)."""

    def __init__(self, qm: str, m: int, k: int, n: int, group: int, seed: int = 0, copies: int = 1):
        from ..backends.x86 import packing_quant as pq
        from ..ir.quant_arith import quantize_activations

        rng = np.random.default_rng(seed)
        self.qm, self.m, self.k, self.n, self.group = qm, m, k, n, group
        x = rng.standard_normal((m, k)).astype(np.float32)
        self.y = np.empty((m, n), np.float32)
        self.bias, self.ws, self.wz = None, None, None
        if qm == "f32":
            from ..codegen.families.packing import pack_f32_panels
            w = pack_f32_panels(rng.standard_normal((k, n)).astype(np.float32))
            self.x = x
        elif qm == "w8a8":
            w = pq.pack_q8(rng.integers(-127, 128, (n, k), dtype=np.int8))
            self.ws = pq.pack_q8_scales(rng.random(n).astype(np.float32) * 0.01)
            # activations as the w8a8 scheme quantizes them (one group per row), whatever `group` says
            from ..passes.schemes import act_group_for, get_scheme

            self.group = group = act_group_for(get_scheme("w8a8"), k)
            self.xq, self.xs, self.xsum = (np.ascontiguousarray(a) for a in quantize_activations(x, group, pad_to=pq.KPAD))
        else:
            g = -(-k // group)
            codes = rng.integers(0, 16, (n, k), dtype=np.uint8)
            w = pq.pack_q4_quad(codes)  # both int4 families read the quad layout
            self.ws = pq.pack_q4_scales((rng.random((n, g)) * 0.01 + 1e-3).astype(np.float16).astype(np.float32))
            # symmetric: no zero points (8)
            if qm == "w4a8":
                self.xq, self.xs, self.xsum = (np.ascontiguousarray(a) for a in quantize_activations(x, group, pad_to=pq.KPAD))
            else:
                self.x = x
        self.weights = [w]
        self.calls = 0
        self.weight_bytes = w.nbytes + (self.ws.nbytes if self.ws is not None else 0)
        self.stream(copies)

    def stream(self, copies: int) -> "_Problem":
        """Keep `copies` copies of the packed weights (calls rotate through them); returns self."""
        self.weights = [self.weights[0]] + [self.weights[0].copy() for _ in range(copies - 1)]
        return self

    def call(self, fn, pool) -> None:
        p = lambda a: None if a is None else a.ctypes.data
        m, n, k = self.m, self.n, self.k
        w = self.weights[self.calls % len(self.weights)]
        self.calls += 1
        if self.qm == "w4a8":
            fn(p(self.xq), p(self.xs), p(self.xsum), self.xq.shape[1], p(w), p(self.ws), p(self.wz), p(self.bias),
               p(self.y), n, m, n, k, self.group, pool)
        elif self.qm == "w4a32":
            fn(p(self.x), k, p(w), p(self.ws), p(self.wz), p(self.bias), p(self.y), n, m, n, k, self.group, pool)
        elif self.qm == "w8a8":
            fn(p(self.xq), p(self.xs), p(self.xsum), self.xq.shape[1], p(w), p(self.ws), p(self.bias), p(self.y), n, m,
               n, k, self.group, pool)
        else:
            fn(p(self.x), k, p(w), p(self.bias), p(self.y), n, m, n, k, pool)


def _time(fn, problem: _Problem, pool, repeat: int, budget_s: float) -> list[float]:
    t = time.perf_counter()
    problem.call(fn, pool)  # warm: pages, caches, pool threads
    first = time.perf_counter() - t
    reps = max(1, min(repeat, int(budget_s / max(first, 1e-9))))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        problem.call(fn, pool)
        times.append(time.perf_counter() - t)
    return times


def qlinear_ablation(qm: str, m: int, k: int, n: int, threads: int = 2, repeat: int = 10, *, group: int = 128,
                     variants=ORDER, budget_s: float = 3.0, build_dir: str | None = None) -> list[dict]:
    """Time the qlinear_<qm> variants on y[m, n] = x[m, k] @ W^T; one dict per variant (see module doc).

    qm is "w4a8", "w4a32" or "w8a8"; `group` is the int4 group size (w8a8: its scheme's activation groups,
    one per row). Each variant gets
    `repeat` timed calls, fewer when one call is slow (at least one, about `budget_s` seconds in all)."""
    if qm not in QMODES:
        raise ValueError(f"qm must be one of {', '.join(QMODES)}, got {qm!r}")
    from ..backends.x86.kernels_quant import VARIANTS
    from ..codegen.cmake import REPO_ROOT

    lib = _load(build_dir or os.path.join(REPO_ROOT, "build", "bench-qlinear"))
    specs = {s.variant: s for s in VARIANTS if s.family == f"qlinear_{qm}"}
    problem = _Problem(qm, m, k, n, group)
    pool = lib.tcc_exec_create(threads) if threads > 1 else None  # the execution context (tcc_device.h)
    rows = []
    try:
        for v in variants:
            times = _time(_fn(lib, specs[v]), problem, pool, repeat, budget_s)
            best = min(times)
            rows.append({
                "variant": v, "qm": qm, "m": m, "k": k, "n": n, "group": problem.group,
                "threads": threads, "repeats": len(times), "best_ms": best * 1e3,
                "median_ms": statistics.median(times) * 1e3, "gbps": problem.weight_bytes / best / 1e9,
                "gops": 2.0 * m * n * k / best / 1e9,
            })
    finally:
        if pool:
            lib.tcc_exec_destroy(pool)
    base = next((r["best_ms"] for r in rows if r["variant"] == "naive"), None)
    for r in rows:
        r["speedup"] = base / r["best_ms"] if base else None
    return rows


def format_table(rows: list[dict]) -> str:
    """A markdown table of qlinear_ablation rows."""
    head = "| kernel | M x K -> N | variant | threads | reps | best ms | median ms | GB/s (weights) | GOPS | vs naive |"
    lines = [head, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        g = f", g{r['group']}" if r.get("group") else ""
        speed = f"{r['speedup']:.1f}x" if r.get("speedup") else "-"
        lines.append(f"| {r['qm']}{g} | {r['m']} x {r['k']} -> {r['n']} | {r['variant']} | {r['threads']} | "
                     f"{r['repeats']} | {r['best_ms']:.3f} | {r['median_ms']:.3f} | {r['gbps']:.2f} | "
                     f"{r['gops']:.1f} | {speed} |")
    return "\n".join(lines)



def isa_paths(qm: str, m: int, k: int, n: int, threads: int = 2, rounds: int = 7, *, group: int = 128,
              calls: int = 3, build_dir: str | None = None) -> list[dict]:
    """Time the `all` variant of qlinear_<qm> on every ISA path this CPU has (AVX2, AVX-VNNI, AVX-512: the
    kernel's run-time levels), interleaved: each round calls every path `calls` times, so a machine that
    slows down slows all of them alike and the ratios are side by side. One dict per path (median and best
    of the rounds' mean call time, GOPS at the median)."""
    if qm not in QMODES:
        raise ValueError(f"qm must be one of {', '.join(QMODES)}, got {qm!r}")
    from ..backends.x86.kernels_quant import ISA_LEVEL, VARIANTS
    from ..codegen.cmake import REPO_ROOT

    isa_names = {level: name for name, level in ISA_LEVEL.items()}
    lib = _load(build_dir or os.path.join(REPO_ROOT, "build", "bench-qlinear"))
    spec = next(s for s in VARIANTS if s.family == f"qlinear_{qm}" and s.variant == "all")
    fn, set_isa = _fn(lib, spec), getattr(lib, spec.name + "_isa")
    set_isa.argtypes, set_isa.restype = [ctypes.c_int], ctypes.c_int
    levels = sorted({set_isa(level) for level in isa_names})
    problem = _Problem(qm, m, k, n, group)
    pool = lib.tcc_exec_create(threads) if threads > 1 else None
    times: dict[int, list[float]] = {level: [] for level in levels}
    try:
        for level in levels:  # warm every path
            set_isa(level)
            problem.call(fn, pool)
        for _ in range(rounds):
            for level in levels:
                set_isa(level)
                t = time.perf_counter()
                for _ in range(calls):
                    problem.call(fn, pool)
                times[level].append((time.perf_counter() - t) / calls)
    finally:
        set_isa(99)
        if pool:
            lib.tcc_exec_destroy(pool)
    base = statistics.median(times[levels[0]])
    return [{"qm": qm, "m": m, "k": k, "n": n, "group": problem.group, "threads": threads, "isa": isa_names[level],
             "median_ms": statistics.median(t) * 1e3, "best_ms": min(t) * 1e3,
             "gops": 2.0 * m * n * k / statistics.median(t) / 1e9, "vs_avx2": base / statistics.median(t)}
            for level, t in times.items()]


def format_isa_table(rows: list[dict]) -> str:
    """A markdown table of isa_paths rows."""
    lines = ["| kernel | M x K -> N | ISA path | threads | median ms | best ms | GOPS | vs AVX2 |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['qm']}, g{r['group']} | {r['m']} x {r['k']} -> {r['n']} | {r['isa']} | {r['threads']} | "
                     f"{r['median_ms']:.3f} | {r['best_ms']:.3f} | {r['gops']:.1f} | {r['vs_avx2']:.2f}x |")
    return "\n".join(lines)

