"""The serving engine: N slots, one engine thread that owns every model call, a bounded queue.

Continuous batching: the slots are the KV-cache rows of ONE loaded Session (a program compiled with
--max-dim batch=N holds N independent sequences; tcc_model_run_rows). The engine thread loops: admit
queued jobs into free slots, evaluate one prefill chunk of each slot still reading its prompt (alone:
rows = 1 on its slot), then advance every decoding slot by one token in ONE run with one row per slot, so
the weights are streamed once per step for all clients. Jobs join and leave between steps. A program that
cannot run rows (no KV cache: it recomputes its context) falls back to one Session per slot, taking turns.
HTTP handlers never touch a model: they submit a Job and read its events, which the engine delivers
through `job.sink` (a thread-safe callable).

Prompt caching: a slot keeps the token ids that are in its KV cache (`Generator.context`); a new job
keeps the longest common prefix with them (kv_truncate) and evaluates only the rest.
"""
from __future__ import annotations

import collections
import ctypes
import itertools
import math
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ...errors import TccError
from ..generate import _Sampling  # the C struct tcc_sample takes (its argtypes name this class)

INT32_MAX = 2**31 - 1


class QueueFull(TccError):
    """Every slot is busy and the queue is at its bound (HTTP 503)."""


class NotReady(TccError):
    """The model is still loading, or failed to load (HTTP 503)."""


class ContextOverflow(TccError):
    """A prompt (with its requested tokens) does not fit a slot's context (HTTP 400)."""


@dataclass
class Params:
    """Sampling and stopping for one job (validated by schemas.py before it gets here)."""

    n_predict: int = -1  # -1: until a stop or the slot's context is full
    temperature: float = 0.7
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    repeat_penalty: float = 1.1
    repeat_last_n: int = -1  # -1: the whole context (as `tcc generate`); 0: off
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    n_probs: int = 0
    ignore_eos: bool = False
    cache_prompt: bool = True
    id_slot: int = -1


@dataclass
class Job:
    ids: list[int]
    params: Params
    sink: Callable[[dict], None]
    id: int = field(default_factory=lambda: next(_job_ids))
    cancelled: bool = False  # set by the HTTP side when the client goes away

    def cancel(self) -> None:
        self.cancelled = True


_job_ids = itertools.count(1)


@dataclass
class _Run:
    """A job's progress inside its slot (engine thread only)."""

    job: Job
    pending: list[int]  # prompt ids still to evaluate
    n_cached: int
    limit: int  # tokens to generate at most
    rng: ctypes.c_uint64
    sampling: _Sampling
    decoder: object
    t0: float
    t_prompt: float = 0.0
    last: int | None = None  # the sampled token not yet fed
    out: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0  # characters of text sent so far
    probs: list[dict] = field(default_factory=list)


@dataclass
class Slot:
    id: int
    gen: object  # runtime.generate.Generator over this slot's Session
    run: _Run | None = None
    last_used: float = 0.0


class SlotSequence:
    """One KV-cache slot of a shared Session, with the part of Generator's interface the engine uses
    (context, feed, _truncate, reset): the ids in the slot's cache, in order."""

    def __init__(self, gen, slot: int):
        self.base = gen  # the Generator over the shared Session (sampling library, limits)
        self.session = gen.session
        self.slot = slot
        self.llm, self.vocab, self.capacity, self.max_chunk = gen.llm, gen.vocab, gen.capacity, gen.max_chunk
        self.recompute = False
        self._lib = gen._lib
        self.context: list[int] = []

    def reset(self) -> None:
        self._truncate(0)

    def _truncate(self, n: int) -> None:
        self.session.kv_truncate(self.slot, n)
        del self.context[n:]

    def feed(self, ids: list[int]) -> np.ndarray:
        """Append ids to this slot alone (in chunks of the compiled prefill length); the last logits [1, vocab]."""
        ids = [int(t) for t in ids]
        self.base._check_ids(ids)
        if len(self.context) + len(ids) > self.capacity:
            raise TccError(f"context overflow: {len(self.context)} tokens in the context + {len(ids)} new exceed "
                           f"the model's context of {self.capacity} tokens")
        logits = None
        for start in range(0, len(ids), self.max_chunk):
            chunk = ids[start:start + self.max_chunk]
            logits = self.session.run_rows([chunk], [self.slot])[0]
            self.context.extend(chunk)
        return logits


