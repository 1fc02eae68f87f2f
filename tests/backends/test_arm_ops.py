"""Every per-op test of tests/test_ops_onnxruntime.py, once more for `--target arm` under qemu.

The test functions of test_ops_onnxruntime.py are collected here a second time with an `arm` engine in
place of its interpreter / compiled engines, one test per CPU of `arm_harness.CPUS` (qemu's default `max`:
dotprod + i8mm; cortex-a53: neither): `test_gelu[cortex-a53-tanh]`. Their bodies, inputs and
tolerances are those of the x86 engines (the same function objects; each test's inputs are drawn from the
same seed as there), and each checks its results against ONNX Runtime itself through `check`.

The 261 tests (x 2 CPUs) make 298 `run_tcc` calls; compiling and emulating ~300 one-node models one by one
would take many minutes, so the tests are run in two phases:

- record (once per session, `arm_results`): every arm test of the session is run once with the engine
  `arm-record`, whose `run_tcc` records (model, feeds, dims) per call and returns the reference
  interpreter's outputs, so the body goes on to its next call. A call the arm backend refuses (import,
  passes, kernel selection: `_lower`) raises there as it would in `tcc.compile`, so tests expecting an
  error take the same path. The recorded cases are merged into one model per ONNX opset (every tensor,
  node, initializer, value_info and symbolic dim renamed `c<i>_...`: the cases are independent, so the
  merged graph computes each exactly as its own model would): 6 models (opsets 13, 15, 17, 18, 20, 23),
  each compiled once for arm (one build tree, so the runtime and shared kernels build once) and run once
  per CPU through the artifact's static `run` binary; the outputs are split back per case.
  The first pytest-xdist worker does this under a lock (`shared_dir`) and stores the results; the others
  wait and load them.
- replay (each test): `run_tcc` returns the outputs its call got in the merged run on the test's CPU
  (the model and feeds must be the recorded ones, bit for bit); a refused call raises its error again.

No case needs its own compile: none of the tests passes compile options other than `dims` (prefixed like
the dims they name).

`test_neon_shapes` adds the cases the x86 op tests do not have and the NEON kernels need: rows longer than
one vector with tails, a constant-B MatMul / Gemm (the packed-panel gemm kernel), wider norms and
attention heads. They are always part of the merged models, so `test_merged_models_use_the_neon_kernels`
checks the kernel manifest whatever the selection.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import pickle
import re
import sys
import types
import zlib

import numpy as np
import onnx
import pytest
import tcc
from tcc.backends import run_emulated
from tcc.ir.interpreter import run_graph

import tests.test_ops_onnxruntime as ops
from tests.test_ops_onnxruntime import ARITH, EXACT, TRANS, check, dot_bound, model_for

from .arm_harness import CPU_IDS, CPUS, needs_emulation, shared_dir

pytestmark = needs_emulation

# Every test of test_ops_onnxruntime.py, collected here once more (the same functions: same bodies).
OP_TESTS = {name: fn for name, fn in vars(ops).items() if name.startswith("test_") and inspect.isfunction(fn)}
globals().update(OP_TESTS)

NORM = (1e-5, 1e-6)


def _neon_cases():
    """(id, op, inputs, attrs, consts, tolerance: (rtol, atol) or a per-element bound), opset 23; inputs
    from one seeded generator. Tolerances as in test_ops_onnxruntime.py."""
    r = np.random.default_rng(11)
    f = lambda *s, lo=-3.0, hi=3.0: r.uniform(lo, hi, s).astype(np.float32)
    i = lambda *s: r.integers(-20, 20, s).astype(np.int64)
    cases = []
    add = lambda cid, op, ins, attrs=None, consts=None, tol=EXACT: cases.append(
        (cid, op, ins, attrs or {}, consts or {}, tol))
    for op, lo, tol in [("Sqrt", 0.01, TRANS), ("Reciprocal", 0.5, ARITH), ("Neg", -3.0, EXACT), ("Exp", -3.0, TRANS),
                        ("Log", 0.01, TRANS), ("Erf", -3.0, TRANS), ("Tanh", -3.0, TRANS), ("Sigmoid", -3.0, TRANS),
                        ("Relu", -3.0, EXACT), ("Abs", -3.0, EXACT), ("Floor", -3.0, EXACT), ("Ceil", -3.0, EXACT),
                        ("Sin", -3.0, TRANS), ("Cos", -3.0, TRANS)]:
        add(op, op, {"x": f(3, 37, lo=lo)}, tol=tol)
    add("Gelu-tanh", "Gelu", {"x": f(2, 41)}, {"approximate": "tanh"}, tol=TRANS)
    add("Gelu-erf", "Gelu", {"x": f(2, 41)}, tol=TRANS)
    add("Clip", "Clip", {"x": f(5, 9)}, consts={"lo": np.float32(-1.0), "hi": np.float32(2.0)})
    for op in ("Add", "Sub", "Mul", "Div"):
        add(f"{op}-row", op, {"a": f(4, 33), "b": f(33)}, tol=ARITH)
        add(f"{op}-col", op, {"a": f(4, 1, 7), "b": f(3, 1)}, tol=ARITH)
    add("Pow-2", "Pow", {"a": f(3, 19)}, consts={"b": np.float32(2.0)}, tol=TRANS)
    add("Max", "Max", {"a": f(6, 11), "b": f(11)})
    add("Min", "Min", {"a": f(6, 11), "b": f(6, 1)})
    add("Add-i64", "Add", {"a": i(3, 9), "b": i(9)})
    for op in ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"):
        add(op, op, {"a": np.round(f(5, 13)), "b": np.round(f(13))})
    add("Where", "Where", {"c": r.random((4, 17)) < 0.5, "x": f(4, 17), "y": f(17)})
    add("Cast-f16", "Cast", {"x": f(3, 21, lo=-70000, hi=70000)}, {"to": onnx.TensorProto.FLOAT16})
    add("Cast-f16-f32", "Cast", {"x": f(3, 21).astype(np.float16)}, {"to": onnx.TensorProto.FLOAT})
    add("Cast-i64", "Cast", {"x": f(3, 21, lo=-100, hi=100)}, {"to": onnx.TensorProto.INT64})
    for op in ("Softmax", "LogSoftmax"):
        add(f"{op}-last", op, {"x": f(3, 4, 37)}, {"axis": -1}, tol=TRANS)
        add(f"{op}-mid", op, {"x": f(3, 5, 6)}, {"axis": 1}, tol=TRANS)
    for op in ("ReduceSum", "ReduceMean", "ReduceMax"):
        add(f"{op}-last", op, {"x": f(4, 5, 19)}, {"keepdims": 1}, {"axes": np.array([-1], np.int64)}, tol=ARITH)
        add(f"{op}-mid", op, {"x": f(4, 5, 19)}, {"keepdims": 0}, {"axes": np.array([1], np.int64)}, tol=ARITH)
    for sa, sb in [((1, 33), (33, 17)), ((7, 40), (40, 20)), ((2, 3, 9), (9, 5)), ((2, 1, 3, 4), (5, 4, 6)),
                   ((13, 64), (64, 1))]:
        a, bm = f(*sa), f(*sb)
        add("MatMul-" + "x".join(map(str, sa)) + "-" + "x".join(map(str, sb)), "MatMul", {"a": a, "b": bm},
            tol=dot_bound(a, bm, sa[-1]))
    a, bm = f(9, 70), f(70, 35)
    add("MatMul-const", "MatMul", {"a": a}, consts={"b": bm}, tol=dot_bound(a, bm, 70))
    a, bm, c = f(5, 24), f(18, 24), f(18)
    # the bias is one more term of the sum (x86 op test: (K + 2) roundings of |a||b| + |c|)
    add("Gemm-bias", "Gemm", {"a": a}, {"transB": 1}, {"b": bm, "c": c},
        tol=dot_bound(a, bm.T, 26) + 2 * 26 * 2.0 ** -24 * np.abs(c))
    add("Transpose", "Transpose", {"x": f(2, 3, 4, 5)}, {"perm": [0, 2, 1, 3]})
    add("Transpose2d", "Transpose", {"x": f(33, 65)})
    add("Concat", "Concat", {"a": f(3, 4), "b": f(3, 7)}, {"axis": 1})
    add("Slice", "Slice", {"x": f(6, 20)}, consts={"s": np.array([1, 18], np.int64), "e": np.array([5, 2], np.int64),
                                                    "a": np.array([0, 1], np.int64), "t": np.array([2, -3], np.int64)})
    add("Gather", "Gather", {"x": f(10, 6)}, {"axis": 0}, {"idx": np.array([[1, 9], [-1, 0]], np.int64)})
    add("Expand", "Expand", {"x": f(3, 1)}, consts={"s": np.array([2, 3, 8], np.int64)})
    w, b = f(48, lo=0.5, hi=1.5), f(48)
    add("LayerNorm", "LayerNormalization", {"x": f(3, 5, 48)}, {"axis": -1, "epsilon": 1e-5}, {"w": w, "b": b}, NORM)
    add("RMSNorm", "RMSNormalization", {"x": f(3, 5, 48)}, {"axis": -1, "epsilon": 1e-5}, {"w": w}, NORM)
    q, k, v = f(2, 4, 7, 16), f(2, 2, 9, 16), f(2, 2, 9, 16)
    add("Attention-causal", "Attention", {"q": q, "k": k, "v": v}, {"is_causal": 1}, tol=NORM)
    add("Attention-mask", "Attention", {"q": q, "k": k, "v": v, "m": f(7, 9)}, tol=NORM)
    return cases


NEON_CASES = _neon_cases()


@pytest.mark.parametrize("case", NEON_CASES, ids=[c[0] for c in NEON_CASES])
def test_neon_shapes(case):
    _, op, ins, attrs, consts, tol = case
    m = model_for(op, ins, attrs, consts=consts, opset=23)
    if isinstance(tol, np.ndarray):  # a per-element absolute bound (sums of products)
        check(m, ins, bound=tol)
    else:
        check(m, ins, tol)


ENGINE_TESTS = {**OP_TESTS, "test_neon_shapes": test_neon_shapes}
_NONE = object()


def pytest_generate_tests(metafunc):
    """The engine tests run once per CPU: `engine` is their CPU."""
    if ENGINE_TESTS.get(metafunc.function.__name__) is metafunc.function:
        metafunc.parametrize("engine", CPUS, ids=CPU_IDS, indirect=True)


def _key(path: str, name: str, ids: str) -> str:
    """A test's nodeid with its engine id removed: what test_ops_onnxruntime's engine fixture seeds R with,
    so the arm engine draws the x86 engines' inputs (and record and replay draw the same)."""
    return f"{path}::{name}[{'-' + ids if ids else ''}]"


