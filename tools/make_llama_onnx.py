#!/usr/bin/env python
"""Write a random-weight LLaMA decoder with past of any size (7B-class included) as ONNX with external data,
in the graph form torch's exporter produces, without ever holding the model in memory.

    python tools/make_llama_onnx.py --shape llama2-7b --out /work/big/llama2-7b       # MHA, 32 layers, 13.5 GB
    python tools/make_llama_onnx.py --shape llama3-8b-gqa --out /work/big/gqa          # 8 KV heads, 128k vocab
    python tools/make_llama_onnx.py --shape tiny --layers 4 --dtype f32 --check --out /tmp/t
    python tools/make_llama_onnx.py --shape llama2-7b --dtype bf16 --out /work/big/llama2-7b-bf16  # bf16 weights

How: the model of the requested width is built with transformers' LlamaForCausalLM at 2 layers and a small
vocabulary, exported exactly as benchmarks/llm_suite.py exports its models (TorchScript exporter, opset 17,
optimum's flat signature `_flat_past_module`, do_constant_folding), then the ONNX graph is grown: layer 1's
nodes are cloned for layers 2..L-1 (names, past/present I/O and the residual stream renamed), the embedding
and lm_head get the full vocabulary, and every initializer is written to model.onnx.data one tensor at a
time (layers 0 and 1 from the export, the rest random: normal(0, 0.02) like transformers' init, norms 1).
Peak memory is that of the 2-layer export (about 2 GB at 7B width), whatever the layer count. A byte-level
BPE tokenizer.json (trained on the demo model's text, padded to the vocabulary) is written beside it, so the
compiled artifact chats (random weights: the replies are noise, the point is the pipeline and its speed).

--check (small shapes): the same growth is applied to a 2-layer export whose weights are those of a torch
model of the full layer count, and onnxruntime's outputs on the grown graph must equal torch's (max |diff|
<= 1e-4 at f32): the grown graph is the graph the exporter would have written. Not at bf16: onnxruntime has
no CPU bf16 MatMul (the bf16 graph is the f16 one with bf16 types: check that one).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("llm_suite", os.path.join(HERE, "..", "benchmarks", "llm_suite.py"))
SUITE = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(SUITE)

SHAPES = {
    "llama2-7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                      intermediate_size=11008, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5),
    # Mistral-7B / Llama-3-8B: grouped-query attention, 8 KV heads
    "llama3-8b-gqa": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                          intermediate_size=14336, vocab_size=128256, max_position_embeddings=8192,
                          rms_norm_eps=1e-5),
    "tinyllama": SUITE.CONFIGS["tinyllama"],
    "tiny": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=160, vocab_size=384, max_position_embeddings=256, rms_norm_eps=1e-5),
}
DTYPES = ("f16", "bf16", "f32")
POOL, CHUNK = 1 << 24, 1 << 20  # random weights: a pool of normals, copied in runs of CHUNK from random starts
TEMPLATE_LAYERS = 2
TEMPLATE_VOCAB = 256
DATA = "model.onnx.data"


def np_dtype(dtype: str) -> np.dtype:
    if dtype == "bf16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(np.float16 if dtype == "f16" else np.float32)


def torch_dtype(dtype: str):
    import torch

    return {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}[dtype]


def export_template(cfg: dict, dtype: str, state: dict | None, tmp: str) -> tuple[onnx.ModelProto, dict]:
    """The 2-layer, small-vocabulary export (external data loaded) and {initializer: torch parameter name}.
    `state`: parameters to load (the --check model's first layers), else random."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    small = {**cfg, "num_hidden_layers": TEMPLATE_LAYERS, "tie_word_embeddings": False}
    if state is None:
        small["vocab_size"] = min(cfg["vocab_size"], TEMPLATE_VOCAB)
    torch.manual_seed(0)
    config = LlamaConfig(**small, attn_implementation="eager", use_cache=True, rope_theta=10000.0)
    model = LlamaForCausalLM(config).eval()
    if state is not None:
        model.load_state_dict({k: v for k, v in state.items() if k in model.state_dict()})
    # each parameter made unique (a value that occurs once), so initializers can be matched to parameters
    # (bf16 holds the integers up to 256 exactly, f16 up to 2048)
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.view(-1)[0] = (100.0 if dtype == "bf16" else 1000.0) + i
    model = model.to(torch_dtype(dtype))
    flat = SUITE._flat_past_module(model)
    ins = ["input_ids", "attention_mask", "position_ids"] + [f"past_key_values.{i}.{n}" for i in range(TEMPLATE_LAYERS)
                                                             for n in ("key", "value")]
    outs = ["logits"] + [f"present.{i}.{n}" for i in range(TEMPLATE_LAYERS) for n in ("key", "value")]
    dyn = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "past_seq+seq"},
           "position_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}}
    dyn.update({n: {0: "batch", 2: "past_seq"} for n in ins[3:]})
    dyn.update({n: {0: "batch", 2: "past_seq+seq"} for n in outs[1:]})
    ex = SUITE._feeds(small, 2, 3, 4, seed=1)
    tdt = torch_dtype(dtype)
    args = tuple(torch.from_numpy(ex[n]).to(tdt) if n.startswith("past") else torch.from_numpy(ex[n]) for n in ins)
    raw = os.path.join(tmp, "template.onnx")
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(flat, args, raw, dynamo=False, opset_version=SUITE.OPSET, input_names=ins,
                          output_names=outs, dynamic_axes=dyn, do_constant_folding=True)
    m = onnx.load(raw)
    params = {name: p.detach().float().numpy() for name, p in model.named_parameters()}
    return m, _match_parameters(m, params)


