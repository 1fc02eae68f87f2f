"""Property test of plan-memory over many random DAGs.

Each DAG mixes in-place-able ops (unary / binary elementwise), views (Reshape, Unsqueeze, Squeeze,
Identity), opaque ops (Linear, Softmax), a multi-output op (Split), Concat, symbolic dims with bounds, and
outputs that are intermediates, views, inputs, constants or repeated. Checked:
  * every value is placed; inputs/constants/outputs are never in the arena; output j is placed as output j
    and no two outputs share a buffer;
  * arena offsets are 64-byte aligned and end inside the arena; arena >= lower bound (both recomputed
    here from the final graph, independently of the planner's bookkeeping);
  * no two storages alive at the same node overlap (recomputed liveness);
  * every in-place reuse is legal (op has OpDef.inplace, same shape and itemsize, input's storage dies there);
  * executing the graph with every arena value really stored at its offset in one byte arena gives the
    interpreter's outputs exactly (a live value overwritten by another would show up as a wrong output).
"""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcc.ir.core import Graph
from tcc.ir.dims import Sym
from tcc.ir.interpreter import bind_symbols, concrete, run_graph
from tcc.ir.registry import get_op, run_ref
from tcc.passes.memory_plan import ALIGN, align_up

from .helpers import make_ctx, random_feeds, run_pass, t

UNARY = ["Relu", "Neg", "Exp", "Sigmoid", "Tanh", "Abs"]
BINARY = ["Add", "Mul", "Sub", "Max"]


def _obj(dims):
    a = np.empty(len(dims), object)
    a[:] = list(dims)
    return a


def random_graph(rng: np.random.Generator) -> tuple[Graph, dict[str, int]]:
    g = Graph("rand")
    n = Sym.symbol("n")
    values = []  # f32 values of shape [n, 8], [n, 4, 2], [n, 1, 8], [n, 4]
    values.append(g.add_input("x0", t("f32", "n", 8)))
    if rng.random() < 0.6:
        values.append(g.add_input("x1", t("f32", "n", 4, 2)))
    consts = [g.add_const(rng.standard_normal((8,)).astype(np.float32), "c8"),
              g.add_const(rng.standard_normal((8, 8)).astype(np.float32), "w88")]
    for i in range(int(rng.integers(3, 25))):
        kind = rng.choice(["unary", "binary", "view", "linear", "softmax", "split", "concat", "bcast"],
                          p=[0.25, 0.2, 0.2, 0.08, 0.07, 0.07, 0.06, 0.07])
        src = values[int(rng.integers(len(values)))]
        shape = tuple(src.shape)
        rank = len(shape)
        if kind == "unary":
            values.append(g.add_node(str(rng.choice(UNARY)), [src]).output)
        elif kind == "binary":
            same = [v for v in values if tuple(v.shape) == shape]
            other = same[int(rng.integers(len(same)))]
            values.append(g.add_node(str(rng.choice(BINARY)), [src, other]).output)
        elif kind == "bcast" and shape[-1] == 8:
            values.append(g.add_node("Mul", [src, consts[0]]).output)
        elif kind == "view":
            if rank == 2 and shape[1] == 8:
                op = rng.choice(["r42", "unsq", "id"])
                if op == "r42":
                    values.append(g.add_node("Reshape", [src, g.add_const(_obj([n, 4, 2]), "s")]).output)
                elif op == "unsq":
                    values.append(g.add_node("Unsqueeze", [src], {"axes": [1]}).output)
                else:
                    values.append(g.add_node("Identity", [src]).output)
            elif rank == 3 and shape[1] == 1:
                values.append(g.add_node("Squeeze", [src], {"axes": [1]}).output)
            elif rank == 3:
                values.append(g.add_node("Reshape", [src, g.add_const(_obj([n, 8]), "s")]).output)
            else:
                values.append(g.add_node("Identity", [src]).output)
        elif kind == "linear" and shape[-1] == 8:
            values.append(g.add_node("Linear", [src, consts[1]]).output)
        elif kind == "softmax":
            values.append(g.add_node("Softmax", [src], {"axis": -1}).output)
        elif kind == "split" and rank == 2 and shape[1] == 8:
            a, b = g.add_node("Split", [src], {"axis": 1, "split": [4, 4]}).outputs
            values += [a, b] if rng.random() < 0.7 else [b]
        elif kind == "concat" and rank == 2 and shape[1] == 4:
            other = [v for v in values if tuple(v.shape) == shape]
            values.append(g.add_node("Concat", [src, other[int(rng.integers(len(other)))]], {"axis": 1}).output)
    # outputs: intermediates, views, inputs, constants, repeats
    pool = values + consts[:1]
    k = int(rng.integers(1, 4))
    outs = [pool[int(rng.integers(len(pool)))] for _ in range(k)]
    if not any(v.producer is not None for v in outs) and len(values) > len(g.inputs):
        outs.append(values[-1])
    g.outputs = outs
    from tcc.passes.eliminate_dead_code import eliminate_dead_code
    eliminate_dead_code(g)
    bound = int(rng.integers(1, 9))
    return g, {"n": bound}


