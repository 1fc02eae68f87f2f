"""Streaming compile (issue 22): the compile's peak memory does not grow with the number of layers.

The same MLP-block model with 2 and with 20 layers (each layer 8 MB of fp32 weights, in an external-data
file) is compiled in a fresh subprocess; the peak RSS the manifest records (ru_maxrss) may grow by a
quarter of the 144 MB (fp32) the 18 extra layers weigh: what varies is how the two quantizing threads'
per-tensor temporaries (a few MB) overlap. A compile that reads the weights into memory, converts them
to f32, keeps the source tensors until quantization ends, or builds weights.bin in memory holds at least
1x of them at once and fails by far (before streaming the peak grew by 2.25x the extra fp32 weights).
Not timed: it compares memory only.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.llama_export import make_llama_onnx

D, F = 512, 2048  # one layer: D*F*2 weights = 8 MB of fp32
BF16 = ml_dtypes.bfloat16
CODES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16,
         np.dtype(BF16): TensorProto.BFLOAT16}
SMALL, BIG = 2, 20
LAYER_BYTES = D * F * 2 * 4


def _write_mlp(path: str, layers: int, dtype=np.float32) -> None:
    """x -> layers x (x + relu(x @ W1) @ W2) -> y, weights written one tensor at a time to model.onnx.data."""
    rng = np.random.default_rng(layers)
    code = CODES[np.dtype(dtype)]
    nodes, inits, x = [], [], "x"
    data_path = os.path.join(os.path.dirname(path), "model.onnx.data")
    offset = 0
    with open(data_path, "wb") as f:
        for i in range(layers):
            for name, shape in ((f"l{i}.w1", (D, F)), (f"l{i}.w2", (F, D))):
                arr = (rng.standard_normal(shape, np.float32) * 0.02).astype(dtype)
                f.write(arr.tobytes())
                t = TensorProto(name=name, data_type=code, dims=shape)
                t.data_location = TensorProto.EXTERNAL
                for k, v in (("location", "model.onnx.data"), ("offset", str(offset)), ("length", str(arr.nbytes))):
                    e = t.external_data.add()
                    e.key, e.value = k, v
                offset += arr.nbytes
                inits.append(t)
            nodes += [helper.make_node("MatMul", [x, f"l{i}.w1"], [f"l{i}.h"], name=f"l{i}.fc1"),
                      helper.make_node("Relu", [f"l{i}.h"], [f"l{i}.r"]),
                      helper.make_node("MatMul", [f"l{i}.r", f"l{i}.w2"], [f"l{i}.o"], name=f"l{i}.fc2"),
                      helper.make_node("Add", [x, f"l{i}.o"], [f"l{i}.y"])]
            x = f"l{i}.y"
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", code, [1, D])],
                          [helper.make_tensor_value_info("y", code, [1, D])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


_CHILD = """
import json, sys
import tcc
from tcc.driver import CompileOptions, compile_model
m = compile_model(sys.argv[1], sys.argv[2], CompileOptions(qm=sys.argv[3], round_to_nearest=True))
print(json.dumps({"peak": m["compile_peak_rss_bytes"], "weights": m["weights"]["bytes"]}))
"""


def _compile_peak(tmp_path, layers: int, qm: str, dtype) -> dict:
    d = tmp_path / f"m{layers}"
    d.mkdir()
    _write_mlp(str(d / "model.onnx"), layers, dtype)
    r = subprocess.run([sys.executable, "-c", _CHILD, str(d / "model.onnx"), str(tmp_path / f"out{layers}"), qm],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("qm, dtype", [("w4a8", np.float32), ("fp32", np.float32), ("w8a8", np.float16),
                                       ("w4a8", np.float16), ("w4a8", BF16)])
def test_compile_peak_rss_does_not_grow_with_layers(tmp_path, qm, dtype):
    small = _compile_peak(tmp_path, SMALL, qm, dtype)
    big = _compile_peak(tmp_path, BIG, qm, dtype)
    extra = (BIG - SMALL) * LAYER_BYTES  # what the extra layers weigh in fp32
    assert big["weights"] > small["weights"] * (BIG / SMALL) * 0.9  # the weights did grow with the layers ...
    grew = big["peak"] - small["peak"]
    # ... the peak may not grow by a copy of them
    assert grew < extra // 4, (f"compile peak RSS grew by {grew / 2**20:.0f} MiB from {SMALL} to {BIG} layers "
                               f"({extra / 2**20:.0f} MiB more fp32 weights): {small} -> {big}")


@pytest.mark.parametrize("qm, tol", [("w8a8", 0.02), ("w4a8", 0.15)])
def test_fp16_export_quantizes_from_fp16(tmp_path, qm, tol):
    """An fp16 model's MatMuls are quantized from their fp16 weights (no f32 copy of the model) and run at
    f32 activations (its inputs and outputs become f32: import_onnx's widen_f16): the result matches the
    fp16 model computed in f32 within the scheme's rounding."""
    import tcc

    d = tmp_path / "m"
    d.mkdir()
    _write_mlp(str(d / "model.onnx"), 2, np.float16)
    m = compile_model_quiet(str(d / "model.onnx"), str(tmp_path / "out"), qm)
    q = m["quantization"]
    assert q["quantized_linears"] == 4, q
    assert m["weights"]["bytes"] < 4 * D * F * 1.1  # about 1 byte or less per weight: not fp16 (2) or f32 (4)
    x = np.random.default_rng(0).standard_normal((1, D)).astype(np.float16)
    assert [i["dtype"] for i in m["inputs"]] == ["f32"] and [o["dtype"] for o in m["outputs"]] == ["f32"]
    y = tcc.load(str(tmp_path / "out")).run({"x": x.astype(np.float32)})["y"]
    ref = x.astype(np.float32)
    weights = onnx.load(str(d / "model.onnx"))
    ws = {t.name: onnx.numpy_helper.to_array(t, str(d)).astype(np.float32) for t in weights.graph.initializer}
    for i in range(2):
        ref = ref + np.maximum(ref @ ws[f"l{i}.w1"], 0) @ ws[f"l{i}.w2"]
    err = np.abs(y - ref).max() / np.abs(ref).max()
    assert err < tol, f"{qm}: max error {err:.3g} of the output's range"


def compile_model_quiet(model: str, out: str, qm: str) -> dict:
    from tcc.driver import CompileOptions, compile_model

    return compile_model(model, out, CompileOptions(qm=qm, round_to_nearest=True))


def tiny_llama_compiled_at_w8a8(tmp_path, dtype: str) -> dict:
    """tools/make_llama_onnx.py's tiny shape exported at `dtype` into tmp_path/m, compiled at w8a8 into
    tmp_path/out with attention fused and a KV cache; returns the shape."""
    pytest.importorskip("transformers")
    mk = make_llama_onnx()
    shape = dict(mk.SHAPES["tiny"])
    mk.make(shape, str(tmp_path / "m"), dtype)
    m = compile_model_quiet(str(tmp_path / "m" / "model.onnx"), str(tmp_path / "out"), "w8a8")
    assert m["llm"]["kv_cache"] and m["quantization"]["quantized_linears"] == 4 * 7 + 2, m["quantization"]
    return shape


def test_fp16_llama_export_gets_f32_activations_and_a_kv_cache(tmp_path):
    """An fp16 LLaMA export (tools/make_llama_onnx.py: torch's exporter at fp16) compiled with --qm runs at
    f32 activations: attention is fused, the KV cache is built (its f16 mask minimum maps to the f32 one),
    the weights are quantized from fp16, and the logits match onnxruntime's on the fp16 model."""
    import onnxruntime as ort

    import tcc

    shape = tiny_llama_compiled_at_w8a8(tmp_path, "f16")
    ids = np.array([[5, 17, 99, 3, 250, 7]], np.int64)
    sess = ort.InferenceSession(str(tmp_path / "m" / "model.onnx"), providers=["CPUExecutionProvider"])
    hd = shape["hidden_size"] // shape["num_attention_heads"]
    feeds = {"input_ids": ids, "attention_mask": np.ones(ids.shape, np.int64), "position_ids": np.arange(6)[None]}
    for i in sess.get_inputs():
        if i.name.startswith("past"):
            feeds[i.name] = np.zeros((1, shape["num_key_value_heads"], 0, hd), np.float16)
    ref = sess.run(["logits"], feeds)[0][0, -1].astype(np.float32)
    got = tcc.load(str(tmp_path / "out")).run({"input_ids": ids})["logits"][0, -1]
    cos = float(ref @ got / np.linalg.norm(ref) / np.linalg.norm(got))
    assert cos > 0.999 and ref.argmax() == got.argmax(), (cos, ref.argmax(), got.argmax())
    # the generator's tokenizer (padded to the vocabulary) travels with the artifact: it chats
    from tokenizers import Tokenizer
    assert Tokenizer.from_file(str(tmp_path / "m" / "tokenizer.json")).get_vocab_size() == shape["vocab_size"]
    with tcc.load(str(tmp_path / "out")) as sess:
        reply = sess.chat("Hello there", max_new_tokens=4, temperature=0)
    assert reply.prompt_tokens and reply.stop_reason in ("length", "eos") and len(reply.tokens) <= 4, reply


def _f32_copy(src: str, dst: str) -> None:
    """The same ONNX model with every bf16 tensor, cast and I/O in f32 (the bf16 values exactly): what
    onnxruntime runs for a bf16 model, having no CPU bf16 MatMul."""
    m = onnx.load(src)

    def convert(t):
        if t.data_type == TensorProto.BFLOAT16:
            t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t).astype(np.float32), t.name))

    for t in m.graph.initializer:
        convert(t)
    for n in m.graph.node:
        for a in n.attribute:
            if a.name == "to" and a.i == TensorProto.BFLOAT16:
                a.i = TensorProto.FLOAT
            if a.type == onnx.AttributeProto.TENSOR:
                convert(a.t)
    for vi in [*m.graph.input, *m.graph.output]:
        if vi.type.tensor_type.elem_type == TensorProto.BFLOAT16:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
    del m.graph.value_info[:]
    onnx.save(m, dst)


