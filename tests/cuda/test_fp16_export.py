"""An fp16 ONNX export (the usual form of a 7B checkpoint) on the cuda target: imported at f32 activations like
a quantized CPU compile, so attention fusion and the KV cache match it; the float16 pass then drops the widening
Casts of its f16 weights (no f16 -> f16 copies, no weight read twice) and makes the MatMuls on them Linears.
Before, `--qm fp16` compiled the f16 graph as exported: no KV cache ("past inputs not read by any Attention
node") and a refusal for its rotary Cast ("no cast kernel for dst=f16, src=f16")."""
from __future__ import annotations

import numpy as np
import pytest

from tcc.driver import CompileOptions, compile_model, optimize
from tcc.ir.interpreter import ProgramState, run_graph
from tcc.runtime.session import load
from tests.llama_export import make_llama_onnx

PROMPT = [5, 17, 99, 3, 250, 7]
NEW = 6


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    pytest.importorskip("transformers")
    mk = make_llama_onnx()
    # attention weights 256x256 are converted at import; gate/up/down 256x1280 stay f16 behind Casts
    shape = dict(mk.SHAPES["tiny"], hidden_size=256, intermediate_size=1280, num_hidden_layers=2)
    d = tmp_path_factory.mktemp("f16export")
    mk.make(shape, str(d), "f16")
    return str(d / "model.onnx"), shape


def _options(qm: str) -> CompileOptions:
    return CompileOptions(target="cuda", qm=qm, max_context=64, group_size=32 if qm == "w4a16" else None,
                          round_to_nearest=True)


@pytest.mark.parametrize("qm", ["fp16", "w4a16"])
def test_fp16_export_gets_a_kv_cache_and_no_f16_copies(export, qm):
    model, shape = export
    graph, _, _ = optimize(model, _options(qm))
    assert graph.meta["llm"]["kv_cache"] and graph.ops().get("KVAttention") == shape["num_hidden_layers"]
    casts = [n for n in graph.nodes if n.op == "Cast"]
    assert all(n.inputs[0].dtype != n.outputs[0].dtype for n in casts), [str(n.inputs[0].type) for n in casts]
    assert "MatMul" not in graph.ops()  # the weights behind Casts became Linears (QLinear at w4a16)


def test_fp16_export_generates_the_reference_tokens_under_the_emulator(export, tmp_path):
    """Greedy tokens of the compiled program (the SIMT emulator) equal the reference interpreter's on the
    same IR, and its first logits are within fp16 error of ONNX Runtime's on the fp16 model itself."""
    import onnxruntime as ort

    model, shape = export
    out = str(tmp_path / "out")
    compile_model(model, out, _options("fp16"))
    graph, _, _ = optimize(model, _options("fp16"))
    llm = graph.meta["llm"]
    state = ProgramState(graph)
    state.logits_rows = 1
    new, want = list(PROMPT), []
    for _ in range(NEW):
        row = run_graph(graph, {llm["input_ids"]: np.array([new], np.int64)}, state=state)[llm["logits"]][0, -1]
        want.append(int(np.argmax(row)))
        new = [want[-1]]
    got = load(out, emulate=True).generate(PROMPT, max_new_tokens=NEW, temperature=0.0, repetition_penalty=1.0,
                                           eos_ids=(), keep_logits=True)
    assert got.tokens == want

    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    ids = np.array([PROMPT], np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones(ids.shape, np.int64),
             "position_ids": np.arange(len(PROMPT))[None]}
    hd = shape["hidden_size"] // shape["num_attention_heads"]
    for i in sess.get_inputs():
        if i.name.startswith("past"):
            feeds[i.name] = np.zeros((1, shape["num_key_value_heads"], 0, hd), np.float16)
    ref = sess.run(["logits"], feeds)[0][0, -1].astype(np.float32)
    # both compute in fp16 (different op orders, fp32 accumulation here): logits of order 1 agree to a few
    # fp16 ulps (2^-10 at 1) accumulated over 2 layers and the 384-way head
    err = float(np.abs(np.asarray(got.step_logits[0]) - ref).max())
    assert err < 2e-2 and int(np.argmax(ref)) == got.tokens[0], (err, int(np.argmax(ref)), got.tokens[0])
