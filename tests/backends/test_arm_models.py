"""Whole models compiled with `--target arm` (cross-compiled on x86), run under qemu-aarch64 through the
artifact's static `run` binary, on qemu's default CPU (dotprod) and on cortex-a53 (no dotprod).

Tolerances, as in the x86 end-to-end tests (tests/e2e/test_models.py, test_quantized_llm.py):
- fp32 against ONNX Runtime: atol = rtol = 1e-4 (a few ulps per op from a different accumulation order,
  over ~10-20 ops of O(1) activations).
- quantized (llama_outliers, round to nearest) against the reference interpreter on the same quantized
  graph (target arm): w4a32 and fp32 have no run-time rounding, so 1e-4 as above; with int8 activations
  a last-ulp difference can move a value across a rounding boundary of the next QuantizeActs (one int8
  step), so w8a8 / w4a8 are held to a mean cosine >= 0.9999 and 1e-2 of the logit range. w4a16 rounds
  the Linear inputs to fp16 at run time (steps of 2^-11, where a last-ulp difference upstream can flip a
  rounding likewise), and on a CPU with fp16 arithmetic sums each 32-k block in fp16 (4 roundings of
  2^-11 per lane; the reference sums exactly): measured 1.0e-3 of the logit range (1 - cosine 3e-7) on
  qemu max, 1.7e-6 on cortex-a53 (f32 sums, no flip in this model), so the int8 rule, with 10x margin.
"""
from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
import tcc
from tcc.backends import run_emulated
from tcc.driver import CompileOptions, optimize
from tcc.ir.interpreter import run_graph

from tests.conftest import MODELS_DIR, ort_run

from .arm_harness import CPUS, needs_emulation, shared_dir

pytestmark = needs_emulation
LLM = os.path.join(MODELS_DIR, "llm_quant", "llama_outliers", "model.onnx")
LLM_OPTS = {"max_context": 64, "round_to_nearest": True}