def _match_parameters(m: onnx.ModelProto, params: dict) -> dict:
    """{initializer name: parameter name}: the exporter keeps a parameter's name or stores it transposed
    under an anonymous one; each parameter holds one marker value (1000 + i) at its first element."""
    marker = {float(p.reshape(-1)[0]): name for name, p in params.items()}
    out = {}
    for t in m.graph.initializer:
        if len(t.dims) == 0 or np.prod(t.dims) < 2:
            continue
        a = numpy_helper.to_array(t).astype(np.float32)
        if t.name in params:
            out[t.name] = t.name
        elif a.ndim == 2 and float(a[0, 0]) in marker and params[marker[float(a[0, 0])]].shape == a.T.shape:
            out[t.name] = marker[float(a[0, 0])]
    return out


def grow(m: onnx.ModelProto, names: dict, layers: int, vocab: int) -> tuple[onnx.ModelProto, dict]:
    """The template grown to `layers` layers and `vocab` tokens (graph only; initializers keep their template
    data or none). Returns (model, {new initializer: (template initializer, layer)})."""
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    l1 = [n for n in g.node if "/layers.1/" in n.name]
    l1_out = {o for n in l1 for o in n.output}
    users: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    # the residual stream: what layer 1 hands to the nodes after it (the final norm)
    stream = [o for o in l1_out if any("/layers.1/" not in u.name for u in users.get(o, []))
              and not o.startswith("present.")]
    if len(stream) != 1:
        raise SystemExit(f"cannot find layer 1's residual output (candidates {stream})")
    stream = stream[0]
    prev_stream = stream.replace("/layers.1/", "/layers.0/")
    own = {i for n in l1 for i in n.input if i in inits and all("/layers.1/" in u.name for u in users[i])}
    origin: dict[str, tuple[str, int]] = {}

    def rename(name: str, k: int) -> str:
        if name in own:
            new = name.replace("layers.1.", f"layers.{k}.") if "layers.1." in name else f"{name}.layer{k}"
            origin[new] = (name, k)
            return new
        if name == prev_stream:
            return stream.replace("/layers.1/", f"/layers.{k - 1}/")
        if name in l1_out or name.startswith(("past_key_values.1.", "present.1.")):
            return (name.replace("/layers.1/", f"/layers.{k}/").replace("past_key_values.1.", f"past_key_values.{k}.")
                    .replace("present.1.", f"present.{k}."))
        return name  # shared: the mask, the rotary tables of layer 0, shape constants

    last = max(i for i, n in enumerate(g.node) if "/layers.1/" in n.name)
    clones = []
    for k in range(2, layers):
        for n in l1:
            c = onnx.NodeProto()
            c.CopyFrom(n)
            c.name = n.name.replace("/layers.1/", f"/layers.{k}/")
            c.input[:] = [rename(i, k) if i else i for i in n.input]
            c.output[:] = [rename(o, k) for o in n.output]
            clones.append(c)
    final = f"/model/layers.{layers - 1}/" + stream.split("/layers.1/")[1]
    tail = list(g.node[last + 1:])
    for n in tail:
        n.input[:] = [final if i == stream else i for i in n.input]
    nodes = list(g.node[:last + 1]) + clones + tail
    del g.node[:]
    g.node.extend(nodes)
    for n, (name, k) in origin.items():
        g.initializer.append(TensorProto(name=n, data_type=inits[name].data_type, dims=inits[name].dims))
    # I/O: past/present of every layer, in the exporter's order
    base_in = [vi for vi in g.input if not vi.name.startswith("past_key_values.")]
    past = {vi.name: vi for vi in g.input if vi.name.startswith("past_key_values.")}
    pres = {vi.name: vi for vi in g.output if vi.name.startswith("present.")}
    logits = [vi for vi in g.output if vi.name == "logits"]

    def per_layer(d: dict, prefix: str) -> list:
        out = []
        for k in range(layers):
            for kind in ("key", "value"):
                src = d[f"{prefix}{min(k, 1)}.{kind}"]
                vi = onnx.ValueInfoProto()
                vi.CopyFrom(src)
                vi.name = f"{prefix}{k}.{kind}"
                out.append(vi)
        return out

    ins, outs = base_in + per_layer(past, "past_key_values."), logits + per_layer(pres, "present.")
    del g.input[:], g.output[:], g.value_info[:]
    g.input.extend(ins)
    g.output.extend(outs)
    # the full vocabulary: the embedding table [V, H], lm_head's weight [H, V] and the logits' last dim
    for t in g.initializer:
        if names.get(t.name) == "model.embed_tokens.weight":
            t.dims[0] = vocab
        elif names.get(t.name) == "lm_head.weight":
            t.dims[1] = vocab
    dims = g.output[0].type.tensor_type.shape.dim
    if dims and dims[-1].HasField("dim_value"):
        dims[-1].dim_value = vocab
    return m, origin


