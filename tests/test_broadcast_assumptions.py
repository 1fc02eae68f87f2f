"""Broadcasting two dims that are equal only under a condition on the symbols (`n` and `min(n,8)`: n <= 8).

The result is typed with the plain dim and the condition becomes an assumption of the node
(ir.registry.node_assumptions): the reference interpreter and the compiled program check it on every run
and refuse a run that breaks it in one line, and no check is emitted where the symbol bounds prove it.
MPT's ALiBi bias (a 128-entry table sliced from max(0, 128 - L)) is the case that needs it.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tcc
from tcc.codegen.lower import assumption_checks, kv_ceilings
from tcc.errors import RuntimeFeedError, ShapeError, TccError
from tcc.frontend.onnx_import import import_onnx
from tcc.ir.dims import Sym, parse_dim
from tcc.ir.interpreter import run_graph
from tcc.ir.registry import Assumption, broadcast_shapes, node_assumptions

from .conftest import ort_run

I64_MAX = 2 ** 63 - 1
TABLE = 8


def _d(text: str):
    return parse_dim(text)


@pytest.mark.parametrize("other,cond", [
    ("min(n,8)", "n <= 8"), ("min(n,c)", "n <= c"), ("max(n,8)", "n >= 8"), ("max(n,c)", "n >= c")])
def test_broadcast_with_min_max_is_typed_plain(other, cond):
    n = _d("n")
    for shapes in (((2, n), (1, _d(other))), ((1, _d(other)), (2, n))):  # either order
        assert broadcast_shapes(*shapes) == (2, n)
    a = {"n <= 8": Assumption(n, "<=", 8), "n <= c": Assumption(n, "<=", _d("c")),
         "n >= 8": Assumption(n, ">=", 8), "n >= c": Assumption(n, ">=", _d("c"))}[cond]
    assert str(a) == cond


def test_constant_against_min_assumes_the_symbol_large_enough():
    """x[-8:] (min(n,8) entries) added to a fixed [8] table: typed 8, valid only when 8 <= n."""
    assert broadcast_shapes((8,), (_d("min(n,8)"),)) == (8,)
    nodes = [helper.make_node("Slice", ["x", "minus8", "big"], ["tail"]),
             helper.make_node("Add", ["tail", "table"], ["y"], name="tail_add")]
    inits = [numpy_helper.from_array(np.arange(8, dtype=np.float32), "table"),
             numpy_helper.from_array(np.array([-8], np.int64), "minus8"),
             numpy_helper.from_array(np.array([I64_MAX], np.int64), "big")]
    g = helper.make_graph(nodes, "tail", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    graph = import_onnx(model)
    node = _add_node(graph)
    assert str(node.output.type) == "f32[8]"
    assert node_assumptions(node) == [Assumption(8, "<=", _d("n"))]
    x = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(run_graph(graph, {"x": x})["y"], ort_run(model.SerializeToString(), {"x": x})["y"])
    with pytest.raises(RuntimeFeedError, match=r"tail_add.*8 <= n, but n = 5$"):
        run_graph(graph, {"x": np.zeros(5, np.float32)})


def test_unrelated_symbols_still_refused():
    with pytest.raises(ShapeError, match="cannot broadcast"):
        broadcast_shapes((_d("n"),), (_d("min(m,8)"),))
    with pytest.raises(ShapeError, match="cannot broadcast"):
        broadcast_shapes((_d("n"),), (_d("min(n,8)+1"),))


def test_assumption_proofs():
    a = Assumption(_d("past+seq"), "<=", 128)
    assert not a.proven()
    assert not a.proven({"past": 200, "seq": 200})
    assert a.proven({"past": 100, "seq": 28}) and not a.proven({"past": 100, "seq": 29})
    # a KV-cache program refuses past + seq > capacity: past <= capacity - seq
    assert a.proven({"past": 200, "seq": 200}, {"past": 128 - Sym.symbol("seq")})
    assert not a.proven({"past": 200, "seq": 200}, {"past": 129 - Sym.symbol("seq")})
    assert Assumption(_d("n"), ">=", 0).proven()
    assert a.holds({"past": 100, "seq": 28}) and not a.holds({"past": 100, "seq": 29})


def _alibi_like_model() -> onnx.ModelProto:
    """y = table[max(0, 8 - n):] + x for x of shape [n]: the slice has min(n,8) entries, so the Add is
    valid only for n <= 8 (ONNX Runtime fails beyond)."""
    nodes = [helper.make_node("Shape", ["x"], ["sh"]),
             helper.make_node("Sub", ["c", "sh"], ["left"]),
             helper.make_node("Max", ["left", "zero"], ["start"]),
             helper.make_node("Slice", ["table", "start", "big"], ["bias"]),
             helper.make_node("Add", ["bias", "x"], ["y"], name="bias_add")]
    inits = [numpy_helper.from_array(np.arange(TABLE, dtype=np.float32) * 10, "table"),
             numpy_helper.from_array(np.array([TABLE], np.int64), "c"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([I64_MAX], np.int64), "big")]
    graph = helper.make_graph(nodes, "alibi_like", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def _add_node(graph):
    (node,) = [nd for nd in graph.nodes if nd.op == "Add"]
    return node


def test_imported_add_is_typed_n_with_assumption():
    graph = import_onnx(_alibi_like_model())
    node = _add_node(graph)
    assert str(node.inputs[0].type) == "f32[min(n,8)]"
    assert str(node.output.type) == "f32[n]"
    assert node_assumptions(node) == [Assumption(_d("n"), "<=", 8)]
    assert node_assumptions(node, {"n": 8}) == []  # the bounds prove it
    assert node_assumptions(node, {"n": 9}) == [Assumption(_d("n"), "<=", 8)]
    assert assumption_checks(node, {"n": 8}) == []
    (line,) = assumption_checks(node, {"n": 9})
    assert "n <= 8" in line and "bias_add" in line
    assert kv_ceilings(graph) == {}


def test_interpreter_checks_the_assumption():
    model = _alibi_like_model()
    graph = import_onnx(model)
    for n in (1, 3, 8):
        x = np.arange(n, dtype=np.float32) + 1
        want = ort_run(model.SerializeToString(), {"x": x})["y"]
        np.testing.assert_array_equal(run_graph(graph, {"x": x})["y"], want)
    with pytest.raises(Exception):  # ONNX Runtime refuses the Add too
        ort_run(model.SerializeToString(), {"x": np.zeros(9, np.float32)})
    with pytest.raises(RuntimeFeedError) as e:
        run_graph(graph, {"x": np.zeros(9, np.float32)})
    msg = str(e.value)
    assert "\n" not in msg and "bias_add" in msg and "n <= 8" in msg and "n = 9" in msg, msg


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("bcast")
    path = str(tmp / "m.onnx")
    onnx.save(_alibi_like_model(), path)
    out = str(tmp / "m")
    tcc.compile(path, out, max_dims={"n": 16}, build_dir=str(tmp / "build"))
    return out


def test_compiled_program_checks_the_assumption(compiled):
    model = _alibi_like_model()
    with tcc.load(compiled) as sess:
        for n in (1, 3, 8):
            x = np.arange(n, dtype=np.float32) + 1
            want = ort_run(model.SerializeToString(), {"x": x})["y"]
            np.testing.assert_array_equal(sess.run({"x": x})["y"], want)
        for n in (9, 16):
            with pytest.raises(TccError) as e:
                sess.run({"x": np.zeros(n, np.float32)})
            msg = str(e.value)
            assert "\n" not in msg and "bias_add" in msg and "n <= 8" in msg and f"n = {n}" in msg, msg
        # the program is still usable after a refused run
        x = np.ones(2, np.float32)
        np.testing.assert_array_equal(sess.run({"x": x})["y"], np.arange(6, 8, dtype=np.float32) * 10 + 1)


def test_cli_refuses_in_one_line(compiled, tmp_path):
    """`tcc run` on a feed that breaks the assumption: exit non-zero with a one-line error, no traceback."""
    import subprocess
    import sys

    feed = str(tmp_path / "x.npy")
    np.save(feed, np.zeros(12, np.float32))
    r = subprocess.run([sys.executable, "-m", "tcc.cli", "run", compiled, "--input", f"x={feed}"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode != 0
    err = r.stderr.strip()
    assert err.startswith("tcc: error:") and "\n" not in err and "n <= 8" in err, r.stderr
