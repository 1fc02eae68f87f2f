"""Lowering: each IR node becomes C++ statements that call kernels with arena/weight/IO pointers.

The decisions (which kernel, which strides, which sizes) are made here in Python; the model template
only pastes the statements. Sizes are C expressions over the shape symbols bound at run time
(`s_<symbol>`), so one compiled program serves every shape up to the compiled bounds.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import TccError, UnsupportedError
from ..ir.core import Graph, Node, Value
from ..ir.dims import Dim, Sym, product, to_c
from ..ir.dtypes import DType
from ..ir.registry import norm_axis
from ..ir.ops._common import const_ints
from ..backends import capabilities
from .weights import WeightsBuilder


def sym_var(name: str) -> str:
    return "s_" + re.sub(r"[^A-Za-z0-9_]", "_", name)


def c_dim(d: Dim) -> str:
    return to_c(d, sym_var)


def dense_strides(shape) -> list[Dim]:
    strides: list[Dim] = []
    acc: Dim = 1
    for d in reversed(shape):
        strides.append(acc)
        acc = acc * d
    return strides[::-1]


def broadcast_strides(shape, out_shape) -> list[Dim]:
    """Element strides that read a dense tensor of `shape` broadcast to `out_shape` (0 on broadcast axes)."""
    dense = dense_strides(shape)
    pad = len(out_shape) - len(shape)
    out: list[Dim] = []
    for i, od in enumerate(out_shape):
        j = i - pad
        if j < 0 or (shape[j] == 1 and od != 1):
            out.append(0)
        else:
            out.append(dense[j])
    return out


DTYPE_CODE = {DType.f32: "f32", DType.i64: "i64", DType.i32: "i32", DType.bool: "bool", DType.f16: "f16",
              DType.i8: "i8", DType.u8: "u8"}


@dataclass
class Emitter:
    graph: Graph
    plan: object  # passes.memory_plan.MemoryPlan
    select: Callable  # backend kernel selection: select(family, **params) -> KernelSpec | None
    pack: Callable  # backend weight packing: pack(kind, array) -> (layout name, packed array)
    weights: WeightsBuilder = field(default_factory=WeightsBuilder)
    lines: list[str] = field(default_factory=list)
    kernels: set = field(default_factory=set)
    variant: str | None = None
    tuning: object = None  # codegen.tuning.Tuning from --tune: per-node kernel parameters
    caps: object = None  # backends.Capabilities: which dtypes each family computes in (None: the CPU's)
    _tmp: int = 0

    # -- names and pointers -----------------------------------------------------------------------
    def tmp(self, hint: str) -> str:
        self._tmp += 1
        return f"{hint}{self._tmp}"

    def array(self, hint: str, values) -> str:
        """Declare a local int64 array of C expressions; returns its name (nullptr if empty)."""
        values = list(values)
        if not values:
            return "nullptr"
        name = self.tmp(hint)
        self.lines.append(f"  const int64_t {name}[] = {{{', '.join(c_dim(v) for v in values)}}};")
        return name

    def ptr(self, v: Value | None, ctype: str | None = None) -> str:
        if v is None:
            return "nullptr"
        ctype = ctype or v.dtype.ctype
        if v.const is not None:
            return self._const_ptr(v, ctype)
        p = self.plan.placements[v.name]
        root = self.plan.placements[p.root]
        if root.kind == "input":
            base = f"in[{root.index}].data"
        elif root.kind == "output":
            base = f"m->out[{root.index}]"
        elif root.kind == "arena":
            base = f"(m->arena + {root.offset})"
        elif root.kind == "state":
            base = f"m->state[{root.index}]"
        elif root.kind == "const":  # a view of a constant (when folding was disabled)
            return self._const_ptr(self.graph.constants[p.root], ctype)
        else:
            raise TccError(f"value %{v.name} has no storage (placement {p})")
        return f"(({ctype}*){base})"

    def _const_ptr(self, v: Value, ctype: str) -> str:
        arr = v.const
        if arr.dtype == object:
            # A symbolic constant (e.g. [batch, seq]) is evaluated at run time into a local array.
            name = self.array("symc", [x if isinstance(x, Sym) else int(x) for x in arr.reshape(-1)])
            return f"(({ctype}*){name})"
        off = self.weights.add((v.name, "dense"), arr, v.name)
        return f"(({ctype}*)(m->weights + {off}))"

    def packed_ptr(self, v: Value | None, kind: str, ctype: str = "float") -> str:
        """A constant reordered by the backend's packer for the kernel that reads it."""
        if v is None:
            return "nullptr"
        layout, packed = self.pack(kind, v.const)
        off = self.weights.add((v.name, layout), packed, v.name)
        return f"((const {ctype}*)(m->weights + {off}))"

    # -- kernel calls -----------------------------------------------------------------------------
    def call(self, node: Node, family: str, args: list[str], check_error: bool = False, **params) -> None:
        caps = self.caps or capabilities(None)
        for v in [*node.inputs, *node.outputs]:
            if v is not None and v.dtype.is_float and not caps.computes(family, v.dtype):
                raise UnsupportedError(f"{node.op} node {node.name!r}: {v.dtype} tensor %{v.name} is not "
                                       f"supported by the {family} kernels (f32 only)")
        spec = self.select(family, variant=self.variant, **params) if self.variant else None
        spec = spec or self.select(family, **params)
        if spec is None:
            raise UnsupportedError(f"{node.op} node {node.name!r}: no {family} kernel for "
                                   + ", ".join(f"{k}={v}" for k, v in sorted(params.items())))
        if self.tuning is not None:
            spec = self.tuning.apply(node.name, spec)
        self.kernels.add(spec)
        self.lines.append(f"  {spec.name}({', '.join(args)});")
        if check_error:
            self.lines.append(f'  if (tcc_exec_sync(m->exec)) return fail("{_c_str(node.op)} node {_c_str(node.name)}: %s", tcc_exec_error(m->exec));')


