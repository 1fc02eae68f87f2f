"""The Metal target's description and what `tcc compile --target metal` says while the whole program is missing."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tcc.backends import capabilities, get_backend
from tcc.driver import CompileOptions, check_target, resolve_options
from tcc.errors import TccError



def test_capabilities_compute_in_fp16():
    backend = get_backend("metal")
    caps = capabilities(backend.target)
    assert caps.activations == "f16" and caps.f16_arithmetic and not caps.host_memory
    assert backend.target.qms == ("fp16", "w4a16", "w4a32") and backend.target.default_qm == "fp16"


@pytest.mark.parametrize("qm", ["w8a8", "w4a8", "fp32"])
def test_other_schemes_are_refused_in_one_line(qm):
    with pytest.raises(TccError, match=rf"target metal cannot run --qm {qm} .*it supports: fp16, w4a16, w4a32"):
        check_target(resolve_options(CompileOptions(target="metal", qm=qm)))


def _int_neg_model(path):
    """A model whose only op (Neg on int64: the unary family's integer forms) has no Metal kernel yet."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.INT64, [4])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, [4])
    graph = helper.make_graph([helper.make_node("Neg", ["x"], ["y"], name="n")], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_an_op_without_a_metal_kernel_is_a_one_line_refusal(tmp_path):
    model = str(tmp_path / "neg.onnx")
    _int_neg_model(model)
    proc = subprocess.run([sys.executable, "-m", "tcc.cli", "compile", model, "--target", "metal",
                           "-o", str(tmp_path / "out"), "-q"], capture_output=True, text=True)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and "no unary kernel" in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


def test_select_and_packing():
    backend = get_backend("metal")
    assert backend.select("norm", op="rmsnorm", dtype="f16").name == "tcc_norm_rmsnorm_f16__metal"
    assert backend.select("norm", op="rmsnorm", dtype="f64") is None
    with pytest.raises(KeyError, match="no packing for 'q4_weight_i8'"):
        backend.pack("q4_weight_i8", None)
