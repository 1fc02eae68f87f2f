"""Load test of a running `tcc serve`: time to first token, tokens/s per client and in all, latency p50/p99,
at 1, 2, 4 and 8 concurrent clients. Prints a markdown table (docs/serve.md has one).

    tcc serve --demo --slots 8 &
    python benchmarks/serve_load.py --url http://127.0.0.1:8080

Each client sends `--requests` streaming /completion requests one after another, each with its own prompt
(`cache_prompt: false`, so every request evaluates its whole prompt) and a fixed number of new tokens
(`ignore_eos`), greedy. Loopback only: the URL must name this machine. `--ids` sends prompts of token ids
instead of text, for an artifact without a tokenizer (a random model of some shape).
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import threading
import time
from urllib.parse import urlparse

import httpx

PROMPT = "The for statement in Python"


def one_request(client: httpx.Client, url: str, prompt: str, n_predict: int) -> dict:
    body = {"prompt": prompt, "n_predict": n_predict, "ignore_eos": True, "temperature": 0, "cache_prompt": False,
            "stream": True}
    t0 = time.perf_counter()
    first = None
    n = 0
    with client.stream("POST", url + "/completion", json=body) as r:
        if r.status_code != 200:
            raise SystemExit(f"serve_load: {r.status_code} from the server: {r.read().decode()[:200]}")
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            ev = json.loads(line[6:])
            if "error" in ev:
                raise SystemExit(f"serve_load: error from the server: {ev['error']['message']}")
            if ev.get("tokens"):
                n += len(ev["tokens"])
                first = first or time.perf_counter()
    end = time.perf_counter()
    first = first or end
    return {"ttft": first - t0, "latency": end - t0, "tokens": n,
            "decode_tps": (n - 1) / (end - first) if n > 1 and end > first else 0.0}


def prompt_of(c: int, j: int, ids: bool):
    """Request j of client c: its own prompt (text, or 8 token ids distinct per request)."""
    return [1, 100 + c, 200 + j, 300, 301, 302, 303, 304] if ids else f"{PROMPT} (client {c}, request {j})"


def level(url: str, clients: int, requests: int, n_predict: int, headers: dict, ids: bool = False) -> dict:
    results: list[dict] = []
    lock = threading.Lock()

    def run(c: int) -> None:
        # TCP_NODELAY, as browsers and curl: without it the request body waits for a delayed ACK (40 ms)
        nodelay = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        with httpx.Client(timeout=600, headers=headers, transport=nodelay) as client:
            for j in range(requests):
                r = one_request(client, url, prompt_of(c, j, ids), n_predict)
                with lock:
                    results.append(r)

    threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"clients": clients, "requests": len(results), "wall": wall,
            "agg_tps": sum(r["tokens"] for r in results) / wall,
            "ttft": [r["ttft"] for r in results], "latency": [r["latency"] for r in results],
            "client_tps": [r["decode_tps"] for r in results]}


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def table(rows: list[dict]) -> str:
    base = rows[0]["agg_tps"]
    out = ["| clients | requests | TTFT p50 | TTFT p99 | tok/s per client (p50) | aggregate tok/s | vs 1 client "
           "| latency p50 | latency p99 |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['clients']} | {r['requests']} | {1e3 * pct(r['ttft'], 50):.0f} ms "
                   f"| {1e3 * pct(r['ttft'], 99):.0f} ms | {statistics.median(r['client_tps']):.1f} "
                   f"| {r['agg_tps']:.1f} | {r['agg_tps'] / base:.2f}x | {pct(r['latency'], 50):.2f} s "
                   f"| {pct(r['latency'], 99):.2f} s |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080", help="the server (loopback only)")
    ap.add_argument("--clients", default="1,2,4,8", help="concurrency levels (1,2,4,8)")
    ap.add_argument("--requests", type=int, default=3, help="requests per client at each level (3)")
    ap.add_argument("--n-predict", type=int, default=64, help="new tokens per request (64)")
    ap.add_argument("--api-key", help="the server's --api-key")
    ap.add_argument("--ids", action="store_true", help="prompts of token ids (an artifact without a tokenizer)")
    args = ap.parse_args(argv)
    host = urlparse(args.url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"serve_load: {host} is not this machine; the load test runs over loopback only")
    if not 1 <= args.requests <= 100 or not 1 <= args.n_predict <= 4096:
        raise SystemExit("serve_load: --requests must be 1..100 and --n-predict 1..4096")
    levels = [int(x) for x in args.clients.split(",")]
    if not all(1 <= c <= 64 for c in levels):
        raise SystemExit("serve_load: concurrency levels must be 1..64")
    url = args.url.rstrip("/")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    try:
        props = httpx.get(url + "/props", headers=headers, timeout=30).json()
    except httpx.HTTPError as e:
        raise SystemExit(f"serve_load: cannot reach {url}: {e} (is `tcc serve` running and ready?)") from None
    if "error" in props:
        raise SystemExit(f"serve_load: {url}: {props['error']['message']}")
    print(f"server: {props.get('model')} ({props.get('target')}), {props.get('total_slots')} slots x "
          f"{props['default_generation_settings']['n_ctx']} tokens; {args.requests} requests per client, "
          f"{args.n_predict} new tokens each", file=sys.stderr)
    level(url, 1, 1, 8, headers, args.ids)  # warm up: page in the weights, start the worker threads
    rows = []
    for c in levels:
        rows.append(level(url, c, args.requests, args.n_predict, headers, args.ids))
        print(f"  {c} clients: {rows[-1]['agg_tps']:.1f} tok/s in all", file=sys.stderr)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
