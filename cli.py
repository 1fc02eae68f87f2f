"""The `tcc` command line."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

from . import __version__, flags
from .errors import TccError


def _kv_ints(items, what: str) -> dict[str, int]:
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


def _feeds(items) -> dict:
    feeds = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise TccError(f"--input expects NAME=FILE.npy, got {item!r}")
        feeds[name] = _read_npy(path, f"input {name!r}")
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


def _read_npy(path: str, what: str):
    """A .npy file, or a one-line TccError naming it: missing, not a regular file (a FIFO or /dev/zero
    would block or never end: checked before opening), empty, truncated, a header whose shape needs more
    bytes than the file has, or a pickled object array."""
    import numpy as np

    from .errors import RuntimeFeedError
    from .frontend.side_files import check_file

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


# -- commands --------------------------------------------------------------------------------------

def cmd_compile(args) -> int:
    from .driver import CompileOptions, compile_model, progress_printer

    opts = CompileOptions(target=args.target, qm=args.qm, dump_ir=args.dump_ir,
                          max_dims=_kv_ints(args.max_dim, "--max-dim"), dims=_kv_ints(args.dim, "--dim"),
                          print_after=tuple(args.print_after or ()), disable_passes=tuple(args.disable_pass or ()),
                          kernel_variant=args.kernel_variant, cpu=args.cpu, pipeline=args.pipeline,
                          max_context=args.max_context, tokenizer=args.tokenizer, chat_template=args.chat_template,
                          tune=args.tune, tune_threads=args.tune_threads, force=args.force,
                          require_kv_cache=args.require_kv_cache, **_quant_options(args))
    manifest = compile_model(args.model, args.output, opts, progress=progress_printer(not args.quiet))
    mem = manifest["memory"]
    print(f"compiled {args.model} -> {args.output} ({manifest['target']}, {manifest['qm']}): "
          f"{len(manifest['kernels'])} kernels, weights {_mib(manifest['weights']['bytes'])}, "
          f"arena {_mib(mem['arena_bytes'])} (lower bound {_mib(mem['lower_bound_bytes'])}), "
          f"{manifest['compile_seconds']:.1f} s, peak RSS {_mib(manifest.get('compile_peak_rss_bytes', 0))}")
    q = manifest.get("quantization") or {}
    if q.get("scheme", "fp32") != "fp32":
        ratio = f" = {q['ratio_to_fp32']:.3f}x the fp32 weights" if q.get("ratio_to_fp32") else ""
        print(f"quantized: {q['quantized_linears']} layers ({q['scheme']}, group {q['group_size']}, "
              f"{'asymmetric' if q['zero_points'] else 'symmetric'}, {q['calibration']}), kept in fp32: "
              f"{len(q['kept_fp32'])}; weights {_mib(q['weight_bytes'])}{ratio}")
    llm = manifest.get("llm")
    if llm and llm.get("kv_cache"):
        print(f"language model: {llm['layers']} KV-cache attention layers, context {llm['capacity']} tokens "
              f"(KV cache {_mib(llm['kv_cache_bytes'])}), prefill chunks of {llm['max_prefill']}, "
              f"tokenizer {'yes' if llm.get('tokenizer') else 'none'}")
    elif llm and llm.get("recompute"):
        print(f"language model without past inputs: generation recomputes the sequence, context "
              f"{llm['capacity']} tokens")
    elif llm:
        print("language model with past inputs but no KV cache (generate and chat refuse it; the warning above "
              "says why)")
    tuning = manifest.get("tuning")
    if tuning:
        from .codegen.tuning import tuned_count

        print(f"tuned: {tuned_count(tuning['problems'])} of {len(tuning['problems'])} Linear problems use tuned kernel parameters "
              f"({tuning['threads']} threads, {tuning['seconds']:.1f} s; `tcc info {args.output}` lists them)")
    if args.dump_ir:
        print(f"IR dumps in {args.dump_ir}/")
    return 0


def _sampling_args(p) -> None:
    from .runtime.generate import DEFAULT_SAMPLING as d

    p.add_argument("--max-new-tokens", type=int, default=256, help="tokens to generate at most (256)")
    p.add_argument("--temperature", type=float, default=d["temperature"], help=f"0 = greedy ({d['temperature']})")
    p.add_argument("--top-k", type=int, default=d["top_k"], help=f"0 = off ({d['top_k']})")
    p.add_argument("--top-p", type=float, default=d["top_p"], help=f"1 = off ({d['top_p']})")
    p.add_argument("--repetition-penalty", type=float, default=d["repetition_penalty"],
                   help=f"1 = off ({d['repetition_penalty']})")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: random)")
    p.add_argument("--threads", type=int, default=None, help="worker threads (default: all cores)")


def _sampling(args) -> dict:
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed)


def _check_generation_args(args) -> None:
    """generate/chat options before anything is loaded: the sampling ranges of the chat binary (one check
    shared with the Python API: runtime/generate.py) and text that is UTF-8."""
    from .runtime.generate import check_sampling, check_threads

    check_sampling(**_sampling(args), cli=True)
    check_threads(args.threads, cli=True)
    for flag in ("prompt", "system"):
        _utf8(getattr(args, flag, None), "--" + flag)


def _utf8(text: str | None, what: str) -> None:
    """Refuse text that came from bytes which are not UTF-8 (Python keeps them as lone surrogates)."""
    if text is None:
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise TccError(f"{what} is not UTF-8 text (byte 0x{ord(text[e.start]) & 0xFF:02x} at character "
                       f"{e.start})") from None


def _prompt_ids(text: str) -> list[int]:
    ids = []
    for t in text.replace(",", " ").split():
        try:
            ids.append(int(t))
        except ValueError:
            raise TccError(f"--prompt-ids: {t!r} is not a token id (give integers: '1 2 3')") from None
    return ids


def _speed(g) -> str:
    return (f"[prefill {len(g.prompt_tokens)} tok {g.prefill_tokens_per_second:.1f} tok/s | "
            f"decode {len(g.tokens)} tok {g.decode_tokens_per_second:.1f} tok/s | {g.stop_reason}]")


def _echo(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def _foreign(args) -> str | None:
    """Why the artifact cannot run on this host (None: it can)."""
    from .backends import foreign_target

    manifest = _artifact_manifest(args.artifact)
    return foreign_target(manifest.get("target", "x86")) if manifest else None


def _chat_emulated(args, options: list[str]) -> int:
    """`tcc chat|generate --emulate`: the artifact's static chat binary under qemu, on this terminal."""
    import subprocess

    from .backends import chat_emulated_command
    from .runtime.artifact import verify
    from .runtime.session import _read_manifest

    manifest = _read_manifest(os.path.abspath(args.artifact))
    verify(os.path.abspath(args.artifact), manifest, hashes=flags.get("verify"))
    sampling = [("--max-new-tokens", args.max_new_tokens), ("--temperature", args.temperature),
                ("--top-k", args.top_k), ("--top-p", args.top_p), ("--repetition-penalty", args.repetition_penalty),
                ("--seed", args.seed), ("--threads", args.threads)]
    options += [str(v) for flag, value in sampling if value is not None for v in (flag, value)]
    cmd = chat_emulated_command(args.artifact, manifest, options, args.emulate_cpu)
    cpu = f" -cpu {args.emulate_cpu}" if args.emulate_cpu else ""
    print(f"tcc: running the {manifest.get('target')} artifact's chat binary under emulation (qemu{cpu}); its "
          "speed is not the device's", file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=False).returncode


