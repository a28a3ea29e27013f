"""torch.compile that sticks: three phases compile, nothing after, no graph breaks, same results as eager.

The stream has audio CFG (null-audio passes on steps 1 and 2, no audio on step 0) and edit prompts
that switch the text context back and forth, i.e. everything that varies between model calls.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
import torch._dynamo
from tiny_models import tiny_model
from torch._dynamo.utils import counters

from liveact.bench.shared import synthetic_conditions
from liveact.memory import FIRST_BLOCK, SECOND_BLOCK, STEADY, block_phase
from liveact.model import LiveActTransformer
from liveact.sampler import Conditions, NeighborForcingSampler

BLOCKS = 12
WARMUP = 3  # blocks 0, 1, 2: one per phase


def _cond(model: LiveActTransformer) -> Conditions:
    cond = synthetic_conditions(model, 32, 32, audio_frames=32 * BLOCKS + 64, device="cpu")
    g = torch.Generator().manual_seed(7)
    first, second = (torch.randn(n, model.config.text_dim, generator=g) for n in (7, 11))
    cond.edits = [((2, 4), first), ((6, 6), second), ((8, 10), first)]
    return cond


def _stream_with_recompile_check(
    model: LiveActTransformer, cond: Conditions
) -> tuple[list[torch.Tensor], int]:
    """Stream ``BLOCKS`` blocks; after ``WARMUP`` blocks any recompilation raises."""
    stream = NeighborForcingSampler(model, audio_cfg=2.0).stream(
        cond, BLOCKS, torch.Generator().manual_seed(0)
    )
    out = [next(stream) for _ in range(WARMUP)]
    graphs = counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(error_on_recompile=True):
        out += list(stream)
    assert counters["stats"]["unique_graphs"] == graphs
    return out, graphs


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _assert_same(compiled: list[torch.Tensor], eager: list[torch.Tensor]) -> None:
    assert len(compiled) == len(eager) == BLOCKS
    for k, (a, b) in enumerate(zip(compiled, eager)):
        # aot_eager runs the same aten ops; only fusion-free reordering could differ, so fp32 rounding.
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=f"block {k}")


def test_block_phase() -> None:
    assert [block_phase(k) for k in range(5)] == [FIRST_BLOCK, SECOND_BLOCK, STEADY, STEADY, STEADY]
    with pytest.raises(ValueError):
        block_phase(-1)


def test_whole_model_compile_sticks_and_equals_eager() -> None:
    model = tiny_model(num_layers=2)
    cond = _cond(model)
    eager = list(
        NeighborForcingSampler(model, audio_cfg=2.0).stream(cond, BLOCKS, torch.Generator().manual_seed(0))
    )
    compiled_model = copy.deepcopy(model)
    compiled_model.compile(backend="aot_eager")  # PyTorch's in-place nn.Module.compile
    out, graphs = _stream_with_recompile_check(compiled_model, cond)
    # phases x (audio / no audio): at least one graph, at most six, all before block 3.
    assert 1 <= graphs <= 6
    assert not counters["graph_break"], dict(counters["graph_break"])
    _assert_same(out, eager)


def test_regional_compile_shares_graphs_across_layers() -> None:
    """Each block compiled on its own: layers share graphs (no per-layer int to specialise on)."""
    model = tiny_model(num_layers=4)
    cond = _cond(model)
    eager = list(
        NeighborForcingSampler(model, audio_cfg=2.0).stream(cond, BLOCKS, torch.Generator().manual_seed(0))
    )
    for block in model.blocks:
        block.compile(backend="aot_eager", dynamic=False)
    out, graphs = _stream_with_recompile_check(model, cond)
    # The same six (phase, audio) variants as the whole model, not six per layer.
    assert 1 <= graphs <= 6
    assert not counters["graph_break"], dict(counters["graph_break"])
    _assert_same(out, eager)


def test_memory_flags_are_decided_on_the_host() -> None:
    model = tiny_model(num_layers=1)
    memory = model.new_memory(NeighborForcingSampler(model).memory_config, frame_len=4)
    seen = []
    for k in range(5):
        memory.begin_block(k)
        seen.append((memory.phase, memory.compress_due))
    assert seen == [(0, False), (1, False), (2, True), (2, True), (2, True)]
    memory.begin_block(4)  # re-running a block does not compress twice
    assert (memory.phase, memory.compress_due) == (STEADY, False)
    memory.begin_block(0)
    assert (memory.phase, memory.compress_due) == (FIRST_BLOCK, False)
