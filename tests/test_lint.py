"""ruff finds nothing in the repository: the rules of [tool.ruff] in pyproject.toml (pyflakes, pycodestyle's
statement and syntax errors, ...). Under CI=true a missing ruff fails this test (tests/conftest.py turns the
skip into a failure); `pip install -e '.[test]'` installs it."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ruff_check_is_clean():
    pytest.importorskip("ruff", reason="ruff is not installed (pip install -e '.[test]')")
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", ROOT],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    if proc.returncode != 0:
        pytest.fail(f"ruff check found problems (fix them; the rules: [tool.ruff] in pyproject.toml):\n"
                    f"{proc.stdout}{proc.stderr}", pytrace=False)
