"""Slice against ONNX Runtime over random starts/ends/axes/steps, on symbolic and fixed dims.

Each model holds many Slice nodes of one input (one compile serves them all) and runs at several sizes of
its symbolic dims, down to sizes smaller than |start|: the reference interpreter and the compiled artifact
must give ORT's shapes and values, and an inferred type must never be larger than the data it reads.
Where a shape rests on an assumption (a start/end computed from a shape must lie within the dim), a size
that breaks it must end in a one-line error, never a wrong shape or a read past the input.
"""
from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tcc
from tcc.errors import TccError
from tcc.frontend.onnx_import import import_onnx
from tcc.ir.dims import Sym, evaluate
from tcc.ir.interpreter import run_graph

from .conftest import ort_run

I64_MAX, I64_MIN, I32_MAX = 2 ** 63 - 1, -2 ** 63, 2 ** 31 - 1
INDICES = [0, 1, 2, 3, 4, 5, 7, -1, -2, -3, -4, -5, -7, I64_MAX, I64_MIN, I32_MAX, -I32_MAX]
STEPS = [1, 1, 1, 1, 2, 3, -1, -1, -2, -3]
SIZES = [1, 2, 3, 5, 8]


def _slices(r: np.random.Generator, rank: int, count: int) -> list[tuple]:
    """(starts, ends, axes or None, steps or None) drawn at random."""
    out = []
    for _ in range(count):
        k = int(r.integers(1, rank + 1))
        axes = [int(a) for a in r.permutation(rank)[:k]]
        axes = [a - rank if r.random() < 0.3 else a for a in axes]  # negative axes too
        starts = [int(r.choice(INDICES)) for _ in axes]
        ends = [int(r.choice(INDICES)) for _ in axes]
        steps = [int(r.choice(STEPS)) for _ in axes]
        form = r.integers(3)  # omit axes and steps, omit steps, or give both
        if form == 0 and axes == list(range(k)) and steps == [1] * k:
            out.append((starts, ends, None, None))
        elif form <= 1 and steps == [1] * k:
            out.append((starts, ends, axes, None))
        else:
            out.append((starts, ends, axes, steps))
    return out


def _model(shape: list, slices: list[tuple]) -> onnx.ModelProto:
    nodes, inits, outs = [], [], []
    for i, (starts, ends, axes, steps) in enumerate(slices):
        ins = ["x"]
        for tag, vals in (("s", starts), ("e", ends), ("a", axes), ("k", steps)):
            if vals is None:
                continue
            inits.append(numpy_helper.from_array(np.array(vals, np.int64), f"{tag}{i}"))
            ins.append(f"{tag}{i}")
        nodes.append(helper.make_node("Slice", ins, [f"y{i}"], name=f"slice{i}"))
        outs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "slices", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              outs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def _compiled(model, tmp_path, name: str, max_dims: dict):
    path = str(tmp_path / f"{name}.onnx")
    onnx.save(model, path)
    out = str(tmp_path / name)
    tcc.compile(path, out, max_dims=max_dims, build_dir=str(tmp_path / "build"))
    return tcc.load(out)


def _assert_same(got: dict, want: dict, what: str) -> None:
    assert list(got) == list(want), what
    for k, w in want.items():
        assert got[k].shape == w.shape, f"{what} {k}: shape {got[k].shape}, ORT {w.shape}"
        np.testing.assert_array_equal(got[k], w, err_msg=f"{what} {k}")


def _never_larger(graph, env: dict, x_shape: tuple) -> None:
    """No slice is typed with more elements on an axis than the input has there."""
    for v in graph.outputs:
        for a, (d, n) in enumerate(zip(v.shape, x_shape)):
            assert evaluate(d, env) <= n, f"%{v.name} typed {v.type} = {evaluate(d, env)} > input dim {n}"


CONFIGS = [  # (input shape: names are symbolic dims, seed)
    (["n"], 1),
    (["n", 4], 2),
    ([3, "m"], 3),
    (["b", "n", 2], 4),
    ([5, 6], 5),
]


