"""The Metal target: Apple GPUs (Apple7 family and newer: SIMD-groups of 32, simdgroup_matrix), kernels in
Metal Shading Language.

The network runs in fp16 (Capabilities.activations: passes/float16.py converts the graph) with fp32
accumulation in the kernels. --qm fp16 is the baseline; w4a16 is AWQ int4 weights with fp16 activations and
w4a32 the same weights with f32 activations (TinyChatEngine's Metal schemes).

Status (issue 18): the kernels of backends/metal/kernels.py exist, are type-checked and run under the emulator;
the whole program (the macOS host program, the artifact's build recipe and its emulation build) does not exist
yet, so `tcc compile --target metal` refuses in one line saying so (`unfinished`).
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
    k_block: int = 1
    qm_refusals: tuple[tuple[str, str], ...] = (
        ("fp32", "the GPU program computes in fp16; --qm fp16 is its unquantized baseline"),
        ("w8a8", "no int8-activation kernels for Metal; --qm w4a16 or w4a32 are the quantized schemes"),
        ("w4a8", "no int8-activation kernels for Metal; --qm w4a16 or w4a32 are the quantized schemes"),
    )
    alignment: int = 256  # every planned buffer starts on it (Metal buffer offsets for setBuffer: 256 is safe)
    device: str = "metal"
    emulation: str = "simt"
    toolchain_hint: str = "on macOS install Xcode (xcrun metal, metallib); on Linux the artifact runs with --emulate"
    # What is missing before an artifact can be built (None once the whole program works).
    unfinished: str | None = ("the Metal backend has its kernels but not yet the whole program (the macOS host "
                              "program and the artifact's emulation build, issue 18)")

    def capabilities(self):
        """fp16 arithmetic is native and every family has fp16 kernels; the network computes in fp16."""
        from .. import Capabilities

        return Capabilities(frozenset(), True, frozenset(), self.alignment, self.vector_bytes, "f16", False)


TARGET = Target()
