"""`tcc serve`: an HTTP server for compiled language models (llama.cpp's and OpenAI's APIs, a chat page).

engine.py  slots, the engine thread, the bounded queue, prompt caching
schemas.py request bodies (strict pydantic models) and the JSON error shape
app.py     the routes (Starlette), SSE streaming, the API key
page/      the chat page served at / (plain HTML, JS and CSS: no build step, no CDN)
See docs/serve.md.
"""
from __future__ import annotations

import socket
import sys
import threading

from ...errors import TccError

DEFAULT_QUEUE = 64


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, or a one-line TccError (port in use, unknown host) before anything loads."""
    if not 0 <= port <= 65535:
        raise TccError(f"--port must be between 0 and 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise TccError(f"cannot listen on {host}:{port}: unknown host ({e})") from None
    family, kind, proto, _, addr = infos[0]
    # proto must say TCP: asyncio turns Nagle off (TCP_NODELAY) only on sockets that do, and with Nagle on
    # every streamed token after the headers waits for the client's delayed ACK (~40 ms)
    sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise TccError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def serve(artifact: str, host: str = "127.0.0.1", port: int = 8080, slots: int = 1, ctx_per_slot: int | None = None,
          api_key: str | None = None, threads: int | None = None, queue: int = DEFAULT_QUEUE,
          verify: bool | None = None, model_name: str | None = None, out=None) -> None:
    """Serve `artifact` until interrupted. The port is bound first (errors before loading), the model
    loads on the engine thread while /health answers 503, and a load failure stops the server with
    its one-line error (raised as TccError)."""
    import uvicorn

    from .app import create_app
    from .engine import Engine

    out = out or sys.stderr
    _check_args(slots, ctx_per_slot, queue, api_key)
    sock = listen(host, port)
    bound = sock.getsockname()[1]
    engine = Engine(artifact, slots=slots, ctx_per_slot=ctx_per_slot, threads=threads, queue=queue, verify=verify)
    app = create_app(engine, api_key=api_key, model_name=model_name)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=3, access_log=False)
    server = uvicorn.Server(config)
    shown = f"[{host}]" if ":" in host else host
    if api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        print(f"tcc serve: warning: listening on {host} without --api-key: anyone who can reach this port can "
              f"use the model", file=out, flush=True)
    print(f"tcc serve: loading {artifact} into {slots} slot{'s' * (slots > 1)} ...", file=out, flush=True)

    def announce():
        engine.wait_loaded()
        if engine.state == "ready":
            print(f"tcc serve: ready on http://{shown}:{bound}/ (chat page); OpenAI base URL "
                  f"http://{shown}:{bound}/v1; {slots} slot{'s' * (slots > 1)} x {engine.ctx} tokens; Ctrl-C stops",
                  file=out, flush=True)
        else:
            server.should_exit = True

    engine.start()
    threading.Thread(target=announce, daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        engine.stop()
        sock.close()
    if engine.error:
        raise TccError(engine.error)


def _check_args(slots, ctx_per_slot, queue, api_key) -> None:
    if not 1 <= slots <= 256:
        raise TccError(f"--slots must be between 1 and 256, got {slots}")
    if ctx_per_slot is not None and ctx_per_slot < 2:
        raise TccError(f"--ctx-per-slot must be at least 2, got {ctx_per_slot}")
    if queue < 0:
        raise TccError(f"--queue must not be negative, got {queue}")
    if api_key is not None and not api_key.strip():
        raise TccError("--api-key must not be empty")
