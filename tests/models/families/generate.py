#!/usr/bin/env python
"""Generate the per-architecture decoder fixtures of tests/models/families/ (random weights, CPU).

    python tests/models/families/generate.py                    # every planned fixture
    python tests/models/families/generate.py --only qwen2 phi   # architectures or fixture names
    python tests/models/families/generate.py --list             # the plan
    python tests/models/families/generate.py --table            # README.md's table from the fixture.json files
    python tests/models/families/generate.py --out /tmp/x

One directory per fixture, <arch>_<exporter>/ with model.onnx, config.json and fixture.json. Every model is
a transformers *ForCausalLM built from a config written here (2 layers, hidden 64, vocab 128, fixed seeds)
and exported as users export it, in the optimum decoder-with-past layout (past_key_values.{i}.key/value in,
present.{i}.key/value out), by (PLAN_EXPORTERS says which architecture gets which):
    optimum       optimum's main_export (`optimum-cli export onnx --task text-generation-with-past`), every
                  architecture; it needs transformers < 4.58, so it runs in its own venv (README.md)
    torchscript   torch.onnx.export(dynamo=False), opset 17, attn_implementation="eager"
    sdpa18        torch.onnx.export(dynamo=True), opset 18, transformers' default attention ("sdpa")
    sdpa20        the same at opset 20;  sdpa23: opset 23 (ONNX Attention / RotaryEmbedding ops appear)
    eager18       torch.onnx.export(dynamo=True), opset 18, attn_implementation="eager"
Run with transformers 5 the script makes the non-optimum fixtures; run with the optimum venv's python it
makes the optimum ones (each run skips, and names, what its environment cannot make).
Dynamo exports keep their raw dim names (the attention mask's second dim is an anonymous `sNN`, the
presents are `past_seq + seq`): that is what users get. The flat-signature wrapper, the weight init and
the verification inputs are the ones of tests/models/llm/generate.py (imported from there).

Every fixture is verified before it is written: onnxruntime against the torch module at
(batch, past, seq) = (1,0,5) (2,3,4) (1,7,1) with max abs diff <= 1e-4 on logits and presents, and a greedy
decode driven through onnxruntime with its past equal to torch's; fixture.json records the ORT greedy tokens,
the smallest top-1/top-2 gap along them, and what tests/e2e/test_families.py needs. optimum fixtures are
checked by the ORT greedy (tests/e2e/llm_oracle.py) against torch re-running the whole sequence each step.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import importlib.util
import json
import os
import sys
import time
import warnings

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import onnx
import onnxruntime as ort
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("llm_generate", os.path.join(HERE, "..", "llm", "generate.py"))
LG = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(LG)

_LG_KV_SHAPE = LG._kv_shape


def _kv_shape(model) -> tuple[int, int]:
    """LG._kv_shape, plus Falcon's multi-query (one kv head; its config has no num_key_value_heads)."""
    kv, hd = _LG_KV_SHAPE(model)
    c = model.config
    if c.model_type == "falcon" and c.multi_query and not c.new_decoder_architecture:
        kv = 1
    return kv, hd


LG._kv_shape = _kv_shape  # the wrapper, example inputs and greedy of LG read it at call time
LG.MAX_MODEL_BYTES = 600_000   # each model.onnx (hidden 64 weights are ~250 KB; MPT adds constant tables)
MAX_TOTAL_BYTES = 15_000_000
VOCAB = 128
MAX_POS = 128
N_NEW = 40                     # greedy tokens recorded (the e2e test decodes 32)
PROMPT = [1, 17, 42, 99, 5, 63, 23, 7, 88, 31, 2, 54]
SHAPES = [(1, 0, 5), (2, 3, 4), (1, 7, 1)]
ATOL = 1e-4
EXPORTERS = {  # name -> (dynamo, opset, attn_implementation)
    "torchscript": (False, 17, "eager"),
    "sdpa18": (True, 18, "sdpa"),
    "sdpa20": (True, 20, "sdpa"),
    "sdpa23": (True, 23, "sdpa"),
    "eager18": (True, 18, "eager"),
    "optimum": (False, 18, "eager"),  # optimum-cli export onnx --task text-generation-with-past (its default)
}
COMMON = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0, use_cache=True)


