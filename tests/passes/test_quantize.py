"""Quantization passes: quantize, quantize-activations, awq, smoothquant; the schemes registry and the
calibration loader.

Oracles: the interpreter (ir/ops/quant.py references) before and after each pass.
- quantize changes the function by the quantization error only: checked against the explicit
  dequantized product (quantize_int4/int8 + dequantize), which must match to fp32 rounding of the f64
  reference (1e-6 relative).
- quantize-activations is an exact refactoring: QuantizeActs + QLinearI8 compute the same dequantized
  operands as QLinear, so the interpreter outputs must be bitwise equal.
- awq / smoothquant rescale fp32 weights and fold 1/s; before quantization the function is unchanged up to
  fp32 rounding of the rescaled products (rtol 1e-4 on O(1) outputs through two Linear layers and a norm
  of 64 channels, a few hundred ulps of headroom); their searched error can only drop (alpha 0 = no scaling
  is a candidate).
"""
from __future__ import annotations

import numpy as np
import pytest

from tcc.errors import TccError
from tcc.ir.core import Graph
from tcc.ir.interpreter import run_graph
from tcc.ir.quant_arith import dequantize, quantize_activations, quantize_int4, quantize_int8
from tcc.passes.context import PassContext

from .helpers import run_pass, t

K, N = 64, 48


class _Target:
    name = "x86"
    default_group_size = 32
    k_block = 64
    qms = ("fp32", "w8a8", "w4a32", "w4a8")
    qm_refusals = (("w4a16", "fp16 activations need fp16 arithmetic"),)


class _ArmTarget(_Target):
    name = "arm"
    k_block = 32
    qms = ("fp32", "w8a8", "w4a32", "w4a8", "w4a16")
    qm_refusals = ()


def ctx_for(qm: str, **options) -> PassContext:
    target = _ArmTarget() if qm == "w4a16" else _Target()  # w4a16 (fp16 arithmetic) is arm's
    return PassContext(target=target, qm=qm, options=dict(options), debug=0)


def mlp_graph(rng, outlier: float = 1.0, mul_fold: bool = True) -> Graph:
    """x -> RMSNorm(gamma) -> {Linear q, Linear k} ; gate/up MLP (Mul of act(gate) and up) -> down.
    outlier > 1 plants three large channels in gamma (and shrinks the matching weight rows)."""
    g = Graph()
    x = g.add_input("x", t("f32", "rows", K))
    gamma = (1 + 0.1 * rng.standard_normal(K)).astype(np.float32)
    ch = [3, 17, 40]
    gamma[ch] *= outlier
    h = g.add_node("RMSNorm", [x, g.add_const(gamma, "gamma")], {"axis": -1, "eps": 1e-6}, name="norm").output

    def w(k, n, rows=None):
        a = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
        if rows is not None:
            a[rows] /= outlier
        return a

    q = g.add_node("Linear", [h, g.add_const(w(K, N, ch), "q_proj.weight")], name="q_proj").output
    k = g.add_node("Linear", [h, g.add_const(w(K, N, ch), "k_proj.weight"),
                              g.add_const(rng.standard_normal(N).astype(np.float32), "k_proj.bias")],
                   name="k_proj").output
    gate = g.add_node("Linear", [h, g.add_const(w(K, 96, ch), "gate.weight")], name="gate").output
    up = g.add_node("Linear", [h, g.add_const(w(K, 96, ch), "up.weight")], name="up").output
    act = g.add_node("Sigmoid", [gate]).output
    prod = g.add_node("Mul", [act, up]).output
    down = g.add_node("Linear", [prod, g.add_const(w(96, K), "down.weight")], name="down").output
    g.outputs = [q, k, g.add_node("Add", [x, down]).output]
    g.verify()
    return g


def feeds(rng, rows=40):
    return {"x": rng.standard_normal((rows, K)).astype(np.float32)}


# -- schemes ------------------------------------------------------------------------------------------

