"""The ONNX frontend: refusal messages, malformed files, external data, symbolic shape folding, Constant
nodes, initializers listed as inputs, dims specialization."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tcc.errors import ModelFormatError, ShapeError, UnsupportedError
from tcc.frontend.onnx_import import import_onnx
from tcc.ir.interpreter import run_graph

from .conftest import ort_run

F = TensorProto.FLOAT


def make(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="unit")
    m.ir_version = 10
    return m


def vi(name, shape, t=F):
    return helper.make_tensor_value_info(name, t, shape)


# -- refusals -----------------------------------------------------------------------------------

def test_unsupported_ops_listed_in_one_error():
    nodes = [helper.make_node("NonZero", ["x"], ["nz"], name="nz_1"),
             helper.make_node("TopK", ["x", "k"], ["v", "i"], name="/topk"),
             helper.make_node("NonZero", ["x"], ["nz2"], name="nz_2"),
             helper.make_node("Gelu", ["x"], ["g"], name="g1", approximate="erfc"),
             helper.make_node("Relu", ["x"], ["r"], name="ok")]
    k = numpy_helper.from_array(np.array([1], np.int64), "k")
    m = make(nodes, [vi("x", [2, 3])], [vi("r", [2, 3])], [k], opset=20)
    with pytest.raises(UnsupportedError) as e:
        import_onnx(m)
    msg = str(e.value)
    assert msg.startswith("unsupported ONNX ops (opset 20): NonZero (node 'nz_1'), TopK (node '/topk')")
    assert "nz_2" not in msg and "Gelu (node 'g1', attribute approximate='erfc')" in msg
    assert "\n" not in msg and e.value.exit_code == 2


def test_unknown_attribute_and_foreign_domain():
    nodes = [helper.make_node("Softmax", ["x"], ["s"], name="sm", foo=1),
             helper.make_node("FusedMatMul", ["x", "x"], ["y"], name="fm", domain="com.microsoft")]
    m = make(nodes, [vi("x", [2, 2])], [vi("y", [2, 2])])
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(UnsupportedError, match=r"Softmax \(node 'sm', attribute foo\), com.microsoft.FusedMatMul "
                                               r"\(node 'fm'\)"):
        import_onnx(m)


def test_unsupported_dtype_named():
    m = make([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [2], TensorProto.DOUBLE)],
             [vi("y", [2], TensorProto.DOUBLE)])
    with pytest.raises(UnsupportedError, match=r"unsupported dtypes: input 'x' is double, output 'y' is double"):
        import_onnx(m)
    m = make([helper.make_node("Cast", ["x"], ["y"], name="c", to=TensorProto.DOUBLE)], [vi("x", [2])],
             [vi("y", [2], TensorProto.DOUBLE)])
    with pytest.raises(UnsupportedError, match=r"Cast \(node 'c', cast to double\)"):
        import_onnx(m)


def test_opset_out_of_range():
    m = make([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [2])], [vi("y", [2])], opset=11)
    with pytest.raises(UnsupportedError, match="opset 11 is not supported"):
        import_onnx(m)


def test_runtime_shape_operand_refused():
    m = make([helper.make_node("Reshape", ["x", "s"], ["y"], name="rs")],
             [vi("x", [2, 3]), vi("s", [2], TensorProto.INT64)], [vi("y", None)])
    with pytest.raises(UnsupportedError, match=r"Reshape node 'rs': .*%s is computed at run time"):
        import_onnx(m)


def test_layernorm_with_used_statistics_is_decomposed():
    w = numpy_helper.from_array(np.linspace(0.5, 2, 4, dtype=np.float32), "w")
    n = helper.make_node("LayerNormalization", ["x", "w"], ["y", "mean", "inv"], name="ln", axis=1)
    m = make([n], [vi("x", [2, 4])], [vi("y", [2, 4]), vi("mean", [2, 1]), vi("inv", [2, 1])], [w])
    g = import_onnx(m)
    assert "LayerNorm" not in g.ops() and [v.name for v in g.outputs] == ["y", "mean", "inv"]
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    got, want = run_graph(g, {"x": x}), ort_run(m.SerializeToString(), {"x": x})
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)


def test_attention_bool_mask_with_causal_refused():
    n = helper.make_node("Attention", ["q", "k", "v", "m"], ["y"], name="att", is_causal=1)
    m = make([n], [vi("q", [1, 2, 3, 4]), vi("k", [1, 2, 3, 4]), vi("v", [1, 2, 3, 4]),
                   vi("m", [3, 3], TensorProto.BOOL)], [vi("y", None)], opset=23)
    with pytest.raises(UnsupportedError, match="is_causal with a bool attn_mask"):
        import_onnx(m)


def test_shape_error_names_node_and_shapes():
    m = make([helper.make_node("MatMul", ["a", "b"], ["y"], name="mm")], [vi("a", [2, 3]), vi("b", [4, 5])],
             [vi("y", None)])
    with pytest.raises(ShapeError) as e:
        import_onnx(m)
    assert "MatMul node 'mm'" in str(e.value) and "[2,3]" in str(e.value) and "f32[4,5]" in str(e.value)


# -- malformed files -------------------------------------------------------------------------------

def _relu_model():
    w = numpy_helper.from_array(np.arange(64, dtype=np.float32).reshape(8, 8), "w")
    return make([helper.make_node("MatMul", ["x", "w"], ["y"])], [vi("x", ["n", 8])], [vi("y", ["n", 8])], [w])


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(ModelFormatError, match=r"file .*nope.onnx: cannot read"):
        import_onnx(str(tmp_path / "nope.onnx"))
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"\xff\xfe this is not a protobuf \x00\x01" * 10)
    with pytest.raises(ModelFormatError, match=r"file .*garbage.onnx: not a valid ONNX model") as e:
        import_onnx(str(bad))
    assert e.value.exit_code == 2 and "\n" not in str(e.value)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelFormatError, match="empty file"):
        import_onnx(str(empty))


def test_truncated_file(tmp_path):
    data = _relu_model().SerializeToString()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(ModelFormatError) as e:
        import_onnx(str(cut))
    msg = str(e.value)
    assert "cut.onnx" in msg and "offset" in msg and "truncated" in msg, msg


def test_external_data(tmp_path):
    m = _relu_model()
    path = tmp_path / "ext.onnx"
    onnx.save(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.bin",
              size_threshold=0)
    assert (tmp_path / "ext.bin").exists()
    g = import_onnx(str(path))
    x = np.ones((3, 8), np.float32)
    np.testing.assert_array_equal(run_graph(g, {"x": x})["y"], x @ np.arange(64, dtype=np.float32).reshape(8, 8))
    assert g.meta["source"] == "ext.onnx" and g.meta["opset"] == 17 and g.meta["producer"] == "unit"
    os.remove(tmp_path / "ext.bin")
    with pytest.raises(ModelFormatError, match="cannot load external data"):
        import_onnx(str(path))


# -- symbolic shapes and constants ---------------------------------------------------------------------

def _shape_chain_model():
    """x [batch, seq, 64] -> Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), Unsqueeze(Gather(.., 1)), [4, 16]))."""
    c = lambda name, v: helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(v, np.int64)))
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             c("i0", 0), c("i1", 1), c("ax", [0]), c("tail", [4, 16]),
             helper.make_node("Gather", ["s", "i0"], ["b"], axis=0),
             helper.make_node("Gather", ["s", "i1"], ["q"], axis=0),
             helper.make_node("Unsqueeze", ["b", "ax"], ["b1"]),
             helper.make_node("Unsqueeze", ["q", "ax"], ["q1"]),
             helper.make_node("Concat", ["b1", "q1", "tail"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")]
    return make(nodes, [vi("x", ["batch", "seq", 64])], [vi("y", None)])


def test_symbolic_shape_subgraph_folds():
    m = _shape_chain_model()
    g = import_onnx(m)
    assert g.ops() == {"Reshape": 1}
    assert str(g.outputs[0].type) == "f32[batch,seq,4,16]"
    shape = g.nodes[0].inputs[1]
    assert shape.const is not None and [str(d) for d in shape.const] == ["batch", "seq", "4", "16"]
    x = np.random.default_rng(0).standard_normal((2, 5, 64)).astype(np.float32)
    np.testing.assert_array_equal(run_graph(g, {"x": x})["y"], ort_run(m.SerializeToString(), {"x": x})["y"])


def test_dims_specialize_and_unknown_dims():
    g = import_onnx(_shape_chain_model(), dims={"batch": 1})
    assert str(g.outputs[0].type) == "f32[1,seq,4,16]"
    m = make([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [None, "my-dim", 3])], [vi("y", None)])
    g = import_onnx(m)
    assert str(g.inputs[0].type) == "f32[d0,my_dim,3]"


def test_constant_nodes():
    nodes = [helper.make_node("Constant", [], ["a"], value=numpy_helper.from_array(np.full((2,), 2.0, np.float32))),
             helper.make_node("Constant", [], ["b"], value_float=0.5),
             helper.make_node("Constant", [], ["c"], value_floats=[1.0, 2.0]),
             helper.make_node("Constant", [], ["d"], value_ints=[3, 4]),
             helper.make_node("Constant", [], ["e"], value_int=7),
             helper.make_node("Mul", ["x", "a"], ["t1"]),
             helper.make_node("Add", ["t1", "b"], ["t2"]),
             helper.make_node("Add", ["t2", "c"], ["y"]),
             helper.make_node("Add", ["d", "e"], ["z"])]
    m = make(nodes, [vi("x", [2])], [vi("y", None), vi("z", None)])
    g = import_onnx(m)
    out = run_graph(g, {"x": np.array([1.0, -1.0], np.float32)})
    np.testing.assert_array_equal(out["y"], [3.5, 0.5])
    np.testing.assert_array_equal(out["z"], [10, 11])
    assert g.value("z").const is not None  # folded at import


def test_initializer_listed_as_input():
    w = numpy_helper.from_array(np.full((3,), 2.0, np.float32), "w")
    m = make([helper.make_node("Mul", ["x", "w"], ["y"])], [vi("x", [3]), vi("w", [3])], [vi("y", [3])], [w])
    g = import_onnx(m)
    assert [v.name for v in g.inputs] == ["x"] and "w" in g.constants
    np.testing.assert_array_equal(run_graph(g, {"x": np.ones(3, np.float32)})["y"], [2.0, 2.0, 2.0])


def test_node_names_kept_or_synthesized():
    nodes = [helper.make_node("Relu", ["x"], ["t"], name="/layer/relu"), helper.make_node("Neg", ["t"], ["y"])]
    g = import_onnx(make(nodes, [vi("x", [2])], [vi("y", [2])]))
    assert [n.name for n in g.nodes] == ["/layer/relu", "Neg_1"]


def test_graph_output_names_survive_helper_collisions():
    q = [vi(n, [1, 3, 8]) for n in "qkv"]
    n = helper.make_node("Attention", ["q", "k", "v"], ["y"], q_num_heads=2, kv_num_heads=2)
    g = import_onnx(make([n], q, [vi("y", None)], opset=23))
    assert [v.name for v in g.outputs] == ["y"]
    assert str(g.outputs[0].type) == "f32[1,3,8]"
