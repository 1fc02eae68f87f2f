"""Metal kernel sources: the signature check and the emulation entries of a rendered .metal file.

A host compiler ignores the attributes of a kernel's parameters (`[[buffer(0)]]`, `[[thread_position_in_grid]]`),
so the code generator reads them itself: `finish_source` parses every `kernel void name(...)` of a rendered
template, checks each parameter as Apple's compiler would (an address-space qualified pointer or reference for a
buffer, a threadgroup pointer for threadgroup memory, a known built-in of a legal type; indices unique and in
[0, 31)), and writes for each kernel the entry the SIMT emulator calls per thread (`name__simt`): it reads the
dispatch's bindings by index and the calling thread's built-ins, as the Metal runtime binds them on the GPU
(runtime/simt/metal_bridge.cpp). The entries are derived from the signature only: nothing kernel-specific.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# MSL attribute -> the emulator's built-in (runtime/simt/tcc_simt_metal.h: tcc_msl_simt::Builtin) and the
# types a kernel may declare it with.
_VEC = ("uint", "ushort", "uint2", "ushort2", "uint3", "ushort3")
_SCALAR = ("uint", "ushort")
BUILTINS = {
    "thread_position_in_grid": ("kThreadPositionInGrid", _VEC),
    "thread_position_in_threadgroup": ("kThreadPositionInThreadgroup", _VEC),
    "threadgroup_position_in_grid": ("kThreadgroupPositionInGrid", _VEC),
    "threads_per_threadgroup": ("kThreadsPerThreadgroup", _VEC),
    "threadgroups_per_grid": ("kThreadgroupsPerGrid", _VEC),
    "threads_per_grid": ("kThreadsPerGrid", _VEC),
    "dispatch_threads_per_threadgroup": ("kDispatchThreadsPerThreadgroup", _VEC),
    "thread_index_in_threadgroup": ("kThreadIndexInThreadgroup", _SCALAR),
    "simdgroup_index_in_threadgroup": ("kSimdgroupIndexInThreadgroup", _SCALAR),
    "thread_index_in_simdgroup": ("kThreadIndexInSimdgroup", _SCALAR),
    "threads_per_simdgroup": ("kThreadsPerSimdgroup", _SCALAR),
    "simdgroups_per_threadgroup": ("kSimdgroupsPerThreadgroup", _SCALAR),
}
SLOTS = 31

_KERNEL = re.compile(r"\bkernel\s+void\s+(\w+)\s*\(")
_PARAM = re.compile(r"^(?P<type>.+?)\s*\b(?P<name>\w+)\s*\[\[\s*(?P<attr>\w+)\s*(?:\(\s*(?P<index>\d+)\s*\))?\s*\]\]$",
                    re.S)


class MslError(ValueError):
    """A kernel signature Apple's compiler would reject (a template bug)."""


@dataclass(frozen=True)
class Param:
    type: str
    name: str
    attr: str
    index: int | None


def _split_params(text: str) -> list[str]:
    """Split at the top-level commas (not inside (), [], <>)."""
    out, depth, cur = [], 0, []
    for ch in text:
        if ch in "([<":
            depth += 1
        elif ch in ")]>":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur).strip())
    return out


def _params_text(source: str, start: int) -> str:
    """The text between the '(' at `start` - 1 and its matching ')'."""
    depth, i = 1, start
    while depth:
        if i >= len(source):
            raise MslError("unbalanced parentheses in a kernel signature")
        depth += {"(": 1, ")": -1}.get(source[i], 0)
        i += 1
    return source[start:i - 1]


def _check_param(kernel: str, p: Param) -> None:
    where = f"kernel {kernel}, parameter {p.name}"
    words = p.type.replace("*", " * ").replace("&", " & ").split()
    if p.attr == "buffer":
        if not ({"device", "constant"} & set(words)) or not ({"*", "&"} & set(words)):
            raise MslError(f"{where}: a [[buffer(n)]] is a device or constant pointer or reference, not {p.type!r}")
    elif p.attr == "threadgroup":
        if "threadgroup" not in words or "*" not in words:
            raise MslError(f"{where}: a [[threadgroup(n)]] is a threadgroup pointer, not {p.type!r}")
    elif p.attr in BUILTINS:
        if p.index is not None or p.type not in BUILTINS[p.attr][1]:
            raise MslError(f"{where}: [[{p.attr}]] is one of {', '.join(BUILTINS[p.attr][1])}, not {p.type!r}")
    else:
        raise MslError(f"{where}: unknown attribute [[{p.attr}]]")
    if p.attr in ("buffer", "threadgroup") and (p.index is None or not 0 <= p.index < SLOTS):
        raise MslError(f"{where}: [[{p.attr}(n)]] needs an index in [0, {SLOTS})")


