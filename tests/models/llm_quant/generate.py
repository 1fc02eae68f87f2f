#!/usr/bin/env python
"""Generate the quantization test decoder: a small LLaMA with planted activation outlier channels.

    python tests/models/llm_quant/generate.py        (needs torch==2.13.0 + transformers; CPU, ~1 min)

Writes tests/models/llm_quant/llama_outliers/: model.onnx (decoder-with-past, dynamo exporter, opset 18),
config.json, tokenizer files (copied from tests/models/llm/llama_past_dynamo, same vocabulary) and
fixture.json.

The model: LLaMA, hidden 64, 2 layers, 4 query / 2 KV heads of 16, SwiGLU intermediate 192, vocabulary
384, random weights initialised as the other LLM fixtures (tests/models/llm/generate.py: _init_weights).
Then outliers are planted without changing the function: in each layer, OUTLIER channels of the input
norm and of the post-attention norm are multiplied by SCALE and the matching input columns of q/k/v
(resp. gate/up) divided by SCALE; and OUTLIER rows of up_proj are multiplied by SCALE_UP with the
matching down_proj input columns divided. Real LLMs have such channels (a few hidden dimensions with
10-100x larger activations); they are what AWQ and SmoothQuant exist for: per-tensor int8 activations
lose the small channels, and int4 weight groups lose the shrunken columns. The ONNX model is verified
against torch (max abs logit difference <= 1e-4) at several (past, seq) shapes.
"""
from __future__ import annotations

import json
import os
import shutil
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "llm"))
import generate as base  # noqa: E402  (tests/models/llm/generate.py)

NAME = "llama_outliers"
SEED = 7000
OUTLIERS = {0: [3, 17, 40], 1: [9, 33, 58]}  # hidden channels per layer
OUTLIERS_UP = {0: [5, 100, 150], 1: [20, 77, 181]}  # intermediate channels per layer
SCALE, SCALE_UP = 30.0, 12.0
TOKENIZER_FROM = os.path.join(HERE, "..", "llm", "llama_past_dynamo")


def spec() -> dict:
    import transformers as T

    def cfg(attn):
        return T.LlamaConfig(hidden_size=64, num_hidden_layers=base.N_LAYERS, num_attention_heads=4,
                             num_key_value_heads=2, head_dim=16, intermediate_size=192, vocab_size=384,
                             max_position_embeddings=128, rope_theta=1e4, rms_norm_eps=1e-6, hidden_act="silu",
                             tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=None,
                             use_cache=True, attn_implementation=attn)
    return dict(cls=T.LlamaForCausalLM, cfg=cfg, seed=SEED, vocab=384, max_pos=128, bos=1, eos=2, pad=None,
                pos_input=True)


def plant_outliers(model) -> None:
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            ch = OUTLIERS[i]
            layer.input_layernorm.weight[ch] *= SCALE
            for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                lin.weight[:, ch] /= SCALE
            layer.post_attention_layernorm.weight[ch] *= SCALE
            for lin in (layer.mlp.gate_proj, layer.mlp.up_proj):
                lin.weight[:, ch] /= SCALE
            up = OUTLIERS_UP[i]
            layer.mlp.up_proj.weight[up, :] *= SCALE_UP
            layer.mlp.down_proj.weight[:, up] /= SCALE_UP


def main() -> int:
    torch.set_num_threads(1)
    sp = spec()
    out = os.path.join(HERE, NAME)
    os.makedirs(out, exist_ok=True)
    model = base._build_base(sp, SEED)
    plant_outliers(model)
    wrapper = base._wrapper(model, "past", True, model.config)
    path = os.path.join(out, "model.onnx")
    base.MAX_MODEL_BYTES = 1_000_000
    onnx_model = base._export(wrapper, sp, "past", "dynamo", 18, path)
    sessions = base._sessions(path)
    record = base._verify_shapes(NAME, sessions, wrapper, sp, "past")
    model.config.save_pretrained(out)
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(os.path.join(TOKENIZER_FROM, f), os.path.join(out, f))
    meta = {"name": NAME, "arch": "llama", "form": "past", "exporter": "dynamo", "opset": 18,
            "bytes": os.path.getsize(path), "num_nodes": len(onnx_model.graph.node),
            "outliers": {"hidden": OUTLIERS, "intermediate": OUTLIERS_UP, "scale": SCALE, "scale_up": SCALE_UP},
            "config": {"layers": base.N_LAYERS, "hidden": 64, "intermediate": 192, "vocab": 384, "rope": "half"},
            "verification": record, "versions": base._versions()}
    with open(os.path.join(out, "fixture.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(f"wrote {out} ({meta['bytes']} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
