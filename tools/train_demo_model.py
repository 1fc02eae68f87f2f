#!/usr/bin/env python
"""Train tcc's bundled demo LLM (CPU only, fixed seeds) and export it the way users export.

    python tools/train_demo_model.py corpus   [--workdir W]             # text + tokenizer
    python tools/train_demo_model.py train    [--workdir W] --steps N   # resumable
    python tools/train_demo_model.py export   [--workdir W] [--out models/demo]
    python tools/train_demo_model.py all      [--workdir W] --steps N   # the three in order

Data: the reStructuredText sources of the Python 3.11 documentation as Debian's
`python3-doc` package ships them (/usr/share/doc/python3.11/html/_sources, PSF License
Version 2; code examples also Zero-Clause BSD). Markup roles are reduced to their text,
index/label directives dropped, the changelog left out. Documents are split, not lines: every
DOC_STRIDE-th document (sorted by path) is held out for validation.

Model: a LLaMA decoder (RMSNorm, rotary, grouped-query attention, SiLU MLP), tied
embeddings, ~5M parameters, with a byte-level BPE tokenizer trained here with HF
`tokenizers`. Training: AdamW, linear warm-up then cosine decay, 1 torch thread
(faster than 2 on this machine), checkpoints every --ckpt-every steps so a run can be
resumed (`train` picks up the newest checkpoint in W/ckpt).

Export: torch.onnx.export (TorchScript exporter, opset 17) of an optimum-style
decoder-with-past: input_ids, attention_mask, position_ids, past_key_values.{i}.key/value ->
logits, present.{i}.key/value. Written with the tokenizer files, a held-out text and
training figures to --out.

Requires torch==2.13.0 (CPU) and transformers; nothing is downloaded.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DOC_ROOT = "/usr/share/doc/python3.11/html/_sources"
SKIP_DOCS = ("whatsnew/changelog.rst.txt",)     # bpo-number lists, not prose
DOC_STRIDE = 40                                # every 40th document is validation
HELDOUT_COMMIT_BYTES = 96 * 1024               # the part of the validation text committed
CALIB_PIECES, CALIB_PIECE_BYTES = 16, 3000     # calibration text: pieces spread over the training text
SEED = 1234
VOCAB = 4096
SEQ = 256
CONFIG = dict(vocab_size=VOCAB, hidden_size=256, intermediate_size=704, num_hidden_layers=6,
              num_attention_heads=8, num_key_value_heads=2, head_dim=32, max_position_embeddings=1024,
              rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=0,
              eos_token_id=0, pad_token_id=0)
EOS = "<|endoftext|>"


# ---------------------------------------------------------------------------- corpus
_ROLE = re.compile(r":[\w-]+(?::[\w-]+)?:`([^`]*)`")
_LABEL = re.compile(r"^\.\. _[^:]+:\s*$")
_DROP_DIRECTIVES = ("index", "highlight", "module", "moduleauthor", "sectionauthor", "currentmodule",
                    "toctree", "testsetup", "testcleanup", "only", "raw", "include", "literalinclude",
                    "tabularcolumns", "impl-detail", "audit-event")


def _role_text(m: re.Match) -> str:
    inner = m.group(1).lstrip("!~")
    t = re.match(r"^(.*?)\s*<[^>]*>$", inner, re.S)
    return t.group(1) if t else inner


def clean_rst(text: str) -> str:
    """Reduce reST markup to readable text: roles become their text, label/index/toctree
    directives (and their indented bodies) and comments go, everything else stays."""
    out, skipping = [], False
    for line in text.splitlines():
        if skipping:
            if not line.strip() or line[:1] in " \t":
                continue
            skipping = False
        s = line.strip()
        if _LABEL.match(line):
            continue
        m = re.match(r"^\.\.\s+([\w-]+)::", line)
        if m and m.group(1) in _DROP_DIRECTIVES:
            skipping = True
            continue
        if line.startswith("..") and "::" not in line and not s.startswith(".. |"):
            skipping = True       # a reST comment block
            continue
        out.append(_ROLE.sub(_role_text, line).rstrip())
    text = "\n".join(out)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip() + "\n"


def documents() -> list[tuple[str, str]]:
    paths = sorted(glob.glob(os.path.join(DOC_ROOT, "**", "*.rst.txt"), recursive=True))
    if not paths:
        raise SystemExit(f"error: no documents under {DOC_ROOT}: apt-get install python3-doc")
    docs = []
    for p in paths:
        rel = os.path.relpath(p, DOC_ROOT)
        if rel in SKIP_DOCS:
            continue
        docs.append((rel, clean_rst(open(p, encoding="utf-8").read())))
    return docs


def split(docs):
    train = [d for i, d in enumerate(docs) if i % DOC_STRIDE != DOC_STRIDE // 2]
    val = [d for i, d in enumerate(docs) if i % DOC_STRIDE == DOC_STRIDE // 2]
    return train, val


def build_tokenizer(train_texts: list[str]):
    """Byte-level BPE (GPT-2 regex pre-tokenizer, so runs of spaces in code stay cheap);
    <|endoftext|> is id 0 and separates documents."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(train_texts, trainer)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    if tok.get_vocab_size() != VOCAB or tok.token_to_id(EOS) != 0:
        raise AssertionError(f"tokenizer: {tok.get_vocab_size()} tokens, eos id {tok.token_to_id(EOS)}")
    return tok