def check_batch(n_slots: int, kv_slots: int) -> None:
    """A batched program holds at most its compiled batch bound of sequences: refuse more slots in one line."""
    if n_slots > kv_slots:
        raise TccError(f"--slots {n_slots} needs an artifact compiled with --max-dim batch={n_slots} (or more): this "
                       f"one holds {kv_slots} sequence{'s' * (kv_slots != 1)}")


class Engine:
    """Load `artifact` into `slots` sessions and serve jobs from one thread (start() begins loading)."""

    def __init__(self, artifact: str, slots: int = 1, ctx_per_slot: int | None = None, threads: int | None = None,
                 queue: int = 64, verify: bool | None = None, load=None, pace: float = 0.0):
        self.artifact = os.path.abspath(artifact)
        self.n_slots = slots
        self.ctx_request = ctx_per_slot
        self.threads = threads
        self.queue_bound = queue
        self.verify = verify
        self._load = load
        self.pace = pace  # seconds of sleep after each round of steps: lets tests and demos watch a stream
        self.state = "loading"  # loading | ready | error | stopped
        self.error: str | None = None
        self.slots: list[Slot] = []
        self.tokenizer = None
        self.manifest: dict = {}
        self.llm: dict = {}
        self.ctx = 0
        self.vocab = 0
        self._waiting: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._loaded = threading.Event()
        self.metrics = collections.Counter()
        self.started = time.time()
        self.batched = False  # slots are rows of one Session (continuous batching), not one Session each

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="tcc-engine", daemon=True)
        self._thread.start()

    def wait_loaded(self, timeout: float | None = None) -> bool:
        return self._loaded.wait(timeout)

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            if self._thread.is_alive():  # still inside a model call: closing would free what it uses
                return
        for s in self.slots[:1] if self.batched else self.slots:
            s.gen.session.close()
        self.state = "stopped"

    def _main(self) -> None:
        try:
            self._load_slots()
            self.state = "ready"
        except Exception as e:  # noqa: BLE001 -- reported by /health and the CLI, never a traceback
            self.error = str(e) if isinstance(e, TccError) else f"{type(e).__name__}: {e}"
            self.state = "error"
        finally:
            self._loaded.set()
        if self.state == "ready":
            self._loop()

    def _load_slots(self) -> None:
        from ..generate import Generator
        from ..session import load

        load = self._load or load
        first = load(self.artifact, threads=self.threads, verify=self.verify)
        if first.kv_slots > 0 and not (first.manifest.get("llm") or {}).get("recompute"):
            try:
                check_batch(self.n_slots, first.kv_slots)
                gen = Generator(first, first.tokenizer)
                gen.feed([0])  # touch the arena and start the workers now, not in the first client's time
                gen.reset()
            except Exception:
                first.close()
                raise
            self.manifest, self.tokenizer, self.batched = first.manifest, first.tokenizer, True
            self.slots = [Slot(i, SlotSequence(gen, i)) for i in range(self.n_slots)]
            self._finish_load(gen)
            return
        first.close()
        tok = None
        for i in range(self.n_slots):
            # one full verification is enough: the other sessions open the same files
            sess = load(self.artifact, threads=self.threads, verify=self.verify if i == 0 else False)
            if i == 0:
                self.manifest = sess.manifest
                tok = sess.tokenizer
            gen = Generator(sess, tok)
            gen.feed([0])  # touch the arena and start the workers now, not in the first client's time
            gen.reset()
            self.slots.append(Slot(i, gen))
        self.tokenizer = tok
        self._finish_load(self.slots[0].gen)

    def _finish_load(self, g) -> None:
        self.llm = g.llm
        self.vocab = g.vocab
        cap = g.capacity
        if self.ctx_request is not None and self.ctx_request > cap:
            raise TccError(f"--ctx-per-slot {self.ctx_request} exceeds the artifact's context of {cap} tokens "
                           f"(compile with a larger --max-context)")
        self.ctx = self.ctx_request or cap

    # -- submitting (any thread) ----------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue a job, or raise NotReady / QueueFull / ContextOverflow (nothing queued then)."""
        self.check_ready()
        n = len(job.ids)
        if n >= self.ctx:
            raise ContextOverflow(f"the prompt has {n} tokens, the context per slot is {self.ctx} tokens "
                                  f"(at most {self.ctx - 1} prompt tokens leave room for one new token)")
        if not 0 <= job.params.id_slot < self.n_slots and job.params.id_slot != -1:
            raise TccError(f"id_slot {job.params.id_slot} does not exist (slots 0..{self.n_slots - 1}, -1 any)")
        with self._cv:
            free = sum(s.run is None for s in self.slots)
            if len(self._waiting) - free >= self.queue_bound:  # jobs about to take a free slot do not wait
                self.metrics["requests_rejected"] += 1
                raise QueueFull(f"the server is busy: all {self.n_slots} slots in use and {self.queue_bound} "
                                f"requests waiting (--queue); try again later")
            self._waiting.append(job)
            self.metrics["requests"] += 1
            self._cv.notify_all()

    def check_ready(self) -> None:
        if self.state == "loading":
            raise NotReady("the model is loading")
        if self.state != "ready":
            raise NotReady(f"the model failed to load: {self.error}" if self.error else "the server is stopping")

    # -- the engine thread -----------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self._waiting and all(s.run is None for s in self.slots):
                    self._cv.wait()
                if self._stop:
                    for job in self._waiting:
                        _send(job, {"type": "error", "status": 503, "message": "the server is stopping"})
                    self._waiting.clear()
                    return
                self._admit()
            if self.batched:
                self._batched_round()
            else:
                for slot in self.slots:
                    if slot.run is not None:
                        self._step(slot)
            if self.pace:
                time.sleep(self.pace)

    def _admit(self) -> None:
        """Move queued jobs into free slots (caller holds the lock): the asked slot, else the free slot whose
        cache shares the longest prefix with the prompt, else the least recently used."""
        kept = collections.deque()
        while self._waiting:
            job = self._waiting.popleft()
            if job.cancelled:
                self.metrics["requests_cancelled"] += 1
                continue
            free = [s for s in self.slots if s.run is None]
            if job.params.id_slot >= 0:
                free = [s for s in free if s.id == job.params.id_slot]
            if not free:
                kept.append(job)
                continue
            slot = max(free, key=lambda s: (_common_prefix(s.gen.context, job.ids) if job.params.cache_prompt else 0,
                                            -s.last_used))
            try:
                self._begin(slot, job)
            except Exception as e:  # noqa: BLE001 -- one job's failure must not stop the engine
                self._fail(slot, job, e)
        self._waiting = kept

    def _begin(self, slot: Slot, job: Job) -> None:
        g = slot.gen
        p = job.params
        # (a program without a KV cache reruns its whole context every step: nothing to reuse)
        n = _common_prefix(g.context, job.ids) if p.cache_prompt and not g.recompute else 0
        n = min(n, len(job.ids) - 1)  # at least one token to evaluate: its logits start the reply
        rewind = int((g.llm or {}).get("kv_ring_rewind") or 0)
        if rewind and len(g.context) - n > rewind:
            n = 0  # a sliding-window ring cache has overwritten the rows a deeper rewind needs: start over
        g._truncate(n)
        room = self.ctx - len(job.ids)
        limit = room if p.n_predict < 0 else min(p.n_predict, room)
        seed = int.from_bytes(os.urandom(8), "little") if p.seed is None else p.seed
        rng = ctypes.c_uint64(g._lib.tcc_rng_seed(seed))
        sampling = _Sampling(p.temperature, p.top_k, p.top_p, p.repeat_penalty)
        decoder = self.tokenizer.stream_decoder() if self.tokenizer is not None else None
        slot.run = _Run(job, list(job.ids[n:]), n, limit, rng, sampling, decoder, time.perf_counter())

    def _step(self, slot: Slot) -> None:
        run = slot.run
        job = run.job
        try:
            if job.cancelled:
                self.metrics["requests_cancelled"] += 1
                self._release(slot)
                return
            g = slot.gen
            if run.pending:
                chunk, run.pending = run.pending[:g.max_chunk], run.pending[g.max_chunk:]
                logits = g.feed(chunk)[-1]
                if run.pending:
                    return
                run.t_prompt = time.perf_counter()
                if run.limit == 0:
                    return self._finish(slot, "limit")
            else:
                logits = g.feed([run.last])[-1]
            self._sample(slot, logits)
        except Exception as e:  # noqa: BLE001 -- a failed step ends that job, and the slot starts clean
            self._fail(slot, job, e)

    def _batched_round(self) -> None:
        """One prefill chunk for each slot still reading its prompt (each alone), then one decode run with a
        row per slot that was already decoding."""
        decoding = [s for s in self.slots if s.run is not None and not s.run.pending and s.run.last is not None]
        for slot in self.slots:
            if slot.run is not None and slot not in decoding:
                self._step(slot)
        live = []
        for slot in decoding:
            if slot.run.job.cancelled:
                self.metrics["requests_cancelled"] += 1
                self._release(slot)
            else:
                live.append(slot)
        if not live:
            return
        try:
            g = live[0].gen
            logits = g.session.run_rows([[s.run.last] for s in live], [s.gen.slot for s in live])
        except Exception as e:  # noqa: BLE001 -- a failed step ends the jobs in it, and their slots start clean
            for slot in live:
                self._fail(slot, slot.run.job, e)
            return
        self.metrics["decode_steps"] += 1
        self.metrics["decode_rows"] += len(live)
        for slot, row in zip(live, logits):
            slot.gen.context.append(slot.run.last)
            try:
                self._sample(slot, row[-1])
            except Exception as e:  # noqa: BLE001
                self._fail(slot, slot.run.job, e)

    def _sample(self, slot: Slot, logits: np.ndarray) -> None:
        run, p, g = slot.run, slot.run.job.params, slot.gen
        recent = _recent(g.context, p.repeat_last_n)
        row = _adjust(logits, recent, p)
        rec = np.asarray(recent, dtype=np.int64)
        tok = int(g._lib.tcc_sample(row.ctypes.data, row.shape[-1], ctypes.byref(run.sampling),
                                    rec.ctypes.data if len(rec) else None, len(rec), ctypes.byref(run.rng)))
        probs = _top_probs(logits, tok, p.n_probs, self.tokenizer) if p.n_probs else None
        self.metrics["tokens_predicted"] += 1
        eos = set(self.llm.get("eos_token_ids") or [])
        if tok in eos and not p.ignore_eos:
            return self._finish(slot, "eos")
        run.out.append(tok)
        if probs is not None:
            run.probs.append(probs)
        piece = run.decoder.push(tok) if run.decoder is not None else ""
        run.text += piece
        hit, word = _find_stop(run.text, p.stop)
        if hit is not None:
            run.text = run.text[:hit]
            self._emit(run, tok, probs, hold=0)
            return self._finish(slot, "word", word)
        done = len(run.out) >= run.limit
        if done and run.decoder is not None:
            run.text += run.decoder.flush()
        self._emit(run, tok, probs, hold=0 if done else _partial_stop(run.text, p.stop))
        run.last = tok
        if done:
            self._finish(slot, "limit")

    def _emit(self, run: _Run, tok: int, probs: dict | None, hold: int) -> None:
        """Send the text that can no longer become part of a stop string."""
        end = len(run.text) - hold
        content = run.text[run.emitted:end] if end > run.emitted else ""
        run.emitted = max(run.emitted, end)
        _send(run.job, {"type": "token", "content": content, "tokens": [tok], "probs": probs})

    def _finish(self, slot: Slot, stop_type: str, word: str = "") -> None:
        run = slot.run
        now = time.perf_counter()
        t_prompt = run.t_prompt or now
        prompt_n = len(run.job.ids) - run.n_cached
        pred_n = len(run.out)
        prompt_ms = (t_prompt - run.t0) * 1e3
        pred_ms = (now - t_prompt) * 1e3
        self.metrics["prompt_tokens"] += prompt_n
        self.metrics["prompt_ms"] += prompt_ms
        self.metrics["predicted_ms"] += pred_ms
        self.metrics["requests_done"] += 1
        if run.emitted < len(run.text):  # text held back for a stop string that never came
            _send(run.job, {"type": "token", "content": run.text[run.emitted:], "tokens": [], "probs": None})
        result = {
            "content": run.text, "tokens": list(run.out), "stop": True, "stop_type": stop_type,
            "stopping_word": word, "tokens_cached": run.n_cached, "tokens_evaluated": len(run.job.ids),
            "prompt_n": prompt_n, "truncated": False, "id_slot": slot.id,
            "timings": {"prompt_n": prompt_n, "prompt_ms": prompt_ms,
                        "prompt_per_token_ms": prompt_ms / prompt_n if prompt_n else 0.0,
                        "prompt_per_second": 1e3 * prompt_n / prompt_ms if prompt_ms > 0 else 0.0,
                        "predicted_n": pred_n, "predicted_ms": pred_ms,
                        "predicted_per_token_ms": pred_ms / pred_n if pred_n else 0.0,
                        "predicted_per_second": 1e3 * pred_n / pred_ms if pred_ms > 0 and pred_n else 0.0},
        }
        if run.job.params.n_probs:
            result["completion_probabilities"] = run.probs
        self._release(slot)
        _send(run.job, {"type": "done", "result": result})

    def _fail(self, slot: Slot, job: Job, e: Exception) -> None:
        msg = str(e) if isinstance(e, TccError) else f"internal error: {type(e).__name__}: {e}"
        self.metrics["requests_failed"] += 1
        try:
            slot.gen.reset()  # a half-fed chunk leaves the cache unknown: start the slot clean
        except Exception:  # noqa: BLE001
            slot.gen.context.clear()
        self._release(slot)
        _send(job, {"type": "error", "status": 500, "message": msg})

    def _release(self, slot: Slot) -> None:
        slot.run = None
        slot.last_used = time.perf_counter()

    # -- introspection (any thread; a snapshot, read without the model) -------------------------
    def slots_info(self) -> list[dict]:
        out = []
        for s in self.slots:
            run = s.run
            out.append({"id": s.id, "n_ctx": self.ctx, "is_processing": run is not None,
                        "id_task": run.job.id if run else -1, "n_cached": len(s.gen.context),
                        "n_decoded": len(run.out) if run else 0})
        return out

    def counts(self) -> tuple[int, int]:
        """(requests processing, requests waiting)."""
        return sum(s.run is not None for s in self.slots), len(self._waiting)


