"""Benchmarks: FLOPs per generated frame (meta device), the load plan, and end-to-end speed by stage.

    python -m liveact.bench flops --preset liveact-14b --size 512*512 --size 720*416
    python -m liveact.bench load
    python -m liveact.bench speed --preset nano --size 256*256 --blocks 3
    python -m liveact.bench speed --ckpt_dir CKPT --wav2vec_dir W2V --size 416*720   # real weights
    python -m liveact.bench gpu          # liveact.bench.gpu: the 14B DiT on one GPU, all speed modes

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on the meta device, so the 14B
model is counted without any weights. Next to our count the report gives the work the reference
repeats and we skip (cross-attention K/V per call, audio projection over the whole window).

``speed`` runs the whole pipeline on a synthetic portrait and speech file and times every stage:
text, image, audio features, conditioning (VAE encode), then per block the DiT, the VAE decode and
the mp4 encode + mux, and reports the end-to-end real-time factor (audio seconds / wall seconds,
preparation included) next to the steady-state one. Without ``--ckpt_dir`` every model has random
weights: the DiT from ``--preset`` (a name or a preset JSON file), the other components from
``--encoders`` (``ENCODER_SETS``). A preset name or file works wherever ``--preset`` is accepted.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from liveact.bench.shared import PAPER_TFLOPS_PER_FRAME, count_flops
from liveact.config import PRESETS, Preset, load_preset
from liveact.model import LiveActTransformer
from liveact.userinput import add_compile_flag, parse_size

if TYPE_CHECKING:
    from liveact.pipeline import LiveActPipeline

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncoderSet:
    """Architectures of the random-weight components ``speed`` builds around the DiT.

    Widths always come from the preset (``text_dim``, ``clip_dim``, ``audio_layers`` x
    ``audio_channels``), so the outputs fit the DiT; depth and vocabulary come from here.
    """

    vae_base_dim: int
    t5_layers: int
    t5_vocab: int
    t5_ffn: int
    clip_layers: int
    what: str


ENCODER_SETS: dict[str, EncoderSet] = {
    # The official components: Wan2.1 VAE, umT5-XXL (5.7 B parameters), CLIP ViT-H/14 (31 of 32 blocks).
    "official": EncoderSet(96, 24, 256384, 10240, 31, "Wan2.1 VAE, umT5-XXL, CLIP ViT-H/14 (31 blocks)"),
    # The same VAE and audio encoder (their cost grows with the video), umT5 and CLIP cut to 2 blocks
    # and a 32k vocabulary at full width so a small CPU machine holds them: their per-clip times are
    # lower bounds of the official ones.
    "small": EncoderSet(
        96, 2, 32128, 10240, 2, "Wan2.1 VAE, umT5 (2 of 24 blocks), CLIP ViT-H/14 (2 blocks)"
    ),
}


def _build(factory: Callable[[], torch.nn.Module], device: torch.device, dtype: torch.dtype) -> Any:
    """Construct a module straight on ``device`` (default init, float32), then cast to ``dtype``."""
    with torch.device(device):
        module = factory()
    if dtype != torch.float32:
        module = module.to(dtype)
    return module.eval().requires_grad_(False)


def _word_tokenizer() -> Any:
    """A umT5-like tokenizer (pad 0, ``</s>`` 1, ``<unk>`` 2, EOS appended).

    The encoder's cost depends only on ``text_len``, to which every prompt is padded, so the ids
    themselves do not matter.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<pad>": 0, "</s>": 1, "<unk>": 2}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def _random_vae(z_dim: int, base_dim: int, device: torch.device, dtype: torch.dtype) -> Any:
    """A Wan2.1-layout VAE (strides 4x8x8) with random weights and identity latent statistics."""
    from diffusers import AutoencoderKLWan

    from liveact.components.vae import VAEArch, WanVAE

    down = (False, True, True)
    model = _build(
        lambda: AutoencoderKLWan(
            base_dim=base_dim,
            z_dim=z_dim,
            dim_mult=[1, 2, 4, 4],
            num_res_blocks=2,
            temperal_downsample=list(down),
        ),
        device,
        dtype,
    )
    arch = VAEArch(
        base_dim=base_dim,
        decoder_base_dim=base_dim,
        z_dim=z_dim,
        dim_mult=(1, 2, 4, 4),
        num_res_blocks=2,
        temperal_downsample=down,
        in_channels=3,
        out_channels=3,
    )
    return WanVAE(model, arch, (0.0,) * z_dim, (1.0,) * z_dim)