def write(m: onnx.ModelProto, out_dir: str, origin: dict, data_for) -> int:
    """Each initializer's data (`data_for(tensor, template data or None)`) appended to model.onnx.data, one
    tensor at a time; the model proto keeps only the references. Returns the bytes written."""
    os.makedirs(out_dir, exist_ok=True)
    offset = 0
    sources = {src for src, _ in origin.values()}
    small = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer
             if t.name in sources and np.prod(t.dims) <= 4096}  # the clones' constants, before they are cleared
    with open(os.path.join(out_dir, DATA), "wb") as f:
        for t in m.graph.initializer:
            src, k = origin.get(t.name, (t.name, None))
            have = small.get(src)
            if have is None and k is None and (t.HasField("raw_data") or t.float_data or t.int64_data or t.int32_data):
                try:
                    have = numpy_helper.to_array(t)
                except ValueError:  # the embedding and lm_head, grown to the full vocabulary: new data
                    have = None
            arr = np.ascontiguousarray(data_for(t, have, src, k))
            if list(arr.shape) != list(t.dims):
                raise SystemExit(f"{t.name}: data {arr.shape} for dims {list(t.dims)}")
            pad = (-offset) % 64
            f.write(b"\0" * pad)
            offset += pad
            f.write(arr.tobytes())
            for fld in ("raw_data", "float_data", "int64_data", "int32_data", "double_data"):
                t.ClearField(fld)
            t.data_location = TensorProto.EXTERNAL
            del t.external_data[:]
            for k, v in (("location", DATA), ("offset", str(offset)), ("length", str(arr.nbytes))):
                e = t.external_data.add()
                e.key, e.value = k, v
            offset += arr.nbytes
            del arr, have
    m.ir_version = min(m.ir_version, SUITE.MAX_IR_VERSION)
    for n in m.graph.node:
        del n.metadata_props[:]
    del m.metadata_props[:]
    onnx.save_model(m, os.path.join(out_dir, "model.onnx"))
    return offset


def random_data(seed: int, dtype: str, names: dict):
    """Weights for every parameter: normal(0, 0.02), norms ones (transformers' init); other initializers
    (shape constants, rotary tables) as exported."""
    rng = np.random.default_rng(seed)
    npdt = np_dtype(dtype)
    # Drawing 7 billion normals takes many minutes on 2 cores; each tensor is a cyclic run of a pool of 2**24
    # normals from a random start instead: random-looking weights at the speed of a copy.
    pool = (rng.standard_normal(POOL, np.float32) * np.float32(0.02)).astype(npdt)
    pool = np.concatenate([pool, pool[:CHUNK]])

    def data_for(t: TensorProto, have, src: str, k):
        shape = tuple(t.dims)
        param = names.get(src)
        if param is None:
            if have is None:
                raise SystemExit(f"initializer {t.name}: no data")
            return have
        if "norm" in param:
            return np.ones(shape, npdt)
        out = np.empty(shape, npdt)
        flat = out.reshape(-1)
        for i in range(0, flat.size, CHUNK):
            start = int(rng.integers(POOL))
            n = min(CHUNK, flat.size - i)
            flat[i:i + n] = pool[start:start + n]
        return out

    return data_for


