"""`tcc compile --tune` (codegen/tuning.py, backends/x86/tuning.py): tuned kernel specs, the search on a
model's Linear problems, the tuning cache, what reaches the artifact, the refusal for emulated targets,
and `tcc bench --vs-default`.

Correctness of every value the tuner may choose is checked in the kernel tests (tests/kernels: the
`corner_specs` kernels against the numpy references); here a tuned model is compared with the same model
built with the default kernels. The search itself runs with a tiny time budget: these tests check what it
does with its measurements, not which parameters are fastest (that is `tcc bench`'s business).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tcc.backends.x86 import tuning as x86_tuning
from tcc.backends.x86.kernels import select
from tcc.codegen import tuning
from tcc.driver import CompileOptions, compile_model, options_from_dict, options_to_dict
from tcc.errors import TccError
from tests.conftest import MODELS_DIR

LLAMA = os.path.join(MODELS_DIR, "llm", "llama_past_torchscript", "model.onnx")
MLP = os.path.join(MODELS_DIR, "mlp.onnx")


@pytest.fixture
def quick_search(monkeypatch):
    """Milliseconds per candidate instead of a second: the choices are noise, the mechanics are not."""
    monkeypatch.setattr(x86_tuning, "BUDGET_S", 0.01)
    monkeypatch.setattr(x86_tuning, "ROUNDS", 2)
    monkeypatch.setattr(x86_tuning, "STREAM_BYTES", 1 << 20)


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    path = tmp_path / "tuning.json"
    monkeypatch.setattr(tuning, "cache_path", lambda: str(path))
    return path


def _logits(out: str, ids: list[int]) -> np.ndarray:
    """Logits of a prefill (GEMM path) followed by single-token steps (GEMV path)."""
    from tcc.runtime.session import load

    with load(out, threads=2) as sess:
        g = sess.generator
        rows = [g.logits_of(ids[:-3])]
        rows += [g.feed([t], logits_rows=1) for t in ids[-3:]]
    return np.concatenate(rows, axis=0)


# -------------------------------------------------------------------------------------- kernel specs

def test_tuned_spec_names_its_choices_and_drops_defaults():
    base = select("qlinear_w4a8")
    default_mc = base.context()["GEMM_MC"]
    assert base.tuned(GEMM_MC=default_mc) == base  # tuned to the defaults = the default kernel
    t = base.tuned(GEMM_MC=32, PREFETCH_BYTES=0)
    assert t.name == "tcc_qlinear_w4a8__all_gemmmc32_prefetchbytes0"
    assert t.context()["GEMM_MC"] == 32 and t.context()["PREFETCH_BYTES"] == 0
    assert t.signature == base.signature.replace(base.name, t.name)
    assert t.tuned(GEMM_MC=default_mc).name == "tcc_qlinear_w4a8__all_prefetchbytes0"
    with pytest.raises(KeyError, match="no free parameter NOPE"):
        base.tuned(NOPE=1)


def test_search_space_candidates_include_the_defaults():
    """A knob whose default is not a candidate could never be kept by the search."""
    for family, knobs in x86_tuning.SPACE.items():
        ctx = select(family, **x86_tuning.KERNEL_PARAMS.get(family, {})).context()
        for knob in knobs:
            assert ctx[knob.key] in knob.candidates, (family, knob.key)


def test_linear_problems_of_a_quantized_llm():
    from tcc.driver import optimize

    # every layer 4-bit (the default mix runs its LM head on the w8a8 kernel: passes/bit_allocation.py)
    graph, ctx, _ = optimize(LLAMA, CompileOptions(qm="w4a8", round_to_nearest=True, budget_bits="pure"))
    problems = {x86_tuning.linear_problem(n, ctx.symbol_bounds) for n in graph.nodes} - {None}
    assert problems and all(p.family == "qlinear_w4a8" for p in problems)
    bound = max(ctx.symbol_bounds.values())
    for p in problems:  # decode (one row) and prefill (the bounded rows) of a dynamic sequence
        assert p.rows[0] == 1 and 1 < p.rows[-1] <= bound and p.group == 32, p


# -------------------------------------------------------------------------------------- the search

def test_tune_compiles_a_model_that_matches_the_default_one(tmp_path, quick_search, own_cache):
    default = compile_model(LLAMA, str(tmp_path / "default"), CompileOptions(qm="w4a8", round_to_nearest=True))
    m = compile_model(LLAMA, str(tmp_path / "tuned"), CompileOptions(qm="w4a8", round_to_nearest=True, tune=True,
                                                                      tune_threads=2))
    t = m["tuning"]
    assert t["threads"] == 2 and t["problems"] and not any(p["cached"] for p in t["problems"])
    for p in t["problems"]:
        assert p["kernel"] in m["kernels"] or not p["choice"]
        assert set(p["ms"]) <= {"1", str(max(m["symbols"].values()))}
    assert "tcc_qlinear_w4a8__all" in default["kernels"]
    # The same integer arithmetic; a tuned GEMV/GEMM crossover may sum the f32 epilogue in another
    # order (a few ulp of |logit|), far below one int4 code's effect.
    ids = list(range(5, 45))
    a, b = _logits(str(tmp_path / "default"), ids), _logits(str(tmp_path / "tuned"), ids)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())
    entries = json.loads(own_cache.read_text())
    assert len(entries) == len(t["problems"])


def test_tuning_cache_makes_recompiles_measure_nothing(tmp_path, quick_search, own_cache, monkeypatch):
    opts = dict(qm="w4a8", round_to_nearest=True, tune=True, tune_threads=2)
    first = compile_model(LLAMA, str(tmp_path / "a"), CompileOptions(**opts))["tuning"]

    def no_measuring(*a, **k):
        raise AssertionError("a cached problem was measured again")

    monkeypatch.setattr(x86_tuning, "search", no_measuring)
    second = compile_model(LLAMA, str(tmp_path / "b"), CompileOptions(**opts))["tuning"]
    assert all(p["cached"] for p in second["problems"])
    assert [p["choice"] for p in second["problems"]] == [p["choice"] for p in first["problems"]]
    # Another thread count is another machine as far as tuning goes.
    with pytest.raises(AssertionError, match="measured again"):
        compile_model(LLAMA, str(tmp_path / "c"), CompileOptions(**{**opts, "tune_threads": 1}))


def _forced(choice: dict, tuned_ms: float):
    def search(lib, base, problem, threads):
        return dict(choice)

    def compare(lib, base, tuned, problem, threads):
        return {m: (1.0, tuned_ms) for m in problem.rows}

    return search, compare


def test_a_chosen_combination_reaches_the_program(tmp_path, own_cache, monkeypatch):
    """Whatever the search picks is the kernel the model calls (and it computes the same logits)."""
    choice = {"GEMM_MC": 32, "GEMV_MAX_M": 6, "PREFETCH_BYTES": 0}
    search, compare = _forced(choice, 0.5)
    monkeypatch.setattr(x86_tuning, "search", search)
    monkeypatch.setattr(x86_tuning, "compare", compare)
    pure = {"budget_bits": "pure"}  # every layer on the w4a8 kernel (the default mix's LM head is w8a8)
    m = compile_model(LLAMA, str(tmp_path / "t"), CompileOptions(qm="w4a8", round_to_nearest=True, tune=True, **pure))
    name = "tcc_qlinear_w4a8__all_gemmmc32_gemvmaxm6_prefetchbytes0"
    assert m["kernels"].count(name) == 1 and "tcc_qlinear_w4a8__all" not in m["kernels"]
    assert all(p["choice"] == choice and p["kernel"] == name for p in m["tuning"]["problems"])
    program = open(os.path.join(flags_build_dir(tmp_path / "t"), "src", "model.cpp")).read()
    assert f"{name}(" in program and "tcc_qlinear_w4a8__all(" not in program
    default = compile_model(LLAMA, str(tmp_path / "d"), CompileOptions(qm="w4a8", round_to_nearest=True, **pure))
    assert default["kernels"].count("tcc_qlinear_w4a8__all") == 1
    ids = list(range(7, 30))
    a, b = _logits(str(tmp_path / "d"), ids), _logits(str(tmp_path / "t"), ids)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())  # see the test above


def flags_build_dir(out) -> str:
    from tcc.driver import _default_build_dir

    return _default_build_dir(str(out))


def test_a_combination_slower_than_the_defaults_is_dropped(tmp_path, own_cache, monkeypatch):
    search, compare = _forced({"GEMM_MC": 32}, 1.2)  # 20% slower than the default
    monkeypatch.setattr(x86_tuning, "search", search)
    monkeypatch.setattr(x86_tuning, "compare", compare)
    m = compile_model(MLP, str(tmp_path / "t"), CompileOptions(qm="w8a8", tune=True))
    assert m["tuning"]["problems"] and all(not p["choice"] for p in m["tuning"]["problems"])
    assert all(p["tried"] == {"GEMM_MC": 32} for p in m["tuning"]["problems"])
    assert "tcc_qlinear_w8a8__all" in m["kernels"]


def test_fp32_gemm_problems_are_tuned(tmp_path, quick_search, own_cache):
    m = compile_model(MLP, str(tmp_path / "t"), CompileOptions(tune=True, max_dims={"batch": 64}))
    fams = {p["problem"].split()[0] for p in m["tuning"]["problems"]}
    assert fams == {"gemm"}
    assert all(p["problem"].endswith("m=1,64") for p in m["tuning"]["problems"])


def test_kernel_variant_override_has_nothing_to_tune(tmp_path, own_cache):
    m = compile_model(MLP, str(tmp_path / "t"), CompileOptions(qm="w8a8", tune=True, kernel_variant="naive"))
    assert m["tuning"]["problems"] == []


# -------------------------------------------------------------------------------------- refusals, CLI

def test_tune_refuses_an_emulated_target(tmp_path):
    with pytest.raises(TccError, match="only under emulation.*compile without --tune"):
        compile_model(MLP, str(tmp_path / "arm"), CompileOptions(target="arm", tune=True))
    assert not os.path.exists(tmp_path / "arm")
    r = subprocess.run([sys.executable, "-m", "tcc.cli", "compile", MLP, "-o", str(tmp_path / "arm"), "--target", "arm",
                        "--tune"], capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "emulation" in lines[0], r.stderr


def test_tune_threads_must_be_positive(tmp_path):
    with pytest.raises(TccError, match="--tune-threads must be at least 1"):
        compile_model(MLP, str(tmp_path / "t"), CompileOptions(qm="w8a8", tune=True, tune_threads=-2))


def test_manifest_options_round_trip(tmp_path):
    opts = CompileOptions(qm="w4a8", keep_fp32=("lm_head",), max_dims={"batch": 3}, tune=True)
    assert options_from_dict(json.loads(json.dumps(options_to_dict(opts)))) == opts
    with pytest.raises(TccError, match="unknown option"):
        options_from_dict({"qm": "w4a8", "warp_drive": True})


def test_bench_vs_default(tmp_path, quick_search, own_cache):
    env = {**os.environ, "TCC_CACHE_DIR": str(tmp_path / "cache")}  # the untuned twin goes there
    out = str(tmp_path / "tuned")
    compile_model(LLAMA, out, CompileOptions(qm="w4a8", round_to_nearest=True, tune=True))
    r = subprocess.run([sys.executable, "-m", "tcc.cli", "bench", out, "--vs-default", "--prompt-len", "8", "--gen", "4",
                        "--repeat", "1", "--no-roofline", "-q", "--json", str(tmp_path / "b.json")],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "tuned / default" in r.stdout and "Linear problems use tuned parameters" in r.stdout
    res = json.loads((tmp_path / "b.json").read_text())
    assert res["prefill_speedup"] > 0 and res["decode_speedup"] > 0
    assert json.load(open(os.path.join(res["default_artifact"], "manifest.json"))).get("tuning") is None
    # An artifact compiled without --tune has no default to compare with.
    plain = str(tmp_path / "plain")
    compile_model(LLAMA, plain, CompileOptions(qm="w4a8", round_to_nearest=True))
    r = subprocess.run([sys.executable, "-m", "tcc.cli", "bench", plain, "--vs-default", "--no-roofline", "-q"],
                       capture_output=True, text=True, env=env)
    assert r.returncode != 0 and "compiled without --tune" in r.stderr and "Traceback" not in r.stderr


def test_vs_default_needs_the_source_model(tmp_path, own_cache, monkeypatch):
    """A tuned artifact whose source model is gone: one line naming the missing model, no traceback."""
    import shutil

    model = tmp_path / "mlp.onnx"
    shutil.copy(MLP, model)
    search, compare = _forced({"GEMM_MC": 32}, 0.5)
    monkeypatch.setattr(x86_tuning, "search", search)
    monkeypatch.setattr(x86_tuning, "compare", compare)
    out = str(tmp_path / "t")
    compile_model(str(model), out, CompileOptions(qm="w8a8", tune=True))
    model.unlink()
    from tcc.runtime.bench import untuned_twin

    with pytest.raises(TccError, match=r"compiles .*mlp\.onnx again without --tune, and it is no longer there"):
        untuned_twin(out)


def test_a_damaged_tuning_cache_is_measured_again(tmp_path, own_cache, monkeypatch):
    """A truncated or foreign tuning.json costs a re-measurement, not a failed compile; it is then rewritten."""
    calls = []
    search, compare = _forced({"GEMM_MC": 32}, 0.5)
    monkeypatch.setattr(x86_tuning, "search", lambda *a: calls.append(1) or search(*a))
    monkeypatch.setattr(x86_tuning, "compare", compare)
    for damage in ('{"truncated": ', '[1, 2, 3]'):
        own_cache.write_text(damage)
        calls.clear()
        m = compile_model(MLP, str(tmp_path / "t"), CompileOptions(qm="w8a8", tune=True))
        assert calls and all(p["choice"] == {"GEMM_MC": 32} for p in m["tuning"]["problems"])
        assert isinstance(json.loads(own_cache.read_text()), dict)
