"""fuse-rope: the rotary embedding of KVAttention's q and k folded into the op (per-position cos/sin
tables), on the committed decoder fixtures run through the pipeline up to the pass; a rotation that does
not match, or no rotation at all, is left as ops and refused with its reason.

Interpreter equality: two generation steps (a 3-token prompt, then 2 tokens reading the cache) give the
same logits before and after; the fused op computes the same f32 rotation from tables evaluated by the
same ops, so the rtol/atol 1e-5 of helpers.F32_TOL holds.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from tcc.ir.interpreter import ProgramState, run_graph
from tcc.ir.ops.kv import ROPE_HALF, ROPE_NONE
from tcc.passes.rewrite_utils import attrs

from ..conftest import MODELS_DIR
from .helpers import F32_TOL, graph_before, refusals, run_pass

CONTEXT = 32  # a small KV cache: the tables have CONTEXT rows


def _upto(fixture: str, name: str):
    """The fixture's graph after the default pipeline's passes before `name`, and its context."""
    return graph_before(os.path.join(MODELS_DIR, fixture, "model.onnx"), name, CONTEXT)


def _kva(g):
    return [n for n in g.nodes if n.op == "KVAttention"]


def _generate(g, steps=((1, 3), (1, 2)), seed=0):
    """Logits of consecutive runs sharing one KV cache (the second step has past > 0)."""
    rng = np.random.default_rng(seed)
    state = ProgramState(g)
    out = []
    for shape in steps:
        feeds = {g.meta["llm"]["input_ids"]: rng.integers(0, 64, shape).astype(np.int64)}
        (logits, *_) = run_graph(g, feeds, state=state).values()
        state.length += shape[1]
        out.append(logits)
    return out


def _assert_same_generation(before, after):
    for a, b in zip(_generate(before), _generate(after)):
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, **F32_TOL)


@pytest.mark.parametrize("fixture,rd", [
    ("llm/llama_past_dynamo", 16),        # rotate-half, Add(Mul(x, cos), Mul(rotate_half(x), sin))
    ("llm_optimum/llama", 16),
    ("llm/llama_past_opset23", 16),       # ONNX RotaryEmbedding op
    ("families/gpt_neox_optimum", 4),     # partial rotary: Concat(rotated Slice, pass-through Slice)
    ("families/phi_optimum", 8),
])
def test_rotary_is_fused_into_kv_attention(fixture, rd):
    g, ctx = _upto(fixture, "fuse-rope")
    assert g.meta["llm"]["kv_cache"] and [attrs(n)["rope"] for n in _kva(g)] == [ROPE_NONE, ROPE_NONE]
    before = g.copy()
    run_pass("fuse-rope", g, ctx)
    assert ctx.stats["fuse-rope"] == 2 and refusals(ctx) == []
    layers = _kva(g)
    assert [(attrs(n)["rope"], attrs(n)["rotary_dim"]) for n in layers] == [(ROPE_HALF, rd)] * 2
    cos, sin = layers[0].inputs[6], layers[0].inputs[7]
    assert all(n.inputs[6] is cos and n.inputs[7] is sin for n in layers)  # one pair of tables for all layers
    assert cos.const.shape == sin.const.shape == (CONTEXT, rd // 2)
    # position 0 does not rotate; every row is a rotation (cos^2 + sin^2 = 1); position 1 rotates pair 0 by 1 rad
    np.testing.assert_allclose(cos.const[0], 1, atol=1e-6)
    np.testing.assert_allclose(sin.const[0], 0, atol=1e-6)
    np.testing.assert_allclose(cos.const ** 2 + sin.const ** 2, 1, atol=1e-5)
    np.testing.assert_allclose([cos.const[1, 0], sin.const[1, 0]], [np.cos(1), np.sin(1)], atol=1e-6)
    for n in layers:  # q and k now enter unrotated
        assert all(v.producer is None or v.producer.op not in ("Add", "Concat", "RotaryEmbedding")
                   for v in n.inputs[:2])
    run_pass("eliminate-dead-code", g, ctx)
    assert not {"Neg", "RotaryEmbedding", "Sin", "Cos"} & set(g.ops())  # the rotary ops died
    _assert_same_generation(before, g)


def _first_neg(g, v, depth=6):
    """The Neg of rotate_half(x) behind a rotated value v (breadth-first over producers)."""
    frontier = [v]
    for _ in range(depth):
        nxt = []
        for x in frontier:
            n = x.producer
            if n is None:
                continue
            if n.op == "Neg":
                return n
            nxt.extend(i for i in n.inputs if i is not None and not i.is_const)
        frontier = nxt
    raise AssertionError("no Neg found")


def test_rotation_that_is_not_a_rotation_is_refused_and_kept():
    """Layer 0's q loses the Neg of its rotate_half: x*cos + [x2, x1]*sin is no rotary embedding, so
    layer 0 keeps its ops (and its meaning), while layer 1 is still fused."""
    g, ctx = _upto("llm/llama_past_dynamo", "fuse-rope")
    l0 = _kva(g)[0]
    neg = _first_neg(g, l0.inputs[0])
    g.replace_uses(neg.output, neg.inputs[0])
    g.remove_nodes([neg])
    before = g.copy()
    run_pass("fuse-rope", g, ctx)
    (msg,) = refusals(ctx)
    assert f"KVAttention {l0.name!r}" in msg and "q: the rotation does not match" in msg, msg
    assert ctx.stats["fuse-rope"] == 1
    assert [attrs(n)["rope"] for n in _kva(g)] == [ROPE_NONE, ROPE_HALF]
    assert len(_kva(g)[0].inputs) == len(_kva(before)[0].inputs)
    _assert_same_generation(before, g)


def test_attention_without_rotary_is_refused_unchanged():
    """GPT-2 has learned positions, no rotation of q and k."""
    g, ctx = _upto("llm/gpt2_past_dynamo", "fuse-rope")
    before = g.copy()
    run_pass("fuse-rope", g, ctx)
    msgs = refusals(ctx)
    assert len(msgs) == 2 and all("q is not a recognized rotary embedding" in m for m in msgs), msgs
    assert ctx.stats["fuse-rope"] == 0
    assert [attrs(n)["rope"] for n in _kva(g)] == [ROPE_NONE] * 2
    assert g.ops() == before.ops()
    _assert_same_generation(before, g)


def test_no_kv_cache_no_op():
    """A decoder without past generates by recomputing: there is no KVAttention to fuse into."""
    g, ctx = _upto("llm/llama_nopast_dynamo", "fuse-rope")
    assert g.meta["llm"].get("recompute")
    ops = g.ops()
    run_pass("fuse-rope", g, ctx)
    assert g.ops() == ops and "fuse-rope" not in ctx.stats
    assert not [m for m in ctx.messages if m.startswith("[fuse-rope]")]
