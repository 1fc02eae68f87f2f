"""Bit allocation end to end (passes/bit_allocation.py): a small embedding + MLP + LM head ONNX model compiled
with --qm w4a8 / w4a32 in every precision mix, run, and compared with ONNX Runtime's fp32.

Checks:
- the bytes the allocation counts are exactly weights.bin (the model's only constants are the quantized
  weights, every size a multiple of the 64-byte alignment, so nothing else is stored), for the default mix,
  a budget and the pure 4-bit form;
- the kernels: an 8-bit LM head inside w4a8 runs on the w8a8 kernel and the 8-bit embedding on the 8-bit
  qgather kernel; pure w4a8 uses neither; w4a32 keeps its LM head on the w4a32 kernel (no 8-bit f32 kernel);
- quality: the default mix's logits are closer to ONNX Runtime's fp32 than the all-4-bit ones (mean squared
  error; the mix changes only the embedding and LM head, whose int4 error is ~70x their int8 error);
- the same artifact built for arm and run under qemu-aarch64 gives the x86 artifact's logits (the int8 paths
  are exact in their integers; the float sums may differ in order: 1e-4 of the logit range);
- bad --budget-bits values: one-line errors, non-zero exit, no artifact.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import tcc

V, K, H, SEQ = 256, 64, 128, 16


def _model(path: str, tied: bool = False) -> str:
    """tied: the LM head's weight is the embedding's transpose, a second initializer (as exporters write a
    tied embedding)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    table = rng.standard_normal((V, K)).astype(np.float32)
    up = (rng.standard_normal((K, H)) / np.sqrt(K)).astype(np.float32)
    down = (rng.standard_normal((H, K)) / np.sqrt(H)).astype(np.float32)
    head = (rng.standard_normal((K, V)) / np.sqrt(K)).astype(np.float32)
    if tied:
        head = np.ascontiguousarray(table.T)
    inits = [numpy_helper.from_array(table, "embed.weight"), numpy_helper.from_array(up, "up.weight"),
             numpy_helper.from_array(down, "down.weight"), numpy_helper.from_array(head, "lm_head.weight")]
    nodes = [helper.make_node("Gather", ["embed.weight", "ids"], ["h"], name="embed", axis=0),
             helper.make_node("MatMul", ["h", "up.weight"], ["u"], name="up"),
             helper.make_node("Relu", ["u"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "down.weight"], ["d"], name="down"),
             helper.make_node("Add", ["h", "d"], ["res"], name="residual"),
             helper.make_node("MatMul", ["res", "lm_head.weight"], ["logits"], name="lm_head")]
    graph = helper.make_graph(nodes, "mix", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, "seq"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "seq", V])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return _model(str(tmp_path_factory.mktemp("mix") / "model.onnx"))


@pytest.fixture(scope="module")
def ids():
    return np.random.default_rng(1).integers(0, V, (1, SEQ)).astype(np.int64)


@pytest.fixture(scope="module")
def fp32(model, ids):
    import onnxruntime as ort

    return ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(["logits"], {"ids": ids})[0]


@pytest.fixture(scope="module")
def compiled(model, tmp_path_factory):
    cache = {}

    def get(qm: str, budget=None, target: str = "x86"):
        key = (qm, budget, target)
        if key not in cache:
            out = str(tmp_path_factory.mktemp("art") / f"{qm}-{budget}-{target}")
            cache[key] = (out, tcc.compile(model, out, target=target, qm=qm, budget_bits=budget,
                                           max_dims={"seq": SEQ}))
        return cache[key]
    return get


def _logits(out: str, ids) -> np.ndarray:
    with tcc.load(out) as sess:
        return sess.run({"ids": ids})["logits"]


