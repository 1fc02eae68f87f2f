"""GPTQ rounding (--quant-method gptq / awq+gptq) on a small LLaMA, compiled and run, against ONNX Runtime.

Model: tests/models/llm_quant/llama_outliers (2 layers, hidden 64, planted activation outliers), calibration
text the first half of tests/models/llm/corpus.txt (as tests/e2e/test_quantized_llm.py). The metric is the
logits' mean squared error against ONNX Runtime's fp32 logits on the original ONNX, teacher-forced over 64
tokens of the calibration text (what GPTQ minimizes, layer by layer) and 64 held-out tokens. GPTQ must be
closer to fp32 than round to nearest on both: measured 0.74x of RTN's MSE on the calibration tokens and
0.84x held out (w4a8: the int8 activations' rounding of the planted outliers, which GPTQ does not touch,
is a large part of the error); asserted < 0.85x and < 1x. The compile reports it in the manifest and the
summary.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

import tcc
from tests.conftest import MODELS_DIR

MODEL_DIR = os.path.join(MODELS_DIR, "llm_quant", "llama_outliers")
MODEL = os.path.join(MODEL_DIR, "model.onnx")
CORPUS = os.path.join(MODELS_DIR, "llm", "corpus.txt")
CONTEXT = 96
N_EVAL = 64


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from tcc.runtime.tokenizer import Tokenizer

    text = open(CORPUS, encoding="utf-8").read()
    calib = tmp_path_factory.mktemp("calib") / "calib.txt"
    calib.write_text(text[: len(text) // 2], encoding="utf-8")
    tok = Tokenizer.from_files(os.path.join(MODEL_DIR, "tokenizer.json"))
    ids = {name: np.array([tok.encode(part, add_special_tokens=False)[:N_EVAL]], np.int64)
           for name, part in (("calibration", text[: len(text) // 2]), ("held-out", text[len(text) // 2:]))}
    sess = ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"])
    fp32 = {}
    for name, x in ids.items():
        feeds = {"input_ids": x, "attention_mask": np.ones_like(x),
                 "position_ids": np.arange(x.shape[1], dtype=np.int64)[None]}
        for i in range(2):
            for kv in ("key", "value"):
                feeds[f"past_key_values.{i}.{kv}"] = np.zeros((1, 2, 0, 16), np.float32)
        fp32[name] = sess.run(["logits"], feeds)[0][0].astype(np.float64)
    return str(calib), ids, fp32


def _mse(out: str, ids: dict, fp32: dict) -> dict:
    mse = {}
    for k, x in ids.items():
        with tcc.load(out) as sess:  # a fresh KV cache per sequence
            mse[k] = float(np.mean((sess.run({"input_ids": x})["logits"][0].astype(np.float64) - fp32[k]) ** 2))
    return mse


def test_gptq_is_closer_to_fp32_than_round_to_nearest(data, tmp_path):
    calib, ids, fp32 = data
    common = dict(qm="w4a8", max_context=CONTEXT, calib_samples=8, calib_seq_len=64)
    rtn = str(tmp_path / "rtn")
    tcc.compile(MODEL, rtn, quant_method="rtn", **common)
    out = str(tmp_path / "gptq")
    manifest = tcc.compile(MODEL, out, calib=calib, quant_method="gptq", **common)
    q = manifest["quantization"]
    assert q["calibration"] == "gptq" and q["quantized_linears"] == 2 * 7 + 2, q
    st = q["gptq"]  # the 14 projections; the LM head is 8-bit (bit allocation's default), rounded to nearest
    assert st["linears"] == 2 * 7 and st["rows"] == 8 * 64 and 0 < st["error_ratio"] < 0.9, st
    assert manifest["options"]["quant_method"] == "gptq"
    got, base = _mse(out, ids, fp32), _mse(rtn, ids, fp32)
    assert got["calibration"] < 0.85 * base["calibration"] and got["held-out"] < base["held-out"], (got, base)


def test_cli_awq_gptq_summary_and_errors(data, tmp_path):
    calib, _, _ = data
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "-m", "tcc.cli", "compile", MODEL, "-o", str(out), "--qm", "w4a8",
                        "--max-context", str(CONTEXT), "--calib", calib, "--calib-samples", "2",
                        "--quant-method", "awq+gptq", "--awq-clip", "-q"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "quantized: 16 layers (w4a8, group 32, symmetric, awq+gptq)" in r.stdout, r.stdout
    assert re.search(r"calibration \(awq\): running the model [\d.]+ s, scale search", r.stdout), r.stdout
    assert re.search(r"calibration \(gptq\): 14 layers rounded with error compensation, output error on the "
                     r"calibration rows 0\.\d+x round-to-nearest's; running the model [\d.]+ s \(1 run\(s\), 192 "
                     r"rows\), rounding [\d.]+ s", r.stdout), r.stdout
    q = json.loads((out / "manifest.json").read_text())["quantization"]
    # 192 rows: 2 samples of 256 tokens capped at the context (96)
    assert q["awq"]["clipped"] > 0 and q["gptq"]["linears"] == 14 and q["gptq"]["rows"] == 192
    for args, message in [
        (["--qm", "w4a8", "--quant-method", "gptq"], "tcc: error: --quant-method gptq needs calibration data"),
        (["--qm", "w8a8", "--quant-method", "awq+gptq", "--calib", calib],
         "tcc: error: --quant-method awq+gptq does not apply to --qm w8a8"),
        (["--qm", "w4a8", "--quant-method", "rtn", "--calib", calib], "tcc: error: --quant-method rtn uses no"),
        (["--qm", "w4a8", "--quant-method", "best"], "tcc compile: error: argument --quant-method: invalid choice"),
    ]:
        r = subprocess.run([sys.executable, "-m", "tcc.cli", "compile", MODEL, "-o", str(tmp_path / "bad"), *args],
                           capture_output=True, text=True)
        assert r.returncode != 0 and r.stderr.strip().splitlines()[-1].startswith(message), (args, r.stderr)
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "bad").exists()
