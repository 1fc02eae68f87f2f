"""The Python runtime: `tcc.load(out_dir)` opens a compiled artifact and runs it through its C API."""
from __future__ import annotations

import ctypes
import json
import os
import threading
from dataclasses import dataclass

import numpy as np

from ..errors import TccError
from .artifact import ArtifactError, check_format
from ..ir.dims import parse_dim
from ..ir.dtypes import DType

MAX_RANK = 8
DTYPE_ORDER = (DType.f32, DType.f16, DType.f64, DType.i64, DType.i32, DType.i8, DType.u8, DType.bool)


class _Tensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("shape", ctypes.c_int64 * MAX_RANK), ("ndim", ctypes.c_int32),
                ("dtype", ctypes.c_int32)]


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: DType
    shape: tuple  # ints and symbolic dims (Sym)

    def __str__(self) -> str:
        return f"{self.name}: {self.dtype}[{','.join(map(str, self.shape))}]"


def _info(d: dict) -> TensorInfo:
    shape = tuple(x if isinstance(x, int) else parse_dim(x) for x in d["shape"])
    return TensorInfo(d["name"], DType(d["dtype"]), shape)


def _check_manifest_fields(manifest: dict, path: str) -> None:
    """Refuse a manifest whose inputs, outputs or symbols the runtime cannot read (an edited or foreign
    manifest.json: `"inputs": null`, an unknown dtype), as one line naming the file and the field."""
    mpath = os.path.join(path, "manifest.json")
    dtypes = [d.value for d in DType]
    for kind in ("inputs", "outputs"):
        entries = manifest.get(kind)
        if not isinstance(entries, list) or (kind == "outputs" and not entries):
            raise ArtifactError(f"{mpath}: {kind} must be a list of tensors, got {entries!r:.60}")
        for i, d in enumerate(entries):
            where = f"{mpath}: {kind}[{i}]"
            if not isinstance(d, dict) or not isinstance(d.get("name"), str):
                raise ArtifactError(f"{where} must be an object with a string name, got {d!r:.60}")
            if d.get("dtype") not in dtypes:
                raise ArtifactError(f"{where} ({d['name']}): unknown dtype {d.get('dtype')!r:.40} "
                                    f"(one of {', '.join(dtypes)})")
            shape = d.get("shape")
            if not isinstance(shape, list) or len(shape) > MAX_RANK:
                raise ArtifactError(f"{where} ({d['name']}): shape must be a list of at most {MAX_RANK} dims, "
                                    f"got {shape!r:.60}")
            for x in shape:
                try:
                    ok = x >= 0 if isinstance(x, int) and not isinstance(x, bool) else (
                        isinstance(x, str) and parse_dim(x) is not None)
                except (ValueError, TypeError, RecursionError):
                    ok = False
                if not ok:
                    raise ArtifactError(f"{where} ({d['name']}): bad dimension {x!r:.40}")
    symbols = manifest.get("symbols", {})
    if not isinstance(symbols, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in symbols.values()):
        raise ArtifactError(f"{mpath}: symbols must map dimension names to positive integers, got {symbols!r:.60}")


