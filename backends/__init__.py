"""Backends: one package per target holding its description, kernel list and selection, weight packing
and toolchain flags. Generic passes never test the target; they ask the backend."""
from __future__ import annotations

import importlib
import os
import inspect
import platform
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import TccError

TARGETS = ("x86", "arm", "cuda", "metal")


@dataclass(frozen=True)
class Capabilities:
    """What generic code asks of a backend instead of assuming a CPU: the passes (lower-ops), the planner
    (plan-memory) and lowering (codegen/lower) read these; a backend states its own in its target."""
    f32_only: frozenset  # kernel families that compute in f32 only: other float dtypes are refused at codegen
    f16_arithmetic: bool  # whether f16 arithmetic is native; False: lower-ops computes it in f32 between casts
    f16_data_ops: frozenset  # ops whose kernels take f16 data as it is (they move or convert elements)
    alignment: int = 64  # bytes: every planned buffer (arena offsets) and weight starts on this boundary
    vector_bytes: int = 16  # the widest vector the kernels use
    activations: str = "f32"  # the float type the network is computed in ("f16" on the GPUs: passes/float16.py)
    host_memory: bool = True  # whether device memory is host memory (False on a GPU: the program copies its io)

    def computes(self, family: str, dtype) -> bool:
        """Whether the `family` kernels compute in float dtype `dtype` (a DType)."""
        return dtype.name == "f32" or family not in self.f32_only

    def f16_in_f32(self, op: str) -> bool:
        """Whether an op on f16 tensors runs in f32 between casts (lower-ops inserts them)."""
        return not self.f16_arithmetic and op not in self.f16_data_ops


# The CPU backends' facts (x86 and arm share them): the attention/linear-algebra/normalization kernels are
# f32 kernels, and f16 arithmetic runs in f32 as CPU runtimes do (the result rounded once to f16, at least as
# accurate as native half arithmetic); copy and gather kernels work on element sizes, so f16 data moves as is.
CPU_F32_FAMILIES = frozenset({"gemm", "matmul", "attention", "kvattention", "softmax", "norm", "rope"})
CPU_F16_DATA_OPS = frozenset({"Cast", "Copy", "Transpose", "Slice", "Concat", "Split", "Gather", "GatherND",
                              "Expand", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Shape",
                              "ConstantOfShape", "Trilu"})


# Why a CPU target refuses --qm fp16 (its Target.qm_refusals).
CPU_FP16_REFUSAL = ("fp16", "the CPU targets compute in fp32 (an fp16 model is widened at import); --target cuda "
                            "computes in fp16")


def cpu_capabilities(vector_bytes: int = 16, alignment: int = 64) -> Capabilities:
    return Capabilities(CPU_F32_FAMILIES, False, CPU_F16_DATA_OPS, alignment, vector_bytes)


def capabilities(target) -> Capabilities:
    """The capabilities of a target description (backends/<name>/target.py); the CPU's for None (passes run
    without a target in target-independent tests)."""
    caps = getattr(target, "capabilities", None)
    return caps() if caps is not None else cpu_capabilities()


@dataclass(frozen=True)
class Backend:
    name: str
    target: Any  # the target description (flags, features, toolchain)
    select: Callable  # select(family, variant=None, **params) -> KernelSpec | None
    pack: Callable  # pack(kind, array) -> (layout name, packed array)
    variants: tuple  # every KernelSpec this backend can emit
    tuner: Any = None  # the module that measures kernels for --tune (backends/<target>/tuning.py), if any

    @property
    def caps(self) -> Capabilities:
        return capabilities(self.target)


# The machine (platform.machine()) each target's code runs on.
MACHINES = {"x86": ("x86_64", "amd64"), "arm": ("aarch64", "arm64")}


def get_backend(name: str, cpu: str | None = None, cuda_arch: str | None = None) -> Backend:
    """The backend of target `name`; `cpu` (--cpu) picks the CPU baseline where the target has a choice,
    `cuda_arch` (--cuda-arch) the GPU architectures of the cuda target."""
    if name not in TARGETS:
        raise TccError(f"unknown target {name!r}; known targets: {', '.join(TARGETS)}")
    module = importlib.import_module(f"{__package__}.{name}")
    make = getattr(module, "backend", None)
    if make is None:
        raise TccError(f"target {name!r} is not implemented yet; available now: x86, arm, cuda, metal")
    if cuda_arch is not None:
        if name != "cuda":
            raise TccError(f"--cuda-arch does not apply to target {name}")
        return make(cuda_arch)
    if cpu is None:
        return make()
    if "cpu" not in inspect.signature(make).parameters:
        raise TccError(f"--cpu does not apply to target {name} (it has one CPU baseline)")
    return make(cpu)


