"""Check optimum's exports against the torch models and write the fixtures.

Run inside the optimum virtualenv (see generate.sh):

    python finalize.py CKPT_DIR EXPORT_DIR DEST_DIR [arch ...]

For each arch (llama, opt, gpt2): takes EXPORT_DIR/<arch>/model.onnx as optimum wrote it
(`ir_version` is lowered to 10 and doc strings / node metadata_props are dropped only if
needed; the files are otherwise copied byte for byte), compares onnxruntime with the torch
model loaded from CKPT_DIR/<arch> (same weights), runs a greedy decode through the KV cache,
and writes DEST_DIR/<arch>/{model.onnx, config.json, generation_config.json, tokenizer.json,
tokenizer_config.json, [chat_template.jinja], fixture.json}. Any failed check raises.
"""

from __future__ import annotations

import collections
import hashlib
import importlib.metadata as md
import json
import os
import platform
import shutil
import sys

import numpy as np
import onnx
import onnxruntime as ort
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.cache_utils import DynamicCache

TOL = 1e-4
MIN_GAP = 1e-3
NEW_TOKENS = 40
CASES = [(1, 0, 1), (1, 0, 7), (1, 5, 1), (2, 3, 4), (1, 17, 1), (1, 30, 9)]
PROMPTS = [  # chosen so that all three models give varied continuations (no fixed point)
    "In Python, a function definition is an executable statement; its execution binds the name",
    "Tokens go in; logits come out.",
]
KEEP = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]
NAMES = {"llama": "optimum_llama", "opt": "optimum_opt", "gpt2": "optimum_gpt2"}
ORT_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64}


def versions() -> dict:
    pk = ["optimum", "optimum-onnx", "transformers", "torch", "onnx", "onnxruntime", "tokenizers",
          "huggingface-hub", "accelerate", "numpy"]
    v = {p: md.version(p) for p in pk}
    v["python"] = platform.python_version()
    return v


def fix_model(src: str, dst: str) -> list[str]:
    """Copy optimum's model.onnx; lower IR / strip doc strings only where needed."""
    m = onnx.load(src)
    changes = []
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer), "external data"
    if m.ir_version > 10:
        changes.append(f"ir_version {m.ir_version} -> 10")
        m.ir_version = 10
    doc = sum(len(n.doc_string) for n in m.graph.node)
    meta = sum(len(n.metadata_props) for n in m.graph.node)
    if doc or meta:
        changes.append(f"stripped {doc} doc_string chars, {meta} node metadata_props")
        for n in m.graph.node:
            n.doc_string = ""
            del n.metadata_props[:]
    if changes:
        onnx.save(m, dst)
    else:
        shutil.copyfile(src, dst)
    onnx.checker.check_model(onnx.load(dst), full_check=True)
    return changes


def io_sig(values) -> list[dict]:
    out = []
    for v in values:
        t = v.type.tensor_type
        out.append({
            "name": v.name,
            "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
            "shape": [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim],
        })
    return out


def sessions(path: str) -> dict[str, ort.InferenceSession]:
    out = {}
    for name, lvl in [("disabled", ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
                      ("all", ort.GraphOptimizationLevel.ORT_ENABLE_ALL)]:
        so = ort.SessionOptions()
        so.graph_optimization_level = lvl
        so.intra_op_num_threads = 1
        out[name] = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return out


def torch_forward(model, input_ids, attention_mask, position_ids, past):
    """past: list of (k, v) numpy arrays per layer (possibly with 0 past positions)."""
    cache = DynamicCache()
    if past and past[0][0].shape[2] > 0:
        cache = DynamicCache.from_legacy_cache(tuple((torch.from_numpy(k), torch.from_numpy(v)) for k, v in past))
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(input_ids),
            attention_mask=torch.from_numpy(attention_mask),
            position_ids=torch.from_numpy(position_ids),
            past_key_values=cache,
            use_cache=True,
        )
    presents = [(k.numpy(), v.numpy()) for k, v in out.past_key_values.to_legacy_cache()]
    return out.logits.numpy(), presents


def ort_feed(sess, input_ids, attention_mask, position_ids, past) -> dict:
    feed = {}
    for i in sess.get_inputs():
        if i.name == "input_ids":
            feed[i.name] = input_ids
        elif i.name == "attention_mask":
            feed[i.name] = attention_mask
        elif i.name == "position_ids":
            feed[i.name] = position_ids
        elif i.name.startswith("past_key_values."):
            _, layer, kind = i.name.split(".")
            feed[i.name] = past[int(layer)][0 if kind == "key" else 1]
        else:
            raise AssertionError(f"unexpected input {i.name}")
    return feed


