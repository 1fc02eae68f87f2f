"""Attention variants end to end on small decoders: the optimum LLaMA fixture (2 layers, hidden 64) edited
the way Gemma 2 and MPT export theirs, so the graph forms are the exporters' (see each builder):

  * Gemma 2's attention soft-capping, tanh(scores / c) * c between the scale and the mask -> Attention /
    KVAttention {softcap=c}, and its final_logit_softcapping, the same three ops after the LM head (plain
    elementwise ops: they must survive slice-logits and quantization);
  * MPT's ALiBi, scores + slopes[h] * (j - (Skv - 1)) built from the key length at run time -> KVAttention
    with a slopes input (the kernel computes the bias; no [S, Skv] tensor).

Each compiled program greedy-decodes against ONNX Runtime driving the edited ONNX with its past.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import tcc
from tcc.driver import CompileOptions, optimize

from ..conftest import MODELS_DIR
from .helpers import save_beside
from ..e2e.llm_oracle import OrtDecoder

LLAMA = os.path.join(MODELS_DIR, "llm_optimum", "llama")
HEADS = 4
N_NEW = 40


def _save(m, tmp_path, name: str) -> str:
    return save_beside(m, tmp_path, name, LLAMA)


def _insert_before(m, node, new_nodes):
    at = list(m.graph.node).index(node)
    for i, n in enumerate(new_nodes):
        m.graph.node.insert(at + i, n)


def _softcap_nodes(x: str, c_name: str, out: str, tag: str):
    return [helper.make_node("Div", [x, c_name], [f"{tag}/capdiv"]),
            helper.make_node("Tanh", [f"{tag}/capdiv"], [f"{tag}/captanh"]),
            helper.make_node("Mul", [f"{tag}/captanh", c_name], [out])]


def softcap_model(tmp_path, attn_cap: float | None, logit_cap: float | None) -> str:
    """Gemma 2's forms: scores = MatMul(q, kT) (scale folded into q and k by optimum's LLaMA export);
    capped = Mul(Tanh(Div(scores, c)), c); then the mask Add. Logits: Mul(Tanh(Div(logits, c)), c)."""
    m = onnx.load(os.path.join(LLAMA, "model.onnx"))
    if attn_cap is not None:
        m.graph.initializer.append(numpy_helper.from_array(np.array(attn_cap, np.float32), "attn_cap"))
        for layer in range(2):
            (add,) = [n for n in m.graph.node if n.name == f"/model/layers.{layer}/self_attn/Add_2"]
            scores = add.input[0]
            capped = f"/model/layers.{layer}/self_attn/capped"
            _insert_before(m, add, _softcap_nodes(scores, "attn_cap", capped, f"l{layer}"))
            add.input[0] = capped
    if logit_cap is not None:
        m.graph.initializer.append(numpy_helper.from_array(np.array(logit_cap, np.float32), "logit_cap"))
        (head,) = [n for n in m.graph.node if n.name == "/lm_head/MatMul"]
        head.output[0] = "raw_logits"
        m.graph.node.extend(_softcap_nodes("raw_logits", "logit_cap", "logits", "final"))
    return _save(m, tmp_path, f"softcap_{attn_cap}_{logit_cap}")


def alibi_model(tmp_path, square: bool = False) -> str:
    """MPT's form: bias[h, j] = slope[h] * (j - (Skv - 1)), j = Range(0, Skv) with Skv read from the scores'
    shape at run time, added to the scores before the causal mask (slopes 2^-8i/H, as MPT's)."""
    m = onnx.load(os.path.join(LLAMA, "model.onnx"))
    slopes = (2.0 ** (-8.0 * np.arange(1, HEADS + 1) / HEADS)).astype(np.float32).reshape(1, HEADS, 1, 1)
    m.graph.initializer.extend([
        numpy_helper.from_array(slopes, "alibi_slopes"),
        numpy_helper.from_array(np.array([3], np.int64), "dim3"),
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array(1, np.int64), "one")])
    for layer in range(2):
        (add,) = [n for n in m.graph.node if n.name == f"/model/layers.{layer}/self_attn/Add_2"]
        scores, t = add.input[0], f"l{layer}/alibi"
        nodes = [helper.make_node("Shape", [scores], [f"{t}/shape"]),
                 helper.make_node("Gather", [f"{t}/shape", "dim3"], [f"{t}/skv1"], axis=0),
                 helper.make_node("Squeeze", [f"{t}/skv1"], [f"{t}/skv"]),
                 helper.make_node("Range", ["zero", f"{t}/skv", "one"], [f"{t}/j"]),
                 helper.make_node("Sub", [f"{t}/skv", "one"], [f"{t}/last"]),
                 helper.make_node("Sub", [f"{t}/j", f"{t}/last"], [f"{t}/rel"]),
                 helper.make_node("Cast", [f"{t}/rel"], [f"{t}/relf0"], to=onnx.TensorProto.FLOAT),
                 helper.make_node("Mul" if square else "Identity",
                                  [f"{t}/relf0", f"{t}/relf0"] if square else [f"{t}/relf0"], [f"{t}/relf"]),
                 helper.make_node("Mul", ["alibi_slopes", f"{t}/relf"], [f"{t}/bias"]),
                 helper.make_node("Add", [scores, f"{t}/bias"], [f"{t}/biased"])]
        _insert_before(m, add, nodes)
        add.input[0] = f"{t}/biased"
    return _save(m, tmp_path, "alibi_square" if square else "alibi")


