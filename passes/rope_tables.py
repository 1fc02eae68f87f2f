"""The rotary tables of fuse-rope (passes/fuse_rope.py), found and checked by evaluating the graph: a cos/sin
value evaluated at past=0, seq=capacity gives a table [capacity, rd/2] (rows = positions; the halves, or the
even/odd entries, must be equal), and a matched rotation must equal the reference rotation (ir/ops/kv.py:
apply_rope) for random x at CHECK_BINDINGS within fp32 rounding.
"""
from __future__ import annotations

import numpy as np

from ..errors import TccError
from ..ir.core import Graph, Value
from ..ir.dims import Sym
from ..ir.ops.kv import ROPE_HALF, apply_rope

CHECK_BINDINGS = [(0, 3), (5, 2)]  # (past, seq) for the numeric check


def subgraph(graph: Graph, out: Value, x: Value | None = None):
    """A copy computing `out` with `x` (if given) as its only input; None if it needs anything else."""
    from .eliminate_dead_code import eliminate_dead_code

    g = graph.copy()
    g.meta = {}
    target = g.value(out.name)
    new_in = None
    if x is not None:
        gx = g.value(x.name)
        new_in = Value(g.unique_name("rope_x"), gx.type)
        g.replace_uses(gx, new_in, outputs=False)
    g.outputs = [target]
    g.inputs = [new_in] if new_in is not None else []
    eliminate_dead_code(g, keep_effects=False)
    used = [v for n in g.nodes for v in n.inputs if v is not None] + [target]
    if g.states or any(v.producer is None and v.const is None and v is not new_in for v in used):
        return None
    return g


def position_table(graph: Graph, c: Value, y_shape, llm: dict, rd: int, mode: int, memo: dict) -> np.ndarray | None:
    """cos/sin value -> table [capacity, rd/2], or None if it is not a per-position table. Layers share
    one cos/sin pair, so results are memoized per value."""
    key = (id(c), tuple(map(str, y_shape)), rd, mode)
    if key not in memo:
        memo[key] = _evaluate_table(graph, c, y_shape, llm, rd, mode)
    return memo[key]


def _evaluate_table(graph: Graph, c: Value, y_shape, llm: dict, rd: int, mode: int) -> np.ndarray | None:
    from ..ir.interpreter import run_graph

    cap = llm["capacity"]
    sub = subgraph(graph, c)
    if sub is None:
        return None
    seq_axis = [i for i, dd in enumerate(y_shape) if dd == Sym.symbol(llm["seq"])]
    if len(seq_axis) != 1:
        return None
    try:
        (arr,) = run_graph(sub, {}, symbols={llm["batch"]: 1, llm["past"]: 0, llm["seq"]: cap}).values()
    except (TccError, ValueError, IndexError):
        return None
    arr = np.asarray(arr, np.float32)
    arr = arr.reshape((1,) * (len(y_shape) - arr.ndim) + arr.shape)
    idx = [slice(None) if i in (seq_axis[0], len(y_shape) - 1) else 0 for i in range(len(y_shape))]
    t = arr[tuple(idx)]
    if t.shape[0] == 1:
        t = np.broadcast_to(t, (cap, t.shape[1]))
    if t.shape[0] != cap or t.shape[1] not in (rd, rd // 2):
        return None
    if t.shape[1] == rd // 2:
        return np.ascontiguousarray(t)
    a, b = (t[:, : rd // 2], t[:, rd // 2:]) if mode == ROPE_HALF else (t[:, 0::2], t[:, 1::2])
    return np.ascontiguousarray(a) if np.array_equal(a, b) else None


def verify_rotation(graph: Graph, y: Value, x: Value, cos: np.ndarray, sin: np.ndarray, mode: int, rd: int, llm: dict,
            transposed: bool) -> bool:
    from ..ir.interpreter import run_graph

    sub = subgraph(graph, y, x)
    if sub is None:
        return False
    r = np.random.default_rng(0)
    for past, seq in CHECK_BINDINGS:
        env = {llm["batch"]: 1, llm["past"]: past, llm["seq"]: seq}
        shape = tuple(int(d) if isinstance(d, int) else d.evaluate(env) for d in x.shape)
        xv = r.standard_normal(shape).astype(np.float32)
        try:
            (got,) = run_graph(sub, {sub.inputs[0].name: xv}, symbols=env).values()
        except (TccError, ValueError, IndexError):
            return False
        pos = np.arange(past, past + seq)
        # The reference rotates [B,H,S,D]; y is in that layout too (after the Transpose when transposed).
        xt = np.swapaxes(xv, 1, 2) if transposed else xv
        want = apply_rope(xt, pos, cos, sin, mode, rd)
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-5, atol=1e-5):
            return False
    return True
