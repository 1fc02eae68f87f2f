"""Per-op tests for `--target arm`: one-node ONNX models (built with tests/test_ops_onnxruntime.py's
`model_for`) compiled for arm and run under qemu against ONNX Runtime.

Compiling and emulating ~50 one-node models one by one would take minutes, so the cases are merged into
ONE model: every case's node with its inputs and outputs renamed `c<i>_...` (the nodes are independent, so
the merged graph computes each case exactly as its own model would), compiled once (fp32, the NEON kernels
where arm has them, the portable ones elsewhere) and run once per CPU (qemu's default and cortex-a53) through
the artifact's static `run` binary. Each case's outputs are then compared with ONNX Runtime on its own
one-node model. Tolerances are those of tests/test_ops_onnxruntime.py (justified there): exact for data
movement, integer and bool results; rtol 1e-6 for f32 arithmetic; rtol 2e-6 / atol 1e-6 for the
transcendentals (tcc_math_neon.h meets the same 2e-6 contract as the AVX2 math, ORT's MLAS a few ulp);
the dot-product bound for MatMul / Gemm (summation order); 1e-5 / 1e-6 for the normalizations and attention.
"""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
import tcc
from onnx import helper
from tcc.backends import run_emulated

from tests.conftest import ort_run
from tests.test_ops_onnxruntime import ARITH, EXACT, TRANS, dot_bound, model_for

from .arm_harness import CPU_IDS, CPUS, needs_emulation, shared_dir

pytestmark = needs_emulation
OPSET = 23  # one opset for the merged model (every op below has its current form there)
NORM = (1e-5, 1e-6)