def test_scheme_errors_name_the_problem():
    from tcc.passes.schemes import check_scheme

    with pytest.raises(TccError, match=r"target x86 cannot run --qm w4a16 \(fp16 activations.*it supports: "
                                       r"fp32, w8a8, w4a32, w4a8"):
        check_scheme("w4a16", _Target())
    from tcc.backends import get_backend

    for cpu in ("x86", "arm"):
        with pytest.raises(TccError, match=rf"target {cpu} cannot run --qm fp16 \(the CPU targets compute in fp32"):
            check_scheme("fp16", get_backend(cpu).target)
    with pytest.raises(TccError, match="unknown --qm 'w3a8'; known: fp32, fp16, w8a8, w4a32, w4a16, w4a8"):
        check_scheme("w3a8", _Target())
    with pytest.raises(TccError, match="--group-size must be a positive multiple of 32, got 48"):
        check_scheme("w4a8", _Target(), group_size=48)
    with pytest.raises(TccError, match="--group-size does not apply to --qm w8a8"):
        check_scheme("w8a8", _Target(), group_size=64)
    with pytest.raises(TccError, match="--asym does not apply to --qm w8a8"):
        check_scheme("w8a8", _Target(), asym=True)
    assert check_scheme("w4a8", _Target(), group_size=128, asym=True).weight_bits == 4


# -- quantize -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("qm,asym,group", [("w4a32", False, 32), ("w4a32", True, 64), ("w4a8", False, 32),
                                           ("w4a8", True, 128), ("w8a8", False, None), ("w4a16", False, 32),
                                           ("w4a16", True, 64)])
