"""float16: a target computing in fp16 (Capabilities.activations) gets an f16 graph behind an unchanged interface."""
from __future__ import annotations

import os

import numpy as np
import pytest

from tcc.backends import Capabilities
from tcc.frontend.onnx_import import import_onnx
from tcc.ir.core import Graph
from tcc.ir.dtypes import DType
from tcc.ir.interpreter import ProgramState, run_graph
from tcc.ir.text import print_graph as print_ir
from tcc.passes.context import PassContext
from tcc.passes.float16 import F16_MAX, to_f16
from tcc.passes.runner import run_pipeline

from .helpers import F16_TOL, make_ctx, per_test_constants, run_pass, t, w  # noqa: F401 (fixture)

MODELS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "models", "llm")


class _GpuTarget:
    """A target whose network computes in fp16 (what the cuda target states)."""
    name = "gpu-test"
    default_group_size = 32
    k_block = 1

    def capabilities(self) -> Capabilities:
        return Capabilities(frozenset(), True, frozenset(), 256, 16, "f16")


def _gpu_ctx(**bounds) -> PassContext:
    ctx = make_ctx(**bounds)
    ctx.target = _GpuTarget()
    return ctx


def _mlp() -> Graph:
    """x f32 -> Linear -> RMSNorm -> + mask constant (-3.4e38 and 0) -> Cast(f32) -> y f32."""
    g = Graph()
    x = g.add_input("x", t("f32", "n", 16))
    h = g.add_node("Linear", [x, g.add_const(w(16, 8), "wt"), g.add_const(w(8), "b")]).output
    h = g.add_node("RMSNorm", [h, g.add_const(np.ones(8, np.float32), "gamma")], {"axis": -1, "eps": 1e-6}).output
    mask = np.zeros(8, np.float32)
    mask[-1] = np.finfo(np.float32).min
    h = g.add_node("Add", [h, g.add_const(mask, "mask")]).output
    g.outputs.append(g.add_node("Cast", [h], {"to": "f32"}, out_names=["y"]).output)
    return g


def test_no_op_on_targets_that_compute_in_f32():
    g = _mlp()
    before = print_ir(g)
    run_pass("float16", g, make_ctx(n=4))
    assert print_ir(g) == before


def test_converts_inside_and_keeps_the_interface():
    g = _mlp()
    feeds = {"x": np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)}
    want = run_graph(g, feeds)["y"]
    run_pass("float16", g, _gpu_ctx(n=4))
    assert [(v.name, v.dtype) for v in g.inputs] == [("x", DType.f32)]
    assert [(v.name, v.dtype) for v in g.outputs] == [("y", DType.f32)]
    inner = [o for n in g.nodes for o in n.outputs if o not in g.outputs]
    assert inner and all(o.dtype == DType.f16 for o in inner if o.dtype.is_float)
    assert all(c.dtype == DType.f16 for c in g.constants.values())
    # the mask's -3.4e38 is clamped to the most negative fp16 number, not turned into -inf
    assert g.constants["mask"].const.min() == np.float16(-F16_MAX)
    casts = [n for n in g.nodes if n.op == "Cast"]
    # the input cast and the output cast; the model's own Cast to f32 became f16 -> f16 and was dropped
    assert [n.attrs["to"] for n in casts] == ["f16", "f32"]
    got = run_graph(g, feeds)["y"]
    assert got.dtype == np.float32
    finite = np.isfinite(want) & (np.abs(want) < 1e30)
    np.testing.assert_allclose(got[finite], want[finite], **F16_TOL)
    assert np.all(got[~finite] == np.float32(-F16_MAX))


def test_to_f16_clamps_finite_and_keeps_special_values():
    x = np.array([1e9, -1e9, np.inf, -np.inf, np.nan, 1.5, 1e-9], np.float32)
    y = to_f16(x)
    assert y.dtype == np.float16
    assert y[0] == F16_MAX and y[1] == -F16_MAX and y[2] == np.inf and y[3] == -np.inf and np.isnan(y[4])
    assert y[5] == 1.5 and y[6] == 0


@pytest.mark.parametrize("qm", ["fp32", "w4a16"])
def test_llm_fixture_in_f16_matches_f32(qm):
    """The 2-layer LLaMA fixture through the optimize pipeline with and without the fp16 target: the KV
    cache becomes f16, and the logits of a prompt and a decode step stay within fp16 error of the f32
    graph's (every op rounds to fp16, 2^-11 relative; through 2 layers and a 256-way LM head the logits,
    of order 1, move by a few 1e-3: atol 3e-2 leaves an order of magnitude, and the greedy token agrees)."""
    path = os.path.join(MODELS, "llama_past_dynamo", "model.onnx")
    graphs = []
    for target in (None, _GpuTarget()):
        g = import_onnx(path)
        ctx = make_ctx()
        ctx.target, ctx.qm = target, qm
        ctx.options["max_context"] = 32
        run_pipeline(g, "optimize", ctx)
        graphs.append(g)
    f32, f16 = graphs
    assert f16.states and all(s.dtype == DType.f16 for s in f16.states.values())
    assert all(s.dtype == DType.f32 for s in f32.states.values())
    ids = np.random.default_rng(1).integers(0, 256, (1, 6)).astype(np.int64)
    states = [ProgramState(f32), ProgramState(f16)]
    for step_ids in (ids, ids[:, -1:]):
        outs = [run_graph(g, {"input_ids": step_ids}, state=s) for g, s in zip(graphs, states)]
        (name, want), got = next(iter(outs[0].items())), next(iter(outs[1].values()))
        assert got.dtype == want.dtype == np.float32, name
        np.testing.assert_allclose(got, want, atol=3e-2, rtol=0)
        assert np.argmax(got[0, -1]) == np.argmax(want[0, -1])
