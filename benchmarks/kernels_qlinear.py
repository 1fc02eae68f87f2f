"""Benchmark the quantized Linear kernels' optimization ablation (not a test): naive, unroll, threads, simd
and all, for w4a8, w4a32 and w8a8, on a decode GEMV (1 x 4096 -> 32000, an LM head) and a prefill GEMM
(128 x 4096 -> 4096), or TinyLlama's decode GEMVs (--shape tl-qkvo tl-up tl-down).

    python benchmarks/kernels_qlinear.py [--repeat 10] [--threads 2] [--group 128] [--qm w4a8 ...] [--avx2]
    python benchmarks/kernels_qlinear.py --isa-paths [--rounds 7] ...   # the `all` kernel's ISA paths side by side

The work is runtime/kernel_bench.py: qlinear_ablation (timing, GB/s of packed weights, GOPS, speedup
over naive) and format_table (markdown). Slow variants (naive, unroll, threads on the big shapes take
0.1 - 10 s a call) get as few repeats as fit in --budget seconds, at least one. The int4 weights are
symmetric with group --group; activations are quantized before timing. The `all` variants of w4a8 and
w8a8 use AVX-512 VNNI or AVX-VNNI when the CPU has them (--no-vnni forces their AVX2 path), w4a32 AVX-512
(--avx2 forces the AVX2 path of all three). --isa-paths times only the `all` variant, on every ISA path the CPU
has, interleaved round by round (runtime/kernel_bench.py: isa_paths), for ratios measured side by side. A small layer's weights stay in the caches between calls (TinyLlama's
2048 x 2048 is 2 MiB at 4 bits): the GB/s of such a shape is the kernel's compute rate, not the memory's.
"""
from __future__ import annotations

import argparse
import ctypes
import os

from tcc.codegen.cmake import REPO_ROOT
from tcc.runtime.kernel_bench import QMODES, _load, format_isa_table, format_table, isa_paths, qlinear_ablation

SHAPES = {"gemv": (1, 4096, 32000), "prefill": (128, 4096, 4096),
          "tl-qkvo": (1, 2048, 2048), "tl-up": (1, 2048, 5632), "tl-down": (1, 5632, 2048)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--budget", type=float, default=3.0, help="seconds of timed calls per slow variant")
    ap.add_argument("--qm", nargs="+", default=list(QMODES), choices=QMODES)
    ap.add_argument("--shape", nargs="+", default=["gemv", "prefill"], choices=list(SHAPES))
    ap.add_argument("--no-vnni", action="store_true", help="force the AVX2 path of the w4a8 / w8a8 `all` kernels")
    ap.add_argument("--avx2", action="store_true", help="force the AVX2 path of every `all` kernel")
    ap.add_argument("--isa-paths", action="store_true", help="the `all` variant's ISA paths, interleaved")
    ap.add_argument("--rounds", type=int, default=7, help="--isa-paths: interleaved rounds")
    ap.add_argument("--build-dir", default=os.path.join(REPO_ROOT, "build", "bench-qlinear"))
    args = ap.parse_args()
    if args.isa_paths:
        rows = [r for shape in args.shape for qm in args.qm
                for r in isa_paths(qm, *SHAPES[shape], args.threads, args.rounds, group=args.group,
                                   build_dir=args.build_dir)]
        print(format_isa_table(rows))
        return
    if args.no_vnni or args.avx2:
        lib = _load(args.build_dir)
        for qm in ("w4a8", "w8a8") + (("w4a32",) if args.avx2 else ()):
            fn = getattr(lib, f"tcc_qlinear_{qm}__all_isa")
            fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
            fn(0)
    rows = []
    for shape in args.shape:
        m, k, n = SHAPES[shape]
        for qm in args.qm:
            rows += qlinear_ablation(qm, m, k, n, args.threads, args.repeat, group=args.group, budget_s=args.budget,
                                     build_dir=args.build_dir)
            print(format_table(rows[-5:]), flush=True)
            print()
    print("all rows:\n" + format_table(rows))


if __name__ == "__main__":
    main()
