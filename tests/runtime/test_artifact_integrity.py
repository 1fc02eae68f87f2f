"""Artifacts: compile never loses the user's files, and what is loaded is verified (issue 21, items 1, 2, 7, 8).

Each test first reproduces the failure a hostile or careless user met (files deleted by `-o .`, SIGBUS from a
truncated library, flipped weight bytes that loaded, a manifest from another tcc that loaded), through the
CLI in a subprocess so that a signal would show as a negative return code.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

import tcc
from tcc.cli import main
from tcc.errors import TccError
from tcc.runtime.artifact import FORMAT, ArtifactError
from tests.cli_checks import one_line_error
from tests.conftest import MODELS_DIR

MLP = os.path.join(MODELS_DIR, "mlp.onnx")


def _tcc(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "tcc.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def _one_line_error(proc, code: int = 2) -> str:
    return one_line_error(proc, code)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    out = tmp_path_factory.mktemp("integrity") / "mlp"
    assert main(["compile", MLP, "-o", str(out), "-q"]) == 0
    return out


@pytest.fixture
def copy(good, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(good, dst)
    return dst


def _x():
    return {"x": np.ones((2, 32), np.float32)}


# -- 1. compile never deletes what it did not write --------------------------------------------------

def test_compile_into_model_folder_is_refused_and_keeps_every_file(tmp_path):
    shutil.copy(MLP, tmp_path / "model.onnx")
    (tmp_path / "notes.txt").write_text("mine")
    before = sorted(os.listdir(tmp_path))
    proc = _tcc("compile", "model.onnx", "-o", ".", "-q", cwd=tmp_path)
    line = _one_line_error(proc, code=1)
    assert "not a tcc artifact" in line and "--force" in line
    assert sorted(os.listdir(tmp_path)) == before and (tmp_path / "notes.txt").read_text() == "mine"


def test_force_adds_the_artifact_and_keeps_the_users_files(tmp_path):
    shutil.copy(MLP, tmp_path / "model.onnx")
    (tmp_path / "notes.txt").write_text("mine")
    for _ in range(2):  # the second compile replaces its own files, and only those
        proc = _tcc("compile", "model.onnx", "-o", ".", "-q", "--force", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "model.onnx").is_file()
    assert tcc.load(str(tmp_path)).run(_x())["probs"].shape == (2, 10)


def test_force_refuses_to_overwrite_a_file_of_the_users(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"the user's own weights")
    proc = _tcc("compile", MLP, "-o", tmp_path, "-q", "--force")
    assert "weights.bin" in _one_line_error(proc, code=1)
    assert (tmp_path / "weights.bin").read_bytes() == b"the user's own weights"


def test_recompiling_an_artifact_with_extra_files_refuses_without_force(copy):
    (copy / "README.txt").write_text("about this model")
    proc = _tcc("compile", MLP, "-o", copy, "-q")
    assert "README.txt" in _one_line_error(proc, code=1)
    assert main(["compile", MLP, "-o", str(copy), "-q", "--force"]) == 0
    assert (copy / "README.txt").read_text() == "about this model"


def test_recompiling_a_plain_artifact_replaces_it(copy):
    assert main(["compile", MLP, "-o", str(copy), "-q", "--max-dim", "batch=4"]) == 0
    assert json.loads((copy / "manifest.json").read_text())["symbols"] == {"batch": 4}


# -- 2 and 7. a damaged artifact is a clean error, never a signal -------------------------------------

@pytest.mark.parametrize("name", ["libmodel.so", "weights.bin", "run"])
def test_truncated_file_is_refused_by_every_entry_point(copy, name):
    with open(copy / name, "r+b") as f:
        f.truncate(os.path.getsize(copy / name) // 3)
    for args in (["run", copy, "--random"], ["generate", copy, "--prompt", "hi"], ["info", copy]):
        line = _one_line_error(_tcc(*args))
        assert name in line and "bytes" in line
    with pytest.raises(ArtifactError, match=name):
        tcc.load(str(copy))


def test_truncated_library_without_checks_would_crash(copy):
    """The failure the checks prevent: dlopen of a truncated library dies of a signal (SIGBUS/SIGSEGV)."""
    with open(copy / "libmodel.so", "r+b") as f:
        f.truncate(os.path.getsize(copy / "libmodel.so") // 3)
    proc = subprocess.run([sys.executable, "-c", f"import ctypes; ctypes.CDLL({str(copy / 'libmodel.so')!r})"],
                          capture_output=True, timeout=60)
    # Either a signal or a dlopen error: both are what tcc must not show the user.
    assert proc.returncode != 0


def test_flipped_weight_bytes_are_detected(copy):
    with open(copy / "weights.bin", "r+b") as f:
        f.seek(200)
        data = f.read(50)
        f.seek(200)
        f.write(bytes(b ^ 0xFF for b in data))
    line = _one_line_error(_tcc("run", copy, "--random"))
    assert "weights.bin is damaged" in line
    with pytest.raises(ArtifactError, match="SHA-256"):
        tcc.load(str(copy))
    # --no-verify is the documented escape hatch: sizes only.
    assert _tcc("run", copy, "--random", "--no-verify", "-o", copy / "o").returncode == 0
    assert tcc.load(str(copy), verify=False).run(_x())["probs"].shape == (2, 10)


def test_weights_are_hashed_again_after_a_write(copy):
    """The remembered weights digest is keyed by the file's stat: an in-place edit is seen."""
    tcc.load(str(copy)).close()  # remembers the good digest
    with open(copy / "weights.bin", "r+b") as f:
        f.seek(10)
        b = f.read(1)
        f.seek(10)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(ArtifactError, match="damaged"):
        tcc.load(str(copy))


