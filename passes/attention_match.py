"""Pattern pieces of fuse-attention (passes/fuse_attention.py), also used by kv-cache: the walk from a Softmax
input up to the scores MatMul, constant scales, Gemma 2's soft-capping and the repeat_kv (GQA) pattern.

Walking up from the Softmax input, through single-consumer nodes, to the scores MatMul(q', kT'):
  * Mul by a constant scalar (either operand) / Div by one (operand 1)          -> scale
  * Add(scores, mask) (either operand; mask f32, broadcast to the scores' shape)  -> additive mask term
  * Where(cond, scores, fill) / Where(cond, fill, scores), fill a constant -inf or <= -1e4
                                                   -> additive term Where(cond, 0, fill) (a new node)
  * Mul(Tanh(Div(scores, c) | Mul(scores, 1/c)), c), c a constant scalar > 0   -> softcap=c (Gemma 2's
    attn_logit_softcapping; only below every mask term and with no scale above it)
GQA: when k and v both come from the repeat_kv pattern with the same n_rep, the un-repeated tensors are
used (Attention maps query head h to kv head h // n_rep):
  Reshape(Expand|Tile|Concat-on-axis-2(Unsqueeze(x, axes=[2])) [B,Hkv,n,S,D]) -> [B,Hkv*n,S,D], or,
  with Hkv = 1, Expand/Tile/Concat(x [B,1,S,D]) -> [B,n,S,D] directly.
"""
from __future__ import annotations

import math

from ..ir.core import Node, Value
from .rewrite_utils import attrs, producer, same_dims, scalar

SWAP = [0, 1, 3, 2]  # the permutation that transposes the last two axes of a 4-D tensor
NEG_BIG = -1e4  # a Where fill at or below this is a "masked" score
MAX_DEPTH = 12


def const_scalar_operand(n: Node):
    """(other operand, factor) for Mul by a constant scalar or Div by one; else None."""
    if n.op == "Mul":
        for i in (0, 1):
            c = scalar(n.inputs[i])
            other = n.inputs[1 - i]
            if c is not None and other is not None and not other.is_const:
                return other, c
    elif n.op == "Div":
        c = scalar(n.inputs[1])
        if c is not None and not n.inputs[0].is_const:
            return n.inputs[0], 1.0 / c
    return None


def walk_scores(v: Value, depth: int = 0):
    """From the Softmax input up to the scores MatMul: (matmul, ops bottom-up, nodes) or None."""
    n = v.producer
    if n is None or depth > MAX_DEPTH:
        return None
    if n.op == "MatMul":
        return n, [], []
    if n.op in ("Mul", "Div"):
        so = const_scalar_operand(n)
        if so is None:
            return None
        cap = _softcap(n, so) if n.op == "Mul" else None
        if cap is not None:
            r = walk_scores(cap[1], depth + 1)
            return None if r is None else (r[0], r[1] + [("softcap", cap[0])], r[2] + [n] + cap[2])
        r = walk_scores(so[0], depth + 1)
        return None if r is None else (r[0], r[1] + [("scale", so[1])], r[2] + [n])
    if n.op == "Add":
        for i in (0, 1):
            s, m = n.inputs[i], n.inputs[1 - i]
            if s is m or s is None or m is None:
                continue
            r = walk_scores(s, depth + 1)
            if r is not None:
                return r[0], r[1] + [("add", m)], r[2] + [n]
        return None
    if n.op == "Where":
        cond, a, b = n.inputs
        for s, fill, fill_when_true in ((a, b, False), (b, a, True)):
            f = scalar(fill)
            if f is None or not (f == -math.inf or f <= NEG_BIG) or s.is_const:
                continue
            r = walk_scores(s, depth + 1)
            if r is not None:
                return r[0], r[1] + [("where", cond, f, fill_when_true)], r[2] + [n]
        return None
    return None


def _softcap(mul: Node, so):
    """(c, scores, [Tanh, Div]) when mul = Mul(Tanh(scores / c), c) with the same constant c > 0."""
    t = so[0].producer
    c = so[1]
    if t is None or t.op != "Tanh" or not c > 0:
        return None
    d = t.inputs[0].producer
    if d is None or d.op not in ("Mul", "Div"):
        return None
    inner = const_scalar_operand(d)
    if inner is None or not math.isclose(inner[1] * c, 1.0, rel_tol=1e-6):
        return None
    return c, inner[0], [t, d]


def peel_scale(v: Value):
    """Strip constant-scalar Mul/Div: (source, factor)."""
    f = 1.0
    while v.producer is not None and v.producer.op in ("Mul", "Div"):
        so = const_scalar_operand(v.producer)
        if so is None:
            break
        v, f = so[0], f * so[1]
    return v, f


def unrepeat(x: Value):
    """(source, n_rep) when x is repeat_kv(source); else None."""
    if x.type.rank != 4:
        return None
    b, h, s, d = x.shape
    r = producer(x, "Reshape")
    if r is not None:
        e = producer(r.inputs[0], ("Expand", "Tile", "Concat"))
        if e is None:
            return None
        if e.op == "Concat" and (attrs(e)["axis"] % 5 != 2 or any(i is not e.inputs[0] for i in e.inputs)):
            return None
        u = producer(e.inputs[0], "Unsqueeze")
        if u is None or [a % 5 for a in attrs(u)["axes"]] != [2]:
            return None
        src = u.inputs[0]
        if src.type.rank != 4:
            return None
        sb, sh, ss, sd = src.shape
        eb, eh, n, es, ed = e.output.shape
        if not isinstance(n, int) or not same_dims((eb, eh, es, ed), (sb, sh, ss, sd)):
            return None
        if not same_dims((b, s, d), (sb, ss, sd)) or h != sh * n:
            return None
        return src, n
    e = producer(x, ("Expand", "Tile", "Concat"))
    if e is None:
        return None
    if e.op == "Concat" and (attrs(e)["axis"] % 4 != 1 or any(i is not e.inputs[0] for i in e.inputs)):
        return None
    src = e.inputs[0]
    if src.type.rank != 4 or src.shape[1] != 1 or not same_dims(
            (src.shape[0], src.shape[2], src.shape[3]), (b, s, d)) or not isinstance(h, int):
        return None
    return src, h
