"""benchmarks/ort_nbits_stream.py (issue 22's ORT row at 7B): the streamed MatMulNBits model is the one ONNX
Runtime's own MatMulNBitsQuantizer writes, made one tensor at a time.

On tools/make_llama_onnx.py's tiny shape at f16, bf16 and f32: the streamed file's MatMulNBits nodes (names,
inputs, attributes) and their packed int4 codes and scales are bit-identical to the stock quantizer's on the
model's f32 copy (the f16/bf16 weights exactly; the stock path needs an f32 model to run at f32
activations), and ORT's logits on the two models match (prefill, then a decode step with the presents fed
back). Bad input ends in one line and a non-zero exit. Not timed.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import AttributeProto, TensorProto, numpy_helper

from tests.llama_export import make_llama_onnx

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benchmarks", "ort_nbits_stream.py")
HALF = (TensorProto.FLOAT16, TensorProto.BFLOAT16)


def _stream():
    spec = importlib.util.spec_from_file_location("ort_nbits_stream", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """The tiny random-weight LLaMA decoder with past at each dtype: {dtype: (model.onnx, shape)}."""
    pytest.importorskip("transformers")
    mk = make_llama_onnx()
    shape = dict(mk.SHAPES["tiny"])
    root = tmp_path_factory.mktemp("ort-nbits")
    out = {}
    for dtype in ("f16", "bf16", "f32"):
        mk.make(shape, str(root / dtype), dtype)
        out[dtype] = (str(root / dtype / "model.onnx"), shape)
    return out


def _f32_copy(src: str, dst: str) -> None:
    """The whole model in memory with every f16/bf16 initializer, Constant value, Cast target and graph I/O
    in f32 (exact): what the stock quantizer is given so that ORT runs the result at f32 activations."""
    m = onnx.load(src)

    def convert(t):
        if t.data_type in HALF:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))

    for t in m.graph.initializer:
        convert(t)
    for n in m.graph.node:
        for a in n.attribute:
            if a.name == "to" and a.i in HALF:
                a.i = TensorProto.FLOAT
            if a.type == AttributeProto.TENSOR:
                convert(a.t)
    for vi in [*m.graph.input, *m.graph.output]:
        if vi.type.tensor_type.elem_type in HALF:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
    del m.graph.value_info[:]
    onnx.save(m, dst)


def _stock(src: str, dst: str, accuracy_level: int) -> None:
    """ONNX Runtime's MatMulNBitsQuantizer, as benchmarks/llm_suite.py runs it (block 32, symmetric)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(onnx.load(src), bits=4, block_size=32, is_symmetric=True,
                             accuracy_level=accuracy_level or None)
    q.process()
    q.model.model.ir_version = min(q.model.model.ir_version, 10)
    q.model.save_model_to_file(dst, use_external_data_format=True)


def _nbits(path: str) -> tuple[dict, dict]:
    """{node name: (inputs, attributes)} of the MatMulNBits nodes and {initializer: array} of their weights."""
    m = onnx.load(path)
    inits = {t.name: t for t in m.graph.initializer}
    nodes, arrays = {}, {}
    for n in m.graph.node:
        if n.op_type == "MatMulNBits":
            nodes[n.name] = (list(n.input), sorted((a.name, a.i) for a in n.attribute))
            for name in n.input[1:]:
                arrays[name] = numpy_helper.to_array(inits[name])
    return nodes, arrays


