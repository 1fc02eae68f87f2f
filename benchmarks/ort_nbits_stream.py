#!/usr/bin/env python
"""ONNX Runtime's MatMulNBits form of a big (fp16 / bf16 / fp32, external-data) LLaMA export, written tensor
by tensor, and ONNX Runtime's decode timed on it: issue 22's "ORT beside tcc" row at the 7B shape.

    python benchmarks/ort_nbits_stream.py quantize --model /work/big/llama2-7b-f16/model.onnx \
        --out /work/big/ort-7b16-nbits-acc4 --accuracy-level 4
    python benchmarks/ort_nbits_stream.py bench --model /work/big/ort-7b16-nbits-acc4 \
        --prompt-len 32 --gen 16 --threads 2 --repeat 3

Why: ORT's own `MatMulNBitsQuantizer(onnx.load(model))` loads the whole model (12.6 GiB for the 7B fp16
export, 25 GiB at fp32) and then holds the quantized copy beside it, which a 24 GiB machine shared with
other work cannot afford. This writes the same model one tensor at a time:

- the graph is loaded without its weights (`load_external_data=False`); each initializer is read from the
  external-data file through its own memory map (offset/length from its external_data entries), unmapped
  as soon as it is written, so the peak is about one tensor (the 32000x4096 lm_head in f32: 0.5 GB);
- each constant 2-D MatMul weight is upcast to f32 and quantized by ORT's own routine, the method
  MatMulNBitsQuantizer calls (`DefaultWeightOnlyQuantizer.qbits_block_quant`, i.e. the C++
  `quantize_matmul_4bits`; block 32, symmetric int4): the packed codes and scales are ORT's, bit for bit
  those the stock quantizer writes for the model's f32 copy (tests/e2e/test_ort_nbits_stream.py);
- the MatMul becomes a `com.microsoft.MatMulNBits` node named and attributed as the stock quantizer names
  it (accuracy_level 4: int8 activations, tcc's w4a8 counterpart; 0: f32 activations, w4a32's);
- everything else runs at f32 activations on ORT's CPU provider: the other f16/bf16 initializers are
  converted to f32 one at a time, and f16/bf16 graph I/O and value types, Cast targets and Constant /
  ConstantOfShape values are rewritten to f32 (ORT's CPU provider has no bf16 MatMul, and its f16 path
  is not what a CPU user runs).

`bench` drives the result the way benchmarks/llm_suite.py drives ORT (its OrtDecoder: CPU provider, all
graph optimizations, presents fed back as ORT-owned OrtValues): warm-up, then per repeat a prompt of
--prompt-len tokens and --gen greedy tokens; prints one JSON line (load time, prefill tok/s, decode
ms/token, peak RSS, the load average before and after). `--max-rss-mib` stops it (exit 3) if its RSS passes
a limit; `--layers N` benches the model cut to its first N decoder layers (model-L<N>.onnx beside it, the
same weights file), for projecting a session too big for the machine.

Memory, measured with onnxruntime 1.32 on x86 (AVX-512): at accuracy_level 4 the CPU provider prepacks each
MatMulNBits weight for its int8 kernels into about 1.6x its int4 file size (codes + f32 scales), so the 7B
model's 3.85 GiB of MatMulNBits weights take about 5.7 GiB once loaded; at accuracy_level 0 it keeps the
mapped codes (about 1x) but computes by dequantizing each weight to f32 per call, which is slow.
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import mmap
import os
import statistics
import sys
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

BLOCK = 32
DATA = "model.onnx.data"
ALIGN = 4096            # external tensors start on a page, so ORT may map them
INLINE_BYTES = 1024     # smaller tensors stay in model.onnx (onnx's own default threshold)
MAX_IR_VERSION = 10     # onnxruntime 1.2x refuses the IR 14 that onnx >= 1.23 writes


def _errors():
    try:
        from tcc.errors import ModelFormatError
    except ImportError:  # run outside the package: the one-line error is all that matters
        class ModelFormatError(Exception):
            pass
    return ModelFormatError


ModelFormatError = _errors()


class NbitsInputError(ModelFormatError):
    """The model to quantize or bench is missing, not ONNX, or its external data does not match it."""


@functools.lru_cache(maxsize=None)
def _suite():
    spec = importlib.util.spec_from_file_location("llm_suite", os.path.join(HERE, "llm_suite.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rss_kib(field: str) -> int:
    return _suite()._rss_kib(field)  # llm_suite's reader of /proc/self/status (no tcc import needed)


def peak_rss_bytes() -> int:
    return 1024 * _rss_kib("VmHWM")


def loadavg() -> list[float]:
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


# --------------------------------------------------------------------------------------------- types
def _tp():
    from onnx import TensorProto

    return TensorProto


def _half_types() -> set[int]:
    tp = _tp()
    return {tp.FLOAT16, tp.BFLOAT16}


def _np_dtype(data_type: int) -> np.dtype:
    from onnx import helper

    if data_type == _tp().BFLOAT16:
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(helper.tensor_dtype_to_np_dtype(data_type))


# --------------------------------------------------------------------------------------------- reading
class TensorReader:
    """Reads one initializer at a time: inline ones from the proto, external ones through a memory map of
    just their bytes (closed by `release`, so its pages leave this process's RSS)."""

    def __init__(self, model_dir: str):
        self.model_dir = model_dir
        self.maps: list[mmap.mmap] = []

    def read(self, t) -> np.ndarray:
        from onnx import numpy_helper

        dtype = _np_dtype(t.data_type)
        count = int(np.prod(t.dims, dtype=np.int64)) if len(t.dims) else 1
        if t.data_location != _tp().EXTERNAL:
            arr = numpy_helper.to_array(t)
            return arr.astype(dtype, copy=False).reshape(tuple(t.dims))
        info = {e.key: e.value for e in t.external_data}
        path = os.path.join(self.model_dir, info.get("location", ""))
        offset, nbytes = int(info.get("offset", 0)), int(info.get("length", count * dtype.itemsize))
        if not info.get("location") or not os.path.isfile(path):
            raise NbitsInputError(f"initializer {t.name!r}: external data file {path!r} not found")
        size = os.path.getsize(path)
        if nbytes != count * dtype.itemsize or offset + nbytes > size:
            raise NbitsInputError(f"initializer {t.name!r}: {nbytes} bytes at offset {offset} do not hold its "
                                  f"{count} x {dtype} values in {path!r} ({size} bytes)")
        if nbytes == 0:
            return np.zeros(tuple(t.dims), dtype)
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        with open(path, "rb") as f:
            m = mmap.mmap(f.fileno(), offset + nbytes - start, access=mmap.ACCESS_READ, offset=start)
        m.madvise(mmap.MADV_SEQUENTIAL)
        self.maps.append(m)
        return np.frombuffer(m, dtype, count, offset - start).reshape(tuple(t.dims))

    def release(self) -> None:
        """Unmap what `read` mapped; every array it returned must be gone (numpy holds the buffer)."""
        for m in self.maps:
            m.close()
        self.maps.clear()


class TensorWriter:
    """Appends tensors to the output's external-data file and returns their protos."""

    def __init__(self, path: str):
        self.path = path
        self.f = open(path, "wb")
        self.offset = 0

    def tensor(self, name: str, arr: np.ndarray, data_type: int | None = None):
        from onnx import TensorProto, numpy_helper

        arr = np.ascontiguousarray(arr)
        if arr.nbytes < INLINE_BYTES:
            t = numpy_helper.from_array(arr, name)
            if data_type is not None:
                t.data_type = data_type
            return t
        pad = -self.offset % ALIGN
        if pad:
            self.f.write(b"\0" * pad)
            self.offset += pad
        t = TensorProto()
        t.name = name
        t.dims.extend(arr.shape)
        t.data_type = data_type if data_type is not None else numpy_helper.from_array(arr[:0]).data_type
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", os.path.basename(self.path)), ("offset", str(self.offset)),
                     ("length", str(arr.nbytes))):
            e = t.external_data.add()
            e.key, e.value = k, v
        arr.reshape(-1).view(np.uint8).tofile(self.f)
        self.offset += arr.nbytes
        return t

    def close(self) -> None:
        self.f.close()


