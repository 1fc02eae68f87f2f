"""`tcc ir`: a model's IR after the passes (or a .tir dump), as text or Graphviz DOT, or run by the interpreter."""
from __future__ import annotations

import os
import sys

from ..errors import TccError
from .args import add_quant_args, add_shape_args, kv_ints, quant_options, read_feeds


def cmd_ir(args) -> int:
    from ..ir.graphviz import to_dot
    from ..passes.context import PassContext
    from ..passes.runner import render

    if args.model.endswith(".tir"):
        from ..ir.text import load_ir

        graph, ctx = load_ir(args.model), PassContext()
    else:
        from ..driver import CompileOptions, optimize

        after = args.after
        opts = CompileOptions(target=args.target, max_dims=kv_ints(args.max_dim, "--max-dim"),
                              dims=kv_ints(args.dim, "--dim"), pipeline=args.pipeline, qm=args.qm,
                              tokenizer=args.tokenizer, **quant_options(args))
        if after:
            from ..passes.pipelines import get_pipeline

            names = ["import"] + get_pipeline(args.pipeline)
            if after not in names:
                raise TccError(f"--after {after!r} is not a pass of pipeline {args.pipeline!r}: {', '.join(names)}")
            opts.pipeline = names[1:names.index(after) + 1]
        graph, ctx, _ = optimize(args.model, opts)
    if args.run:
        from ..ir.interpreter import run_graph

        for name, arr in run_graph(graph, read_feeds(args.run)).items():
            print(f"{name}: {arr.dtype}{list(arr.shape)}\n{arr}")
        return 0
    # A file gets its large constants in blobs/ beside it, so `tcc ir FILE --run` can execute it.
    blob_dir = os.path.join(os.path.dirname(os.path.abspath(args.output)), "blobs") if args.output else None
    text = to_dot(graph) if args.dot else render(graph, ctx, blob_dir=blob_dir)
    if args.output:
        tmp = args.output + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, args.output)
    else:
        sys.stdout.write(text)
    return 0


def add_ir(sub) -> None:
    i = sub.add_parser("ir", help="print a model's IR (after the passes) or an IR dump")
    i.add_argument("model", help=".onnx model or .tir dump")
    i.add_argument("--after", metavar="PASS", help="stop after PASS ('import' for the imported IR)")
    i.add_argument("--pipeline", default="optimize", help="named pass pipeline (optimize)")
    i.add_argument("--target", default="x86")
    i.add_argument("--tokenizer", metavar="PATH", help="tokenizer.json for text calibration (default: beside the model)")
    add_quant_args(i)
    add_shape_args(i)
    i.add_argument("--dot", action="store_true", help="print Graphviz DOT instead of IR text")
    i.add_argument("--run", action="append", metavar="NAME=FILE.npy", help="run the IR with the interpreter")
    i.add_argument("-o", "--output", help="write to a file instead of stdout")
    i.set_defaults(fn=cmd_ir)
