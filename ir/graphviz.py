"""Graph views with networkx: analyses and drawings (`tcc ir --dot`). networkx never stores the IR."""
from __future__ import annotations

import json

import networkx as nx

from .core import Graph


def to_networkx(graph: Graph) -> nx.DiGraph:
    """Nodes are IR nodes (plus graph inputs/outputs); edges carry the value flowing along them."""
    g = nx.DiGraph()
    producer: dict[int, str] = {}
    for i, v in enumerate(graph.inputs):
        key = f"in{i}"
        g.add_node(key, label=f"{v.name}\\n{v.type}", kind="input")
        producer[id(v)] = key
    for i, n in enumerate(graph.nodes):
        key = f"n{i}"
        g.add_node(key, label=n.op + (f"\\n{n.name}" if n.name else ""), kind="op", op=n.op)
        for v in n.inputs:
            if v is not None and id(v) in producer:
                g.add_edge(producer[id(v)], key, label=str(v.type))
        for o in n.outputs:
            producer[id(o)] = key
    for i, v in enumerate(graph.outputs):
        key = f"out{i}"
        g.add_node(key, label=f"{v.name}\\n{v.type}", kind="output")
        if id(v) in producer:
            g.add_edge(producer[id(v)], key, label=str(v.type))
    return g


def to_dot(graph: Graph) -> str:
    g = to_networkx(graph)
    shapes = {"input": "invhouse", "output": "house", "op": "box"}
    lines = [f"digraph {json.dumps(graph.name)} {{", "  rankdir=TB;", '  node [fontname="monospace"];']
    for key, data in g.nodes(data=True):
        lines.append(f'  {key} [label="{_esc(data["label"])}", shape={shapes[data["kind"]]}];')
    for a, b, data in g.edges(data=True):
        lines.append(f'  {a} -> {b} [label="{_esc(data["label"])}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _esc(s: str) -> str:
    return s.replace('"', '\\"')


def critical_path_length(graph: Graph) -> int:
    """Number of ops on the longest dependency chain (a measure of available parallelism)."""
    return nx.dag_longest_path_length(to_networkx(graph))
