"""Exported LLM decoders compiled with `--target arm`, decoded under qemu-aarch64 on qemu's default CPU
(`max`: dotprod + i8mm + fp16) and on cortex-a53 (none): fp32 against ONNX Runtime, w8a8 / w4a32 / w4a8 / w4a16
against the reference interpreter on the same quantized graph.

How an artifact is driven: a small aarch64 program (`DECODE_SRC`, built once per session) dlopens the
artifact's libmodel.so and calls the C API of runtime/tcc_model.h exactly as the Python Generator does
on x86 (tests/e2e/test_llm.py's `sess.generate`): the prompt as one prefill from an empty cache (here with
every row's logits), then one token per run with one logits row, then a 3-token chunk on the kept cache
(a second chat turn: seq > 1 with past > 0). A program without past (`recompute`) gets the whole context
every run, as the Generator gives it. Every logits row comes back, so besides the tokens (all the `chat`
binary of test_arm_models.py reports) the per-step logits are checked, as on x86. The program is fed
the reference's greedy tokens (teacher forcing) and the token it would pick is checked at every step:
a rounding difference at a near-tie then costs one step's pick, not every later step's comparison.

Checks, per artifact and CPU:
- tokens: at every step the artifact's greedy pick is the reference's top-1 token. Where the
  reference's top-1/top-2 gap is within twice the logit tolerance below, a correct artifact may pick the
  runner-up, so there the pick must only lie within that distance of the reference's maximum (a
  near-tie cannot flake); at least half of the 16 steps must be clear of near-ties, so the token check
  keeps its teeth (the fixtures have 0-6 such steps; the margin of each run is in the assertion text).
- logits (the prefill's rows, the 16 steps' rows, the chunk's rows), tolerances as the x86 tests:
  * fp32 against ONNX Runtime on the original ONNX (greedy driven through the exported KV cache,
    tests/e2e/llm_oracle.py): atol = rtol = 1e-4, as tests/e2e/test_llm.py: the NEON kernels sum in
    another order and use vectorized exp; measured <= 1e-5 here on logits up to ~25, while a wrong mask,
    position or rotation moves logits by O(1).
  * w4a32: 1e-4 too (no run-time rounding; only fp32 summation orders differ; measured <= 7e-6).
  * w8a8 / w4a8: a last-ulp difference before a QuantizeActs can move a value across a rounding
    boundary (one int8 step), so, as tests/e2e/test_quantized_llm.py and test_arm_models.py: mean cosine
    >= 0.9999 and max |diff| <= 1e-2 of the reference's logit range. This happens: gpt2_past_dynamo w4a8
    (tried while choosing the fixtures, not in the set) at decode step 13 has an attention output 5.7e-6
    from a .5 rounding boundary of the next QuantizeActs; the NEON summation order lands on the other
    side (x86's AVX2 order on the interpreter's), and that step's logits move by 0.15 on a range of 22,
    the next step's by 0.09 (the cached K/V of that position). On the fixtures here: <= 8e-6.
  * w4a16 (ir/ops/quant.py act f16): the Linear inputs are rounded to fp16 at run time, a rounding like
    QuantizeActs' with steps of 2^-11: an upstream last-ulp difference (NEON summation order) flips some
    of them on every CPU (measured: opt_past_dynamo's prefill on cortex-a53, whose kernel sums in f32, is
    1e-3 off on 7% of the logits), and on qemu max the kernel also sums each 32-k block in fp16 (4
    roundings of 2^-11 per lane). So the int8 rule above, on both CPUs.
  The int8 paths are exact in their integers on both CPUs (sdot / smmla vs vmull_s8), and the w8a8 / w4a8
  runs of the two CPUs agree to the bit, which is asserted too.
- the manifest: the KV-cache rewrite (one KVAttention per layer) or the recompute form (one Attention per
  layer), no decomposed Softmax left, every matmul / gemm / attention / kvattention kernel the NEON one;
  quantized: the NEON qlinear of the scheme, and NEON quantize_acts / norm_quantize.

Which fixtures (compiles dominate the cost: ~60 s for the runtime, chat and run binaries of the first
artifact, then ~5-8 s each; qemu runs take ~0.2 s):
- x86's tests/e2e/test_llm.py runs every fixture (all 21 of tests/models/llm, the 3 optimum exports)
  and checks the passes, which are target-independent: on arm too the two exporters' past forms of an
  arch optimize to the same ops and kernels, and their nopast forms differ only in how the exported mask
  is gathered (GatherND for dynamo; Flatten, Gather and i64 arithmetic for TorchScript). What arm adds is
  the kernels, specialized to each arch's shapes, and the form picks them: KV-cache decode
  (kvattention-neon at seq 1 and on chunks over a cache) or recompute (attention-neon with the exported
  mask, plus the mask's scalar kernels).
- fp32: every arch in both forms, the exporters alternated so each form runs both (past: gpt2, llama,
  opt from dynamo, gptj, llama_tied from TorchScript; nopast the other way round), plus optimum_opt, the
  optimum export whose graph is none of the above (positions from Range, not CumSum; hidden 64). Left
  out: the other exporter of each arch and form (the same kernels, or the other mask construction that
  another arch runs), llama_past_opset23 (the same optimized graph as llama_past_dynamo),
  llama_past_torchscript (test_arm_models.py runs it through the chat binary), optimum_llama and
  optimum_gpt2 (the llama and gpt2 graphs at hidden 64).
- quantized (w8a8, w4a32, w4a8, w4a16), KV-cache forms only (their prefill runs the many-row QLinear the
  recompute form would): llama_tied_past_torchscript (MQA: k/v projections of N = 12, an o_proj of
  K = 48, i.e. a half-filled last group of 32; vocab 448; w4a8 fuses the RMSNorms with the int8
  quantization) and opt_past_dynamo (biases, ReLU, two quantized tables; w4a8 fuses the LayerNorms with
  the quantization). test_arm_models.py covers llama_outliers (K = 64 / 128, every scheme) by prefill
  and llama_past_torchscript w4a8 through chat.

Skips, with the reason, when the cross toolchain is absent (or on an arm host).
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess

import numpy as np
import pytest
import tcc
from tcc.backends.arm.target import QEMU, SYSROOT, make_target
from tcc.codegen.cmake import RUNTIME_DIR

from tests.conftest import MODELS_DIR
from tests.models.llm.fixtures import fixture, model_path

from .arm_harness import CPU_IDS, CPUS, needs_emulation, shared_dir

pytestmark = needs_emulation

CONTEXT = 32  # 12 prompt + 15 decode steps + 3 chunk tokens = 30
N_NEW = 16
CHUNK = [7, 8, 9]  # the second turn of tests/e2e/test_llm.py
THREADS = 2  # the kernels' pool partitioning runs too
ATOL = RTOL = 1e-4

FP32 = ["gpt2_past_dynamo", "gptj_past_torchscript", "llama_past_dynamo", "llama_tied_past_torchscript",
        "opt_past_dynamo", "gpt2_nopast_torchscript", "gptj_nopast_dynamo", "llama_nopast_torchscript",
        "llama_tied_nopast_dynamo", "opt_nopast_torchscript", "optimum_opt"]
QUANT = ["llama_tied_past_torchscript", "opt_past_dynamo"]
CASES = [(n, "fp32") for n in FP32] + [(n, qm) for n in QUANT for qm in ("w8a8", "w4a32", "w4a8", "w4a16")]


def _model(name: str) -> tuple[str, dict]:
    """(model.onnx, fixture.json) of a fixture of tests/models/llm or tests/models/llm_optimum."""
    if name.startswith("optimum_"):
        folder = os.path.join(MODELS_DIR, "llm_optimum", name[len("optimum_"):])
        with open(os.path.join(folder, "fixture.json")) as f:
            return os.path.join(folder, "model.onnx"), json.load(f)
    return model_path(name), fixture(name)


def _prompt(meta: dict) -> list[int]:
    """The fixture's first greedy prompt, at most 12 tokens (as tests/e2e/test_llm.py)."""
    greedy = meta["greedy"]
    prompts = greedy.get("prompt_ids") or [run["prompt_ids"] for run in greedy["runs"]]
    return [int(t) for t in prompts[0]][:12]


