"""Side files of a model folder (tokenizer.json, tokenizer_config.json, generation_config.json,
chat_template.jinja, config.json) are read only from inside the folder (frontend/side_files.py).

Before: a `chat_template.jinja` symlinked to /etc/passwd was copied into the artifact, and a symlinked
`generation_config.json` was read (issue 21, item 10). Now each is a one-line error naming the file; so is
a FIFO (which blocked the reader) or a file over its size limit. Links inside the folder, and the Hugging
Face hub cache's snapshots/<rev>/x -> ../../blobs/<sha>, still work.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.cli_checks import one_line_error

from tcc.errors import TccError
from tcc.frontend import side_files
from tcc.frontend.side_files import read_side_text, side_file
from tcc.runtime.tokenizer import Tokenizer
from tests.conftest import MODELS_DIR

FIXTURE = os.path.join(MODELS_DIR, "llm", "llama_past_dynamo")
SECRET = "not for the artifact\n"


def _model_folder(tmp_path, template_in_config: bool = False):
    """A copy of a small LLM fixture whose chat template lives in chat_template.jinja (or its config)."""
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("model.onnx", "tokenizer.json", "config.json"):
        shutil.copy(os.path.join(FIXTURE, name), folder / name)
    with open(os.path.join(FIXTURE, "tokenizer_config.json")) as f:
        config = json.load(f)
    if not template_in_config:
        config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def _secret(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    path = outside / "secret.txt"
    path.write_text(SECRET)
    return path


def _tcc(*args):
    return subprocess.run([sys.executable, "-m", "tcc.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=900)


def _one_line_error(proc, *needles: str) -> str:
    return one_line_error(proc, None, *needles)


# -- the helper ------------------------------------------------------------------------------------------

def test_side_file_inside_missing_and_linked_inside(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert side_file(str(tmp_path), "config.json") == str(tmp_path / "config.json")
    assert side_file(str(tmp_path), "tokenizer.json") is None
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "real.json").write_text('{"a": 1}')
    os.symlink("sub/real.json", tmp_path / "generation_config.json")  # a link that stays inside: fine
    assert read_side_text(str(tmp_path), "generation_config.json") == '{"a": 1}'


def test_symlink_out_of_the_folder_is_refused(tmp_path):
    secret = _secret(tmp_path)
    folder = tmp_path / "model"
    folder.mkdir()
    os.symlink(secret, folder / "chat_template.jinja")
    os.symlink("../outside/secret.txt", folder / "config.json")
    for name in ("chat_template.jinja", "config.json"):
        with pytest.raises(TccError) as e:
            read_side_text(str(folder), name)
        msg = str(e.value)
        assert msg.startswith(str(folder / name)) and "outside the model folder" in msg and str(secret) in msg
        assert SECRET.strip() not in msg


def test_symlink_to_etc_passwd_is_refused(tmp_path):
    os.symlink("/etc/passwd", tmp_path / "chat_template.jinja")
    with pytest.raises(TccError, match="resolves to /etc/passwd, outside the model folder"):
        side_file(str(tmp_path), "chat_template.jinja")


def test_hub_cache_blobs_are_inside(tmp_path):
    # models--org--name/snapshots/<rev>/tokenizer_config.json -> ../../blobs/<sha>
    repo = tmp_path / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "blobs" / "f00d").write_text('{"eos_token": null}')
    os.symlink("../../blobs/f00d", repo / "snapshots" / "abc123" / "tokenizer_config.json")
    assert read_side_text(str(repo / "snapshots" / "abc123"), "tokenizer_config.json") == '{"eos_token": null}'
    # ...but not the rest of the cache
    (tmp_path / "elsewhere.json").write_text("{}")
    os.symlink(tmp_path / "elsewhere.json", repo / "snapshots" / "abc123" / "config.json")
    with pytest.raises(TccError, match="outside the model folder"):
        side_file(str(repo / "snapshots" / "abc123"), "config.json")


def test_fifo_dangling_link_directory_and_size_limit(tmp_path, monkeypatch):
    os.mkfifo(tmp_path / "generation_config.json")  # open() would wait for a writer for ever
    with pytest.raises(TccError, match=r"generation_config.json: not a regular file \(a FIFO\)"):
        side_file(str(tmp_path), "generation_config.json")
    os.symlink(tmp_path / "gone.json", tmp_path / "config.json")
    with pytest.raises(TccError, match="config.json: a symlink to a missing file"):
        side_file(str(tmp_path), "config.json")
    (tmp_path / "tokenizer.json").mkdir()
    with pytest.raises(TccError, match=r"tokenizer.json: not a regular file \(a directory\)"):
        side_file(str(tmp_path), "tokenizer.json")
    monkeypatch.setitem(side_files.MAX_BYTES, "chat_template.jinja", 100)
    (tmp_path / "chat_template.jinja").write_text("x" * 101)
    with pytest.raises(TccError, match="chat_template.jinja: 101 bytes, more than the limit of 100 bytes"):
        side_file(str(tmp_path), "chat_template.jinja")


def test_tokenizer_reads_side_files_only_inside(tmp_path):
    folder = _model_folder(tmp_path)
    (folder / "chat_template.jinja").write_text("{% for m in messages %}[{{ m.content }}]{% endfor %}")
    tok = Tokenizer.from_dir(str(folder))
    assert tok.chat_template.startswith("{% for m in messages %}")
    assert tok.chat_template_source == str(folder / "chat_template.jinja")
    os.symlink(_secret(tmp_path), folder / "generation_config.json")
    with pytest.raises(TccError, match="generation_config.json: resolves to .*outside the model folder"):
        Tokenizer.from_dir(str(folder))


# -- through the CLI ----------------------------------------------------------------------------------------

def test_compile_refuses_a_chat_template_linked_to_etc_passwd(tmp_path):
    folder = _model_folder(tmp_path)
    os.symlink("/etc/passwd", folder / "chat_template.jinja")
    out = tmp_path / "out"
    _one_line_error(_tcc("compile", folder / "model.onnx", "-o", out, "--max-context", "32", "-q"),
                    str(folder / "chat_template.jinja"), "/etc/passwd", "outside the model folder")
    assert not out.exists()


def test_compile_refuses_a_linked_generation_config(tmp_path):
    folder = _model_folder(tmp_path, template_in_config=True)
    os.symlink(_secret(tmp_path), folder / "generation_config.json")
    _one_line_error(_tcc("compile", folder / "model.onnx", "-o", tmp_path / "out", "--max-context", "32", "-q"),
                    str(folder / "generation_config.json"), "outside the model folder")


def test_compile_refuses_a_fifo_side_file(tmp_path):
    folder = _model_folder(tmp_path, template_in_config=True)
    os.mkfifo(folder / "generation_config.json")
    _one_line_error(_tcc("compile", folder / "model.onnx", "-o", tmp_path / "out", "--max-context", "32", "-q"),
                    str(folder / "generation_config.json"), "FIFO")


def test_config_json_link_is_refused_where_the_context_is_read(tmp_path):
    # `tcc ir` reads config.json for the context length (no tokenizer involved).
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(os.path.join(FIXTURE, "model.onnx"), folder / "model.onnx")
    os.symlink(_secret(tmp_path), folder / "config.json")
    _one_line_error(_tcc("ir", folder / "model.onnx"), str(folder / "config.json"), "outside the model folder")


def test_explicit_tokenizer_fifo_is_refused(tmp_path):
    folder = _model_folder(tmp_path, template_in_config=True)
    fifo = tmp_path / "tok.json"
    os.mkfifo(fifo)
    _one_line_error(_tcc("compile", folder / "model.onnx", "-o", tmp_path / "out", "--tokenizer", fifo, "-q"),
                    f"--tokenizer {fifo}", "FIFO")
