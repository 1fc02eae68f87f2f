"""tie-tables: a QGather whose quantized table equals a quantized Linear's weights reads the Linear's constants.

Oracles:
- the rewrite: the QGather takes the very Values of the QLinear (codes, scales, zero points) and layout
  "linear"; its own table constants are gone; the interpreter's outputs are bitwise those before the pass
  (the same values are read);
- the stats: the pair and the bytes of the table stored once (quantize.layer_bytes);
- no rewrite where the forms differ in anything (a code, a scale, bits, group), nor on a target without
  `tied_tables` (the GPUs);
- same_table and the chunked comparisons: correct across chunk boundaries (a tiny CHUNK_ELEMENTS);
- bit-allocation plans one copy (the tied table takes the LM head's bits and is not counted), and gptq
  leaves a tied head to round-to-nearest.
"""
from __future__ import annotations

import numpy as np
import pytest

from tcc.ir.core import Graph
from tcc.ir.interpreter import run_graph
from tcc.passes import tie_tables
from tcc.passes.context import PassContext
from tcc.passes.quantize import layer_bytes

from .helpers import CpuTarget, run_pass, t

V, K, H = 200, 64, 96


_Target = CpuTarget


class _GpuLike(CpuTarget):
    tied_tables = False


def ctx_for(qm: str, target=None, **options) -> PassContext:
    return PassContext(target=target or _Target(), qm=qm, options=dict(options), debug=0)


def lm_graph(rng, tied: bool = True, nudge: bool = False) -> Graph:
    """ids -> embedding [V, K] -> up -> relu -> down (+ residual) -> LM head (K -> V): the head's weight the
    table's transpose as its own constant (tied), or independent weights; nudge: one head weight changed."""
    g = Graph()
    ids = g.add_input("ids", t("i64", 1, "seq"))
    table = rng.standard_normal((V, K)).astype(np.float32)
    h = g.add_node("Gather", [g.add_const(table, "embed.weight"), ids], {"axis": 0}, name="embed").output
    up = g.add_const((rng.standard_normal((K, H)) / np.sqrt(K)).astype(np.float32), "up.weight")
    u = g.add_node("Relu", [g.add_node("Linear", [h, up], name="up").output]).output
    down = g.add_const((rng.standard_normal((H, K)) / np.sqrt(H)).astype(np.float32), "down.weight")
    d = g.add_node("Add", [h, g.add_node("Linear", [u, down], name="down").output]).output
    head = np.ascontiguousarray(table.T) if tied else rng.standard_normal((K, V)).astype(np.float32)
    if nudge:
        head[5, 11] *= 1.5
    g.outputs = [g.add_node("Linear", [d, g.add_const(head, "lm_head.weight")], name="lm_head").output]
    g.verify()
    return g


FEEDS = {"ids": np.array([[0, V - 1, 17, 17, 3]], np.int64)}


def quantized(qm: str, target=None, **kw) -> tuple[Graph, PassContext]:
    g = lm_graph(np.random.default_rng(5), **{k: kw.pop(k) for k in ("tied", "nudge") if k in kw})
    ctx = ctx_for(qm, target, **kw)
    for name in ("bit-allocation", "quantize"):
        run_pass(name, g, ctx)
    return g, ctx


def _node(g: Graph, op: str) -> list:
    return [n for n in g.nodes if n.op == op]


@pytest.mark.parametrize("qm,options,bits", [("w4a8", {}, 8), ("w4a8", {"budget_bits": "pure"}, 4),
                                             ("w4a8", {"budget_bits": "pure", "asym": True}, 4), ("w8a8", {}, 8),
                                             ("w4a32", {"budget_bits": "pure"}, 4)])
def test_the_table_reads_the_heads_constants(qm, options, bits):
    g, ctx = quantized(qm, **options)
    before = run_graph(g, FEEDS)[g.outputs[0].name]
    run_pass("tie-tables", g, ctx)
    (gather,) = _node(g, "QGather")
    head = next(n for n in _node(g, "QLinear") if n.name == "lm_head")
    assert gather.attrs["layout"] == "linear" and gather.attrs["bits"] == bits
    assert all(a is b for a, b in zip(gather.inputs[1:], head.inputs[1:])) and len(gather.inputs) == (
        4 if options.get("asym") else 3)
    assert not any(name.startswith("embed.weight") for name in g.constants)
    asym = bool(options.get("asym"))
    assert ctx.stats["tie-tables"] == {"tied": [["embed", "lm_head"]],
                                       "saved_bytes": layer_bytes(V, K, bits, 32, asym)}
    np.testing.assert_array_equal(run_graph(g, FEEDS)[g.outputs[0].name], before)
    run_pass("quantize-activations", g, ctx)  # the int8 split keeps the head's constants: still shared
    (gather,) = _node(g, "QGather")
    assert any(gather.inputs[1] is n.inputs[3] for n in _node(g, "QLinearI8")) or qm == "w4a32"


