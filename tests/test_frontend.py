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


# -- malformed models end in one-line errors with exit 2 (issue 21) -------------------------------------

def _cli_ir(capsys, path, *args):
    """`tcc ir PATH --pipeline default ARGS` in process: (exit code, stderr)."""
    from tcc.cli import main

    rc = main(["ir", str(path), "--pipeline", "default", "-o", os.devnull, *args])
    return rc, capsys.readouterr().err


def _refused(capsys, path, *args, match):
    rc, err = _cli_ir(capsys, path, *args)
    assert rc == 2 and err.startswith("tcc: error: ") and err.count("\n") == 1, (rc, err)
    assert "internal error" not in err
    import re
    assert re.search(match, err), err
    return err


def _save(tmp_path, m, name="m.onnx"):
    path = tmp_path / name
    path.write_bytes(m.SerializeToString())
    return path


@pytest.mark.parametrize("how", ["raw_short", "raw_long", "typed_count", "dims_grow", "dtype_changed"])
def test_initializer_data_disagrees_with_dims(tmp_path, capsys, how):
    m = _relu_model()
    w = m.graph.initializer[0]
    if how == "raw_short":
        w.raw_data = w.raw_data[:100]
    elif how == "raw_long":
        w.raw_data = w.raw_data + b"\0" * 3
    elif how == "typed_count":
        w.ClearField("raw_data")
        w.float_data.extend([1.0] * 5)
    elif how == "dims_grow":
        w.dims[0] = 9
    else:
        w.data_type = TensorProto.INT64  # 256 bytes are 32 int64s, not 64
    with pytest.raises(ModelFormatError, match=r"initializer 'w': dims \[\d+, 8\] of \w+ need \d+ (bytes|values), "
                                               r"but its (raw_data|float_data) holds \d+") as e:
        import_onnx(m)
    assert e.value.exit_code == 2
    _refused(capsys, _save(tmp_path, m), match="initializer 'w': dims")


def test_constant_value_tensor_checked_too():
    t = numpy_helper.from_array(np.arange(4, dtype=np.float32), "c")
    t.raw_data = t.raw_data[:7]
    m = make([helper.make_node("Constant", [], ["c"], name="k", value=t), helper.make_node("Add", ["x", "c"], ["y"])],
             [vi("x", [4])], [vi("y", [4])])
    with pytest.raises(ModelFormatError, match=r"Constant node 'k' value: dims \[4\] of f32 need 16 bytes, but its "
                                               r"raw_data holds 7"):
        import_onnx(m)


@pytest.mark.parametrize("node, match", [
    (helper.make_node("Gemm", ["x", "w"], ["y"], name="g", alpha=[1, 2]),
     r"Gemm node 'g': attribute alpha is ints, but ONNX Gemm-13 defines it as float"),
    (helper.make_node("Cast", ["x"], ["y"], name="c", to=helper.make_tensor("t", TensorProto.FLOAT, [1], [1.0])),
     r"Cast node 'c': attribute to is tensor, but ONNX Cast-13 defines it as int"),
    (helper.make_node("Transpose", ["x"], ["y"], name="t", perm=["a", "b"]),
     r"Transpose node 't': attribute perm is strings, but ONNX Transpose-13 defines it as ints"),
    (helper.make_node("Softmax", ["x"], ["y"], name="s", axis=1.5),
     r"Softmax node 's': attribute axis is float, but ONNX Softmax-13 defines it as int"),
    (helper.make_node("Cast", ["x"], ["y"], name="c2"), r"Cast node 'c2': lacks the required attribute to"),
])
def test_attribute_of_wrong_type(tmp_path, capsys, node, match):
    w = numpy_helper.from_array(np.ones((8, 8), np.float32), "w")
    m = make([node], [vi("x", [8, 8])], [vi("y", None)], [w])
    with pytest.raises(ModelFormatError, match=match):
        import_onnx(m)
    _refused(capsys, _save(tmp_path, m), match=match)


def test_constant_value_attribute_of_wrong_type():
    a = helper.make_attribute("value", 3)  # an INT where Constant's value is a tensor
    n = helper.make_node("Constant", [], ["c"], name="k")
    n.attribute.append(a)
    m = make([n, helper.make_node("Add", ["x", "c"], ["y"])], [vi("x", [1], TensorProto.INT64)], [vi("y", None)])
    with pytest.raises(ModelFormatError, match="Constant node 'k': attribute value is int, but ONNX Constant-13 "
                                               "defines it as tensor"):
        import_onnx(m)


