"""The compile cache of `tcc demo`, `tcc eval --compare` and `tcc bench --ablation`: an artifact directory is
reused when its key file matches the digest of everything the artifact depends on (the model and the files
compile reads beside it, the calibration file, every option that changes the output, and tcc's own sources).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Callable

from . import __version__
from .driver import _LOCAL_OPTIONS, CompileOptions, _tokenizer_files, compile_model, resolve_options
from .errors import TccError

_SOURCE_DIRS = ("frontend", "ir", "passes", "codegen", "backends", "runtime")
_SOURCE_EXTS = (".py", ".j2", ".h", ".cpp", ".hpp", ".txt", ".cmake")


def _source_digest() -> str:
    """A digest of tcc's own sources, so an edited tcc never reuses an artifact an older one built."""
    root = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha256(__version__.encode())
    paths = [os.path.join(root, f) for f in os.listdir(root) if f.endswith(_SOURCE_EXTS)]
    for d in _SOURCE_DIRS:
        for dirpath, dirnames, files in os.walk(os.path.join(root, d)):
            dirnames[:] = sorted(x for x in dirnames if x != "__pycache__")
            paths += [os.path.join(dirpath, f) for f in files if f.endswith(_SOURCE_EXTS)]
    for p in sorted(paths):
        h.update(os.path.relpath(p, root).encode())
        with open(p, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_key(model: str, opts: CompileOptions) -> str:
    """What an artifact depends on: the model and the files compile reads beside it (tokenizer,
    configs), the calibration file, every option, and tcc's sources."""
    if not os.path.isfile(model):
        raise TccError(f"model file {model} not found")
    from .codegen.cmake import sanitizers

    opts = resolve_options(opts)  # no --qm and --qm of the target's baseline build the same artifact
    parts = {"model": _file_digest(model), "tcc": _source_digest(), "sanitize": list(sanitizers()),
             "options": {k: v for k, v in sorted(vars(opts).items()) if k not in _LOCAL_OPTIONS}}
    side = dict(_tokenizer_files(model, opts))
    cfg = os.path.join(os.path.dirname(os.path.abspath(model)), "config.json")
    if os.path.isfile(cfg):
        side["config.json"] = cfg
    if opts.calib:
        side["calib"] = opts.calib
    side.update(_external_data_files(model))
    parts["files"] = {k: _file_digest(p) for k, p in sorted(side.items()) if os.path.isfile(p)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _external_data_files(model: str) -> dict[str, str]:
    """The files an ONNX model keeps its external tensors in (their contents are part of the model)."""
    import onnx

    try:
        proto = onnx.load(model, load_external_data=False)
    except Exception:  # noqa: BLE001  (a broken model fails with a clear error when it is compiled)
        return {}
    base = os.path.dirname(os.path.abspath(model))
    out = {}
    for t in proto.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            if loc:
                out[f"external:{loc}"] = os.path.join(base, loc)
    return out


CACHE_KEY_FILE = ".tcc-cache-key"


def compile_cached(model: str, out_dir: str, opts: CompileOptions, progress: Callable | None = None,
                   rebuild: bool = False) -> tuple[dict, bool]:
    """Compile into `out_dir` unless it already holds the artifact of this model, these options and
    this tcc (its key file matches). Returns (manifest, reused)."""
    key = cache_key(model, opts)
    key_path = os.path.join(out_dir, CACHE_KEY_FILE)
    manifest_path = os.path.join(out_dir, "manifest.json")
    if not rebuild and os.path.isfile(key_path) and os.path.isfile(manifest_path):
        with open(key_path) as f:
            if f.read().strip() == key:
                with open(manifest_path) as m:
                    return json.load(m), True
    manifest = compile_model(model, out_dir, opts, progress)
    tmp = f"{key_path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(key + "\n")
    os.replace(tmp, key_path)
    return manifest, False
