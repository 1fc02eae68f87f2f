"""`tcc generate` and `tcc chat`: text from a compiled language model (natively, or through the
artifact's chat binary under qemu with --emulate)."""
from __future__ import annotations

import os
import sys

from .. import flags
from ..errors import TccError
from .args import add_cuda_graph_arg, add_verify_arg, foreign_target_of, simt_emulation


def _sampling_args(p) -> None:
    from ..runtime.generate import DEFAULT_SAMPLING as d

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
    from ..runtime.generate import check_sampling, check_threads

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


def _speed(g, sess=None) -> str:
    graph = ""
    if sess is not None and isinstance(sess.manifest.get("cuda_graph"), dict):  # a cuda artifact
        graph = f" | cuda graph {f'{sess.graph_replays} replays' if sess.cuda_graph else 'off'}"
    return (f"[prefill {len(g.prompt_tokens)} tok {g.prefill_tokens_per_second:.1f} tok/s | "
            f"decode {len(g.tokens)} tok {g.decode_tokens_per_second:.1f} tok/s | {g.stop_reason}{graph}]")


def _echo(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def _chat_emulated(args, options: list[str]) -> int:
    """`tcc chat|generate --emulate`: the artifact's static chat binary under qemu, on this terminal."""
    import subprocess

    from ..backends import chat_emulated_command
    from ..runtime.artifact import verify
    from ..runtime.session import _read_manifest

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
                   help=f"{what} an artifact built for another device: a cuda one on the CPU SIMT emulator (in "
                        "this process), an arm one on x86 through its standalone chat binary under qemu")
    p.add_argument("--emulate-cpu", metavar="CPU", help="the CPU qemu emulates with --emulate (e.g. cortex-a53)")


def _native_only(args) -> None:
    why = foreign_target_of(args)
    if why:
        raise TccError(f"cannot run {args.artifact} here: {why}; run it under emulation with --emulate")


def cmd_generate(args) -> int:
    from ..runtime.session import load

    _check_generation_args(args)
    simt = simt_emulation(args)
    if args.emulate and not simt:
        if args.prompt is None or args.prompt_ids is not None or args.stop or args.ids:
            raise TccError("generate --emulate takes --prompt TEXT and the sampling options only (the chat "
                           "binary has no --prompt-ids, --stop or --ids)")
        return _chat_emulated(args, ["--raw", "--prompt", args.prompt])
    if not simt:
        _native_only(args)
    sess = load(args.artifact, threads=args.threads, emulate=simt)
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
    print(_speed(g, sess), file=sys.stderr)
    return 0


def cmd_chat(args) -> int:
    from ..runtime.session import load

    _check_generation_args(args)
    simt = simt_emulation(args)
    if args.emulate and not simt:
        return _chat_emulated(args, ["--system", args.system] if args.system is not None else [])
    if not simt:
        _native_only(args)
    sess = load(args.artifact, threads=args.threads, emulate=simt)
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
        print(_speed(g, sess), file=sys.stderr)
    return 0


def add_generate(sub) -> None:
    g = sub.add_parser("generate", help="continue a prompt with a compiled language model")
    g.add_argument("artifact")
    g.add_argument("--prompt", "-p", help="the text to continue")
    g.add_argument("--prompt-ids", metavar="IDS", help="token ids instead of text ('1 2 3')")
    g.add_argument("--stop", action="append", metavar="TEXT", help="stop when TEXT is generated (repeat)")
    g.add_argument("--ids", action="store_true", help="print the generated token ids instead of streaming text")
    _sampling_args(g)
    _emulate_args(g, "generate with")
    add_verify_arg(g)
    add_cuda_graph_arg(g)
    g.set_defaults(fn=cmd_generate)


def add_chat(sub) -> None:
    ch = sub.add_parser("chat", help="chat with a compiled language model (interactive, streaming)")
    ch.add_argument("artifact")
    ch.add_argument("--system", help="system prompt")
    _sampling_args(ch)
    _emulate_args(ch, "chat with")
    add_verify_arg(ch)
    add_cuda_graph_arg(ch)
    ch.set_defaults(fn=cmd_chat)
