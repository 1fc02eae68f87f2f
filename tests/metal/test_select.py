"""Token selection as a Metal kernel (runtime/metal/select.metal, host side runtime/metal/select_metal.cpp)
under the SIMT emulator, against tcc_sample (runtime/sampling.cpp, linked into the same library) on the same
logits, parameters and seed: the same ids and the generator advanced alike. The edge cases are the CUDA
selection's (tests/cuda/test_select.py), imported and run here against this file's `lib` and `ex` fixtures.
Then a Metal w4a16 LLaMA program under --emulate, whose decode steps select with the MSL kernel."""
from __future__ import annotations

import ctypes
import json
import os

import pytest

from tests.cuda import harness as cuda_harness
from tests.cuda.test_select import _Sampling
# The CUDA selection's cases: collected in this module, so they run with the Metal `lib` and `ex` below.
from tests.cuda.test_select import (  # noqa: F401
    test_bad_arguments, test_batch_rows_advance_the_generator_in_row_order, test_large_vocab_default_and_temperature,
    test_many_seeds_identical, test_nan_and_infinities, test_no_race,
    test_repetition_penalty_duplicates_and_out_of_range, test_row_stride, test_ties_and_all_equal, test_top_k_edges,
    test_top_p_edges, test_vocab_sizes_every_mode)

from .harness import FLAGS, RUNTIME, _bridge_object, _metal_digest, msl_check

MODELS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "models", "llm")
# The selection's own sources, and the headers they include (the cache key).
SOURCES = ("metal/select.metal", "metal/select_metal.cpp", "sampling.cpp")
HEADERS = ("metal/tcc_metal_select.h", "tcc_select.h", "tcc_model.h")


def _text(rel: str) -> str:
    with open(os.path.join(RUNTIME, rel)) as f:
        return f.read()


def _build() -> str:
    """select.metal (as C++ against the MSL model), select_metal.cpp and sampling.cpp, linked with the Metal
    bridge and the emulator into one cached library."""
    cache = cuda_harness._cache_dir()
    key = cuda_harness._digest(_metal_digest(), " ".join(FLAGS), *(_text(r) for r in SOURCES + HEADERS))
    objects, jobs = [], []
    for rel in SOURCES:
        name = os.path.basename(rel).replace(".", "_")
        obj = os.path.join(cache, f"select-{name}-{key}.o")
        objects.append(obj)
        if not os.path.exists(obj):
            jobs.append((obj, [*cuda_harness._compiler(), *FLAGS, "-I", RUNTIME, "-x", "c++", "-c",
                               os.path.join(RUNTIME, rel), "-o", f"{obj}.{os.getpid()}.tmp.o"]))
    cuda_harness._compile_all(jobs)
    device, bridge = cuda_harness._device_object(cache), _bridge_object(cache)
    lib_path = os.path.join(cache, f"metal-select-{cuda_harness._digest(*objects, device, bridge)}.so")
    if not os.path.exists(lib_path):
        tmp = f"{lib_path}.{os.getpid()}.tmp.so"
        cuda_harness._run([*cuda_harness._compiler(), "-shared", *objects, bridge, device, "-o", tmp, "-lpthread",
                           "-Wl,-Bsymbolic"])
        os.replace(tmp, lib_path)
    return lib_path


@pytest.fixture(scope="module")
def lib():
    lib = cuda_harness.SimtLib(_build(), {})
    p = ctypes.c_void_p
    lib.tcc_device_select.argtypes = [p, p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.POINTER(_Sampling),
                                      p, ctypes.c_int64, ctypes.POINTER(ctypes.c_uint64), p,
                                      ctypes.POINTER(ctypes.c_char_p)]
    lib.tcc_device_select.restype = ctypes.c_int
    lib.tcc_device_select_release.argtypes = [p]
    lib.tcc_sample.argtypes = [p, ctypes.c_int64, ctypes.POINTER(_Sampling), p, ctypes.c_int64,
                               ctypes.POINTER(ctypes.c_uint64)]
    lib.tcc_sample.restype = ctypes.c_int64
    lib.tcc_rng_seed.argtypes = [ctypes.c_uint64]
    lib.tcc_rng_seed.restype = ctypes.c_uint64
    return lib