def _edit_manifest(path, **changes):
    m = json.loads((path / "manifest.json").read_text())
    for k, v in changes.items():
        if v is None:
            m.pop(k, None)
        else:
            m[k] = v
    (path / "manifest.json").write_text(json.dumps(m))
    return m


@pytest.mark.parametrize("changes, words", [
    ({"format": "tcc-artifact-1"}, "artifact format 'tcc-artifact-1'"),
    ({"format": "tcc-artifact-99"}, "artifact format"),
    ({"format": None}, "artifact format 'none'"),
    ({"tcc_version": "99.0.0"}, "newer than this tcc"),
    ({"tcc_version": "banana"}, "is not a tcc version"),
    ({"files": None}, "lists no files"),
    ({"library": "../../../etc/passwd"}, "not one of the artifact's listed files"),
])
def test_manifest_from_another_tcc_or_edited_is_refused(copy, changes, words):
    _edit_manifest(copy, **changes)
    assert words in _one_line_error(_tcc("run", copy, "--random"))
    assert words in _one_line_error(_tcc("info", copy))


def test_wrong_checksum_in_manifest_is_refused(copy):
    m = json.loads((copy / "manifest.json").read_text())
    m["files"]["weights.bin"]["sha256"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(m))
    assert "weights.bin is damaged" in _one_line_error(_tcc("info", copy))


def test_info_reports_the_verification(good):
    proc = _tcc("info", good)
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("verified"))
    assert "3 files" in line and "SHA-256" in line and FORMAT in line


