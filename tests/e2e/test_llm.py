"""Exported LLM decoders end to end: compile (x86, fp32), generate, and compare with ONNX Runtime.

Fixtures: tests/models/llm/*/ (torch.onnx.export, dynamo and TorchScript, with and without past, opset 23)
and tests/models/llm_optimum/*/ (optimum's text-generation-with-past), each with its fixture.json.

Per fixture (one test, so the model is compiled once per worker):
  * greedy decoding of 32 new tokens equals greedy decoding driven through ONNX Runtime on the original
    ONNX, token for token, and the last-position logits agree at every step;
  * the passes fire: one KVAttention per layer with the rotary embedding fused (with past), or one
    causal Attention per layer (without past); no decomposed attention (Softmax) remains;
  * (with past) a second chat turn on the kept KV cache gives the same tokens as re-running the whole
    conversation from an empty cache.
Logit tolerance: fp32 end to end, as tests/e2e/test_models.py: the kernels sum in another order than
ONNX Runtime and use vectorized exp (<= 2e-6 relative), giving ~1e-6 absolute on O(1-10) logits after a
2-layer model; 1e-4 leaves two orders of headroom while any wrong mask, position or rotation changes logits
by O(1). The fixtures keep top-1/top-2 gaps >= 1e-3 along these greedy runs, so the argmax is stable.
"""
from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest

import tcc
from tcc.errors import RuntimeFeedError, TccError
from tests.conftest import MODELS_DIR
from tests.e2e.llm_oracle import OrtDecoder

ATOL = RTOL = 1e-4
N_NEW = 32
CONTEXT = 96


def _fixtures() -> list[tuple[str, str, dict]]:
    out = []
    for meta_path in sorted(glob.glob(os.path.join(MODELS_DIR, "llm*", "*", "fixture.json"))):
        with open(meta_path) as f:
            meta = json.load(f)
        folder = os.path.dirname(meta_path)
        out.append((meta.get("name", os.path.basename(folder)), os.path.join(folder, "model.onnx"), meta))
    return out


FIXTURES = _fixtures()
IDS = [name for name, _, _ in FIXTURES]


def _prompt(meta: dict) -> list[int]:
    greedy = meta.get("greedy") or meta.get("greedy_reference") or {}
    prompts = greedy.get("prompt_ids") or greedy.get("prompts") or [[5, 17, 99, 3, 42]]
    p = prompts[0] if isinstance(prompts[0], list) else prompts
    return [int(t) for t in p][:12]


def _compile(path: str, out: str, **kw) -> dict:
    return tcc.compile(path, out, max_context=CONTEXT, **kw)


@pytest.mark.parametrize("name,path,meta", FIXTURES, ids=IDS)
def test_llm_greedy_matches_onnxruntime(name, path, meta, artifact_dir):
    out = str(artifact_dir / name)
    manifest = _compile(path, out)
    llm = manifest["llm"]
    with_past = meta.get("form", "past") == "past"
    layers = int(meta.get("expected_attention") or meta["config"]["layers"])
    ops = manifest["ops"]
    assert "Softmax" not in ops, f"decomposed attention remains: {ops}"
    if with_past:
        assert llm["kv_cache"], llm.get("kv_cache_refused")
        assert ops.get("KVAttention") == layers, ops
        assert "Attention" not in ops
    else:
        assert llm.get("recompute") and ops.get("Attention") == layers, ops

    sess = tcc.load(out)
    prompt = _prompt(meta)
    want, want_logits = OrtDecoder(path).greedy(prompt, N_NEW)
    g = sess.generate(prompt, max_new_tokens=N_NEW, temperature=0, repetition_penalty=1.0, keep_logits=True,
                      eos_ids=set())
    assert g.tokens == want, f"{name}: tcc {g.tokens} vs onnxruntime {want}"
    for step, (a, b) in enumerate(zip(g.step_logits, want_logits)):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg=f"{name} step {step}")

    if with_past:
        # Turn 2 on the kept cache == the whole conversation from an empty cache.
        history = list(sess.generator.context)
        turn2 = [7, 8, 9]
        kept = sess.generate(turn2, max_new_tokens=8, temperature=0, repetition_penalty=1.0, keep_context=True,
                             eos_ids=set())
        fresh = sess.generate(history + turn2, max_new_tokens=8, temperature=0, repetition_penalty=1.0,
                              eos_ids=set())
        assert kept.tokens == fresh.tokens


def _rope_fixture() -> tuple[str, str, dict]:
    for f in FIXTURES:
        if f[0] == "llama_past_dynamo":
            return f
    pytest.skip("no rotary decoder with past among the fixtures")


PAST = [(f, f[0]) for f in FIXTURES if f[2].get("form") == "past"]


@pytest.mark.parametrize("name,path,meta", [p for p, _ in PAST], ids=[i for _, i in PAST])
def test_rotary_is_fused_into_kv_attention(name, path, meta):
    from tcc.driver import CompileOptions, optimize

    g, ctx, _ = optimize(path, CompileOptions(pipeline="optimize", max_context=CONTEXT))
    kv = [n for n in g.nodes if n.op == "KVAttention"]
    want = {"none": 0, "half": 1, "interleaved": 2}[meta.get("config", {}).get("rope", "half")]
    assert kv and [n.attrs.get("rope", 0) for n in kv] == [want] * len(kv), [m for m in ctx.messages if "rope" in m]


