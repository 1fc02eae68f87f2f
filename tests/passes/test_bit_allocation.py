"""bit-allocation: which layers of a 4-bit scheme get 8-bit weights, and quantize carrying the choice out.

Oracles:
- the default: the embedding (QGather bits 8) and the LM head (QLinear bits 8 with the int8 activations of
  the target's 8-bit scheme, w8a8's per tensor) in w4a8; in w4a32, whose f32 activations no 8-bit kernel
  takes, only the embedding; "pure": the graph quantize alone makes (bitwise equal constants);
- byte accounting: the bytes the allocation counts equal what quantize stores (codes, fp16 / f32 scales),
  recomputed here from the quantized constants' sizes;
- a budget: the chosen set respects it, is maximal (no skipped layer with a positive benefit still fits),
  and equals the greedy order (the LM head, then the embedding where they fit, then the others by benefit
  per extra byte) computed here independently from numpy quantization of the weights (data-free) or of the
  calibration rows (rows: every row of a small calibration set, so the sample is all of them);
- the measured criterion decides: a layer whose input has an outlier channel loses accuracy at 8 bits with
  per-tensor int8 activations (w8a8's), so with calibration data it is never upgraded, while the data-free
  weight error, blind to activations, upgrades it first;
- the quantized function: the interpreter's outputs of the mixed graph equal the explicit dequantized
  products (to fp32 rounding, as test_quantize.py).
"""
from __future__ import annotations

import numpy as np
import pytest

from tcc.errors import TccError
from tcc.ir.core import Graph
from tcc.ir.interpreter import run_graph
from tcc.ir.quant_arith import dequantize, dequantize_activations, quantize_activations, quantize_int4, quantize_int8
from tcc.passes.bit_allocation import check_budget, eight_bit_act
from tcc.passes.context import PassContext
from tcc.passes.schemes import SCHEMES

from .helpers import CpuTarget, run_pass, t

V, K, H = 256, 64, 128  # vocabulary, hidden, MLP width


class _Target(CpuTarget):
    tied_tables = False  # a tied head's planning is tests/passes/test_tie_tables.py's


class _NoInt8Target(_Target):
    qms = ("fp32", "w4a32", "w4a8")


def ctx_for(qm: str, target=None, **options) -> PassContext:
    return PassContext(target=target or _Target(), qm=qm, options=dict(options), debug=0)


def lm_graph(rng, outlier: float = 1.0) -> Graph:
    """ids -> embedding [V, K] -> up (K -> H, heavy-tailed weights) -> down (H -> K) -> lm_head (K -> V).
    outlier > 1 scales channel 5 of down's input (and divides the matching weight row: same function)."""
    g = Graph()
    ids = g.add_input("ids", t("i64", 1, "seq"))
    table = rng.standard_normal((V, K)).astype(np.float32)
    h = g.add_node("Gather", [g.add_const(table, "embed.weight"), ids], {"axis": 0}, name="embed").output
    w_up = (rng.standard_t(2, (K, H)) / np.sqrt(K)).astype(np.float32)  # heavy tails: a large int4 error
    u = g.add_node("Linear", [h, g.add_const(w_up, "up.weight")], name="up").output
    scale = np.ones(H, np.float32)
    scale[5] = outlier
    u = g.add_node("Mul", [u, g.add_const(scale, "outlier")]).output
    w_down = (rng.standard_normal((H, K)) / np.sqrt(H)).astype(np.float32)
    w_down[5] /= outlier
    d = g.add_node("Linear", [u, g.add_const(w_down, "down.weight")], name="down").output
    w_lm = (rng.standard_normal((K, V)) / np.sqrt(K)).astype(np.float32)
    g.outputs = [g.add_node("Linear", [d, g.add_const(w_lm, "lm_head.weight")], name="lm_head").output]
    g.verify()
    return g


def allocate(g: Graph, ctx: PassContext) -> PassContext:
    run_pass("bit-allocation", g, ctx)
    return run_pass("quantize", g, ctx)


def qnodes(g: Graph) -> dict:
    return {n.name: n for n in g.nodes if n.op in ("QLinear", "QGather")}


def stored_bytes(g: Graph) -> int:
    """Bytes of the quantized constants as weights.bin stores them: u8 / i8 codes (int4 two a byte), int4
    scales as fp16, int8 scales as f32, u8 zero points."""
    total = 0
    for n in qnodes(g).values():
        q, s = n.inputs[1], n.inputs[2]
        bits = n.attrs["bits"]
        total += q.const.size // (2 if bits == 4 else 1) + s.const.size * (2 if bits == 4 else 4)
        z = n.input(3)
        total += 0 if z is None else z.const.size
    return total


