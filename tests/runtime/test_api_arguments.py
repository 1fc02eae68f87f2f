"""Arguments of the Python API and the CLI are checked like the chat binary checks its options
(runtime/chat/chat_main.cpp: parse_args), by one function shared by both (runtime/generate.py), and every
CLI path turns bad input and OS errors into one line naming the argument or file (issue 21, item 12).

Before, each case below ended in a TypeError/ValueError from deep inside, an "internal error" exit 70,
a division by zero, or was silently accepted (NaN temperature, seed -1, top_p 2, threads 4096).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import tcc
from tcc.cli import main
from tcc.errors import RuntimeFeedError, TccError
from tests.conftest import MODELS_DIR

FIXTURE = os.path.join(MODELS_DIR, "llm", "llama_past_dynamo", "model.onnx")


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    """A small compiled language model with a tokenizer (one compile for the module)."""
    out = tmp_path_factory.mktemp("api-args") / "llama"
    tcc.compile(FIXTURE, str(out), max_context=48)
    return str(out)


@pytest.fixture(scope="module")
def sess(llm):
    return tcc.load(llm)


def _cli_error(capsys, argv, *needles: str, code: int | None = None) -> str:
    """`tcc ARGV` in this process: a non-zero exit that is not an internal error, one stderr line."""
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc not in (0, 70), (rc, err)
    if code is not None:
        assert rc == code, (rc, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tcc: error: "), err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _proc_error(proc, *needles: str) -> str:
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode not in (0, 70), (proc.returncode, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tcc: error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _tcc(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "tcc.cli", *args], capture_output=True, input=stdin, timeout=300)


# -- the Python API -----------------------------------------------------------------------------------

BAD_GENERATE = [
    (dict(prompt=None), TccError, "prompt must be text (str) or a list of token ids, got NoneType"),
    (dict(prompt=b"hi"), TccError, "got bytes"),
    (dict(prompt=np.array([[1, 2, 3]])), RuntimeFeedError, "1-D integer token ids, got int64 [1, 3]"),
    (dict(prompt=np.array([1.0, 2.0])), RuntimeFeedError, "1-D integer token ids, got float64 [2]"),
    (dict(prompt=[1, "2"]), RuntimeFeedError, "position 1 is not an integer token id"),
    (dict(prompt=[1, 2.5]), RuntimeFeedError, "position 1 is not an integer token id"),
    (dict(max_new_tokens=2.5), TccError, "max_new_tokens must be an integer, got 2.5"),
    (dict(max_new_tokens=-1), TccError, "max_new_tokens must be between 0 and"),
    (dict(seed="x"), TccError, "seed must be an integer, got 'x'"),
    (dict(seed=-1), TccError, "seed must be between 0 and 18446744073709551615, got -1"),
    (dict(seed=2**64), TccError, "seed must be between 0"),
    (dict(temperature=float("nan")), TccError, "temperature must be a finite number, got nan"),
    (dict(temperature=float("inf")), TccError, "temperature must be a finite number"),
    (dict(temperature=-0.5), TccError, "temperature must not be negative"),
    (dict(temperature="hot"), TccError, "temperature must be a number"),
    (dict(top_k=-1), TccError, "top_k must be between 0 and 2147483647, got -1"),
    (dict(top_k=2.0), TccError, "top_k must be an integer"),
    (dict(top_p=2), TccError, "top_p must be greater than 0 and at most 1"),
    (dict(top_p=0), TccError, "top_p must be greater than 0"),
    (dict(repetition_penalty=0), TccError, "repetition_penalty must be greater than 0"),
    (dict(repetition_penalty=float("nan")), TccError, "repetition_penalty must be a finite number"),
    (dict(stop=[1]), TccError, "stop must be a string or a list of strings"),
    (dict(stream="print"), TccError, "stream must be a function"),
    (dict(eos_ids="2"), TccError, "eos_ids must be a set of token ids"),
    (dict(eos_ids={1.5}), TccError, "eos_ids must hold integer token ids"),
]


@pytest.mark.parametrize("kwargs,cls,message", BAD_GENERATE, ids=[str(i) for i in range(len(BAD_GENERATE))])
def test_generate_refuses_bad_arguments(sess, kwargs, cls, message):
    kwargs = {"prompt": [1, 2, 3], "max_new_tokens": 2, **kwargs}
    with pytest.raises(cls) as e:
        sess.generate(kwargs.pop("prompt"), **kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_arguments_leave_the_conversation_alone(sess):
    first = sess.generate([5, 6, 7], max_new_tokens=3, temperature=0)
    context = list(sess.generator.context)
    with pytest.raises(TccError, match="top_p"):
        sess.generate([1, 2], keep_context=False, top_p=5)  # refused before the cache is emptied
    assert sess.generator.context == context
    assert first.tokens


def test_chat_refuses_bad_arguments(sess):
    with pytest.raises(TccError, match="message must be a string, got NoneType"):
        sess.chat(None)
    with pytest.raises(TccError, match="system must be a string or None, got int"):
        sess.chat("hi", system=3)
    with pytest.raises(TccError, match="temperature must not be negative"):
        sess.chat("hi", temperature=-1)


def test_edge_values_the_chat_binary_accepts_are_accepted(sess):
    ids = [5, 6, 7]
    greedy = sess.generate(ids, max_new_tokens=4, temperature=0, top_k=0, top_p=1, repetition_penalty=1,
                           seed=2**64 - 1, eos_ids=set())
    # numpy integers and a 1-D integer array are token ids like a list of ints
    same = sess.generate(np.array(ids, dtype=np.int32), max_new_tokens=np.int64(4), temperature=0,
                         seed=np.uint64(3), eos_ids=np.array([], dtype=np.int64))
    assert same.tokens == greedy.tokens and len(greedy.tokens) == 4
    assert sess.generate(ids, max_new_tokens=0).tokens == []
    assert sess.generate(ids, max_new_tokens=8, temperature=0, stop="\x00never").stop_reason in ("length", "eos")


def test_run_refuses_feeds_that_are_not_a_dict(sess):
    with pytest.raises(RuntimeFeedError, match=r"feeds must be a dict of input name -> array \(the inputs are "
                                               r"\['input_ids'\]\), got list"):
        sess.run([np.ones((1, 2), np.int64)])
    with pytest.raises(RuntimeFeedError, match="feed names must be strings, got 0"):
        sess.run({0: np.ones((1, 2), np.int64)})
    with pytest.raises(RuntimeFeedError, match="input 'input_ids': not an array"):
        sess.run({"input_ids": [[1, 2], [3]]})


@pytest.mark.parametrize("threads", [-3, 4096, 1.5, "4"])
def test_load_refuses_bad_thread_counts(llm, threads):
    with pytest.raises(TccError, match="threads must be"):
        tcc.load(llm, threads=threads)


def test_load_refuses_a_bad_threads_flag(llm, monkeypatch):
    from tcc import flags

    monkeypatch.setattr(flags, "get", lambda name, _get=flags.get: -2 if name == "threads" else _get(name))
    with pytest.raises(TccError, match="TCC_THREADS must be between 0 and 1024, got -2"):
        tcc.load(llm)


def test_thread_counts_in_range_load(llm):
    for n in (0, 1, 3):
        with tcc.load(llm, threads=n) as s:
            assert s.generate([1, 2], max_new_tokens=1, temperature=0).tokens is not None


# -- the CLI: tcc generate / chat -------------------------------------------------------------------------

BAD_OPTIONS = [
    (["--temperature", "nan"], "--temperature must be a finite number"),
    (["--temperature", "-1"], "--temperature must not be negative"),
    (["--top-k", "-1"], "--top-k must be between 0 and 2147483647, got -1"),
    (["--top-p", "2"], "--top-p must be greater than 0 and at most 1"),
    (["--repetition-penalty", "0"], "--repetition-penalty must be greater than 0"),
    (["--seed", "-1"], "--seed must be between 0 and 18446744073709551615, got -1"),
    (["--threads", "-3"], "--threads must be between 0 and 1024, got -3"),
    (["--threads", "4096"], "--threads must be between 0 and 1024, got 4096"),
    (["--max-new-tokens", "-5"], "--max-new-tokens must be between 0 and"),
]


@pytest.mark.parametrize("command", ["generate", "chat"])
@pytest.mark.parametrize("options,message", BAD_OPTIONS, ids=[o[0] + o[1] for o, _ in BAD_OPTIONS])
def test_cli_refuses_bad_sampling_options(llm, capsys, command, options, message):
    prompt = ["--prompt", "hi"] if command == "generate" else []
    _cli_error(capsys, [command, llm, *options, *prompt], message, code=1)


def test_cli_refuses_bad_prompt_ids(llm, capsys):
    _cli_error(capsys, ["generate", llm, "--prompt-ids", "1 two 3"], "--prompt-ids: 'two' is not a token id")


def test_cli_refuses_a_prompt_that_is_not_utf8(llm):
    # os.fsdecode keeps undecodable argv bytes as lone surrogates, which the tokenizer cannot encode
    _proc_error(_tcc("generate", llm, "--prompt", b"caf\xe9 \xff"), "--prompt is not UTF-8 text (byte 0xe9")
    _proc_error(_tcc("chat", llm, "--system", b"\xfe"), "--system is not UTF-8 text (byte 0xfe")


def test_cli_chat_line_that_is_not_utf8(llm):
    proc = _tcc("chat", llm, "--max-new-tokens", "2", stdin=b"hi \xff\n")
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode not in (70,) and "Traceback" not in err and "internal error" not in err, err
    assert "tcc: error: " in err and "not UTF-8 text" in err, err


# -- the CLI: tcc run ----------------------------------------------------------------------------------

def test_run_repeat_zero(llm, capsys, tmp_path):
    _cli_error(capsys, ["run", llm, "--random", "--repeat", "0", "--profile", "-o", tmp_path], "--repeat must be "
               "at least 1, got 0", code=1)


def test_run_threads(llm, capsys, tmp_path):
    _cli_error(capsys, ["run", llm, "--random", "--threads", "4096", "-o", tmp_path], "--threads must be between")


def test_run_output_is_a_file(llm, capsys, tmp_path):
    target = tmp_path / "taken"
    target.write_text("mine")
    _cli_error(capsys, ["run", llm, "--random", "-o", target], f"-o {target}: exists and is not a directory")
    assert target.read_text() == "mine"
    _cli_error(capsys, ["run", llm, "--random", "-o", target / "sub"], f"-o {target / 'sub'}: cannot create")


def _write_npy_header(path, shape, descr="<i8", data=b""):
    from numpy.lib import format as npy

    with open(path, "wb") as f:
        npy.write_array_header_1_0(f, {"shape": shape, "fortran_order": False, "descr": descr})
        f.write(data)


def test_run_input_npy_problems(llm, capsys, tmp_path):
    good = tmp_path / "good.npy"
    np.save(good, np.ones((1, 3), np.int64))
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    short = tmp_path / "short.npy"
    short.write_bytes(good.read_bytes()[:20])  # cut inside the header
    huge = tmp_path / "huge.npy"
    _write_npy_header(huge, (10**6, 10**6), data=b"\0" * 64)
    cut = tmp_path / "cut.npy"
    cut.write_bytes(good.read_bytes()[:-8])  # cut inside the data
    pickled = tmp_path / "pickled.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"this is not numpy data at all")
    cases = [
        (empty, "is empty"),
        (short, "is not a .npy file"),
        (huge, "is truncated: its header says int64[1000000, 1000000] (8000000000000 bytes), the file has 64"),
        (cut, "is truncated"),
        (pickled, "holds Python objects"),
        (garbage, "is not a .npy file"),
        (tmp_path, "not a regular file (a directory)"),
        (tmp_path / "missing.npy", "not found"),
    ]
    for path, message in cases:
        _cli_error(capsys, ["run", llm, "--input", f"input_ids={path}", "-o", tmp_path / "o"],
                   "input 'input_ids': ", str(path), message, code=2)
    _cli_error(capsys, ["run", llm, "--input", "=x.npy", "-o", tmp_path / "o"], "--input expects NAME=FILE.npy")
    assert main(["run", llm, "--input", f"input_ids={good}", "-o", str(tmp_path / "o")]) == 0


def test_run_input_fifo_and_dev_zero_do_not_block(llm, tmp_path):
    fifo = tmp_path / "fifo.npy"
    os.mkfifo(fifo)
    _proc_error(_tcc("run", llm, "--input", f"input_ids={fifo}"), str(fifo), "not a regular file (a FIFO)")
    _proc_error(_tcc("run", llm, "--input", "input_ids=/dev/zero"), "/dev/zero", "a character device")


# -- manifests the runtime cannot read ---------------------------------------------------------------------

def _edited_copy(llm, tmp_path, edit):
    copy = tmp_path / "edited"
    shutil.copytree(llm, copy)
    path = copy / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    return copy


MANIFEST_EDITS = {
    "inputs-null": (lambda m: m.update(inputs=None), "inputs must be a list of tensors, got None"),
    "bogus-dtype": (lambda m: m["inputs"][0].update(dtype="f128"), "inputs[0] (input_ids): unknown dtype 'f128'"),
    "bad-dim": (lambda m: m["outputs"][0].update(shape=[1, "seq+", 7]), "bad dimension 'seq+'"),
    "outputs-empty": (lambda m: m.update(outputs=[]), "outputs must be a list of tensors"),
    "symbols": (lambda m: m.update(symbols={"seq": "many"}), "symbols must map dimension names"),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_EDITS))
def test_manifest_fields_are_checked(llm, tmp_path, capsys, case):
    edit, message = MANIFEST_EDITS[case]
    art = _edited_copy(llm, tmp_path, edit)
    for command in (["info", art], ["run", art, "--random", "-o", tmp_path]):
        _cli_error(capsys, command, str(art / "manifest.json"), message, code=2)
    with pytest.raises(TccError) as e:
        tcc.load(str(art))
    assert message in str(e.value)


def test_side_file_of_an_artifact_linked_outside(llm, tmp_path):
    """An artifact's generation_config.json replaced by a link out of the folder is not read, even when
    the file it links to has the very bytes the manifest lists (so the artifact's checksums pass)."""
    art = tmp_path / "linked"
    shutil.copytree(llm, art)
    outside = tmp_path / "outside.json"
    shutil.copy(art / "generation_config.json", outside)
    os.remove(art / "generation_config.json")
    os.symlink(outside, art / "generation_config.json")
    _proc_error(_tcc("generate", str(art), "--prompt", "hi", "--max-new-tokens", "1"),
                str(art / "generation_config.json"), f"resolves to {outside}, outside the model folder")