def test_quantize_replaces_linears_with_the_scheme(qm, asym, group):
    rng = np.random.default_rng(0)
    g = mlp_graph(rng)
    weights = {n.name: (n.inputs[1].const, n.input(2)) for n in g.nodes if n.op == "Linear"}
    ctx = run_pass("quantize", g, ctx_for(qm, asym=asym, group_size=group))
    q_nodes = [n for n in g.nodes if n.op == "QLinear"]
    assert sorted(n.name for n in q_nodes) == sorted(weights) and "Linear" not in g.ops()
    f = feeds(rng)
    vals = run_graph(g, f, keep=True)
    for n in q_nodes:
        w, bias = weights[n.name]
        bits = 4 if qm.startswith("w4") else 8
        acts = {"w4a32": "f32", "w4a8": "i8_group", "w8a8": "i8_group", "w4a16": "f16"}
        assert n.attrs["bits"] == bits and n.attrs["act"] == acts[qm]
        # w8a8: per-channel weights, one activation scale per row (a group of K rounded up to 32); w4a8: the
        # weight groups
        assert n.attrs.get("act_group", 0) == (-(-w.shape[0] // 32) * 32 if qm == "w8a8" else 0)
        assert (n.input(3) is not None) == asym
        if bits == 4:
            qq, s, z = quantize_int4(w, group, symmetric=not asym)
            assert n.attrs["group_size"] == group
        else:
            (qq, s), z = quantize_int8(w), None
            assert n.attrs["group_size"] == w.shape[0]
        np.testing.assert_array_equal(n.inputs[1].const, qq)
        x = vals[n.inputs[0].name]
        wd = dequantize(qq, s, z, bits, n.attrs["group_size"])
        if qm == "w4a32":
            xd = x.astype(np.float64)
        elif qm == "w4a16":  # both operands rounded to fp16 (ir/ops/quant.py, act f16)
            xd, wd = x.astype(np.float16).astype(np.float64), wd.astype(np.float16).astype(np.float64)
        else:
            gs = group if qm == "w4a8" else x.shape[-1]  # w8a8: one activation scale per row
            xq, xs, _ = quantize_activations(x, gs)
            xd = xq.astype(np.float64) * np.repeat(xs, gs, axis=-1)[..., :x.shape[-1]]
        want = xd @ wd.T + (0 if bias is None else bias.const)
        np.testing.assert_allclose(vals[n.output.name], want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
    assert ctx.stats["quantize"]["linears"] == 5


def test_keep_fp32_patterns_and_lm_head():
    rng = np.random.default_rng(1)
    g = mlp_graph(rng)
    ctx = run_pass("quantize", g, ctx_for("w4a8", keep_fp32=("k_*", "down.weight")))
    assert sorted(n.name for n in g.nodes if n.op == "Linear") == ["down", "k_proj"]
    assert sorted(ctx.stats["quantize"]["kept_fp32"]) == ["down", "k_proj"]
    # lm_head is found by structure: the Linear whose result is a graph output (through views)
    g = Graph()
    x = g.add_input("x", t("f32", 2, K))
    h = g.add_node("Linear", [x, g.add_const(rng.standard_normal((K, K)).astype(np.float32), "w1")], name="a").output
    y = g.add_node("Linear", [h, g.add_const(rng.standard_normal((K, 8)).astype(np.float32), "w2")], name="b").output
    g.outputs = [g.add_node("Reshape", [y, g.add_const(np.array([16], np.int64))]).output]
    run_pass("quantize", g, ctx_for("w4a8", keep_fp32=("lm_head",)))
    assert [n.name for n in g.nodes if n.op == "Linear"] == ["b"] and g.ops()["QLinear"] == 1


@pytest.mark.parametrize("qm,asym", [("w4a8", False), ("w4a32", True), ("w8a8", False)])
def test_embeddings_become_qgather(qm, asym):
    """A row lookup in a constant table is quantized like the weights; its rows dequantize exactly."""
    rng = np.random.default_rng(11)
    g = Graph()
    ids = g.add_input("ids", t("i64", 2, "seq"))
    table = rng.standard_normal((50, K)).astype(np.float32)
    g.outputs = [g.add_node("Gather", [g.add_const(table, "embed.weight"), ids], {"axis": 0}, name="embed").output]
    ctx = run_pass("quantize", g, ctx_for(qm, asym=asym))
    (n,) = [n for n in g.nodes if n.op == "QGather"]
    assert (n.input(3) is not None) == asym and ctx.stats["quantize"]["linears"] == 1
    f = {"ids": np.array([[0, 49, -1], [7, 7, -50]], np.int64)}
    if qm == "w8a8":
        q, s = quantize_int8(table.T)
        want = dequantize(q, s, None, 8, K)
    else:
        q, s, z = quantize_int4(table.T, 32, symmetric=not asym)
        want = dequantize(q, s, z, 4, 32)
    np.testing.assert_array_equal(run_graph(g, f)[g.outputs[0].name], want.astype(np.float32)[f["ids"]])
    g2 = Graph()
    ids2 = g2.add_input("ids", t("i64", 3))
    g2.outputs = [g2.add_node("Gather", [g2.add_const(table, "embed.weight"), ids2], name="embed").output]
    run_pass("quantize", g2, ctx_for(qm, keep_fp32=("embed",)))
    assert g2.ops() == {"Gather": 1}


def test_fp32_is_untouched():
    rng = np.random.default_rng(2)
    g = mlp_graph(rng)
    before = str(g)
    run_pass("quantize", g, ctx_for("fp32"))
    run_pass("quantize-activations", g, ctx_for("fp32"))
    assert str(g) == before


# -- quantize-activations ---------------------------------------------------------------------------------

def test_w8a8_reference_quantizes_activations_per_row_and_group():
    """QLinear {bits 8, act i8_group, act_group 32}: y = s[n] * sum_a xs[m, a] * sum_{k in a} q * xq + bias,
    written out here with integer dots per group; per-tensor and per-row activations give other results."""
    from tcc.ir.quant_arith import qlinear_reference

    rng = np.random.default_rng(8)
    M, K, N = 64, 100, 5
    x = rng.standard_normal((M, K)).astype(np.float32) * np.float32(10.0) ** rng.uniform(-1, 1, (M, 1)).astype(np.float32)
    x[np.arange(M), rng.integers(0, K, M)] *= 30.0  # one outlier channel per row
    w = rng.standard_normal((K, N)).astype(np.float32)
    q, s = quantize_int8(w)
    bias = rng.standard_normal(N).astype(np.float32)
    y = qlinear_reference(x, q, s, None, bias, 8, K, "i8_group", 32)
    xq, xs, _ = quantize_activations(x, 32)
    assert xs.shape == (M, 4)  # the last group: k 96..99
    want = np.zeros((M, N))
    for a in range(4):
        dots = xq[:, 32 * a:32 * (a + 1)].astype(np.int64) @ q[:, 32 * a:32 * (a + 1)].T.astype(np.int64)
        want += xs[:, a:a + 1].astype(np.float64) * dots
    want = want * s[:, 0].astype(np.float64) + bias
    np.testing.assert_array_equal(y, want.astype(np.float32))
    exact = x.astype(np.float64) @ w.astype(np.float64) + bias
    err = lambda act, g: np.mean((qlinear_reference(x, q, s, None, bias, 8, K, act, g) - exact) ** 2)
    assert err("i8_group", 32) < err("i8_group", 0) < err("i8_tensor", 0)  # groups < per row < per tensor


def test_a_bad_act_group_is_refused():
    from tcc.errors import ShapeError

    g = Graph()
    x = g.add_input("x", t("f32", 2, K))
    q = g.add_const(np.zeros((N, K), np.int8), "q")
    s = g.add_const(np.ones((N, 1), np.float32), "s")
    with pytest.raises(ShapeError, match="act_group must be a non-negative int"):
        g.add_node("QLinear", [x, q, s], {"bits": 8, "group_size": K, "act": "i8_group", "act_group": -32})


@pytest.mark.parametrize("qm", ["w4a8", "w8a8"])
def test_quantize_activations_is_exact_and_shared(qm):
    rng = np.random.default_rng(3)
    g = mlp_graph(rng)
    run_pass("quantize", g, ctx_for(qm))
    f = feeds(rng, rows=7)
    before = run_graph(g, f)
    ctx = run_pass("quantize-activations", g, ctx_for(qm))
    # q, k, gate, up share the norm output; down reads its own input: two QuantizeActs for five QLinearI8
    assert g.ops()["QuantizeActs"] == 2 == ctx.stats["quantize-activations"] and g.ops()["QLinearI8"] == 5
    qa = [n for n in g.nodes if n.op == "QuantizeActs"]
    # w4a8: the weight groups of 32; w8a8: one scale per row, a group of K rounded up to 32
    group = (lambda k: -(-k // 32) * 32) if qm == "w8a8" else (lambda k: 32)
    assert all(n.attrs["pad_to"] == 64 and n.attrs["per_tensor"] == 0
               and n.attrs["group_size"] == group(n.inputs[0].shape[-1]) for n in qa)
    assert all(n.attrs["act_group"] == (group(n.inputs[3].shape[1]) if qm == "w8a8" else 0)
               for n in g.nodes if n.op == "QLinearI8")
    after = run_graph(g, f)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])  # the same arithmetic, bit for bit


@pytest.mark.parametrize("qm", ["w4a8", "w8a8"])
def test_fuse_norm_quantize_is_exact(qm):
    """RMSNorm feeding only a per-group QuantizeActs (w4a8's weight groups, w8a8's one group per row) becomes
    one NormQuantize, bit for bit the same."""
    rng = np.random.default_rng(5)
    g = mlp_graph(rng)
    run_pass("quantize", g, ctx_for(qm))
    run_pass("quantize-activations", g, ctx_for(qm))
    f = feeds(rng, rows=9)
    before = run_graph(g, f)
    ctx = run_pass("fuse-norm-quantize", g, ctx_for(qm))
    assert ctx.stats["fuse-norm-quantize"] == 1
    assert g.ops().get("NormQuantize", 0) == 1 and g.ops().get("RMSNorm", 0) == 0
    (n,) = [n for n in g.nodes if n.op == "NormQuantize"]
    assert n.attrs == {"norm": "rmsnorm", "axis": -1, "eps": 1e-6, "group_size": 64 if qm == "w8a8" else 32,
                       "pad_to": 64}
    assert [u.op for u, _ in g.users()[n.outputs[0]]] == ["QLinearI8"] * 4
    after = run_graph(g, f)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])


def test_fuse_norm_quantize_leaves_a_norm_with_other_readers():
    rng = np.random.default_rng(6)
    g = mlp_graph(rng)
    norm_out = next(n for n in g.nodes if n.op == "RMSNorm").output
    g.outputs = [*g.outputs, norm_out]  # the f32 rows are needed
    run_pass("quantize", g, ctx_for("w4a8"))
    run_pass("quantize-activations", g, ctx_for("w4a8"))
    ctx = run_pass("fuse-norm-quantize", g, ctx_for("w4a8"))
    assert ctx.stats["fuse-norm-quantize"] == 0 and "NormQuantize" not in g.ops()


def test_w4a32_keeps_fp32_activations():
    rng = np.random.default_rng(4)
    g = mlp_graph(rng)
    run_pass("quantize", g, ctx_for("w4a32"))
    run_pass("quantize-activations", g, ctx_for("w4a32"))
    assert "QuantizeActs" not in g.ops() and g.ops()["QLinear"] == 5


# -- awq / smoothquant ------------------------------------------------------------------------------------

def _output_error(g: Graph, ref: dict, f: dict) -> float:
    out = run_graph(g, f)
    return sum(float(np.mean((out[k] - ref[k]) ** 2)) for k in ref)


@pytest.mark.parametrize("method,qm", [("awq", "w4a8"), ("awq", "w4a32"), ("awq", "w4a16"), ("smoothquant", "w8a8")])
def test_calibration_folds_preserve_fp32_and_beat_round_to_nearest(method, qm):
    rng = np.random.default_rng(5)
    g = mlp_graph(rng, outlier=30.0)
    calib = [feeds(rng, rows=64) for _ in range(4)]
    held_out = feeds(rng, rows=64)
    ref = run_graph(g, held_out)
    before = g.copy()
    ctx = run_pass(method, g, ctx_for(qm, calibration=calib))
    st = ctx.stats[method]
    assert st["groups"] == 2 and st[{"awq": "scaled", "smoothquant": "smoothed"}[method]] == 2
    assert st["error_ratio"] < 0.5  # planted outliers: the searched scales must cut the error a lot
    # still the fp32 function (before quantization)
    got = run_graph(g, held_out)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-4 * np.abs(ref[k]).max())
    # and on held-out rows the quantized model is strictly better than round-to-nearest
    for graph in (g, before):
        run_pass("quantize", graph, ctx_for(qm))
    assert _output_error(g, ref, held_out) < 0.5 * _output_error(before, ref, held_out)