def _greedy_check(path, out, prompt, n_new, **opts):
    manifest = tcc.compile(path, out, require_kv_cache=True, **opts)
    want, want_logits = OrtDecoder(path).greedy(prompt, n_new)
    g = tcc.load(out).generate(prompt, max_new_tokens=n_new, temperature=0, repetition_penalty=1.0,
                               keep_logits=True, eos_ids=set())
    return manifest, want, want_logits, g


PROMPT = [1, 17, 42, 99, 5, 63, 23, 7, 88, 31, 2, 54]


def test_attention_softcap_is_a_kvattention_attribute_and_exact(tmp_path):
    path = softcap_model(tmp_path, 0.5, None)  # |scores| reach ~2 here: the cap changes the logits
    graph, _, _ = optimize(path, CompileOptions(require_kv_cache=True))
    kvas = [n for n in graph.nodes if n.op == "KVAttention"]
    assert len(kvas) == 2 and all(n.attrs["softcap"] == pytest.approx(0.5) for n in kvas)
    assert "Tanh" not in graph.ops()
    manifest, want, want_logits, g = _greedy_check(path, str(tmp_path / "art"), PROMPT, N_NEW)
    assert g.tokens == want
    for step, (a, b) in enumerate(zip(g.step_logits, want_logits)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg=f"step {step}")
    uncapped = OrtDecoder(os.path.join(LLAMA, "model.onnx")).greedy(PROMPT, 1)[1][0]
    assert np.abs(uncapped - want_logits[0]).max() > 1e-2  # the cap is not a no-op here


def test_final_logit_softcap_survives_slice_logits_and_quantization(tmp_path):
    """final_logit_softcapping (c = 2: the raw logits reach ~4, so the cap binds and a dropped Tanh shows,
    yet tanh does not saturate into ties): exact at fp32 with
    slice-logits (generate computes the last row only); under w8a8 every logit stays within the cap and
    the logits keep their direction (cosine > 0.99 with ONNX Runtime's)."""
    cap = 2.0
    path = softcap_model(tmp_path, None, cap)
    manifest, want, want_logits, g = _greedy_check(path, str(tmp_path / "fp32"), PROMPT, 8)
    assert g.tokens == want
    for a, b in zip(g.step_logits, want_logits):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert max(np.abs(b).max() for b in want_logits) > 0.9 * cap  # the cap binds
    out = str(tmp_path / "w8a8")
    tcc.compile(path, out, require_kv_cache=True, qm="w8a8", round_to_nearest=True)
    q = tcc.load(out).generate(PROMPT, max_new_tokens=8, temperature=0, repetition_penalty=1.0,
                               keep_logits=True, eos_ids=set())
    for a, b in zip(q.step_logits, want_logits):
        assert np.abs(a).max() <= cap * (1 + 1e-6)
        assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.99


def test_alibi_is_computed_in_the_kernel_and_exact(tmp_path):
    path = alibi_model(tmp_path)
    graph, _, _ = optimize(path, CompileOptions(require_kv_cache=True))
    kvas = [n for n in graph.nodes if n.op == "KVAttention"]
    assert len(kvas) == 2
    want_slopes = (2.0 ** (-8.0 * np.arange(1, HEADS + 1) / HEADS)).astype(np.float32)
    for n in kvas:
        np.testing.assert_allclose(n.input(8).const, want_slopes, rtol=1e-6)
    # no [.., S, Skv] bias tensor is left: the only Range/Mul work is gone with the mask
    assert "Range" not in graph.ops() and "Where" not in graph.ops()
    manifest, want, want_logits, g = _greedy_check(path, str(tmp_path / "art"), PROMPT, 100)
    assert g.tokens == want
    for step, (a, b) in enumerate(zip(g.step_logits, want_logits)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg=f"step {step}")


def test_a_bias_that_is_not_alibi_is_refused_and_named(tmp_path, capsys):
    """slope * (j - i)^2 is no ALiBi: no KV cache, and the one-line warning says why."""
    graph, _, _ = optimize(alibi_model(tmp_path, square=True), CompileOptions())
    assert not graph.meta["llm"].get("kv_cache")
    assert "not a per-head slope times the key's distance" in graph.meta["llm"]["kv_cache_refused"]
    assert "not a per-head slope" in capsys.readouterr().err
