"""fold-layout-roundtrips: Reshape/Transpose chains that are the identity or a permutation of their input
collapse (to nothing, or one Transpose); every other chain is left exactly as it was.

Before/after: each case runs the pass, then dead-code elimination, and checks the interpreter gives the same
outputs at several symbol bindings (bit-exact data movement: the tolerance of helpers.check_pass is moot).
"""
from __future__ import annotations

import numpy as np
import pytest

from tcc.ir.core import Graph
from tcc.passes.pipelines import PIPELINES

from .helpers import S, check_pass, run_pass, t

ENVS = [{"b": 1, "T": 1}, {"b": 2, "T": 5}, {"b": 3, "T": 8}]


def shape(*dims):
    return np.array([S(d) if isinstance(d, str) else d for d in dims], dtype=object)


def reshape(g, x, *dims):
    return g.add_node("Reshape", [x, g.add_const(shape(*dims))]).output


def transpose(g, x, perm):
    return g.add_node("Transpose", [x], {"perm": list(perm)}).output


def fold(g, envs=ENVS):
    ctx = check_pass("fold-layout-roundtrips", g, envs)
    run_pass("eliminate-dead-code", g)
    return ctx


def sdpa_key(g, x):
    """The dynamo exporter's K^T for scaled_dot_product_attention: [b,4,T,16] -> [4b,T,16] -> [4b,16,T]
    -> [b,4,16,T], then the Transpose that takes K back."""
    k = reshape(g, x, -1, "T", 16)
    k = transpose(g, k, (0, 2, 1))
    k = reshape(g, k, "b", 4, 16, "T")
    return transpose(g, k, (0, 1, 3, 2))


def test_dynamo_sdpa_key_round_trip_is_the_identity():
    g = Graph()
    x = g.add_input("present", t("f32", "b", 4, "T", 16))
    g.outputs = [g.add_node("Relu", [sdpa_key(g, x)], out_names=["y"]).output]
    ctx = fold(g)
    assert g.ops() == {"Relu": 1}
    assert g.nodes[0].inputs[0] is x
    assert ctx.stats["fold-layout-roundtrips"] == 1


def test_key_transposed_for_the_score_matmul_becomes_one_transpose():
    """Without the last Transpose the chain is x with its last two axes swapped: one Transpose."""
    g = Graph()
    x = g.add_input("present", t("f32", "b", 4, "T", 16))
    k = reshape(g, x, -1, "T", 16)
    k = transpose(g, k, (0, 2, 1))
    k = reshape(g, k, "b", 4, 16, "T")
    g.outputs = [g.add_node("Relu", [k], out_names=["y"]).output]
    fold(g)
    assert g.ops() == {"Transpose": 1, "Relu": 1}
    (tr,) = [n for n in g.nodes if n.op == "Transpose"]
    assert tr.inputs[0] is x and tr.attrs["perm"] == [0, 1, 3, 2]


def test_static_split_and_merge_back_is_a_permutation():
    """[b,T,64] -> [b,T,4,16] -> heads first -> back -> merged: a static axis split into parts and rejoined."""
    g = Graph()
    x = g.add_input("x", t("f32", "b", "T", 64))
    h = transpose(g, reshape(g, x, "b", "T", 4, 16), (0, 2, 1, 3))
    h = reshape(g, transpose(g, h, (0, 2, 1, 3)), "b", "T", 64)
    y = transpose(g, h, (1, 0, 2))
    g.outputs = [g.add_node("Relu", [y], out_names=["y"]).output]
    fold(g)
    assert g.ops() == {"Transpose": 1, "Relu": 1}
    (tr,) = [n for n in g.nodes if n.op == "Transpose"]
    assert tr.inputs[0] is x and tr.attrs["perm"] == [1, 0, 2]


def test_size_one_axes_dropped_and_restored():
    g = Graph()
    x = g.add_input("x", t("f32", "b", 1, "T", 16))
    y = reshape(g, transpose(g, x, (0, 2, 1, 3)), "b", "T", 16)
    y = transpose(g, reshape(g, y, "b", "T", 1, 16), (0, 2, 1, 3))
    g.outputs = [g.add_node("Relu", [y], out_names=["y"]).output]
    fold(g)
    assert g.ops() == {"Relu": 1}


@pytest.mark.parametrize("case", ["interleave", "reinterpret", "merge_heads", "symbolic_split"])
def test_chains_that_move_data_are_left_alone(case):
    g = Graph()
    if case == "interleave":  # [2,6,5] -> [2,2,3,5] -> swap the split parts -> [2,6,5]: rows reordered
        x = g.add_input("x", t("f32", 2, 6, 5))
        y = reshape(g, transpose(g, reshape(g, x, 2, 2, 3, 5), (0, 2, 1, 3)), 2, 6, 5)
        envs = [{}]
    elif case == "reinterpret":  # [b,4,16] read as [b,16,4]: same bytes, different axes
        x = g.add_input("x", t("f32", "b", 4, 16))
        y = reshape(g, reshape(g, x, "b", 64), "b", 16, 4)
        envs = ENVS
    elif case == "merge_heads":  # the usual [b,H,T,D] -> [b,T,H*D]
        x = g.add_input("x", t("f32", "b", 4, "T", 16))
        y = reshape(g, transpose(g, x, (0, 2, 1, 3)), "b", "T", 64)
        envs = ENVS
    else:  # a symbolic dim split: not followed, so not folded (even though this one is the identity)
        x = g.add_input("x", t("f32", "b", 8))
        y = reshape(g, transpose(g, reshape(g, x, "b", 2, 4), (0, 1, 2)), "b", 8)
        envs = ENVS
    g.outputs = [g.add_node("Relu", [y], out_names=["y"]).output]
    ops = g.ops()
    ctx = fold(g, envs)
    if case != "symbolic_split":
        assert g.ops() == ops
        assert ctx.stats["fold-layout-roundtrips"] == 0


def test_intermediate_with_another_consumer_is_kept():
    g = Graph()
    x = g.add_input("present", t("f32", "b", 4, "T", 16))
    k = reshape(g, x, -1, "T", 16)
    kt = transpose(g, k, (0, 2, 1))
    k = transpose(g, reshape(g, kt, "b", 4, 16, "T"), (0, 1, 3, 2))
    g.outputs = [g.add_node("Relu", [k], out_names=["y"]).output,
                 g.add_node("Neg", [kt], out_names=["z"]).output]
    fold(g)
    relu = next(n for n in g.nodes if n.op == "Relu")
    assert relu.inputs[0] is x
    assert g.ops()["Neg"] == 1 and g.ops()["Reshape"] == 1 and g.ops()["Transpose"] == 1


def test_runs_before_fuse_attention_in_the_default_pipeline():
    for name in ("default", "optimize"):
        p = PIPELINES[name]
        assert "fold-layout-roundtrips" in p
        assert p.index("fold-layout-roundtrips") < p.index("fuse-attention")


def test_empty_static_dim_is_left_alone():
    g = Graph()
    x = g.add_input("x", t("f32", 0, 4, 6))
    y = reshape(g, transpose(g, reshape(g, x, 0, 24), (1, 0)), 24, 0)
    g.outputs = [g.add_node("Relu", [y], out_names=["y"]).output]
    ops = g.ops()
    ctx = fold(g, [{}])
    assert g.ops() == ops and ctx.stats["fold-layout-roundtrips"] == 0
