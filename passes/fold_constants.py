"""fold-constants: evaluate what is known at compile time, and drop no-op nodes.

Folds
  * a node whose inputs are all constants (symbolic object-array constants included), with the op's numpy
    reference (`run_ref`); an op whose result would be large (> 1 MiB) AND bigger than its constant
    inputs (ConstantOfShape, Expand, Range, Tile ...) is left to run time (refusal logged);
  * a kind "shape" op (Shape, Size) from its input's TYPE alone: `Shape` of f32[batch,seq,64] is the
    symbolic constant [batch, seq, 64];
  * comparisons of symbolic dims only when the answer holds for every binding (dims are >= 0):
    `Equal(seq, -1)` is false, `Equal(seq, 5)` is unknown (not folded).
Drops (replacing the output by the input)
  * Identity, Cast to the same dtype, view ops (Reshape/Squeeze/Unsqueeze/Flatten) and Expand whose
    output type equals the input type, Transpose with the identity permutation;
  * Add/Sub of a constant 0 and Mul/Div by a constant 1 that does not change shape or dtype.
A graph output keeps its name: a no-op whose output is a graph output is dropped only when the input can
take over the name (a plain intermediate); a folded graph output becomes a constant with the output's name.
"""
from __future__ import annotations

import numpy as np

from ..ir.core import Graph, Node, Value
from ..ir.dims import Sym
from ..ir.registry import full_attrs, get_op, run_ref
from . import register_pass

NAME = "fold-constants"
LARGE = 1 << 20  # bytes: a folded result bigger than this and than its inputs stays a run-time op
_COMPARE = {"Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual"}


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def _has_sym(arr: np.ndarray) -> bool:
    return arr.dtype == object and any(isinstance(x, Sym) for x in arr.reshape(-1))


def _tidy(arr: np.ndarray) -> np.ndarray:
    """An object array of plain ints becomes int64."""
    if arr.dtype == object and not _has_sym(arr):
        flat = [int(x) for x in arr.reshape(-1)]
        return np.array(flat, dtype=np.int64).reshape(arr.shape)
    return arr


def _const_bytes(v: Value) -> int:
    return int(v.const.size) * (8 if v.const.dtype == object else v.const.dtype.itemsize)


def _range(d) -> tuple[float, float]:
    """(min, max) of an int or Sym over every binding of its symbols (symbols are >= 0)."""
    if not isinstance(d, Sym):
        return d, d
    const, pos, neg = 0, False, False
    for m, c in d.terms:
        if not m:
            const = c
        elif c > 0:
            pos = True
        else:
            neg = True
    lo = -float("inf") if neg else const
    hi = float("inf") if pos else const
    return lo, hi


def _decide(op: str, d) -> bool | None:
    """The truth of `d <op> 0` for every binding, or None when it depends on the binding."""
    lo, hi = _range(d)
    if op == "Equal":
        return True if lo == hi == 0 else False if lo > 0 or hi < 0 else None
    if op == "Less":
        return True if hi < 0 else False if lo >= 0 else None
    if op == "LessOrEqual":
        return True if hi <= 0 else False if lo > 0 else None
    if op == "Greater":
        return True if lo > 0 else False if hi <= 0 else None
    return True if lo >= 0 else False if hi < 0 else None  # GreaterOrEqual


