"""ONNX Runtime as the oracle for generation: greedy decoding driven through the original ONNX.

A decoder with past is run step by step, feeding each step's present.* back as past_key_values.* (exactly
what optimum / onnxruntime-genai do); a decoder without past re-runs the whole sequence every step.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

_NP = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
       "tensor(float16)": np.float16}


class OrtDecoder:
    def __init__(self, path: str):
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.inputs = {i.name: i for i in self.sess.get_inputs()}
        self.outputs = [o.name for o in self.sess.get_outputs()]
        self.pasts = [n for n in self.inputs if n.startswith("past")]

    def _present_name(self, past: str) -> str:
        """present.N.key for past_key_values.N.key (optimum / transformers naming)."""
        for cand in (past.replace("past_key_values", "present"), past.replace("past_key_values", "present_key_values"),
                     past.replace("past", "present")):
            if cand in self.outputs:
                return cand
        raise KeyError(f"no present output for {past} among {self.outputs}")

    def _feeds(self, ids: list[int], past_len: int, past: dict) -> dict:
        s = len(ids)
        feeds = {"input_ids": np.array([ids], dtype=_NP[self.inputs["input_ids"].type])}
        if "attention_mask" in self.inputs:
            feeds["attention_mask"] = np.ones((1, past_len + s), _NP[self.inputs["attention_mask"].type])
        if "position_ids" in self.inputs:
            feeds["position_ids"] = np.arange(past_len, past_len + s, dtype=_NP[self.inputs["position_ids"].type])[None]
        if "cache_position" in self.inputs:
            feeds["cache_position"] = np.arange(past_len, past_len + s, dtype=_NP[self.inputs["cache_position"].type])
        feeds.update(past)
        return feeds

    def empty_past(self) -> dict:
        out = {}
        for n in self.pasts:
            shape = self.inputs[n].shape
            out[n] = np.zeros((1, shape[1], 0, shape[3]), _NP[self.inputs[n].type])
        return out

    def greedy(self, prompt: list[int], n_new: int) -> tuple[list[int], list[np.ndarray]]:
        """(generated ids, last-position logits before each generated token)."""
        tokens, logits = [], []
        if self.pasts:
            past, plen, new = self.empty_past(), 0, list(prompt)
            for _ in range(n_new):
                res = dict(zip(self.outputs, self.sess.run(None, self._feeds(new, plen, past))))
                past = {n: res[self._present_name(n)] for n in self.pasts}
                plen += len(new)
                row = res["logits"][0, -1]
                logits.append(row)
                new = [int(np.argmax(row))]
                tokens.append(new[0])
        else:
            seq = list(prompt)
            for _ in range(n_new):
                res = dict(zip(self.outputs, self.sess.run(None, self._feeds(seq, 0, {}))))
                row = res["logits"][0, -1]
                logits.append(row)
                seq.append(int(np.argmax(row)))
                tokens.append(seq[-1])
        return tokens, logits

    def all_logits(self, ids: list[int]) -> np.ndarray:
        """Logits [len(ids), vocab] of one run over the whole sequence."""
        res = dict(zip(self.outputs, self.sess.run(None, self._feeds(list(ids), 0, self.empty_past()))))
        return res["logits"][0]
