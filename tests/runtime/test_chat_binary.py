"""The standalone `chat` binary (runtime/chat/chat_main.cpp), linked with a fake model
(tests/runtime/fake_model.cpp) instead of a compiled LLM: argument parsing, the chat template and BOS
handling of chat.tcc, the tokens fed to the model (prefill chunks of the manifest's max_prefill, carried in
chat.tcc), stop conditions (eos, max_new_tokens, Ctrl-C), streaming, /reset, context overflow and error
messages (a damaged chat.tcc or tokenizer.tcc included). The semantics are those of the Python runtime
(runtime/generate.py). The artifact's chat.tcc and tokenizer.tcc are written by the compiler's writer
(runtime/chat_files.py) from chat.json's config and tokenizer.json, as in a compiled artifact; one test
compiles a real LLM fixture and checks that its artifact always has the chat binary.

The fake model's logits put the next token of FAKE_REPLY on top after every prompt, then FAKE_EOS; its
sampler stub is greedy and logs its arguments, and every model call is logged to FAKE_LOG.
"""
from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("tokenizers")
from tokenizers import Tokenizer

from tcc.runtime.chat_files import write_native_chat_files

from .test_cpp_tokenizer import build_chat_tools, make_tokenizer

LLAMA2_CHAT = {
    "bos_token_id": 1, "add_bos": True, "eos_token_ids": [2],
    "first_user_prefix": "[INST] ", "first_user_prefix_with_system": ["[INST] <<SYS>>\n", "\n<</SYS>>\n\n"],
    "user_prefix": "<s>[INST] ", "user_suffix": " [/INST]", "assistant_suffix": " </s>",
    "default_system": None, "max_context": 2048, "template_name": "llama2",
}
REPLY_TEXT = "Sure, here it is: 東京 🙂 naïve!"

STATS_RE = re.compile(r"^\[prefill (\d+) tok [\d.]+ tok/s \| decode (\d+) tok [\d.]+ tok/s \| "
                      r"(eos|length|interrupted)\]$")


@pytest.fixture(scope="module")
def tools(tmp_path_factory):
    return build_chat_tools(tmp_path_factory, with_chat=True)


@pytest.fixture(scope="module")
def hf_tok(tmp_path_factory) -> tuple[Tokenizer, str]:
    tok = make_tokenizer("llama2_old")
    text = tok.to_str()
    return Tokenizer.from_str(text), text


LLM = {"capacity": 256, "max_prefill": 64, "kv_cache": True}


def write_config(d: Path, cfg: dict | None = None, **llm) -> None:
    """chat.json, tokenizer.tcc and chat.tcc of the artifact `d`, as the compiler writes them, for the chat
    config `cfg` (default LLAMA2_CHAT) and the manifest's "llm" facts (LLM updated with `llm`)."""
    cfg = LLAMA2_CHAT if cfg is None else cfg
    manifest = {"llm": dict(LLM, **llm, chat_config=cfg)}
    texts = {"chat.json": json.dumps(cfg)}
    write_native_chat_files(manifest, {"tokenizer.json": str(d / "tokenizer.json")}, texts)
    for name, text in texts.items():
        (d / name).write_text(text, encoding="utf-8")


@pytest.fixture
def artifact(tmp_path, tools, hf_tok):
    """An artifact directory: tokenizer.json, chat.json, tokenizer.tcc, chat.tcc, an empty weights.bin and
    the chat binary."""
    d = tmp_path / "out"
    d.mkdir()
    (d / "tokenizer.json").write_text(hf_tok[1], encoding="utf-8")
    write_config(d)
    (d / "weights.bin").write_bytes(b"")
    shutil.copy(tools["chat"], d / "chat")
    return d