def tokenizer_config() -> dict:
    return {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOS, "eos_token": EOS,
            "unk_token": EOS, "pad_token": EOS, "add_bos_token": False, "add_prefix_space": False,
            "model_max_length": CONFIG["max_position_embeddings"], "clean_up_tokenization_spaces": False}


def cmd_corpus(w: str) -> None:
    import numpy as np
    t0 = time.time()
    docs = documents()
    train, val = split(docs)
    tok = build_tokenizer([t for _, t in train])
    os.makedirs(w, exist_ok=True)
    tok.save(os.path.join(w, "tokenizer.json"))
    eos = tok.token_to_id(EOS)
    stats = {}
    for name, part in (("train", train), ("val", val)):
        ids = []
        for _, text in part:
            ids.extend(tok.encode(text).ids)
            ids.append(eos)
        np.asarray(ids, dtype=np.uint16).tofile(os.path.join(w, f"{name}.bin"))
        text = "".join(t for _, t in part)
        with open(os.path.join(w, f"{name}.txt"), "w", encoding="utf-8") as f:
            f.write(text)
        stats[name] = {"documents": len(part), "bytes": len(text.encode()), "tokens": len(ids)}
    stats["val_documents"] = [p for p, _ in val]
    json.dump(stats, open(os.path.join(w, "corpus.json"), "w"), indent=1)
    print(f"corpus: train {stats['train']}  val {stats['val']}  ({time.time() - t0:.0f} s)")


# ----------------------------------------------------------------------------- model
def make_model():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(SEED)
    cfg = LlamaConfig(**CONFIG, attn_implementation="sdpa")
    return LlamaForCausalLM(cfg)


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def evaluate(model, data, batch: int, max_batches: int) -> float:
    """Mean next-token loss (nats) over non-overlapping SEQ windows of `data`."""
    import numpy as np
    import torch
    n = (len(data) - 1) // SEQ
    starts = np.arange(n) * SEQ
    if max_batches:
        starts = starts[: batch * max_batches]
    model.eval()
    tot, cnt = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(starts), batch):
            x = torch.from_numpy(np.stack([data[s:s + SEQ] for s in starts[i:i + batch]]).astype(np.int64))
            y = torch.from_numpy(np.stack([data[s + 1:s + SEQ + 1] for s in starts[i:i + batch]]).astype(np.int64))
            logits = model(input_ids=x).logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1), reduction="sum")
            tot += loss.item()
            cnt += y.numel()
    model.train()
    return tot / cnt


