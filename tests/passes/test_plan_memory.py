"""plan-memory: placements, views, in-place reuse, output copies, errors, and a golden plan."""
from __future__ import annotations

import numpy as np
import pytest

from tcc.errors import TccError
from tcc.ir.core import Graph
from tcc.ir.text import print_graph
from tcc.passes.runner import render

from .helpers import make_ctx, run_pass, t


def _shape(*dims):
    a = np.empty(len(dims), object)
    a[:] = list(dims)
    return a


def plan_of(g, **bounds):
    ctx = make_ctx(**bounds)
    run_pass("plan-memory", g, ctx)
    return ctx.stats["plan-memory"], ctx


def test_golden_small_plan():
    g = Graph()
    x = g.add_input("x", t("f32", "n", 16))
    w = g.add_const(np.ones((16, 16), np.float32), "w")
    a = g.add_node("Linear", [x, w], out_names=["a"]).output        # arena, 1 KiB at n=16
    b = g.add_node("Relu", [a], out_names=["b"]).output              # in place of a
    c = g.add_node("Reshape", [b, g.add_const(_shape(g.inputs[0].shape[0], 4, 4), "s")],
                   out_names=["c"]).output                           # view of b
    d = g.add_node("Linear", [x, w], out_names=["d"]).output        # arena, overlaps a's storage in time
    e = g.add_node("Add", [b, d], out_names=["e"]).output            # in place of b's storage (a)
    y = g.add_node("Exp", [c], out_names=["y"]).output               # output 0
    g.outputs = [y, e]
    plan, ctx = plan_of(g, n=16)
    P = plan.placements
    assert (P["x"].kind, P["x"].index) == ("input", 0)
    assert P["w"].kind == "const" and P["s"].kind == "const"
    assert P["a"].kind == "arena" and P["b"].root == "a" and P["c"].root == "a"
    assert P["d"].kind == "arena" and P["d"].offset != P["a"].offset
    assert (P["y"].kind, P["y"].index) == ("output", 0)
    # e is a graph output: it gets its own buffer even though a dies at the Add (outputs never in-place)
    assert (P["e"].kind, P["e"].index, P["e"].root) == ("output", 1, "e")
    assert plan.arena_bytes == 2048 and plan.lower_bound == 2048
    assert plan.total_bytes == 3 * 1024  # a, b, d would each own a buffer unplanned; views/outputs don't count
    assert plan.summary_lines() == ["plan: arena 2.0 KiB (sum of intermediates 3.0 KiB, lower bound 2.0 KiB)"]
    text = render(g, ctx)
    assert "# plan: arena 2.0 KiB" in text
    assert "# plan: %a @ arena+0 (1.0 KiB)" in text or "# plan: %a @ arena+1024 (1.0 KiB)" in text
    assert "# plan: %b in-place of %a" in text
    assert "# plan: %c view of %b" in text
    assert "# plan: %y -> output 0" in text


def test_views_of_inputs_and_constants_as_outputs_get_copies():
    g = Graph()
    x = g.add_input("x", t("f32", 2, 3))
    k = g.add_const(np.arange(6, dtype=np.float32).reshape(2, 3), "k")
    r = g.add_node("Reshape", [x, g.add_const(np.array([3, 2], np.int64))], out_names=["r"]).output
    g.outputs = [x, r, k, x]
    before = g.copy()
    plan, _ = plan_of(g)
    assert g.ops() == {"Reshape": 1, "Copy": 4}
    assert [v.producer.op for v in g.outputs] == ["Copy"] * 4
    assert [v.name for v in g.outputs][1:3] == ["r", "k"]  # public names kept where possible
    for j, v in enumerate(g.outputs):
        assert (plan.placements[v.name].kind, plan.placements[v.name].index) == ("output", j)
    from .helpers import assert_same, random_feeds
    assert_same(before, g, random_feeds(before, {}))


def test_outputs_sharing_storage_get_a_copy_and_view_of_intermediate_is_output_buffer():
    g = Graph()
    x = g.add_input("x", t("f32", 4, 4))
    a = g.add_node("Exp", [x], out_names=["a"]).output
    r = g.add_node("Reshape", [a, g.add_const(np.array([16], np.int64))], out_names=["r"]).output
    g.outputs = [r, a]
    plan, _ = plan_of(g)
    assert g.ops() == {"Exp": 1, "Reshape": 1, "Copy": 1}
    P = plan.placements
    assert (P["a.src"].kind, P["a.src"].index) == ("output", 0)  # the intermediate is output 0's buffer
    assert (P["r"].kind, P["r"].index, P["r"].root) == ("output", 0, "a.src")
    assert (P["a"].kind, P["a"].index) == ("output", 1)
    assert plan.arena_bytes == 0


def test_unbound_symbols_are_named():
    g = Graph()
    x = g.add_input("x", t("f32", "batch", "seq", 8))
    a = g.add_node("Exp", [x]).output
    g.outputs = [g.add_node("Linear", [a, g.add_const(np.ones((8, 2), np.float32))], out_names=["y"]).output]
    with pytest.raises(TccError, match="batch, seq"):
        plan_of(g)
    with pytest.raises(TccError, match="seq"):
        plan_of(g, batch=2)
    plan, _ = plan_of(g, batch=2, seq=4)
    assert plan.arena_bytes == 2 * 4 * 8 * 4


def test_no_inplace_when_input_lives_on_or_shapes_differ():
    g = Graph()
    x = g.add_input("x", t("f32", 4, 8))
    a = g.add_node("Exp", [x], out_names=["a"]).output
    b = g.add_node("Neg", [a], out_names=["b"]).output           # a still used later: no in-place
    row = g.add_node("ReduceSum", [a], {"axes": [0]}, out_names=["row"]).output  # [1, 8]
    c = g.add_node("Add", [row, b], out_names=["c"]).output       # row dies but broadcasts: b is reused
    g.outputs = [g.add_node("Sigmoid", [c], out_names=["y"]).output]
    before = g.copy()
    plan, _ = plan_of(g)
    assert "b" not in plan.inplace_of and "row" not in plan.inplace_of
    assert plan.inplace_of.get("c") == "b"
    assert plan.overlaps() == []
    from .helpers import assert_same, random_feeds
    assert_same(before, g, random_feeds(before, {}))


def test_graph_inputs_are_never_written_in_place():
    g = Graph()
    x = g.add_input("x", t("f32", 8))
    a = g.add_node("Relu", [x], out_names=["a"]).output
    g.outputs = [g.add_node("Neg", [a], out_names=["y"]).output]
    plan, _ = plan_of(g)
    assert plan.placements["a"].kind == "arena" and plan.placements["a"].root == "a"


def test_plan_after_default_pipeline_prints_in_dumps(tmp_path):
    g = Graph()
    x = g.add_input("x", t("f32", "n", 8))
    w = g.add_const(np.ones((8, 8), np.float32), "w")
    h = g.add_node("MatMul", [x, w]).output
    h = g.add_node("Relu", [h]).output
    g.outputs = [g.add_node("MatMul", [h, w], out_names=["y"]).output]
    from tcc.passes.runner import run_pipeline
    ctx = make_ctx(n=4)
    run_pipeline(g, "default", ctx, dump_dir=str(tmp_path))
    (dump,) = tmp_path.glob("*_plan-memory.tir")
    text = dump.read_text()
    assert "# plan: arena" in text and "in-place of" in text
    assert print_graph(g).count("Linear") == 2
