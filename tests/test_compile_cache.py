"""compile_cache.compile_cached / cache_key: what an artifact depends on, and reuse (tcc demo, tcc eval --compare)."""
from __future__ import annotations

import os
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tcc.compile_cache import cache_key, compile_cached
from tcc.driver import CompileOptions
from tests.conftest import MODELS_DIR

MLP = os.path.join(MODELS_DIR, "mlp.onnx")


def _linear_model(path: str, w: np.ndarray, external: bool) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, w.shape[0]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, w.shape[1]])
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y],
                          [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    onnx.save_model(m, path, save_as_external_data=external, location="w.bin", size_threshold=0)


def test_cache_key_follows_everything_the_artifact_depends_on(tmp_path):
    model = tmp_path / "m.onnx"
    shutil.copy(MLP, model)
    base = cache_key(str(model), CompileOptions())
    assert cache_key(str(model), CompileOptions()) == base
    # Where the dumps go does not change the artifact.
    assert cache_key(str(model), CompileOptions(dump_ir=str(tmp_path / "ir"))) == base
    assert cache_key(str(model), CompileOptions(qm="w4a8")) != base
    assert cache_key(str(model), CompileOptions(max_dims={"batch": 8})) != base
    (tmp_path / "tokenizer.json").write_text("{}")  # a side file compile copies into the artifact
    with_tok = cache_key(str(model), CompileOptions())
    assert with_tok != base
    calib = tmp_path / "calib.txt"
    calib.write_text("some text")
    k1 = cache_key(str(model), CompileOptions(qm="w4a8", calib=str(calib)))
    calib.write_text("other text")
    assert cache_key(str(model), CompileOptions(qm="w4a8", calib=str(calib))) != k1


def test_cache_key_hashes_external_weights(tmp_path):
    path = str(tmp_path / "ext.onnx")
    _linear_model(path, np.ones((4, 3), np.float32), external=True)
    assert os.path.isfile(tmp_path / "w.bin")
    k1 = cache_key(path, CompileOptions())
    _linear_model(path, np.full((4, 3), 2, np.float32), external=True)  # same graph, other weights
    assert cache_key(path, CompileOptions()) != k1


def test_compile_cached_reuses_until_something_changes(tmp_path):
    model = tmp_path / "m.onnx"
    shutil.copy(MLP, model)
    out = str(tmp_path / "out")
    opts = CompileOptions(max_dims={"batch": 4})
    m1, reused = compile_cached(str(model), out, opts)
    assert not reused and os.path.isfile(os.path.join(out, "libmodel.so"))
    m2, reused = compile_cached(str(model), out, opts)
    assert reused and m2 == m1
    _, reused = compile_cached(str(model), out, opts, rebuild=True)
    assert not reused
    _, reused = compile_cached(str(model), out, CompileOptions(max_dims={"batch": 8}))
    assert not reused


def test_missing_model_is_a_clear_error(tmp_path):
    from tcc.errors import TccError

    with pytest.raises(TccError, match="not found"):
        cache_key(str(tmp_path / "nope.onnx"), CompileOptions())
