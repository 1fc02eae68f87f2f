"""benchmarks/quality_suite.py and benchmarks/llama_cpp_peer.py without llama.cpp: the windows, the table
on a made-up result set, the llama.cpp tools driven through stand-in scripts, and bad input. A
run against a real build (benchmarks/results/quality.md) is the converter's end-to-end proof: the suite
refuses to print llama.cpp rows when its F32 perplexity is not tcc's fp32 (check_fp32_agreement)."""
from __future__ import annotations

import math
import os
import stat

import numpy as np
import pytest

from tcc.errors import TccError
from tcc.runtime.perplexity import window_nll

from .bench_modules import llama_cpp_peer, quality_suite



def test_windows_are_llama_perplexity_s():
    """Non-overlapping windows of `context` from token 0, the tail dropped, targets after context/2:
    perplexity.cpp scores n_ctx - n_ctx/2 - 1 tokens per chunk over tokens.size() / n_ctx chunks."""
    w = quality_suite.chunk_windows(1000, 128)
    assert w == [(b, b + 128, b + 65) for b in range(0, 7 * 128, 128)] and len(w) == 1000 // 128
    assert sum(e - f for _, e, f in w) == 7 * (128 - 64 - 1)
    assert quality_suite.chunk_windows(10, 5) == [(0, 5, 3), (5, 10, 8)]
    with pytest.raises(TccError, match="needs? at least 2 x --context"):
        quality_suite.chunk_windows(255, 128)
    with pytest.raises(TccError, match="--context must be at least 4"):
        quality_suite.chunk_windows(100, 3)


class _FakeGenerator:
    """Logits that depend on the whole window (so a wrong slice or a cache not reset shows)."""

    def __init__(self, vocab: int):
        self.vocab, self.fed = vocab, []

    def reset(self):
        self.fed = []

    def logits_of(self, ids):
        assert self.fed == [], "each window must start from an empty cache"
        self.fed = list(ids)
        return self.expected(ids)

    def expected(self, ids):
        rng = np.random.default_rng(sum(ids) + len(ids))
        return rng.standard_normal((len(ids), self.vocab)).astype(np.float32)


def test_score_windows_scores_the_second_half_of_each_window():
    rng = np.random.default_rng(1)
    ids = [int(x) for x in rng.integers(0, 50, 40)]
    gen = _FakeGenerator(50)
    spans = quality_suite.chunk_windows(len(ids), 16)
    got = quality_suite.score_windows(gen, ids, spans)
    nll = 0.0
    for b in (0, 16):  # windows [0,16) and [16,32); targets b+9 .. b+15 from the logits at b+8 .. b+14
        logits = gen.expected(ids[b:b + 16])
        for pos in range(8, 15):
            z = logits[pos].astype(np.float64)
            nll += math.log(np.exp(z - z.max()).sum()) + z.max() - z[ids[b + pos + 1]]
    assert got["scored"] == 14 and got["nll"] == pytest.approx(nll, rel=1e-12)
    assert got["perplexity"] == pytest.approx(math.exp(nll / 14), rel=1e-12)
    assert gen.fed == []  # left reset
    assert window_nll(gen.expected(ids[:16])[8:15], np.asarray(ids[9:16])) == pytest.approx(
        quality_suite.score_windows(gen, ids[:32], spans[:1])["nll"], rel=1e-12)


FAKE_ROWS = [
    {"engine": "tcc", "format": "fp32", "weight_bytes": 21_115_904, "perplexity": 30.0, "baseline": True},
    {"engine": "tcc", "format": "w8a8-smoothquant", "weight_bytes": 6_560_000, "perplexity": 30.081},
    {"engine": "tcc", "format": "w4a8-awq", "weight_bytes": 3_700_000, "file_bytes": 3_831_072, "perplexity": 30.537},
    {"engine": "tcc", "format": "w4a8-gptq", "skipped": "needs --calib"},
    {"engine": "llama.cpp", "format": "F32", "weight_bytes": 21_115_904, "perplexity": 30.003, "baseline": True},
    {"engine": "llama.cpp", "format": "Q8_0", "weight_bytes": 5_750_000, "perplexity": 30.015},
    {"engine": "llama.cpp", "format": "Q4_K_M", "weight_bytes": 3_660_000, "perplexity": 30.114,
     "tensor_types": "Q4_K ×30, Q6_K ×13 (attn_v, ffn_down)"},
    {"engine": "llama.cpp", "format": "Q4_0-pure", "weight_bytes": 3_120_000, "perplexity": 30.663},
]


