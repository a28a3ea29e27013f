"""CUDA-graph replay of steady-state steps: the bookkeeping, on a CPU with a stand-in capture.

The stand-in "captures" by keeping the closure over the static buffers, so a replay computes from
exactly what a CUDA graph would read: a stale static input (say, the old prompt after an edit) would
change the result.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import tiny_model

from liveact.bench.shared import synthetic_conditions
from liveact.config import MemoryConfig
from liveact.sampler import NeighborForcingSampler
from liveact.speed.cudagraphs import GraphedSteadySteps
from liveact.speed.offload import enable_block_offload


@pytest.mark.parametrize("fp8_kv_cache", [False, True])
def test_replays_equal_eager_through_edits_and_cfg(fp8_kv_cache: bool) -> None:
    model = tiny_model()
    cond = synthetic_conditions(model, 32, 32, audio_frames=600, device="cpu")
    g = torch.Generator().manual_seed(3)
    cond.edits = [
        ((3, 4), torch.randn(6, model.config.text_dim, generator=g)),
        ((7, 7), torch.randn(9, model.config.text_dim, generator=g)),
    ]

    def run(m: object) -> list[torch.Tensor]:
        sampler = NeighborForcingSampler(m, audio_cfg=2.0, fp8_kv_cache=fp8_kv_cache)
        return list(sampler.stream(cond, 10, torch.Generator().manual_seed(0)))

    eager = run(model)
    captured = []

    def capture(fn):
        captured.append(fn)
        return fn

    graphed = GraphedSteadySteps(model, capture=capture)
    out = run(graphed)
    for k, (a, b) in enumerate(zip(out, eager, strict=True)):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"block {k}")
    # Five (memory, audio) keys: three steps, two null-audio passes; each captured once at block 3.
    assert len(captured) == 5
    calls = 10 * 5
    eager_calls = 2 * 5 + 5  # blocks 0 and 1, and block 2 as the warm-up of each key
    assert graphed.eager_calls == eager_calls and graphed.replays == calls - eager_calls


def test_refuses_what_cannot_be_captured() -> None:
    model = tiny_model()
    offloaded = copy.deepcopy(model)
    enable_block_offload(offloaded, "cpu")
    with pytest.raises(ValueError, match="block offload"):
        GraphedSteadySteps(offloaded)
    graphed = GraphedSteadySteps(model, capture=lambda fn: fn)
    memory = model.new_memory(MemoryConfig(offload=True), 4)
    memory.begin_block(0)
    with pytest.raises(ValueError, match="offloaded KV memory"):
        graphed(torch.zeros(16, 6, 4, 4), torch.zeros(20, 6, 4, 4), torch.zeros(1), None, memory)