def _c_str(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")


LOWERINGS: dict[str, Callable[[Node, Emitter], None]] = {}


def lowering(*ops: str):
    def deco(fn):
        for op in ops:
            LOWERINGS[op] = fn
        return fn
    return deco


def lower_node(node: Node, em: Emitter) -> None:
    fn = LOWERINGS.get(node.op)
    if fn is None:
        raise UnsupportedError(f"op {node.op} (node {node.name!r}) has no code generator for this target")
    em.lines.append(f"  // {node.op} {node.name}".rstrip())
    fn(node, em)


def kv_ceilings(graph: Graph) -> dict:
    """A KV-cache program refuses runs past its capacity (`past + seq <= capacity`, program.llm_bind_lines):
    `past` is at most capacity - seq, which proves assumptions such as `past+seq <= 128` at capacity 128."""
    llm = graph.meta.get("llm") or {}
    if not llm.get("kv_cache"):
        return {}
    return {llm["past"]: int(llm["capacity"]) - Sym.symbol(llm["seq"])}


def assumption_checks(node: Node, bounds: dict[str, int], ceilings: dict | None = None) -> list[str]:
    """C statements: each condition the node's types rest on (ir.registry.node_assumptions: `past+seq <=
    128` for `past+seq` broadcast with `min(past+seq,128)`) must hold at run time, unless the bounds prove
    it; otherwise fail in one line instead of reading past a buffer."""
    from ..ir.registry import node_assumptions
    lines = []
    for a in node_assumptions(node, bounds, ceilings):
        cmp = "<=" if a.op == "<=" else ">="
        lhs, rhs = c_dim(a.lhs), c_dim(a.rhs)
        vals = [(d, c) for d, c in ((a.lhs, lhs), (a.rhs, rhs)) if isinstance(d, Sym)]  # the symbolic sides
        said = " and ".join(f"{_c_str(str(d))} = %\" PRId64 \"" for d, _ in vals)
        args = ", ".join(f"(int64_t)({c})" for _, c in vals)
        lines.append(f"  if (!((int64_t)({lhs}) {cmp} (int64_t)({rhs}))) return fail(\"{_c_str(node.op)} node "
                     f"{_c_str(repr(node.name))}: its shapes broadcast only when {_c_str(str(a))}, but {said}\", "
                     f"{args});")
    return lines


# -- views and shape-only ops: no code ---------------------------------------------------------------

@lowering("Reshape", "Squeeze", "Unsqueeze", "Identity", "Flatten")
def _view(node: Node, em: Emitter) -> None:
    em.lines.pop()  # a view aliases its input's storage: nothing to run


# -- linear algebra --------------------------------------------------------------------------------

@lowering("Linear")
def _linear(node: Node, em: Emitter) -> None:
    x, w = node.inputs[0], node.inputs[1]
    bias = node.input(2)
    k, n = w.shape
    m = product(x.shape[:-1])
    bias_ptr = em.ptr(bias) if bias is not None else "nullptr"
    em.call(node, "gemm", [em.ptr(x), c_dim(k), em.packed_ptr(w, "gemm_f32"), bias_ptr, em.ptr(node.output),
                           c_dim(n), c_dim(m), c_dim(n), c_dim(k), "m->exec"], dtype="f32")


@lowering("QuantizeActs")
def _quantize_acts(node: Node, em: Emitter) -> None:
    x = node.inputs[0]
    xq, xs, xsum = node.outputs
    k = x.shape[-1]
    em.call(node, "quantize_acts", [em.ptr(x), c_dim(k), em.ptr(xq), c_dim(xq.shape[-1]), em.ptr(xs), em.ptr(xsum),
                                    c_dim(product(x.shape[:-1])), c_dim(k), str(node.attrs["group_size"]),
                                    str(int(node.attrs["per_tensor"])), "m->exec"])


@lowering("NormQuantize")
def _norm_quantize(node: Node, em: Emitter) -> None:
    x, gamma, beta = node.inputs[0], node.input(1), node.input(2)
    xq, xs, xsum = node.outputs
    k = x.shape[-1]
    em.call(node, "norm_quantize", [em.ptr(x), em.ptr(gamma), em.ptr(beta), em.ptr(xq), c_dim(xq.shape[-1]),
                                    em.ptr(xs), em.ptr(xsum), c_dim(product(x.shape[:-1])), c_dim(k),
                                    _c_float(node.attrs["eps"]), str(node.attrs["group_size"]), "m->exec"],
            op=node.attrs["norm"], dtype="f32")


@lowering("QLinearI8")
def _qlinear_i8(node: Node, em: Emitter) -> None:
    xq, xs, xsum, q, scales = node.inputs[:5]
    zeros, bias = node.input(5), node.input(6)
    n, k = q.shape
    m = product(xq.shape[:-1])
    out = em.ptr(node.output)
    bits, per_tensor = node.attrs["bits"], node.attrs["per_tensor"]
    if bits == 4 and not per_tensor:
        em.call(node, "qlinear_w4a8", [em.ptr(xq), em.ptr(xs), em.ptr(xsum), c_dim(xq.shape[-1]),
                                       em.packed_ptr(q, "q4_weight_i8", "uint8_t"),
                                       em.packed_ptr(scales, "q4_scales", "uint16_t"),
                                       em.packed_ptr(zeros, "q4_zeros", "uint8_t"), em.ptr(bias), out, c_dim(n),
                                       c_dim(m), c_dim(n), c_dim(k), str(node.attrs["group_size"]), "m->exec"])
    elif bits == 8 and per_tensor:
        em.call(node, "qlinear_w8a8", [em.ptr(xq), em.ptr(xs), c_dim(xq.shape[-1]),
                                       em.packed_ptr(q, "q8_weight", "int8_t"),
                                       em.packed_ptr(scales, "q8_scales", "float"), em.ptr(bias), out, c_dim(n),
                                       c_dim(m), c_dim(n), c_dim(k), "m->exec"])
    else:
        raise UnsupportedError(f"QLinearI8 node {node.name!r}: no kernel for {bits}-bit weights with "
                               f"{'per-tensor' if per_tensor else 'per-group'} int8 activations")


@lowering("QLinear")
def _qlinear(node: Node, em: Emitter) -> None:
    x, q, scales = node.inputs[:3]
    zeros, bias = node.input(3), node.input(4)
    n, k = q.shape
    families = {"f32": "qlinear_w4a32", "f16": "qlinear_w4a16"}  # same operands; f16: fp16 arithmetic
    if node.attrs["act"] not in families or node.attrs["bits"] != 4:
        raise UnsupportedError(f"QLinear node {node.name!r}: {node.attrs['bits']}-bit weights with "
                               f"{node.attrs['act']} activations have no kernel here (int8 activations are "
                               "split off by the quantize-activations pass)")
    em.call(node, families[node.attrs["act"]], [em.ptr(x), c_dim(k), em.packed_ptr(q, "q4_weight", "uint8_t"),
                                    em.packed_ptr(scales, "q4_scales", "uint16_t"),
                                    em.packed_ptr(zeros, "q4_zeros", "uint8_t"), em.ptr(bias), em.ptr(node.output),
                                    c_dim(n), c_dim(product(x.shape[:-1])), c_dim(n), c_dim(k),
                                    str(node.attrs["group_size"]), "m->exec"])


@lowering("MatMul")
def _matmul(node: Node, em: Emitter) -> None:
    a, b = node.inputs
    _check_f32(node, a)
    ash, bsh = list(a.shape), list(b.shape)
    if len(ash) == 1:
        ash = [1] + ash
    if len(bsh) == 1:
        bsh = bsh + [1]
    mdim, kdim, ndim_ = ash[-2], ash[-1], bsh[-1]
    batch = list(_batch_shape(ash[:-2], bsh[:-2]))
    a_str, b_str = dense_strides(ash), dense_strides(bsh)
    a_b = broadcast_strides(ash[:-2], batch) if batch else []
    b_b = broadcast_strides(bsh[:-2], batch) if batch else []
    # broadcast_strides uses dense strides of the batch shape alone; rescale by the matrix size.
    a_b = [s * (mdim * kdim) if not (isinstance(s, int) and s == 0) else 0 for s in a_b]
    b_b = [s * (kdim * ndim_) if not (isinstance(s, int) and s == 0) else 0 for s in b_b]
    em.call(node, "matmul", [em.ptr(a), em.ptr(b), em.ptr(node.output), c_dim(mdim), c_dim(ndim_), c_dim(kdim),
                             c_dim(a_str[-2]), "1", c_dim(b_str[-2]), "1", str(len(batch)),
                             em.array("bshape", batch), em.array("abs", a_b), em.array("bbs", b_b), "m->exec"],
            dtype="f32")


def _batch_shape(a, b):
    from ..ir.registry import broadcast_shapes

    return broadcast_shapes(a, b)


@lowering("Attention")
def _attention(node: Node, em: Emitter) -> None:
    q, k, v = node.inputs[:3]
    mask = node.input(3)
    b, hq, sq, d = q.shape
    _, hkv, skv, _ = k.shape
    dv = v.shape[3]
    out = node.output
    mask_strides = broadcast_strides(mask.shape, (b, hq, sq, skv)) if mask is not None else []
    em.call(node, "attention", [
        em.ptr(q), em.ptr(k), em.ptr(v), em.ptr(mask), em.ptr(out),
        c_dim(b), c_dim(hq), c_dim(hkv), c_dim(sq), c_dim(skv), c_dim(d), c_dim(dv),
        em.array("qs", dense_strides(q.shape)), em.array("ks", dense_strides(k.shape)),
        em.array("vs", dense_strides(v.shape)), em.array("ms", mask_strides) if mask is not None else "nullptr",
        em.array("os", dense_strides(out.shape)), _c_float(node.attrs["scale"]), str(int(node.attrs.get("causal", 0))),
        str(int(node.attrs.get("window", 0))), em.ptr(node.input(4)), _c_float(node.attrs.get("softcap", 0.0)),
        "m->exec"], dtype="f32")


@lowering("KVAttention")
def _kv_attention(node: Node, em: Emitter) -> None:
    q, k, v, kc, vc, past = node.inputs[:6]
    cos, sin = node.input(6), node.input(7)
    b, hq, s, d = q.shape
    hkv, rows, dv = k.shape[1], kc.shape[2], v.shape[3]
    cap = int(node.attrs.get("capacity", 0)) or rows  # a ring cache holds fewer rows than positions
    out = node.output
    strides = [em.array(h, dense_strides(t.shape)) for h, t in (("qs", q), ("ks", k), ("vs", v), ("os", out))]
    tail = [em.ptr(cos), em.ptr(sin), str(int(node.attrs.get("rotary_dim", 0))), str(int(node.attrs.get("rope", 0))),
            _c_float(node.attrs["scale"]), str(int(node.attrs.get("window", 0))), str(rows), em.ptr(node.input(8)),
            _c_float(node.attrs.get("softcap", 0.0)), "m->exec"]
    dims = [c_dim(hq), c_dim(hkv), c_dim(s)]
    # tcc_model_run_rows (m->row_slots set): input row r is one sequence in cache row row_slots[r] at that row's
    # own length, so each row is its own call with B = 1 (attention is per-row work anyway; the Linear layers
    # around it still see all rows at once, which is where batching saves the weight traffic)
    ins = [f"({em.ptr(t)} + tcc_r * {st}[0])" for t, st in zip((q, k, v), strides)]
    caches = [f"({em.ptr(c)} + tcc_sl * {c_dim(hkv)} * {rows} * {c_dim(w)})" for c, w in ((kc, d), (vc, dv))]
    em.lines.append("  if (m->row_slots != nullptr) {")
    em.lines.append(f"    for (int64_t tcc_r = 0; tcc_r < {c_dim(b)}; ++tcc_r) {{")
    em.lines.append("      const int64_t tcc_sl = m->row_slots[tcc_r];")
    em.call(node, "kvattention", [*ins, *caches, f"({em.ptr(out)} + tcc_r * {strides[3]}[0])", "1", *dims,
                                  "m->kv_lens[tcc_sl]", str(cap), c_dim(d), c_dim(dv), *strides, *tail], dtype="f32")
    em.lines.append("    }")
    em.lines.append("  } else {")
    em.call(node, "kvattention", [
        em.ptr(q), em.ptr(k), em.ptr(v), em.ptr(kc), em.ptr(vc), em.ptr(out),
        c_dim(b), *dims, c_dim(past.const.item()), str(cap), c_dim(d), c_dim(dv), *strides, *tail], dtype="f32")
    em.lines.append("  }")


# -- elementwise -----------------------------------------------------------------------------------

BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Pow": "pow", "Max": "max", "Min": "min",
          "Mod": "mod", "Equal": "equal", "Less": "less", "LessOrEqual": "less_equal", "Greater": "greater",
          "GreaterOrEqual": "greater_equal", "And": "and", "Or": "or", "Xor": "xor"}


