"""fuse-attention: scaled dot-product attention from its decomposed form -> Attention(q, k, v, mask?).

Anchor: Softmax over the last axis of a 4-D tensor, whose only consumer is MatMul(probs, v) (slot 0).
Walking up from the Softmax input, through single-consumer nodes, to the scores MatMul(q', kT')
(passes/attention_match.py: constant scales, additive mask terms, Where(cond, scores, -inf) masks and
Gemma 2's soft-capping) in any order (a scale after a mask term scales that term: a Mul node on the mask).
q' and kT' may carry a constant scalar Mul/Div (folded into `scale`). kT' = Transpose(k, perm): k is the
transpose's source when perm swaps the last two axes, else a new Transpose of the source by the composed
permutation (encoder exports: Transpose(k, [0,2,3,1]) -> Transpose(k, [0,2,1,3])); kT' that is not a
Transpose gets a new Transpose(kT', [0,1,3,2]).
GQA: when k and v both come from the repeat_kv pattern with the same n_rep, the un-repeated tensors are
used (Attention maps query head h to kv head h // n_rep; the pattern: passes/attention_match.py).
Causal: the mask is dropped and causal=1 when it is provably bottom-right causal (the analysis:
ir/causal_mask.py); anything else (e.g. HF's packed-sequence mask built from position ids) stays a mask input.
Merged batch-heads (Bloom: baddbmm/bmm over [B*H, S, D]) are first rewritten to the same ops on the 4-D
tensors (passes/attention_unmerge.py); the usual pattern then matches them.
Refusals (logged): scores/q/k/v not 4-D, Softmax not over the last axis, probabilities or an inner value
used outside the pattern, non-f32 tensors, batch dims that differ, a mask term that broadens the scores'
shape, an inferred Attention type that differs from the MatMul it replaces.
ctx.stats["fuse-attention"] = number of fusions.
"""
from __future__ import annotations

import numpy as np

from ..errors import TccError
from ..ir.causal_mask import mask_is_causal
from ..ir.core import Graph, Node, TensorType, Value
from ..ir.dtypes import DType
from ..ir.registry import broadcast_shapes, infer_types
from . import register_pass
from .attention_match import SWAP, peel_scale, unrepeat, walk_scores
from .attention_unmerge import unmerge_heads
from .rewrite_utils import attrs, only_consumer, outside_consumers, producer, replace_value, scalar

NAME = "fuse-attention"


class _Refuse(Exception):
    pass


def _nan_guard(graph: Graph, users, p: Value) -> list[Node]:
    """[Equal, Not, Where] of Where(Not(Equal(p, p)), 0, p) (SDPA exports zero the NaN rows of fully
    masked queries), else []."""
    uses = users.get(p, [])
    eq = next((n for n, _ in uses if n.op == "Equal" and n.inputs[0] is p and n.inputs[1] is p), None)
    if eq is None or len(uses) != 3:
        return []
    nt = only_consumer(users, graph, eq.output)
    if nt is None or nt.op != "Not":
        return []
    w = only_consumer(users, graph, nt.output)
    if (w is None or w.op != "Where" or w.inputs[0] is not nt.output or w.inputs[2] is not p
            or scalar(w.inputs[1]) != 0.0 or not any(n is w for n, _ in uses)):
        return []
    return [eq, nt, w]