@pytest.mark.parametrize("budget,eight", [(None, ["embed", "lm_head"]), ("pure", []), (5.5, None)])
def test_weights_bin_holds_exactly_the_counted_bytes(compiled, budget, eight):
    out, m = compiled("w4a8", budget)
    a = m["quantization"]["bit_allocation"]
    assert a["weight_bytes"] == m["weights"]["bytes"] == os.path.getsize(os.path.join(out, "weights.bin"))
    weights = V * K + K * H + H * K + K * V
    assert a["weights"] == weights and a["bits_per_weight"] == round(8 * a["weight_bytes"] / weights, 4)
    if eight is not None:
        assert sorted(a["eight_bit"]) == eight
    else:  # 5.5 bits: 1 bit per weight over the floor = 6144 bytes, room for up (+4096) or down (+3840), not
        # both, nor the embedding or LM head (+8192 each)
        assert a["criterion"] == "weight-error" and a["bits_per_weight"] <= 5.5
        assert len(a["eight_bit"]) == 1 and a["eight_bit"][0] in ("up", "down")
    assert a["layers"] == {n: 8 if n in a["eight_bit"] else 4 for n in ("embed", "up", "down", "lm_head")}


def test_kernels_per_mix(compiled):
    _, mix = compiled("w4a8")
    _, pure = compiled("w4a8", "pure")
    _, w4a32 = compiled("w4a32")
    assert {"tcc_qlinear_w8a8__all", "tcc_qlinear_w4a8__all", "tcc_qgather_8__scalar"} <= set(mix["kernels"])
    assert not any("w8a8" in k or "qgather_8" in k for k in pure["kernels"]) and "tcc_qgather_4__scalar" in pure["kernels"]
    assert "tcc_qgather_8__scalar" in w4a32["kernels"] and not any("w8a8" in k for k in w4a32["kernels"])
    assert w4a32["quantization"]["bit_allocation"]["eight_bit"] == ["embed"]


def test_the_mix_is_closer_to_fp32(compiled, ids, fp32):
    err = {b: float(np.mean((_logits(compiled("w4a8", b)[0], ids) - fp32) ** 2)) for b in (None, "pure")}
    assert err[None] < 0.5 * err["pure"], err


@pytest.mark.skipif(subprocess.run(["which", "qemu-aarch64"], capture_output=True).returncode != 0,
                    reason="qemu-aarch64 absent")
def test_arm_artifact_under_qemu_matches_x86(compiled, ids):
    from tcc.backends import run_emulated
    from tcc.backends.arm.target import cross_toolchain_missing

    if cross_toolchain_missing():
        pytest.skip(f"arm cross toolchain absent: {cross_toolchain_missing()}")
    out, m = compiled("w4a8", None, "arm")
    assert {"tcc_qlinear_w8a8", "tcc_qgather_8"} <= {k.split("__")[0] for k in m["kernels"]}
    got, _ = run_emulated(out, m, {"ids": ids})
    want = _logits(compiled("w4a8")[0], ids)
    np.testing.assert_allclose(got["logits"], want, rtol=0, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("args,message", [
    (["--qm", "w4a8", "--budget-bits", "abc"], "--budget-bits must be a number of bits per weight"),
    (["--qm", "w4a8", "--budget-bits", "4"], "--budget-bits 4 is below the 4-bit floor of this model: 4.500"),
    (["--qm", "w4a8", "--budget-bits", "inf"], "--budget-bits must be a positive number"),
    (["--qm", "w8a8", "--budget-bits", "5"], "--budget-bits applies to the schemes with 4-bit weights"),
    (["--budget-bits", "5"], "--budget-bits applies to the schemes with 4-bit weights"),  # fp32
])
def test_bad_budget_is_one_line_error(model, tmp_path, args, message):
    r = subprocess.run([sys.executable, "-m", "tcc.cli", "compile", model, "-o", str(tmp_path / "bad"), "-q", *args],
                       capture_output=True, text=True)
    errors = [ln for ln in r.stderr.splitlines() if not ln.startswith("tcc: warning:")]  # the RTN warning
    assert r.returncode != 0 and len(errors) == 1 and errors[0].startswith(f"tcc: error: {message}"), r.stderr
    assert not (tmp_path / "bad").exists()


def test_cli_summary_and_manifest(model, tmp_path):
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "-m", "tcc.cli", "compile", model, "-o", str(out), "--qm", "w4a8",
                        "--budget-bits", "4.75", "--max-dim", f"seq={SEQ}", "-q"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "manifest.json").read_text())
    a = m["quantization"]["bit_allocation"]
    assert a["budget_bits"] == 4.75 and m["options"]["budget_bits"] == 4.75
    line = f"bit allocation: 8-bit: {', '.join(a['eight_bit']) or 'none'}; {a['bits_per_weight']:.2f} bits/weight"
    assert line in r.stdout, r.stdout