@lowering(*BINARY)
def _binary(node: Node, em: Emitter) -> None:
    a, b = node.inputs
    out = node.output
    shape = out.shape
    em.call(node, "binary", [em.ptr(a), em.ptr(b), em.ptr(out), str(len(shape)), em.array("shp", shape),
                             em.array("as", broadcast_strides(a.shape, shape)),
                             em.array("bs", broadcast_strides(b.shape, shape)), "m->exec"],
            op=BINARY[node.op], dtype=DTYPE_CODE[a.dtype])


@lowering("Where")
def _where(node: Node, em: Emitter) -> None:
    c, x, y = node.inputs
    out = node.output
    shape = out.shape
    em.call(node, "where", [em.ptr(c), em.ptr(x), em.ptr(y), em.ptr(out), str(len(shape)), em.array("shp", shape),
                            em.array("cs", broadcast_strides(c.shape, shape)),
                            em.array("xs", broadcast_strides(x.shape, shape)),
                            em.array("ys", broadcast_strides(y.shape, shape)), "m->exec"],
            dtype=DTYPE_CODE[x.dtype])


UNARY = {"Neg": "neg", "Abs": "abs", "Exp": "exp", "Log": "log", "Sqrt": "sqrt", "Reciprocal": "reciprocal",
         "Erf": "erf", "Tanh": "tanh", "Sigmoid": "sigmoid", "Relu": "relu", "Floor": "floor", "Ceil": "ceil",
         "Sin": "sin", "Cos": "cos", "Not": "not", "Clip": "clip", "Gelu": None, "Silu": "silu", "Sign": "sign"}