def _cases():
    """(id, op, inputs, attrs, consts, tolerance: (rtol, atol) or a per-element bound); inputs are drawn from one seeded generator."""
    r = np.random.default_rng(11)
    f = lambda *s, lo=-3.0, hi=3.0: r.uniform(lo, hi, s).astype(np.float32)
    i = lambda *s: r.integers(-20, 20, s).astype(np.int64)
    cases = []
    add = lambda cid, op, ins, attrs=None, consts=None, tol=EXACT: cases.append(
        (cid, op, ins, attrs or {}, consts or {}, tol))
    for op, lo, tol in [("Sqrt", 0.01, TRANS), ("Reciprocal", 0.5, ARITH), ("Neg", -3.0, EXACT), ("Exp", -3.0, TRANS),
                        ("Log", 0.01, TRANS), ("Erf", -3.0, TRANS), ("Tanh", -3.0, TRANS), ("Sigmoid", -3.0, TRANS),
                        ("Relu", -3.0, EXACT), ("Abs", -3.0, EXACT), ("Floor", -3.0, EXACT), ("Ceil", -3.0, EXACT),
                        ("Sin", -3.0, TRANS), ("Cos", -3.0, TRANS)]:
        add(op, op, {"x": f(3, 37, lo=lo)}, tol=tol)
    add("Gelu-tanh", "Gelu", {"x": f(2, 41)}, {"approximate": "tanh"}, tol=TRANS)
    add("Gelu-erf", "Gelu", {"x": f(2, 41)}, tol=TRANS)
    add("Clip", "Clip", {"x": f(5, 9)}, consts={"lo": np.float32(-1.0), "hi": np.float32(2.0)})
    for op in ("Add", "Sub", "Mul", "Div"):
        add(f"{op}-row", op, {"a": f(4, 33), "b": f(33)}, tol=ARITH)
        add(f"{op}-col", op, {"a": f(4, 1, 7), "b": f(3, 1)}, tol=ARITH)
    add("Pow-2", "Pow", {"a": f(3, 19)}, consts={"b": np.float32(2.0)}, tol=TRANS)
    add("Max", "Max", {"a": f(6, 11), "b": f(11)})
    add("Min", "Min", {"a": f(6, 11), "b": f(6, 1)})
    add("Add-i64", "Add", {"a": i(3, 9), "b": i(9)})
    for op in ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"):
        add(op, op, {"a": np.round(f(5, 13)), "b": np.round(f(13))})
    add("Where", "Where", {"c": r.random((4, 17)) < 0.5, "x": f(4, 17), "y": f(17)})
    add("Cast-f16", "Cast", {"x": f(3, 21, lo=-70000, hi=70000)}, {"to": onnx.TensorProto.FLOAT16})
    add("Cast-f16-f32", "Cast", {"x": f(3, 21).astype(np.float16)}, {"to": onnx.TensorProto.FLOAT})
    add("Cast-i64", "Cast", {"x": f(3, 21, lo=-100, hi=100)}, {"to": onnx.TensorProto.INT64})
    for op in ("Softmax", "LogSoftmax"):
        add(f"{op}-last", op, {"x": f(3, 4, 37)}, {"axis": -1}, tol=TRANS)
        add(f"{op}-mid", op, {"x": f(3, 5, 6)}, {"axis": 1}, tol=TRANS)
    for op in ("ReduceSum", "ReduceMean", "ReduceMax"):
        add(f"{op}-last", op, {"x": f(4, 5, 19)}, {"keepdims": 1}, {"axes": np.array([-1], np.int64)}, tol=ARITH)
        add(f"{op}-mid", op, {"x": f(4, 5, 19)}, {"keepdims": 0}, {"axes": np.array([1], np.int64)}, tol=ARITH)
    for sa, sb in [((1, 33), (33, 17)), ((7, 40), (40, 20)), ((2, 3, 9), (9, 5)), ((2, 1, 3, 4), (5, 4, 6)),
                   ((13, 64), (64, 1))]:
        a, bm = f(*sa), f(*sb)
        add(f"MatMul{sa}x{sb}", "MatMul", {"a": a, "b": bm}, tol=dot_bound(a, bm, sa[-1]))
    a, bm = f(9, 70), f(70, 35)
    add("MatMul-const", "MatMul", {"a": a}, consts={"b": bm}, tol=dot_bound(a, bm, 70))
    a, bm, c = f(5, 24), f(18, 24), f(18)
    # the bias is one more term of the sum (x86 op test: (K + 2) roundings of |a||b| + |c|)
    add("Gemm-bias", "Gemm", {"a": a}, {"transB": 1}, {"b": bm, "c": c},
        tol=dot_bound(a, bm.T, 26) + 2 * 26 * 2.0 ** -24 * np.abs(c))
    add("Transpose", "Transpose", {"x": f(2, 3, 4, 5)}, {"perm": [0, 2, 1, 3]})
    add("Transpose2d", "Transpose", {"x": f(33, 65)})
    add("Concat", "Concat", {"a": f(3, 4), "b": f(3, 7)}, {"axis": 1})
    add("Slice", "Slice", {"x": f(6, 20)}, consts={"s": np.array([1, 18], np.int64), "e": np.array([5, 2], np.int64),
                                                    "a": np.array([0, 1], np.int64), "t": np.array([2, -3], np.int64)})
    add("Gather", "Gather", {"x": f(10, 6)}, {"axis": 0}, {"idx": np.array([[1, 9], [-1, 0]], np.int64)})
    add("Expand", "Expand", {"x": f(3, 1)}, consts={"s": np.array([2, 3, 8], np.int64)})
    w, b = f(48, lo=0.5, hi=1.5), f(48)
    add("LayerNorm", "LayerNormalization", {"x": f(3, 5, 48)}, {"axis": -1, "epsilon": 1e-5}, {"w": w, "b": b}, NORM)
    add("RMSNorm", "RMSNormalization", {"x": f(3, 5, 48)}, {"axis": -1, "epsilon": 1e-5}, {"w": w}, NORM)
    q, k, v = f(2, 4, 7, 16), f(2, 2, 9, 16), f(2, 2, 9, 16)
    add("Attention-causal", "Attention", {"q": q, "k": k, "v": v}, {"is_causal": 1}, tol=NORM)
    add("Attention-mask", "Attention", {"q": q, "k": k, "v": v, "m": f(7, 9)}, tol=NORM)
    return cases