def _item_key(item) -> str:
    cpu_id = CPU_IDS[CPUS.index(item.callspec.params["engine"])]
    rest = f"-{item.callspec.id}-".replace(f"-{cpu_id}-", "-", 1)[1:-1]  # the other ids ("-1": an axis)
    return _key(_path(item.function, item.config), item.originalname, rest)


def _path(fn, config) -> str:
    """The nodeid path of the module that defines `fn` (test_ops_onnxruntime.py for the x86 op tests)."""
    module = ops if fn.__module__ == ops.__name__ else sys.modules[__name__]
    return os.path.relpath(module.__file__, str(config.rootpath)).replace(os.sep, "/")


def _is_engine_item(item) -> bool:
    return (isinstance(item, pytest.Function) and getattr(item, "callspec", None) is not None
            and "engine" in item.callspec.params and ENGINE_TESTS.get(item.originalname) is item.function
            and item.module.__name__ == __name__)


# the running arm test: its key, run_tcc calls so far, CPU id, and the session's results
_State = types.SimpleNamespace(key="", calls=0, cpu_id="", results={})


def _digest(model, feeds: dict, dims) -> str:
    h = hashlib.sha256(model.SerializeToString())
    for k in sorted(feeds):
        a = np.ascontiguousarray(feeds[k])
        h.update(f"{k}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    h.update(repr(sorted((dims or {}).items())).encode())
    return h.hexdigest()


def _lower(model, dims) -> None:
    """What `tcc.compile(..., target="arm")` does before the C++ build (import, passes, kernel selection):
    raises where it would refuse the model."""
    from tcc.codegen.program import generate
    from tcc.driver import CompileOptions, optimize

    graph, ctx, backend = optimize(model, CompileOptions(target="arm", dims=dict(dims or {})))
    generate(graph, ctx.stats["plan-memory"], backend, ctx.symbol_bounds)


# -- record ---------------------------------------------------------------------------------------------

_RECORDED: dict = {}  # key -> [case dict per run_tcc call]


def _record(model, feeds, dims, g):
    calls = _RECORDED.setdefault(_State.key, [])
    case = {"digest": _digest(model, feeds, dims), "refused": False}
    calls.append(case)
    try:
        _lower(model, dims)
    except Exception:  # the arm compile refuses (TccError) or fails on this call: the test sees it as there
        case["refused"] = True
        raise
    case.update(model=model, feeds={k: np.array(v, copy=True) for k, v in feeds.items()}, dims=dict(dims or {}))
    return run_graph(g, feeds)


def _run_recording(key: str, fn, kwargs: dict) -> str | None:
    """Run one test body with the record engine; its error, if any (a failing body is reported by the
    test's own replay)."""
    _State.key = key
    ops.R = np.random.default_rng(zlib.crc32(key.encode()))
    _RECORDED.pop(key, None)
    try:
        fn(**kwargs)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 - pytest's outcomes (raises' Failed) are BaseExceptions
        return f"{type(e).__name__}: {e}"
    return None


