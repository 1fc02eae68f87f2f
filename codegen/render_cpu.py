"""The renderer of the launch list (codegen/launch.py): C++ statements for common/model.cpp.j2.

On the CPU every memory space is host memory: a Buf becomes pointer arithmetic on the model's buffers
(`m->arena + offset`, `in[i].data`, `m->out[i]`, `m->state[i]`, `m->weights + offset`), a HostArray a
local array on the stack, and the execution context `m->exec` is passed to every kernel that takes one.
A kernel that may raise is followed by a sync point (tcc_exec_sync) that fails the run with its message.

A GPU program (`device_io`: its memory is not host-visible) is the same host program calling the kernels'
launchers, with three differences: the inputs are read from device copies (`m->in_dev[i]`, filled before the
first launch), a symbolic constant a kernel reads as data is uploaded into the run's device scratch
(`tcc::device_upload`), and an element read at launch (Elem) is copied back (`tcc::device_elem`). Shapes and
strides stay host arrays: the launchers pass them to the kernels by value.

A GPU program with device graphs (CUDA) keeps the KV cache's length in device memory (`m->kv_len_dev`,
updated before every run): a symbolic constant that is just that length is read from there instead of being
uploaded, and the attention launchers read it through the execution context (tcc_exec_kv_length). Its
decode step can then be captured once and replayed, unless some other launch argument, guard or upload
changes with the cache length: `decode_capture_blocker` says which (docs/cuda.md, "CUDA graphs").
"""
from __future__ import annotations

import math
import re

import numpy as np

from ..ir.dims import Sym
from .launch import AssumptionGuard, Buf, Elem, HostArray, Launch, Scalar, SliceGuard, SlotLength, Step
from .lower.emitter import c_dim

EXEC = "m->exec"  # the model's execution context (tcc_exec*)