# ------------------------------------------------------------------ the decode driver

DECODE_SRC = r"""// decode LIB WEIGHTS OUT THREADS RECOMPUTE N_STEPS PROMPT FORCED CHUNK (id lists "1,2,3"; "-": none)
// Drives a compiled LLM program as tcc.runtime.generate.Generator does: the prompt (every row's logits),
// N_STEPS greedy picks with one decode run between them (fed FORCED[i] instead of the pick where given),
// then CHUNK on the kept cache (every row). Writes the logits rows to OUT (f32), prints the picks.
#include <dlfcn.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "tcc_model.h"

namespace {
std::vector<int64_t> ids(const char* s) {
  std::vector<int64_t> out;
  if (std::strcmp(s, "-") == 0) return out;
  for (const char* p = s; *p;) {
    char* end;
    out.push_back(std::strtoll(p, &end, 10));
    p = *end ? end + 1 : end;
  }
  return out;
}

[[noreturn]] void die(const std::string& m) {
  std::fprintf(stderr, "decode: %s\n", m.c_str());
  std::exit(1);
}
}  // namespace

#define SYM(f) auto f = reinterpret_cast<decltype(&::f)>(dlsym(lib, #f)); if (!f) die("no symbol " #f)

int main(int argc, char** argv) {
  if (argc != 10) die("usage: decode LIB WEIGHTS OUT THREADS RECOMPUTE N_STEPS PROMPT FORCED CHUNK");
  void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!lib) die(dlerror());
  SYM(tcc_model_load); SYM(tcc_model_run); SYM(tcc_model_last_error); SYM(tcc_model_free);
  SYM(tcc_model_set_logits_rows); SYM(tcc_model_num_outputs); SYM(tcc_model_kv_length);
  const bool recompute = std::atoi(argv[5]) != 0;
  const int n_steps = std::atoi(argv[6]);
  const std::vector<int64_t> prompt = ids(argv[7]), forced = ids(argv[8]), chunk = ids(argv[9]);
  tcc_model* model = tcc_model_load(argv[2], std::atoi(argv[4]));
  if (!model) die(tcc_model_last_error());
  FILE* out = std::fopen(argv[3], "wb");
  if (!out) die("cannot write the logits file");
  std::vector<int64_t> context;
  std::vector<tcc_tensor> outputs(tcc_model_num_outputs());
  // Feed `feed` (the whole context to a recomputing program), write its rows' logits (rows 0: every
  // row of `feed`), return the last row's argmax (lowest id on ties, as tcc_sample at temperature 0).
  auto step = [&](const std::vector<int64_t>& feed, int64_t rows) -> int64_t {
    context.insert(context.end(), feed.begin(), feed.end());
    std::vector<int64_t> x = recompute ? context : feed;
    tcc_tensor in{};
    in.data = x.data();
    in.ndim = 2;
    in.dtype = TCC_I64;
    in.shape[0] = 1;
    in.shape[1] = (int64_t)x.size();
    tcc_model_set_logits_rows(model, rows == 0 ? (int64_t)feed.size() : rows);
    if (tcc_model_run(model, &in, 1, outputs.data(), (int)outputs.size()) != 0) die(tcc_model_last_error());
    if (!recompute && tcc_model_kv_length(model) != (int64_t)context.size()) die("the KV cache lost count");
    const tcc_tensor& lg = outputs[0];
    const int64_t n = lg.shape[1], vocab = lg.shape[2];
    if (lg.ndim != 3 || n != (rows == 0 ? (int64_t)feed.size() : rows)) die("unexpected logits shape");
    const float* data = static_cast<const float*>(lg.data);
    std::fwrite(data, sizeof(float), (size_t)(n * vocab), out);
    const float* last = data + (n - 1) * vocab;
    int64_t best = 0;
    for (int64_t v = 1; v < vocab; ++v)
      if (last[v] > last[best]) best = v;
    return best;
  };
  int64_t tok = step(prompt, 0);
  std::printf("picks:");
  for (int i = 0; i < n_steps; ++i) {
    std::printf(" %lld", (long long)tok);
    if (i + 1 == n_steps) break;
    tok = step({i < (int)forced.size() ? forced[i] : tok}, 1);
  }
  std::printf("\n");
  if (!chunk.empty()) step(chunk, 0);
  std::fclose(out);
  tcc_model_free(model);
  return 0;
}
"""