def _logits(path: str, shape: dict) -> np.ndarray:
    """ORT's logits for a 6-token prompt and one decode step fed the presents: [7, vocab]."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    past = [i.name for i in sess.get_inputs() if i.name.startswith("past")]
    assert all(i.type == "tensor(float)" for i in sess.get_inputs() if i.name.startswith("past"))
    hd = shape["hidden_size"] // shape["num_attention_heads"]
    kv = {n: np.zeros((1, shape["num_key_value_heads"], 0, hd), np.float32) for n in past}
    outs = [o.name for o in sess.get_outputs()]
    rows = []
    for ids, start in (([5, 17, 99, 3, 250, 7], 0), ([42], 6)):
        n = len(ids)
        feeds = {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, start + n), np.int64),
                 "position_ids": np.arange(start, start + n, dtype=np.int64)[None], **kv}
        res = dict(zip(outs, sess.run(outs, feeds)))
        rows.append(res["logits"][0])
        kv = {p: res[p.replace("past_key_values", "present")] for p in past}
    return np.concatenate(rows)


@pytest.mark.parametrize("dtype, accuracy_level", [("f16", 4), ("f16", 0), ("bf16", 4), ("f32", 4)])
def test_streamed_nbits_model_is_the_stock_quantizers(exports, tmp_path, dtype, accuracy_level):
    src, shape = exports[dtype]
    info = _stream().quantize(src, str(tmp_path / "stream"), accuracy_level)
    assert info["matmulnbits_weights"] == 4 * 7 + 1 and info["nodes"]["MatMulNBits"] == 29, info
    assert info["f16_bf16_initializers_to_f32"] == (0 if dtype == "f32" else 10), info
    ref_src = src
    if dtype != "f32":
        ref_src = str(tmp_path / "f32.onnx")
        _f32_copy(src, ref_src)
    _stock(ref_src, str(tmp_path / "stock.onnx"), accuracy_level)

    got_nodes, got = _nbits(info["model"])
    want_nodes, want = _nbits(str(tmp_path / "stock.onnx"))
    assert got_nodes == want_nodes
    assert got.keys() == want.keys() and len(got) == 2 * 29
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, name
        assert got[name].tobytes() == want[name].tobytes(), f"{name} differs from the stock quantizer's"
    stream_logits = _logits(info["model"], shape)
    stock_logits = _logits(str(tmp_path / "stock.onnx"), shape)
    scale = float(np.abs(stock_logits).max())
    assert np.abs(stream_logits - stock_logits).max() <= 1e-5 * scale, np.abs(stream_logits - stock_logits).max()
    assert (stream_logits.argmax(-1) == stock_logits.argmax(-1)).all()


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=120)


def test_bad_inputs_are_one_line_errors(exports, tmp_path):
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_bytes(b"\xff" * 64 + b"not a model")
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    src = exports["f16"][0]
    (truncated / "model.onnx").write_bytes(open(src, "rb").read())
    data = open(os.path.join(os.path.dirname(src), "model.onnx.data"), "rb").read()
    (truncated / "model.onnx.data").write_bytes(data[: len(data) // 2])
    for args, words in ((("quantize", "--model", str(not_onnx), "--out", str(tmp_path / "o1")), "not an ONNX model"),
                        (("quantize", "--model", str(truncated), "--out", str(tmp_path / "o2")), "do not hold"),
                        (("quantize", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o3")), "not found"),
                        (("bench", "--model", str(not_onnx)), "not an ONNX model")):
        r = _cli(*args)
        assert r.returncode == 2 and r.stdout == "", (args, r)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ort_nbits_stream: error: ") and words in lines[0], r.stderr


def test_truncated_model_keeps_the_first_layers(exports, tmp_path):
    """bench --layers N (projecting a session too big for the machine) runs the model's first N decoder layers:
    its presents are the full model's for those layers, the later layers' I/O is gone, and the weights file
    is shared (nothing copied)."""
    import onnxruntime as ort

    src, shape = exports["f32"]
    stream = _stream()
    full = stream.quantize(src, str(tmp_path / "q"), 4)["model"]
    cut = stream.truncate_layers(full, 2)
    assert os.path.dirname(cut) == os.path.dirname(full) and os.path.getsize(cut) < os.path.getsize(full)
    hd = shape["hidden_size"] // shape["num_attention_heads"]
    ids = np.array([[5, 17, 99, 3]], np.int64)
    res = {}
    for name, path in (("full", full), ("cut", cut)):
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        feeds = {"input_ids": ids, "attention_mask": np.ones(ids.shape, np.int64), "position_ids": np.arange(4)[None]}
        feeds.update({i.name: np.zeros((1, shape["num_key_value_heads"], 0, hd), np.float32)
                      for i in sess.get_inputs() if i.name.startswith("past")})
        outs = [o.name for o in sess.get_outputs()]
        res[name] = dict(zip(outs, sess.run(outs, feeds)))
    assert sorted(res["cut"]) == ["logits"] + [f"present.{i}.{k}" for i in range(2) for k in ("key", "value")]
    for k in res["cut"]:
        if k.startswith("present"):
            assert np.array_equal(res["cut"][k], res["full"][k]), k
    assert res["cut"]["logits"].shape == res["full"]["logits"].shape
    assert not np.allclose(res["cut"]["logits"], res["full"]["logits"])
    with pytest.raises(stream.NbitsInputError, match="4 decoder layers"):
        stream.truncate_layers(full, 4)
