"""llm-interface: a decoder's generation interface, recognized by structure on the committed fixtures.
The inputs a generation loop computes itself (attention_mask, position_ids, cache_position) become ops in
the symbols past / seq; graph.meta["llm"] and the symbol bounds are recorded. Graphs that are no decoder,
or whose past inputs have no generation interface, are left alone (with the reason for the latter).

Interpreter equality: with the inputs fed the values generation would feed (an all-ones mask, positions
past + arange(seq)) the outputs are bit-identical: the pass only replaces inputs by the same values.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tcc.errors import UnsupportedError
from tcc.frontend.onnx_import import import_onnx
from tcc.ir.dims import bare_symbol
from tcc.ir.interpreter import run_graph
from tcc.passes.llm_interface import past_inputs

from ..conftest import MODELS_DIR
from .helpers import make_ctx, run_pass

CONTEXT = 64
ROLES = {"attention_mask", "position_ids", "cache_position"}


def _graph(fixture: str):
    """The fixture imported and folded: what the default pipeline gives llm-interface."""
    g = import_onnx(os.path.join(MODELS_DIR, fixture, "model.onnx"))
    ctx = make_ctx()
    ctx.options["max_context"] = CONTEXT
    run_pass("fold-constants", g, ctx)
    return g, ctx


def _feeds(g, past: int, seq: int, batch: int = 1, seed: int = 0) -> dict:
    """What a generation step feeds: ids, random past k/v, an all-ones mask and the positions."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for v in g.inputs:
        if v.name == "input_ids":
            feeds[v.name] = rng.integers(0, 64, (batch, seq)).astype(v.dtype.np)
        elif v.name == "attention_mask":
            feeds[v.name] = np.ones((batch, past + seq), v.dtype.np)
        elif v.name == "position_ids":
            feeds[v.name] = np.broadcast_to(np.arange(past, past + seq), (batch, seq)).astype(v.dtype.np)
        elif v.name == "cache_position":
            feeds[v.name] = np.arange(past, past + seq).astype(v.dtype.np)
        else:  # a past key/value [batch, heads, past, head_dim]
            heads, dim = v.shape[1], v.shape[3]
            feeds[v.name] = rng.standard_normal((batch, heads, past, dim)).astype(v.dtype.np)
    return feeds


def _run(g, feeds):
    vals = run_graph(g, {v.name: feeds[v.name] for v in g.inputs})
    return [vals[v.name] for v in g.outputs]


def _assert_same(before, after, feeds):
    a, b = _run(before, feeds), _run(after, feeds)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("fixture", ["llm/llama_past_dynamo", "llm/llama_past_torchscript", "llm_optimum/llama",
                                     "llm/gpt2_past_dynamo", "llm/opt_past_torchscript", "llm/gptj_past_dynamo",
                                     "families/mistral_optimum"])
def test_decoder_with_past_gets_its_generation_interface(fixture):
    g, ctx = _graph(fixture)
    ids = next(v for v in g.inputs if v.name == "input_ids")
    roles = {v.name for v in g.inputs} & ROLES
    assert "attention_mask" in roles
    before = g.copy()
    run_pass("llm-interface", g, ctx)
    llm = g.meta["llm"]
    pasts = past_inputs(g)
    assert len(pasts) == len(g.outputs) - 1 >= 2  # every present output has its past input
    past_sym = bare_symbol(pasts[0].shape[2])
    assert {v.name for v in g.inputs} == {v.name for v in before.inputs} - ROLES  # the role inputs are computed
    assert {v.name for v in g.inputs} == {"input_ids"} | {v.name for v in pasts}
    assert (llm["batch"], llm["seq"], llm["past"]) == (bare_symbol(ids.shape[0]), bare_symbol(ids.shape[1]), past_sym)
    assert llm["input_ids"] == "input_ids" and llm["capacity"] == CONTEXT and not llm["kv_cache"]
    assert llm["logits"] == g.outputs[0].name and not llm.get("recompute")
    b = ctx.symbol_bounds
    assert (b[llm["batch"]], b[past_sym], b[llm["seq"]], b["n_logits"]) == (1, CONTEXT, CONTEXT, CONTEXT)
    names = {n.name for n in g.nodes}
    assert "llm/attention_mask" in names
    assert ("llm/position_ids" in names) == ("position_ids" in roles)
    assert ("llm/positions" in names) == bool(roles & {"position_ids", "cache_position"})
    for past, seq in [(0, 3), (4, 2), (7, 1)]:
        _assert_same(before, g, _feeds(before, past, seq, seed=past))


def test_decoder_without_past_recomputes():
    g, ctx = _graph("llm/llama_nopast_dynamo")
    assert not past_inputs(g)
    before = g.copy()
    run_pass("llm-interface", g, ctx)
    llm = g.meta["llm"]
    assert llm["recompute"] and llm["past"] is None and not llm["kv_cache"]
    assert [v.name for v in g.inputs] == ["input_ids"]
    assert ctx.symbol_bounds[llm["seq"]] == CONTEXT == ctx.symbol_bounds["n_logits"]
    _assert_same(before, g, _feeds(before, 0, 5, batch=2))


