"""Perplexity and bits per byte of a compiled language model on a text (`tcc eval`).

The text is tokenized with the artifact's tokenizer (special tokens as the tokenizer adds them, so a
BOS starts the text when the model expects one) and scored with sliding windows, as the Hugging Face
perplexity recipe does: each window holds at most `context` tokens and starts `stride` tokens after the
previous one (one earlier when that would leave a gap: the token before a target must be in its window);
it scores only the tokens no earlier window scored, so every token after the first is scored exactly
once, with at least `context - stride` tokens of history once the first window is past.
`stride == context` gives windows that overlap by one token (fastest, least history).

Each window runs from an empty KV cache (`Generator.logits_of`: prefill chunks with logits for every
position). Negative log-likelihoods are summed in float64 from a log-softmax of the float32 logits.
Bits per byte divides the total in bits by the UTF-8 bytes of the scored tokens (the text from the
first scored token's offset on), which makes figures comparable across tokenizers.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from ..errors import TccError


@dataclass
class Perplexity:
    tokens: int  # tokens scored
    nll: float  # summed negative log-likelihood, nats
    bytes: int  # UTF-8 bytes those tokens cover
    context: int
    stride: int
    windows: int
    seconds: float = 0.0
    per_window: list[float] = field(default_factory=list)  # mean nll of each window (for spreads)

    @property
    def ppl(self) -> float:
        return math.exp(self.nll / self.tokens)

    @property
    def bits_per_byte(self) -> float:
        return self.nll / math.log(2) / self.bytes

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        return {"perplexity": self.ppl, "bits_per_byte": self.bits_per_byte, "tokens": self.tokens,
                "bytes": self.bytes, "nll": self.nll, "context": self.context, "stride": self.stride,
                "windows": self.windows, "seconds": self.seconds, "tokens_per_second": self.tokens_per_second}


def windows(n: int, context: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """(begin, end, first_scored) for sliding windows over n tokens: the window feeds ids[begin:end] and
    scores targets ids[first_scored:end] (each predicted from the position before it)."""
    if context < 2:
        raise TccError(f"the evaluation window must hold at least 2 tokens, got {context}")
    if not 1 <= stride <= context:
        raise TccError(f"--stride must be between 1 and the window ({context} tokens), got {stride}")
    prev_end, begin = 1, 0
    while prev_end < n:
        end = min(begin + context, n)
        yield begin, end, prev_end
        prev_end = end
        begin += stride
        # Windows start every `stride` tokens, but never leave a gap before the unscored tokens.
        begin = min(begin, prev_end - 1)


def window_nll(logits: np.ndarray, targets: np.ndarray) -> float:
    """Sum of -log softmax(logits)[target] over rows, in float64."""
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=-1))
    return float((lse - z[np.arange(len(targets)), targets]).sum())


def tokenize(tokenizer, text: str) -> tuple[list[int], list[int]]:
    """Token ids of the text (with the tokenizer's special tokens) and, per token, the character offset
    where it starts."""
    if not text.strip():
        raise TccError("the evaluation text is empty")
    enc = tokenizer.hf_tokenizer.encode(text, add_special_tokens=True)
    return list(enc.ids), [o[0] for o in enc.offsets]


def score(logits_fn: Callable[[list[int]], np.ndarray], ids: list[int], offsets: list[int], text: str,
          context: int, stride: int, progress: bool = False, label: str = "eval") -> Perplexity:
    """Score `ids` with `logits_fn(window_ids) -> logits [len, vocab]` (any engine: the compiled model, or
    ONNX Runtime in the tests) over the sliding windows."""
    if len(ids) < 2:
        raise TccError(f"the evaluation text has {len(ids)} token(s); perplexity needs at least 2")
    spans = list(windows(len(ids), context, stride))
    bar = _bar(len(ids) - 1, label) if progress else None
    nll, per_window = 0.0, []
    arr = np.asarray(ids, dtype=np.int64)
    t0 = time.perf_counter()
    for begin, end, first in spans:
        logits = logits_fn(ids[begin:end])
        rows = logits[first - 1 - begin:end - 1 - begin]
        w = window_nll(rows, arr[first:end])
        nll += w
        per_window.append(w / (end - first))
        if bar is not None:
            bar.update(end - first)
    seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    scored_bytes = len(text[offsets[1]:].encode("utf-8"))
    return Perplexity(len(ids) - 1, nll, scored_bytes, context, stride, len(spans), seconds, per_window)


def _bar(total: int, label: str):
    from tqdm import tqdm

    return tqdm(total=total, unit="tok", desc=label, leave=False, dynamic_ncols=True)


def evaluate(session, text: str, context: int | None = None, stride: int | None = None,
             max_tokens: int | None = None, progress: bool = False) -> Perplexity:
    """Perplexity of a loaded language-model Session on `text`. context defaults to the artifact's KV
    capacity, stride to half the context; max_tokens keeps only the text's first tokens."""
    gen = session.generator
    if session.tokenizer is None:
        raise TccError(f"{session.path} has no tokenizer.json: tcc eval needs one to tokenize the text")
    ids, offsets = tokenize(session.tokenizer, text)
    if max_tokens is not None:
        if max_tokens < 2:
            raise TccError(f"--max-tokens must be at least 2, got {max_tokens}")
        if len(ids) > max_tokens:
            text = text[:offsets[max_tokens]]  # the characters the kept tokens cover (for bits per byte)
            ids, offsets = ids[:max_tokens], offsets[:max_tokens]
    context = context or gen.capacity
    if context > gen.capacity:
        raise TccError(f"--context {context} exceeds the artifact's KV capacity of {gen.capacity} tokens "
                       f"(compile with a larger --max-context)")
    stride = stride or max(1, context // 2)

    def logits_fn(window: list[int]) -> np.ndarray:
        gen.reset()
        return gen.logits_of(window)

    try:
        return score(logits_fn, ids, offsets, text, context, stride, progress)
    finally:
        gen.reset()


def read_text(path: str) -> str:
    from .tokenizer import _read_text

    try:
        return _read_text(path)
    except TccError as e:
        raise TccError(f"--text: {e}") from None
