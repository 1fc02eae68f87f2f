"""`tcc serve` routes through an in-process client: llama.cpp's and OpenAI's shapes, prompt caching, stop
strings, probabilities, the API key, 503 while loading and past the queue bound."""
from __future__ import annotations

import json
import threading

import pytest

pytestmark = pytest.mark.xdist_group("serve")  # one worker: one compiled artifact, one server

GREEDY = {"temperature": 0, "cache_prompt": False}


def _sse(text: str) -> list:
    out = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            data = block[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_health_props_models_slots_metrics(client, engine):
    assert client.get("/health").json() == {"status": "ok"}
    props = client.get("/props").json()
    assert props["total_slots"] == 2 and props["default_generation_settings"]["n_ctx"] == engine.ctx
    assert props["chat_template"] == "default"
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["object"] == "model"
    slots = client.get("/slots").json()
    assert [s["id"] for s in slots] == [0, 1] and not any(s["is_processing"] for s in slots)
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "# TYPE tcc_prompt_tokens_total counter" in metrics.text and "tcc_slots_total 2" in metrics.text


def test_completion_text_ids_and_record(client):
    r = client.post("/completion", json={"prompt": "hello world", "n_predict": 12, **GREEDY}).json()
    ids = client.post("/tokenize", json={"content": "hello world", "add_special": True}).json()["tokens"]
    assert r["tokens_evaluated"] == len(ids) and len(r["tokens"]) == 12 and r["stop_type"] == "limit"
    assert r["timings"]["predicted_n"] == 12 and r["timings"]["prompt_n"] == len(ids)
    by_ids = client.post("/completion", json={"prompt": ids, "n_predict": 12, **GREEDY}).json()
    assert by_ids["tokens"] == r["tokens"]
    mixed = client.post("/completion", json={"prompt": ["hello", *ids[-1:]], "n_predict": 1, **GREEDY}).json()
    assert mixed["tokens_evaluated"] == len(client.post("/tokenize", json={"content": "hello", "add_special": True})
                                           .json()["tokens"]) + 1


def test_prompt_cache_reuses_prefix_and_keeps_results(client):
    prompt = "the quick brown fox jumps over"
    fresh = client.post("/completion", json={"prompt": prompt, "n_predict": 10, **GREEDY}).json()
    assert fresh["tokens_cached"] == 0
    client.post("/completion", json={"prompt": prompt + " the", "n_predict": 3, "temperature": 0})
    cached = client.post("/completion", json={"prompt": prompt, "n_predict": 10, "temperature": 0}).json()
    assert cached["tokens_cached"] == fresh["tokens_evaluated"] - 1  # all but the last, whose logits start the reply
    assert cached["timings"]["prompt_n"] == 1
    assert cached["tokens"] == fresh["tokens"]


def test_chat_continuation_evaluates_only_the_new_turn(client):
    first = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
    a = client.post("/v1/chat/completions", json={"messages": first, "max_tokens": 6, "temperature": 0}).json()
    reply = a["choices"][0]["message"]["content"]
    turn2 = first + [{"role": "assistant", "content": reply}, {"role": "user", "content": "and then?"}]
    b = client.post("/v1/chat/completions", json={"messages": turn2, "max_tokens": 6, "temperature": 0}).json()
    assert b["usage"]["prompt_tokens_details"]["cached_tokens"] >= a["usage"]["prompt_tokens"]
    assert b["timings"]["prompt_n"] < b["usage"]["prompt_tokens"] - a["usage"]["prompt_tokens"] + 8


def test_streaming_completion_equals_non_streaming(client):
    body = {"prompt": "once upon", "n_predict": 16, **GREEDY}
    whole = client.post("/completion", json=body).json()
    events = _sse(client.post("/completion", json={**body, "stream": True}).text)
    assert all(not e["stop"] for e in events[:-1]) and events[-1]["stop"] is True
    assert "".join(e["content"] for e in events) == whole["content"]
    assert [t for e in events for t in e["tokens"]] == whole["tokens"]
    assert events[-1]["stop_type"] == "limit" and events[-1]["timings"]["predicted_n"] == 16


def test_stop_strings_end_the_reply_and_never_stream(client):
    body = {"prompt": "once upon", "n_predict": 24, **GREEDY}
    text = client.post("/completion", json=body).json()["content"]
    cut = next(i for i in range(4, len(text) - 2) if text[i:i + 2].strip() and text.find(text[i:i + 2]) == i)
    stop = text[cut:cut + 2]
    r = client.post("/completion", json={**body, "stop": [stop, "\x00never"]}).json()
    assert r["content"] == text[:cut] and r["stop_type"] == "word" and r["stopping_word"] == stop
    events = _sse(client.post("/completion", json={**body, "stop": [stop], "stream": True}).text)
    assert "".join(e["content"] for e in events) == text[:cut]


def test_n_probs(client):
    r = client.post("/completion", json={"prompt": "abc", "n_predict": 4, "n_probs": 3, **GREEDY}).json()
    probs = r["completion_probabilities"]
    assert [p["id"] for p in probs] == r["tokens"]
    for p in probs:
        assert len(p["top_logprobs"]) == 3 and p["top_logprobs"][0]["id"] == p["id"]  # greedy: the top token
        assert p["logprob"] <= 0 and p["top_logprobs"][0]["logprob"] >= p["top_logprobs"][1]["logprob"]


def test_n_predict_past_the_context_stops_at_the_context(client, engine):
    r = client.post("/completion", json={"prompt": [5, 6, 7], "n_predict": 2**31 - 1, "ignore_eos": True,
                                         **GREEDY}).json()
    assert r["stop_type"] == "limit" and len(r["tokens"]) == engine.ctx - 3


def test_tokenize_pieces_and_apply_template(client, engine):
    pieces = client.post("/tokenize", json={"content": "hello", "with_pieces": True}).json()["tokens"]
    assert "".join(p["piece"] for p in pieces) == "hello"
    ids = [p["id"] for p in pieces]
    assert client.post("/detokenize", json={"tokens": ids}).json()["content"] == "hello"
    cc = engine.llm["chat_config"]
    prompt = client.post("/apply-template", json={"messages": [{"role": "user", "content": "hi"}]}).json()["prompt"]
    assert prompt == cc["first_user_prefix"] + "hi" + cc["user_suffix"]


def test_openai_shapes(client):
    msgs = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    r = client.post("/v1/chat/completions", json={"messages": msgs, "max_tokens": 5, "temperature": 0,
                                                  "logprobs": True, "top_logprobs": 2}).json()
    assert r["object"] == "chat.completion" and r["choices"][0]["finish_reason"] == "length"
    assert r["usage"]["completion_tokens"] == 5 and len(r["choices"][0]["logprobs"]["content"]) == 5
    chunks = _sse(client.post("/v1/chat/completions", json={"messages": msgs, "max_tokens": 5, "temperature": 0,
                                                            "stream": True,
                                                            "stream_options": {"include_usage": True}}).text)
    assert chunks[-1] == "[DONE]" and chunks[-2]["choices"] == [] and chunks[-2]["usage"]["completion_tokens"] == 5
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-2])
    assert streamed == r["choices"][0]["message"]["content"]
    t = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 3, "temperature": 0, "logprobs": 1}).json()
    assert t["object"] == "text_completion" and len(t["choices"][0]["logprobs"]["tokens"]) == 3


