"""The Metal side of the SIMT emulator (runtime/simt/tcc_simt_metal.h, runtime/simt/metal_bridge.cpp) and the
kernel-signature check of the code generator (backends/metal/msl.py), on small hand-written MSL kernels."""
from __future__ import annotations

import numpy as np
import pytest

from tcc.backends.metal import msl

from .harness import build_metal

SIMD_OPS = r"""
#if TCC_METAL_DEVICE_CODE
kernel void simd_ops(device const float* x [[buffer(0)]], device float* out [[buffer(1)]],
                     uint i [[thread_index_in_threadgroup]], uint lane [[thread_index_in_simdgroup]],
                     uint sg [[simdgroup_index_in_threadgroup]], uint nsg [[simdgroups_per_threadgroup]],
                     ushort tps [[threads_per_simdgroup]]) {
  const float v = x[i];
  const uint n = 48;
  out[0 * n + i] = simd_sum(v);
  out[1 * n + i] = simd_max(v);
  out[2 * n + i] = simd_prefix_exclusive_sum(v);
  out[3 * n + i] = sg == 0 ? simd_shuffle_down(v, 1) : v;  // (in the partial group lane 15 would read lane 16)
  out[4 * n + i] = simd_shuffle_xor(v, 1);
  out[5 * n + i] = simd_broadcast(v, 3);
  out[6 * n + i] = quad_sum(v);
  out[7 * n + i] = quad_shuffle(v, 2);
  out[8 * n + i] = float(simd_shuffle_up(int(i), 2));
  out[9 * n + i] = float(lane) + 100.0f * float(sg) + 1000.0f * float(nsg) + 10000.0f * float(tps);
  float4 f = simd_sum(float4(v, 1.0f, 2.0f, half(0.5f)));
  out[10 * n + i] = f.x + f.y * 1000.0f + f.w * 100000.0f;
}
#endif
#if TCC_METAL_HOST_CODE
extern "C" void run_simd_ops(const float* x, float* out, tcc_exec* exec) {
  tcc_mtl_encoder enc(exec, TCC_MTL_FUNCTION(simd_ops));
  enc.buffer(0, x);
  enc.buffer(1, out);
  enc.dispatch_threadgroups(1, 1, 1, 48, 1, 1);
}
#endif
"""

GRID = r"""
#if TCC_METAL_DEVICE_CODE
kernel void grid_ids(device uint* pos [[buffer(0)]], device uint* tpt [[buffer(1)]], device uint* tgp [[buffer(2)]],
                     device uint* hits [[buffer(3)]], uint2 p [[thread_position_in_grid]],
                     uint2 size [[threads_per_threadgroup]], uint2 tg [[threadgroup_position_in_grid]],
                     uint2 grid [[threads_per_grid]], uint2 groups [[threadgroups_per_grid]]) {
  const uint k = p.y * grid.x + p.x;
  hits[k] += 1;
  pos[2 * k] = p.x;
  pos[2 * k + 1] = p.y;
  tpt[2 * k] = size.x;
  tpt[2 * k + 1] = size.y;
  tgp[2 * k] = tg.x + 1000 * groups.x;
  tgp[2 * k + 1] = tg.y + 1000 * groups.y;
}
#endif
#if TCC_METAL_HOST_CODE
extern "C" void run_grid_ids(uint32_t* pos, uint32_t* tpt, uint32_t* tgp, uint32_t* hits, int64_t gx, int64_t gy,
                             int64_t tx, int64_t ty, tcc_exec* exec) {
  tcc_mtl_encoder enc(exec, TCC_MTL_FUNCTION(grid_ids));
  enc.buffer(0, pos);
  enc.buffer(1, tpt);
  enc.buffer(2, tgp);
  enc.buffer(3, hits);
  enc.dispatch_threads(gx, gy, 1, tx, ty, 1);
}
#endif
"""

