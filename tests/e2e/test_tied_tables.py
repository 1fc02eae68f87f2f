"""Tied embeddings stored once (passes/tie_tables.py) end to end: the embedding + MLP + LM head model of
test_bit_allocation.py with the LM head's weight the embedding's transpose (a second initializer, as exporters
write it), compiled for x86 and arm and run.

Checks:
- weights.bin holds the matrix once: exactly the bytes bit allocation counts (the tied table not counted
  again), i.e. the untied storage less the table's codes and scales; the manifest names the pair;
- the qgather kernel that reads the table out of the LM head's packed weights runs (tcc_qgather_<bits>_tiles),
  and the logits are bitwise those of the same compile with the tie disabled (the table's own rows): storage
  changes, values do not; for the default mix (8-bit), all-4-bit and w8a8;
- the arm artifact (its own packed layout) under qemu gives the x86 logits;
- where the two quantized forms differ they stay apart: w4a32's default keeps the embedding at 8 bits and its
  LM head at 4 (no 8-bit kernel with f32 activations), and a head changed by one weight is not the table.
"""
from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

import tcc
from tcc.passes import bit_allocation, tie_tables
from tcc.passes.quantize import layer_bytes

from .test_bit_allocation import H, K, SEQ, V, _logits, _model

CASES = [("w4a8", None, 8), ("w4a8", "pure", 4), ("w8a8", None, 8), ("w4a32", "pure", 4)]


@pytest.fixture(scope="module")
def tied_model(tmp_path_factory):
    return _model(str(tmp_path_factory.mktemp("tied") / "model.onnx"), tied=True)


@pytest.fixture(scope="module")
def ids():
    return np.random.default_rng(3).integers(0, V, (1, SEQ)).astype(np.int64)


def _compile(model, out, qm, budget, target="x86"):
    return tcc.compile(model, str(out), target=target, qm=qm, budget_bits=budget, max_dims={"seq": SEQ})


@pytest.fixture(scope="module")
def built(tied_model, tmp_path_factory):
    cache = {}

    def get(qm, budget, target="x86", untied=False):
        key = (qm, budget, target, untied)
        if key not in cache:
            out = tmp_path_factory.mktemp("art") / f"{qm}-{budget}-{target}-{untied}"
            if untied:  # the tie disabled: the table's own rows, as before tie-tables
                with pytest.MonkeyPatch.context() as mp:
                    mp.setattr(tie_tables, "tied_linear", lambda gather, linears: None)
                    mp.setattr(bit_allocation, "same_table", lambda table, weight: False)
                    cache[key] = (str(out), _compile(tied_model, out, qm, budget, target))
            else:
                cache[key] = (str(out), _compile(tied_model, out, qm, budget, target))
        return cache[key]
    return get


@pytest.mark.parametrize("qm,budget,bits", CASES)
def test_stored_once_and_the_logits_unchanged(built, ids, qm, budget, bits):
    out, m = built(qm, budget)
    ref_out, ref = built(qm, budget, untied=True)
    size = os.path.getsize(os.path.join(out, "weights.bin"))
    table = layer_bytes(V, K, bits, 32, False)
    assert size == m["weights"]["bytes"] == ref["weights"]["bytes"] - table
    assert m["quantization"]["tied_tables"] == {"tied": [["embed", "lm_head"]], "saved_bytes": table}
    assert "tied_tables" not in ref["quantization"]
    assert f"tcc_qgather_{bits}_tiles__scalar" in m["kernels"]
    assert not any("qgather" in k and "tiles" in k for k in ref["kernels"])
    a = m["quantization"].get("bit_allocation")
    if a is not None:  # the 4-bit schemes: the tied table counted once, at its head's bits
        assert a["weight_bytes"] == size and a["weights"] == K * H + H * K + K * V
        assert a["tied"] == [["embed", "lm_head"]] and a["layers"]["embed"] == a["layers"]["lm_head"] == bits
    np.testing.assert_array_equal(_logits(out, ids), _logits(ref_out, ids))


def test_w4a32_default_keeps_its_8_bit_table(built):
    """w4a32 has no 8-bit Linear kernel with f32 activations: its default mix makes the embedding 8-bit and
    the LM head 4-bit, two different forms of the matrix, so both are stored."""
    _, m = built("w4a32", None)
    assert "tied_tables" not in m["quantization"] and m["quantization"]["bit_allocation"]["tied"] == []
    assert m["quantization"]["bit_allocation"]["layers"] == {"embed": 8, "up": 4, "down": 4, "lm_head": 4}


def test_a_different_head_is_not_tied(tmp_path):
    import onnx
    from onnx import numpy_helper

    path = _model(str(tmp_path / "model.onnx"), tied=True)
    m = onnx.load(path)
    init = next(i for i in m.graph.initializer if i.name == "lm_head.weight")
    w = numpy_helper.to_array(init).copy()
    w[3, 7] += 1.0  # one weight: its column's int8 scale and codes differ from the table's row
    init.CopyFrom(numpy_helper.from_array(w, "lm_head.weight"))
    onnx.save(m, path)
    man = _compile(path, tmp_path / "out", "w8a8", None)
    assert "tied_tables" not in man["quantization"]
    assert not any("tiles" in k for k in man["kernels"])


@pytest.mark.skipif(subprocess.run(["which", "qemu-aarch64"], capture_output=True).returncode != 0,
                    reason="qemu-aarch64 absent")
@pytest.mark.parametrize("qm,budget,bits", CASES[:2])
def test_arm_artifact_under_qemu_matches_x86(built, ids, qm, budget, bits):
    from tcc.backends import run_emulated
    from tcc.backends.arm.target import cross_toolchain_missing

    if cross_toolchain_missing():
        pytest.skip(f"arm cross toolchain absent: {cross_toolchain_missing()}")
    out, m = built(qm, budget, "arm")
    assert f"tcc_qgather_{bits}_tiles__scalar" in m["kernels"] and m["quantization"]["tied_tables"]["tied"]
    got, _ = run_emulated(out, m, {"ids": ids})
    want = _logits(built(qm, budget)[0], ids)
    np.testing.assert_allclose(got["logits"], want, rtol=0, atol=1e-4 * np.abs(want).max())
