"""Whole Metal programs: the repository's LLM fixtures compiled with `--target metal` (the generated .metal
kernels, the macOS project, and the emulation build) and run on the CPU SIMT emulator against the reference
interpreter on the same fp16 / w4a16 / w4a32 IR (pattern: tests/cuda/test_program.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tcc.driver import CompileOptions, compile_model
from tcc.errors import TccError
from tcc.runtime.session import load
from tests.cuda.test_program import NEW, PROMPT, _reference_greedy

MODELS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "models", "llm")
# The decoder families with a KV cache, each at one or both schemes (every compile builds a whole program: the
# file stays near 3 minutes); one decoder without past inputs (generation recomputes the sequence: attention
# without a KV cache).
CONFIGS = (("llama_past_dynamo", "fp16"), ("llama_past_dynamo", "w4a16"), ("gpt2_past_dynamo", "w4a16"),
           ("gptj_past_dynamo", "fp16"), ("opt_past_dynamo", "w4a16"), ("llama_nopast_dynamo", "fp16"),
           ("llama_past_dynamo", "w4a32"))
CONTEXT = 64


def _options(qm: str) -> CompileOptions:
    # group 32: the fixtures' hidden size is 64 (the default 128 would be one group wider than a row)
    return CompileOptions(target="metal", qm=qm, max_context=CONTEXT, group_size=32 if qm != "fp16" else None,
                          round_to_nearest=True)


@pytest.fixture(scope="module", params=CONFIGS, ids=lambda p: f"{p[0]}-{p[1]}")
def compiled(request, tmp_path_factory):
    fixture, qm = request.param
    model = os.path.join(MODELS, fixture, "model.onnx")
    out = str(tmp_path_factory.mktemp("metal") / f"{fixture}-{qm}")
    manifest = compile_model(model, out, _options(qm))
    return model, qm, out, manifest


def test_emulated_generation_matches_the_reference_interpreter(compiled):
    model, qm, out, manifest = compiled
    assert manifest["target"] == "metal" and manifest["qm"] == qm
    assert manifest["library"] == manifest["emulation"]["library"] in manifest["files"]
    want, want_logits = _reference_greedy_metal(model, qm)
    sess = load(out, emulate=True)
    got = sess.generate(PROMPT, max_new_tokens=NEW, temperature=0.0, repetition_penalty=1.0, eos_ids=(),
                        keep_logits=True)
    assert got.tokens == want
    # the kernels accumulate in fp32 where the interpreter's numpy rounds per op: the same tokens, and logits
    # within a few fp16 ulps of the logit scale (|logits| ~ 3: ulp 2^-9 ~ 2e-3), as for CUDA
    np.testing.assert_allclose(np.array(got.step_logits), np.array(want_logits), atol=2e-2, rtol=0)


def _reference_greedy_metal(model, qm):
    """tests/cuda/test_program.py's reference with this target's options (the same fp16 / w4a16 IR)."""
    import tests.cuda.test_program as cuda_program

    saved = cuda_program._options
    cuda_program._options = _options
    try:
        return _reference_greedy(model, qm)
    finally:
        cuda_program._options = saved


def test_cli_generate_emulate_and_refusals(compiled, tmp_path):
    _, qm, out, _ = compiled
    tcc = [sys.executable, "-m", "tcc.cli"]
    r = subprocess.run(tcc + ["generate", out, "--emulate", "--prompt-ids", ",".join(map(str, PROMPT)),
                              "--max-new-tokens", "4", "--temperature", "0", "--ids"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.split()) == 4
    if sys.platform != "darwin":  # without --emulate: one line naming --emulate
        for cmd in (["generate", out, "--prompt-ids", "1,2", "--max-new-tokens", "1"], ["run", out, "--random"]):
            r = subprocess.run(tcc + cmd, capture_output=True, text=True)
            lines = r.stderr.strip().splitlines()
            assert r.returncode != 0 and len(lines) == 1 and "--emulate" in lines[0], r.stderr
        with pytest.raises(TccError, match="emulate"):
            load(out)


def test_artifact_holds_the_macos_project(compiled):
    _, _, out, manifest = compiled
    project = os.path.join(out, "metal")
    assert os.path.isfile(os.path.join(project, "CMakeLists.txt"))
    kernels = os.listdir(os.path.join(project, "src", "kernels"))
    assert kernels and all(k.endswith(".metal") for k in kernels)
    assert os.path.isfile(os.path.join(project, "runtime", "metal", "device_metal.mm"))
    with open(os.path.join(out, "manifest.json")) as f:
        assert json.load(f)["macos"]["recipe"] == "metal/CMakeLists.txt"
