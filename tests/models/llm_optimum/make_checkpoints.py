"""Build tiny random-weight Hugging Face checkpoints (LLaMA, OPT, GPT-2) with trained tokenizers.

Run inside the optimum virtualenv (transformers < 4.58, see generate.sh):

    python make_checkpoints.py OUT_DIR

writes OUT_DIR/{llama,opt,gpt2}/ as ordinary `save_pretrained` checkpoints (config.json,
generation_config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
special_tokens_map.json) that `optimum-cli export onnx --model OUT_DIR/<arch>` can read.
Nothing is downloaded: configs are written in code, tokenizers are trained with the HF
`tokenizers` library on text that ships with Python (pydoc_data/topics.py), and the weights
come from a fixed seed.
"""

from __future__ import annotations

import collections
import json
import os
import sys

import pydoc_data.topics
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

VOCAB = 384
SEED = 0

LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)


def corpus() -> list[str]:
    """English text that every CPython install has (deterministic across machines)."""
    lines: list[str] = []
    for key in sorted(pydoc_data.topics.topics):
        lines.extend(l for l in pydoc_data.topics.topics[key].splitlines() if l.strip())
    return lines


# ---------------------------------------------------------------- tokenizers


def llama_tokenizer() -> Tokenizer:
    """LLaMA-2-style SentencePiece BPE: <unk>=0 <s>=1 </s>=2, <0x00>..<0xFF>=3..258, then pieces.

    Same pipeline as the tokenizer.json of meta-llama/Llama-2-7b-hf: normalizer Prepend('▁') +
    Replace(' ', '▁'), no pre-tokenizer, BPE with byte_fallback and fuse_unk, decoder
    Replace('▁', ' ') + ByteFallback + Fuse + Strip(1 leading space), post-processor '<s> $A'.
    """
    n_fixed = 3 + 256
    # Train pieces on words split at '▁' (SentencePiece never merges across a word start).
    t = Tokenizer(models.BPE())
    t.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    t.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    # The trainer's own limit_alphabet breaks ties between equally frequent characters in hash
    # order (the vocabulary changed from run to run), so pick the alphabet here: the 56 most
    # frequent characters, ties by code point. The rest are left to byte fallback.
    counts = collections.Counter("".join("▁" + l.replace(" ", "▁") for l in corpus()))
    alphabet = [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:56]]
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - n_fixed, limit_alphabet=len(alphabet), initial_alphabet=alphabet, show_progress=False
    )
    t.train_from_iterator(corpus(), trainer=trainer)
    trained = json.loads(t.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = 3 + b
    for tok, i in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        vocab[tok] = n_fixed + i
    assert len(vocab) == VOCAB, len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", 1)]
    )
    return tok