@lowering(*UNARY)
def _unary(node: Node, em: Emitter) -> None:
    x, out = node.inputs[0], node.output
    op = UNARY[node.op]
    alpha, beta = "0.0f", "0.0f"
    if node.op == "Gelu":
        op = "gelu_tanh" if node.attrs.get("approximate", "none") == "tanh" else "gelu_erf"
    if node.op == "Clip":
        alpha, beta = _clip_bounds(node)
    em.call(node, "unary", [em.ptr(x), em.ptr(out), c_dim(out.type.numel), alpha, beta, "m->exec"],
            op=op, dtype=DTYPE_CODE[x.dtype])


def _clip_bounds(node: Node) -> tuple[str, str]:
    bounds = []
    for i, default in ((1, -math.inf), (2, math.inf)):
        v = node.input(i)
        if v is None:
            bounds.append(default)
        elif v.const is not None and v.const.dtype != object:
            bounds.append(float(v.const.reshape(-1)[0]))
        else:
            raise UnsupportedError(f"Clip node {node.name!r}: min/max must be constants")
    return _c_float(bounds[0]), _c_float(bounds[1])


def _c_float(x: float) -> str:
    x = float(x)
    if math.isnan(x):
        return "NAN"
    if math.isinf(x):
        return "INFINITY" if x > 0 else "-INFINITY"
    return repr(float(np.float32(x))) + "f"


