"""Is an attention mask causal? The analysis behind fuse-attention's causal=1 (and kv-cache's fill threshold).

A mask is a list of additive terms over the scores [.., Sq, Skv] (the "parts" fuse-attention collects):
  ("value", v, f)                        f * v
  ("where", cond, fill, fill_when_true, f)  f * (fill where cond == fill_when_true, else 0)
It is causal when it is provably bottom-right causal: 0 where j <= i + Skv - Sq, -inf or <= CAUSAL_FILL
elsewhere, with Skv - Sq a constant >= 0 so no row is fully masked (then masked probabilities are exactly 0
either way, given |scores| << 1e30). Proofs: a constant mask is checked elementwise (`is_causal_array`); a
run-time mask is evaluated abstractly as index arithmetic over its last two axes (`index_form`: Range(c, N, 1),
Unsqueeze/Squeeze/Reshape of unit dims, Expand, Add/Sub/Neg, comparisons, Not, Where(pred, 0, fill),
Trilu(ConstantOfShape(fill), k)) and must equal the causal predicate for every binding (`provably_causal`).
Anything else (e.g. HF's packed-sequence mask built from position ids) is not proven causal.
"""
from __future__ import annotations

import numpy as np

from .core import Value
from .registry import full_attrs, get_op

CAUSAL_FILL = -1e30  # a mask entry at or below this is treated like -inf


def mask_is_causal(parts, sq, skv) -> bool:
    """True when the mask terms `parts` (see above) together are exactly bottom-right causal."""
    if not parts:
        return False
    cm = const_mask(parts)
    return is_causal_array(cm, sq, skv) if cm is not None else provably_causal(parts, sq, skv)


def _scalar(v: Value | None) -> float | None:  # (as passes/rewrite_utils.py: ir/ does not import passes/)
    """The value of a constant with one element (any shape), as a Python float; None otherwise."""
    if v is None or v.const is None or v.const.dtype == object or v.const.size != 1:
        return None
    return float(v.const.reshape(-1)[0])


def _attrs(n) -> dict:
    return full_attrs(get_op(n.op), n.attrs)


def const_mask(parts) -> np.ndarray | None:
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


def is_causal_array(mask: np.ndarray, sq, skv) -> bool:
    """A constant mask [.., Sq, Skv]: 0 on the bottom-right causal keys, <= CAUSAL_FILL on the others."""
    if not isinstance(sq, int) or not isinstance(skv, int) or skv < sq or mask.ndim < 2:
        return False
    if mask.shape[-2:] != (sq, skv):
        return False
    full = np.broadcast_to(mask, mask.shape[:-2] + (sq, skv))
    allowed = np.arange(skv)[None, :] <= np.arange(sq)[:, None] + (skv - sq)
    ok_allowed = np.all(full[..., allowed] == 0)
    ok_masked = np.all(full[..., ~allowed] <= CAUSAL_FILL)
    return bool(ok_allowed and ok_masked)


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
    f = _scalar(v)
    if f is not None:
        return f
    n = v.producer
    if n is not None and n.op == "ConstantOfShape":
        return float(_attrs(n)["value"])
    if n is not None and n.op == "Expand":
        return _scalar(n.inputs[0])
    return None


def _remap(coeffs, in_shape, out_shape, positions):
    """positions[i] = output axis (positive) of input axis i (positive)."""
    rin, rout = len(in_shape), len(out_shape)
    return {positions[rin + a] - rout: c for a, c in coeffs.items()}


def index_form(v: Value, depth: int = 0):
    """The form (see above) of v's value at every index, or None when v is not such index arithmetic."""
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
        f = index_form(n.inputs[0], depth + 1)
        return None if f is None else _form(f[0], f[1], f[2], shape, f[3], f[4])
    if op in ("Unsqueeze", "Squeeze", "Reshape"):
        f = index_form(n.inputs[0], depth + 1)
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
        a, b = index_form(n.inputs[0], depth + 1), index_form(n.inputs[1], depth + 1)
        if a is None or b is None or a[0] != "lin" or b[0] != "lin":
            return None
        sign = 1 if op == "Add" else -1
        coeffs = dict(a[1])
        for k, c in b[1].items():
            coeffs[k] = coeffs.get(k, 0) + sign * c
        return _form("lin", coeffs, a[2] + sign * b[2], shape)
    if op == "Neg":
        a = index_form(n.inputs[0], depth + 1)
        if a is None or a[0] != "lin":
            return None
        return _form("lin", {k: -c for k, c in a[1].items()}, -a[2], shape)
    if op in _CMP:
        a, b = index_form(n.inputs[0], depth + 1), index_form(n.inputs[1], depth + 1)
        if a is None or b is None or a[0] != "lin" or b[0] != "lin":
            return None
        coeffs = dict(a[1])
        for k, c in b[1].items():
            coeffs[k] = coeffs.get(k, 0) - c
        return _form("pred", coeffs, a[2] - b[2], shape, _CMP[op])
    if op == "Not":
        a = index_form(n.inputs[0], depth + 1)
        if a is None or a[0] != "pred":
            return None
        return _form("pred", a[1], a[2], shape, _FLIP[a[3]])
    if op == "Where":
        c = index_form(n.inputs[0], depth + 1)
        x, y = _scalar(n.inputs[1]), _scalar(n.inputs[2])
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
        return _form("mask", {-1: 1, -2: -1}, -k, shape, "<" if _attrs(n)["upper"] else ">", fill)
    return None


def provably_causal(parts, sq, skv) -> bool:
    """True when the only mask term is exactly bottom-right causal with a -inf / <= CAUSAL_FILL fill
    for every shape binding (rows have at least one open key: Skv - Sq is a constant >= 0)."""
    if len(parts) != 1:
        return False
    p = parts[0]
    if p[0] == "value":
        f = index_form(p[1])
        if f is None or f[0] != "mask" or f[4] * p[2] > CAUSAL_FILL:
            return False
        shape = p[1].shape
        coeffs, const, op = f[1], f[2], f[3]
    else:
        _, cond, fill, when_true, factor = p
        f = index_form(cond)
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
