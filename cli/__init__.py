"""The `tcc` command line: the parser (one module per command family adds its subcommands) and `main`,
which turns a `TccError` into `tcc: error: ...` and its exit code.

  compile.py  compile          chat.py   generate, chat     run.py    run
  ir.py       ir               info.py   info, flags        bench.py  bench
  demo.py     demo, eval       serve.py  serve              args.py   options and inputs shared by them
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import traceback

from .. import __version__, flags
from ..errors import TccError
from . import bench, chat, compile, demo, info, ir, run, serve

# Each adds its subcommand; in the order of `tcc --help`'s command list.
_PARSERS = (compile.add_compile, chat.add_generate, chat.add_chat, run.add_run, ir.add_ir, info.add_info,
            bench.add_bench, demo.add_demo, demo.add_eval, serve.add_serve, info.add_flags)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tcc", description="Compile ONNX models into fast native programs.")
    p.add_argument("--version", action="version", version=f"tcc {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for add in _PARSERS:
        add(sub)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with contextlib.ExitStack() as stack:
            if getattr(args, "no_verify", False):
                stack.enter_context(flags.overridden("verify", False))
            if getattr(args, "no_cuda_graph", False):
                stack.enter_context(flags.overridden("cuda-graph", False))
            return args.fn(args)
    except TccError as e:
        print(f"tcc: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("tcc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as e:  # the environment: a read-only or full disk, a missing folder, a vanished file
        where = f"{e.filename}: " if e.filename else ""
        print(f"tcc: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except Exception as e:  # a bug in tcc, not the user's input
        if flags.get("debug"):
            traceback.print_exc()
        print(f"tcc: internal error: {type(e).__name__}: {e} (set TCC_DEBUG=1 for a traceback; please report)",
              file=sys.stderr)
        return 70
