"""`tcc serve`: a compiled language model over HTTP."""
from __future__ import annotations

from ..errors import TccError
from .args import add_verify_arg


def cmd_serve(args) -> int:
    from ..runtime.generate import check_threads
    from ..runtime.serve import serve

    check_threads(args.threads, cli=True)
    if args.demo == (args.artifact is not None):
        raise TccError("give an artifact directory or --demo (the bundled model), not both" if args.demo
                       else "give an artifact directory to serve, or --demo for the bundled model")
    artifact, name = args.artifact, None
    if args.demo:
        from ..demo import DEMO_CALIB, compile_variant, demo_model, demo_variant
        from ..driver import progress_printer

        # one KV-cache row per slot: the slots' decode steps run as one batched run (continuous batching)
        artifact, _, _ = compile_variant(demo_model(), demo_variant(), DEMO_CALIB,
                                         progress=progress_printer(True), max_batch=args.slots)
        name = "tcc-demo"
    serve(artifact, host=args.host, port=args.port, slots=args.slots, ctx_per_slot=args.ctx_per_slot,
          api_key=args.api_key, threads=args.threads, queue=args.queue, model_name=name)
    return 0


def add_serve(sub) -> None:
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
    add_verify_arg(sv)
    sv.set_defaults(fn=cmd_serve)