def _emulate_args(p, what: str) -> None:
    p.add_argument("--emulate", action="store_true",
                   help=f"{what} an artifact built for another architecture (--target arm on x86) through its "
                        "standalone chat binary under qemu")
    p.add_argument("--emulate-cpu", metavar="CPU", help="the CPU qemu emulates with --emulate (e.g. cortex-a53)")


def _native_only(args) -> None:
    why = _foreign(args)
    if why:
        raise TccError(f"cannot run {args.artifact} here: {why}; run it under emulation with --emulate")


def cmd_generate(args) -> int:
    from .runtime.session import load

    _check_generation_args(args)
    if args.emulate:
        if args.prompt is None or args.prompt_ids is not None or args.stop or args.ids:
            raise TccError("generate --emulate takes --prompt TEXT and the sampling options only (the chat "
                           "binary has no --prompt-ids, --stop or --ids)")
        return _chat_emulated(args, ["--raw", "--prompt", args.prompt])
    _native_only(args)
    sess = load(args.artifact, threads=args.threads)
    prompt = args.prompt
    if args.prompt_ids is not None:
        prompt = _prompt_ids(args.prompt_ids)
    elif prompt is None:
        raise TccError("give --prompt TEXT (or --prompt-ids)")
    g = sess.generate(prompt, stop=tuple(args.stop or ()), stream=None if args.ids else _echo, **_sampling(args))
    if args.ids:
        print(" ".join(map(str, g.tokens)))
    else:
        print()
    print(_speed(g), file=sys.stderr)
    return 0