@pytest.fixture(scope="module")
def decoder(tmp_path_factory) -> str:
    """The decode driver (dynamically linked: it dlopens an artifact's libmodel.so), built once per session."""
    tag = hashlib.sha256(DECODE_SRC.encode()).hexdigest()[:12]
    with shared_dir(tmp_path_factory, "arm_llm_decode") as d:
        exe = d / f"decode-{tag}"
        if not exe.is_file():
            src = d / "decode.cpp"
            src.write_text(DECODE_SRC)
            tmp = d / f"decode.tmp{os.getpid()}"
            proc = subprocess.run([make_target().cross_cxx, "-O1", "-std=c++17", "-I", RUNTIME_DIR, str(src), "-o",
                                   str(tmp), "-ldl"], capture_output=True, text=True, check=False)
            assert proc.returncode == 0, proc.stderr[-3000:]
            os.replace(tmp, exe)
        return str(exe)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """Compile once per (fixture, qm) per session, shared by the pytest-xdist workers. The session's first
    compile runs alone: it builds the runtime, `run` and `chat` objects (~60 CPU-s with a cold ccache),
    which every later artifact then takes from ccache instead of each worker compiling them at once."""
    def build(name: str, qm: str) -> tuple[str, dict]:
        model, _ = _model(name)
        with shared_dir(tmp_path_factory, f"arm_llm_{name}_{qm}") as d:
            out = str(d / "out")
            if not os.path.isfile(os.path.join(out, "manifest.json")):
                tcc.compile(model, out, target="arm", qm=qm, max_context=CONTEXT,
                            round_to_nearest=qm != "fp32")
            with open(os.path.join(out, "manifest.json")) as f:
                return out, json.load(f)

    def get(name: str, qm: str) -> tuple[str, dict]:
        with shared_dir(tmp_path_factory, "arm_llm_first_build") as first:
            if not (first / "done").exists():
                build(name, qm)
                (first / "done").touch()
        return build(name, qm)
    return get