def _prefix_dim(dim_param: str, p: str) -> str:
    """A dim_param renamed for case prefix `p` (the dims of the case, prefixed, name the same symbol)."""
    if "+" in dim_param:  # a sum of symbols ("past + seq", onnx_import's _SUM_RE): each symbol
        return " + ".join(t if t.isdigit() else p + t for t in (t.strip() for t in dim_param.split("+")))
    return p + dim_param


def _merge(cases: list[dict]):
    """One model of every case (all of one opset), its feeds and dims, and per case its output names
    ({merged name: case output name})."""
    nodes, inputs, outputs, inits, value_info, feeds, dims, names = [], [], [], [], [], {}, {}, []
    opsets: dict = {}
    ir_version = 0
    for n, case in enumerate(cases):
        p = f"c{n}_"
        m = case["model"]
        g = m.graph
        ren = lambda s, p=p: p + s if s else s  # "": an omitted optional input
        for j, node in enumerate(g.node):
            new = onnx.NodeProto()
            new.CopyFrom(node)
            new.name = p + (node.name or f"node{j}")
            new.input[:] = [ren(s) for s in node.input]
            new.output[:] = [ren(s) for s in node.output]
            assert not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute), \
                "subgraphs are not renamed"
            nodes.append(new)
        for src, dst in ((g.input, inputs), (g.output, outputs), (g.value_info, value_info)):
            for vi in src:
                c = onnx.ValueInfoProto()
                c.CopyFrom(vi)
                c.name = p + vi.name
                for d in c.type.tensor_type.shape.dim:
                    if d.HasField("dim_param") and d.dim_param:
                        d.dim_param = _prefix_dim(d.dim_param, p)
                dst.append(c)
        for t in g.initializer:
            c = onnx.TensorProto()
            c.CopyFrom(t)
            c.name = p + t.name
            inits.append(c)
        assert not g.sparse_initializer
        feeds.update({p + k: v for k, v in case["feeds"].items()})
        dims.update({p + k: v for k, v in case["dims"].items()})
        names.append({p + o.name: o.name for o in g.output})
        for o in m.opset_import:
            opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
        ir_version = max(ir_version, m.ir_version)
    graph = onnx.helper.make_graph(nodes, "arm_ops", inputs, outputs, initializer=inits, value_info=value_info)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in opsets.items()])
    model.ir_version = ir_version
    return model, feeds, dims, names


