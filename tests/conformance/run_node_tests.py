"""Helpers for ONNX's backend node tests (onnx/backend/test/data/node/<test>/model.onnx + test_data_set_*/).

`iter_node_tests()` yields every test as (name, model_path, cases), each case (inputs, outputs) numpy
arrays in graph order (graph inputs that are initializers excluded). A case whose inputs or outputs are
sequences/optionals holds `UNSUPPORTED` there (tcc has no such values; its import refuses the model).
`run_with_interpreter(test)` imports the model and runs every case through tcc's reference interpreter;
a compiled runner can later be plugged in beside it with the same signature.

`supported.txt` (beside this file, one name per line, sorted) is the exact set of node tests tcc supports,
shared by the interpreter and the compiled tests: each test asserts that it is refused iff it is not listed,
so a new refusal fails CI, and so does a newly supported test until it is listed. Regenerate it on purpose,
after adding or removing an op, from the repository root:

    python3 -m tests.conformance.run_node_tests --write-supported

and review the diff of tests/conformance/supported.txt before committing it.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
from typing import Iterator, NamedTuple

import numpy as np
import onnx
from onnx import numpy_helper

NODE_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "node")
UNSUPPORTED = "unsupported value (sequence/optional/map)"
SUPPORTED_FILE = os.path.join(os.path.dirname(__file__), "supported.txt")
REGENERATE = "python3 -m tests.conformance.run_node_tests --write-supported"


class NodeTest(NamedTuple):
    name: str
    model_path: str
    cases: list  # [(inputs: list[np.ndarray], outputs: list[np.ndarray])]


def _read_value(path: str, value_info) -> object:
    if not value_info.type.HasField("tensor_type"):
        return UNSUPPORTED
    t = onnx.TensorProto()
    with open(path, "rb") as f:
        t.ParseFromString(f.read())
    return numpy_helper.to_array(t)


def load_node_test(name: str) -> NodeTest:
    d = os.path.join(NODE_DIR, name)
    model_path = os.path.join(d, "model.onnx")
    g = onnx.load(model_path, load_external_data=False).graph
    inits = {t.name for t in g.initializer}
    ins = [vi for vi in g.input if vi.name not in inits]
    cases = []
    for ds in sorted(glob.glob(os.path.join(d, "test_data_set_*"))):
        inputs = [_read_value(os.path.join(ds, f"input_{i}.pb"), vi) for i, vi in enumerate(ins)
                  if os.path.exists(os.path.join(ds, f"input_{i}.pb"))]
        outputs = [_read_value(os.path.join(ds, f"output_{i}.pb"), vi) for i, vi in enumerate(g.output)]
        cases.append((inputs, outputs))
    return NodeTest(name, model_path, cases)


def node_test_names() -> list[str]:
    return sorted(n for n in os.listdir(NODE_DIR) if os.path.isdir(os.path.join(NODE_DIR, n)))


def iter_node_tests() -> Iterator[NodeTest]:
    for name in node_test_names():
        yield load_node_test(name)


def run_with_interpreter(test: NodeTest) -> list[list[np.ndarray]]:
    """tcc's outputs for every case of `test` (import + reference interpreter). Raises what import raises
    (UnsupportedError for models tcc refuses)."""
    from tcc.errors import UnsupportedError
    from tcc.frontend.onnx_import import import_onnx
    from tcc.ir.interpreter import run_graph

    graph = import_onnx(test.model_path)
    results = []
    for inputs, _ in test.cases:
        if any(isinstance(x, str) for x in inputs):
            raise UnsupportedError(f"{test.name}: sequence/optional inputs")
        if len(inputs) != len(graph.inputs):
            raise UnsupportedError(f"{test.name}: {len(inputs)} inputs given, the graph has {len(graph.inputs)} "
                                   "(optional graph inputs left out)")
        out = run_graph(graph, {v.name: x for v, x in zip(graph.inputs, inputs)})
        results.append([out[v.name] for v in graph.outputs])
    return results


def read_supported() -> frozenset[str]:
    """The committed list of supported node tests."""
    with open(SUPPORTED_FILE) as f:
        return frozenset(line.strip() for line in f if line.strip())


def interpreter_supports(name: str) -> bool:
    """Whether tcc accepts node test `name` (import + interpreter raise no UnsupportedError). Wrong values
    or crashes still count as supported: the tests report those, the list only records what is refused."""
    from tcc.errors import UnsupportedError

    try:
        run_with_interpreter(load_node_test(name))
    except UnsupportedError:
        return False
    except Exception:
        return True
    return True


def write_supported(path: str = SUPPORTED_FILE) -> list[str]:
    names = [n for n in node_test_names() if interpreter_supports(n)]
    with open(path, "w") as f:
        f.write("".join(n + "\n" for n in names))
    return names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m tests.conformance.run_node_tests",
                                 description="ONNX node tests: list or rewrite the supported set.")
    ap.add_argument("--write-supported", action="store_true",
                    help=f"rewrite {os.path.relpath(SUPPORTED_FILE)} from what tcc accepts now")
    args = ap.parse_args(argv)
    if args.write_supported:
        old = read_supported() if os.path.exists(SUPPORTED_FILE) else frozenset()
        new = set(write_supported())
        print(f"{len(new)} supported node tests written to {os.path.relpath(SUPPORTED_FILE)}")
        for n in sorted(new - old):
            print(f"  + {n}")
        for n in sorted(old - new):
            print(f"  - {n}")
        return 0
    listed, total = len(read_supported()), len(node_test_names())
    print(f"{listed} of {total} node tests listed as supported in {os.path.relpath(SUPPORTED_FILE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
