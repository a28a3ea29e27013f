"""Stage 1: train LiveAct-Nano's DiT from nothing with Neighbor Forcing (or an ablation mode).

    python -m liveact.train stage1 --data runs/data --val runs/data_val --out runs/stage1 --steps 8000

Same transformer, memory and sampler code as the 14B model, the ``nano`` geometry. Resumable (run the
same command again), deterministic by seed, a progress bar with the loss, a JSONL metrics log, an EMA
of the weights, a held-out validation loss at fixed noise levels, and the final EMA model written in
the official layout to ``<out>/model`` (``config.json`` + ``diffusion_pytorch_model.safetensors``).
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from liveact.components.nano import MiniLMTextEncoder
from liveact.config import MemoryConfig, ModelConfig, SamplerConfig
from liveact.loading import save_transformer
from liveact.model import LiveActTransformer
from liveact.train.common import (
    EMA,
    Budget,
    Checkpoint,
    MetricsLog,
    cosine_lr,
    load_optimizer_state,
    optimizer_state,
    set_threads,
)
from liveact.train.data import ClipSet
from liveact.train.forcing import MODES, Batch, conditioning, forcing_loss, image_tokens, mouth_weights

logger = logging.getLogger(__name__)

VAL_SIGMAS = (0.3, 0.6, 0.85, 0.95)


def nano_model_config(**overrides: object) -> ModelConfig:
    """LiveAct-Nano's DiT: 256 wide, 4 layers, MiniLM text (384), reference-latent image tokens (16x2x2),
    log-mel audio (4 sub-frames x 80 mels)."""
    base = ModelConfig(
        dim=256,
        ffn_dim=1024,
        num_heads=4,
        num_layers=4,
        text_dim=384,
        text_len=32,
        clip_dim=64,
        audio_layers=4,
        audio_channels=80,
        intermediate_dim=256,
        output_dim=128,
        context_tokens=8,
    )
    return replace(base, **overrides)


def init_weights(model: LiveActTransformer) -> None:
    """Fresh-model initialisation: ConvKV taps start as the mean (the authors' ``post_init``), and the
    output projection starts at zero so the first predictions are neutral."""
    with torch.no_grad():
        for block in model.blocks:
            for conv in (block.self_attn.memory_proj_k, block.self_attn.memory_proj_v):
                conv.weight.fill_(1.0 / conv.weight.shape[-1])
        model.head.head.weight.zero_()
        model.head.head.bias.zero_()


class TextBank:
    """Prompt features per text, computed once (a few hundred distinct prompts)."""

    def __init__(self, encoder: MiniLMTextEncoder) -> None:
        self.encoder = encoder

    def __call__(self, text: str) -> torch.Tensor:
        """``[L, 384]``."""
        return self.encoder.encode([text])[0]


def make_batch(
    data: ClipSet,
    idx: np.ndarray,
    texts: TextBank,
    rng: np.random.Generator,
    patch: int,
    stride: int,
    text_drop: float = 0.0,
    audio_drop: float = 0.0,
    blocks: int | None = None,
    memory: MemoryConfig | None = None,
) -> Batch:
    """Gather the first ``blocks`` blocks (all by default) of clips ``idx``, dropping text/audio per
    sample."""
    memory = memory or MemoryConfig()
    blocks = blocks or len(data.meta[idx[0]]["prompts"])
    latents = memory.first_block_frames + (blocks - 1) * memory.block_frames
    cond = data.cond[idx].float()
    audio = data.audio[idx].float()
    drop_audio = torch.from_numpy(rng.random(len(idx)) < audio_drop)
    audio[drop_audio] = 0
    drop_text = rng.random(len(idx)) < text_drop
    per_block = [
        [texts("" if drop_text[j] else data.meta[i]["prompts"][k]) for j, i in enumerate(idx)]
        for k in range(blocks)
    ]
    return Batch(
        latents=data.latents[idx][:, :, :latents].float(),
        y=conditioning(cond, stride),
        image=image_tokens(cond, patch),
        audio=audio,
        texts=per_block,
        mouth_xy=None if data.mouth_xy is None else data.mouth_xy[idx].float(),
    )


def batch_mouth_weights(
    batch: Batch, weight: float, base: float = 1.0, stride: int = 4
) -> torch.Tensor | None:
    """``[B, 1, F, h, w]`` loss weights of a batch's mouth cells (None when ``weight`` is 0)."""
    if not weight:
        return None
    if batch.mouth_xy is None:
        raise ValueError(
            "mouth weighting needs the mouth position in the shards: run "
            "`python -m liveact.train data --out DATA --add_mouth_xy` (add --held_out for held-out shards)"
        )
    _, _, frames, h, w = batch.latents.shape
    return mouth_weights(batch.mouth_xy, frames, (h, w), stride, weight, base)


@torch.no_grad()
def validation_loss(
    model: LiveActTransformer,
    data: ClipSet,
    texts: TextBank,
    mode: str,
    batch: int = 8,
    clips: int = 32,
    mouth_only: bool = False,
) -> float:
    """Mean loss over ``clips`` held-out clips at fixed noise levels and fixed noise (comparable over time);
    with ``mouth_only`` over the mouth's latent cells only."""
    patch, stride = model.config.patch_size[1], SamplerConfig().vae_stride[0]
    total, count = 0.0, 0
    rng = np.random.default_rng(0)
    for start in range(0, min(clips, len(data)), batch):
        idx = np.arange(start, min(start + batch, clips, len(data)))
        b = make_batch(data, idx, texts, rng, patch, stride)
        for sigma in VAL_SIGMAS:
            g = torch.Generator().manual_seed(1234 + start)
            blocks = len(data.meta[idx[0]]["prompts"])
            sig = torch.full((blocks, len(idx)), sigma)
            weights = batch_mouth_weights(b, 1.0, base=0.0, stride=stride) if mouth_only else None
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss, _ = forcing_loss(model, b, mode, g, sigmas=sig, loss_weights=weights)
            total += loss.item() * len(idx)
            count += len(idx)
    return total / count


def train(args: argparse.Namespace) -> None:
    """Train or resume (see ``main``)."""
    set_threads(args.threads)
    torch.manual_seed(args.seed)
    data, val = ClipSet.load(args.data, args.limit), ClipSet.load(args.val, 64)
    texts = TextBank(MiniLMTextEncoder(max_tokens=nano_model_config().text_len))
    if args.init_from:
        # Fine-tune an exported model (e.g. with another loss weighting): its geometry, its weights.
        model = LiveActTransformer.from_pretrained(args.init_from, torch_dtype=torch.float32).requires_grad_(
            True
        )
        config = model.config
    else:
        config = nano_model_config(
            num_layers=args.layers, dim=args.dim, ffn_dim=4 * args.dim, num_heads=args.dim // 64
        )
        model = LiveActTransformer(config)
        init_weights(model)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    ema = EMA(model, args.ema)
    out = args.out
    ckpt, log, budget = Checkpoint(out), MetricsLog(out / "metrics.jsonl"), Budget(args.minutes)
    step = 0
    if ckpt.exists():
        tensors, meta = ckpt.load()
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        ema.load({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        load_optimizer_state(opt, tensors)
        step = meta["step"]
        logger.info("resumed %s at step %d", out, step)
    else:
        log.write(
            event="start",
            params=sum(p.numel() for p in model.parameters()),
            mode=args.mode,
            config=config.to_dict(),
            clips=len(data),
            init_from=str(args.init_from or ""),
            mouth_weight=args.mouth_weight,
        )
    patch, stride = config.patch_size[1], SamplerConfig().vae_stride[0]
    bar = tqdm(total=args.steps, initial=step, desc=f"stage1 {args.mode}", mininterval=10)
    last_save, started = time.monotonic(), time.monotonic()
    stop = min(args.steps, args.stop_at or args.steps)
    while step < stop and not budget.exhausted():
        # Randomness is a function of (seed, step): a resumed run continues the same curve.
        rng = np.random.default_rng((args.seed, step))
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        idx = rng.integers(0, len(data), size=args.batch)
        # Mostly two-block clips (blocks 0 and 1: no compression yet); some with a third block train the
        # ConvKV compression and the steady-state layout. Three blocks cost ~1.6x two.
        blocks = 3 if rng.random() < args.long_clips else 2
        batch = make_batch(data, idx, texts, rng, patch, stride, args.text_drop, args.audio_drop, blocks)
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, args.lr, args.warmup, args.steps)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, per_block = forcing_loss(
                model,
                batch,
                args.mode,
                generator,
                shift=args.shift,
                loss_weights=batch_mouth_weights(batch, args.mouth_weight, stride=stride),
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model, step)
        step += 1
        bar.update(1)
        if step % args.log_every == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            log.write(
                step=step,
                loss=loss.item(),
                blocks=per_block,
                grad=float(grad),
                lr=opt.param_groups[0]["lr"],
                seconds=time.monotonic() - started,
            )
        if step % args.val_every == 0 or step == args.steps:
            log.write(step=step, **_validate(config, ema, val, texts))
        if args.snapshot_every and step % args.snapshot_every == 0:
            export(config, ema, out / f"model_step{step}")
        if time.monotonic() - last_save > 60 * args.save_minutes or step == args.steps:
            _save(ckpt, model, ema, opt, step)
            last_save = time.monotonic()
    bar.close()
    _save(ckpt, model, ema, opt, step)
    if step >= args.steps:
        export(config, ema, out / "model")


def _validate(config: ModelConfig, ema: EMA, val: ClipSet, texts: TextBank) -> dict[str, float]:
    """Validation losses of the EMA weights under the Neighbor and Teacher Forcing objectives."""
    model = ema_model(config, ema)
    out = {f"val_{m}": validation_loss(model, val, texts, m) for m in ("neighbor", "teacher")}
    if val.mouth_xy is not None:
        out["val_neighbor_mouth"] = validation_loss(model, val, texts, "neighbor", mouth_only=True)
    return out


def ema_model(config: ModelConfig, ema: EMA) -> LiveActTransformer:
    """A model holding the EMA weights, in eval mode."""
    model = LiveActTransformer(config)
    model.load_state_dict(ema.state_dict())
    return model.eval().requires_grad_(False)


def export(config: ModelConfig, ema: EMA, folder: Path) -> None:
    """Write the EMA model in the official layout (loadable with ``LiveActTransformer.from_pretrained``)."""
    save_transformer(ema_model(config, ema), folder)


def _save(
    ckpt: Checkpoint, model: LiveActTransformer, ema: EMA, opt: torch.optim.Optimizer, step: int
) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    tensors.update(optimizer_state(opt))
    ckpt.save(tensors, {"step": step})


def main(argv: list[str] | None = None) -> None:
    """``python -m liveact.train stage1``."""
    p = argparse.ArgumentParser(
        prog="python -m liveact.train stage1",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", type=Path, required=True, help="training shards (python -m liveact.train data)")
    p.add_argument("--val", type=Path, required=True, help="held-out shards (data --held_out)")
    p.add_argument("--out", type=Path, required=True, help="run folder (resumed if it holds a checkpoint)")
    p.add_argument("--mode", choices=MODES, default="neighbor")
    p.add_argument("--steps", type=int, default=8000)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--long_clips", type=float, default=0.3, help="share of steps on three-block clips")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--shift", type=float, default=3.0, help="timestep shift of the training noise levels")
    p.add_argument("--text_drop", type=float, default=0.1)
    p.add_argument("--audio_drop", type=float, default=0.1)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--limit", type=int, default=None, help="use at most this many training clips")
    p.add_argument("--val_every", type=int, default=250)
    p.add_argument("--log_every", type=int, default=10)
    p.add_argument("--save_minutes", type=float, default=5.0)
    p.add_argument("--minutes", type=float, default=None, help="stop (resumably) after this wall time")
    p.add_argument(
        "--stop_at",
        type=int,
        default=None,
        help="stop (resumably) at this step; the schedule still spans --steps (ablations compare runs "
        "at one step with one learning-rate schedule)",
    )
    p.add_argument(
        "--init_from", type=Path, default=None, help="start from this exported model (fine-tuning)"
    )
    p.add_argument(
        "--mouth_weight",
        type=float,
        default=0.0,
        help="extra loss weight on the mouth's latent cells (needs mouth_xy in the shards)",
    )
    p.add_argument("--snapshot_every", type=int, default=0, help="also export the EMA model every N steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    train(p.parse_args(argv))