def feeds(rng, count: int = 3, seq: int = 40) -> list[dict]:
    return [{"ids": rng.integers(0, V, (1, seq)).astype(np.int64)} for _ in range(count)]


def test_default_keeps_embedding_and_lm_head_at_8_bits():
    g = lm_graph(np.random.default_rng(0))
    ctx = allocate(g, ctx_for("w4a8"))
    q = qnodes(g)
    assert q["embed"].op == "QGather" and q["embed"].attrs["bits"] == 8 and q["embed"].attrs["group_size"] == K
    # the w8a8 kernels' activations: int8, one scale per row (a group of K rounded up to the kernels' 32)
    lm = q["lm_head"].attrs
    assert (lm["bits"], lm["act"], lm["act_group"]) == (8, "i8_group", -(-K // 32) * 32)
    assert [(q[n].attrs["bits"], q[n].attrs["act"]) for n in ("up", "down")] == [(4, "i8_group")] * 2
    a = ctx.stats["bit-allocation"]
    assert a["criterion"] == "default" and sorted(a["eight_bit"]) == ["embed", "lm_head"]
    assert a["layers"] == {"embed": 8, "up": 4, "down": 4, "lm_head": 8}
    assert ctx.stats["quantize"]["bits"] == a["layers"]
    assert a["weight_bytes"] == ctx.stats["quantize"]["weight_bytes"] == stored_bytes(g)
    weights = V * K + K * H + H * K + K * V
    assert a["weights"] == weights and a["bits_per_weight"] == round(8 * stored_bytes(g) / weights, 4)
    # after quantize-activations, the LM head runs on the w8a8 kernel's operands
    run_pass("quantize-activations", g, ctx)
    (lm,) = [n for n in g.nodes if n.op == "QLinearI8" and n.name == "lm_head"]
    assert lm.attrs["bits"] == 8 and not lm.attrs.get("per_tensor") and lm.attrs["act_group"] == K


def inputs_of(g: Graph, f: dict, name: str) -> list:
    """The arguments node `name` reads when g runs on f (the interpreter's observe hook)."""
    seen = {}

    def observe(node, args):
        if node.name == name:
            seen["args"] = args
    run_graph(g, f, check_types=False, observe=observe)
    return seen["args"]


def test_mixed_graph_computes_the_dequantized_products():
    rng = np.random.default_rng(1)
    g = lm_graph(rng)
    f = feeds(rng, 1)[0]
    allocate(g, ctx_for("w4a8"))
    q = qnodes(g)
    got = run_graph(g, f, check_types=False)[g.outputs[0].name]
    lm, emb = q["lm_head"], q["embed"]
    x = np.asarray(inputs_of(g, f, "lm_head")[0], np.float32)
    wd = dequantize(lm.inputs[1].const, lm.inputs[2].const, None, 8, K)
    xq, xs, _ = quantize_activations(x, K)  # per row (K = 64): the w8a8 kernel's activations
    want = dequantize_activations(xq, xs, K, K) @ wd.T
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
    table = dequantize(emb.inputs[1].const, emb.inputs[2].const, None, 8, K)
    np.testing.assert_array_equal(inputs_of(g, f, "up")[0], table[f["ids"]].astype(np.float32))


def test_w4a32_has_no_8_bit_f32_kernel_so_only_the_embedding_moves():
    g = lm_graph(np.random.default_rng(2))
    ctx = allocate(g, ctx_for("w4a32"))
    q = qnodes(g)
    assert q["embed"].attrs["bits"] == 8
    assert all((q[n].attrs["bits"], q[n].attrs["act"]) == (4, "f32") for n in ("up", "down", "lm_head"))
    assert ctx.stats["bit-allocation"]["eight_bit"] == ["embed"]
    assert eight_bit_act(SCHEMES["w4a32"], _Target()) is None
    assert eight_bit_act(SCHEMES["w4a8"], _Target()) == "i8_group"
    assert eight_bit_act(SCHEMES["w4a8"], _NoInt8Target()) is None  # asks the target: no w8a8, no 8-bit Linear
    g = lm_graph(np.random.default_rng(2))
    allocate(g, ctx_for("w4a8", _NoInt8Target()))
    assert [n.attrs["bits"] for n in qnodes(g).values()] == [8, 4, 4, 4]


def test_pure_is_what_quantize_alone_makes():
    a, b = lm_graph(np.random.default_rng(3)), lm_graph(np.random.default_rng(3))
    ctx = allocate(a, ctx_for("w4a8", budget_bits="pure"))
    run_pass("quantize", b, ctx_for("w4a8"))
    assert ctx.stats["bit-allocation"]["eight_bit"] == []
    qa, qb = qnodes(a), qnodes(b)
    for name in qa:
        assert qa[name].attrs == qb[name].attrs
        for x, y in zip(qa[name].inputs[1:], qb[name].inputs[1:]):
            np.testing.assert_array_equal(x.const, y.const)
    assert ctx.stats["bit-allocation"]["bits_per_weight"] == 4.5  # group 32: 4 bits + an fp16 scale per 32


def _rel_w(w, bits):
    if bits == 4:
        q, s, _ = quantize_int4(w, 32)
        wd = dequantize(q, s, None, 4, 32)
    else:
        q, s = quantize_int8(w)
        wd = dequantize(q, s, None, 8, w.shape[0])
    return float(np.sum((wd - w.T.astype(np.float64)) ** 2) / np.sum(w.astype(np.float64) ** 2))


def _bytes(n, k, bits):
    return n * k + 4 * n if bits == 8 else n * k // 2 + 2 * n * (k // 32)


def _greedy(benefit: dict, shape: dict, limit: float) -> set:
    """The LM head, then the embedding, where each fits; then by benefit per extra byte."""
    total = sum(_bytes(*shape[n], 4) for n in shape)
    order = sorted((n for n in benefit if benefit[n] > 0 and n not in ("lm_head", "embed")),
                   key=lambda n: -benefit[n] / (_bytes(*shape[n], 8) - _bytes(*shape[n], 4)))
    chosen = set()
    for n in ["lm_head", "embed", *order]:
        extra = _bytes(*shape[n], 8) - _bytes(*shape[n], 4)
        if total + extra <= limit:
            chosen.add(n)
            total += extra
    return chosen


SHAPES = {"embed": (V, K), "up": (H, K), "down": (K, H), "lm_head": (V, K)}  # [N, K] each


@pytest.mark.parametrize("budget", [4.5, 5.0, 5.25, 6.0, 7.0, 9.0])
def test_budget_without_data_greedy_by_weight_error(budget):
    g = lm_graph(np.random.default_rng(4))
    ws = {n.name: (n.inputs[0].const.T if n.op == "Gather" else n.inputs[1].const) for n in g.nodes
          if n.op in ("Gather", "Linear")}
    ctx = allocate(g, ctx_for("w4a8", budget_bits=budget))
    a = ctx.stats["bit-allocation"]
    weights = sum(n * k for n, k in SHAPES.values())
    limit = budget * weights / 8
    assert a["criterion"] == "weight-error" and a["budget_bits"] == budget
    assert a["weight_bytes"] == stored_bytes(g) <= limit
    benefit = {n: _rel_w(w, 4) - _rel_w(w, 8) for n, w in ws.items()}
    assert set(a["eight_bit"]) == _greedy(benefit, SHAPES, limit)
    # maximal: every layer left at 4 bits would break the budget
    for n in set(SHAPES) - set(a["eight_bit"]):
        assert a["weight_bytes"] + _bytes(*SHAPES[n], 8) - _bytes(*SHAPES[n], 4) > limit, n
    # the floor is 27648 bytes; the LM head and the embedding cost +8192 each at 8 bits, up +4096, down +3840
    if budget == 5.25:  # +5184: neither the LM head nor the embedding fits; the heavy-tailed `up` gains most
        assert a["eight_bit"] == ["up"]
    if budget == 6.0:  # +9216: the LM head first; the 1024 bytes left fit nothing
        assert a["eight_bit"] == ["lm_head"]
    if budget == 7.0:  # +15360: the LM head, not the embedding too (16384), then up
        assert sorted(a["eight_bit"]) == ["lm_head", "up"]
    if budget == 9.0:
        assert sorted(a["eight_bit"]) == sorted(SHAPES)
    assert {n.name: n.attrs["bits"] for n in qnodes(g).values()} == a["layers"]


def _input_rows(g: Graph, fs: list[dict], name: str) -> np.ndarray:
    return np.concatenate([np.asarray(inputs_of(g, f, name)[0], np.float32).reshape(-1, g_k(g, name))
                           for f in fs])


def g_k(g: Graph, name: str) -> int:
    (node,) = [n for n in g.nodes if n.name == name]
    return node.inputs[0].shape[-1]


def _rel_out(x, w, bits):
    ref = x.astype(np.float64) @ w.astype(np.float64)
    gs = 32 if bits == 4 else -(-x.shape[-1] // 32) * 32  # the 8-bit kernels': one scale per row
    xq, xs, _ = quantize_activations(x, gs)
    xd = dequantize_activations(xq, xs, x.shape[-1], gs)
    if bits == 4:
        q, s, _ = quantize_int4(w, 32)
        wd = dequantize(q, s, None, 4, 32)
    else:
        q, s = quantize_int8(w)
        wd = dequantize(q, s, None, 8, w.shape[0])
    return float(np.sum((xd @ wd.T - ref) ** 2) / np.sum(ref ** 2))


def test_budget_with_calibration_measures_the_output_error():
    """An outlier channel into `down`: per-row int8 activations (the 8-bit kernel's) are worse there than
    4-bit weights with int8 activations per group, so the measured benefit is negative and `down` stays
    4-bit whatever the budget; the data-free proxy, blind to activations, would upgrade it."""
    rng = np.random.default_rng(5)
    fs = feeds(rng)
    g = lm_graph(np.random.default_rng(6), outlier=200.0)
    rows = {n: _input_rows(g, fs, n) for n in ("up", "down", "lm_head")}
    ws = {n.name: n.inputs[1].const for n in g.nodes if n.op == "Linear"}
    ctx = allocate(g, ctx_for("w4a8", budget_bits=9.0, calibration=fs))
    a = ctx.stats["bit-allocation"]
    assert a["criterion"] == "calibration"
    for n in ("up", "down", "lm_head"):  # all 120 rows (fewer than smoothing.MAX_ROWS): the sums are exact
        want = _rel_out(rows[n], ws[n], 4) - _rel_out(rows[n], ws[n], 8)
        assert a["benefit"][n] == pytest.approx(want, rel=1e-6, abs=1e-12), n
    assert a["benefit"]["down"] < 0 < a["benefit"]["up"]
    assert sorted(a["eight_bit"]) == ["embed", "lm_head", "up"]
    g2 = lm_graph(np.random.default_rng(6), outlier=200.0)
    assert "down" in allocate(g2, ctx_for("w4a8", budget_bits=9.0)).stats["bit-allocation"]["eight_bit"]


@pytest.mark.parametrize("budget,message", [
    (4.4, "--budget-bits 4.4 is below the 4-bit floor of this model: 4.500 bits per weight at group 32 (every "
          "layer at 4 bits, scales included)"),
    ("x", "--budget-bits must be a number of bits per weight (e.g. 4.5) or 'pure', got 'x'"),
    ("nan", "--budget-bits must be a positive number of bits per weight, got 'nan'"),
    (-1, "--budget-bits must be a positive number of bits per weight, got -1"),
])
def test_bad_budgets_are_one_line_errors(budget, message):
    g = lm_graph(np.random.default_rng(7))
    with pytest.raises(TccError) as e:
        run_pass("bit-allocation", g, ctx_for("w4a8", budget_bits=budget))
    assert str(e.value) == message


def test_budget_needs_a_4_bit_scheme():
    g = lm_graph(np.random.default_rng(8))
    with pytest.raises(TccError, match=r"^--budget-bits applies to the 4-bit schemes .*not --qm w8a8$"):
        run_pass("bit-allocation", g, ctx_for("w8a8", budget_bits=5.0))
    ctx = run_pass("bit-allocation", g, ctx_for("w8a8"))  # no budget: nothing to allocate, no stats
    assert "bit-allocation" not in ctx.stats
    assert check_budget(None) is None and check_budget("pure") == "pure" and check_budget("4.75") == 4.75


def test_asym_zero_points_are_counted():
    g = lm_graph(np.random.default_rng(9))
    ctx = allocate(g, ctx_for("w4a8", asym=True))
    assert ctx.stats["bit-allocation"]["weight_bytes"] == ctx.stats["quantize"]["weight_bytes"] == stored_bytes(g)
    assert qnodes(g)["up"].input(3) is not None