@pytest.fixture(scope="module")
def ex(lib):
    handle = lib.tcc_exec_create(1)
    yield handle
    lib.tcc_device_select_release(handle)
    lib.tcc_exec_destroy(handle)


def _selects_with_the_msl_kernel(library: str) -> None:
    """The library's tcc_device_select dispatches the MSL kernel, not the CUDA one."""
    import subprocess

    syms = subprocess.run(["nm", "-C", library], capture_output=True, text=True, check=True).stdout
    assert "tcc_metal_select_launch" in syms and "tcc_select_rows" in syms
    assert "tcc_select_kernel" not in syms  # select_cuda.cu's kernel


def test_the_library_selects_with_the_msl_kernel(lib):
    _selects_with_the_msl_kernel(lib._name)


def test_msl_type_check():
    """select.metal's kernel through clang and tcc's MSL shim (also part of tests/metal/test_kernels.py's check),
    and its host half (the launcher) as the macOS Objective-C++ compile sees it, less Objective-C."""
    for host in (False, True):
        failures = msl_check([], host=host)
        assert not failures, failures


# -- a whole program: the MSL selection linked into a Metal artifact's emulation build ----------------------
@pytest.fixture(scope="module")
def metal_llama(tmp_path_factory):
    from tcc.driver import compile_model
    from tests.metal.test_program import _options

    model = os.path.join(MODELS, "llama_past_dynamo", "model.onnx")
    out = str(tmp_path_factory.mktemp("metal-select-program") / "llama-w4a16")
    compile_model(model, out, _options("w4a16"))
    return model, out


def test_program_greedy_equals_the_reference(metal_llama):
    from tcc.runtime.generate import Generator
    from tcc.runtime.session import load
    from tests.metal.test_program import NEW, PROMPT, _reference_greedy_metal

    model, out = metal_llama
    with open(os.path.join(out, "manifest.json")) as f:
        _selects_with_the_msl_kernel(os.path.join(out, json.load(f)["emulation"]["library"]))
    want, _ = _reference_greedy_metal(model, "w4a16")
    sess = load(out, emulate=True)
    assert Generator(sess)._run_select is not None  # the decode steps below select with the MSL kernel
    got = sess.generate(PROMPT, max_new_tokens=NEW, temperature=0.0, repetition_penalty=1.0, eos_ids=())
    assert got.tokens == want


def test_program_sampling_equals_the_logits_path(metal_llama):
    """Sampled decoding with a seed: the MSL kernel picks what tcc_sample picks on the copied logits
    (keep_logits=True takes that path), step after step."""
    from tcc.runtime.session import load
    from tests.metal.test_program import PROMPT

    _, out = metal_llama
    sess = load(out, emulate=True)
    outcomes = set()
    for seed in (1, 2, 3):
        for kw in (dict(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0),
                   dict(temperature=0.9, top_k=40, top_p=0.9, repetition_penalty=1.2)):
            on_device = sess.generate(PROMPT, max_new_tokens=8, seed=seed, eos_ids=(), **kw)
            via_logits = sess.generate(PROMPT, max_new_tokens=8, seed=seed, eos_ids=(), keep_logits=True, **kw)
            assert on_device.tokens == via_logits.tokens, (seed, kw)
            outcomes.add(tuple(on_device.tokens))
    assert len(outcomes) > 1  # the seeds lead to different continuations: the comparison is not vacuous


def test_macos_project_builds_the_selection_kernel(metal_llama):
    """The artifact's macOS project carries the selection sources, compiles select.metal into the .metallib (IEEE
    float) and links select_metal.cpp, not select_cpu.cpp."""
    _, out = metal_llama
    project = os.path.join(out, "metal")
    for name in ("select.metal", "select_metal.cpp", "tcc_metal_select.h"):
        assert os.path.isfile(os.path.join(project, "runtime", "metal", name)), name
    with open(os.path.join(project, "CMakeLists.txt")) as f:
        recipe = f.read()
    assert "-fno-fast-math -I ${RT} -c ${RT}/metal/select.metal" in recipe
    assert "list(APPEND RUNTIME_SOURCES ${RT}/metal/select_metal.cpp)" in recipe
    assert r"|select_[A-Za-z0-9_]+)\\.cpp$" in recipe  # select_cpu.cpp filtered out of the runtime's sources