def _compare(op: str, a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """A symbolic comparison, or None if its answer depends on the binding."""
    a, b = np.broadcast_arrays(a.astype(object), b.astype(object))
    out = np.empty(a.shape, dtype=bool)
    for idx in np.ndindex(a.shape):
        r = _decide(op, a[idx] - b[idx])
        if r is None:
            return None
        out[idx] = r
    return out


def _shape_of(node: Node) -> np.ndarray | None:
    """Shape/Size from the input type."""
    x = node.inputs[0]
    dims = list(x.shape)
    attrs = full_attrs(get_op(node.op), node.attrs)
    if node.op == "Shape":
        r = len(dims)
        start = attrs.get("start", 0) or 0
        end = attrs.get("end", None)
        start = min(max(start + r if start < 0 else start, 0), r)
        end = r if end is None else min(max(end + r if end < 0 else end, 0), r)
        dims = dims[start:end]
        arr = np.empty((len(dims),), dtype=object)
        arr[:] = dims
        return _tidy(arr)
    if node.op == "Size":
        n = 1
        for d in dims:
            n = n * d
        arr = np.empty((), dtype=object)
        arr[()] = n
        return _tidy(arr)
    return None


def _replace_with_const(graph: Graph, old: Value, data: np.ndarray) -> Value:
    """A constant takes `old`'s place (and its name)."""
    name = old.name
    graph._names.discard(name)
    old.name = graph.unique_name(name + ".folded")
    const = graph.add_const(data, name, exact_name=True)
    for n in graph.nodes:
        if any(v is old for v in n.inputs):
            n.inputs = [const if v is old else v for v in n.inputs]
    graph.outputs = [const if v is old else v for v in graph.outputs]
    return const


# ---------------------------------------------------------------------------------------------
# folding
# ---------------------------------------------------------------------------------------------

def _evaluate(node: Node, ctx) -> list[np.ndarray] | None:
    op = get_op(node.op)
    ins = node.inputs
    if op.kind == "shape" and node.op in ("Shape", "Size"):
        arr = _shape_of(node)
        return None if arr is None else [arr]
    if not all(v is None or v.is_const for v in ins):
        if op.kind != "shape" or not all(v is None or v.is_const or v.type.is_static for v in ins):
            return None
        # A shape-only op on statically shaped inputs: a zero-strided stand-in carries the shape.
        arrays = [None if v is None else v.const if v.is_const else
                  np.broadcast_to(np.zeros((), v.dtype.np), v.type.concrete_shape({})) for v in ins]
    else:
        arrays = [None if v is None else v.const for v in ins]
    if not node.outputs:
        return None
    for o in node.outputs:
        if not o.type.is_static:
            return None  # a constant needs a concrete shape
    out_bytes = sum(int(np.prod(o.type.concrete_shape({}), dtype=np.int64)) * o.dtype.itemsize
                    for o in node.outputs)
    in_bytes = sum(_const_bytes(v) for v in ins if v is not None and v.is_const)
    if out_bytes > LARGE and out_bytes > in_bytes:
        ctx.refuse(NAME, node, f"result would be {out_bytes} bytes (> {LARGE}) from {in_bytes} bytes of "
                               "constants; left to run time")
        return None
    symbolic = any(a is not None and _has_sym(a) for a in arrays)
    if symbolic and node.op in _COMPARE and len(arrays) == 2:
        res = _compare(node.op, arrays[0], arrays[1])
        if res is None:
            ctx.refuse(NAME, node, "symbolic comparison depends on the shape binding")
            return None
        return [res]
    if symbolic and any(o.dtype.np != np.int64 for o in node.outputs):
        ctx.refuse(NAME, node, "symbolic dims cannot be converted to a non-i64 result at compile time")
        return None
    try:
        with np.errstate(all="ignore"):
            results = run_ref(node, arrays)
    except Exception as e:  # a ref that cannot run on these constants (e.g. symbolic) is not folded
        ctx.refuse(NAME, node, f"reference raised {type(e).__name__}: {e}")
        return None
    return list(results)


def _check_results(node: Node, results: list, ctx) -> list[np.ndarray] | None:
    if len(results) != len(node.outputs):
        ctx.refuse(NAME, node, f"reference gave {len(results)} results for {len(node.outputs)} outputs")
        return None
    out = []
    for o, r in zip(node.outputs, results):
        r = _tidy(np.asarray(r))
        want = o.type.concrete_shape({})
        if tuple(r.shape) != want:
            ctx.refuse(NAME, node, f"reference produced shape {list(r.shape)} for %{o.name} : {o.type}")
            return None
        if r.dtype == object:
            if o.dtype.np != np.int64:
                ctx.refuse(NAME, node, f"symbolic result for non-i64 %{o.name} : {o.type}")
                return None
        elif r.dtype != o.dtype.np:
            ctx.refuse(NAME, node, f"reference produced {r.dtype} for %{o.name} : {o.type}")
            return None
        out.append(r)
    return out


# ---------------------------------------------------------------------------------------------
# no-ops
# ---------------------------------------------------------------------------------------------

def _all_equal(v: Value | None, x: float) -> bool:
    return (v is not None and v.is_const and v.const.dtype != object and v.const.size > 0
            and bool(np.all(v.const == x)))


def _noop_source(node: Node) -> Value | None:
    """The input a no-op node passes through unchanged, or None."""
    if not node.outputs or len(node.outputs) != 1 or not node.inputs or node.inputs[0] is None:
        return None
    out = node.output
    op = get_op(node.op)
    x = node.inputs[0]
    if node.op == "Identity":
        return x
    if node.op in ("Cast", "Expand") or op.kind == "view":
        return x if x.type == out.type else None
    if node.op == "Transpose":
        perm = node.attrs.get("perm")
        if perm is not None and list(perm) == list(range(x.type.rank)) and x.type == out.type:
            return x
        return None
    if node.op in ("Add", "Mul", "Sub", "Div") and len(node.inputs) == 2:
        neutral = 0 if node.op in ("Add", "Sub") else 1
        a, b = node.inputs
        if _all_equal(b, neutral) and a is not None and a.type == out.type:
            return a
        if node.op in ("Add", "Mul") and _all_equal(a, neutral) and b is not None and b.type == out.type:
            return b
    return None


def _drop_noop(graph: Graph, node: Node, src: Value, ctx) -> bool:
    out = node.output
    if any(v is out for v in graph.outputs):
        plain = (src.producer is not None and not any(v is src for v in graph.outputs))
        if not plain:
            return False  # the output keeps its own node so the interface keeps its name
        graph.replace_uses(out, src)
    else:
        graph.replace_uses(out, src, outputs=False)
    graph.remove_nodes([node])
    ctx.log(NAME, f"dropped no-op {node.op} %{out.name} -> %{src.name}")
    return True


# ---------------------------------------------------------------------------------------------

def fold_constants(graph: Graph, ctx, max_rounds: int = 8) -> int:
    changes = 0
    for _ in range(max_rounds):
        round_changes = 0
        for node in list(graph.nodes):
            results = _evaluate(node, ctx)
            if results is not None:
                results = _check_results(node, results, ctx)
            if results is not None:
                outs = list(node.outputs)
                names = ", ".join(f"%{o.name}" for o in outs)
                graph.remove_nodes([node])
                for o, r in zip(outs, results):
                    _replace_with_const(graph, o, r)
                ctx.log(NAME, f"folded {node.op} -> {names}")
                round_changes += 1
                continue
            src = _noop_source(node)
            if src is not None and _drop_noop(graph, node, src, ctx):
                round_changes += 1
        changes += round_changes
        if not round_changes:
            break
    ctx.stats[NAME] = ctx.stats.get(NAME, 0) + changes
    graph.rename_names()
    return changes


@register_pass(NAME)
def run(graph: Graph, ctx) -> None:
    fold_constants(graph, ctx)