class Run:
    def __init__(self, p: subprocess.CompletedProcess, log: Path):
        self.rc = p.returncode
        self.out = p.stdout.decode("utf-8")
        self.err = p.stderr.decode("utf-8")
        self.log = log.read_text().splitlines() if log.exists() else []

    @property
    def runs(self) -> list[tuple[int, list[int]]]:
        out = []
        for line in self.log:
            m = re.match(r"run pos=(\d+) ids=([\d,]*)$", line)
            if m:
                out.append((int(m.group(1)), [int(x) for x in m.group(2).split(",") if x]))
        return out

    @property
    def samples(self) -> list[dict]:
        out = []
        for line in self.log:
            m = re.match(r"sample temp=(\S+) top_k=(\S+) top_p=(\S+) rep=(\S+) rng=(\d+) n_recent=(\d+) "
                         r"recent=([\d,]*) -> (\d+)$", line)
            if m:
                out.append({"temp": float(m.group(1)), "top_k": int(m.group(2)), "top_p": float(m.group(3)),
                            "rep": float(m.group(4)), "rng": int(m.group(5)),
                            "recent": [int(x) for x in m.group(7).split(",") if x], "token": int(m.group(8))})
        return out

    @property
    def id_lines(self) -> list[tuple[list[int], list[int]]]:
        out = []
        for line in self.err.splitlines():
            if line.startswith("ids: "):
                a, b = line[5:].split("|")
                out.append(([int(x) for x in a.split()], [int(x) for x in b.split()]))
        return out

    @property
    def stats(self) -> list[tuple[int, int, str]]:
        return [(int(m.group(1)), int(m.group(2)), m.group(3)) for m in map(STATS_RE.match, self.err.splitlines()) if m]


def fake_env(tmp_path, hf, reply=None, eos=2, **extra) -> dict:
    env = dict(os.environ)
    env.update(FAKE_VOCAB=str(hf.get_vocab_size(with_added_tokens=True)), FAKE_LOG=str(tmp_path / "model.log"),
               FAKE_KV_CAPACITY="1024")
    if reply is not None:
        env["FAKE_REPLY"] = ",".join(map(str, reply))
    if eos is not None:
        env["FAKE_EOS"] = str(eos)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_chat(binary, args, env, stdin: str = "", cwd=None, timeout=60) -> Run:
    Path(env["FAKE_LOG"]).unlink(missing_ok=True)  # the log of this run only
    p = subprocess.run([str(binary), *map(str, args)], input=stdin.encode(), capture_output=True, env=env,
                       cwd=cwd, timeout=timeout, check=False)
    return Run(p, Path(env["FAKE_LOG"]))


def enc(hf, text, special=False) -> list[int]:
    return hf.encode(text, add_special_tokens=special).ids


# -- one-shot and templates ---------------------------------------------------------------------------------


def test_one_shot_prompt(artifact, hf_tok, tmp_path):
    hf = hf_tok[0]
    reply = enc(hf, REPLY_TEXT)
    env = fake_env(tmp_path, hf, reply)
    r = run_chat(artifact / "chat", [artifact, "--prompt", "What is up?", "--print-ids", "--temperature", "0"], env)
    assert r.rc == 0, r.err
    assert r.out == hf.decode(reply) + "\n" == REPLY_TEXT + "\n"
    prompt = [1] + enc(hf, "[INST] What is up? [/INST]")
    assert r.id_lines == [(prompt, reply)]
    # prefill, then every reply token fed one at a time (the eos that ends it is not)
    assert r.runs == [(0, prompt)] + [(len(prompt) + i, [t]) for i, t in enumerate(reply)]
    # the sampler saw everything in the context, prompt and the reply so far
    samples = r.samples
    assert [s["token"] for s in samples] == reply + [2]
    for i, s in enumerate(samples):
        assert s["recent"] == prompt + reply[:i]
    assert r.stats == [(len(prompt), len(reply), "eos")]
    assert "chat: error" not in r.err


