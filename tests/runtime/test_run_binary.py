"""The standalone `run` binary on bad input: non-regular files, lying .npy headers, bad options, unwritable
outputs. Each ends in one line `run: error: ...` and exit code 2 (bad arguments or input) or 1 (the
environment: weights, output files), never a hang, a signal or an unbounded read."""
from __future__ import annotations

import os
import resource
import subprocess

import numpy as np
import pytest

from tcc.driver import compile_model
from tests.conftest import MODELS_DIR, ort_run

MLP = os.path.join(MODELS_DIR, "mlp.onnx")


@pytest.fixture(scope="module")
def run_bin(tmp_path_factory):
    out = tmp_path_factory.mktemp("run_binary") / "mlp"
    compile_model(MLP, str(out), max_dims={"batch": 8})
    return str(out / "run")


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # an unbounded read fails fast, not the machine


def _run(run_bin, *args, stdout=subprocess.PIPE):
    return subprocess.run([run_bin, *map(str, args)], stdout=stdout, stderr=subprocess.PIPE, text=True,
                          timeout=60, preexec_fn=_limit_memory)


def _error(p, code: int, *words: str) -> str:
    """The process failed with `code` and one line `run: error: ...` containing every word."""
    lines = p.stderr.splitlines()
    assert p.returncode == code, (p.returncode, p.stderr)
    assert len(lines) == 1 and lines[0].startswith("run: error: "), p.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.fixture
def x_npy(tmp_path):
    x = np.random.default_rng(0).standard_normal((3, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    return tmp_path / "x.npy", x


def test_runs_and_creates_the_output_directory(run_bin, x_npy, tmp_path):
    path, x = x_npy
    out = tmp_path / "a" / "b" / "c"
    p = _run(run_bin, f"x={path}", "-o", out, "--threads", "2", "--repeat", "3")
    assert p.returncode == 0, p.stderr
    assert "best of 3" in p.stdout
    np.testing.assert_allclose(np.load(out / "probs.npy"), ort_run(MLP, {"x": x})["probs"], rtol=1e-5, atol=1e-6)
    assert _run(run_bin, f"x={path}", "-o", out).returncode == 0  # existing directory


def test_refuses_non_regular_inputs_without_blocking(run_bin, tmp_path):
    _error(_run(run_bin, "x=/dev/zero"), 2, "/dev/zero", "character device", "not a regular file")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    _error(_run(run_bin, f"x={fifo}"), 2, "input 'x'", str(fifo), "FIFO")  # no writer: would block on open
    _error(_run(run_bin, f"x={tmp_path}"), 2, "directory")
    _error(_run(run_bin, f"x={tmp_path / 'missing.npy'}"), 2, "missing.npy", "No such file")


def test_refuses_a_fifo_or_device_as_weights(run_bin, x_npy, tmp_path):
    fifo = tmp_path / "wfifo"
    os.mkfifo(fifo)
    # Verification stats the file before reading it; without it, the loader refuses it before mapping.
    _error(_run(run_bin, f"x={x_npy[0]}", "--weights", fifo), 1, "wfifo is not a regular file")
    _error(_run(run_bin, f"x={x_npy[0]}", "--weights", "/dev/zero"), 1, "/dev/zero is not a regular file")
    _error(_run(run_bin, f"x={x_npy[0]}", "--weights", fifo, "--no-verify"), 1, "weights file", "FIFO")
    _error(_run(run_bin, f"x={x_npy[0]}", "--weights", "/dev/zero", "--no-verify"), 1, "weights file",
           "character device")


def _header(shape, descr="<f4") -> bytes:
    d = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}".encode()
    d += b" " * ((64 - (10 + len(d) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(d).to_bytes(2, "little") + d


def test_header_declaring_more_data_than_the_file_holds(run_bin, tmp_path):
    f = tmp_path / "short.npy"
    f.write_bytes(_header(f"({1 << 40}, 32)") + b"\0" * 128)
    _error(_run(run_bin, f"x={f}"), 2, "short.npy", ".npy data has 128 bytes, expected")
    f.write_bytes(_header(f"({10**17}, {10**17})") + b"\0" * 16)  # the product wraps int64
    _error(_run(run_bin, f"x={f}"), 2, "more than 2^63 bytes")
    f.write_bytes(_header("(2, 32)") + b"\0" * (2 * 32 * 4 + 1))  # one byte too many
    _error(_run(run_bin, f"x={f}"), 2, "expected 256")


def test_shape_over_the_model_bounds_is_refused_before_reading(run_bin, tmp_path):
    """A consistent 32 GiB (sparse) file over the compiled batch bound: refused from its header, never read
    (the process may not even allocate 2 GiB)."""
    f = tmp_path / "huge.npy"
    rows = 1 << 28
    header = _header(f"({rows}, 32)")
    with open(f, "wb") as fh:
        fh.write(header)
        fh.truncate(len(header) + rows * 32 * 4)
    _error(_run(run_bin, f"x={f}"), 2, "exceeds the compiled maximum 8")
    f.write_bytes(_header("(2, 31)") + b"\0" * (2 * 31 * 4))
    _error(_run(run_bin, f"x={f}"), 2, "input 'x' dim 1")
    f.write_bytes(_header("(2, 32)", "<i4") + b"\0" * (2 * 32 * 4))
    _error(_run(run_bin, f"x={f}"), 2, "dtype")


@pytest.mark.parametrize("args,words", [
    (["--threads", "abc"], ["--threads expects an integer from 0 to 1024, got 'abc'"]),
    (["--threads", "-1"], ["--threads", "got '-1'"]),
    (["--threads", "99999999999999999999"], ["--threads"]),
    (["--repeat", "0"], ["--repeat expects an integer from 1"]),
    (["--repeat", "2x"], ["--repeat", "'2x'"]),
    (["--repeat"], ["--repeat needs a value"]),
    (["-o"], ["-o needs a value"]),
    (["bogus"], ["unexpected argument 'bogus'"]),
    (["y=a.npy"], ["unknown input 'y'"]),
    ([], ["missing input 'x'"]),
])
def test_bad_arguments(run_bin, x_npy, args, words):
    feed = [] if args == [] or args[0].startswith("y=") else [f"x={x_npy[0]}"]
    p = subprocess.run([run_bin, *feed, *args], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith("run: error: ") and all(w in p.stderr for w in words), p.stderr


def test_feed_given_twice(run_bin, x_npy):
    _error(_run(run_bin, f"x={x_npy[0]}", f"x={x_npy[0]}"), 2, "input 'x' given twice")


def test_output_errors(run_bin, x_npy, tmp_path):
    path, _ = x_npy
    _error(_run(run_bin, f"x={path}", "-o", "/dev/null"), 1, "/dev/null", "not a directory")
    (tmp_path / "file").write_text("")
    _error(_run(run_bin, f"x={path}", "-o", tmp_path / "file" / "sub"), 1, "cannot create directory")
    full = tmp_path / "full"
    full.mkdir()
    os.symlink("/dev/full", full / "probs.npy")  # every write fails with ENOSPC, like a full disk
    _error(_run(run_bin, f"x={path}", "-o", full), 1, "cannot write", "probs.npy", "No space left on device")
    with open("/dev/full", "w") as devfull:  # stdout on a full disk
        _error(_run(run_bin, f"x={path}", "-o", tmp_path, stdout=devfull), 1, "standard output")


def test_help(run_bin):
    p = _run(run_bin, "--help")
    assert p.returncode == 0 and p.stdout.startswith("usage: run")