@pytest.mark.parametrize("qm, tol", [("w8a8", 0.02), ("w4a8", 0.15)])
def test_bf16_export_quantizes_from_bf16(tmp_path, qm, tol):
    """A bf16 model (bf16 weights, input and output) under a weight-quantizing --qm: its MatMul weights are
    quantized from bf16 (about a byte or less per weight, not an f32 copy) and it runs at f32 activations.
    Reference: onnxruntime on the same model in f32 (the bf16 weights exactly; onnxruntime has no CPU bf16
    MatMul), matched within the scheme's rounding, as the fp16 export is."""
    import onnxruntime as ort

    import tcc

    d = tmp_path / "m"
    d.mkdir()
    _write_mlp(str(d / "model.onnx"), 2, BF16)
    m = compile_model_quiet(str(d / "model.onnx"), str(tmp_path / "out"), qm)
    assert [i["dtype"] for i in m["inputs"]] == ["f32"] and [o["dtype"] for o in m["outputs"]] == ["f32"]
    assert m["quantization"]["quantized_linears"] == 4 and m["weights"]["bytes"] < 4 * D * F * 1.1
    # the ratio compares with the model at fp32: 4 bytes per bf16 weight, int4 + scales well under 1/3 of it
    assert m["quantization"]["fp32_weight_bytes"] >= 4 * 4 * D * F and m["quantization"]["ratio_to_fp32"] < 0.35
    _f32_copy(str(d / "model.onnx"), str(tmp_path / "f32.onnx"))
    x = np.random.default_rng(0).standard_normal((1, D)).astype(np.float32)
    ref = ort.InferenceSession(str(tmp_path / "f32.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    y = tcc.load(str(tmp_path / "out")).run({"x": x})["y"]
    err = np.abs(y - ref).max() / np.abs(ref).max()
    assert err < tol, f"{qm}: max error {err:.3g} of the output's range"


def test_bf16_export_at_fp32_is_refused_in_one_line(tmp_path):
    """--qm fp32 would need an f32 copy of a bf16 model's weights (twice its size) and no backend computes
    in bf16: `tcc compile` refuses it in one line naming bf16 and the --qm that work, exit status non-zero."""
    d = tmp_path / "m"
    d.mkdir()
    _write_mlp(str(d / "model.onnx"), 2, BF16)
    r = subprocess.run([sys.executable, "-m", "tcc.cli", "compile", str(d / "model.onnx"), "--qm", "fp32", "-o",
                        str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) >= 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[-1].startswith("tcc: error: ") and "bf16" in lines[-1] and "w4a8" in lines[-1], lines
    assert not (tmp_path / "out").exists()


def test_bf16_llama_export(tmp_path):
    """tools/make_llama_onnx.py --dtype bf16 (torch's exporter at bf16: bf16 weights, activations, past and
    logits) compiles with attention fused and a KV cache at f32 activations, its weights quantized from
    bf16; its logits match onnxruntime's on the model converted to f32 (onnxruntime has no CPU bf16 MatMul)
    within int8 rounding (as the fp16 export's test: w4a8 is checked on the MLP above)."""
    import onnxruntime as ort

    import tcc

    shape = tiny_llama_compiled_at_w8a8(tmp_path, "bf16")
    _f32_copy(str(tmp_path / "m" / "model.onnx"), str(tmp_path / "f32.onnx"))
    sess = ort.InferenceSession(str(tmp_path / "f32.onnx"), providers=["CPUExecutionProvider"])
    ids = np.array([[5, 17, 99, 3, 250, 7]], np.int64)
    hd = shape["hidden_size"] // shape["num_attention_heads"]
    feeds = {"input_ids": ids, "attention_mask": np.ones(ids.shape, np.int64), "position_ids": np.arange(6)[None]}
    for i in sess.get_inputs():
        if i.name.startswith("past"):
            feeds[i.name] = np.zeros((1, shape["num_key_value_heads"], 0, hd), np.float32)
    ref = sess.run(["logits"], feeds)[0][0, -1]
    got = tcc.load(str(tmp_path / "out")).run({"input_ids": ids})["logits"][0, -1]
    cos = float(ref @ got / np.linalg.norm(ref) / np.linalg.norm(got))
    assert cos > 0.999 and ref.argmax() == got.argmax(), (cos, ref.argmax(), got.argmax())


_CALIB_CHILD = """
import sys, tracemalloc
import numpy as np
from tcc.driver import CompileOptions, optimize
np.savez(sys.argv[2], x=np.random.default_rng(0).standard_normal((2, 1, int(sys.argv[3]))).astype(np.float32))
tracemalloc.start()
optimize(sys.argv[1], CompileOptions(qm="w4a8", calib=sys.argv[2], calib_samples=2))
print(tracemalloc.get_traced_memory()[1])
"""


def test_calibrated_compile_memory_does_not_grow_with_layers(tmp_path):
    """AWQ calibration runs the fp16 model in the reference interpreter: each weight's f32 conversion must
    live only until its MatMul has read it (a 7B model's conversions together are 27 GB). Measured with
    tracemalloc (numpy's heap), so the mapped weights' page cache does not count. Before the interpreter
    ran constant-only nodes next to their readers and dropped dead values, 2 -> 20 layers grew by 139 MiB."""
    peaks = {}
    for layers in (SMALL, BIG):
        d = tmp_path / f"m{layers}"
        d.mkdir()
        _write_mlp(str(d / "model.onnx"), layers, np.float16)
        r = subprocess.run([sys.executable, "-c", _CALIB_CHILD, str(d / "model.onnx"), str(d / "calib.npz"), str(D)],
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        peaks[layers] = int(r.stdout.strip().splitlines()[-1])
    extra = (BIG - SMALL) * LAYER_BYTES
    grew = peaks[BIG] - peaks[SMALL]
    assert grew < extra // 8, (f"calibrated compile's heap peak grew by {grew / 2**20:.0f} MiB from {SMALL} to "
                               f"{BIG} layers ({extra / 2**20:.0f} MiB more fp32 weights): {peaks}")


_AWQ_CHILD = """
import json, sys
import numpy as np
import tcc.frontend.onnx_import as imp
from tcc.driver import CompileOptions, optimize
from tcc.ir.interpreter import run_graph
if sys.argv[3] == "eager":
    imp.WIDEN_EAGER = 1 << 40  # every half weight converted to f32 at import: the f32 model's AWQ
np.savez(sys.argv[2], input_ids=np.random.default_rng(0).integers(0, 384, (2, 1, 16)).astype(np.int64))
g, ctx, _ = optimize(sys.argv[1], CompileOptions(qm="w4a8", calib=sys.argv[2], calib_samples=2, max_context=64,
                                    awq_clip=True))
logits = next(iter(run_graph(g, {"input_ids": np.array([[5, 17, 99, 3]], np.int64)}).values()))
print(json.dumps({"awq": {k: v for k, v in ctx.stats["awq"].items() if not k.endswith("_s")},
                  "logits": logits.reshape(-1).tolist()}))
"""


def test_awq_rescales_the_half_weights_of_fp16_exports(tmp_path):
    """An fp16 export's weights over 64k elements stay f16 behind a Cast (frontend/onnx_import.py): AWQ
    must find and rescale those layers as it does f32 ones (it silently skipped them: a 7B --calib compile
    reported `awq` with 0 groups). Same model, its weights kept half vs converted to f32 at import: the same
    groups are rescaled with the same alphas (same error ratio), about as many weight groups are clipped (the
    clipped half weights are rounded to f16 again), and the programs agree to fp16 rounding of
    the rescaled weights."""
    pytest.importorskip("transformers")
    mk = make_llama_onnx()
    # gate/up/down 256x1280: past WIDEN_EAGER and past what fold-constants converts (1 MiB of f32)
    shape = dict(mk.SHAPES["tiny"], hidden_size=256, intermediate_size=1280, num_hidden_layers=2)
    mk.make(shape, str(tmp_path / "m"), "f16")
    got = {}
    for mode in ("half", "eager"):
        r = subprocess.run([sys.executable, "-c", _AWQ_CHILD, str(tmp_path / "m" / "model.onnx"),
                            str(tmp_path / "calib.npz"), mode], capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        got[mode] = json.loads(r.stdout.strip().splitlines()[-1])
    half, eager = got["half"], got["eager"]
    assert eager["awq"]["groups"] == 3 * shape["num_hidden_layers"] and eager["awq"]["scaled"] > 0, eager["awq"]
    assert half["awq"]["groups"] == eager["awq"]["groups"] and half["awq"]["scaled"] == eager["awq"]["scaled"]
    assert eager["awq"]["clipped"] > 0 and half["awq"]["clipped"] == pytest.approx(eager["awq"]["clipped"], rel=0.05)
    assert half["awq"]["error_ratio"] == pytest.approx(eager["awq"]["error_ratio"], rel=1e-3)
    a, b = np.array(half["logits"]), np.array(eager["logits"])
    cos = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert cos > 0.999, cos
