"""benchmarks/arm_insn_counts.py: the qemu log parser, the names of the Armv8.2+ encodings, and the counts of a
small run, which also pin down which arithmetic each CPU's path executes (exact counts, from the kernels'
loop structure: a wrong path or a miscounted log changes them)."""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
from tcc.codegen.cmake import REPO_ROOT

from .arm_harness import needs_emulation, shared_dir

_spec = importlib.util.spec_from_file_location("arm_insn_counts", os.path.join(REPO_ROOT, "benchmarks",
                                                                               "arm_insn_counts.py"))
aic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(aic)


@pytest.mark.parametrize("word,name", [
    ("4e829420", "sdot"),      # sdot v0.4s, v1.16b, v2.16b
    ("0e829420", "sdot"),      # the 64-bit form
    ("4e82a420", "smmla"),     # smmla v0.4s, v1.16b, v2.16b
    ("4e420c20", "fmla.8h"),   # fmla v0.8h, v1.8h, v2.8h
    ("6e421c20", "fmul.8h"),   # fmul v0.8h, v1.8h, v2.8h
    ("4e421420", "fadd.8h"),   # fadd v0.8h, v1.8h, v2.8h
    ("4e79d820", "scvtf.8h"),  # scvtf v0.8h, v1.8h
    ("4ec20c20", "other-ext"),  # fmla v0.2d (size 01): not a half-precision op
])
def test_extension_encodings(word, name):
    assert aic.mnemonic(word, ".byte") == name
    assert aic.mnemonic(word, "add") == "add"  # a mnemonic the disassembler knows is kept


def test_log_parser_counts_main_thread_blocks_between_markers(tmp_path):
    log = tmp_path / "log"
    log.write_text(
        "IN: tcc_marker\n0x00400100:  d65f03c0  ret\n\n"
        "IN: k\n0x00400200:  4e829420  .byte 0x20, 0x94, 0x82, 0x4e\n0x00400204:  8b020020  add x0, x1, x2\n\n"
        "Trace 0: 0x7f00 [0000000001/0000000000400200/00000001/00000200] k\n"       # before the first marker
        "Trace 0: 0x7f00 [0000000001/0000000000400100/00000001/00000200] tcc_marker\n"
        "Trace 0: 0x7f00 [0000000001/0000000000400200/00000001/00000200] k\n"
        "Trace 1: 0x7f00 [0000000001/0000000000400200/00000001/00000200] k\n"       # another thread
        "Trace 0: 0x7f00 [0000000001/0000000000400200/00000001/00000200] k\n"
        "Trace 0: 0x7f00 [0000000001/0000000000400100/00000001/00000200] tcc_marker\n")
    (c,) = aic.count(str(log), 1)
    assert c[""] == 4 and c["sdot"] == 2 and c["add"] == 2
    with pytest.raises(RuntimeError, match="saw 2 markers.*expected 3"):
        aic.count(str(log), 2)


@needs_emulation
def test_small_run_executes_each_cpus_path(tmp_path_factory):
    M, N, K = 1, 16, 64  # decode: 4 column tiles x 2 blocks of 32 k
    h = aic.MarkedHarness()
    calls = {label: idx for label, _, idx in aic._queue(h, M, N, K, np.random.default_rng(0))}
    with shared_dir(tmp_path_factory, "arm_insn") as d:
        h.build(str(d))
    counts = {}
    for cpu in ("qemu-max", "cortex-a53"):
        log = os.path.join(h.dir, f"{cpu}-{os.getpid()}.log")
        os.environ.update(QEMU_LOG="exec,nochain,in_asm", QEMU_LOG_FILENAME=log)
        try:
            h.run(aic.CPUS[cpu])
        finally:
            del os.environ["QEMU_LOG"], os.environ["QEMU_LOG_FILENAME"]
        counts[cpu] = aic.count(log, len(h.calls))
        os.remove(log)
    pairs = (N // 4) * 4 * (K // 32)  # (tile, column, block) triples: one 16-byte weight vector each
    w4a8, w4a16 = calls["qlinear_w4a8"], calls["qlinear_w4a16"]
    # sdot: two per 32-k block and column (the low and high nibbles' 16 k); the a53 has none of these.
    assert counts["qemu-max"][w4a8]["sdot"] == 2 * pairs and counts["cortex-a53"][w4a8]["sdot"] == 0
    # w4a16, fp16 path: per block and column 4 scvtf.8h and 4 fmul.8h (the weights), and per row 1 fmul.8h +
    # 3 fmla.8h; the f32 path (a53) executes no half-precision arithmetic.
    fp16 = counts["qemu-max"][w4a16]
    assert (fp16["scvtf.8h"], fp16["fmul.8h"], fp16["fmla.8h"]) == (4 * pairs, 5 * pairs, 3 * pairs)
    assert sum(counts["cortex-a53"][w4a16][k] for k in ("scvtf.8h", "fmul.8h", "fmla.8h")) == 0