class Session:
    """A loaded artifact. `run(feeds)` returns a dict of numpy outputs (copies, safe to keep).

    A session may be shared between threads: its calls are serialized by a lock (one model, one arena and
    one KV cache cannot run two requests at once). For parallel work, load one session per thread.
    Loading verifies the artifact (format, version, every file's size and SHA-256) before mapping or
    dlopening anything; `verify=False` checks sizes only (faster for huge weights, no damage detection)."""

    def __init__(self, out_dir: str, threads: int | None = None, verify: bool | None = None,
                 emulate: bool = False, cuda_graph: bool | None = None):
        from .. import flags
        from .artifact import verify as verify_files
        from .generate import check_threads

        # before any work: 0 (all cores) or 1..1024, from the argument or TCC_THREADS
        n_threads = (check_threads(threads) if threads is not None
                     else check_threads(flags.get("threads"), what="TCC_THREADS"))
        self.path = os.path.abspath(out_dir)
        self._lock = threading.RLock()
        self.manifest = _read_manifest(self.path)
        self.verified = verify_files(self.path, self.manifest, hashes=flags.get("verify") if verify is None else verify)
        _check_manifest_fields(self.manifest, self.path)
        self.inputs = [_info(d) for d in self.manifest["inputs"]]
        self.outputs = [_info(d) for d in self.manifest["outputs"]]
        self.symbol_bounds: dict[str, int] = dict(self.manifest.get("symbols", {}))
        _check_sanitizer_runtime(self.manifest)
        self.emulated = emulate
        self._lib = _dlopen_fresh(os.path.join(self.path, _library(self.manifest, self.path, emulate)))
        self._bind()
        weights = os.path.join(self.path, self.manifest["weights"]["file"])
        from .. import flags

        self._model = self._lib.tcc_model_load(weights.encode(), int(n_threads))
        if not self._model:
            why = self._lib.tcc_model_last_error().decode()
            if "Resource temporarily unavailable" in why:  # std::thread could not start a worker (EAGAIN)
                why = f"cannot start {n_threads or 'one per core'} worker threads ({why}); use fewer threads"
            raise TccError(why)
        self.cuda_graph = flags.get("cuda-graph") if cuda_graph is None else bool(cuda_graph)

    # -- device graphs (CUDA: docs/cuda.md "CUDA graphs") ---------------------------------------------------
    @property
    def cuda_graph(self) -> bool:
        """Whether decode steps are captured as a device graph and replayed (where the program can be: see
        manifest["cuda_graph"]); settable at any time. A no-op on targets without graphs."""
        return self._cuda_graph

    @cuda_graph.setter
    def cuda_graph(self, on: bool) -> None:
        with self._lock:
            self._cuda_graph = bool(on)
            fn = getattr(self._lib, "tcc_model_set_graphs", None)  # absent in artifacts older than graphs
            if fn is not None and self._model:
                fn.argtypes = [ctypes.c_void_p, ctypes.c_int]
                fn(self._model, int(self._cuda_graph))

    @property
    def graph_replays(self) -> int:
        """Runs that were replays of a captured graph since load (0 where graphs are off or unsupported)."""
        fn = getattr(self._lib, "tcc_model_graph_replays", None)
        if fn is None or not self._model:
            return 0
        fn.argtypes, fn.restype = [ctypes.c_void_p], ctypes.c_int64
        with self._lock:
            return int(fn(self._model))

    def _bind(self) -> None:
        bind_c_api(self._lib)

    # -- several sequences in one program (tcc_model_run_rows; continuous batching) --------------------
    @property
    def kv_slots(self) -> int:
        """KV-cache slots (independent sequences) `run_rows` can use: the compiled batch bound (--max-dim
        batch=N), or 0 (no KV cache, positions used outside attention, or an artifact older than run_rows)."""
        fn = getattr(self._lib, "tcc_model_kv_slots", None)
        if fn is None:
            return 0
        fn.restype = ctypes.c_int64
        return int(fn())

    def _need_slots(self) -> None:
        if not self._model:
            raise TccError("session is closed")
        if self.kv_slots < 1:
            raise TccError(f"{self.path} cannot run rows on separate KV-cache slots (no KV cache, positions used "
                           f"outside attention, or compiled by an older tcc)")

    @staticmethod
    def _int_arg(value, what: str) -> int:
        import numbers

        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not -2**63 <= int(value) < 2**63:
            raise TccError(f"{what} must be an integer, got {value!r:.40}")
        return int(value)

    def kv_length(self, slot: int) -> int:
        """Tokens in one slot's KV cache."""
        slot = self._int_arg(slot, "slot")
        with self._lock:
            self._need_slots()
            fn = self._lib.tcc_model_kv_length_slot
            fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_int64], ctypes.c_int64
            n = int(fn(self._model, slot))
            if n < 0:
                raise TccError(f"KV cache slot {slot} does not exist (0..{self.kv_slots - 1})")
            return n

    def kv_truncate(self, slot: int, n: int) -> None:
        """Forget tokens n.. of one slot (0 empties it); the other slots are untouched."""
        slot, n = self._int_arg(slot, "slot"), self._int_arg(n, "n")
        with self._lock:
            self._need_slots()
            fn = self._lib.tcc_model_kv_truncate_slot
            fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
            if fn(self._model, slot, n) != 0:
                raise TccError(self._lib.tcc_model_last_error().decode())

    def run_rows(self, ids, slots, logits_rows: int = 1) -> np.ndarray:
        """Continue several sequences in one run: `ids` [rows, seq] (int64), row r appended to KV-cache slot
        slots[r] (distinct). Returns the logits [rows, n, vocab] of each row's last n = min(logits_rows, seq)
        positions (0: all). Equal to running each row alone on its slot up to fp32 summation order."""
        from ..errors import RuntimeFeedError

        def ints(x, what: str) -> np.ndarray:
            try:
                a = np.asarray(x)
            except (ValueError, TypeError, OverflowError) as e:  # ragged rows, objects numpy cannot convert
                raise RuntimeFeedError(f"run_rows: {what} is not an array ({str(e).splitlines()[0]})") from None
            if a.dtype.kind not in "iu" or (a.dtype.kind == "u" and a.size and a.max() > np.iinfo(np.int64).max):
                raise RuntimeFeedError(f"run_rows: {what} must be integers, got {a.dtype} {a.shape}")
            return np.ascontiguousarray(a, dtype=np.int64)

        arr = ints(ids, "ids")
        if arr.ndim != 2 or arr.size == 0:
            raise RuntimeFeedError(f"run_rows: ids must be a non-empty 2-D integer array [rows, seq], got shape "
                                   f"{arr.shape}")
        sl = ints(slots, "slots")
        if sl.shape != (arr.shape[0],):
            raise RuntimeFeedError(f"run_rows: slots must be {arr.shape[0]} integers (one per row), got shape "
                                   f"{sl.shape}")
        logits_rows = self._int_arg(logits_rows, "logits_rows")
        vocab = int((self.manifest.get("llm") or {}).get("vocab") or 0)
        if vocab and (arr.min() < 0 or arr.max() >= vocab):
            bad = int(arr[(arr < 0) | (arr >= vocab)][0])
            raise RuntimeFeedError(f"token id {bad} is out of range for the vocabulary of {vocab}")
        with self._lock:
            self._need_slots()
            lib = self._lib
            lib.tcc_model_set_logits_rows.argtypes = [ctypes.c_void_p, ctypes.c_int64]
            lib.tcc_model_set_logits_rows(self._model, logits_rows)
            fn = lib.tcc_model_run_rows
            fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                           ctypes.POINTER(_Tensor), ctypes.c_int]
            outs = (_Tensor * max(len(self.outputs), 1))()
            if fn(self._model, arr.ctypes.data, arr.shape[0], arr.shape[1], sl.ctypes.data, outs,
                  len(self.outputs)) != 0:
                raise TccError(lib.tcc_model_last_error().decode())
            t = outs[0]
            shape = tuple(t.shape[i] for i in range(t.ndim))
            n = int(np.prod(shape, dtype=np.int64)) * 4
            return np.frombuffer(ctypes.string_at(t.data, n), dtype=np.float32).reshape(shape).copy()

    def set_profiling(self, on: bool = True) -> None:
        """Time every node of the following runs (enabling resets the counters)."""
        with self._lock:
            self._lib.tcc_model_set_profiling(self._model, int(on))

    def profile(self) -> list[dict]:
        """Per-node timings since profiling was enabled: op, node (source name), calls, ms (total)."""
        lib = self._lib
        return [{"op": lib.tcc_model_profile_op(i).decode(), "node": lib.tcc_model_profile_node(i).decode(),
                 "calls": lib.tcc_model_profile_calls(self._model, i),
                 "ms": lib.tcc_model_profile_ns(self._model, i) / 1e6}
                for i in range(lib.tcc_model_profile_count())]

    # -- language models (manifest "llm"; see runtime/generate.py) ----------------------------------
    @property
    def tokenizer(self):
        """The artifact's tokenizer (tokenizer.json copied at compile time), or None."""
        if not hasattr(self, "_tokenizer"):
            from .tokenizer import Tokenizer

            self._tokenizer = (Tokenizer.from_dir(self.path)
                               if os.path.isfile(os.path.join(self.path, "tokenizer.json")) else None)
        return self._tokenizer

    @property
    def generator(self):
        if getattr(self, "_generator", None) is None:
            from .generate import Generator

            self._generator = Generator(self, self.tokenizer)
        return self._generator

    def generate(self, prompt, max_new_tokens: int = 256, temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, repetition_penalty: float | None = None, seed: int | None = None,
                 stop=(), stream=None, keep_context: bool = False, keep_logits: bool = False, eos_ids=None):
        """Continue `prompt` (text, or a list of token ids). Starts a new context unless keep_context
        (then the prompt is appended to the conversation so far). temperature 0 is greedy; unset sampling
        parameters take the chat binary's defaults (runtime/generate.py: DEFAULT_SAMPLING). `stream`
        gets each new piece of text; `stop` strings end the reply (not included); `eos_ids` overrides the
        end-of-sequence ids of chat.json (an empty set generates max_new_tokens). Returns a Generation."""
        from .generate import check_prompt, check_reply_args, check_sampling

        # all arguments before the conversation is touched (the chat binary's ranges; one-line TccErrors)
        check_sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed)
        check_reply_args(stop, stream, eos_ids)
        check_prompt(prompt)
        with self._lock:
            g = self.generator
            if not keep_context:
                g.reset()
            ids = g.prompt_ids(prompt)
            return g.run(ids, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop, stream,
                         eos_ids=eos_ids, keep_logits=keep_logits)

    def chat(self, message: str, system: str | None = None, max_new_tokens: int = 256,
             temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
             repetition_penalty: float | None = None, seed: int | None = None, stop=(), stream=None):
        """One chat turn: the message, formatted with the chat template, is appended to the conversation
        (the KV cache keeps earlier turns), and the reply is generated. `reset()` starts over."""
        from .generate import check_message, check_reply_args, check_sampling

        check_message(message, system)
        check_sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed)
        check_reply_args(stop, stream)
        with self._lock:
            g = self.generator
            return g.run(g.turn_ids(message, system), max_new_tokens, temperature, top_k, top_p,
                         repetition_penalty, seed, stop, stream)

    def reset(self) -> None:
        """Forget the conversation (empty the KV cache)."""
        with self._lock:
            self.generator.reset()

    def close(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is None:
            return
        with lock:
            if getattr(self, "_model", None):
                self._lib.tcc_model_free(self._model)
                self._model = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _check_feeds(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        from collections.abc import Mapping

        from ..errors import RuntimeFeedError
        from ..ir.interpreter import check_feeds

        if not isinstance(feeds, Mapping):
            raise RuntimeFeedError(f"feeds must be a dict of input name -> array (the inputs are "
                                   f"{[i.name for i in self.inputs]}), got {type(feeds).__name__}")
        bad = [k for k in feeds if not isinstance(k, str)]
        if bad:
            raise RuntimeFeedError(f"feed names must be strings, got {bad[0]!r:.40}")
        converted = {}
        for name, value in feeds.items():
            try:
                # not np.ascontiguousarray: it turns a 0-d array into shape (1,)
                converted[name] = np.asarray(value)
            except (ValueError, TypeError) as e:  # ragged nested lists, objects numpy cannot convert
                raise RuntimeFeedError(f"input {name!r}: not an array ({str(e).splitlines()[0]})") from None
        check_feeds(self.inputs, converted, self.symbol_bounds)
        arrays = [converted[i.name] for i in self.inputs]
        return [a if a.flags.c_contiguous else a.copy(order="C") for a in arrays]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            return self._run(feeds)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._model:
            raise TccError("session is closed")
        arrays = self._check_feeds(feeds)
        ins = (_Tensor * max(len(arrays), 1))()
        for t, arr, info in zip(ins, arrays, self.inputs):
            t.data = arr.ctypes.data
            for i, n in enumerate(arr.shape):
                t.shape[i] = n
            t.ndim = arr.ndim
            t.dtype = DTYPE_ORDER.index(info.dtype)
        outs = (_Tensor * max(len(self.outputs), 1))()
        rc = self._lib.tcc_model_run(self._model, ins, len(arrays), outs, len(self.outputs))
        if rc != 0:
            raise TccError(self._lib.tcc_model_last_error().decode())
        result = {}
        for t, info in zip(outs, self.outputs):
            shape = tuple(t.shape[i] for i in range(t.ndim))
            dtype = DTYPE_ORDER[t.dtype].np
            n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            buf = ctypes.string_at(t.data, n) if n else b""
            result[info.name] = np.frombuffer(buf, dtype=dtype).reshape(shape).copy()
        return result


def bind_c_api(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declare the argument and result types of a libmodel.so's C API (runtime/tcc_model.h) for ctypes."""
    lib.tcc_model_load.restype = ctypes.c_void_p
    lib.tcc_model_load.argtypes = [ctypes.c_char_p, ctypes.c_int]
    lib.tcc_model_free.argtypes = [ctypes.c_void_p]
    lib.tcc_model_last_error.restype = ctypes.c_char_p
    lib.tcc_model_run.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Tensor), ctypes.c_int,
                                  ctypes.POINTER(_Tensor), ctypes.c_int]
    lib.tcc_model_lock.argtypes = lib.tcc_model_unlock.argtypes = [ctypes.c_void_p]
    lib.tcc_model_set_profiling.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.tcc_model_profile_op.restype = lib.tcc_model_profile_node.restype = ctypes.c_char_p
    lib.tcc_model_profile_op.argtypes = lib.tcc_model_profile_node.argtypes = [ctypes.c_int]
    lib.tcc_model_profile_ns.restype = lib.tcc_model_profile_calls.restype = ctypes.c_int64
    lib.tcc_model_profile_ns.argtypes = lib.tcc_model_profile_calls.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def _check_sanitizer_runtime(manifest: dict) -> None:
    """An ASan-built library needs the ASan runtime loaded first; without it ASan exits the process."""
    if "address" not in (manifest.get("sanitize") or []):
        return
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            if "libasan" in f.read():
                return
    except OSError:
        return
    raise TccError("this artifact was built with TCC_SANITIZE=address: load it in a process started with "
                   "LD_PRELOAD=$(c++ -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0, or run its "
                   "standalone run binary")


def _dlopen_fresh(lib_path: str) -> ctypes.CDLL:
    """dlopen a library so that a recompiled file at the same path is really loaded.

    glibc returns an already-loaded object when the *name* matches, so reloading an artifact that was
    rebuilt in place would run the old code. Loading through a uniquely named symlink avoids the name
    match; an unchanged file (same inode) still shares one mapping.
    """
    import tempfile

    if not os.path.exists(lib_path):
        raise TccError(f"{lib_path} not found: the artifact is incomplete (recompile it)")
    tmp = tempfile.mkdtemp(prefix="tcc-dl-")
    link = os.path.join(tmp, os.path.basename(lib_path))
    try:
        os.symlink(os.path.abspath(lib_path), link)
        return ctypes.CDLL(link, mode=ctypes.RTLD_LOCAL)
    except OSError as e:
        raise TccError(f"cannot load {lib_path}: {e} (was it compiled for another target?)") from None
    finally:
        try:
            os.unlink(link)
            os.rmdir(tmp)
        except OSError:
            pass


def _read_manifest(path: str) -> dict:
    mpath = os.path.join(path, "manifest.json")
    if not os.path.isdir(path):
        raise TccError(f"{path} is not a compiled tcc artifact directory (run `tcc compile` first)")
    try:
        with open(mpath, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise TccError(f"{path} has no manifest.json: not a tcc artifact") from None
    except json.JSONDecodeError as e:
        raise TccError(f"{mpath}: malformed manifest at line {e.lineno} column {e.colno}: {e.msg}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TccError(f"cannot read {mpath}: {getattr(e, 'strerror', None) or e}") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{mpath}: the manifest is not a JSON object")
    check_format(manifest, mpath)
    for key in ("inputs", "outputs", "library", "weights"):
        if key not in manifest:
            raise ArtifactError(f"{mpath}: manifest lacks {key!r}")
    # Every file the runtime opens must be one of the checksummed files inside the folder.
    weights = manifest["weights"].get("file") if isinstance(manifest["weights"], dict) else None
    binaries = manifest.get("binaries") or {}
    named = [manifest["library"], weights, *(binaries.values() if isinstance(binaries, dict) else [None])]
    for name in named:
        if not isinstance(name, str) or name not in manifest["files"]:
            raise ArtifactError(f"{mpath}: {name!r} is not one of the artifact's listed files")
    return manifest


def load(out_dir: str, threads: int | None = None, verify: bool | None = None, emulate: bool = False,
         cuda_graph: bool | None = None) -> Session:
    """Open a compiled artifact directory (verified first; see Session). `emulate`: a GPU artifact's build for
    the CPU SIMT emulator (manifest["emulation"]), in this process; its speed is not the GPU's. `cuda_graph`:
    capture and replay decode steps (CUDA; default: the cuda-graph flag, TCC_CUDA_GRAPH, on)."""
    return Session(out_dir, threads=threads, verify=verify, emulate=emulate, cuda_graph=cuda_graph)


def _library(manifest: dict, path: str, emulate: bool) -> str:
    """The library to load: the artifact's own, or with `emulate` its SIMT emulation build."""
    emu = manifest.get("emulation")
    if not emulate:
        if isinstance(emu, dict) and manifest["library"] == emu.get("library"):
            # (metal) the artifact's own program is built on its platform; here it has only the emulation build
            from ..backends import foreign_target

            why = foreign_target(manifest.get("target", "x86")) or "it has only its emulation build"
            raise TccError(f"cannot load {path} here: {why}; load it with emulate=True (`tcc run --emulate`)")
        return manifest["library"]
    if not isinstance(emu, dict) or emu.get("library") not in manifest.get("files", {}):
        raise TccError(f"{path} has no build for the SIMT emulator (built for {manifest.get('target', 'x86')}; "
                       "--emulate runs a cuda artifact in this process, an arm one under qemu)")
    return emu["library"]