def _decode(decoder: str, out: str, manifest: dict, cpu: str | None, prompt: list[int], forced: list[int]):
    """(picks, prefill rows, step rows, chunk rows) of the artifact under qemu (`-cpu cpu`)."""
    logits = os.path.join(out, f"logits-{cpu or 'max'}-{os.getpid()}.bin")
    lists = [",".join(map(str, x)) for x in (prompt, forced, CHUNK)]
    cmd = ["nice", "-n", "19", QEMU, *(["-cpu", cpu] if cpu else []), "-L", SYSROOT, decoder,
           os.path.join(out, "libmodel.so"), os.path.join(out, "weights.bin"), logits, str(THREADS),
           str(int(bool(manifest["llm"].get("recompute")))), str(N_NEW), *lists]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"decode under qemu ({cpu or 'max'}) exited {proc.returncode}: {proc.stderr[-2000:]}"
    rows = np.fromfile(logits, np.float32).reshape(-1, manifest["llm"]["vocab"])
    os.remove(logits)
    picks = [int(t) for t in proc.stdout.split("picks:")[1].split()]
    p = len(prompt)
    assert len(picks) == N_NEW and len(rows) == p + N_NEW - 1 + len(CHUNK), (len(picks), rows.shape)
    return picks, rows[:p], rows[p - 1:p - 1 + N_NEW], rows[p - 1 + N_NEW:]