def test_api_key_guards_all_but_health(engine):
    from starlette.testclient import TestClient

    from tcc.runtime.serve.app import create_app

    c = TestClient(create_app(engine, api_key="sekrit"))
    assert c.get("/health").status_code == 200
    assert c.get("/").status_code == 200  # the page's own files: it asks for the key
    for path in ("/props", "/slots", "/metrics", "/v1/models"):
        r = c.get(path)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error", path
    assert c.post("/completion", json={"prompt": "x"}).status_code == 401
    assert c.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.get("/v1/models", headers={"Authorization": "Bearer sekrit"}).status_code == 200
    assert c.get("/props", headers={"X-Api-Key": "sekrit"}).status_code == 200


def test_503_while_loading(llm_artifact):
    from starlette.testclient import TestClient

    import tcc
    from tcc.runtime.serve.app import create_app
    from tcc.runtime.serve.engine import Engine

    gate = threading.Event()

    def slow_load(*a, **kw):
        gate.wait(30)
        return tcc.load(*a, **kw)

    e = Engine(llm_artifact, slots=1, load=slow_load)
    e.start()
    try:
        c = TestClient(create_app(e))
        r = c.get("/health")
        assert r.status_code == 503 and r.json()["error"]["message"] == "Loading model"
        assert c.post("/completion", json={"prompt": [1, 2]}).status_code == 503
        gate.set()
        assert e.wait_loaded(30)
        assert c.get("/health").status_code == 200
    finally:
        gate.set()
        e.stop()


def test_503_past_the_queue_bound(llm_artifact):
    """An engine that is ready but whose slots are all taken (no engine thread: nothing moves)."""
    from starlette.testclient import TestClient

    from tcc.runtime.serve.app import create_app
    from tcc.runtime.serve.engine import Engine, Job, Params, QueueFull

    e = Engine(llm_artifact, slots=1, queue=2)
    e.state, e.ctx, e.vocab = "ready", 64, 384
    for _ in range(2):
        e.submit(Job([1, 2], Params(), lambda ev: None))
    with pytest.raises(QueueFull):
        e.submit(Job([1, 2], Params(), lambda ev: None))
    r = TestClient(create_app(e)).post("/completion", json={"prompt": [1, 2, 3]})
    assert r.status_code == 503 and "busy" in r.json()["error"]["message"] and r.headers["retry-after"] == "1"
    assert e.metrics["requests_rejected"] == 2


def test_listen_socket_is_tcp_so_streams_are_not_delayed():
    """asyncio disables Nagle only on sockets whose proto is TCP; with Nagle each streamed token after the
    headers would wait for the client's delayed ACK."""
    import socket

    from tcc.errors import TccError
    from tcc.runtime.serve import listen

    sock = listen("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
        with pytest.raises(TccError, match="cannot listen on 127.0.0.1"):
            listen("127.0.0.1", sock.getsockname()[1])
    finally:
        sock.close()
    with pytest.raises(TccError, match="--port"):
        listen("127.0.0.1", 70000)
