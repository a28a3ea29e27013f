"""fp32 islands: compiled alone they equal the eager expressions; a KV memory offloaded to the host
prefetches the next layer and matches the plain memory."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
import torch

from liveact import islands
from liveact.bench.shared import synthetic_conditions
from liveact.config import PRESETS, MemoryConfig
from liveact.model import LiveActTransformer
from liveact.rope import apply_rope
from liveact.sampler import NeighborForcingSampler
from liveact.speed.quant import quantize_per_token


@pytest.fixture()
def compiled_islands() -> Iterator[None]:
    # aot_eager traces and functionalises like Inductor does, without minutes of C++ compilation.
    islands.enable_compiled_islands(backend="aot_eager")
    yield
    islands.disable_compiled_islands()


def test_compiled_islands_equal_eager(compiled_islands: None) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 24, 64, generator=g).to(torch.bfloat16)
    shift, scale, gate = (torch.randn(2, 1, 64, generator=g).to(torch.bfloat16) for _ in range(3))
    w = torch.randn(64, generator=g).to(torch.bfloat16)
    cos, sin = torch.randn(24, 8, generator=g), torch.randn(24, 8, generator=g)
    cases = [
        (islands.rms_norm, (x, w, 1e-6)),
        (islands.layer_norm, (x, w, None, 1e-6)),
        (islands.modulate, (x, shift, scale)),
        (islands.norm_modulate, (x, shift, scale, 1e-6)),
        (islands.gated_residual, (x, x, gate)),
        (apply_rope, (x.view(2, 24, 4, 16), cos, sin)),
        (quantize_per_token, (x.view(48, 64),)),
    ]
    for fn, args in cases:
        islands.disable_compiled_islands()
        eager = fn(*args)
        islands.enable_compiled_islands(backend="aot_eager")
        compiled = fn(*args)
        assert fn.__wrapped__ in islands._IslandState.compiled, "ran the compiled function"
        for a, b in zip(
            eager if isinstance(eager, tuple) else (eager,),
            compiled if isinstance(compiled, tuple) else (compiled,),
        ):
            torch.testing.assert_close(a.float(), b.float(), rtol=0, atol=0, msg=fn.__name__)


def test_a_model_with_compiled_islands_streams_the_same(compiled_islands: None) -> None:
    torch.manual_seed(0)
    model = LiveActTransformer(PRESETS["tiny"]).eval()
    cond = synthetic_conditions(model, 32, 32, audio_frames=300, device="cpu")
    compiled = list(NeighborForcingSampler(model).stream(cond, 3, torch.Generator().manual_seed(0)))
    islands.disable_compiled_islands()
    eager = list(NeighborForcingSampler(model).stream(cond, 3, torch.Generator().manual_seed(0)))
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fp8", [False, True])
def test_offloaded_memory_prefetches_the_next_layer(fp8: bool) -> None:
    torch.manual_seed(0)
    model = LiveActTransformer(replace(PRESETS["tiny"], num_layers=3)).eval()
    cond = synthetic_conditions(model, 32, 32, audio_frames=300, device="cpu")

    def run(memory: MemoryConfig) -> tuple[torch.Tensor, NeighborForcingSampler]:
        sampler = NeighborForcingSampler(model, memory=memory, audio_cfg=2.0)
        return torch.cat(list(sampler.stream(cond, 4, torch.Generator().manual_seed(0))), dim=1), sampler

    plain, _ = run(MemoryConfig(fp8=fp8))
    offloaded, sampler = run(MemoryConfig(fp8=fp8, offload=True))
    torch.testing.assert_close(offloaded, plain, rtol=0, atol=0)
    workspace = sampler._memories[0].workspace
    assert all(m.workspace is workspace for m in [*sampler._memories, *sampler._null_memories.values()])
    # Block 0 loads nothing; later blocks load layer 0 synchronously and prefetch layers 1 and 2.
    forwards = 3 * 3 + 3 * 2  # blocks 1-3: three steps + two null-audio passes each
    assert workspace.sync_loads == forwards and workspace.prefetched_loads == 2 * forwards
    assert all(t.device.type == "cpu" for t in sampler._memories[0].buffers())
