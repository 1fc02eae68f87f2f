"""IR text round-trips (print -> parse -> print is identical) for graphs using every registered op, built
through the ONNX frontend where ONNX has the op; and verify() failures."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tcc.errors import IRError
from tcc.frontend.onnx_import import import_onnx
from tcc.ir.core import Graph, TensorType
from tcc.ir.dims import Sym
from tcc.ir.dtypes import DType
from tcc.ir.interpreter import run_graph
from tcc.ir.registry import OPS, get_op
from tcc.ir.text import parse_graph, print_graph

from .test_ops_onnxruntime import model_for

get_op("Add")  # load every op definition


def f32(*s):
    return np.random.default_rng(1).standard_normal(s).astype(np.float32)


def i64(*v):
    return np.array(v, dtype=np.int64)


B = {"x": ["batch", "seq", 4]}  # symbolic dims for input "x"
X = f32(2, 3, 4)
T = np.array([[True, False, True, True]] * 3)

# (id, op, inputs, attrs, consts, opset, n_out, sym)
CASES = [
    *[(op, op, {"x": np.abs(X) + 1}, {}, {}, 17, 1, B) for op in
      ("Sqrt", "Reciprocal", "Neg", "Exp", "Log", "Erf", "Tanh", "Sigmoid", "Relu", "Abs", "Floor", "Ceil",
       "Sin", "Cos", "Sign", "Identity")],
    ("Gelu", "Gelu", {"x": X}, {"approximate": "tanh"}, {}, 20, 1, B),
    ("Not", "Not", {"x": T}, {}, {}, 17, 1, None),
    *[(op, op, {"x": X, "y": f32(4)}, {}, {}, 17, 1, B) for op in ("Add", "Sub", "Mul", "Div", "Pow")],
    ("Mod", "Mod", {"x": X, "y": f32(4)}, {"fmod": 1}, {}, 17, 1, B),
    *[(op, op, {"x": X, "y": f32(4), "z": f32(3, 1)}, {}, {}, 17, 1, None) for op in ("Max", "Min")],
    *[(op, op, {"x": X, "y": f32(4)}, {}, {}, 17, 1, B) for op in
      ("Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual")],
    *[(op, op, {"x": T, "y": T}, {}, {}, 17, 1, None) for op in ("And", "Or", "Xor")],
    ("Where", "Where", {"c": T, "x": f32(3, 4), "y": f32(4)}, {}, {}, 17, 1, None),
    ("Cast", "Cast", {"x": X}, {"to": TensorProto.FLOAT16}, {}, 17, 1, B),
    ("Clip", "Clip", {"x": X}, {}, {"lo": np.array(-1.0, np.float32), "hi": np.array(1.0, np.float32)}, 17, 1, B),
    ("MatMul", "MatMul", {"x": X, "w": f32(4, 5)}, {}, {}, 17, 1, B),
    ("Gemm", "Gemm", {"a": f32(3, 4)}, {"transB": 1, "alpha": 0.5}, {"b": f32(5, 4), "c": f32(5)}, 17, 1, None),
    ("Softmax", "Softmax", {"x": X}, {"axis": -1}, {}, 17, 1, B),
    ("LogSoftmax", "LogSoftmax", {"x": X}, {"axis": 1}, {}, 17, 1, B),
    *[(op, op, {"x": X}, {"keepdims": 0}, {"axes": i64(-1)}, 18, 1, B) for op in
      ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd")],
    ("Gather", "Gather", {"x": X}, {"axis": 1}, {"i": i64(0, -1)}, 17, 1, B),
    ("Reshape", "Reshape", {"x": X}, {}, {"s": i64(0, 0, 2, -1)}, 17, 1, B),
    ("Transpose", "Transpose", {"x": X}, {"perm": [1, 0, 2]}, {}, 17, 1, B),
    ("Concat", "Concat", {"x": X, "y": X}, {"axis": -1}, {}, 17, 1, {"x": ["batch", "seq", 4],
                                                                      "y": ["batch", "seq", 4]}),
    ("Slice", "Slice", {"x": X}, {}, {"s": i64(1), "e": i64(2 ** 63 - 1), "a": i64(1)}, 17, 1, B),
    ("Split", "Split", {"x": X}, {"axis": -1}, {"s": i64(1, 3)}, 17, 2, B),
    ("Squeeze", "Squeeze", {"x": f32(2, 1, 4)}, {}, {"a": i64(1)}, 17, 1, {"x": ["batch", 1, 4]}),
    ("Unsqueeze", "Unsqueeze", {"x": X}, {}, {"a": i64(0, -1)}, 17, 1, B),
    ("Expand", "Expand", {"x": f32(3, 1)}, {}, {"s": i64(2, 3, 4)}, 17, 1, None),
    ("Flatten", "Flatten", {"x": X}, {"axis": 2}, {}, 17, 1, B),
    ("Trilu", "Trilu", {"x": X}, {"upper": 0}, {"k": np.array(1, np.int64)}, 17, 1, B),
    ("Tile", "Tile", {"x": X}, {}, {"r": i64(1, 2, 1)}, 17, 1, B),
    ("LayerNormalization", "LayerNorm", {"x": X}, {"epsilon": 1e-5}, {"w": f32(4), "b": f32(4)}, 17, 1, B),
    ("RMSNormalization", "RMSNorm", {"x": X}, {}, {"w": f32(4)}, 23, 1, B),
    ("CumSum", "CumSum", {"x": X}, {"exclusive": 1}, {"a": np.array(1, np.int64)}, 17, 1, B),
    ("GatherND", "GatherND", {"x": X}, {}, {"i": i64(1, 2).reshape(1, 2)}, 17, 1, None),
    ("GatherElements", "GatherElements", {"x": X}, {"axis": 1}, {"i": np.zeros((2, 2, 4), np.int64)}, 17, 1, None),
    ("ScatterND", "ScatterND", {"x": X}, {"reduction": "add"}, {"i": i64(1, 2).reshape(1, 2), "u": f32(1, 4)}, 18, 1,
     None),
]


def _range_graph():
    """Range(0, seq, 1) with seq from Shape: a symbolic length, and ConstantOfShape of a symbolic shape."""
    c = lambda n, v: helper.make_node("Constant", [], [n], value=numpy_helper.from_array(np.array(v, np.int64)))
    nodes = [helper.make_node("Shape", ["x"], ["s"]), c("one", 1), c("zero", 0), c("ax", [0]),
             helper.make_node("Gather", ["s", "one"], ["n"], axis=0),
             helper.make_node("Range", ["zero", "n", "one"], ["r"]),
             helper.make_node("Unsqueeze", ["n", "ax"], ["n1"]),
             helper.make_node("ConstantOfShape", ["n1"], ["z"],
                              value=numpy_helper.from_array(np.array([2.5], np.float32)))]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq"])],
                          [helper.make_tensor_value_info("r", TensorProto.INT64, None),
                           helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    return import_onnx(m)


def _attention_graph():
    q = {"q": f32(1, 3, 8), "k": f32(1, 3, 8), "v": f32(1, 3, 8), "m": np.tril(np.ones((3, 3), bool))}
    return import_onnx(model_for("Attention", q, {"q_num_heads": 2, "kv_num_heads": 2}, opset=23))


def _direct_graph():
    """Ops the frontend never emits as nodes (Shape folds, Linear/Copy come from passes), quoted names,
    a symbolic constant and a blob."""
    g = Graph("direct")
    x = g.add_input("input:0", TensorType(DType.f32, (Sym.symbol("batch"), 20)))
    w = g.add_const(f32(20, 20), "weight matrix", exact_name=True)
    h = g.add_node("Linear", [x, w], name='/l1 "quoted"').output
    s = g.add_node("Shape", [h], {"start": 0, "end": None}).output
    shp = g.add_const(np.array([Sym.symbol("batch"), 4, 5], dtype=object), "sym shape")
    r = g.add_node("Reshape", [h, shp]).output
    c = g.add_node("Copy", [g.add_node("Silu", [r]).output], out_names=["out put"]).output
    rot = _rope(g, c)
    g.outputs = [c, s, rot]
    return g


def _rope(g, x):
    x4 = g.add_node("Reshape", [x, g.add_const(np.array([0, 1, 4, 5], np.int64), "s4")]).output
    if "RotaryEmbedding" not in OPS:
        return x4
    cache = g.add_const(np.ones((8, 2), np.float32), "cos")
    pos = g.add_const(np.zeros((1, 4), np.int64), "pos")
    return g.add_node("RotaryEmbedding", [x4, cache, cache, pos], {"rotary_embedding_dim": 4}).output


def _kv_graph():
    """A KV-cache attention layer: states (the cache) and a symbolic `past` scalar, with rotary tables."""
    g = Graph("kv")
    b, s = Sym.symbol("batch"), Sym.symbol("seq")
    q = g.add_input("q", TensorType(DType.f32, (b, 4, s, 8)))
    k = g.add_input("k", TensorType(DType.f32, (b, 2, s, 8)))
    v = g.add_input("v", TensorType(DType.f32, (b, 2, s, 8)))
    kc = g.add_state("kv.0.key", TensorType(DType.f32, (1, 2, 16, 8)))
    vc = g.add_state("kv.0.value", TensorType(DType.f32, (1, 2, 16, 8)))
    past = g.add_const(np.array(Sym.symbol("past"), dtype=object), "past")
    cos, sin = g.add_const(f32(16, 2), "cos"), g.add_const(f32(16, 2), "sin")
    g.outputs = [g.add_node("KVAttention", [q, k, v, kc, vc, past, cos, sin],
                            {"scale": 0.35, "rope": 2, "rotary_dim": 4}).output]
    return g


def _quant_graph():
    """Quantized layers: an int4 embedding, QLinear (fp32 activations, zero points, bias), and a shared
    QuantizeActs feeding int4 and int8 QLinearI8."""
    from tcc.ir.quant_arith import quantize_int4, quantize_int8

    g = Graph("quant")
    rng = np.random.default_rng(0)
    ids = g.add_input("ids", TensorType(DType.i64, (Sym.symbol("seq"),)))
    q, s, z = quantize_int4(rng.standard_normal((10, 40)).astype(np.float32).T, 32, symmetric=False)
    h = g.add_node("QGather", [ids, g.add_const(q, "emb.q"), g.add_const(s, "emb.s"), g.add_const(z, "emb.z")],
                   {"bits": 4, "group_size": 32}).output
    q, s, z = quantize_int4(rng.standard_normal((40, 40)).astype(np.float32), 32, symmetric=False)
    h = g.add_node("QLinear", [h, g.add_const(q, "w1.q"), g.add_const(s, "w1.s"), g.add_const(z, "w1.z"),
                               g.add_const(f32(40), "w1.b")], {"bits": 4, "group_size": 32, "act": "f32"}).output
    xq, xs, xsum = g.add_node("QuantizeActs", [h], {"group_size": 32, "per_tensor": 0, "pad_to": 64}).outputs
    q4, s4, _ = quantize_int4(rng.standard_normal((40, 8)).astype(np.float32), 32)
    a = g.add_node("QLinearI8", [xq, xs, xsum, g.add_const(q4, "w2.q"), g.add_const(s4, "w2.s")],
                   {"bits": 4, "group_size": 32}).output
    tq, ts, tsum = g.add_node("QuantizeActs", [h], {"group_size": 40, "per_tensor": 1, "pad_to": 64}).outputs
    q8, s8 = quantize_int8(rng.standard_normal((40, 8)).astype(np.float32))
    b = g.add_node("QLinearI8", [tq, ts, tsum, g.add_const(q8, "w3.q"), g.add_const(s8, "w3.s")],
                   {"bits": 8, "group_size": 40, "per_tensor": 1}).output
    gamma = g.add_const((1 + 0.1 * rng.standard_normal(40)).astype(np.float32), "gamma")
    nq, ns, nsum = g.add_node("NormQuantize", [h, gamma], {"norm": "rmsnorm", "eps": 1e-6, "group_size": 32,
                                                           "pad_to": 64}).outputs
    c = g.add_node("QLinearI8", [nq, ns, nsum, g.add_const(q4, "w4.q"), g.add_const(s4, "w4.s")],
                   {"bits": 4, "group_size": 32}).output
    g.outputs = [a, b, c]
    return g


def _graphs():
    yield "kv", _kv_graph()
    yield "quant", _quant_graph()
    for case in CASES:
        ident, op, ins, attrs, consts, opset, n_out, sym = case
        yield ident, import_onnx(model_for(ident, ins, attrs, consts=consts, n_out=n_out, opset=opset, sym=sym))
    yield "range", _range_graph()
    yield "attention", _attention_graph()
    yield "direct", _direct_graph()


GRAPHS = list(_graphs())


@pytest.mark.parametrize("name,graph", GRAPHS, ids=[n for n, _ in GRAPHS])
def test_round_trip(name, graph, tmp_path):
    graph.verify()
    text = print_graph(graph, blob_dir=str(tmp_path), inline_limit=8)
    back = parse_graph(text, blob_dir=str(tmp_path))
    assert print_graph(back, blob_dir=str(tmp_path), inline_limit=8) == text
    assert print_graph(back) == print_graph(graph)


def test_every_registered_op_is_covered():
    covered = {n.op for _, g in GRAPHS for n in g.nodes}
    assert set(OPS) - covered == set()


def test_round_trip_features():
    g = dict(GRAPHS)["direct"]
    text = print_graph(g, inline_limit=8)
    assert '%"input:0"' in text and '%"weight matrix"' in text and '@"/l1 \\"quoted\\""' in text
    assert "const [batch, 4, 5]" in text and 'blob("' in text
    split = print_graph(dict(GRAPHS)["Split"])
    assert "%y0 : f32[batch,seq,1], %y1 : f32[batch,seq,3] = Split(%x) {axis=-1, split=[1, 3]}" in split
    r = print_graph(dict(GRAPHS)["range"])
    assert "i64[seq] = Range(" in r and "f32[seq] = ConstantOfShape(" in r
    kv = print_graph(dict(GRAPHS)["kv"])
    assert "%kv.0.key : f32[1,2,16,8] = state" in kv and "const past" in kv


def test_round_tripped_graph_runs_the_same(tmp_path):
    g = dict(GRAPHS)["range"]
    back = parse_graph(print_graph(g, blob_dir=str(tmp_path)), blob_dir=str(tmp_path))
    x = np.zeros((2, 5), np.float32)
    a, b = run_graph(g, {"x": x}), run_graph(back, {"x": x})
    np.testing.assert_array_equal(a["r"], np.arange(5))
    np.testing.assert_array_equal(b["z"], np.full(5, 2.5, np.float32))


# -- verify() failures ------------------------------------------------------------------------------

def _small():
    g = Graph()
    x = g.add_input("x", TensorType(DType.f32, (2, 3)))
    a = g.add_node("Relu", [x]).output
    y = g.add_node("Neg", [a]).output
    g.outputs = [y]
    return g


def test_verify_use_before_def():
    g = _small()
    g.nodes.reverse()
    with pytest.raises(IRError, match="used before it is defined"):
        g.verify()


def test_verify_wrong_type():
    g = _small()
    g.nodes[0].outputs[0].type = TensorType(DType.f16, (2, 3))
    with pytest.raises(IRError, match="has type f16\\[2,3\\], inferred f32\\[2,3\\]"):
        g.verify()


def test_verify_bad_arity_and_unknown_attr():
    g = _small()
    g.nodes[0].inputs.append(g.inputs[0])
    with pytest.raises(IRError, match="takes 1..1 inputs, got 2"):
        g.verify()
    g = _small()
    g.nodes[1].attrs["bogus"] = 1
    with pytest.raises(IRError, match="unknown attributes"):
        g.verify()


def test_parse_rejects_use_before_def():
    text = "graph main(%x: f32[2]) -> (%y) {\n  %y : f32[2] = Neg(%t)\n  %t : f32[2] = Relu(%x)\n  return %y\n}\n"
    with pytest.raises(IRError, match="used before it is defined"):
        parse_graph(text)


def test_round_trip_symbolic_floor_division(tmp_path):
    """Split into 2 of a symbolic dim gives parts (seq+1)//2 and seq-(seq+1)//2; their printed forms must
    parse back to the same dims (a leading minus or a factor before a floor division needs parentheses)."""
    m = model_for("Split", {"x": X}, {"axis": 1, "num_outputs": 2}, n_out=2, opset=18, sym=B)
    g = import_onnx(m)
    assert [str(v.type) for v in g.outputs] == ["f32[batch,(seq+1)//2,4]", "f32[batch,-((seq+1)//2)+seq,4]"]
    text = print_graph(g)
    assert print_graph(parse_graph(text)) == text
    out = run_graph(parse_graph(text), {"x": f32(2, 5, 4)})
    assert [a.shape for a in out.values()] == [(2, 3, 4), (2, 2, 4)]


def test_interpreter_runs_constant_only_nodes_at_their_reader_and_skips_dead_ones():
    """A weight's Cast runs just before the node that reads it; one nothing reads (the calibration passes leave
    the replaced Cast of every rescaled weight for dead-code elimination) is not run at all, unless it makes a
    graph output or `keep` asks for every value: running them held an f32 copy of every rescaled weight of a 7B
    model (10 GB) to the end of the fold check."""
    g = Graph("lazy")
    x = g.add_input("x", TensorType(DType.f32, (2, 4)))
    w = g.add_const(np.arange(16, dtype=np.float16).reshape(4, 4), "w")
    live = g.add_node("Cast", [w], {"to": "f32"}, name="live_cast").output
    g.add_node("Cast", [w], {"to": "f32"}, name="dead_cast")
    shown = g.add_node("Cast", [g.add_const(np.ones(3, np.float16), "b")], {"to": "f32"}, name="out_cast").output
    y = g.add_node("Relu", [x], name="relu").output
    z = g.add_node("MatMul", [y, live], name="mm").output
    g.outputs = [z, shown]
    ran = []
    out = run_graph(g, {"x": np.ones((2, 4), np.float32)}, observe=lambda n, a: ran.append(n.name))
    assert ran == ["relu", "live_cast", "mm", "out_cast"]
    np.testing.assert_array_equal(out[z.name], np.ones((2, 4), np.float32) @ np.arange(16.0).reshape(4, 4))
    ran.clear()
    kept = run_graph(g, {"x": np.ones((2, 4), np.float32)}, keep=True, observe=lambda n, a: ran.append(n.name))
    assert sorted(ran) == ["dead_cast", "live_cast", "mm", "out_cast", "relu"] and len(kept) >= 7