def _with_invalid_utf8(m, setter) -> bytes:
    """Serialize m with one string set to a marker, then overwrite the marker with invalid UTF-8 bytes (the
    protobuf API refuses to set them, the parser accepts them)."""
    setter(m, "\x01MARKER\x01")
    data = m.SerializeToString()
    assert data.count(b"\x01MARKER\x01") == 1
    return data.replace(b"\x01MARKER\x01", b"\xff\xfe\xc3\x28\xa0\xa1\xe2\x28")


@pytest.mark.parametrize("where, setter, match", [
    ("producer", lambda m, s: setattr(m, "producer_name", s), r"model\.producer_name"),
    ("doc", lambda m, s: setattr(m, "doc_string", s), r"model\.doc_string"),
    ("node name", lambda m, s: setattr(m.graph.node[0], "name", s), r"model\.graph\.node\[0\]\.name"),
    ("node doc", lambda m, s: setattr(m.graph.node[0], "doc_string", s),
     r"model\.graph\.node\[0\] \(MatMul 'mm'\)\.doc_string"),
    ("dim_param", lambda m, s: setattr(m.graph.input[0].type.tensor_type.shape.dim[0], "dim_param", s),
     r"model\.graph\.input\[0\] \('x'\)\.type\.tensor_type\.shape\.dim\[0\]\.dim_param"),
    ("initializer name", lambda m, s: setattr(m.graph.initializer[0], "doc_string", s),
     r"model\.graph\.initializer\[0\] \('w'\)\.doc_string"),
])
def test_non_utf8_strings(tmp_path, capsys, where, setter, match):
    m = _relu_model()
    m.graph.node[0].name = "mm"
    path = tmp_path / "u.onnx"
    path.write_bytes(_with_invalid_utf8(m, setter))
    with pytest.raises(ModelFormatError, match=f"u.onnx: string field {match} is not valid UTF-8"):
        import_onnx(str(path))
    _refused(capsys, path, match=match)


def test_non_utf8_string_attribute(tmp_path, capsys):
    m = make([helper.make_node("Gelu", ["x"], ["y"], name="gl", approximate="none")], [vi("x", [2])], [vi("y", [2])],
             opset=20)
    path = tmp_path / "g.onnx"
    path.write_bytes(_with_invalid_utf8(m, lambda m, s: setattr(m.graph.node[0].attribute[0], "s", s.encode())))
    _refused(capsys, path, match=r"Gelu node 'gl': attribute 'approximate' is not valid UTF-8")


def test_short_external_data(tmp_path, capsys):
    m = _relu_model()
    path = tmp_path / "ext.onnx"
    onnx.save(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.bin",
              size_threshold=0)
    blob = (tmp_path / "ext.bin").read_bytes()
    # a file shorter than the length recorded in the model: onnx's loader names the tensor
    (tmp_path / "ext.bin").write_bytes(blob[:100])
    _refused(capsys, path, match=r"cannot load external data: .*exceeds available data.*'w'")
    # a length entry shorter than the tensor: tcc names the tensor, the file and the sizes
    (tmp_path / "ext.bin").write_bytes(blob)
    m2 = onnx.load(str(path), load_external_data=False)
    for e in m2.graph.initializer[0].external_data:
        if e.key == "length":
            e.value = "100"
    onnx.save(m2, str(path))
    err = _refused(capsys, path, match=r"initializer 'w': dims \[8, 8\] of f32 need 256 bytes, but its raw_data "
                                       r"holds 100 \(external data 'ext.bin', offset 0, length 100")
    assert "ext.bin" in err


@pytest.mark.parametrize("how, match", [
    ("empty required input", r"MatMul node 'mm': input 1 \(B\) is required but its name is empty"),
    ("too many inputs", r"MatMul node 'mm': 3 inputs, but ONNX MatMul-13 takes 2"),
    ("output defined twice", r"Relu node 'r' output 'x' is already defined"),
    ("duplicate initializer", r"initializer 'w' is defined twice"),
])
def test_graph_structure_errors(tmp_path, capsys, how, match):
    m = _relu_model()
    m.graph.node[0].name = "mm"
    if how == "empty required input":
        m.graph.node[0].input[1] = ""
    elif how == "too many inputs":
        m.graph.node[0].input.append("w")
    elif how == "output defined twice":
        m.graph.node.append(helper.make_node("Relu", ["y"], ["x"], name="r"))
    else:
        m.graph.initializer.append(m.graph.initializer[0])
    with pytest.raises(ModelFormatError, match=match):
        import_onnx(m)
    _refused(capsys, _save(tmp_path, m), match=match)


