"""slice-logits: the LM head of a language-model program runs on the last n_logits positions (a Slice of
its input on the sequence axis); the logits of those rows are unchanged, and n_logits = seq gives all of
them. Graphs without generation metadata, or whose logits are not Linear([batch, seq, hidden]), are left
alone.

Interpreter equality: the sliced Linear computes the same rows with the same f32 ops: exact up to the
row-blocking of the product, within helpers.F32_TOL.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from tcc.frontend.onnx_import import import_onnx
from tcc.ir.interpreter import ProgramState, run_graph
from tcc.passes.pipelines import get_pipeline
from tcc.passes.runner import run_pipeline

from ..conftest import MODELS_DIR
from .helpers import F32_TOL, graph_before, make_ctx, run_pass

CONTEXT = 32


def _upto(fixture: str, name: str = "slice-logits"):
    return graph_before(os.path.join(MODELS_DIR, fixture, "model.onnx"), name, CONTEXT)


def _logits(g, ids, rows=0):
    state = ProgramState(g)
    state.logits_rows = rows
    return next(iter(run_graph(g, {g.meta["llm"]["input_ids"]: ids}, state=state).values()))


@pytest.mark.parametrize("fixture", ["llm/llama_past_dynamo", "llm_optimum/opt", "llm/gpt2_past_torchscript",
                                     "llm/llama_tied_past_dynamo", "llm/llama_nopast_dynamo"])
def test_lm_head_runs_on_the_last_positions(fixture):
    g, ctx = _upto(fixture)
    llm = g.meta["llm"]
    head = g.outputs[0].producer
    assert head.op == "Linear" and not llm.get("sliced_logits")
    before = g.copy()
    run_pass("slice-logits", g, ctx)
    assert llm["sliced_logits"]
    lin = g.outputs[0].producer
    assert lin.op == "Linear" and lin.inputs[1:] == head.inputs[1:] and lin.attrs == head.attrs
    sl = lin.inputs[0].producer
    assert sl.op == "Slice" and sl.inputs[0] is head.inputs[0]
    assert [int(a) for a in sl.inputs[3].const] == [1]  # the sequence axis
    assert str(g.outputs[0].shape[1]) == llm["n_logits"]  # [batch, n_logits, vocab]
    assert sum(1 for n in g.nodes if n.op == "Linear" and n.inputs[1] is head.inputs[1]) == 1
    ids = np.random.default_rng(0).integers(0, 64, (2 if "nopast" in fixture else 1, 5)).astype(np.int64)
    full = _logits(before, ids)
    np.testing.assert_allclose(_logits(g, ids), full, **F32_TOL)  # n_logits = seq: every row
    last = _logits(g, ids, rows=1)
    assert last.shape == (ids.shape[0], 1, full.shape[2])
    np.testing.assert_allclose(last, full[:, -1:], **F32_TOL)
    np.testing.assert_allclose(_logits(g, ids, rows=3), full[:, -3:], **F32_TOL)
    # a second run is a no-op: the head is sliced once
    n = len(g.nodes)
    run_pass("slice-logits", g, ctx)
    assert len(g.nodes) == n and g.ops()["Slice"] == before.ops().get("Slice", 0) + 1


def test_logits_not_from_a_linear_are_left_alone():
    """Something between the LM head and the output (here a Softcap-like Tanh): slicing the head's input
    would change what that op sees; not applied, with the reason."""
    g, ctx = _upto("llm/llama_past_dynamo")
    out = g.outputs[0]
    g.outputs[0] = g.add_node("Tanh", [out], name="softcap").output
    before = g.copy()
    run_pass("slice-logits", g, ctx)
    assert not g.meta["llm"].get("sliced_logits")
    assert "[slice-logits] not applied: the logits are not Linear([batch, seq, hidden])" in ctx.messages
    assert g.ops() == before.ops()
    ids = np.arange(4, dtype=np.int64)[None]
    np.testing.assert_array_equal(_logits(g, ids), _logits(before, ids))


def test_graph_without_generation_metadata_is_left_alone():
    """A decoder with past whose interface was not recognized (llm-interface disabled) has no n_logits."""
    g = import_onnx(os.path.join(MODELS_DIR, "llm", "llama_past_dynamo", "model.onnx"))
    ctx = make_ctx()
    names = get_pipeline("default")
    run_pipeline(g, names[:names.index("slice-logits")], ctx, disable=["llm-interface"])
    assert "llm" not in g.meta
    ops = g.ops()
    run_pass("slice-logits", g, ctx)
    assert g.ops() == ops and not [m for m in ctx.messages if m.startswith("[slice-logits]")]
