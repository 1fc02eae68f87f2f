"""The CUDA target: NVIDIA GPUs from Ampere (sm_80) on, kernels in CUDA C++ built by nvcc.

The network runs in fp16 (Capabilities.activations: passes/float16.py converts the graph), with fp32
accumulation inside the kernels. --qm fp16 is the baseline; w4a16 is TinyChat's AWQ int4 weights with fp16
activations (group 128 by default, as TinyChat and TensorRT-LLM). The artifact's code is built for the
architectures in --cuda-arch (SASS for each, plus PTX of the newest so a newer GPU can JIT it); on a host
without a GPU it runs through the CPU SIMT emulator (`tcc run --emulate`, docs/cuda.md).
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass

from ...errors import TccError

DEFAULT_ARCHS = ("sm_80", "sm_90")
NVCC_HINT = "install the CUDA toolkit (nvcc) or put it on PATH"


@dataclass(frozen=True)
class Target:
    name: str = "cuda"
    archs: tuple[str, ...] = DEFAULT_ARCHS  # sm_XY, or ("native",)
    nvcc_flags: tuple[str, ...] = ("-O3", "-lineinfo")  # no fast math: NaN and inf mean something in a model
    cxx_flags: tuple[str, ...] = ("-O2", "-fno-math-errno")  # the host code (and the emulator build)
    features: tuple[str, ...] = ()
    cmake_toolchain: str | None = None
    variants: tuple[str, ...] = ("cuda",)
    vector_bytes: int = 16  # 128-bit loads
    cache_line: int = 128
    qms: tuple[str, ...] = ("fp16", "w4a16")
    default_qm: str = "fp16"
    default_group_size: int = 128
    tied_tables: bool = False  # qgather reads its own row tables only (passes/tie_tables.py)
    k_block: int = 1
    qm_refusals: tuple[tuple[str, str], ...] = (
        ("fp32", "the GPU program computes in fp16; --qm fp16 is its unquantized baseline"),
        ("w4a32", "fp32 activations double the GPU's activation traffic; --qm w4a16 is the int4 scheme"),
        ("w8a8", "no int8-activation kernels for CUDA yet; --qm w4a16 is the quantized scheme"),
        ("w4a8", "no int8-activation kernels for CUDA yet; --qm w4a16 is the quantized scheme"),
    )
    alignment: int = 256  # cudaMalloc's alignment; every planned buffer starts on it
    device: str = "cuda"  # the runtime device library (runtime/device_<device>.*)
    emulation: str = "simt"  # the artifact is also built for the CPU SIMT emulator (`--emulate`)
    toolchain_hint: str = NVCC_HINT
    # Why tcc_exec_create can fail, as the loader says it.
    exec_failure: str = ("no usable NVIDIA GPU (run a CUDA artifact on a host without one with `tcc run --emulate`)")

    def capabilities(self):
        """fp16 arithmetic is native and every family has fp16 kernels; the network computes in fp16."""
        from .. import Capabilities

        return Capabilities(frozenset(), True, frozenset(), self.alignment, self.vector_bytes, "f16", False)

    def gencode_flags(self) -> list[str]:
        """nvcc -gencode flags: SASS for each architecture, plus PTX for the newest (forward compatible)."""
        if self.archs == ("native",):
            return ["-arch=native"]
        nums = [a[len("sm_"):] for a in self.archs]
        flags = [f"-gencode=arch=compute_{n},code=sm_{n}" for n in nums]
        newest = max(nums, key=lambda n: (int(re.match(r"\d+", n).group()), n))
        return flags + [f"-gencode=arch=compute_{newest},code=compute_{newest}"]


def parse_archs(text: str | None) -> tuple[str, ...]:
    """--cuda-arch: comma-separated sm_XY (XY >= 80: the kernels use Ampere's mma.sync and cp.async), or native."""
    if not text:
        return DEFAULT_ARCHS
    archs = tuple(a.strip() for a in text.split(",") if a.strip())
    if archs == ("native",):
        return archs
    for a in archs:
        m = re.fullmatch(r"sm_(\d+)a?", a)
        if m is None:
            raise TccError(f"--cuda-arch {a!r}: expected sm_XY (e.g. sm_80, sm_90) or native")
        if int(m.group(1)) < 80:
            raise TccError(f"--cuda-arch {a}: tcc's CUDA kernels need sm_80 or newer (mma.sync m16n8k16, cp.async)")
    return tuple(dict.fromkeys(archs))


def make_target(archs: str | None = None) -> Target:
    return Target(archs=parse_archs(archs))


def find_nvcc() -> str | None:
    """The nvcc to build with: the flag `nvcc` (TCC_NVCC), else nvcc on PATH, else the toolkit's default place."""
    from ... import flags

    explicit = flags.get("nvcc")
    if explicit:  # the user's choice, or nothing: never another nvcc in its place
        return shutil.which(explicit)
    return shutil.which("nvcc") or shutil.which("/usr/local/cuda/bin/nvcc")


TARGET = Target()


def gpu_missing() -> str | None:
    """Why this host cannot run a CUDA artifact (None when the driver sees at least one GPU)."""
    import ctypes

    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "this host has no NVIDIA driver (libcuda.so.1 not found)"
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return "this host has no usable NVIDIA GPU"
    return None
