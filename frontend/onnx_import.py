"""ONNX -> tcc IR.

`import_onnx(path_or_model, dims=...)` loads a model, refuses in ONE error every op,
attribute and dtype tcc does not support, then builds the Graph node by node (types are inferred as
nodes are added) and normalizes ONNX's opset differences into the IR forms documented in `ir/ops/*.py`:
Reduce* axes, Squeeze/Unsqueeze axes, Split sizes, Softmax axis, Cast `to`, Transpose perm become
attributes; Reshape/Expand/Slice/Range/ConstantOfShape/Tile shape-like operands stay inputs, which must be
constant, possibly symbolic. Nodes whose inputs are all constants and whose result is small (shape
computations) are folded while importing, so Shape -> Gather -> Concat -> Reshape chains give symbolic
shapes. LayerNormalization -> LayerNorm (decomposed into primitive ops when its Mean/InvStdDev outputs
are used), RMSNormalization -> RMSNorm, Attention (opset 23) -> tcc Attention; Sum/Mean -> Add chains,
inference Dropout -> Identity, CastLike -> Cast, Size/Shape -> constants, ReduceX with
noop_with_empty_axes and no axes -> Identity.

External data is memory-mapped, not read (frontend/mapped.py): an initializer is a read-only numpy view
of its file, so a 7B model imports in megabytes and a weight's pages are read only when a pass reads it.

Accepted: default-domain opsets 13..23, and 24..27 as long as every node resolves to an op version vetted
here (those versions only add dtypes, except Attention-24, which is refused).

Malformed models end in a one-line ModelFormatError (exit 2) naming the field, tensor or node, never in
an internal error: strings that are not UTF-8 (the protobuf parser lets them through as bytes), attributes
whose type disagrees with the op's ONNX schema, missing required attributes, input/output counts outside
the schema's, empty names for required inputs, a tensor defined twice, initializer or Constant data whose
length disagrees with dtype and dims (short external data included). A tensor whose static dims need
more than MAX_TENSOR_BYTES is refused with a ShapeError naming it and the limit (`tools/fuzz_models.py`
mutates the test fixtures to keep all this true).
"""
from __future__ import annotations

import keyword
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx
from google.protobuf.descriptor import FieldDescriptor
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from ..errors import IRError, ModelFormatError, ShapeError, TccError, UnsupportedError
from ..ir.core import Graph, Node, TensorType, Value
from ..ir.dims import Sym, product
from ..ir.dtypes import DType
from ..ir.ops.movement import split_parts
from ..ir.ops.shape import shape_constant
from ..ir.registry import infer_types, run_ref
from ..ir.ops._common import const_ints

MIN_OPSET = 13
# Opsets 24..27 (onnx 1.22) only add dtypes to the ops handled here (checked op by op: Reshape-25,
# Cast-25 ...), except Attention-24, which is refused through its handler's `versions`.
MAX_OPSET = 27
WIDEN_EAGER = 1 << 16  # f16/bf16 constants up to this many elements are converted to f32 when widening
FOLD_LIMIT = 4096  # fold an all-constant node only if its result is at most this many elements
# The largest tensor tcc accepts: 1 TiB. Any input, initializer or inferred value whose static dims (each
# at least 1, so strides are bounded too) times its item size exceed it is refused at import: beyond it
# element counts and byte offsets stop fitting the generated code's integer types. Symbolic dims are bounded
# by --max-dim and checked when memory is planned (passes/plan_memory.py).
MAX_TENSOR_BYTES = 1 << 40

DTYPES = {TensorProto.FLOAT: DType.f32, TensorProto.FLOAT16: DType.f16, TensorProto.BFLOAT16: DType.bf16,
          TensorProto.INT64: DType.i64, TensorProto.INT32: DType.i32, TensorProto.INT8: DType.i8,
          TensorProto.UINT8: DType.u8, TensorProto.BOOL: DType.bool}


def _half(dt: np.dtype) -> DType | None:
    """DType.f16 or DType.bf16 for those numpy dtypes; None for any other."""
    return DType.f16 if dt == np.float16 else DType.bf16 if dt.name == "bfloat16" else None


def _dtype_name(code: int) -> str:
    try:
        return helper.tensor_dtype_to_string(code).replace("TensorProto.", "").lower()
    except Exception:  # noqa: BLE001  (an unknown enum value)
        return f"dtype code {code}"


def _attr_type_name(code: int) -> str:
    return AttributeProto.AttributeType.Name(code).lower() if code in AttributeProto.AttributeType.values() \
        else f"type code {code}"


def _attribute(a: AttributeProto, where: str):
    """An attribute's Python value; a STRING as str. Unknown types and non-UTF-8 strings are refused."""
    try:
        v = helper.get_attribute_value(a)
    except Exception:  # noqa: BLE001  (onnx's ValueError for an UNDEFINED or unknown type)
        raise ModelFormatError(f"{where}: attribute {a.name!r} has no value ({_attr_type_name(a.type)})") from None
    if isinstance(v, bytes):
        try:
            return v.decode()
        except UnicodeDecodeError:
            raise ModelFormatError(f"{where}: attribute {a.name!r} is not valid UTF-8") from None
    return v


# The field each dtype's values are stored in when not in raw_data (onnx.proto's TensorProto comments).
_DATA_FIELDS = {DType.f32: "float_data", DType.f16: "int32_data", DType.bf16: "int32_data", DType.i64: "int64_data",
                DType.i32: "int32_data", DType.i8: "int32_data", DType.u8: "int32_data", DType.bool: "int32_data"}


def _data_field(t: TensorProto, dtype: DType) -> tuple[str, int, int]:
    """(field holding t's data, its length, units per element: the item size for raw_data, else 1)."""
    if t.HasField("raw_data"):
        return "raw_data", len(t.raw_data), dtype.itemsize
    name = _DATA_FIELDS[dtype]
    return name, len(getattr(t, name)), 1


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------

_TOP_FIELDS = {1: "ir_version", 2: "producer_name", 3: "producer_version", 4: "domain", 5: "model_version",
               6: "doc_string", 7: "graph", 8: "opset_import", 14: "metadata_props", 20: "training_info",
               25: "functions", 26: "configuration"}