# --------------------------------------------------------------------------------------------- graph
def _to_f32_tensor_attr(t) -> None:
    """A Constant's / ConstantOfShape's f16 or bf16 value, in place, as f32 (exact)."""
    from onnx import numpy_helper

    if t.data_type in _half_types():
        arr = TensorReader("").read(t).astype(np.float32)
        t.CopyFrom(numpy_helper.from_array(arr, t.name))


def _rewrite_half_types(graph) -> int:
    """Every f16/bf16 type in the graph (I/O, value_info, Cast targets, tensor attributes, nested graphs)
    made f32. Returns how many places changed."""
    from onnx import AttributeProto

    tp, half, n = _tp(), _half_types(), 0
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        tt = vi.type.tensor_type
        if tt.elem_type in half:
            tt.elem_type = tp.FLOAT
            n += 1
    for node in graph.node:
        for a in node.attribute:
            if a.type == AttributeProto.INT and a.name in ("to", "dtype") and a.i in half:
                a.i = tp.FLOAT
                n += 1
            elif a.type == AttributeProto.TENSOR and a.t.data_type in half:
                _to_f32_tensor_attr(a.t)
                n += 1
            elif a.type == AttributeProto.GRAPH:
                n += _rewrite_half_types(a.g)
            elif a.type == AttributeProto.GRAPHS:
                n += sum(_rewrite_half_types(g) for g in a.graphs)
    return n


