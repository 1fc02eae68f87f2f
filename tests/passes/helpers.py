"""Helpers for the pass tests: contexts, random feeds and the interpreter-equality oracle.

Tolerances: every pass here rewrites f32 math into f32 math with the same operations up to
reassociation (x/c -> x*(1/c), alpha folded into a weight, a fused kernel's reference computing in f32
where the decomposed ops round each step in f64->f32), so results agree to a few ulps of the values
involved: rtol 1e-5 / atol 1e-5 on O(1) data (f32 eps is 1.2e-7; a norm or softmax over 64 terms
accumulates well under 100 ulps). f16 inputs compare at rtol/atol 2e-3 (1 ulp of half = 2^-10).
Integer and bool results must be exact.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest

from tcc.ir.core import Graph, TensorType
from tcc.ir.dims import Sym
from tcc.ir.dtypes import DType
from tcc.ir.interpreter import run_graph
from tcc.passes import PASSES, load_all
from tcc.passes.context import PassContext

F32_TOL = dict(rtol=1e-5, atol=1e-5)
F16_TOL = dict(rtol=2e-3, atol=2e-3)

S = Sym.symbol


class CpuTarget:
    """The target facts the quantization passes ask for, as x86 gives them (passes never test a target's name)."""
    name = "x86"
    default_group_size = 32
    k_block = 64
    qms = ("fp32", "w8a8", "w4a32", "w4a8")
    qm_refusals = ()
    tied_tables = True


def t(dtype: str, *shape) -> TensorType:
    return TensorType(DType(dtype), tuple(S(d) if isinstance(d, str) else d for d in shape))


def make_ctx(**bounds) -> PassContext:
    return PassContext(symbol_bounds=dict(bounds), debug=0)


def run_pass(name: str, graph: Graph, ctx: PassContext | None = None) -> PassContext:
    load_all()
    ctx = ctx or make_ctx()
    PASSES[name](graph, ctx)
    graph.verify()
    return ctx


def random_feeds(graph: Graph, env: dict[str, int], seed: int = 0, *, overrides=None) -> dict:
    rng = np.random.default_rng(seed)
    feeds = {}
    for v in graph.inputs:
        shape = v.type.concrete_shape(env)
        if v.dtype.is_float:
            feeds[v.name] = rng.standard_normal(shape).astype(v.dtype.np)
        elif v.dtype == DType.bool:
            feeds[v.name] = rng.random(shape) < 0.7
        else:
            feeds[v.name] = rng.integers(0, 8, shape).astype(v.dtype.np)
    feeds.update(overrides or {})
    return feeds


def outputs(graph: Graph, feeds: dict) -> list[tuple[str, np.ndarray]]:
    """The graph outputs in order (a value listed twice appears twice)."""
    vals = run_graph(graph, feeds, keep=True)
    return [(v.name, vals[v.name]) for v in graph.outputs]


def assert_same(before: Graph, after: Graph, feeds: dict, tol=F32_TOL) -> None:
    """The interpreter gives the same outputs (by position) before and after a pass."""
    a = outputs(before, feeds)
    b = outputs(after, feeds)
    assert len(a) == len(b)
    for (na, xa), (nb, xb) in zip(a, b):
        assert xa.shape == xb.shape, (na, xa.shape, xb.shape)
        assert xa.dtype == xb.dtype, (na, xa.dtype, xb.dtype)
        if xa.dtype.kind == "f":
            np.testing.assert_allclose(xb, xa, err_msg=f"output {na}", **tol)
        else:
            np.testing.assert_array_equal(xb, xa, err_msg=f"output {na}")


def check_pass(name: str, graph: Graph, envs, tol=F32_TOL, ctx=None, seed=0, overrides=None):
    """Run pass `name` on `graph` (in place); check interpreter equality at every env. Returns ctx."""
    before = graph.copy()
    ctx = run_pass(name, graph, ctx)
    for i, env in enumerate(envs):
        feeds = random_feeds(before, env, seed + i, overrides=overrides(env) if overrides else None)
        assert_same(before, graph, feeds, tol)
    return ctx


def refusals(ctx: PassContext) -> list[str]:
    return [m for m in ctx.messages if "refused" in m]


def save_beside(model, tmp_path, name: str, source_dir: str) -> str:
    """Save an edited copy of a fixture as tmp_path/name/model.onnx, with the fixture's side files (config.json,
    tokenizer files) copied beside it; returns the model's path."""
    import os
    import shutil

    import onnx

    onnx.checker.check_model(model)
    folder = tmp_path / name
    folder.mkdir()
    for f in os.listdir(source_dir):
        if f != "model.onnx":
            shutil.copy(os.path.join(source_dir, f), folder / f)
    onnx.save(model, str(folder / "model.onnx"))
    return str(folder / "model.onnx")


def graph_before(model_path: str, pass_name: str, max_context: int, pipeline: str = "default"):
    """A model's graph after the pipeline's passes that come before `pass_name`, and its PassContext."""
    from tcc.frontend.onnx_import import import_onnx
    from tcc.passes.pipelines import get_pipeline
    from tcc.passes.runner import run_pipeline

    g = import_onnx(model_path)
    ctx = make_ctx()
    ctx.options["max_context"] = max_context
    names = get_pipeline(pipeline)
    run_pipeline(g, names[:names.index(pass_name)], ctx)
    return g, ctx


class _Constants:
    rng = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def per_test_constants(request):
    """Each test draws its own constants (`w`), seeded by its id: the same data whatever order tests run in.
    A test module imports this fixture to use it."""
    _Constants.rng = np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def w(*shape) -> np.ndarray:
    return _Constants.rng.standard_normal(shape).astype(np.float32)
