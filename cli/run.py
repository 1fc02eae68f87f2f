"""`tcc run`: a compiled artifact on .npy (or random) inputs, timed, optionally profiled per node."""
from __future__ import annotations

import os
import sys
import time

from .. import flags
from ..errors import TccError
from .args import (add_cuda_graph_arg, add_verify_arg, artifact_manifest, foreign_target_of, kv_ints, read_feeds,
                   simt_emulation)


def _run_emulated(args):
    """`tcc run --emulate`: the artifact's `run` binary under the target's emulator (qemu-aarch64)."""
    from types import SimpleNamespace

    from ..backends import run_emulated
    from ..runtime.artifact import verify
    from ..runtime.session import _check_manifest_fields, _info, _read_manifest

    if args.profile:
        raise TccError("--profile is not available with --emulate (it times the kernels through the library)")
    manifest = _read_manifest(os.path.abspath(args.artifact))
    _check_manifest_fields(manifest, os.path.abspath(args.artifact))
    verify(os.path.abspath(args.artifact), manifest, hashes=flags.get("verify"))
    feeds = read_feeds(args.input)
    if args.random:
        infos = SimpleNamespace(inputs=[_info(d) for d in manifest["inputs"]])
        feeds = {**random_feeds(infos, kv_ints(args.dim, "--dim"), args.seed), **feeds}
    cpu = f" -cpu {args.emulate_cpu}" if args.emulate_cpu else ""
    print(f"tcc: running the {manifest.get('target')} artifact under emulation (qemu{cpu}); its time is not a "
          "speed figure", file=sys.stderr, flush=True)
    return run_emulated(args.artifact, manifest, feeds, args.threads, args.repeat, args.emulate_cpu)


def cmd_run(args) -> int:
    import numpy as np

    from ..runtime.generate import check_threads
    from ..runtime.session import load

    if args.repeat < 1:
        raise TccError(f"--repeat must be at least 1, got {args.repeat}")
    check_threads(args.threads, cli=True)
    _output_dir(args.output_dir)  # before the run, not after it
    why = foreign_target_of(args)
    simt = simt_emulation(args)
    if args.emulate and not simt:
        outputs, ms = _run_emulated(args)
    elif why and not simt:
        raise TccError(f"cannot run {args.artifact} here: {why}; run it under emulation with --emulate")
    else:
        if simt:
            target = (artifact_manifest(args.artifact) or {}).get("target", "cuda")
            print(f"tcc: running the {target} artifact on the CPU SIMT emulator; its time is not a speed figure",
                  file=sys.stderr, flush=True)
        sess = load(args.artifact, threads=args.threads, emulate=simt)
        feeds = read_feeds(args.input)
        if args.random:
            feeds = {**random_feeds(sess, kv_ints(args.dim, "--dim"), args.seed), **feeds}
        # A language model's KV cache grows with every run: each run starts from an empty cache, so
        # that repeats (and the profile's warm-up) time the same prefill.
        kv = bool((sess.manifest.get("llm") or {}).get("kv_cache"))
        if args.profile:
            sess.run(feeds)  # warm-up: page in the weights, grow scratch buffers
            sess.set_profiling(True)
        elapsed = 0.0
        for _ in range(max(args.repeat, 1)):
            if kv:
                sess.reset()
            t0 = time.perf_counter()
            outputs = sess.run(feeds)
            elapsed += time.perf_counter() - t0
        ms = elapsed * 1e3 / max(args.repeat, 1)
    for name, arr in outputs.items():
        fname = name.replace("/", "_").replace(":", "_") + ".npy"
        path = os.path.join(args.output_dir, fname)
        tmp = path + ".tmp.npy"
        try:
            np.save(tmp, arr)
            os.replace(tmp, path)
        except OSError as e:
            raise TccError(f"cannot write {path}: {e.strerror or e}") from None
        print(f"{name}: {arr.dtype}{list(arr.shape)} -> {path}")
    if args.emulate:
        how = "mean" if simt else "best"
        print(f"run: {ms:.2f} ms emulated" + (f" ({how} of {args.repeat})" if args.repeat > 1 else ""))
    else:
        print(f"run: {ms:.2f} ms" + (f" (mean of {args.repeat})" if args.repeat > 1 else ""))
    if args.profile:
        print_profile(sess.profile(), args.repeat)
    return 0