def ort_forward(sess, input_ids, attention_mask, position_ids, past):
    names = [o.name for o in sess.get_outputs()]
    res = dict(zip(names, sess.run(None, ort_feed(sess, input_ids, attention_mask, position_ids, past))))
    n_layers = len(past)
    presents = [(res[f"present.{l}.key"], res[f"present.{l}.value"]) for l in range(n_layers)]
    return res["logits"], presents


def positions_from_mask(mask: np.ndarray, seq: int) -> np.ndarray:
    """What transformers' generate() does: cumsum(mask) - 1, 1 at padded slots; last `seq` columns."""
    pos = np.cumsum(mask, axis=1) - 1
    pos = np.where(mask == 0, 1, pos)
    return pos[:, -seq:].astype(np.int64)


def check_cases(model, sess: dict, cfg: dict, rng: np.random.Generator) -> list[dict]:
    L, kvh, hd, V = cfg["layers"], cfg["kv_heads"], cfg["head_dim"], cfg["vocab"]
    cases = [(b, p, s, None) for b, p, s in CASES] + [(2, 3, 4, "left_pad_row1_2")]
    results = []
    for b, p, s, pad in cases:
        ids = rng.integers(3, V, size=(b, s), dtype=np.int64)
        past = [(rng.standard_normal((b, kvh, p, hd), dtype=np.float32),
                 rng.standard_normal((b, kvh, p, hd), dtype=np.float32)) for _ in range(L)]
        mask = np.ones((b, p + s), dtype=np.int64)
        if pad:
            mask[1, :2] = 0
        pos = positions_from_mask(mask, s)
        t_logits, t_pres = torch_forward(model, ids, mask, pos, past)
        row = {"batch": b, "past_seq": p, "seq": s}
        if pad:
            row["attention_mask_row1"] = mask[1].tolist()
        for lvl, se in sess.items():
            o_logits, o_pres = ort_forward(se, ids, mask, pos, past)
            assert o_logits.shape == (b, s, V), o_logits.shape
            for (tk, tv), (ok, ov) in zip(t_pres, o_pres):
                assert ok.shape == (b, kvh, p + s, hd) and tk.shape == ok.shape, (ok.shape, tk.shape)
            dl = float(np.abs(o_logits - t_logits).max())
            dp = max(float(np.abs(a - c).max()) for t, o in zip(t_pres, o_pres) for a, c in zip(t, o))
            row[f"logits_max_abs_diff_{lvl}"] = dl
            row[f"present_max_abs_diff_{lvl}"] = dp
            if not (dl <= TOL and dp <= TOL):
                raise AssertionError(f"case {row}: ORT({lvl}) vs torch logits {dl:.3g} present {dp:.3g} > {TOL}")
        row["logits_max_abs"] = float(np.abs(t_logits).max())
        results.append(row)
        print(f"  case b={b} past={p} seq={s}{' ' + pad if pad else ''}: "
              f"logits diff {max(row['logits_max_abs_diff_disabled'], row['logits_max_abs_diff_all']):.2e}, "
              f"present diff {max(row['present_max_abs_diff_disabled'], row['present_max_abs_diff_all']):.2e}, "
              f"|logits| max {row['logits_max_abs']:.2f}")
    return results


def greedy(model, sess, tok, cfg: dict, prompt: str) -> dict:
    ids = tok(prompt)["input_ids"]
    n = len(ids)
    assert n + NEW_TOKENS <= cfg["max_position_embeddings"], n
    # torch: full recompute every step, no cache
    t_ids = list(ids)
    gaps = []
    for _ in range(NEW_TOKENS):
        x = torch.tensor([t_ids])
        with torch.no_grad():
            lg = model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False).logits[0, -1].numpy()
        top = np.sort(lg)[-2:]
        gaps.append(float(top[1] - top[0]))
        t_ids.append(int(lg.argmax()))
    # ORT: prompt with an empty cache, then one token at a time feeding present.* back
    L, kvh, hd = cfg["layers"], cfg["kv_heads"], cfg["head_dim"]
    past = [(np.zeros((1, kvh, 0, hd), np.float32), np.zeros((1, kvh, 0, hd), np.float32)) for _ in range(L)]
    o_ids = list(ids)
    step_in = np.array([ids], dtype=np.int64)
    max_diff = 0.0
    for step in range(NEW_TOKENS):
        total = len(o_ids)
        mask = np.ones((1, total), dtype=np.int64)
        pos = np.arange(total - step_in.shape[1], total, dtype=np.int64)[None]
        logits, past = ort_forward(sess, step_in, mask, pos, past)
        nxt = int(logits[0, -1].argmax())
        o_ids.append(nxt)
        step_in = np.array([[nxt]], dtype=np.int64)
        # compare this step's last-position logits with torch's recompute on the same prefix
        with torch.no_grad():
            x = torch.tensor([o_ids[:-1]])
            tl = model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False).logits[0, -1].numpy()
        max_diff = max(max_diff, float(np.abs(tl - logits[0, -1]).max()))
    new_t, new_o = t_ids[n:], o_ids[n:]
    if new_t != new_o:
        raise AssertionError(f"greedy mismatch for {prompt!r}:\n torch {new_t}\n ort   {new_o}")
    if min(gaps) < MIN_GAP:
        raise AssertionError(f"top1-top2 gap {min(gaps):.3g} < {MIN_GAP} for {prompt!r}")
    if max_diff > TOL:
        raise AssertionError(f"greedy-step logits diff {max_diff:.3g} > {TOL}")
    eos = cfg["eos_token_id"]
    return {
        "prompt": prompt,
        "prompt_ids": ids,
        "new_tokens": new_o,
        "text": tok.decode(new_o),
        "min_top1_top2_gap": min(gaps),
        "max_abs_logit_diff_vs_torch": max_diff,
        "distinct_new_tokens": len(set(new_o)),
        "eos_in_new_tokens": eos in new_o,
    }