# ------------------------------------------------------------------ references


def _ort_reference(model: str, prompt: list[int]):
    """(greedy tokens, prefill rows, step rows, chunk rows) of ONNX Runtime on the original ONNX."""
    from tests.e2e.llm_oracle import OrtDecoder

    ort = OrtDecoder(model)
    tokens, steps = ort.greedy(prompt, N_NEW)
    chunk = ort.all_logits(prompt + tokens[:-1] + CHUNK)[-len(CHUNK):]
    return tokens, ort.all_logits(prompt), np.array(steps), chunk


def _interpreter_reference(model: str, qm: str, prompt: list[int]):
    """The same from the reference interpreter on the arm-optimized quantized graph (the graph the
    artifact was compiled from), its KV cache in a ProgramState, greedy."""
    from tcc.driver import CompileOptions, optimize
    from tcc.ir.interpreter import ProgramState, run_graph

    g, _, _ = optimize(model, CompileOptions(pipeline="optimize", target="arm", qm=qm, max_context=CONTEXT,
                                             round_to_nearest=True))
    recompute = bool(g.meta["llm"].get("recompute"))
    state, context = ProgramState(g), []

    def run(feed: list[int], rows: int) -> np.ndarray:
        context.extend(feed)
        state.logits_rows = rows
        ids = np.array([context if recompute else feed], np.int64)
        return run_graph(g, {"input_ids": ids}, state=state)["logits"][0]

    prefill = run(prompt, len(prompt))
    tokens, steps = [], [prefill[-1]]
    for i in range(N_NEW):
        tokens.append(int(np.argmax(steps[-1])))
        if i + 1 < N_NEW:
            steps.append(run([tokens[-1]], 1)[-1])
    return tokens, prefill, np.array(steps), run(CHUNK, len(CHUNK))


# ------------------------------------------------------------------ checks


def _rounds_at_run_time(qm: str, cpu: str | None) -> bool:
    """Whether the artifact rounds its activations at run time (int8 for w8a8 / w4a8, fp16 for w4a16, on
    every CPU), so that an upstream last-ulp difference can flip a rounding (see the module docstring)."""
    return qm in ("w8a8", "w4a8", "w4a16")


def _logit_bound(qm: str, cpu: str | None, ref: np.ndarray) -> np.ndarray:
    """Per row of `ref`: how far a correct artifact's logit may be from the reference's (the largest
    entry's allowance under the tolerance of `_check_logits`)."""
    if _rounds_at_run_time(qm, cpu):
        return np.full(len(ref), 1e-2 * np.abs(ref).max())
    return ATOL + RTOL * np.abs(ref).max(-1)


def _check_logits(qm: str, cpu: str | None, got: np.ndarray, ref: np.ndarray, what: str) -> None:
    if _rounds_at_run_time(qm, cpu):
        g, r = got.astype(np.float64), ref.astype(np.float64)
        cos = float(np.mean(np.sum(g * r, -1) / np.linalg.norm(g, axis=-1) / np.linalg.norm(r, axis=-1)))
        diff = float(np.abs(g - r).max())
        assert cos >= 0.9999 and diff <= 1e-2 * np.abs(r).max(), f"{what}: cosine {cos:.6f}, max diff {diff:.3g}"
    else:
        np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL, err_msg=what)


