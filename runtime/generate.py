"""Text generation on a compiled KV-cache program: prompts, chat turns, sampling, streaming.

The program owns the KV cache (tcc_model.h): each run appends its tokens, `kv_truncate` forgets a tail.
`Generator` keeps the token ids that are in the cache (`context`), so a chat turn only runs its new
tokens and the cache survives between turns. Sampling is the runtime's C `tcc_sample`, shared with the
standalone chat binary, so both pick the same tokens for the same prompt and seed. A decode step runs
`tcc_model_run_select` when the library has it and nothing needs the logits: the program picks the token
itself (with tcc_sample's rules and generator stream), so a GPU program copies one id back, not the logits.
"""
from __future__ import annotations

import ctypes
import math
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import RuntimeFeedError, TccError
from ..ir.dtypes import DType
from .session import DTYPE_ORDER, _Tensor

# Defaults shared with the chat binary (runtime/chat/chat_main.cpp).
DEFAULT_SAMPLING = dict(temperature=0.7, top_k=40, top_p=0.9, repetition_penalty=1.1)
INT32_MAX = 2**31 - 1
MAX_THREADS = 1024  # the runtime's pool never starts more (runtime/runtime.cpp: tcc_exec_create)
_FLOAT32_MAX = 3.4028234663852886e38


# -- argument checks (one set for the Python API and the CLI) --------------------------------------------
# The chat binary's option parser (runtime/chat/chat_main.cpp: parse_args) is the reference: the same
# ranges, so that a value one front end accepts the other does too. `cli=True` names the options as the
# command line spells them (--top-p) instead of the Python keywords (top_p).

def _name(key: str, cli: bool) -> str:
    return "--" + key.replace("_", "-") if cli else key


def _int_arg(key: str, value, lo: int, hi: int, cli: bool) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TccError(f"{_name(key, cli)} must be an integer, got {value!r:.40}")
    if not lo <= int(value) <= hi:
        raise TccError(f"{_name(key, cli)} must be between {lo} and {hi}, got {int(value)}")
    return int(value)


