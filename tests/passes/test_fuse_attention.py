"""fuse-attention: decomposed SDPA -> Attention (scale, masks, k layouts, GQA, causal), and refusals."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tcc.ir.core import Graph
from tcc.ir.text import print_graph

from .helpers import check_pass, make_ctx, refusals, run_pass, t

H, D = 4, 8


def _const(g, x, name="c"):
    return g.add_const(np.array(x, np.float32), name)


def build(*, k_layout="swap", scale="mul", mask="none", gqa="none", static_s=None, hkv=2, softcap=None):
    """q [b,H,s,D] @ kT -> scale -> mask -> Softmax -> @ v."""
    g = Graph()
    s = static_s or "s"
    q = g.add_input("q", t("f32", "b", H, s, D))
    kv_heads = hkv if gqa in ("expand", "tile", "concat") else 1 if gqa == "mqa" else H
    if k_layout == "bshd":
        k_in = g.add_input("k", t("f32", "b", s, kv_heads, D))
    elif k_layout == "input":
        k_in = g.add_input("kT", t("f32", "b", kv_heads, D, s))
    else:
        k_in = g.add_input("k", t("f32", "b", kv_heads, s, D))
    v = g.add_input("v", t("f32", "b", kv_heads, s, D))
    if scale == "qk":  # q and k each scaled by d^-1/4 (some exporters)
        q = g.add_node("Mul", [q, _const(g, D ** -0.25)]).output
        k_in = g.add_node("Mul", [_const(g, D ** -0.25), k_in]).output

    def repeat(x):
        n = H // kv_heads
        if gqa in ("expand", "tile", "concat"):
            u = g.add_node("Unsqueeze", [x], {"axes": [2]}).output
            if gqa == "expand":
                shape = np.empty(5, object)
                shape[:] = [x.shape[0], kv_heads, n, x.shape[2], D]
                e = g.add_node("Expand", [u, g.add_const(shape, "shape")]).output
            elif gqa == "tile":
                e = g.add_node("Tile", [u, g.add_const(np.array([1, 1, n, 1, 1], np.int64))]).output
            else:
                e = g.add_node("Concat", [u] * n, {"axis": 2}).output
            tgt = np.empty(4, object)
            tgt[:] = [x.shape[0], H, x.shape[2], D]
            return g.add_node("Reshape", [e, g.add_const(tgt, "tgt")]).output
        if gqa == "mqa":
            shape = np.empty(4, object)
            shape[:] = [x.shape[0], H, x.shape[2], D]
            return g.add_node("Expand", [x, g.add_const(shape, "shape")]).output
        return x

    if k_layout == "swap":
        kt = g.add_node("Transpose", [repeat(k_in)], {"perm": [0, 1, 3, 2]}).output
    elif k_layout == "bshd":
        kt = g.add_node("Transpose", [k_in], {"perm": [0, 2, 3, 1]}).output
    else:
        kt = k_in
    sc = g.add_node("MatMul", [q, kt]).output
    if scale == "mul":
        sc = g.add_node("Mul", [sc, _const(g, 1 / math.sqrt(D), "scale")]).output
    elif scale == "div":
        sc = g.add_node("Div", [sc, _const(g, math.sqrt(D), "sqrt_d")]).output
    if softcap is not None:  # Gemma 2: tanh(scores / c) * c, as Div (or Mul by 1/c), Tanh, Mul
        c, form = softcap
        sc = g.add_node("Div", [sc, _const(g, c)]).output if form == "div" else \
            g.add_node("Mul", [sc, _const(g, 1.0 / c)]).output
        sc = g.add_node("Tanh", [sc]).output
        sc = g.add_node("Mul", [_const(g, c), sc] if form == "div" else [sc, _const(g, c)]).output
    if mask in ("add", "add_first"):
        m = g.add_input("mask", t("f32", "b", 1, s, s))
        sc = g.add_node("Add", [sc, m] if mask == "add" else [m, sc]).output
    elif mask == "add_then_scale":
        m = g.add_input("mask", t("f32", 1, 1, s, s))
        sc = g.add_node("Add", [sc, m]).output
        sc = g.add_node("Mul", [_const(g, 0.5), sc]).output
    elif mask in ("where", "where_inverted"):
        m = g.add_input("keep", t("bool", "b", 1, 1, s))
        fill = _const(g, -np.inf if mask == "where" else np.finfo(np.float32).min, "fill")
        ins = [m, sc, fill] if mask == "where" else [m, fill, sc]
        sc = g.add_node("Where", ins).output
    elif mask in ("const_causal", "const_causal_min", "const_other"):
        n = static_s
        allowed = np.tril(np.ones((n, n), bool))
        if mask == "const_other":
            allowed = np.triu(allowed)  # diagonal only
        fill = np.float32(-np.inf) if mask == "const_causal" else np.finfo(np.float32).min
        sc = g.add_node("Add", [sc, g.add_const(np.where(allowed, 0, fill).astype(np.float32)[None, None],
                                                "cmask")]).output
    elif mask.startswith("dyn_"):
        sc = _dynamic_mask(g, sc, mask[4:], s)
    p = g.add_node("Softmax", [sc], {"axis": -1}).output
    v = repeat(v)
    g.outputs = [g.add_node("MatMul", [p, v], out_names=["out"]).output]
    return g


def _sym_scalar(g, d):
    a = np.empty((), object)
    a[()] = d
    return g.add_const(a, "len")


def _dynamic_mask(g, sc, kind, s):
    """Causal-looking masks built at run time from Range / Trilu (s is a symbolic dim)."""
    n = g.inputs[0].shape[2]
    zero, one = g.add_const(np.array(0, np.int64)), g.add_const(np.array(1, np.int64))
    if kind.startswith("trilu"):
        shape = np.empty(2, object)
        shape[:] = [n, n]
        k = int(kind[-1])
        fill = float("-inf") if k else float(np.finfo(np.float32).min)  # k=0 masks row 0 entirely
        full = g.add_node("ConstantOfShape", [g.add_const(shape, "shape")],
                          {"value": fill, "dtype": "f32"}).output
        m = g.add_node("Trilu", [full, g.add_const(np.array(k, np.int64), "k")], {"upper": 1}).output
        m = g.add_node("Unsqueeze", [m], {"axes": [0, 1]}).output
        return g.add_node("Add", [sc, m]).output
    rng = g.add_node("Range", [zero, _sym_scalar(g, n), one]).output
    rows = g.add_node("Unsqueeze", [rng], {"axes": [1]}).output  # [s, 1]: query index i
    cols = g.add_node("Unsqueeze", [rng], {"axes": [0]}).output  # [1, s]: key index j
    if kind == "le":       # j <= i -> keep
        cond = g.add_node("LessOrEqual", [cols, rows]).output
        m = g.add_node("Where", [cond, _const(g, 0.0), _const(g, -np.inf)]).output
    elif kind == "lt":     # j < i: the diagonal is masked too, not causal (row 0 fully masked: finite fill)
        cond = g.add_node("Less", [cols, rows]).output
        m = g.add_node("Where", [cond, _const(g, 0.0), _const(g, np.finfo(np.float32).min)]).output
    elif kind == "gt":     # j > i -> masked, written with Greater and an inverted Where, i shifted by +1-1
        i1 = g.add_node("Add", [rows, one]).output
        cond = g.add_node("Greater", [g.add_node("Add", [cols, one]).output, i1]).output
        m = g.add_node("Where", [cond, _const(g, np.finfo(np.float32).min), _const(g, 0.0)]).output
    elif kind == "off1":   # j <= i + 1: one key too many
        cond = g.add_node("LessOrEqual", [cols, g.add_node("Add", [rows, one]).output]).output
        m = g.add_node("Where", [cond, _const(g, 0.0), _const(g, -np.inf)]).output
    elif kind == "bool":   # Where(j <= i, scores, -inf) on the scores themselves
        cond = g.add_node("Not", [g.add_node("Greater", [cols, rows]).output]).output
        cond = g.add_node("Unsqueeze", [cond], {"axes": [0, 1]}).output
        return g.add_node("Where", [cond, sc, _const(g, -np.inf)]).output
    else:
        raise ValueError(kind)
    m = g.add_node("Unsqueeze", [m], {"axes": [0, 1]}).output
    return g.add_node("Add", [sc, m]).output


def _overrides(kind):
    """Bool keep-masks with no fully masked query row (there the decomposed graph gives NaN or a
    uniform row, Attention gives zeros by definition)."""
    def make(env):
        if kind not in ("where", "where_inverted"):
            return {}
        keep = np.random.default_rng(5).random((env["b"], 1, 1, env["s"])) < 0.6
        keep[..., 0] = kind == "where"  # key 0 is never masked
        return {"keep": keep}
    return make


ENVS = [{"b": 2, "s": 5}, {"b": 1, "s": 3}]


def _attention(g):
    atts = [n for n in g.nodes if n.op == "Attention"]
    assert len(atts) == 1, g.ops()
    return atts[0]


@pytest.mark.parametrize("scale,expected", [("mul", 1 / math.sqrt(D)), ("div", 1 / math.sqrt(D)),
                                            ("qk", 1 / math.sqrt(D)), ("none", 1.0)])
def test_scales_fold_into_one(scale, expected):
    g = build(scale=scale)
    ctx = check_pass("fuse-attention", g, ENVS)
    run_pass("eliminate-dead-code", g)
    assert g.ops() == {"Attention": 1}
    a = _attention(g)
    assert a.attrs["scale"] == pytest.approx(expected, rel=1e-6) and a.attrs["causal"] == 0
    assert len(a.inputs) == 3 and g.outputs[0].name == "out"
    assert ctx.stats["fuse-attention"] == 1


@pytest.mark.parametrize("k_layout,new_transposes", [("swap", 0), ("bshd", 1), ("input", 1)])
def test_k_layouts(k_layout, new_transposes):
    g = build(k_layout=k_layout)
    check_pass("fuse-attention", g, ENVS)
    run_pass("eliminate-dead-code", g)
    assert g.ops().get("Transpose", 0) == new_transposes
    a = _attention(g)
    if k_layout == "bshd":
        assert a.inputs[1].producer.attrs["perm"] == [0, 2, 1, 3]
    if k_layout == "swap":
        assert a.inputs[1] is g.inputs[1]


@pytest.mark.parametrize("mask", ["add", "add_first", "add_then_scale", "where", "where_inverted"])
def test_masks_stay_additive_inputs(mask):
    g = build(mask=mask)
    check_pass("fuse-attention", g, ENVS, overrides=_overrides(mask))
    run_pass("eliminate-dead-code", g)
    a = _attention(g)
    assert len(a.inputs) == 4 and a.attrs["causal"] == 0
    m = a.inputs[3]
    if mask in ("add", "add_first"):
        assert m is g.inputs[-1]
    elif mask == "add_then_scale":
        assert m.producer.op == "Mul" and a.attrs["scale"] == pytest.approx(0.5 / math.sqrt(D))
    else:
        assert m.producer.op == "Where" and m.dtype.np == np.float32
    assert "Softmax" not in g.ops()


@pytest.mark.parametrize("gqa", ["expand", "tile", "concat", "mqa"])
def test_repeat_kv_is_undone(gqa):
    g = build(gqa=gqa)
    check_pass("fuse-attention", g, ENVS)
    run_pass("eliminate-dead-code", g)
    assert g.ops() == {"Attention": 1}
    a = _attention(g)
    assert a.inputs[1] is g.inputs[1] and a.inputs[2] is g.inputs[2]
    assert a.inputs[1].shape[1] == (1 if gqa == "mqa" else 2)


@pytest.mark.parametrize("mask,causal", [("const_causal", 1), ("const_causal_min", 1), ("const_other", 0)])
def test_constant_causal_mask_becomes_causal_flag(mask, causal):
    g = build(mask=mask, static_s=5)
    check_pass("fuse-attention", g, [{"b": 2}])
    run_pass("eliminate-dead-code", g)
    a = _attention(g)
    assert a.attrs["causal"] == causal
    assert len(a.inputs) == (3 if causal else 4)


def test_refuses_probabilities_used_elsewhere():
    g = build()
    sm = next(n for n in g.nodes if n.op == "Softmax")
    g.outputs.append(sm.output)
    ctx = check_pass("fuse-attention", g, ENVS)
    assert "Attention" not in g.ops()
    assert any("probabilities" in m for m in refusals(ctx))


def test_refuses_scores_used_elsewhere():
    g = build()
    mm = next(n for n in g.nodes if n.op == "MatMul")
    g.outputs.append(mm.output)
    ctx = check_pass("fuse-attention", g, ENVS)
    assert "Attention" not in g.ops()
    assert any("used outside the attention pattern" in m for m in refusals(ctx))


def test_refuses_3d_attention():
    g = Graph()
    q = g.add_input("q", t("f32", "s", D))
    k = g.add_input("k", t("f32", "s", D))
    v = g.add_input("v", t("f32", "s", D))
    sc = g.add_node("MatMul", [q, g.add_node("Transpose", [k], {"perm": [1, 0]}).output]).output
    p = g.add_node("Softmax", [sc], {"axis": -1}).output
    g.outputs = [g.add_node("MatMul", [p, v], out_names=["out"]).output]
    ctx = check_pass("fuse-attention", g, [{"s": 4}])
    assert "Attention" not in g.ops()
    assert any("not 4-D" in m for m in refusals(ctx))


def test_refuses_softmax_over_other_axis():
    g = build()
    next(n for n in g.nodes if n.op == "Softmax").attrs["axis"] = 2
    ctx = check_pass("fuse-attention", g, ENVS)
    assert "Attention" not in g.ops()
    assert any("not the last axis" in m for m in refusals(ctx))


def test_golden_text():
    g = build(scale="mul", mask="add", gqa="expand")
    run_pass("fuse-attention", g, make_ctx())
    run_pass("eliminate-dead-code", g, make_ctx())
    assert print_graph(g) == (
        "# tcc IR v1\n"
        "graph main(%q: f32[b,4,s,8], %k: f32[b,2,s,8], %v: f32[b,2,s,8], %mask: f32[b,1,s,s]) -> (%out) {\n"
        "  %out : f32[b,4,s,8] = Attention(%q, %k, %v, %mask) {causal=0, scale=0.35355338}\n"
        "  return %out\n"
        "}\n")


@pytest.mark.parametrize("mask,causal", [("dyn_le", 1), ("dyn_gt", 1), ("dyn_bool", 1), ("dyn_trilu1", 1),
                                         ("dyn_lt", 0), ("dyn_off1", 0), ("dyn_trilu0", 0)])
def test_runtime_mask_proven_causal_or_kept(mask, causal):
    g = build(mask=mask)
    check_pass("fuse-attention", g, [{"b": 2, "s": 5}, {"b": 1, "s": 1}, {"b": 1, "s": 9}]
                     if causal else [{"b": 2, "s": 5}, {"b": 1, "s": 9}])
    run_pass("eliminate-dead-code", g)
    a = _attention(g)
    assert a.attrs["causal"] == causal
    assert len(a.inputs) == (3 if causal else 4)
    if causal:
        assert g.ops() == {"Attention": 1}


def test_refuses_mask_computed_from_scores():
    g = Graph()
    q = g.add_input("q", t("f32", 1, H, "s", D))
    k = g.add_input("k", t("f32", 1, H, "s", D))
    v = g.add_input("v", t("f32", 1, H, "s", D))
    sc = g.add_node("MatMul", [q, g.add_node("Transpose", [k], {"perm": [0, 1, 3, 2]}).output]).output
    sc2 = g.add_node("Add", [g.add_node("Mul", [sc, _const(g, 0.5)]).output, sc]).output
    p = g.add_node("Softmax", [sc2], {"axis": -1}).output
    g.outputs = [g.add_node("MatMul", [p, v], out_names=["out"]).output]
    ctx = check_pass("fuse-attention", g, [{"s": 4}])
    assert "Attention" not in g.ops()
    assert any("computed from the scores" in m for m in refusals(ctx))


@pytest.mark.parametrize("form", ["div", "mul"])
@pytest.mark.parametrize("mask", ["none", "add", "dyn_le"])
def test_softcap_becomes_an_attribute(form, mask):
    """Gemma 2's attn_logit_softcapping (tanh(s / c) * c between the scale and the mask) is an attribute;
    the interpreter's Attention reference gives what the decomposed graph gives (c = 0.7 really caps:
    |s| reaches ~3 here)."""
    g = build(mask=mask, softcap=(0.7, form))
    check_pass("fuse-attention", g, ENVS)
    run_pass("eliminate-dead-code", g)
    a = _attention(g)
    assert a.attrs["softcap"] == pytest.approx(0.7) and "Tanh" not in g.ops()
    assert a.attrs["causal"] == (1 if mask == "dyn_le" else 0)


def test_softcap_with_a_scale_after_it_is_refused():
    """c * tanh(s / c) * 0.5 is not Attention(softcap=c) with any scale: left as it was, with a reason."""
    g = build(softcap=(2.0, "div"))
    sm = next(n for n in g.nodes if n.op == "Softmax")
    half = g.add_node("Mul", [sm.inputs[0], _const(g, 0.5)], before=sm).output
    sm.inputs[0] = half
    ctx = run_pass("fuse-attention", g)
    assert "Attention" not in g.ops() and any("after the soft-capping" in m for m in refusals(ctx))


def test_softcap_with_mismatched_constants_is_not_fused():
    g = build(softcap=(2.0, "div"))
    tanh = next(n for n in g.nodes if n.op == "Tanh")
    d = tanh.inputs[0].producer
    d.inputs[1] = _const(g, 3.0)
    run_pass("fuse-attention", g)
    assert "Attention" not in g.ops()


def _obj(*dims):
    a = np.empty(len(dims), object)
    a[:] = list(dims)
    return a


def build_merged_heads(alibi=True):
    """Bloom's form: baddbmm over [B*H, S, D] (scores = bmm(q3, k3^T) * c + alibi3), split to [B,H,S,S] for
    the mask and the Softmax, merged again for bmm(probs3, v3), split back."""
    from tcc.ir.dims import Sym

    g = Graph()
    b, s = Sym.symbol("b"), Sym.symbol("s")
    q = g.add_input("q", t("f32", "b", H, "s", D))
    k = g.add_input("k", t("f32", "b", H, "s", D))
    v = g.add_input("v", t("f32", "b", H, "s", D))
    merge = lambda x: g.add_node("Reshape", [x, g.add_const(_obj(b * H, s, D), "m")]).output  # noqa: E731
    kt = g.add_node("Transpose", [merge(k)], {"perm": [0, 2, 1]}).output
    sc = g.add_node("MatMul", [merge(q), kt]).output
    sc = g.add_node("Mul", [sc, _const(g, 1 / math.sqrt(D))]).output
    if alibi:  # [B*H, 1, S] = slopes[h] * j, tiled over the batch
        slopes = (2.0 ** -np.arange(1, H + 1)).astype(np.float32).reshape(1, H, 1, 1)
        one, zero = g.add_const(np.array(1, np.int64)), g.add_const(np.array(0, np.int64))
        j = g.add_node("Cast", [g.add_node("Range", [zero, g.add_const(np.array(s, dtype=object), "len"), one])
                                .output], {"to": "f32"}).output
        a4 = g.add_node("Mul", [g.add_const(slopes, "slopes"), j]).output  # [1, H, 1, s]
        a4 = g.add_node("Expand", [a4, g.add_const(_obj(b, H, 1, s), "shape")]).output
        a3 = g.add_node("Reshape", [a4, g.add_const(_obj(b * H, 1, s), "m")]).output
        sc = g.add_node("Add", [sc, a3]).output
    sc = g.add_node("Reshape", [sc, g.add_const(_obj(b, H, s, s), "split")]).output
    sc = _dynamic_mask(g, sc, "le", s)
    p = g.add_node("Softmax", [sc], {"axis": -1}).output
    p3 = g.add_node("Reshape", [p, g.add_const(_obj(b * H, s, s), "m")]).output
    o3 = g.add_node("MatMul", [p3, merge(v)]).output
    g.outputs = [g.add_node("Reshape", [o3, g.add_const(_obj(b, H, s, D), "split")], out_names=["out"]).output]
    return g


@pytest.mark.parametrize("alibi", [True, False])
def test_merged_batch_heads_are_unmerged_and_fused(alibi):
    g = build_merged_heads(alibi)
    check_pass("fuse-attention", g, ENVS)
    run_pass("eliminate-dead-code", g)
    a = _attention(g)
    assert a.attrs["causal"] == (0 if alibi else 1) and a.inputs[0] is g.inputs[0]
    assert a.inputs[1] is g.inputs[1] and a.inputs[2] is g.inputs[2]
    assert "MatMul" not in g.ops() and "Softmax" not in g.ops()
    if alibi:  # the bias stays a mask term, as [B, H, 1, S] (kv-cache turns it into slopes)
        assert a.inputs[3].shape[1] == H