def _opset(model) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _since(t0) -> tuple[float, float]:
    """(wall, CPU seconds of this process and its children) since os.times() t0."""
    t = os.times()
    return round(t.elapsed - t0.elapsed, 2), round(sum(t[:4]) - sum(t0[:4]), 2)


def _build_and_run(cases: list[dict], d, timings: dict) -> list[str]:
    """Merge per opset, compile each once for arm, run each once per CPU; fills case["outputs"][cpu id]
    (or case["errors"][cpu id]: a merged model that fails to build or run fails its cases' tests, not the
    others'). Returns the kernels of every merged model."""
    groups: dict[int, list[dict]] = {}
    for case in cases:
        groups.setdefault(_opset(case["model"]), []).append(case)
    kernels = set()
    for opset, group in sorted(groups.items()):
        for case in group:
            case["outputs"], case["errors"] = {}, {}
        model, feeds, dims, names = _merge(group)
        path, out = str(d / f"ops{opset}.onnx"), str(d / f"ops{opset}")
        onnx.save(model, path)
        t0 = os.times()
        try:
            tcc.compile(path, out, target="arm", dims=dims, build_dir=str(d / "build"))
        except Exception as e:  # noqa: BLE001 - reported by each of the group's tests
            for case in group:
                case["errors"] = {cpu_id: f"compiling the merged model {path}: {type(e).__name__}: {e}"
                                  for cpu_id in CPU_IDS}
            continue
        timings[f"compile opset {opset} ({len(group)} cases)"] = _since(t0)
        with open(os.path.join(out, "manifest.json")) as fh:
            manifest = json.load(fh)
        kernels.update(manifest["kernels"])
        for cpu, cpu_id in zip(CPUS, CPU_IDS):
            t0 = os.times()
            try:
                results = run_emulated(out, manifest, feeds, cpu=cpu)[0]
            except Exception as e:  # noqa: BLE001
                for case in group:
                    case["errors"][cpu_id] = f"running the merged model {out} on {cpu_id}: {type(e).__name__}: {e}"
                continue
            timings[f"run opset {opset} {cpu_id}"] = _since(t0)
            for case, outs in zip(group, names):
                case["outputs"][cpu_id] = {name: results[merged] for merged, name in outs.items()}
    return sorted(kernels)