def _float_arg(key: str, value, cli: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TccError(f"{_name(key, cli)} must be a number, got {value!r:.40}")
    x = float(value)
    if not math.isfinite(x) or abs(x) > _FLOAT32_MAX:  # the sampler takes float32
        raise TccError(f"{_name(key, cli)} must be a finite number, got {value!r:.40}")
    return x


def check_sampling(max_new_tokens=256, temperature=None, top_k=None, top_p=None, repetition_penalty=None,
                   seed=None, cli: bool = False) -> None:
    """Refuse generation arguments the chat binary refuses, as a one-line TccError naming the argument
    (None: the default)."""
    _int_arg("max_new_tokens", max_new_tokens, 0, INT32_MAX, cli)
    if temperature is not None and _float_arg("temperature", temperature, cli) < 0:
        raise TccError(f"{_name('temperature', cli)} must not be negative (0 is greedy), got {temperature}")
    if top_k is not None:
        _int_arg("top_k", top_k, 0, INT32_MAX, cli)
    if top_p is not None and not 0 < _float_arg("top_p", top_p, cli) <= 1:
        raise TccError(f"{_name('top_p', cli)} must be greater than 0 and at most 1 (1 is off), got {top_p}")
    if repetition_penalty is not None and _float_arg("repetition_penalty", repetition_penalty, cli) <= 0:
        raise TccError(f"{_name('repetition_penalty', cli)} must be greater than 0 (1 is off), "
                       f"got {repetition_penalty}")
    if seed is not None:
        _int_arg("seed", seed, 0, 2**64 - 1, cli)


def check_threads(threads, cli: bool = False, what: str | None = None) -> int | None:
    """A worker-thread count: None (the default), 0 (all cores) or 1..MAX_THREADS."""
    if threads is None:
        return None
    return _int_arg(what or "threads", threads, 0, MAX_THREADS, cli)


def check_reply_args(stop=(), stream=None, eos_ids=None) -> tuple[str, ...]:
    """The stop strings (a single string is one stop string), after checking stream and eos_ids."""
    if isinstance(stop, str):
        stop = (stop,)
    if stop is None:
        stop = ()
    if not isinstance(stop, (list, tuple, set, frozenset)) or not all(isinstance(s, str) for s in stop):
        raise TccError(f"stop must be a string or a list of strings, got {stop!r:.60}")
    if stream is not None and not callable(stream):
        raise TccError(f"stream must be a function taking each new piece of text, got {stream!r:.40}")
    if eos_ids is not None:
        if (isinstance(eos_ids, (str, bytes)) or not isinstance(eos_ids, (list, tuple, set, frozenset, np.ndarray))
                or np.ndim(eos_ids) != 1 and isinstance(eos_ids, np.ndarray)):
            raise TccError(f"eos_ids must be a set of token ids, got {eos_ids!r:.60}")
        for t in eos_ids:
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
                raise TccError(f"eos_ids must hold integer token ids, got {t!r:.40}")
    return tuple(stop)


def check_prompt(prompt) -> str | list[int]:
    """A prompt: text, or token ids (a list or tuple of integers, or a 1-D integer numpy array)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, np.ndarray):
        if prompt.ndim != 1 or not (np.issubdtype(prompt.dtype, np.integer) or prompt.size == 0):
            raise RuntimeFeedError(f"a prompt array must be 1-D integer token ids, got {prompt.dtype} "
                                   f"{list(prompt.shape)}")
        return [int(t) for t in prompt]
    if isinstance(prompt, (list, tuple)):
        for i, t in enumerate(prompt):
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
                raise RuntimeFeedError(f"prompt token at position {i} is not an integer token id: {t!r:.40}")
        return [int(t) for t in prompt]
    raise TccError(f"prompt must be text (str) or a list of token ids, got {type(prompt).__name__}")


def check_message(message, system=None) -> None:
    """A chat turn's message and optional system prompt: strings."""
    if not isinstance(message, str):
        raise TccError(f"message must be a string, got {type(message).__name__}")
    if system is not None and not isinstance(system, str):
        raise TccError(f"system must be a string or None, got {type(system).__name__}")


class _Sampling(ctypes.Structure):
    _fields_ = [("temperature", ctypes.c_float), ("top_k", ctypes.c_int32), ("top_p", ctypes.c_float),
                ("repetition_penalty", ctypes.c_float)]


@dataclass
class Generation:
    """The result of one generate() / chat() call."""

    text: str
    tokens: list[int]  # generated ids (a stop token is not included)
    prompt_tokens: list[int]  # ids this call fed before generating
    stop_reason: str  # "eos" | "stop" (a stop string) | "length" | "interrupted"
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    decode_steps: int = 0  # single-token runs of the model during decoding
    step_logits: list[np.ndarray] = field(default_factory=list)  # with keep_logits=True: logits per new token
    step_seconds: list[float] = field(default_factory=list)  # wall time of each decode step (sample + run)

    @property
    def prefill_tokens_per_second(self) -> float:
        return len(self.prompt_tokens) / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        return self.decode_steps / self.decode_seconds if self.decode_seconds and self.decode_steps else 0.0


class Generator:
    """Generation state over a loaded Session of a KV-cache program."""

    def __init__(self, session, tokenizer=None):
        llm = session.manifest.get("llm")
        if not llm or not (llm.get("kv_cache") or llm.get("recompute")):
            why = (llm or {}).get("kv_cache_refused")
            raise TccError(f"{session.path} is not a language-model program with a KV cache"
                           + (f" (the kv-cache rewrite was refused: {why})" if why else
                              " (compile a decoder exported with past key/values)"))
        self.session = session
        self.llm = llm
        # Exported without past: no cache, every step runs the whole context (O(n^2), but correct).
        self.recompute = bool(llm.get("recompute"))
        self.capacity = int(llm["capacity"])
        self.vocab = int(llm["vocab"])
        self.max_chunk = int(llm["max_prefill"])
        self.tokenizer = tokenizer
        self.chat_config = llm.get("chat_config")
        self.context: list[int] = []  # ids in the KV cache, in order
        lib = session._lib
        lib.tcc_model_kv_truncate.argtypes = [ctypes.c_void_p, ctypes.c_int64]
        lib.tcc_model_kv_length.argtypes = [ctypes.c_void_p]
        lib.tcc_model_kv_length.restype = ctypes.c_int64
        lib.tcc_model_set_logits_rows.argtypes = [ctypes.c_void_p, ctypes.c_int64]
        lib.tcc_rng_seed.argtypes = [ctypes.c_uint64]
        lib.tcc_rng_seed.restype = ctypes.c_uint64
        lib.tcc_sample.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.POINTER(_Sampling), ctypes.c_void_p,
                                   ctypes.c_int64, ctypes.POINTER(ctypes.c_uint64)]
        lib.tcc_sample.restype = ctypes.c_int64
        # Older artifacts lack tcc_model_run_select; a program without a KV cache refuses it (recompute).
        self._run_select = getattr(lib, "tcc_model_run_select", None) if not self.recompute else None
        if self._run_select is not None:
            self._run_select.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Tensor), ctypes.c_int,
                                         ctypes.POINTER(_Sampling), ctypes.c_void_p, ctypes.c_int64,
                                         ctypes.POINTER(ctypes.c_uint64), ctypes.c_void_p]
            self._run_select.restype = ctypes.c_int
        self._lib = lib
        self.reset()

    # -- the cache -------------------------------------------------------------------------------
    def reset(self) -> None:
        """Empty the conversation (the KV cache)."""
        self._truncate(0)

    def _truncate(self, n: int) -> None:
        if not self.recompute and self._lib.tcc_model_kv_truncate(self.session._model, n) != 0:
            raise TccError(self._lib.tcc_model_last_error().decode())
        del self.context[n:]

    def _check_ids(self, ids: list[int]) -> None:
        for i, t in enumerate(ids):
            if not 0 <= int(t) < self.vocab:
                raise RuntimeFeedError(f"token id {int(t)} at position {i} is out of range for the vocabulary "
                                       f"of {self.vocab}")

    def feed(self, ids: list[int], logits_rows: int = 1) -> np.ndarray:
        """Append tokens to the cache (in chunks of at most the compiled prefill length); returns the
        logits [n, vocab] of the last `logits_rows` positions (0 = all) of the last chunk."""
        ids = [int(t) for t in ids]
        if not ids:
            raise RuntimeFeedError("no tokens to feed")
        self._check_ids(ids)
        if len(self.context) + len(ids) > self.capacity:
            raise RuntimeFeedError(f"context overflow: {len(self.context)} tokens in the context + {len(ids)} new "
                                   f"exceed the model's context of {self.capacity} tokens")
        name = self.session.inputs[0].name
        if self.recompute:
            self.context.extend(ids)
            self._lib.tcc_model_set_logits_rows(self.session._model, logits_rows)
            out = self.session.run({name: np.array([self.context], dtype=np.int64)})
            return next(iter(out.values()))[0]
        logits = None
        for start in range(0, len(ids), self.max_chunk):
            chunk = ids[start:start + self.max_chunk]
            last = start + self.max_chunk >= len(ids)
            self._lib.tcc_model_set_logits_rows(self.session._model, logits_rows if last else 1)
            out = self.session.run({name: np.array([chunk], dtype=np.int64)})
            self.context.extend(chunk)
            logits = next(iter(out.values()))[0]
        return logits

    def logits_of(self, ids: list[int]) -> np.ndarray:
        """Logits for every position of `ids` appended to the context (for perplexity)."""
        if self.recompute:
            return self.feed(ids, logits_rows=0)[-len(ids):]
        rows = []
        for start in range(0, len(ids), self.max_chunk):
            rows.append(self.feed(ids[start:start + self.max_chunk], logits_rows=0))
        return np.concatenate(rows, axis=0)

    def feed_select(self, tok: int, params: "_Sampling", rng: ctypes.c_uint64) -> int:
        """Append one token and return the next one, picked by the program from the last logits row with
        the same rules and generator stream as sample() (tcc_model_run_select): on a GPU only the id is
        copied back."""
        self._check_ids([tok])
        if len(self.context) + 1 > self.capacity:
            raise RuntimeFeedError(f"context overflow: {len(self.context)} tokens in the context + 1 new exceed the "
                                   f"model's context of {self.capacity} tokens")
        ids = np.array([[int(tok)]], dtype=np.int64)
        recent = np.asarray(self.context + [int(tok)], dtype=np.int64)  # as sample() sees the context after feed()
        t = _Tensor()
        t.data = ids.ctypes.data
        t.shape[0], t.shape[1] = 1, 1
        t.ndim = 2
        t.dtype = DTYPE_ORDER.index(DType.i64)
        out = np.zeros(1, dtype=np.int64)
        with self.session._lock:
            if not self.session._model:
                raise TccError("session is closed")
            self._lib.tcc_model_set_logits_rows(self.session._model, 1)
            rc = self._run_select(self.session._model, ctypes.byref(t), 1, ctypes.byref(params), recent.ctypes.data,
                                  len(recent), ctypes.byref(rng), out.ctypes.data)
            if rc != 0:
                raise TccError(self._lib.tcc_model_last_error().decode())
        self.context.append(int(tok))
        return int(out[0])

    # -- sampling --------------------------------------------------------------------------------
    def sample(self, logits: np.ndarray, params: _Sampling, rng: ctypes.c_uint64) -> int:
        row = np.ascontiguousarray(logits, dtype=np.float32)
        recent = np.asarray(self.context, dtype=np.int64)
        return int(self._lib.tcc_sample(row.ctypes.data, row.shape[-1], ctypes.byref(params),
                                        recent.ctypes.data if len(recent) else None, len(recent),
                                        ctypes.byref(rng)))

    # -- prompts ---------------------------------------------------------------------------------
    def _need_tokenizer(self):
        if self.tokenizer is None:
            raise TccError(f"{self.session.path} has no tokenizer.json (compile with --tokenizer DIR, "
                           f"or pass token ids)")
        return self.tokenizer

    def prompt_ids(self, prompt: str | list[int]) -> list[int]:
        """A raw prompt's ids: the text encoded with the tokenizer's special tokens (BOS when it adds one)
        at the start of a conversation, without them when continuing one."""
        prompt = check_prompt(prompt)
        if isinstance(prompt, str):
            if not prompt:
                raise RuntimeFeedError("empty prompt: give some text to continue")
            ids = self._need_tokenizer().encode(prompt, add_special_tokens=not self.context)
        else:
            ids = prompt
        if not ids:
            raise RuntimeFeedError("empty prompt: it encodes to no tokens")
        return ids

    def turn_ids(self, message: str, system: str | None = None) -> list[int]:
        """A chat turn's ids (chat.json segments; see runtime/tokenizer.py: chat_config)."""
        check_message(message, system)
        if not message:
            raise RuntimeFeedError("empty message")
        tok = self._need_tokenizer()
        cc = self.chat_config
        if cc is None:
            raise TccError(f"{self.session.path} has no chat configuration (no tokenizer at compile time)")
        if not self.context:
            system = system if system is not None else cc.get("default_system")
            if system and cc.get("first_user_prefix_with_system"):
                a, b = cc["first_user_prefix_with_system"]
                text = a + system + b + message + cc["user_suffix"]
            else:
                text = cc["first_user_prefix"] + message + cc["user_suffix"]
            ids = tok.encode(text, add_special_tokens=False)
            if cc.get("add_bos") and cc.get("bos_token_id") is not None:
                ids = [cc["bos_token_id"]] + ids
        else:
            text = cc["assistant_suffix"] + cc["user_prefix"] + message + cc["user_suffix"]
            ids = tok.encode(text, add_special_tokens=False)
        return ids

    # -- the loop --------------------------------------------------------------------------------
    def run(self, new_ids: list[int], max_new_tokens: int = 256, temperature: float | None = None,
            top_k: int | None = None, top_p: float | None = None, repetition_penalty: float | None = None,
            seed: int | None = None, stop: list[str] | tuple[str, ...] = (), stream: Callable[[str], None] | None = None,
            eos_ids=None, keep_logits: bool = False) -> Generation:
        """Feed `new_ids`, then sample up to max_new_tokens tokens, feeding each back."""
        check_sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed)
        stop = check_reply_args(stop, stream, eos_ids)
        max_new_tokens = int(max_new_tokens)
        need = len(self.context) + len(new_ids) + max_new_tokens
        if need > self.capacity:
            raise RuntimeFeedError(
                f"context overflow: {len(self.context)} tokens in the context + {len(new_ids)} prompt tokens + "
                f"max_new_tokens {max_new_tokens} = {need} exceed the model's context of {self.capacity} tokens"
                + (" (reset the conversation, lower max_new_tokens, or compile with a larger --max-context)"))
        d = DEFAULT_SAMPLING
        params = _Sampling(d["temperature"] if temperature is None else temperature, d["top_k"] if top_k is None else top_k,
                           d["top_p"] if top_p is None else top_p,
                           d["repetition_penalty"] if repetition_penalty is None else repetition_penalty)
        seed = int.from_bytes(os.urandom(8), "little") if seed is None else int(seed)
        rng = ctypes.c_uint64(self._lib.tcc_rng_seed(seed))
        if eos_ids is None:
            cc = self.chat_config or {}
            eos_ids = set(cc.get("eos_token_ids") or self.llm.get("eos_token_ids") or [])
        else:
            eos_ids = {int(t) for t in eos_ids}
        decoder = self.tokenizer.stream_decoder() if self.tokenizer is not None else None
        out: list[int] = []
        text = ""
        reason = "length"
        kept: list[np.ndarray] = []
        start = len(self.context)
        t0 = time.perf_counter()
        logits = self.feed(new_ids)[-1]
        t1 = t_step = time.perf_counter()
        step_times: list[float] = []
        # Decode steps select on the device unless the logits are wanted (keep_logits).
        on_device = self._run_select is not None and not keep_logits
        picked: int | None = None  # the token a feed_select step already chose
        interrupted = _Interrupt()
        with interrupted:
            for i in range(max_new_tokens):
                if keep_logits:
                    kept.append(logits.copy())
                tok = picked if picked is not None else self.sample(logits, params, rng)
                if tok in eos_ids:
                    reason = "eos"
                    break
                out.append(tok)
                if decoder is not None:
                    piece = decoder.push(tok)
                    text += piece
                    hit = _find_stop(text, stop)
                    if hit is not None:
                        text, piece, reason = text[:hit], "", "stop"
                    if piece and stream is not None:
                        stream(piece)
                    if reason == "stop":
                        self._append_only(tok)
                        break
                if i + 1 == max_new_tokens or interrupted.fired:
                    self._append_only(tok)
                    if interrupted.fired:
                        reason = "interrupted"
                    break
                if on_device:
                    picked = self.feed_select(tok, params, rng)
                else:
                    logits = self.feed([tok])[-1]
                now = time.perf_counter()
                step_times.append(now - t_step)
                t_step = now
        if decoder is not None and reason != "stop":
            tail = decoder.flush()
            text += tail
            if tail and stream is not None:
                stream(tail)
        t2 = time.perf_counter()
        steps = len(self.context) - start - len(new_ids)
        return Generation(text, out, list(new_ids), reason, t1 - t0, t2 - t1, steps, kept, step_times)

    def _append_only(self, tok: int) -> None:
        """The last sampled token joins the context (fed to the cache) so the next turn continues after it."""
        self.feed([tok])


def _find_stop(text: str, stops) -> int | None:
    best = None
    for s in stops or ():
        if s:
            i = text.find(s)
            if i >= 0 and (best is None or i < best):
                best = i
    return best


class _Interrupt:
    """Ctrl-C during a reply stops the reply (the conversation stays); outside the main thread, no-op."""

    def __init__(self):
        self.fired = False
        self._old = None

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, *_):
        self.fired = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
