"""The Metal target's description and what `tcc compile --target metal` says while the whole program is missing."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tcc.backends import capabilities, get_backend
from tcc.driver import CompileOptions, check_target, resolve_options
from tcc.errors import TccError

MLP = os.path.join(os.path.dirname(os.path.dirname(__file__)), "models", "mlp.onnx")


def test_capabilities_compute_in_fp16():
    backend = get_backend("metal")
    caps = capabilities(backend.target)
    assert caps.activations == "f16" and caps.f16_arithmetic and not caps.host_memory
    assert backend.target.qms == ("fp16", "w4a16", "w4a32") and backend.target.default_qm == "fp16"


@pytest.mark.parametrize("qm", ["w8a8", "w4a8", "fp32"])
def test_other_schemes_are_refused_in_one_line(qm):
    with pytest.raises(TccError, match=rf"target metal cannot run --qm {qm} .*it supports: fp16, w4a16, w4a32"):
        check_target(resolve_options(CompileOptions(target="metal", qm=qm)))


@pytest.mark.parametrize("qm", [None, "w4a16", "w4a32"])
def test_compile_refuses_until_the_program_exists(qm):
    with pytest.raises(TccError, match="cannot compile a model yet: .*host program"):
        check_target(resolve_options(CompileOptions(target="metal", qm=qm)))


def test_cli_refusal_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tcc.cli", "compile", MLP, "--target", "metal", "--qm", "w4a16",
                           "-o", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 1 and not (tmp_path / "out").exists()
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tcc: error: --target metal cannot compile a model yet")


def test_select_and_packing():
    backend = get_backend("metal")
    assert backend.select("norm", op="rmsnorm", dtype="f16").name == "tcc_norm_rmsnorm_f16__metal"
    assert backend.select("norm", op="rmsnorm", dtype="f64") is None
    with pytest.raises(KeyError, match="no packing for 'q4_weight_i8'"):
        backend.pack("q4_weight_i8", None)