def foreign_target(name: str) -> str | None:
    """Why code built for target `name` cannot run natively on this host (None when it can)."""
    if name == "cuda":
        from .cuda.target import gpu_missing

        why = gpu_missing()
        return f"it was built for cuda and {why}" if why else None
    if name == "metal":
        from .metal.target import metal_missing

        why = metal_missing()
        return f"it was built for metal and {why}" if why else None
    host = platform.machine().lower()
    machines = MACHINES.get(name)
    if machines is None or host in machines:
        return None
    return f"it was built for {name} ({machines[0]}) and this host is {host}"


def emulated_in_process(manifest: dict) -> bool:
    """Whether `--emulate` runs the artifact in this process (a GPU artifact's SIMT emulation build) rather than
    its binaries under an emulator program (qemu for arm)."""
    return isinstance(manifest.get("emulation"), dict)


def _emulator(manifest: dict, cpu: str | None) -> list[str]:
    backend = get_backend(manifest.get("target", "x86"))
    emulator = list(getattr(backend.target, "emulator", ()) or ())
    if not emulator:
        raise TccError(f"target {backend.name} has no emulator to run its artifacts on this host")
    import shutil

    if shutil.which(emulator[0]) is None:
        raise TccError(f"{emulator[0]} not found (needed by --emulate): "
                       f"{getattr(backend.target, 'toolchain_hint', 'install it')}")
    return emulator[:1] + (["-cpu", cpu] if cpu else []) + emulator[1:]


def chat_emulated_command(artifact: str, manifest: dict, options: list[str], cpu: str | None = None) -> list[str]:
    """The command that runs an LLM artifact's standalone `chat` binary (built for another architecture)
    under the target's emulator with `options` (the binary's own flags: --prompt, --raw, --temperature,
    ...); stdin and stdout are the user's, so it chats interactively."""
    chat = os.path.join(artifact, manifest.get("binaries", {}).get("chat") or "chat")
    if not os.path.isfile(chat):
        raise TccError(f"{artifact} has no standalone chat binary (it is built for language models with a "
                       "tokenizer)")
    return _emulator(manifest, cpu) + [chat, artifact, *options]


def run_emulated(artifact: str, manifest: dict, feeds: dict, threads: int | None = None, repeat: int = 1,
                 cpu: str | None = None, timeout: float | None = None) -> tuple[dict, float]:
    """Run an artifact built for another architecture through its standalone `run` binary under the
    target's emulator (qemu-aarch64 for arm; `cpu` is the emulated CPU, e.g. cortex-a53). `feeds` maps
    input names to numpy arrays. Returns (outputs by name, best run time in ms as the binary measured it:
    emulated time, not a speed figure)."""
    import re
    import subprocess
    import tempfile

    import numpy as np

    run = os.path.join(artifact, manifest.get("binaries", {}).get("run", "run"))
    if not os.path.isfile(run):
        raise TccError(f"{artifact} has no standalone run binary")
    cmd = _emulator(manifest, cpu) + [run]
    with tempfile.TemporaryDirectory(prefix="tcc-emulate-") as tmp:
        for name, arr in feeds.items():
            path = os.path.join(tmp, f"in{len(cmd)}.npy")
            arr = np.asarray(arr)
            np.save(path, np.ascontiguousarray(arr).reshape(arr.shape))  # ascontiguousarray: 0-d -> 1-d
            cmd.append(f"{name}={path}")
        cmd += ["-o", tmp, "--repeat", str(max(repeat, 1))]
        if threads:
            cmd += ["--threads", str(threads)]
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TccError(f"emulated run of {artifact} timed out after {timeout} s") from None
        if proc.returncode != 0:
            err = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
            raise TccError(f"emulated run of {artifact} failed: {err}")
        outputs = {}
        for o in manifest["outputs"]:
            fname = re.sub(r"[/\\:]", "_", o["name"]) + ".npy"
            outputs[o["name"]] = np.load(os.path.join(tmp, fname))
        m = re.search(r"time: ([0-9.]+) ms", proc.stdout)
        return outputs, float(m.group(1)) if m else float("nan")