def _simulate(g: Graph, plan, feeds: dict) -> list[np.ndarray]:
    """Run `g` keeping every arena value in one byte arena at its planned offset."""
    env = bind_symbols(g, feeds)
    arena = np.zeros(max(plan.arena_bytes, 1), np.uint8)
    held: dict[str, np.ndarray] = {v.name: np.asarray(feeds[v.name]) for v in g.inputs}
    for v in g.constants.values():
        held[v.name] = concrete(v.const, env)
    types = {v.name: v for v in g.values()}

    def read(name):
        p = plan.placements[name]
        if p.kind != "arena":
            return held[name]
        v = types[name]
        shape = v.type.concrete_shape(env)
        nbytes = int(np.prod(shape, dtype=np.int64)) * v.dtype.itemsize
        return arena[p.offset:p.offset + nbytes].view(v.dtype.np).reshape(shape).copy()

    for node in g.nodes:
        args = [None if v is None else read(v.name) for v in node.inputs]
        for o, r in zip(node.outputs, run_ref(node, args)):
            r = np.ascontiguousarray(np.asarray(r, dtype=o.dtype.np))
            p = plan.placements[o.name]
            if p.kind == "arena":
                b = r.view(np.uint8).reshape(-1)
                arena[p.offset:p.offset + b.size] = b
            else:
                held[o.name] = r
    return [read(v.name) for v in g.outputs]


def check_plan(g: Graph, plan, bounds: dict[str, int]) -> None:
    P = plan.placements
    names = [v.name for v in g.values()]
    assert set(names) <= set(P)
    for i, v in enumerate(g.inputs):
        assert (P[v.name].kind, P[v.name].index) == ("input", i)
    for v in g.constants.values():
        assert P[v.name].kind == "const"
    roots = set()
    for j, v in enumerate(g.outputs):
        assert (P[v.name].kind, P[v.name].index) == ("output", j)
        assert P[v.name].root not in roots
        roots.add(P[v.name].root)
    # independent liveness over the final order
    index = {id(n): i for i, n in enumerate(g.nodes)}
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    size: dict[str, int] = {}
    for n in g.nodes:
        i = index[id(n)]
        for o in n.outputs:
            p = P[o.name]
            if p.kind == "arena":
                assert p.offset % ALIGN == 0
                first[p.root] = min(first.get(p.root, i), i)
                last[p.root] = max(last.get(p.root, i), i)
                size[p.root] = max(size.get(p.root, 0), o.type.nbytes_bound(bounds))
        for v in n.inputs:
            if v is not None and P[v.name].kind == "arena":
                last[P[v.name].root] = max(last[P[v.name].root], i)
    for r in size:
        assert P[r].offset + size[r] <= plan.arena_bytes
    rs = sorted(size)
    for a_i, a in enumerate(rs):
        for b in rs[a_i + 1:]:
            if first[a] > last[b] or first[b] > last[a] or not size[a] or not size[b]:
                continue
            oa, ob = P[a].offset, P[b].offset
            assert oa + size[a] <= ob or ob + size[b] <= oa, f"%{a} and %{b} overlap while both alive"
    lower = max((sum(align_up(size[r]) for r in rs if first[r] <= i <= last[r]) for i in range(len(g.nodes))),
                default=0)
    assert plan.lower_bound == lower
    assert plan.arena_bytes >= plan.lower_bound
    # in-place legality
    for n in g.nodes:
        op = get_op(n.op)
        for k, o in enumerate(n.outputs):
            p = P[o.name]
            if p.kind != "arena" or p.root == o.name or op.kind == "view":
                continue
            assert op.inplace and k == 0
            src = next(v for v in n.inputs if v is not None and P[v.name].root == p.root)
            assert tuple(src.shape) == tuple(o.shape) and src.dtype.itemsize == o.dtype.itemsize
            # every value stored there before this node is dead after it
            i = index[id(n)]
            for u in g.nodes[i + 1:]:
                for v in u.inputs:
                    if v is not None and v.producer is not None and P[v.name].root == p.root:
                        assert index[id(v.producer)] >= i, \
                            f"%{o.name} overwrites %{v.name} (storage %{p.root}) which is read later"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2 ** 32 - 1))
