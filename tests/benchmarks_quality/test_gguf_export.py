"""benchmarks/gguf_export.py: ONNX LLaMA decoders written as GGUF for llama.cpp, read back with gguf's own
reader (no llama.cpp needed)."""
from __future__ import annotations

import json
import os
import shutil

import gguf  # in the test extra (pyproject.toml)
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tcc.errors import TccError

from .bench_modules import gguf_export

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
LLM = os.path.join(REPO, "tests", "models", "llm")
DEMO = os.path.join(REPO, "models", "demo")


def _read(path: str) -> tuple[dict, dict]:
    r = gguf.GGUFReader(path)
    tensors = {t.name: t for t in r.tensors}
    return r, tensors


def _array(t) -> np.ndarray:
    """A GGUF tensor as numpy in the writer's order (the reader reports GGML's reversed shape)."""
    return np.asarray(t.data).reshape([int(d) for d in reversed(t.shape)])


def _field(r, key: str):
    f = r.fields[key]
    if f.types and f.types[0] == gguf.GGUFValueType.ARRAY:
        return [f.parts[i].tobytes().decode() if f.types[-1] == gguf.GGUFValueType.STRING else f.parts[i][0]
                for i in f.data]
    v = f.parts[f.data[0]]
    return v.tobytes().decode() if f.types[0] == gguf.GGUFValueType.STRING else v[0]


def _onnx_projection(model: str, scope: str) -> np.ndarray:
    m = onnx.load(model)
    inits = {t.name: t for t in m.graph.initializer}
    node = next(n for n in m.graph.node if n.op_type == "MatMul" and n.name.endswith(scope + "/MatMul"))
    return numpy_helper.to_array(inits[node.input[1]]).T  # [out, in], as the GGUF holds it


def _onnx_init(model: str, suffix: str) -> np.ndarray:
    m = onnx.load(model)
    return numpy_helper.to_array(next(t for t in m.graph.initializer if t.name.endswith(suffix)))