@lowering("Cast")
def _cast(node: Node, em: Emitter) -> None:
    x, out = node.inputs[0], node.output
    em.call(node, "cast", [em.ptr(x), em.ptr(out), c_dim(out.type.numel), "m->exec"],
            src=DTYPE_CODE[x.dtype], dst=DTYPE_CODE[out.dtype])


@lowering("Copy")
def _copy(node: Node, em: Emitter) -> None:
    x, out = node.inputs[0], node.output
    _copy_call(node, em, em.ptr(x, "void"), em.ptr(out, "void"), out.shape, dense_strides(x.shape),
               dense_strides(out.shape), out.dtype)


def _copy_call(node, em, src, dst, shape, src_strides, dst_strides, dtype: DType) -> None:
    em.call(node, "copy", [src, dst, str(len(shape)), em.array("shp", shape), em.array("ss", src_strides),
                           em.array("ds", dst_strides), "m->exec"], esize=dtype.itemsize)


# -- reductions and normalizations -----------------------------------------------------------------

REDUCE = {"ReduceSum": "sum", "ReduceMean": "mean", "ReduceMax": "max", "ReduceMin": "min", "ReduceProd": "prod"}


@lowering(*REDUCE)
def _reduce(node: Node, em: Emitter) -> None:
    x, out = node.inputs[0], node.output
    rank = x.type.rank
    axes = sorted(norm_axis(a, rank) for a in (node.attrs.get("axes") or range(rank)))
    if axes and axes != list(range(axes[0], axes[-1] + 1)):
        raise TccError(f"{node.op} node {node.name!r}: reduced axes {axes} are not contiguous (lower-ops should fix)")
    lo, hi = (axes[0], axes[-1] + 1) if axes else (rank, rank)
    outer, r, inner = product(x.shape[:lo]), product(x.shape[lo:hi]), product(x.shape[hi:])
    em.call(node, "reduce", [em.ptr(x), em.ptr(out), c_dim(outer), c_dim(r), c_dim(inner), "m->exec"],
            op=REDUCE[node.op], dtype=DTYPE_CODE[x.dtype])


@lowering("Softmax", "LogSoftmax")
def _softmax(node: Node, em: Emitter) -> None:
    x, out = node.inputs[0], node.output
    axis = norm_axis(node.attrs.get("axis", -1), x.type.rank)
    outer, n, inner = product(x.shape[:axis]), x.shape[axis], product(x.shape[axis + 1:])
    em.call(node, "softmax", [em.ptr(x), em.ptr(out), c_dim(outer), c_dim(n), c_dim(inner), "m->exec"],
            op=node.op.lower(), dtype="f32")


@lowering("LayerNorm", "RMSNorm")
def _norm(node: Node, em: Emitter) -> None:
    x, out = node.inputs[0], node.output
    axis = norm_axis(node.attrs["axis"], x.type.rank)
    rows, cols = product(x.shape[:axis]), product(x.shape[axis:])
    gamma, beta = node.input(1), node.input(2)
    for p in (gamma, beta):
        if p is not None and p.type.numel != cols:
            raise TccError(f"{node.op} node {node.name!r}: parameter %{p.name} must have {cols} elements "
                           "(lower-ops should have expanded it)")
    em.call(node, "norm", [em.ptr(x), em.ptr(gamma), em.ptr(beta), em.ptr(out), c_dim(rows), c_dim(cols),
                           _c_float(node.attrs["eps"]), "m->exec"], op=node.op.lower(), dtype="f32")