def _for_version(version: str, kw: dict) -> dict:
    """transformers < 5 (optimum's pin) spells rope_parameters as rope_theta / rope_scaling /
    partial_rotary_factor."""
    if int(version.split(".")[0]) >= 5 or "rope_parameters" not in kw:
        return kw
    kw = dict(kw)
    rp = dict(kw.pop("rope_parameters"))
    kw["rope_theta"] = rp.pop("rope_theta")
    if "partial_rotary_factor" in rp:
        kw["partial_rotary_factor"] = rp.pop("partial_rotary_factor")
    if rp.get("rope_type", "default") != "default":
        kw["rope_scaling"] = rp
    return kw


def _cfgs() -> dict:
    """arch -> (transformers class name, config factory(attn), pos_input, notes). hidden 64, 2 layers."""
    import transformers as T

    def mk(cls, **kw):
        def f(attn):
            c = getattr(T, cls)(**_for_version(T.__version__, {**COMMON, **kw}))
            c._attn_implementation = attn
            return c
        return f

    llama = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                 intermediate_size=64, max_position_embeddings=MAX_POS, tie_word_embeddings=False)
    return {
        "llama3": ("LlamaForCausalLM", mk("LlamaConfig", **llama, rope_parameters=dict(
            rope_type="llama3", rope_theta=5e5, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
            original_max_position_embeddings=32)), True, "GQA 4/2, llama3 rope scaling"),
        "qwen2": ("Qwen2ForCausalLM", mk("Qwen2Config", **{k: v for k, v in llama.items() if k != "head_dim"}),
                  True, "q/k/v biases"),
        "qwen3": ("Qwen3ForCausalLM", mk("Qwen3Config", **llama), True, "q/k RMSNorm per head"),
        "phi3": ("Phi3ForCausalLM", mk("Phi3Config", **{k: v for k, v in llama.items() if k != "head_dim"}),
                 True, "fused qkv and gate_up"),
        "phi": ("PhiForCausalLM", mk("PhiConfig", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=MAX_POS,
                                     tie_word_embeddings=False, rope_parameters=dict(
                                         rope_type="default", rope_theta=1e4, partial_rotary_factor=0.5)),
                True, "parallel attn+MLP, partial rotary, LayerNorm, biases"),
        "gemma": ("GemmaForCausalLM", mk("GemmaConfig", **{**llama, "tie_word_embeddings": True}), True,
                  "embedding scaled by sqrt(hidden), gelu-tanh GLU, (1+w) RMSNorm, tied"),
        "gemma2": ("Gemma2ForCausalLM", mk("Gemma2Config", **{**llama, "tie_word_embeddings": True},
                                           sliding_window=4096, query_pre_attn_scalar=16,
                                           attn_logit_softcapping=2.0, final_logit_softcapping=5.0), True,
                   "attention soft-capping 2 and final-logit soft-capping 5 (small enough to bite on O(1) scores)"),
        "stablelm": ("StableLmForCausalLM", mk("StableLmConfig", **{k: v for k, v in llama.items()
                                                                    if k != "head_dim"}),
                     True, "LayerNorm, partial rotary 0.25"),
        "gpt_neox": ("GPTNeoXForCausalLM", mk("GPTNeoXConfig", hidden_size=64, num_hidden_layers=2,
                                              num_attention_heads=4, intermediate_size=64,
                                              max_position_embeddings=MAX_POS, tie_word_embeddings=False),
                     True, "fused qkv, parallel residual, partial rotary"),
        "falcon": ("FalconForCausalLM", mk("FalconConfig", hidden_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, multi_query=True, parallel_attn=True,
                                           bias=False, new_decoder_architecture=False,
                                           max_position_embeddings=MAX_POS, tie_word_embeddings=True),
                   True, "multi-query, parallel attn, rotary"),
        "gpt_bigcode": ("GPTBigCodeForCausalLM", mk("GPTBigCodeConfig", n_embd=64, n_layer=2, n_head=4, n_inner=64,
                                                    n_positions=MAX_POS, multi_query=True,
                                                    tie_word_embeddings=True), True,
                        "multi-query, fused c_attn, learned positions"),
        "olmo": ("OlmoForCausalLM", mk("OlmoConfig", **{k: v for k, v in llama.items() if k != "head_dim"}),
                 True, "non-parametric LayerNorm"),
        "smollm3": ("SmolLM3ForCausalLM", mk("SmolLM3Config", **{k: v for k, v in llama.items() if k != "head_dim"},
                                             no_rope_layer_interval=2), True, "NoPE on every 2nd layer"),
        "mistral": ("MistralForCausalLM", mk("MistralConfig", **llama, sliding_window=16), True,
                    "sliding window 16"),
        "mpt": ("MptForCausalLM", mk("MptConfig", d_model=64, n_heads=4, n_layers=2, expansion_ratio=1,
                                     max_seq_len=MAX_POS, tie_word_embeddings=True), False, "ALiBi"),
        "bloom": ("BloomForCausalLM", mk("BloomConfig", hidden_size=64, n_layer=2, n_head=4,
                                         tie_word_embeddings=True), False, "ALiBi, embedding LayerNorm"),
        "opt": ("OPTForCausalLM", mk("OPTConfig", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     ffn_dim=64, max_position_embeddings=MAX_POS, word_embed_proj_dim=64,
                                     tie_word_embeddings=True), False, "learned positions from the mask"),
    }


