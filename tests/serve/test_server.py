"""`tcc serve` as a user runs it: a subprocess on 127.0.0.1 driven by the `openai` package and plain HTTP;
concurrent clients (results equal to the same requests run alone, greedy); a client that disconnects
mid-stream frees its slot; 32 clients at once leave the server serving with no slot leaked."""
from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from .conftest import Server

pytestmark = pytest.mark.xdist_group("serve")  # one worker: one compiled artifact, one server


def _metric(text: str, name: str) -> float:
    return next(float(line.split()[1]) for line in text.splitlines() if line.startswith(name + " "))


def test_openai_client(server):
    from openai import BadRequestError, OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="anything")
    model = client.models.list().data[0].id
    msgs = [{"role": "user", "content": "hello"}]
    r = client.chat.completions.create(model=model, messages=msgs, max_tokens=8, temperature=0, seed=1)
    assert r.choices[0].finish_reason in ("length", "stop") and r.usage.completion_tokens <= 8
    text = r.choices[0].message.content
    pieces, usage = [], None
    for chunk in client.chat.completions.create(model=model, messages=msgs, max_tokens=8, temperature=0, stream=True,
                                                stream_options={"include_usage": True}):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    assert "".join(pieces) == text and usage.completion_tokens == r.usage.completion_tokens
    c = client.completions.create(model=model, prompt="hello", max_tokens=4, temperature=0)
    assert c.choices[0].finish_reason == "length" and c.usage.completion_tokens == 4
    with pytest.raises(BadRequestError, match="context per slot"):
        client.chat.completions.create(model=model, messages=msgs, max_tokens=10_000)


def test_llama_routes_over_plain_http(server):
    assert server.get("/health").json() == {"status": "ok"}
    r = server.post("/completion", json={"prompt": "hello", "n_predict": 6, "temperature": 0})
    assert r.status_code == 200 and len(r.json()["tokens"]) == 6
    with httpx.stream("POST", server.url + "/completion", timeout=60,
                      json={"prompt": "hello", "n_predict": 6, "temperature": 0, "stream": True}) as s:
        assert s.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: ")]
    assert [t for e in events for t in e["tokens"]] == r.json()["tokens"] and events[-1]["stop"]
    assert server.post("/tokenize", json={"content": "hello"}).json()["tokens"]
    assert "tcc_tokens_predicted_total" in server.get("/metrics").text
    bad = server.post("/completion", content=b'{"prompt": "x", "stream": "true"}')
    assert bad.status_code == 400 and "stream" in bad.json()["error"]["message"]


PROMPTS = [[1, 5, 17, 99], [1, 42, 43], [1, 7, 7, 7, 7, 7], [1, 200, 100, 50, 25], [1, 300],
           [1, 11, 12, 13, 14, 15, 16]]


# Batched decode runs the Linear layers with M = rows instead of 1, which may sum in another fp32 order: logits
# agree to relative 1e-5 (tests/runtime/test_run_rows.py). Greedy tokens can then differ only where the top two
# logits are that close: a near tie, below this gap (log-probability difference = logit difference).
NEAR_TIE = 1e-3


def _complete(url: str, prompt: list[int], n_probs: int = 0) -> dict:
    r = httpx.post(url + "/completion", timeout=120, json={"prompt": prompt, "n_predict": 20, "temperature": 0,
                                                           "cache_prompt": False, "ignore_eos": True,
                                                           "n_probs": n_probs})
    assert r.status_code == 200, r.text
    return r.json()


def _metric(text: str, name: str) -> float:
    return float(next(ln.split()[1] for ln in text.splitlines() if ln.startswith(name + " ")))


def test_concurrent_clients_get_the_results_of_running_alone(server):
    """16 clients x 3 requests over 4 slots (the queue holds the rest): all complete, their decode steps ran
    batched (rows per step > 1), and each greedy result equals the same request run alone, up to a near tie
    of the alone run's top two logits (then the rest of the reply may follow the other branch)."""
    alone = {i: _complete(server.url, p, n_probs=2) for i, p in enumerate(PROMPTS)}
    before = server.get("/metrics").text

    def client(c: int) -> list[tuple[int, list[int]]]:
        return [((c + j) % len(PROMPTS), _complete(server.url, PROMPTS[(c + j) % len(PROMPTS)])["tokens"])
                for j in range(3)]

    with ThreadPoolExecutor(16) as pool:
        results = [r for rs in pool.map(client, range(16)) for r in rs]
    assert len(results) == 48
    for i, tokens in results:
        want = alone[i]["tokens"]
        if tokens != want:
            at = next(k for k, (a, b) in enumerate(zip(tokens, want)) if a != b)
            top = alone[i]["completion_probabilities"][at]["top_logprobs"]
            gap = top[0]["logprob"] - top[1]["logprob"]
            assert gap < NEAR_TIE, f"prompt {i}: token {at} differs from the alone run's (top-2 gap {gap:.3g})"
    assert not any(s["is_processing"] for s in server.get("/slots").json())
    after = server.get("/metrics").text
    steps = _metric(after, "tcc_decode_steps_total") - _metric(before, "tcc_decode_steps_total")
    rows = _metric(after, "tcc_decode_rows_total") - _metric(before, "tcc_decode_rows_total")
    assert steps > 0 and rows / steps > 1.5, (rows, steps)  # 4 busy slots most of the time


