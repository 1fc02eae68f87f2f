"""Several sequences in one program (tcc_model_run_rows, continuous batching): every KV-cache row is a slot
with its own length; a run of [rows, seq] ids continues slot slots[r] with row r. Each row's logits equal the
same sequence run alone with the single-sequence API (tcc_model_run) up to fp32 summation order (the Linear
layers see M = rows instead of 1), whichever rows join or leave between runs and whatever another slot is
truncated to. Also: the ring cache of a sliding window per slot, and one-line errors for bad row maps."""
from __future__ import annotations

import numpy as np
import pytest

import tcc
from tcc.codegen.program import rows_supported
from tcc.driver import CompileOptions
from tcc.errors import TccError
from tcc.runtime.generate import Generator
from tests.serve.conftest import MODEL

SLOTS = 4
VOCAB = 384
# fp32 rounding of a different summation order (GEMM over the rows vs GEMV over one): relative to the logits'
# scale; measured 1.5e-6 absolute on logits of magnitude ~5
RTOL = 1e-5


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("rows") / "llama-b4")
    tcc.compile(MODEL, out, CompileOptions(max_context=128, max_dims={"batch": SLOTS}))
    return out


def _close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * float(np.abs(want).max()), err_msg=what)


def _alone(sess, prompt: list[int], steps: int) -> tuple[list[int], list[np.ndarray]]:
    """Greedy decode with the single-sequence API (tcc_model_run, row 0): tokens and the logits of each."""
    g = Generator(sess)
    g.reset()
    logits = [g.feed(prompt)[-1]]
    toks = []
    for _ in range(steps):
        toks.append(int(np.argmax(logits[-1])))
        logits.append(g.feed([toks[-1]])[-1])
    g.reset()
    return toks, logits


def _prompts(n: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[int(x) for x in rng.integers(3, VOCAB, k)] for k in (5, 9, 1, 14)[:n]]


def test_rows_joining_and_leaving_equal_running_alone(art):
    """Slots 0 and 2 start; 3 joins after 2 steps (its prefill alone), 0 leaves after 4, 1 joins late: at every
    step each row's logits equal its sequence's own run, and the slots' lengths are their own."""
    sess = tcc.load(art, threads=2)
    assert sess.kv_slots == SLOTS
    prompts = _prompts(4)
    steps = 8
    ref = [_alone(sess, p, steps) for p in prompts]
    schedule = {0: (0, 6), 2: (0, 8), 3: (2, 8), 1: (5, 8)}  # slot: (joins before step, leaves before step)
    pos = {}  # slot -> decode steps done
    for step in range(steps + 1):
        for slot, (start, end) in schedule.items():
            if step == start:  # prefill alone, rows = 1
                sess.kv_truncate(slot, 0)
                logits = sess.run_rows([prompts[slot]], [slot])
                _close(logits[0, -1], ref[slot][1][0], f"slot {slot} prefill")
                pos[slot] = 0
        active = [s for s, (start, end) in schedule.items() if start <= step < end and pos.get(s, -1) < steps]
        if not active:
            continue
        ids = [[ref[s][0][pos[s]]] for s in active]
        logits = sess.run_rows(ids, active)
        assert logits.shape == (len(active), 1, VOCAB)
        for r, s in enumerate(active):
            pos[s] += 1
            _close(logits[r, -1], ref[s][1][pos[s]], f"slot {s} decode step {pos[s]} (rows {active})")
            assert sess.kv_length(s) == len(prompts[s]) + pos[s]


def test_truncating_one_slot_leaves_the_others(art):
    """Slot 1 rewinds 3 tokens and takes them again (prompt cache): its logits are its run's, and slots 0 and 2,
    decoding in the same runs, are untouched."""
    sess = tcc.load(art, threads=1)
    prompts = _prompts(3, seed=5)
    ref = [_alone(sess, p, 6) for p in prompts]
    for s, p in enumerate(prompts):
        sess.kv_truncate(s, 0)
        sess.run_rows([p], [s])
    for t in range(3):
        sess.run_rows([[ref[s][0][t]] for s in range(3)], [0, 1, 2])
    lens = [sess.kv_length(s) for s in range(3)]
    sess.kv_truncate(1, lens[1] - 3)
    assert [sess.kv_length(s) for s in range(3)] == [lens[0], lens[1] - 3, lens[2]]
    sess.run_rows([[ref[1][0][0], ref[1][0][1]]], [1])  # two of the three forgotten tokens again, seq 2
    logits = sess.run_rows([[ref[0][0][3]], [ref[1][0][2]], [ref[2][0][3]]], [0, 1, 2])
    for r, fed in enumerate((4, 3, 4)):  # slot 1 has taken 3 of its tokens, the others 4
        _close(logits[r, -1], ref[r][1][fed], f"slot {r} after slot 1 was truncated")
    # several tokens per row in one run (a mixed step): every position's logits
    logits = sess.run_rows([[ref[0][0][4], ref[0][0][5]], [ref[2][0][4], ref[2][0][5]]], [0, 2], logits_rows=0)
    assert logits.shape == (2, 2, VOCAB)
    for r, s in enumerate((0, 2)):
        _close(logits[r], np.stack(ref[s][1][5:7]), f"slot {s} two tokens in one run")


