"""Benchmarks: FLOPs per generated frame (meta device) and wall time per block (current device).

    python -m liveact.bench flops --preset liveact-14b --size 512*512 --size 720*416
    python -m liveact.bench speed --preset nano --size 256*256 --blocks 6
    python -m liveact.bench load
    python -m liveact.bench gpu          # liveact.gpu_bench: the 14B DiT on one GPU, all speed modes

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on the meta device, so the 14B
model is counted without any weights. Next to our count the report gives the work the reference
repeats and we skip (cross-attention K/V per call, audio projection over the whole window).
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from liveact.cli import parse_size
from liveact.config import PRESETS, MemoryConfig, SamplerConfig
from liveact.model import LiveActTransformer
from liveact.sampler import BlockSpan, Conditions, NeighborForcingSampler, audio_rows, block_span

logger = logging.getLogger(__name__)

PAPER_TFLOPS_PER_FRAME = 27.2


def synthetic_conditions(model: LiveActTransformer, width: int, height: int, audio_frames: int,
                         device: torch.device | str, seed: int = 0) -> Conditions:
    """Random conditioning with the right shapes (for benchmarks and smoke tests)."""
    cfg, mem = model.config, MemoryConfig()
    stride = SamplerConfig().vae_stride
    g = torch.Generator().manual_seed(seed)
    frames = mem.first_block_frames + mem.block_frames
    y = torch.randn(1, cfg.cond_dim, frames, height // stride[1], width // stride[2], generator=g)
    return Conditions(
        text=torch.randn(24, cfg.text_dim, generator=g).to(device),
        clip=torch.randn(1, 257, cfg.clip_dim, generator=g).to(device),
        y=y.to(device), audio=torch.randn(audio_frames, cfg.audio_layers, cfg.audio_channels, generator=g).to(device),
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
    """Count the FLOPs of blocks 0 and 3 of ``preset`` at ``size`` on the meta device."""
    width, height = parse_size(size)
    with torch.device("meta"):
        model = LiveActTransformer(PRESETS[preset]).to(torch.bfloat16)
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


def run_speed(preset: str, size: str, blocks: int, device: str, dtype: torch.dtype, fps: int) -> dict[str, float]:
    """Time ``blocks`` blocks of a randomly initialised ``preset`` on ``device``."""
    width, height = parse_size(size)
    torch.manual_seed(0)
    model = LiveActTransformer(PRESETS[preset]).to(device, dtype).eval()
    cond = synthetic_conditions(model, width, height, audio_frames=32 * blocks + 64, device=device)
    sampler = NeighborForcingSampler(model)
    times = []
    start = time.perf_counter()
    for _ in sampler.stream(cond, blocks, torch.Generator().manual_seed(0)):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        now = time.perf_counter()
        times.append(now - start)
        start = now
    steady = times[2:] or times[1:] or times
    per_block = sum(steady) / len(steady)
    frames = MemoryConfig().block_frames * SamplerConfig().vae_stride[0]
    return {"first_block_s": times[0], "block_s": per_block, "fps": frames / per_block,
            "real_time_factor": frames / fps / per_block}


def component_sizes() -> list[tuple[str, int, int]]:
    """``(component, parameters, largest tensor elements)`` of the 14B asset set, built on the meta device."""
    from diffusers import AutoencoderKLWan
    from transformers import CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel, Wav2Vec2Config, Wav2Vec2Model

    with torch.device("meta"):
        models = {
            "DiT (liveact-14b)": LiveActTransformer(PRESETS["liveact-14b"]),
            "umT5-XXL encoder": UMT5EncoderModel(UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240,
                                                            num_layers=24, num_heads=64, feed_forward_proj="gated-gelu")),
            "CLIP ViT-H/14 (31 blocks used)": CLIPVisionModel(CLIPVisionConfig(
                hidden_size=1280, intermediate_size=5120, num_hidden_layers=31, num_attention_heads=16,
                image_size=224, patch_size=14, hidden_act="gelu")),
            "Wan2.1 VAE": AutoencoderKLWan(base_dim=96, z_dim=16),
            "wav2vec2-base": Wav2Vec2Model(Wav2Vec2Config()),
        }
    return [(name, sum(p.numel() for p in m.parameters()), max(p.numel() for p in m.parameters()))
            for name, m in models.items()]


def print_load_plan(bytes_per_param: int = 2) -> None:
    """Peak host RAM of loading each component (dry run: sizes from meta-device builds, no weights)."""
    gib = 2**30
    print(f"{'component':32} {'params':>8} {'bf16 GiB':>9} {'host peak -> GPU':>17} {'host peak, on CPU':>18}")
    total = 0
    for name, params, largest in component_sizes():
        size = params * bytes_per_param
        total += size
        print(f"{name:32} {params / 1e9:7.2f}B {size / gib:9.2f} {largest * bytes_per_param / gib:14.3f} GiB "
              f"{size / gib:14.2f} GiB")
    print(f"{'all':32} {'':8} {total / gib:9.2f}")


def main(argv: list[str] | None = None) -> None:
    """CLI entry point (see module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    fl = sub.add_parser("flops", help="FLOPs per generated frame on the meta device")
    fl.add_argument("--preset", default="liveact-14b", choices=sorted(PRESETS))
    fl.add_argument("--size", action="append", help="W*H, repeatable (default 512*512 and 720*416)")
    fl.add_argument("--audio_cfg", type=float, default=1.0)
    sub.add_parser("load", help="peak host RAM of loading the 14B asset set (meta-device dry run)")
    sp = sub.add_parser("speed", help="wall time per block on the current device")
    sp.add_argument("--preset", default="nano", choices=sorted(PRESETS))
    sp.add_argument("--size", default="256*256")
    sp.add_argument("--blocks", type=int, default=6)
    sp.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    sp.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    sp.add_argument("--fps", type=int, default=25)
    from liveact import gpu_bench  # the `gpu` subcommand lives in its own module

    gpu_bench.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "gpu":
        gpu_bench.run_command(args)
    elif args.command == "flops":
        print(f"{'preset':12} {'size':9} {'fl':>5} {'TFLOP/block':>12} {'TFLOP/frame':>12} {'paper':>6} "
              f"{'ratio':>6} {'skipped TFLOP/block':>20} {'saving':>7}")
        for size in args.size or ["512*512", "720*416"]:
            r = count_flops(args.preset, size, args.audio_cfg)
            print(f"{args.preset:12} {size:9} {r.frame_len:5d} {r.block_flops / 1e12:12.1f} {r.per_frame / 1e12:12.2f} "
                  f"{PAPER_TFLOPS_PER_FRAME:6.1f} {r.per_frame / 1e12 / PAPER_TFLOPS_PER_FRAME:6.2f} "
                  f"{r.skipped_flops / 1e12:20.2f} {r.skipped_flops / (r.block_flops + r.skipped_flops):7.2%}")
    elif args.command == "load":
        print_load_plan()
    else:
        r = run_speed(args.preset, args.size, args.blocks, args.device, getattr(torch, args.dtype), args.fps)
        print(f"preset {args.preset} size {args.size} device {args.device} dtype {args.dtype}: "
              f"first block {r['first_block_s']:.3f} s, steady block {r['block_s']:.3f} s, "
              f"{r['fps']:.1f} FPS, real-time factor {r['real_time_factor']:.2f} at {args.fps} fps")


if __name__ == "__main__":
    main()