MATRIX = r"""
#if TCC_METAL_DEVICE_CODE
kernel void matrix_mac(device const float* a [[buffer(0)]], device const half* b [[buffer(1)]],
                       device const float* c [[buffer(2)]], device float* d [[buffer(3)]],
                       constant int& transpose [[buffer(4)]]) {
  simdgroup_float8x8 ma, mc;
  simdgroup_half8x8 mb;
  simdgroup_load(ma, a, 10, ulong2(2, 1), transpose != 0);  // an 8 x 8 block at row 1, column 2 of a 9 x 10 matrix
  simdgroup_load(mb, b);
  simdgroup_load(mc, c);
  simdgroup_matrix<float, 8, 8> md;
  simdgroup_multiply_accumulate(md, ma, mb, mc);
  simdgroup_store(md, d, 8);
}
#endif
#if TCC_METAL_HOST_CODE
extern "C" void run_matrix_mac(const float* a, const uint16_t* b, const float* c, float* d, int32_t transpose,
                               tcc_exec* exec) {
  tcc_mtl_encoder enc(exec, TCC_MTL_FUNCTION(matrix_mac));
  enc.buffer(0, a);
  enc.buffer(1, b);
  enc.buffer(2, c);
  enc.buffer(3, d);
  enc.value(4, transpose);
  enc.dispatch_threadgroups(1, 1, 1, 32, 1, 1);
}
#endif
"""

# Kernels that break the rules, each with what the emulator must say.
BAD = r"""
#if TCC_METAL_DEVICE_CODE
kernel void divergent_simd(device float* y [[buffer(0)]], uint lane [[thread_index_in_simdgroup]]) {
  if (lane < 16) y[lane] = simd_sum(1.0f);
}
kernel void absent_lane(device float* y [[buffer(0)]], uint lane [[thread_index_in_simdgroup]]) {
  y[lane] = simd_shuffle(float(lane), ushort(lane + 8));
}
kernel void divergent_barrier(device float* y [[buffer(0)]], uint i [[thread_index_in_threadgroup]]) {
  if (i < 40) {
    threadgroup_barrier(mem_flags::mem_threadgroup);
  } else {
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }
  y[i] = 1.0f;
}
kernel void uneven_matrix(device float* y [[buffer(0)]], uint lane [[thread_index_in_simdgroup]]) {
  simdgroup_float8x8 m;
  simdgroup_load(m, y, 8 + (lane == 5 ? 1 : 0));
}
kernel void big_threadgroup(device float* y [[buffer(0)]], threadgroup float* t [[threadgroup(0)]]) {
  y[0] = t[0];
}
kernel void unbound(device float* y [[buffer(0)]], device float* z [[buffer(1)]]) {
  y[0] = 1.0f;
}
kernel void index_error(device tcc_msl_error* err [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  if (i == 3) tcc_msl_fail(err, TCC_MTL_ERR_INDEX, 42, 0, 7);
}
#endif
#if TCC_METAL_HOST_CODE
extern "C" void run_bad(int32_t which, float* y, tcc_exec* exec) {
  switch (which) {
    case 0: { tcc_mtl_encoder e(exec, TCC_MTL_FUNCTION(divergent_simd)); e.buffer(0, y); e.dispatch_threadgroups(1, 1, 1, 32, 1, 1); break; }
    case 1: { tcc_mtl_encoder e(exec, TCC_MTL_FUNCTION(absent_lane)); e.buffer(0, y); e.dispatch_threadgroups(1, 1, 1, 20, 1, 1); break; }
    case 2: { tcc_mtl_encoder e(exec, TCC_MTL_FUNCTION(divergent_barrier)); e.buffer(0, y); e.dispatch_threadgroups(1, 1, 1, 64, 1, 1); break; }
    case 3: { tcc_mtl_encoder e(exec, TCC_MTL_FUNCTION(uneven_matrix)); e.buffer(0, y); e.dispatch_threadgroups(1, 1, 1, 32, 1, 1); break; }
    case 4: { tcc_mtl_encoder e(exec, TCC_MTL_FUNCTION(big_threadgroup)); e.buffer(0, y); e.threadgroup_memory(0, 40000); e.dispatch_threadgroups(1, 1, 1, 32, 1, 1); break; }
    case 5: { tcc_mtl_encoder e(exec, TCC_MTL_FUNCTION(unbound)); e.buffer(0, y); e.dispatch_threadgroups(1, 1, 1, 1, 1, 1); break; }
    case 6: { tcc_mtl_encoder e(exec, TCC_MTL_FUNCTION(index_error)); e.buffer(0, tcc_mtl_error_slot(exec)); e.dispatch_threads(5, 1, 1, 4, 1, 1); break; }
    case 7: { tcc_mtl_encoder e(exec, TCC_MTL_FUNCTION(unbound)); e.buffer(0, y); e.dispatch_threadgroups(1, 1, 1, 1025, 1, 1); break; }
  }
}
#endif
"""


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    return build_metal([SIMD_OPS, GRID, MATRIX, BAD], str(tmp_path_factory.mktemp("metal_emulator")))


