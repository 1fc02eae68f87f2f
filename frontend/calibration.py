"""Calibration data for the quantization passes (`tcc compile --calib FILE`).

Two kinds of file:
  - text (any other extension): for a language model, tokenized with the model's tokenizer.json (the
    one the artifact gets), then cut into `samples` windows of `seq_len` tokens spread evenly over the
    text (fewer when the text is short); each window is one run of the model from an empty KV cache;
  - `.npz`: one array per graph input, named like the input, whose first axis enumerates samples
    (array[i] is fed for sample i); at most `samples` are used.
The passes receive `Calibration.feeds(graph, bounds)`: a list of input dicts for the reference
interpreter. Errors name the file and what is wrong.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..errors import TccError


@dataclass
class Calibration:
    path: str
    samples: int = 16
    seq_len: int = 256
    tokenizer: str | None = None  # tokenizer.json (with tokenizer_config.json beside it, if any)

    def __post_init__(self):
        if not os.path.isfile(self.path):
            raise TccError(f"--calib {self.path}: no such file")
        if self.samples <= 0:
            raise TccError(f"--calib-samples must be positive, got {self.samples}")
        if self.seq_len <= 0:
            raise TccError(f"--calib-seq-len must be positive, got {self.seq_len}")

    def feeds(self, graph, bounds: dict[str, int]) -> list[dict[str, np.ndarray]]:
        if self.path.endswith(".npz"):
            return self._npz(graph)
        return self._text(graph, bounds)

    def _npz(self, graph) -> list[dict[str, np.ndarray]]:
        try:
            data = dict(np.load(self.path, allow_pickle=False))
        except (OSError, ValueError) as e:
            raise TccError(f"--calib {self.path}: not a readable .npz ({str(e).splitlines()[0]})") from None
        names = [v.name for v in graph.inputs]
        missing = [n for n in names if n not in data]
        if missing:
            raise TccError(f"--calib {self.path}: no array for input {missing[0]!r} (the model's inputs: "
                           f"{', '.join(names)}; arrays: {', '.join(sorted(data)) or 'none'})")
        counts = {n: data[n].shape[0] if data[n].ndim else 0 for n in names}
        n = min(counts.values())
        if n == 0:
            raise TccError(f"--calib {self.path}: arrays need a leading sample axis with at least one sample "
                           f"(got {', '.join(f'{k} {list(data[k].shape)}' for k in names)})")
        out = []
        for i in range(min(n, self.samples)):
            feed = {}
            for v in graph.inputs:
                arr = data[v.name][i]
                if arr.dtype != v.dtype.np:
                    raise TccError(f"--calib {self.path}: input {v.name!r} is {arr.dtype}, the model wants {v.dtype}")
                if arr.ndim != v.type.rank:
                    raise TccError(f"--calib {self.path}: sample of {v.name!r} has shape {list(arr.shape)}, the "
                                   f"model wants {v.type} (arrays are [samples, *input shape])")
                feed[v.name] = arr
            out.append(feed)
        return out

    def _text(self, graph, bounds: dict[str, int]) -> list[dict[str, np.ndarray]]:
        llm = graph.meta.get("llm") or {}
        ids_name = llm.get("input_ids")
        if not ids_name or not (llm.get("kv_cache") or llm.get("recompute")):
            raise TccError(f"--calib {self.path}: text calibration needs a language model (input_ids); give an "
                           ".npz of inputs for this model")
        if not self.tokenizer:
            raise TccError(f"--calib {self.path}: text calibration needs the model's tokenizer.json (beside the "
                           "ONNX file or --tokenizer)")
        from ..runtime.tokenizer import Tokenizer

        cfg = os.path.join(os.path.dirname(self.tokenizer), "tokenizer_config.json")
        tok = Tokenizer.from_files(self.tokenizer, cfg if os.path.isfile(cfg) else None)
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError as e:
            raise TccError(f"--calib {self.path}: not UTF-8 text (byte offset {e.start}); use an .npz for "
                           "binary data") from None
        ids = tok.encode(text, add_special_tokens=False)
        if not ids:
            raise TccError(f"--calib {self.path}: the text is empty")
        seq = min(self.seq_len, bounds.get(llm["seq"], self.seq_len), int(llm.get("capacity") or self.seq_len))
        windows = max(1, len(ids) // seq)
        starts = np.unique(np.linspace(0, (windows - 1) * seq, min(self.samples, windows)).astype(int))
        return [{ids_name: np.asarray(ids[s:s + seq], np.int64)[None, :]} for s in starts]
