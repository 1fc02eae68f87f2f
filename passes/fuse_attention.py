"""fuse-attention: scaled dot-product attention from its decomposed form -> Attention(q, k, v, mask?).

Anchor: Softmax over the last axis of a 4-D tensor, whose only consumer is MatMul(probs, v) (slot 0).
Walking up from the Softmax input, through single-consumer nodes, to the scores MatMul(q', kT'):
  * Mul by a constant scalar (either operand) / Div by one (operand 1)          -> scale
  * Add(scores, mask) (either operand; mask f32, broadcast to the scores' shape)  -> additive mask term
  * Where(cond, scores, fill) / Where(cond, fill, scores), fill a constant -inf or <= -1e4
                                                   -> additive term Where(cond, 0, fill) (a new node)
  * Mul(Tanh(Div(scores, c) | Mul(scores, 1/c)), c), c a constant scalar > 0   -> softcap=c (Gemma 2's
    attn_logit_softcapping; only below every mask term and with no scale above it)
  in any order (a scale after a mask term scales that term: a Mul node on the mask).
q' and kT' may carry a constant scalar Mul/Div (folded into `scale`). kT' = Transpose(k, perm): k is the
transpose's source when perm swaps the last two axes, else a new Transpose of the source by the composed
permutation (encoder exports: Transpose(k, [0,2,3,1]) -> Transpose(k, [0,2,1,3])); kT' that is not a
Transpose gets a new Transpose(kT', [0,1,3,2]).
GQA: when k and v both come from the repeat_kv pattern with the same n_rep, the un-repeated tensors are
used (Attention maps query head h to kv head h // n_rep):
  Reshape(Expand|Tile|Concat-on-axis-2(Unsqueeze(x, axes=[2])) [B,Hkv,n,S,D]) -> [B,Hkv*n,S,D], or,
  with Hkv = 1, Expand/Tile/Concat(x [B,1,S,D]) -> [B,n,S,D] directly.
Causal: the mask is dropped and causal=1 when it is provably bottom-right causal: 0 where
j <= i + Skv - Sq, -inf or <= -1e30 elsewhere, with Skv - Sq a constant >= 0 so no row is fully masked
(then masked probabilities are exactly 0 either way, given |scores| << 1e30). Proofs: a constant mask is
checked elementwise; a run-time mask is evaluated abstractly as index arithmetic over its last two axes
(Range(c, N, 1), Unsqueeze/Squeeze/Reshape of unit dims, Expand, Add/Sub/Neg, comparisons, Not,
Where(pred, 0, fill), Trilu(ConstantOfShape(fill), k)) and must equal the causal predicate for every
binding. Anything else (e.g. HF's packed-sequence mask built from position ids) stays a mask input.
Merged batch-heads (Bloom: baddbmm/bmm over [B*H, S, D]): a 4-D Softmax whose scores are
Reshape([B*H,S,Skv] -> [B,H,S,Skv]) of elementwise ops (scalar constants, [B*H, 1|S, Skv] operands such as
the ALiBi bias) over MatMul(Reshape(q [B,H,S,D]), Transpose(Reshape(k [B,H,Skv,D]), [0,2,1])), and whose
probabilities go Reshape(-> [B*H,S,Skv]) -> MatMul(., Reshape(v [B,H,Skv,Dv])) -> Reshape(-> [B,H,S,Dv]),
is first rewritten to the same ops on the 4-D tensors (each 3-D operand reshaped to [B,H,1|S,Skv]); the
usual pattern then matches it.
Refusals (logged): scores/q/k/v not 4-D, Softmax not over the last axis, probabilities or an inner value
used outside the pattern, non-f32 tensors, batch dims that differ, a mask term that broadens the scores'
shape, an inferred Attention type that differs from the MatMul it replaces.
ctx.stats["fuse-attention"] = number of fusions.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import TccError
from ..ir.core import Graph, Node, TensorType, Value
from ..ir.dtypes import DType
from ..ir.registry import broadcast_shapes, infer_types
from . import register_pass
from .rewrite_utils import (attrs, only_consumer, outside_consumers, producer, replace_value, same_dims,
                            scalar)

NAME = "fuse-attention"
SWAP = [0, 1, 3, 2]
NEG_BIG = -1e4  # a Where fill at or below this is a "masked" score
CAUSAL_FILL = -1e30  # a constant mask entry at or below this is treated like -inf (see docstring)
MAX_DEPTH = 12


class _Refuse(Exception):
    pass


def _const_scalar_operand(n: Node):
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


def _walk(v: Value, depth: int = 0):
    """From the Softmax input up to the scores MatMul: (matmul, ops bottom-up, nodes) or None."""
    n = v.producer
    if n is None or depth > MAX_DEPTH:
        return None
    if n.op == "MatMul":
        return n, [], []
    if n.op in ("Mul", "Div"):
        so = _const_scalar_operand(n)
        if so is None:
            return None
        cap = _softcap(n, so) if n.op == "Mul" else None
        if cap is not None:
            r = _walk(cap[1], depth + 1)
            return None if r is None else (r[0], r[1] + [("softcap", cap[0])], r[2] + [n] + cap[2])
        r = _walk(so[0], depth + 1)
        return None if r is None else (r[0], r[1] + [("scale", so[1])], r[2] + [n])
    if n.op == "Add":
        for i in (0, 1):
            s, m = n.inputs[i], n.inputs[1 - i]
            if s is m or s is None or m is None:
                continue
            r = _walk(s, depth + 1)
            if r is not None:
                return r[0], r[1] + [("add", m)], r[2] + [n]
        return None
    if n.op == "Where":
        cond, a, b = n.inputs
        for s, fill, fill_when_true in ((a, b, False), (b, a, True)):
            f = scalar(fill)
            if f is None or not (f == -math.inf or f <= NEG_BIG) or s.is_const:
                continue
            r = _walk(s, depth + 1)
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
    inner = _const_scalar_operand(d)
    if inner is None or not math.isclose(inner[1] * c, 1.0, rel_tol=1e-6):
        return None
    return c, inner[0], [t, d]


def _peel_scale(v: Value):
    """Strip constant-scalar Mul/Div: (source, factor)."""
    f = 1.0
    while v.producer is not None and v.producer.op in ("Mul", "Div"):
        so = _const_scalar_operand(v.producer)
        if so is None:
            break
        v, f = so[0], f * so[1]
    return v, f


def _unrepeat(x: Value):
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


def _const_mask(parts, shape) -> np.ndarray | None:
    """The total mask as an array when every term is constant."""
    total = np.zeros((), np.float32)
    for p in parts:
        if p[0] == "value":
            _, m, f = p
            if not m.is_const or m.const.dtype == object:
                return None
            total = total + m.const.astype(np.float32) * np.float32(f)
        else:
            _, cond, fill, when_true, f = p
            if not cond.is_const:
                return None
            fv = np.float32(fill * f)
            total = total + (np.where(cond.const, fv, 0) if when_true else np.where(cond.const, 0, fv))
    return total.astype(np.float32)


def _is_causal(mask: np.ndarray, sq, skv) -> bool:
    if not isinstance(sq, int) or not isinstance(skv, int) or skv < sq or mask.ndim < 2:
        return False
    if mask.shape[-2:] != (sq, skv):
        return False
    full = np.broadcast_to(mask, mask.shape[:-2] + (sq, skv))
    allowed = np.arange(skv)[None, :] <= np.arange(sq)[:, None] + (skv - sq)
    ok_allowed = np.all(full[..., allowed] == 0)
    ok_masked = np.all(full[..., ~allowed] <= CAUSAL_FILL)
    return bool(ok_allowed and ok_masked)


# ---------------------------------------------------------------------------------------------
# proving a run-time mask causal: an abstract evaluation of index arithmetic
# ---------------------------------------------------------------------------------------------
# A form describes a tensor by its value at index idx (axes keyed from the right, -1 = last):
#   lin:  sum(coeffs[a] * idx[a]) + const
#   pred: (lin) <op> 0
#   mask: 0 where pred holds, `fill` (-inf or <= CAUSAL_FILL) elsewhere
_FLIP = {"<": ">=", "<=": ">", ">": "<=", ">=": "<", "==": "!=", "!=": "=="}
_CMP = {"Less": "<", "LessOrEqual": "<=", "Greater": ">", "GreaterOrEqual": ">=", "Equal": "=="}


def _form(kind, coeffs, const, shape, op=None, fill=None):
    rank = len(shape)
    coeffs = {a: c for a, c in coeffs.items() if c and -rank <= a < 0 and shape[a] != 1}
    return (kind, coeffs, const, op, fill)


def _int_scalar(v):
    if v is None or not v.is_const or v.const.dtype == object or v.const.size != 1:
        return None
    x = v.const.reshape(-1)[0]
    return int(x) if float(x) == int(x) else None


def _fill_value(v):
    """The fill of a tensor whose every element is one very negative constant."""
    f = scalar(v)
    if f is not None:
        return f
    n = v.producer
    if n is not None and n.op == "ConstantOfShape":
        return float(attrs(n)["value"])
    if n is not None and n.op == "Expand":
        return scalar(n.inputs[0])
    return None


def _remap(coeffs, in_shape, out_shape, positions):
    """positions[i] = output axis (positive) of input axis i (positive)."""
    rin, rout = len(in_shape), len(out_shape)
    return {positions[rin + a] - rout: c for a, c in coeffs.items()}


def _index_form(v: Value, depth: int = 0):
    if v is None or depth > 24:
        return None
    if v.is_const:
        c = _int_scalar(v)
        return None if c is None else _form("lin", {}, c, v.shape)
    n = v.producer
    if n is None:
        return None
    op, shape = n.op, v.shape
    if op == "Range":
        start, delta = _int_scalar(n.inputs[0]), _int_scalar(n.inputs[2])
        if start is None or delta != 1:
            return None
        return _form("lin", {-1: 1}, start, shape)
    if op in ("Identity", "Cast", "Expand"):
        if op == "Cast" and n.output.dtype.np == np.bool_:
            return None
        f = _index_form(n.inputs[0], depth + 1)
        return None if f is None else _form(f[0], f[1], f[2], shape, f[3], f[4])
    if op in ("Unsqueeze", "Squeeze", "Reshape"):
        f = _index_form(n.inputs[0], depth + 1)
        if f is None:
            return None
        src = n.inputs[0].shape
        big = [i for i, d in enumerate(src) if d != 1]
        big_out = [i for i, d in enumerate(shape) if d != 1]
        if len(big) != len(big_out) or any(src[i] != shape[j] for i, j in zip(big, big_out)):
            return None
        pos = dict(zip(big, big_out))
        coeffs = {a: c for a, c in f[1].items()}  # coefficients only live on non-unit axes
        return _form(f[0], _remap(coeffs, src, shape, pos), f[2], shape, f[3], f[4])
    if op in ("Add", "Sub"):
        a, b = _index_form(n.inputs[0], depth + 1), _index_form(n.inputs[1], depth + 1)
        if a is None or b is None or a[0] != "lin" or b[0] != "lin":
            return None
        sign = 1 if op == "Add" else -1
        coeffs = dict(a[1])
        for k, c in b[1].items():
            coeffs[k] = coeffs.get(k, 0) + sign * c
        return _form("lin", coeffs, a[2] + sign * b[2], shape)
    if op == "Neg":
        a = _index_form(n.inputs[0], depth + 1)
        if a is None or a[0] != "lin":
            return None
        return _form("lin", {k: -c for k, c in a[1].items()}, -a[2], shape)
    if op in _CMP:
        a, b = _index_form(n.inputs[0], depth + 1), _index_form(n.inputs[1], depth + 1)
        if a is None or b is None or a[0] != "lin" or b[0] != "lin":
            return None
        coeffs = dict(a[1])
        for k, c in b[1].items():
            coeffs[k] = coeffs.get(k, 0) - c
        return _form("pred", coeffs, a[2] - b[2], shape, _CMP[op])
    if op == "Not":
        a = _index_form(n.inputs[0], depth + 1)
        if a is None or a[0] != "pred":
            return None
        return _form("pred", a[1], a[2], shape, _FLIP[a[3]])
    if op == "Where":
        c = _index_form(n.inputs[0], depth + 1)
        x, y = scalar(n.inputs[1]), scalar(n.inputs[2])
        if c is None or c[0] != "pred" or x is None or y is None:
            return None
        if x == 0 and y <= CAUSAL_FILL:
            return _form("mask", c[1], c[2], shape, c[3], y)
        if y == 0 and x <= CAUSAL_FILL:
            return _form("mask", c[1], c[2], shape, _FLIP[c[3]], x)
        return None
    if op == "Trilu":
        fill = _fill_value(n.inputs[0])
        k = 0 if n.input(1) is None else _int_scalar(n.inputs[1])
        if fill is None or fill > CAUSAL_FILL or k is None:
            return None
        # triu keeps (fill) where col - row >= k, so the zeros are where col - row - k < 0
        return _form("mask", {-1: 1, -2: -1}, -k, shape, "<" if attrs(n)["upper"] else ">", fill)
    return None


def _provably_causal(parts, sq, skv) -> bool:
    """True when the only mask term is exactly bottom-right causal with a -inf / <= CAUSAL_FILL fill
    for every shape binding (rows have at least one open key: Skv - Sq is a constant >= 0)."""
    if len(parts) != 1:
        return False
    p = parts[0]
    if p[0] == "value":
        f = _index_form(p[1])
        if f is None or f[0] != "mask" or f[4] * p[2] > CAUSAL_FILL:
            return False
        shape = p[1].shape
        coeffs, const, op = f[1], f[2], f[3]
    else:
        _, cond, fill, when_true, factor = p
        f = _index_form(cond)
        if f is None or f[0] != "pred" or fill * factor > CAUSAL_FILL:
            return False
        shape = cond.shape
        coeffs, const, op = f[1], f[2], (_FLIP[f[3]] if when_true else f[3])
    if len(shape) < 2 or shape[-2] != sq or shape[-1] != skv or set(coeffs) - {-1, -2}:
        return False
    ac, ar, b = coeffs.get(-1, 0), coeffs.get(-2, 0), const
    if op in (">=", ">"):
        ac, ar, b = -ac, -ar, -b
    if op in ("<", ">"):
        b += 1  # integer indices: L < 0  <=>  L + 1 <= 0
    elif op not in ("<=", ">="):
        return False
    off = skv - sq
    return ac == 1 and ar == -1 and isinstance(off, int) and off >= 0 and b == -off


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
    w = _walk(x)
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

    q, fq = _peel_scale(qk.inputs[0])
    kt, fk = _peel_scale(qk.inputs[1])
    scale *= fq * fk
    k_make = None  # (source, perm): a Transpose to create
    t = producer(kt, "Transpose")
    if t is not None and len(attrs(t)["perm"]) == 4:
        p = list(attrs(t)["perm"])
        src, fs = _peel_scale(t.inputs[0])
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
        rk, rv = _unrepeat(k), _unrepeat(v)
        if rk is not None and rv is not None and rk[1] == rv[1]:
            k, v = rk[0], rv[0]
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise _Refuse(f"batch dims differ: q {q.type}, k {k.type}, v {v.type}")

    causal = 0
    cm = _const_mask(parts, x.shape) if parts else None
    if ((cm is not None and _is_causal(cm, q.shape[2], k.shape[2]))
            or (cm is None and parts and _provably_causal(parts, q.shape[2], k.shape[2]))):
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


def _unmerge_heads(graph: Graph, sm: Node, users) -> bool:
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


def fuse_attention(graph: Graph, ctx) -> int:
    unmerged = 0
    for n in [n for n in graph.nodes if n.op == "Softmax"]:
        if _unmerge_heads(graph, n, graph.users()):
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
