"""Dynamic instruction counts of the arm quantized-linear kernels under qemu (not a test, not a speed figure).

    python benchmarks/arm_insn_counts.py [--n 1024] [--k 1024] [--prefill-rows 8] [--build-dir build/arm-insn]

No ARM hardware is at hand, and emulated time says nothing about a real core. What emulation does measure
exactly is how many instructions each kernel path executes: qemu-aarch64 logs every translation block it
runs (`QEMU_LOG=exec,nochain,in_asm`), and the harness (tests/backends/arm_harness.py) calls a no-op
`tcc_marker()` after each kernel call, so the blocks between two markers are one call's. The table gives,
per path (qemu `max`: i8mm + dotprod + fp16, `cortex-a76`: dotprod + fp16, `cortex-a53`: none), the
instructions per call, per weight (decode, M = 1) and per multiply-accumulate (prefill), and how many of
them are the path's arithmetic (sdot, smmla, fmla/fmul, ...). One thread (a null pool). It is a proxy for
the work a core does, blind to latencies, issue width and memory; it is exact and repeatable.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tcc.backends import get_backend  # noqa: E402
from tcc.backends.arm import packing as ap  # noqa: E402
from tcc.backends.arm.target import cross_toolchain_missing  # noqa: E402
from tcc.ir.quant_arith import quantize_activations, quantize_int4, quantize_int8  # noqa: E402

from tests.backends.arm_harness import Harness  # noqa: E402

CPUS = {"qemu-max": None, "cortex-a76": "cortex-a76", "cortex-a53": "cortex-a53"}
# The arithmetic of each kernel path, by mnemonic (what the path exists to execute).
ARITH = ("sdot", "smmla", "smull", "smull2", "sadalp", "fmla", "fmul", "fadd", "faddp", "scvtf",
         "fmla.8h", "fmul.8h", "fadd.8h", "scvtf.8h")
TRACE = re.compile(r"^Trace 0: 0x[0-9a-f]+ \[[0-9a-f]+/([0-9a-f]+)/")
INSN = re.compile(r"^0x([0-9a-f]+):\s+([0-9a-f]{8})\s+(\S+)")
# qemu 7.2's disassembler prints Armv8.2+ instructions it does not know as ".byte": name the ones the kernels
# use from their encodings (Arm ARM: (mask, value) with the register fields and the Q bit masked out).
EXTENSIONS = (("sdot", 0xBFE0FC00, 0x0E809400), ("smmla", 0xFFE0FC00, 0x4E80A400),
              ("fmla.8h", 0xBFE0FC00, 0x0E400C00), ("fmul.8h", 0xBFE0FC00, 0x2E401C00),
              ("fadd.8h", 0xBFE0FC00, 0x0E401400), ("scvtf.8h", 0xBFFFFC00, 0x0E79D800))


def mnemonic(encoding: str, text: str) -> str:
    if text != ".byte":
        return text
    word = int(encoding, 16)
    return next((name for name, mask, value in EXTENSIONS if word & mask == value), "other-ext")


class MarkedHarness(Harness):
    """The test harness with a `tcc_marker(i)` call (a no-op the compiler cannot remove) before the first call
    and after call i."""

    def _source(self) -> str:
        src = super()._source()
        marker = ('extern "C" __attribute__((noinline)) void tcc_marker(int i) { asm volatile("" :: "r"(i)); }\n'
                  "static void run_all(")
        src = src.replace("static void run_all(", marker, 1)
        out, call = [], 0
        for line in src.splitlines():
            out.append(line)
            if line.startswith("static void run_all("):  # the start: what ran before (loading the blob) is not counted
                out.append("  tcc_marker(-1);")
            if line.startswith("  if (tcc_error_pending())"):
                out.append(f"  tcc_marker({call});")
                call += 1
        return "\n".join(out) + "\n"


def _operands(rng, M, N, K, group=32):
    w = rng.standard_normal((K, N)).astype(np.float32)
    x = rng.standard_normal((M, K)).astype(np.float32)
    q4, s4, _ = quantize_int4(w, group)
    q8, s8 = quantize_int8(w)
    xg = quantize_activations(x, group, pad_to=ap.KPAD)
    row = -(-K // 32) * 32  # w8a8's activations: one scale per row (a group of K rounded up to 32)
    xr = quantize_activations(x, row, pad_to=ap.KPAD)
    return dict(x=x, q4=ap.pack_q4(q4), s4=ap.pack_q4_scales(s4), q8=ap.pack_q8(q8), s8=ap.pack_q8_scales(s8),
                xg=xg, xr=xr, row=row, group=group)


def _queue(h: Harness, M: int, N: int, K: int, rng) -> list[tuple[str, int, int]]:
    """Queue one call of each neon kernel at M x N x K; returns (label, M, call index)."""
    b = get_backend("arm")
    spec = {f: b.select(f) for f in ("quantize_acts", "qlinear_w4a8", "qlinear_w8a8", "qlinear_w4a32", "qlinear_w4a16")}
    o = _operands(rng, M, N, K)
    y = np.zeros((M, N), np.float32)
    xq, xs, xsum = o["xg"]
    kp, g = xq.shape[1], o["group"]
    calls = [
        ("quantize_acts (group)", h.call(spec["quantize_acts"], o["x"], K, np.zeros((M, kp), np.int8), kp,
                                         np.zeros(M * (K // g), np.float32), np.zeros(M * (K // g), np.int32),
                                         M, K, g, 0, None)),
        ("qlinear_w4a8", h.call(spec["qlinear_w4a8"], xq, xs, xsum, kp, o["q4"], o["s4"], None, None, y.copy(), N,
                                M, N, K, g, None)),
        ("qlinear_w8a8", h.call(spec["qlinear_w8a8"], *o["xr"], kp, o["q8"], o["s8"], None, y.copy(),
                                N, M, N, K, o["row"], None)),
        ("qlinear_w4a32", h.call(spec["qlinear_w4a32"], o["x"], K, o["q4"], o["s4"], None, None, y.copy(), N, M, N,
                                 K, g, None)),
        ("qlinear_w4a16", h.call(spec["qlinear_w4a16"], o["x"], K, o["q4"], o["s4"], None, None, y.copy(), N, M, N,
                                 K, g, None)),
    ]
    return [(label, M, idx) for label, idx in calls]


def count(log_path: str, n_calls: int) -> list[collections.Counter]:
    """Per call, executed instructions by mnemonic (key "": the total) of the main thread ("Trace 0": the
    pool's idle workers may spin), from a qemu exec + in_asm log."""
    blocks: dict[str, list[str]] = {}
    marker_pc, current, start = None, None, None
    per_call = [collections.Counter() for _ in range(n_calls)]
    call = -1  # before the first marker: process start-up
    with open(log_path, errors="replace") as f:
        for line in f:
            if line.startswith("IN: "):
                current, start = [], None
                name = line[4:].strip()
                continue
            m = INSN.match(line)
            if m and current is not None:
                if start is None:
                    start = m.group(1).lstrip("0")
                    blocks[start] = current
                    if name == "tcc_marker":
                        marker_pc = start
                current.append(mnemonic(m.group(2), m.group(3)))
                continue
            t = TRACE.match(line)
            if t:
                current = None
                pc = t.group(1).lstrip("0")
                if pc == marker_pc:
                    call += 1
                elif 0 <= call < n_calls and pc in blocks:
                    c = per_call[call]
                    c[""] += len(blocks[pc])
                    c.update(blocks[pc])
    if call != n_calls:
        raise RuntimeError(f"saw {call + 1} markers in {log_path}, expected {n_calls + 1}")
    return per_call


def main(argv=None) -> int:
    ap_ = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap_.add_argument("--n", type=int, default=1024)
    ap_.add_argument("--k", type=int, default=1024)
    ap_.add_argument("--prefill-rows", type=int, default=8)
    ap_.add_argument("--build-dir", default="build/arm-insn")
    args = ap_.parse_args(argv)
    missing = cross_toolchain_missing()
    if missing:
        print(f"arm_insn_counts: {missing}", file=sys.stderr)
        return 1
    rng = np.random.default_rng(0)
    h = MarkedHarness()
    calls = _queue(h, 1, args.n, args.k, rng) + _queue(h, args.prefill_rows, args.n, args.k, rng)
    h.build(os.path.abspath(args.build_dir))
    results = {}
    for label, cpu in CPUS.items():
        log = os.path.join(h.dir, f"qemu-{label}.log")
        os.environ.update(QEMU_LOG="exec,nochain,in_asm", QEMU_LOG_FILENAME=log)
        try:
            h.run(cpu)
        finally:
            del os.environ["QEMU_LOG"], os.environ["QEMU_LOG_FILENAME"]
        results[label] = count(log, len(h.calls))
        os.remove(log)
    n, k = args.n, args.k
    print(f"## arm kernels: dynamic instructions under qemu, N = {n}, K = {k}, group 32, one thread\n")
    print("| kernel | M | " + " | ".join(f"{c}: insns/MAC (arith)" for c in CPUS) + " |")
    print("|---|---|" + "---|" * len(CPUS))
    for label, m, idx in calls:
        macs = m * k * (n if label.startswith("qlinear") else 1)
        cells = []
        for c in CPUS:
            ctr = results[c][idx]
            arith = sum(ctr[a] for a in ARITH)
            cells.append(f"{ctr[''] / macs:.3f} ({arith / macs:.3f})")
        unit = "" if label.startswith("qlinear") else " per element"
        print(f"| {label}{unit} | {m} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