def test_awq_clip_search_lowers_the_error():
    rng = np.random.default_rng(6)
    g = mlp_graph(rng)
    calib = [feeds(rng, rows=64) for _ in range(2)]
    plain = g.copy()
    run_pass("awq", plain, ctx_for("w4a8", calibration=calib))
    ctx = run_pass("awq", g, ctx_for("w4a8", calibration=calib, awq_clip=True))
    assert ctx.stats["awq"]["clipped"] > 0
    ref = run_graph(mlp_graph(np.random.default_rng(6)), calib[0])
    for graph in (g, plain):  # awq_clip: both rounded as the clip search assumed (no scale search, c = 1)
        run_pass("quantize", graph, ctx_for("w4a8", awq_clip=True))
    assert _output_error(g, ref, calib[0]) < _output_error(plain, ref, calib[0])


def _half_linears(rng, k: int, widths: list[int]) -> list:
    """MatMul(x f32, Cast(W f16)) nodes: an fp16 export's layers as the calibration passes see them."""
    g = Graph()
    x = g.add_input("x", t("f32", 4, k))
    nodes = []
    for i, n in enumerate(widths):
        w = g.add_const((rng.standard_normal((k, n)) / 8).astype(np.float16), f"w{i}")
        cast = g.add_node("Cast", [w], {"to": "f32"}).output
        nodes.append(g.add_node("MatMul", [x, cast], name=f"lin{i}"))
    g.outputs = [n.output for n in nodes]
    return nodes