def c_str(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")


def c_float(x: float) -> str:
    x = float(x)
    if math.isnan(x):
        return "NAN"
    if math.isinf(x):
        return "INFINITY" if x > 0 else "-INFINITY"
    return repr(float(np.float32(x))) + "f"


def takes_exec(spec) -> bool:
    """Whether the kernel's last parameter is the execution context."""
    last = spec.signature.rstrip().rstrip(")").rsplit(",", 1)[-1]
    return re.search(r"\btcc_(?:exec|pool)\*", last) is not None


class _Locals:
    """Names of the local arrays one program declares."""

    def __init__(self):
        self.n = 0

    def name(self, hint: str) -> str:
        self.n += 1
        return f"{hint}{self.n}"


def _buf(b: Buf, device_io: bool = False) -> str:
    if b.space == "input":
        base = f"m->in_dev[{b.slot}]" if device_io else f"in[{b.slot}].data"
    elif b.space == "output":
        base = f"m->out[{b.slot}]"
    elif b.space == "device_arena":
        base = f"(m->arena + {b.slot})"
    elif b.space == "kv_state":
        base = f"m->state[{b.slot}]"
    elif b.space == "weights":
        base = f"(m->weights + {b.slot})"
    else:
        raise ValueError(f"unknown buffer space {b.space!r}")
    text = f"(({b.ctype}*){base})"
    if not (isinstance(b.offset, int) and b.offset == 0):
        text = f"({text} + ({c_dim(b.offset)}))"
    if b.per_row is not None:
        text = f"({text} + tcc_r * ({c_dim(b.per_row)}))"
    if b.per_slot is not None:
        text = f"({text} + tcc_sl * ({c_dim(b.per_slot)}))"
    return text


def _is_kv_length(a: HostArray, kv_length: str | None) -> bool:
    """Whether a symbolic constant is exactly the cache length (one int64): read from m->kv_len_dev."""
    return (kv_length is not None and a.hint == "symc" and a.ctype == "int64_t" and len(a.values) == 1
            and isinstance(a.offset, int) and a.offset == 0 and c_dim(a.values[0]).strip("()") == kv_length)


def _arg(a, decls: list[str], names: _Locals, device_io: bool = False, kv_length: str | None = None) -> str:
    if a is None:
        return "nullptr"
    if isinstance(a, Buf):
        return _buf(a, device_io)
    if isinstance(a, Scalar):
        return c_float(a.value) if a.kind == "float" else c_dim(a.value)
    if isinstance(a, HostArray):
        if device_io and _is_kv_length(a, kv_length):
            return "((int64_t*)m->kv_len_dev)"
        name = names.name(a.hint)
        decls.append(f"const int64_t {name}[] = {{{', '.join(c_dim(v) for v in a.values)}}};")
        if device_io and a.hint == "symc":  # data a kernel reads: on the device
            name = f"tcc::device_upload(m, {name}, sizeof {name})"
        text = name if a.ctype == "int64_t" and a.hint != "symc" else f"(({a.ctype}*){name})"
        return text if isinstance(a.offset, int) and a.offset == 0 else f"({text} + ({c_dim(a.offset)}))"
    if isinstance(a, Elem):
        if device_io:
            return f"tcc::device_elem(m->exec, {_buf(a.buf, device_io)})"
        return f"{_buf(a.buf)}[0]"
    if isinstance(a, SlotLength):
        return "m->kv_lens[tcc_sl]"
    raise TypeError(f"unknown launch argument {a!r}")


def _launch(step: Step, ln: Launch, names: _Locals, device_io: bool = False, kv_length: str | None = None) -> list[str]:
    decls: list[str] = []
    args = [_arg(a, decls, names, device_io, kv_length) for a in ln.args]
    if takes_exec(ln.kernel):
        args.append(EXEC)
    lines = decls + [f"{ln.kernel.name}({', '.join(args)});"]
    if ln.check_error:
        lines.append(f'if (tcc_exec_sync({EXEC})) return fail("{c_str(step.op)} node {c_str(step.node)}: %s", '
                     f"tcc_exec_error({EXEC}));")
    if ln.mode == "rows":
        # tcc_model_run_rows (m->row_slots set): input row r is one sequence in cache row row_slots[r] at
        # that row's own length, so each row is its own launch with B = 1
        return (["if (m->row_slots != nullptr) {", f"  for (int64_t tcc_r = 0; tcc_r < {c_dim(ln.rows)}; ++tcc_r) {{",
                 "    const int64_t tcc_sl = m->row_slots[tcc_r];"] + ["    " + x for x in lines] + ["  }", "}"])
    if ln.mode == "batch":
        return ["if (m->row_slots == nullptr) {"] + ["  " + x for x in lines] + ["}"]
    return lines


def assumption_check(g: AssumptionGuard) -> str:
    a = g.assumption
    cmp = "<=" if a.op == "<=" else ">="
    lhs, rhs = c_dim(a.lhs), c_dim(a.rhs)
    vals = [(d, c) for d, c in ((a.lhs, lhs), (a.rhs, rhs)) if isinstance(d, Sym)]  # the symbolic sides
    said = " and ".join(f"{c_str(str(d))} = %\" PRId64 \"" for d, _ in vals)
    args = ", ".join(f"(int64_t)({c})" for _, c in vals)
    return (f"  if (!((int64_t)({lhs}) {cmp} (int64_t)({rhs}))) return fail(\"{c_str(g.op)} node "
            f"{c_str(repr(g.node))}: its shapes broadcast only when {c_str(str(a))}, but {said}\", {args});")


def slice_check(g: SliceGuard) -> str:
    """Compute the ONNX start and length of the axis at run time and fail unless they are as compiled."""
    from ..ir.ops.movement import TO_THE_END

    def idx(i) -> str:  # INT64_MIN/MAX and friends: far enough past any dim
        return c_dim(i) if isinstance(i, Sym) else str(max(min(int(i), 2 ** 62), -2 ** 62))
    step, end = g.step, g.end
    if step < 0 and not isinstance(end, Sym) and int(end) in TO_THE_END:
        end = -2 ** 62  # onnxruntime: to the start
    lo, hi = ("0", "d") if step > 0 else ("0", "d - 1")
    elo = "0" if step > 0 else "-1"
    count = (f"(e > b ? (e - b + {step - 1}) / {step} : 0)" if step > 0
             else f"(b > e ? (b - e + {-step - 1}) / {-step} : 0)")
    where = f"{c_str(g.op)} node {c_str(g.node)}: axis {g.axis}"
    return (f"  {{ const int64_t d = {c_dim(g.dim)}; int64_t b = {idx(g.start)}, e = {idx(end)};\n"
            f"    if (b < 0) b += d; if (e < 0) e += d;\n"
            f"    b = b < {lo} ? {lo} : b; b = b > {hi} ? {hi} : b;\n"
            f"    e = e < {elo} ? {elo} : e; e = e > {hi} ? {hi} : e;\n"
            f"    const int64_t n = {count}, want = {c_dim(g.count)};\n"
            f"    if (n != want || (n > 0 && b != {c_dim(g.begin)})) return fail(\"{where} slices %\" PRId64 \" "
            f"elements from %\" PRId64 \" of %\" PRId64 \" at run time, but was compiled for %\" PRId64 \" "
            f"(it took a symbolic dim to be at least 1 and computed starts/ends to lie within the dim)\", "
            f"n, b, d, want); }}")


def render(steps, device_io: bool = False, kv_length: str | None = None) -> tuple[list[str], list[tuple[str, str]]]:
    """The run body's C++ lines and the (op, node) of each timed entry, in program order; `device_io` for a
    program whose memory is not host-visible (a GPU's); `kv_length`: the cache length's C variable when the
    program keeps a device copy of it (m->kv_len_dev: GPU programs with graphs)."""
    lines: list[str] = []
    timed: list[tuple[str, str]] = []
    names = _Locals()
    for step in steps:
        lines += [assumption_check(g) for g in step.guards]  # before the step, outside its timing
        if not step.body:  # a view: nothing runs, nothing is timed
            continue
        i = len(timed)
        timed.append((step.op, step.node))
        lines += [f"  TCC_PROF_BEGIN({i});", f"  // {step.op} {step.node}".rstrip()]
        for item in step.body:
            if isinstance(item, SliceGuard):
                lines.append(slice_check(item))
            else:
                lines += ["  " + x for x in _launch(step, item, names, device_io, kv_length)]
        lines.append(f"  TCC_PROF_END({i});")
    return lines, timed


def _param_names(spec) -> list[str]:
    """The parameter names of a kernel's signature, in order."""
    sig = spec.signature
    inside = sig[sig.index("(") + 1:sig.rindex(")")]
    return [(re.findall(r"\w+", p) or [""])[-1] for p in inside.split(",")]


def attention_reads_length(steps, kv_length: str | None) -> bool:
    """Whether every attention call of tcc_model_run takes the cache length itself as `past`: then the program
    may hand the kernels its device copy (tcc_exec_set_kv_length), which they read instead."""
    if kv_length is None:
        return False
    for step in steps:
        for ln in step.launches:
            if ln.kernel.family != "kvattention" or ln.mode == "rows":
                continue
            past = ln.args[_param_names(ln.kernel).index("past")]
            if _arg(past, [], _Locals(), True, kv_length).strip("()") != kv_length:
                return False
    return True


def decode_capture_blocker(steps, kv_length: str | None) -> str | None:
    """Why a GPU program's decode step (seq = 1, tcc_model_run) cannot be captured once and replayed with
    the cache length read from device memory; None when it can. A replay runs the launches with the argument
    values of the capture and none of the host code between them, so nothing but the attention calls' `past`
    (read through tcc_exec_kv_length) and a symbolic constant equal to the length (m->kv_len_dev) may depend
    on it; a run-time element read back to the host, or a constant uploaded every run, cannot be replayed."""
    if kv_length is None:
        return "no KV cache: every step runs the whole sequence again, so the launches' shapes grow"
    if not attention_reads_length(steps, kv_length):
        return "an attention call's past is not the cache length"
    mentions = re.compile(rf"\b{re.escape(kv_length)}\b").search
    for step in steps:
        where = f"{step.op} node {step.node}"
        if any(mentions(assumption_check(g)) for g in step.guards):
            return f"{where} checks shapes that depend on the cache length"
        for item in step.body:
            if isinstance(item, SliceGuard):
                if mentions(slice_check(item)):
                    return f"{where} checks a slice that depends on the cache length"
                continue
            if item.mode == "rows":  # tcc_model_run_rows only: it runs without graphs
                continue
            params = _param_names(item.kernel) if item.kernel.family == "kvattention" else []
            for i, a in enumerate(item.args):
                if isinstance(a, Elem):
                    return f"{where} reads a value from device memory on the host"
                if isinstance(a, HostArray) and a.hint == "symc" and not _is_kv_length(a, kv_length):
                    return f"{where} uploads a run-time constant every run"
                if isinstance(a, HostArray):
                    text = " ".join(c_dim(v) for v in a.values) + " " + c_dim(a.offset)
                    if _is_kv_length(a, kv_length):
                        continue
                else:
                    text = _arg(a, [], _Locals(), True, kv_length)
                if mentions(text) and not (i < len(params) and params[i] == "past"
                                           and text.strip("()") == kv_length):
                    return f"{where} has launch arguments (shapes, offsets) that depend on the cache length"
    return None
