"""Helpers of plan-memory: view roots, and giving every graph output a buffer of its own (step 1 of
plan_memory.py's doc)."""
from __future__ import annotations

from ..ir.core import Graph, Node, Value
from ..ir.registry import get_op

NAME = "plan-memory"


def is_view(node: Node) -> bool:
    return (get_op(node.op).kind == "view" and len(node.outputs) == 1 and len(node.inputs) >= 1
            and node.inputs[0] is not None)


def view_root(v: Value) -> Value:
    """Follow view ops up to the value that owns the buffer."""
    while v.producer is not None and is_view(v.producer):
        v = v.producer.inputs[0]
    return v


def insert_output_copies(graph: Graph, ctx=None) -> int:
    """Give every graph output a buffer of its own (see module doc). Returns the number of Copies."""
    seen_roots: set[int] = set()
    count = 0
    for j, v in enumerate(list(graph.outputs)):
        root = view_root(v)
        duplicate = any(w is v for w in graph.outputs[:j])
        why = None
        if root.producer is None:
            why = "graph input" if any(root is x for x in graph.inputs) else "constant"
        elif id(root) in seen_roots:
            why = "storage of another output"
        seen_roots.add(id(root))
        if why is None:
            continue
        public = v.name
        if duplicate or any(v is x for x in graph.inputs):
            out_name = public + ".copy"  # a hint: add_node makes it unique
        else:
            # The Copy takes over the public name; the source value is renamed.
            new_name = graph.unique_name(public + ".src")
            if v.const is not None:
                del graph.constants[public]
                graph.constants[new_name] = v
            v.name = new_name
            graph._names.discard(public)
            out_name = public
        if v.producer is not None:
            after = graph.nodes.index(v.producer) + 1
            before = graph.nodes[after] if after < len(graph.nodes) else None
        else:
            before = graph.nodes[0] if graph.nodes else None
        copy = graph.add_node("Copy", [v], out_names=[out_name], before=before)
        graph.outputs[j] = copy.outputs[0]
        count += 1
        if ctx is not None:
            ctx.log(NAME, f"output {j} %{public} is (a view of) a {why}: inserted Copy -> %{copy.outputs[0].name}")
    return count