def test_random_dags(seed):
    rng = np.random.default_rng(seed)
    g, bounds = random_graph(rng)
    before = g.copy()
    ctx = make_ctx(**bounds)
    run_pass("plan-memory", g, ctx)
    plan = ctx.stats["plan-memory"]
    check_plan(g, plan, bounds)
    assert plan.overlaps() == []
    for n_val in sorted({1, bounds["n"]}):
        feeds = random_feeds(before, {"n": n_val}, seed=seed % 1000)
        want = [run_graph(before, feeds, keep=True)[v.name] for v in before.outputs]
        got = _simulate(g, plan, feeds)
        assert len(want) == len(got)
        for a, b in zip(want, got):
            np.testing.assert_array_equal(b, a)


def test_golden_small_case():
    from tcc.passes.runner import render

    g = Graph()
    n = Sym.symbol("n")
    x = g.add_input("x", t("f32", "n", 16))
    w = g.add_const(np.eye(16, dtype=np.float32), "w")
    a = g.add_node("Linear", [x, w], out_names=["a"]).output
    b = g.add_node("Relu", [a], out_names=["b"]).output
    c = g.add_node("Linear", [x, w], out_names=["c"]).output
    d = g.add_node("Add", [b, c], out_names=["d"]).output
    e = g.add_node("Reshape", [d, g.add_const(_obj([n, 4, 4]), "s")], out_names=["e"]).output
    f = g.add_node("Sigmoid", [e], out_names=["f"]).output
    g.outputs = [f, x]
    ctx = make_ctx(n=4)
    run_pass("plan-memory", g, ctx)
    text = render(g, ctx)
    body = text[text.index("graph "):].replace('blob("39d31560b996434e5d4b")', "BLOB")
    assert text.splitlines()[1] == "# plan: arena 512 B (sum of intermediates 1.0 KiB, lower bound 512 B)"
    assert body == (
        "graph main(%x: f32[n,16]) -> (%f, %x.copy) {\n"
        "  %w : f32[16,16] = const BLOB\n"
        "  %s : i64[3] = const [n, 4, 4]\n"
        "  %x.copy : f32[n,16] = Copy(%x)\n"
        "  # plan: %x.copy -> output 1\n"
        "  %a : f32[n,16] = Linear(%x, %w)\n"
        "  # plan: %a @ arena+0 (256 B)\n"
        "  %b : f32[n,16] = Relu(%a)\n"
        "  # plan: %b in-place of %a (@ arena+0)\n"
        "  %c : f32[n,16] = Linear(%x, %w)\n"
        "  # plan: %c @ arena+256 (256 B)\n"
        "  %d : f32[n,16] = Add(%b, %c)\n"
        "  # plan: %d in-place of %b (@ arena+0)\n"
        "  %e : f32[n,4,4] = Reshape(%d, %s)\n"
        "  # plan: %e view of %d (@ arena+0)\n"
        "  %f : f32[n,4,4] = Sigmoid(%e)\n"
        "  # plan: %f -> output 0\n"
        "  return %f, %x.copy\n"
        "}\n")
    plan = ctx.stats["plan-memory"]
    assert (plan.arena_bytes, plan.total_bytes, plan.lower_bound) == (512, 1024, 512)
    check_plan(g, plan, {"n": 4})
