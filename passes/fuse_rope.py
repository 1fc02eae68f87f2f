"""fuse-rope: fold the rotary embedding of KVAttention's q and k into the op (tables indexed by position).

After kv-cache, q and k of a KVAttention still carry their rotary embedding as ops. Matched by structure:
    y = Add(Mul(x, cos), Mul(r, sin))             (operands in either order)
    y = Concat(Add(Mul(x', cos), Mul(r, sin)), x_pass) on the last axis, x' = Slice(x, 0:rd), x_pass =
        Slice(x, rd:D)                          (partial rotary)
    y = RotaryEmbedding(x, cos_cache, sin_cache, position_ids?)  (ONNX opset 23; 4-D x)
where r is computed from x alone (rotate-half or rotate-every-two: Slice/Neg/Concat/Unsqueeze/Reshape) and
cos/sin depend only on the shape symbols (llm-interface made the positions past + arange(seq)).
Optionally y reaches the op through Transpose(perm [0,2,1,3]) (GPT-J rotates in [B,S,H,D] layout): the
Transpose then applies to x.

The tables are found by evaluating cos/sin at past=0, seq=capacity (rows = positions; the halves, or the
even/odd entries, must be equal; passes/rope_tables.py), and the match is checked numerically: with random x at two (past, seq)
bindings, the rotary subgraph must equal the reference rotation for the convention (rotate-half or
interleaved) within fp32 rounding; the convention that matches is taken. q and k must use the same tables
and convention. Then KVAttention(x_q, x_k, ...) gets cos/sin constants [capacity, rd/2] and {rope, rotary_dim};
the old rotary ops die. Anything else is left as ops (still correct, only slower) and logged.
ctx.stats["fuse-rope"] = number of KVAttention nodes with a fused rotary embedding.
"""
from __future__ import annotations

import numpy as np

from ..errors import TccError
from ..ir.core import Graph, Node, Value
from ..ir.ops.kv import ROPE_HALF, ROPE_INTERLEAVED
from . import register_pass
from .rewrite_utils import attrs, producer
from .rope_tables import position_table, subgraph, verify_rotation

NAME = "fuse-rope"
ROPE_OPS = ("Slice", "Neg", "Concat", "Unsqueeze", "Reshape", "Squeeze", "Flatten", "Identity", "Mul", "Expand")


class _Refuse(Exception):
    pass


def _symbol_only(graph: Graph, v: Value, inputs: set[int]) -> bool:
    """v depends on no graph input and no state (only constants and shape symbols)."""
    stack, seen = [v], set()
    while stack:
        x = stack.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        if id(x) in inputs or x.name in graph.states:
            return False
        if x.producer is not None:
            stack.extend(i for i in x.producer.inputs if i is not None)
    return True


def _leaves_from(v: Value, stop: set[int], depth: int = 0) -> set[int] | None:
    """ids of non-constant values feeding v through ROPE_OPS, stopping at `stop`."""
    if id(v) in stop:
        return {id(v)}
    if v.is_const:
        return set()
    n = v.producer
    if n is None or n.op not in ROPE_OPS or depth > 12:
        return {id(v)}
    out: set[int] = set()
    for i in n.inputs:
        if i is not None:
            r = _leaves_from(i, stop, depth + 1)
            if r is None:
                return None
            out |= r
    return out


def _split_rotation(graph: Graph, y: Value, inputs: set[int]):
    """(x, cos, sin) for y = x*cos + r(x)*sin; None if y is not of that form."""
    add = producer(y, "Add")
    if add is None:
        return None
    muls = [producer(i, "Mul") for i in add.inputs]
    if None in muls:
        return None
    for plain, rot in ((muls[0], muls[1]), (muls[1], muls[0])):
        for xi in (0, 1):
            x, c = plain.inputs[xi], plain.inputs[1 - xi]
            if x.is_const or not _symbol_only(graph, c, inputs) or _symbol_only(graph, x, inputs):
                continue
            for ri in (0, 1):
                r, s = rot.inputs[ri], rot.inputs[1 - ri]
                if r is x or not _symbol_only(graph, s, inputs):
                    continue
                if _leaves_from(r, {id(x)}) == {id(x)}:
                    return x, c, s
    return None


def _match_value(graph: Graph, y: Value, inputs: set[int]):
    """(x, cos value, sin value, rotary_dim or None, transposed, onnx_node) for a rotated value y."""
    transposed = False
    t = producer(y, "Transpose")
    if t is not None and list(attrs(t)["perm"]) == [0, 2, 1, 3]:
        y, transposed = t.inputs[0], True
    if y.type.rank != 4:
        return None
    d = y.shape[3]
    n = producer(y, "RotaryEmbedding")
    if n is not None:
        return n.inputs[0], None, None, attrs(n).get("rotary_embedding_dim") or d, transposed, n
    full = _split_rotation(graph, y, inputs)
    if full is not None:
        return full[0], full[1], full[2], None, transposed, None
    cat = producer(y, "Concat")
    if cat is not None and len(cat.inputs) == 2 and attrs(cat)["axis"] % 4 == 3:
        part = _split_rotation(graph, cat.inputs[0], inputs)
        s_rot, s_pass = producer(part[0] if part else None, "Slice"), producer(cat.inputs[1], "Slice")
        if part is not None and s_rot is not None and s_pass is not None and s_rot.inputs[0] is s_pass.inputs[0]:
            rd = part[0].shape[3]
            if isinstance(rd, int):
                return s_rot.inputs[0], part[1], part[2], rd, transposed, None
    return None