def test_generation_errors(artifact_dir):
    name, path, meta = _rope_fixture()
    out = str(artifact_dir / (name + "-errors"))
    tcc.compile(path, out, max_context=24)
    sess = tcc.load(out)
    vocab = sess.manifest["llm"]["vocab"]
    with pytest.raises(RuntimeFeedError, match="empty prompt"):
        sess.generate([], max_new_tokens=2)
    with pytest.raises(RuntimeFeedError, match=f"token id {vocab} at position 1 is out of range for the vocabulary of {vocab}"):
        sess.generate([1, vocab], max_new_tokens=2)
    with pytest.raises(RuntimeFeedError, match=r"10 prompt tokens \+ max_new_tokens 20 = 30 exceed the model's context of 24"):
        sess.generate(list(range(1, 11)), max_new_tokens=20)
    # the C program checks too: 20 cached + 10 new tokens
    sess.generate(list(range(1, 21)), max_new_tokens=0)
    with pytest.raises(TccError, match="context overflow: 20 cached \\+ 10 new tokens exceed the context of 24"):
        sess.run({"input_ids": np.ones((1, 10), np.int64)})
    sess.reset()
    assert sess.generate([1, 2, 3], max_new_tokens=4, temperature=0).tokens  # usable after the errors


def test_ir_dump_shows_the_kv_cache(tmp_path):
    name, path, meta = _rope_fixture()
    from tcc.driver import CompileOptions, optimize

    optimize(path, CompileOptions(dump_ir=str(tmp_path), max_context=CONTEXT))
    dumps = sorted(os.listdir(tmp_path))
    final = open(tmp_path / [d for d in dumps if d.endswith("plan-memory.tir")][0]).read()
    assert "= state" in final and "KVAttention(" in final and "rope=" in final
    assert "plan: states (KV cache)" in final


def test_chat_binary_matches_python(artifact_dir):
    """The standalone chat binary (C++ tokenizer, shared sampler) picks the same tokens as Python, for a
    raw prompt and for a templated chat turn, with sampling (not only greedy)."""
    import subprocess

    name, path, meta = _rope_fixture()
    out = str(artifact_dir / (name + "-chat"))
    manifest = tcc.compile(path, out, max_context=CONTEXT)
    assert manifest["binaries"] == {"run": "run", "chat": "chat"}
    sess = tcc.load(out)

    def binary(*args):
        r = subprocess.run([os.path.join(out, "chat"), *args, "--print-ids", "--max-new-tokens", "12"],
                           capture_output=True, text=True, errors="replace", timeout=120)
        assert r.returncode == 0, r.stderr
        line = next(ln for ln in r.stderr.splitlines() if ln.startswith("ids: "))
        prompt, gen = line[5:].split("|")
        return [int(t) for t in prompt.split()], [int(t) for t in gen.split()]

    g = sess.generate("The meaning of life is", max_new_tokens=12, seed=7)
    assert binary("--raw", "--prompt", "The meaning of life is", "--seed", "7") == (g.prompt_tokens, g.tokens)
    sess.reset()
    c = sess.chat("Hi there", max_new_tokens=12, seed=3)
    assert binary("--prompt", "Hi there", "--seed", "3") == (c.prompt_tokens, c.tokens)


def test_cli_generate(artifact_dir):
    import subprocess
    import sys

    name, path, meta = _rope_fixture()
    out = str(artifact_dir / (name + "-cli"))
    tcc.compile(path, out, max_context=CONTEXT)
    r = subprocess.run([sys.executable, "-m", "tcc.cli", "generate", out, "--prompt", "The meaning of life is",
                        "--temperature", "0", "--max-new-tokens", "8", "--ids"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    want = tcc.load(out).generate("The meaning of life is", max_new_tokens=8, temperature=0)
    assert r.stdout.split() == [str(t) for t in want.tokens]
    assert "tok/s" in r.stderr
    r = subprocess.run([sys.executable, "-m", "tcc.cli", "generate", out, "--prompt", ""], capture_output=True,
                       text=True)
    assert r.returncode != 0 and r.stderr.strip().startswith("tcc: error: empty prompt")


def test_cli_run_repeats_a_prefill_from_an_empty_cache(artifact_dir, tmp_path):
    """`tcc run --random --repeat R --profile` on a KV-cache model times the same prefill R times (plus the
    profile's warm-up run): each run starts from an empty cache instead of overflowing the context."""
    import subprocess
    import sys

    name, path, meta = _rope_fixture()
    out = str(artifact_dir / (name + "-run"))
    tcc.compile(path, out, max_context=CONTEXT)
    seq = CONTEXT // 2 + 1  # two runs in one cache would overflow it
    r = subprocess.run([sys.executable, "-m", "tcc.cli", "run", out, "--random", "--dim", f"seq={seq}", "--repeat", "3",
                        "--profile", "-o", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "(mean of 3)" in r.stdout and "profile:" in r.stdout and "KVAttention" in r.stdout
    logits = np.load(tmp_path / "logits.npy")
    assert logits.shape[1] == seq and np.isfinite(logits).all()


def test_bad_llm_inputs(artifact_dir):
    """Malformed input to the new entry points: one-line errors, never a traceback."""
    import subprocess
    import sys

    name, path, meta = _rope_fixture()
    with pytest.raises(TccError, match="--tokenizer /nonexistent/tok: no such file or directory"):
        tcc.compile(path, str(artifact_dir / "bad-tok"), tokenizer="/nonexistent/tok")
    mlp = str(artifact_dir / "mlp-not-llm")
    tcc.compile(os.path.join(MODELS_DIR, "mlp.onnx"), mlp)
    with pytest.raises(TccError, match="is not a language-model program"):
        tcc.load(mlp).generate([1, 2], max_new_tokens=1)
    r = subprocess.run([sys.executable, "-m", "tcc.cli", "generate", mlp, "--prompt", "hi"], capture_output=True,
                       text=True)
    assert r.returncode != 0 and r.stderr.startswith("tcc: error: ") and "Traceback" not in r.stderr