def config_summary(arch: str, hf: dict) -> dict:
    if arch == "llama":
        return {
            "hidden": hf["hidden_size"], "layers": hf["num_hidden_layers"], "heads": hf["num_attention_heads"],
            "kv_heads": hf["num_key_value_heads"], "head_dim": hf["head_dim"], "intermediate": hf["intermediate_size"],
            "vocab": hf["vocab_size"], "max_position_embeddings": hf["max_position_embeddings"],
            "rope": "half", "rope_theta": hf["rope_theta"], "norm": "rmsnorm", "norm_eps": hf["rms_norm_eps"],
            "activation": "silu (SwiGLU)", "positions": "rotary", "tied": hf["tie_word_embeddings"],
            "bias": False, "bos_token_id": hf["bos_token_id"], "eos_token_id": hf["eos_token_id"],
            "pad_token_id": hf.get("pad_token_id"),
        }
    if arch == "opt":
        return {
            "hidden": hf["hidden_size"], "layers": hf["num_hidden_layers"], "heads": hf["num_attention_heads"],
            "kv_heads": hf["num_attention_heads"], "head_dim": hf["hidden_size"] // hf["num_attention_heads"],
            "intermediate": hf["ffn_dim"], "vocab": hf["vocab_size"],
            "max_position_embeddings": hf["max_position_embeddings"], "rope": "none",
            "positions": "learned, table has max_position_embeddings+2 rows, index = position_ids + 2",
            "norm": "layernorm (pre-LN)", "norm_eps": 1e-5, "activation": hf["activation_function"],
            "tied": hf.get("tie_word_embeddings", True), "bias": True,
            "bos_token_id": hf["bos_token_id"], "eos_token_id": hf["eos_token_id"], "pad_token_id": hf["pad_token_id"],
        }
    if arch == "gpt2":
        return {
            "hidden": hf["n_embd"], "layers": hf["n_layer"], "heads": hf["n_head"], "kv_heads": hf["n_head"],
            "head_dim": hf["n_embd"] // hf["n_head"], "intermediate": hf["n_inner"], "vocab": hf["vocab_size"],
            "max_position_embeddings": hf["n_positions"], "rope": "none",
            "positions": "learned, index = position_ids", "norm": "layernorm (pre-LN)",
            "norm_eps": hf["layer_norm_epsilon"], "activation": hf["activation_function"] + " (tanh approximation)",
            "tied": hf.get("tie_word_embeddings", True), "bias": True,
            "bos_token_id": hf["bos_token_id"], "eos_token_id": hf["eos_token_id"], "pad_token_id": hf.get("pad_token_id"),
        }
    raise ValueError(arch)


def dumps(o, ind: int = 0) -> str:
    """JSON with one key per line but lists of scalars kept on one line."""
    pad = " " * (ind + 1)
    if isinstance(o, dict):
        body = ",\n".join(f"{pad}{json.dumps(k)}: {dumps(v, ind + 1)}" for k, v in o.items())
        return "{\n" + body + "\n" + " " * ind + "}" if o else "{}"
    if isinstance(o, list) and any(isinstance(x, (dict, list)) for x in o):
        return "[\n" + ",\n".join(pad + dumps(x, ind + 1) for x in o) + "\n" + " " * ind + "]"
    return json.dumps(o, ensure_ascii=False)