# Which exporters each architecture gets. sdpa20 / sdpa23 only for llama3 (the opset variants of one form).
# Which exporters each architecture gets besides optimum (every architecture), keeping the committed size near
# 14 MB: optimum *is* the TorchScript exporter (it forces dynamo=False for torch >= 2.9) driven by its own
# wrapper, so a second TorchScript export of the same model is kept only where it differs (LLaMA; Mistral and
# Gemma 2 with the plain cache, see PLAIN_CACHE). Dynamo with eager attention where it is the dynamo default
# (MPT, Bloom and Gemma 2 have no sdpa attention in transformers) and for the window (Mistral); the other
# architectures' eager dynamo form is what tests/models/llm/ already covers.
PLAN_EXPORTERS = {"llama3": ["torchscript", "sdpa18", "sdpa20", "sdpa23", "eager18"],
                  "mistral": ["torchscript", "sdpa18", "eager18"],
                  "gemma2": ["torchscript", "eager18"], "bloom": ["eager18"], "mpt": ["eager18"]}
DEFAULT_EXPORTERS = ["sdpa18"]


# Seeds stepped by 10 from the base until greedy is varied (>= 12 distinct tokens in 40) with a top-1/top-2 gap
# >= 1e-3 along it (the first seeds gave Bloom 2 distinct tokens and OLMo a gap of 8e-4).
SEED_STEP = {"bloom": 40, "olmo": 20}


def plan(cfgs: dict) -> list[tuple[str, str, str]]:
    return [(f"{a}_{e}", a, e) for a in cfgs for e in PLAN_EXPORTERS.get(a, DEFAULT_EXPORTERS) + ["optimum"]]


def _runs_here(exporter: str) -> bool:
    """optimum needs transformers < 4.58 (its own venv); the other exporters are made with transformers 5."""
    import transformers
    old = int(transformers.__version__.split(".")[0]) < 5
    if exporter != "optimum":
        return not old
    try:
        import optimum.exporters.onnx  # noqa: F401
    except ImportError:
        return False
    return old


def _log(msg: str) -> None:
    print(f"[families] {msg}", flush=True)


def _init(model, seed: int) -> None:
    """LG._init_weights, except tied models' final norm (the class table there knows 5 classes): any
    parameter left is a norm weight (1 + 0.1 N) or bias (0.1 N)."""
    gen = torch.Generator().manual_seed(seed)
    try:
        LG._init_weights(model, seed)
        return
    except (KeyError, AssertionError):
        pass
    from transformers.pytorch_utils import Conv1D
    with torch.no_grad():
        done = set()
        for mod in model.modules():
            if isinstance(mod, torch.nn.Embedding) and id(mod.weight) not in done:
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen))
                done.add(id(mod.weight))
        for name, mod in model.named_modules():
            if isinstance(mod, (torch.nn.Linear, Conv1D)):
                if id(mod.weight) in done:
                    continue
                fan_in = mod.weight.shape[1] if isinstance(mod, torch.nn.Linear) else mod.weight.shape[0]
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen) / fan_in ** 0.5)
                done.add(id(mod.weight))
                if mod.bias is not None:
                    mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=gen))
                    done.add(id(mod.bias))
        for name, p in model.named_parameters():
            if id(p) in done:
                continue
            if name.endswith("weight"):
                base = 0.0 if "gemma" in type(model).__name__.lower() else 1.0  # Gemma norms use (1 + w)
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        if getattr(model.config, "tie_word_embeddings", False):
            # as LG._init_weights: random signs on the final norm's scale break the tied head's self-affinity
            # (Gemma's scale is 1 + w, so w becomes sign * (1 + 0.1 N) - 1)
            norms = [p for n, p in model.named_parameters() if ("norm" in n or "ln_f" in n) and n.endswith("weight")]
            if norms:
                final = norms[-1]
                signs = torch.where(torch.rand(final.shape, generator=gen) < 0.5, -1.0, 1.0)
                if "gemma" in type(model).__name__.lower():
                    final.copy_(signs * (1.0 + final) - 1.0)
                else:
                    final.mul_(signs)
        if "gemma" in type(model).__name__.lower():
            # Gemma multiplies the embedding by sqrt(hidden): N(0, 1/hidden) entries keep the residual stream
            # O(1) instead of letting the input token drown the layers (greedy would repeat one token)
            emb = model.get_input_embeddings().weight
            emb.mul_(model.config.hidden_size ** -0.5)