def _with_extra_input(fixture: str) -> onnx.ModelProto:
    m = onnx.load(os.path.join(MODELS_DIR, fixture, "model.onnx"))
    ids = next(i for i in m.graph.input if i.name == "input_ids")
    extra = onnx.ValueInfoProto()
    extra.CopyFrom(ids)
    extra.name = "token_type_ids"
    m.graph.input.append(extra)
    return m


def test_input_without_a_generation_role_is_refused():
    """An input generation cannot feed (token_type_ids): the graph compiles as it is, and the reason is kept
    for `generate` to report."""
    g = import_onnx(_with_extra_input("llm/llama_past_dynamo"))
    ctx = make_ctx()
    run_pass("fold-constants", g, ctx)
    before = g.copy()
    run_pass("llm-interface", g, ctx)
    assert "llm" not in g.meta
    assert "token_type_ids" in g.meta["llm_refused"] and "no role in generation" in g.meta["llm_refused"]
    (msg,) = [m for m in ctx.messages if m.startswith("[llm-interface]")]
    assert msg == f"[llm-interface] past inputs but no generation interface: {g.meta['llm_refused']}"
    assert [v.name for v in g.inputs] == [v.name for v in before.inputs]
    assert g.ops() == before.ops()


def _past_concat_model(past_dims: list[str]) -> onnx.ModelProto:
    """input_ids [b, s] -> embedding -> k [b, 1, s, 4]; present_i = Concat(past_i, k) on axis 2; logits."""
    rng = np.random.default_rng(0)
    emb = helper.make_tensor("emb", TensorProto.FLOAT, [64, 4], rng.standard_normal(256).astype(np.float32))
    head = helper.make_tensor("head", TensorProto.FLOAT, [4, 16], rng.standard_normal(64).astype(np.float32))
    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["h"]),
             helper.make_node("Unsqueeze", ["h", "one"], ["k"]),
             helper.make_node("MatMul", ["h", "head"], ["logits"])]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "s", 16])]
    for i, p in enumerate(past_dims):
        inputs.append(helper.make_tensor_value_info(f"past_{i}", TensorProto.FLOAT, ["b", 1, p, 4]))
        nodes.append(helper.make_node("Concat", [f"past_{i}", "k"], [f"present_{i}"], axis=2))
        outputs.append(helper.make_tensor_value_info(f"present_{i}", TensorProto.FLOAT, ["b", 1, f"{p}+s", 4]))
    one = helper.make_tensor("one", TensorProto.INT64, [1], [1])
    g = helper.make_graph(nodes, "g", inputs, outputs, [emb, head, one])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_small_past_graph_is_recognized():
    g = import_onnx(_past_concat_model(["p", "p"]))
    ctx = make_ctx()
    before = g.copy()
    run_pass("llm-interface", g, ctx)
    assert (g.meta["llm"]["past"], g.meta["llm"]["seq"], g.meta["llm"]["batch"]) == ("p", "s", "b")
    _assert_same(before, g, _feeds(before, 3, 2, batch=2))


def test_pasts_with_different_sequence_dims_are_refused():
    g = import_onnx(_past_concat_model(["p", "q"]))
    ctx = make_ctx()
    run_pass("llm-interface", g, ctx)
    assert "llm" not in g.meta
    assert "do not share one symbolic sequence dim" in g.meta["llm_refused"]
    assert any("no generation interface" in m for m in ctx.messages)


def test_position_ids_of_the_wrong_shape_is_an_error():
    """position_ids [batch, seq + 1] cannot be past + arange(seq): a one-line UnsupportedError."""
    m = _past_concat_model(["p"])
    m.graph.input.append(helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["b", "s2"]))
    m.graph.node.append(helper.make_node("Cast", ["position_ids"], ["pos_f"], to=TensorProto.FLOAT))
    m.graph.output.append(helper.make_tensor_value_info("pos_f", TensorProto.FLOAT, ["b", "s2"]))
    g = import_onnx(m)
    with pytest.raises(UnsupportedError, match=r"input 'position_ids' has shape .*, expected \[b,s\] or \[1,s\] "
                                               r"for generation$"):
        run_pass("llm-interface", g, make_ctx())


def test_graph_that_is_no_decoder_is_left_alone():
    g = import_onnx(os.path.join(MODELS_DIR, "mlp.onnx"))
    ctx = make_ctx()
    before = g.copy()
    run_pass("llm-interface", g, ctx)
    assert "llm" not in g.meta and "llm_refused" not in g.meta and ctx.messages == []
    assert g.ops() == before.ops() and [v.name for v in g.inputs] == [v.name for v in before.inputs]