def test_default_dir_is_the_programs_directory(artifact, hf_tok, tmp_path):
    hf = hf_tok[0]
    env = fake_env(tmp_path, hf, enc(hf, "Hello"))
    r = run_chat(artifact / "chat", ["--prompt", "hi"], env, cwd=tmp_path)
    assert r.rc == 0, r.err
    assert r.out == "Hello\n"
    assert r.log[0] == "load threads=0"


def test_system_prompt(artifact, hf_tok, tmp_path):
    hf = hf_tok[0]
    env = fake_env(tmp_path, hf, enc(hf, "Ok."))
    r = run_chat(artifact / "chat", [artifact, "--system", "Be brief.", "--prompt", "Hi", "--print-ids"], env)
    assert r.rc == 0, r.err
    assert r.id_lines[0][0] == [1] + enc(hf, "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]")


def test_default_system_and_no_bos(artifact, hf_tok, tmp_path):
    hf = hf_tok[0]
    write_config(artifact, dict(LLAMA2_CHAT, default_system="You help.", add_bos=False))
    env = fake_env(tmp_path, hf, enc(hf, "Ok."))
    r = run_chat(artifact / "chat", [artifact, "--prompt", "Hi", "--print-ids"], env)
    assert r.rc == 0, r.err
    assert r.id_lines[0][0] == enc(hf, "[INST] <<SYS>>\nYou help.\n<</SYS>>\n\nHi [/INST]")


def test_raw_mode(artifact, hf_tok, tmp_path):
    hf = hf_tok[0]
    env = fake_env(tmp_path, hf, enc(hf, "upon a time"))  # "▁upon▁a▁time"
    r = run_chat(artifact / "chat", [artifact, "--raw", "--prompt", "Once", "--print-ids"], env)
    assert r.rc == 0, r.err
    assert r.id_lines[0][0] == hf.encode("Once", add_special_tokens=True).ids  # the post-processor adds <s>
    assert r.out == "upon a time\n"  # a reply's leading space is stripped (SentencePiece decoder)


def test_interactive_turns_and_reset(artifact, hf_tok, tmp_path):
    hf = hf_tok[0]
    reply = enc(hf, "Fine.")
    env = fake_env(tmp_path, hf, reply)
    r = run_chat(artifact / "chat", [artifact, "--print-ids"], env, stdin="Hi\n\nHow are you?\n/reset\nAgain\n")
    assert r.rc == 0, r.err
    assert r.out == "Fine.\nFine.\nFine.\n"  # no "> " prompt when stdin is not a terminal
    t1 = [1] + enc(hf, "[INST] Hi [/INST]")
    t2 = enc(hf, " </s><s>[INST] How are you? [/INST]")
    t3 = [1] + enc(hf, "[INST] Again [/INST]")
    assert r.id_lines == [(t1, reply), (t2, reply), (t3, reply)]
    assert 2 in t2 and 1 in t2  # "</s>" and "<s>" in the text are the special tokens
    runs = r.runs
    prefills = [(pos, ids) for pos, ids in runs if len(ids) > 1]
    n1 = len(t1) + len(reply)
    assert prefills == [(0, t1), (n1, t2), (0, t3)]
    assert "truncate 0" in r.log
    assert "[conversation reset]" in r.err
    assert [x[2] for x in r.stats] == ["eos"] * 3


def test_quit_command(artifact, hf_tok, tmp_path):
    hf = hf_tok[0]
    env = fake_env(tmp_path, hf, enc(hf, "A"))
    r = run_chat(artifact / "chat", [artifact], env, stdin="one\n/quit\ntwo\n")
    assert r.rc == 0 and r.out == "A\n"


