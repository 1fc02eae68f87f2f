"""The aarch64 target: an armv8-a baseline with NEON, plus dotprod / i8mm / fp16 found at run time.

Every armv8-a CPU has NEON (AdvSIMD), so NEON kernels need no check. The Armv8.2+ extensions the kernels
use are optional: dotprod (`sdot`, `vdotq_s32`), i8mm (`smmla`, `vmmlaq_s32`) and fp16 arithmetic. The
kernels compile those paths with a GCC `target` attribute and choose one per call from the CPU's HWCAPs
(`runtime/tcc_arm.h`: getauxval(AT_HWCAP / AT_HWCAP2)), so one artifact runs on a Cortex-A53 (no dotprod)
and uses `sdot` on a Cortex-A76. `--cpu NAME` raises the baseline (-mcpu=NAME): the features that CPU
always has are then compiled in unconditionally and their run-time checks fold away.

Built on an x86 host, the artifact is cross-compiled with `aarch64-linux-gnu-g++` (the CMake toolchain
file beside this module) and can run under `qemu-aarch64` (`tcc run --emulate`); on an aarch64 host it
builds natively. Flags as on x86 (see backends/x86/target.py): no -ffast-math, -fno-math-errno,
-fno-semantic-interposition.
"""
from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass

from ...errors import TccError

HERE = os.path.dirname(os.path.abspath(__file__))
TOOLCHAIN_FILE = os.path.join(HERE, "aarch64-linux-gnu.cmake")
CROSS_CXX = "aarch64-linux-gnu-g++"
QEMU = "qemu-aarch64"
SYSROOT = "/usr/aarch64-linux-gnu"  # Debian's cross libc (package libc6-dev-arm64-cross)
MACHINES = ("aarch64", "arm64")

# The optional features each --cpu has for certain (GCC -mcpu names). Everything else is detected at
# run time; a CPU missing here can still be named with --cpu if GCC knows it (its features are then
# treated as unknown, i.e. detected at run time).
CPU_FEATURES: dict[str, tuple[str, ...]] = {
    "generic": (),
    "cortex-a53": (), "cortex-a72": (), "cortex-a73": (),
    "cortex-a55": ("dotprod", "fp16"), "cortex-a75": ("dotprod", "fp16"), "cortex-a76": ("dotprod", "fp16"),
    "cortex-a77": ("dotprod", "fp16"), "cortex-a78": ("dotprod", "fp16"), "neoverse-n1": ("dotprod", "fp16"),
    "cortex-x1": ("dotprod", "fp16"),
    "neoverse-v1": ("dotprod", "fp16", "i8mm"), "neoverse-n2": ("dotprod", "fp16", "i8mm"),
    "cortex-a710": ("dotprod", "fp16", "i8mm"), "cortex-x2": ("dotprod", "fp16", "i8mm"),
}
OPTIONAL_FEATURES = ("dotprod", "i8mm", "fp16")


from .. import CPU_FP16_REFUSAL


@dataclass(frozen=True)
class Target:
    name: str
    cxx_flags: tuple[str, ...]
    features: tuple[str, ...]  # optional features every CPU this artifact runs on has (others: at run time)
    cmake_toolchain: str | None = None  # set when cross-compiling from another architecture
    variants: tuple[str, ...] = ("neon", "scalar")
    vector_bytes: int = 16
    cache_line: int = 64
    qms: tuple[str, ...] = ("fp32", "w8a8", "w4a32", "w4a8", "w4a16")
    default_group_size: int = 32
    # The q4 K block: 32 codes of a column in one 16-byte vector (docs/arm.md); activations pad to it.
    k_block: int = 32
    qm_refusals: tuple[tuple[str, str], ...] = (CPU_FP16_REFUSAL,)
    cpu: str = "generic"
    machine: str = "aarch64"
    emulator: tuple[str, ...] = (QEMU, "-L", SYSROOT)  # runs the artifact's binaries on another host
    cross_cxx: str | None = None  # the cross compiler the toolchain file uses (None: native build)
    toolchain_hint: str = "apt-get install g++-aarch64-linux-gnu qemu-user"
    static_executables: bool = True  # `run` / `chat` copy to any aarch64 Linux (a Raspberry Pi) as they are
    alignment: int = 64  # bytes: planned buffers and weights (a cache line)
    # Whether the qgather kernels read a table from a quantized Linear's packed weights (QGather layout
    # "linear"), so a tied embedding and LM head are stored once (passes/tie_tables.py).
    tied_tables: bool = True

    def capabilities(self):
        """What generic code may assume of this target (backends.Capabilities): the CPU facts. The fp16
        extension serves the w4a16 kernels only (they select it at run time); other f16 arithmetic still
        runs in f32, as on x86."""
        from .. import cpu_capabilities

        return cpu_capabilities(self.vector_bytes, self.alignment)


def host_is_arm() -> bool:
    return platform.machine().lower() in MACHINES


def make_target(cpu: str | None = None, native: bool | None = None) -> Target:
    """The target for `--cpu cpu` (None: the armv8-a baseline). `native`: build on this (aarch64) host
    without the cross toolchain (default: when this host is aarch64)."""
    native = host_is_arm() if native is None else native
    cpu = cpu or "generic"
    if cpu == "native":
        if not native:
            raise TccError("--cpu native needs an aarch64 host (this one is "
                           f"{platform.machine()}); name a CPU, e.g. --cpu cortex-a76")
        march, features = ("-mcpu=native",), ()
    elif cpu == "generic":
        march, features = ("-march=armv8-a",), ()
    elif cpu in CPU_FEATURES:
        march, features = (f"-mcpu={cpu}",), CPU_FEATURES[cpu]
    else:
        raise TccError(f"--cpu {cpu}: unknown arm CPU; known: native, {', '.join(CPU_FEATURES)}")
    flags = (*march, "-O3", "-fno-math-errno", "-fno-semantic-interposition")
    return Target(name="arm", cxx_flags=flags, features=features, cpu=cpu,
                  cmake_toolchain=None if native else TOOLCHAIN_FILE, cross_cxx=None if native else CROSS_CXX)


TARGET = make_target()


def cross_toolchain_missing() -> str | None:
    """Why this host cannot cross-build and emulate arm artifacts (None: it can)."""
    if host_is_arm():
        return None
    missing = [p for p in (CROSS_CXX, QEMU) if shutil.which(p) is None]
    if missing:
        return (f"{' and '.join(missing)} not found: apt-get install g++-aarch64-linux-gnu qemu-user")
    return None