def _random_encoders(cfg: Any, encoders: EncoderSet, device: torch.device, dtype: torch.dtype) -> tuple:
    """Random umT5, CLIP vision and wav2vec2 encoders whose widths fit the DiT ``cfg``."""
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModel,
        UMT5Config,
        UMT5EncoderModel,
        Wav2Vec2Config,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2Model,
    )

    from liveact.components.audio import Wav2VecEncoder
    from liveact.components.encoders import CLIPImageEncoder, T5TextEncoder

    t5 = UMT5Config(
        vocab_size=encoders.t5_vocab,
        d_model=cfg.text_dim,
        d_kv=64,
        d_ff=encoders.t5_ffn,
        num_layers=encoders.t5_layers,
        num_heads=cfg.text_dim // 64,
        feed_forward_proj="gated-gelu",
    )
    clip = CLIPVisionConfig(
        hidden_size=cfg.clip_dim,
        intermediate_size=4 * cfg.clip_dim,
        num_hidden_layers=encoders.clip_layers,
        num_attention_heads=max(1, cfg.clip_dim // 80),
        image_size=224,
        patch_size=14,
        hidden_act="gelu",
    )
    w2v = Wav2Vec2Config(
        hidden_size=cfg.audio_channels,
        num_hidden_layers=cfg.audio_layers,
        num_attention_heads=max(1, cfg.audio_channels // 64),
        intermediate_size=4 * cfg.audio_channels,
    )
    extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True
    )
    text_model = _build(lambda: UMT5EncoderModel(t5), device, dtype)
    return (
        T5TextEncoder(text_model, _word_tokenizer(), cfg.text_len),
        CLIPImageEncoder(_build(lambda: CLIPVisionModel(clip), device, dtype)),
        Wav2VecEncoder(_build(lambda: Wav2Vec2Model(w2v), device, dtype), extractor),
    )


def random_pipeline(
    preset: Preset,
    encoders: EncoderSet,
    size: tuple[int, int],
    fps: float,
    device: torch.device,
    dtype: torch.dtype,
) -> LiveActPipeline:
    """A ``LiveActPipeline`` whose every model has random weights (for timing only)."""
    from liveact.pipeline import LiveActPipeline

    torch.manual_seed(0)
    dit = _build(lambda: LiveActTransformer(preset.model), device, dtype)
    vae = _random_vae(preset.model.out_dim, encoders.vae_base_dim, device, dtype)
    text, image, audio = _random_encoders(preset.model, encoders, device, dtype)
    return LiveActPipeline(
        dit, vae, text, image, audio, size=size, fps=fps, memory=preset.memory, schedule=preset.sampler
    )


def write_synthetic_inputs(folder: Path, seconds: float, size: tuple[int, int]) -> tuple[Path, Path]:
    """A portrait-like PNG and a speech-like 16 kHz wav of ``seconds`` (the samples never exceed it)."""
    import soundfile as sf
    from PIL import Image

    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    face = ((yy - height / 2) ** 2 + (xx - width / 2) ** 2 < (min(width, height) / 3) ** 2)[..., None]
    image = (face * np.array([220, 180, 150]) + (1 - face) * np.array([40, 90, 110])).astype(np.uint8)
    Image.fromarray(image).save(folder / "portrait.png")
    t = np.arange(int(seconds * 16000)) / 16000
    wave = 0.3 * np.sin(2 * np.pi * 180 * t) * (1.2 + np.sin(2 * np.pi * 2.5 * t)) / 2.2
    sf.write(folder / "speech.wav", wave.astype(np.float32), 16000)
    return folder / "portrait.png", folder / "speech.wav"


@dataclass
class SpeedReport:
    """Seconds per stage of one end-to-end run (preparation once, then per block)."""

    prepare: dict[str, float]
    dit: list[float] = field(default_factory=list)
    vae: list[float] = field(default_factory=list)
    mp4: list[float] = field(default_factory=list)
    mp4_close: float = 0.0
    wall: float = 0.0
    first_block: float = 0.0
    audio_seconds: float = 0.0
    block_seconds: list[float] = field(default_factory=list)

    @property
    def real_time_factor(self) -> float:
        """End to end: seconds of speech turned into video per wall second, preparation included."""
        return self.audio_seconds / self.wall

    def steady(self) -> tuple[float, float]:
        """(seconds per block, real-time factor) over the blocks after the first two (or what there is)."""
        skip = 2 if len(self.dit) > 2 else (1 if len(self.dit) > 1 else 0)
        per_block = [d + v + m for d, v, m in zip(self.dit[skip:], self.vae[skip:], self.mp4[skip:])]
        mean = sum(per_block) / len(per_block)
        return mean, self.block_seconds[-1] / mean


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_speed(pipe: LiveActPipeline, blocks: int, seed: int = 0) -> SpeedReport:
    """Generate ``blocks`` blocks end to end from synthetic inputs and time every stage."""
    from liveact.pipeline import Request
    from liveact.video import ProgressiveVideoWriter

    frames = sum(pipe.frames_of_block(k) for k in range(blocks))
    seconds = frames / pipe.fps
    with tempfile.TemporaryDirectory(prefix="liveact-bench-") as tmp:
        image, audio = write_synthetic_inputs(Path(tmp), seconds, pipe.size)
        start = time.perf_counter()
        clip = pipe.prepare(
            Request(image=image, audio=audio, prompt="A person talks to the camera."),
            progress=lambda stage: None,
        )
        report = SpeedReport(prepare=clip.timings, audio_seconds=clip.duration)
        writer = ProgressiveVideoWriter(Path(tmp) / "bench.mp4", fps=pipe.fps, audio=audio)
        decoder = pipe.decoder.stream_decoder(stitch=pipe.vae_stitch)
        generator = torch.Generator().manual_seed(seed)
        latents = pipe.sampler.stream(clip.conditions, clip.num_blocks, generator=generator)
        for k in range(clip.num_blocks):
            t0 = time.perf_counter()
            latent = next(latents)
            _sync(pipe.device)
            t1 = time.perf_counter()
            video = decoder.decode_block(latent.to(pipe.decoder.device, pipe.decoder.dtype)).float()
            _sync(pipe.decoder.device)
            t2 = time.perf_counter()
            writer.write(video)
            t3 = time.perf_counter()
            report.dit.append(t1 - t0)
            report.vae.append(t2 - t1)
            report.mp4.append(t3 - t2)
            report.block_seconds.append(pipe.frames_of_block(k) / pipe.fps)
            if k == 0:
                report.first_block = t3 - start
        t0 = time.perf_counter()
        writer.close()
        report.mp4_close = time.perf_counter() - t0
        report.wall = time.perf_counter() - start
    return report


def format_speed(report: SpeedReport, what: str) -> list[str]:
    """The report as printable lines: one per stage, then the end-to-end and steady-state figures."""
    from liveact.pipeline import PREPARE_STAGE_TEXT

    lines = [what, f"{'stage':46} {'seconds':>9} {'per block':>10} {'share':>7}"]
    rows = [(PREPARE_STAGE_TEXT[k], v, None) for k, v in report.prepare.items()]
    rows += [
        ("DiT (sampler, all steps)", sum(report.dit), report.dit),
        ("decode to frames (VAE / tiny autoencoder)", sum(report.vae), report.vae),
        ("mp4 encode + mux (incl. final flush)", sum(report.mp4) + report.mp4_close, report.mp4),
    ]
    for name, total, per in rows:
        per_block = f"{sum(per) / len(per):10.3f}" if per else f"{'':10}"
        lines.append(f"{name:46} {total:9.3f} {per_block} {total / report.wall:7.1%}")
    steady_block, steady_rtf = report.steady()
    lines.append(
        f"end to end: {report.audio_seconds:.2f} s of speech in {report.wall:.2f} s, real-time "
        f"factor {report.real_time_factor:.3f}; first block after {report.first_block:.2f} s"
    )
    lines.append(
        f"steady state: {steady_block:.3f} s per block of {report.block_seconds[-1]:.2f} s, "
        f"real-time factor {steady_rtf:.3f} (DiT + decode + mp4)"
    )
    return lines


def component_sizes() -> list[tuple[str, int, int]]:
    """``(component, parameters, largest tensor elements)`` of the 14B asset set, built on the meta device."""
    from diffusers import AutoencoderKLWan
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModel,
        UMT5Config,
        UMT5EncoderModel,
        Wav2Vec2Config,
        Wav2Vec2Model,
    )

    with torch.device("meta"):
        models = {
            "DiT (liveact-14b)": LiveActTransformer(PRESETS["liveact-14b"]),
            "umT5-XXL encoder": UMT5EncoderModel(
                UMT5Config(
                    vocab_size=256384,
                    d_model=4096,
                    d_kv=64,
                    d_ff=10240,
                    num_layers=24,
                    num_heads=64,
                    feed_forward_proj="gated-gelu",
                )
            ),
            "CLIP ViT-H/14 (31 blocks used)": CLIPVisionModel(
                CLIPVisionConfig(
                    hidden_size=1280,
                    intermediate_size=5120,
                    num_hidden_layers=31,
                    num_attention_heads=16,
                    image_size=224,
                    patch_size=14,
                    hidden_act="gelu",
                )
            ),
            "Wan2.1 VAE": AutoencoderKLWan(base_dim=96, z_dim=16),
            "wav2vec2-base": Wav2Vec2Model(Wav2Vec2Config()),
        }
    return [
        (name, sum(p.numel() for p in m.parameters()), max(p.numel() for p in m.parameters()))
        for name, m in models.items()
    ]


