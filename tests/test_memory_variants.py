"""The long-run memory ablations: no long-term memory (``none``) and an ever-growing cache (``grow``)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import small_model

from liveact.config import MemoryConfig
from liveact.memory import GrowingKVMemory
from liveact.model import LiveActTransformer
from liveact.sampler import Conditions, NeighborForcingSampler


def _cond(cfg) -> Conditions:
    g = torch.Generator().manual_seed(1)
    return Conditions(
        text=torch.randn(5, cfg.text_dim, generator=g),
        clip=torch.randn(1, 257, cfg.clip_dim, generator=g),
        y=torch.randn(1, cfg.cond_dim, 14, 4, 4, generator=g),
        audio=torch.randn(200, cfg.audio_layers, cfg.audio_channels, generator=g),
    )


def _stream(model: LiveActTransformer, compression: str, blocks: int) -> list[torch.Tensor]:
    sampler = NeighborForcingSampler(model, memory=MemoryConfig(compression=compression))
    return list(sampler.stream(_cond(model.config), blocks, torch.Generator().manual_seed(3)))


def test_growing_memory_equals_convkv_until_the_first_compression() -> None:
    """Blocks 0 and 1 see the same keys at the same positions in both layouts; block 2 is where they part."""
    model = small_model()
    conv, grow = _stream(model, "conv", 4), _stream(model, "grow", 4)
    for k in (0, 1):
        torch.testing.assert_close(grow[k], conv[k], rtol=1e-5, atol=1e-5)
    assert (grow[3] - conv[3]).abs().max() > 1e-3


def test_growing_memory_keeps_every_block() -> None:
    model = small_model()
    sampler = NeighborForcingSampler(model, memory=MemoryConfig(compression="grow"))
    sizes, starts = [], []
    for _ in sampler.stream(_cond(model.config), 5, torch.Generator().manual_seed(0)):
        mem = sampler._memories[0]
        assert isinstance(mem, GrowingKVMemory)
        sizes.append(mem.nbytes())
        starts.append(mem.query_start_frame)
    assert starts == [0, 6, 14, 22, 30]
    per_frame = sizes[0] / 6
    assert sizes == [per_frame * f for f in (6, 14, 22, 30, 38)]


def test_no_long_term_memory_ignores_the_long_term_slots() -> None:
    """With ``none`` the long-term slots never reach attention: blocks 0 and 1 still match ConvKV (block 1
    would see raw frames there), and later blocks differ from it."""
    model = small_model()
    conv, none = _stream(model, "conv", 4), _stream(model, "none", 4)
    torch.testing.assert_close(none[0], conv[0], rtol=1e-6, atol=1e-6)
    assert (none[1] - conv[1]).abs().max() > 1e-4  # the long-term slots hold first-block frames there
    sampler = NeighborForcingSampler(model, memory=MemoryConfig(compression="none"))
    cond = _cond(model.config)
    gen = sampler.stream(cond, 4, torch.Generator().manual_seed(3))
    out = [next(gen) for _ in range(3)]
    for mem in sampler._memories:  # scribble over the long-term slots: block 3 must not notice
        mem.k[:, :, mem.layout.long_term] = 1e3
        mem.v[:, :, mem.layout.long_term] = -1e3
    out.append(next(gen))
    torch.testing.assert_close(out[3], none[3], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", ["fp8", "offload"])
def test_growing_memory_refuses_storage_options(bad: str) -> None:
    with pytest.raises(ValueError, match="inference ablation"):
        small_model().new_memory(MemoryConfig(compression="grow", **{bad: True}), 16)