def write_tokenizer(out_dir: str, vocab: int) -> None:
    """tokenizer.json beside the model, so `tcc compile` bundles it and `tcc chat` runs on the artifact: a
    byte-level BPE of up to 4096 tokens trained on the demo model's calibration text (`<|endoftext|>` = 0,
    the config's bos/eos), padded with `<|unused_N|>` tokens to the model's vocabulary so every id the random
    weights pick decodes to something."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=min(vocab, 4096), special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train([os.path.join(HERE, "..", "models", "demo", "calib.txt")], trainer)
    have = tok.get_vocab_size()
    if have > vocab:
        raise SystemExit(f"a byte-level tokenizer needs at least {have} tokens; the model has {vocab}")
    tok.add_tokens([f"<|unused_{i}|>" for i in range(vocab - have)])
    tok.save(os.path.join(out_dir, "tokenizer.json"))


def make(shape: dict, out_dir: str, dtype: str, seed: int = 0) -> dict:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="llama-template-") as tmp:
        m, names = export_template(shape, dtype, None, tmp)
    m, origin = grow(m, names, shape["num_hidden_layers"], shape["vocab_size"])
    size = write(m, out_dir, origin, random_data(seed, dtype, names))
    cfg = {**shape, "architectures": ["LlamaForCausalLM"], "model_type": "llama",
           "torch_dtype": {"f16": "float16", "bf16": "bfloat16", "f32": "float32"}[dtype], "tie_word_embeddings": False,
           "bos_token_id": 0, "eos_token_id": 0}
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    write_tokenizer(out_dir, shape["vocab_size"])
    return {"bytes": size, "seconds": round(time.perf_counter() - t0, 1), "nodes": len(m.graph.node)}


def check(shape: dict, dtype: str) -> float:
    """Grow a 2-layer export carrying the weights of a torch model of the full size; ORT must match torch."""
    import onnxruntime as ort
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    config = LlamaConfig(**shape, attn_implementation="eager", use_cache=True, rope_theta=10000.0,
                         tie_word_embeddings=False)
    full = LlamaForCausalLM(config).eval()
    state = {k: v.detach().clone() for k, v in full.state_dict().items()}
    with tempfile.TemporaryDirectory(prefix="llama-check-") as tmp:
        m, names = export_template(shape, dtype, state, tmp)
        m, origin = grow(m, names, shape["num_hidden_layers"], shape["vocab_size"])
        params = {k: v.float().numpy() for k, v in state.items()}
        npdt = np.float16 if dtype == "f16" else np.float32

        def data_for(t, have, src, k):
            p = names.get(src)
            if p is None:
                return have
            if k is not None:
                p = p.replace("layers.1.", f"layers.{k}.")
            a = params[p]
            return (a if src == names[src] else a.T).astype(npdt)  # anonymous ones are stored transposed

        write(m, os.path.join(tmp, "grown"), origin, data_for)
        sess = ort.InferenceSession(os.path.join(tmp, "grown", "model.onnx"), providers=["CPUExecutionProvider"])
        full = SUITE._flat_past_module(full.half() if dtype == "f16" else full)
        worst = 0.0
        for b, past, s in ((1, 0, 5), (2, 3, 4), (1, 7, 1)):
            f = SUITE._feeds(shape, b, past, s, seed=past + s)
            if dtype == "f16":
                f = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in f.items()}
            names_in = [i.name for i in sess.get_inputs()]
            with torch.no_grad():
                ref = [t.float().numpy() for t in full(*(torch.from_numpy(f[n]) for n in names_in))]
            got = sess.run(None, {n: f[n] for n in names_in})
            for gv, rv in zip(got, ref):
                if gv.shape != rv.shape:
                    raise SystemExit(f"shape {gv.shape} != torch {rv.shape}")
                worst = max(worst, float(np.abs(gv.astype(np.float32) - rv).max()))
    return worst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama2-7b")
    ap.add_argument("--layers", type=int, help="override the shape's layer count")
    ap.add_argument("--dtype", choices=DTYPES, default="f16")
    ap.add_argument("--out", help="output folder (model.onnx, model.onnx.data, config.json, tokenizer.json)")
    ap.add_argument("--check", action="store_true", help="check the growth against torch (small shapes)")
    a = ap.parse_args(argv)
    shape = dict(SHAPES[a.shape])
    if a.layers:
        shape["num_hidden_layers"] = a.layers
    if shape["num_hidden_layers"] < TEMPLATE_LAYERS:
        ap.error(f"--layers must be at least {TEMPLATE_LAYERS}")
    if a.check and a.dtype == "bf16":
        ap.error("--check runs onnxruntime, which has no CPU bf16 MatMul: check --dtype f16 (the same graph)")
    if a.check:
        worst = check(shape, a.dtype)
        tol = 1e-4 if a.dtype == "f32" else 5e-3
        print(f"grown graph vs torch ({a.shape}, {shape['num_hidden_layers']} layers, {a.dtype}): max |diff| "
              f"{worst:.3g} (tolerance {tol})")
        if not worst <= tol:
            return 1
    if a.out:
        info = make(shape, a.out, a.dtype)
        print(f"wrote {a.out}: {info['bytes'] / 2**30:.2f} GiB of weights, {info['nodes']} nodes, {info['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