def print_load_plan(bytes_per_param: int = 2) -> None:
    """Peak host RAM of loading each component (dry run: sizes from meta-device builds, no weights)."""
    gib = 2**30
    print(
        f"{'component':32} {'params':>8} {'bf16 GiB':>9} {'host peak -> GPU':>17} {'host peak, on CPU':>18}"
    )
    total = 0
    for name, params, largest in component_sizes():
        size = params * bytes_per_param
        total += size
        print(
            f"{name:32} {params / 1e9:7.2f}B {size / gib:9.2f} {largest * bytes_per_param / gib:14.3f} GiB "
            f"{size / gib:14.2f} GiB"
        )
    print(f"{'all':32} {'':8} {total / gib:9.2f}")


def _flops_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="liveact-14b", help="preset name or preset JSON file")
    p.add_argument("--size", action="append", help="W*H, repeatable (default 512*512 and 720*416)")
    p.add_argument("--audio_cfg", type=float, default=1.0)


def _flops(args: argparse.Namespace) -> None:
    print(
        f"{'preset':12} {'size':9} {'fl':>5} {'TFLOP/block':>12} {'TFLOP/frame':>12} {'paper':>6} "
        f"{'ratio':>6} {'skipped TFLOP/block':>20} {'saving':>7}"
    )
    for size in args.size or ["512*512", "720*416"]:
        r = count_flops(args.preset, size, args.audio_cfg)
        print(
            f"{args.preset:12} {size:9} {r.frame_len:5d} {r.block_flops / 1e12:12.1f} "
            f"{r.per_frame / 1e12:12.2f} "
            f"{PAPER_TFLOPS_PER_FRAME:6.1f} {r.per_frame / 1e12 / PAPER_TFLOPS_PER_FRAME:6.2f} "
            f"{r.skipped_flops / 1e12:20.2f} {r.skipped_flops / (r.block_flops + r.skipped_flops):7.2%}"
        )