def _match(graph: Graph, users, sm: Node) -> dict:
    x = sm.inputs[0]
    if x.type.rank != 4:
        raise _Refuse(f"scores {x.type} are not 4-D [B,H,Sq,Skv]")
    if attrs(sm)["axis"] % 4 != 3:
        raise _Refuse(f"Softmax axis {attrs(sm)['axis']} is not the last axis")
    if x.dtype != DType.f32:
        raise _Refuse(f"scores are {x.dtype}, not f32")
    probs, guard = sm.output, _nan_guard(graph, users, sm.output)
    if guard:
        probs = guard[-1].output  # Where(IsNaN(p), 0, p): Attention already gives zeros for dead rows
    pv = only_consumer(users, graph, probs)
    if pv is None or pv.op != "MatMul" or pv.inputs[0] is not probs:
        raise _Refuse("the probabilities are not consumed by exactly one MatMul(probs, v)")
    w = walk_scores(x)
    if w is None:
        raise _Refuse("no scores MatMul above the Softmax (through scale/mask ops)")
    qk, ops, chain = w
    if qk.output.type != x.type:
        raise _Refuse(f"a mask term broadens the scores {qk.output.type} to {x.type}")
    inner = [qk] + chain + [sm] + guard + [pv]
    bad = outside_consumers(graph, users, inner, exclude=pv.output)
    if bad is not None:
        raise _Refuse(f"inner value %{bad.name} is used outside the attention pattern")

    inner_outs = {id(o) for n in inner for o in n.outputs}
    for op in ops:
        if op[0] in ("add", "where") and id(op[1]) in inner_outs:
            raise _Refuse("the mask is computed from the scores themselves")
    scale, parts, softcap = 1.0, [], 0.0
    for op in ops:  # bottom-up: value = scale * S + sum(parts), or softcap * tanh(scale * S / softcap) + ...
        if op[0] == "softcap":
            if parts or softcap:
                raise _Refuse("soft-capping applied after a mask term or twice")
            softcap = op[1]  # tanh(scale * S / c): every scale found so far (and q's, k's) is inside it
            continue
        if op[0] == "scale":
            if softcap and op[1] != 1.0:
                raise _Refuse("a scale is applied after the soft-capping")
            scale *= op[1]
            parts = [p[:-1] + (p[-1] * op[1],) for p in parts]
        elif op[0] == "add":
            if op[1].dtype != DType.f32:
                raise _Refuse(f"mask %{op[1].name} is {op[1].dtype}, not f32")
            parts.append(("value", op[1], 1.0))
        else:
            parts.append(("where", op[1], op[2], op[3], 1.0))
    if any(p[-1] <= 0 for p in parts):
        raise _Refuse("a non-positive scale is applied after the mask")

    q, fq = peel_scale(qk.inputs[0])
    kt, fk = peel_scale(qk.inputs[1])
    scale *= fq * fk
    k_make = None  # (source, perm): a Transpose to create
    t = producer(kt, "Transpose")
    if t is not None and len(attrs(t)["perm"]) == 4:
        p = list(attrs(t)["perm"])
        src, fs = peel_scale(t.inputs[0])
        scale *= fs
        composed = [p[SWAP[i]] for i in range(4)]
        if composed == [0, 1, 2, 3]:
            k = src
        else:
            k_make = (src, composed)
            k = Value("k.tmp", src.type.with_shape([src.shape[i] for i in composed]))
    else:
        if kt.type.rank != 4:
            raise _Refuse(f"k^T {kt.type} is not 4-D")
        k_make = (kt, SWAP)
        k = Value("k.tmp", kt.type.with_shape([kt.shape[i] for i in SWAP]))
    v = pv.inputs[1]
    for name, t_ in (("q", q), ("k", k), ("v", v)):
        if t_.type.rank != 4:
            raise _Refuse(f"{name} {t_.type} is not 4-D [B,H,S,D]")
        if t_.dtype != DType.f32:
            raise _Refuse(f"{name} is {t_.dtype}, not f32")
    if k_make is None:
        rk, rv = unrepeat(k), unrepeat(v)
        if rk is not None and rv is not None and rk[1] == rv[1]:
            k, v = rk[0], rv[0]
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise _Refuse(f"batch dims differ: q {q.type}, k {k.type}, v {v.type}")

    causal = 0
    if mask_is_causal(parts, q.shape[2], k.shape[2]):
        parts, causal = [], 1
    mask_type = None
    if parts:
        mask_type = TensorType(DType.f32, broadcast_shapes(*[p[1].shape for p in parts]))
    probe = Node("Attention", [q, k, v] + ([Value("mask.tmp", mask_type)] if mask_type else []), [],
                 {"scale": float(scale), "causal": causal, "window": 0, "softcap": float(softcap)})
    try:
        (ot,) = infer_types(probe)
    except TccError as e:
        raise _Refuse(f"Attention does not accept these operands: {e}") from None
    if ot != pv.output.type:
        raise _Refuse(f"Attention would give {ot}, the pattern gives {pv.output.type}")
    return dict(q=q, k=k, v=v, k_make=k_make, parts=parts, scale=float(scale), causal=causal,
                softcap=float(softcap), inner=inner, pv=pv, sm=sm)


