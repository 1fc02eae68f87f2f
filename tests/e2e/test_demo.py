"""The bundled demo LLM (models/demo): `tcc demo`, `tcc eval`, and what quantization does to perplexity.

The model is a real trained decoder (tools/train_demo_model.py), so perplexity on its held-out text
measures quality the way random-weight fixtures cannot. All tests of this module run in one xdist
worker (they share the compiled artifacts through the test session's cache directory).

Figures and bounds (measured on this model: docs/quantization.md and the README's quality table):
- the compiled fp32 program and ONNX Runtime on the original ONNX give the same perplexity within
  0.1% (the issue's bound); fp32 logits agree to ~1e-5, so the measured gap is ~1e-6 relative;
- AWQ lowers w4a8 perplexity below round-to-nearest's on the held-out text;
- every quantized scheme stays within QUALITY_BOUND of fp32 perplexity (see the dict for why).
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tcc import cli
from tcc.demo import (DEMO_CALIB, DEMO_HELDOUT, DEMO_MODEL, DEMO_QM, COMPARE_VARIANTS, Variant, compare_quantization,
                      compile_variant, run_demo)
from tcc.runtime.perplexity import evaluate, score, tokenize

pytestmark = pytest.mark.xdist_group("demo")

# The quality tests score the whole held-out text (~26,700 tokens): on its first 4,096 tokens alone the
# ordering of schemes whose perplexities differ by ~0.3% is not stable (there, group-128 round-to-nearest
# even came out ahead of group 32), on the whole text it is, and the gaps below are 2-10x that.
CONTEXT, STRIDE = 256, 128

# Perplexity increase over fp32 allowed per scheme on the held-out text. Measured (README table, one run
# on this machine, group 32; the 4-bit schemes' default mix: embedding and LM head at 8 bits, stored once, and
# int4 scales searched): w8a8 RTN +0.03%, SmoothQuant +0.07%, GPTQ +0.05%, SmoothQuant+GPTQ +0.07% (int8
# activations per row; per tensor RTN / SmoothQuant were +0.36% / +0.28%); w4a32 RTN +1.79%, AWQ +1.45%; w4a8
# RTN +0.83%, AWQ +0.62%, GPTQ +0.35%, AWQ+GPTQ +0.18%. Each int4 bound sits ~1.5x above its figure, at least
# 0.2 points (room for a retrained model or another machine's fp32 summation order, which the int8
# activation rounding amplifies), and below what losing a piece costs: the same schemes without the scale
# search were w4a8 RTN +0.94%, AWQ+GPTQ +0.36%; with every layer at 4 bits +2.30% / +1.92% (RTN / AWQ);
# per-channel int4 scales or group 128 +3.4%; a lost zero point or a wrong scale tens of percent. The w8a8
# bounds sit below the per-tensor activations' figures, so a scheme that fell back to one activation scale
# per tensor fails them.
QUALITY_BOUND = {
    ("w8a8", "RTN"): 0.002,
    ("w8a8", "SmoothQuant"): 0.002,
    ("w8a8", "GPTQ"): 0.002,
    ("w8a8", "SmoothQuant+GPTQ"): 0.002,
    ("w4a32", "RTN"): 0.027,
    ("w4a32", "AWQ"): 0.022,
    ("w4a8", "RTN"): 0.013,
    ("w4a8", "AWQ"): 0.010,
    ("w4a8", "GPTQ"): 0.006,
    ("w4a8", "AWQ+GPTQ"): 0.004,
}


@pytest.fixture(scope="module")
def heldout() -> str:
    return open(DEMO_HELDOUT, encoding="utf-8").read()


@pytest.fixture(scope="module")
def compare_rows(heldout):
    rows = compare_quantization(DEMO_MODEL, heldout, DEMO_CALIB, context=CONTEXT, stride=STRIDE)
    return {(r["qm"], r["method"]): r for r in rows}


def test_bundled_files_are_complete_and_small():
    d = os.path.dirname(DEMO_MODEL)
    for f in ("model.onnx", "tokenizer.json", "tokenizer_config.json", "config.json", "heldout.txt",
              "calib.txt", "training.json", "README.md"):
        assert os.path.isfile(os.path.join(d, f)), f
    total = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    assert total < 32 * 2**20, f"models/demo is {total / 2**20:.1f} MiB"
    info = json.load(open(os.path.join(d, "training.json")))
    assert 5e6 <= info["parameters"] <= 20e6
    # The held-out text is made of validation documents, never trained on (calib.txt is training text).
    assert info["val_documents"] and info["corpus"]["val"]["bytes"] >= os.path.getsize(DEMO_HELDOUT)
    assert open(DEMO_HELDOUT, encoding="utf-8").read()[:2000] not in open(DEMO_CALIB, encoding="utf-8").read()


def test_demo_command_compiles_generates_and_reports(capsys):
    assert cli.main(["demo", "--max-new-tokens", "24", "-q"]) == 0
    out = capsys.readouterr().out
    assert "tcc demo:" in out and "as w4a8 (AWQ" in out
    assert "The for statement in Python" in out
    assert "prefill" in out and "decode 24 tokens" in out and "tok/s" in out
    assert "IR after every pass:" in out and "plan-memory.tir" in out
    # Compiled once: the second run reuses the cached artifact.
    assert cli.main(["demo", "--max-new-tokens", "4", "-q"]) == 0
    assert "reused from the cache" in capsys.readouterr().out


def test_demo_writes_recognizable_text():
    """Greedy continuation of a prose prompt: mostly real English words, from the demo's default build as from
    fp32 (the check is held to the fp32 model too: "The tutorial explains how" makes fp32 itself continue with a
    code block, which the word count cannot judge)."""
    import io

    common = {"the", "a", "of", "to", "is", "and", "in", "that", "for", "be", "an", "as", "it", "this", "are",
              "can", "with", "or", "by", "on", "not", "which", "you", "if", "from", "used", "function", "object"}
    for qm in ("fp32", DEMO_QM):
        fig = run_demo(qm=qm, prompt="When the interpreter starts,", max_new_tokens=48, temperature=0.0,
                       out=io.StringIO())
        words = [w.strip(".,:;()`'\"") for w in fig["text"].split()]
        words = [w for w in words if w.isalpha()]
        assert len(words) >= 15 and sum(w.lower() in common for w in words) >= 5, (qm, fig["text"])


def test_fp32_perplexity_equals_onnxruntime(heldout):
    """Same windows, same tokens: the compiled fp32 program and ONNX Runtime on the original ONNX."""
    import onnxruntime as ort

    from tcc.runtime.session import load

    art, _, _ = compile_variant(DEMO_MODEL, Variant("fp32", "-"), None)
    with load(art) as sess:
        got = evaluate(sess, heldout, context=CONTEXT, stride=STRIDE, max_tokens=1024)
        ids, offsets = tokenize(sess.tokenizer, heldout)
    text = heldout[:offsets[1024]]  # the characters the first 1024 tokens cover, as evaluate() truncates
    ids, offsets = ids[:1024], offsets[:1024]
    so = ort.SessionOptions()
    so.log_severity_level = 3
    ref = ort.InferenceSession(DEMO_MODEL, so, providers=["CPUExecutionProvider"])
    past = [i for i in ref.get_inputs() if i.name.startswith("past_key_values.")]

    def ort_logits(window):
        n = len(window)
        feeds = {"input_ids": np.array([window], np.int64), "attention_mask": np.ones((1, n), np.int64),
                 "position_ids": np.arange(n, dtype=np.int64)[None]}
        for i in past:
            feeds[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
        return ref.run(["logits"], feeds)[0][0]

    want = score(ort_logits, ids, offsets, text, CONTEXT, STRIDE)
    assert got.tokens == want.tokens == 1023
    assert got.bytes == want.bytes
    assert abs(got.ppl / want.ppl - 1) < 1e-3, (got.ppl, want.ppl)
    assert abs(got.bits_per_byte / want.bits_per_byte - 1) < 1e-3


def test_awq_beats_round_to_nearest_at_w4a8(compare_rows):
    rtn, awq = compare_rows[("w4a8", "RTN")], compare_rows[("w4a8", "AWQ")]
    assert awq["perplexity"] < rtn["perplexity"], (awq["perplexity"], rtn["perplexity"])


def test_gptq_beats_its_base_method_at_w4a8(compare_rows):
    """Measured: GPTQ 28.435 vs RTN 28.572, AWQ+GPTQ 28.387 vs AWQ 28.513 (gaps of 0.48% and 0.44%)."""
    for ours, base in ((("w4a8", "GPTQ"), ("w4a8", "RTN")), (("w4a8", "AWQ+GPTQ"), ("w4a8", "AWQ"))):
        assert compare_rows[ours]["perplexity"] < compare_rows[base]["perplexity"], (ours, base)


@pytest.mark.parametrize("case", sorted(QUALITY_BOUND))
def test_quantized_perplexity_within_bound_of_fp32(compare_rows, case):
    row, fp32 = compare_rows[case], compare_rows[("fp32", "-")]
    assert row["tokens"] == fp32["tokens"] > 20000
    assert 0 <= row["ppl_vs_fp32"] + 0.005, "quantization improving perplexity by >0.5% is suspicious"
    assert row["ppl_vs_fp32"] <= QUALITY_BOUND[case], (case, row["perplexity"], fp32["perplexity"])
    ratio = row["weight_bytes"] / fp32["weight_bytes"]
    # 4-bit schemes: 0.20 at 4.5 bits per weight (every layer 4-bit), in proportion where layers are kept at 8
    # bits (passes/bit_allocation.py)
    bound = 0.32 if row["qm"] == "w8a8" else 0.20 * row["bit_allocation"]["bits_per_weight"] / 4.5
    assert ratio < bound, (ratio, bound)


def test_default_mix_beats_all_4_bit(compare_rows):
    """The default 4-bit form keeps the embedding and LM head at 8 bits: lower perplexity than every layer at
    4 bits, and the bytes the allocation adds are all the difference in weights.bin."""
    for method in ("RTN", "AWQ"):
        mix, pure = compare_rows[("w4a8", method)], compare_rows[("w4a8", f"{method} 4-bit only")]
        assert mix["perplexity"] < pure["perplexity"], (method, mix["perplexity"], pure["perplexity"])
        a, b = mix["bit_allocation"], pure["bit_allocation"]
        assert sorted(a["eight_bit"]) == ["/m/lm_head/MatMul", "/m/model/embed_tokens/Gather"] and not b["eight_bit"]
        assert mix["weight_bytes"] - pure["weight_bytes"] == a["weight_bytes"] - b["weight_bytes"] > 0
    for budget in ("4.8", "6.0"):
        a = compare_rows[("w4a8", f"AWQ {budget} bits")]["bit_allocation"]
        assert a["criterion"] == "calibration" and 4.5 < a["bits_per_weight"] <= float(budget)
        # the LM head (+0.60 bits per weight at 8 bits) first where it fits, then the measured choice
        assert ("/m/lm_head/MatMul" in a["eight_bit"]) == (budget == "6.0") and len(a["eight_bit"]) > 2


def test_eval_cli_prints_perplexity_and_writes_json(tmp_path, capsys):
    art, _, _ = compile_variant(DEMO_MODEL, Variant("fp32", "-"), None)
    js = tmp_path / "ppl.json"
    assert cli.main(["eval", art, "--text", DEMO_HELDOUT, "--max-tokens", "300", "--context", "128",
                     "--json", str(js), "-q"]) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and "bits/byte" in out and "299 tokens" in out
    d = json.loads(js.read_text())
    assert d["tokens"] == 299 and d["context"] == 128 and d["stride"] == 64
    assert 1.0 < d["perplexity"] < 200


def test_eval_compare_prints_one_table(capsys, compare_rows, heldout):
    """The CLI table (on the text's first 512 tokens; the artifacts of the quality tests are reused)."""
    from tcc.runtime.session import load

    assert cli.main(["eval", "--compare", "--max-tokens", "512", "--context", str(CONTEXT),
                     "--stride", str(STRIDE), "-q"]) == 0
    out = capsys.readouterr().out
    assert "511 tokens, windows of 256, stride 128" in out
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(COMPARE_VARIANTS)
    for v in COMPARE_VARIANTS:
        assert any(line.startswith(f"| {v.qm} | {v.row_method} |") for line in table), v
    with load(compare_rows[("w4a8", "AWQ")]["artifact"]) as sess:
        p = evaluate(sess, heldout, context=CONTEXT, stride=STRIDE, max_tokens=512)
    awq = next(line for line in table if line.startswith("| w4a8 | AWQ |"))
    assert f"| {p.ppl:.3f} |" in awq


@pytest.mark.parametrize("argv,message", [
    (["eval", "ART", "--text", "/nonexistent.txt"], "--text: file not found: /nonexistent.txt"),
    (["eval", "ART", "--text", DEMO_HELDOUT, "--context", "64", "--stride", "65"], "--stride must be between 1"),
    (["eval", "ART", "--text", DEMO_HELDOUT, "--context", "100000"], "exceeds the artifact's KV capacity"),
    (["eval", "ART", "--text", "EMPTY"], "the evaluation text is empty"),
    (["eval"], "needs an artifact directory"),
    (["eval", "--compare", "model.txt"], "takes an .onnx model"),
])
def test_eval_errors_are_one_line(tmp_path, capsys, argv, message):
    art, _, _ = compile_variant(DEMO_MODEL, Variant("fp32", "-"), None)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    argv = [art if a == "ART" else str(empty) if a == "EMPTY" else a for a in argv]
    assert cli.main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