def test_max_new_tokens(artifact, hf_tok, tmp_path):
    hf = hf_tok[0]
    reply = enc(hf, "one two three four five six")
    assert len(reply) >= 4
    env = fake_env(tmp_path, hf, reply, eos=None)
    r = run_chat(artifact / "chat", [artifact, "--max-new-tokens", "3", "--print-ids"], env, stdin="a\nb\n")
    assert r.rc == 0, r.err
    (p1, g1), (p2, g2) = r.id_lines
    assert g1 == reply[:3] and g2 == reply[:3]
    assert p2 == enc(hf, " </s><s>[INST] b [/INST]")
    # every printed token is fed, the last one too, so the next turn continues after it
    n = len(p1)
    assert r.runs == [(0, p1), (n, [reply[0]]), (n + 1, [reply[1]]), (n + 2, [reply[2]]), (n + 3, p2),
                      (n + 3 + len(p2), [reply[0]]), (n + 4 + len(p2), [reply[1]]), (n + 5 + len(p2), [reply[2]])]
    assert r.out == hf.decode(reply[:3]) + "\n" + hf.decode(reply[:3]) + "\n"
    assert [x[2] for x in r.stats] == ["length", "length"]


def test_max_new_tokens_zero_only_prefills(artifact, hf_tok, tmp_path):
    hf = hf_tok[0]
    env = fake_env(tmp_path, hf, enc(hf, "x"))
    r = run_chat(artifact / "chat", [artifact, "--prompt", "hi", "--max-new-tokens", "0"], env)
    assert r.rc == 0 and r.out == "\n" and len(r.runs) == 1 and r.samples == []


def test_prefill_in_chunks_of_max_prefill(artifact, hf_tok, tmp_path):
    hf = hf_tok[0]
    write_config(artifact, max_prefill=4)
    env = fake_env(tmp_path, hf, eos=None)
    r = run_chat(artifact / "chat", [artifact, "--prompt", "a longer question here", "--print-ids",
                                     "--max-new-tokens", "2"], env)
    assert r.rc == 0, r.err
    prompt = r.id_lines[0][0]
    assert len(prompt) > 8
    chunks = [prompt[i:i + 4] for i in range(0, len(prompt), 4)]
    runs = r.runs
    assert runs[:len(chunks)] == [(4 * i, c) for i, c in enumerate(chunks)]
    assert [len(ids) for _, ids in runs[len(chunks):]] == [1, 1]
    assert r.samples[0]["recent"] == prompt


def test_eos_ids_stop_and_are_not_printed(artifact, hf_tok, tmp_path):
    hf = hf_tok[0]
    stop = enc(hf, "STOP")[0]
    write_config(artifact, dict(LLAMA2_CHAT, eos_token_ids=[2, stop]))
    reply = enc(hf, "Go on")
    env = fake_env(tmp_path, hf, reply, eos=stop)
    r = run_chat(artifact / "chat", [artifact, "--prompt", "x", "--print-ids"], env)
    assert r.rc == 0, r.err
    assert r.out == "Go on\n"
    assert r.id_lines[0][1] == reply
    assert all(stop not in ids for _, ids in r.runs[1:])


