"""An ONNX LLaMA decoder as an F32 GGUF file for llama.cpp (the benchmarks' peer; not part of tcc).

    from gguf_export import export_gguf
    info = export_gguf("models/demo/model.onnx", "/tmp/demo-f32.gguf")

Used by benchmarks/quality_suite.py (perplexity against llama.cpp's quantized types) and
benchmarks/llm_suite.py (llama-bench beside tcc and ONNX Runtime), so both compare llama.cpp on exactly
the weights tcc compiles. Needs the `gguf` package from PyPI (`pip install gguf`, in tcc's `bench` and
`test` extras).

What it reads: the decoders these benchmarks use are Hugging Face `LlamaForCausalLM` models exported
with torch's TorchScript exporter (the demo model, tools/make_llama_onnx.py, llm_suite's exports). That
exporter keeps the parameter names of the embedding and the norms, and stores each projection transposed
([in, out]) under an anonymous initializer read by a MatMul whose node name is the module's scope
(`/model/layers.3/self_attn/q_proj/MatMul`). A projection is found by that scope, which is a property of
the exporter, not of the graph; every layer must have all seven with the shapes config.json implies, or
the export stops with a one-line error. The proof that the mapping is right is end to end: llama.cpp's
F32 perplexity of the converted demo model equals tcc's fp32 perplexity (benchmarks/quality_suite.py).

Written as llama.cpp's own converter (convert_hf_to_gguf.py) writes LLaMA: weights in [out, in] order,
the rows of Q and K permuted from Hugging Face's rotate-half layout to GGML's adjacent pairs (the `llama`
architecture uses GGML's "normal" RoPE), no output.weight when the embeddings are tied. The tokenizer:
a byte-level BPE tokenizer.json (the demo's and make_llama_onnx's) becomes a `gpt2` vocabulary with the
`gpt-2` pre-tokenizer and the same merges, so llama.cpp tokenizes text to the same ids as tcc (the quality
suite checks it on the held-out text). A model without tokenizer.json (llm_suite's random-weight models)
gets a placeholder vocabulary of the right size: llama-bench draws random ids and never tokenizes.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np

from tcc.errors import TccError

# The seven projections of a layer: (scope under /layers.N/, GGUF tensor stem)
PROJECTIONS = (("self_attn/q_proj", "attn_q"), ("self_attn/k_proj", "attn_k"), ("self_attn/v_proj", "attn_v"),
               ("self_attn/o_proj", "attn_output"), ("mlp/gate_proj", "ffn_gate"), ("mlp/up_proj", "ffn_up"),
               ("mlp/down_proj", "ffn_down"))
_SCOPE = re.compile(r"/layers\.(\d+)/(self_attn/[qkvo]_proj|mlp/(?:gate|up|down)_proj)/MatMul$")
_LM_HEAD = re.compile(r"(^|/)lm_head/MatMul$")
FILE_TYPE_ALL_F32 = 0  # llama_ftype LLAMA_FTYPE_ALL_F32
FILE_TYPE_MOSTLY_F16 = 1  # LLAMA_FTYPE_MOSTLY_F16


def _gguf():
    try:
        import gguf
    except ImportError:
        raise TccError("the GGUF export needs the gguf package: pip install gguf (or pip install -e '.[bench]')") \
            from None
    return gguf


def _read_json(path: str, what: str) -> dict:
    if not os.path.isfile(path):
        raise TccError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise TccError(f"{path}: cannot read {what}: {e}") from None


def permute_rope(w: np.ndarray, heads: int) -> np.ndarray:
    """Rows of a Q or K projection [heads * head_dim, in] from rotate-half order (pairs (i, i + d/2)) to
    adjacent pairs (2i, 2i + 1), as convert_hf_to_gguf.py's LlamaModel.permute."""
    out, rest = w.shape[0], w.shape[1:]
    return w.reshape(heads, 2, out // heads // 2, *rest).swapaxes(1, 2).reshape(w.shape)


class Lazy:
    """A tensor of the ONNX file read only when written (a 7B's weights never all in memory): its shape in
    GGUF's numpy order, its dtype (f16 stays f16, everything else f32), and the steps that make it."""

    def __init__(self, read, shape: tuple, dtype, steps: tuple = ()):
        self.read, self.shape, self.dtype, self.steps = read, tuple(shape), np.dtype(dtype), steps

    def then(self, step, shape: tuple | None = None) -> "Lazy":
        return Lazy(self.read, self.shape if shape is None else shape, self.dtype, (*self.steps, step))

    def load(self) -> np.ndarray:
        a = self.read()
        for step in self.steps:
            a = step(a)
        return np.ascontiguousarray(a, self.dtype)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize


def read_weights(model_path: str, cfg: dict) -> dict[str, np.ndarray]:
    """{GGUF tensor name: float32 array in GGUF's numpy order} from the ONNX file."""
    return {k: v.load().astype(np.float32) for k, v in read_lazy(model_path, cfg).items()}


def read_lazy(model_path: str, cfg: dict) -> dict[str, Lazy]:
    """{GGUF tensor name: Lazy} from the ONNX file (external data read one tensor at a time, when written)."""
    import onnx
    from onnx import numpy_helper

    if not os.path.isfile(model_path):
        raise TccError(f"ONNX model not found: {model_path}")
    try:
        m = onnx.load(model_path, load_external_data=False)
    except Exception as e:  # protobuf's errors have no common base
        raise TccError(f"{model_path}: not an ONNX model ({type(e).__name__})") from None
    base = os.path.dirname(os.path.abspath(model_path))
    inits = {t.name: t for t in m.graph.initializer}
    # torch's exporter keeps one copy of equal parameters (freshly initialized norms are all ones) and names
    # the others with Identity nodes: those names read the copy
    alias = {n.output[0]: n.input[0] for n in m.graph.node
             if n.op_type == "Identity" and len(n.input) == 1 and n.input[0] in inits}
    names = set(inits) | set(alias)

    def read(t) -> np.ndarray:
        """t's values; external data read from the file beside the model into a copy of t (reading it into t
        itself would keep every tensor in the model proto: 13.7 GB of RSS for a 7B)."""
        if t.data_location == onnx.TensorProto.EXTERNAL:
            t2 = onnx.TensorProto()
            t2.CopyFrom(t)
            t = t2
        return numpy_helper.to_array(t, base_dir=base)

    def array(name: str) -> Lazy:
        t = inits[alias.get(name, name)]
        dtype = np.float16 if t.data_type == onnx.TensorProto.FLOAT16 else np.float32
        return Lazy(lambda t=t: read(t), tuple(t.dims), dtype)

    L, H = cfg["num_hidden_layers"], cfg["hidden_size"]
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    hd = cfg.get("head_dim") or H // heads
    ffn, vocab = cfg["intermediate_size"], cfg["vocab_size"]
    want = {"attn_q": (heads * hd, H), "attn_k": (kv * hd, H), "attn_v": (kv * hd, H), "attn_output": (H, heads * hd),
            "ffn_gate": (ffn, H), "ffn_up": (ffn, H), "ffn_down": (H, ffn)}
    stems = dict(PROJECTIONS)
    out: dict[str, np.ndarray] = {}

    def by_suffix(suffix: str) -> str:
        hits = [n for n in names if n == suffix or n.endswith("." + suffix)]
        if len(hits) != 1:
            raise TccError(f"{model_path}: expected one initializer named *{suffix}, found {len(hits)} "
                           f"(is this a LLaMA decoder exported from transformers with torch's exporter?)")
        return hits[0]

    out["token_embd.weight"] = array(by_suffix("embed_tokens.weight"))
    out["output_norm.weight"] = array(by_suffix("model.norm.weight"))
    for i in range(L):
        out[f"blk.{i}.attn_norm.weight"] = array(by_suffix(f"layers.{i}.input_layernorm.weight"))
        out[f"blk.{i}.ffn_norm.weight"] = array(by_suffix(f"layers.{i}.post_attention_layernorm.weight"))
    for n in m.graph.node:
        if n.op_type != "MatMul" or len(n.input) != 2 or n.input[1] not in names:
            continue
        s = _SCOPE.search(n.name)
        if s:
            name = f"blk.{int(s.group(1))}.{stems[s.group(2)]}.weight"
        elif _LM_HEAD.search(n.name):
            name = "output.weight"
        else:
            continue
        if name in out:
            raise TccError(f"{model_path}: two MatMuls map to {name}")
        b = array(n.input[1])
        out[name] = b.then(np.transpose, b.shape[::-1])  # ONNX MatMul B is [in, out]
    for i in range(L):
        for stem, shape in want.items():
            name = f"blk.{i}.{stem}.weight"
            if name not in out:
                raise TccError(f"{model_path}: no {stem} projection found for layer {i} (a MatMul named "
                               f"/layers.{i}/{next(k for k, v in PROJECTIONS if v == stem)}/MatMul)")
            if out[name].shape != shape:
                raise TccError(f"{model_path}: {name} is {list(out[name].shape)}, config.json implies {list(shape)}")
    extra = sorted(k for k in out if k.startswith("blk.") and int(k.split(".")[1]) >= L)
    if extra:
        raise TccError(f"{model_path}: {extra[0]} beyond config.json's {L} layers")
    if out["token_embd.weight"].shape != (vocab, H):
        raise TccError(f"{model_path}: embedding is {list(out['token_embd.weight'].shape)}, config.json says "
                       f"vocab {vocab} x hidden {H}")
    if cfg.get("tie_word_embeddings") and "output.weight" in out and np.array_equal(out["output.weight"].load(),
                                                                                    out["token_embd.weight"].load()):
        del out["output.weight"]  # a folded transpose of the tied table: llama.cpp reuses token_embd itself
    if "output.weight" not in out and not cfg.get("tie_word_embeddings", False):
        raise TccError(f"{model_path}: no lm_head MatMul and config.json does not tie the embeddings")
    if "output.weight" in out and out["output.weight"].shape != (vocab, H):
        raise TccError(f"{model_path}: lm_head is {list(out['output.weight'].shape)}, expected {[vocab, H]}")
    for i in range(L):
        out[f"blk.{i}.attn_q.weight"] = out[f"blk.{i}.attn_q.weight"].then(lambda w: permute_rope(w, heads))
        out[f"blk.{i}.attn_k.weight"] = out[f"blk.{i}.attn_k.weight"].then(lambda w: permute_rope(w, kv))
    return out


# ------------------------------------------------------------------------------------------ tokenizer
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-ins for the 256 bytes (what byte-level BPE vocabularies are spelled in)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def read_vocab(tokenizer_path: str | None, vocab_size: int, bos: int | None, eos: int | None) -> dict:
    """tokens, token types, merges and special ids for the GGUF vocabulary."""
    gguf = _gguf()
    T = gguf.TokenType
    if tokenizer_path is None:  # placeholder: the 256 byte tokens, one merge, then unused fillers
        if vocab_size < 260:
            raise TccError(f"a placeholder vocabulary needs at least 260 tokens, the model has {vocab_size}")
        b2u = _bytes_to_unicode()
        tokens = ["<|endoftext|>"] + [b2u[b] for b in range(256)] + ["ĠĠ"]
        types = [T.CONTROL] + [T.NORMAL] * 257
        tokens += [f"<|unused_{i}|>" for i in range(vocab_size - len(tokens))]
        types += [T.UNUSED] * (vocab_size - len(types))
        return {"tokens": tokens, "types": types, "merges": ["Ġ Ġ"], "bos": 0, "eos": 0, "placeholder": True}
    tj = _read_json(tokenizer_path, "tokenizer.json")
    model = tj.get("model") or {}
    pre = tj.get("pre_tokenizer") or {}
    pres = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    if model.get("type") != "BPE" or not any(p.get("type") == "ByteLevel" for p in pres) or model.get("byte_fallback"):
        raise TccError(f"{tokenizer_path}: only byte-level BPE tokenizers convert (GPT-2 style); this one is "
                       f"{model.get('type')} with pre-tokenizer {[p.get('type') for p in pres]}")
    if any(p.get("type") == "ByteLevel" and p.get("add_prefix_space") for p in pres) or tj.get("normalizer"):
        raise TccError(f"{tokenizer_path}: a prefix space or a normalizer has no llama.cpp gpt-2 equivalent")
    by_id: dict[int, tuple[str, int]] = {i: (t, T.NORMAL) for t, i in model["vocab"].items()}
    for a in tj.get("added_tokens") or []:
        by_id[a["id"]] = (a["content"], T.CONTROL if a.get("special") else T.USER_DEFINED)
    if by_id and max(by_id) >= vocab_size:
        raise TccError(f"{tokenizer_path}: token id {max(by_id)} is outside the model's {vocab_size} tokens")
    tokens, types = [], []
    for i in range(vocab_size):  # ids the tokenizer does not use: unused fillers, as convert_hf_to_gguf does
        t, ty = by_id.get(i, (f"[PAD{i}]", T.UNUSED))
        tokens.append(t)
        types.append(ty)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    return {"tokens": tokens, "types": types, "merges": merges, "bos": bos, "eos": eos, "placeholder": False}


# ------------------------------------------------------------------------------------------------ write
def read_config(path: str) -> dict:
    """config.json of a LLaMA export, with the fields the export needs checked."""
    cfg = _read_json(path, "config.json")
    if cfg.get("model_type", "llama") != "llama":
        raise TccError(f"{path}: model_type {cfg.get('model_type')!r}; the GGUF export handles llama only")
    for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
        if not isinstance(cfg.get(k), int):
            raise TccError(f"{path} has no integer {k}")
    return cfg


def export_gguf(model_path: str, out_path: str, config_path: str | None = None,
                tokenizer_path: str | None = "auto", name: str | None = None, keep_f16: bool = False) -> dict:
    """Write `model_path` (ONNX) as an F32 GGUF at out_path (keep_f16: an fp16 export's matrices stay F16,
    half the file: a 7B's F32 GGUF is 27 GB). config.json (and tokenizer.json, when tokenizer_path is "auto")
    are read from the model's folder. Tensors are read and written one at a time. Returns a summary."""
    gguf = _gguf()
    d = os.path.dirname(os.path.abspath(model_path))
    cfg = read_config(config_path or os.path.join(d, "config.json"))
    if tokenizer_path == "auto":
        tokenizer_path = os.path.join(d, "tokenizer.json")
        tokenizer_path = tokenizer_path if os.path.isfile(tokenizer_path) else None
    weights = read_lazy(model_path, cfg)
    if not keep_f16:
        weights = {k: Lazy(v.load, v.shape, np.float32) for k, v in weights.items()}
    vocab = read_vocab(tokenizer_path, cfg["vocab_size"], cfg.get("bos_token_id"), cfg.get("eos_token_id"))
    heads = cfg["num_attention_heads"]
    hd = cfg.get("head_dim") or cfg["hidden_size"] // heads
    rope = cfg.get("rope_parameters") or {}
    theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    if (rope.get("rope_type") or "default") != "default" or cfg.get("rope_scaling"):
        raise TccError("config.json: RoPE scaling is not handled by the GGUF export")
    tmp = f"{out_path}.tmp-{os.getpid()}"
    w = gguf.GGUFWriter(tmp, "llama")
    w.add_name(name or os.path.basename(d))
    w.add_context_length(cfg.get("max_position_embeddings", 2048))
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(cfg.get("num_key_value_heads", heads))
    w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-6))
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(float(theta))
    w.add_vocab_size(cfg["vocab_size"])
    f16 = any(v.dtype == np.float16 for v in weights.values())
    w.add_file_type(FILE_TYPE_MOSTLY_F16 if f16 else FILE_TYPE_ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(vocab["tokens"])
    w.add_token_types(vocab["types"])
    w.add_token_merges(vocab["merges"])
    if vocab["bos"] is not None:
        w.add_bos_token_id(int(vocab["bos"]))
    if vocab["eos"] is not None:
        w.add_eos_token_id(int(vocab["eos"]))
    w.add_add_bos_token(False)  # tcc's tokenizer adds no BOS (post-processor ByteLevel); neither may llama.cpp
    for k, a in weights.items():  # norms (1-D) stay F32 whatever the matrices are, as llama.cpp's converter
        if len(a.shape) == 1:
            weights[k] = a = Lazy(a.load, a.shape, np.float32)
        w.add_tensor_info(k, a.shape, a.dtype, a.nbytes)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for a in weights.values():
            w.write_tensor_data(a.load())
        w.close()
        os.replace(tmp, out_path)
    except OSError as e:
        raise TccError(f"cannot write {out_path}: {e.strerror}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return {"path": out_path, "tensors": len(weights), "parameters": int(sum(np.prod(a.shape) for a in weights.values())),
            "tied_embeddings": "output.weight" not in weights, "tokenizer": tokenizer_path,
            "placeholder_vocab": vocab["placeholder"], "bytes": os.path.getsize(out_path)}


def tensor_bytes(gguf_path: str) -> int:
    """Bytes of a GGUF file's tensor data (what the weights cost; the vocabulary and metadata left out)."""
    gguf = _gguf()
    return int(sum(t.n_bytes for t in gguf.GGUFReader(gguf_path).tensors))


def tensor_types(gguf_path: str) -> str:
    """Which GGML type each weight got, summarized: `Q4_K ×30, Q6_K ×13 (attn_v, ffn_down, token_embd)`
    (norms, always F32, left out; the tensors of a type listed when it is not the most common one)."""
    gguf = _gguf()
    by: dict[str, list] = {}
    for t in gguf.GGUFReader(gguf_path).tensors:
        if len(t.shape) < 2:
            continue
        stem = t.name.split(".")[-2] if t.name.startswith("blk.") else t.name.split(".")[0]
        by.setdefault(gguf.GGMLQuantizationType(int(t.tensor_type)).name, []).append(stem)
    order = sorted(by, key=lambda k: -len(by[k]))
    return ", ".join(f"{k} ×{len(by[k])}" + (f" ({', '.join(sorted(set(by[k])))})" if i else "")
                     for i, k in enumerate(order))


def main(argv=None) -> int:
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="gguf_export.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="ONNX LLaMA decoder (config.json, and tokenizer.json if any, beside it)")
    ap.add_argument("out", help="the GGUF file to write")
    ap.add_argument("--f16", action="store_true", help="an fp16 export's matrices stay F16 (half the file)")
    args = ap.parse_args(argv)
    try:
        info = export_gguf(args.model, args.out, keep_f16=args.f16)
    except TccError as e:
        print(f"gguf_export: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {info['path']}: {info['tensors']} tensors, {info['parameters'] / 1e6:.2f}M parameters, "
          f"{info['bytes'] / 1e6:.1f} MB" + (", placeholder vocabulary" if info["placeholder_vocab"] else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
