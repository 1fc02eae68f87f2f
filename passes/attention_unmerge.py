"""Merged batch-heads attention (Bloom: baddbmm/bmm over [B*H, S, D]) rewritten on [B,H,S,D] tensors, so that
fuse-attention's usual pattern matches it.

A 4-D Softmax whose scores are Reshape([B*H,S,Skv] -> [B,H,S,Skv]) of elementwise ops (scalar constants,
[B*H, 1|S, Skv] operands such as the ALiBi bias) over MatMul(Reshape(q [B,H,S,D]), Transpose(Reshape(k
[B,H,Skv,D]), [0,2,1])), and whose probabilities go Reshape(-> [B*H,S,Skv]) -> MatMul(., Reshape(v
[B,H,Skv,Dv])) -> Reshape(-> [B,H,S,Dv]), is rewritten to the same ops on the 4-D tensors (each 3-D operand
reshaped to [B,H,1|S,Skv]).
"""
from __future__ import annotations

import numpy as np

from ..ir.core import Graph, Node, Value
from .attention_match import SWAP
from .rewrite_utils import attrs, only_consumer, producer, same_dims


def _merged_source(x: Value):
    """x4 when x = Reshape(x4 [B,H,a,b]) -> [B*H,a,b]; else None."""
    r = producer(x, "Reshape")
    if r is None or x.type.rank != 3 or r.inputs[0].type.rank != 4:
        return None
    b, h, a, c = r.inputs[0].shape
    return r.inputs[0] if same_dims(x.shape, (b * h, a, c)) else None


def _shape_const(graph: Graph, dims) -> Value:
    shape = np.empty(len(dims), object)
    shape[:] = list(dims)
    return graph.add_const(shape if any(not isinstance(d, int) for d in dims) else shape.astype(np.int64),
                           "unmerged_shape")


def unmerge_heads(graph: Graph, sm: Node, users) -> bool:
    """Rewrite one merged batch-heads attention (see the docstring) around Softmax sm; True if done."""
    x = sm.inputs[0]
    if x.type.rank != 4:
        return False
    b, h, sq, skv = x.shape
    chain, v = [], x  # from the Softmax input up to the Reshape that splits B*H
    while v.producer is not None and v.producer.op in ("Add", "Mul", "Div", "Sub", "Where") and len(chain) < 8:
        chain.append(v.producer)
        ins = [i for i in v.producer.inputs if i is not None and not i.is_const and i.type.rank == 4
               and same_dims(i.shape, x.shape)]
        if not ins:
            return False
        v = ins[0]
    split = producer(v, "Reshape")
    if split is None or split.inputs[0].type.rank != 3 or not same_dims(split.inputs[0].shape, (b * h, sq, skv)):
        return False
    inner, y = [], split.inputs[0]  # elementwise ops between the 3-D MatMul and the split
    while y.producer is not None and y.producer.op in ("Add", "Mul", "Div", "Sub") and len(inner) < 8:
        inner.append(y.producer)
        ins = [i for i in y.producer.inputs if not i.is_const and same_dims(i.shape, y.shape)]
        if len(ins) != 1 and not (len(ins) == 2 and any(producer(i, "MatMul") for i in ins)):
            return False
        y = next((i for i in ins if producer(i, "MatMul")), ins[0])
    mm = producer(y, "MatMul")
    if mm is None:
        return False
    q4 = _merged_source(mm.inputs[0])
    t = producer(mm.inputs[1], "Transpose")
    k4 = _merged_source(t.inputs[0]) if t is not None and list(attrs(t)["perm"]) == [0, 2, 1] else None
    if q4 is None or k4 is None or not same_dims(q4.shape[:2], (b, h)) or not same_dims(k4.shape[:2], (b, h)):
        return False
    us = users.get(sm.output, [])
    if len(us) != 1 or us[0][0].op != "Reshape" or not same_dims(us[0][0].output.shape, (b * h, sq, skv)):
        return False
    pv = only_consumer(users, graph, us[0][0].output)
    v4 = _merged_source(pv.inputs[1]) if pv is not None and pv.op == "MatMul" and pv.inputs[0] is us[0][0].output \
        else None
    back = only_consumer(users, graph, pv.output) if v4 is not None else None
    if v4 is None or back is None or back.op != "Reshape" or not same_dims(v4.shape[:2], (b, h)) or \
            not same_dims(back.output.shape, (b, h, sq, v4.shape[3])):
        return False
    # commit: the same ops on 4-D tensors
    kt = graph.add_node("Transpose", [k4], {"perm": SWAP}, name=mm.name + "/unmerged_kT", before=split).output
    cur = graph.add_node("MatMul", [q4, kt], name=mm.name + "/unmerged", before=split).output
    prev = y
    for n in reversed(inner):
        ins = []
        for i in n.inputs:
            if i is prev:
                ins.append(cur)
            elif i.is_const or i.type.rank == 0:
                ins.append(i)
            else:  # a [B*H, a, c] (or broadcast) operand: viewed as [B, H, a, c]
                if i.type.rank != 3 or not same_dims(i.shape[:1], (b * h,)):
                    return False  # nothing committed that matters: the new nodes are dead, DCE drops them
                ins.append(graph.add_node("Reshape", [i, _shape_const(graph, (b, h) + tuple(i.shape[1:]))],
                                          name=n.name + "/unmerged_operand", before=split).output)
        prev = n.output
        cur = graph.add_node(n.op, ins, dict(n.attrs), name=n.name + "/unmerged", before=split).output
    graph.replace_uses(split.output, cur)
    out = graph.add_node("MatMul", [sm.output, v4], name=pv.name + "/unmerged", before=back).output
    graph.replace_uses(back.output, out)
    return True