def test_table_against_each_engines_own_fp32():
    table = quality_suite.format_table(FAKE_ROWS, parameters=5_278_976).splitlines()
    assert table[-1] == "- Q4_K_M: Q4_K ×30, Q6_K ×13 (attn_v, ffn_down)"
    table = table[:table.index("")]
    assert table[0] == "| engine | format | weights | bits/parameter | perplexity | vs own fp32 | weights.bin |"
    body = [ln.split(" | ") for ln in table[2:]]
    # baselines first, then by bytes, largest first; skipped rows last
    assert [(r[0].strip("| "), r[1]) for r in body] == [
        ("llama.cpp", "F32"), ("tcc", "fp32"), ("tcc", "w8a8-smoothquant"), ("llama.cpp", "Q8_0"),
        ("tcc", "w4a8-awq"), ("llama.cpp", "Q4_K_M"), ("llama.cpp", "Q4_0 `--pure`"), ("tcc", "w4a8-gptq")]
    by = {r[1]: r for r in body}
    assert by["w8a8-smoothquant"][5].startswith("+0.27%")  # 30.081 / 30.0
    assert by["Q8_0"][5].startswith("+0.04%")  # 30.015 / 30.003, not / tcc's 30.0
    assert by["Q4_K_M"][5].startswith("+0.37%") and by["Q4_0 `--pure`"][5].startswith("+2.20%")
    assert by["F32"][5].startswith("—") and by["Q4_K_M"][2] == "3.66 MB"
    assert by["Q4_K_M"][3] == f"{8 * 3_660_000 / 5_278_976:.2f}"
    # tcc's weights.bin beside its weights (less the RoPE tables); llama.cpp's rows have none
    assert by["w4a8-awq"][2] == "3.70 MB" and by["w4a8-awq"][6] == "3.83 MB |" and by["Q8_0"][6] == " |"
    assert "needs --calib" in table[-1]


def test_formats_select_from_the_compare_variants():
    from tcc.demo import COMPARE_VARIANTS

    assert quality_suite.select_variants(None) == list(COMPARE_VARIANTS)
    assert [v.label for v in quality_suite.select_variants("w4a8-rtn")] == ["fp32", "w4a8-rtn"]
    # any format `tcc eval --compare`'s labels spell, not only its list: a budget, a method mix
    got = quality_suite.select_variants("w4a8-awq+gptq-b5.3,w8a8-rtn,w4a8-awq+gptq-b5.3,w4a32-gptq-pure")
    assert [v.label for v in got] == ["fp32", "w4a8-awq+gptq-b5.3", "w8a8-rtn", "w4a32-gptq-pure"]
    assert got[1].budget == "5.3" and got[1].quant_method == "awq+gptq" and got[3].budget == "pure"


def test_header_says_what_is_compared():
    meta = {"model": "models/demo/model.onnx", "parameters": 5_278_976, "text": "models/demo/heldout.txt",
            "tokens": 27000, "windows": 52, "context": 512, "scored": 52 * 255, "llama_cpp": None}
    lines = quality_suite.header(meta)
    assert "52 non-overlapping windows of 512 tokens" in lines[0] and "scoring its last 255" in lines[0]
    assert lines[1].startswith("No llama.cpp build was found") and "cmake" in lines[1]
    meta["llama_cpp"] = {"tokens": {"same": True, "tcc": 27000, "llama_cpp": 27000}, "version": "1 (abc)",
                         "commands": []}
    meta["fp32"] = {"tcc": 30.0, "llama.cpp": 30.003}
    text = "\n".join(quality_suite.header(meta))
    assert "the same 27000 ids as tcc: yes" in text and "(+0.0100%)" in text


def _tool(d, name: str, script: str) -> None:
    p = d / name
    p.write_text("#!/bin/sh\n" + script)
    p.chmod(p.stat().st_mode | stat.S_IXUSR)


