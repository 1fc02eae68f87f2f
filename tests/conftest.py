"""Shared test fixtures: compiled-artifact caching and ONNX Runtime helpers."""
from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pytest

MODELS_DIR = os.path.join(os.path.dirname(__file__), "models")


def ort_run(model_path_or_bytes, feeds: dict) -> dict:
    """Run a model through ONNX Runtime (the correctness oracle) on the CPU, single threaded."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(model_path_or_bytes, so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


@pytest.fixture(scope="session")
def artifact_dir(tmp_path_factory):
    """A session-wide directory for compiled artifacts (each test names its own subdirectory)."""
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session", autouse=True)
def _build_cache(tmp_path_factory):
    """Keep build trees out of the user's ~/.cache: one per test session (ccache still shares objects)."""
    from tcc import flags

    if not os.environ.get("TCC_CACHE_DIR"):
        flags.set_flag("cache-dir", str(tmp_path_factory.mktemp("tcc-cache")))
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI (CI=true, set by .ci/run) a skipped test is a failure: a toolchain, package or fixture that is
    missing must not turn part of the suite green by accident. On a developer's machine it stays a skip
    with its reason."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI", "").lower() in ("1", "true", "yes") and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which must run every test: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """The same for a whole module skipped at collection (pytest.importorskip at module level)."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI", "").lower() in ("1", "true", "yes") and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"module skipped in CI, which must run every test: {reason}"


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# -- ONNX node-test counts (tests/conformance) ------------------------------------------------------
# Here, not in tests/conformance/conftest.py: under pytest-xdist the controller, which writes the summary,
# loads only the top-level conftest.
PATHS = {"conformance": "interpreter", "conformance-compiled": "compiled x86"}


def pytest_terminal_summary(terminalreporter):
    counts: Counter = Counter()
    for reports in terminalreporter.stats.values():
        for r in reports:
            if getattr(r, "when", None) != "call" or not r.passed:
                continue
            for key, value in getattr(r, "user_properties", []):
                if key in PATHS:
                    counts[key, value] += 1
    for key, label in PATHS.items():
        if counts[key, "passed"] or counts[key, "refused"]:
            terminalreporter.write_line(f"ONNX node tests ({label}): {counts[key, 'passed']} supported-passing, "
                                        f"{counts[key, 'refused']} refused")


# -- Test tiers ----------------------------------------------------------------------------------------
# Every test gets one marker by its path, so a developer can run one tier (`pytest -m unit` is the fast
# one: Python only, nothing compiled) while CI runs them all. The first matching prefix wins, so single
# slow modules are listed before their folder. A new module lands in "unit" unless listed here: if it
# builds C++ or runs a whole model, add it.
TIERS = (
    ("kernels/", "kernel"),
    ("cuda/test_program.py", "model"),
    ("cuda/test_gpu_check.py", "model"),
    ("cuda/", "kernel"),
    ("conformance/test_node_tests_compiled.py", "kernel"),
    ("test_ops_onnxruntime.py", "kernel"),
    ("test_slice_property.py", "kernel"),
    ("test_broadcast_assumptions.py", "kernel"),
    ("test_tuning.py", "kernel"),
    ("backends/", "emulated"),
    ("e2e/", "model"),
    ("serve/", "model"),
    ("fuzz/", "model"),
    ("runtime/test_tokenizer.py", "unit"),
    ("runtime/test_roofline.py", "unit"),
    ("runtime/test_perplexity.py", "unit"),
    ("runtime/", "model"),
    ("passes/test_kv_cache.py", "model"),
    ("passes/test_attention_variants_models.py", "model"),
    ("test_compile_cache.py", "model"),
)
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def tier_of(path: str) -> str:
    rel = os.path.relpath(path, TESTS_DIR).replace(os.sep, "/")
    return next((tier for prefix, tier in TIERS if rel.startswith(prefix)), "unit")


def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(getattr(pytest.mark, tier_of(str(item.path))))