def quantizable_weights(graph) -> dict[str, list]:
    """{initializer name: [MatMul nodes]} for the MatMuls whose B is a 2-D initializer that is no graph
    input (a constant): the weights the stock quantizer turns into MatMulNBits (it also squeezes N-D
    weights with leading 1s; LLaMA exports have none, so those stay MatMul here)."""
    inits = {t.name: t for t in graph.initializer}
    inputs = {i.name for i in graph.input}
    out: dict[str, list] = {}
    for node in graph.node:
        if node.op_type == "MatMul" and node.domain in ("", "ai.onnx") and len(node.input) == 2:
            b = node.input[1]
            if b in inits and b not in inputs and len(inits[b].dims) == 2:
                out.setdefault(b, []).append(node)
    return out


def _nbits_node(node, q_name: str, s_name: str, k: int, n: int, accuracy_level: int):
    from onnx import helper

    kwargs = {"K": k, "N": n, "bits": 4, "block_size": BLOCK}
    if accuracy_level:  # the stock quantizer omits the attribute at 0 (its default)
        kwargs["accuracy_level"] = accuracy_level
    return helper.make_node("MatMulNBits", [node.input[0], q_name, s_name], [node.output[0]],
                            name=node.name + "_Q4" if node.name else "", domain="com.microsoft", **kwargs)