def test_llama_cpp_tools_through_stand_ins(tmp_path, monkeypatch):
    """Finding a build (a folder, its bin/, or PATH) and reading each tool's output."""
    b = tmp_path / "build" / "bin"
    b.mkdir(parents=True)
    _tool(b, "llama-perplexity", 'echo "perplexity: calculating perplexity over 3 chunks, n_ctx=512, batch_size='
                                 '512, n_seq=1"\necho "[1]19.0708,[2]12.0164,[3]30.0031,"\n'
                                 'echo "Final estimate: PPL = 30.0031 +/- 0.41"\n')
    _tool(b, "llama-quantize", 'echo "$@" > "$(dirname "$0")/quantize.args"\n')
    _tool(b, "llama-tokenize", 'echo "[1, 22, 333]"\n')
    lc = llama_cpp_peer.find_llama_cpp(str(tmp_path / "build"), ("llama-perplexity", "llama-quantize"))
    assert lc.bin_dir == str(b)
    p = llama_cpp_peer.perplexity(lc, "m.gguf", "t.txt", 512, 2)
    assert p["perplexity"] == 30.0031 and p["chunks"] == 3 and "-ctk f32 -ctv f32" in p["cmd"]
    with pytest.raises(TccError, match="used a context of 512 tokens, not 256"):
        llama_cpp_peer.perplexity(lc, "m.gguf", "t.txt", 256, 2)
    llama_cpp_peer.quantize(lc, "a.gguf", "b.gguf", "Q4_0-pure", 2)
    assert (b / "quantize.args").read_text().split() == ["--pure", "a.gguf", "b.gguf", "Q4_0", "2"]
    assert llama_cpp_peer.tokenize(lc, "m.gguf", "t.txt") == [1, 22, 333]
    monkeypatch.setenv("PATH", f"{b}{os.pathsep}{os.environ['PATH']}")
    assert llama_cpp_peer.find_llama_cpp(None, ("llama-perplexity", "llama-quantize")).bin_dir == str(b)
    # output cut before the last window (and no Final estimate): run again, then a one-line error
    _tool(b, "llama-perplexity", 'echo "$0" >> "$(dirname "$0")/runs"\necho "calculating perplexity over 3 chunks, '
                                 'n_ctx=512"\necho "[1]19.0708,[2]12.0164,"\n')
    with pytest.raises(TccError, match="its output ended before the last window 3 times"):
        llama_cpp_peer.perplexity(lc, "m.gguf", "t.txt", 512, 2)
    assert len((b / "runs").read_text().splitlines()) == 3
    _tool(b, "llama-perplexity", 'echo "version: 0.5.0-dev (build 0, commit unknown)" >&2\n')
    assert lc.version() == "0.5.0-dev (build 0, commit unknown)"
    _tool(b, "llama-perplexity", 'echo "error: failed to load model" >&2\nexit 1\n')
    with pytest.raises(TccError, match="llama-perplexity exited with 1: error: failed to load model"):
        llama_cpp_peer.perplexity(lc, "m.gguf", "t.txt", 512, 2)


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["--model", str(tmp_path / "nope.onnx")], "--model not found"),
        (["--text", str(tmp_path / "nope.txt")], "--text not found"),
        (["--llama-cpp", str(empty)], "no llama-perplexity in it, its bin/ or build/bin/"),
        (["--llama-cpp", str(tmp_path / "missing")], "--llama-cpp: no such directory"),
        (["--threads", "0"], "--threads must be at least 1"),
        (["--formats", "w4a8-awq,w9a9"], "format 'w9a9': expected <qm>-<method>[-pure|-b<bits>]"),
        (["--formats", "w4a8-awq-b2x"], "format 'w4a8-awq-b2x': the budget is 'pure' or b<bits per weight>"),
    ]
    for argv, msg in cases:
        assert quality_suite.main([*argv, "--out", "-", "--workdir", str(tmp_path / "w")]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("quality_suite: error: ") and msg in err and "\n" not in err, (argv, err)
    half = tmp_path / "half"
    half.mkdir()
    _tool(half, "llama-perplexity", "exit 0\n")  # a build without llama-quantize
    assert quality_suite.main(["--llama-cpp", str(half), "--out", "-"]) == 2
    assert "has no llama-quantize" in capsys.readouterr().err


def test_llama_cpp_rows_need_the_fp32_models_to_agree():
    quality_suite.check_fp32_agreement({"tcc": 28.3750, "llama.cpp": 28.3751})
    with pytest.raises(TccError, match="differs from tcc's fp32 28.3750 by 1.00%: the GGUF does not reproduce"):
        quality_suite.check_fp32_agreement({"tcc": 28.3750, "llama.cpp": 28.3750 * 1.01})
    with pytest.raises(TccError):
        quality_suite.check_fp32_agreement({"tcc": 28.3750, "llama.cpp": float("nan")})
