"""fuse-norms: RMSNorm and LayerNorm from their decomposed forms.

Anchor: the normalizing node, `num * r` (Mul, either operand order) or `num / s` (Div), where

    s = Sqrt(v)                     r = Reciprocal(Sqrt(v)) | Div(1, Sqrt(v)) | Pow(v, -0.5)
    v = Add(ms, eps) (either order; eps a constant scalar) | ms (eps = 0)
    ms = ReduceMean(sq) {axes: the trailing axes [-k..-1], keepdims=1}
    sq = Pow(t, 2) | Mul(t, t)

and `t` is `num` itself, or both are exact up-casts (Cast f16->f32 ...) of one source, as LLaMA exports
`x.to(float32)`. If `num` = Sub(a, ReduceMean(a', same axes)) with a, a' the same source, it is a
LayerNorm over `a`, otherwise an RMSNorm over `num`.
Below the anchor, single-consumer nodes are absorbed while they match: float Casts, one Mul by a constant
(gamma, either side, broadcast to the normalized dims) and, for LayerNorm, one Add of a constant after it
(beta). A missing gamma becomes a ones constant.
Result: RMSNorm(x, gamma) / LayerNorm(x, gamma, beta?) {axis=-k, eps}, where x is the source when the
result has its dtype (the casts are absorbed), else the f32 value the pattern normalizes.
Refusals (logged): an inner value with consumers outside the pattern (or a graph output), reduce axes
that are not the trailing axes, keepdims=0, a non-scalar eps, a normalized shape that is symbolic when a
ones gamma is needed, no input of the result's dtype.
"""
from __future__ import annotations

import numpy as np

from ..ir.core import Graph, Node, Value
from ..ir.dtypes import DType
from ..ir.registry import broadcast_shapes
from . import register_pass
from .rewrite_utils import (attrs, is_scalar_const, neg_axes, only_consumer, outside_consumers, producer,
                            replace_value, scalar)

NAME = "fuse-norms"
_WIDTH = {DType.f16: 2, DType.f32: 4, DType.f64: 8}


class _Refuse(Exception):
    pass


def _upcast_source(v: Value) -> Value:
    """Strip exact float up-casts (f16 -> f32 ...)."""
    while True:
        c = producer(v, "Cast")
        if c is None:
            return v
        src = c.inputs[0]
        if src.dtype not in _WIDTH or v.dtype not in _WIDTH or _WIDTH[v.dtype] < _WIDTH[src.dtype]:
            return v
        v = src


def _trailing_axes(n: Node, rank: int) -> int | None:
    at = attrs(n)
    if not at.get("keepdims", 1):
        return None
    axes = neg_axes(at["axes"], rank)
    if not axes or axes != list(range(-len(axes), 0)):
        return None
    return len(axes)


def _match_variance(r: Value, how: str):
    """From the denominator side (`r` for Mul, `s` for Div) down to sq. Returns (t, k, eps, nodes)."""
    nodes: list[Node] = []
    if how == "div":
        sqrt = producer(r, "Sqrt")
        if sqrt is None:
            return None
        nodes.append(sqrt)
        v = sqrt.inputs[0]
    else:
        n = producer(r)
        if n is None:
            return None
        if n.op == "Reciprocal" and producer(n.inputs[0], "Sqrt") is not None:
            sqrt = n.inputs[0].producer
            nodes += [n, sqrt]
            v = sqrt.inputs[0]
        elif n.op == "Div" and is_scalar_const(n.inputs[0], 1.0) and producer(n.inputs[1], "Sqrt") is not None:
            sqrt = n.inputs[1].producer
            nodes += [n, sqrt]
            v = sqrt.inputs[0]
        elif n.op == "Pow" and is_scalar_const(n.inputs[1], -0.5):
            nodes.append(n)
            v = n.inputs[0]
        else:
            return None
    eps = 0.0
    add = producer(v, "Add")
    if add is not None:
        a, b = add.inputs
        if scalar(b) is not None and not a.is_const:
            eps, ms = scalar(b), a
        elif scalar(a) is not None and not b.is_const:
            eps, ms = scalar(a), b
        else:
            raise _Refuse("the variance is offset by something other than a constant scalar eps")
        nodes.append(add)
    else:
        ms = v
    mean = producer(ms, "ReduceMean")
    if mean is None:
        return None
    nodes.append(mean)
    sq_v = mean.inputs[0]
    k = _trailing_axes(mean, sq_v.type.rank)
    if k is None:
        raise _Refuse(f"ReduceMean {attrs(mean)} does not reduce trailing axes with keepdims=1")
    sq = producer(sq_v)
    if sq is None:
        return None
    if sq.op == "Pow" and is_scalar_const(sq.inputs[1], 2.0):
        t = sq.inputs[0]
    elif sq.op == "Mul" and sq.inputs[0] is sq.inputs[1]:
        t = sq.inputs[0]
    else:
        return None
    nodes.append(sq)
    return t, k, eps, nodes


