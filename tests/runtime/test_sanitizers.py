"""ASan + UBSan builds (flag `sanitize`, TCC_SANITIZE=address,undefined) of the runtime, the kernels and the
binaries, run over the runtime self-test and two small models.

The standalone binaries are what runs sanitized: they link the sanitizer runtimes themselves, whereas a
sanitized libmodel.so in Python needs LD_PRELOAD of libasan. Any report fails the test: halt_on_error=1
and -fno-sanitize-recover=all make a report end the process with a non-zero exit, and stderr is checked
for report headers too. A canary with a known heap overflow and a signed overflow checks that the flags
reach both the compile and the link (a plain build would run it "fine")."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tcc import flags
from tcc.backends.x86.target import TARGET, host_supports
from tcc.codegen.cmake import build_library, cmakelists, sanitizers
from tcc.driver import compile_model
from tcc.errors import BuildError
from tests.conftest import MODELS_DIR, ort_run

HERE = os.path.dirname(os.path.abspath(__file__))
SELFTEST = os.path.join(os.path.dirname(HERE), "kernels", "runtime_selftest.cpp")
MLP = os.path.join(MODELS_DIR, "mlp.onnx")
LLM = os.path.join(MODELS_DIR, "llm", "llama_past_dynamo")
SANITIZE = "address,undefined"
ENV = {**os.environ,
       # detect_leaks=0: LeakSanitizer needs ptrace-free, unrestricted /proc, which CI sandboxes may lack
       "ASAN_OPTIONS": "halt_on_error=1:abort_on_error=0:detect_leaks=0:exitcode=99",
       "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1"}
REPORTS = ("ERROR: AddressSanitizer", "runtime error:", "SUMMARY: UndefinedBehaviorSanitizer", "ERROR: LeakSanitizer")

CANARY = r"""
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <climits>
int main(int argc, char** argv) {
  if (argc < 2) return 2;
  volatile int n = argc + 14;  // 16 for "heap", unknown to the compiler
  if (!std::strcmp(argv[1], "heap")) {
    char* p = static_cast<char*>(std::malloc(n));  // a size UBSan's object-size check cannot see: ASan's catch
    p[n] = 1;  // one past the end
    std::printf("%d\n", p[0]);
    std::free(p);
  } else if (!std::strcmp(argv[1], "ub")) {
    volatile int big = INT_MAX;
    std::printf("%d\n", big + n);  // signed overflow
  }
  std::puts("done");
  return 0;
}
"""


@contextlib.contextmanager
def _sanitized():
    """flags.sanitize set for the block, then back to what it was (env or default)."""
    had = "sanitize" in flags._overrides
    old = flags._overrides.get("sanitize")
    flags.set_flag("sanitize", SANITIZE)
    try:
        yield
    finally:
        if had:
            flags._overrides["sanitize"] = old
        else:
            flags._overrides.pop("sanitize", None)


@pytest.fixture(scope="module", autouse=True)
def _need_host():
    ok, reason = host_supports(TARGET)
    if not ok:
        pytest.skip(reason)
    probe = subprocess.run(["c++", "-print-file-name=libasan.so"], capture_output=True, text=True)
    if probe.returncode != 0 or not os.path.isabs(probe.stdout.strip()):
        pytest.skip("the C++ compiler has no AddressSanitizer runtime (libasan)")


def _run(cmd, **kw):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=ENV, timeout=300, **kw)


def _clean(p, what: str) -> None:
    assert p.returncode == 0, f"{what}: exit {p.returncode}\n{p.stderr[-3000:]}"
    found = [r for r in REPORTS if r in p.stderr]
    assert not found, f"{what}: sanitizer report\n{p.stderr[-3000:]}"


@pytest.fixture(scope="module")
def runtime_build(tmp_path_factory):
    build = tmp_path_factory.mktemp("sanitized_runtime")
    (build / "canary.cpp").write_text(CANARY)
    (build / "empty.cpp").write_text('#include "tcc_kernel.h"\nextern "C" int tcc_empty() { return 0; }\n')
    with _sanitized():
        build_library([str(build / "empty.cpp")], str(build), TARGET, "sanitized",
                      extra_executables={"canary": [str(build / "canary.cpp")], "runtime_selftest": [SELFTEST]})
    return build


def test_flag_values():
    with _sanitized():
        assert sanitizers() == ("address", "undefined")
    text = cmakelists(["a.cpp"], "/b", TARGET, "m", {"run": ["r.cpp"]}, ("address", "undefined"))
    assert '"-fsanitize=address,undefined;-fno-omit-frame-pointer;' in text and '"-Wl,--no-undefined"' not in text
    plain = cmakelists(["a.cpp"], "/b", TARGET, "m", {"run": ["r.cpp"]})
    assert "-fsanitize" not in plain and '"-Wl,--no-undefined"' in plain
    old = flags._overrides.get("sanitize")
    flags.set_flag("sanitize", "adress")
    try:
        with pytest.raises(BuildError, match="unknown sanitizer 'adress'"):
            sanitizers()
    finally:
        flags._overrides.pop("sanitize", None)
        if old is not None:
            flags._overrides["sanitize"] = old


def test_canary_reports_fail_the_run(runtime_build):
    canary = runtime_build / "canary"
    _clean(_run([canary, "ok"]), "canary ok")
    heap = _run([canary, "heap"])
    assert heap.returncode != 0 and "heap-buffer-overflow" in heap.stderr, heap.stderr[-2000:]
    ub = _run([canary, "ub"])
    assert ub.returncode != 0 and "signed integer overflow" in ub.stderr, ub.stderr[-2000:]
    assert "done" not in heap.stdout + ub.stdout  # halted at the first report


def test_switching_a_build_dir_never_mixes(tmp_path):
    """The same build directory built plain, sanitized, plain: each time every object and output follows."""
    (tmp_path / "canary.cpp").write_text(CANARY)
    (tmp_path / "empty.cpp").write_text('#include "tcc_kernel.h"\nextern "C" int tcc_empty() { return 0; }\n')
    build = tmp_path / "build"

    def build_and_probe(sanitized: bool) -> bool:
        with contextlib.ExitStack() as stack:
            if sanitized:
                stack.enter_context(_sanitized())
            lib = build_library([str(tmp_path / "empty.cpp")], str(build), TARGET, "mixed",
                                extra_executables={"canary": [str(tmp_path / "canary.cpp")]})
        libs = [subprocess.run(["ldd", p], capture_output=True, text=True).stdout for p in (lib, build / "canary")]
        assert ("libasan" in libs[0]) == ("libasan" in libs[1]), libs
        return "libasan" in libs[1]

    assert [build_and_probe(s) for s in (False, True, False)] == [False, True, False]


def test_runtime_selftest_sanitized(runtime_build, tmp_path):
    exe = runtime_build / "runtime_selftest"
    for dtype, shape in [("<f4", (2, 3)), ("<i8", ()), ("|u1", (0, 4))]:
        np.save(tmp_path / "a.npy", np.ones(shape, np.dtype(dtype)))
        _clean(_run([exe, "npy-copy", tmp_path / "a.npy", tmp_path / "b.npy"]), f"npy-copy {dtype}")
        np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), np.ones(shape, np.dtype(dtype)))
    good = (tmp_path / "a.npy").read_bytes()
    for bad in (good[:9], good[:40], good[:-1], good.replace(b"(0, 4)", b"(9, 4)")):  # truncated, lying
        (tmp_path / "bad.npy").write_bytes(bad)
        p = _run([exe, "npy-copy", tmp_path / "bad.npy", tmp_path / "c.npy"])
        assert p.returncode == 1 and "error:" in p.stderr and not any(r in p.stderr for r in REPORTS), p.stderr
    (tmp_path / "w.bin").write_bytes(bytes(range(10)))
    p = _run([exe, "map", tmp_path / "w.bin", 10])  # maps, sums, then the bounds check throws
    assert p.returncode == 1 and "is past its end" in p.stderr and not any(r in p.stderr for r in REPORTS)
    _clean(_run([exe, "arena", 3 << 20]), "arena")
    p = _run([exe, "pool", 2, 3000])
    _clean(p, "pool")
    assert p.stdout.split()[:2] == ["0", str(64 * 100)]


def _compile(model: str, out, **opts) -> dict:
    with _sanitized():
        return compile_model(model, str(out), **opts)


def test_mlp_sanitized_matches_onnxruntime(tmp_path):
    out = tmp_path / "mlp"
    _compile(MLP, out, max_dims={"batch": 8})
    assert "libasan" in subprocess.run(["ldd", str(out / "run")], capture_output=True, text=True).stdout
    x = np.random.default_rng(0).standard_normal((5, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    _clean(_run([out / "run", f"x={tmp_path / 'x.npy'}", "-o", tmp_path / "y", "--threads", "2", "--repeat", "3"]),
           "mlp run")
    np.testing.assert_allclose(np.load(tmp_path / "y" / "probs.npy"), ort_run(MLP, {"x": x})["probs"],
                               rtol=1e-5, atol=1e-6)
    # bad input under the sanitizers: still a clean one-line refusal, no report
    p = _run([out / "run", "x=/dev/zero"])
    assert p.returncode == 2 and not any(r in p.stderr for r in REPORTS), p.stderr


def test_quantized_llm_sanitized(tmp_path):
    """A KV-cache decoder at w4a8: embedding gather, RMSNorm, the activation quantizer, the w4a8 GEMM,
    RoPE, KV attention, SwiGLU; prefill of several tokens on two threads. Only the model and its config are
    copied (no tokenizer: no chat binary to build)."""
    src = tmp_path / "src"
    src.mkdir()
    for f in ("model.onnx", "config.json", "generation_config.json"):
        if os.path.exists(os.path.join(LLM, f)):
            shutil.copy(os.path.join(LLM, f), src / f)
    out = tmp_path / "llm"
    manifest = _compile(str(src / "model.onnx"), out, qm="w4a8", max_context=64)
    assert manifest["llm"]["kv_cache"], json.dumps(manifest.get("llm"))[:300]
    vocab = json.loads((src / "config.json").read_text())["vocab_size"]
    ids = (np.arange(12, dtype=np.int64).reshape(1, 12) * 7) % vocab
    np.save(tmp_path / "ids.npy", ids)
    p = _run([out / "run", f"input_ids={tmp_path / 'ids.npy'}", "-o", tmp_path / "y", "--threads", "2"])
    _clean(p, "llm run")
    logits = np.load(tmp_path / "y" / "logits.npy")
    assert logits.shape[-1] == vocab and np.isfinite(logits).all()


ROWS_SCRIPT = r"""
import sys
import numpy as np
import tcc
from tcc.runtime.generate import Generator
s = tcc.load(sys.argv[1], threads=2)
rng = np.random.default_rng(0)
prompts = [[int(x) for x in rng.integers(3, 384, k)] for k in (5, 60, 1, 33)]
ref, g = [], Generator(s)
for p in prompts:  # each sequence alone (tcc_model_run, cache row 0)
    g.reset()
    logits, toks = [g.feed(p)[-1]], []
    for _ in range(30):
        toks.append(int(np.argmax(logits[-1])))
        logits.append(g.feed([toks[-1]])[-1])
    ref.append((toks, logits))