def test_sampling_options_reach_the_sampler(artifact, hf_tok, tmp_path):
    hf = hf_tok[0]
    env = fake_env(tmp_path, hf, enc(hf, "Hi"))
    args = [artifact, "--prompt", "x", "--temperature", "0.5", "--top-k", "7", "--top-p", "0.8",
            "--repetition-penalty", "1.3", "--seed", "42", "--threads", "3"]
    r = run_chat(artifact / "chat", args, env)
    assert r.rc == 0, r.err
    s = r.samples[0]
    assert (s["temp"], s["top_k"], s["top_p"], s["rep"]) == (0.5, 7, 0.8, 1.3)
    # the generator state is tcc_rng_seed(42) (splitmix64), advanced by each tcc_sample call
    mask = (1 << 64) - 1

    def splitmix(x):
        z = (x + 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    assert s["rng"] == splitmix(42)
    assert r.samples[1]["rng"] == splitmix(splitmix(42))
    assert "load threads=3" in r.log
    d = run_chat(artifact / "chat", [artifact, "--prompt", "x"], env)
    assert d.samples[0]["temp"] == pytest.approx(0.7) and d.samples[0]["top_k"] == 40
    assert d.samples[0]["top_p"] == pytest.approx(0.9) and d.samples[0]["rep"] == pytest.approx(1.1)


def test_model_without_kv_cache(artifact, hf_tok, tmp_path):
    hf = hf_tok[0]
    reply = enc(hf, "No cache here")
    env = fake_env(tmp_path, hf, reply, FAKE_KV_CAPACITY=0)
    r = run_chat(artifact / "chat", [artifact, "--prompt", "q", "--print-ids"], env)
    assert r.rc == 0, r.err
    assert r.out == "No cache here\n"
    prompt = r.id_lines[0][0]
    runs = [ids for _, ids in r.runs]
    assert runs == [prompt + reply[:i] for i in range(len(reply) + 1)]  # the whole context every time


# -- limits ----------------------------------------------------------------------------------------------------


def test_context_overflow_one_shot(artifact, hf_tok, tmp_path):
    hf = hf_tok[0]
    env = fake_env(tmp_path, hf, enc(hf, "x"), FAKE_KV_CAPACITY=16)
    r = run_chat(artifact / "chat", [artifact, "--prompt", "hello there"], env)
    n = 1 + len(enc(hf, "[INST] hello there [/INST]"))
    assert r.rc == 1
    # the prompt and a whole reply (max_new_tokens) must fit, as in the Python runtime
    assert r.err.strip() == (f"chat: error: context overflow: 0 tokens in the context + {n} prompt tokens + "
                             f"max_new_tokens 256 = {n + 256} exceed the model's context of 16 tokens "
                             f"(lower --max-new-tokens)")
    assert r.runs == [] and r.out == ""


def test_context_overflow_keeps_the_session(artifact, hf_tok, tmp_path):
    hf = hf_tok[0]
    reply = enc(hf, "ok")
    t1 = [1] + enc(hf, "[INST] hi [/INST]")
    used = len(t1) + len(reply)
    t2 = enc(hf, " </s><s>[INST] more please [/INST]")
    limit = used + len(t2) + 5 - 1  # turn 1 fits, turn 2 does not
    write_config(artifact, dict(LLAMA2_CHAT, max_context=limit))  # smaller than the cache: the limit
    env = fake_env(tmp_path, hf, reply, FAKE_KV_CAPACITY=256)
    long_text = "the quick brown fox jumps over the lazy dog " * 6
    r = run_chat(artifact / "chat", [artifact, "--print-ids", "--max-new-tokens", "5"], env,
                 stdin=f"{long_text}\nhi\nmore please\n/reset\nhi\n")
    assert r.rc == 0
    errors = [line for line in r.err.splitlines() if line.startswith("chat: error:")]
    assert len(errors) == 2
    assert re.match(r"chat: error: context overflow: 0 tokens in the context \+ \d+ prompt tokens \+ "
                    rf"max_new_tokens 5 = \d+ exceed the model's context of {limit} tokens "
                    r"\(lower --max-new-tokens\)$", errors[0]), errors[0]
    assert errors[1] == (f"chat: error: context overflow: {used} tokens in the context + {len(t2)} prompt tokens + "
                         f"max_new_tokens 5 = {used + len(t2) + 5} exceed the model's context of {limit} tokens "
                         f"(/reset starts a new conversation; or lower --max-new-tokens)")
    assert r.out == "ok\nok\n"
    assert [p for p, _ in r.id_lines] == [t1, t1]  # the rejected messages left no trace


# -- streaming and Ctrl-C ---------------------------------------------------------------------------------------


class Proc:
    """A chat process with stdout/stderr read on threads."""

    def __init__(self, args, env):
        self.p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.out: queue.Queue = queue.Queue()
        self.err: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, args=(self.p.stdout, self.out, False), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.p.stderr, self.err, True), daemon=True).start()

    @staticmethod
    def _pump(stream, q, lines):
        if lines:
            for line in iter(stream.readline, b""):
                q.put(line.decode())
        else:
            while True:
                b = stream.read1(4096)
                if not b:
                    break
                q.put(b.decode(errors="replace"))

    def send(self, text):
        self.p.stdin.write(text.encode())
        self.p.stdin.flush()

    def wait_err(self, pattern, timeout=30) -> str:
        end = time.time() + timeout
        while time.time() < end:
            try:
                line = self.err.get(timeout=0.1)
            except queue.Empty:
                continue
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no stderr line matching {pattern!r}")

    def read_out(self, timeout=30) -> str:
        return self.out.get(timeout=timeout)

    def read_text(self, timeout=30) -> str:
        """The next stdout chunk with visible text: the newline that ends an interrupted reply can reach the
        queue after its stats line did, and must not pass for the next reply."""
        end = time.time() + timeout
        while True:
            chunk = self.read_out(timeout=max(0.1, end - time.time()))
            if chunk.strip():
                return chunk


