"""Decoder families as users export them, end to end: compile with --require-kv-cache (fp32, x86), greedy-decode
32 tokens, and compare with ONNX Runtime driving the original ONNX with its past.

Fixtures: tests/models/families/<arch>_<exporter>/ (see the README there): 17 architectures, each exported by
optimum and by the dynamo exporter with transformers' default attention (sdpa at opset 18; LLaMA also at
opsets 20 and 23; MPT, Bloom and Gemma 2, which have no sdpa in transformers, with eager attention), plus
TorchScript for LLaMA, Mistral and Gemma 2 and dynamo with eager attention for LLaMA and Mistral.
One test per fixture, so each model is compiled once:
  * the KV cache is made (manifest llm.kv_cache, one KVAttention per layer, no Softmax left);
  * the greedy tokens equal ONNX Runtime's, and the last-position logits agree at every step (tolerance as in
    tests/e2e/test_llm.py: fp32 end to end, ~1e-6 expected, 1e-4 leaves two orders of headroom while a wrong
    mask, position or rotation moves logits by O(1));
  * Mistral's prompt (12 tokens) + 32 new tokens run well past its 16-token window.
Fixtures that need something tcc does not do yet are xfail(strict=True) with the reason (WAITING): they fail
loudly (XPASS) the day it lands, and the entry must then go.
"""
from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest

import tcc
from tests.conftest import MODELS_DIR
from tests.e2e.llm_oracle import OrtDecoder

ATOL = RTOL = 1e-4
N_NEW = 32
CONTEXT = 64

# fixture -> what it waits for. Sliding window (Mistral), ALiBi (MPT, Bloom) and soft-capping (Gemma 2) pass
# with the KV cache; MPT's dynamo export still stops at import.
WAITING: dict[str, str] = {}


def _fixtures() -> list:
    out = []
    for meta_path in sorted(glob.glob(os.path.join(MODELS_DIR, "families", "*", "fixture.json"))):
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        path = os.path.join(os.path.dirname(meta_path), "model.onnx")
        marks = []
        if meta["name"] in WAITING:
            marks.append(pytest.mark.xfail(strict=True, reason=f"waits for {WAITING[meta['name']]}"))
        out.append(pytest.param(meta["name"], path, meta, id=meta["name"], marks=marks))
    return out


FIXTURES = _fixtures()


def test_fixtures_are_present():
    # a glob that finds nothing would make this module pass vacuously
    assert len({p.values[2]["arch"] for p in FIXTURES}) == 17 and len(FIXTURES) >= 17 * 2


@pytest.mark.parametrize("name,path,meta", FIXTURES)
def test_family_greedy_matches_onnxruntime_with_kv_cache(name, path, meta, artifact_dir):
    out = str(artifact_dir / ("family-" + name))
    manifest = tcc.compile(path, out, max_context=CONTEXT, require_kv_cache=True)
    llm, ops = manifest["llm"], manifest["ops"]
    assert llm["kv_cache"], llm.get("kv_cache_refused")
    assert ops.get("KVAttention") == meta["layers"], ops
    assert "Softmax" not in ops and "Attention" not in ops, ops

    prompt = [int(t) for t in meta["prompt_ids"]]
    if meta.get("sliding_window"):
        assert len(prompt) + N_NEW > 2 * meta["sliding_window"]  # decodes well past the window
    want, want_logits = OrtDecoder(path).greedy(prompt, N_NEW)
    assert want == meta["verification"]["greedy_tokens"][:N_NEW]  # the committed ONNX is the one verified
    sess = tcc.load(out)
    g = sess.generate(prompt, max_new_tokens=N_NEW, temperature=0, repetition_penalty=1.0, keep_logits=True,
                      eos_ids=set())
    assert g.tokens == want, f"{name}: tcc {g.tokens} vs onnxruntime {want}"
    for step, (a, b) in enumerate(zip(g.step_logits, want_logits)):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg=f"{name} step {step}")


# -- the import fixes the dynamo exports need (small hand-built graphs, checked against ONNX Runtime) --------

