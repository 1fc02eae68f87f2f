"""The CLI and the Python session: happy paths, and bad input giving one-line errors and exit codes."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import tcc
from tcc.cli import main
from tcc.errors import RuntimeFeedError, TccError
from tests.cli_checks import one_line_error
from tests.conftest import MODELS_DIR, ort_run

MLP = os.path.join(MODELS_DIR, "mlp.onnx")


@pytest.fixture(scope="module")
def mlp_artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "mlp"
    assert main(["compile", MLP, "-o", str(out), "--max-dim", "batch=8", "-q",
                 "--dump-ir", str(out) + "-ir"]) == 0
    return out


def _tcc(*args, cwd=None):
    """Run the installed console script, as a user would."""
    return subprocess.run([sys.executable, "-m", "tcc.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def test_compile_writes_artifact_and_dumps(mlp_artifact):
    files = set(os.listdir(mlp_artifact))
    assert {"libmodel.so", "run", "weights.bin", "manifest.json"} <= files
    m = json.loads((mlp_artifact / "manifest.json").read_text())
    assert m["target"] == "x86" and m["qm"] == "fp32" and m["symbols"] == {"batch": 8}
    assert m["inputs"] == [{"name": "x", "dtype": "f32", "shape": ["batch", 32]}]
    assert len(m["weights"]["sha256"]) == 64 and m["weights"]["bytes"] == os.path.getsize(mlp_artifact / "weights.bin")
    dumps = sorted(os.listdir(str(mlp_artifact) + "-ir"))
    assert dumps[0] == "000_import.tir" and "001_fold-constants.tir" in dumps
    assert any(d.endswith("_plan-memory.tir") for d in dumps)
    assert not any(f.endswith(".tmp") or ".tmp-" in f for f in os.listdir(mlp_artifact.parent))


def test_python_run_matches_onnxruntime(mlp_artifact):
    sess = tcc.load(str(mlp_artifact))
    x = np.random.default_rng(3).standard_normal((5, 32)).astype(np.float32)
    got = sess.run({"x": x})["probs"]
    want = ort_run(MLP, {"x": x})["probs"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)  # fp32, 3 GEMMs of K<=64: a few ulps


def test_cli_run_and_standalone_binary(mlp_artifact, tmp_path):
    x = np.random.default_rng(4).standard_normal((2, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(mlp_artifact), "--input", f"x={tmp_path / 'x.npy'}", "-o", str(tmp_path / "py")]) == 0
    proc = subprocess.run([str(mlp_artifact / "run"), f"x={tmp_path / 'x.npy'}", "-o", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    a, b = np.load(tmp_path / "py" / "probs.npy"), np.load(tmp_path / "probs.npy")
    np.testing.assert_array_equal(a, b)  # same library, same kernels: bit-identical


def test_cli_run_random_and_info(mlp_artifact, tmp_path, capsys):
    assert main(["run", str(mlp_artifact), "--random", "--dim", "batch=3", "-o", str(tmp_path)]) == 0
    assert np.load(tmp_path / "probs.npy").shape == (3, 10)
    assert main(["info", str(mlp_artifact)]) == 0
    out = capsys.readouterr().out
    assert "input      x: f32[batch,32]" in out and "tcc_gemm_f32" in out


def test_ir_command_text_dot_and_after(tmp_path, capsys):
    assert main(["ir", MLP]) == 0
    text = capsys.readouterr().out
    assert "Linear(" in text and "LayerNorm(" in text
    assert main(["ir", MLP, "--after", "import"]) == 0
    assert "Gemm(" in capsys.readouterr().out
    assert main(["ir", MLP, "--dot"]) == 0
    assert capsys.readouterr().out.startswith('digraph "main_graph"')
    path = tmp_path / "m.tir"
    assert main(["ir", MLP, "-o", str(path)]) == 0
    x = np.ones((1, 32), np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["ir", str(path), "--run", f"x={tmp_path / 'x.npy'}"]) == 0
    assert "probs: float32[1, 10]" in capsys.readouterr().out


def _one_line_error(proc, code: int, *needles: str) -> None:
    one_line_error(proc, code, *needles)


def test_unsupported_op_is_one_line_exit_2(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, [2])
    k = helper.make_tensor("k", TensorProto.INT64, [1], [2])
    nodes = [helper.make_node("TopK", ["x", "k"], ["v", "y"], name="my_topk"),
             helper.make_node("NonZero", ["x"], ["nz"], name="nz1")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [k]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "bad.onnx"
    onnx.save(model, path)
    out = tmp_path / "out"
    _one_line_error(_tcc("compile", path, "-o", out), 2, "TopK", "my_topk", "NonZero", "nz1", "17")
    assert not out.exists()


def test_malformed_and_truncated_files(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07this is not protobuf at all\xff\xff\xff")
    _one_line_error(_tcc("compile", garbage, "-o", tmp_path / "o1"), 2, str(garbage))
    data = open(MLP, "rb").read()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    _one_line_error(_tcc("compile", cut, "-o", tmp_path / "o2"), 2, str(cut))
    _one_line_error(_tcc("compile", tmp_path / "missing.onnx", "-o", tmp_path / "o3"), 2, "missing.onnx")


def test_failed_compile_keeps_previous_artifact(mlp_artifact, tmp_path):
    before = (mlp_artifact / "manifest.json").read_text()
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"nope")
    assert main(["compile", str(garbage), "-o", str(mlp_artifact), "-q"]) == 2
    assert (mlp_artifact / "manifest.json").read_text() == before
    assert tcc.load(str(mlp_artifact)).run({"x": np.zeros((1, 32), np.float32)})["probs"].shape == (1, 10)


def test_bad_options_are_clear_errors(tmp_path):
    _one_line_error(_tcc("compile", MLP, "-o", tmp_path / "o", "--qm", "w4a16"), 1, "w4a16", "it supports: fp32, w8a8, w4a32, w4a8")
    _one_line_error(_tcc("compile", MLP, "-o", tmp_path / "o", "--target", "nope"), 1, "nope", "known targets: x86, arm, cuda, metal")
    _one_line_error(_tcc("compile", MLP, "-o", tmp_path / "o", "--max-dim", "seq=4"), 1, "seq", "batch")
    _one_line_error(_tcc("compile", MLP, "-o", tmp_path / "o", "--max-dim", "batch=x"), 1, "batch")
    _one_line_error(_tcc("compile", MLP, "-o", tmp_path / "o", "--disable-pass", "nope"), 1, "nope")
    _one_line_error(_tcc("info", tmp_path), 1, "manifest.json")
    _one_line_error(_tcc("run", tmp_path / "none"), 1, "not a compiled tcc artifact")


def test_session_feed_errors(mlp_artifact):
    sess = tcc.load(str(mlp_artifact))
    ok = np.zeros((2, 32), np.float32)
    with pytest.raises(RuntimeFeedError, match="missing input 'x'"):
        sess.run({})
    with pytest.raises(RuntimeFeedError, match="unknown input"):
        sess.run({"x": ok, "y": ok})
    with pytest.raises(RuntimeFeedError, match="expected dtype float32, got float64"):
        sess.run({"x": ok.astype(np.float64)})
    with pytest.raises(RuntimeFeedError, match=r"expected shape \[2, 32\]|expected shape \[batch,32\]"):
        sess.run({"x": np.zeros((2, 31), np.float32)})
    with pytest.raises(RuntimeFeedError, match="rank|shape"):
        sess.run({"x": np.zeros((32,), np.float32)})
    with pytest.raises(RuntimeFeedError, match="exceeds the compiled maximum 8; recompile with --max-dim batch=9"):
        sess.run({"x": np.zeros((9, 32), np.float32)})
    assert sess.run({"x": np.zeros((8, 32), np.float32)})["probs"].shape == (8, 10)


def test_standalone_binary_errors(mlp_artifact, tmp_path):
    run = str(mlp_artifact / "run")
    p = subprocess.run([run], capture_output=True, text=True)
    assert p.returncode != 0 and "missing input 'x'" in p.stderr
    np.save(tmp_path / "big.npy", np.zeros((9, 32), np.float32))
    p = subprocess.run([run, f"x={tmp_path / 'big.npy'}", "-o", str(tmp_path)], capture_output=True, text=True)
    assert p.returncode != 0 and "exceeds the compiled maximum 8" in p.stderr
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    p = subprocess.run([run, f"x={tmp_path / 'bad.npy'}"], capture_output=True, text=True)
    assert p.returncode != 0 and "bad.npy" in p.stderr and "Segmentation" not in p.stderr
    np.save(tmp_path / "f64.npy", np.zeros((2, 32), np.float64))
    p = subprocess.run([run, f"x={tmp_path / 'f64.npy'}"], capture_output=True, text=True)
    assert p.returncode != 0 and "dtype" in p.stderr


def test_missing_weights_file_is_clear(mlp_artifact, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(mlp_artifact, copy)
    with open(copy / "weights.bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(TccError, match="weights.bin"):
        tcc.load(str(copy))


def test_recompiled_artifact_reloads_fresh_code(tmp_path):
    """Recompiling into the same directory and loading again in the same process runs the new model
    (glibc would hand back the old library for the same path name)."""
    def one_node(op: str):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
        m = helper.make_model(helper.make_graph([helper.make_node(op, ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        path = tmp_path / f"{op}.onnx"
        onnx.save(m, path)
        return str(path)

    out = str(tmp_path / "same")
    x = np.array([-1, 2, -3, 4], np.float32)
    tcc.compile(one_node("Neg"), out)
    first = tcc.load(out)
    np.testing.assert_array_equal(first.run({"x": x})["y"], -x)
    tcc.compile(one_node("Relu"), out)
    np.testing.assert_array_equal(tcc.load(out).run({"x": x})["y"], np.maximum(x, 0))
    np.testing.assert_array_equal(first.run({"x": x})["y"], -x)  # the old session keeps its own code


def test_keep_build_copies_generated_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("TCC_KEEP_BUILD", "1")
    out = tmp_path / "kept"
    manifest = tcc.compile(MLP, str(out))
    src = (out / "src" / "model.cpp").read_text()
    assert "DO NOT EDIT" in src and "tcc_gemm_f32__" in src
    for name in manifest["kernels"]:
        kernel = (out / "src" / "kernels" / f"{name}.cpp").read_text()
        assert kernel.startswith("// Generated by tcc") and f'extern "C" void {name}(' in kernel


def test_profiling_times_every_node_that_runs_code(mlp_artifact, capsys):
    sess = tcc.load(str(mlp_artifact))
    x = {"x": np.ones((4, 32), np.float32)}
    sess.run(x)
    assert all(r["calls"] == 0 for r in sess.profile())  # off by default
    sess.set_profiling(True)
    for _ in range(3):
        sess.run(x)
    rows = sess.profile()
    m = json.loads((mlp_artifact / "manifest.json").read_text())
    ops_with_code = {op: n for op, n in m["ops"].items() if op not in ("Reshape", "Squeeze", "Unsqueeze", "Identity", "Flatten")}
    assert sorted(r["op"] for r in rows) == sorted(op for op, n in ops_with_code.items() for _ in range(n))
    assert all(r["calls"] == 3 and r["ms"] >= 0 for r in rows)
    assert {r["node"] for r in rows if r["op"] == "Linear"} == {"/fc1/Gemm", "/fc2/Gemm", "/fc3/Gemm"}
    sess.set_profiling(True)  # re-enabling resets the counters
    assert all(r["calls"] == 0 for r in sess.profile())
    assert main(["run", str(mlp_artifact), "--random", "--profile", "--repeat", "2", "-o", str(mlp_artifact.parent)]) == 0
    out = capsys.readouterr().out
    assert "profile:" in out and "by op: " in out and "Linear" in out


def test_odd_names_passthrough_and_constant_outputs(tmp_path):
    """Public names survive: an output that is also an input (ONNX allows it), names with quotes, slashes
    and colons, and an output that folds to a constant."""
    vi = lambda n, s: helper.make_tensor_value_info(n, TensorProto.FLOAT, s)  # noqa: E731
    c = onnx.numpy_helper.from_array(np.array([1, 2], np.float32), "c")
    graph = helper.make_graph(
        [helper.make_node("Relu", ['in "x"'], ["out/1:relu"]), helper.make_node("Identity", ["c"], ["const out"])],
        "g", [vi('in "x"', ["n", 3])], [vi("out/1:relu", ["n", 3]), vi('in "x"', ["n", 3]), vi("const out", [2])], [c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "odd.onnx"
    onnx.save(model, path)
    out = tmp_path / "odd"
    tcc.compile(str(path), str(out))
    x = np.arange(6, dtype=np.float32).reshape(2, 3) - 2
    got = tcc.load(str(out)).run({'in "x"': x})
    assert list(got) == ["out/1:relu", 'in "x"', "const out"]
    np.testing.assert_array_equal(got["out/1:relu"], np.maximum(x, 0))
    np.testing.assert_array_equal(got['in "x"'], x)
    np.testing.assert_array_equal(got["const out"], [1, 2])
    np.save(tmp_path / "x.npy", x)
    p = subprocess.run([str(out / "run"), f'in "x"={tmp_path / "x.npy"}', "-o", str(tmp_path)], capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "out_1_relu.npy"), np.maximum(x, 0))


def test_compile_reports_a_decoder_without_past(tmp_path):
    """The bundled test LLaMA (tests/models/llama.onnx) has no past inputs, so generation recomputes the sequence."""
    r = _tcc("compile", os.path.join(MODELS_DIR, "llama.onnx"), "-o", tmp_path / "llama", "--max-dim", "batch=4",
             "--max-dim", "seq=128", "-q")
    assert r.returncode == 0, r.stderr
    assert "language model without past inputs: generation recomputes the sequence, context 128 tokens" in r.stdout
    assert "no KV cache" not in r.stdout