g.reset()
for i, p in enumerate(prompts):
    s.run_rows([p], [3 - i])  # slots in reverse: input row r never uses cache row r
worst = 0.0
for step in range(30):
    live = [i for i in range(4) if step < 30 - 5 * i]  # rows leave one by one
    out = s.run_rows([[ref[i][0][step]] for i in live], [3 - i for i in live])
    for r, i in enumerate(live):
        worst = max(worst, float(np.abs(out[r, -1] - ref[i][1][step + 1]).max()))
assert worst < 1e-4, worst
print("rows ok", [s.kv_length(k) for k in range(4)])
"""


def test_batched_rows_sanitized(tmp_path):
    """tcc_model_run_rows on a sanitized program (libmodel.so in Python, libasan preloaded): four sequences in
    cache rows that are not their input rows, prefills of 1..60 tokens, decode rows leaving one by one; no
    report, and every row's logits are its sequence's alone."""
    out = tmp_path / "llm"
    _compile(os.path.join(LLM, "model.onnx"), out, max_context=128, max_dims={"batch": 4})
    script = tmp_path / "rows.py"
    script.write_text(ROWS_SCRIPT)
    asan = subprocess.run(["c++", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    p = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=300,
                       env={**ENV, "LD_PRELOAD": asan})
    _clean(p, "run_rows")
    assert "rows ok [48, 21, 85, 35]" in p.stdout, p.stdout + p.stderr[-2000:]