@pytest.mark.parametrize("asym", [False, True])
def test_fake_quantize_int4_is_the_dequantized_weight_exactly(asym):
    """The searches simulate int4 weights with fake_quantize_int4 (no transposes, f32): it must be exactly
    dequantize(quantize_int4(w, search=False)) — ragged K (a padded last group), an all-zero group, a tie
    |max| == |min|."""
    from tcc.ir.quant_arith import fake_quantize_int4

    rng = np.random.default_rng(14)
    w = (rng.standard_normal((72, 9)) / 8).astype(np.float32)
    w[32:64, 2] = 0
    w[0, 3], w[5, 3] = 0.9, -0.9
    q, s, z = quantize_int4(w, 32, symmetric=not asym, search=False)
    want = dequantize(q, s, z, 4, 32).T
    got = fake_quantize_int4(w, 32, symmetric=not asym)
    assert got.dtype == np.float32 and got.shape == w.shape
    np.testing.assert_array_equal(got.astype(np.float64), want)


@pytest.mark.parametrize("qm", ["w4a8", "w8a8"])
def test_scale_search_in_column_slices_equals_the_whole_weight(qm, monkeypatch):
    """A 7B lm_head's search runs in column slices; each column is quantized alone, so the error is the same."""
    from tcc.passes import smoothing
    from tcc.passes.schemes import get_scheme

    rng = np.random.default_rng(11)
    lins = _half_linears(rng, K, [20, 28])  # a group of two layers (gate and up), slices crossing them
    quant = smoothing.Quantizer(get_scheme(qm), 32, False)
    x = rng.standard_normal((16, K)).astype(np.float32)
    s = rng.uniform(0.5, 2.0, K).astype(np.float32)
    w = np.concatenate([np.asarray(smoothing.weight_value(n).const, np.float32) for n in lins], axis=1)
    ref = x.astype(np.float64) @ w.astype(np.float64)
    xq = quant.acts((x / s).astype(np.float32)).astype(np.float32)  # the search's f32 products
    whole = np.mean((xq @ quant.weight((w * s[:, None]).astype(np.float32)) - ref) ** 2)
    monkeypatch.setattr(smoothing, "SLICE_ELEMENTS", 7 * K)  # 7 columns a slice: 20 + 28 split unevenly
    gw = smoothing.GroupWeights(lins)
    assert gw.step == 7
    np.testing.assert_allclose(gw.product(x), ref, rtol=1e-12)
    np.testing.assert_allclose(quant.error(x, gw, s, ref), whole, rtol=1e-6)  # f32 sums over K, blocked apart
    np.testing.assert_array_equal(gw.row_abs_max(), np.abs(w).max(axis=1))