# -- data movement ---------------------------------------------------------------------------------

@lowering("Transpose")
def _transpose(node: Node, em: Emitter) -> None:
    x, out = node.inputs[0], node.output
    perm = node.attrs.get("perm") or list(range(x.type.rank))[::-1]
    src = dense_strides(x.shape)
    _copy_call(node, em, em.ptr(x, "void"), em.ptr(out, "void"), out.shape, [src[p] for p in perm],
               dense_strides(out.shape), out.dtype)


@lowering("Expand")
def _expand(node: Node, em: Emitter) -> None:
    x, out = node.inputs[0], node.output
    _copy_call(node, em, em.ptr(x, "void"), em.ptr(out, "void"), out.shape, broadcast_strides(x.shape, out.shape),
               dense_strides(out.shape), out.dtype)


@lowering("Tile")
def _tile(node: Node, em: Emitter) -> None:
    """out viewed as [r0, d0, r1, d1, ...] reads x with stride 0 along each repeat axis (repeats of 1 dropped)."""
    x, out = node.inputs[0], node.output
    reps = const_ints(node.inputs[1], "Tile repeats")
    xstr = dense_strides(x.shape)
    shape, src = [], []
    for d, r, s in zip(x.shape, reps, xstr):
        if not (isinstance(r, int) and r == 1):
            shape.append(r)
            src.append(0)
        shape.append(d)
        src.append(s)
    _copy_call(node, em, em.ptr(x, "void"), em.ptr(out, "void"), shape, src, dense_strides(shape), out.dtype)


@lowering("Concat")
def _concat(node: Node, em: Emitter) -> None:
    out = node.output
    axis = norm_axis(node.attrs["axis"], out.type.rank)
    ostr = dense_strides(out.shape)
    offset: Dim = 0
    base = em.ptr(out, "char")
    for x in node.inputs:
        if x.type.numel != 0:
            dst = f"({base} + ({c_dim(offset * ostr[axis])}) * {out.dtype.itemsize})"
            _copy_call(node, em, em.ptr(x, "void"), dst, x.shape, dense_strides(x.shape), ostr, out.dtype)
        offset = offset + x.shape[axis]


@lowering("Split")
def _split(node: Node, em: Emitter) -> None:
    x = node.inputs[0]
    axis = norm_axis(node.attrs["axis"], x.type.rank)
    xstr = dense_strides(x.shape)
    base = em.ptr(x, "char")
    offset: Dim = 0
    for out in node.outputs:
        src = f"({base} + ({c_dim(offset * xstr[axis])}) * {x.dtype.itemsize})"
        _copy_call(node, em, src, em.ptr(out, "void"), out.shape, xstr, dense_strides(out.shape), x.dtype)
        offset = offset + out.shape[axis]


@lowering("Slice")
def _slice(node: Node, em: Emitter) -> None:
    from ..ir.ops.movement import slice_assumed, slice_plan
    x, out = node.inputs[0], node.output
    rank = x.type.rank
    starts, ends = (_const_ints(node, node.input(i), what) for i, what in ((1, "starts"), (2, "ends")))
    axes = _const_ints(node, node.input(3), "axes") if node.input(3) is not None else list(range(len(starts)))
    steps = _const_ints(node, node.input(4), "steps") if node.input(4) is not None else [1] * len(starts)
    xstr = dense_strides(x.shape)
    begin: list = [0] * rank
    step = [1] * rank
    assumed = slice_assumed(x.shape, starts, ends, axes, steps)
    for (a, start, _, st), s, e in zip(slice_plan(x.shape, starts, ends, axes, steps), starts, ends):
        begin[a], step[a] = start, st  # the clamped start; exact, or checked below
        if a in assumed:
            em.lines.append(_slice_check(node, a, s, e, st, x.shape[a], start, out.shape[a]))
    # Offset (elements) of the first element read, and strides scaled by the steps.
    offset = " + ".join(f"({c_dim(b)}) * ({c_dim(xstr[i])})" for i, b in enumerate(begin) if b != 0) or "0"
    src = f"({em.ptr(x, 'char')} + ({offset}) * {x.dtype.itemsize})"
    src_strides = [xstr[i] * step[i] for i in range(rank)]
    _copy_call(node, em, src, em.ptr(out, "void"), out.shape, src_strides, dense_strides(out.shape), out.dtype)