def _varint(data: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(data):
            raise ValueError("varint runs past the end")
        b = data[i]
        result |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _wire_problem(data: bytes) -> str:
    """Walk ModelProto's top-level fields to say where the protobuf breaks (offset, field, sizes)."""
    i = 0
    while i < len(data):
        start = i
        try:
            key, i = _varint(data, i)
            field, wire = key >> 3, key & 7
            name = _TOP_FIELDS.get(field, f"#{field}")
            if wire == 0:
                _, i = _varint(data, i)
            elif wire == 2:
                n, i = _varint(data, i)
                if i + n > len(data):
                    return (f"field {name} at offset {start} declares {n} bytes but only {len(data) - i} remain "
                            f"(file of {len(data)} bytes is truncated?)")
                i += n
            elif wire in (1, 5):
                i += 8 if wire == 1 else 4
            else:
                return f"bad wire type {wire} at offset {start}"
        except ValueError as e:
            return f"{e} at offset {start}"
    return f"{len(data)} bytes"


def _load(src) -> tuple[onnx.ModelProto, str, str | None, dict]:
    """(model, source name, directory of its external data, {tensor: its external_data entries})."""
    if isinstance(src, onnx.ModelProto):
        bad = _bad_string(src, "model")
        if bad:
            raise ModelFormatError(f"string field {bad} is not valid UTF-8")
        return src, src.graph.name or "<model>", None, {}
    path = os.fspath(src)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ModelFormatError(f"file {path}: cannot read ({e.strerror or e})") from None
    if not data:
        raise ModelFormatError(f"file {path}: empty file (0 bytes), not an ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception:  # noqa: BLE001  (protobuf's DecodeError; the message has no position)
        raise ModelFormatError(f"file {path}: not a valid ONNX model (protobuf parse failed: "
                               f"{_wire_problem(data)})") from None
    if not model.HasField("graph") or not model.opset_import:
        raise ModelFormatError(f"file {path}: not a valid ONNX model (no graph or opset_import in "
                               f"{len(data)} bytes; {_wire_problem(data)})")
    bad = _bad_string(model, "model")
    if bad:
        raise ModelFormatError(f"file {path}: string field {bad} is not valid UTF-8")
    base = os.path.dirname(os.path.abspath(path))
    external = {t.name: {e.key: e.value for e in t.external_data} for t in _tensors(model)
                if t.data_location == TensorProto.EXTERNAL}
    try:
        for name, entries in external.items():
            _external_span(name, entries, base)
    except (OSError, ValueError) as e:
        raise ModelFormatError(f"file {path}: cannot load external data: {e}") from None
    return model, os.path.basename(path), base, external


def _external_path(entries: dict, base: str) -> str:
    """The file an external-data entry names; only files inside the model's folder (as onnx's loader)."""
    loc = entries.get("location")
    if not loc:
        raise ValueError("external data without a location")
    norm = os.path.normpath(loc)
    if os.path.isabs(loc) or norm == ".." or norm.startswith(".." + os.sep):
        raise ValueError(f"external data location {loc!r} is outside the model's folder")
    return os.path.join(base, norm)


def _external_span(name: str, entries: dict, base: str) -> tuple[str, int, int]:
    """(file, offset, length) of a tensor's external data, checked against the file's size. The data is
    not read: it is memory-mapped when the tensor is imported (frontend/mapped.py)."""
    path = _external_path(entries, base)
    size = os.path.getsize(path)
    try:
        offset = int(entries.get("offset", 0))
        length = int(entries["length"]) if "length" in entries else size - offset
    except ValueError:
        raise ValueError(f"tensor {name!r}: external data offset/length are not integers") from None
    if offset < 0 or length < 0 or offset + length > size:
        raise ValueError(f"offset {offset} + length {length} exceeds available data ({size} bytes in "
                         f"{entries.get('location')!r}) for tensor {name!r}")
    return path, offset, length


def _tensors(model: onnx.ModelProto):
    """The graph's initializers and the tensors of its nodes' attributes (what may hold external data)."""
    yield from model.graph.initializer
    for n in model.graph.node:
        for a in n.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors


def _label(msg) -> str:
    """' (Gemm '/fc1/Gemm')' for a node, " ('w')" for anything named, '' when the name is unusable."""
    name = getattr(msg, "name", "")
    if not isinstance(name, str) or not name:
        return ""
    op = getattr(msg, "op_type", "")
    return f" ({op} {name!r})" if isinstance(op, str) and op else f" ({name!r})"


def _bad_string(msg, path: str) -> str | None:
    """The path of the first string field (recursively) that is not valid UTF-8, or None.

    Protobuf's parser accepts invalid UTF-8 in ONNX's proto2 strings and hands it over as bytes, where a
    str is expected everywhere downstream; `bytes` fields (raw_data, string_data) are not strings and are
    not read here, so a large model's weights are not copied."""
    for f in msg.DESCRIPTOR.fields:
        if f.type == FieldDescriptor.TYPE_STRING:
            if f.is_repeated:
                for i, v in enumerate(getattr(msg, f.name)):
                    if isinstance(v, bytes):
                        return f"{path}.{f.name}[{i}]"
            elif msg.HasField(f.name) and isinstance(getattr(msg, f.name), bytes):
                return f"{path}.{f.name}"
        elif f.type == FieldDescriptor.TYPE_MESSAGE:
            subs = enumerate(getattr(msg, f.name)) if f.is_repeated else \
                ([(None, getattr(msg, f.name))] if msg.HasField(f.name) else [])
            for i, sub in subs:
                bad = _bad_string(sub, f"{path}.{f.name}" + (f"[{i}]{_label(sub)}" if i is not None else ""))
                if bad:
                    return bad
    return None


# ---------------------------------------------------------------------------------------------
# per-op handlers
# ---------------------------------------------------------------------------------------------

@dataclass
class OnnxNode:
    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]
    version: int  # the op's since_version at the model's opset (-1: no such op)
    domain: str = ""
    attr_types: dict[str, int] = field(default_factory=dict)  # attribute name -> AttributeProto type code


Check = Callable[[OnnxNode], "str | None"]  # returns why a node is unsupported, or None


@dataclass
class Handler:
    build: Callable  # (importer, node, inputs: list[Value|None]) -> list[Value|None], one per output
    attrs: tuple[str, ...] = ()  # attributes understood (others are refused)
    versions: tuple[int, ...] = ()  # vetted since_versions (empty: all from MIN_OPSET on)
    check: Check | None = None


HANDLERS: dict[str, Handler] = {}


def handler(ops, attrs=(), versions=(), check=None):
    def deco(fn):
        for op in ops.split():
            HANDLERS[op] = Handler(fn, tuple(attrs.split()) if isinstance(attrs, str) else attrs, versions, check)
        return fn
    return deco


def _same(imp, n, ins):
    """ONNX op == IR op, attributes passed through."""
    return imp.emit(n.op, ins, dict(n.attrs), n)


handler("Add Sub Mul Div Pow Sqrt Reciprocal Neg Exp Log Erf Tanh Sigmoid Relu Abs Floor Ceil Sin Cos Sign "
        "Not Equal Less LessOrEqual Greater GreaterOrEqual And Or Xor Where Identity MatMul Max Min Expand "
        "Tile Range Slice")(_same)
handler("Concat Gather", "axis")(_same)
handler("Trilu", "upper")(_same)
handler("Mod", "fmod")(_same)
handler("Flatten", "axis")(_same)
handler("Gemm", "alpha beta transA transB")(_same)
handler("Softmax LogSoftmax", "axis")(_same)
handler("Reshape", "allowzero")(_same)


def _check_gelu(n):
    a = n.attrs.get("approximate", "none")
    return None if a in ("none", "tanh") else f"attribute approximate={a!r}"


handler("Gelu", "approximate", check=_check_gelu)(_same)


# ONNX-form ops defined in ir/ops/indexing_extra.py
handler("GatherND", "batch_dims")(_same)
handler("CumSum", "exclusive reverse")(_same)
handler("ScatterND", "reduction")(_same)
handler("GatherElements", "axis")(_same)


@handler("IsNaN")
def _isnan(imp, n, ins):
    """IsNaN(x) = Not(Equal(x, x)): NaN is the only value unequal to itself."""
    eq = imp.emit("Equal", [ins[0], ins[0]], {}, n, helper="self_equal")[0]
    return imp.emit("Not", [eq], {}, n)
handler("RotaryEmbedding", "interleaved num_heads rotary_embedding_dim")(_same)


@handler("Sum Mean")
def _sum(imp, n, ins):
    """Variadic Sum/Mean as a chain of broadcasting Adds (Mean then divides by the count)."""
    acc = ins[0]
    for i, x in enumerate(ins[1:]):
        last = i == len(ins) - 2 and n.op == "Sum"
        acc = imp.emit("Add", [acc, x], {}, n, helper=None if last else f"sum{i}")[0]
    if n.op == "Mean":
        count = imp.const(np.array(len(ins), dtype=acc.dtype.np), imp.helper_name(n, "count"))
        return imp.emit("Div", [acc, count], {}, n)
    return [acc] if len(ins) > 1 else imp.emit("Identity", [acc], {}, n)


def _check_dropout(n):
    if len(n.inputs) > 2 and n.inputs[2]:
        return "training_mode input"
    return None


@handler("Dropout", "seed", check=_check_dropout)
def _dropout(imp, n, ins):
    """Inference Dropout (no training_mode) is the identity; its mask output is all true."""
    out = imp.emit("Identity", ins[:1], {}, n, n_out=1)
    if len(n.outputs) > 1 and n.outputs[1]:
        mask = np.ones([int(d) for d in ins[0].shape], dtype=bool) if ins[0].type.is_static else None
        if mask is None:
            raise UnsupportedError(f"Dropout node {n.name!r}: mask output of a symbolic-shaped input")
        out.append(imp.const(mask, n.outputs[1]))
    return out


@handler("Clip")
def _clip(imp, n, ins):
    return imp.emit("Clip", ins, {}, n)


def _check_cast(n):
    to = n.attrs["to"] if n.op == "Cast" else None
    if to is not None and to not in DTYPES:
        return f"cast to {_dtype_name(to)}"
    return None


@handler("Cast CastLike", "to saturate round_mode", check=_check_cast)
def _cast(imp, n, ins):
    # saturate / round_mode only affect float8 targets, which are refused as dtypes
    asked = DTYPES[n.attrs["to"]] if n.op == "Cast" else ins[1].dtype
    to = imp.widened(asked)
    if (imp.widen or asked != to) and ins[0].dtype == to:
        return imp.emit("Identity", ins[:1], {}, n)  # an fp16/bf16 model's up/down-casts, now f32 -> f32
    return imp.emit("Cast", ins[:1], {"to": to.value}, n)


@handler("Transpose", "perm")
def _transpose(imp, n, ins):
    perm = n.attrs.get("perm") or list(range(ins[0].type.rank))[::-1]
    return imp.emit("Transpose", ins, {"perm": [int(p) for p in perm]}, n)


@handler("Shape", "start end")
def _shape(imp, n, ins):
    attrs = {"start": n.attrs.get("start", 0), "end": n.attrs.get("end")}
    return [imp.const(shape_constant(ins[0].type, attrs), n.outputs[0])]


@handler("Size")
def _size(imp, n, ins):
    return [imp.const(_obj_scalar(product(ins[0].shape)), n.outputs[0])]


def _obj_scalar(d) -> np.ndarray:
    if not isinstance(d, Sym):
        return np.array(int(d), dtype=np.int64)
    arr = np.empty((), dtype=object)
    arr[()] = d
    return arr


@handler("Squeeze")
def _squeeze(imp, n, ins):
    if len(ins) > 1 and ins[1] is not None:
        axes = imp.const_ints(ins[1], n, "axes")
    else:
        shape = ins[0].shape
        if any(isinstance(d, Sym) for d in shape):
            raise UnsupportedError(f"Squeeze node {n.name!r}: no axes given and input {ins[0].type} has "
                                   "symbolic dims (which would be squeezed only if 1 at run time)")
        axes = [i for i, d in enumerate(shape) if d == 1]
    return imp.emit("Squeeze", ins[:1], {"axes": axes}, n)


@handler("Unsqueeze")
def _unsqueeze(imp, n, ins):
    return imp.emit("Unsqueeze", ins[:1], {"axes": imp.const_ints(ins[1], n, "axes")}, n)


@handler("Split", "axis num_outputs split")
def _split(imp, n, ins):
    """The split input (13+) or attribute become `split`; otherwise len(outputs) (or num_outputs)
    chunks, given as explicit sizes when the dim is static."""
    x, axis = ins[0], n.attrs.get("axis", 0)
    if len(ins) > 1 and ins[1] is not None:
        attrs = {"split": imp.const_ints(ins[1], n, "split")}
    elif "split" in n.attrs:
        attrs = {"split": list(n.attrs["split"])}
    else:
        k = n.attrs.get("num_outputs", len(n.outputs))
        if k != len(n.outputs):
            raise ShapeError(f"Split node {n.name!r}: num_outputs={k} for {len(n.outputs)} outputs")
        d = x.shape[axis % x.type.rank] if x.type.rank else None
        if isinstance(d, int) and "num_outputs" not in n.attrs and d % k:
            raise ShapeError(f"Split node {n.name!r}: dim {d} of {x.type} does not split evenly into {k}")
        attrs = {"num_outputs": k}
        if isinstance(d, int):  # static: explicit sizes
            attrs = {"split": split_parts(d, {"split": None, "num_outputs": k})}
    attrs = {"axis": axis, **attrs}
    parts = len(attrs["split"]) if "split" in attrs else attrs["num_outputs"]
    if parts != len(n.outputs):
        raise ShapeError(f"Split node {n.name!r}: {parts} parts for {len(n.outputs)} outputs")
    outs = imp.emit("Split", ins[:1], attrs, n)
    if len(outs) != len(n.outputs):
        raise ShapeError(f"Split node {n.name!r}: {len(outs)} parts for {len(n.outputs)} outputs")
    return outs


def _reduce_axes_from_input(n) -> bool:
    return n.op == "ReduceSum" or n.version >= 18


@handler("ReduceSum ReduceMean ReduceMax ReduceMin ReduceProd", "axes keepdims noop_with_empty_axes")
def _reduce(imp, n, ins):
    x = ins[0]
    if _reduce_axes_from_input(n):
        axes = imp.const_ints(ins[1], n, "axes") if len(ins) > 1 and ins[1] is not None else []
    else:
        axes = list(n.attrs.get("axes", []))
    if not axes:
        if n.attrs.get("noop_with_empty_axes", 0):
            return imp.emit("Identity", [x], {}, n)
        axes = list(range(x.type.rank))
    return imp.emit(n.op, [x], {"axes": axes, "keepdims": n.attrs.get("keepdims", 1)}, n)


def _check_cos(n):
    t = n.attrs.get("value")
    if t is not None and t.data_type not in DTYPES:
        return f"value of dtype {_dtype_name(t.data_type)}"
    return None


@handler("ConstantOfShape", "value", check=_check_cos)
def _constant_of_shape(imp, n, ins):
    t = n.attrs.get("value")
    if t is None:
        return imp.emit("ConstantOfShape", ins, {"value": 0.0, "dtype": DType.f32.value}, n)
    arr = imp.tensor(t, f"ConstantOfShape node {n.name!r} value")
    if arr.size != 1:
        raise ModelFormatError(f"ConstantOfShape node {n.name!r}: value must hold one element, got {arr.size}")
    attrs = {"value": imp.widened_array(arr).reshape(-1)[0].item(), "dtype": imp.widened(DTYPES[t.data_type]).value}
    return imp.emit("ConstantOfShape", ins, attrs, n)


def _check_constant(n):
    for k in ("sparse_value", "value_string", "value_strings"):
        if k in n.attrs:
            return f"attribute {k}"
    t = n.attrs.get("value")
    if t is not None and t.data_type not in DTYPES:
        return f"value of dtype {_dtype_name(t.data_type)}"
    return None


@handler("Constant", "value value_float value_floats value_int value_ints sparse_value value_string "
         "value_strings", check=_check_constant)
def _constant(imp, n, ins):
    a = n.attrs
    if "value" in a:
        arr = imp.tensor(a["value"], f"Constant node {n.name!r} value")
    elif "value_float" in a:
        arr = np.array(a["value_float"], dtype=np.float32)
    elif "value_floats" in a:
        arr = np.array(a["value_floats"], dtype=np.float32).reshape(-1)
    elif "value_int" in a:
        arr = np.array(a["value_int"], dtype=np.int64)
    elif "value_ints" in a:
        arr = np.array(a["value_ints"], dtype=np.int64).reshape(-1)
    else:
        raise ModelFormatError(f"Constant node {n.name!r} has no value attribute")
    return [imp.const(arr, n.outputs[0])]


def _check_norm(n):
    if n.attrs.get("stash_type", 1) != 1:
        return f"attribute stash_type={n.attrs['stash_type']}"
    return None


@handler("LayerNormalization", "axis epsilon stash_type", check=_check_norm)
def _layernorm(imp, n, ins):
    attrs = {"axis": n.attrs.get("axis", -1), "eps": float(n.attrs.get("epsilon", 1e-5))}
    if any(o and o in imp.consumed for o in n.outputs[1:]):
        return _layernorm_decomposed(imp, n, ins, attrs)
    return imp.emit("LayerNorm", ins, attrs, n, n_out=1) + [None] * (len(n.outputs) - 1)


def _layernorm_decomposed(imp, n, ins, attrs):
    """LayerNormalization whose Mean/InvStdDev outputs are used: ONNX's own function body, in f32
    (stash_type=1), so the statistics are real values of the graph."""
    x, scale, bias = (ins + [None])[:3]
    rank = x.type.rank
    axes = list(range(attrs["axis"] % rank if rank else 0, rank))
    h = lambda op, args, what, a=None: imp.emit(op, args, a or {}, n, helper=what)[0]  # noqa: E731
    xf = h("Cast", [x], "x32", {"to": "f32"}) if x.dtype != DType.f32 else x
    mean = h("ReduceMean", [xf], "mean", {"axes": axes, "keepdims": 1})
    d = h("Sub", [xf, mean], "centered")
    var = h("ReduceMean", [h("Mul", [d, d], "sq")], "var", {"axes": axes, "keepdims": 1})
    eps = imp.const(np.array(attrs["eps"], np.float32), imp.helper_name(n, "eps"))
    inv = h("Reciprocal", [h("Sqrt", [h("Add", [var, eps], "var_eps")], "std")], "inv_std")
    y = h("Mul", [d, inv], "normalized")
    if y.dtype != x.dtype:
        y = h("Cast", [y], "normalized_x", {"to": x.dtype.value})
    y = h("Mul", [y, scale], "scaled")
    y = h("Add", [y, bias], "biased") if bias is not None else y
    outs = [imp.emit("Identity", [y], {}, n, n_out=1)[0], mean, inv]
    return outs[:len(n.outputs)]


@handler("RMSNormalization", "axis epsilon stash_type", check=_check_norm)
def _rmsnorm(imp, n, ins):
    attrs = {"axis": n.attrs.get("axis", -1), "eps": float(n.attrs.get("epsilon", 1e-5))}
    return imp.emit("RMSNorm", ins, attrs, n)


def _check_attention(n):
    if n.attrs.get("softcap", 0.0):
        return f"attribute softcap={n.attrs['softcap']}"
    if n.attrs.get("qk_matmul_output_mode", 0):
        return f"attribute qk_matmul_output_mode={n.attrs['qk_matmul_output_mode']}"
    if len(n.inputs) > 4 and bool(n.inputs[4]) != bool((n.inputs + [""] * 6)[5]):
        return "past_key without past_value (or the reverse)"
    if len(n.inputs) > 6 and n.inputs[6]:
        return "nonpad_kv_seqlen input"
    if len(n.outputs) > 3 and n.outputs[3]:
        return "qk_matmul output"
    return None


@handler("Attention", "is_causal kv_num_heads q_num_heads qk_matmul_output_mode scale softcap "
         "softmax_precision", versions=(23,), check=_check_attention)
def _attention(imp, n, ins):
    q, k, v, mask = (ins + [None])[:4]
    three_d = q.type.rank == 3
    if three_d:
        hq, hkv = n.attrs.get("q_num_heads"), n.attrs.get("kv_num_heads")
        if not hq or not hkv:
            raise ShapeError(f"Attention node {n.name!r}: 3-D inputs need q_num_heads and kv_num_heads")
        q, k, v = (imp.heads_first(t, h, n) for t, h in ((q, hq), (k, hkv), (v, hkv)))
    elif q.type.rank != 4:
        raise ShapeError(f"Attention node {n.name!r}: q must be 3-D or 4-D, got {q.type}")
    past_k, past_v = (ins + [None] * 6)[4:6]
    new_len = k.shape[2]
    if past_k is not None:
        # present = Concat(past, new) on the sequence axis: what kv-cache turns into a KV-cache state
        k = imp.emit("Concat", [past_k, k], {"axis": 2}, n, helper="present_key")[0]
        v = imp.emit("Concat", [past_v, v], {"axis": 2}, n, helper="present_value")[0]
    sq, skv = q.shape[2], k.shape[2]
    d = q.shape[3]
    if "scale" in n.attrs:
        scale = float(n.attrs["scale"])
    elif isinstance(d, Sym):
        raise UnsupportedError(f"Attention node {n.name!r}: default scale needs a static head size, got {q.type}")
    else:
        scale = 1.0 / math.sqrt(d)
    causal = int(n.attrs.get("is_causal", 0))
    if mask is not None:
        if causal and mask.dtype == DType.bool:
            # the ONNX reference turns a bool mask into (1 - mask) * -inf = NaN there; no defined meaning
            raise UnsupportedError(f"Attention node {n.name!r}: is_causal with a bool attn_mask")
        if mask.shape[-1] != skv:
            raise UnsupportedError(f"Attention node {n.name!r}: attn_mask {mask.type} shorter than the "
                                   f"{skv} keys (padding is not supported)")
        mask = imp.additive_mask(mask, n)
    if causal and past_k is not None:
        # with past, ONNX masks key j > past + i: bottom-right causal when the new keys are the queries
        if new_len != sq:
            raise UnsupportedError(f"Attention node {n.name!r}: is_causal with past and {new_len} new keys for "
                                   f"{sq} queries")
    elif causal and sq != skv:
        # ONNX aligns the causal mask top-left (key j <= query i); tcc's `causal` is bottom-right
        if isinstance(sq, Sym) or isinstance(skv, Sym):
            raise UnsupportedError(f"Attention node {n.name!r}: is_causal with different symbolic query and "
                                   f"key lengths {sq}, {skv}")
        tri = np.where(np.triu(np.ones((sq, skv), dtype=bool), k=1), -np.inf, 0).astype(np.float32)
        tri_v = imp.const(tri, imp.helper_name(n, "causal"))
        mask = tri_v if mask is None else imp.emit("Add", [mask, tri_v], {}, n, helper="causal_mask")[0]
        causal = 0
    y = imp.emit("Attention", [q, k, v] + ([mask] if mask is not None else []),
                 {"scale": scale, "causal": causal}, n, n_out=1, helper=None if not three_d else "bhsd")[0]
    if three_d:
        t = imp.emit("Transpose", [y], {"perm": [0, 2, 1, 3]}, n, helper="bshd")[0]
        y = imp.emit("Reshape", [t, imp.const(np.array([0, 0, -1], dtype=np.int64), imp.helper_name(n, "shape"))],
                     {}, n, n_out=1)[0]
    outs = [y] + [None] * (len(n.outputs) - 1)
    if past_k is not None:
        for i, present in ((1, k), (2, v)):
            if i < len(n.outputs) and n.outputs[i]:
                outs[i] = present
    return outs


# ---------------------------------------------------------------------------------------------
# the importer
# ---------------------------------------------------------------------------------------------

_SYM_RE = re.compile(r"[^A-Za-z0-9_]")
_SUM_RE = re.compile(r"^\s*[A-Za-z_]\w*(\s*\+\s*([A-Za-z_]\w*|\d+))+\s*$")


def sanitize_symbol(name: str) -> str:
    """A dim_param as an identifier usable in dims and IR text ("batch size" -> "batch_size")."""
    s = _SYM_RE.sub("_", name.strip()) or "d"
    if s[0].isdigit():
        s = "d_" + s
    if keyword.iskeyword(s) or s in ("none", "true", "false", "nan", "inf"):
        s += "_"
    return s


class Importer:
    def __init__(self, model: onnx.ModelProto, source: str, base_dir: str | None, dims: dict | None,
                 external: dict | None = None, widen_f16: bool = False):
        self.model, self.source, self.base_dir = model, source, base_dir
        self.widen = widen_f16  # f16 and bf16 activations become f32 (see import_onnx)
        self.external = external or {}  # tensor name -> its external_data entries (location, offset, length)
        self.mapped: dict = {}  # external data file -> its MappedFile
        self.opset = self._default_opset()
        self.g = Graph(sanitize_symbol(model.graph.name) if model.graph.name else "main")
        self.env: dict[str, Value | None] = {"": None}
        self.dims = dict(dims or {})
        self.used_dims: set[str] = set()
        self.fresh = 0
        self.consumed = {i for nd in model.graph.node for i in nd.input} | {o.name for o in model.graph.output}

    # -- checks ------------------------------------------------------------------------------
    def _default_opset(self) -> int:
        ops = [o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")]
        if not ops:
            raise UnsupportedError(f"{self.source}: the model imports no default-domain ONNX opset")
        v = ops[0]
        if not MIN_OPSET <= v <= MAX_OPSET:
            raise UnsupportedError(f"{self.source}: ONNX opset {v} is not supported (tcc supports "
                                   f"{MIN_OPSET}..{MAX_OPSET})")
        return v

    def nodes(self) -> list[OnnxNode]:
        """The graph's nodes with decoded attributes (a malformed attribute is refused here)."""
        out = []
        for i, nd in enumerate(self.model.graph.node):
            name = nd.name or f"{nd.op_type}_{i}"
            attrs = {a.name: _attribute(a, f"{nd.op_type} node {name!r}") for a in nd.attribute}
            version = 0
            if nd.domain in ("", "ai.onnx"):
                try:
                    version = onnx.defs.get_schema(nd.op_type, self.opset, "").since_version
                except Exception:  # noqa: BLE001  (no such op in the default domain)
                    version = -1
            out.append(OnnxNode(nd.op_type, name, list(nd.input), list(nd.output), attrs, version, nd.domain,
                                {a.name: a.type for a in nd.attribute}))
        return out

    def check_signature(self, n: OnnxNode) -> None:
        """The node agrees with its ONNX schema: attribute types, required attributes, input and output
        counts, no empty name for a required input (what handlers rely on; ONNX's checker says the same)."""
        if n.version <= 0:
            return  # not a default-domain op (refused before this)
        where = f"{n.op} node {n.name!r}"
        schema = onnx.defs.get_schema(n.op, self.opset, "")
        for name, code in n.attr_types.items():
            want = schema.attributes.get(name)
            if want is not None and int(want.type.value) != code:
                raise ModelFormatError(f"{where}: attribute {name} is {_attr_type_name(code)}, but ONNX "
                                       f"{n.op}-{n.version} defines it as {want.type.name.lower()}")
        for name, want in schema.attributes.items():
            if want.required and name not in n.attr_types:
                raise ModelFormatError(f"{where}: lacks the required attribute {name}")
        for what, names, formal, lo, hi in (("inputs", n.inputs, schema.inputs, schema.min_input, schema.max_input),
                                            ("outputs", n.outputs, schema.outputs, schema.min_output,
                                             schema.max_output)):
            if not lo <= len(names) <= hi:
                takes = f"at least {lo}" if hi >= 1 << 30 else f"{lo}" if lo == hi else f"{lo} to {hi}"
                raise ModelFormatError(f"{where}: {len(names)} {what}, but ONNX {n.op}-{n.version} takes {takes}")
            for i, name in enumerate(names):
                param = formal[min(i, len(formal) - 1)]
                if not name and param.option != onnx.defs.OpSchema.FormalParameterOption.Optional:
                    raise ModelFormatError(f"{where}: {what[:-1]} {i} ({param.name}) is required but its name "
                                           "is empty")

    def unsupported(self, nodes: list[OnnxNode]) -> None:
        """Collect every unsupported op, attribute and dtype; raise them all in one error."""
        ops: dict[str, str] = {}
        for n in nodes:
            h = HANDLERS.get(n.op)
            qual, why = n.op, None
            if n.domain not in ("", "ai.onnx"):
                qual, why = f"{n.domain}.{n.op}", ""
            elif h is None or n.version < 0:
                why = ""
            elif h.versions and n.version not in h.versions:
                qual, why = f"{n.op}-{n.version}", ""
            else:
                extra = sorted(set(n.attrs) - set(h.attrs))
                why = f"attribute {extra[0]}" if extra else (h.check(n) if h.check else None)
            if why is not None:
                ops.setdefault(f"{qual}: {why}", f"{qual} (node {n.name!r}" + (f", {why})" if why else ")"))
        dtypes = self._bad_dtypes(nodes)
        parts = []
        if ops:
            parts.append(f"unsupported ONNX ops (opset {self.opset}): " + ", ".join(ops.values()))
        if dtypes:
            parts.append("unsupported dtypes: " + ", ".join(dtypes))
        if parts:
            raise UnsupportedError("; ".join(parts))

    def _bad_dtypes(self, nodes) -> list[str]:
        bad: dict[str, str] = {}
        g = self.model.graph
        inits = {t.name for t in g.initializer}

        def tensor_type(kind, vi):
            t = vi.type
            if not t.HasField("tensor_type"):
                which = t.WhichOneof("value") or "untyped"
                bad.setdefault(vi.name, f"{kind} {vi.name!r} is a {which.replace('_type', '')}")
            elif t.tensor_type.elem_type not in DTYPES and (kind == "input" or t.tensor_type.elem_type):
                bad.setdefault(vi.name, f"{kind} {vi.name!r} is {_dtype_name(t.tensor_type.elem_type)}")

        for vi in g.input:
            if vi.name not in inits:
                tensor_type("input", vi)
        for vi in g.output:
            tensor_type("output", vi)
        for vi in g.value_info:
            if vi.type.HasField("tensor_type"):
                tensor_type("tensor", vi)
        for t in g.initializer:
            if t.data_type not in DTYPES:
                bad.setdefault(t.name, f"initializer {t.name!r} is {_dtype_name(t.data_type)}")
        for t in g.sparse_initializer:
            bad.setdefault(t.values.name, f"sparse initializer {t.values.name!r}")
        return list(bad.values())

    # -- helpers for handlers ---------------------------------------------------------------------
    def tensor(self, t: TensorProto, where: str) -> np.ndarray:
        """A TensorProto's data, once it is known to hold exactly what its dtype and dims say."""
        if t.data_type not in DTYPES:
            raise UnsupportedError(f"{where} is {_dtype_name(t.data_type)}")
        dtype, dims = DTYPES[t.data_type], [int(d) for d in t.dims]
        if any(d < 0 for d in dims):
            raise ModelFormatError(f"{where}: negative dim in {dims}")
        self.check_size(TensorType(dtype, tuple(dims)), where)
        count = math.prod(dims)
        if t.data_location == TensorProto.EXTERNAL and self.base_dir is not None:
            return self._mapped(t, where, dtype, dims, count)
        field_name, have, unit = _data_field(t, dtype)
        if have != count * unit:
            ext = self.external.get(t.name)
            src = (f" (external data {ext.get('location')!r}, offset {ext.get('offset', 0)}, length "
                   f"{ext.get('length', 'to the end')}: the file is shorter?)") if ext else ""
            need = f"{count * unit} bytes" if field_name == "raw_data" else f"{count} values"
            raise ModelFormatError(f"{where}: dims {dims} of {dtype} need {need}, but its {field_name} holds "
                                   f"{have}{src}")
        try:
            arr = numpy_helper.to_array(t, self.base_dir or "")
        except Exception as e:  # noqa: BLE001  (what onnx raises for data it cannot read: ValueError...)
            raise ModelFormatError(f"{where}: unreadable data ({type(e).__name__}: {e})") from None
        return np.array(arr, dtype=dtype.np)

    def _mapped(self, t: TensorProto, where: str, dtype: DType, dims: list[int], count: int) -> np.ndarray:
        """External data as a read-only view of the mapped file: nothing is read until a pass reads it,
        and passes that only look at shapes never do (a 7B model imports in a few MB)."""
        from .mapped import MappedFile

        entries = {e.key: e.value for e in t.external_data}
        try:
            path, offset, length = _external_span(t.name, entries, self.base_dir)
            if length != count * dtype.itemsize:
                raise ModelFormatError(
                    f"{where}: dims {dims} of {dtype} need {count * dtype.itemsize} bytes, but its raw_data holds "
                    f"{length} (external data {entries.get('location')!r}, offset {offset}, length "
                    f"{entries.get('length', 'to the end')}: the file is shorter?)")
            if path not in self.mapped:
                self.mapped[path] = MappedFile(path)
            return self.mapped[path].array(dtype.np, tuple(dims), offset)
        except (OSError, ValueError) as e:
            raise ModelFormatError(f"{where}: cannot load external data: {e}") from None

    def check_size(self, t: TensorType, where: str) -> None:
        """Refuse a tensor whose static dims exceed MAX_TENSOR_BYTES (a dim of 0 counts as 1: strides)."""
        extent = dtype_bytes = t.dtype.itemsize
        for d in t.shape:
            if not isinstance(d, Sym):
                if d < 0:
                    raise ShapeError(f"{where}: negative dim in {t}")
                extent *= max(int(d), 1)
        if extent > MAX_TENSOR_BYTES:
            shape = ",".join(str(d) for d in t.shape)
            raise ShapeError(f"{where}: {t.dtype}[{shape}] needs {extent // dtype_bytes} elements of "
                             f"{dtype_bytes} bytes, over tcc's limit of {MAX_TENSOR_BYTES} bytes (1 TiB) per tensor")

    def helper_name(self, n: OnnxNode, what: str) -> str:
        return f"{n.outputs[0] or n.name}.{what}"

    def const(self, arr: np.ndarray, name: str) -> Value:
        return self.g.add_const(self.widened_array(arr), name or "const")

    def widened(self, dtype: DType) -> DType:
        """f16 and bf16 become f32 when asked (widen_f16); bf16 is refused otherwise."""
        if dtype == DType.bf16 and not self.widen:
            raise UnsupportedError(f"{self.source}: bf16 tensors: no tcc backend computes in bf16; compile with a "
                                   "weight-quantizing --qm (w4a8, w8a8, w4a32: weights quantized from bf16, f32 "
                                   "activations) or convert the model to f16 or f32")
        return DType.f32 if self.widen and dtype in (DType.f16, DType.bf16) else dtype

    def widened_array(self, arr: np.ndarray) -> np.ndarray:
        """An f16 or bf16 constant in f32. The dtype's minimum becomes the f32 one: exporters fill masks with
        their dtype's minimum (torch.finfo(float16).min), which at f32 has to mask as surely (kv-cache needs
        <= -1e30: probability exactly 0)."""
        dtype = _half(arr.dtype)
        if dtype is None or self.widened(dtype) == dtype:
            return arr
        out = arr.astype(np.float32)
        return np.where(arr == np.finfo(arr.dtype).min, np.finfo(np.float32).min, out).astype(np.float32)

    def initializer(self, t: TensorProto) -> Value:
        """An initializer's Value. Widening an fp16 or bf16 model under --qm, a large f16/bf16 one (a weight)
        stays a constant of its dtype, mapped and never converted whole, behind a Cast to f32 that the
        quantize pass folds into the quantized weight (passes/quantize.py) and dead-code elimination then
        drops; small ones are converted."""
        arr = self.tensor(t, f"initializer {t.name!r}")
        dtype = _half(arr.dtype)
        if dtype is None or self.widened(dtype) == dtype or arr.size <= WIDEN_EAGER:
            return self.g.add_const(self.widened_array(arr), t.name, exact_name=True)
        c = self.g.add_const(arr, t.name, exact_name=True)
        return self.g.add_node("Cast", [c], {"to": "f32"}, name=f"{t.name}/widen", out_names=[f"{t.name}.f32"]).output

    def const_ints(self, v: Value | None, n: OnnxNode, what: str) -> list:
        """ir/ops/_common.const_ints, with the ONNX node named in the error."""
        try:
            return const_ints(v, f"{what} input")
        except UnsupportedError as e:
            raise UnsupportedError(f"{n.op} node {n.name!r}: {e}") from None

    def heads_first(self, t: Value, heads: int, n: OnnxNode) -> Value:
        """[B, S, heads*D] -> [B, heads, S, D] (Reshape + Transpose), as ONNX's 3-D Attention does."""
        shape = self.const(np.array([0, 0, heads, -1], dtype=np.int64), self.helper_name(n, f"{t.name}.shape"))
        r = self.emit("Reshape", [t, shape], {}, n, helper=f"{t.name}.bshd")[0]
        return self.emit("Transpose", [r], {"perm": [0, 2, 1, 3]}, n, helper=f"{t.name}.bhsd")[0]

    def additive_mask(self, mask: Value, n: OnnxNode) -> Value:
        """A bool mask (True = attend) becomes Where(mask, 0, -inf); a float mask is cast to f32."""
        if mask.dtype == DType.bool:
            zero = self.const(np.array(0.0, dtype=np.float32), self.helper_name(n, "zero"))
            ninf = self.const(np.array(-np.inf, dtype=np.float32), self.helper_name(n, "ninf"))
            return self.emit("Where", [mask, zero, ninf], {}, n, helper="mask")[0]
        if mask.dtype != DType.f32:
            return self.emit("Cast", [mask], {"to": "f32"}, n, helper="mask")[0]
        return mask

    # -- emitting nodes ---------------------------------------------------------------------------
    def emit(self, op: str, ins: list, attrs: dict, n: OnnxNode, n_out: int | None = None,
             helper: str | None = None) -> list[Value]:
        """Add an IR node for ONNX node `n` (named after it); its outputs take n's output names unless
        `helper` names an intermediate. All-constant small results are folded into constants."""
        while ins and ins[-1] is None:
            ins = ins[:-1]
        node = Node(op, list(ins), [], attrs, n.name)
        try:
            types = infer_types(node)
        except ShapeError as e:
            shapes = ", ".join(str(v.type) if v is not None else "none" for v in ins)
            raise ShapeError(f"{e} (ONNX {n.op}, inputs {shapes})") from None
        except IRError as e:
            raise ModelFormatError(f"{e} (ONNX {n.op})") from None
        except UnsupportedError as e:
            raise UnsupportedError(f"{op} node {n.name!r}: {e}") from None
        except (ValueError, TypeError) as e:  # symbolic dims that cannot be reasoned about
            raise UnsupportedError(f"{op} node {n.name!r}: symbolic shapes: {e}") from None
        if n_out is not None:
            types = types[:n_out]
        names = [self.helper_name(n, helper)] * len(types) if helper else \
            [o or self.helper_name(n, "unused") for o in n.outputs[:len(types)]]
        for t, name in zip(types, names):
            self.check_size(t, f"{n.op} node {n.name!r} output {name!r}")
        folded = self._fold(node, types, names)
        if folded is not None:
            return folded
        out = self.g.add_node(op, ins, attrs, name=n.name, out_names=names, out_types=types)
        return list(out.outputs)

    def _fold(self, node: Node, types, names) -> list[Value] | None:
        if not node.inputs or any(v is not None and v.const is None for v in node.inputs):
            return None
        if any(not t.is_static for t in types) or sum(int(np.prod(t.shape)) for t in types) > FOLD_LIMIT:
            return None
        try:
            with np.errstate(all="ignore"):
                results = run_ref(node, [None if v is None else v.const for v in node.inputs])
        except (ValueError, TypeError, ArithmeticError, IndexError):
            results = _sym_minmax(node)  # e.g. MPT's Slice start max(0, 1 - query_length)
            if results is None:
                return None  # e.g. symbolic values an op cannot compute on: keep the node
        outs = []
        for r, t, nm in zip(results, types, names):
            r = np.asarray(r)
            if tuple(r.shape) != t.shape or (r.dtype == object and t.dtype != DType.i64) or \
                    (r.dtype != object and r.dtype != t.dtype.np):
                return None
            outs.append(self.const(r, nm))
        return outs

    # -- the whole graph ----------------------------------------------------------------------------
    def dim(self, d) -> Any:
        if d.HasField("dim_value") and d.dim_value >= 0:
            return int(d.dim_value)
        if d.HasField("dim_param") and d.dim_param:
            if _SUM_RE.match(d.dim_param):
                # "past_sequence_length + sequence_length": a sum of symbols (what exporters write for the
                # total length), kept as that sum so shape arithmetic downstream simplifies
                total: Any = 0
                for term in d.dim_param.split("+"):
                    term = term.strip()
                    if term.isdigit():
                        total = total + int(term)
                    else:
                        name = sanitize_symbol(term)
                        self.used_dims.add(name)
                        total = total + (int(self.dims[name]) if name in self.dims else Sym.symbol(name))
                return total
            name = sanitize_symbol(d.dim_param)
        else:
            name = f"d{self.fresh}"
            self.fresh += 1
        self.used_dims.add(name)
        return int(self.dims[name]) if name in self.dims else Sym.symbol(name)

    def run(self) -> Graph:
        nodes = self.nodes()
        for n in nodes:
            self.check_signature(n)
        self.unsupported(nodes)
        g = self.model.graph
        params = {d.dim_param for vi in g.input for d in vi.type.tensor_type.shape.dim if d.dim_param}
        while f"d{self.fresh}" in {sanitize_symbol(p) for p in params}:
            self.fresh += 1
        inits = {t.name: t for t in g.initializer}
        for vi in g.input:
            if vi.name in inits:
                continue  # an initializer listed as an input is a constant (ONNX IR < 4 style)
            if vi.name in self.env:
                raise ModelFormatError(f"{self.source}: graph input {vi.name!r} is listed twice")
            tt = vi.type.tensor_type
            shape = [self.dim(d) for d in tt.shape.dim] if tt.HasField("shape") else None
            if shape is None:
                raise UnsupportedError(f"input {vi.name!r} has no shape (unknown rank)")
            t = TensorType(self.widened(DTYPES[tt.elem_type]), tuple(shape))
            self.check_size(t, f"input {vi.name!r}")
            self.env[vi.name] = self.g.add_input(vi.name, t)
        _decoder_mask_length(self.g)
        unknown = set(self.dims) - self.used_dims
        if unknown:
            raise TccError(f"dims names unknown symbol(s) {sorted(unknown)}; the model's are {sorted(self.used_dims)}")
        for t in g.initializer:
            if t.name in self.env:
                raise ModelFormatError(f"{self.source}: initializer {t.name!r} is defined twice")
            self.env[t.name] = self.initializer(t)
        for n in nodes:
            self._build(n)
        self.g.outputs = []
        for o in g.output:
            v = self.env.get(o.name)
            if v is None:
                raise ModelFormatError(f"{self.source}: graph output {o.name!r} is never produced")
            self.g.outputs.append(v)
        self._fix_output_names([o.name for o in g.output])
        self.g.meta = {"source": self.source, "opset": self.opset,
                       "producer": " ".join(x for x in (self.model.producer_name, self.model.producer_version) if x)}
        self.g.verify()
        return self.g

    def _build(self, n: OnnxNode) -> None:
        ins = []
        for name in n.inputs:
            if name not in self.env:
                raise ModelFormatError(f"{self.source}: {n.op} node {n.name!r} input {name!r} is not defined "
                                       "before use")
            ins.append(self.env[name])
        try:
            outs = HANDLERS[n.op].build(self, n, ins)
        except (KeyError, IndexError) as e:  # a required attribute or input is missing
            raise ModelFormatError(f"{self.source}: {n.op} node {n.name!r} lacks a required attribute or "
                                   f"input ({e})") from None
        for name, v in zip(n.outputs, outs):
            if name:
                if name in self.env:
                    raise ModelFormatError(f"{self.source}: {n.op} node {n.name!r} output {name!r} is already "
                                           "defined (an ONNX tensor has one producer)")
                self.env[name] = v

    def _fix_output_names(self, names: list[str]) -> None:
        """Graph outputs keep their ONNX names (a helper value may have taken one: rename it)."""
        changed = False
        for v, name in zip(self.g.outputs, names):
            if v.name == name:
                continue
            for other in self.g.values():
                if other.name == name:
                    other.name = f"{name}.tcc{id(other) % 100000}"
            if v.name in self.g.constants:
                self.g.constants[name] = self.g.constants.pop(v.name)
            v.name = name
            changed = True
        if changed:
            self.g.constants = {v.name: v for v in self.g.constants.values()}
            self.g.rename_names()


def import_onnx(path_or_model, *, dims: dict[str, int] | None = None, widen_f16: bool = False) -> Graph:
    """Load an ONNX model (path or ModelProto) into a tcc Graph. `dims` specializes symbolic dims by name.
    `widen_f16`: an fp16 model's activations, inputs and outputs become f32 (its casts to f16 become casts
    to f32, small f16 constants are converted) while its large f16 initializers stay f16 behind a Cast:
    what `--qm` does with an fp16 export, so the f32 passes (Linear, attention, KV cache) apply and the
    weights are quantized from fp16 without an f32 copy of the model. A bf16 model is widened the same way
    (its large bf16 initializers stay bf16 behind a Cast and are quantized from bf16); without widen_f16
    (--qm fp32) it is refused with an UnsupportedError naming bf16: no backend computes in bf16, and an f32
    copy of a bf16 model's weights is twice its size (onnxruntime has no CPU bf16 MatMul either)."""
    model, source, base, external = _load(path_or_model)
    return Importer(model, source, base, dims, external, widen_f16).run()


def _sym_minmax(node: Node) -> list | None:
    """Max / Min of integer shape values, some symbolic: elementwise dim_max / dim_min (numpy cannot order
    symbols; these simplify where the order is provable and otherwise stay a max/min atom)."""
    from ..ir.dims import dim_max, dim_min

    if node.op not in ("Max", "Min") or not all(v is not None and v.const.dtype.kind in "iO" for v in node.inputs):
        return None
    pick = np.frompyfunc(dim_max if node.op == "Max" else dim_min, 2, 1)
    out = np.asarray(node.inputs[0].const, dtype=object)
    for v in node.inputs[1:]:
        out = pick(out, np.asarray(v.const, dtype=object))
    return [np.asarray(out, dtype=object)]


def _decoder_mask_length(g: Graph) -> None:
    """A decoder with past whose attention_mask length is a symbol of its own (the dynamo exporter cannot
    declare past_seq+seq and writes a fresh `s53`) gets that length as past + seq before any node is typed,
    as llm-interface would later: otherwise shape inference meets `s53` against `past_seq+seq` (OPT's
    positions, MPT's and Bloom's masks) and refuses the model. Only when the layout is unambiguous: input_ids
    [batch, seq], rank-4 past inputs sharing one symbolic length on axis 2, and a mask length used by no
    other input."""
    from ..ir.dims import bare_symbol

    by_name = {v.name: v for v in g.inputs}
    ids, mask = by_name.get("input_ids"), by_name.get("attention_mask")
    pasts = [v for v in g.inputs if v.name.startswith("past") and v.type.rank == 4 and v.dtype.is_float]
    if ids is None or mask is None or not pasts or ids.type.rank != 2 or mask.type.rank != 2:
        return
    names = [bare_symbol(ids.shape[0]), bare_symbol(ids.shape[1]), bare_symbol(mask.shape[1])]
    past = {bare_symbol(v.shape[2]) for v in pasts}
    if None in names or len(past) != 1 or None in past:
        return
    batch, seq, total = names
    (past_sym,) = past
    if total in (batch, seq, past_sym) or any(total in {bare_symbol(d) for d in v.shape} for v in g.inputs
                                              if v is not mask):
        return
    g.substitute_symbols({total: Sym.symbol(past_sym) + Sym.symbol(seq)})