def test_32_clients_at_once_each_get_an_answer(server):
    def one(i: int) -> httpx.Response:
        body = {"prompt": [1, 2 + i], "n_predict": 30, "ignore_eos": True, "stream": i % 2 == 0}
        return httpx.post(server.url + "/completion", json=body, timeout=120)

    before = server.get("/metrics").text
    barrier = threading.Barrier(32)

    def gated(i):
        barrier.wait()
        return one(i)

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(gated, range(32)))
    ok = [a for a in answers if a.status_code == 200]
    busy = [a for a in answers if a.status_code == 503]
    assert len(ok) + len(busy) == 32, [a.text for a in answers if a.status_code not in (200, 503)]
    assert all("busy" in a.json()["error"]["message"] for a in busy)
    after = server.get("/metrics").text
    assert _metric(after, "tcc_requests_total") - _metric(before, "tcc_requests_total") == len(ok)
    assert _metric(after, "tcc_requests_rejected_total") - _metric(before, "tcc_requests_rejected_total") == len(busy)
    assert not any(s["is_processing"] for s in server.get("/slots").json())
    assert server.get("/health").status_code == 200


def test_disconnect_mid_stream_frees_the_slot(paced_server):
    """A paced engine (50 ms a step): the client reads one event and leaves; the slot is freed and the
    reply stops long before its 100 tokens."""
    url = paced_server.url
    e = paced_server.engine
    cancelled, predicted = e.metrics["requests_cancelled"], e.metrics["tokens_predicted"]
    with httpx.stream("POST", url + "/completion", timeout=60,
                      json={"prompt": [1, 5, 6], "n_predict": 100, "ignore_eos": True, "stream": True}) as s:
        for line in s.iter_lines():
            if line.startswith("data: "):
                break
    for _ in range(500):  # until the engine has seen the cancel (bounded: 10 s)
        if e.metrics["requests_cancelled"] > cancelled:
            break
        threading.Event().wait(0.02)
    assert e.metrics["requests_cancelled"] == cancelled + 1
    assert e.metrics["tokens_predicted"] - predicted < 100
    assert not any(s["is_processing"] for s in httpx.get(url + "/slots").json())
    r = httpx.post(url + "/completion", json={"prompt": [1, 5, 6], "n_predict": 2}, timeout=60)
    assert r.status_code == 200


def test_api_key_and_bad_startup(llm_artifact, tmp_path):
    s = Server(llm_artifact, "--api-key", "k3y")
    try:
        assert s.get("/health").status_code == 200
        assert s.get("/v1/models").status_code == 401
        assert s.get("/v1/models", headers={"Authorization": "Bearer k3y"}).status_code == 200
    finally:
        assert s.stop() == 130  # Ctrl-C: `tcc: interrupted`, as every tcc command
    rest = "".join(iter(s.lines.get, None))
    assert "Traceback" not in rest and "interrupted" in rest
    import subprocess
    import sys

    for args, msg in [([str(tmp_path)], "no manifest.json"), ([llm_artifact, "--slots", "0"], "--slots"),
                      ([llm_artifact, "--ctx-per-slot", "100000"], "exceeds the artifact's context"),
                      ([], "give an artifact directory")]:
        p = subprocess.run([sys.executable, "-m", "tcc.cli", "serve", *args, "--port", "0"], capture_output=True,
                           text=True, timeout=120)
        assert p.returncode != 0 and msg in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_disconnect_during_a_non_streaming_request_frees_the_slot(paced_server):
    e = paced_server.engine
    before = e.metrics["requests_cancelled"]
    with pytest.raises(httpx.ReadTimeout):  # the client gives up while the (paced, 100-token) reply runs
        httpx.post(paced_server.url + "/completion", timeout=httpx.Timeout(60, read=0.5),
                   json={"prompt": [1, 8, 9], "n_predict": 100, "ignore_eos": True})
    for _ in range(500):  # bounded: 10 s
        if e.metrics["requests_cancelled"] > before:
            break
        threading.Event().wait(0.02)
    assert e.metrics["requests_cancelled"] == before + 1
    assert not any(s["is_processing"] for s in httpx.get(paced_server.url + "/slots").json())