def _slice_check(node: Node, axis: int, start, end, step: int, dim: Dim, begin: Dim, n: Dim) -> str:
    """C statement: the ONNX start and length of one sliced axis, computed at run time, must be what the
    graph was compiled for (its shape rests on an assumption there); otherwise fail instead of reading
    past the data."""
    from ..ir.ops.movement import TO_THE_END

    def idx(i) -> str:  # INT64_MIN/MAX and friends: far enough past any dim
        return c_dim(i) if isinstance(i, Sym) else str(max(min(int(i), 2 ** 62), -2 ** 62))
    if step < 0 and not isinstance(end, Sym) and int(end) in TO_THE_END:
        end = -2 ** 62  # onnxruntime: to the start
    lo, hi = ("0", "d") if step > 0 else ("0", "d - 1")
    elo = "0" if step > 0 else "-1"
    count = (f"(e > b ? (e - b + {step - 1}) / {step} : 0)" if step > 0
             else f"(b > e ? (b - e + {-step - 1}) / {-step} : 0)")
    where = f"{_c_str(node.op)} node {_c_str(node.name)}: axis {axis}"
    return (f"  {{ const int64_t d = {c_dim(dim)}; int64_t b = {idx(start)}, e = {idx(end)};\n"
            f"    if (b < 0) b += d; if (e < 0) e += d;\n"
            f"    b = b < {lo} ? {lo} : b; b = b > {hi} ? {hi} : b;\n"
            f"    e = e < {elo} ? {elo} : e; e = e > {hi} ? {hi} : e;\n"
            f"    const int64_t n = {count}, want = {c_dim(n)};\n"
            f"    if (n != want || (n > 0 && b != {c_dim(begin)})) return fail(\"{where} slices %\" PRId64 \" "
            f"elements from %\" PRId64 \" of %\" PRId64 \" at run time, but was compiled for %\" PRId64 \" "
            f"(it took a symbolic dim to be at least 1 and computed starts/ends to lie within the dim)\", "
            f"n, b, d, want); }}")


def _const_ints(node: Node, v: Value | None, what: str) -> list:
    if v is None or v.const is None:
        raise UnsupportedError(f"{node.op} node {node.name!r}: {what} must be constant")
    return [x if isinstance(x, Sym) else int(x) for x in v.const.reshape(-1).tolist()]


@lowering("Gather")
def _gather(node: Node, em: Emitter) -> None:
    data, idx = node.inputs
    out = node.output
    axis = norm_axis(node.attrs.get("axis", 0), data.type.rank)
    outer, axis_len, inner = product(data.shape[:axis]), data.shape[axis], product(data.shape[axis + 1:])
    if idx.dtype != DType.i64:
        raise TccError(f"Gather node {node.name!r}: indices must be i64 (lower-ops should cast)")
    em.call(node, "gather", [em.ptr(data, "void"), em.ptr(idx), em.ptr(out, "void"), c_dim(outer), c_dim(axis_len),
                             c_dim(inner), c_dim(idx.type.numel), "m->exec"], check_error=True,
            esize=data.dtype.itemsize)


@lowering("QGather")
def _qgather(node: Node, em: Emitter) -> None:
    idx, q, scales = node.inputs[:3]
    zeros = node.input(3)
    rows, k = q.shape
    bits = node.attrs["bits"]
    table = em.packed_ptr(q, "q4_rows" if bits == 4 else "q8_rows", "void")
    sc = em.packed_ptr(scales, "q4_row_scales", "uint16_t") if bits == 4 else em.ptr(scales)
    em.call(node, "qgather", [table, sc, em.ptr(zeros), em.ptr(idx), em.ptr(node.output), c_dim(idx.type.numel),
                              c_dim(rows), c_dim(k), str(node.attrs["group_size"]), "m->exec"],
            check_error=True, bits=bits)


@lowering("Range")
def _range(node: Node, em: Emitter) -> None:
    start, _, delta = node.inputs
    out = node.output
    em.call(node, "range", [em.ptr(start), em.ptr(delta), em.ptr(out), c_dim(out.shape[0])],
            dtype=DTYPE_CODE[out.dtype])


@lowering("Trilu")
def _trilu(node: Node, em: Emitter) -> None:
    x, out = node.inputs[0], node.output
    kv = node.input(1)
    if kv is None:
        k = "0"
    elif kv.const is not None:
        k = c_dim(_const_ints(node, kv, "k")[0])
    elif kv.dtype == DType.i64:
        k = f"{em.ptr(kv)}[0]"  # a run-time diagonal offset: read when the kernel is called
    else:
        raise UnsupportedError(f"Trilu node {node.name!r}: k must be i64, got {kv.dtype}")
    rows, cols = x.shape[-2], x.shape[-1]
    em.call(node, "trilu", [em.ptr(x, "void"), em.ptr(out, "void"), c_dim(product(x.shape[:-2])), c_dim(rows),
                            c_dim(cols), k, "m->exec"],
            upper=int(node.attrs.get("upper", 1)), esize=x.dtype.itemsize)


@lowering("ConstantOfShape")
def _constant_of_shape(node: Node, em: Emitter) -> None:
    out = node.output
    value = np.array(node.attrs.get("value", 0), dtype=out.dtype.np).reshape(1)
    off = em.weights.add((f"fill:{out.dtype}:{value.tobytes().hex()}", "dense"), value, "fill value")
    em.call(node, "fill", [em.ptr(out, "void"), f"(m->weights + {off})", c_dim(out.type.numel)],
            esize=out.dtype.itemsize)