def cmd_train(w: str, steps: int, batch: int, peak_lr: float, warmup: int, ckpt_every: int, threads: int) -> None:
    import numpy as np
    import torch
    torch.set_num_threads(threads)
    train = np.fromfile(os.path.join(w, "train.bin"), dtype=np.uint16)
    val = np.fromfile(os.path.join(w, "val.bin"), dtype=np.uint16)
    model = make_model()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=peak_lr, betas=(0.9, 0.95), eps=1e-8)
    ck = os.path.join(w, "ckpt")
    os.makedirs(ck, exist_ok=True)
    log_path = os.path.join(w, "train_log.jsonl")
    start, elapsed = 0, 0.0
    existing = sorted(glob.glob(os.path.join(ck, "step_*.pt")))
    if existing:
        state = torch.load(existing[-1], weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start, elapsed = state["step"], state["elapsed"]
        print(f"resumed from {existing[-1]} (step {start})")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters; {len(train)} train tokens; {steps} steps of {batch}x{SEQ}")
    # One permutation of window starts per epoch, drawn from a generator seeded by the
    # epoch, so a resumed run sees exactly the batches an uninterrupted run would.
    n_windows = (len(train) - 1 - SEQ) // SEQ

    def batch_at(step: int):
        epoch, k = divmod(step * batch, n_windows)
        perm = np.random.default_rng(SEED + epoch).permutation(n_windows)
        offs = np.random.default_rng(SEED * 7 + epoch).integers(0, SEQ, n_windows)
        idx = [perm[(k + j) % n_windows] for j in range(batch)]
        starts = [i * SEQ + offs[i] for i in idx]
        x = np.stack([train[s:s + SEQ] for s in starts]).astype(np.int64)
        y = np.stack([train[s + 1:s + SEQ + 1] for s in starts]).astype(np.int64)
        return torch.from_numpy(x), torch.from_numpy(y)

    model.train()
    t_last, run_loss = time.time(), []
    for step in range(start, steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, peak_lr, warmup)
        x, y = batch_at(step)
        logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        run_loss.append(loss.item())
        done = step + 1
        if done % 50 == 0 or done == steps:
            now = time.time()
            elapsed += now - t_last
            t_last = now
            print(f"step {done}/{steps} loss {np.mean(run_loss):.4f} lr {g['lr']:.2e} "
                  f"{elapsed / 60:.1f} min", flush=True)
            run_loss = []
        if done % ckpt_every == 0 or done == steps:
            vl = evaluate(model, val, 16, 24)
            rec = {"step": done, "val_loss": round(vl, 4), "elapsed_s": round(elapsed, 1),
                   "tokens": done * batch * SEQ}
            with open(log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            print(f"  val loss {vl:.4f} (ppl {math.exp(vl):.1f})", flush=True)
            tmp = os.path.join(ck, f".step_{done:06d}.pt.tmp")
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": done, "elapsed": elapsed,
                        "hparams": {"steps": steps, "batch": batch, "lr": peak_lr, "warmup": warmup}}, tmp)
            os.replace(tmp, os.path.join(ck, f"step_{done:06d}.pt"))
            for old in sorted(glob.glob(os.path.join(ck, "step_*.pt")))[:-2]:
                os.remove(old)
            t_last = time.time()


# ---------------------------------------------------------------------------- export
def _with_past_wrapper(model):
    """Flat-signature decoder-with-past as optimum exports it: the DynamicCache is built
    inside forward from the flat past tensors."""
    import torch
    from transformers import DynamicCache

    class WithPast(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, position_ids, *past):
            pairs = [(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)]
            cache = DynamicCache(pairs, config=self.m.config)
            out = self.m(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
            return (out.logits, *[t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)])

    return WithPast(model).eval()


def _share_tied_embedding(m) -> None:
    """The exporter's constant folding stores the tied LM head as a second, transposed copy of the
    embedding (4 MiB); keep one copy and compute the other with a Transpose of it (tcc folds it)."""
    import numpy as np
    from onnx import helper, numpy_helper
    g = m.graph
    mats = {t.name: numpy_helper.to_array(t) for t in g.initializer if len(t.dims) == 2}
    for name, a in mats.items():
        twin = next((n for n, b in mats.items() if n != name and b.shape == a.shape[::-1]
                     and np.array_equal(b, a.T) and a.shape[0] > a.shape[1]), None)
        if twin is None:
            continue
        g.initializer.remove(next(t for t in g.initializer if t.name == twin))
        g.node.insert(0, helper.make_node("Transpose", [name], [twin], name="tied_lm_head_transpose",
                                          perm=[1, 0]))
        return


