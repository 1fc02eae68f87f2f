"""The launch list: what lowering produces, target-neutral, and each backend renders into its host program.

Lowering (codegen/lower/) turns every IR node into a `Step`: the run-time checks its shapes rest on, and the
kernel launches that compute it. A launch names its kernel (a KernelSpec) and its arguments by value:

    Buf        a pointer into a memory space (passes/memory_plan.py SPACES): the caller's inputs / outputs
               (io), the weights, the KV state, the device arena; by index or byte offset, plus an offset
    HostArray  a small int64 array (shape, strides, a symbolic constant) passed by value: the CPU program
               puts it on its stack, a GPU program in its host arena or in kernel parameters
    Scalar     an int (a shape expression over the symbols bound at run time) or a float
    Elem       element 0 of a buffer, read when the kernel is launched (a run-time scalar operand)
    SlotLength in a per-row launch (tcc_model_run_rows), the tokens cached in the row's KV slot
    None       no operand (nullptr)

The execution context (tcc_exec, runtime/tcc_device.h) is not in the list: a renderer passes it to every
kernel whose signature ends with it. The CPU renderer (codegen/render_cpu.py) reproduces the C++ program
that lowering used to write directly; a GPU renderer can capture the same list in a graph. The steps that
launch kernels are what `tcc run --profile` times and names (op and node of each step).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from ..ir.dims import Dim

# Buffer spaces a Buf may point into; each is one of the plan's memory spaces (memory_plan.SPACES):
# input/output -> io, device_arena, weights, kv_state.
BUF_SPACES = ("input", "output", "device_arena", "weights", "kv_state")


@dataclass(frozen=True)
class Buf:
    space: str  # one of BUF_SPACES
    slot: int  # input / output / state index; byte offset in the weights or the device arena
    ctype: str  # the pointer's element type as the kernel sees it ("float", "void", "const uint8_t", ...)
    offset: Dim = 0  # further elements of ctype (bytes for "char") past the start
    per_row: Dim | None = None  # in a per-row launch: + row * per_row elements
    per_slot: Dim | None = None  # in a per-row launch: + (the row's KV slot) * per_slot elements

    def at(self, offset: Dim) -> "Buf":
        return Buf(self.space, self.slot, self.ctype, self.offset + offset, self.per_row, self.per_slot)


@dataclass(frozen=True)
class HostArray:
    values: tuple  # Dims
    hint: str  # a name for it in the rendered program
    ctype: str = "int64_t"  # the element type the kernel reads it as
    offset: Dim = 0  # elements of ctype (bytes for "char") past the start

    def at(self, offset: Dim) -> "HostArray":
        return HostArray(self.values, self.hint, self.ctype, self.offset + offset)


@dataclass(frozen=True)
class Scalar:
    value: Any  # a Dim (int or Sym) for kind "int", a float for kind "float"
    kind: str = "int"


@dataclass(frozen=True)
class Elem:
    buf: Buf


@dataclass(frozen=True)
class SlotLength:
    pass


Arg = Union[Buf, HostArray, Scalar, Elem, SlotLength, None]


def dim(d: Dim) -> Scalar:
    return Scalar(d, "int")


def flt(x: float) -> Scalar:
    return Scalar(float(x), "float")


@dataclass(frozen=True)
class Launch:
    kernel: Any  # codegen.kernels.KernelSpec
    args: tuple  # Arg, in the kernel's parameter order (the execution context left out)
    check_error: bool = False  # the kernel may raise (bad indices): sync and fail the run if it did
    # "" always; "rows": in tcc_model_run_rows only, once per input row (B = 1) with its KV slot;
    # "batch": otherwise only.
    mode: str = ""
    rows: Dim = 1  # the number of input rows a "rows" launch iterates over


@dataclass(frozen=True)
class AssumptionGuard:
    """The node's types rest on `assumption` (ir.registry.Assumption); fail the run when it does not hold."""
    op: str
    node: str
    assumption: Any


@dataclass(frozen=True)
class SliceGuard:
    """The ONNX start and length of one sliced axis, computed at run time, must be what the graph was
    compiled for (its shape rests on an assumption there)."""
    op: str
    node: str
    axis: int
    start: Any
    end: Any
    step: int
    dim: Dim
    begin: Dim
    count: Dim


@dataclass(frozen=True)
class Step:
    """One IR node: the guards checked before it (outside its timing), then its launches and in-line checks."""
    op: str
    node: str
    guards: tuple  # AssumptionGuard
    body: tuple  # Launch | SliceGuard, in order (empty for views: nothing runs)

    @property
    def launches(self) -> tuple:
        return tuple(x for x in self.body if isinstance(x, Launch))


def profiled(steps) -> list[Step]:
    """The steps that run code, in program order: the entries `tcc run --profile` times and names."""
    return [s for s in steps if s.body]
