"""passes/kv_mask.py: the per-binding check behind kv-cache's mask analysis (row_form): plain causal, a
sliding window, ALiBi slopes, and the masks a KV-cache generation loop cannot serve."""
from __future__ import annotations

import numpy as np

from tcc.passes.kv_mask import row_form

NEG_INF = -np.inf


def mask(batch, heads, past, seq, window=None, slopes=None, fill=NEG_INF):
    """[B, H, Sq, Skv] for queries at positions past..past+seq-1: 0 (or slope * distance) on the kept keys."""
    skv = past + seq
    rel = np.arange(skv)[None, :] - (past + np.arange(seq))[:, None]
    keep = (rel <= 0) & ((rel > -window) if window else True)
    bias = np.zeros((heads, seq, skv)) if slopes is None else np.asarray(slopes)[:, None, None] * rel
    m = np.where(keep, bias, fill)
    return np.broadcast_to(m, (batch, heads, seq, skv)).copy()


def test_plain_causal():
    assert row_form(mask(2, 4, past=3, seq=5), past=3) == (None, None)
    assert row_form(mask(1, 1, past=0, seq=1), past=0) == (None, None)
    assert row_form(mask(1, 2, past=6, seq=1, fill=-1e30), past=6) == (None, None)


def test_sliding_window():
    w, slopes = row_form(mask(1, 2, past=6, seq=3, window=4), past=6)
    assert (w, slopes) == (4, None)


def test_alibi_slopes():
    s = np.array([0.5, 0.25, 0.125])
    w, slopes = row_form(mask(2, 3, past=4, seq=3, slopes=s), past=4)
    assert w is None
    np.testing.assert_allclose(slopes, s, rtol=1e-9)
    # as an f32 model computes it: linear up to rounding
    s = np.array([1 / 3, 2 ** -0.5, 0.1])
    w, slopes = row_form(mask(1, 3, past=40, seq=2, slopes=s).astype(np.float32), past=40)
    np.testing.assert_allclose(slopes, s, rtol=1e-5)


def test_bias_that_is_not_linear_in_the_distance():
    m = mask(1, 1, past=8, seq=2, slopes=[0.5])
    rel = np.arange(10)[None, :] - (8 + np.arange(2))[:, None]
    bent = np.where(np.isfinite(m), m + 1e-3 * rel ** 2, m)
    assert "bias" in row_form(bent, past=8)


def test_masks_generation_cannot_serve():
    m = mask(1, 2, past=2, seq=3)
    assert "not causal" in row_form(m, past=1)  # the queries sit elsewhere than the mask assumes
    bad = m.copy()
    bad[0, 0, 0, 0] = np.nan
    assert "NaN" in row_form(bad, past=2)
    bad = m.copy()
    bad[0, 1, 2, 0] = NEG_INF  # head 1 masks a key head 0 keeps
    assert "different keys" in row_form(bad, past=2)
    bad = m.copy()
    bad[..., 1, 0] = -1e4  # very negative but not masked: a bias that is not a slope times the distance
    assert "bias" in row_form(bad, past=2)
    assert "not causal" in row_form(mask(1, 1, past=2, seq=3, fill=-1e30)[..., ::-1], past=2)
