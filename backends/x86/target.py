"""The x86-64 target: AVX2 + FMA (+ F16C) code generation flags and a host capability check.

No -ffast-math: models rely on NaN/inf semantics (masked attention uses -inf, max/min propagate NaN),
and -ffast-math lets the compiler assume neither exists. -fno-math-errno only stops libm calls from
setting errno, which lets sqrt/floor inline to single instructions. -fno-semantic-interposition lets
calls inside a -fPIC shared library go direct instead of through the PLT.
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import CPU_FP16_REFUSAL


@dataclass(frozen=True)
class Target:
    name: str
    cxx_flags: tuple[str, ...]
    features: tuple[str, ...]
    cmake_toolchain: str | None = None
    # Kernel variants this target may select, fastest first (see backends/<name>/kernels.py).
    variants: tuple[str, ...] = ("scalar",)
    vector_bytes: int = 16
    cache_line: int = 64
    # Quantization: the --qm schemes this target runs (passes/schemes.py), the default --group-size, and
    # the K block its packed weights use (quantized activations are padded to it).
    qms: tuple[str, ...] = ("fp32",)
    default_group_size: int = 32
    k_block: int = 1
    # Why a scheme the target lacks cannot run (shown in the error), by scheme name.
    qm_refusals: tuple[tuple[str, str], ...] = ()
    alignment: int = 64  # bytes: planned buffers and weights (a cache line; the widest vector load)
    # Whether the qgather kernels read a table from a quantized Linear's packed weights (QGather layout
    # "linear"), so a tied embedding and LM head are stored once (passes/tie_tables.py).
    tied_tables: bool = True

    def capabilities(self):
        """What generic code may assume of this target (backends.Capabilities): the CPU facts."""
        from .. import cpu_capabilities

        return cpu_capabilities(self.vector_bytes, self.alignment)


TARGET = Target(
    name="x86",
    cxx_flags=("-O3", "-mavx2", "-mfma", "-mf16c", "-fno-math-errno", "-fno-semantic-interposition"),
    features=("avx2", "fma", "f16c"),
    cmake_toolchain=None,
    variants=("avx2", "scalar"),
    vector_bytes=32,
    qms=("fp32", "w8a8", "w4a32", "w4a8"),
    default_group_size=32,
    k_block=64,
    qm_refusals=(CPU_FP16_REFUSAL, ("w4a16", "fp16 activations need fp16 arithmetic, which x86 CPUs without AVX512-FP16 lack; "
                           "--target arm runs it"),),
)

_CPUINFO = "/proc/cpuinfo"


def cpu_flags(cpuinfo: str = _CPUINFO) -> set[str]:
    """The feature flags of the first CPU listed in /proc/cpuinfo (empty if unreadable)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def host_supports(target: Target = TARGET, cpuinfo: str = _CPUINFO) -> tuple[bool, str]:
    """Whether this machine can run code built for `target`: (True, "") or (False, reason)."""
    flags = cpu_flags(cpuinfo)
    if not flags:
        return False, f"cannot read CPU flags from {cpuinfo}"
    missing = [f for f in target.features if f not in flags]
    if missing:
        return False, f"host CPU lacks {', '.join(missing)} (the {target.name} target needs {', '.join(target.features)})"
    return True, ""
