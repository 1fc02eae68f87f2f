#!/usr/bin/env python
"""Generate tcc's whole-model ONNX test fixtures (random weights, fixed seeds).

    python tests/models/generate.py [--out DIR]      # default DIR = tests/models/

Produces, in DIR, for each model NAME in {mlp, encoder, llama, llama_opset23}:
    NAME.onnx   self-contained ONNX (no external data, IR version <= 10)
    NAME.json   exporter / opset / IR version / I/O signature / op-type histogram /
                fused-pattern counts known by construction / verification figures

Every exported model is verified before this script returns: onnx.checker (full
check), structural assertions on the expected op patterns, and an onnxruntime run
at several (batch, seq) shapes compared with the torch model (max abs diff
<= 1e-4), with ORT graph optimisations both disabled and enabled.  Any failure
raises, so a silently wrong export can never be written out as a passing fixture.

Nothing is downloaded: every model is built from code/config with seeded random
weights.  Requires torch, transformers (LLaMA), onnx, onnxruntime and onnxscript
(the torch dynamo exporter's dependency).
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import math
import os
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_IR_VERSION = 10          # onnxruntime 1.31 refuses IR 14 (written by onnx >= 1.23)
MAX_BYTES = 1 << 20          # each fixture must stay < 1 MiB
ATOL = 1e-4                  # fp32 end-to-end tolerance (see README "Verification")

# (batch, seq) shapes checked with onnxruntime for the sequence models.
SEQ_SHAPES = [(1, 1), (2, 5), (3, 17), (2, 64), (1, 128)]
MLP_BATCHES = [1, 2, 3, 7]


# --------------------------------------------------------------------------- utils
def _log(msg: str) -> None:
    print(f"[generate] {msg}", flush=True)


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def _dtype_name(elem_type: int) -> str:
    return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name


def _shape(vi: onnx.ValueInfoProto) -> list:
    return [d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else None)
            for d in vi.type.tensor_type.shape.dim]


def _strip_metadata(model: onnx.ModelProto) -> None:
    """Drop per-node/per-value metadata_props (the dynamo exporter stores python stack
    traces with absolute paths there): keeps fixtures small and byte-reproducible."""
    g = model.graph
    for n in g.node:
        del n.metadata_props[:]
    for coll in (g.input, g.output, g.value_info, g.initializer):
        for v in coll:
            del v.metadata_props[:]


def _finalize_and_save(model: onnx.ModelProto, path: str) -> onnx.ModelProto:
    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION
    _strip_metadata(model)
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, path, save_as_external_data=False)
    size = os.path.getsize(path)
    if size >= MAX_BYTES:
        raise RuntimeError(f"{path}: {size} bytes >= 1 MiB")
    # Reload from disk so everything below checks exactly what was written.
    m = onnx.load(path, load_external_data=False)
    for t in m.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            raise RuntimeError(f"{path}: initializer {t.name} uses external data")
    return m


def _histogram(model: onnx.ModelProto) -> dict:
    c = collections.Counter(n.op_type for n in model.graph.node)
    return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def _require(model: onnx.ModelProto, name: str, expected: dict) -> None:
    """expected: op_type -> exact count (int) or (min, max)."""
    hist = collections.Counter(n.op_type for n in model.graph.node)
    for op, want in expected.items():
        got = hist.get(op, 0)
        ok = (got == want) if isinstance(want, int) else (want[0] <= got <= want[1])
        if not ok:
            raise AssertionError(f"{name}: expected {op} count {want}, got {got}. Histogram: {dict(hist)}")


def _sessions(path: str) -> dict:
    out = {}
    for tag, level in (("ort_opt_disabled", ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
                       ("ort_opt_all", ort.GraphOptimizationLevel.ORT_ENABLE_ALL)):
        so = ort.SessionOptions()
        so.graph_optimization_level = level
        so.log_severity_level = 3
        out[tag] = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return out


def _compare(name: str, sessions: dict, feeds: dict, ref: np.ndarray, shape_tag: str, record: list) -> None:
    entry = {"shape": shape_tag, "ref_max_abs": float(f"{np.abs(ref).max():.4g}")}
    for tag, sess in sessions.items():
        out = sess.run(None, feeds)[0]
        if out.shape != ref.shape:
            raise AssertionError(f"{name} [{tag}] {shape_tag}: shape {out.shape} != torch {ref.shape}")
        if not np.all(np.isfinite(out)):
            raise AssertionError(f"{name} [{tag}] {shape_tag}: non-finite output")
        diff = float(np.abs(out.astype(np.float64) - ref.astype(np.float64)).max())
        entry[tag] = float(f"{diff:.3g}")   # 3 significant digits: keeps the .json stable
        if not diff <= ATOL:
            raise AssertionError(f"{name} [{tag}] {shape_tag}: max abs diff {diff:.3e} > {ATOL:.0e}")
    record.append(entry)
    _log(f"  {name} {shape_tag:>16}: max|ref|={entry['ref_max_abs']:.3f}  "
         f"diff(opt off)={entry['ort_opt_disabled']:.2e}  diff(opt all)={entry['ort_opt_all']:.2e}")


def _io_sig(model: onnx.ModelProto) -> tuple[list, list]:
    init = {t.name for t in model.graph.initializer}
    ins = [{"name": i.name, "dtype": _dtype_name(i.type.tensor_type.elem_type), "shape": _shape(i)}
           for i in model.graph.input if i.name not in init]
    outs = [{"name": o.name, "dtype": _dtype_name(o.type.tensor_type.elem_type), "shape": _shape(o)}
            for o in model.graph.output]
    return ins, outs


def _write_json(path_onnx: str, model: onnx.ModelProto, info: dict) -> None:
    ins, outs = _io_sig(model)
    with open(path_onnx, "rb") as f:
        blob = f.read()
    n_params = int(sum(np.prod(t.dims) for t in model.graph.initializer))
    meta = {
        "file": os.path.basename(path_onnx),
        "bytes": len(blob),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "exporter": info["exporter"],
        "opset": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}",
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
                     **info.get("extra_versions", {})},
        "inputs": ins,
        "outputs": outs,
        "num_nodes": len(model.graph.node),
        "num_initializers": len(model.graph.initializer),
        "num_initializer_elements": n_params,
        "op_histogram": _histogram(model),
        "expected_fused": info["expected_fused"],
        "model_config": info["config"],
        "notes": info.get("notes", []),
        "verification": info["verification"],
    }
    with open(os.path.splitext(path_onnx)[0] + ".json", "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")


def _perturb_norm_weights(module: nn.Module, gen: torch.Generator) -> None:
    """LayerNorm weights default to exactly 1 and biases to 0: randomise them so that
    the export cannot fold/deduplicate them and verification actually exercises them."""
    with torch.no_grad():
        for mod in module.modules():
            if isinstance(mod, nn.LayerNorm):
                mod.weight.copy_(1.0 + 0.1 * torch.randn(mod.weight.shape, generator=gen))
                mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=gen))


# ----------------------------------------------------------------------------- MLP
class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(32, 64)
        self.act1 = nn.GELU()              # exact (erf) GELU
        self.fc2 = nn.Linear(64, 64)
        self.act2 = nn.ReLU()
        self.norm = nn.LayerNorm(64)
        self.fc3 = nn.Linear(64, 10)

    def forward(self, x):
        x = self.act1(self.fc1(x))
        x = self.act2(self.fc2(x))
        x = self.norm(x)
        return torch.softmax(self.fc3(x), dim=-1)


def build_mlp(out_dir: str) -> None:
    name = "mlp"
    _seed(0)
    model = MLP().eval()
    _perturb_norm_weights(model, torch.Generator().manual_seed(100))
    path = os.path.join(out_dir, f"{name}.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, 32),), path, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["probs"],
                          dynamic_axes={"x": {0: "batch"}, "probs": {0: "batch"}},
                          do_constant_folding=True)
    m = _finalize_and_save(onnx.load(path), path)
    _require(m, name, {"LayerNormalization": 1, "Softmax": 1, "Erf": 1, "Relu": 1, "Gemm": 3})

    sessions = _sessions(path)
    rng = np.random.default_rng(10)
    record = []
    for b in MLP_BATCHES:
        x = rng.standard_normal((b, 32)).astype(np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        _compare(name, sessions, {"x": x}, ref, f"batch={b}", record)

    _write_json(path, m, {
        "exporter": "torch.onnx.export(dynamo=False)  [TorchScript exporter], do_constant_folding=True",
        "config": {"layers": "Linear(32,64) -> GELU(erf) -> Linear(64,64) -> ReLU -> LayerNorm(64, eps=1e-5) "
                             "-> Linear(64,10) -> Softmax(-1)", "seed": 0},
        "expected_fused": {"Linear": 3, "Gelu": 1, "LayerNorm": 1, "Softmax": 1},
        "notes": ["2-D input, so each Linear exports as Gemm(transB=1) with bias.",
                  "GELU (opset 17, no Gelu op) = Div(x, sqrt2) -> Erf -> Add(1) -> Mul(x) -> Mul(0.5).",
                  "LayerNorm exports as one LayerNormalization(axis=-1, epsilon=1e-5) node (opset 17)."],
        "verification": {"atol": ATOL, "runs": record},
    })


# ------------------------------------------------------------------------- Encoder
class SelfAttention(nn.Module):
    """Multi-head self-attention written with explicit ops:
    softmax(q @ k^T * 1/sqrt(d) + mask) @ v."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.h = n_heads
        self.dh = d_model // n_heads
        self.scale = 1.0 / math.sqrt(self.dh)
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x, attn_mask):
        b, s, d = x.shape
        q = self.q_proj(x).view(b, s, self.h, self.dh).transpose(1, 2)    # [B,H,S,Dh]
        k = self.k_proj(x).view(b, s, self.h, self.dh).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.h, self.dh).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-2, -1)) * self.scale + attn_mask   # [B,H,S,S]
        probs = torch.softmax(scores, dim=-1)
        ctx = torch.matmul(probs, v).transpose(1, 2).reshape(b, s, d)
        return self.out_proj(ctx)