def parse_kernels(source: str) -> dict[str, list[Param]]:
    """Every kernel of a .metal source with its checked parameters."""
    kernels: dict[str, list[Param]] = {}
    for m in _KERNEL.finditer(source):
        name = m.group(1)
        params = []
        for text in _split_params(_params_text(source, m.end())):
            pm = _PARAM.match(text)
            if pm is None:
                raise MslError(f"kernel {name}: parameter {text!r} has no [[attribute]]")
            idx = pm.group("index")
            p = Param(" ".join(pm.group("type").split()), pm.group("name"), pm.group("attr"),
                      int(idx) if idx is not None else None)
            _check_param(name, p)
            params.append(p)
        for attr in ("buffer", "threadgroup"):
            seen = [p.index for p in params if p.attr == attr]
            if len(seen) != len(set(seen)):
                raise MslError(f"kernel {name}: two parameters share a [[{attr}(n)]] index")
        builtins = [p.attr for p in params if p.attr in BUILTINS]
        if len(builtins) != len(set(builtins)):
            raise MslError(f"kernel {name}: a built-in attribute appears twice")
        if name in kernels:
            raise MslError(f"kernel {name} defined twice")
        kernels[name] = params
    if re.search(r"\bthreadgroup\s+[\w:<>, ]+\s+\w+\s*\[", source):
        raise MslError("threadgroup arrays are declared as kernel arguments ([[threadgroup(n)]]), so the emulator "
                       "can give each threadgroup its own")
    return kernels


def _argument(p: Param) -> str:
    if p.attr == "buffer":
        ptr = p.type[:-1].rstrip() + "*" if p.type.endswith("&") else p.type
        value = f'({ptr})tcc_msl_simt::buffer(d, {p.index}, "{p.name}")'
        return "*" + value if p.type.endswith("&") else value
    if p.attr == "threadgroup":
        return f'({p.type})tcc_msl_simt::threadgroup_memory(d, {p.index}, "{p.name}")'
    return f"tcc_msl_simt::builtin_as<{p.type}>(tcc_msl_simt::{BUILTINS[p.attr][0]})"


def entries(kernels: dict[str, list[Param]]) -> tuple[str, str]:
    """(forward declarations, definitions) of the emulation entries, each block guarded by TCC_SIMT."""
    if not kernels:
        return "", ""
    decls = "".join(f"static void {k}__simt(void* d);\n" for k in kernels)
    defs = []
    for k, params in kernels.items():
        args = ",\n      ".join(_argument(p) for p in params)
        defs.append(f"static void {k}__simt(void* d) {{\n  (void)d;\n  {k}(\n      {args});\n}}\n")
    guard = "#if defined(TCC_SIMT)  // the emulator's per-thread entries (backends/metal/msl.py)\n{}#endif\n"
    return guard.format(decls), guard.format("".join(defs))


def finish_source(header: str, include: str, signature: str | None, body: str) -> str:
    """The .metal file of one kernel spec: the include, the launcher's prototype (host code only), the entry
    declarations, the template's text, the entries. [[threadgroup(n)]] is spelled through a macro of
    runtime/metal/tcc_metal.h (`threadgroup` itself is an empty qualifier on host compilers)."""
    decls, defs = entries(parse_kernels(body))
    body = re.sub(r"\[\[\s*threadgroup\s*\(", "[[TCC_MSL_ATTR_THREADGROUP(", body)
    proto = f'#if TCC_METAL_HOST_CODE\nextern "C" {signature};\n#endif\n' if signature else ""
    return header + f'#include "{include}"\n\n' + proto + decls + "\n" + body + ("\n" + defs if defs else "")
