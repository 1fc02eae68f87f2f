"""The launch list (codegen/launch.py): lowering produces target-neutral steps (kernel specs, buffers by memory
space, scalars and shape arrays by value, no C text), the CPU renderer turns them into the program, and the
program's profile entries are the list's steps that launch kernels. Nothing is compiled here."""
from __future__ import annotations

import os
import re

import pytest

from tcc.codegen.launch import BUF_SPACES, Buf, Elem, HostArray, Launch, Scalar, SliceGuard, SlotLength, profiled
from tcc.codegen.program import generate
from tcc.driver import CompileOptions, optimize
from tests.conftest import MODELS_DIR

MLP = os.path.join(MODELS_DIR, "mlp.onnx")
LLM = os.path.join(MODELS_DIR, "llm", "gpt2_past_torchscript", "model.onnx")


def _program(model: str, **opts):
    graph, ctx, backend = optimize(model, CompileOptions(**opts))
    plan = ctx.stats["plan-memory"]
    return generate(graph, plan, backend, ctx.symbol_bounds), plan


def _bufs(args):
    for a in args:
        if isinstance(a, Buf):
            yield a
        elif isinstance(a, Elem):
            yield a.buf


@pytest.mark.parametrize("model", [MLP, LLM], ids=["mlp", "gpt2-kv"])
def test_launches_are_target_neutral(model):
    program, plan = _program(model)
    launches = [ln for s in program.steps for ln in s.launches]
    assert launches and {ln.kernel for ln in launches} == set(program.kernels)
    for ln in launches:
        hash(ln)  # frozen all the way down
        for a in ln.args:
            assert a is None or isinstance(a, (Buf, HostArray, Scalar, Elem, SlotLength)), a
        for b in _bufs(ln.args):
            assert b.space in BUF_SPACES
            if b.space == "device_arena":
                assert 0 <= b.slot < plan.arena_bytes and b.slot % plan.alignment == 0
            if b.space == "weights":
                assert 0 <= b.slot < len(program.weights)


@pytest.mark.parametrize("model", [MLP, LLM], ids=["mlp", "gpt2-kv"])
def test_profile_names_the_steps_that_launch_kernels(model):
    program, _ = _program(model)
    names = re.search(r"kProfNames\[\] = \{ (.*)nullptr \};", program.source).group(1)
    timed = profiled(program.steps)
    assert names == "".join(f'"{s.node}", ' for s in timed)
    assert all(s.launches or any(isinstance(x, SliceGuard) for x in s.body) for s in timed)
    # every launch of the list is one kernel call in the program, and nothing else calls a kernel
    calls = sum(program.source.count(f"{k.name}(") for k in program.kernels)
    assert calls == sum(len(s.launches) for s in program.steps)


def test_kv_attention_launches_per_row_and_per_batch():
    program, _ = _program(LLM)
    steps = [s for s in program.steps if s.op == "KVAttention"]
    assert len(steps) == 2  # two layers
    for s in steps:
        rows, batch = s.launches
        assert (rows.mode, batch.mode) == ("rows", "batch")
        assert any(isinstance(a, SlotLength) for a in rows.args)
        assert not any(isinstance(a, SlotLength) for a in batch.args)
        per_slot = [b for b in _bufs(rows.args) if b.per_slot is not None]
        assert {b.space for b in per_slot} == {"kv_state"} and len(per_slot) == 2
        assert all(b.per_row is None and b.per_slot is None for b in _bufs(batch.args))
    assert "m->kv_lens[tcc_sl]" in program.source and "for (int64_t tcc_r = 0;" in program.source


def test_launch_is_a_value():
    a = Launch("k", (Scalar(1), Buf("weights", 0, "float")))
    assert a == Launch("k", (Scalar(1), Buf("weights", 0, "float"))) and len({a, a}) == 1
    assert Buf("device_arena", 64, "char").at(8).offset == 8