def _load_arguments(p: argparse.ArgumentParser) -> None:
    del p  # no options


def _load(args: argparse.Namespace) -> None:
    del args
    print_load_plan()


def _speed_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="nano", help="preset name or preset JSON file (random weights)")
    p.add_argument(
        "--encoders",
        default=None,
        choices=sorted(ENCODER_SETS),
        help="random components around the DiT (default: official for liveact-14b, else small)",
    )
    p.add_argument("--ckpt_dir", default=None, help="time a real checkpoint folder instead of random weights")
    p.add_argument("--wav2vec_dir", default=None, help="its wav2vec2 folder (official checkpoints)")
    p.add_argument("--size", default="256*256", help="W*H")
    p.add_argument(
        "--blocks", type=int, default=3, help="blocks to generate (the synthetic audio covers them)"
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="default: bfloat16 on CUDA, float32 on the CPU",
    )
    p.add_argument("--fps", type=int, default=25)
    add_compile_flag(p)


def _speed(args: argparse.Namespace) -> None:
    from liveact import runtime
    from liveact.pipeline import check_device

    if args.blocks < 1:
        raise SystemExit("error: --blocks must be >= 1")
    if args.ckpt_dir:
        # A real checkpoint is assembled exactly as generate.py assembles it.
        flags = runtime.RunFlags(
            ckpt_dir=args.ckpt_dir,
            wav2vec_dir=args.wav2vec_dir,
            size=args.size,
            fps=args.fps,
            device=args.device,
            dtype=args.dtype,
            compile=args.compile,
        )
        try:
            spec = runtime.resolve(flags)
            runtime.check(spec)
            pipe = runtime.build(spec)
        except (ValueError, FileNotFoundError) as exc:
            raise SystemExit(f"error: {exc}") from None
        device, dtype = spec.device, spec.dtype
        what = f"{args.ckpt_dir} (real weights)"
    else:
        device = check_device(args.device)
        dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
        preset = load_preset(args.preset)
        name = args.encoders or ("official" if preset.name == "liveact-14b" else "small")
        pipe = random_pipeline(preset, ENCODER_SETS[name], parse_size(args.size), args.fps, device, dtype)
        runtime.apply_compile(pipe, args.compile)
        what = f"preset {preset.name} (random weights) with {name} components: {ENCODER_SETS[name].what}"
    report = run_speed(pipe, args.blocks)
    header = f"{what}; size {args.size}, {args.fps} fps, {args.blocks} blocks, {device}, {str(dtype)[6:]}"
    print("\n".join(format_speed(report, header)))


# name -> (help, add arguments, run)
Subcommand = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], None]]
SUBCOMMANDS: dict[str, Subcommand] = {
    "flops": ("FLOPs per generated frame on the meta device", _flops_arguments, _flops),
    "load": ("peak host RAM of loading the 14B asset set (meta-device dry run)", _load_arguments, _load),
    "speed": ("end-to-end wall time by stage and real-time factor on one device", _speed_arguments, _speed),
}