def test_streaming_and_ctrl_c(artifact, hf_tok, tmp_path):
    hf = hf_tok[0]
    reply = enc(hf, "tick tock tick tock")
    env = fake_env(tmp_path, hf, reply, eos=None, FAKE_DELAY_MS=150)
    proc = Proc([str(artifact / "chat"), str(artifact), "--max-new-tokens", "500"], env)
    try:
        proc.send("go\n")
        first = proc.read_out()  # text arrives while the reply is still being generated
        assert first and proc.p.poll() is None
        proc.p.send_signal(signal.SIGINT)  # stops the reply, not the program
        stats = proc.wait_err(r"^\[prefill.*\| interrupted\]$")
        decoded = int(STATS_RE.match(stats.strip()).group(2))
        assert 1 <= decoded < 100
        assert proc.p.poll() is None
        while not proc.read_out().endswith("\n"):  # the rest of the interrupted reply, which ends in a newline
            pass
        proc.send("again\n")  # the session goes on
        assert "t" in proc.read_text()  # the new reply is being written: Ctrl-C now stops it
        proc.p.send_signal(signal.SIGINT)
        proc.wait_err(r"^\[prefill.*\| interrupted\]$")
        time.sleep(0.2)
        proc.p.send_signal(signal.SIGINT)  # Ctrl-C at the prompt exits
        assert proc.p.wait(timeout=10) == 130
    finally:
        if proc.p.poll() is None:
            proc.p.kill()
            proc.p.wait()


# -- errors ----------------------------------------------------------------------------------------------------


def _error(r: Run, rc=1) -> str:
    assert r.rc == rc, (r.rc, r.out, r.err)
    lines = [line for line in r.err.splitlines() if line.startswith("chat: error: ")]
    assert len(lines) == 1, r.err
    return lines[0][len("chat: error: "):]


