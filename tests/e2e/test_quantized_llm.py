"""Quantized decoders end to end (--qm w8a8 | w4a32 | w4a8, with and without calibration).

Model: tests/models/llm_quant/llama_outliers (a 2-layer LLaMA, hidden 64, with planted activation outlier
channels; see its generate.py). Calibration text: the first half of tests/models/llm/corpus.txt; quality
is measured on 64 held-out tokens from the second half, teacher-forced (one prefill of the whole
sequence), against ONNX Runtime's fp32 logits on the original ONNX.

Checks and why the thresholds are what they are:
- the compiled program computes what its IR says: logits equal the reference interpreter's on the same
  quantized graph. w4a32 has no run-time rounding, so only fp32 summation order differs (atol 1e-4 on
  O(1-10) logits, as the fp32 e2e tests). With int8 activations a last-ulp difference can move a value
  across a rounding boundary of the next QuantizeActs (one int8 step, ~1/127 of its group's range), so
  those schemes are held to a cosine >= 0.9999 and 1e-2 of the logit range instead.
- quality against fp32, per scheme (measured on this model with the reference interpreter: w8a8
  SmoothQuant cos 0.9996 / top-1 0.97, w4 AWQ cos 0.978 / top-1 0.75-0.77; round-to-nearest w8a8 0.96 /
  0.52, w4 0.94 / 0.48-0.59, compiled). Random weights give flat logits (small top-1/top-2 gaps), so top-1 agreement is far
  from 1 even for good quantization; the bounds sit below the measured values with margin for the
  embedding and kernel rounding, and above what round-to-nearest reaches on this model.
- calibration helps where it must: AWQ's and SmoothQuant's logit MSE is at most half of round-to-nearest's.
- w4 artifacts store at most 0.30x the fp32 weight bytes (int4 + fp16 scales per 32 = 4.5 bits/weight,
  embeddings included); w8a8 at most 0.30x too (8 bits + one scale per row).
"""
from __future__ import annotations

import json
import re
import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

import tcc
from tcc.driver import CompileOptions, optimize
from tcc.ir.interpreter import run_graph
from tests.conftest import MODELS_DIR

MODEL_DIR = os.path.join(MODELS_DIR, "llm_quant", "llama_outliers")
MODEL = os.path.join(MODEL_DIR, "model.onnx")
CORPUS = os.path.join(MODELS_DIR, "llm", "corpus.txt")
CONTEXT = 96
N_EVAL = 64

