"""The decode roofline: this machine's read bandwidth against the bytes a decode step must read.

Decode of an LLM on a CPU reads every weight once per token (plus the KV cache so far), so its speed
limit is `bandwidth / bytes per token`. `measure_bandwidth(threads)` builds (once, cached by source hash)
and runs runtime/probe/bandwidth.cpp, a STREAM-like read of >= 1 GiB on the same number of threads as
the run it judges, best of several passes. `decode_bytes_per_token(manifest, context)` takes the
weights a decode step reads from the artifact's manifest (embedding tables are gathered one row per
token, so they do not count) and adds the KV cache read at that context length.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

from .. import flags
from ..errors import TccError

PROBE_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "probe", "bandwidth.cpp")
DEFAULT_PROBE_BYTES = 1 << 30


def _compiler() -> str:
    for cxx in (flags.get("cxx"), os.environ.get("CXX"), "c++", "g++", "clang++"):
        if cxx and shutil.which(cxx):
            return cxx
    raise TccError("no C++ compiler found for the bandwidth probe (install g++ or set TCC_CXX)")


def probe_binary() -> str:
    """Path of the compiled probe (built into the cache directory on first use)."""
    with open(PROBE_SOURCE, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    out_dir = os.path.join(flags.get("cache-dir"), "probe", digest)
    exe = os.path.join(out_dir, "bandwidth")
    if os.path.isfile(exe):
        return exe
    os.makedirs(out_dir, exist_ok=True)
    tmp = f"{exe}.tmp-{os.getpid()}"
    cmd = [_compiler(), "-O3", "-march=native", "-std=c++17", "-pthread", PROBE_SOURCE, "-o", tmp]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        first = (r.stderr.strip().splitlines() or ["(no output)"])[0]
        raise TccError(f"building the bandwidth probe failed: {first}")
    os.replace(tmp, exe)
    return exe


def measure_bandwidth(threads: int, nbytes: int = DEFAULT_PROBE_BYTES, passes: int = 6) -> dict:
    """Read bandwidth in GB/s on `threads` threads: {"best_gbs", "median_gbs", "bytes", ...}."""
    if threads < 1:
        raise TccError(f"--threads must be at least 1, got {threads}")
    r = subprocess.run([probe_binary(), str(nbytes), str(threads), str(passes)], capture_output=True, text=True)
    if r.returncode != 0:
        raise TccError(f"the bandwidth probe failed: {(r.stderr.strip().splitlines() or ['?'])[0]}")
    return json.loads(r.stdout)


def decode_bytes_per_token(manifest: dict, context: float) -> dict:
    """Bytes one decode step reads: the weights it uses (manifest["weights"]["decode_bytes"]: all but the
    gathered tables) plus the K and V of `context` cached positions."""
    w = manifest["weights"]
    weights = int(w.get("decode_bytes", w["bytes"]))
    llm = manifest.get("llm") or {}
    window, rewind = int(llm.get("window") or 0), int(llm.get("kv_ring_rewind") or 0)
    # A sliding-window cache is a ring of window + rewind - 1 rows, and a step reads at most `window` of them
    # (with windowed and global layers mixed, this counts every layer as windowed: a lower bound).
    rows = window + rewind - 1 if window and rewind else llm.get("capacity", 1)
    kv_per_position = llm["kv_cache_bytes"] / rows if llm.get("kv_cache") else 0.0
    kv = kv_per_position * (min(context, window) if window else context)
    return {"weights": weights, "kv_cache": kv, "total": weights + kv}


def roofline(bytes_per_token: float, bandwidth_gbs: float, measured_ms: float) -> dict:
    """The floor on ms/token at this bandwidth, and the fraction of it the measured decode reaches."""
    floor_ms = bytes_per_token / (bandwidth_gbs * 1e9) * 1e3
    return {"floor_ms": floor_ms, "roofline_tok_s": 1e3 / floor_ms if floor_ms else float("inf"),
            "achieved": floor_ms / measured_ms if measured_ms else 0.0}
