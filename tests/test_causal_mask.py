"""ir/causal_mask.py: which attention masks are exactly bottom-right causal (fuse-attention's causal=1).

Constant masks are checked elementwise; run-time masks built from Range / comparisons / Where / Trilu are
proven by index arithmetic, for every binding of their symbolic dims. Near misses (one key too many or too
few, a fill that is not very negative, a row fully masked, a negative factor) must not pass.
"""
from __future__ import annotations

import numpy as np
import pytest

from tcc.ir.causal_mask import (CAUSAL_FILL, const_mask, index_form, is_causal_array, mask_is_causal,
                                provably_causal)
from tcc.ir.core import Graph
from tcc.ir.dims import Sym

NEG_INF = float("-inf")
F32_MIN = float(np.finfo(np.float32).min)


def causal_array(sq: int, skv: int, fill: float = NEG_INF) -> np.ndarray:
    allowed = np.arange(skv)[None, :] <= np.arange(sq)[:, None] + (skv - sq)
    return np.where(allowed, 0.0, fill).astype(np.float32)


@pytest.mark.parametrize("sq,skv", [(1, 1), (4, 4), (3, 5), (1, 7)])
@pytest.mark.parametrize("fill", [NEG_INF, F32_MIN, CAUSAL_FILL])
def test_constant_causal_masks(sq, skv, fill):
    m = causal_array(sq, skv, fill)
    assert is_causal_array(m, sq, skv)
    assert is_causal_array(m[None, None], sq, skv)  # [1, 1, Sq, Skv] broadcast over batch and heads


def test_constant_near_misses():
    m = causal_array(4, 4)
    assert not is_causal_array(causal_array(4, 4, -1e4), 4, 4)  # masked scores not exactly 0 after softmax
    assert not is_causal_array(np.triu(np.full((4, 4), NEG_INF, np.float32), 0), 4, 4)  # diagonal masked too
    off = m.copy()
    off[1, 2] = 0.0  # one key too many
    assert not is_causal_array(off, 4, 4)
    small = m.copy()
    small[3, 0] = -1.0  # a bias on a kept key
    assert not is_causal_array(small, 4, 4)
    assert not is_causal_array(causal_array(5, 3)[:, :3], 5, 3)  # Skv < Sq: rows fully masked
    assert not is_causal_array(m, 4, 5)  # the mask's shape is not the scores'
    assert not is_causal_array(m, Sym.symbol("s"), 4)  # a symbolic Sq cannot be checked elementwise
    assert not is_causal_array(np.zeros(4, np.float32), 4, 4)  # not 2-D


def test_const_mask_sums_terms_with_their_factors():
    g = Graph()
    a = g.add_const(np.array([[0.0, 1.0], [2.0, 3.0]], np.float32), "a")
    cond = g.add_const(np.array([[True, False], [False, True]]), "cond")
    total = const_mask([("value", a, 2.0), ("where", cond, -5.0, True, 0.5), ("where", cond, -7.0, False, 1.0)])
    np.testing.assert_array_equal(total, np.array([[-2.5, -5.0], [-3.0, 3.5]], np.float32))
    x = g.add_input("x", _t(2, 2))
    assert const_mask([("value", a, 1.0), ("value", x, 1.0)]) is None  # a run-time term: not constant


def test_two_constant_terms_that_sum_to_causal():
    g = Graph()
    m = causal_array(3, 3)
    half = np.where(m == 0, 0.0, -1e30).astype(np.float32)
    parts = [("value", g.add_const(half, "h1"), 1.0), ("value", g.add_const(half, "h2"), 1.0)]
    assert mask_is_causal(parts, 3, 3)
    assert not mask_is_causal([], 3, 3)  # no mask is not a causal mask


# -- run-time masks ---------------------------------------------------------------------------------------

def _t(*shape):
    from tcc.ir.core import TensorType
    from tcc.ir.dtypes import DType

    return TensorType(DType.f32, tuple(Sym.symbol(d) if isinstance(d, str) else d for d in shape))


def _index(g, n):
    """Range(0, n): n an int or a symbolic dim."""
    end = np.empty((), object)
    end[()] = n
    zero, one = g.add_const(np.array(0, np.int64), "zero"), g.add_const(np.array(1, np.int64), "one")
    return g.add_node("Range", [zero, g.add_const(end if not isinstance(n, int) else np.array(n, np.int64), "n"),
                                one]).output


def _rows_cols(g, sq, skv):
    rows = g.add_node("Unsqueeze", [_index(g, sq)], {"axes": [1]}).output  # [Sq, 1]: query index i
    cols = g.add_node("Unsqueeze", [_index(g, skv)], {"axes": [0]}).output  # [1, Skv]: key index j
    return rows, cols


def _f(g, x):
    return g.add_const(np.array(x, np.float32), "f")


def _shift(g, v, k):
    return v if k == 0 else g.add_node("Add", [v, g.add_const(np.array(k, np.int64), "k")]).output


