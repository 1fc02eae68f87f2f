"""The IR text format: a stable, readable printer and a parser that round-trips it.

    # tcc IR v1
    graph main(%x: f32[batch,16]) -> (%y) {
      %w : f32[16,32] = const blob("3fa2c1d09e1b44aa")
      %s : i64[3] = const [1, seq, 768]
      %h : f32[batch,32] = MatMul(%x, %w) @"/l1/MatMul"
      %a : f32[batch,16], %b : f32[batch,16] = Split(%h) {axis=1, split=[16, 16]}
      %y : f32[batch,16] = Add(%a, %b)
      return %y
    }

Small constants are printed inline; large ones as `blob("<sha>")`, stored as `<blob_dir>/<sha>.npy`
(content addressed, so the dumps of every pass share them). `@"..."` keeps the source node name for
error messages. Lines starting with `#` are comments (the memory plan is printed as comments).
"""
from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import re
from typing import Any

import numpy as np

from ..errors import IRError
from .core import Graph, Node, TensorType, Value
from .dims import Sym, _eval_ast, parse_dim
from .dtypes import DType

INLINE_LIMIT = 16
_NAME_RE = re.compile(r"[A-Za-z0-9_./\-]+$")
_hash_cache: dict[int, tuple[np.ndarray, str]] = {}


# ---------------------------------------------------------------------------------------------
# printing
# ---------------------------------------------------------------------------------------------

def value_ref(v: Value | None) -> str:
    if v is None:
        return "none"
    return "%" + v.name if _NAME_RE.match(v.name) else "%" + json.dumps(v.name)


def format_scalar(x: Any) -> str:
    if isinstance(x, Sym):
        return str(x)
    if isinstance(x, (bool, np.bool_)):
        return "true" if x else "false"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        f = float(x)
        if math.isnan(f):
            return "nan"
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        if float(np.float32(f)) == f:
            # A float32 value (weights, ONNX float attributes): its shortest float32 spelling reads back
            # to the same float32, and `1e-06` reads better than `9.999999974752427e-07`.
            return str(np.float32(f))
        return repr(f)
    if isinstance(x, str):
        return json.dumps(x)
    if x is None:
        return "none"
    raise IRError(f"cannot print attribute value {x!r}")


def format_attr(x: Any) -> str:
    if isinstance(x, (list, tuple)):
        return "[" + ", ".join(format_attr(e) for e in x) + "]"
    if isinstance(x, np.ndarray):
        return format_attr(x.tolist())
    return format_scalar(x)