def test_simd_group_functions(lib):
    """48 threads: a full SIMD-group and a partial one of 16 lanes; each function over the lanes present."""
    x = np.arange(48, dtype=np.float32) * 0.5 + 1.0
    out = np.zeros(11 * 48, np.float32)
    assert lib.run("run_simd_ops", x, out) == ""
    o = out.reshape(11, 48)
    groups = [x[:32], x[32:]]
    lane = np.r_[np.arange(32), np.arange(16)]
    first = np.r_[np.zeros(32, int), np.full(16, 32)]
    assert np.array_equal(o[0], np.r_[np.full(32, groups[0].sum()), np.full(16, groups[1].sum())])
    assert np.array_equal(o[1], np.r_[np.full(32, groups[0].max()), np.full(16, groups[1].max())])
    assert np.array_equal(o[2], np.r_[np.cumsum(groups[0]) - groups[0], np.cumsum(groups[1]) - groups[1]])
    assert np.array_equal(o[3], np.r_[x[1:32], x[31], x[32:]])  # lane 31: past the end, its own value
    assert np.array_equal(o[4], x[np.arange(48) ^ 1])
    assert np.array_equal(o[5], x[first + 3])
    quads = x.reshape(12, 4)
    assert np.array_equal(o[6], np.repeat(quads.sum(1), 4)) and np.array_equal(o[7], np.repeat(quads[:, 2], 4))
    up = np.array([i - 2 if lane[i] >= 2 else i for i in range(48)], np.float32)
    assert np.array_equal(o[8], up)
    assert np.array_equal(o[9], lane + 100.0 * (np.arange(48) // 32) + 1000.0 * 2 + 10000.0 * 32)
    n = np.r_[np.full(32, 32.0), np.full(16, 16.0)]
    sums = np.r_[np.full(32, groups[0].sum()), np.full(16, groups[1].sum())]
    assert np.array_equal(o[10], sums + n * 1000.0 + n * 0.5 * 100000.0)


@pytest.mark.parametrize("grid,tg", [((37, 5), (8, 4)), ((16, 8), (8, 4)), ((3, 1), (32, 1))], ids=str)
def test_dispatch_threads_partial_threadgroups(lib, grid, tg):
    """dispatchThreads covers every position exactly once; edge threadgroups are partial (Metal's non-uniform
    threadgroups) and say their real size; positions and threadgroup ids as Metal computes them."""
    gx, gy = grid
    n = gx * gy
    pos, tpt, tgp, hits = (np.zeros(2 * n, np.uint32), np.zeros(2 * n, np.uint32), np.zeros(2 * n, np.uint32),
                           np.zeros(n, np.uint32))
    assert lib.run("run_grid_ids", pos, tpt, tgp, hits, gx, gy, *tg) == ""
    assert np.all(hits == 1)
    yy, xx = np.divmod(np.arange(n), gx)
    assert np.array_equal(pos[0::2], xx) and np.array_equal(pos[1::2], yy)
    groups = (-(-gx // tg[0]), -(-gy // tg[1]))
    assert np.array_equal(tgp[0::2], xx // tg[0] + 1000 * groups[0])
    assert np.array_equal(tgp[1::2], yy // tg[1] + 1000 * groups[1])
    assert np.array_equal(tpt[0::2], np.minimum(tg[0], gx - (xx // tg[0]) * tg[0]))
    assert np.array_equal(tpt[1::2], np.minimum(tg[1], gy - (yy // tg[1]) * tg[1]))


@pytest.mark.parametrize("transpose", [0, 1])
def test_simdgroup_matrix(lib, transpose):
    rng = np.random.default_rng(transpose)
    a = rng.standard_normal((9, 10)).astype(np.float32)
    b = rng.standard_normal((8, 8)).astype(np.float16)
    c = rng.standard_normal((8, 8)).astype(np.float32)
    d = np.zeros((8, 8), np.float32)
    assert lib.run("run_matrix_mac", a, b, c, d, transpose) == ""
    block = a[1:9, 2:10].astype(np.float64)
    ref = (block.T if transpose else block) @ b.astype(np.float64) + c
    assert np.allclose(d, ref, rtol=0, atol=8 * 2.0 ** -24 * (np.abs(block) @ np.abs(b.astype(np.float64)) + np.abs(c)).max())


@pytest.mark.parametrize("which,message", [
    (0, "for lane 16, which has exited"),
    (1, "simd_shuffle reads lane"),
    (2, "barrier"),
    (3, "simdgroup_load: lanes"),
    (4, "threadgroup memory of 40000 bytes exceeds 32768"),
    (5, "buffer(1) (z) is not bound"),
    (6, "index_error: index 42 out of range [0, 7)"),
    (7, "invalid threadgroup size (1025,1,1)"),
])
def test_errors_are_reported(lib, which, message):
    y = np.zeros(64, np.float32)
    err = lib.run("run_bad", which, y)
    assert message in err, err


# -- the signature check ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("params,message", [
    ("device float* y [[buffer(0)]], uint i", "has no [[attribute]]"),
    ("float* y [[buffer(0)]]", "device or constant pointer"),
    ("device float* y [[buffer(0)]], device float* z [[buffer(0)]]", "share a [[buffer(n)]] index"),
    ("device float* y [[buffer(31)]]", "index in [0, 31)"),
    ("device float* y [[buffer(0)]], float3 p [[thread_position_in_grid]]", "not 'float3'"),
    ("device float* y [[buffer(0)]], uint2 l [[thread_index_in_simdgroup]]", "not 'uint2'"),
    ("device float* t [[threadgroup(0)]]", "threadgroup pointer"),
    ("device float* y [[buffer(0)]], uint i [[thread_id]]", "unknown attribute [[thread_id]]"),
])
def test_signature_check(params, message):
    with pytest.raises(msl.MslError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        msl.parse_kernels(f"kernel void k({params}) {{}}")


def test_threadgroup_arrays_must_be_arguments():
    with pytest.raises(msl.MslError, match="kernel arguments"):
        msl.parse_kernels("kernel void k(device float* y [[buffer(0)]]) { threadgroup float t[32]; }")


def test_entries_bind_by_index():
    kernels = msl.parse_kernels("kernel void k(constant int& n [[buffer(2)]], threadgroup half* t [[threadgroup(1)]],"
                                " ushort3 p [[thread_position_in_threadgroup]]) {}")
    _, defs = msl.entries(kernels)
    assert '*(constant int*)tcc_msl_simt::buffer(d, 2, "n")' in defs
    assert '(threadgroup half*)tcc_msl_simt::threadgroup_memory(d, 1, "t")' in defs
    assert "builtin_as<ushort3>(tcc_msl_simt::kThreadPositionInThreadgroup)" in defs
