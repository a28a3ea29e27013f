"""ConvKV memory: slot timeline, compression variants, FP8/offload storage, constant size over long runs."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from tiny_models import small_model

from liveact.config import MemoryConfig
from liveact.memory import KVMemory, MemoryLayout, compress, quantize_fp8
from liveact.sampler import Conditions, NeighborForcingSampler

FL, H, D = 4, 2, 3


def _frames(values: list[float]) -> torch.Tensor:
    """``[1, len(values) * FL, H, D]`` where every token of frame i holds values[i]."""
    return torch.tensor(values).repeat_interleave(FL)[None, :, None, None].expand(1, -1, H, D).clone()


def _frame_values(x: torch.Tensor) -> list[float]:
    return x[0, ::FL, 0, 0].tolist()


def test_slot_timeline_follows_the_reference() -> None:
    # Per-location means keep every token of a slot equal, so slots read as single numbers.
    cfg = replace(MemoryConfig(), compression="mean", grouping="per_location")
    mem = KVMemory(
        cfg, num_layers=1, num_heads=H, head_dim=D, frame_len=FL, device="cpu", dtype=torch.float32
    )
    mem.begin_block(0)
    k, _ = mem.update(0, _frames([0, 1, 2, 3, 4, 5]), _frames([0, 1, 2, 3, 4, 5]), None, None)
    assert _frame_values(k) == [0, 1, 2, 3, 4, 5] and mem.query_start_frame == 0
    mem.begin_block(1)
    k, _ = mem.update(0, _frames(list(range(6, 14))), _frames(list(range(6, 14))), None, None)
    assert _frame_values(k) == list(range(14)) and mem.query_start_frame == 6
    mem.begin_block(2)
    k, v = mem.update(0, _frames(list(range(14, 22))), _frames(list(range(14, 22))), None, None)
    # slot2 = mean(slots 2..6), slot3 = mean(slots 7..11), slots 4-5 = old 12-13, then the new block.
    assert _frame_values(k) == [0, 1, 4, 9, 12, 13, *range(14, 22)]
    assert _frame_values(v) == _frame_values(k)
    mem.begin_block(3)
    k, _ = mem.update(0, _frames(list(range(22, 30))), _frames(list(range(22, 30))), None, None)
    assert _frame_values(k) == pytest.approx([0, 1, (4 + 9 + 12 + 13 + 14) / 5, 17, 20, 21, *range(22, 30)])


def test_raster_conv_matches_mean_and_per_location_differs() -> None:
    cfg = MemoryConfig()
    x = torch.randn(1, 10 * FL, H, D)
    taps = torch.full((H * D, 1, cfg.ratio), 1 / cfg.ratio)
    mean = compress(x, None, replace(cfg, compression="mean"), FL)
    torch.testing.assert_close(compress(x, taps, cfg, FL), mean)
    # Raster grouping pools 5 consecutive tokens; per-location pools one token over 5 frames.
    torch.testing.assert_close(mean[0, 0], x[0, :5].mean(0))
    per_loc = compress(x, taps, replace(cfg, grouping="per_location"), FL)
    torch.testing.assert_close(per_loc[0, 1], x[0, 1 : 5 * FL : FL].mean(0))
    torch.testing.assert_close(
        per_loc, compress(x, None, replace(cfg, compression="mean", grouping="per_location"), FL)
    )


def test_value_conv_selects_the_taps() -> None:
    x = torch.randn(1, 14 * FL, H, D)
    k_taps, v_taps = torch.randn(H * D, 1, 5), torch.randn(H * D, 1, 5)
    results = {}
    for which in ("k", "v"):
        mem = KVMemory(replace(MemoryConfig(), value_conv=which), 1, H, D, FL, "cpu", torch.float32)
        for block in range(3):
            mem.begin_block(block)
            n = 6 if block == 0 else 8
            _, v = mem.update(0, x[:, : n * FL], x[:, : n * FL], k_taps, v_taps)
        results[which] = v
    layout = MemoryLayout(MemoryConfig(), FL)
    assert not torch.equal(results["k"][:, layout.long_term], results["v"][:, layout.long_term])
    torch.testing.assert_close(results["k"][:, layout.sink], results["v"][:, layout.sink])


def test_fp8_quantisation_error_and_idempotence() -> None:
    x = torch.randn(2, 7, 4, 64) * 3
    q, s = quantize_fp8(x)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (2, 7, 4, 1)
    deq = q.float() * s
    assert ((deq - x).abs() / x.abs().amax(-1, keepdim=True)).max() < 2**-4
    q2, _ = quantize_fp8(deq)
    assert torch.equal(q2.float(), q.float()), "re-quantising dequantised values is a no-op"


def _tiny_cond(cfg, lh: int = 4, lw: int = 4, seconds_frames: int = 200) -> Conditions:
    g = torch.Generator().manual_seed(1)
    y = torch.randn(1, cfg.cond_dim, 14, lh, lw, generator=g)
    return Conditions(
        text=torch.randn(5, cfg.text_dim, generator=g),
        clip=torch.randn(1, 257, cfg.clip_dim, generator=g),
        y=y,
        audio=torch.randn(seconds_frames, cfg.audio_layers, cfg.audio_channels, generator=g),
    )


@pytest.mark.parametrize("options", [{}, {"fp8_kv_cache": True, "audio_cfg": 2.0}, {"offload_cache": True}])
def test_memory_is_constant_over_60_blocks(options: dict) -> None:
    model = small_model()
    sampler = NeighborForcingSampler(model, **options)
    cond = _tiny_cond(model.config)
    sizes, pointers = [], []
    for k, x0 in enumerate(sampler.stream(cond, num_blocks=60, generator=torch.Generator().manual_seed(0))):
        assert torch.isfinite(x0).all()
        mems = [*sampler._memories, *sampler._null_memories.values()]
        sizes.append(sum(m.nbytes() for m in mems))
        pointers.append(tuple(b.data_ptr() for m in mems for b in m.buffers()))
        assert x0.shape[1] == (6 if k == 0 else 8)
    assert len(set(sizes[2:])) == 1 and sizes[0] == sizes[-1], "memory size changed"
    assert len(set(pointers)) == 1, "memory buffers were reallocated"
    if options.get("fp8_kv_cache"):
        assert sampler._memories[0].k.dtype == torch.float8_e4m3fn and len(sampler._null_memories) == 2


def test_fp8_and_offload_track_the_plain_memory() -> None:
    model = small_model()
    cond = _tiny_cond(model.config)
    runs = {}
    for name, options in {
        "plain": {},
        "fp8": {"fp8_kv_cache": True},
        "offload": {"offload_cache": True},
    }.items():
        sampler = NeighborForcingSampler(model, **options)
        runs[name] = torch.cat(list(sampler.stream(cond, 5, torch.Generator().manual_seed(3))), dim=1)
    torch.testing.assert_close(runs["offload"], runs["plain"], rtol=0, atol=0)
    rel = (runs["fp8"] - runs["plain"]).norm() / runs["plain"].norm()
    assert 0 < rel < 2e-2


def test_a_new_stream_resets_the_memory() -> None:
    model = small_model()
    cond = _tiny_cond(model.config)
    sampler = NeighborForcingSampler(model)
    first = list(sampler.stream(cond, 4, torch.Generator().manual_seed(5)))
    again = list(sampler.stream(cond, 4, torch.Generator().manual_seed(5)))
    for a, b in zip(first, again):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