def _ort_block_quantizer(accuracy_level: int):
    """ORT's own blockwise int4 quantizer: the object and method MatMulNBitsQuantizer uses for
    bits=4, block_size=32, is_symmetric=True (its DEFAULT algorithm, QOperator format)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig,
                                                                  DefaultWeightOnlyQuantizer)

    cfg = DefaultWeightOnlyQuantConfig(block_size=BLOCK, is_symmetric=True, accuracy_level=accuracy_level or None,
                                       bits=4)
    return DefaultWeightOnlyQuantizer(cfg)


def load_graph(path: str):
    import onnx

    if not os.path.isfile(path):
        raise NbitsInputError(f"model {path!r} not found")
    try:
        return onnx.load(path, load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends: not an ONNX file
        raise NbitsInputError(f"{path!r} is not an ONNX model ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def quantize(src: str, out_dir: str, accuracy_level: int = 4, log=None) -> dict:
    """Write `src` as ONNX Runtime's MatMulNBits model (int4, block 32, symmetric, f32 activations) into
    out_dir/model.onnx + model.onnx.data, one tensor in memory at a time. Returns figures."""
    import onnx
    from onnx import helper

    t0 = time.perf_counter()
    if os.path.isdir(src):
        src = os.path.join(src, "model.onnx")
    model = load_graph(src)
    if accuracy_level not in (0, 1, 2, 3, 4):
        raise NbitsInputError(f"accuracy level {accuracy_level} is not one of MatMulNBits' 0..4")
    g = model.graph
    weights = quantizable_weights(g)
    if not weights:
        raise NbitsInputError(f"{src!r} has no MatMul with a constant 2-D weight to quantize")
    os.makedirs(out_dir, exist_ok=True)
    reader, writer = TensorReader(os.path.dirname(os.path.abspath(src))), TensorWriter(os.path.join(out_dir, DATA))
    quantizer = _ort_block_quantizer(accuracy_level)
    half = _half_types()
    new_inits, source_dtypes, converted, t_quant = [], {}, 0, 0.0
    try:
        for i, t in enumerate(g.initializer):
            source_dtypes[t.data_type] = source_dtypes.get(t.data_type, 0) + 1
            arr = reader.read(t)
            if t.name in weights:
                k, n = arr.shape
                tq = time.perf_counter()
                w = np.array(arr, np.float32, order="C")  # exact for f16 / bf16; a copy (not a view of the map) for f32
                del arr
                reader.release()
                packed, scales, _ = quantizer.qbits_block_quant(w)
                del w
                t_quant += time.perf_counter() - tq
                new_inits.append(writer.tensor(t.name + "_Q4", packed))
                new_inits.append(writer.tensor(t.name + "_scales", scales))
                del packed, scales
                for node in weights[t.name]:
                    node.CopyFrom(_nbits_node(node, t.name + "_Q4", t.name + "_scales", k, n, accuracy_level))
            else:
                if t.data_type in half:
                    arr = arr.astype(np.float32)
                    converted += 1
                new_inits.append(writer.tensor(t.name, arr, None if t.data_type in half else t.data_type))
                del arr
                reader.release()
            if log and (i + 1) % 50 == 0:
                log(f"  {i + 1}/{len(g.initializer)} initializers, {writer.offset / 2**30:.2f} GiB written, "
                    f"peak RSS {peak_rss_bytes() / 2**20:.0f} MiB")
    finally:
        reader.release()
        writer.close()
    del g.initializer[:]
    g.initializer.extend(new_inits)
    rewritten = _rewrite_half_types(g)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    dst = os.path.join(out_dir, "model.onnx")
    onnx.save(model, dst)
    ops: dict[str, int] = {}
    for node in g.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return {"model": dst, "accuracy_level": accuracy_level, "matmulnbits_weights": len(weights),
            "nodes": ops, "f16_bf16_initializers_to_f32": converted, "half_types_rewritten": rewritten,
            "source_dtypes": {onnx.TensorProto.DataType.Name(k): v for k, v in source_dtypes.items()},
            "bytes": os.path.getsize(dst) + os.path.getsize(os.path.join(out_dir, DATA)),
            "seconds": round(time.perf_counter() - t0, 1), "quantize_seconds": round(t_quant, 1),
            "peak_rss_bytes": peak_rss_bytes()}


# --------------------------------------------------------------------------------------------- bench
class RssGuard:
    """Stops this process (one line, exit 3) if its RSS passes `limit` bytes: the machine is shared, and an
    ORT session that outgrows its budget must not take the other jobs down with it."""

    def __init__(self, limit: int):
        self.limit, self.seen = limit, 0
        if limit > 0:
            threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while True:
            rss = 1024 * _rss_kib("VmRSS")
            self.seen = max(self.seen, rss)
            if rss > self.limit:
                print(f"ort_nbits_stream: error: RSS {rss / 2**20:.0f} MiB passed the --max-rss-mib limit "
                      f"{self.limit / 2**20:.0f} MiB; stopped", file=sys.stderr, flush=True)
                os._exit(3)
            time.sleep(0.05)


def _layer_of(name: str) -> int | None:
    """The decoder layer a node of the exporter's graph belongs to (/model/layers.<i>/...), else None."""
    parts = name.split("/")
    if len(parts) > 2 and parts[1] == "model" and parts[2].startswith("layers."):
        return int(parts[2].split(".")[1])
    return None