def blob_hash(arr: np.ndarray) -> str:
    hit = _hash_cache.get(id(arr))
    if hit is not None and hit[0] is arr:
        return hit[1]
    h = hashlib.sha256()
    h.update(str(arr.dtype).encode() + str(arr.shape).encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    digest = h.hexdigest()[:20]
    _hash_cache[id(arr)] = (arr, digest)
    return digest


def format_const(v: Value, blob_dir: str | None, inline_limit: int) -> str:
    arr = v.const
    if arr.dtype == object or arr.size <= inline_limit:
        if arr.ndim == 0:
            return format_scalar(arr.item() if arr.dtype != object else arr.reshape(()).item())
        return format_attr(arr.tolist())
    digest = blob_hash(arr)
    if blob_dir is not None:
        path = os.path.join(blob_dir, digest + ".npy")
        if not os.path.exists(path):
            os.makedirs(blob_dir, exist_ok=True)
            tmp = f"{path}.tmp{os.getpid()}"
            with open(tmp, "wb") as f:
                np.save(f, arr)
            os.replace(tmp, path)
    return f'blob("{digest}")'


def format_node(n: Node) -> str:
    outs = ", ".join(f"{value_ref(o)} : {o.type}" for o in n.outputs)
    ins = ", ".join(value_ref(v) for v in n.inputs)
    text = f"{outs} = {n.op}({ins})"
    if n.attrs:
        text += " {" + ", ".join(f"{k}={format_attr(v)}" for k, v in sorted(n.attrs.items())) + "}"
    if n.name:
        text += " @" + json.dumps(n.name)
    return text


def print_graph(g: Graph, blob_dir: str | None = None, inline_limit: int = INLINE_LIMIT,
                comments: dict[int, list[str]] | None = None, header: list[str] | None = None) -> str:
    """The text of a graph. `comments` maps node index -> comment lines printed after that node."""
    lines = ["# tcc IR v1"] + [f"# {h}" for h in (header or [])]
    meta = {k: v for k, v in g.meta.items() if _jsonable(v)}
    if meta:
        lines.append("meta " + json.dumps(meta, sort_keys=True))
    params = ", ".join(f"{value_ref(v)}: {v.type}" for v in g.inputs)
    outs = ", ".join(value_ref(v) for v in g.outputs)
    lines.append(f"graph {g.name}({params}) -> ({outs}) {{")
    for v in g.constants.values():
        lines.append(f"  {value_ref(v)} : {v.type} = const {format_const(v, blob_dir, inline_limit)}")
    for v in g.states.values():
        lines.append(f"  {value_ref(v)} : {v.type} = state")
    for i, n in enumerate(g.nodes):
        lines.append("  " + format_node(n))
        for c in (comments or {}).get(i, []):
            lines.append("  # " + c)
    lines.append(f"  return {outs}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------
# parsing
# ---------------------------------------------------------------------------------------------

class _Scanner:
    def __init__(self, text: str, lineno: int, source: str):
        self.s, self.i, self.lineno, self.source = text, 0, lineno, source

    def error(self, msg: str) -> IRError:
        return IRError(f"{self.source}:{self.lineno}:{self.i + 1}: {msg}")

    def ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in " \t":
            self.i += 1

    def peek(self, tok: str) -> bool:
        self.ws()
        return self.s.startswith(tok, self.i)

    def eat(self, tok: str) -> None:
        if not self.peek(tok):
            raise self.error(f"expected {tok!r}")
        self.i += len(tok)

    def at_end(self) -> bool:
        self.ws()
        return self.i >= len(self.s)

    def string(self) -> str:
        self.ws()
        if self.i >= len(self.s) or self.s[self.i] != '"':
            raise self.error("expected a string")
        j = self.i + 1
        while j < len(self.s) and self.s[j] != '"':
            j += 2 if self.s[j] == "\\" else 1
        text = self.s[self.i:j + 1]
        self.i = j + 1
        return json.loads(text)

    def ident(self) -> str:
        self.ws()
        m = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*").match(self.s, self.i)
        if not m:
            raise self.error("expected an identifier")
        self.i = m.end()
        return m.group(0)

    def value_name(self) -> str | None:
        self.ws()
        if self.s.startswith("none", self.i):
            self.i += 4
            return None
        self.eat("%")
        if self.s[self.i:self.i + 1] == '"':
            return self.string()
        m = re.compile(r"[A-Za-z0-9_./\-]+").match(self.s, self.i)
        if not m:
            raise self.error("expected a value name after %")
        self.i = m.end()
        return m.group(0)

    def balanced(self, open_: str, close: str) -> str:
        """Text from an opening bracket to its matching close (strings respected), brackets included."""
        self.ws()
        if self.s[self.i:self.i + 1] != open_:
            raise self.error(f"expected {open_!r}")
        depth, j, in_str = 0, self.i, False
        while j < len(self.s):
            c = self.s[j]
            if in_str:
                if c == "\\":
                    j += 1
                elif c == '"':
                    in_str = False
            elif c == '"':
                in_str = True
            elif c == open_:
                depth += 1
            elif c == close:
                depth -= 1
                if depth == 0:
                    text = self.s[self.i:j + 1]
                    self.i = j + 1
                    return text
            j += 1
        raise self.error(f"unbalanced {open_!r}")

    def type(self) -> TensorType:
        name = self.ident()
        try:
            dtype = DType(name)
        except ValueError:
            raise self.error(f"unknown dtype {name!r}") from None
        inner = self.balanced("[", "]")[1:-1].strip()
        try:
            dims = [parse_dim(d) for d in inner.split(",")] if inner else []
        except ValueError as e:
            raise self.error(str(e)) from None
        return TensorType(dtype, tuple(dims))


def _literal(text: str, where: _Scanner) -> Any:
    """Parse a literal: numbers, true/false/none/nan/inf, strings, lists, and dim expressions."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        raise where.error(f"bad literal {text.strip()!r}") from None
    return _lit(tree, text, where)


_NAMED = {"true": True, "false": False, "none": None, "nan": float("nan"), "inf": float("inf")}


def _lit(node, text, where):
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str)):
        return node.value
    if isinstance(node, ast.Name) and node.id in _NAMED:
        return _NAMED[node.id]
    if isinstance(node, ast.List):
        return [_lit(e, text, where) for e in node.elts]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _lit(node.operand, text, where)
        if isinstance(inner, (int, float, Sym)) and not isinstance(inner, bool):
            return -inner
    try:
        return _eval_ast(node, text)
    except ValueError:
        raise where.error(f"bad literal {text.strip()!r}") from None


def _split_top(text: str) -> list[str]:
    """Split `a=1, b=[1, 2], c="x,y"` at top-level commas."""
    parts, depth, cur, in_str, esc = [], 0, "", False, False
    for c in text:
        if in_str:
            cur += c
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
            continue
        if c == '"':
            in_str = True
        elif c in "[(":
            depth += 1
        elif c in "])":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        cur += c
    if cur.strip():
        parts.append(cur)
    return parts


def _const_array(lit: Any, t: TensorType, where: _Scanner) -> np.ndarray:
    def has_sym(x):
        return isinstance(x, Sym) or (isinstance(x, list) and any(has_sym(e) for e in x))

    if has_sym(lit):
        arr = np.empty(t.concrete_shape({}), dtype=object)
        flat = np.array(lit, dtype=object).reshape(-1) if isinstance(lit, list) else [lit]
        arr.reshape(-1)[:] = list(flat)
        return arr
    arr = np.array(lit, dtype=t.dtype.np)
    if arr.shape != t.concrete_shape({}):
        raise where.error(f"constant literal has shape {arr.shape}, type says {t}")
    return arr


def parse_graph(text: str, blob_dir: str | None = None, source: str = "<ir>") -> Graph:
    """Parse IR text back into a Graph (types are taken as written, then verified)."""
    g: Graph | None = None
    env: dict[str, Value] = {}
    outputs: list[str] = []
    meta: dict = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#") or line == "}":
            continue
        sc = _Scanner(line, lineno, source)
        if line.startswith("meta "):
            meta = json.loads(line[5:])
            continue
        if line.startswith("graph "):
            g = _parse_header(sc, env, outputs)
            g.meta = meta
            continue
        if g is None:
            raise sc.error("expected 'graph'")
        if line.startswith("return"):
            continue
        _parse_def(sc, g, env, blob_dir)
    if g is None:
        raise IRError(f"{source}: no graph found")
    try:
        g.outputs = [env[n] for n in outputs]
    except KeyError as e:
        raise IRError(f"{source}: graph output %{e.args[0]} is never defined") from None
    g.verify()
    return g


def _parse_header(sc: _Scanner, env: dict, outputs: list) -> Graph:
    sc.eat("graph")
    g = Graph(sc.ident())
    sc.eat("(")
    while not sc.peek(")"):
        name = sc.value_name()
        sc.eat(":")
        env[name] = g.add_input(name, sc.type())
        if sc.peek(","):
            sc.eat(",")
    sc.eat(")")
    sc.eat("->")
    sc.eat("(")
    while not sc.peek(")"):
        outputs.append(sc.value_name())
        if sc.peek(","):
            sc.eat(",")
    sc.eat(")")
    return g


def _parse_def(sc: _Scanner, g: Graph, env: dict, blob_dir: str | None) -> None:
    outs: list[tuple[str, TensorType]] = []
    while True:
        name = sc.value_name()
        sc.eat(":")
        outs.append((name, sc.type()))
        if not sc.peek(","):
            break
        sc.eat(",")
    sc.eat("=")
    if sc.peek("const "):
        sc.eat("const")
        name, t = outs[0]
        if name in env:
            raise sc.error(f"value %{name} defined twice")
        arr = _parse_const_body(sc, t, blob_dir)
        env[name] = g.add_const(arr, name, exact_name=True)
        return
    if sc.peek("state") and sc.s[sc.i:].strip() == "state":
        name, t = outs[0]
        if name in env:
            raise sc.error(f"value %{name} defined twice")
        v = Value(g._claim(name), t)
        g.states[name] = v
        env[name] = v
        return
    op = sc.ident()
    args = sc.balanced("(", ")")[1:-1]
    inputs = []
    for part in _split_top(args):
        sub = _Scanner(part, sc.lineno, sc.source)
        nm = sub.value_name()
        if nm is not None and nm not in env:
            raise sc.error(f"value %{nm} used before it is defined")
        inputs.append(None if nm is None else env[nm])
    attrs: dict[str, Any] = {}
    if sc.peek("{"):
        for part in _split_top(sc.balanced("{", "}")[1:-1]):
            key, _, val = part.partition("=")
            attrs[key.strip()] = _literal(val, sc)
    node_name = ""
    if sc.peek("@"):
        sc.eat("@")
        node_name = sc.string()
    if not sc.at_end():
        raise sc.error(f"unexpected text {sc.s[sc.i:]!r}")
    node = Node(op, inputs, [], attrs, node_name)
    for name, t in outs:
        if name in env:
            raise sc.error(f"value %{name} defined twice")
        v = Value(g._claim(name), t, producer=node)
        node.outputs.append(v)
        env[name] = v
    g.nodes.append(node)


def _parse_const_body(sc: _Scanner, t: TensorType, blob_dir: str | None) -> np.ndarray:
    if sc.peek("blob("):
        sc.eat("blob(")
        digest = sc.string()
        sc.eat(")")
        if blob_dir is None:
            raise sc.error(f"constant refers to blob {digest} but no blob directory was given")
        path = os.path.join(blob_dir, digest + ".npy")
        if not os.path.exists(path):
            raise sc.error(f"blob {digest} not found in {blob_dir}")
        arr = np.load(path, allow_pickle=False)
        if arr.shape != t.concrete_shape({}) or arr.dtype != t.dtype.np:
            raise sc.error(f"blob {digest} holds {arr.dtype}{list(arr.shape)}, type says {t}")
        return arr
    rest = sc.s[sc.i:]
    sc.i = len(sc.s)
    return _const_array(_literal(rest, sc), t, sc)


def load_ir(path: str) -> Graph:
    """Parse a `.tir` file; blobs are looked up in the `blobs/` folder beside it."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return parse_graph(text, blob_dir=os.path.join(os.path.dirname(os.path.abspath(path)), "blobs"),
                       source=path)