def cmd_chat(args) -> int:
    from .runtime.session import load

    _check_generation_args(args)
    if args.emulate:
        return _chat_emulated(args, ["--system", args.system] if args.system is not None else [])
    _native_only(args)
    sess = load(args.artifact, threads=args.threads)
    gen = sess.generator
    if sess.tokenizer is None:
        raise TccError(f"{args.artifact} has no tokenizer.json: chat needs one (compile with --tokenizer)")
    tty = sys.stdin.isatty()
    if tty:
        print(f"tcc chat: {args.artifact} (context {gen.capacity} tokens). /reset starts over, /quit or Ctrl-D "
              f"exits; Ctrl-C stops a reply.", file=sys.stderr)
    while True:
        try:
            line = input("> " if tty else "")
        except EOFError:
            break
        except KeyboardInterrupt:
            print(file=sys.stderr)
            break
        except UnicodeDecodeError as e:
            raise TccError(f"standard input is not UTF-8 text (byte 0x{e.object[e.start]:02x})") from None
        msg = line.strip()
        if not msg:
            continue
        if msg in ("/quit", "/exit"):
            break
        if msg == "/reset":
            sess.reset()
            print("[conversation reset]", file=sys.stderr)
            continue
        try:
            _utf8(msg, "the message")
            g = sess.chat(msg, system=args.system, stream=_echo, **_sampling(args))
        except TccError as e:
            print(f"tcc: error: {e}", file=sys.stderr)
            continue
        print()
        print(_speed(g), file=sys.stderr)
    return 0