def test_scale_search_on_sampled_columns_picks_a_scale_as_good_on_all_columns():
    """Wide groups (a 7B's qkv, gate/up, lm_head) are searched on SEARCH_COLUMNS evenly spaced columns: the
    scale picked there must give (on every column) nearly all the error reduction of the best scale found on
    every column; narrow groups are searched on all of them. Here 64 of 512 columns (12.5%; a 7B's qkv is
    searched on 17% of its columns, and on 32x more of them)."""
    from tcc.passes import smoothing
    from tcc.passes.awq import awq_candidates
    from tcc.passes.schemes import get_scheme

    rng = np.random.default_rng(15)
    lins = _half_linears(rng, K, [300, 212])
    gw = smoothing.GroupWeights(lins)
    assert gw.sampled(512) is gw and gw.sampled(10_000) is gw
    sub = gw.sampled(64)
    full = np.concatenate([np.asarray(p, np.float32) for p in gw.parts], axis=1)
    pick = np.unique(np.linspace(0, 511, 64).round().astype(np.int64))
    assert sub.cols == 64 and [p.shape[1] for p in sub.parts] == [int((pick < 300).sum()), int((pick >= 300).sum())]
    np.testing.assert_array_equal(np.concatenate(sub.parts, axis=1), full[:, pick])

    x = rng.standard_normal((128, K)).astype(np.float32)
    x[:, [3, 17, 40]] *= 30  # outlier channels: the scales matter
    group = smoothing.Group(lins[0].inputs[0], lins, ("norm", None), {"rows": x, "mean_abs": np.abs(x).mean(0)})
    quant = smoothing.Quantizer(get_scheme("w4a8"), 32, False)
    cand = awq_candidates(group.stats["mean_abs"])
    s_all, alpha_all, err_all, base_all = smoothing.search(group, gw, quant, cand)
    s_sub, alpha_sub, _, _ = smoothing.search(group, sub, quant, cand)
    assert alpha_all > 0 and alpha_sub > 0 and err_all < 0.5 * base_all
    err_sub_on_all = quant.error(x, gw, s_sub, gw.product(x))
    assert base_all - err_sub_on_all >= 0.95 * (base_all - err_all), (alpha_sub, alpha_all, err_sub_on_all, err_all)


