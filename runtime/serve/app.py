"""The HTTP routes of `tcc serve` (Starlette; run by uvicorn): llama.cpp's, OpenAI's, and the chat page.

Every handler parses its body with schemas.parse_body first, turns the prompt into token ids (in a
worker thread: a large prompt must not stall the event loop), submits a Job to the engine and reads
the job's events from an asyncio queue the engine thread fills. A client that goes away cancels its
job, and the engine frees the slot before its next step. Errors of every kind leave as JSON
{"error": {"code", "message", "type"}} (OpenAI's shape, which llama.cpp also uses).
"""
from __future__ import annotations

import asyncio
import functools
import hmac
import json
import os
import time
import uuid

from anyio import to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from ... import __version__
from ...errors import TccError
from .engine import ContextOverflow, Engine, Job, NotReady, Params, QueueFull
from .schemas import (ApiError, ChatRequest, CompletionRequest, CompletionsRequest, DetokenizeRequest, Message,
                      TemplateRequest, TokenizeRequest, parse_body, stop_list)

PAGE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page")
PAGE_FILES = {"/": ("index.html", "text/html"), "/page/app.js": ("app.js", "text/javascript"),
              "/page/style.css": ("style.css", "text/css")}
# Open without the API key: the health probe, and the page's own files (constant text, no model access;
# the page then asks for the key and sends it with every API call).
PUBLIC = {"/health", *PAGE_FILES}


