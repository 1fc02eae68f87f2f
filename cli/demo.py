"""`tcc demo` and `tcc eval`: the bundled demo language model, and perplexity on a text."""
from __future__ import annotations

import os

from ..errors import TccError
from .args import add_verify_arg, write_json


def cmd_demo(args) -> int:
    from ..demo import run_demo
    from ..driver import progress_printer

    run_demo(qm=args.qm, prompt=args.prompt, max_new_tokens=args.max_new_tokens, seed=args.seed,
             temperature=args.temperature, threads=args.threads, rebuild=args.rebuild,
             progress=progress_printer(not args.quiet))
    return 0


def cmd_eval(args) -> int:
    from ..demo import DEMO_CALIB, DEMO_HELDOUT, compare_quantization, demo_model, format_compare_table
    from ..driver import progress_printer
    from ..runtime.perplexity import evaluate, read_text

    if args.compare:
        model = args.target or demo_model()
        if not model.endswith(".onnx") or not os.path.isfile(model):
            raise TccError(f"tcc eval --compare takes an .onnx model (default: the bundled demo), got {model!r}")
        is_demo = _is_demo(model)
        text_path = args.text or (DEMO_HELDOUT if is_demo else None)
        calib = args.calib or (DEMO_CALIB if is_demo else None)
        if text_path is None:
            raise TccError("give --text FILE: the text to measure perplexity on")
        rows = compare_quantization(model, read_text(text_path), calib, context=args.context, stride=args.stride,
                                    max_tokens=args.max_tokens, group_size=args.group_size, threads=args.threads,
                                    progress=progress_printer(not args.quiet), bar=not args.quiet)
        first = next((r for r in rows if "perplexity" in r), None)
        print(f"\n## {os.path.relpath(model)} on {os.path.relpath(text_path)}"
              + (f": {first['tokens']} tokens, windows of {first['context']}, stride {first['stride']}" if first else "")
              + "\n")
        print(format_compare_table(rows))
        write_json(args.json, rows)
        return 0
    if not args.target:
        raise TccError("tcc eval needs an artifact directory (or --compare [model.onnx])")
    from ..runtime.session import load

    with load(args.target, threads=args.threads) as sess:
        text_path = args.text or (DEMO_HELDOUT if _is_demo(sess.manifest.get("source", "")) else None)
        if text_path is None:
            raise TccError("give --text FILE: the text to measure perplexity on")
        p = evaluate(sess, read_text(text_path), context=args.context, stride=args.stride,
                     max_tokens=args.max_tokens, progress=not args.quiet)
    print(f"{args.target} on {text_path}: perplexity {p.ppl:.4f}, {p.bits_per_byte:.4f} bits/byte "
          f"({p.tokens} tokens, {p.bytes} bytes; windows of {p.context} tokens, stride {p.stride}; "
          f"{p.tokens_per_second:.0f} tok/s)")
    write_json(args.json, p.as_dict())
    return 0


def _is_demo(path: str) -> bool:
    from ..demo import DEMO_MODEL

    return bool(path) and os.path.abspath(path) == os.path.abspath(DEMO_MODEL)


def add_demo(sub) -> None:
    from ..demo import COMPARE_VARIANTS, DEMO_QM

    d = sub.add_parser("demo", help="compile the bundled demo LLM for this machine (cached) and generate from it")
    d.add_argument("--qm", default=DEMO_QM, choices=tuple(dict.fromkeys(v.qm for v in COMPARE_VARIANTS)),
                   help=f"quantization ({DEMO_QM}; how each is calibrated: tcc.demo.DEMO_METHODS)")
    d.add_argument("--prompt", "-p", default=None, help="the text to continue (default: a fixed prompt)")
    d.add_argument("--max-new-tokens", type=int, default=96, help="tokens to generate (96)")
    d.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (0.7)")
    d.add_argument("--seed", type=int, default=0, help="sampling seed (0)")
    d.add_argument("--threads", type=int, default=None, help="worker threads (default: all cores)")
    d.add_argument("--rebuild", action="store_true", help="compile even if the cached artifact is current")
    d.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    d.set_defaults(fn=cmd_demo)


def add_eval(sub) -> None:
    e = sub.add_parser("eval", help="perplexity and bits per byte of a compiled language model on a text")
    e.add_argument("target", nargs="?", help="an artifact directory (with --compare: an .onnx model, default the "
                   "bundled demo)")
    e.add_argument("--text", metavar="FILE", help="UTF-8 text to score (default for the demo model: its held-out text)")
    e.add_argument("--context", type=int, metavar="N", help="tokens per window (default: the artifact's context)")
    e.add_argument("--stride", type=int, metavar="N", help="tokens between window starts (default: half the window)")
    e.add_argument("--max-tokens", type=int, metavar="N", help="score only the text's first N tokens")
    e.add_argument("--compare", action="store_true", help="compile fp32, w8a8 (RTN, SmoothQuant), w4a32 and w4a8 "
                   "(RTN, AWQ) and print one table")
    e.add_argument("--calib", metavar="FILE", help="calibration text for --compare (default for the demo: its own)")
    e.add_argument("--group-size", type=int, metavar="N", help="int4 group size for --compare (the target's default)")
    e.add_argument("--threads", type=int, default=None, help="worker threads (default: all cores)")
    e.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_verify_arg(e)
    e.set_defaults(fn=cmd_eval)