def _feeds(name: str, batch: int, seq: int, seed: int) -> dict:
    r = np.random.default_rng(seed)
    if name == "mlp":
        return {"x": r.standard_normal((batch, 32)).astype(np.float32)}
    x = r.standard_normal((batch, seq, 64)).astype(np.float32)
    mask = np.zeros((batch, 1, seq, seq), np.float32)
    mask[..., seq // 2 + 1:] = -1e9
    return {"x": x, "attn_mask": mask}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """Compile once per session, shared by the pytest-xdist workers (compiles are the slow part)."""
    def get(key, model, **opts):
        with shared_dir(tmp_path_factory, f"arm_artifact_{key}") as d:
            out = str(d / "out")
            if not os.path.isfile(os.path.join(out, "manifest.json")):
                tcc.compile(model, out, target="arm", **opts)
            return out, _manifest(out)
    return get


def _manifest(out: str) -> dict:
    with open(os.path.join(out, "manifest.json")) as f:
        return json.load(f)


def _no_portable_linalg(manifest: dict) -> None:
    """Every matmul / attention / gemm kernel of an arm artifact is the NEON one (none falls back to scalar)."""
    linalg = [k for k in manifest["kernels"] if k.startswith(("tcc_matmul_", "tcc_attention_", "tcc_gemm_"))]
    assert all(k.endswith("__neon") for k in linalg), linalg


def _elf(path: str) -> tuple[int, int, bool]:
    """(e_type, e_machine, has a PT_INTERP program header) of a 64-bit little-endian ELF file."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, f"{path} is not a 64-bit LE ELF"
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    phoff, = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    interp = any(struct.unpack_from("<I", data, phoff + i * phentsize)[0] == 3 for i in range(phnum))
    return e_type, e_machine, interp


@pytest.mark.parametrize("name", ["mlp", "encoder"])
def test_fp32_model_matches_onnxruntime(name, artifacts):
    path = os.path.join(MODELS_DIR, name + ".onnx")
    out, manifest = artifacts(name, path, max_dims={"*": 32})
    assert manifest["target"] == "arm"
    _no_portable_linalg(manifest)
    if name == "encoder":  # its self-attention runs the NEON fused attention kernel
        assert "tcc_attention_f32__neon" in manifest["kernels"], manifest["kernels"]
    for cpu in CPUS:
        for batch, seq, seed in ((1, 1, 0), (2, 7, 1)):
            feeds = _feeds(name, batch, seq, seed)
            got, _ = run_emulated(out, manifest, feeds, cpu=cpu)
            want = ort_run(path, feeds)
            for k in want:
                np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-4,
                                           err_msg=f"{name} {k} b={batch} s={seq} cpu={cpu}")


def test_artifact_is_aarch64_pic_library_and_static_run(artifacts):
    out, _ = artifacts("mlp", os.path.join(MODELS_DIR, "mlp.onnx"), max_dims={"*": 32})
    AARCH64, ET_EXEC, ET_DYN = 183, 2, 3
    lib_type, lib_machine, _ = _elf(os.path.join(out, "libmodel.so"))
    assert (lib_type, lib_machine) == (ET_DYN, AARCH64)
    run_type, run_machine, interp = _elf(os.path.join(out, "run"))
    assert run_machine == AARCH64 and run_type in (ET_EXEC, ET_DYN) and not interp, "run must be static"


@pytest.mark.parametrize("qm", ["fp32", "w8a8", "w4a32", "w4a8", "w4a16"])
def test_decoder_computes_its_ir(qm, artifacts):
    out, manifest = artifacts(f"llm-{qm}", LLM, qm=qm, **LLM_OPTS)
    kernels = manifest["kernels"]
    _no_portable_linalg(manifest)
    if qm in ("w8a8", "w4a8"):
        assert f"tcc_qlinear_{qm}__neon" in kernels and "tcc_quantize_acts__neon" in kernels
    ids = np.random.default_rng(7).integers(0, 200, (1, 20)).astype(np.int64)
    g, _, _ = optimize(LLM, CompileOptions(pipeline="optimize", target="arm", qm=qm, **LLM_OPTS))
    ref = run_graph(g, {"input_ids": ids})["logits"][0].astype(np.float64)
    if qm == "w4a16":
        assert "tcc_qlinear_w4a16__neon" in kernels
    for cpu in CPUS:
        got = run_emulated(out, manifest, {"input_ids": ids}, cpu=cpu)[0]["logits"][0].astype(np.float64)
        if qm in ("fp32", "w4a32"):
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4, err_msg=f"{qm} cpu={cpu}")
        else:
            cos = np.mean(np.sum(got * ref, -1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(ref, axis=-1))
            assert cos >= 0.9999, (qm, cpu, cos)
            assert np.abs(got - ref).max() <= 1e-2 * np.abs(ref).max(), (qm, cpu)


def test_cli_run_needs_emulate_and_says_so(artifacts, tmp_path, capsys):
    from tcc.cli import main

    out, _ = artifacts("mlp", os.path.join(MODELS_DIR, "mlp.onnx"), max_dims={"*": 32})
    x = tmp_path / "x.npy"
    np.save(x, np.ones((2, 32), np.float32))
    assert main(["run", out, "-i", f"x={x}", "-o", str(tmp_path)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--emulate" in err[0] and "aarch64" in err[0], err
    assert main(["run", out, "--emulate", "--emulate-cpu", "cortex-a53", "-i", f"x={x}", "-o", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "under emulation" in captured.err and "cortex-a53" in captured.err
    y = np.load(tmp_path / "probs.npy")
    np.testing.assert_allclose(y, ort_run(os.path.join(MODELS_DIR, "mlp.onnx"), {"x": np.load(x)})["probs"],
                               rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ an exported LLM through the `chat` binary

CHAT_LLM = os.path.join(MODELS_DIR, "llm", "llama_past_torchscript", "model.onnx")
CHAT_CPUS = [None, "cortex-a76", "cortex-a53"]  # smmla + sdot, sdot, vmull_s8 (the prompt is a 13-token prefill)
N_NEW = 16


def _chat_ids(out: str, cpu: str | None) -> tuple[list[int], list[int]]:
    """(prompt ids, reply ids) of a greedy `chat --raw` run of the artifact under qemu (stops at eos)."""
    import subprocess

    from tcc.backends.arm.target import QEMU, SYSROOT

    cmd = ["nice", "-n", "19", QEMU, *(["-cpu", cpu] if cpu else []), "-L", SYSROOT, os.path.join(out, "chat"), out,
           "--raw", "--prompt", "Once upon a time", "--temperature", "0", "--repetition-penalty", "1",
           "--max-new-tokens", str(N_NEW), "--print-ids", "--threads", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("ids:"))
    prompt, reply = line[4:].split("|")
    return [int(t) for t in prompt.split()], [int(t) for t in reply.split()]


def _interpreter_greedy(model: str, prompt: list[int], n_new: int, **opts) -> list[int]:
    """Greedy tokens of the reference interpreter on the arm-optimized graph (the graph the artifact was
    compiled from; its KV cache is the interpreter's ProgramState): the prompt as one prefill, then one token
    per run, as `chat` does. No eos stop: the caller cuts the reply where the binary stopped."""
    from tcc.ir.interpreter import ProgramState

    g, _, _ = optimize(model, CompileOptions(pipeline="optimize", target="arm", **opts))
    state = ProgramState(g)
    state.logits_rows = 1
    tokens, new = [], list(prompt)
    for _ in range(n_new):
        logits = run_graph(g, {"input_ids": np.array([new], np.int64)}, state=state)["logits"]
        new = [int(np.argmax(logits[0, -1]))]
        tokens.append(new[0])
    return tokens


@pytest.mark.parametrize("qm", ["fp32", "w4a8"])
def test_llm_chat_greedy_matches(qm, artifacts):
    """The standalone aarch64 `chat` binary, greedy, on every CPU path: fp32 gives ONNX Runtime's tokens
    (greedy decoding driven through the original ONNX; the fixture keeps top-1/top-2 gaps >= 1e-3, far above
    the fp32 differences, see tests/e2e/test_llm.py); w4a8 gives the tokens of the reference interpreter
    greedily decoding the same quantized graph with its KV cache (`_interpreter_greedy`: the same quantized
    weights and bit-exact int8 activations, only float summation orders differ). The reply stops at an eos
    token, so it must be a prefix of the reference ending there."""
    out, manifest = artifacts(f"chat-{qm}", CHAT_LLM, qm=qm, max_context=64)
    assert manifest["binaries"].get("chat") and manifest["llm"]["kv_cache"]
    if qm == "w4a8":
        assert "tcc_qlinear_w4a8__neon" in manifest["kernels"]
    eos = set(manifest["llm"]["eos_token_ids"])
    results = {cpu: _chat_ids(out, cpu) for cpu in CHAT_CPUS}
    prompt = results[None][0]
    if qm == "fp32":
        from tests.e2e.llm_oracle import OrtDecoder

        want, _ = OrtDecoder(CHAT_LLM).greedy(prompt, N_NEW)
    else:
        want = _interpreter_greedy(CHAT_LLM, prompt, N_NEW, qm=qm, max_context=64)
    for cpu, (p, reply) in results.items():
        assert p == prompt
        n = len(reply)
        assert reply == want[:n] and (n == N_NEW or want[n] in eos), (qm, cpu, reply, want)


def test_cli_chat_and_generate_under_emulation(artifacts):
    """`tcc chat|generate` of an arm artifact on x86: a one-line error naming --emulate without it; with it,
    the artifact's static chat binary under qemu on the user's terminal, the sampling options passed on
    (greedy here, so the text is that of the binary run directly)."""
    import subprocess
    import sys

    from tcc.backends.arm.target import QEMU, SYSROOT

    out, _ = artifacts("chat-w4a8", CHAT_LLM, qm="w4a8", max_context=64)
    tcc = [sys.executable, "-m", "tcc.cli"]
    greedy = ["--temperature", "0", "--repetition-penalty", "1", "--max-new-tokens", "8"]
    for cmd in ("chat", "generate"):
        r = subprocess.run([*tcc, cmd, out, "--prompt", "x"] if cmd == "generate" else [*tcc, cmd, out],
                           input="", capture_output=True, text=True, check=False)
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and "--emulate" in r.stderr, r.stderr
    direct = subprocess.run([QEMU, "-cpu", "cortex-a53", "-L", SYSROOT, os.path.join(out, "chat"), out, "--raw",
                             "--prompt", "Once upon a time", *greedy], capture_output=True, check=False)
    gen = subprocess.run([*tcc, "generate", out, "--emulate", "--emulate-cpu", "cortex-a53", "--prompt",
                          "Once upon a time", *greedy], capture_output=True, check=False)
    assert direct.returncode == 0 and gen.returncode == 0, gen.stderr[-500:]
    assert gen.stdout == direct.stdout and b"under emulation (qemu -cpu cortex-a53)" in gen.stderr
    chat = subprocess.run([*tcc, "chat", out, "--emulate", *greedy], input=b"Once upon a time\n/quit\n",
                          capture_output=True, check=False)
    assert chat.returncode == 0 and chat.stdout.strip(), chat.stderr[-500:]
    bad = subprocess.run([*tcc, "generate", out, "--emulate", "--prompt-ids", "1 2"], capture_output=True, text=True,
                         check=False)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "--prompt-ids" in bad.stderr