def load_trained(w: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    ck = sorted(glob.glob(os.path.join(w, "ckpt", "step_*.pt")))
    if not ck:
        raise SystemExit(f"error: no checkpoint in {w}/ckpt: run `train` first")
    state = torch.load(ck[-1], weights_only=False)
    model = LlamaForCausalLM(LlamaConfig(**CONFIG, attn_implementation="eager"))
    model.load_state_dict(state["model"])
    return model.eval(), state


def calibration_text(train: str) -> str:
    """CALIB_PIECES paragraphs-aligned pieces spread evenly over the training text (AWQ and
    SmoothQuant calibrate on training data; the held-out text stays unseen)."""
    pieces = []
    for i in range(CALIB_PIECES):
        at = train.find("\n\n", (len(train) * i) // CALIB_PIECES) + 2
        piece = train[at:at + CALIB_PIECE_BYTES]
        pieces.append(piece[: piece.rfind("\n\n") + 1])
    return "\n".join(pieces)


def cmd_export(w: str, out: str, hparams: dict) -> None:
    """hparams: the training run's (recorded in checkpoints; the command line's if a checkpoint lacks them)."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch
    model, state = load_trained(w)
    L, kv, hd = CONFIG["num_hidden_layers"], CONFIG["num_key_value_heads"], CONFIG["head_dim"]
    ins = ["input_ids", "attention_mask", "position_ids"] + \
        [f"past_key_values.{i}.{k}" for i in range(L) for k in ("key", "value")]
    outs = ["logits"] + [f"present.{i}.{k}" for i in range(L) for k in ("key", "value")]
    b, p, s = 2, 3, 4
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(0, VOCAB, (b, s)), "attention_mask": np.ones((b, p + s), np.int64),
             "position_ids": np.tile(np.arange(p, p + s), (b, 1))}
    for n in ins[3:]:
        feeds[n] = rng.standard_normal((b, kv, p, hd)).astype(np.float32)
    dyn = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "past_seq+seq"},
           "position_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}}
    dyn.update({n: {0: "batch", 2: "past_seq"} for n in ins[3:]})
    dyn.update({n: {0: "batch", 2: "past_seq+seq"} for n in outs[1:]})
    wrapper = _with_past_wrapper(model)
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as td:
        tmp = os.path.join(td, "model.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, tuple(torch.from_numpy(feeds[n]) for n in ins), tmp, dynamo=False,
                              opset_version=17, input_names=ins, output_names=outs, dynamic_axes=dyn,
                              do_constant_folding=True)
        m = onnx.load(tmp)
        m.ir_version = min(m.ir_version, 10)
        _share_tied_embedding(m)
        onnx.checker.check_model(m, full_check=True)
        # Verify against torch before anything is written to `out`.
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        got = sess.run(None, feeds)
        with torch.no_grad():
            want = wrapper(*(torch.from_numpy(feeds[n]) for n in ins))
        err = max(float(np.abs(g - t.numpy()).max()) for g, t in zip(got, want))
        if err > 1e-4:
            raise SystemExit(f"error: exported model differs from torch by {err:.2e}")
        final = os.path.join(td, "final.onnx")
        onnx.save_model(m, final)
        shutil.move(final, os.path.join(out, "model.onnx"))
    shutil.copy(os.path.join(w, "tokenizer.json"), os.path.join(out, "tokenizer.json"))
    json.dump(tokenizer_config(), open(os.path.join(out, "tokenizer_config.json"), "w"), indent=1)
    model.config.save_pretrained(out)
    val = open(os.path.join(w, "val.txt"), encoding="utf-8").read()
    cut = val[:HELDOUT_COMMIT_BYTES]
    cut = cut[: cut.rfind("\n\n") + 1]
    with open(os.path.join(out, "heldout.txt"), "w", encoding="utf-8") as f:
        f.write(cut)
    with open(os.path.join(out, "calib.txt"), "w", encoding="utf-8") as f:
        f.write(calibration_text(open(os.path.join(w, "train.txt"), encoding="utf-8").read()))
    log = [json.loads(l) for l in open(os.path.join(w, "train_log.jsonl"))]
    corpus = json.load(open(os.path.join(w, "corpus.json")))
    info = {"parameters": sum(p.numel() for p in model.parameters()), "steps": state["step"],
            "train_minutes": round(state["elapsed"] / 60, 1), "seq": SEQ, "seed": SEED,
            "val_loss": log[-1]["val_loss"], "corpus": {k: corpus[k] for k in ("train", "val")},
            "val_documents": corpus["val_documents"], "log": log, "export_max_abs_diff": err,
            "torch": torch.__version__, "hparams": state.get("hparams") or hparams}
    json.dump(info, open(os.path.join(out, "training.json"), "w"), indent=1)
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
        f.write(model_card(info, out))
    print(f"exported step {state['step']} to {out} (max |ort - torch| {err:.1e}, "
          f"{os.path.getsize(os.path.join(out, 'model.onnx')) / 2**20:.1f} MiB)")


def model_card(info: dict, out: str) -> str:
    c = CONFIG
    sizes = {f: os.path.getsize(os.path.join(out, f)) for f in sorted(os.listdir(out)) if f != "README.md"}
    rows = "\n".join(f"| {r['step']} | {r['tokens'] / 1e6:.2f}M | {r['val_loss']:.3f} | "
                     f"{math.exp(r['val_loss']):.1f} | {r['elapsed_s'] / 60:.0f} |" for r in info["log"])
    tr, va = info["corpus"]["train"], info["corpus"]["val"]
    hp = info["hparams"] or {"lr": float("nan"), "warmup": 0, "batch": 0}
    return f"""# tcc demo model

A small LLaMA-architecture decoder that tcc trained itself, so that `tcc demo` works offline and
`tcc eval` can show what quantization does to a real model. Generated by
`python tools/train_demo_model.py all` (this card too); do not edit by hand.

## Architecture
LLaMA (transformers `LlamaForCausalLM`): {c['num_hidden_layers']} layers, hidden {c['hidden_size']},
{c['num_attention_heads']} query heads and {c['num_key_value_heads']} key/value heads (grouped-query
attention) of dimension {c['head_dim']}, SiLU MLP of {c['intermediate_size']}, RMSNorm, rotary
embeddings (theta {c['rope_theta']:g}), tied input/output embeddings, context {c['max_position_embeddings']}.
{info['parameters'] / 1e6:.2f}M parameters. Tokenizer: byte-level BPE with {c['vocab_size']} tokens trained
with Hugging Face `tokenizers` on the training split (`<|endoftext|>` = 0 separates documents).

## Data
The reStructuredText sources of the Python 3.11 documentation as Debian's `python3-doc` package ships
them (`/usr/share/doc/python3.11/html/_sources`), markup roles reduced to their text, the changelog
left out. License: PSF License Version 2 (the documentation); code examples are also under the Zero-Clause
BSD license. Every {DOC_STRIDE}th document is held out: {va['documents']} documents, {va['bytes'] / 1e3:.0f} kB,
{va['tokens']} tokens. Training split: {tr['documents']} documents, {tr['bytes'] / 1e6:.1f} MB, {tr['tokens'] / 1e6:.2f}M tokens.
`heldout.txt` is the first {HELDOUT_COMMIT_BYTES // 1024} KiB of the held-out text; `calib.txt` is
{CALIB_PIECES} pieces of the training text (calibration for AWQ and SmoothQuant).

## Training
AdamW (betas 0.9/0.95, weight decay 0.1), peak learning rate {hp['lr']:g} after {hp['warmup']} warm-up
steps, then cosine decay to 10%, batches of {hp['batch']} x {SEQ} tokens, {info['steps']} steps, seed {SEED}, one CPU thread, torch {info['torch']}:
{info['train_minutes']:.0f} minutes. Validation loss (nats/token) on the held-out documents:

| step | tokens seen | val loss | val ppl | minutes |
|---:|---:|---:|---:|---:|
{rows}

## Export
`torch.onnx.export` (TorchScript exporter, opset 17) of an optimum-style decoder with past:
`input_ids`, `attention_mask`, `position_ids`, `past_key_values.{{i}}.key/value` -> `logits`,
`present.{{i}}.key/value`. ONNX Runtime matches torch to {info['export_max_abs_diff']:.1e} on the export check.

## Files
""" + "\n".join(f"- `{f}`: {n / 1024:.0f} KiB" for f, n in sizes.items()) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cmd", choices=["corpus", "train", "export", "all"])
    ap.add_argument("--workdir", default="build/demo-train")
    ap.add_argument("--out", default="models/demo")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--ckpt-every", type=int, default=250)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    if a.cmd in ("corpus", "all"):
        cmd_corpus(a.workdir)
    if a.cmd in ("train", "all"):
        cmd_train(a.workdir, a.steps, a.batch, a.lr, a.warmup, a.ckpt_every, a.threads)
    if a.cmd in ("export", "all"):
        cmd_export(a.workdir, a.out, {"steps": a.steps, "batch": a.batch, "lr": a.lr, "warmup": a.warmup})
    return 0


if __name__ == "__main__":
    sys.exit(main())
