"""Streaming compile pieces (issue 22): mapped external data, the spill file, release, the streamed blob."""
from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tcc.codegen.weights import ALIGN, WeightsBuilder
from tcc.errors import ModelFormatError
from tcc.frontend.mapped import Spill, is_mapped, release
from tcc.frontend.onnx_import import import_onnx


def _rss_pages() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1])


def _external_model(tmp_path, dtype=np.float16):
    w = (np.arange(64 * 32, dtype=np.float32).reshape(64, 32) / 100).astype(dtype)
    data = tmp_path / "m.data"
    data.write_bytes(b"\0" * 10 + w.tobytes())  # an unaligned offset: still a view
    t = TensorProto(name="w", data_type=helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), dims=w.shape)
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "m.data"), ("offset", "10"), ("length", str(w.nbytes))):
        e = t.external_data.add()
        e.key, e.value = k, v
    code = t.data_type
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", code, [2, 64])],
                          [helper.make_tensor_value_info("y", code, [2, 32])], [t])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path, w


def test_external_initializers_are_mapped_views(tmp_path):
    path, w = _external_model(tmp_path)
    g = import_onnx(str(path))
    c = g.constants["w"].const
    assert is_mapped(c) and not c.flags.writeable and c.dtype == np.float16
    np.testing.assert_array_equal(c, w)


def test_external_data_outside_the_folder_is_refused(tmp_path):
    path, _ = _external_model(tmp_path)
    m = onnx.load(str(path), load_external_data=False)
    m.graph.initializer[0].external_data[0].value = "../m.data"
    onnx.save(m, str(path))
    with pytest.raises(ModelFormatError, match="outside the model's folder"):
        import_onnx(str(path))


def test_spill_and_release():
    s = Spill()
    a = np.random.default_rng(0).standard_normal((2048, 4096)).astype(np.float32)  # 32 MB
    b = s.put(a)
    np.testing.assert_array_equal(a, b)
    assert is_mapped(b) and not b.flags.writeable
    del a
    release(b)  # the comparison read it in
    before = _rss_pages()
    total = float(b.sum())  # faults the pages in
    assert _rss_pages() - before > 6000  # ~8192 pages of 4 KiB
    release(b.T)  # any view releases the pages under it ...
    assert _rss_pages() - before < 1000
    assert float(b.sum()) == total  # ... and reading again faults them back from the file
    rows = s.rows(5)
    rows.write(np.arange(6, dtype=np.int32).reshape(2, 3))
    rows.write(np.arange(9, dtype=np.int32).reshape(3, 3))
    np.testing.assert_array_equal(rows.array(), np.concatenate([np.arange(6).reshape(2, 3), np.arange(9).reshape(3, 3)]))
    with pytest.raises(ValueError, match="5 rows expected, 2 written"):
        r = s.rows(5)
        r.write(np.zeros((2, 3), np.int32))
        r.array()


def test_weights_builder_streams_with_the_same_layout(tmp_path):
    arrays = [np.arange(5, dtype=np.float32), np.ones((3, 7), np.float16), np.arange(100, dtype=np.int64)]
    wb = WeightsBuilder()
    offsets = [wb.add((f"a{i}", "dense"), a, f"a{i}") for i, a in enumerate(arrays)]
    assert wb.add(("a0", "dense"), arrays[0], "a0") == offsets[0]  # stored once
    blob = wb.blob()
    data = blob.read()
    assert len(data) == blob.size and blob.size % ALIGN == 0 and blob.sha256 == hashlib.sha256(data).hexdigest()
    for off, a in zip(offsets, arrays):
        assert off % ALIGN == 0 and data[off:off + a.nbytes] == a.tobytes()
    blob.write_to(str(tmp_path / "w.bin"))
    assert (tmp_path / "w.bin").read_bytes() == data
