#!/usr/bin/env python3
"""Rename the kernels' last parameter from the thread pool (`tcc_pool* pool`) to the execution context
(`tcc_exec* exec`, runtime/tcc_device.h) everywhere kernels are written. Idempotent: a second run changes
nothing. Run from the repository root after merging branches that add or edit kernel templates:

    python3 tools/rename_exec_param.py          # rewrite in place, list the files changed
    python3 tools/rename_exec_param.py --check  # exit 1 if any file still needs the rename

What it rewrites:
- kernel templates (codegen/templates/**/*.j2): the parameter, its type in helper functions, the uses of
  the variable (`parallel_for(pool, ...`, `(void)pool;`, `tcc_pool_threads(pool)`);
- the kernel signatures in Python (codegen/**/*.py, backends/**/*.py);
- other C/C++ sources (runtime/, tests/, benchmarks/): the type and function names only (their variables
  keep their names);
- the docs (docs/*.md: the kernel ABI in docs/kernels.md): the parameter and the type and function names. runtime/tcc_device.h, runtime/tcc_kernel.h and runtime/runtime.cpp define the old
  names as aliases (ctypes callers use tcc_pool_create) and are left alone.
"""
from __future__ import annotations

import argparse
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEEP = {os.path.join("runtime", f) for f in ("tcc_device.h", "tcc_kernel.h", "runtime.cpp")}

TYPE_RULES = [
    (re.compile(r"\btcc_pool\*\s*pool\b"), "tcc_exec* exec"),
    (re.compile(r"\btcc_pool_threads\("), "tcc_exec_threads("),
    (re.compile(r"\btcc_pool_create\("), "tcc_exec_create("),
    (re.compile(r"\btcc_pool_destroy\("), "tcc_exec_destroy("),
    (re.compile(r"\btcc_pool\b"), "tcc_exec"),
]
# Python holds kernel signatures (strings) and ctypes calls of the old function names (which stay exported):
# only the type names change there.
PY_RULES = [TYPE_RULES[0], TYPE_RULES[-1]]
# The variable, where it is code: an argument after `(` or `,` (or first on a continuation line) or a cast
# statement (`(void)pool;`), followed by `,` `;` `)` or `]`; not prose such as "split over the pool;".
VAR_RULE = (re.compile(r"([(,)]\s*|^\s*)pool(?=\s*[,;)\]])", re.MULTILINE), r"\1exec")


def rewrite(text: str, kind: str) -> str:
    """kind: "template" (types and variables), "c" (types and function names), "py" (type names)."""
    rules = {"template": TYPE_RULES, "doc": TYPE_RULES, "c": TYPE_RULES[1:], "py": PY_RULES}[kind]
    for pattern, repl in rules:
        text = pattern.sub(repl, text)
    if kind == "template":
        text = VAR_RULE[0].sub(VAR_RULE[1], text)
    return text


def files():
    """(path relative to the root, its kind for rewrite())."""
    cpp = (".h", ".cpp", ".cc")
    for top, exts, var in (("codegen/templates", (".j2",), "template"), ("codegen", (".py",), "py"),
                           ("backends", (".py",), "py"), ("runtime", cpp, "c"), ("tests", cpp, "c"),
                           ("benchmarks", cpp, "c"), ("docs", (".md",), "doc")):
        for d, _, names in os.walk(os.path.join(ROOT, top)):
            for n in sorted(names):
                rel = os.path.relpath(os.path.join(d, n), ROOT)
                if n.endswith(exts) and rel not in KEEP:
                    yield rel, var


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only report the files that still need the rename")
    args = ap.parse_args(argv)
    changed = []
    seen = set()
    for rel, var in files():
        if rel in seen:
            continue
        seen.add(rel)
        path = os.path.join(ROOT, rel)
        with open(path, encoding="utf-8") as f:
            old = f.read()
        new = rewrite(old, var)
        if new != old:
            changed.append(rel)
            if not args.check:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(new)
    for rel in changed:
        print(rel)
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