def _check_picks(qm: str, cpu: str | None, picks: list[int], tokens: list[int], steps: np.ndarray,
                 what: str) -> None:
    """The artifact's pick is the reference's top-1 token; at a near-tie (top-1/top-2 gap within twice
    the logit bound) it may be any token within that distance of the reference's maximum."""
    bound = _logit_bound(qm, cpu, steps)
    top2 = np.sort(steps, -1)[:, -2:]
    gaps = top2[:, 1] - top2[:, 0]
    near = gaps <= 2 * bound
    margin = f"{what}: top-1/top-2 gaps min {gaps.min():.3g}, {int(near.sum())} of {N_NEW} steps near-ties " \
             f"(gap <= twice the logit bound, {2 * bound.max():.3g})"
    assert near.sum() <= N_NEW // 2, f"too few steps clear of near-ties to check the tokens: {margin}"
    for i, (p, t) in enumerate(zip(picks, tokens)):
        ok = p == t or (near[i] and steps[i, p] >= steps[i].max() - 2 * bound[i])
        assert ok, f"step {i}: picked {p}, reference {t} (logit {steps[i, p]:.6g} vs {steps[i, t]:.6g}); " \
                   f"picks {picks}, reference {tokens}; {margin}"


def _check_manifest(qm: str, manifest: dict, meta: dict) -> None:
    ops, kernels, llm = manifest["ops"], manifest["kernels"], manifest["llm"]
    assert manifest["target"] == "arm"
    layers = int(meta.get("expected_attention") or meta["config"]["layers"])
    assert "Softmax" not in ops, f"decomposed attention remains: {ops}"
    if meta.get("form", "past") == "past":
        assert llm.get("kv_cache"), llm.get("kv_cache_refused")
        assert ops.get("KVAttention") == layers and "Attention" not in ops, ops
        assert "tcc_kvattention_f32__neon" in kernels, kernels
    else:
        assert llm.get("recompute") and ops.get("Attention") == layers, (llm, ops)
        assert "tcc_attention_f32__neon" in kernels, kernels
    linalg = [k for k in kernels if k.startswith(("tcc_matmul_", "tcc_attention_", "tcc_gemm_", "tcc_kvattention_",
                                                  "tcc_qlinear_", "tcc_quantize_acts", "tcc_norm_quantize_"))]
    assert all(k.endswith("__neon") for k in linalg), linalg
    if qm != "fp32":
        assert manifest["quantization"]["scheme"] == qm
        assert f"tcc_qlinear_{qm}__neon" in kernels, kernels
        if qm in ("w8a8", "w4a8"):  # int8 activations (w4a32 / w4a16 take the f32 activations as they are)
            assert any(k.startswith(("tcc_quantize_acts", "tcc_norm_quantize_")) for k in kernels), kernels


@pytest.mark.parametrize("name,qm", CASES, ids=[f"{n}-{q}" for n, q in CASES])
def test_llm_decodes_like_its_reference(name, qm, artifact, decoder):
    model, meta = _model(name)
    out, manifest = artifact(name, qm)
    _check_manifest(qm, manifest, meta)
    prompt = _prompt(meta)
    if qm == "fp32":
        tokens, prefill, steps, chunk = _ort_reference(model, prompt)
    else:
        tokens, prefill, steps, chunk = _interpreter_reference(model, qm, prompt)
    runs = {}
    for cpu, cpu_id in zip(CPUS, CPU_IDS):
        what = f"{name} {qm} on {cpu_id}"
        picks, got_prefill, got_steps, got_chunk = runs[cpu_id] = _decode(decoder, out, manifest, cpu, prompt, tokens)
        _check_logits(qm, cpu, got_prefill, prefill, f"{what}: prefill of {len(prompt)} tokens")
        _check_logits(qm, cpu, got_steps, steps, f"{what}: the {N_NEW} decode steps")
        _check_logits(qm, cpu, got_chunk, chunk, f"{what}: a {len(CHUNK)}-token chunk on the kept cache")
        _check_picks(qm, cpu, picks, tokens, steps, what)
    if qm in ("w8a8", "w4a8"):  # the int8 paths of the two CPUs (sdot / smmla vs vmull_s8) are exact
        a, b = runs.values()
        for x, y, part in zip(a, b, ("picks", "prefill", "steps", "chunk")):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=f"{name} {qm}: {part} differ by CPU")