# Architectures with a sliding window in their config are exported with transformers' plain DynamicCache
# (the mask still applies the window): with the transformers-5 window cache (DynamicCache(config=...) makes
# DynamicSlidingWindowLayer) torch.export fails (a constraint violation on past_seq), TorchScript bakes the
# example's past length into the graph (onnxruntime's greedy departs from torch's), and tcc refuses the
# TorchScript form at import (issue 20: `[batch,4,seq,min(past_seq,4095)+seq]` against the mask).
PLAIN_CACHE = {"mistral", "gemma2"}


def _wrapper(base, pos_input: bool, plain_cache: bool):
    """LG._wrapper's past form; with plain_cache the DynamicCache is built without the config."""
    if not plain_cache:
        return LG._wrapper(base, "past", pos_input, base.config)
    from transformers import DynamicCache
    cls = type(base)

    def run(self, input_ids, attention_mask, position_ids, past):
        cache = DynamicCache([(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)])
        kw = {"position_ids": position_ids} if position_ids is not None else {}
        out = cls.forward(self, input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache,
                          use_cache=True, **kw)
        return (out.logits, *[t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)])

    if pos_input:
        def forward(self, input_ids, attention_mask, position_ids, *past):
            return run(self, input_ids, attention_mask, position_ids, past)
    else:
        def forward(self, input_ids, attention_mask, *past):
            return run(self, input_ids, attention_mask, None, past)
    wcls = type(f"{cls.__name__}_past", (cls,), {"forward": forward})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w = wcls(base.config)
    w.load_state_dict(base.state_dict(), strict=True)
    return w.eval()


def _spec(pos_input: bool) -> dict:
    return dict(vocab=VOCAB, max_pos=MAX_POS, pos_input=pos_input)