def where_mask(cmp, shift=0, fill=NEG_INF, sq="s", skv="s", inverted=False):
    """Where(cmp(j, i + shift), 0, fill) (inverted: Where(not-cmp, fill, 0)) as [1, 1, Sq, Skv]."""
    g = Graph()
    s = Sym.symbol("s")
    rows, cols = _rows_cols(g, s if sq == "s" else sq, s if skv == "s" else skv)
    cond = g.add_node(cmp, [cols, _shift(g, rows, shift)]).output
    ins = [cond, _f(g, fill), _f(g, 0.0)] if inverted else [cond, _f(g, 0.0), _f(g, fill)]
    m = g.add_node("Where", ins).output
    return g, g.add_node("Unsqueeze", [m], {"axes": [0, 1]}).output


def test_index_form_of_a_range():
    g = Graph()
    form = index_form(_index(g, Sym.symbol("s")))
    assert form[0] == "lin" and form[1] == {-1: 1} and form[2] == 0


@pytest.mark.parametrize("cmp,shift,inverted,causal", [
    ("LessOrEqual", 0, False, True),        # j <= i: keep
    ("Less", 1, False, True),               # j < i + 1
    ("Greater", 0, True, True),             # j > i: masked (the Where the other way round)
    ("GreaterOrEqual", 1, True, True),      # j >= i + 1: masked
    ("Less", 0, False, False),              # j < i: the diagonal is masked too
    ("LessOrEqual", 1, False, False),       # j <= i + 1: one key too many
    ("LessOrEqual", -1, False, False),      # row 0 fully masked
    ("Equal", 0, False, False),             # only the diagonal
])
def test_runtime_where_masks(cmp, shift, inverted, causal):
    _, m = where_mask(cmp, shift, inverted=inverted)
    s = Sym.symbol("s")
    assert provably_causal([("value", m, 1.0)], s, s) == causal


def test_runtime_mask_fill_and_factor():
    s = Sym.symbol("s")
    _, m = where_mask("LessOrEqual", fill=F32_MIN)
    assert provably_causal([("value", m, 1.0)], s, s)
    _, m = where_mask("LessOrEqual", fill=-1e4)  # not very negative: masked keys keep some probability
    assert not provably_causal([("value", m, 1.0)], s, s)
    _, m = where_mask("LessOrEqual")
    assert not provably_causal([("value", m, -1.0)], s, s)  # a negative factor turns -inf into +inf
    assert not provably_causal([("value", m, 1.0), ("value", m, 1.0)], s, s)  # one term only


def test_runtime_mask_bottom_right_offset():
    """Sq = 3 queries at the end of Skv = 5 keys: causal means j <= i + 2."""
    _, m = where_mask("LessOrEqual", shift=2, sq=3, skv=5)
    assert provably_causal([("value", m, 1.0)], 3, 5)
    _, m = where_mask("LessOrEqual", shift=1, sq=3, skv=5)
    assert not provably_causal([("value", m, 1.0)], 3, 5)
    _, m = where_mask("LessOrEqual", shift=2, sq=3, skv=5)
    assert not provably_causal([("value", m, 1.0)], 3, 6)  # the mask's shape is not the scores'


def test_runtime_where_on_the_scores():
    """Where(cond, scores, fill): fuse-attention's ("where", cond, fill, fill_when_true, factor) term."""
    g = Graph()
    s = Sym.symbol("s")
    rows, cols = _rows_cols(g, s, s)
    keep = g.add_node("Not", [g.add_node("Greater", [cols, rows]).output]).output
    assert provably_causal([("where", keep, NEG_INF, False, 1.0)], s, s)
    assert not provably_causal([("where", keep, NEG_INF, True, 1.0)], s, s)  # fill where kept: anti-causal
    assert not provably_causal([("where", keep, -1e4, False, 1.0)], s, s)


@pytest.mark.parametrize("k,upper,fill,causal", [(1, 1, NEG_INF, True), (0, 1, NEG_INF, False),
                                                 (2, 1, NEG_INF, False), (1, 1, -1e4, False),
                                                 (-1, 0, NEG_INF, False)])
def test_runtime_trilu_masks(k, upper, fill, causal):
    g = Graph()
    s = Sym.symbol("s")
    shape = np.empty(2, object)
    shape[:] = [s, s]
    full = g.add_node("ConstantOfShape", [g.add_const(shape, "shape")], {"value": fill, "dtype": "f32"}).output
    m = g.add_node("Trilu", [full, g.add_const(np.array(k, np.int64), "k")], {"upper": upper}).output
    assert provably_causal([("value", m, 1.0)], s, s) == causal


def test_not_index_arithmetic_is_not_proven():
    """A mask from a graph input (HF's packed-sequence mask from position ids) stays unproven."""
    g = Graph()
    s = Sym.symbol("s")
    pos = g.add_input("pos", _t("s"))
    rows = g.add_node("Unsqueeze", [pos], {"axes": [1]}).output
    cols = g.add_node("Unsqueeze", [pos], {"axes": [0]}).output
    cond = g.add_node("LessOrEqual", [cols, rows]).output
    m = g.add_node("Where", [cond, _f(g, 0.0), _f(g, NEG_INF)]).output
    assert index_form(pos) is None
    assert not provably_causal([("value", m, 1.0)], s, s)
    assert not mask_is_causal([("value", m, 1.0)], s, s)
