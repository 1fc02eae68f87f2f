"""Runs a pipeline: verify, time and dump around every pass (TVM-style instruments)."""
from __future__ import annotations

import os
import sys
import time
from typing import Iterable

from .. import flags
from ..errors import TccError
from ..ir.core import Graph
from ..ir.text import print_graph
from . import PASSES, load_all
from .context import PassContext
from .pipelines import get_pipeline


def dump_name(index: int, name: str) -> str:
    return f"{index:03d}_{name}.tir"


def run_pipeline(graph: Graph, pipeline: str | list[str], ctx: PassContext, *,
                 dump_dir: str | None = None, print_after: Iterable[str] = (),
                 disable: Iterable[str] = (), progress=None) -> Graph:
    """Run the passes of `pipeline` over `graph` in place. With `dump_dir`, writes `000_import.tir`
    and `NNN_<pass>.tir` after each pass (large constants in `dump_dir/blobs/`)."""
    load_all()
    names = get_pipeline(pipeline) if isinstance(pipeline, str) else list(pipeline)
    print_after, disable = set(print_after), set(disable)
    unknown = (print_after | disable) - set(PASSES)
    if unknown:
        raise TccError(f"unknown pass(es) {sorted(unknown)}; known: {', '.join(sorted(PASSES))}")
    for n in names:
        if n not in PASSES:
            raise TccError(f"pipeline names unknown pass {n!r}")
    if dump_dir:
        os.makedirs(dump_dir, exist_ok=True)
        _dump(graph, ctx, dump_dir, dump_name(0, "import"))
    for i, name in enumerate(names, 1):
        if name in disable:
            ctx.log(name, "disabled by --disable-pass")
            continue
        if progress is not None:
            progress(name)
        t0 = time.perf_counter()
        PASSES[name](graph, ctx)
        dt = time.perf_counter() - t0
        ctx.timings.append((name, dt))
        if flags.get("verify-each"):
            try:
                graph.verify()
            except TccError as e:
                raise type(e)(f"IR invalid after pass {name}: {e}") from None
        if ctx.debug >= 1:
            print(f"[tcc] {name}: {dt * 1e3:.1f} ms, {len(graph.nodes)} nodes", file=sys.stderr)
        if dump_dir:
            _dump(graph, ctx, dump_dir, dump_name(i, name))
        if name in print_after or ctx.debug >= 3:
            print(f"# after {name}", file=sys.stderr if ctx.debug >= 3 and name not in print_after else sys.stdout)
            print(render(graph, ctx), end="", file=sys.stdout)
    return graph


def render(graph: Graph, ctx: PassContext, blob_dir: str | None = None) -> str:
    """The graph's text, with the memory plan as comments when one has been made."""
    plan = ctx.stats.get("plan-memory")
    comments = plan.comments(graph) if plan is not None else None
    header = plan.summary_lines() if plan is not None else None
    return print_graph(graph, blob_dir=blob_dir, comments=comments, header=header)


def _dump(graph: Graph, ctx: PassContext, dump_dir: str, fname: str) -> None:
    text = render(graph, ctx, blob_dir=os.path.join(dump_dir, "blobs"))
    path = os.path.join(dump_dir, fname)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
