"""The decode roofline (runtime/roofline.py) and the bytes a decode step reads (codegen/manifest.py: decode_weight_bytes)."""
from __future__ import annotations

import numpy as np
import pytest

from tcc.codegen.manifest import decode_weight_bytes
from tcc.errors import TccError
from tcc.ir.core import Graph, TensorType
from tcc.ir.dtypes import DType
from tcc.runtime.roofline import decode_bytes_per_token, measure_bandwidth, roofline


def test_roofline_floor_and_fraction():
    r = roofline(bytes_per_token=2e9, bandwidth_gbs=20.0, measured_ms=125.0)
    assert r["floor_ms"] == pytest.approx(100.0)
    assert r["roofline_tok_s"] == pytest.approx(10.0)
    assert r["achieved"] == pytest.approx(0.8)


def test_decode_bytes_count_weights_and_the_kv_read_so_far():
    manifest = {"weights": {"bytes": 1000, "decode_bytes": 700},
                "llm": {"kv_cache": True, "kv_cache_bytes": 4096, "capacity": 64}}
    b = decode_bytes_per_token(manifest, context=10)
    assert b == {"weights": 700, "kv_cache": 640.0, "total": 1340.0}
    # Artifacts from before decode_bytes existed count every weight; no KV cache, no KV bytes.
    assert decode_bytes_per_token({"weights": {"bytes": 1000}}, 10)["total"] == 1000


def test_gathered_tables_are_not_read_per_token():
    g = Graph()
    ids = g.add_input("ids", TensorType(DType.i64, (1, 3)))
    emb = g.add_const(np.zeros((50, 8), np.float32), "emb")
    shared = g.add_const(np.zeros((50, 8), np.float32), "shared")  # gathered AND multiplied: read in full
    w = g.add_const(np.zeros((8, 8), np.float32), "w")
    x = g.add_node("Gather", [emb, ids]).output
    y = g.add_node("Gather", [shared, ids]).output
    z = g.add_node("MatMul", [g.add_node("Add", [x, y]).output, w]).output
    g.add_node("MatMul", [z, g.add_node("Transpose", [shared], {"perm": [1, 0]}).output])
    entries = [{"name": "emb", "bytes": 1600}, {"name": "shared", "bytes": 1600}, {"name": "w", "bytes": 256}]
    assert decode_weight_bytes(g, entries) == 1600 + 256


def test_bandwidth_probe_measures_something():
    r = measure_bandwidth(1, nbytes=64 << 20, passes=2)
    assert r["bytes"] == 64 << 20 and r["threads"] == 1 and r["best_gbs"] > 0.1
    assert r["best_gbs"] >= r["median_gbs"] > 0
    with pytest.raises(TccError, match="--threads must be at least 1"):
        measure_bandwidth(0)