class EncoderLayer(nn.Module):
    """Post-LN layer, same math as nn.TransformerEncoderLayer(norm_first=False,
    activation='gelu', batch_first=True, dropout=0)."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int):
        super().__init__()
        self.self_attn = SelfAttention(d_model, n_heads)
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x, attn_mask):
        x = self.norm1(x + self.self_attn(x, attn_mask))
        x = self.norm2(x + self.linear2(nn.functional.gelu(self.linear1(x))))
        return x


class Encoder(nn.Module):
    def __init__(self, d_model=64, n_heads=4, d_ff=128, n_layers=2):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(d_model, n_heads, d_ff) for _ in range(n_layers))

    def forward(self, x, attn_mask):
        for layer in self.layers:
            x = layer(x, attn_mask)
        return x


def _reference_torch_encoder(enc: Encoder) -> nn.TransformerEncoder:
    """nn.TransformerEncoder with the same weights: used to prove the hand-written
    modules are a standard transformer encoder."""
    layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, activation="gelu", batch_first=True)
    ref = nn.TransformerEncoder(layer, num_layers=len(enc.layers), enable_nested_tensor=False).eval()
    with torch.no_grad():
        for mine, theirs in zip(enc.layers, ref.layers):
            a = mine.self_attn
            theirs.self_attn.in_proj_weight.copy_(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]))
            theirs.self_attn.in_proj_bias.copy_(torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]))
            theirs.self_attn.out_proj.weight.copy_(a.out_proj.weight)
            theirs.self_attn.out_proj.bias.copy_(a.out_proj.bias)
            for n in ("linear1", "linear2", "norm1", "norm2"):
                getattr(theirs, n).load_state_dict(getattr(mine, n).state_dict())
    return ref


def _padding_mask(rng, b: int, s: int) -> tuple[np.ndarray, np.ndarray]:
    """Additive key-padding mask [B,1,S,S]: 0 for valid keys, -1e9 for padded keys.
    Batch 0 is unpadded; others get a random valid length in [1, S]."""
    lengths = np.array([s] + [int(rng.integers(1, s + 1)) for _ in range(b - 1)], dtype=np.int64)
    valid = np.arange(s)[None, :] < lengths[:, None]                          # [B,S]
    mask = np.where(valid, 0.0, -1e9).astype(np.float32)[:, None, None, :]   # [B,1,1,S]
    return np.broadcast_to(mask, (b, 1, s, s)).copy(), lengths


def build_encoder(out_dir: str) -> None:
    name = "encoder"
    _seed(1)
    model = Encoder().eval()
    _perturb_norm_weights(model, torch.Generator().manual_seed(101))
    path = os.path.join(out_dir, f"{name}.onnx")
    ex_x = torch.randn(2, 5, 64)
    ex_m = torch.zeros(2, 1, 5, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (ex_x, ex_m), path, dynamo=False, opset_version=17,
                          input_names=["x", "attn_mask"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch", 1: "seq"},
                                        "attn_mask": {0: "batch", 2: "seq", 3: "seq"},
                                        "y": {0: "batch", 1: "seq"}},
                          do_constant_folding=True)
    m = _finalize_and_save(onnx.load(path), path)
    # 2 layers x (Q,K,V,O + 2 FFN) = 12 Linear -> 12 weight MatMuls; + 2 x (QK^T, PV) = 16 MatMuls.
    _require(m, name, {"Softmax": 2, "MatMul": 16, "LayerNormalization": 4, "Erf": 2})
    _check_attention_chain(m, name, expected=2)

    sessions = _sessions(path)
    ref_enc = _reference_torch_encoder(model)
    rng = np.random.default_rng(11)
    record, ref_equiv, mask_checks = [], [], []
    for b, s in SEQ_SHAPES:
        x = rng.standard_normal((b, s, 64)).astype(np.float32)
        mask, lengths = _padding_mask(rng, b, s)
        with torch.no_grad():
            ref = model(torch.from_numpy(x), torch.from_numpy(mask)).numpy()
            # same math as torch's own encoder (per-head float mask [B*H,S,S])
            m3 = torch.from_numpy(mask).expand(b, 4, s, s).reshape(b * 4, s, s)
            ref2 = ref_enc(torch.from_numpy(x), mask=m3).numpy()
        d_ref = float(np.abs(ref - ref2).max())
        if d_ref > 1e-5:
            raise AssertionError(f"encoder differs from nn.TransformerEncoder by {d_ref}")
        ref_equiv.append(d_ref)
        feeds = {"x": x, "attn_mask": mask}
        _compare(name, sessions, feeds, ref, f"batch={b},seq={s}", record)
        # Mask is really wired in: changing x at padded positions must not change
        # the outputs at valid positions.
        if (lengths < s).any():
            x2 = x.copy()
            for i, L in enumerate(lengths):
                x2[i, L:] += 3.0
            y1 = sessions["ort_opt_disabled"].run(None, feeds)[0]
            y2 = sessions["ort_opt_disabled"].run(None, {"x": x2, "attn_mask": mask})[0]
            worst = max(float(np.abs(y1[i, :L] - y2[i, :L]).max()) for i, L in enumerate(lengths))
            if worst > 1e-5:
                raise AssertionError(f"encoder: padded keys leak into valid outputs ({worst})")
            mask_checks.append({"shape": f"batch={b},seq={s}", "lengths": lengths.tolist(),
                                "max_leak": float(f"{worst:.3g}")})

    _write_json(path, m, {
        "exporter": "torch.onnx.export(dynamo=False)  [TorchScript exporter], do_constant_folding=True",
        "config": {"d_model": 64, "n_heads": 4, "head_dim": 16, "d_ff": 128, "n_layers": 2, "activation": "gelu(erf)",
                   "norm": "post-LN (LayerNorm eps=1e-5), like nn.TransformerEncoderLayer(norm_first=False)",
                   "batch_first": True, "attn_mask": "additive float [batch,1,seq,seq]; 0=keep, -1e9=masked",
                   "seed": 1},
        "expected_fused": {"attention": 2, "LayerNorm": 4, "Gelu": 2, "Linear": 12, "Softmax": 2},
        "notes": ["Attention per layer: MatMul(Q,Transpose(K)) -> Mul(0.25) -> Add(attn_mask) -> Softmax(-1) -> "
                  "MatMul(P,V), with Q/K/V = MatMul+Add -> Reshape[B,S,4,16] -> Transpose(0,2,1,3).",
                  "3-D activations, so Linear exports as MatMul(W^T initializer) + Add(bias).",
                  "Same math as nn.TransformerEncoder (verified in generate.py)."],
        "verification": {"atol": ATOL, "runs": record,
                         "max_abs_diff_vs_nn_TransformerEncoder": float(f"{max(ref_equiv):.3g}"),
                         "padding_mask_leak_checks": mask_checks},
    })


def _check_attention_chain(m: onnx.ModelProto, name: str, expected: int) -> None:
    """Assert the decomposed SDPA pattern MatMul -> (Mul|Div) -> Add -> Softmax -> MatMul
    occurs `expected` times."""
    producers = {o: n for n in m.graph.node for o in n.output}
    consumers = collections.defaultdict(list)
    for n in m.graph.node:
        for i in n.input:
            consumers[i].append(n)
    found = 0
    for sm in (n for n in m.graph.node if n.op_type == "Softmax"):
        add = producers.get(sm.input[0])
        if add is None or add.op_type != "Add":
            continue
        scale = next((producers.get(i) for i in add.input
                      if producers.get(i) is not None and producers[i].op_type in ("Mul", "Div")), None)
        if scale is None:
            continue
        qk = next((producers.get(i) for i in scale.input
                   if producers.get(i) is not None and producers[i].op_type == "MatMul"), None)
        pv = [c for c in consumers[sm.output[0]] if c.op_type == "MatMul"]
        if qk is not None and pv:
            found += 1
    if found != expected:
        raise AssertionError(f"{name}: found {found} MatMul->Mul/Div->Add->Softmax->MatMul chains, want {expected}")


# --------------------------------------------------------------------------- LLaMA
def _llama_config(attn_impl: str):
    from transformers import LlamaConfig
    return LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=128, vocab_size=256, max_position_embeddings=128, rope_theta=10000.0,
                       tie_word_embeddings=False, attn_implementation=attn_impl, use_cache=False)


def _llama_logits_class():
    from transformers import LlamaForCausalLM

    class LlamaLogits(LlamaForCausalLM):
        """LlamaForCausalLM whose forward takes only input_ids and returns logits.

        position_ids = arange(seq) expanded to [batch, seq] is passed explicitly.
        Numerically identical to the default (LlamaModel builds arange(seq)[None] itself),
        but it makes cos/sin [batch, seq, ...] instead of [1, seq, ...]: the opset-23
        RotaryEmbedding op requires cos/sin of shape (batch, seq, rotary_dim/2) and
        onnxruntime 1.31 rejects the broadcast [1, seq, ...] form for batch > 1.
        Both llama fixtures use this wrapper so they compute the same function."""

        def forward(self, input_ids):  # noqa: D401
            b, s = input_ids.shape
            position_ids = torch.arange(s, device=input_ids.device).unsqueeze(0).expand(b, -1)
            return super().forward(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits

    return LlamaLogits


def _build_llama_torch(attn_impl: str):
    cls = _llama_logits_class()
    _seed(2)
    model = cls(_llama_config(attn_impl)).eval()
    gen = torch.Generator().manual_seed(102)
    with torch.no_grad():
        # HF init is N(0, 0.02): activations would be tiny and attention nearly uniform,
        # which makes the numeric comparison weak. Use O(1) activations instead.
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight"):                   # RMSNorm weights (default all-ones)
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in pname:
                p.copy_(torch.randn(p.shape, generator=gen))
            elif p.dim() == 2:                                   # nn.Linear [out, in]
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))
            else:
                raise AssertionError(f"unexpected llama parameter {pname}")
    return model


def _export_llama_dynamo(model, path: str, opset: int) -> onnx.ModelProto:
    batch = torch.export.Dim("batch", min=1, max=64)
    seq = torch.export.Dim("seq", min=1, max=128)
    ex = torch.randint(0, 256, (2, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(model, (ex,), dynamo=True, opset_version=opset, optimize=True,
                                 input_names=["input_ids"], output_names=["logits"],
                                 dynamic_shapes={"input_ids": {0: batch, 1: seq}}, verbose=False)
    return prog.model_proto


def _verify_llama(name: str, path: str, model, record: list, causal: list) -> dict:
    sessions = _sessions(path)
    rng = np.random.default_rng(12)
    outputs = {}
    for b, s in SEQ_SHAPES:
        ids = rng.integers(0, 256, (b, s), dtype=np.int64)
        with torch.no_grad():
            ref = model(torch.from_numpy(ids)).numpy()
        _compare(name, sessions, {"input_ids": ids}, ref, f"batch={b},seq={s}", record)
        outputs[(b, s)] = (ids, sessions["ort_opt_disabled"].run(None, {"input_ids": ids})[0])
        if s > 1:
            # Causality of the exported graph: changing the last token must leave the
            # logits of every earlier position unchanged.
            ids2 = ids.copy()
            ids2[:, -1] = (ids2[:, -1] + 1) % 256
            y1 = outputs[(b, s)][1]
            y2 = sessions["ort_opt_disabled"].run(None, {"input_ids": ids2})[0]
            leak = float(np.abs(y1[:, :-1] - y2[:, :-1]).max())
            last = float(np.abs(y1[:, -1] - y2[:, -1]).max())
            if leak > 1e-5 or last < 1e-3:
                raise AssertionError(f"{name}: causal mask broken (leak={leak}, last-token change={last})")
            causal.append({"shape": f"batch={b},seq={s}", "max_change_before_last": float(f"{leak:.3g}"),
                           "max_change_at_last": float(f"{last:.3g}")})
    return outputs


def build_llama(out_dir: str) -> dict:
    import transformers
    name = "llama"
    model = _build_llama_torch("eager")
    path = os.path.join(out_dir, f"{name}.onnx")
    m = _finalize_and_save(_export_llama_dynamo(model, path, opset=18), path)
    _require(m, name, {"Softmax": 2, "Pow": 5, "ReduceMean": 5, "Sqrt": 5, "Reciprocal": 5,
                       "Sin": 1, "Cos": 1, "Neg": 4, "Sigmoid": 2, "MatMul": 19, "Where": 1})
    _check_attention_chain(m, name, expected=2)
    record, causal = [], []
    outs = _verify_llama(name, path, model, record, causal)
    _write_json(path, m, {
        "exporter": "torch.onnx.export(dynamo=True, optimize=True)  [torch.export + onnxscript; opset 18]",
        "extra_versions": {"transformers": transformers.__version__, "onnxscript": _onnxscript_version()},
        "config": _llama_cfg_dict(),
        "expected_fused": {"attention": 2, "RMSNorm": 5, "rotary": 4, "repeat_kv": 4, "SwiGLU_MLP": 2,
                           "Linear": 15, "causal_mask": 1, "embedding_Gather": 1},
        "notes": ["attn_implementation='eager'; use_cache=False; only input, input_ids; causal mask built in-graph "
                  "by transformers' create_causal_mask (incl. its packed-sequence check on position_ids).",
                  "rotary = 2 per layer (q and k); repeat_kv = 2 per layer (k and v), n_rep = 2.",
                  "Linear = 7 per layer (q,k,v,o,gate,up,down) + lm_head; bias-free MatMul with pre-transposed "
                  "weight initializers."],
        "verification": {"atol": ATOL, "runs": record, "causality_checks": causal},
    })
    return outs


def build_llama_opset23(out_dir: str, eager_outputs: dict) -> None:
    import transformers
    name = "llama_opset23"
    # attn_implementation="sdpa": the eager attention is decomposed by HF into
    # MatMul/Softmax and never becomes an ONNX Attention op; torch SDPA does.
    model = _build_llama_torch("sdpa")
    path = os.path.join(out_dir, f"{name}.onnx")
    m = _finalize_and_save(_export_llama_dynamo(model, path, opset=23), path)
    _require(m, name, {"RMSNormalization": 5, "RotaryEmbedding": 4, "Attention": 2, "Softmax": 0})
    record, causal = [], []
    outs = _verify_llama(name, path, model, record, causal)
    # Same weights (same seeds) and same math as llama.onnx: outputs must agree.
    cross = 0.0
    for k, (ids, y) in outs.items():
        ids0, y0 = eager_outputs[k]
        assert np.array_equal(ids, ids0)
        cross = max(cross, float(np.abs(y - y0).max()))
    if cross > ATOL:
        raise AssertionError(f"llama_opset23 vs llama differ by {cross}")
    _log(f"  llama_opset23 vs llama.onnx (ORT, all shapes): max abs diff {cross:.2e}")
    _write_json(path, m, {
        "exporter": "torch.onnx.export(dynamo=True, optimize=True, opset_version=23)  [torch.export + onnxscript "
                    "rewriter fuses RMSNormalization / RotaryEmbedding; SDPA -> Attention]",
        "extra_versions": {"transformers": transformers.__version__, "onnxscript": _onnxscript_version()},
        "config": {**_llama_cfg_dict(), "attn_implementation": "sdpa"},
        "expected_fused": {"Attention_op": 2, "RMSNormalization_op": 5, "RotaryEmbedding_op": 4, "repeat_kv": 4,
                           "SwiGLU_MLP": 2, "Linear": 15, "causal_mask": 1, "embedding_Gather": 1},
        "notes": ["Same weights and function as llama.onnx but attn_implementation='sdpa' so attention exports as "
                  "ONNX Attention (opset 23). With 'eager' at opset 23 you get RMSNormalization and "
                  "RotaryEmbedding but attention stays MatMul/Softmax.",
                  "GQA: k/v are still expanded with repeat_kv (Unsqueeze/Expand/Reshape) before Attention, so "
                  "Attention sees 4 q heads and 4 kv heads; the mask input is a bool [batch,1,seq,seq] tensor.",
                  "RotaryEmbedding: 4-D input [batch, heads, seq, 16], cos/sin [batch, seq, 8], no position_ids, "
                  "interleaved=0, num_heads attribute set."],
        "verification": {"atol": ATOL, "runs": record, "causality_checks": causal,
                         "max_abs_diff_vs_llama_onnx": float(f"{cross:.3g}")},
    })


def _llama_cfg_dict() -> dict:
    return {"source": "transformers.LlamaConfig (random weights)", "hidden_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128,
            "vocab_size": 256, "max_position_embeddings": 128, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
            "hidden_act": "silu", "tie_word_embeddings": False, "attn_implementation": "eager",
            "use_cache": False, "seed": 2,
            "weight_init": "embed N(0,1); Linear N(0,1/fan_in); RMSNorm weight 1+0.1*N(0,1)"}


def _onnxscript_version() -> str:
    try:
        import onnxscript
        return onnxscript.__version__
    except Exception:  # pragma: no cover
        return "unknown"


# ---------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=HERE, help="output directory (default: tests/models/)")
    ap.add_argument("--only", nargs="*", choices=["mlp", "encoder", "llama"], help="subset to build")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)           # deterministic reductions in the torch reference
    want = set(args.only or ["mlp", "encoder", "llama"])
    _log(f"torch {torch.__version__}, onnx {onnx.__version__}, onnxruntime {ort.__version__}; out={args.out}")
    if "mlp" in want:
        _log("mlp")
        build_mlp(args.out)
    if "encoder" in want:
        _log("encoder")
        build_encoder(args.out)
    if "llama" in want:
        _log("llama (dynamo, opset 18)")
        outs = build_llama(args.out)
        _log("llama_opset23 (dynamo, opset 23)")
        build_llama_opset23(args.out, outs)
    for f in sorted(os.listdir(args.out)):
        if f.endswith(".onnx"):
            _log(f"  {f}: {os.path.getsize(os.path.join(args.out, f))} bytes")
    _log("all fixtures exported and verified")
    return 0


if __name__ == "__main__":
    sys.exit(main())
