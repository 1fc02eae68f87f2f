"""Continuous batching in the engine: the slots are KV-cache rows of one Session, decoding slots advance in
one run per step; an artifact holding fewer sequences than --slots is refused in one line; a program without
a KV cache (it recomputes its context) still serves, one Session per slot."""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import MODELS_DIR


def _engine(artifact, **kw):
    from tcc.runtime.serve.engine import Engine

    e = Engine(artifact, threads=1, **kw)
    e.start()
    assert e.wait_loaded(60)
    return e


def _submit(engine, prompt, n=8):
    import queue

    from tcc.runtime.serve.engine import Job, Params

    events: queue.Queue = queue.Queue()
    engine.submit(Job(list(prompt), Params(n_predict=n, temperature=0, ignore_eos=True), events.put))
    return events


def _tokens(events) -> list[int]:
    while True:
        ev = events.get(timeout=60)
        if ev["type"] == "done":
            return ev["result"]["tokens"]
        assert ev["type"] != "error", ev


def _run(engine, prompt, n=8):
    return _tokens(_submit(engine, prompt, n))


def test_slots_are_rows_of_one_session_and_decode_together(llm_artifact):
    # paced: a job's 8 steps take at least 80 ms, so the three jobs submitted at once overlap
    e = _engine(llm_artifact, slots=3, pace=0.01)
    try:
        assert e.state == "ready" and e.batched
        assert len({id(s.gen.session) for s in e.slots}) == 1  # one model, one KV cache of 4 rows
        prompts = [[1, 5, 17], [1, 42], [1, 300, 7, 9]]
        alone = [_run(e, p) for p in prompts]
        steps0, rows0 = e.metrics["decode_steps"], e.metrics["decode_rows"]
        together = [_tokens(q) for q in [_submit(e, p) for p in prompts]]
        assert together == alone
        assert e.metrics["decode_rows"] - rows0 > e.metrics["decode_steps"] - steps0  # some step had 2+ rows
    finally:
        e.stop()


def test_more_slots_than_the_artifact_holds_is_refused_in_one_line(llm_artifact):
    e = _engine(llm_artifact, slots=5)
    assert e.state == "error"
    assert e.error == ("--slots 5 needs an artifact compiled with --max-dim batch=5 (or more): this one holds 4 "
                       "sequences")
    r = subprocess.run([sys.executable, "-m", "tcc.cli", "serve", llm_artifact, "--port", "0", "--slots", "5"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "tcc: error: --slots 5 needs an artifact compiled with --max-dim batch=5" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


@pytest.fixture(scope="module")
def recompute_artifact(artifact_dir):
    import tcc

    out = str(artifact_dir / "serve-llama-nopast")
    if not os.path.isfile(os.path.join(out, "manifest.json")):
        tcc.compile(os.path.join(MODELS_DIR, "llm", "llama_nopast_dynamo", "model.onnx"), out, max_context=64)
    return out


def test_program_without_kv_cache_serves_one_session_per_slot(recompute_artifact):
    e = _engine(recompute_artifact, slots=2)
    try:
        assert e.state == "ready" and not e.batched and len({id(s.gen.session) for s in e.slots}) == 2
        with ThreadPoolExecutor(2) as pool:
            a, b = pool.map(lambda p: _run(e, p, 4), [[1, 5, 17], [1, 42]])
        assert (a, b) == (_run(e, [1, 5, 17], 4), _run(e, [1, 42], 4))
    finally:
        e.stop()