def _record_build_run(items, config, d) -> dict:
    todo = {}
    for item in items:
        key = _item_key(item)
        params = inspect.signature(item.function).parameters
        todo.setdefault(key, (item.function, {n: item.callspec.params[n] for n in params}))
    here = _path(test_neon_shapes, config)
    for cid, case in zip((c[0] for c in NEON_CASES), NEON_CASES):  # always: the manifest check needs them
        todo.setdefault(_key(here, "test_neon_shapes", cid), (test_neon_shapes, {"case": case}))
    saved = ops.ENGINE, ops.R
    ops.ENGINE = "arm-record"
    t0 = os.times()
    errors = {}
    try:
        for key, (fn, kwargs) in todo.items():
            err = _run_recording(key, fn, kwargs)
            if err:
                errors[key] = err
    finally:
        ops.ENGINE, ops.R = saved
    timings = {"record": _since(t0)}
    cases = [c for calls in _RECORDED.values() for c in calls if not c["refused"]]
    kernels = _build_and_run(cases, d, timings)
    stored = {key: [{k: c.get(k, {}) for k in ("digest", "refused", "outputs", "errors")} for c in calls]
              for key, calls in _RECORDED.items()}
    return {"cases": stored, "errors": errors, "kernels": kernels, "count": len(cases), "timings": timings}


