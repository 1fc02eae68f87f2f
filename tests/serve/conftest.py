"""Fixtures for `tcc serve`: one small compiled LLM (tests/models/llm/llama_past_dynamo, fp32, context 128,
with its tokenizer and Llama-2 chat template) shared by the tests; an in-process engine; a real server
started by `tcc serve` in a subprocess."""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.conftest import MODELS_DIR

MODEL = os.path.join(MODELS_DIR, "llm", "llama_past_dynamo", "model.onnx")
CONTEXT = 128


@pytest.fixture(scope="session")
def llm_artifact(artifact_dir):
    import tcc

    from tcc.driver import CompileOptions

    # 4 KV-cache rows: up to 4 slots decode as one batched run (continuous batching)
    out = str(artifact_dir / "serve-llama-b4")
    if not os.path.isfile(os.path.join(out, "manifest.json")):
        tcc.compile(MODEL, out, CompileOptions(max_context=CONTEXT, max_dims={"batch": 4}))
    return out


@pytest.fixture(scope="module")
def engine(llm_artifact):
    from tcc.runtime.serve.engine import Engine

    e = Engine(llm_artifact, slots=2, threads=1)
    e.start()
    assert e.wait_loaded(60) and e.state == "ready", e.error
    yield e
    e.stop()


@pytest.fixture(scope="module")
def client(engine):
    from starlette.testclient import TestClient

    from tcc.runtime.serve.app import create_app

    with TestClient(create_app(engine)) as c:
        yield c


class Server:
    """`tcc serve` in a subprocess on 127.0.0.1 (port 0: the OS picks a free one; read from its ready line)."""

    def __init__(self, artifact: str, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "tcc.cli", "serve", artifact, "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.log: list[str] = []
        deadline = time.monotonic() + 120
        while True:
            line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if line is None:
                raise RuntimeError("tcc serve exited:\n" + "".join(self.log))
            self.log.append(line)
            if "ready on http://" in line:
                self.url = line.split("ready on ")[1].split("/ ")[0]
                break

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def get(self, path: str, **kw) -> httpx.Response:
        return httpx.get(self.url + path, timeout=60, **kw)

    def post(self, path: str, **kw) -> httpx.Response:
        return httpx.post(self.url + path, timeout=60, **kw)

    def stop(self) -> int:
        """Ctrl-C, as a user stops it; returns the exit status."""
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


@pytest.fixture(scope="module")
def server(llm_artifact):
    s = Server(llm_artifact, "--slots", "4", "--queue", "12", "--threads", "1")
    yield s
    s.stop()


class InProcessServer:
    """The app under uvicorn on a thread of the test process, on a real socket: for what needs a network
    client in control of timing (disconnects, the browser page). `pace` slows the engine's steps so that a
    reply is still streaming when the client acts."""

    def __init__(self, artifact: str, pace: float, **engine_kw):
        import uvicorn

        from tcc.runtime.serve import listen
        from tcc.runtime.serve.app import create_app
        from tcc.runtime.serve.engine import Engine

        self.engine = Engine(artifact, pace=pace, **engine_kw)
        self.engine.start()
        assert self.engine.wait_loaded(60) and self.engine.state == "ready", self.engine.error
        sock = listen("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(self.engine), log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30)
        self.engine.stop()


@pytest.fixture(scope="module")
def paced_server(llm_artifact):
    s = InProcessServer(llm_artifact, pace=0.05, slots=2, threads=1)
    yield s
    s.stop()
