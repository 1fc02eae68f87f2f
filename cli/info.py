"""`tcc info` (an artifact's manifest, verified) and `tcc flags` (the debug flags)."""
from __future__ import annotations

import json
import os

from .. import flags
from .args import add_verify_arg, mib


def cmd_info(args) -> int:
    from ..runtime.artifact import verify
    from ..runtime.session import _check_manifest_fields, _read_manifest

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
        from ..runtime.artifact import ArtifactError

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
    print(f"weights    {m['weights']['file']} {mib(m['weights']['bytes'])} sha256 {m['weights']['sha256'][:16]}")
    q = m.get("quantization") or {}
    if "quantized_linears" in q:  # a weight-quantizing scheme (fp32 and fp16 quantize nothing)
        print(f"quantized  {q['quantized_linears']} layers, {q['summary']}; group {q['group_size']}, "
              f"{'zero points' if q['zero_points'] else 'symmetric'}, {q['calibration']}; "
              f"{q['ratio_to_fp32']}x the fp32 weights ({mib(q['fp32_weight_bytes'])})"
              + (f"; kept fp32: {', '.join(q['kept_fp32'])}" if q["kept_fp32"] else ""))
    print(f"arena      {mib(mem['arena_bytes'])} (sum of intermediates {mib(mem['intermediates_bytes'])}, "
          f"lower bound {mib(mem['lower_bound_bytes'])})")
    print(f"kernels    {len(m['kernels'])}: {', '.join(m['kernels'])}")
    print("ops        " + ", ".join(f"{k}×{v}" for k, v in sorted(m["ops"].items())))
    graph = m.get("cuda_graph")
    if isinstance(graph, dict):  # a cuda artifact: whether its decode steps are captured (docs/cuda.md)
        print("cuda graph " + ("decode steps captured and replayed (TCC_CUDA_GRAPH=0 or --no-cuda-graph: off)"
                               if graph.get("decode") else f"decode steps run directly: {graph.get('why', '?')}"))
    if m.get("tuning"):
        from ..runtime.bench import format_tuning

        print(format_tuning(m["tuning"]))
    return out


def cmd_flags(args) -> int:
    for f in flags.FLAGS.values():
        print(f"{f.env:<20} default {f.default!r:<10} {f.help}")
    return 0


def add_info(sub) -> None:
    n = sub.add_parser("info", help="describe a compiled artifact")
    n.add_argument("artifact")
    n.add_argument("--json", action="store_true", help="print the manifest")
    add_verify_arg(n)
    n.set_defaults(fn=cmd_info)


def add_flags(sub) -> None:
    f = sub.add_parser("flags", help="list the debug flags (environment variables)")
    f.set_defaults(fn=cmd_flags)