def byte_level_tokenizer(specials_first: list[str], specials_last: list[str], bos: str | None) -> Tokenizer:
    """GPT-2 byte-level BPE (256 byte symbols + merges), trained to VOCAB entries in total."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - len(specials_last),
        special_tokens=specials_first,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    if specials_last:
        tok.add_special_tokens(specials_last)
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    if bos is None:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    else:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0",
            pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
            special_tokens=[(bos, tok.token_to_id(bos))],
        )
    return tok


def save_tokenizer(tok: Tokenizer, out: str, cfg: dict) -> None:
    tok.save(os.path.join(out, "tokenizer.json"))
    cfg = {"model_max_length": 128, "clean_up_tokenization_spaces": False, **cfg}
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)
        f.write("\n")
    special = {k: cfg[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token") if cfg.get(k)}
    with open(os.path.join(out, "special_tokens_map.json"), "w") as f:
        json.dump(special, f, indent=2)
        f.write("\n")


# ---------------------------------------------------------------- weights


@torch.no_grad()
def init_weights(model: torch.nn.Module, seed: int) -> None:
    """Activations O(1), logits well spread: embeddings N(0,1), Linear/Conv1D N(0,1/fan_in),
    biases 0.1·N(0,1), norm weights 1+0.1·N(0,1), norm biases 0.1·N(0,1).

    Tied models (OPT, GPT-2): the token embedding is also the lm_head, so it follows the Linear
    rule, N(0, 1/hidden). With N(0,1) there, the final hidden state is dominated by the current
    token's own embedding and greedy decoding just repeats the last token (tried: 1-2 distinct
    tokens in 40); with N(0,1/hidden) logits are O(1-5) and the continuations are diverse.
    Learned position embeddings stay N(0,1)."""
    g = torch.Generator().manual_seed(seed)
    tied = model.get_input_embeddings() if model.config.tie_word_embeddings else None
    tied_out = model.get_output_embeddings() if tied is not None else None

    def randn(t: torch.Tensor) -> torch.Tensor:
        return torch.randn(t.shape, generator=g, dtype=t.dtype)

    for name, mod in model.named_modules():
        cls = type(mod).__name__
        if mod is tied:
            mod.weight.copy_(randn(mod.weight) / mod.weight.shape[1] ** 0.5)
        elif isinstance(mod, torch.nn.Embedding):
            mod.weight.copy_(randn(mod.weight))
        elif mod is tied_out:
            continue  # same Parameter as the tied input embedding
        elif isinstance(mod, torch.nn.Linear):
            mod.weight.copy_(randn(mod.weight) / mod.in_features**0.5)
            if mod.bias is not None:
                mod.bias.copy_(0.1 * randn(mod.bias))
        elif cls == "Conv1D":  # GPT-2: weight [in, out]
            mod.weight.copy_(randn(mod.weight) / mod.weight.shape[0] ** 0.5)
            mod.bias.copy_(0.1 * randn(mod.bias))
        elif isinstance(mod, torch.nn.LayerNorm) or "RMSNorm" in cls:
            mod.weight.copy_(1 + 0.1 * randn(mod.weight))
            if getattr(mod, "bias", None) is not None:
                mod.bias.copy_(0.1 * randn(mod.bias))
    if model.config.tie_word_embeddings:
        model.tie_weights()


def build(arch: str, out: str) -> None:
    from transformers import (
        GenerationConfig,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        OPTConfig,
        OPTForCausalLM,
    )

    os.makedirs(out, exist_ok=True)
    if arch == "llama":
        cfg = LlamaConfig(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
            rope_theta=10000.0, rms_norm_eps=1e-6, hidden_act="silu", tie_word_embeddings=False,
            bos_token_id=1, eos_token_id=2, pad_token_id=None, attention_bias=False, mlp_bias=False,
            torch_dtype="float32",
        )
        model = LlamaForCausalLM(cfg)
        tok = llama_tokenizer()
        tok_cfg = {
            "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
            "unk_token": "<unk>", "pad_token": None, "add_bos_token": True, "add_eos_token": False,
            "legacy": True, "chat_template": LLAMA2_CHAT_TEMPLATE,
        }
    elif arch == "opt":
        cfg = OPTConfig(
            vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4,
            max_position_embeddings=128, word_embed_proj_dim=64, do_layer_norm_before=True,
            activation_function="relu", dropout=0.0, attention_dropout=0.0, layerdrop=0.0,
            enable_bias=True, layer_norm_elementwise_affine=True, tie_word_embeddings=True,
            pad_token_id=1, bos_token_id=2, eos_token_id=2, torch_dtype="float32",
        )
        model = OPTForCausalLM(cfg)
        # facebook/opt-*: <s>=0 <pad>=1 </s>=2 <unk>=3; '</s>' is bos, eos and unk, and is prepended.
        tok = byte_level_tokenizer(["<s>", "<pad>", "</s>", "<unk>"], [], bos="</s>")
        tok_cfg = {
            "tokenizer_class": "GPT2Tokenizer", "bos_token": "</s>", "eos_token": "</s>",
            "unk_token": "</s>", "pad_token": "<pad>", "add_bos_token": True, "add_prefix_space": False,
            "errors": "replace",
        }
    elif arch == "gpt2":
        cfg = GPT2Config(
            vocab_size=VOCAB, n_positions=128, n_embd=64, n_layer=2, n_head=4, n_inner=128,
            activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            layer_norm_epsilon=1e-5, bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1,
            tie_word_embeddings=True, torch_dtype="float32",
        )
        model = GPT2LMHeadModel(cfg)
        # gpt2: byte-level BPE, '<|endoftext|>' is the last id and is bos, eos and unk; nothing prepended.
        tok = byte_level_tokenizer([], ["<|endoftext|>"], bos=None)
        tok_cfg = {
            "tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>", "add_prefix_space": False, "errors": "replace",
        }
    else:
        raise ValueError(arch)
    assert tok.get_vocab_size() == VOCAB
    init_weights(model, SEED + {"llama": 1, "opt": 2, "gpt2": 3}[arch])
    model.eval()
    model.generation_config = GenerationConfig(
        bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(out, safe_serialization=True)
    save_tokenizer(tok, out, tok_cfg)


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else "checkpoints"
    archs = sys.argv[2:] or ["llama", "opt", "gpt2"]
    for arch in archs:
        build(arch, os.path.join(out, arch))
        print(f"wrote {os.path.join(out, arch)}")


if __name__ == "__main__":
    main()