def test_single_sequence_api_is_slot_zero_and_truncate_cuts_all(art):
    """tcc_model_run keeps working: it continues row 0 (kv_length is slot 0's), and kv_truncate(n) cuts every
    slot to at most n."""
    sess = tcc.load(art, threads=1)
    g = Generator(sess)
    g.reset()
    sess.run_rows([[5, 6, 7, 8, 9, 10]], [3])
    g.feed([5, 6, 7])
    assert sess.kv_length(0) == 3 and sess.kv_length(3) == 6
    g._truncate(2)
    assert sess.kv_length(0) == 2 and sess.kv_length(3) == 2
    g.reset()
    assert [sess.kv_length(s) for s in range(SLOTS)] == [0] * SLOTS


@pytest.mark.parametrize("ids, slots, match", [
    ([[5], [6]], [1, 1], "rows 0 and 1 both use KV cache slot 1"),
    ([[5]], [4], "row 0: KV cache slot 4 does not exist"),
    ([[5]], [-1], "row 0: KV cache slot -1 does not exist"),
    ([[5]] * 5, [0, 1, 2, 3, 0], "5 rows: the program holds 1..4 sequences"),
    ([[5]], [0, 1], "slots must be 1 integers"),
    ([[5, 6], [7]], [0, 1], "ids is not an array"),
    ([[5.0]], [0], "ids must be integers"),
    ([[5]], ["0"], "slots must be integers"),
    ([5], [0], "ids must be a non-empty 2-D integer array"),
    ([[VOCAB]], [0], f"token id {VOCAB} is out of range"),
    ([[5] * 129], [0], "context overflow in slot 0: 0 cached \\+ 129 new tokens"),
])
def test_bad_row_maps_are_one_line_errors(art, ids, slots, match):
    sess = tcc.load(art, threads=1)
    sess.kv_truncate(0, 0)
    with pytest.raises(TccError, match=match) as e:
        sess.run_rows(ids, slots)
    assert "\n" not in str(e.value)
    assert [sess.kv_length(s) for s in range(SLOTS)] == [0] * SLOTS  # nothing ran


def test_slot_calls_check_their_arguments(art):
    sess = tcc.load(art, threads=1)
    sess.run_rows([[5, 6]], [2])
    with pytest.raises(TccError, match="cannot truncate KV cache slot 2 to 3 tokens: it holds 2"):
        sess.kv_truncate(2, 3)
    with pytest.raises(TccError, match="KV cache slot 7 does not exist"):
        sess.kv_truncate(7, 0)
    with pytest.raises(TccError, match="KV cache slot 9 does not exist"):
        sess.kv_length(9)
    with pytest.raises(TccError, match="slot must be an integer, got '1'"):
        sess.kv_length("1")
    with pytest.raises(TccError, match="n must be an integer, got True"):
        sess.kv_truncate(0, True)


def test_ring_cache_rows_wrap_per_slot(tmp_path):
    """A sliding window of 20 over ring caches (83 rows, capacity 128): two slots at different lengths decode
    past the ring's wrap in the same runs; each row's ring index and positions are its own, so every row's
    logits equal its sequence run alone."""
    from tests.passes.test_kv_cache import _sliding_window_model

    out = str(tmp_path / "ring")
    m = tcc.compile(_sliding_window_model(tmp_path, 20), out, CompileOptions(max_dims={"batch": 2},
                                                                              require_kv_cache=True))
    assert m["llm"]["window"] == 20 and m["llm"]["max_batch"] == 2
    sess = tcc.load(out, threads=2)
    prompts = _prompts(2, seed=3)
    steps = 95  # slot 1 (9 prompt tokens) reaches 104 positions: its ring of 83 rows wraps
    ref = [_alone(sess, p, steps) for p in prompts]
    for s, p in enumerate(prompts):
        sess.kv_truncate(s, 0)
        sess.run_rows([p], [s])
    for t in range(steps):
        logits = sess.run_rows([[ref[0][0][t]], [ref[1][0][t]]], [0, 1])
        for s in range(2):
            _close(logits[s, -1], ref[s][1][t + 1], f"slot {s} step {t + 1}")
    assert sess.kv_length(1) == len(prompts[1]) + steps


def test_rows_need_positions_only_in_attention():
    """A program whose graph computes anything else from the cache length cannot give rows their own."""
    lines = ["  tcc_kvattention_f32(q, k, v, kc, vc, o, (s_batch), 4, 2, (s_seq), (s_past), 128);",
             "  const int64_t qs0[] = {(s_seq) * 16, 16, 1};"]
    assert rows_supported(lines, "s_past")
    assert not rows_supported([*lines, "  tcc_range_i64(out, (s_past), 1, (s_seq));"], "s_past")
