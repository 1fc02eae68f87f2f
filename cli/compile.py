"""`tcc compile`: an ONNX model into an artifact directory."""
from __future__ import annotations

from .args import add_quant_args, add_shape_args, kv_ints, mib, quant_options


def cmd_compile(args) -> int:
    from ..driver import CompileOptions, compile_model, progress_printer

    opts = CompileOptions(target=args.target, qm=args.qm, dump_ir=args.dump_ir,
                          max_dims=kv_ints(args.max_dim, "--max-dim"), dims=kv_ints(args.dim, "--dim"),
                          print_after=tuple(args.print_after or ()), disable_passes=tuple(args.disable_pass or ()),
                          kernel_variant=args.kernel_variant, cpu=args.cpu, cuda_arch=args.cuda_arch,
                          pipeline=args.pipeline,
                          max_context=args.max_context, tokenizer=args.tokenizer, chat_template=args.chat_template,
                          tune=args.tune, tune_threads=args.tune_threads, force=args.force,
                          require_kv_cache=args.require_kv_cache, **quant_options(args))
    manifest = compile_model(args.model, args.output, opts, progress=progress_printer(not args.quiet))
    mem = manifest["memory"]
    print(f"compiled {args.model} -> {args.output} ({manifest['target']}, {manifest['qm']}): "
          f"{len(manifest['kernels'])} kernels, weights {mib(manifest['weights']['bytes'])}, "
          f"arena {mib(mem['arena_bytes'])} (lower bound {mib(mem['lower_bound_bytes'])}), "
          f"{manifest['compile_seconds']:.1f} s, peak RSS {mib(manifest.get('compile_peak_rss_bytes', 0))}")
    q = manifest.get("quantization") or {}
    if "quantized_linears" in q:  # a weight-quantizing scheme (fp32 and fp16 quantize nothing)
        ratio = f" = {q['ratio_to_fp32']:.3f}x the fp32 weights" if q.get("ratio_to_fp32") else ""
        print(f"quantized: {q['quantized_linears']} layers ({q['scheme']}, group {q['group_size']}, "
              f"{'asymmetric' if q['zero_points'] else 'symmetric'}, {q['calibration']}), kept in fp32: "
              f"{len(q['kept_fp32'])}; weights {mib(q['weight_bytes'])}{ratio}")
    alloc = q.get("bit_allocation")
    if alloc:
        print(f"bit allocation: 8-bit: {', '.join(alloc['eight_bit']) or 'none'}; "
              f"{alloc['bits_per_weight']:.2f} bits/weight ({alloc['criterion']})")
    for method in q.get("calibration", "").split("+"):
        calib = q.get(method)
        if isinstance(calib, dict) and "search_s" in calib:
            per_layer = f" ({calib['per_layer_s']:.2f} s per layer)" if "per_layer_s" in calib else ""
            print(f"calibration ({method}): running the model {calib['calibration_s']:.1f} s, scale search "
                  f"{calib['search_s']:.1f} s, check {calib['check_s']:.1f} s{per_layer}")
        elif isinstance(calib, dict) and "rounding_s" in calib:  # gptq
            print(f"calibration (gptq): {calib['linears']} layers rounded with error compensation, output error on "
                  f"the calibration rows {calib['error_ratio']:.3f}x round-to-nearest's; running the model "
                  f"{calib['calibration_s']:.1f} s ({calib['runs']} run(s), {calib['rows']} rows), rounding "
                  f"{calib['rounding_s']:.1f} s")
    llm = manifest.get("llm")
    if llm and llm.get("kv_cache"):
        print(f"language model: {llm['layers']} KV-cache attention layers, context {llm['capacity']} tokens "
              f"(KV cache {mib(llm['kv_cache_bytes'])}), prefill chunks of {llm['max_prefill']}, "
              f"tokenizer {'yes' if llm.get('tokenizer') else 'none'}")
    elif llm and llm.get("recompute"):
        print(f"language model without past inputs: generation recomputes the sequence, context "
              f"{llm['capacity']} tokens")
    elif llm:
        print("language model with past inputs but no KV cache (generate and chat refuse it; the warning above "
              "says why)")
    tuning = manifest.get("tuning")
    if tuning:
        from ..codegen.tuning import tuned_count

        print(f"tuned: {tuned_count(tuning['problems'])} of {len(tuning['problems'])} Linear problems use tuned kernel parameters "
              f"({tuning['threads']} threads, {tuning['seconds']:.1f} s; `tcc info {args.output}` lists them)")
    if args.dump_ir:
        print(f"IR dumps in {args.dump_ir}/")
    return 0


def kernel_variants() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """--kernel-variant's names from the x86 kernel list: (the variants of the other families: avx2, scalar;
    the quantized linear kernels' optimization steps: naive .. all)."""
    from ..backends.x86 import kernels, kernels_quant

    steps = kernels_quant.QLINEAR_VARIANTS
    return tuple(sorted({s.variant for s in kernels.VARIANTS} - set(steps))), steps


def add_compile(sub) -> None:
    plain, steps = kernel_variants()
    c = sub.add_parser("compile", help="compile an ONNX model into an artifact directory")
    c.add_argument("model", help="the .onnx file")
    c.add_argument("-o", "--output", required=True, help="artifact directory to write")
    c.add_argument("--target", default="x86", help="x86 (default) | arm (aarch64; cross-compiled on other "
                   "hosts, run there with `tcc run --emulate`) | cuda (NVIDIA GPUs, sm_80+; without a GPU run it "
                   "with `tcc run --emulate`) | metal (Apple GPUs; builds the emulation program and the macOS "
                   "project, run it here with `tcc run --emulate`)")
    c.add_argument("--cuda-arch", metavar="ARCHS", help="cuda: the GPU architectures to build for, comma "
                   "separated sm_XY (default: sm_80,sm_90), or native")
    c.add_argument("--cpu", metavar="CPU", help="arm: the baseline CPU (-mcpu), e.g. cortex-a53, cortex-a76, "
                   "neoverse-n1, native (default: armv8-a; dotprod / i8mm are detected at run time)")
    add_quant_args(c)
    add_shape_args(c)
    c.add_argument("--dump-ir", metavar="DIR", help="write the IR after every pass: DIR/000_import.tir, ...")
    c.add_argument("--print-after", action="append", metavar="PASS", help="print the IR after PASS")
    c.add_argument("--disable-pass", action="append", metavar="PASS", help="skip PASS")
    c.add_argument("--pipeline", default="default", help="named pass pipeline (default)")
    c.add_argument("--kernel-variant", choices=plain + steps,
                   help=f"force one kernel variant where a family has it: {' | '.join(plain)}, or the quantized "
                        f"linear kernels' optimization steps {' | '.join(steps)} (default: the fastest)")
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
