"""ONNX backend node tests through the real product path: `tcc.compile` (x86, fp32 kernels) + `tcc.load`.

Every one of the 1765 tests must either compile, run and match ONNX's expected outputs, or be refused
with UnsupportedError (at import, or at code generation when no kernel exists for an op/dtype). Anything
else fails. Counts are printed in the terminal summary (conftest.py).

The supported set is the one the interpreter tests pin, tests/conformance/supported.txt, less
CODEGEN_REFUSALS below (empty today): a listed test that is refused fails, and so does an unlisted test
that compiles. Regenerate the list on purpose with
`python3 -m tests.conformance.run_node_tests --write-supported` (see run_node_tests.py).

Tolerances: ints/bools exact. f32 rtol 1e-5 / atol 1e-6: the AVX2 transcendental kernels are accurate
to <= 2e-6 relative (docs/kernels.md) and GEMM/reduction accumulation order differs from numpy's by a
few ulps on these small shapes; atol covers results that cancel to ~0.
"""
from __future__ import annotations

import pytest

import tcc
from tcc.errors import UnsupportedError

from .run_node_tests import load_node_test, node_test_names
from .test_node_tests_interp import SUPPORTED, _compare, accepted_but_unlisted, refused_but_listed

NAMES = node_test_names()

# Node tests the frontend accepts (the interpreter runs them) but the x86 code generator refuses, with the
# reason. Empty: the compiled path supports everything the IR does, and a new gap fails here loudly.
CODEGEN_REFUSALS: dict[str, str] = {}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    # One build tree per test worker, reused: CMake reconfigures in place and ccache serves the kernels.
    return tmp_path_factory.mktemp("node-compiled")


def _assert_refused_at_import(name: str, model_path: str, refusal: Exception) -> None:
    from tcc.frontend.onnx_import import import_onnx

    try:
        import_onnx(model_path)
    except UnsupportedError:
        return  # refused at import: the op, attribute or dtype is outside tcc's IR
    pytest.fail(f"the frontend accepts {name} but code generation refuses it: {refusal}")


@pytest.mark.parametrize("name", NAMES)
def test_node_compiled(name, workdir, record_property):
    test = load_node_test(name)
    out = workdir / "artifact"
    try:
        tcc.compile(test.model_path, str(out), build_dir=str(workdir / "build"))
    except UnsupportedError as e:
        refusal = e
    else:
        refusal = None
    if refusal is not None:
        assert "\n" not in str(refusal)
        if name in SUPPORTED and name not in CODEGEN_REFUSALS:
            pytest.fail(refused_but_listed(name, "compiled path", refusal), pytrace=False)
        if name not in CODEGEN_REFUSALS:
            _assert_refused_at_import(name, test.model_path, refusal)
        record_property("conformance-compiled", "refused")
        return
    with tcc.load(str(out)) as sess:
        names = [i.name for i in sess.inputs]
        for k, (inputs, outputs) in enumerate(test.cases):
            got = sess.run(dict(zip(names, inputs)))
            got = [got[o.name] for o in sess.outputs]
            assert len(got) == len(outputs), f"case {k}: {len(got)} outputs, expected {len(outputs)}"
            for i, (g, w) in enumerate(zip(got, outputs)):
                _compare(name, g, w, f"{name} case {k} output {i}")
    if name in CODEGEN_REFUSALS:
        pytest.fail(f"{name} compiles and passes now: remove it from CODEGEN_REFUSALS", pytrace=False)
    if name not in SUPPORTED:
        pytest.fail(accepted_but_unlisted(name, "compiled path"), pytrace=False)
    record_property("conformance-compiled", "passed")
