"""eliminate-dead-code: remove nodes none of whose outputs is used, then constants nobody uses.

One backward sweep: a node is live when one of its outputs is a graph output or an input of a live node,
or when its op has effects (it updates a state). States no node uses are removed too.
"""
from __future__ import annotations

from ..ir.core import Graph
from ..ir.registry import get_op
from . import register_pass

NAME = "eliminate-dead-code"


def eliminate_dead_code(graph: Graph, ctx=None, keep_effects: bool = True) -> int:
    """keep_effects=False: also drop unused effect nodes (to cut out a pure subgraph for evaluation)."""
    needed: set[int] = {id(v) for v in graph.outputs}
    keep: set[int] = set()
    for n in reversed(graph.nodes):
        if (keep_effects and get_op(n.op).effects) or any(id(o) in needed for o in n.outputs):
            keep.add(id(n))
            needed.update(id(v) for v in n.inputs if v is not None)
    dead = [n for n in graph.nodes if id(n) not in keep]
    if dead:
        graph.remove_nodes(dead)
    n_const = len(graph.constants)
    graph.remove_unused_constants()
    removed_consts = n_const - len(graph.constants)
    used = {id(v) for n in graph.nodes for v in n.inputs if v is not None}
    graph.states = {k: v for k, v in graph.states.items() if id(v) in used}
    if ctx is not None:
        if dead or removed_consts:
            ctx.log(NAME, f"removed {len(dead)} nodes and {removed_consts} constants")
        ctx.stats[NAME] = ctx.stats.get(NAME, 0) + len(dead)
    if dead or removed_consts:
        graph.rename_names()
    return len(dead)


@register_pass(NAME)
def run(graph: Graph, ctx) -> None:
    eliminate_dead_code(graph, ctx)