def _check_f32(node: Node, v: Value) -> None:
    if v.dtype != DType.f32:
        raise UnsupportedError(f"{node.op} node {node.name!r}: {v.dtype} inputs are not supported by the compiled "
                               "backends yet (f32 only)")


@lowering("GatherND")
def _gather_nd(node: Node, em: Emitter) -> None:
    data, idx = node.inputs
    out = node.output
    b = int(node.attrs.get("batch_dims", 0))
    k = idx.shape[-1]
    if idx.dtype != DType.i64:
        raise UnsupportedError(f"GatherND node {node.name!r}: indices must be i64")
    batch = product(data.shape[:b])
    n_idx = product(idx.shape[b:-1])
    slice_ = product(data.shape[b + k:])
    em.call(node, "gathernd", [em.ptr(data, "void"), em.ptr(idx), em.ptr(out, "void"), c_dim(batch), c_dim(n_idx),
                               str(k), em.array("dims", data.shape[b:b + k]), c_dim(slice_),
                               c_dim(product(data.shape[b:])), "m->exec"],
            check_error=True, esize=data.dtype.itemsize)


@lowering("GatherElements")
def _gather_elements(node: Node, em: Emitter) -> None:
    data, idx = node.inputs
    out = node.output
    if idx.dtype != DType.i64:
        raise UnsupportedError(f"GatherElements node {node.name!r}: indices must be i64, got {idx.dtype}")
    if out.type.rank > 8:  # the kernel's coordinate array (like every tcc tensor) holds 8 dims
        raise UnsupportedError(f"GatherElements node {node.name!r}: rank {out.type.rank} exceeds 8")
    axis = norm_axis(int(node.attrs.get("axis", 0)), data.type.rank)
    em.call(node, "gatherelements", [em.ptr(data, "void"), em.ptr(idx), em.ptr(out, "void"), str(out.type.rank),
                                     em.array("shp", out.shape), em.array("ds", dense_strides(data.shape)), str(axis),
                                     c_dim(data.shape[axis]), "m->exec"],
            check_error=True, esize=data.dtype.itemsize)


@lowering("ScatterND")
def _scatter_nd(node: Node, em: Emitter) -> None:
    data, idx, upd = node.inputs
    out = node.output
    if idx.dtype != DType.i64:
        raise UnsupportedError(f"ScatterND node {node.name!r}: indices must be i64, got {idx.dtype}")
    k = idx.shape[-1]
    if not isinstance(k, int):
        raise UnsupportedError(f"ScatterND node {node.name!r}: index depth {k} is not static")
    em.call(node, "scatternd", [em.ptr(data), em.ptr(idx), em.ptr(upd), em.ptr(out), c_dim(product(data.shape)),
                                c_dim(product(idx.shape[:-1])), str(k), em.array("dims", data.shape[:k]),
                                c_dim(product(data.shape[k:])), "m->exec"],
            check_error=True, op=node.attrs.get("reduction", "none"), dtype=DTYPE_CODE[data.dtype])


@lowering("CumSum")
def _cumsum(node: Node, em: Emitter) -> None:
    x, out = node.inputs[0], node.output
    axis = norm_axis(_const_ints(node, node.inputs[1], "axis")[0], x.type.rank)
    outer, n, inner = product(x.shape[:axis]), x.shape[axis], product(x.shape[axis + 1:])
    em.call(node, "cumsum", [em.ptr(x), em.ptr(out), c_dim(outer), c_dim(n), c_dim(inner),
                             str(int(node.attrs.get("exclusive", 0))), str(int(node.attrs.get("reverse", 0))),
                             "m->exec"], dtype=DTYPE_CODE[x.dtype])


@lowering("RotaryEmbedding")
def _rope(node: Node, em: Emitter) -> None:
    x, cos, sin = node.inputs[:3]
    pos = node.input(3)
    out = node.output
    if x.type.rank == 4:
        b, h, s, d = x.shape
        st = dense_strides(x.shape)
        strides = [st[0], st[2], st[1], st[3]]  # (b, s, h, d) order
    else:
        h = int(node.attrs["num_heads"])
        b, s, hidden = x.shape
        d = hidden // h
        strides = [s * hidden, hidden, d, 1]
    rd = int(node.attrs.get("rotary_embedding_dim", 0)) or d
    max_pos = cos.shape[0] if pos is not None else product(cos.shape[:-1])
    em.call(node, "rope", [em.ptr(x), em.ptr(cos), em.ptr(sin), em.ptr(pos) if pos is not None else "nullptr",
                           em.ptr(out), c_dim(b), c_dim(s), c_dim(h), c_dim(d), c_dim(rd),
                           em.array("xs", strides), c_dim(max_pos), str(int(node.attrs.get("interleaved", 0))),
                           "m->exec"], check_error=pos is not None, dtype="f32")