def test_clip_search_in_column_slices_equals_the_whole_weight(monkeypatch):
    from tcc.passes import awq, smoothing
    from tcc.passes.schemes import get_scheme

    rng = np.random.default_rng(12)
    w = (rng.standard_normal((K, 45)) / 8).astype(np.float16)
    x = rng.standard_normal((32, K)).astype(np.float32)
    quant = smoothing.Quantizer(get_scheme("w4a8"), 32, False)
    whole, n_whole = awq.clip_weights(x, w, quant)
    monkeypatch.setattr(smoothing, "SLICE_ELEMENTS", 8 * K)
    sliced, n_sliced = awq.clip_weights(x, w, quant)
    assert n_whole > 0 and n_sliced == n_whole
    np.testing.assert_array_equal(sliced, whole)


def test_scale_search_memory_stays_below_one_weight_copy(monkeypatch):
    """The search never holds its group's weights whole in f32 (a 32000 x 4096 lm_head: 524 MB, and float64
    copies of it: the 3.4 GiB peak measured at 7B)."""
    import tracemalloc

    from tcc.passes import smoothing
    from tcc.passes.awq import awq_candidates
    from tcc.passes.schemes import get_scheme

    rng = np.random.default_rng(13)
    (lin,) = _half_linears(rng, 256, [4096])
    rows = rng.standard_normal((64, 256)).astype(np.float32)
    group = smoothing.Group(lin.inputs[0], [lin], ("norm", None), {"rows": rows, "mean_abs": np.abs(rows).mean(0)})
    quant = smoothing.Quantizer(get_scheme("w4a8"), 32, False)
    monkeypatch.setattr(smoothing, "SLICE_ELEMENTS", 256 * 256)
    f32_bytes = 256 * 4096 * 4
    tracemalloc.start()
    try:
        smoothing.search(group, smoothing.GroupWeights([lin]), quant, awq_candidates(group.stats["mean_abs"]))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < f32_bytes, f"search peaked at {peak / 2**20:.1f} MiB, one f32 copy is {f32_bytes / 2**20:.1f} MiB"


def test_groups_without_a_fold_target_are_left_alone():
    rng = np.random.default_rng(7)
    g = Graph()
    x = g.add_input("x", t("f32", 4, K))
    w = g.add_const((rng.standard_normal((K, N)) / 8).astype(np.float32), "w")
    y = g.add_node("Linear", [x, w], name="lin").output  # x is a graph input: nothing to fold into
    g.outputs = [y, g.add_node("Relu", [x]).output]
    ctx = run_pass("awq", g, ctx_for("w4a8", calibration=[{"x": rng.standard_normal((4, K)).astype(np.float32)}]))
    assert ctx.stats["awq"]["groups"] == 0
    assert any("also feeds Relu" in m for m in ctx.messages)