def create_app(engine: Engine, api_key: str | None = None, model_name: str | None = None) -> Starlette:
    """The ASGI app serving `engine` (which the caller starts and stops)."""
    name = model_name or os.path.basename(engine.artifact.rstrip("/"))
    api = _Api(engine, name)
    routes = [
        Route("/health", api.health, methods=["GET"]),
        Route("/props", api.props, methods=["GET"]),
        Route("/slots", api.slots, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        Route("/completion", api.completion, methods=["POST"]),
        Route("/completions", api.completion, methods=["POST"]),
        Route("/tokenize", api.tokenize, methods=["POST"]),
        Route("/detokenize", api.detokenize, methods=["POST"]),
        Route("/apply-template", api.apply_template, methods=["POST"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/v1/completions", api.oai_completions, methods=["POST"]),
        Route("/v1/chat/completions", api.chat_completions, methods=["POST"]),
        *[Route(path, _page(file, mime), methods=["GET"]) for path, (file, mime) in PAGE_FILES.items()],
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    app.state.engine = engine
    return _ApiKey(app, api_key) if api_key else app


# -- plumbing --------------------------------------------------------------------------------------

def _error_response(e: ApiError) -> JSONResponse:
    headers = {"Retry-After": "1"} if e.status == 503 else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return _error_response(ApiError(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}", kind))


def _api_error(e: Exception) -> ApiError:
    if isinstance(e, ApiError):
        return e
    if isinstance(e, NotReady):
        return ApiError(503, str(e), "unavailable_error")
    if isinstance(e, QueueFull):
        return ApiError(503, str(e), "unavailable_error")
    if isinstance(e, ContextOverflow):
        return ApiError(400, str(e), "exceed_context_size_error")
    if isinstance(e, TccError):
        return ApiError(400, str(e))
    return ApiError(500, f"internal error: {type(e).__name__}: {e}", "server_error")


def _handler(fn):
    """Every route: any exception becomes a JSON error response, never a traceback or a dropped connection."""
    @functools.wraps(fn)
    async def wrapped(self, request: Request) -> Response:
        try:
            return await fn(self, request)
        except Exception as e:  # noqa: BLE001
            return _error_response(_api_error(e))
    return wrapped


def _page(file: str, mime: str):
    async def serve(request: Request) -> Response:
        return FileResponse(os.path.join(PAGE_DIR, file), media_type=mime, headers={"Cache-Control": "no-cache"})
    return serve


class _ApiKey:
    """Pure ASGI middleware (streams pass through untouched): `Authorization: Bearer KEY` or `X-Api-Key`."""

    def __init__(self, app, key: str):
        self.app = app
        self.key = key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in PUBLIC:
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        auth = headers.get(b"authorization", b"")
        given = auth[7:].strip() if auth[:7].lower() == b"bearer " else headers.get(b"x-api-key", b"")
        if not hmac.compare_digest(given, self.key):
            resp = JSONResponse(ApiError(401, "invalid or missing API key (send Authorization: Bearer KEY)",
                                         "authentication_error").body(), status_code=401)
            return await resp(scope, receive, send)
        return await self.app(scope, receive, send)


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _events(request: Request, job: Job, queue: asyncio.Queue):
    """The job's events until it is done; the client going away ends them and cancels the job."""
    gone = asyncio.ensure_future(_wait_disconnect(request))
    try:
        while True:
            if queue.empty():
                get = asyncio.ensure_future(queue.get())
                await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    return
                ev = get.result()
            else:
                ev = queue.get_nowait()
            yield ev
            if ev["type"] != "token":
                return
    finally:
        gone.cancel()
        job.cancel()  # a no-op once the job is done; frees the slot when the client left mid-reply


async def _collect(request: Request, job: Job, queue: asyncio.Queue) -> dict:
    async for ev in _events(request, job, queue):
        if ev["type"] == "error":
            raise ApiError(ev.get("status", 500), ev["message"], "server_error")
        if ev["type"] == "done":
            return ev["result"]
    raise ApiError(499, "the client closed the request")


def _stream(request: Request, job: Job, queue: asyncio.Queue, render) -> StreamingResponse:
    """SSE of render(event) for every event (render returns a list of payloads, possibly empty)."""
    async def body():
        async for ev in _events(request, job, queue):
            if ev["type"] == "error":
                yield _sse(ApiError(ev.get("status", 500), ev["message"], "server_error").body())
                return
            for payload in render(ev):
                yield payload if isinstance(payload, str) else _sse(payload)
    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# -- the routes --------------------------------------------------------------------------------------

class _Api:
    def __init__(self, engine: Engine, name: str):
        self.engine = engine
        self.name = name

    # -- helpers ---------------------------------------------------------------------------------
    async def _body(self, request: Request, model):
        raw = await request.body()
        return parse_body(raw, model)

    def _tokenizer(self):
        self.engine.check_ready()
        tok = self.engine.tokenizer
        if tok is None:
            raise ApiError(400, f"{self.name} has no tokenizer (compile with --tokenizer): send token ids")
        return tok

    def _check_ids(self, ids: list[int], what: str = "prompt") -> None:
        vocab = self.engine.vocab
        for i, t in enumerate(ids):
            if not 0 <= t < vocab:
                raise ApiError(400, f"{what}: token id {t} at position {i} is out of range for the vocabulary "
                                    f"of {vocab}")

    async def _prompt_ids(self, prompt) -> list[int]:
        """llama.cpp's prompt: text, token ids, or a mix (text pieces are tokenized; only a leading text
        piece gets the tokenizer's special tokens, e.g. BOS)."""
        self.engine.check_ready()
        parts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not parts or all(p == "" for p in parts):
            raise ApiError(400, "empty prompt: give some text or token ids to continue")
        if any(isinstance(p, str) for p in parts):
            tok = self._tokenizer()

            def encode():
                return [[int(p)] if not isinstance(p, str) else tok.encode(p, add_special_tokens=i == 0)
                        for i, p in enumerate(parts)]
            pieces = await to_thread.run_sync(encode)
            ids = [t for piece in pieces for t in piece]
        else:
            ids = [int(p) for p in parts]
        if not ids:
            raise ApiError(400, "empty prompt: give some text or token ids to continue")
        self._check_ids(ids)
        return ids

    def _submit(self, ids: list[int], params: Params) -> tuple[Job, asyncio.Queue]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        job = Job(ids, params, lambda ev: loop.call_soon_threadsafe(queue.put_nowait, ev))
        self.engine.submit(job)
        return job, queue

    def _check_room(self, n_prompt: int, max_tokens: int | None) -> None:
        ctx = self.engine.ctx
        if max_tokens is not None and n_prompt + max_tokens > ctx:
            raise ApiError(400, f"the context per slot is {ctx} tokens, but {n_prompt + max_tokens} were requested "
                                f"({n_prompt} in the prompt, {max_tokens} to generate)", "exceed_context_size_error")

    # -- llama.cpp routes ------------------------------------------------------------------------
    @_handler
    async def health(self, request: Request) -> Response:
        e = self.engine
        if e.state == "ready":
            return JSONResponse({"status": "ok"})
        msg = "Loading model" if e.state == "loading" else f"the model failed to load: {e.error}"
        return _error_response(ApiError(503, msg, "unavailable_error"))

    @_handler
    async def props(self, request: Request) -> Response:
        e = self.engine
        e.check_ready()
        defaults = Params()
        cc = e.llm.get("chat_config") or {}
        return JSONResponse({
            "default_generation_settings": {"n_ctx": e.ctx, "params": {
                k: getattr(defaults, k) for k in ("n_predict", "temperature", "top_k", "top_p", "min_p",
                                                  "repeat_penalty", "repeat_last_n", "presence_penalty",
                                                  "frequency_penalty", "n_probs", "ignore_eos", "cache_prompt")}},
            "total_slots": e.n_slots, "model_path": e.artifact, "model": self.name,
            "n_vocab": e.vocab, "n_ctx_artifact": e.llm.get("capacity"), "target": e.manifest.get("target"),
            "chat_template": cc.get("template_name"), "chat_template_segments": cc or None,
            "build_info": f"tcc {__version__}",
        })

    @_handler
    async def slots(self, request: Request) -> Response:
        self.engine.check_ready()
        return JSONResponse(self.engine.slots_info())

    @_handler
    async def metrics(self, request: Request) -> Response:
        e = self.engine
        m = e.metrics
        busy, waiting = e.counts()
        rows = [
            ("prompt_tokens_total", "counter", "prompt tokens evaluated", m["prompt_tokens"]),
            ("prompt_seconds_total", "counter", "time spent evaluating prompts", m["prompt_ms"] / 1e3),
            ("tokens_predicted_total", "counter", "tokens generated", m["tokens_predicted"]),
            ("tokens_predicted_seconds_total", "counter", "time spent generating", m["predicted_ms"] / 1e3),
            ("requests_total", "counter", "generation requests accepted", m["requests"]),
            ("requests_rejected_total", "counter", "requests refused with 503 (queue full)", m["requests_rejected"]),
            ("requests_cancelled_total", "counter", "requests whose client went away", m["requests_cancelled"]),
            ("requests_failed_total", "counter", "requests that failed in the engine", m["requests_failed"]),
            ("requests_processing", "gauge", "requests in a slot", busy),
            ("requests_deferred", "gauge", "requests waiting for a slot", waiting),
            ("slots_total", "gauge", "slots (sequences served at once)", e.n_slots),
            ("decode_steps_total", "counter", "batched decode runs (one per step of all decoding slots)",
             m["decode_steps"]),
            ("decode_rows_total", "counter", "slot-tokens decoded by batched runs (rows / steps: the mean batch)",
             m["decode_rows"]),
        ]
        lines = []
        for name, kind, help_, value in rows:
            lines += [f"# HELP tcc_{name} {help_}", f"# TYPE tcc_{name} {kind}", f"tcc_{name} {value}"]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    @_handler
    async def tokenize(self, request: Request) -> Response:
        body = await self._body(request, TokenizeRequest)
        tok = self._tokenizer()
        ids = await to_thread.run_sync(lambda: tok.encode(body.content, add_special_tokens=body.add_special))
        if body.with_pieces:
            return JSONResponse({"tokens": [{"id": t, "piece": tok.decode([t], skip_special_tokens=False)}
                                            for t in ids]})
        return JSONResponse({"tokens": ids})

    @_handler
    async def detokenize(self, request: Request) -> Response:
        body = await self._body(request, DetokenizeRequest)
        tok = self._tokenizer()
        self._check_ids(body.tokens, "tokens")
        return JSONResponse({"content": tok.decode(body.tokens)})

    @_handler
    async def apply_template(self, request: Request) -> Response:
        body = await self._body(request, TemplateRequest)
        self._tokenizer()
        return JSONResponse({"prompt": "".join(text for text, _ in self._chat_segments(body.messages))})

    @_handler
    async def completion(self, request: Request) -> Response:
        body = await self._body(request, CompletionRequest)
        ids = await self._prompt_ids(body.prompt)
        params = _params(body, n_predict=body.n_predict, stop=stop_list(body.stop), n_probs=body.n_probs,
                         ignore_eos=body.ignore_eos, id_slot=body.id_slot)
        job, queue = self._submit(ids, params)
        if not body.stream:
            return JSONResponse(self._llama_record(await _collect(request, job, queue), ids, params))

        def render(ev):
            if ev["type"] == "token":
                out = {"content": ev["content"], "tokens": ev["tokens"], "stop": False}
                if ev["probs"] is not None:
                    out["completion_probabilities"] = [ev["probs"]]
                return [out]
            rec = self._llama_record(ev["result"], ids, params)
            rec["content"] = ""  # already streamed: clients concatenate the pieces
            rec["tokens"] = []
            rec.pop("completion_probabilities", None)
            return [rec]
        return _stream(request, job, queue, render)

    def _llama_record(self, r: dict, ids: list[int], params: Params) -> dict:
        rec = {k: r[k] for k in ("content", "tokens", "stop", "stop_type", "stopping_word", "tokens_cached",
                                 "tokens_evaluated", "truncated", "id_slot", "timings")}
        rec.update(model=self.name, tokens_predicted=len(r["tokens"]),
                   generation_settings={**params.__dict__, "stop": list(params.stop), "n_ctx": self.engine.ctx})
        if "completion_probabilities" in r:
            rec["completion_probabilities"] = r["completion_probabilities"]
        return rec

    # -- chat formatting -------------------------------------------------------------------------
    def _chat_segments(self, messages: list[Message]) -> list[tuple[str, bool]]:
        """The conversation as (text, is_reply) segments following the artifact's chat template (chat.json
        segments, as `tcc chat`, so a continued conversation shares its token prefix with the cache)."""
        cc = self.engine.llm.get("chat_config")
        if not cc:
            raise ApiError(400, f"{self.name} has no chat template (compiled without a tokenizer): use /completion")
        msgs = list(messages)
        system = None
        if msgs[0].role in ("system", "developer"):
            system = msgs.pop(0).text()
        for i, m in enumerate(msgs):
            want = "user" if i % 2 == 0 else "assistant"
            if m.role != want:
                raise ApiError(400, f"messages: after an optional system message, roles must alternate user, "
                                    f"assistant, user, ...; message {i + (system is not None)} is {m.role!r}")
        if not msgs or msgs[-1].role != "user":
            raise ApiError(400, "messages: the last message must be the user's")
        system = system if system is not None else cc.get("default_system")
        segs: list[tuple[str, bool]] = []
        for i, m in enumerate(msgs):
            if m.role == "assistant":
                segs.append((m.text(), True))
                continue
            if i == 0:
                fups = cc.get("first_user_prefix_with_system")
                if system and fups:
                    text = fups[0] + system + fups[1] + m.text() + cc["user_suffix"]
                else:
                    user = (system + "\n\n" + m.text()) if system else m.text()
                    text = cc["first_user_prefix"] + user + cc["user_suffix"]
                if cc.get("add_bos") and cc.get("bos_token_id") is not None:
                    bos = self.engine.tokenizer.decode([cc["bos_token_id"]], skip_special_tokens=False)
                    segs.append((bos, False))
            else:
                text = cc["assistant_suffix"] + cc["user_prefix"] + m.text() + cc["user_suffix"]
            segs.append((text, False))
        return segs

    async def _chat_ids(self, messages: list[Message]) -> list[int]:
        tok = self._tokenizer()
        segs = self._chat_segments(messages)
        cc = self.engine.llm["chat_config"]

        def encode():
            ids: list[int] = []
            for i, (text, _) in enumerate(segs):
                if i == 0 and cc.get("add_bos") and cc.get("bos_token_id") is not None:
                    ids.append(cc["bos_token_id"])
                    continue
                ids += tok.encode(text, add_special_tokens=False)
            return ids
        ids = await to_thread.run_sync(encode)
        self._check_ids(ids)
        return ids

    # -- OpenAI routes ---------------------------------------------------------------------------
    @_handler
    async def models(self, request: Request) -> Response:
        e = self.engine
        e.check_ready()
        return JSONResponse({"object": "list", "data": [{
            "id": self.name, "object": "model", "created": int(e.started), "owned_by": "tcc",
            "meta": {"n_ctx": e.ctx, "n_vocab": e.vocab, "slots": e.n_slots}}]})

    @_handler
    async def chat_completions(self, request: Request) -> Response:
        body = await self._body(request, ChatRequest)
        ids = await self._chat_ids(body.messages)
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        self._check_room(len(ids), max_tokens)
        n_probs = (body.top_logprobs or 0) if body.logprobs else 0
        params = _params(body, n_predict=-1 if max_tokens is None else max_tokens, stop=stop_list(body.stop),
                         n_probs=max(n_probs, 1) if body.logprobs else 0)
        job, queue = self._submit(ids, params)
        head = self._oai_head("chatcmpl", "chat.completion")
        if not body.stream:
            r = await _collect(request, job, queue)
            choice = {"index": 0, "message": {"role": "assistant", "content": r["content"]},
                      "logprobs": _chat_logprobs(r, n_probs) if body.logprobs else None,
                      "finish_reason": _finish(r)}
            return JSONResponse({**head, "choices": [choice], "usage": _usage(r), "timings": r["timings"]})
        usage = bool(body.stream_options and body.stream_options.include_usage)
        chunk = {**head, "object": "chat.completion.chunk"}
        first = [True]

        def render(ev):
            out = []
            if first[0]:
                first[0] = False
                out.append({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                  "logprobs": None, "finish_reason": None}]})
            if ev["type"] == "token":
                if ev["content"] or (body.logprobs and ev["probs"]):
                    lp = _chat_logprobs({"completion_probabilities": [ev["probs"]]}, n_probs) \
                        if body.logprobs and ev["probs"] else None
                    out.append({**chunk, "choices": [{"index": 0, "delta": {"content": ev["content"]},
                                                      "logprobs": lp, "finish_reason": None}]})
                return out
            r = ev["result"]
            out.append({**chunk, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                              "finish_reason": _finish(r)}]})
            if usage:
                out.append({**chunk, "choices": [], "usage": _usage(r)})
            out.append("data: [DONE]\n\n")
            return out
        return _stream(request, job, queue, render)

    @_handler
    async def oai_completions(self, request: Request) -> Response:
        body = await self._body(request, CompletionsRequest)
        ids = await self._prompt_ids(body.prompt)
        max_tokens = 16 if body.max_tokens is None else body.max_tokens  # OpenAI's default
        self._check_room(len(ids), max_tokens)
        n_probs = body.logprobs or 0
        params = _params(body, n_predict=max_tokens, stop=stop_list(body.stop),
                         n_probs=max(n_probs, 1) if body.logprobs is not None else 0)
        job, queue = self._submit(ids, params)
        head = self._oai_head("cmpl", "text_completion")
        if not body.stream:
            r = await _collect(request, job, queue)
            choice = {"index": 0, "text": r["content"], "finish_reason": _finish(r),
                      "logprobs": _legacy_logprobs(r, n_probs) if body.logprobs is not None else None}
            return JSONResponse({**head, "choices": [choice], "usage": _usage(r), "timings": r["timings"]})
        usage = bool(body.stream_options and body.stream_options.include_usage)

        def render(ev):
            if ev["type"] == "token":
                if not ev["content"]:
                    return []
                return [{**head, "choices": [{"index": 0, "text": ev["content"], "logprobs": None,
                                              "finish_reason": None}]}]
            r = ev["result"]
            out = [{**head, "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": _finish(r)}]}]
            if usage:
                out.append({**head, "choices": [], "usage": _usage(r)})
            return out + ["data: [DONE]\n\n"]
        return _stream(request, job, queue, render)

    def _oai_head(self, prefix: str, obj: str) -> dict:
        return {"id": f"{prefix}-{uuid.uuid4().hex[:24]}", "object": obj, "created": int(time.time()),
                "model": self.name, "system_fingerprint": f"tcc-{__version__}"}


