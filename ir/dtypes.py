"""Element types of IR tensors, with their numpy and C spellings.

bf16 (bfloat16) is numpy's through ml_dtypes (an onnx dependency), imported when first needed. It is a
storage type of imported weights only: the importer widens a bf16 model's activations to f32 and its weights
are quantized from bf16 or converted (frontend/onnx_import.py); no backend computes in it."""
from __future__ import annotations

import enum

import numpy as np


class DType(enum.Enum):
    f32 = "f32"
    f16 = "f16"
    bf16 = "bf16"
    f64 = "f64"
    i64 = "i64"
    i32 = "i32"
    i8 = "i8"
    u8 = "u8"
    bool = "bool"

    @property
    def np(self) -> np.dtype:
        if self is DType.bf16:
            return _bfloat16()
        return np.dtype(_NUMPY[self])

    @property
    def itemsize(self) -> int:
        return self.np.itemsize

    @property
    def ctype(self) -> str:
        return _CTYPE[self]

    @property
    def is_float(self) -> bool:
        return self in (DType.f32, DType.f16, DType.bf16, DType.f64)

    @property
    def is_int(self) -> bool:
        return self in (DType.i64, DType.i32, DType.i8, DType.u8)

    @staticmethod
    def from_numpy(dt) -> "DType":
        dt = np.dtype(dt)
        for d, name in _NUMPY.items():
            if (dt.name == name) if d is DType.bf16 else np.dtype(name) == dt:
                return d
        raise KeyError(f"no tcc dtype for numpy dtype {dt}")

    def __str__(self) -> str:
        return self.value


_NUMPY = {DType.f32: "float32", DType.f16: "float16", DType.bf16: "bfloat16", DType.f64: "float64",
          DType.i64: "int64", DType.i32: "int32", DType.i8: "int8", DType.u8: "uint8", DType.bool: "bool"}
_CTYPE = {DType.f32: "float", DType.f16: "uint16_t", DType.bf16: "uint16_t", DType.f64: "double",
          DType.i64: "int64_t", DType.i32: "int32_t", DType.i8: "int8_t", DType.u8: "uint8_t", DType.bool: "uint8_t"}


def _bfloat16() -> np.dtype:
    import ml_dtypes  # noqa: PLC0415  (only bf16 models need it)

    return np.dtype(ml_dtypes.bfloat16)


# dtypes the compiled CPU backends execute (f64 is interpreter-only for now; bf16 is widened at import).
COMPILED_DTYPES = frozenset({DType.f32, DType.f16, DType.i64, DType.i32, DType.i8, DType.u8, DType.bool})