def _build_mask(graph: Graph, parts, before: Node, name: str) -> Value | None:
    terms = []
    for p in parts:
        if p[0] == "value":
            _, m, f = p
            if f != 1.0:
                m = graph.add_node("Mul", [m, graph.add_const(np.array(f, np.float32), "mask_scale")],
                                   name=name + "/mask_scale", before=before).output
            terms.append(m)
        else:
            _, cond, fill, when_true, f = p
            fv = graph.add_const(np.array(fill * f, np.float32), "mask_fill")
            zero = graph.add_const(np.array(0.0, np.float32), "mask_zero")
            ins = [cond, fv, zero] if when_true else [cond, zero, fv]
            terms.append(graph.add_node("Where", ins, name=name + "/mask", before=before).output)
    if not terms:
        return None
    total = terms[0]
    for t in terms[1:]:
        total = graph.add_node("Add", [total, t], name=name + "/mask_sum", before=before).output
    return total


def fuse_attention(graph: Graph, ctx) -> int:
    unmerged = 0
    for n in [n for n in graph.nodes if n.op == "Softmax"]:
        if unmerge_heads(graph, n, graph.users()):
            unmerged += 1
    if unmerged:
        from .eliminate_dead_code import eliminate_dead_code

        eliminate_dead_code(graph)
        graph.toposort()
        ctx.log(NAME, f"{unmerged} merged batch-heads attention(s) rewritten on [B,H,S,D] tensors")
    users = graph.users()
    matches, claimed = [], set()
    for n in graph.nodes:  # collect
        if n.op != "Softmax":
            continue
        try:
            m = _match(graph, users, n)
            if any(id(x) in claimed for x in m["inner"]):
                raise _Refuse("overlaps another fusion")
        except _Refuse as e:
            ctx.refuse(NAME, n, str(e))
            continue
        claimed.update(id(x) for x in m["inner"])
        matches.append(m)
    for m in matches:  # commit
        pv = m["pv"]
        name = m["sm"].name or pv.name
        k = m["k"]
        if m["k_make"] is not None:
            src, perm = m["k_make"]
            k = graph.add_node("Transpose", [src], {"perm": perm}, name=name + "/k", before=pv).output
        mask = _build_mask(graph, m["parts"], pv, name)
        ins = [m["q"], k, m["v"]] + ([mask] if mask is not None else [])
        at = {"scale": m["scale"], "causal": m["causal"]}
        if m["softcap"]:
            at["softcap"] = m["softcap"]
        att = graph.add_node("Attention", ins, at, name=name, before=pv)
        replace_value(graph, pv.output, att.output)
        graph.remove_nodes(m["inner"])
        ctx.log(NAME, f"Attention %{att.output.name} (scale={m['scale']:g}, causal={m['causal']}, "
                      f"{'softcap=%g, ' % m['softcap'] if m['softcap'] else ''}"
                      f"kv heads {k.shape[1]} for {m['q'].shape[1]} query heads, "
                      f"{'mask' if mask is not None else 'no mask'})")
    ctx.stats[NAME] = ctx.stats.get(NAME, 0) + len(matches)
    return len(matches)


@register_pass(NAME)
def run(graph: Graph, ctx) -> None:
    fuse_attention(graph, ctx)
