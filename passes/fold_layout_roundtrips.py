"""fold-layout-roundtrips: a chain of Reshape / Transpose nodes that only moves data back where it was, or
permutes whole axes, becomes the identity or one Transpose.

The dynamo exporter's scaled_dot_product_attention (transformers' default "sdpa" attention) hands K to
attention as Transpose(Reshape(Transpose(Reshape(present)))) ([B,H,T,D] -> [B*H,T,D] -> [B*H,D,T] ->
[B,H,D,T] -> [B,H,T,D]); after folding, K is the present itself, so fuse-attention and kv-cache see the same
Concat(past, new) they see in the other exporters' graphs.

Proof, from shapes and perms only (never from names): the chain's input x is described by "atoms", one per
axis of x (a static axis may be split into static factors by a Reshape). The tensor at each step is a list of
axes, each a run of atoms in row-major order. A Transpose permutes the axes; a Reshape keeps the row-major
atom sequence and regroups it into its output type's dims, each dim the exact product of consecutive atoms
(a polynomial identity in the shape symbols, so it holds for every binding; static size-1 atoms carry no
data and are dropped). The chain is folded when every output axis is exactly one axis of x, all of x's
atoms in their order: then the output is x (identity) or Transpose(x, perm). Anything the model cannot
follow (a symbolic dim split into parts, a product that matches no run of atoms, an unknown dim) leaves the
chain alone. The longest foldable chain ending at each chain end is taken; the nodes it bypasses are left
to dead-code elimination (they may have other consumers).
ctx.stats["fold-layout-roundtrips"] = chains folded.
"""
from __future__ import annotations

from ..ir.core import Graph, Value
from ..ir.dims import product
from . import register_pass
from .rewrite_utils import attrs

NAME = "fold-layout-roundtrips"
OPS = ("Reshape", "Transpose")


class _Unproven(Exception):
    pass


def _static(d) -> bool:
    return isinstance(d, int)


def _start(shape) -> list[list[tuple]]:
    """One atom per axis: (axis of x, part path, size)."""
    return [[(i, (), d)] for i, d in enumerate(shape)]


def _regroup(axes: list[list[tuple]], target) -> list[list[tuple]]:
    """The atoms of `axes` (row-major) grouped into the dims of `target`."""
    flat = [a for ax in axes for a in ax if not (_static(a[2]) and a[2] == 1)]
    if any(_static(d) and d == 0 for d in list(target) + [a[2] for a in flat]):
        raise _Unproven("an empty dim")  # nothing to move, and factors of 0 prove nothing
    out = []
    for t in target:
        if t is None:
            raise _Unproven("unknown dim")
        group: list[tuple] = []
        if not (_static(t) and t == 1):
            while True:
                if not flat:
                    raise _Unproven("dims outgrow the data")
                size = product([a[2] for a in group])
                nxt = flat[0]
                if _static(t) and _static(size) and _static(nxt[2]) and t % size == 0 and size * nxt[2] > t:
                    need = t // size
                    if nxt[2] % need:
                        raise _Unproven(f"{nxt[2]} does not split by {need}")
                    # split a static atom into (need, rest): the first part joins this dim
                    first, rest = (nxt[0], nxt[1] + (0,), need), (nxt[0], nxt[1] + (1,), nxt[2] // need)
                    flat[0] = rest
                    group.append(first)
                    break
                group.append(flat.pop(0))
                if product([a[2] for a in group]) == t:
                    break
        out.append(group)
    if flat:
        raise _Unproven("atoms left over")
    return out


def _step(axes: list[list[tuple]], node, out: Value) -> list[list[tuple]]:
    if node.op == "Transpose":
        perm = attrs(node).get("perm") or list(reversed(range(len(axes))))
        if sorted(perm) != list(range(len(axes))):
            raise _Unproven(f"perm {perm}")
        return [axes[p] for p in perm]
    return _regroup(axes, list(out.shape))


def _as_permutation(x: Value, axes: list[list[tuple]]) -> list[int] | None:
    """perm with output axis k = x's axis perm[k] (identity or a Transpose), or None."""
    seen = {a[0] for ax in axes for a in ax}
    ones = [i for i, d in enumerate(x.shape) if _static(d) and d == 1 and i not in seen]
    perm = []
    for ax in axes:
        if not ax:  # a size-1 dim: one of x's size-1 axes whose atom a Reshape dropped
            if not ones:
                return None
            perm.append(ones.pop(0))
            continue
        src = {a[0] for a in ax}
        if len(src) != 1:
            return None
        (i,) = src
        paths = [a[1] for a in ax]
        if paths != sorted(paths) or product([a[2] for a in ax]) != x.shape[i]:
            return None
        perm.append(i)
    if sorted(perm) != list(range(len(x.shape))):
        return None
    return perm


def _chain(v: Value) -> list:
    """The Reshape / Transpose nodes that produce v, outermost last (starting at the first non-layout op)."""
    nodes = []
    n = v.producer
    while n is not None and n.op in OPS and n.inputs and n.inputs[0] is not None:
        nodes.append(n)
        n = n.inputs[0].producer
    return list(reversed(nodes))


def _fold(chain: list) -> tuple[int, Value, list[int]] | None:
    """(index of the first node, its input x, perm) for the longest foldable suffix of `chain` (>= 2 nodes)."""
    for s in range(len(chain) - 1):
        x = chain[s].inputs[0]
        if x.type is None or any(d is None for d in x.shape):
            continue
        try:
            axes = _start(x.shape)
            for n in chain[s:]:
                axes = _step(axes, n, n.output)
        except _Unproven:
            continue
        perm = _as_permutation(x, axes)
        if perm is not None:
            return s, x, perm
    return None


def _chain_ends(graph: Graph) -> list:
    """Reshape / Transpose nodes read by at least one node that is not a Reshape / Transpose (graph outputs
    are left as they are: an output must keep its producer)."""
    users = graph.users()
    outputs = {id(o) for o in graph.outputs}
    return [n for n in graph.nodes if n.op in OPS and id(n.output) not in outputs
            and any(u.op not in OPS for u, _ in users.get(n.output, []))]


def fold_layout_roundtrips(graph: Graph, ctx) -> int:
    folded = 0
    for end in _chain_ends(graph):
        chain = _chain(end.output)
        if len(chain) < 2:
            continue
        found = _fold(chain)
        if found is None:  # the usual head split / merge: nothing to say
            continue
        s, x, perm = found
        y = end.output
        if perm == list(range(len(perm))) and list(x.shape) == list(y.shape):
            new, what = x, "identity"
        else:
            t = graph.add_node("Transpose", [x], {"perm": perm}, name=end.name + "/folded", before=end)
            if list(t.output.shape) != list(y.shape):  # the proof says this cannot happen
                raise AssertionError(f"{NAME}: Transpose {perm} of {x.type} is {t.output.type}, not {y.type}")
            new, what = t.output, f"Transpose{perm}"
        graph.replace_uses(y, new)
        folded += 1
        ctx.log(NAME, f"{len(chain) - s} Reshape/Transpose ending at %{y.name} -> {what} of %{x.name}")
    ctx.stats[NAME] = ctx.stats.get(NAME, 0) + folded
    return folded


@register_pass(NAME)
def run(graph: Graph, ctx) -> None:
    fold_layout_roundtrips(graph, ctx)