def _export(wrapper, spec: dict, exporter: str, path: str) -> onnx.ModelProto:
    """LG._export without its dim renaming for dynamo (raw user names kept)."""
    dynamo, opset, _ = EXPORTERS[exporter]
    if not dynamo:
        return LG._export(wrapper, spec, "past", "torchscript", opset, path)
    kv, hd = LG._kv_shape(wrapper)
    ins, outs = LG._io_names("past", spec["pos_input"])
    feeds = LG._make_inputs(np.random.default_rng(0), spec, kv, hd, "past", *LG.EXPORT_EXAMPLE_PAST)
    args = tuple(torch.from_numpy(feeds[n]) for n in ins)
    B = torch.export.Dim("batch", min=1, max=64)
    S = torch.export.Dim("seq", min=1, max=MAX_POS)
    P = torch.export.Dim("past_seq", min=0, max=MAX_POS)
    ds = ({0: B, 1: S}, {0: B, 1: torch.export.Dim.DYNAMIC}) + (({0: B, 1: S},) if spec["pos_input"] else ()) + \
        (tuple({0: B, 2: P} for _ in range(2 * LG.N_LAYERS)),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(wrapper, args, dynamo=True, opset_version=opset, optimize=True,
                                 input_names=ins, output_names=outs, dynamic_shapes=ds, verbose=False)
    return LG._finalize_and_save(prog.model_proto, path)


def _verify(name: str, path: str, wrapper, base, spec: dict) -> dict:
    kv, hd = LG._kv_shape(wrapper)
    ins, outs = LG._io_names("past", spec["pos_input"])
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    worst = 0.0
    for b, p, s in SHAPES:
        feeds = LG._make_inputs(rng, spec, kv, hd, "past", b, p, s)
        with torch.no_grad():
            ref = [r.numpy() for r in wrapper(*(torch.from_numpy(feeds[n]) for n in ins))]
        got = sess.run(outs, feeds)
        for o, g, r in zip(outs, got, ref):
            if g.shape != r.shape:
                raise AssertionError(f"{name} {(b, p, s)}: {o} shape {g.shape} != torch {r.shape}")
            d = float(np.abs(g.astype(np.float64) - r).max())
            if not d <= ATOL:
                raise AssertionError(f"{name} {(b, p, s)}: {o} max abs diff {d:.2e} > {ATOL}")
            worst = max(worst, d)
    tokens, logits = LG.ort_greedy(sess, spec, "past", kv, hd, PROMPT, N_NEW)
    want = LG.torch_greedy(base, spec, PROMPT, N_NEW)
    if tokens != want["tokens"]:
        raise AssertionError(f"{name}: onnxruntime greedy {tokens} != torch {want['tokens']}")
    gaps = [float(np.diff(np.sort(row)[-2:])[0]) for row in logits]
    return {"max_abs_diff_vs_torch": float(f"{worst:.3g}"), "greedy_tokens": tokens,
            "min_top1_top2_gap": float(f"{min(gaps):.3g}"), "distinct_tokens": len(set(tokens))}


def _export_optimum(base, path: str) -> onnx.ModelProto:
    """optimum's own export of a save_pretrained checkpoint (what `optimum-cli export onnx --task
    text-generation-with-past --model CKPT OUT` does), model.onnx kept byte for byte unless its IR is above
    10 or it has external data."""
    import shutil
    import tempfile
    from optimum.exporters.onnx import main_export
    with tempfile.TemporaryDirectory() as td:
        base.save_pretrained(os.path.join(td, "ckpt"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            main_export(os.path.join(td, "ckpt"), output=os.path.join(td, "onnx"),
                        task="text-generation-with-past", device="cpu")
        src = os.path.join(td, "onnx", "model.onnx")
        m = onnx.load(src)
        if m.ir_version > LG.MAX_IR_VERSION or os.path.exists(src + "_data"):
            return LG._finalize_and_save(m, path)
        shutil.copyfile(src, path)
        return m


def _ort_decoder(path: str):
    spec_ = importlib.util.spec_from_file_location("llm_oracle", os.path.join(HERE, "..", "..", "e2e",
                                                                              "llm_oracle.py"))
    mod = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(mod)
    return mod.OrtDecoder(path)


def _verify_optimum(name: str, path: str, base) -> dict:
    """ORT greedy through the past (tests/e2e/llm_oracle.py) against torch re-running the whole sequence:
    same tokens, last-position logits within 1e-4 at every step."""
    tokens, logits = _ort_decoder(path).greedy(PROMPT, N_NEW)
    seq, worst = list(PROMPT), 0.0
    with torch.no_grad():
        for step, tok in enumerate(tokens):
            ref = base(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1].numpy()
            worst = max(worst, float(np.abs(ref - logits[step]).max()))
            if int(ref.argmax()) != tok or not worst <= ATOL:
                raise AssertionError(f"{name}: step {step}: torch argmax {int(ref.argmax())} vs onnxruntime {tok}, "
                                     f"max abs logit diff {worst:.2e}")
            seq.append(tok)
    gaps = [float(np.diff(np.sort(row)[-2:])[0]) for row in logits]
    return {"max_abs_diff_vs_torch": float(f"{worst:.3g}"), "greedy_tokens": tokens,
            "min_top1_top2_gap": float(f"{min(gaps):.3g}"), "distinct_tokens": len(set(tokens))}


def build(name: str, arch: str, exporter: str, cfgs: dict, out_dir: str) -> dict:
    cls_name, cfg_fn, pos_input, notes = cfgs[arch]
    import transformers as T
    _, opset, attn = EXPORTERS[exporter]
    seed = 1000 + 17 * sorted(cfgs).index(arch) + SEED_STEP.get(arch, 0)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = getattr(T, cls_name)(cfg_fn(attn)).eval()
    _init(base, seed + 1)
    wrapper = _wrapper(base, pos_input, plain_cache=arch in PLAIN_CACHE)
    spec = _spec(pos_input)
    d = os.path.join(out_dir, name)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "model.onnx")
    t0 = time.time()
    if exporter == "optimum":
        model = _export_optimum(base, path)
        t_export = time.time() - t0
        ver = _verify_optimum(name, path, base)
    else:
        model = _export(wrapper, spec, exporter, path)
        t_export = time.time() - t0
        ver = _verify(name, path, wrapper, base, spec)
    base.config.architectures = [cls_name]
    base.config.save_pretrained(d)
    kv, hd = LG._kv_shape(wrapper)
    hist = collections.Counter(n.op_type for n in model.graph.node)
    meta = {
        "name": name, "arch": arch, "hf_class": cls_name, "exporter": exporter, "form": "past",
        "dynamo": EXPORTERS[exporter][0], "opset": opset, "attn_implementation": attn,
        "ir_version": model.ir_version, "bytes": os.path.getsize(path),
        "sha256": hashlib.sha256(open(path, "rb").read()).hexdigest(), "num_nodes": len(model.graph.node),
        "layers": LG.N_LAYERS, "kv_heads": kv, "head_dim": hd, "vocab": VOCAB, "position_ids_input": pos_input,
        "sliding_window": getattr(base.config, "sliding_window", None) if arch == "mistral" else None,
        "notes": notes, "prompt_ids": PROMPT, "verification": ver,
        "op_histogram": dict(sorted(hist.items(), key=lambda kv_: (-kv_[1], kv_[0]))),
        "versions": LG._versions(),
    }
    with open(os.path.join(d, "fixture.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1, ensure_ascii=False)
        f.write("\n")
    _log(f"{name}: {meta['bytes']:,} bytes, {meta['num_nodes']} nodes, export {t_export:.0f}s, "
         f"gap {ver['min_top1_top2_gap']}, {ver['distinct_tokens']} distinct tokens")
    return meta


def table(out_dir: str) -> str:
    """The fixture table of README.md, from the fixture.json files in out_dir."""
    rows = ["| name | bytes | exporter | opset | nodes | min top-1/top-2 gap | covers |", "|---|---:|---|---:|---:|---:|---|"]
    for name in sorted(os.listdir(out_dir)):
        p = os.path.join(out_dir, name, "fixture.json")
        if os.path.isfile(p):
            with open(p, encoding="utf-8") as f:
                m = json.load(f)
            rows.append(f"| `{name}` | {m['bytes']:,} | {m['exporter']} | {m['opset']} | {m['num_nodes']} | "
                        f"{m['verification']['min_top1_top2_gap']} | {m['hf_class']}: {m['notes']} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=HERE)
    ap.add_argument("--only", nargs="*", default=None, help="architectures or fixture names")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--table", action="store_true", help="print README.md's fixture table and exit")
    ap.add_argument("--keep-going", action="store_true", help="log an export failure and go on")
    ap.add_argument("--exporter", choices=sorted(EXPORTERS), help="this exporter for every architecture "
                    "instead of the plan (e.g. sdpa23 to try the opset-23 form everywhere)")
    a = ap.parse_args(argv)
    cfgs = _cfgs()
    full = plan(cfgs) if not a.exporter else [(f"{arch}_{a.exporter}", arch, a.exporter) for arch in cfgs]
    todo = [p for p in full if not a.only or p[0] in a.only or p[1] in a.only or p[2] in a.only]
    skipped = [p[0] for p in todo if not _runs_here(p[2])]
    if skipped:
        _log(f"not made in this environment (optimum: run under its venv, see README.md): {', '.join(skipped)}")
    todo = [p for p in todo if _runs_here(p[2])]
    if a.table:
        print(table(a.out))
        return 0
    if a.list:
        print("\n".join(f"{n:28} {arch:12} {e}" for n, arch, e in todo))
        return 0
    failed = []
    for name, arch, exporter in todo:
        try:
            build(name, arch, exporter, cfgs, a.out)
        except Exception as e:  # noqa: BLE001 - a generator run reports every failure, then fails
            msg = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            _log(f"{name}: FAILED {msg}")
            failed.append((name, msg))
            if not a.keep_going:
                raise
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(a.out) for f in fs
                if f in ("model.onnx", "config.json", "fixture.json"))
    _log(f"total {total:,} bytes in {a.out}")
    if total > MAX_TOTAL_BYTES:
        raise SystemExit(f"fixtures total {total} bytes > {MAX_TOTAL_BYTES}")
    for name, msg in failed:
        _log(f"not exported: {name}: {msg}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