CASES = _cases()


def _merged(cases) -> tuple[onnx.ModelProto, dict, list]:
    """One model holding every case's node (names prefixed), its feeds, and per case (id, output names,
    its own one-node model, its feeds, tolerance)."""
    nodes, inputs, outputs, inits, feeds, per_case = [], [], [], [], {}, []
    for n, (cid, op, ins, attrs, consts, tol) in enumerate(cases):
        m = model_for(op, ins, attrs, consts=consts, opset=OPSET)
        p = f"c{n}_"
        g = m.graph
        rename = lambda s, p=p: p + s if s else s
        node = g.node[0]
        new = helper.make_node(node.op_type, [rename(s) for s in node.input], [rename(s) for s in node.output],
                               name=p + node.name)
        new.attribute.extend(node.attribute)
        nodes.append(new)
        for vi in g.input:
            c = onnx.ValueInfoProto()
            c.CopyFrom(vi)
            c.name = p + vi.name
            inputs.append(c)
        for vi in g.output:
            c = onnx.ValueInfoProto()
            c.CopyFrom(vi)
            c.name = p + vi.name
            outputs.append(c)
        for t in g.initializer:
            c = onnx.TensorProto()
            c.CopyFrom(t)
            c.name = p + t.name
            inits.append(c)
        feeds.update({p + k: v for k, v in ins.items()})
        per_case.append((cid, [p + o.name for o in g.output], m, ins, tol))
    graph = helper.make_graph(nodes, "arm_ops", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    return model, feeds, per_case


MODEL, FEEDS, PER_CASE = _merged(CASES)


@pytest.fixture(scope="module")
def op_results(tmp_path_factory):
    with shared_dir(tmp_path_factory, "arm_ops") as d:
        path, out = str(d / "ops.onnx"), str(d / "out")
        if not os.path.isfile(os.path.join(out, "manifest.json")):
            onnx.save(MODEL, path)
            tcc.compile(path, out, target="arm")
    with open(os.path.join(out, "manifest.json")) as fh:
        manifest = json.load(fh)
    return manifest, {cpu: run_emulated(out, manifest, FEEDS, cpu=cpu)[0] for cpu in CPUS}


def test_merged_model_uses_the_neon_kernels(op_results):
    manifest, _ = op_results
    kernels = set(manifest["kernels"])
    for name in ("tcc_gemm_f32__neon", "tcc_unary_exp_f32__neon", "tcc_softmax_softmax_f32__neon",
                 "tcc_norm_layernorm_f32__neon", "tcc_binary_add_f32__neon",
                 "tcc_matmul_f32__neon", "tcc_attention_f32__neon"):  # MatMul of two inputs, Attention
        assert name in kernels, sorted(kernels)


@pytest.mark.parametrize("cpu", CPUS, ids=CPU_IDS)
@pytest.mark.parametrize("case", PER_CASE, ids=[c[0] for c in PER_CASE])
def test_arm_op_matches_onnxruntime(op_results, case, cpu):
    _, results = op_results
    cid, outs, model, ins, tol = case
    want = ort_run(model.SerializeToString(), ins)
    for name, w in zip(outs, want.values()):
        got = results[cpu][name]
        assert got.dtype == w.dtype and got.shape == w.shape, (cid, got.dtype, got.shape, w.dtype, w.shape)
        if isinstance(tol, np.ndarray):  # a per-element absolute bound (sums of products)
            err = np.abs(got.astype(np.float64) - w.astype(np.float64))
            assert np.all(err <= tol), f"{cid}: max error {err.max():.3g} over the bound"
        elif tol == EXACT or w.dtype.kind != "f":
            np.testing.assert_array_equal(got, w, err_msg=cid)
        else:
            np.testing.assert_allclose(got.astype(np.float64), w.astype(np.float64), rtol=tol[0], atol=tol[1],
                                       err_msg=cid)