def _send(job: Job, event: dict) -> None:
    try:
        job.sink(event)
    except Exception:  # noqa: BLE001 -- a client that went away must not stop the engine
        job.cancelled = True


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _recent(context: list[int], last_n: int) -> list[int]:
    """The tokens the penalties look at: the last `last_n` of the context (-1: all, 0: none)."""
    if last_n < 0:
        return context
    return context[len(context) - last_n:] if last_n else []


def _adjust(logits: np.ndarray, recent: list[int], p: Params) -> np.ndarray:
    """The logits tcc_sample sees: presence/frequency penalties over the recent tokens (OpenAI's), then
    min_p (llama.cpp's: drop tokens whose probability is below min_p times the best one's)."""
    row = np.array(logits, dtype=np.float32, copy=True)
    if (p.presence_penalty or p.frequency_penalty) and len(recent):
        ids, counts = np.unique(np.asarray(recent, dtype=np.int64), return_counts=True)
        row[ids] -= p.presence_penalty + p.frequency_penalty * counts.astype(np.float32)
    if p.min_p > 0:
        row[row < row.max() + math.log(p.min_p)] = -np.inf
    return row


def _top_probs(logits: np.ndarray, tok: int, n: int, tokenizer) -> dict:
    """llama.cpp's per-token record: the chosen token's log-probability under the model's distribution
    (softmax of the raw logits) and the n most likely tokens."""
    x = np.asarray(logits, dtype=np.float64)
    lp = x - (x.max() + np.log(np.exp(x - x.max()).sum()))
    top = np.argsort(-lp, kind="stable")[:n]

    def entry(i: int) -> dict:
        piece = tokenizer.decode([i], skip_special_tokens=False) if tokenizer is not None else ""
        return {"id": int(i), "token": piece, "logprob": float(lp[i]), "bytes": list(piece.encode("utf-8"))}

    return {**entry(tok), "top_logprobs": [entry(int(i)) for i in top]}


def _find_stop(text: str, stops) -> tuple[int | None, str]:
    best, word = None, ""
    for s in stops:
        i = text.find(s) if s else -1
        if i >= 0 and (best is None or i < best):
            best, word = i, s
    return best, word


def _partial_stop(text: str, stops) -> int:
    """How many characters at the end of `text` could be the start of a stop string (held back)."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    return hold
