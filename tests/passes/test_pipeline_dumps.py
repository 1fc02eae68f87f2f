"""The default pipeline writes one parseable dump per pass (000_import.tir, 001_fold-constants.tir, ...)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from tcc.ir.core import Graph
from tcc.ir.text import load_ir
from tcc.passes.pipelines import get_pipeline
from tcc.passes.runner import dump_name, run_pipeline

from .helpers import assert_same, make_ctx, random_feeds, t

MODELS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "models")


def _graph() -> Graph:
    g = Graph()
    x = g.add_input("x", t("f32", "batch", "seq", 16))
    rng = np.random.default_rng(0)
    w = g.add_const(rng.standard_normal((16, 16)).astype(np.float32), "w")  # a blob (> 16 elements)
    sq = g.add_node("Mul", [x, x]).output
    ms = g.add_node("ReduceMean", [sq], {"axes": [-1]}).output
    r = g.add_node("Reciprocal", [g.add_node("Sqrt", [g.add_node("Add", [ms, g.add_const(np.float32(1e-6))]).output]).output]).output
    h = g.add_node("Mul", [x, r]).output
    h = g.add_node("Cast", [h], {"to": "f32"}).output
    h = g.add_node("MatMul", [h, w]).output
    h = g.add_node("Div", [h, g.add_const(np.float32(2.0))]).output
    g.outputs = [g.add_node("Sigmoid", [h], out_names=["y"]).output]
    return g


def _check_dumps(dump_dir, names):
    expected = [dump_name(0, "import")] + [dump_name(i, n) for i, n in enumerate(names, 1)]
    for fname in expected:
        path = os.path.join(dump_dir, fname)
        assert os.path.exists(path), fname
        load_ir(path).verify()
    return expected


def test_default_pipeline_dumps_parse_back(tmp_path):
    g = _graph()
    before = g.copy()
    ctx = make_ctx(batch=2, seq=8)
    run_pipeline(g, "default", ctx, dump_dir=str(tmp_path))
    names = get_pipeline("default")
    files = _check_dumps(str(tmp_path), names)
    assert files[:2] == ["000_import.tir", "001_fold-constants.tir"]
    assert {"RMSNorm", "Linear"} <= set(g.ops()) and "Cast" not in g.ops()
    last = load_ir(os.path.join(str(tmp_path), files[-1]))
    feeds = random_feeds(before, {"batch": 2, "seq": 8})
    assert_same(before, last, feeds)
    assert "# plan: arena" in (tmp_path / files[-1]).read_text()


@pytest.mark.skipif(not os.path.exists(os.path.join(MODELS, "encoder.onnx")), reason="fixture missing")
def test_default_pipeline_dumps_on_encoder(tmp_path):
    from tcc.frontend.onnx_import import import_onnx

    g = import_onnx(os.path.join(MODELS, "encoder.onnx"))
    run_pipeline(g, "default", make_ctx(batch=1, seq=16), dump_dir=str(tmp_path))
    _check_dumps(str(tmp_path), get_pipeline("default"))
