"""The Neighbor Forcing sampler's own rules: block geometry, the audio rows and window of a block, which
prompt a block uses, the KV-memory flag rule, and what one stream yields."""

from __future__ import annotations

import pytest
import torch
from tiny_models import small_model

from liveact.config import MemoryConfig
from liveact.sampler import Conditions, NeighborForcingSampler, audio_rows, audio_window, block_span

STRIDE = 4  # video frames per latent frame after the first


@pytest.mark.parametrize("memory", [MemoryConfig(), MemoryConfig(1, 1, 1, 3, 4, 5)])
def test_blocks_tile_the_video_without_gaps(memory: MemoryConfig) -> None:
    spans = [block_span(k, memory, STRIDE) for k in range(6)]
    assert spans[0].frames == memory.first_block_frames and spans[0].first_video_frame == 0
    assert all(s.frames == memory.block_frames for s in spans[1:])
    for before, after in zip(spans, spans[1:]):
        assert after.first_latent == before.first_latent + before.frames
        assert after.first_video_frame == before.first_video_frame + before.video_frames(STRIDE)
    # Latent 0 decodes to one frame: 21 + 32 per later block with the default layout.
    if memory == MemoryConfig():
        assert [s.video_frames(STRIDE) for s in spans[:2]] == [21, 32]


def test_audio_rows_are_the_window_around_each_latents_frames() -> None:
    memory = MemoryConfig()
    first, later = audio_rows(block_span(0, memory, STRIDE), 200, window=5, temporal_stride=STRIDE)
    assert first.tolist() == [0, 0, 0, 1, 2]  # frame 0 with -2..+2, clamped at the start
    assert later.shape == (memory.first_block_frames - 1, 5 + STRIDE - 1)
    assert later[0].tolist() == [0, 0, 1, 2, 3, 4, 5, 6]  # latent 1: frames 1..4 with -2..+2, clamped
    span = block_span(1, memory, STRIDE)
    _, rows = audio_rows(span, 10_000, window=5, temporal_stride=STRIDE)
    assert rows[0, 2].item() == span.first_video_frame  # the latent's first frame, two rows in
    assert (rows[:, 1:] - rows[:, :-1] == 1).all(), "consecutive rows"
    _, clamped = audio_rows(span, 30, window=5, temporal_stride=STRIDE)
    assert clamped.max().item() == 29, "rows past the end of the audio repeat the last one"


def test_the_first_two_blocks_share_one_audio_window() -> None:
    memory = MemoryConfig()
    windows = [audio_window(block_span(k, memory, STRIDE), memory, STRIDE) for k in range(4)]
    assert windows[0] == windows[1] == (0, 53)
    assert all(end - start == 53 for start, end in windows)
    assert windows[2][1] == block_span(2, memory, STRIDE).first_video_frame + 32


def test_edits_pick_their_blocks_first_match_wins() -> None:
    text, a, b = torch.zeros(2, 4), torch.ones(2, 4), torch.full((2, 4), 2.0)
    cond = Conditions(text, text, text, text, edits=[((1, 2), a), ((2, 3), b)])
    assert [cond.prompt_for(k) for k in range(5)] == [0, 1, 1, 2, 0]
    assert cond.text_of(2) is b and cond.text_of(0) is text


def test_memory_flags_turn_settings_on_and_never_off() -> None:
    model = small_model()
    preset = MemoryConfig(fp8=True)
    assert NeighborForcingSampler(model, memory=preset).memory_config.fp8, "a preset's FP8 stays"
    flagged = NeighborForcingSampler(model, fp8_kv_cache=True, offload_cache=True, mean_memory=True)
    config = flagged.memory_config
    assert config.fp8 and config.offload and config.compression == "mean"
    assert preset.with_flags() == preset


def test_a_stream_yields_one_latent_per_block_of_the_block_shape() -> None:
    model = small_model()
    cfg = model.config
    g = torch.Generator().manual_seed(1)
    cond = Conditions(
        text=torch.randn(5, cfg.text_dim, generator=g),
        clip=torch.randn(1, 257, cfg.clip_dim, generator=g),
        y=torch.randn(1, cfg.cond_dim, 14, 4, 4, generator=g),
        audio=torch.randn(200, cfg.audio_layers, cfg.audio_channels, generator=g),
    )
    sampler = NeighborForcingSampler(model)
    blocks = list(sampler.stream(cond, num_blocks=3, generator=torch.Generator().manual_seed(0)))
    memory = sampler.memory_config
    frames = [memory.first_block_frames, memory.block_frames, memory.block_frames]
    assert [tuple(b.shape) for b in blocks] == [(cfg.out_dim, t, 4, 4) for t in frames]
    again = list(sampler.stream(cond, num_blocks=3, generator=torch.Generator().manual_seed(0)))
    assert all(torch.equal(x, y) for x, y in zip(blocks, again)), "the same seed, the same stream"
