"""benchmarks/llm_suite.py's llama.cpp peer, driven through a stand-in llama-bench (no llama.cpp needed)."""
from __future__ import annotations

import json

import pytest

from .bench_modules import llama_cpp_peer, llm_suite

BENCH_JSON = {"prefill": [{"n_prompt": 16, "n_gen": 0, "n_depth": 0, "avg_ts": 3.0, "samples_ts": [2.0, 4.0, 3.5]}],
              "decode": [{"n_prompt": 0, "n_gen": 8, "n_depth": 16, "avg_ts": 200.0, "samples_ts": [190.0, 250.0,
                                                                                                    200.0]}]}


def _stand_in(tmp_path):
    b = tmp_path / "bin"
    b.mkdir()
    exe = b / "llama-bench"
    # records its arguments, prints llama-bench's JSON for the test it was asked for (decode: -n > 0)
    exe.write_text("#!/bin/sh\necho \"$@\" >> \"$(dirname \"$0\")/args\"\necho 'build: 1 (abc)' >&2\n"
                   "case \"$*\" in *'-n 0 '*) cat \"$(dirname \"$0\")/prefill.json\";; "
                   "*) cat \"$(dirname \"$0\")/decode.json\";; esac\n")
    exe.chmod(0o755)
    for k, v in BENCH_JSON.items():
        (b / f"{k}.json").write_text(json.dumps(v, indent=1))
    return llama_cpp_peer.LlamaCpp(str(b)), b


def test_llama_bench_at_the_suite_s_lengths(tmp_path):
    lc, b = _stand_in(tmp_path)
    r = llm_suite.bench_llama_cpp(lc, "m.gguf", prompt_len=16, gen=8, threads=2, repeat=3)
    assert r["prefill_tok_s"] == 3.5  # medians of the samples, not llama-bench's mean
    assert r["decode_ms"] == pytest.approx(1e3 / 200.0)
    calls = (b / "args").read_text().splitlines()
    assert calls == ["-m m.gguf -p 16 -n 0 -d 0 -t 2 -r 3 -o json",  # prefill from an empty cache
                     "-m m.gguf -p 0 -n 8 -d 16 -t 2 -r 3 -o json"]  # decode after the prompt's tokens


def test_row_figures_and_cells_with_llama_cpp():
    row = {"qm": "w4a8", "threads": 2,
           "tcc": {"prefill_tok_s": 300.0, "decode_ms": 4.0, "weights_bytes": 1, "kv_cache_bytes": 1,
                   "peak_rss_bytes": 1, "arena_bytes": 1, "lower_bound_bytes": 1},
           "llama_cpp": {"type": "Q4_0", "prefill_tok_s": 200.0, "decode_ms": 6.0}}
    row["fig"] = llm_suite.row_figures(row)
    assert row["fig"]["prefill_ratio_llama_cpp"] == 1.5 and row["fig"]["decode_ratio_llama_cpp"] == 1.5
    assert row["fig"]["prefill_ratio"] is None  # no ORT in this row
    cells = [c.strip() for c in llm_suite._llama_cells(row).split("|")]
    assert cells[:5] == ["Q4_0", "200.0", "1.50", "6.00", "1.50"]
    assert llm_suite.LLAMA_CPP_EQUIV == {"fp32": "F32", "w8a8": "Q8_0", "w4a32": "Q4_0", "w4a8": "Q4_0"}
