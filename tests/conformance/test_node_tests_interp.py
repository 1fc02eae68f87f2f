"""ONNX backend node tests through import + the reference interpreter.

Every test must either import and match ONNX's expected outputs, or be refused at import with
UnsupportedError (an op, attribute, dtype or run-time shape operand tcc does not handle). Anything else —
a crash, another exception, a wrong value — fails. Counts are printed in the terminal summary
(conftest.py) as "supported-passing" and "refused".

Which tests are refused is pinned: tests/conformance/supported.txt lists exactly the supported ones (shared
with test_node_tests_compiled.py). A listed test that is refused fails, and so does an unlisted test that
is now accepted. After adding or removing an op on purpose, regenerate the list from the repository root
with `python3 -m tests.conformance.run_node_tests --write-supported` and commit its diff.

Tolerances: ints/bools exact; f32 rtol 1e-5 / atol 1e-6 (refs compute in float64 and round once, the
expected data comes from numpy in f32, so a few ulps either side); f16 rtol/atol 1e-3 (half precision has
an 11-bit mantissa: 1 ulp = 2^-10 relative).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from tcc.errors import UnsupportedError

from .run_node_tests import (REGENERATE, SUPPORTED_FILE, load_node_test, node_test_names, read_supported,
                             run_with_interpreter)

NAMES = node_test_names()
SUPPORTED = read_supported()

# Tests whose expected data is inherently looser than the default f32 tolerance: none so far.
LOOSE: dict[str, tuple[float, float]] = {}


def test_all_node_tests_enumerated():
    if onnx.__version__ == "1.22.0":
        assert len(NAMES) == 1765


def test_supported_list_is_exact_and_sorted():
    with open(SUPPORTED_FILE) as f:
        lines = f.read().splitlines()
    assert lines == sorted(set(lines)), f"{SUPPORTED_FILE} must be sorted without duplicates; run `{REGENERATE}`"
    stale = sorted(SUPPORTED - set(NAMES))
    assert not stale, f"{SUPPORTED_FILE} names node tests that do not exist: {stale[:5]}; run `{REGENERATE}`"


def refused_but_listed(name: str, path: str, reason: Exception) -> str:
    return (f"{name} is listed in tests/conformance/supported.txt but the {path} now refuses it ({reason}); "
            f"if dropping it is intended, run `{REGENERATE}` and commit the diff")


def accepted_but_unlisted(name: str, path: str) -> str:
    return (f"{name} now passes through the {path} but is not listed in tests/conformance/supported.txt; "
            f"add it on purpose: run `{REGENERATE}` and commit the diff")


def _tolerance(name: str, dtype: np.dtype) -> tuple[float, float]:
    if name in LOOSE:
        return LOOSE[name]
    return (1e-3, 1e-3) if dtype == np.float16 else (1e-5, 1e-6)


def _compare(name: str, got: np.ndarray, want: np.ndarray, where: str) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype, f"{where}: dtype {got.dtype}, expected {want.dtype}"
    assert got.shape == want.shape, f"{where}: shape {got.shape}, expected {want.shape}"
    if want.dtype.kind == "f":
        rtol, atol = _tolerance(name, want.dtype)
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol,
                                   equal_nan=True, err_msg=where)
    else:
        np.testing.assert_array_equal(got, want, err_msg=where)


@pytest.mark.parametrize("name", NAMES)
def test_node(name, record_property):
    test = load_node_test(name)
    try:
        results = run_with_interpreter(test)
    except UnsupportedError as e:
        refusal = e
    else:
        refusal = None
    if refusal is not None:
        assert "\n" not in str(refusal)
        if name in SUPPORTED:
            pytest.fail(refused_but_listed(name, "interpreter", refusal), pytrace=False)
        record_property("conformance", "refused")
        return
    for k, ((_, outputs), got) in enumerate(zip(test.cases, results)):
        assert len(got) == len(outputs), f"case {k}: {len(got)} outputs, expected {len(outputs)}"
        for i, (g, w) in enumerate(zip(got, outputs)):
            _compare(name, g, w, f"{name} case {k} output {i}")
    if name not in SUPPORTED:
        pytest.fail(accepted_but_unlisted(name, "interpreter"), pytrace=False)
    record_property("conformance", "passed")
