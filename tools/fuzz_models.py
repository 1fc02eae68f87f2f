#!/usr/bin/env python
"""A seeded mutation fuzzer of tcc's ONNX frontend and passes: malformed models must end in clean errors.

    python tools/fuzz_models.py --cases 3000 --seed 1            # the table of outcome classes
    python tools/fuzz_models.py --cases 300 --seed 1 --compile 5 # and 5 full compiles (C++ build) of mutants
    python tools/fuzz_models.py --seed 1 --case 1234 --keep /tmp/m --show 1  # one case again, mutant kept

Each case picks one of the ONNX fixtures under tests/models, applies one to three mutations at the protobuf
level (dims, dtypes, initializer data lengths, the values of small int64 constants (shapes, axes, indices),
attribute types and values, node inputs/outputs and op types, opset, invalid UTF-8 in strings,
external-data entries, truncation, byte flips), all drawn from a `random.Random` seeded by (seed, case
index) so any case can be replayed alone with `--case` (on the same set of fixtures). The mutant is
written to a file and run through what `tcc ir --pipeline default` does (import, the compile pipeline up to
and including memory planning, the IR text) by a worker process; `--compile N` makes the first N cases
full compiles (`tcc compile`, C++ build) of mutants of the smallest fixture instead. The worker reports
how the case ended the way the CLI classifies it (`cli.main`): a `TccError` is a clean error with its exit
code, any other exception is an internal error (the CLI's exit 70). The parent also sees what the
worker cannot report: a signal (it died), a hang (no answer within --timeout seconds: it is killed and
restarted). Internal errors, tracebacks, signals, hangs and build failures (exit 4: a model tcc accepted
must build) are defects: the exit status is 1 when any occurred.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import queue
import random
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field

import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(REPO, "tests", "models")
COMPILE_FIXTURE = "mlp.onnx"  # the smallest fixture: full compiles of its mutants are a few seconds each
BAD = ("internal error", "traceback", "signal", "hang", "worker exit", "build failure (exit 4)")
MARK = b"\x01FUZZUTF8\x01"  # placeholder string replaced by invalid UTF-8 of the same length after serializing
BAD_UTF8 = b"\xff\xfe\xc3\x28\xa0\xa1\xe2\x28\xa1\xf0"
assert len(MARK) == len(BAD_UTF8)
WORKER_MEMORY = 6 << 30  # address-space limit of a worker: an absurd allocation fails instead of swapping


def fixtures() -> list[str]:
    """Every ONNX fixture under tests/models (relative paths, sorted: the case -> fixture map is stable)."""
    out = []
    for root, _, files in os.walk(MODELS):
        out += [os.path.relpath(os.path.join(root, f), MODELS) for f in files if f.endswith(".onnx")]
    return sorted(out)


# ---------------------------------------------------------------------------------------------
# mutations: each takes (model, rng, extra) and returns a short description; `extra` collects
# wire-level edits and external-data files
# ---------------------------------------------------------------------------------------------

@dataclass
class Extra:
    files: dict[str, bytes] = field(default_factory=dict)  # name -> bytes written beside the mutant
    truncate: float | None = None  # keep this fraction of the serialized bytes
    flips: int = 0  # random bytes to overwrite
    utf8: bool = False  # replace MARK by BAD_UTF8


INTS = [0, 1, 2, 3, -1, -2, 7, 64, 255, 1 << 31, (1 << 31) - 1, 1 << 40, 1 << 62, (1 << 63) - 1, -(1 << 63)]
FLOATS = [0.0, -0.0, 1.0, -1.0, 1e-30, 1e30, float("inf"), float("-inf"), float("nan")]
DIM_PARAMS = ["", " ", "batch", "seq", "a+b", "seq + 1", "batch size", "1x", "\u00e4", "if", "d0", "x" * 300]


def _value_infos(m, rng, outputs=True):
    inits = {t.name for t in m.graph.initializer}
    vis = [v for v in m.graph.input if v.name not in inits]
    if outputs:
        vis += list(m.graph.output) + list(m.graph.value_info)
    return vis


def m_dim(m, rng, ex):
    vis = [v for v in _value_infos(m, rng, outputs=rng.random() < 0.3) if v.type.HasField("tensor_type")]
    if not vis:
        return "dim: none"
    v = rng.choice(vis)
    shape = v.type.tensor_type.shape
    r = rng.random()
    if r < 0.1 or not shape.dim:
        shape.dim.add().dim_value = rng.choice([1, 3, 1 << 62])
        return f"dim: {v.name} gets a dim"
    d = rng.choice(shape.dim)
    if r < 0.2:
        shape.dim.remove(d)
        return f"dim: {v.name} loses a dim"
    if r < 0.3:
        v.type.tensor_type.ClearField("shape")
        return f"dim: {v.name} unknown rank"
    if r < 0.6:
        d.dim_param = rng.choice(DIM_PARAMS)
        return f"dim: {v.name} dim_param {d.dim_param[:20]!r}"
    d.dim_value = rng.choice([0, 1, 2, 5, 1 << 31, 1 << 40, 1 << 62, (1 << 63) - 1, -1, -7, rng.randrange(1, 100000)])
    return f"dim: {v.name} dim_value {d.dim_value}"


def m_dtype(m, rng, ex):
    vis = [v for v in _value_infos(m, rng) if v.type.HasField("tensor_type")]
    if not vis:
        return "dtype: none"
    v = rng.choice(vis)
    v.type.tensor_type.elem_type = rng.randrange(0, 27)
    return f"dtype: {v.name} elem_type {v.type.tensor_type.elem_type}"


def _initializer(m, rng):
    inits = list(m.graph.initializer)
    return rng.choice(inits) if inits else None


def m_init_dims(m, rng, ex):
    t = _initializer(m, rng)
    if t is None:
        return "init dims: none"
    r = rng.random()
    if r < 0.3 or not t.dims:
        t.dims.append(rng.choice([1, 2, 0, 1 << 62]))
    elif r < 0.5:
        del t.dims[rng.randrange(len(t.dims))]
    else:
        i = rng.randrange(len(t.dims))
        t.dims[i] = rng.choice([0, -1, t.dims[i] + 1, t.dims[i] * 2, 1 << 31, 1 << 62, (1 << 63) - 1])
    return f"init dims: {t.name} -> {list(t.dims)}"


def m_init_data(m, rng, ex):
    t = _initializer(m, rng)
    if t is None:
        return "init data: none"
    r = rng.random()
    if t.HasField("raw_data") and r < 0.5:
        n = len(t.raw_data)
        if rng.random() < 0.7:
            t.raw_data = t.raw_data[:rng.randrange(0, max(n, 1))]
        else:
            t.raw_data = t.raw_data + b"\0" * rng.randrange(1, 9)
        return f"init data: {t.name} raw_data {n} -> {len(t.raw_data)} bytes"
    if r < 0.7:
        t.data_type = rng.choice([TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT64, TensorProto.INT8,
                                  TensorProto.BOOL, TensorProto.STRING, TensorProto.DOUBLE, TensorProto.BFLOAT16,
                                  0, 99])
        return f"init data: {t.name} data_type {t.data_type}"
    if r < 0.85:
        t.ClearField("raw_data")
        t.float_data.extend([1.0] * rng.randrange(0, 5))
        return f"init data: {t.name} float_data of {len(t.float_data)}"
    t.ClearField("raw_data")
    t.int64_data.extend([rng.choice(INTS) for _ in range(rng.randrange(0, 4))])
    return f"init data: {t.name} int64_data of {len(t.int64_data)}"


def m_shape_values(m, rng, ex):
    """Change one value of a small int64 constant (initializer or Constant node): the shapes, axes, starts
    and indices that Reshape, Slice, Gather, Expand ... take; the model stays well-formed, its shapes not."""
    small = [t for t in m.graph.initializer if t.data_type == TensorProto.INT64 and 0 < math.prod(t.dims) <= 8]
    small += [a.t for n in m.graph.node if n.op_type == "Constant" for a in n.attribute
              if a.name == "value" and a.t.data_type == TensorProto.INT64 and 0 < math.prod(a.t.dims) <= 8]
    if not small:
        return "shape values: none"
    t = rng.choice(small)
    arr = numpy_helper.to_array(t).copy()
    flat = arr.reshape(-1)
    flat[rng.randrange(flat.size)] = rng.choice(INTS + [rng.randrange(-4, 5) for _ in range(6)])
    t.CopyFrom(numpy_helper.from_array(arr, t.name))
    return f"shape values: {t.name or 'Constant'} -> {flat.tolist()}"


def _node(m, rng, with_attrs=False):
    nodes = [n for n in m.graph.node if n.attribute or not with_attrs]
    return rng.choice(nodes) if nodes else None


def _other_attribute(name, rng, ex):
    kind = rng.choice(["int", "float", "string", "ints", "floats", "strings", "tensor", "graph", "empty", "utf8"])
    if kind == "int":
        return helper.make_attribute(name, rng.choice(INTS))
    if kind == "float":
        return helper.make_attribute(name, rng.choice(FLOATS))
    if kind == "string":
        return helper.make_attribute(name, rng.choice(["", "none", "tanh", "x" * 40]))
    if kind == "ints":
        return helper.make_attribute(name, [rng.choice(INTS) for _ in range(rng.randrange(0, 5))],
                                     attr_type=AttributeProto.INTS)
    if kind == "floats":
        return helper.make_attribute(name, [rng.choice(FLOATS) for _ in range(rng.randrange(1, 4))])
    if kind == "strings":
        return helper.make_attribute(name, ["a", "b"])
    if kind == "tensor":
        return helper.make_attribute(name, helper.make_tensor("t", TensorProto.FLOAT, [2], [1.0, 2.0]))
    if kind == "graph":
        return helper.make_attribute(name, helper.make_graph([], "sub", [], []))
    if kind == "utf8":
        ex.utf8 = True
        return helper.make_attribute(name, MARK.decode("latin-1"))
    a = AttributeProto()
    a.name = name
    a.type = rng.choice([AttributeProto.INT, AttributeProto.TENSOR, AttributeProto.INTS, 0, AttributeProto.TYPE_PROTOS])
    return a


def m_attr_type(m, rng, ex):
    n = _node(m, rng, with_attrs=rng.random() < 0.8)
    if n is None:
        return "attr type: none"
    if n.attribute and rng.random() < 0.8:
        i = rng.randrange(len(n.attribute))
        name = n.attribute[i].name
        n.attribute[i].CopyFrom(_other_attribute(name, rng, ex))
    else:
        name = rng.choice(["axis", "perm", "to", "value", "epsilon", "axes", "keepdims", "split", "approximate"])
        n.attribute.append(_other_attribute(name, rng, ex))
    code = next(a.type for a in n.attribute if a.name == name)
    return f"attr type: {n.op_type} {n.name!r}.{name} type {AttributeProto.AttributeType.Name(code)}"


def m_attr_value(m, rng, ex):
    n = _node(m, rng, with_attrs=True)
    if n is None:
        return "attr value: none"
    a = rng.choice(n.attribute)
    if a.type == AttributeProto.INT:
        a.i = rng.choice(INTS)
    elif a.type == AttributeProto.FLOAT:
        a.f = rng.choice(FLOATS)
    elif a.type == AttributeProto.INTS:
        vals = list(a.ints)
        r = rng.random()
        if r < 0.3 and vals:
            vals[rng.randrange(len(vals))] = rng.choice(INTS)
        elif r < 0.5:
            vals.append(rng.choice(INTS))
        elif r < 0.7 and vals:
            vals.pop(rng.randrange(len(vals)))
        else:
            rng.shuffle(vals)
            vals = vals + vals[:1]
        del a.ints[:]
        a.ints.extend(vals)
    elif a.type == AttributeProto.STRING:
        a.s = rng.choice([b"", b"bogus", b"tanh", b"none"])
    elif a.type == AttributeProto.TENSOR:
        t = a.t
        if t.raw_data and rng.random() < 0.5:
            t.raw_data = t.raw_data[:len(t.raw_data) // 2]
        else:
            t.dims.append(rng.choice([0, 2, 1 << 62]))
    else:
        return f"attr value: {n.op_type} {a.name} (type {a.type}) left"
    return f"attr value: {n.op_type} {n.name!r}.{a.name}"


def m_node_io(m, rng, ex):
    n = _node(m, rng)
    if n is None:
        return "node io: none"
    r = rng.random()
    names = [x for nd in m.graph.node for x in nd.output] + [v.name for v in m.graph.input]
    if r < 0.2 and n.input:
        i = rng.randrange(len(n.input))
        n.input[i] = "fuzz_undefined"
        return f"node io: {n.op_type} {n.name!r} input {i} undefined"
    if r < 0.4 and n.input:
        i = rng.randrange(len(n.input))
        n.input[i] = rng.choice(names) if names else ""
        return f"node io: {n.op_type} {n.name!r} input {i} -> {n.input[i]!r}"
    if r < 0.5 and n.input:
        n.input[rng.randrange(len(n.input))] = ""
        return f"node io: {n.op_type} {n.name!r} input absent"
    if r < 0.6 and n.input:
        del n.input[-1]
        return f"node io: {n.op_type} {n.name!r} drops last input"
    if r < 0.7:
        n.input.append(rng.choice(names + [""]) if names else "")
        return f"node io: {n.op_type} {n.name!r} extra input"
    if r < 0.8 and n.output:
        n.output[rng.randrange(len(n.output))] = rng.choice(names) if names else "dup"
        return f"node io: {n.op_type} {n.name!r} output renamed to an existing name"
    if r < 0.9:
        n.output.append("fuzz_extra_out")
        return f"node io: {n.op_type} {n.name!r} extra output"
    if n.output:
        del n.output[-1]
    return f"node io: {n.op_type} {n.name!r} drops last output"


OPS = ["Add", "MatMul", "Gemm", "Reshape", "Transpose", "Softmax", "Gather", "Concat", "Split", "Slice", "Cast",
       "Expand", "ConstantOfShape", "Range", "Where", "LayerNormalization", "Attention", "Squeeze", "Unsqueeze",
       "ReduceMean", "Shape", "Constant", "Identity", "Tile", "Trilu", "Sum", "Dropout", "Flatten", "Pow", "TopK",
       "If", "Loop", "NoSuchOp"]


def m_op(m, rng, ex):
    n = _node(m, rng)
    if n is None:
        return "op: none"
    old, n.op_type = n.op_type, rng.choice(OPS)
    if rng.random() < 0.1:
        n.domain = rng.choice(["com.microsoft", "ai.onnx", "bogus"])
    return f"op: {n.name!r} {old} -> {n.op_type}"


def m_graph(m, rng, ex):
    g = m.graph
    r = rng.random()
    if r < 0.3 and g.node:
        i = rng.randrange(len(g.node))
        del g.node[i]
        return f"graph: node {i} deleted"
    if r < 0.5 and len(g.node) > 1:
        i, j = rng.randrange(len(g.node)), rng.randrange(len(g.node))
        a, b = onnx.NodeProto(), onnx.NodeProto()
        a.CopyFrom(g.node[i])
        b.CopyFrom(g.node[j])
        g.node[i].CopyFrom(b)
        g.node[j].CopyFrom(a)
        return f"graph: nodes {i} and {j} swapped"
    if r < 0.6 and g.node:
        g.node.append(g.node[rng.randrange(len(g.node))])
        return "graph: a node duplicated"
    if r < 0.7 and g.initializer:
        i = rng.randrange(len(g.initializer))
        del g.initializer[i]
        return f"graph: initializer {i} deleted"
    if r < 0.8 and g.initializer:
        t = g.initializer.add()
        t.CopyFrom(g.initializer[rng.randrange(len(g.initializer) - 1)])
        return f"graph: initializer {t.name} duplicated"
    if r < 0.9 and g.output:
        g.output[rng.randrange(len(g.output))].name = rng.choice(["fuzz_nowhere", g.input[0].name if g.input else ""])
        return "graph: output renamed"
    if g.input:
        inits = {t.name for t in g.initializer}
        ins = [v for v in g.input if v.name not in inits]
        if ins:
            g.input.remove(ins[0])
            return f"graph: input {ins[0].name} removed"
    return "graph: none"


def m_opset(m, rng, ex):
    r = rng.random()
    if r < 0.6:
        for o in m.opset_import:
            if o.domain in ("", "ai.onnx"):
                o.version = rng.choice([0, 1, 7, 12, 13, 17, 18, 21, 23, 24, 27, 28, 100, -1, 1 << 40])
                return f"opset: {o.version}"
    if r < 0.8:
        o = m.opset_import.add()
        o.domain, o.version = rng.choice(["", "com.microsoft"]), rng.choice([1, 13, 99])
        return f"opset: extra import {o.domain!r} {o.version}"
    m.ir_version = rng.choice([0, 1, 3, 4, 11, 99, -1])
    return f"ir_version {m.ir_version}"


def m_utf8(m, rng, ex):
    ex.utf8 = True
    mark = MARK.decode("latin-1")  # the bytes come back only after serializing (MARK is ASCII)
    targets = [("producer_name", m), ("producer_version", m), ("doc_string", m), ("domain", m),
               ("name", m.graph), ("doc_string", m.graph)]
    n = _node(m, rng)
    if n is not None:
        targets += [("name", n), ("doc_string", n), ("op_type", n), ("domain", n)]
        if n.attribute:
            targets.append(("name", rng.choice(n.attribute)))
        if n.input:
            targets.append(("input", n))
    t = _initializer(m, rng)
    if t is not None:
        targets += [("name", t), ("doc_string", t)]
    vis = _value_infos(m, rng)
    if vis:
        v = rng.choice(vis)
        targets.append(("name", v))
        dims = v.type.tensor_type.shape.dim if v.type.HasField("tensor_type") else []
        if dims:
            targets.append(("dim_param", rng.choice(dims)))
    prop = m.metadata_props.add()
    prop.key, prop.value = "k", "v"
    targets.append(("value", prop))
    attr, obj = rng.choice(targets)
    if attr == "input":
        obj.input[rng.randrange(len(obj.input))] = mark
    else:
        setattr(obj, attr, mark)
    return f"utf8: invalid {type(obj).__name__}.{attr}"


def m_external(m, rng, ex, good=False):
    inits = [t for t in m.graph.initializer if t.HasField("raw_data") and len(t.raw_data) >= 16]
    if not inits:
        return "external: none"
    t = rng.choice(inits)
    data = bytes(t.raw_data)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    loc, off, length = "weights.bin", rng.choice([0, 0, 0, 4096]), len(data)
    blob = b"\0" * off + data
    r = 1.0 if good else rng.random()
    what = "short file"
    if r < 0.35:
        blob = blob[:rng.randrange(0, len(blob))]
    elif r < 0.5:
        length += rng.choice([1, 64, 1 << 40])
        what = "length past the end"
    elif r < 0.6:
        off = rng.choice([1 << 40, -8, len(blob) + 1])
        what = f"offset {off}"
    elif r < 0.7:
        loc = rng.choice(["missing.bin", "../outside.bin", "/etc/passwd", "", "sub/../../x.bin", "."])
        what = f"location {loc!r}"
    elif r < 0.8:
        length -= rng.randrange(1, 8)
        what = "length short of the tensor"
    elif r < 0.9:
        entry = t.external_data.add()
        entry.key, entry.value = rng.choice([("checksum", "00"), ("bogus", "1"), ("offset", "abc"), ("length", "-1")])
        what = f"entry {entry.key}={entry.value}"
    else:
        what = "correct"  # the good case must still import
    for k, v in (("location", loc), ("offset", str(off)), ("length", str(length))):
        e = t.external_data.add()
        e.key, e.value = k, v
    ex.files["weights.bin"] = blob
    return f"external: {t.name} {what}"


def m_truncate(m, rng, ex):
    ex.truncate = rng.random()
    return f"truncate to {ex.truncate:.3f}"


def m_flip(m, rng, ex):
    ex.flips = rng.randrange(1, 9)
    return f"flip {ex.flips} bytes"


def m_compile(m, rng, ex):
    """Mutations a model mostly survives, so that full-compile cases reach the C++ build: a dim fixed to a
    value (up to near the size limit), a float attribute set to an extreme, weights moved to external data;
    sometimes any other mutation."""
    r = rng.random()
    ins = [v for v in _value_infos(m, rng, outputs=False) if v.type.tensor_type.shape.dim]
    if r < 0.4 and ins:
        v = rng.choice(ins)
        d = rng.choice(v.type.tensor_type.shape.dim)
        d.dim_value = rng.choice([1, 2, 3, 17, 1 << 20, 1 << 28, 1 << 33, 1 << 62])
        return f"compile: {v.name} dim {d.dim_value}"
    floats = [(n, a) for n in m.graph.node for a in n.attribute if a.type == AttributeProto.FLOAT]
    if r < 0.6 and floats:
        n, a = rng.choice(floats)
        a.f = rng.choice(FLOATS)
        return f"compile: {n.op_type} {n.name!r}.{a.name} = {a.f}"
    if r < 0.8:
        return m_external(m, rng, ex, good=True)
    return MUTATIONS[rng.choice(["dim", "attr_value", "init_data"])](m, rng, ex)


MUTATIONS = {"dim": m_dim, "dtype": m_dtype, "init_dims": m_init_dims, "init_data": m_init_data,
             "attr_type": m_attr_type, "attr_value": m_attr_value, "node_io": m_node_io, "op": m_op,
             "graph": m_graph, "opset": m_opset, "utf8": m_utf8, "external": m_external, "truncate": m_truncate,
             "flip": m_flip, "shape_values": m_shape_values, "compile": m_compile}
# Mutations of the full-compile cases: the ones a model can survive to the C++ build.
COMPILE_MUTATIONS = ("compile",)


# ---------------------------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------------------------

@dataclass
class Case:
    index: int
    fixture: str
    compile: bool
    mutations: list[str]
    outcome: str = ""
    detail: str = ""
    seconds: float = 0.0


_PROTOS: dict[str, onnx.ModelProto] = {}
_PROTO_LOCK = threading.Lock()


def _proto(fixture: str) -> onnx.ModelProto:
    with _PROTO_LOCK:
        if fixture not in _PROTOS:
            # external data (none today) is inlined: the mutant is written elsewhere
            _PROTOS[fixture] = onnx.load(os.path.join(MODELS, fixture))
        return _PROTOS[fixture]


def _mutate(kind: str, m, rng, ex) -> str:
    """One mutation. A mutator that reads a tensor an earlier mutation of the same case already damaged
    (dims that no longer match the data) cannot apply: the case keeps the earlier damage instead."""
    try:
        return MUTATIONS[kind](m, rng, ex)
    except (ValueError, TypeError, IndexError) as e:
        return f"{kind}: not applied ({type(e).__name__})"


def make_case(seed: int, index: int, fixture_list: list[str], compile_case: bool, directory: str) -> Case:
    """Draw case `index` of `seed` and write its mutant (and any external data file) into `directory`."""
    rng = random.Random(f"tcc-fuzz:{seed}:{index}")
    fixture = COMPILE_FIXTURE if compile_case else rng.choice(fixture_list)
    m = onnx.ModelProto()
    m.CopyFrom(_proto(fixture))
    ex = Extra()
    kinds = COMPILE_MUTATIONS if compile_case else tuple(k for k in MUTATIONS if k not in COMPILE_MUTATIONS)
    count = 1 if compile_case else rng.choice([1, 1, 2, 3])  # one mutation: a compile case should reach the build
    done = [_mutate(k, m, rng, ex) for k in (rng.choice(kinds) for _ in range(count))]
    data = m.SerializeToString()
    if ex.utf8:
        data = data.replace(MARK, BAD_UTF8)
    if ex.flips:
        buf = bytearray(data)
        for _ in range(ex.flips):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        data = bytes(buf)
    if ex.truncate is not None:
        data = data[:int(len(data) * ex.truncate)]
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "model.onnx"), "wb") as f:
        f.write(data)
    for name, blob in ex.files.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(blob)
    return Case(index, fixture, compile_case, done)


# ---------------------------------------------------------------------------------------------
# the worker: runs cases in this process and answers one JSON line per request
# ---------------------------------------------------------------------------------------------

def classify_exception(e: BaseException) -> tuple[str, str]:
    """(outcome, detail) the way cli.main ends on this exception."""
    from tcc.errors import TccError

    if isinstance(e, TccError):
        return f"error exit {e.exit_code} ({type(e).__name__})", str(e)
    tb = traceback.extract_tb(e.__traceback__)
    ours = [f for f in tb if os.path.abspath(f.filename).startswith(REPO + os.sep)]
    frames = ours[-1:] + [f for f in tb[-1:] if not ours or f is not ours[-1]]  # tcc's last line, the raiser
    where = "".join(f" at {os.path.relpath(f.filename, REPO) if f in ours else os.path.basename(f.filename)}"
                    f":{f.lineno}" for f in frames)
    kind = "internal error" if isinstance(e, Exception) else "traceback"
    return kind, f"{type(e).__name__}: {e}{where}"


def run_one(path: str, compile_dir: str | None) -> tuple[str, str]:
    """What `tcc ir path --pipeline default` (or `tcc compile path -o compile_dir`) does, classified."""
    from tcc.driver import CompileOptions, compile_model, optimize
    from tcc.passes.runner import render

    try:
        if compile_dir:
            compile_model(path, compile_dir, CompileOptions())
        else:
            graph, ctx, _ = optimize(path, CompileOptions())
            render(graph, ctx)
    except BaseException as e:  # noqa: BLE001  (classifying every ending is the point)
        outcome, detail = classify_exception(e)
        if outcome == "error exit 4 (BuildError)":
            outcome = "build failure (exit 4)"
        return outcome, detail
    return "ok", ""


def _probe(kind: str) -> None:
    """Misbehaviours the harness must classify (its own tests)."""
    import signal

    if kind == "signal":
        os.kill(os.getpid(), signal.SIGSEGV)
    if kind == "hang":
        while True:
            time.sleep(1)
    if kind == "internal":
        raise KeyError("probe")
    if kind == "traceback":
        raise SystemExit(3)
    if kind == "exit":
        os._exit(9)


def worker() -> int:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY, WORKER_MEMORY))
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything tcc prints goes to stderr, not into the protocol
    sys.stdout = sys.stderr
    for line in sys.stdin:
        req = json.loads(line)
        t0 = time.perf_counter()
        if "probe" in req:
            try:
                _probe(req["probe"])
                outcome, detail = "ok", ""
            except BaseException as e:  # noqa: BLE001
                outcome, detail = classify_exception(e)
        else:
            outcome, detail = run_one(req["path"], req.get("compile_dir"))
        proto.write(json.dumps({"outcome": outcome, "detail": detail[:2000],
                                "seconds": time.perf_counter() - t0}) + "\n")
    return 0


class Worker:
    """One worker process; `ask` returns its answer, or classifies its death or silence."""

    def __init__(self, env: dict, log):
        self.env, self.log, self.proc = env, log, None

    def start(self):
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, env=self.env, text=True, bufsize=1)

    def ask(self, req: dict, timeout: float) -> tuple[str, str, float]:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        t0 = time.perf_counter()
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else None
        if line:
            ans = json.loads(line)
            return ans["outcome"], ans["detail"], ans["seconds"]
        elapsed = time.perf_counter() - t0
        if line is None:  # no answer in time
            self.stop()
            return "hang", f"no answer in {timeout:.0f} s", elapsed
        rc = self.proc.wait()
        self.proc = None
        if rc < 0:
            import signal

            return "signal", f"worker killed by {signal.Signals(-rc).name}", elapsed
        return "worker exit", f"worker exited with status {rc}", elapsed

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc is not None:
            for f in (self.proc.stdin, self.proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass
        self.proc = None


# ---------------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------------

def _env(workdir: str) -> dict:
    env = dict(os.environ)
    env.setdefault("TCC_CACHE_DIR", os.path.join(workdir, "cache"))  # build trees of the compile cases
    return env


def run_cases(indices: list[int], seed: int = 1, compile_indices=(), jobs: int = 1, timeout: float = 60.0,
              workdir: str | None = None, keep: str | None = None, log=subprocess.DEVNULL) -> list[Case]:
    """Draw and run the given cases (`compile_indices` of them as full compiles) on `jobs` workers."""
    own = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="tcc-fuzz-")
    fixture_list = fixtures()
    compile_set = set(compile_indices)
    todo: queue.Queue = queue.Queue()
    for i in indices:
        todo.put(i)
    results: list[Case] = []
    errors: list[BaseException] = []  # the fuzzer's own failures: re-raised once the threads stop
    lock = threading.Lock()

    def serve():
        w = Worker(_env(workdir), log)
        try:
            while True:
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                d = os.path.join(keep or workdir, f"case{i}")
                case = make_case(seed, i, fixture_list, i in compile_set, d)
                req = {"path": os.path.join(d, "model.onnx")}
                if case.compile:
                    req["compile_dir"] = os.path.join(d, "out")
                case.outcome, case.detail, case.seconds = w.ask(req, timeout * (10 if case.compile else 1))
                if not keep:
                    shutil.rmtree(d, ignore_errors=True)
                with lock:
                    results.append(case)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
        finally:
            w.stop()

    threads = [threading.Thread(target=serve) for _ in range(max(1, jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if own:
        shutil.rmtree(workdir, ignore_errors=True)
    if errors:
        raise errors[0]
    return sorted(results, key=lambda c: c.index)


def probe(kind: str, timeout: float = 10.0) -> tuple[str, str]:
    """Ask a fresh worker to misbehave on purpose (see _probe); returns how the harness classified it."""
    with tempfile.TemporaryDirectory() as d:
        w = Worker(_env(d), subprocess.DEVNULL)
        try:
            outcome, detail, _ = w.ask({"probe": kind}, timeout)
        finally:
            w.stop()
    return outcome, detail


def table(cases: list[Case]) -> str:
    counts = Counter(c.outcome for c in cases)
    order = ["ok"] + sorted(k for k in counts if k.startswith("error")) + [k for k in BAD]
    width = max(len(k) for k in order)
    lines = [f"{'outcome':<{width}}  cases"]
    lines += [f"{k:<{width}}  {counts.get(k, 0):>5}" for k in order]
    lines.append(f"{'total':<{width}}  {len(cases):>5}")
    return "\n".join(lines)


def describe(cases: list[Case], seed: int) -> str:
    return "\n".join(f"case {c.index} ({c.fixture}{', compiled' if c.compile else ''}; "
                     f"{'; '.join(c.mutations)}): {c.outcome}: {c.detail}  "
                     f"[replay: python tools/fuzz_models.py --seed {seed} --case {c.index}"
                     f"{' --compile 1' if c.compile else ''} --keep DIR]" for c in cases)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=300, help="number of cases (default 300)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--start", type=int, default=0, help="index of the first case")
    ap.add_argument("--case", type=int, action="append", help="run only this case index (repeatable)")
    ap.add_argument("--compile", type=int, default=0, metavar="N",
                    help=f"the first N cases are full compiles of {COMPILE_FIXTURE} mutants (C++ build)")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per case before it counts as a hang")
    ap.add_argument("--keep", metavar="DIR", help="keep every mutant under DIR/case<N>/")
    ap.add_argument("--show", type=int, default=5,
                    help="examples printed per defect class (and per error class with -v)")
    ap.add_argument("-v", "--verbose", action="store_true", help="also show examples of clean errors")
    ap.add_argument("--json", metavar="FILE", help="write every case's outcome as JSON")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker()
    indices = args.case or list(range(args.start, args.start + args.cases))
    compile_indices = indices[:args.compile]
    t0 = time.perf_counter()
    cases = run_cases(indices, args.seed, compile_indices, args.jobs, args.timeout, keep=args.keep,
                      log=None if args.verbose else subprocess.DEVNULL)
    print(f"fuzz: {len(cases)} cases (seed {args.seed}, {len(compile_indices)} full compiles) over "
          f"{len(fixtures())} fixtures in {time.perf_counter() - t0:.0f} s")
    print(table(cases))
    shown = [k for k in BAD] + ([k for k in Counter(c.outcome for c in cases) if k.startswith("error")]
                                if args.verbose else [])
    for kind in shown:
        bad = [c for c in cases if c.outcome == kind][:args.show]
        if bad:
            print(f"\n{kind}:\n{describe(bad, args.seed)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([c.__dict__ for c in cases], f, indent=1)
    return 1 if any(c.outcome in BAD for c in cases) else 0


if __name__ == "__main__":
    sys.exit(main())
