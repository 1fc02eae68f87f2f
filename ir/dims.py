"""Symbolic dimensions.

A dimension is an `int` or a `Sym`: an integer polynomial over named symbols (`batch`, `seq`,
`past+seq`, `2*seq`, `(seq+1)//2`). Symbols are non-negative integers bound at run time from the
input shapes. Sym supports the arithmetic that shape computations in exported graphs do, so shape
subgraphs (Shape -> Gather -> Concat -> Reshape) fold into symbolic constants.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Callable, Union

Dim = Union[int, "Sym"]


@dataclass(frozen=True)
class FloorDiv:
    """An opaque atom `num // den` for a division that does not simplify."""

    num: "Sym"
    den: int

    def __str__(self) -> str:
        return f"({self.num})//{self.den}"


@dataclass(frozen=True)
class MinMax:
    """An opaque atom `min(a,b)` / `max(a,b)` for a clamp that does not simplify (Slice of a symbolic dim
    by a constant: `x[-3:]` has min(n,3) rows)."""

    op: str  # "min" or "max"
    a: "Dim"
    b: "Dim"

    def __str__(self) -> str:
        return f"{self.op}({self.a},{self.b})"

    def evaluate(self, env: dict) -> "Dim":
        a, b = evaluate(self.a, env), evaluate(self.b, env)
        return dim_min(a, b) if self.op == "min" else dim_max(a, b)


Atom = Union[str, FloorDiv, MinMax]


def _atom_key(a: Atom) -> str:
    return a if isinstance(a, str) else str(a)


class Sym:
    """An integer polynomial: sum of coeff * product(atoms). Immutable and hashable."""

    __slots__ = ("terms",)

    def __init__(self, terms):
        # terms: {monomial (tuple of atoms, sorted): coeff}
        object.__setattr__(self, "terms", tuple(sorted(((m, c) for m, c in terms.items() if c),
                                                       key=lambda t: (not t[0], [_atom_key(a) for a in t[0]]))))

    def __setattr__(self, *_):
        raise AttributeError("Sym is immutable")

    @staticmethod
    def symbol(name: str) -> "Sym":
        return Sym({(name,): 1})

    # -- construction helpers -------------------------------------------------------------
    @staticmethod
    def _lift(x) -> "Sym":
        if isinstance(x, Sym):
            return x
        return Sym({(): int(x)})

    def _simplify(self) -> Dim:
        d = dict(self.terms)
        if not d:
            return 0
        if list(d) == [()]:
            return int(d[()])
        return self

    # -- arithmetic -----------------------------------------------------------------------
    def __add__(self, other):
        if not _is_dim(other):
            return NotImplemented
        d = dict(self.terms)
        for m, c in Sym._lift(other).terms:
            d[m] = d.get(m, 0) + c
        return Sym(d)._simplify()

    __radd__ = __add__

    def __neg__(self):
        return Sym({m: -c for m, c in self.terms})._simplify()

    def __sub__(self, other):
        if not _is_dim(other):
            return NotImplemented
        return self + (-Sym._lift(other))

    def __rsub__(self, other):
        if not _is_dim(other):
            return NotImplemented
        return Sym._lift(other) + (-self)

    def __mul__(self, other):
        if not _is_dim(other):
            return NotImplemented
        d: dict = {}
        for m1, c1 in self.terms:
            for m2, c2 in Sym._lift(other).terms:
                m = tuple(sorted(m1 + m2, key=_atom_key))
                d[m] = d.get(m, 0) + c1 * c2
        return Sym(d)._simplify()

    __rmul__ = __mul__

    def __floordiv__(self, other):
        if isinstance(other, Sym):
            if other == self:
                return 1
            raise ValueError(f"cannot divide symbolic dims {self} // {other}")
        other = int(other)
        if other == 1:
            return self
        if other > 0 and all(c % other == 0 for _, c in self.terms):
            return Sym({m: c // other for m, c in self.terms})._simplify()
        return Sym({(FloorDiv(self, other),): 1})

    def __truediv__(self, other):
        return self.__floordiv__(other)

    def __rfloordiv__(self, other):
        raise ValueError(f"cannot divide {other} by symbolic dim {self}")

    def __mod__(self, other):
        if not isinstance(other, Sym) and all(c % int(other) == 0 for _, c in self.terms):
            return 0
        raise ValueError(f"cannot take symbolic dim {self} modulo {other}")

    # -- comparison: structural (symbols are unknown non-negative integers) -------------------
    def __eq__(self, other):
        if isinstance(other, Sym):
            return self.terms == other.terms
        return False

    def __ne__(self, other):
        return not self.__eq__(other)

    def __lt__(self, other):
        raise ValueError(f"cannot order symbolic dim {self} against {other}")

    __le__ = __gt__ = __ge__ = __lt__

    def __hash__(self):
        return hash(self.terms)

    def __bool__(self):
        return True  # a symbolic dim is assumed non-zero when used as a truth value

    def __index__(self):
        raise TypeError(f"symbolic dim {self} used where a concrete integer is required")

    # -- evaluation and printing ----------------------------------------------------------
    @property
    def symbols(self) -> set[str]:
        out: set[str] = set()
        for m, _ in self.terms:
            for a in m:
                if isinstance(a, MinMax):
                    out |= symbols_of(a.a) | symbols_of(a.b)
                else:
                    out |= {a} if isinstance(a, str) else a.num.symbols
        return out

    def evaluate(self, env: dict[str, int]) -> int:
        total = 0
        for m, c in self.terms:
            p = c
            for a in m:
                if isinstance(a, MinMax):
                    p *= a.evaluate(env)
                else:
                    p *= env[a] if isinstance(a, str) else evaluate(a.num, env) // a.den
            total += p
        return total

    def upper_bound(self, bounds: dict[str, int]) -> int:
        """A bound valid for every binding with 0 <= symbol <= bounds[symbol]."""
        total = 0
        for m, c in self.terms:
            if c < 0:
                continue  # a negative term is at most 0
            p = c
            for a in m:
                if isinstance(a, MinMax):  # min and max atoms are built non-negative (see dim_min)
                    ua, ub = upper_bound(a.a, bounds), upper_bound(a.b, bounds)
                    p *= min(ua, ub) if a.op == "min" else max(ua, ub)
                elif isinstance(a, str):
                    p *= bounds[a]
                else:
                    p *= upper_bound(a.num, bounds) // a.den
            total += p
        return total

    def to_c(self, var: Callable[[str], str]) -> str:
        parts = []
        for m, c in self.terms:
            factors = [var(a) if isinstance(a, str) else _atom_c(a, var) for a in m]
            if c != 1 or not factors:
                factors.insert(0, f"(int64_t){c}" if not factors else str(c))
            parts.append("*".join(factors))
        return "(" + " + ".join(parts) + ")"

    def __str__(self) -> str:
        out = ""
        for m, c in self.terms:
            # a floor-division atom after a factor or a minus sign needs parentheses to parse back
            paren = c != 1 or len(m) > 1
            factors = [a if isinstance(a, str) else (f"({a})" if paren else str(a)) for a in m]
            mag = abs(c)
            body = "*".join(([str(mag)] if mag != 1 or not factors else []) + factors)
            if not out:
                out = ("-" if c < 0 else "") + body
            else:
                out += ("-" if c < 0 else "+") + body
        return out

    def __repr__(self) -> str:
        return f"Sym({self})"


def _atom_c(a, var) -> str:
    if isinstance(a, FloorDiv):
        return f"(({a.num.to_c(var)}) / {a.den})"
    x, y = to_c(a.a, var), to_c(a.b, var)
    return f"((int64_t)({x}) {'<' if a.op == 'min' else '>'} (int64_t)({y}) ? (int64_t)({x}) : (int64_t)({y}))"


def _nonneg(d) -> bool:
    """d >= 0 for every binding, provably: a polynomial with a non-negative constant and non-negative
    coefficients over non-negative atoms (symbols, floor divisions, min of two and max of one such)."""
    if not isinstance(d, Sym):
        return int(d) >= 0
    for m, c in d.terms:
        if c < 0 or not all(_atom_nonneg(a) for a in m):
            return False
    return True


def _atom_nonneg(a) -> bool:
    if isinstance(a, str):
        return True
    if isinstance(a, FloorDiv):
        return _nonneg(a.num)
    return (_nonneg(a.a) and _nonneg(a.b)) if a.op == "min" else (_nonneg(a.a) or _nonneg(a.b))


def _split_minmax(d):
    """(atom, rest) when d = atom + rest for one min/max atom with coefficient 1, else None."""
    if not isinstance(d, Sym):
        return None
    for m, c in d.terms:
        if c == 1 and len(m) == 1 and isinstance(m[0], MinMax):
            return m[0], d - Sym({m: 1})
    return None


def dim_le(x: Dim, y: Dim) -> bool:
    """x <= y for every binding of the symbols, provably (False when it depends on the binding)."""
    if _nonneg(y - x):
        return True
    sx, sy = _split_minmax(x), _split_minmax(y)
    if sx is not None:
        (a, r) = sx  # max(p,q)+r <= y iff both are; min(p,q)+r <= y if either is
        hits = [dim_le(a.a + r, y), dim_le(a.b + r, y)]
        if all(hits) if a.op == "max" else any(hits):
            return True
    if sy is not None:
        (a, r) = sy
        hits = [dim_le(x, a.a + r), dim_le(x, a.b + r)]
        if all(hits) if a.op == "min" else any(hits):
            return True
    return False


def _arg_key(d) -> tuple:
    return not isinstance(d, Sym), str(d)  # min(n,3), not min(3,n)


def dim_min(a: Dim, b: Dim) -> Dim:
    """min(a, b), simplified where the order is provable; otherwise a `min` atom."""
    if not isinstance(a, Sym) and not isinstance(b, Sym):
        return min(int(a), int(b))
    if dim_le(a, b):
        return a
    if dim_le(b, a):
        return b
    return Sym({(MinMax("min", *sorted((a, b), key=_arg_key)),): 1})


def dim_max(a: Dim, b: Dim) -> Dim:
    """max(a, b), simplified where the order is provable; otherwise a `max` atom."""
    if not isinstance(a, Sym) and not isinstance(b, Sym):
        return max(int(a), int(b))
    if dim_le(a, b):
        return b
    if dim_le(b, a):
        return a
    return Sym({(MinMax("max", *sorted((a, b), key=_arg_key)),): 1})


def _is_dim(x) -> bool:
    return isinstance(x, (int, Sym)) or (hasattr(x, "__index__") and not isinstance(x, float))


def bare_symbol(d) -> str | None:
    """The symbol's name when `d` is exactly one symbol (`seq`, not `seq+1`): such dims bind symbols."""
    if isinstance(d, Sym) and len(d.terms) == 1:
        (mono, coeff), = d.terms
        if coeff == 1 and len(mono) == 1 and isinstance(mono[0], str):
            return mono[0]
    return None


