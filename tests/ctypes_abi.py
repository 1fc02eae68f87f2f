"""ctypes argument types for the kernels' C prototypes, shared by the kernel tests (tests/kernels) and the
CUDA harness (tests/cuda): every pointer is c_void_p, scalars map by their C type name."""
from __future__ import annotations

import ctypes
import re

C_TYPES = {
    "int64_t": ctypes.c_int64, "long long": ctypes.c_longlong, "int32_t": ctypes.c_int32, "int": ctypes.c_int,
    "uint32_t": ctypes.c_uint32, "unsigned": ctypes.c_uint, "unsigned int": ctypes.c_uint,
    "uint64_t": ctypes.c_uint64, "size_t": ctypes.c_size_t, "float": ctypes.c_float, "double": ctypes.c_double,
    "uint16_t": ctypes.c_uint16, "uint8_t": ctypes.c_uint8, "bool": ctypes.c_bool,
}


def param_argtypes(params: str) -> list:
    """ctypes argtypes for a C parameter list ("const float* x, int64_t n")."""
    types = []
    for param in filter(None, (p.strip() for p in params.split(","))):
        if param == "void":
            continue
        if "*" in param:
            types.append(ctypes.c_void_p)
            continue
        ctype = re.sub(r"\s+\w+$", "", param).replace("const ", "").strip()
        if ctype not in C_TYPES:
            raise TypeError(f"no ctypes mapping for parameter {param!r}")
        types.append(C_TYPES[ctype])
    return types


def argtypes_of(signature: str) -> list:
    """ctypes argtypes for a whole C prototype ("void f(const float* x, int64_t n)")."""
    return param_argtypes(signature[signature.index("(") + 1: signature.rindex(")")])