def test_split_num_outputs_disagreeing_with_outputs():
    """A huge num_outputs used to be expanded into that many sizes (MemoryError, found by the fuzzer)."""
    n = helper.make_node("Split", ["x"], ["a", "b"], name="sp", axis=0, num_outputs=1 << 62)
    m = make([n], [vi("x", [4, 2])], [vi("a", None), vi("b", None)], opset=18)
    with pytest.raises(ShapeError, match=r"Split node 'sp': num_outputs=4611686018427387904 for 2 outputs"):
        import_onnx(m)


# -- absurd dims and planned sizes are bounded ------------------------------------------------------------

def test_absurd_input_dim_refused_at_import(tmp_path, capsys):
    m = make([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [1 << 62, 8])], [vi("y", None)])
    with pytest.raises(ShapeError, match=r"input 'x': f32\[4611686018427387904,8\] needs \d+ elements of 4 bytes, "
                                         r"over tcc's limit of 1099511627776 bytes \(1 TiB\) per tensor") as e:
        import_onnx(m)
    assert e.value.exit_code == 2
    # the same through --dim on a symbolic dim
    _refused(capsys, _mlp(),
             "--dim", f"batch={1 << 62}", match=r"input 'x': f32\[4611686018427387904,32\].*1 TiB")
    # a dim of 0 does not hide the others (strides would still overflow)
    m = make([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [0, 1 << 40, 1 << 30])], [vi("y", None)])
    with pytest.raises(ShapeError, match="input 'x'"):
        import_onnx(m)


def test_absurd_dim_of_an_inferred_value_refused_at_import():
    shape = numpy_helper.from_array(np.array([1 << 41, 2], np.int64), "shape")
    m = make([helper.make_node("Expand", ["x", "shape"], ["y"], name="ex")], [vi("x", [1, 2])], [vi("y", None)],
             [shape])
    with pytest.raises(ShapeError, match=r"Expand node 'ex' output 'y': f32\[2199023255552,2\] .*\(1 TiB\)"):
        import_onnx(m)


def _mlp():
    return os.path.join(os.path.dirname(__file__), "models", "mlp.onnx")


def test_huge_arena_refused_at_plan(capsys):
    from tcc.driver import CompileOptions, optimize

    # batch <= 2^36: every [batch, 64] f32 intermediate needs 16 TiB
    with pytest.raises(ShapeError, match=r"plan-memory: graph input %x : f32\[batch,32\] needs 8796093022208 bytes "
                                         r"\(8.0 TiB\) at the dim bounds batch=68719476736, over the limit of "
                                         r"1099511627776 bytes \(1.0 TiB\); lower --max-dim") as e:
        optimize(_mlp(), CompileOptions(max_dims={"batch": 1 << 36}))
    assert e.value.exit_code == 2
    _refused(capsys, _mlp(), "--max-dim", f"batch={1 << 36}", match=r"plan-memory: .* over the limit of")


def test_plan_limit_is_an_option_and_fixtures_fit():
    from tcc.passes.context import PassContext
    from tcc.passes.plan_memory import MAX_PLAN_BYTES, plan_memory
    from tcc.passes.runner import run_pipeline

    g = import_onnx(os.path.join(os.path.dirname(__file__), "models", "llama.onnx"))
    ctx = PassContext(symbol_bounds={"batch": 256, "seq": 256})
    run_pipeline(g, "default", ctx)  # 5 GiB of arena at the default bounds: far below the limit
    plan = ctx.stats["plan-memory"]
    assert 0 < plan.arena_bytes < MAX_PLAN_BYTES
    ctx.options["max_plan_bytes"] = plan.arena_bytes - 1
    with pytest.raises(ShapeError, match=rf"plan-memory: (the arena|intermediate %\S+ : .*) needs \d+ bytes .*at the "
                                         rf"dim bounds batch=256, .*over the limit of {plan.arena_bytes - 1} bytes"):
        plan_memory(g, ctx)