def _onnx_tables(graph, node: Node, llm: dict, inputs: set[int]):
    """Tables of an ONNX RotaryEmbedding: constant caches indexed by position_ids (which must be the
    generation positions), or symbol-only caches [B, S, rd/2] without position_ids."""
    cos, sin = node.inputs[1], node.inputs[2]
    pos = node.input(3)
    if pos is not None:
        if not (cos.is_const and sin.is_const and cos.const.ndim == 2 and _symbol_only(graph, pos, inputs)):
            return None
        cap = llm["capacity"]
        if cos.const.shape[0] < cap:
            raise _Refuse(f"RotaryEmbedding cache has {cos.const.shape[0]} positions, fewer than the context {cap}")
        return cos.const[:cap].astype(np.float32), sin.const[:cap].astype(np.float32)
    tables = []
    for c in (cos, sin):  # [batch, seq, rd/2] computed from the positions
        sub = subgraph(graph, c)
        if sub is None or c.type.rank != 3:
            return None
        from ..ir.interpreter import run_graph

        try:
            (arr,) = run_graph(sub, {}, symbols={llm["batch"]: 1, llm["past"]: 0,
                                                  llm["seq"]: llm["capacity"]}).values()
        except (TccError, ValueError, IndexError):
            return None
        tables.append(np.ascontiguousarray(np.asarray(arr, np.float32)[0]))
    return tuple(tables)


def _match(graph: Graph, kva: Node, llm: dict, memo: dict) -> dict:
    inputs = {id(v) for v in graph.inputs}
    found = []
    for slot in (0, 1):
        m = _match_value(graph, kva.inputs[slot], inputs)
        if m is None:
            raise _Refuse(f"{'qk'[slot]} is not a recognized rotary embedding")
        found.append(m)
    result = {}
    for slot, (x, c, s, rd, transposed, onnx_node) in zip((0, 1), found):
        y = kva.inputs[slot]
        d = x.shape[3]
        rd = rd or d
        if not isinstance(rd, int) or rd % 2 or rd > d:
            raise _Refuse(f"rotary dim {rd} of head dim {d}")
        ok = None
        if onnx_node is not None:
            tables = _onnx_tables(graph, onnx_node, llm, inputs)
            mode = ROPE_INTERLEAVED if attrs(onnx_node)["interleaved"] else ROPE_HALF
            if tables is not None and verify_rotation(graph, y, x, *tables, mode, rd, llm, transposed):
                ok = (mode, *tables)
        else:
            for mode in (ROPE_HALF, ROPE_INTERLEAVED):
                shape = producer(y, "Transpose").inputs[0].shape if transposed else y.shape
                tc = position_table(graph, c, shape, llm, rd, mode, memo)
                ts = position_table(graph, s, shape, llm, rd, mode, memo)
                if tc is not None and ts is not None and verify_rotation(graph, y, x, tc, ts, mode, rd, llm, transposed):
                    ok = (mode, tc, ts)
                    break
        if ok is None:
            raise _Refuse(f"{'qk'[slot]}: the rotation does not match rotate-half or interleaved rotary tables")
        result[slot] = dict(x=x, mode=ok[0], cos=ok[1], sin=ok[2], rd=rd, transposed=transposed)
    q, k = result[0], result[1]
    if q["mode"] != k["mode"] or q["rd"] != k["rd"] or not (np.array_equal(q["cos"], k["cos"])
                                                           and np.array_equal(q["sin"], k["sin"])):
        raise _Refuse("q and k use different rotary tables")
    return result


def fuse_rope(graph: Graph, ctx) -> int:
    llm = graph.meta.get("llm")
    if not llm or not llm.get("kv_cache"):
        return 0
    matches, memo = [], {}
    for n in graph.nodes:
        if n.op != "KVAttention" or attrs(n)["rope"]:
            continue
        try:
            matches.append((n, _match(graph, n, llm, memo)))
        except _Refuse as e:
            ctx.refuse(NAME, n, str(e))
    tables: dict[bytes, tuple[Value, Value]] = {}
    for n, m in matches:
        q, k = m[0], m[1]
        key = q["cos"].tobytes() + q["sin"].tobytes()
        if key not in tables:  # every layer shares one pair of tables
            tables[key] = (graph.add_const(q["cos"], "rope_cos"), graph.add_const(q["sin"], "rope_sin"))
        cos, sin = tables[key]
        new_in = []
        for r in (q, k):
            x = r["x"]
            if r["transposed"]:
                x = graph.add_node("Transpose", [x], {"perm": [0, 2, 1, 3]}, name=n.name + "/unrotated",
                                   before=n).output
            new_in.append(x)
        n.inputs = new_in + n.inputs[2:6] + [cos, sin] + n.inputs[8:]  # ALiBi slopes stay
        n.attrs.update(rope=q["mode"], rotary_dim=q["rd"])
        ctx.log(NAME, f"{n.name}: {'rotate-half' if q['mode'] == ROPE_HALF else 'interleaved'} rotary, "
                      f"dim {q['rd']}")
    graph.toposort()
    ctx.stats[NAME] = len(matches)
    return len(matches)


@register_pass(NAME)
def run(graph: Graph, ctx) -> None:
    fuse_rope(graph, ctx)
