"""Sliding-window perplexity (runtime/perplexity.py) on synthetic logits: no compiled model needed."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tcc.errors import TccError
from tcc.runtime.perplexity import Perplexity, score, window_nll, windows


@pytest.mark.parametrize("n,context,stride", [(2, 2, 1), (10, 4, 2), (10, 4, 4), (10, 4, 1), (100, 16, 5),
                                              (17, 32, 16), (33, 8, 3), (9, 8, 8)])
def test_windows_score_every_token_once_with_history(n, context, stride):
    scored = []
    for begin, end, first in windows(n, context, stride):
        assert end - begin <= context
        assert begin < first <= end  # each target has at least one token of history inside its window
        scored += list(range(first, end))
        # Past the first window, every scored token sees at least context - stride earlier tokens
        # (or all of them, when it is close to the start of the text).
        if begin > 0:
            assert first - begin >= min(context - stride, first)
    assert scored == list(range(1, n))


def test_windows_refuse_bad_arguments():
    with pytest.raises(TccError, match="at least 2 tokens"):
        list(windows(10, 1, 1))
    with pytest.raises(TccError, match="--stride must be between 1 and the window"):
        list(windows(10, 4, 5))
    with pytest.raises(TccError, match="--stride"):
        list(windows(10, 4, 0))


def test_window_nll_is_cross_entropy_in_float64():
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((7, 11)) * 30).astype(np.float32)  # large: needs the max shift
    targets = rng.integers(0, 11, 7)
    z = logits.astype(np.float64)
    want = sum(-(z[i, t] - z[i].max() - math.log(np.exp(z[i] - z[i].max()).sum())) for i, t in enumerate(targets))
    assert window_nll(logits, targets) == pytest.approx(want, rel=1e-12)


def test_uniform_logits_give_the_vocabulary_size_and_log2_bits_per_token():
    vocab, n = 50, 40
    ids = list(range(n))
    text = "ab" * n
    offsets = [2 * i for i in range(n)]
    p = score(lambda w: np.zeros((len(w), vocab), np.float32), ids, offsets, text, context=8, stride=3)
    assert p.tokens == n - 1
    assert p.ppl == pytest.approx(vocab, rel=1e-12)
    # 39 tokens x log2(50) bits over the 78 bytes after the first token.
    assert p.bytes == 2 * (n - 1)
    assert p.bits_per_byte == pytest.approx((n - 1) * math.log2(vocab) / (2 * (n - 1)), rel=1e-12)


def test_score_uses_the_logits_of_the_position_before_each_target():
    """A model that puts all mass on 'previous id + 1' is perfect on 0,1,2,...; any off-by-one between
    logits rows and targets would make it maximally wrong."""
    vocab, n = 64, 60

    def logits_fn(window):
        out = np.full((len(window), vocab), -1e4, np.float32)
        out[np.arange(len(window)), (np.asarray(window) + 1) % vocab] = 0.0
        return out

    p = score(logits_fn, list(range(n)), list(range(n)), "x" * n, context=16, stride=5)
    assert p.ppl == pytest.approx(1.0, abs=1e-9)


def test_history_changes_the_score_only_through_the_window():
    """Windows see at most `context` tokens: a model whose prediction needs the first token of the text
    can use it only in the first window."""
    vocab, n = 8, 30

    def logits_fn(window):
        out = np.zeros((len(window), vocab), np.float32)
        if window[0] == 0:  # this window starts at the text's start: "knows" the answer
            out[:, 3] = 50.0
        return out

    ids = [0] + [3] * (n - 1)
    p = score(logits_fn, ids, list(range(n)), "x" * n, context=10, stride=10)
    per = p.per_window
    assert per[0] < 1e-6 and all(w == pytest.approx(math.log(vocab)) for w in per[1:])


def test_too_short_text_is_refused():
    with pytest.raises(TccError, match="at least 2"):
        score(lambda w: np.zeros((len(w), 4)), [1], [0], "a", context=4, stride=2)


def test_perplexity_as_dict_round_trips_the_figures():
    p = Perplexity(tokens=10, nll=10 * math.log(5), bytes=40, context=8, stride=4, windows=2, seconds=2.0)
    d = p.as_dict()
    assert d["perplexity"] == pytest.approx(5.0)
    assert d["bits_per_byte"] == pytest.approx(10 * math.log2(5) / 40)
    assert d["tokens_per_second"] == pytest.approx(5.0)