@pytest.mark.parametrize("shape,seed", CONFIGS, ids=lambda c: str(c))
def test_slice_matches_onnxruntime(shape, seed, tmp_path):
    r = np.random.default_rng(seed)
    slices = _slices(r, len(shape), 48)
    model = _model(shape, slices)
    graph = import_onnx(model)
    syms = [d for d in shape if isinstance(d, str)]
    sizes = [dict(zip(syms, c)) for c in itertools.product(SIZES, repeat=len(syms))] if syms else [{}]
    if len(sizes) > 6:
        sizes = [sizes[i] for i in r.choice(len(sizes), 6, replace=False)] + [dict.fromkeys(syms, 1)]
    with _compiled(model, tmp_path, "m", dict.fromkeys(syms, max(SIZES))) as sess:
        for env in sizes:
            x_shape = tuple(env.get(d, d) if isinstance(d, str) else d for d in shape)
            x = np.arange(int(np.prod(x_shape)), dtype=np.float32).reshape(x_shape)
            want = ort_run(model.SerializeToString(), {"x": x})
            _never_larger(graph, env, x_shape)
            _assert_same(run_graph(graph, {"x": x}), want, f"interpreter at {env}")
            _assert_same(sess.run({"x": x}), want, f"compiled at {env}")


def test_negative_start_on_symbolic_dim_is_min():
    """The issue's case: x[n][-3:] has min(n,3) elements, not 3."""
    g = import_onnx(_model(["n"], [([-3], [I64_MAX], None, None), ([0], [1], None, None)]))
    assert [str(v.type) for v in g.outputs] == ["f32[min(n,3)]", "f32[1]"]
    for n in (1, 2, 3, 4):
        x = np.arange(n, dtype=np.float32)
        got = run_graph(g, {"x": x})
        np.testing.assert_array_equal(got["y0"], x[-3:])


def _computed_index_model() -> onnx.ModelProto:
    """Slices whose starts/ends come from Shape(x) - c (computed, so only assumed within the dim), and a
    fixed table sliced by a symbolic end (a rotary cache sliced to seq)."""
    nodes = [helper.make_node("Shape", ["x"], ["sh"]), helper.make_node("Shape", ["t"], ["tsh"])]
    inits = [numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(6, 1), "table"),
             numpy_helper.from_array(np.array([I64_MAX], np.int64), "big"),
             numpy_helper.from_array(np.array([0], np.int64), "zero")]
    outs = []
    for c in (0, 1, 3):
        inits.append(numpy_helper.from_array(np.array([c], np.int64), f"c{c}"))
        nodes.append(helper.make_node("Sub", ["sh", f"c{c}"], [f"nc{c}"]))
        nodes.append(helper.make_node("Slice", ["x", f"nc{c}", "big"], [f"from{c}"]))  # x[n-c:]
        nodes.append(helper.make_node("Slice", ["x", "zero", f"nc{c}"], [f"to{c}"]))  # x[:n-c]
        outs += [f"from{c}", f"to{c}"]
    nodes.append(helper.make_node("Slice", ["table", "zero", "tsh"], ["rows"]))  # table[:len(t)]
    outs.append("rows")
    graph = helper.make_graph(nodes, "computed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"]),
                                                 helper.make_tensor_value_info("t", TensorProto.FLOAT, ["s"])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def test_computed_indices_are_checked_at_run_time(tmp_path):
    """Sizes that keep the computed indices within the dims match ORT; sizes that do not end in a
    one-line error from both the interpreter and the compiled program (ORT would return other shapes)."""
    model = _computed_index_model()
    graph = import_onnx(model)
    seen = set()
    with _compiled(model, tmp_path, "c", {"n": 8, "s": 8}) as sess:
        for n, s in [(4, 3), (3, 6), (2, 2), (1, 1), (5, 7), (8, 8)]:
            feeds = {"x": np.arange(n, dtype=np.float32) + 1, "t": np.zeros(s, np.float32)}
            want = ort_run(model.SerializeToString(), feeds)
            env = {"n": n, "s": s}
            typed = {v.name: tuple(evaluate(d, env) for d in v.shape) for v in graph.outputs}
            fits = all(typed[k] == w.shape for k, w in want.items())
            seen.add(fits)
            if fits:
                _assert_same(run_graph(graph, feeds), want, f"interpreter at {env}")
                _assert_same(sess.run(feeds), want, f"compiled at {env}")
                continue
            with pytest.raises(TccError) as e:
                run_graph(graph, feeds)
            assert "\n" not in str(e.value)
            with pytest.raises(TccError) as e:
                sess.run(feeds)
            assert "compiled for" in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert seen == {True, False}  # both kinds of size were tried


def test_sym_min_max_parse_back_and_bound():
    from tcc.ir.dims import dim_min, parse_dim, upper_bound

    n = Sym.symbol("n")
    d = dim_min(n, 3) + 1
    assert parse_dim(str(d)) == d and evaluate(d, {"n": 1}) == 2 and evaluate(d, {"n": 7}) == 4
    assert upper_bound(d, {"n": 100}) == 4
    assert dim_min(n, n + 2) == n and str(dim_min(n, 3)) == "min(n,3)"