@pytest.mark.parametrize("name,tied", [("llama_past_torchscript", False), ("llama_tied_past_torchscript", True)])
def test_weights_round_trip(tmp_path, name, tied):
    """Every tensor llama.cpp's `llama` architecture needs, under its name, with the ONNX values: projections
    transposed to [out, in], Q and K rows in GGML's RoPE order, output.weight only when untied."""
    model = os.path.join(LLM, name, "model.onnx")
    cfg = json.load(open(os.path.join(LLM, name, "config.json")))
    out = str(tmp_path / "m.gguf")
    info = gguf_export.export_gguf(model, out, tokenizer_path=None)
    r, t = _read(out)
    L, H, F, V = cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    heads, kv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    want = {"token_embd.weight": (V, H), "output_norm.weight": (H,)}
    if not tied:
        want["output.weight"] = (V, H)
    for i in range(L):
        want.update({f"blk.{i}.attn_norm.weight": (H,), f"blk.{i}.ffn_norm.weight": (H,),
                     f"blk.{i}.attn_q.weight": (heads * hd, H), f"blk.{i}.attn_k.weight": (kv * hd, H),
                     f"blk.{i}.attn_v.weight": (kv * hd, H), f"blk.{i}.attn_output.weight": (H, heads * hd),
                     f"blk.{i}.ffn_gate.weight": (F, H), f"blk.{i}.ffn_up.weight": (F, H),
                     f"blk.{i}.ffn_down.weight": (H, F)})
    assert {k: tuple(_array(v).shape) for k, v in t.items()} == want
    assert all(v.tensor_type == gguf.GGMLQuantizationType.F32 for v in t.values())
    assert info["tied_embeddings"] is tied and info["parameters"] == sum(int(np.prod(s)) for s in want.values())
    np.testing.assert_array_equal(_array(t["token_embd.weight"]), _onnx_init(model, "embed_tokens.weight"))
    np.testing.assert_array_equal(_array(t["blk.1.ffn_norm.weight"]),
                                  _onnx_init(model, "layers.1.post_attention_layernorm.weight"))
    for scope, stem in gguf_export.PROJECTIONS:
        w = _onnx_projection(model, f"layers.1/{scope}")
        if stem == "attn_q":
            w = gguf_export.permute_rope(w, heads)
        elif stem == "attn_k":
            w = gguf_export.permute_rope(w, kv)
        np.testing.assert_array_equal(_array(t[f"blk.1.{stem}.weight"]), w, err_msg=stem)
    # the tied fixture's lm_head reads a folded copy of the embedding: not written twice
    np.testing.assert_array_equal(_onnx_projection(model, "lm_head"),
                                  _array(t["token_embd.weight" if tied else "output.weight"]))
    assert _field(r, "general.architecture") == "llama"
    assert _field(r, "llama.block_count") == L and _field(r, "llama.attention.head_count_kv") == kv
    assert _field(r, "llama.rope.dimension_count") == hd
    assert _field(r, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(cfg["rms_norm_eps"])
    assert len(_field(r, "tokenizer.ggml.tokens")) == V  # the placeholder vocabulary has the model's size


def test_parameters_shared_through_identity_nodes(tmp_path):
    """Equal parameters (fresh norms are all ones) are one initializer that Identity nodes rename; each
    name reads it (llm_suite's random-weight exports look like this)."""
    d = _copy_fixture(tmp_path)
    m = onnx.load(str(d / "model.onnx"))
    inits = {t.name: t for t in m.graph.initializer}
    keep = next(n for n in inits if n.endswith("layers.0.input_layernorm.weight"))
    gone = next(n for n in inits if n.endswith("model.norm.weight"))
    m.graph.initializer.remove(inits[gone])
    m.graph.node.insert(0, onnx.helper.make_node("Identity", [keep], [gone], name="Identity_norm"))
    onnx.save(m, str(d / "model.onnx"))
    out = str(tmp_path / "m.gguf")
    gguf_export.export_gguf(str(d / "model.onnx"), out, tokenizer_path=None)
    _, t = _read(out)
    np.testing.assert_array_equal(_array(t["output_norm.weight"]), numpy_helper.to_array(inits[keep]))


def _rope_half(x: np.ndarray, pos: int, theta: float = 10000.0) -> np.ndarray:
    """Hugging Face's rotate-half RoPE on one head: pairs (i, i + d/2)."""
    d = x.shape[-1]
    ang = pos * theta ** (-np.arange(0, d, 2) / d)
    a, b = x[: d // 2], x[d // 2:]
    return np.concatenate([a * np.cos(ang) - b * np.sin(ang), b * np.cos(ang) + a * np.sin(ang)])


def _rope_pairs(x: np.ndarray, pos: int, theta: float = 10000.0) -> np.ndarray:
    """GGML's normal RoPE on one head: pairs (2i, 2i + 1)."""
    d = x.shape[-1]
    ang = pos * theta ** (-np.arange(0, d, 2) / d)
    a, b = x[0::2], x[1::2]
    out = np.empty_like(x)
    out[0::2], out[1::2] = a * np.cos(ang) - b * np.sin(ang), b * np.cos(ang) + a * np.sin(ang)
    return out


def test_rope_permutation_gives_the_same_attention_scores():
    """The Q/K row permutation is what makes GGML's adjacent-pair RoPE equal the checkpoint's rotate-half
    RoPE: the rotated heads are the same values reordered, so every q·k score is unchanged."""
    rng = np.random.default_rng(0)
    heads, d, hidden = 3, 8, 12
    wq = rng.standard_normal((heads * d, hidden))
    wk = rng.standard_normal((heads * d, hidden))
    x1, x2 = rng.standard_normal(hidden), rng.standard_normal(hidden)
    pq, pk = gguf_export.permute_rope(wq, heads), gguf_export.permute_rope(wk, heads)
    for h in range(heads):
        s = slice(h * d, (h + 1) * d)
        hf = _rope_half((wq @ x1)[s], 5) @ _rope_half((wk @ x2)[s], 2)
        gg = _rope_pairs((pq @ x1)[s], 5) @ _rope_pairs((pk @ x2)[s], 2)
        assert gg == pytest.approx(hf, rel=1e-12, abs=1e-12)
    # and the reordering is a permutation of rows (nothing mixed)
    assert sorted(map(tuple, pq)) == sorted(map(tuple, wq))


def test_demo_tokenizer_round_trip(tmp_path):
    """The demo's byte-level BPE written as a gpt2 vocabulary: a tokenizer rebuilt from the GGUF's tokens and
    merges alone gives the held-out text the ids tcc's tokenizer gives it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    out = str(tmp_path / "demo.gguf")
    gguf_export.export_gguf(os.path.join(DEMO, "model.onnx"), out)
    r, t = _read(out)
    assert "output.weight" not in t  # the demo ties its embeddings
    assert gguf_export.tensor_bytes(out) == 4 * 5_278_976  # models/demo/README.md: 5.28M parameters, in f32
    assert gguf_export.tensor_types(out) == "F32 ×43"  # 6 layers x 7 projections + the embedding
    tokens, merges = _field(r, "tokenizer.ggml.tokens"), _field(r, "tokenizer.ggml.merges")
    assert _field(r, "tokenizer.ggml.model") == "gpt2" and _field(r, "tokenizer.ggml.pre") == "gpt-2"
    assert not _field(r, "tokenizer.ggml.add_bos_token")  # tcc's tokenizer adds no BOS
    types = _field(r, "tokenizer.ggml.token_type")
    assert tokens[0] == "<|endoftext|>" and types[0] == gguf.TokenType.CONTROL and len(tokens) == 4096
    rebuilt = Tokenizer(models.BPE(vocab={tok: i for i, tok in enumerate(tokens)},
                                   merges=[tuple(m.split(" ")) for m in merges]))
    rebuilt.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    rebuilt.decoder = decoders.ByteLevel()
    text = open(os.path.join(DEMO, "heldout.txt"), encoding="utf-8").read()[:20000]
    ref = Tokenizer.from_file(os.path.join(DEMO, "tokenizer.json")).encode(text).ids
    assert len(ref) > 3000 and rebuilt.encode(text).ids == ref


def test_placeholder_vocabulary_without_tokenizer():
    v = gguf_export.read_vocab(None, 300, None, None)
    assert len(v["tokens"]) == len(set(v["tokens"])) == 300 and v["placeholder"]
    with pytest.raises(TccError, match="at least 260 tokens"):
        gguf_export.read_vocab(None, 100, None, None)


def _copy_fixture(tmp_path, name="llama_past_torchscript"):
    d = tmp_path / name
    shutil.copytree(os.path.join(LLM, name), d)
    return d


def test_bad_inputs_are_one_line_errors(tmp_path):
    out = str(tmp_path / "x.gguf")
    with pytest.raises(TccError, match="ONNX model not found"):
        gguf_export.export_gguf(str(tmp_path / "nope.onnx"), out, config_path=os.path.join(DEMO, "config.json"))
    with pytest.raises(TccError, match="config.json not found"):
        gguf_export.export_gguf(str(tmp_path / "nope.onnx"), out)
    d = _copy_fixture(tmp_path)
    # a SentencePiece-style tokenizer (the fixture's) has no gpt2 equivalent
    with pytest.raises(TccError, match="only byte-level BPE tokenizers convert"):
        gguf_export.export_gguf(str(d / "model.onnx"), out)
    cfg = json.load(open(d / "config.json"))
    json.dump({**cfg, "num_hidden_layers": 3}, open(d / "config.json", "w"))
    with pytest.raises(TccError, match=r"one initializer named \*layers.2.input_layernorm.weight, found 0"):
        gguf_export.export_gguf(str(d / "model.onnx"), out, tokenizer_path=None)
    json.dump({**cfg, "num_hidden_layers": 1}, open(d / "config.json", "w"))
    with pytest.raises(TccError, match="blk.1.attn_k.weight beyond config.json's 1 layers"):
        gguf_export.export_gguf(str(d / "model.onnx"), out, tokenizer_path=None)
    json.dump(cfg, open(d / "config.json", "w"))
    m = onnx.load(str(d / "model.onnx"))
    next(n for n in m.graph.node if n.name.endswith("layers.1/self_attn/q_proj/MatMul")).name = "renamed"
    onnx.save(m, str(d / "renamed.onnx"))
    with pytest.raises(TccError, match="no attn_q projection found for layer 1"):
        gguf_export.export_gguf(str(d / "renamed.onnx"), out, tokenizer_path=None)
    json.dump({**cfg, "intermediate_size": 65}, open(d / "config.json", "w"))
    with pytest.raises(TccError, match=r"ffn_gate.weight is \[64, 32\], config.json implies \[65, 32\]"):
        gguf_export.export_gguf(str(d / "model.onnx"), out, tokenizer_path=None)
    json.dump({**cfg, "model_type": "gpt2"}, open(d / "config.json", "w"))
    with pytest.raises(TccError, match="handles llama only"):
        gguf_export.export_gguf(str(d / "model.onnx"), out, tokenizer_path=None)
    (d / "model.onnx").write_bytes(b"not a model")
    json.dump(cfg, open(d / "config.json", "w"))
    with pytest.raises(TccError, match="not an ONNX model"):
        gguf_export.export_gguf(str(d / "model.onnx"), out, tokenizer_path=None)
    assert not os.path.exists(out)
    # the script's own front door: a one-line error and exit status 2
    assert gguf_export.main([str(tmp_path / "nope.onnx"), out]) == 2


def test_fp16_export_streams_as_f16(tmp_path):
    """keep_f16 (a 7B's F32 GGUF would be 27 GB): an fp16 export's matrices are written F16, with exactly the
    ONNX values (transposed, Q/K in RoPE order), the norms F32, file type MOSTLY_F16; without it the same values
    in F32. Tensors are read one at a time from the external data."""
    from tests.llama_export import make_llama_onnx

    mk = make_llama_onnx()
    d = tmp_path / "m"
    mk.make(mk.SHAPES["tiny"], str(d), "f16")
    model = str(d / "model.onnx")
    cfg = json.load(open(d / "config.json"))
    half, full = str(tmp_path / "h.gguf"), str(tmp_path / "f.gguf")
    gguf_export.export_gguf(model, half, keep_f16=True)
    gguf_export.export_gguf(model, full)
    rh, th = _read(half)
    _, tf = _read(full)
    assert set(th) == set(tf) and _field(rh, "general.file_type") == gguf_export.FILE_TYPE_MOSTLY_F16
    for k, v in th.items():
        want = gguf.GGMLQuantizationType.F16 if len(v.shape) == 2 else gguf.GGMLQuantizationType.F32
        assert v.tensor_type == want and tf[k].tensor_type == gguf.GGMLQuantizationType.F32, k
        np.testing.assert_array_equal(_array(v).astype(np.float32), _array(tf[k]), err_msg=k)
    m = onnx.load(model)
    node = next(n for n in m.graph.node if n.op_type == "MatMul" and n.name.endswith("layers.1/self_attn/k_proj/MatMul"))
    init = next(t for t in m.graph.initializer if t.name == node.input[1])  # (onnx.load read the external data)
    k_proj = gguf_export.permute_rope(numpy_helper.to_array(init).T, cfg["num_key_value_heads"])
    assert k_proj.dtype == np.float16
    np.testing.assert_array_equal(_array(th["blk.1.attn_k.weight"]), k_proj)
