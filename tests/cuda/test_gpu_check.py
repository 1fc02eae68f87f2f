"""benchmarks/gpu/check.py (issue 17's one-call GPU check) end to end on this machine: `--emulate --tiny` runs
tcc's CUDA artifacts on the SIMT emulator with tiny models, and the GPU-only items are recorded as skipped.

Where torch and transformers import, the models are made and exported with them (the path the GPU run takes)
and HF transformers in fp32 on the CPU is the reference and the baseline; elsewhere (CI installs neither) the
script takes the repository's LLaMA fixture and fp32 ONNX Runtime as the reference (`--source fixture`). Either
way the JSON and the table must hold every figure the GPU run reports."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .harness import require_nvcc

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "benchmarks", "gpu", "check.py")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    import tcc
    from tcc import flags

    require_nvcc()  # the artifacts are built by nvcc too (libmodel.so), next to the emulation build
    out, work = tmp_path_factory.mktemp("gpucheck-out"), tmp_path_factory.mktemp("gpucheck-work")
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(tcc.__file__)))  # where `import tcc` finds it
    env = {**os.environ, "TCC_CACHE_DIR": flags.get("cache-dir"),
           "PYTHONPATH": os.pathsep.join(p for p in (pkg, os.environ.get("PYTHONPATH")) if p)}
    r = subprocess.run([sys.executable, SCRIPT, "--emulate", "--tiny", "--skip-models", "tinyllama", "--commit",
                        "test", "--out", str(out), "--work", str(work)], capture_output=True, text=True, env=env,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    with open(out / "check.json") as f:
        res = json.load(f)
    with open(out / "check.md") as f:
        md = f.read()
    return res, md, r.stdout


def test_builds_and_skips(report):
    res, md, stdout = report
    assert res["env"]["mode"] == "emulate" and res["env"]["commit"] == "test" and not res.get("errors")
    assert md in stdout  # the table is printed (the device tool returns the output's tail)
    skipped = " ".join(res["skipped"])
    assert "kernels: needs a GPU" in skipped and "sanitize: needs a GPU" in skipped
    models = res["build"]["models"]
    assert "tinyllama" not in models
    assert set(models["7b"]["artifacts"]) == {"w4a16", "fp16"} and set(models["small"]["artifacts"]) == {"w4a16"}
    for m in models.values():
        assert "error" not in m, m


def test_correctness(report):
    res, md, _ = report
    cor = res["correct"]
    fp16 = cor["7b fp16 vs HF"]
    assert "error" not in fp16, fp16
    # tcc fp16 on the emulator against an fp32 reference: equal tokens, or a difference only at a near-tie
    assert fp16["equal"] or fp16["near_tie"], fp16
    assert fp16["max_abs_logit_diff"] < 0.05, fp16  # of logits ~1: a few fp16 ulps through 2 layers
    ref = cor["small w4a16 vs reference"]
    assert ref["equal"] and ref["of"] == 12, ref  # the same quantized IR: the same tokens
    assert "agree" in cor["7b w4a16 vs tcc fp16"]
    assert "| 7b fp16 vs HF | " in md and "| small w4a16 vs reference | 12/12 tokens equal" in md


def test_speed_figures(report):
    res, md, _ = report
    sp, plan = res["speed"], res["plan"]
    assert sp["bandwidth"]["read_gbs"] > 0
    ctx = [str(c) for c in plan["decode_ctx"]]
    for key in ("7b:tcc:w4a16:graph", "7b:tcc:w4a16:nograph", "7b:tcc:fp16:graph", "7b:tcc:fp16:nograph"):
        r = sp["engines"][key]
        assert "error" not in r, (key, r)
        assert all(r["decode_ms"][c] > 0 for c in ctx) and all(v > 0 for v in r["prefill_tok_s"].values())
        # the bytes a decode step reads: the weights, plus a KV cache growing with the context
        b = r["bytes"]
        assert b[ctx[0]]["weights"] > 0 and 0 < b[ctx[0]]["kv_cache"] < b[ctx[-1]]["kv_cache"]
        assert all(r["roofline"][c] > 0 for c in ctx)
    w4 = sp["engines"]["7b:tcc:w4a16:graph"]["bytes"][ctx[0]]["weights"]
    assert w4 < sp["engines"]["7b:tcc:fp16:graph"]["bytes"][ctx[0]]["weights"]  # int4 weights read less
    names = [t["target"] for t in sp["targets"]]
    assert len(names) == 3 * len(ctx) + 1 and all(t["result"] in ("pass", "miss", "n/a") for t in sp["targets"])
    vs_fp16 = [t for t in sp["targets"] if "vs tcc fp16" in t["target"]]
    assert all(t["value"] > 0 and t["result"] != "n/a" for t in vs_fp16)
    assert "| target | measured | wanted | result |" in md and "| tcc:w4a16 (no graph)" in md
    if res["build"]["models"]["7b"]["source"] == "transformers":
        for key in ("7b:hf-eager", "7b:hf-static", "short:tcc:w4a16:graph", "short:hf-eager"):
            assert "error" not in sp["engines"][key], (key, sp["engines"][key])
        assert all(sp["engines"]["7b:hf-eager"]["decode_ms"][c] > 0 for c in ctx)
        lay = sp["per_layer"]["tcc:w4a16:graph"]
        assert all(lay[c]["bytes"] > 0 for c in ctx) and sp["per_layer"]["layers"] == [2, 1]
        assert "Per layer (slope between 2 and 1 layers" in md
    else:
        assert "--source fixture" in sp["engines"]["7b:hf-eager"]["error"]