QUALITY = {  # qm, calibrated -> (min mean cosine, min top-1 agreement)
    ("w8a8", True): (0.999, 0.85),
    ("w4a32", True): (0.97, 0.70),
    ("w4a8", True): (0.97, 0.70),
    ("w8a8", False): (0.90, 0.45),
    ("w4a32", False): (0.90, 0.45),
    ("w4a8", False): (0.90, 0.45),
}
CASES = sorted(QUALITY)


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    text = open(CORPUS, encoding="utf-8").read()
    calib = tmp_path_factory.mktemp("calib") / "calib.txt"
    calib.write_text(text[: len(text) // 2], encoding="utf-8")
    from tcc.runtime.tokenizer import Tokenizer

    tok = Tokenizer.from_files(os.path.join(MODEL_DIR, "tokenizer.json"))
    ids = np.array([tok.encode(text[len(text) // 2:], add_special_tokens=False)[:N_EVAL]], np.int64)
    return str(calib), ids


@pytest.fixture(scope="module")
def fp32_logits(texts):
    _, ids = texts
    n_layers, kv, hd = 2, 2, 16
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids),
             "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None]}
    for i in range(n_layers):
        for name in ("key", "value"):
            feeds[f"past_key_values.{i}.{name}"] = np.zeros((1, kv, 0, hd), np.float32)
    sess = ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"])
    return sess.run(["logits"], feeds)[0][0].astype(np.float64)


def _options(qm: str, calibrated: bool, calib: str) -> dict:
    return dict(qm=qm, max_context=CONTEXT, calib=calib if calibrated else None, calib_samples=8, calib_seq_len=64)


@pytest.fixture(scope="module")
def compiled(texts, tmp_path_factory):
    calib, _ = texts
    cache = {}

    def get(qm: str, calibrated: bool):
        key = (qm, calibrated)
        if key not in cache:
            out = str(tmp_path_factory.mktemp("q") / f"{qm}_{'cal' if calibrated else 'rtn'}")
            cache[key] = (out, tcc.compile(MODEL, out, **_options(qm, calibrated, calib)))
        return cache[key]
    return get


def _logits(out: str, ids: np.ndarray) -> np.ndarray:
    with tcc.load(out) as sess:
        return sess.run({"input_ids": ids})["logits"][0].astype(np.float64)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.sum(a * b, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)))


@pytest.mark.parametrize("qm,calibrated", CASES, ids=[f"{q}-{'calib' if c else 'rtn'}" for q, c in CASES])
def test_quantized_decoder(qm, calibrated, texts, fp32_logits, compiled):
    calib, ids = texts
    out, manifest = compiled(qm, calibrated)
    q = manifest["quantization"]
    assert q["scheme"] == qm and q["calibration"] == ({"w8a8": "smoothquant"}.get(qm, "awq") if calibrated
                                                       else "round-to-nearest")
    assert q["quantized_linears"] == 2 * 7 + 2  # 7 projections per layer, the LM head and the embedding
    assert q["ratio_to_fp32"] <= 0.30, q
    ops = manifest["ops"]
    assert "Linear" not in ops and "Gather" not in ops and ops.get("KVAttention") == 2
    if qm == "w4a32":
        assert ops["QLinear"] == 15 and "QuantizeActs" not in ops
    else:
        # q/k/v share one quantization, gate/up share one; the 4 norms' outputs are quantized in the norm
        # kernel (fuse-norm-quantize: w4a8 per row and group, w8a8 per row)
        fused = 4
        assert ops["QLinearI8"] == 15 and ops["QuantizeActs"] == 9 - fused and ops.get("NormQuantize", 0) == fused

    got = _logits(out, ids)
    # 1. the program computes its IR
    g, _, _ = optimize(MODEL, CompileOptions(pipeline="optimize", **_options(qm, calibrated, calib)))
    ref = run_graph(g, {"input_ids": ids})["logits"][0].astype(np.float64)
    if qm == "w4a32":
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    else:
        assert _cosine(got, ref) >= 0.9999
        assert np.abs(got - ref).max() <= 1e-2 * np.abs(ref).max()
    # 2. quality against fp32 ONNX Runtime
    min_cos, min_top1 = QUALITY[(qm, calibrated)]
    cos = _cosine(got, fp32_logits)
    top1 = float(np.mean(got.argmax(-1) == fp32_logits.argmax(-1)))
    assert cos >= min_cos and top1 >= min_top1, f"{qm} calibrated={calibrated}: cosine {cos:.4f}, top-1 {top1:.3f}"


@pytest.mark.parametrize("qm", ["w8a8", "w4a32", "w4a8"])
def test_calibration_beats_round_to_nearest(qm, texts, fp32_logits, compiled):
    _, ids = texts
    mse = {c: float(np.mean((_logits(compiled(qm, c)[0], ids) - fp32_logits) ** 2)) for c in (False, True)}
    assert mse[True] <= 0.5 * mse[False], mse


def test_generation_with_a_quantized_model(compiled):
    out, _ = compiled("w4a8", True)
    with tcc.load(out) as sess:
        g = sess.generate("The meaning of life is", max_new_tokens=12, temperature=0)
        assert len(g.tokens) == 12
        kept = sess.generate([7, 8, 9], max_new_tokens=6, temperature=0, keep_context=True)
        history = list(sess.generator.context)
    with tcc.load(out) as sess:
        fresh = sess.generate(history[:-6], max_new_tokens=6, temperature=0)
    assert kept.tokens == fresh.tokens


def test_kernel_variant_flag(texts, compiled, tmp_path):
    """--kernel-variant picks the efficientml-lab step for the quantized linears; every step computes the
    same int8 arithmetic (only the fp32 summation order differs)."""
    calib, ids = texts
    out = str(tmp_path / "naive")
    manifest = tcc.compile(MODEL, out, kernel_variant="naive", **_options("w4a8", False, calib))
    assert any(k.startswith("tcc_qlinear_w4a8") and k.endswith("__naive") for k in manifest["kernels"])
    default = _logits(compiled("w4a8", False)[0], ids)
    assert _cosine(_logits(out, ids), default) >= 0.9999


def test_fused_norm_quantize_is_bit_exact(texts, compiled, tmp_path):
    """w4a8 runs each RMSNorm and the int8 quantization of its output in one kernel (fuse-norm-quantize);
    the same row functions as the two kernels, so the logits equal the unfused program's bit for bit."""
    calib, ids = texts
    out, manifest = compiled("w4a8", False)
    assert "tcc_norm_quantize_rmsnorm_f32__avx2" in manifest["kernels"]
    unfused = str(tmp_path / "unfused")
    m2 = tcc.compile(MODEL, unfused, disable_passes=("fuse-norm-quantize",), **_options("w4a8", False, calib))
    assert not any(k.startswith("tcc_norm_quantize") for k in m2["kernels"]) and "tcc_quantize_acts__avx2" in m2["kernels"]
    np.testing.assert_array_equal(_logits(out, ids), _logits(unfused, ids))


def test_cli_quantized_compile_and_errors(texts, tmp_path):
    calib, _ = texts
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "-m", "tcc.cli", "compile", MODEL, "-o", str(out), "--qm", "w4a8",
                        "--max-context", str(CONTEXT), "--calib", calib, "--calib-samples", "2",
                        "--keep-fp32", "lm_head", "-q"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "quantized: 15 layers (w4a8, group 32, symmetric, awq), kept in fp32: 1" in r.stdout
    assert re.search(r"calibration \(awq\): running the model [\d.]+ s, scale search [\d.]+ s, check [\d.]+ s "
                     r"\([\d.]+ s per layer\)", r.stdout), r.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"calibration_s", "search_s", "check_s", "per_layer_s"} <= set(manifest["quantization"]["awq"])
    assert manifest["quantization"]["kept_fp32"] and manifest["ops"]["Linear"] == 1
    r = subprocess.run([sys.executable, "-m", "tcc.cli", "info", str(out)], capture_output=True, text=True)
    assert r.returncode == 0 and "w4a8" in r.stdout

    r = subprocess.run([sys.executable, "-m", "tcc.cli", "compile", MODEL, "-o", str(tmp_path / "x"), "--qm",
                        "w4a8", "--max-context", "32", "-q"], capture_output=True, text=True)
    assert r.returncode == 0 and "tcc: warning: --qm w4a8 without --calib: weights are rounded to nearest" in r.stderr

    for args, message in [
        (["--qm", "w4a16"], "tcc: error: target x86 cannot run --qm w4a16 (fp16 activations need fp16 arithmetic"),
        (["--qm", "w4a8", "--group-size", "48"], "tcc: error: --group-size must be a positive multiple of 32, got 48"),
        (["--qm", "w8a8", "--asym"], "tcc: error: --asym does not apply to --qm w8a8"),
        (["--qm", "w4a8", "--calib", str(tmp_path / "none.txt")], "tcc: error: --calib "),
    ]:
        r = subprocess.run([sys.executable, "-m", "tcc.cli", "compile", MODEL, "-o", str(tmp_path / "bad"), *args],
                           capture_output=True, text=True)
        assert r.returncode != 0 and r.stderr.strip().splitlines()[-1].startswith(message), (args, r.stderr)
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "bad").exists()


def test_bench_cli(compiled, tmp_path):
    """`tcc bench` prints figures (no timing is asserted: the machine is shared)."""
    out, _ = compiled("w4a8", False)
    js = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "-m", "tcc.cli", "bench", out, "--prompt-len", "8", "--gen", "4",
                        "--repeat", "1", "--threads", "1", "--json", str(js)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "prefill 8 tokens:" in r.stdout and "ms/token" in r.stdout and "time to first token" in r.stdout
    assert "roofline:" in r.stdout and "achieved" in r.stdout and "memory: peak RSS" in r.stdout
    res = json.loads(js.read_text())
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert res["weights_bytes"] == manifest["weights"]["bytes"] and res["bandwidth_gbs"] > 0
    # One decode step reads every weight but the tables it gathers rows from (the quantized embedding unless
    # tied to the LM head, the RoPE cos/sin tables: [capacity, head_dim / 2] each), plus the KV cache of ~10
    # positions.
    w = manifest["weights"]
    assert res["bytes_per_token"]["weights"] == w["decode_bytes"] <= w["bytes"] - w["position_table_bytes"]
    head_dim = json.load(open(os.path.join(MODEL_DIR, "config.json")))["head_dim"]
    assert w["position_table_bytes"] == 2 * manifest["llm"]["capacity"] * head_dim // 2 * 4
    kv_per_pos = manifest["llm"]["kv_cache_bytes"] / manifest["llm"]["capacity"]
    assert res["bytes_per_token"]["kv_cache"] == pytest.approx(kv_per_pos * (8 + 4 / 2))
    assert len(res["step_ms"]) == 3 and res["peak_rss_bytes"] > res["baseline_rss_bytes"] > 0
    r = subprocess.run([sys.executable, "-m", "tcc.cli", "bench", out, "--prompt-len", "5000"], capture_output=True,
                       text=True)
    assert r.returncode != 0 and "exceed the artifact's context" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "tcc.cli", "bench", "--ablation", "--shape", "3x96x40", "--repeat", "1",
                        "--qm", "w8a8"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = [ln for ln in r.stdout.splitlines() if ln.startswith("| w8a8")]
    assert [ln.split("|")[3].strip() for ln in rows] == ["naive", "unroll", "threads", "simd", "all"]
    r = subprocess.run([sys.executable, "-m", "tcc.cli", "bench", "--ablation", "--shape", "1x0x5"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "sizes must be positive" in r.stderr
    r = subprocess.run([sys.executable, "-m", "tcc.cli", "bench", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode != 0 and r.stderr.startswith("tcc: error:")


def test_bench_whole_model_ablation(tmp_path):
    env = dict(os.environ, TCC_CACHE_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "tcc.cli", "bench", "--ablation", "--shape", "1x64x32", "--repeat", "1",
                        MODEL, "--prompt-len", "4", "--gen", "2", "-q"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    table = r.stdout.split("## model.onnx --qm w4a8")[1]
    assert [ln.split("|")[1].strip() for ln in table.splitlines() if ln.startswith("| ") and "variant" not in ln] \
        == ["naive", "unroll", "threads", "simd", "all"]
