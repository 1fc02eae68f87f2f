"""Index of the LLM fixtures in tests/models/llm/ (see README.md there). No torch import.

    from tests.models.llm.fixtures import FIXTURES, fixture_dir, fixture, select

    FIXTURES                      # list[dict]: every <name>/fixture.json, sorted by name
    fixture_dir("gpt2_past_dynamo")   # -> absolute path of the directory (model.onnx, tokenizer.json, ...)
    fixture("gpt2_past_dynamo")       # -> its fixture.json as a dict
    select(form="past", exporter="torchscript")   # filter on any top-level fixture.json field
"""
from __future__ import annotations

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def _load() -> list[dict]:
    out = []
    for name in sorted(os.listdir(HERE)):
        path = os.path.join(HERE, name, "fixture.json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                out.append(json.load(f))
    return out


FIXTURES: list[dict] = _load()
NAMES: list[str] = [f["name"] for f in FIXTURES]
_BY_NAME = {f["name"]: f for f in FIXTURES}


def fixture_dir(name: str) -> str:
    """Directory of fixture `name` (model.onnx, config.json, tokenizer.json, fixture.json, ...)."""
    if name not in _BY_NAME:
        raise KeyError(f"unknown LLM fixture {name!r}; known: {', '.join(NAMES)}")
    return os.path.join(HERE, name)


def fixture(name: str) -> dict:
    """fixture.json of fixture `name`."""
    fixture_dir(name)
    return _BY_NAME[name]


def model_path(name: str) -> str:
    return os.path.join(fixture_dir(name), "model.onnx")


def select(**fields) -> list[dict]:
    """Fixtures whose top-level fixture.json fields equal the given values, e.g.
    select(arch="llama", form="past")."""
    return [f for f in FIXTURES if all(f.get(k) == v for k, v in fields.items())]


__all__ = ["FIXTURES", "NAMES", "fixture", "fixture_dir", "model_path", "select"]