@pytest.fixture(scope="module")
def arm_results(request, tmp_path_factory):
    """The recorded calls' outputs per CPU (built by the first worker, loaded by the others)."""
    items = [it for it in request.session.items if _is_engine_item(it)]
    tag = hashlib.sha256("\n".join(sorted({_item_key(it) for it in items})).encode()).hexdigest()[:12]
    with shared_dir(tmp_path_factory, f"arm_ops-{tag}") as d:
        path = d / "results.pkl"
        if not path.is_file():
            results = _record_build_run(items, request.config, d)
            with open(str(path) + ".tmp", "wb") as fh:
                pickle.dump(results, fh)
            os.replace(str(path) + ".tmp", path)
    with open(path, "rb") as fh:
        return pickle.load(fh)


def _replay(model, feeds, dims, g):
    n = _State.calls
    _State.calls += 1
    calls = _State.results["cases"].get(_State.key, [])
    if n >= len(calls):
        err = _State.results["errors"].get(_State.key)
        pytest.fail(f"{_State.key}: call {n} of run_tcc was not recorded"
                    + (f" (the recording raised {err})" if err else ""))
    case = calls[n]
    assert _digest(model, feeds, dims) == case["digest"], f"{_State.key}: call {n} differs from the recorded one"
    if case["refused"]:
        _lower(model, dims)  # raises the refusal again
        pytest.fail(f"{_State.key}: call {n} was refused when recorded, not now")
    if _State.cpu_id in case["errors"]:
        pytest.fail(case["errors"][_State.cpu_id])
    return dict(case["outputs"][_State.cpu_id])


ops.ENGINES["arm-record"] = _record
ops.ENGINES["arm"] = _replay


@pytest.fixture(autouse=True)
def engine(request, arm_results):
    """The arm engine for the engine tests (parametrized by CPU in pytest_generate_tests)."""
    cpu = getattr(request, "param", _NONE)
    if cpu is _NONE:
        yield None
        return
    _State.key, _State.calls, _State.results = _item_key(request.node), 0, arm_results
    _State.cpu_id = CPU_IDS[CPUS.index(cpu)]
    ops.ENGINE = "arm"
    ops.R = np.random.default_rng(zlib.crc32(_State.key.encode()))
    yield cpu
    ops.ENGINE = "interpreter"


def test_merged_models_use_the_neon_kernels(arm_results):
    kernels = set(arm_results["kernels"])
    for name in ("tcc_gemm_f32__neon", "tcc_matmul_f32__neon", "tcc_attention_f32__neon",  # const B, MatMul, Attention
                 "tcc_unary_exp_f32__neon", "tcc_binary_add_f32__neon", "tcc_where_f32__neon",
                 "tcc_softmax_softmax_f32__neon", "tcc_softmax_logsoftmax_f32__neon", "tcc_reduce_sum_f32__neon",
                 "tcc_norm_layernorm_f32__neon", "tcc_norm_rmsnorm_f32__neon", "tcc_cast_f32_f16__neon"):
        assert name in kernels, sorted(kernels)
    # every f32 kernel of a family with a NEON variant is the NEON one
    portable = [k for k in kernels if re.match(r"tcc_(unary|binary|where|reduce|softmax|norm|gemm|matmul|attention)_"
                                               r"(\w+_)?f32__", k) and not k.endswith("__neon")]
    assert not portable, portable