def truncate_layers(model: str, layers: int) -> str:
    """The model cut to its first `layers` decoder layers, written as model-L<layers>.onnx beside it (same
    external-data file, so no weights are copied): the final norm reads layer layers-1's residual output,
    the later layers' nodes and past/present I/O are dropped, unused nodes and initializers pruned. For
    projecting the time and memory of a session too big for the machine (per layer, linear in layers)."""
    import onnx

    m = load_graph(model)
    g = m.graph
    total = 1 + max((_layer_of(n.name) for n in g.node if _layer_of(n.name) is not None), default=-1)
    if not 1 <= layers < total:
        raise NbitsInputError(f"--layers {layers}: the model has {total} decoder layers (keep 1..{total - 1})")
    cut = f"/model/layers.{total - 1}/Add_1_output_0"
    keep = f"/model/layers.{layers - 1}/Add_1_output_0"
    if not any(cut in n.output for n in g.node):
        raise NbitsInputError(f"{model!r} is not in the exporter's layer form (no {cut!r})")
    nodes = [n for n in g.node if (_layer_of(n.name) or 0) < layers]
    for n in nodes:
        for i, x in enumerate(n.input):
            if x == cut:
                n.input[i] = keep

    def dropped(name: str) -> bool:
        p = name.split(".")
        return p[0] in ("past_key_values", "present") and len(p) > 1 and p[1].isdigit() and int(p[1]) >= layers

    outputs = [o for o in g.output if not dropped(o.name)]
    inputs = [i for i in g.input if not dropped(i.name)]
    needed = {o.name for o in outputs}
    live = []
    for n in reversed(nodes):  # the graph is topologically sorted: prune what nothing needs
        if any(o in needed for o in n.output):
            live.append(n)
            needed.update(n.input)
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    needed.update(x for sub in a.g.node for x in sub.input)
    live.reverse()
    inits = [t for t in g.initializer if t.name in needed]
    for field, items in (("node", live), ("output", outputs), ("input", inputs), ("initializer", inits)):
        del getattr(g, field)[:]
        getattr(g, field).extend(items)
    del g.value_info[:]
    dst = os.path.join(os.path.dirname(os.path.abspath(model)), f"model-L{layers}.onnx")
    onnx.save(m, dst)
    return dst