def _match(graph: Graph, users, nrm: Node):
    """Match at the normalizing node. Returns a dict describing the fusion, or None."""
    if nrm.op == "Div":
        cands = [(nrm.inputs[0], nrm.inputs[1], "div")]
    elif nrm.op == "Mul":
        cands = [(nrm.inputs[0], nrm.inputs[1], "mul"), (nrm.inputs[1], nrm.inputs[0], "mul")]
    else:
        return None
    for num, r, how in cands:
        if num is None or r is None or num.is_const:
            continue
        m = _match_variance(r, how)
        if m is None:
            continue
        t, k, eps, nodes = m
        if _upcast_source(t) is not _upcast_source(num):
            continue
        if not num.dtype.is_float:
            continue
        kind, base, inner = "RMSNorm", _upcast_source(num), [nrm] + nodes
        sub = producer(num, "Sub")
        # LayerNorm: num = a - ReduceMean(a) over the same axes
        if sub is not None:
            a, mean_v = sub.inputs
            mean = producer(mean_v, "ReduceMean")
            if (mean is not None and _upcast_source(mean.inputs[0]) is _upcast_source(a)
                    and _trailing_axes(mean, a.type.rank) == k):
                kind, base = "LayerNorm", _upcast_source(a)
                inner += [sub, mean]
                num = a
        return dict(kind=kind, num=num, base=base, k=k, eps=eps, inner=inner, anchor=nrm)
    return None


def _absorb_tail(graph: Graph, users, m: dict) -> None:
    """Walk down from the anchor absorbing Casts, the gamma Mul and (LayerNorm) the beta Add."""
    cur = m["anchor"].output
    rank = cur.type.rank
    k = m["k"]
    gamma = beta = None
    while True:
        nxt = only_consumer(users, graph, cur)
        if nxt is None:
            break
        if nxt.op == "Cast" and nxt.output.dtype.is_float:
            pass
        elif nxt.op == "Mul" and gamma is None and beta is None:
            c = nxt.inputs[1] if nxt.inputs[0] is cur else nxt.inputs[0]
            if c is cur or not c.is_const or not _param_ok(c, cur, nxt, k, rank):
                break
            gamma = c
        elif nxt.op == "Add" and m["kind"] == "LayerNorm" and beta is None:
            c = nxt.inputs[1] if nxt.inputs[0] is cur else nxt.inputs[0]
            if c is cur or not c.is_const or not _param_ok(c, cur, nxt, k, rank):
                break
            beta = c
        else:
            break
        m["inner"].append(nxt)
        cur = nxt.output
    m["out"], m["gamma"], m["beta"] = cur, gamma, beta


def _param_ok(c: Value, cur: Value, n: Node, k: int, rank: int) -> bool:
    """A per-feature parameter: broadcasts over the normalized dims only and keeps the shape."""
    if c.const.dtype == object or n.output.type.shape != cur.type.shape or c.type.rank > rank:
        return False
    lead = c.type.rank - k
    if lead > 0 and any(d != 1 for d in c.shape[:lead]):
        return False
    try:
        normalized = cur.shape[rank - k:]
        shape = c.shape[max(lead, 0):]
        return broadcast_shapes(normalized, shape) == tuple(normalized)
    except Exception:
        return False


def _param(c: Value | None, k: int, dtype: DType, normalized, what: str) -> np.ndarray:
    if c is None:
        if any(not isinstance(d, int) for d in normalized):
            raise _Refuse(f"normalized dims {list(map(str, normalized))} are symbolic: cannot build a ones {what}")
        return np.ones(tuple(normalized), dtype.np)
    arr = np.asarray(c.const)
    while arr.ndim > k:
        arr = arr[0]
    return np.ascontiguousarray(arr.astype(dtype.np))


def fuse_norms(graph: Graph, ctx) -> dict[str, int]:
    users = graph.users()
    matches, claimed = [], set()
    for n in graph.nodes:  # collect
        if n.op not in ("Mul", "Div") or id(n) in claimed:
            continue
        try:
            m = _match(graph, users, n)
            if m is None:
                continue
            _absorb_tail(graph, users, m)
            out = m["out"]
            bad = outside_consumers(graph, users, m["inner"], exclude=out)
            if bad is not None:
                raise _Refuse(f"inner value %{bad.name} is used outside the {m['kind']} pattern")
            if any(id(x) in claimed for x in m["inner"]):
                raise _Refuse("overlaps another fusion")
            x = next((v for v in (m["base"], m["num"]) if v.dtype == out.dtype), None)
            if x is None:
                raise _Refuse(f"no input of the result's dtype {out.dtype}")
            normalized = x.shape[x.type.rank - m["k"]:]
            m["x"] = x
            m["gamma_arr"] = _param(m["gamma"], m["k"], x.dtype, normalized, "gamma")
            m["beta_arr"] = None if m["beta"] is None else _param(m["beta"], m["k"], x.dtype, normalized, "beta")
        except _Refuse as e:
            ctx.refuse(NAME, n, str(e))
            continue
        claimed.update(id(x) for x in m["inner"])
        matches.append(m)
    counts = {"RMSNorm": 0, "LayerNorm": 0}
    for m in matches:  # commit
        out, x = m["out"], m["x"]
        last = out.producer
        gamma = graph.add_const(m["gamma_arr"], (m["gamma"].name if m["gamma"] is not None else "ones") + ".gamma")
        ins = [x, gamma]
        if m["kind"] == "LayerNorm" and m["beta_arr"] is not None:
            ins.append(graph.add_const(m["beta_arr"], m["beta"].name + ".beta"))
        node = graph.add_node(m["kind"], ins, {"axis": -m["k"], "eps": float(m["eps"])},
                              name=m["anchor"].name, before=last)
        replace_value(graph, out, node.output)
        graph.remove_nodes(m["inner"])
        counts[m["kind"]] += 1
        ctx.log(NAME, f"{m['kind']} %{node.output.name} (axis={-m['k']}, eps={m['eps']:g}) "
                      f"from {len(m['inner'])} nodes")
    ctx.stats[NAME] = counts
    return counts


@register_pass(NAME)
def run(graph: Graph, ctx) -> None:
    fuse_norms(graph, ctx)