def _decoder_graph(nodes, extra_inits=()):
    """input_ids [batch, seq] i64, attention_mask [batch, s53] i64 (the dynamo exporter's fresh symbol) and
    past_key_values.0.key [batch, 2, past_seq, 4] -> y."""
    from onnx import TensorProto, helper

    ins = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
           helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "s53"]),
           helper.make_tensor_value_info("past_key_values.0.key", TensorProto.FLOAT, ["batch", 2, "past_seq", 4])]
    out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    g = helper.make_graph(nodes, "g", ins, out, initializer=list(extra_inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def _feeds(batch, past, seq):
    rng = np.random.default_rng(batch * 100 + past * 10 + seq)
    return {"input_ids": rng.integers(0, 9, (batch, seq)).astype(np.int64),
            "attention_mask": np.ones((batch, past + seq), np.int64),
            "past_key_values.0.key": rng.standard_normal((batch, 2, past, 4)).astype(np.float32)}


def _check_against_ort(model):
    import onnxruntime as ort

    from tcc.frontend.onnx_import import import_onnx
    from tcc.ir.interpreter import run_graph

    g = import_onnx(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for b, p, s in [(1, 0, 3), (2, 5, 1), (1, 7, 4)]:
        feeds = _feeds(b, p, s)
        want = sess.run(None, feeds)[0]
        got = run_graph(g, feeds)["y"]
        np.testing.assert_array_equal(got, want)
    return g


def test_anonymous_mask_length_is_past_plus_seq():
    """OPT's positions: cumsum(mask)[:, past_seq:] added to a [batch, seq] tensor. With the mask length a
    symbol of its own, [batch, max(s53-past_seq, 0)] could not meet [batch, seq]."""
    from onnx import helper, numpy_helper

    inits = [numpy_helper.from_array(np.array([2], np.int64), "two"),
             numpy_helper.from_array(np.array([3], np.int64), "three"),
             numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([2**63 - 1], np.int64), "big")]
    nodes = [helper.make_node("Shape", ["past_key_values.0.key"], ["shp"]),
             helper.make_node("Slice", ["shp", "two", "three"], ["past_len"]),
             helper.make_node("CumSum", ["attention_mask", "one_scalar"], ["cs"]),
             helper.make_node("Constant", [], ["one_scalar"], value=numpy_helper.from_array(np.array(1, np.int64))),
             helper.make_node("Slice", ["cs", "past_len", "big", "one"], ["pos"]),
             helper.make_node("Add", ["pos", "input_ids"], ["sum"]),
             helper.make_node("Cast", ["sum"], ["y"], to=1)]
    nodes.insert(2, nodes.pop(3))  # the Constant before its use
    g = _check_against_ort(_decoder_graph(nodes, inits))
    mask = next(v for v in g.inputs if v.name == "attention_mask")
    assert str(mask.shape[1]) in ("past_seq+seq", "seq+past_seq")


def test_max_of_symbolic_shape_values_folds():
    """MPT's ALiBi slice: start = max(1 - (seq + past_seq + seq), 0) on an axis of 1, from Max of shape values."""
    from onnx import helper, numpy_helper

    table = np.arange(1 * 1 * 6, dtype=np.float32).reshape(1, 1, 6)
    inits = [numpy_helper.from_array(table, "table"),
             numpy_helper.from_array(np.array(1, np.int64), "c1"),
             numpy_helper.from_array(np.array(0, np.int64), "c0"),
             numpy_helper.from_array(np.array([-1], np.int64), "flat"),
             numpy_helper.from_array(np.array([2**63 - 1], np.int64), "big"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    nodes = [helper.make_node("Shape", ["input_ids"], ["sq"], start=1, end=2),
             helper.make_node("Squeeze", ["sq"], ["s"]),
             helper.make_node("Add", ["s", "s"], ["q"]),
             helper.make_node("Sub", ["c1", "q"], ["d"]),
             helper.make_node("Max", ["d", "c0"], ["start0"]),
             helper.make_node("Reshape", ["start0", "flat"], ["start"]),
             helper.make_node("Slice", ["table", "start", "big", "axis1"], ["y"])]
    g = _check_against_ort(_decoder_graph(nodes, inits))
    assert next(v for v in g.outputs).shape == (1, 1, 6)
