"""`tcc bench`: a compiled language model's prefill and decode speed, or the quantized-linear kernel ablation."""
from __future__ import annotations

import os

from ..errors import TccError
from .args import add_cuda_graph_arg, add_verify_arg, write_json


def cmd_bench(args) -> int:
    from ..driver import progress_printer

    if args.ablation:
        from ..runtime.kernel_bench import format_table, qlinear_ablation

        m, k, n = _shape3(args.shape)
        print(f"## qlinear_{args.qm}: y[{m}, {n}] = x[{m}, {k}] @ W^T, {args.threads} threads\n")
        from ..backends import get_backend

        group = get_backend("x86").target.default_group_size
        print(format_table(qlinear_ablation(args.qm, m, k, n, threads=args.threads, repeat=args.repeat, group=group)))
        if args.target:
            from ..runtime.bench import format_model_table, model_ablation

            rows = model_ablation(args.target, args.qm, args.prompt_len, args.gen, args.threads, args.repeat,
                                  progress=progress_printer(not args.quiet))
            print(f"\n## {os.path.basename(args.target)} --qm {args.qm}, prompt {args.prompt_len}, {args.gen} new "
                  f"tokens, {args.threads} threads\n")
            print(format_model_table(rows, args.prompt_len))
        return 0
    if not args.target:
        raise TccError("tcc bench needs an artifact directory (or --ablation)")
    from ..runtime.bench import bench_artifact, format_bench, format_vs_default, plot_steps, tuned_vs_default

    if args.vs_default:
        both = tuned_vs_default(args.target, args.prompt_len, args.gen, args.threads, args.repeat,
                                bandwidth=not args.no_roofline, progress=progress_printer(not args.quiet))
        print(format_vs_default(both))
        write_json(args.json, both)
        res = both["tuned"]
    else:
        res = bench_artifact(args.target, args.prompt_len, args.gen, args.threads, args.repeat,
                             bandwidth=not args.no_roofline)
        print(format_bench(res))
        write_json(args.json, res)
    if args.plot:
        plot_steps(res, args.plot)
        print(f"plot: {args.plot}")
    return 0


def _shape3(text: str) -> tuple[int, int, int]:
    try:
        m, k, n = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise TccError(f"--shape {text!r}: expected MxKxN, e.g. 1x4096x32000") from None
    if min(m, k, n) <= 0:
        raise TccError(f"--shape {text!r}: sizes must be positive")
    return m, k, n


def add_bench(sub) -> None:
    from ..runtime.bench import QMS, VARIANTS

    b = sub.add_parser("bench", help="time a compiled language model, or the kernel ablation (--ablation)")
    b.add_argument("target", nargs="?", help="an artifact directory (with --ablation: an .onnx model to compile "
                   "once per kernel variant and time as a whole)")
    b.add_argument("--ablation", action="store_true", help="per-technique latency of the quantized linear kernels "
                   f"({', '.join(VARIANTS)}) on --shape, and for a whole model if one is given")
    b.add_argument("--qm", default=QMS[0], choices=QMS, help=f"scheme for --ablation ({QMS[0]})")
    b.add_argument("--shape", default="1x4096x32000", help="MxKxN of the ablation GEMV/GEMM (1x4096x32000)")
    b.add_argument("--prompt-len", type=int, default=128, help="prompt tokens (128)")
    b.add_argument("--gen", type=int, default=64, help="generated tokens (64)")
    b.add_argument("--threads", type=int, default=2, help="worker threads (2)")
    b.add_argument("--repeat", type=int, default=3, help="repeats; the median and spread are shown (3)")
    b.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    b.add_argument("--plot", metavar="FILE.png", help="plot decode ms per step against the roofline (matplotlib)")
    b.add_argument("--no-roofline", action="store_true", help="skip the bandwidth probe (1 GiB streaming reads)")
    b.add_argument("--vs-default", action="store_true", help="an artifact compiled with --tune: also compile its "
                   "model without --tune (cached) and time both in this run")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    add_verify_arg(b)
    add_cuda_graph_arg(b)
    b.set_defaults(fn=cmd_bench)
