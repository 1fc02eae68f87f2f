"""The seeded mutation fuzzer (tools/fuzz_models.py) as tests: batches of mutated fixtures through import,
the compile pipeline and the IR text, a few full compiles, and the harness's own classification.

Each batch is one test (a few seconds); every case must end `ok` or in a clean `TccError` (exit 2 for a
malformed or unsupported model). A failure lists each bad case with the command that replays it alone.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from collections import Counter

import pytest

TOOL = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tools",
                    "fuzz_models.py")
SEED = 1
BATCH = 150


def _load_tool():
    spec = importlib.util.spec_from_file_location("tcc_fuzz_models", TOOL)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


fuzz = _load_tool()


@pytest.mark.parametrize("batch", [0, 1])
def test_fuzz_batch(batch, tmp_path):
    indices = list(range(batch * BATCH, (batch + 1) * BATCH))
    cases = fuzz.run_cases(indices, seed=SEED, workdir=str(tmp_path))
    assert [c.index for c in cases] == indices
    bad = [c for c in cases if c.outcome in fuzz.BAD or not c.outcome.startswith(("ok", "error exit 2"))]
    assert not bad, "\n" + fuzz.describe(bad, SEED)
    outcomes = Counter(c.outcome for c in cases)
    # the batch reaches both ends: mutants that survive the whole pipeline, and ones refused at import
    assert outcomes["ok"] and outcomes["error exit 2 (ModelFormatError)"], outcomes


def test_fuzz_full_compiles(tmp_path):
    """Mutants of the smallest fixture built with CMake: accepted models build (no exit 4), others are refused."""
    indices = list(range(4))
    cases = fuzz.run_cases(indices, seed=SEED, compile_indices=indices, workdir=str(tmp_path))
    bad = [c for c in cases if not c.outcome.startswith(("ok", "error exit 2"))]
    assert not bad, "\n" + fuzz.describe(bad, SEED)
    assert sum(c.outcome == "ok" for c in cases) >= 2, fuzz.describe(cases, SEED)


def test_mutants_are_reproducible(tmp_path):
    """A case is drawn from (seed, index) alone: the replay command of a failure rebuilds the same mutant."""
    names = fuzz.fixtures()
    a = fuzz.make_case(SEED, 17, names, False, str(tmp_path / "a"))
    b = fuzz.make_case(SEED, 17, names, False, str(tmp_path / "b"))
    assert a.mutations == b.mutations and a.fixture == b.fixture
    assert (tmp_path / "a" / "model.onnx").read_bytes() == (tmp_path / "b" / "model.onnx").read_bytes()
    fuzz.make_case(SEED + 1, 17, names, False, str(tmp_path / "c"))
    assert (tmp_path / "c" / "model.onnx").read_bytes() != (tmp_path / "a" / "model.onnx").read_bytes()


@pytest.mark.parametrize("kind, outcome", [("internal", "internal error"), ("traceback", "traceback"),
                                           ("signal", "signal"), ("hang", "hang"), ("exit", "worker exit")])
def test_harness_classifies_misbehaviour(kind, outcome):
    got, detail = fuzz.probe(kind, timeout=5 if kind == "hang" else 60)
    assert got == outcome, (got, detail)
    assert got in fuzz.BAD


def test_table_counts_every_class():
    cases = [fuzz.Case(i, "mlp.onnx", False, [], o) for i, o in
             enumerate(["ok", "ok", "error exit 2 (ShapeError)", "hang"])]
    lines = fuzz.table(cases).splitlines()
    assert lines[1].split() == ["ok", "2"] and ["error", "exit", "2", "(ShapeError)", "1"] in [x.split() for x in lines]
    assert any(line.split() == ["hang", "1"] for line in lines) and lines[-1].split() == ["total", "4"]
