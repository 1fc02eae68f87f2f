"""llama.cpp as a benchmark peer: finding a build and running its tools (not part of tcc; never vendored).

Used by benchmarks/quality_suite.py (llama-quantize, llama-perplexity, llama-tokenize) and
benchmarks/llm_suite.py (llama-bench). A build is found in the folder given with --llama-cpp DIR (a build
folder, its bin/, or a source checkout with build/bin/), else on PATH. How to get one (CPU only, a few
minutes on 2 cores):

    git clone https://github.com/ggml-org/llama.cpp && cd llama.cpp
    cmake -B build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF
    cmake --build build -j --target llama-perplexity llama-quantize llama-tokenize llama-bench
    # then: --llama-cpp llama.cpp/build (or put llama.cpp/build/bin on PATH)
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from tcc.errors import TccError

HOW_TO_GET = ("llama.cpp rows need a build: git clone https://github.com/ggml-org/llama.cpp && cmake -S llama.cpp "
              "-B llama.cpp/build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF && cmake --build "
              "llama.cpp/build -j --target llama-perplexity llama-quantize llama-tokenize llama-bench; then pass "
              "--llama-cpp llama.cpp/build or put llama.cpp/build/bin on PATH")


@dataclass(frozen=True)
class LlamaCpp:
    """The folder holding a llama.cpp build's binaries."""

    bin_dir: str

    def tool(self, name: str) -> str | None:
        p = os.path.join(self.bin_dir, name)
        return p if os.path.isfile(p) and os.access(p, os.X_OK) else None

    def need(self, name: str) -> str:
        p = self.tool(name)
        if p is None:
            raise TccError(f"the llama.cpp build in {self.bin_dir} has no {name} (build it: cmake --build "
                           f"<build dir> --target {name})")
        return p

    def version(self) -> str:
        exe = self.tool("llama-perplexity") or self.tool("llama-bench")
        if exe is None:
            return "?"
        r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
        m = re.search(r"version: ([^\n]+)", r.stdout + r.stderr)
        return m.group(1).strip() if m else "?"


def find_llama_cpp(given: str | None, needs: tuple[str, ...]) -> LlamaCpp | None:
    """The build in `given` (a build folder, its bin/, or a checkout with build/bin/; a one-line error when it
    lacks one of `needs`), else the folder of needs[0] on PATH, else None."""
    if given:
        if not os.path.isdir(given):
            raise TccError(f"--llama-cpp: no such directory: {given}")
        for d in (given, os.path.join(given, "bin"), os.path.join(given, "build", "bin")):
            if os.path.isfile(os.path.join(d, needs[0])):
                found = LlamaCpp(os.path.abspath(d))
                for n in needs[1:]:
                    found.need(n)
                return found
        raise TccError(f"--llama-cpp {given}: no {needs[0]} in it, its bin/ or build/bin/ (is it a llama.cpp build "
                       f"folder? build the tools with: cmake --build <build dir> --target {' '.join(needs)})")
    exe = shutil.which(needs[0])
    if exe is None:
        return None
    found = LlamaCpp(os.path.dirname(os.path.abspath(exe)))
    return found if all(found.tool(n) for n in needs) else None


def run(cmd: list[str], what: str, timeout: float = 3600) -> str:
    """Run a llama.cpp tool; its combined output, or a one-line error naming the tool and its last line."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise TccError(f"{what}: {os.path.basename(cmd[0])} ran over {timeout:.0f} s") from None
    out = (r.stdout or "") + (r.stderr or "")
    if r.returncode != 0:
        last = next((ln for ln in reversed(out.strip().splitlines()) if ln.strip()), "no output")
        raise TccError(f"{what}: {os.path.basename(cmd[0])} exited with {r.returncode}: {last.strip()}")
    return out


def quantize(lc: LlamaCpp, src: str, dst: str, qtype: str, threads: int) -> str:
    """`llama-quantize [--pure] src dst TYPE threads`; qtype 'Q4_0-pure' means Q4_0 with --pure (every tensor
    at that type: no 6-bit embedding/LM head). Returns the command line."""
    base, pure = (qtype[:-5], True) if qtype.endswith("-pure") else (qtype, False)
    cmd = [lc.need("llama-quantize")] + (["--pure"] if pure else []) + [src, dst, base, str(threads)]
    run(cmd, f"llama-quantize {qtype}")
    return " ".join(["llama-quantize"] + cmd[1:])


def perplexity(lc: LlamaCpp, model: str, text_file: str, context: int, threads: int, attempts: int = 3) -> dict:
    """llama-perplexity over non-overlapping windows of `context` tokens, each scoring its second half,
    KV cache in f32 (as tcc's). Returns {perplexity, chunks, cmd}."""
    cmd = [lc.need("llama-perplexity"), "-m", model, "-f", text_file, "-c", str(context), "-b", str(context),
           "-t", str(threads), "-ctk", "f32", "-ctv", "f32", "--no-warmup"]
    what = f"llama-perplexity on {os.path.basename(model)}"
    for _ in range(attempts):
        out = run(cmd, what)
        chunks = re.search(r"calculating perplexity over (\d+) chunks, n_ctx=(\d+)", out)
        if not chunks:
            raise TccError(f"{what}: no 'calculating perplexity over N chunks' line in its output")
        if int(chunks.group(2)) != context:
            raise TccError(f"llama-perplexity used a context of {chunks.group(2)} tokens, not {context}")
        # The running perplexity after each window, `[i]ppl,`: the last is the result (Final estimate repeats
        # it). The tail of the output is sometimes lost although the tool exits 0 (seen on this build with
        # its output on a pipe or a file): then it runs again.
        running = re.findall(r"\[(\d+)\]([0-9.]+),", out)
        if running and int(running[-1][0]) == int(chunks.group(1)):
            return {"perplexity": float(running[-1][1]), "chunks": int(chunks.group(1)),
                    "cmd": " ".join(["llama-perplexity"] + cmd[1:])}
    raise TccError(f"{what}: its output ended before the last window {attempts} times")


def tokenize(lc: LlamaCpp, model: str, text_file: str) -> list[int]:
    """The ids llama.cpp gives the file's text (no escapes processed, special tokens not parsed: what
    llama-perplexity does with -f)."""
    out = run([lc.need("llama-tokenize"), "-m", model, "-f", text_file, "--ids", "--log-disable", "--no-escape"],
              "llama-tokenize")
    m = re.search(r"\[([0-9, ]*)\]\s*$", out.strip())
    if not m:
        raise TccError("llama-tokenize: no id list in its output")
    return [int(x) for x in m.group(1).split(",") if x.strip()]
