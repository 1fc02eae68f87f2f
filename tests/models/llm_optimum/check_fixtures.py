"""Re-check the committed optimum fixtures with onnxruntime alone (no torch, no optimum).

    python3 tests/models/llm_optimum/check_fixtures.py [arch ...]

For each <arch>/: the sha256 and size match fixture.json, the model has no external data and
an IR version ≤ 10, the I/O signature matches fixture.json, `tokenizers` reproduces the recorded
prompt ids from tokenizer.json, and a greedy decode through onnxruntime (whole prompt with an
empty past, then one token per step feeding present.* back) reproduces the recorded 40 tokens.
Runs in the project's main environment (onnxruntime, onnx, numpy, tokenizers).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))


def run(sess, names, ids, mask, pos, past):
    feed = {}
    for i in sess.get_inputs():
        if i.name == "input_ids":
            feed[i.name] = ids
        elif i.name == "attention_mask":
            feed[i.name] = mask
        elif i.name == "position_ids":
            feed[i.name] = pos
        else:
            feed[i.name] = past[i.name.replace("past_key_values.", "present.")]
    out = dict(zip(names, sess.run(None, feed)))
    return out["logits"], {k: v for k, v in out.items() if k.startswith("present.")}


def check(arch: str) -> None:
    d = os.path.join(HERE, arch)
    fx = json.load(open(os.path.join(d, "fixture.json")))
    path = os.path.join(d, "model.onnx")
    data = open(path, "rb").read()
    assert len(data) == fx["bytes"] and hashlib.sha256(data).hexdigest() == fx["sha256"], "model.onnx changed"
    m = onnx.load(path)
    assert m.ir_version <= 10 and m.ir_version == fx["ir_version"]
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == [i["name"] for i in fx["inputs"]]
    names = [o.name for o in sess.get_outputs()]
    assert names == [o["name"] for o in fx["outputs"]]
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    cfg = fx["config"]
    for g in fx["greedy"]["runs"]:
        ids = tok.encode(g["prompt"]).ids
        assert ids == g["prompt_ids"], (arch, ids, g["prompt_ids"])
        past = {}
        for i in fx["inputs"]:
            if i["name"].startswith("past_key_values."):
                past[i["name"].replace("past_key_values.", "present.")] = np.zeros(
                    (1, cfg["kv_heads"], 0, cfg["head_dim"]), np.float32)
        seq = list(ids)
        step = np.array([ids], np.int64)
        for _ in range(fx["greedy"]["new_tokens"]):
            n = len(seq)
            logits, past = run(sess, names, step, np.ones((1, n), np.int64),
                               np.arange(n - step.shape[1], n, dtype=np.int64)[None], past)
            seq.append(int(logits[0, -1].argmax()))
            step = np.array([[seq[-1]]], np.int64)
        assert seq[len(ids):] == g["new_tokens"], (arch, seq[len(ids):], g["new_tokens"])
    print(f"{fx['name']}: ok ({len(data)} bytes, {len(fx['greedy']['runs'])} greedy references reproduced)")


if __name__ == "__main__":
    for a in sys.argv[1:] or ["llama", "opt", "gpt2"]:
        check(a)