def _output_dir(path: str) -> None:
    """Create `-o DIR` (or refuse it in one line: a file there, no permission)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise TccError(f"-o {path}: exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise TccError(f"-o {path}: cannot create the directory: {e.strerror or e}") from None


def print_profile(rows: list[dict], runs: int, top: int = 15) -> None:
    """The slowest nodes, then time per op type, as ms per run and share of the total."""
    total = sum(r["ms"] for r in rows) or 1e-9
    print(f"\nprofile: {total / runs:.3f} ms per run in kernels")
    print(f"{'ms/run':>9} {'share':>6}  {'op':<16} node")
    for r in sorted(rows, key=lambda r: -r["ms"])[:top]:
        print(f"{r['ms'] / runs:9.3f} {100 * r['ms'] / total:5.1f}%  {r['op']:<16} {r['node']}")
    by_op: dict[str, float] = {}
    for r in rows:
        by_op[r["op"]] = by_op.get(r["op"], 0.0) + r["ms"]
    print("\nby op: " + ", ".join(f"{op} {100 * v / total:.1f}%" for op, v in sorted(by_op.items(), key=lambda kv: -kv[1])))


def random_feeds(sess, dims: dict[str, int], seed: int) -> dict:
    """Random inputs for every model input: dynamic dims from `dims` (default 1); floats standard
    normal, integers in [0, 16) (valid token ids for any vocabulary of 16 or more), random booleans."""
    import numpy as np

    from ..ir.dims import evaluate

    r = np.random.default_rng(seed)
    env = {s: dims.get(s, 1) for info in sess.inputs for d in info.shape for s in getattr(d, "symbols", ())}
    feeds = {}
    for info in sess.inputs:
        shape = tuple(evaluate(d, env) for d in info.shape)
        if info.dtype.is_float:
            feeds[info.name] = r.standard_normal(shape).astype(info.dtype.np)
        elif info.dtype.is_int:
            feeds[info.name] = r.integers(0, 16, shape).astype(info.dtype.np)
        else:
            feeds[info.name] = r.integers(0, 2, shape).astype(bool)
    return feeds


def add_run(sub) -> None:
    r = sub.add_parser("run", help="run a compiled artifact on .npy inputs")
    r.add_argument("artifact")
    r.add_argument("--input", "-i", action="append", metavar="NAME=FILE.npy", help="an input (repeat)")
    r.add_argument("-o", "--output-dir", default=".", help="where to write NAME.npy outputs")
    r.add_argument("--threads", type=int, default=None, help="worker threads (default: all cores)")
    r.add_argument("--random", action="store_true", help="feed random inputs (dynamic dims from --dim, default 1)")
    r.add_argument("--dim", action="append", metavar="NAME=N", help="a dynamic dim's value for --random")
    r.add_argument("--seed", type=int, default=0, help="seed for --random")
    r.add_argument("--repeat", type=int, default=1, help="run R times (timing is the mean)")
    r.add_argument("--profile", action="store_true", help="time every node and print the slowest and a per-op summary")
    r.add_argument("--emulate", action="store_true",
                   help="run an artifact built for another device: a cuda one on the CPU SIMT emulator (in this "
                        "process), an arm one on x86 through its standalone run binary under qemu")
    r.add_argument("--emulate-cpu", metavar="CPU", help="the CPU qemu emulates with --emulate (e.g. cortex-a53: "
                   "no dotprod; default: qemu's max, which has dotprod and i8mm)")
    add_verify_arg(r)
    add_cuda_graph_arg(r)
    r.set_defaults(fn=cmd_run)
