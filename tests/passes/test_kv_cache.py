"""kv-cache: a refused KV cache is named at the default verbosity (node and reason), and is an error with
--require-kv-cache."""
from __future__ import annotations

import os
import shutil

import numpy as np
import onnx
import pytest

from tcc.cli import main
from tcc.driver import CompileOptions, optimize
from tcc.errors import TccError, UnsupportedError

from ..conftest import MODELS_DIR
from .helpers import save_beside

LLAMA = os.path.join(MODELS_DIR, "llm_optimum", "llama")


def _inverted_mask_model(tmp_path) -> str:
    """The optimum LLaMA fixture with layer 1's mask inverted (Where(causal, -inf, 0)): valid ONNX, but
    not the causal mask a KV cache computes."""
    m = onnx.load(os.path.join(LLAMA, "model.onnx"))
    (where,) = [n for n in m.graph.node if n.name == "/model/layers.1/self_attn/Where_2"]
    where.input[1], where.input[2] = where.input[2], where.input[1]
    return save_beside(m, tmp_path, "inverted", LLAMA)


def _warnings(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("tcc: warning: no KV cache")]


def test_fixture_gets_its_kv_cache_without_warning(capsys):
    graph, _, _ = optimize(os.path.join(LLAMA, "model.onnx"), CompileOptions(require_kv_cache=True))
    assert graph.meta["llm"]["kv_cache"]
    assert _warnings(capsys.readouterr().err) == []


def test_refusal_warns_in_one_line_naming_the_node(tmp_path, capsys):
    graph, _, _ = optimize(_inverted_mask_model(tmp_path), CompileOptions())
    llm = graph.meta["llm"]
    assert not llm.get("kv_cache")
    (line,) = _warnings(capsys.readouterr().err)
    assert "Attention '" in line and "layers.1" in line, line
    assert "is not causal for generation inputs" in line, line
    assert llm["kv_cache_refused"] in line and "--require-kv-cache" in line