def test_standalone_run_binary_verifies_its_weights(copy, tmp_path):
    with open(copy / "weights.bin", "r+b") as f:
        f.seek(64)
        f.write(b"\x00" * 16 if f.read(16) != b"\x00" * 16 else b"\x01" * 16)
    np.save(tmp_path / "x.npy", _x()["x"])
    proc = subprocess.run([str(copy / "run"), f"x={tmp_path / 'x.npy'}", "-o", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and proc.returncode > 0, proc
    assert "weights.bin" in proc.stderr and "damaged" in proc.stderr
    ok = subprocess.run([str(copy / "run"), "--no-verify", f"x={tmp_path / 'x.npy'}", "-o", str(tmp_path)],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr


# -- 8. the environment: read-only or full disks, concurrent compiles ---------------------------------

def test_full_disk_while_writing_keeps_the_previous_artifact(copy, monkeypatch, capsys):
    before = (copy / "manifest.json").read_text()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(copy) + ".tmp/weights.bin")

    monkeypatch.setattr(shutil, "copy2", full)
    assert main(["compile", MLP, "-o", str(copy), "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "unchanged" in err[0]
    assert (copy / "manifest.json").read_text() == before
    assert not [p for p in os.listdir(copy.parent) if ".tmp-" in p]
    monkeypatch.undo()
    assert tcc.load(str(copy)).run(_x())["probs"].shape == (2, 10)


def test_unusable_cache_folder_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {**os.environ, "TCC_CACHE_DIR": str(blocker / "cache")}
    line = _one_line_error(_tcc("compile", MLP, "-o", tmp_path / "out", "-q", env=env), code=1)
    assert "TCC_CACHE_DIR" in line and str(blocker) in line


def test_output_under_a_file_is_a_one_line_error(tmp_path):
    (tmp_path / "f").write_text("")
    line = _one_line_error(_tcc("compile", MLP, "-o", tmp_path / "f" / "out", "-q"), code=1)
    assert str(tmp_path / "f") in line


def test_two_cold_compiles_into_one_output_both_succeed(tmp_path):
    env = {**os.environ, "TCC_CACHE_DIR": str(tmp_path / "cold-cache")}
    out = tmp_path / "out"
    procs = [subprocess.Popen([sys.executable, "-m", "tcc.cli", "compile", MLP, "-o", str(out), "-q",
                               "--max-dim", f"batch={b}"], env=env, stderr=subprocess.PIPE, text=True)
             for b in (3, 5)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    sess = tcc.load(str(out))
    assert json.loads((out / "manifest.json").read_text())["symbols"]["batch"] in (3, 5)
    assert sess.run(_x())["probs"].shape == (2, 10)
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p or ".old-" in p]


def test_python_api_raises_tcc_error_for_a_missing_artifact(tmp_path):
    with pytest.raises(TccError, match="not a compiled tcc artifact"):
        tcc.load(str(tmp_path / "nothing"))


def test_no_signal_on_any_damaged_file(copy):
    """Every listed file cut to zero bytes: each entry point answers in one line (no signal)."""
    for name in json.loads((copy / "manifest.json").read_text())["files"]:
        shutil.copy(copy / "manifest.json", copy / "manifest.bak")
        data = (copy / name).read_bytes()
        (copy / name).write_bytes(b"")
        proc = _tcc("run", copy, "--random")
        assert proc.returncode > 0 and proc.returncode != -signal.SIGBUS, proc
        _one_line_error(proc)
        (copy / name).write_bytes(data)
        os.chmod(copy / name, 0o755)


@pytest.mark.parametrize("key", ["memory", "kernels", "ops", "source", "weights"])
def test_info_on_a_manifest_missing_a_key_is_one_line(copy, key):
    _edit_manifest(copy, **{key: None})
    assert "manifest" in _one_line_error(_tcc("info", copy))


def test_read_only_output_folder_is_one_line_and_keeps_the_artifact(copy, monkeypatch, capsys):
    """Root ignores permission bits, so a read-only file system is simulated where the artifact is put in place."""
    before = (copy / "manifest.json").read_text()
    real_replace = os.replace

    def read_only(src, dst, *a, **k):  # the earlier artifact moves aside, then the new one cannot move in
        if str(dst) == str(copy) and ".tmp-" in str(src):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", read_only)
    assert main(["compile", MLP, "-o", str(copy), "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Read-only file system" in err[0] and str(copy) in err[0]
    monkeypatch.undo()
    assert (copy / "manifest.json").read_text() == before
    assert not [p for p in os.listdir(copy.parent) if ".tmp-" in p or ".old-" in p]
    assert tcc.load(str(copy)).run(_x())["probs"].shape == (2, 10)