def test_errors(artifact, hf_tok, tmp_path):
    hf = hf_tok[0]
    env = fake_env(tmp_path, hf, enc(hf, "x"))
    chat = artifact / "chat"
    assert _error(run_chat(chat, [tmp_path / "missing"], env)) == f"{tmp_path / 'missing'}: no such directory"
    (tmp_path / "file").write_text("")
    assert _error(run_chat(chat, [tmp_path / "file"], env)) == f"{tmp_path / 'file'}: not a directory"
    assert "unknown option --bogus" in _error(run_chat(chat, [artifact, "--bogus"], env), rc=2)
    assert "--top-k needs an integer, got 'abc'" in _error(run_chat(chat, [artifact, "--top-k", "abc"], env), rc=2)
    assert "--prompt needs a value" in _error(run_chat(chat, [artifact, "--prompt"], env), rc=2)
    assert "--max-new-tokens must be between 0" in _error(run_chat(chat, [artifact, "--max-new-tokens", "-1"], env),
                                                            rc=2)
    assert _error(run_chat(chat, [artifact, "--prompt", ""], env), rc=2) == "--prompt: empty message"

    err = _error(run_chat(chat, [artifact, "--prompt", "x"], dict(env, FAKE_LOAD_FAIL="out of memory")))
    assert err == f"cannot load model {artifact / 'weights.bin'}: out of memory"
    (artifact / "weights.bin").write_bytes(b"abc")  # not the (empty) weights the program was compiled with
    err = _error(run_chat(chat, [artifact, "--prompt", "x"], env))
    assert err == f"{artifact / 'weights.bin'} has 3 bytes, the model was compiled with 0 (truncated or replaced: " \
                  "recompile the model)"
    assert run_chat(chat, [artifact, "--prompt", "x", "--no-verify", "--temperature", "0"], env).rc == 0
    (artifact / "weights.bin").unlink()
    err = _error(run_chat(chat, [artifact, "--prompt", "x"], env))
    assert err.startswith(f"cannot open {artifact / 'weights.bin'}: ") and "No such file" in err

    write_config(artifact, dict(LLAMA2_CHAT, first_user_prefix_with_system=None))
    err = _error(run_chat(chat, [artifact, "--prompt", "x", "--system", "s"], env))
    assert "--system: the chat template 'llama2' has no system prompt" in err
    (artifact / "chat.tcc").unlink()
    assert _error(run_chat(chat, [artifact, "--prompt", "x"], env)) == f"{artifact / 'chat.tcc'}: file not found"
    write_config(artifact)
    (artifact / "tokenizer.tcc").unlink()
    err = _error(run_chat(chat, [artifact, "--prompt", "x"], env))
    assert err == f"{artifact / 'tokenizer.tcc'}: file not found"
    (artifact / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordPiece", "vocab": {}}}))
    write_config(artifact)
    err = _error(run_chat(chat, [artifact, "--prompt", "x"], env))
    assert err == (f"{artifact / 'tokenizer.tcc'}:2: the chat binary cannot use this model's tokenizer.json: "
                   f'model.type "WordPiece" is not supported (supported: BPE)')


def test_without_manifest_facts(artifact, hf_tok, tmp_path):
    """The binary reads no manifest.json; without max_prefill a prompt is fed in one run."""
    hf = hf_tok[0]
    write_config(artifact, max_prefill=None)
    assert "max_prefill" not in (artifact / "chat.tcc").read_text()
    assert not (artifact / "manifest.json").exists()
    env = fake_env(tmp_path, hf, enc(hf, "Hi"))
    text = "a longer question " * 8
    r = run_chat(artifact / "chat", [artifact, "--prompt", text, "--print-ids"], env)
    assert r.rc == 0, r.err
    assert r.runs[0] == (0, r.id_lines[0][0]) and len(r.runs[0][1]) > 64


def _damaged(text: str, line: int, new: str | None) -> str:
    """`text` with its line `line` (1-based) replaced by `new` (None: the file cut before that line)."""
    lines = text.split("\n")
    return "\n".join(lines[:line - 1] + ([] if new is None else [new] + lines[line:]))


CHAT_DAMAGES = [  # (line, new text or None to cut the file there, what the error says)
    (1, "tcc-chat 9", "chat file version 9 is not supported (this program reads 1)"),
    (1, "{", "not a tcc chat file (the first line must be 'tcc-chat 1'"),
    (3, "bos_token_id one", "'one' is not an integer"),
    (5, "eos_token_ids 2 x", "'x' is not an integer"),
    (6, "first_user_prefix %5", "bad escape in '%5'"),
    (6, "user_prefix x", "expected 'first_user_prefix', got 'user_prefix'"),
    (7, "first_user_prefix_with_system a", "'first_user_prefix_with_system' takes 2 value(s), got 1"),
    (11, "max_context -5", "-5 is out of range"),
    (12, "max_prefill 0", "0 is out of range (1 to"),
    (13, "recompute 2", "'2' is not 0 or 1"),
    (14, None, "unexpected end of file (the file is truncated)"),
    (8, None, "unexpected end of file (the file is truncated)"),
    (1, None, "unexpected end of file (the file is truncated)"),
]


@pytest.mark.parametrize("line, new, expect", CHAT_DAMAGES)
def test_damaged_chat_file(artifact, hf_tok, tmp_path, line, new, expect):
    hf = hf_tok[0]
    env = fake_env(tmp_path, hf, enc(hf, "x"))
    good = (artifact / "chat.tcc").read_text()
    assert good.split("\n")[13] == "end"  # the lines the cases name
    (artifact / "chat.tcc").write_text(_damaged(good, line, new))
    err = _error(run_chat(artifact / "chat", [artifact, "--prompt", "x"], env))
    assert err.startswith(f"{artifact / 'chat.tcc'}:{line}: ") and expect in err, err


@pytest.mark.parametrize("cut", [0.0, 0.25, 0.5, 0.999])
def test_truncated_tokenizer_file(artifact, hf_tok, tmp_path, cut):
    """A tokenizer.tcc cut short: one error line naming the file and line, exit status 1, no signal."""
    hf = hf_tok[0]
    env = fake_env(tmp_path, hf, enc(hf, "x"))
    data = (artifact / "tokenizer.tcc").read_bytes()
    (artifact / "tokenizer.tcc").write_bytes(data[:int(len(data) * cut)])
    err = _error(run_chat(artifact / "chat", [artifact, "--prompt", "x"], env))
    assert err.startswith(f"{artifact / 'tokenizer.tcc'}:"), err


def test_help(tools):
    p = subprocess.run([str(tools["chat"]), "--help"], capture_output=True, text=True, check=False)
    assert p.returncode == 0 and p.stdout.startswith("usage: chat [DIR]")


# -- a compiled language model ------------------------------------------------------------------------------


def test_chat_sources_need_no_json_library():
    """The chat binary builds from what a bare C++ toolchain has (no nlohmann/json or other JSON library)."""
    chat = Path(__file__).resolve().parents[2] / "runtime" / "chat"
    for path in sorted(chat.glob("*.[ch]*")):
        includes = [line for line in path.read_text().splitlines() if line.startswith("#include")]
        assert not [i for i in includes if "json" in i.lower()], (path, includes)


def test_compiled_llm_always_has_the_chat_binary(tmp_path):
    """Compiling an LLM fixture with a tokenizer always puts the chat binary into the artifact, with the files
    it reads beside it, and it continues a prompt token for token like the Python runtime."""
    import tcc
    from tests.conftest import MODELS_DIR

    model = os.path.join(MODELS_DIR, "llm", "llama_past_dynamo", "model.onnx")
    if not os.path.exists(model):
        pytest.skip("no LLM fixture tests/models/llm/llama_past_dynamo")
    out = tmp_path / "llama"
    manifest = tcc.compile(model, str(out), max_context=64)
    assert manifest["binaries"] == {"run": "run", "chat": "chat"}
    for name in ("chat", "tokenizer.json", "chat.json", "tokenizer.tcc", "chat.tcc"):
        assert (out / name).is_file(), name
    assert os.access(out / "chat", os.X_OK)
    assert (out / "chat.tcc").read_text().startswith("tcc-chat 1\n")
    sess = tcc.load(str(out))
    g = sess.generate("Once upon a time", max_new_tokens=8, temperature=0)
    sess.close()
    p = subprocess.run([str(out / "chat"), "--raw", "--prompt", "Once upon a time", "--temperature", "0",
                        "--max-new-tokens", "8", "--print-ids"], capture_output=True, text=True, errors="replace",
                       timeout=120, check=False)
    assert p.returncode == 0, p.stderr
    line = next(ln for ln in p.stderr.splitlines() if ln.startswith("ids: "))
    prompt, reply = line[5:].split("|")
    assert [int(t) for t in prompt.split()] == g.prompt_tokens
    assert [int(t) for t in reply.split()] == g.tokens