@pytest.mark.parametrize("kw", [dict(tied=False), dict(nudge=True), dict(target=_GpuLike())])
def test_no_tie(kw):
    g, ctx = quantized("w4a8", **kw)
    text = str(g)
    run_pass("tie-tables", g, ctx)
    assert str(g) == text and "tie-tables" not in ctx.stats


def test_w4a32_default_forms_differ():
    """w4a32's default: embedding 8-bit, head 4-bit (no 8-bit kernel with f32 activations): not one form."""
    g, ctx = quantized("w4a32")
    assert ctx.stats["bit-allocation"]["tied"] == []
    run_pass("tie-tables", g, ctx)
    assert _node(g, "QGather")[0].attrs.get("layout", "rows") == "rows"


def test_comparisons_across_chunks(monkeypatch):
    monkeypatch.setattr(tie_tables, "CHUNK_ELEMENTS", 7)  # V*K is not a multiple: a short last chunk
    g = lm_graph(np.random.default_rng(2))
    table, head = g.constants["embed.weight"], g.constants["lm_head.weight"]
    assert tie_tables.same_table(table, head)
    head.const[K - 1, V - 1] += 1  # the last element of the last chunk
    assert not tie_tables.same_table(table, head)
    g, ctx = quantized("w8a8")
    gather, head = _node(g, "QGather")[0], next(n for n in _node(g, "QLinear") if n.name == "lm_head")
    assert tie_tables.tied_linear(gather, [head]) is head
    codes = head.inputs[1].const.copy()  # the quantized constants are read-only maps of the spill file
    codes[V - 1, K - 1] ^= 1  # one code, in the last chunk
    head.inputs[1].const = codes
    assert tie_tables.tied_linear(gather, [head]) is None


def test_bit_allocation_counts_the_tied_table_once():
    g, ctx = quantized("w4a8", budget_bits=6.0)
    a = ctx.stats["bit-allocation"]
    assert a["tied"] == [["embed", "lm_head"]] and a["layers"]["embed"] == a["layers"]["lm_head"]
    assert a["weights"] == K * H + H * K + K * V  # the table not again
    stored = sum(layer_bytes(n, k, a["layers"][name], 32, False) for name, n, k in
                 (("up", H, K), ("down", K, H), ("lm_head", V, K)))
    assert a["weight_bytes"] == stored and a["bits_per_weight"] <= 6.0
    untied = ctx_for("w4a8", _GpuLike(), budget_bits=6.0)
    run_pass("bit-allocation", lm_graph(np.random.default_rng(5)), untied)
    assert untied.stats["bit-allocation"]["tied"] == []
    assert untied.stats["bit-allocation"]["weights"] == a["weights"] + V * K


def test_gptq_leaves_a_tied_head_to_round_to_nearest():
    from tcc.passes.gptq import layers

    g, ctx = lm_graph(np.random.default_rng(5)), ctx_for("w4a8", budget_bits="pure")
    run_pass("bit-allocation", g, ctx)
    assert ctx.stats["bit-allocation"]["tied"] == [["embed", "lm_head"]]
    names = {n.name for grp in layers(g, ctx) for n in grp.linears}
    assert names == {"up", "down"}
    ctx.stats["bit-allocation"]["tied"] = []
    assert {n.name for grp in layers(g, ctx) for n in grp.linears} == {"up", "down", "lm_head"}


def test_gptq_leaves_a_tied_w8a8_head_to_round_to_nearest():
    """w8a8 has no bit allocation: gptq finds the tied head itself (and not on a target storing both)."""
    from tcc.passes.gptq import layers

    g = lm_graph(np.random.default_rng(5))
    assert {n.name for grp in layers(g, ctx_for("w8a8")) for n in grp.linears} == {"up", "down"}
    assert {n.name for grp in layers(g, ctx_for("w8a8", _GpuLike())) for n in grp.linears} == {"up", "down", "lm_head"}
    g = lm_graph(np.random.default_rng(5), tied=False)
    assert {n.name for grp in layers(g, ctx_for("w8a8")) for n in grp.linears} == {"up", "down", "lm_head"}