def _params(body, n_predict: int, stop: tuple[str, ...], n_probs: int = 0, ignore_eos: bool = False,
            id_slot: int = -1) -> Params:
    return Params(n_predict=n_predict, temperature=body.temperature, top_k=body.top_k, top_p=body.top_p,
                  min_p=body.min_p, repeat_penalty=body.repeat_penalty, repeat_last_n=body.repeat_last_n,
                  presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
                  seed=None if body.seed in (None, -1) else body.seed, stop=stop, n_probs=n_probs,
                  ignore_eos=ignore_eos, cache_prompt=body.cache_prompt, id_slot=id_slot)


def _finish(r: dict) -> str:
    return "length" if r["stop_type"] == "limit" else "stop"


def _usage(r: dict) -> dict:
    p, c = r["tokens_evaluated"], len(r["tokens"])
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
            "prompt_tokens_details": {"cached_tokens": r["tokens_cached"]}}


def _chat_logprobs(r: dict, top: int) -> dict:
    def entry(e):
        return {"token": e["token"], "logprob": e["logprob"], "bytes": e["bytes"]}
    return {"content": [{**entry(p), "top_logprobs": [entry(t) for t in p["top_logprobs"][:top]]}
                        for p in r.get("completion_probabilities") or []]}


def _legacy_logprobs(r: dict, top: int) -> dict:
    probs = r.get("completion_probabilities") or []
    offsets, pos = [], 0
    for p in probs:
        offsets.append(pos)
        pos += len(p["token"])
    return {"tokens": [p["token"] for p in probs], "token_logprobs": [p["logprob"] for p in probs],
            "top_logprobs": [{t["token"]: t["logprob"] for t in p["top_logprobs"][:top]} for p in probs],
            "text_offset": offsets}