def is_static(d) -> bool:
    return not isinstance(d, Sym)


def evaluate(d: Dim, env: dict[str, int]) -> int:
    return d.evaluate(env) if isinstance(d, Sym) else int(d)


def upper_bound(d: Dim, bounds: dict[str, int]) -> int:
    return d.upper_bound(bounds) if isinstance(d, Sym) else int(d)


def to_c(d: Dim, var: Callable[[str], str]) -> str:
    return d.to_c(var) if isinstance(d, Sym) else str(int(d))


def substitute(d: Dim, mapping: dict[str, Dim]) -> Dim:
    """d with symbols replaced by dims (`total` -> `past+seq`); other symbols stay."""
    if not isinstance(d, Sym) or not d.symbols & set(mapping):
        return d
    env: dict = {s: Sym.symbol(s) for s in d.symbols}
    env.update(mapping)
    out = d.evaluate(env)
    return out._simplify() if isinstance(out, Sym) else out


def symbols_of(d: Dim) -> set[str]:
    return d.symbols if isinstance(d, Sym) else set()


def dim_str(d: Dim) -> str:
    return str(d)


def parse_dim(text: str) -> Dim:
    """Parse `seq`, `past+seq`, `2*seq`, `(seq+1)//2`, `17`."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"bad dimension {text!r}") from e
    return _eval_ast(tree.body, text)


def _eval_ast(node, text):
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.Name):
        return Sym.symbol(node.id)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval_ast(node.operand, text)
    if isinstance(node, ast.BinOp):
        a, b = _eval_ast(node.left, text), _eval_ast(node.right, text)
        ops = {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b,
               ast.FloorDiv: lambda: a // b}
        if type(node.op) in ops:
            return ops[type(node.op)]()
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("min", "max")
            and len(node.args) == 2 and not node.keywords):
        a, b = (_eval_ast(x, text) for x in node.args)
        return dim_min(a, b) if node.func.id == "min" else dim_max(a, b)
    raise ValueError(f"bad dimension {text!r}")


def product(dims) -> Dim:
    out: Dim = 1
    for d in dims:
        out = out * d
    return out
