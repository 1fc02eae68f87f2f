"""The Metal target: Apple GPUs (Apple7 family and newer: SIMD-groups of 32, simdgroup_matrix), kernels in
Metal Shading Language.

The network runs in fp16 (Capabilities.activations: passes/float16.py converts the graph) with fp32
accumulation in the kernels. --qm fp16 is the baseline; w4a16 is AWQ int4 weights with fp16 activations and
w4a32 the same weights with f32 activations (TinyChatEngine's Metal schemes).

An artifact compiled on Linux holds the generated .metal sources, the macOS host program's sources and its
build recipe (unverified on hardware: docs/metal.md), and the emulation build (`tcc run --emulate`), which is
the only one built here.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    name: str = "metal"
    features: tuple[str, ...] = ()
    variants: tuple[str, ...] = ("metal",)
    vector_bytes: int = 16
    cache_line: int = 128
    qms: tuple[str, ...] = ("fp16", "w4a16", "w4a32")
    default_qm: str = "fp16"
    default_group_size: int = 128
    tied_tables: bool = False  # qgather reads its own row tables only (passes/tie_tables.py)
    k_block: int = 1
    qm_refusals: tuple[tuple[str, str], ...] = (
        ("fp32", "the GPU program computes in fp16; --qm fp16 is its unquantized baseline"),
        ("w8a8", "no int8-activation kernels for Metal; --qm w4a16 or w4a32 are the quantized schemes"),
        ("w4a8", "no int8-activation kernels for Metal; --qm w4a16 or w4a32 are the quantized schemes"),
    )
    alignment: int = 256  # every planned buffer starts on it (Metal buffer offsets for setBuffer: 256 is safe)
    # The emulation build (g++): MSL's char is signed, as on x86 but not on aarch64 hosts.
    cxx_flags: tuple[str, ...] = ("-O2", "-fno-math-errno", "-Wno-attributes", "-fsigned-char")
    cmake_toolchain: str | None = None
    device: str = "metal"
    emulation: str = "simt"
    # The macOS program (xcrun metal, Objective-C++) cannot be built on Linux: the artifact holds its sources
    # and recipe, and only the emulation build is built here.
    builds_here: bool = False
    toolchain_hint: str = "on macOS install Xcode (xcrun metal, metallib); on Linux the artifact runs with --emulate"
    # Why tcc_exec_create fails, as the loader says it.
    exec_failure: str = "no Metal device (run a Metal artifact elsewhere than on a Mac with `tcc run --emulate`)"

    def activations_for(self, qm: str) -> str:
        """w4a32 keeps the network in f32 (its point: f32 activations); the others compute in fp16."""
        return "f32" if qm == "w4a32" else "f16"

    def capabilities(self):
        """fp16 arithmetic is native and every family has fp16 kernels; the network computes in fp16."""
        from .. import Capabilities

        return Capabilities(frozenset(), True, frozenset(), self.alignment, self.vector_bytes, "f16", False)


TARGET = Target()


def metal_missing() -> str | None:
    """Why this host cannot run a Metal artifact's own program (None never yet: the macOS program is built on the
    Mac from the artifact's metal/ project, and tcc loads only the emulation build; docs/metal.md)."""
    import platform

    if platform.system() != "Darwin":
        return f"this host runs {platform.system()}, not macOS"
    return "tcc loads only its emulation build (build the macOS program from the artifact's metal/ project)"