def finalize(arch: str, ckpt: str, export: str, dest: str) -> None:
    print(f"== {arch}")
    os.makedirs(dest, exist_ok=True)
    produced = sorted(os.listdir(export))
    model_path = os.path.join(dest, "model.onnx")
    changes = fix_model(os.path.join(export, "model.onnx"), model_path)
    kept = ["model.onnx"]
    for f in KEEP:
        if os.path.exists(os.path.join(export, f)):
            shutil.copyfile(os.path.join(export, f), os.path.join(dest, f))
            kept.append(f)
    hf = json.load(open(os.path.join(dest, "config.json")))
    cfg = config_summary(arch, hf)

    m = onnx.load(model_path)
    data = open(model_path, "rb").read()
    hist = collections.Counter(n.op_type for n in m.graph.node)
    inputs, outputs = io_sig(m.graph.input), io_sig(m.graph.output)
    assert not any(n.op_type in ("If", "Loop", "Scan") for n in m.graph.node), "control flow in graph"

    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(dest)
    sess = sessions(model_path)
    rng = np.random.default_rng({"llama": 11, "opt": 12, "gpt2": 13}[arch])
    cases = check_cases(model, sess, cfg, rng)
    greedy_runs = []
    for p in PROMPTS:
        g = greedy(model, sess["all"], tok, {**cfg, "eos_token_id": hf["eos_token_id"]}, p)
        print(f"  greedy {len(g['prompt_ids'])}+{NEW_TOKENS}: min gap {g['min_top1_top2_gap']:.3f}, "
              f"logit diff {g['max_abs_logit_diff_vs_torch']:.2e}, {g['distinct_new_tokens']} distinct: {g['new_tokens']}")
        greedy_runs.append(g)

    ver = versions()
    fixture = {
        "name": NAMES[arch],
        "arch": arch,
        "form": "past",
        "file": "model.onnx",
        "exporter": f"optimum {ver['optimum']} / optimum-onnx {ver['optimum-onnx']} (torch.onnx TorchScript exporter, dynamo=False)",
        "export_command": "optimum-cli export onnx --task text-generation-with-past --model <checkpoint dir> <out dir>",
        "optimum_wrote": produced,
        "kept": kept,
        "post_export_changes": changes or ["none: model.onnx is byte-identical to optimum's output"],
        "opset": {(o.domain or "ai.onnx"): o.version for o in m.opset_import},
        "ir_version": m.ir_version,
        "producer": f"{m.producer_name} {m.producer_version}",
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "initializer_bytes": sum(len(t.raw_data) for t in m.graph.initializer),
        "external_data": False,
        "inputs": inputs,
        "outputs": outputs,
        "node_count": len(m.graph.node),
        "op_histogram": dict(sorted(hist.items())),
        "has_if_node": False,
        "use_cache_branch_input": any(i["name"] == "use_cache_branch" for i in inputs),
        "config": cfg,
        "expected_attention": cfg["layers"],
        "tokenizer": {
            "class": type(tok).__name__ + " (transformers " + ver["transformers"] + ")",
            "vocab_size": len(tok),
            "bos": [tok.bos_token, tok.bos_token_id],
            "eos": [tok.eos_token, tok.eos_token_id],
            "pad": [tok.pad_token, tok.pad_token_id],
            "unk": [tok.unk_token, tok.unk_token_id],
            "prepends_bos": tok("a")["input_ids"][0] == tok.bos_token_id,
        },
        "verification": {
            "reference": "transformers AutoModelForCausalLM (default attn_implementation, fp32) on the same checkpoint",
            "onnxruntime_graph_optimization": ["ORT_DISABLE_ALL", "ORT_ENABLE_ALL"],
            "tolerance": TOL,
            "past_tensors": "N(0,1) random; attention_mask all ones except the left-padded case; "
                            "position_ids = cumsum(mask)-1 (padded slots 1), last seq columns",
            "cases": cases,
            "max_logits_abs_diff": max(max(c["logits_max_abs_diff_disabled"], c["logits_max_abs_diff_all"]) for c in cases),
            "max_present_abs_diff": max(max(c["present_max_abs_diff_disabled"], c["present_max_abs_diff_all"]) for c in cases),
        },
        "greedy": {
            "new_tokens": NEW_TOKENS,
            "method": "ORT (ORT_ENABLE_ALL): whole prompt with empty past (past_sequence_length 0), then one token "
                      "per step feeding present.* back as past_key_values.*; attention_mask = ones(total), "
                      "position_ids = arange(total - seq, total). Reference: torch full recompute without cache.",
            "min_gap_required": MIN_GAP,
            "runs": greedy_runs,
        },
        "versions": ver,
    }
    with open(os.path.join(dest, "fixture.json"), "w") as f:
        f.write(dumps(fixture) + "\n")
    print(f"  wrote {dest} ({len(data)} bytes model.onnx, sha256 {fixture['sha256'][:16]}…)")


def main() -> None:
    ckpt, export, dest = sys.argv[1:4]
    archs = sys.argv[4:] or ["llama", "opt", "gpt2"]
    torch.manual_seed(0)
    for arch in archs:
        finalize(arch, os.path.join(ckpt, arch), os.path.join(export, arch), os.path.join(dest, arch))


if __name__ == "__main__":
    main()