def test_calibration_passes_are_noops_without_data_or_for_other_schemes():
    rng = np.random.default_rng(8)
    g = mlp_graph(rng)
    before = str(g)
    run_pass("awq", g, ctx_for("w4a8"))
    run_pass("smoothquant", g, ctx_for("w8a8"))
    run_pass("awq", g, ctx_for("w8a8", calibration=[feeds(rng)]))
    run_pass("smoothquant", g, ctx_for("w4a8", calibration=[feeds(rng)]))
    assert str(g) == before


# -- calibration files --------------------------------------------------------------------------------

def test_calibration_npz_and_errors(tmp_path):
    from tcc.frontend.calibration import Calibration

    rng = np.random.default_rng(9)
    g = mlp_graph(rng)
    p = tmp_path / "c.npz"
    np.savez(p, x=rng.standard_normal((3, 5, K)).astype(np.float32))
    got = Calibration(str(p), samples=2).feeds(g, {})
    assert len(got) == 2 and got[0]["x"].shape == (5, K)
    np.savez(p, y=np.zeros((2, 5, K), np.float32))
    with pytest.raises(TccError, match=r"no array for input 'x' \(the model's inputs: x; arrays: y\)"):
        Calibration(str(p)).feeds(g, {})
    np.savez(p, x=np.zeros((2, 5, K), np.float64))
    with pytest.raises(TccError, match="input 'x' is float64, the model wants f32"):
        Calibration(str(p)).feeds(g, {})
    with pytest.raises(TccError, match="--calib .*missing.txt: no such file"):
        Calibration(str(tmp_path / "missing.txt"))
    txt = tmp_path / "c.txt"
    txt.write_text("some text")
    with pytest.raises(TccError, match="text calibration needs a language model"):
        Calibration(str(txt)).feeds(g, {})
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(TccError, match="not a readable .npz"):
        Calibration(str(bad)).feeds(g, {})


def test_scale_search_takes_each_groups_least_error():
    """quantize_int4's symmetric scales: per group the factor of SCALE_SEARCH with the least squared error
    (the first of equal ones), checked by brute force group by group; never worse than c = 1; search=False
    and asymmetric groups keep c = 1 (m / -8)."""
    from tcc.ir.quant_arith import SCALE_SEARCH

    rng = np.random.default_rng(21)
    w = rng.standard_t(3, (72, 11)).astype(np.float32)  # heavy tails: clipping pays in some groups
    w[32:64, 2] = 0
    w[0, 3], w[5, 3] = 0.9, -0.9
    q, s, _ = quantize_int4(w, 32)
    wd = dequantize(q, s, None, 4, 32)  # [N, K]
    q1, s1, _ = quantize_int4(w, 32, search=False)
    wd1 = dequantize(q1, s1, None, 4, 32)
    factors = set()
    for n in range(w.shape[1]):
        for g0 in range(0, 72, 32):
            grp = w[g0:g0 + 32, n].astype(np.float64)
            m = grp[np.argmax(np.abs(grp))]
            errs = []
            for c in SCALE_SEARCH:
                d = float(np.float16(np.float32(m) * np.float32(c) / np.float32(-8)))
                codes = np.clip(np.rint(grp / d), -8, 7) if d else np.zeros_like(grp)
                errs.append(float(np.sum((codes * d - grp) ** 2)))
            c = SCALE_SEARCH[int(np.argmin(errs))]
            factors.add(c)
            got = wd[n, g0:g0 + 32]
            assert np.sum((got - grp) ** 2) == pytest.approx(min(errs), rel=1e-12, abs=1e-30)
            assert np.sum((got - grp) ** 2) <= np.sum((wd1[n, g0:g0 + 32] - grp) ** 2)
            assert s[n, g0 // 32] == np.float32(np.float16(np.float32(m) * np.float32(c) / np.float32(-8)))
    assert len(factors) > 2  # the search chose more than one factor here
    assert np.array_equal(s1, quantize_int4(w, 32, clip=np.ones((11, 3), np.float32))[1])
