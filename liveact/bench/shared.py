"""What the CPU and GPU benchmarks share: random conditioning of the right shapes and FLOP counts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from liveact.config import MemoryConfig, SamplerConfig, load_preset
from liveact.model import LiveActTransformer
from liveact.sampler import BlockSpan, Conditions, NeighborForcingSampler, audio_rows, block_span
from liveact.userinput import parse_size

PAPER_TFLOPS_PER_FRAME = 27.2


def synthetic_conditions(
    model: LiveActTransformer,
    width: int,
    height: int,
    audio_frames: int,
    device: torch.device | str,
    seed: int = 0,
) -> Conditions:
    """Random conditioning with the right shapes (for benchmarks and smoke tests)."""
    cfg, mem = model.config, MemoryConfig()
    stride = SamplerConfig().vae_stride
    g = torch.Generator().manual_seed(seed)
    frames = mem.first_block_frames + mem.block_frames
    y = torch.randn(1, cfg.cond_dim, frames, height // stride[1], width // stride[2], generator=g)
    return Conditions(
        text=torch.randn(24, cfg.text_dim, generator=g).to(device),
        clip=torch.randn(1, 257, cfg.clip_dim, generator=g).to(device),
        y=y.to(device),
        audio=torch.randn(audio_frames, cfg.audio_layers, cfg.audio_channels, generator=g).to(device),
    )


def _count(fn: Any) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


@dataclass
class FlopReport:
    """FLOPs of one steady-state block (blocks >= 2) and what they mean per video frame."""

    size: str
    frame_len: int
    block_flops: int
    video_frames: int
    first_block_flops: int
    skipped_flops: int

    @property
    def per_frame(self) -> float:
        """FLOPs per generated video frame in steady state."""
        return self.block_flops / self.video_frames


def count_flops(preset: str, size: str, audio_cfg: float = 1.0) -> FlopReport:
    """FLOPs of blocks 0 and 3 of ``preset`` (a name or preset file) at ``size``, on the meta device."""
    width, height = parse_size(size)
    with torch.device("meta"):
        model = LiveActTransformer(load_preset(preset).model).to(torch.bfloat16)
    cond = synthetic_conditions(model, width, height, audio_frames=400, device="meta")
    sampler = NeighborForcingSampler(model, audio_cfg=audio_cfg)
    stream = sampler.stream(cond, num_blocks=4)
    flops = [_count(lambda: next(stream)) for _ in range(4)]
    mem, scfg = sampler.memory_config, sampler.config
    span = block_span(3, mem, scfg.vae_stride[0])
    # Work the reference repeats on every model call: the text/image cross-attention context and
    # the audio projection of the whole window (first block + one later block). We do the first
    # once per prompt and the second once per block, for the block's own frames.
    calls = scfg.num_steps + (len(scfg.cfg_steps) if scfg.use_cfg else 0)
    context = _count(lambda: model.prepare_context(cond.text, cond.clip))
    window = BlockSpan(0, 0, mem.first_block_frames + mem.block_frames, 0, 0)
    rows = audio_rows(window, cond.audio.shape[0], model.config.audio_window, scfg.vae_stride[0])
    window_audio = _count(lambda: model.audio_tokens(cond.audio[rows[0]], cond.audio[rows[1]]))
    rows = audio_rows(span, cond.audio.shape[0], model.config.audio_window, scfg.vae_stride[0])
    block_audio = _count(lambda: model.audio_tokens(None, cond.audio[rows[1]]))
    skipped = calls * (context + window_audio) - block_audio * (1 + scfg.use_cfg)
    frame_len = (height // 16) * (width // 16)
    return FlopReport(size, frame_len, flops[3], span.frames * scfg.vae_stride[0], flops[0], skipped)