def test_require_kv_cache_is_an_error(tmp_path, capsys):
    model = _inverted_mask_model(tmp_path)
    with pytest.raises(UnsupportedError, match=r"no KV cache for this decoder: Attention '.*layers\.1.*'"):
        optimize(model, CompileOptions(require_kv_cache=True))
    capsys.readouterr()
    assert main(["compile", model, "-o", str(tmp_path / "out"), "--require-kv-cache", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tcc: error: no KV cache for this decoder: Attention '"), err
    assert not (tmp_path / "out").exists()


def test_max_dim_aliases_name_the_exporters_dims():
    """optimum names the dims sequence_length / batch_size: --max-dim seq=... and batch=... reach them (and
    count as explicit bounds: the KV cache is allocated for batch 2, not the default 1)."""
    opts = CompileOptions(max_dims={"seq": 16, "batch": 2})
    graph, ctx, _ = optimize(os.path.join(LLAMA, "model.onnx"), opts)
    assert graph.meta["llm"]["kv_cache"]
    assert ctx.symbol_bounds["sequence_length"] == 16 and ctx.symbol_bounds["batch_size"] == 2
    assert set(ctx.options["explicit_bounds"]) == {"sequence_length", "batch_size"}
    with pytest.raises(TccError, match="unknown dim.* tokens; the model's dynamic dims are batch_size, "
                                       "past_sequence_length, sequence_length"):
        optimize(os.path.join(LLAMA, "model.onnx"), CompileOptions(max_dims={"tokens": 16}))


def _sliding_window_model(tmp_path, window: int) -> str:
    """The optimum LLaMA fixture with transformers' sliding-window overlay on its mask (Mistral's:
    key j is kept only when j > i - window): And(causal & padding, kv_idx > q_idx - window)."""
    from onnx import helper, numpy_helper

    m = onnx.load(os.path.join(LLAMA, "model.onnx"))
    (and1,) = [n for n in m.graph.node if n.name == "/model/And_1"]
    (le,) = [n for n in m.graph.node if n.name == "/model/LessOrEqual"]
    kv_idx, q_idx = le.input  # kv_idx <= q_idx is the causal part
    m.graph.initializer.append(numpy_helper.from_array(np.array(window, np.int64), "window"))
    overlay = [helper.make_node("Sub", [q_idx, "window"], ["q_minus_window"]),
               helper.make_node("Greater", [kv_idx, "q_minus_window"], ["in_window"]),
               helper.make_node("And", [and1.input[0], "in_window"], ["causal_in_window"])]
    at = list(m.graph.node).index(and1)
    for i, n in enumerate(overlay):
        m.graph.node.insert(at + i, n)
    and1.input[0] = "causal_in_window"
    return save_beside(m, tmp_path, f"window{window}", LLAMA)


def test_sliding_window_becomes_a_windowed_ring_kv_cache(tmp_path, capsys):
    """A window of 20 tokens: no prefill or decode of the small probes reaches it (contexts <= 14), the
    decode probes up to the capacity (128, config.json) do; every KVAttention gets window=20 over ring
    caches of 20 + RING_SLACK rows (< 128), config.json without sliding_window gives no warning, and the
    interpreter (the KVAttention reference, ring included) matches ONNX Runtime past the window."""
    from tcc.ir.interpreter import ProgramState, run_graph
    from tcc.passes.kv_cache import RING_SLACK

    from ..conftest import ort_run

    path = _sliding_window_model(tmp_path, 20)
    graph, _, _ = optimize(path, CompileOptions(require_kv_cache=True))
    llm = graph.meta["llm"]
    assert llm["kv_cache"] and llm["window"] == 20 and "window_warning" not in llm
    kvas = [n for n in graph.nodes if n.op == "KVAttention"]
    assert len(kvas) == 2 and all(n.attrs["window"] == 20 and n.attrs["capacity"] == 128 for n in kvas)
    assert all(n.inputs[3].shape[2] == 20 + RING_SLACK for n in kvas)
    assert capsys.readouterr().err == ""
    # the window is real: past it, the logits differ from plain causal attention
    r = np.random.default_rng(0)
    past, seq = 24, 3
    feeds = {"input_ids": r.integers(0, 384, (1, seq)).astype(np.int64),
             "attention_mask": np.ones((1, past + seq), np.int64),
             "position_ids": np.arange(past, past + seq, dtype=np.int64)[None]}
    for i in range(2):
        for kv in ("key", "value"):
            feeds[f"past_key_values.{i}.{kv}"] = r.standard_normal((1, 2, past, 16)).astype(np.float32)
    want = ort_run(path, feeds)
    causal = ort_run(os.path.join(LLAMA, "model.onnx"), feeds)
    assert np.abs(causal["logits"] - want["logits"]).max() > 1e-3
    # the KV-cache graph, step by step in the interpreter (states carried), against ONNX Runtime's decode
    from tests.e2e.llm_oracle import OrtDecoder

    prompt = [int(x) for x in r.integers(3, 384, 9)]
    ids, ort_logits = OrtDecoder(path).greedy(prompt, 100)
    state, new = ProgramState(graph), list(prompt)
    for step in range(100):
        out = run_graph(graph, {llm["input_ids"]: np.array([new], np.int64)}, state=state)
        np.testing.assert_allclose(out[llm["logits"]][0, -1], ort_logits[step], rtol=1e-4, atol=1e-4,
                                   err_msg=f"step {step} (context {state.length})")
        new = [ids[step]]


def test_config_sliding_window_mismatch_warns(tmp_path, capsys):
    import json

    path = _sliding_window_model(tmp_path, 20)
    cfg_path = os.path.join(os.path.dirname(path), "config.json")
    cfg = json.load(open(cfg_path))
    cfg["sliding_window"] = 32
    json.dump(cfg, open(cfg_path, "w"))
    graph, _, _ = optimize(path, CompileOptions())
    assert graph.meta["llm"]["window"] == 20
    err = capsys.readouterr().err
    assert "keep windows of [20] tokens but config.json has sliding_window=32" in err
    cfg["sliding_window"] = 20
    json.dump(cfg, open(cfg_path, "w"))
    optimize(path, CompileOptions())
    assert capsys.readouterr().err == ""


def test_config_window_the_export_dropped_warns(tmp_path, capsys):
    import json

    folder = tmp_path / "dropped"
    shutil.copytree(LLAMA, folder)
    cfg = json.load(open(folder / "config.json"))
    cfg["sliding_window"] = 16
    json.dump(cfg, open(folder / "config.json", "w"))
    graph, _, _ = optimize(str(folder / "model.onnx"), CompileOptions())
    assert graph.meta["llm"]["kv_cache"] and "window" not in graph.meta["llm"]
    assert "config.json has sliding_window=16 but the exported attention masks attend the whole" in \
        capsys.readouterr().err


def test_window_as_wide_as_the_cache_is_plain_causal(tmp_path, capsys):
    """A window as wide as the cache's capacity never masks anything generation reaches: KV cache built
    (the refusal's advice, --max-context W, works)."""
    graph, _, _ = optimize(_sliding_window_model(tmp_path, 20), CompileOptions(max_context=20))
    assert graph.meta["llm"]["kv_cache"]
    assert _warnings(capsys.readouterr().err) == []


def test_windowed_ring_artifact_generates_like_onnxruntime(tmp_path):
    """The compiled program (kvattention kernels over ring caches of 83 rows, window 20) greedy-decodes 100
    tokens after a 9-token prompt (the ring wraps; the context reaches 109 of 128) exactly as ONNX Runtime
    driving the original ONNX with its past does, logits included; a rewind the ring cannot serve is
    refused, a reset works."""
    import tcc
    from tests.e2e.llm_oracle import OrtDecoder

    path = _sliding_window_model(tmp_path, 20)
    out = str(tmp_path / "art")
    manifest = tcc.compile(path, out, require_kv_cache=True)
    assert manifest["llm"]["kv_cache"] and manifest["ops"].get("KVAttention") == 2
    prompt = [int(x) for x in np.random.default_rng(1).integers(3, 384, 9)]
    want, want_logits = OrtDecoder(path).greedy(prompt, 100)
    sess = tcc.load(out)
    g = sess.generate(prompt, max_new_tokens=100, temperature=0, repetition_penalty=1.0, keep_logits=True,
                      eos_ids=set())
    assert g.tokens == want
    for step, (a, b) in enumerate(zip(g.step_logits, want_logits)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg=f"step {step}")
    # a rewind the ring can serve (at most rows - window + 1 = 64 tokens) continues exactly; a longer one
    # is refused in one line (the rows it needs were overwritten); a reset always works
    gen = sess.generator
    kv_len = gen._lib.tcc_model_kv_length(sess._model)
    assert kv_len >= 100 and manifest["llm"]["kv_ring_rewind"] == 64
    context = list(gen.context)[:kv_len]
    with pytest.raises(TccError, match="its sliding-window ring cache can forget at most 64"):
        gen._truncate(kv_len - 65)
    gen._truncate(kv_len - 64)
    n = kv_len - 64
    logits = gen.feed(context[n:n + 6])
    np.testing.assert_allclose(logits[-1], want_logits[n + 5 - 8], rtol=1e-4, atol=1e-4)
    gen.reset()
    assert gen.context == []


def test_windowed_ring_prefill_is_memory_safe_under_sanitizers(tmp_path):
    """ASan + UBSan build of the window-20 model (rings of 83 rows, capacity 128): one prefill of 100 tokens
    on two threads runs the kernel in chunks of 64 and wraps the ring; no report, and the logits equal
    ONNX Runtime's over the whole sequence (the window included)."""
    from tests.runtime import test_sanitizers as san

    from ..conftest import ort_run

    probe = san.subprocess.run(["c++", "-print-file-name=libasan.so"], capture_output=True, text=True)
    if probe.returncode != 0 or not os.path.isabs(probe.stdout.strip()):
        pytest.skip("the C++ compiler has no AddressSanitizer runtime (libasan)")
    path = _sliding_window_model(tmp_path, 20)
    out = tmp_path / "san"
    manifest = san._compile(path, out)
    assert manifest["llm"]["kv_cache"] and manifest["llm"]["window"] == 20
    ids = (np.arange(100, dtype=np.int64).reshape(1, 100) * 37) % 384
    np.save(tmp_path / "ids.npy", ids)
    p = san._run([out / "run", f"input_ids={tmp_path / 'ids.npy'}", "-o", tmp_path / "y", "--threads", "2"])
    san._clean(p, "windowed ring prefill")
    feeds = {"input_ids": ids, "attention_mask": np.ones((1, 100), np.int64),
             "position_ids": np.arange(100, dtype=np.int64)[None]}
    for i in range(2):
        for kv in ("key", "value"):
            feeds[f"past_key_values.{i}.{kv}"] = np.zeros((1, 2, 0, 16), np.float32)
    want = ort_run(path, feeds)["logits"]
    np.testing.assert_allclose(np.load(tmp_path / "y" / "logits.npy"), want, rtol=1e-4, atol=1e-4)
