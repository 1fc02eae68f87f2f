"""Argument parsing shared by the commands: NAME=N lists, .npy inputs, the quantization, shape and
verify options, and small output helpers."""
from __future__ import annotations

import json
import os
import sys

from ..errors import TccError


def kv_ints(items, what: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items or []:
        name, sep, val = item.partition("=")
        if not sep or not name:
            raise TccError(f"{what} expects NAME=N, got {item!r}")
        try:
            out[name] = int(val)
        except ValueError:
            raise TccError(f"{what} {name}: {val!r} is not an integer") from None
        if out[name] < 1:
            raise TccError(f"{what} {name}: must be at least 1, got {out[name]}")
    return out


def read_feeds(items) -> dict:
    feeds = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise TccError(f"--input expects NAME=FILE.npy, got {item!r}")
        feeds[name] = read_npy(path, f"input {name!r}")
    return feeds


def _npy_header(f):
    """(shape, fortran_order, dtype) of an open .npy file, after its magic."""
    from numpy.lib import format as npy

    version = npy.read_magic(f)
    if version == (1, 0):
        return npy.read_array_header_1_0(f)
    if version == (2, 0):
        return npy.read_array_header_2_0(f)
    try:
        from numpy.lib._format_impl import _read_array_header  # numpy 2 (format 3.0: utf-8 field names)
    except ImportError:
        from numpy.lib.format import _read_array_header
    return _read_array_header(f, version)


def read_npy(path: str, what: str):
    """A .npy file, or a one-line TccError naming it: missing, not a regular file (a FIFO or /dev/zero
    would block or never end: checked before opening), empty, truncated, a header whose shape needs more
    bytes than the file has, or a pickled object array."""
    import numpy as np

    from ..errors import RuntimeFeedError
    from ..frontend.side_files import check_file

    if not os.path.lexists(path):
        raise RuntimeFeedError(f"{what}: file {path} not found")
    try:
        size = check_file(path, sys.maxsize, f"{what}: {path}").st_size
    except TccError as e:
        raise RuntimeFeedError(str(e)) from None
    if size == 0:
        raise RuntimeFeedError(f"{what}: {path} is empty, not a .npy file")
    try:
        with open(path, "rb") as f:
            shape, _, dtype = _npy_header(f)
            data_bytes = size - f.tell()
    except OSError as e:
        raise RuntimeFeedError(f"{what}: cannot read {path}: {e.strerror or e}") from None
    except (ValueError, EOFError, SyntaxError, TypeError) as e:
        raise RuntimeFeedError(f"{what}: {path} is not a .npy file ({_first_line(e)})") from None
    if dtype.hasobject:
        raise RuntimeFeedError(f"{what}: {path} holds Python objects (a pickled {dtype} array), not numbers")
    need = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if need > data_bytes:
        raise RuntimeFeedError(f"{what}: {path} is truncated: its header says {dtype}{list(shape)} "
                               f"({need} bytes), the file has {data_bytes} bytes of data")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise RuntimeFeedError(f"{what}: {path} is not a readable .npy file ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def add_quant_args(p) -> None:
    import argparse

    from ..driver import QUANT_METHODS
    from ..passes.schemes import SCHEMES

    p.add_argument("--qm", default=None, choices=tuple(SCHEMES),
                   help="quantization (default: the target's baseline, fp32 on the CPUs, fp16 on cuda): "
                   + "; ".join(f"{s.name}: {s.summary}" for s in SCHEMES.values()))
    p.add_argument("--group-size", type=int, metavar="N", help="int4 weight group size along K (default: the "
                   "target's: 32 on the CPUs, 128 on cuda); a multiple of 32")
    p.add_argument("--asym", action="store_true", help="int4 weights with zero points (default: symmetric)")
    p.add_argument("--keep-fp32", metavar="PATTERNS", help="comma-separated Linear layers to leave in fp32: "
                   "fnmatch patterns on node or weight names, or lm_head")
    p.add_argument("--calib", metavar="FILE", help="calibration data for AWQ / SmoothQuant / GPTQ: a text file "
                   "(tokenized with the model's tokenizer) or an .npz of inputs [samples, ...]")
    p.add_argument("--calib-samples", type=int, default=16, metavar="N", help="calibration samples (16)")
    p.add_argument("--calib-seq-len", type=int, default=256, metavar="N", help="tokens per text sample (256)")
    p.add_argument("--quant-method", choices=QUANT_METHODS, metavar="METHOD",
                   help="how the weights are rounded: " + " | ".join(QUANT_METHODS) + " (rtn: to nearest; awq / "
                   "smoothquant: the scheme's rescaling (int4 / w8a8), then to nearest; gptq: error-compensating "
                   "rounding on the calibration data; awq+gptq / smoothquant+gptq: both). Default: the scheme's "
                   "rescaling with --calib, else rtn")
    p.add_argument("--awq-clip", action=argparse.BooleanOptionalAction, default=None,
                   help="AWQ's weight-clipping search (slower compile; default: off)")
    p.add_argument("--budget-bits", metavar="B", help="4-bit schemes: average bits per weight (scales included, "
                   "e.g. 4.6) within which the layers that gain most (measured on --calib data, else by weight "
                   "error) get 8-bit weights; 'pure': every layer 4-bit (default: the embedding and LM head at 8 bits)")


def quant_options(args) -> dict:
    keep = tuple(p.strip() for p in (args.keep_fp32 or "").split(",") if p.strip())
    return dict(group_size=args.group_size, asym=args.asym, keep_fp32=keep, calib=args.calib,
                calib_samples=args.calib_samples, calib_seq_len=args.calib_seq_len, awq_clip=args.awq_clip,
                quant_method=args.quant_method, budget_bits=budget_arg(getattr(args, "budget_bits", None)))


def budget_arg(text: str | None) -> float | str | None:
    """--budget-bits B: a number of bits per weight, or 'pure' (a one-line error otherwise)."""
    from ..passes.bit_allocation import PURE, check_budget

    if text is None or text.strip() == PURE:
        return None if text is None else PURE
    return check_budget(text.strip())


def add_verify_arg(p) -> None:
    p.add_argument("--no-verify", action="store_true", help="check the artifact's file sizes only, not their "
                   "SHA-256 (faster to start with huge weights; damage is then not detected)")


def add_cuda_graph_arg(p) -> None:
    p.add_argument("--no-cuda-graph", action="store_true",
                   help="CUDA artifacts: run every decode step's launches directly instead of replaying a captured "
                        "CUDA graph (for debugging; the cuda-graph flag, TCC_CUDA_GRAPH=0)")


def add_shape_args(p) -> None:
    p.add_argument("--max-dim", action="append", metavar="NAME=N",
                   help="upper bound of a dynamic dim (default 256; '*=N' sets every one)")
    p.add_argument("--dim", action="append", metavar="NAME=N", help="fix a dynamic dim to N")


def mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def write_json(path: str | None, data) -> None:
    if not path:
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def artifact_manifest(path: str) -> dict | None:
    try:
        with open(os.path.join(path, "manifest.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None  # load() says what is wrong with the artifact


def simt_emulation(args) -> bool:
    """`--emulate` on an artifact with a SIMT emulation build (cuda): it runs in this process."""
    from ..backends import emulated_in_process

    manifest = artifact_manifest(args.artifact)
    return bool(getattr(args, "emulate", False) and manifest and emulated_in_process(manifest))


def foreign_target_of(args) -> str | None:
    """Why the artifact cannot run on this host (None: it can)."""
    from ..backends import foreign_target

    manifest = artifact_manifest(args.artifact)
    return foreign_target(manifest.get("target", "x86")) if manifest else None