def _artifact_manifest(path: str) -> dict | None:
    try:
        with open(os.path.join(path, "manifest.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None  # load() says what is wrong with the artifact


def _run_emulated(args):
    """`tcc run --emulate`: the artifact's `run` binary under the target's emulator (qemu-aarch64)."""
    from types import SimpleNamespace

    from .backends import run_emulated
    from .runtime.artifact import verify
    from .runtime.session import _check_manifest_fields, _info, _read_manifest

    if args.profile:
        raise TccError("--profile is not available with --emulate (it times the kernels through the library)")
    manifest = _read_manifest(os.path.abspath(args.artifact))
    _check_manifest_fields(manifest, os.path.abspath(args.artifact))
    verify(os.path.abspath(args.artifact), manifest, hashes=flags.get("verify"))
    feeds = _feeds(args.input)
    if args.random:
        infos = SimpleNamespace(inputs=[_info(d) for d in manifest["inputs"]])
        feeds = {**random_feeds(infos, _kv_ints(args.dim, "--dim"), args.seed), **feeds}
    cpu = f" -cpu {args.emulate_cpu}" if args.emulate_cpu else ""
    print(f"tcc: running the {manifest.get('target')} artifact under emulation (qemu{cpu}); its time is not a "
          "speed figure", file=sys.stderr, flush=True)
    return run_emulated(args.artifact, manifest, feeds, args.threads, args.repeat, args.emulate_cpu)


def cmd_run(args) -> int:
    import numpy as np

    from .runtime.generate import check_threads
    from .runtime.session import load

    if args.repeat < 1:
        raise TccError(f"--repeat must be at least 1, got {args.repeat}")
    check_threads(args.threads, cli=True)
    _output_dir(args.output_dir)  # before the run, not after it
    why = _foreign(args)
    if args.emulate:
        outputs, ms = _run_emulated(args)
    elif why:
        raise TccError(f"cannot run {args.artifact} here: {why}; run it under emulation with --emulate")
    else:
        sess = load(args.artifact, threads=args.threads)
        feeds = _feeds(args.input)
        if args.random:
            feeds = {**random_feeds(sess, _kv_ints(args.dim, "--dim"), args.seed), **feeds}
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
        print(f"run: {ms:.2f} ms emulated" + (f" (best of {args.repeat})" if args.repeat > 1 else ""))
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

    from .ir.dims import evaluate

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


def cmd_ir(args) -> int:
    from .ir.graphviz import to_dot
    from .passes.context import PassContext
    from .passes.runner import render

    if args.model.endswith(".tir"):
        from .ir.text import load_ir

        graph, ctx = load_ir(args.model), PassContext()
    else:
        from .driver import CompileOptions, optimize

        after = args.after
        opts = CompileOptions(target=args.target, max_dims=_kv_ints(args.max_dim, "--max-dim"),
                              dims=_kv_ints(args.dim, "--dim"), pipeline=args.pipeline, qm=args.qm,
                              tokenizer=args.tokenizer, **_quant_options(args))
        if after:
            from .passes.pipelines import get_pipeline

            names = ["import"] + get_pipeline(args.pipeline)
            if after not in names:
                raise TccError(f"--after {after!r} is not a pass of pipeline {args.pipeline!r}: {', '.join(names)}")
            opts.pipeline = names[1:names.index(after) + 1]
        graph, ctx, _ = optimize(args.model, opts)
    if args.run:
        from .ir.interpreter import run_graph

        for name, arr in run_graph(graph, _feeds(args.run)).items():
            print(f"{name}: {arr.dtype}{list(arr.shape)}\n{arr}")
        return 0
    # A file gets its large constants in blobs/ beside it, so `tcc ir FILE --run` can execute it.
    blob_dir = os.path.join(os.path.dirname(os.path.abspath(args.output)), "blobs") if args.output else None
    text = to_dot(graph) if args.dot else render(graph, ctx, blob_dir=blob_dir)
    if args.output:
        tmp = args.output + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, args.output)
    else:
        sys.stdout.write(text)
    return 0


def cmd_info(args) -> int:
    from .runtime.artifact import verify
    from .runtime.session import _check_manifest_fields, _read_manifest

    path = os.path.abspath(args.artifact)
    m = _read_manifest(path)
    hashes = flags.get("verify")
    checked = verify(path, m, hashes=hashes, remembered=False)  # info hashes every file afresh
    _check_manifest_fields(m, path)
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    try:
        lines = _info_lines(m, path, checked, hashes)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        from .runtime.artifact import ArtifactError

        raise ArtifactError(f"{path}/manifest.json: malformed manifest ({type(e).__name__}: {e})") from None
    print("\n".join(lines))
    return 0


def _info_lines(m: dict, path: str, checked: list[str], hashes: bool) -> list[str]:
    """`tcc info`'s text (a malformed field raises, and cmd_info names the manifest)."""
    out = []
    print = out.append  # noqa: A001  (the lines below were written as prints)
    mem = m["memory"]
    print(f"artifact   {path}")
    print(f"verified   {len(checked)} files ({', '.join(checked)}): "
          f"{'sizes and SHA-256' if hashes else 'sizes (--no-verify)'} match the manifest; format {m['format']}")
    print(f"source     {m['source']}")
    print(f"target     {m['target']}   qm {m['qm']}   tcc {m['tcc_version']}")
    for kind in ("inputs", "outputs"):
        for t in m[kind]:
            print(f"{kind[:-1]:<10} {t['name']}: {t['dtype']}[{','.join(map(str, t['shape']))}]")
    if m.get("symbols"):
        print("max dims   " + ", ".join(f"{k}<={v}" for k, v in m["symbols"].items()))
    print(f"weights    {m['weights']['file']} {_mib(m['weights']['bytes'])} sha256 {m['weights']['sha256'][:16]}")
    q = m.get("quantization") or {}
    if q.get("scheme", "fp32") != "fp32":
        print(f"quantized  {q['quantized_linears']} layers, {q['summary']}; group {q['group_size']}, "
              f"{'zero points' if q['zero_points'] else 'symmetric'}, {q['calibration']}; "
              f"{q['ratio_to_fp32']}x the fp32 weights ({_mib(q['fp32_weight_bytes'])})"
              + (f"; kept fp32: {', '.join(q['kept_fp32'])}" if q["kept_fp32"] else ""))
    print(f"arena      {_mib(mem['arena_bytes'])} (sum of intermediates {_mib(mem['intermediates_bytes'])}, "
          f"lower bound {_mib(mem['lower_bound_bytes'])})")
    print(f"kernels    {len(m['kernels'])}: {', '.join(m['kernels'])}")
    print("ops        " + ", ".join(f"{k}×{v}" for k, v in sorted(m["ops"].items())))
    if m.get("tuning"):
        from .runtime.bench import format_tuning

        print(format_tuning(m["tuning"]))
    return out


def cmd_bench(args) -> int:
    from .driver import progress_printer

    if args.ablation:
        from .runtime.kernel_bench import format_table, qlinear_ablation

        m, k, n = _shape3(args.shape)
        print(f"## qlinear_{args.qm}: y[{m}, {n}] = x[{m}, {k}] @ W^T, {args.threads} threads\n")
        from .backends import get_backend

        group = get_backend("x86").target.default_group_size
        print(format_table(qlinear_ablation(args.qm, m, k, n, threads=args.threads, repeat=args.repeat, group=group)))
        if args.target:
            from .runtime.bench import format_model_table, model_ablation

            rows = model_ablation(args.target, args.qm, args.prompt_len, args.gen, args.threads, args.repeat,
                                  progress=progress_printer(not args.quiet))
            print(f"\n## {os.path.basename(args.target)} --qm {args.qm}, prompt {args.prompt_len}, {args.gen} new "
                  f"tokens, {args.threads} threads\n")
            print(format_model_table(rows, args.prompt_len))
        return 0
    if not args.target:
        raise TccError("tcc bench needs an artifact directory (or --ablation)")
    from .runtime.bench import bench_artifact, format_bench, format_vs_default, plot_steps, tuned_vs_default

    if args.vs_default:
        both = tuned_vs_default(args.target, args.prompt_len, args.gen, args.threads, args.repeat,
                                bandwidth=not args.no_roofline, progress=progress_printer(not args.quiet))
        print(format_vs_default(both))
        _write_json(args.json, both)
        res = both["tuned"]
    else:
        res = bench_artifact(args.target, args.prompt_len, args.gen, args.threads, args.repeat,
                             bandwidth=not args.no_roofline)
        print(format_bench(res))
        _write_json(args.json, res)
    if args.plot:
        plot_steps(res, args.plot)
        print(f"plot: {args.plot}")
    return 0

def cmd_demo(args) -> int:
    from .demo import run_demo
    from .driver import progress_printer

    run_demo(qm=args.qm, prompt=args.prompt, max_new_tokens=args.max_new_tokens, seed=args.seed,
             temperature=args.temperature, threads=args.threads, rebuild=args.rebuild,
             progress=progress_printer(not args.quiet))
    return 0


def cmd_serve(args) -> int:
    from .runtime.generate import check_threads
    from .runtime.serve import serve

    check_threads(args.threads, cli=True)
    if args.demo == (args.artifact is not None):
        raise TccError("give an artifact directory or --demo (the bundled model), not both" if args.demo
                       else "give an artifact directory to serve, or --demo for the bundled model")
    artifact, name = args.artifact, None
    if args.demo:
        from .demo import DEMO_CALIB, DEMO_QM, Variant, compile_variant, demo_model
        from .driver import progress_printer

        # one KV-cache row per slot: the slots' decode steps run as one batched run (continuous batching)
        artifact, _, _ = compile_variant(demo_model(), Variant(DEMO_QM, "AWQ"), DEMO_CALIB,
                                         progress=progress_printer(True), max_batch=args.slots)
        name = "tcc-demo"
    serve(artifact, host=args.host, port=args.port, slots=args.slots, ctx_per_slot=args.ctx_per_slot,
          api_key=args.api_key, threads=args.threads, queue=args.queue, model_name=name)
    return 0


def cmd_eval(args) -> int:
    from .demo import DEMO_CALIB, DEMO_HELDOUT, compare_quantization, demo_model, format_compare_table
    from .driver import progress_printer
    from .runtime.perplexity import evaluate, read_text

    if args.compare:
        model = args.target or demo_model()
        if not model.endswith(".onnx") or not os.path.isfile(model):
            raise TccError(f"tcc eval --compare takes an .onnx model (default: the bundled demo), got {model!r}")
        is_demo = _is_demo(model)
        text_path = args.text or (DEMO_HELDOUT if is_demo else None)
        calib = args.calib or (DEMO_CALIB if is_demo else None)
        if text_path is None:
            raise TccError("give --text FILE: the text to measure perplexity on")
        rows = compare_quantization(model, read_text(text_path), calib, context=args.context, stride=args.stride,
                                    max_tokens=args.max_tokens, group_size=args.group_size, threads=args.threads,
                                    progress=progress_printer(not args.quiet), bar=not args.quiet)
        first = next((r for r in rows if "perplexity" in r), None)
        print(f"\n## {os.path.relpath(model)} on {os.path.relpath(text_path)}"
              + (f": {first['tokens']} tokens, windows of {first['context']}, stride {first['stride']}" if first else "")
              + "\n")
        print(format_compare_table(rows))
        _write_json(args.json, rows)
        return 0
    if not args.target:
        raise TccError("tcc eval needs an artifact directory (or --compare [model.onnx])")
    from .runtime.session import load

    with load(args.target, threads=args.threads) as sess:
        text_path = args.text or (DEMO_HELDOUT if _is_demo(sess.manifest.get("source", "")) else None)
        if text_path is None:
            raise TccError("give --text FILE: the text to measure perplexity on")
        p = evaluate(sess, read_text(text_path), context=args.context, stride=args.stride,
                     max_tokens=args.max_tokens, progress=not args.quiet)
    print(f"{args.target} on {text_path}: perplexity {p.ppl:.4f}, {p.bits_per_byte:.4f} bits/byte "
          f"({p.tokens} tokens, {p.bytes} bytes; windows of {p.context} tokens, stride {p.stride}; "
          f"{p.tokens_per_second:.0f} tok/s)")
    _write_json(args.json, p.as_dict())
    return 0


def _is_demo(path: str) -> bool:
    from .demo import DEMO_MODEL

    return bool(path) and os.path.abspath(path) == os.path.abspath(DEMO_MODEL)


def _write_json(path: str | None, data) -> None:
    if not path:
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def _shape3(text: str) -> tuple[int, int, int]:
    try:
        m, k, n = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise TccError(f"--shape {text!r}: expected MxKxN, e.g. 1x4096x32000") from None
    if min(m, k, n) <= 0:
        raise TccError(f"--shape {text!r}: sizes must be positive")
    return m, k, n


def cmd_flags(args) -> int:
    for f in flags.FLAGS.values():
        print(f"{f.env:<20} default {f.default!r:<10} {f.help}")
    return 0


KERNEL_VARIANTS = ("avx2", "scalar", "naive", "unroll", "threads", "simd", "all")


def _quant_args(p) -> None:
    from .passes.schemes import SCHEMES

    p.add_argument("--qm", default="fp32", choices=tuple(SCHEMES),
                   help="quantization: " + "; ".join(f"{s.name}: {s.summary}" for s in SCHEMES.values()))
    p.add_argument("--group-size", type=int, metavar="N", help="int4 weight group size along K (default: the "
                   "target's, 32 on CPU); a multiple of 32")
    p.add_argument("--asym", action="store_true", help="int4 weights with zero points (default: symmetric)")
    p.add_argument("--keep-fp32", metavar="PATTERNS", help="comma-separated Linear layers to leave in fp32: "
                   "fnmatch patterns on node or weight names, or lm_head")
    p.add_argument("--calib", metavar="FILE", help="calibration data for AWQ / SmoothQuant: a text file "
                   "(tokenized with the model's tokenizer) or an .npz of inputs [samples, ...]")
    p.add_argument("--calib-samples", type=int, default=16, metavar="N", help="calibration samples (16)")
    p.add_argument("--calib-seq-len", type=int, default=256, metavar="N", help="tokens per text sample (256)")
    p.add_argument("--awq-clip", action="store_true", help="AWQ's weight-clipping search (slower compile)")


def _quant_options(args) -> dict:
    keep = tuple(p.strip() for p in (args.keep_fp32 or "").split(",") if p.strip())
    return dict(group_size=args.group_size, asym=args.asym, keep_fp32=keep, calib=args.calib,
                calib_samples=args.calib_samples, calib_seq_len=args.calib_seq_len, awq_clip=args.awq_clip)


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


# -- parser ----------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tcc", description="Compile ONNX models into fast native programs.")
    p.add_argument("--version", action="version", version=f"tcc {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compile", help="compile an ONNX model into an artifact directory")
    c.add_argument("model", help="the .onnx file")
    c.add_argument("-o", "--output", required=True, help="artifact directory to write")
    c.add_argument("--target", default="x86", help="x86 (default) | arm (aarch64; cross-compiled on other "
                   "hosts, run there with `tcc run --emulate`)")
    c.add_argument("--cpu", metavar="CPU", help="arm: the baseline CPU (-mcpu), e.g. cortex-a53, cortex-a76, "
                   "neoverse-n1, native (default: armv8-a; dotprod / i8mm are detected at run time)")
    _quant_args(c)
    _shape_args(c)
    c.add_argument("--dump-ir", metavar="DIR", help="write the IR after every pass: DIR/000_import.tir, ...")
    c.add_argument("--print-after", action="append", metavar="PASS", help="print the IR after PASS")
    c.add_argument("--disable-pass", action="append", metavar="PASS", help="skip PASS")
    c.add_argument("--pipeline", default="default", help="named pass pipeline (default)")
    c.add_argument("--kernel-variant", choices=KERNEL_VARIANTS,
                   help="force one kernel variant where a family has it: avx2 | scalar, or the quantized linear "
                        "kernels' optimization steps naive | unroll | threads | simd | all (default: the fastest)")
    c.add_argument("--tune", action="store_true", help="measure the Linear kernels' tile sizes, prefetch distance "
                   "and GEMV/GEMM crossover on this machine for the model's shapes and build the fastest "
                   "(cached in <cache-dir>/tuning.json; recorded in the manifest)")
    c.add_argument("--tune-threads", type=int, metavar="N", help="threads to tune for (default: the runtime's "
                   "default, all cores)")
    c.add_argument("--max-context", type=int, metavar="N",
                   help="KV-cache capacity in tokens of a decoder with past (default: config.json's, else 2048)")
    c.add_argument("--tokenizer", metavar="PATH", help="tokenizer.json or its directory (default: beside the model)")
    c.add_argument("--chat-template", metavar="NAME", help="llama2 | chatml | plain | a template name of the "
                   "tokenizer config (default: the config's chat_template, else chatml or plain)")
    c.add_argument("--force", action="store_true", help="write into an existing folder that holds files tcc did "
                   "not write (they are kept; without --force such a folder is refused)")
    c.add_argument("--require-kv-cache", action="store_true", help="fail (exit 2) when a decoder with past "
                   "inputs cannot get its KV cache, instead of warning and compiling it without one")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    c.set_defaults(fn=cmd_compile)

    g = sub.add_parser("generate", help="continue a prompt with a compiled language model")
    g.add_argument("artifact")
    g.add_argument("--prompt", "-p", help="the text to continue")
    g.add_argument("--prompt-ids", metavar="IDS", help="token ids instead of text ('1 2 3')")
    g.add_argument("--stop", action="append", metavar="TEXT", help="stop when TEXT is generated (repeat)")
    g.add_argument("--ids", action="store_true", help="print the generated token ids instead of streaming text")
    _sampling_args(g)
    _emulate_args(g, "generate with")
    _verify_arg(g)
    g.set_defaults(fn=cmd_generate)

    ch = sub.add_parser("chat", help="chat with a compiled language model (interactive, streaming)")
    ch.add_argument("artifact")
    ch.add_argument("--system", help="system prompt")
    _sampling_args(ch)
    _emulate_args(ch, "chat with")
    _verify_arg(ch)
    ch.set_defaults(fn=cmd_chat)

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
                   help="run an artifact built for another architecture (--target arm on x86) through its "
                        "standalone run binary under qemu")
    r.add_argument("--emulate-cpu", metavar="CPU", help="the CPU qemu emulates with --emulate (e.g. cortex-a53: "
                   "no dotprod; default: qemu's max, which has dotprod and i8mm)")
    _verify_arg(r)
    r.set_defaults(fn=cmd_run)

    i = sub.add_parser("ir", help="print a model's IR (after the passes) or an IR dump")
    i.add_argument("model", help=".onnx model or .tir dump")
    i.add_argument("--after", metavar="PASS", help="stop after PASS ('import' for the imported IR)")
    i.add_argument("--pipeline", default="optimize", help="named pass pipeline (optimize)")
    i.add_argument("--target", default="x86")
    i.add_argument("--tokenizer", metavar="PATH", help="tokenizer.json for text calibration (default: beside the model)")
    _quant_args(i)
    _shape_args(i)
    i.add_argument("--dot", action="store_true", help="print Graphviz DOT instead of IR text")
    i.add_argument("--run", action="append", metavar="NAME=FILE.npy", help="run the IR with the interpreter")
    i.add_argument("-o", "--output", help="write to a file instead of stdout")
    i.set_defaults(fn=cmd_ir)

    n = sub.add_parser("info", help="describe a compiled artifact")
    n.add_argument("artifact")
    n.add_argument("--json", action="store_true", help="print the manifest")
    _verify_arg(n)
    n.set_defaults(fn=cmd_info)

    b = sub.add_parser("bench", help="time a compiled language model, or the kernel ablation (--ablation)")
    b.add_argument("target", nargs="?", help="an artifact directory (with --ablation: an .onnx model to compile "
                   "once per kernel variant and time as a whole)")
    b.add_argument("--ablation", action="store_true", help="per-technique latency of the quantized linear kernels "
                   "(naive, unroll, threads, simd, all) on --shape, and for a whole model if one is given")
    b.add_argument("--qm", default="w4a8", choices=("w4a8", "w4a32", "w8a8"), help="scheme for --ablation (w4a8)")
    b.add_argument("--shape", default="1x4096x32000", help="MxKxN of the ablation GEMV/GEMM (1x4096x32000)")
    b.add_argument("--prompt-len", type=int, default=128, help="prompt tokens (128)")
    b.add_argument("--gen", type=int, default=64, help="generated tokens (64)")
    b.add_argument("--threads", type=int, default=2, help="worker threads (2)")
    b.add_argument("--repeat", type=int, default=3, help="repeats; the median and spread are shown (3)")
    b.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    b.add_argument("--plot", metavar="FILE.png", help="plot decode ms per step against the roofline (matplotlib)")
    b.add_argument("--no-roofline", action="store_true", help="skip the bandwidth probe (1 GiB streaming reads)")
    b.add_argument("--vs-default", action="store_true", help="an artifact compiled with --tune: also compile its "
                   "model without --tune (cached) and time both in this run")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    _verify_arg(b)
    b.set_defaults(fn=cmd_bench)

    d = sub.add_parser("demo", help="compile the bundled demo LLM for this machine (cached) and generate from it")
    d.add_argument("--qm", default="w4a8", choices=("fp32", "w8a8", "w4a32", "w4a8"),
                   help="quantization (w4a8, with AWQ; w8a8 uses SmoothQuant)")
    d.add_argument("--prompt", "-p", default=None, help="the text to continue (default: a fixed prompt)")
    d.add_argument("--max-new-tokens", type=int, default=96, help="tokens to generate (96)")
    d.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (0.7)")
    d.add_argument("--seed", type=int, default=0, help="sampling seed (0)")
    d.add_argument("--threads", type=int, default=None, help="worker threads (default: all cores)")
    d.add_argument("--rebuild", action="store_true", help="compile even if the cached artifact is current")
    d.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    d.set_defaults(fn=cmd_demo)

    e = sub.add_parser("eval", help="perplexity and bits per byte of a compiled language model on a text")
    e.add_argument("target", nargs="?", help="an artifact directory (with --compare: an .onnx model, default the "
                   "bundled demo)")
    e.add_argument("--text", metavar="FILE", help="UTF-8 text to score (default for the demo model: its held-out text)")
    e.add_argument("--context", type=int, metavar="N", help="tokens per window (default: the artifact's context)")
    e.add_argument("--stride", type=int, metavar="N", help="tokens between window starts (default: half the window)")
    e.add_argument("--max-tokens", type=int, metavar="N", help="score only the text's first N tokens")
    e.add_argument("--compare", action="store_true", help="compile fp32, w8a8 (RTN, SmoothQuant), w4a32 and w4a8 "
                   "(RTN, AWQ) and print one table")
    e.add_argument("--calib", metavar="FILE", help="calibration text for --compare (default for the demo: its own)")
    e.add_argument("--group-size", type=int, metavar="N", help="int4 group size for --compare (the target's default)")
    e.add_argument("--threads", type=int, default=None, help="worker threads (default: all cores)")
    e.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _verify_arg(e)
    e.set_defaults(fn=cmd_eval)

    sv = sub.add_parser("serve", help="serve a compiled language model over HTTP (llama.cpp and OpenAI APIs, "
                        "a chat page)")
    sv.add_argument("artifact", nargs="?", help="the artifact directory (or --demo)")
    sv.add_argument("--demo", action="store_true", help="serve the bundled demo model (compiled for this machine, "
                    "cached)")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8080, help="TCP port (8080; 0 picks a free one)")
    sv.add_argument("--slots", type=int, default=1, help="sequences served at once, each with its own KV cache (1)")
    sv.add_argument("--ctx-per-slot", type=int, metavar="N", help="tokens per slot (default: the artifact's context)")
    sv.add_argument("--queue", type=int, default=64, help="requests waiting for a slot before 503 answers (64)")
    sv.add_argument("--api-key", metavar="KEY", help="require `Authorization: Bearer KEY` on every API route (/health "
                    "and the chat page's own files stay open; the page asks for the key)")
    sv.add_argument("--threads", type=int, default=None, help="worker threads per slot (default: all cores)")
    _verify_arg(sv)
    sv.set_defaults(fn=cmd_serve)

    f = sub.add_parser("flags", help="list the debug flags (environment variables)")
    f.set_defaults(fn=cmd_flags)
    return p


def _verify_arg(p) -> None:
    p.add_argument("--no-verify", action="store_true", help="check the artifact's file sizes only, not their "
                   "SHA-256 (faster to start with huge weights; damage is then not detected)")


def _shape_args(p) -> None:
    p.add_argument("--max-dim", action="append", metavar="NAME=N",
                   help="upper bound of a dynamic dim (default 256; '*=N' sets every one)")
    p.add_argument("--dim", action="append", metavar="NAME=N", help="fix a dynamic dim to N")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "no_verify", False):
            with flags.overridden("verify", False):
                return args.fn(args)
        return args.fn(args)
    except TccError as e:
        print(f"tcc: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("tcc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as e:  # the environment: a read-only or full disk, a missing folder, a vanished file
        where = f"{e.filename}: " if e.filename else ""
        print(f"tcc: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except Exception as e:  # a bug in tcc, not the user's input
        if flags.get("debug"):
            traceback.print_exc()
        print(f"tcc: internal error: {type(e).__name__}: {e} (set TCC_DEBUG=1 for a traceback; please report)",
              file=sys.stderr)
        return 70


if __name__ == "__main__":
    sys.exit(main())