def bench(model: str, prompt_len: int, gen: int, threads: int, repeat: int, max_rss_mib: int = 0,
          layers: int = 0) -> dict:
    """ORT on `model` (a folder or .onnx) driven as llm_suite drives it; the figures tcc bench prints.
    layers > 0: on the model cut to its first `layers` decoder layers (truncate_layers)."""
    if os.path.isdir(model):
        model = os.path.join(model, "model.onnx")
    load_graph(model)  # a missing or broken file is a one-line error, not ORT's traceback
    if layers:
        model = truncate_layers(model, layers)
    if prompt_len < 1 or gen < 2 or repeat < 1 or threads < 1:
        raise NbitsInputError("--prompt-len, --threads and --repeat must be >= 1 and --gen >= 2")
    RssGuard(max_rss_mib << 20)  # its daemon thread watches until the process ends
    suite = _suite()
    la0 = loadavg()
    base = 1024 * _rss_kib("VmRSS")
    t0 = time.perf_counter()
    dec = suite.OrtDecoder(model, threads, "iobinding")
    load_s = time.perf_counter() - t0
    load_peak = peak_rss_bytes()
    vocab = int(dec.sess.get_outputs()[0].shape[-1])
    prompt = suite._prompt(vocab, prompt_len)
    dec.feed(prompt[:4])  # warm the pages and the thread pool, as tcc's bench and llm_suite do
    dec.feed([prompt[4 % len(prompt)]])
    prefill, decode, ttft, tokens = [], [], [], None
    for _ in range(repeat):
        dec.reset()
        t1 = time.perf_counter()
        logits = dec.feed(prompt)
        t2 = time.perf_counter()
        out = [int(np.argmax(logits))]
        for _ in range(gen - 1):
            out.append(int(np.argmax(dec.feed([out[-1]]))))
        t3 = time.perf_counter()
        ttft.append(t2 - t1)
        prefill.append(prompt_len / (t2 - t1))
        decode.append(1e3 * (t3 - t2) / (gen - 1))
        tokens = tokens or out
    return {"model": model, "layers": layers or "all", "threads": threads, "prompt_len": prompt_len, "gen": gen, "repeat": repeat,
            "load_seconds": round(load_s, 2), "load_peak_rss_mib": round(load_peak / 2**20),
            "prefill_tok_s": round(statistics.median(prefill), 2), "prefill_tok_s_best": round(max(prefill), 2),
            "ttft_s": round(statistics.median(ttft), 3),
            "decode_ms": round(statistics.median(decode), 1), "decode_ms_best": round(min(decode), 1),
            "decode_ms_all": [round(d, 1) for d in decode],
            "peak_rss_mib": round(peak_rss_bytes() / 2**20), "baseline_rss_mib": round(base / 2**20),
            "loadavg_before": la0, "loadavg_after": loadavg(), "tokens": tokens,
            "onnxruntime": _ort_version()}


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


# --------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ort_nbits_stream", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quantize", help="stream an ONNX export into ORT's MatMulNBits form (f32 activations)")
    q.add_argument("--model", required=True, help="model.onnx (or its folder), external data beside it")
    q.add_argument("--out", required=True, help="output folder (model.onnx + model.onnx.data)")
    q.add_argument("--accuracy-level", type=int, default=4, help="MatMulNBits accuracy_level: 4 int8 activations "
                   "(tcc w4a8's counterpart), 0 f32 (w4a32's)")
    b = sub.add_parser("bench", help="time ORT (CPU provider) on a model: load, prefill, decode, peak RSS")
    b.add_argument("--model", required=True)
    b.add_argument("--prompt-len", type=int, default=32)
    b.add_argument("--gen", type=int, default=16)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--repeat", type=int, default=3)
    b.add_argument("--max-rss-mib", type=int, default=0, help="stop (exit 3) if the RSS passes this; 0: no limit")
    b.add_argument("--layers", type=int, default=0, help="bench the model cut to its first N decoder layers "
                   "(model-L<N>.onnx beside it, same weights file): for projecting a session too big to load")
    a = p.parse_args(argv)
    try:
        if a.cmd == "quantize":
            res = quantize(a.model, a.out, a.accuracy_level,
                           log=lambda m: print(f"[ort-nbits {time.strftime('%H:%M:%S')}] {m}", file=sys.stderr,
                                               flush=True))
        else:
            res = bench(a.model, a.prompt_len, a.gen, a.threads, a.repeat, a.max_rss_mib, a.layers)
    except NbitsInputError as e:
        print(f"ort_nbits_stream: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
