"""The attention variants (sliding window, ring KV cache, ALiBi, soft-capping) in the arm NEON and portable
attention / kvattention kernels under qemu: the cases, float64 references and tolerances of
tests/kernels/test_attention_variants.py (justified there, none loosened here), all calls in one static
harness binary run on qemu's default CPU and cortex-a53, as tests/backends/test_arm_neon.py does.
"""
from __future__ import annotations

import numpy as np
import pytest
from tcc.backends import get_backend
from tcc.backends.arm.target import cross_toolchain_missing

from tests.kernels import test_attention_variants as av

from .arm_harness import POOL, Harness, shared_dir

MISSING = cross_toolchain_missing()
CPUS = [None, "cortex-a53"]
CPU_IDS = ["qemu-max", "cortex-a53"]
SPECS = [s for s in get_backend("arm").variants if s.family in ("attention", "kvattention")]


def _build():
    rng = np.random.default_rng(11)
    h, items = Harness(), []
    for spec in SPECS:
        j = 0
        cases = av.KV_CASES if spec.family == "kvattention" else av.ATTN_CASES
        for name, case in cases.items():
            j += 1
            if spec.family == "kvattention":
                c = av.make_kv(rng, *case)
                out = np.full(c["ref"].shape, np.nan, np.float32)
                kc0, vc0 = c["kc"].copy(), c["vc"].copy()
                idx = h.call(spec, *av.kv_args(c, out), POOL if j % 2 else None)

                def check(res, c=c, kc0=kc0, vc0=vc0, what=f"{spec.name} {name}"):
                    av.check(res[5], c["ref"], c["tol"], what)
                    av.check_kv_cache(c, res[3], res[4], kc0, vc0, what)
            else:
                c = av.make_attn(rng, *case)
                out = np.full(c["ref"].shape, np.nan, np.float32)
                idx = h.call(spec, *av.attn_args(c, out), POOL if j % 2 else None)

                def check(res, c=c, what=f"{spec.name} {name}"):
                    av.check(res[4], c["ref"], c["tol"], what)
            items.append((f"{spec.name}-{name}", idx, check))
    return h, items


H, ITEMS = _build()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    if MISSING:
        pytest.skip(f"arm cross toolchain absent: {MISSING}")
    with shared_dir(tmp_path_factory, "arm_attention_variants_harness") as build_dir:
        H.build(str(build_dir))
    out = {}
    for cpu in CPUS:
        out[cpu] = H.run(cpu)
        assert "call " not in H.messages, f"kernel errors under {cpu}: {H.messages[:500]}"
    return out


@pytest.mark.parametrize("cpu", CPUS, ids=CPU_IDS)
@pytest.mark.parametrize("item", ITEMS, ids=[i[0] for i in ITEMS])
def test_arm_attention_variant(results, cpu, item):
    _, idx, check = item
    check(results[cpu][idx])


def test_every_arm_attention_kernel_is_tested():
    assert {s.family for s in SPECS} == {"attention", "kvattention"}
    assert {s.variant for s in SPECS} >= {"neon", "scalar"}, sorted(s.name for s in SPECS)
