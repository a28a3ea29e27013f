"""Train Nano's tiny causal autoencoder on synthetic avatar clips.

Frames come from a pool of rendered clips (``synth.make_clip``, one block of 21 frames each, many
people), cached on disk as a uint8 memmap so a resumed run does not render again. The loss is L1 plus
an L1 on image gradients (sharp edges: lips, eyes, glasses); latents get a little noise during
training so the decoder tolerates the diffusion model's imperfect latents. After training, the
per-channel latent statistics are measured and stored, so the diffusion model sees ~unit latents.
``--mouth_weight`` weights the pixels around the mouth (the pool keeps each frame's mouth position):
the lip-sync evidence is a few pixels of a 128x128 frame, and an unweighted loss spends the decoder
on the background. With ``--start_from`` and ``--freeze_encoder`` this fine-tunes the decoder alone,
so data encoded and models trained with the old encoder stay valid.

    python -m liveact.train autoencoder --out runs/tae --steps 3000 --minutes 60
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from liveact.components.tae import TAEConfig, TinyAutoencoder, he_init
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
from liveact.train.synth import MOUTH_BOX

logger = logging.getLogger(__name__)

NANO_TAE = TAEConfig(latent_channels=16, encoder_widths=(16, 32, 64), decoder_widths=(64, 32, 16, 16))


def frame_pool(
    folder: Path, clips: int, size: int, seed: int, held_out: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """One-block clips, rendered once and memory-mapped.

    Returns:
        frames ``[clips, 21, size, size, 3]`` uint8 and the mouth centres ``[clips, 21, 2]`` (x, y in
        fractions of the frame).
    """
    from liveact.train.synth import make_clip

    path = folder / f"pool_{'val' if held_out else 'train'}_{clips}_{size}_{seed}.npy"
    mouth_path, done = path.with_suffix(".mouth.npy"), path.with_suffix(".done")
    if path.is_file() and mouth_path.is_file() and done.is_file():
        return np.load(path, mmap_mode="r"), np.load(mouth_path)
    folder.mkdir(parents=True, exist_ok=True)
    first = make_clip(seed, num_blocks=1, size=size, held_out=held_out, action_prob=1.0)
    pool = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(clips, *first.frames.shape))
    mouth = np.empty((clips, *first.mouth_xy.shape), np.float32)
    pool[0], mouth[0] = first.frames, first.mouth_xy
    for i in tqdm(range(1, clips), desc="render frame pool", mininterval=5):
        # One-block clips carry no action by default: force one in half of them for variety.
        rng = np.random.default_rng(seed * 7919 + i)
        action = str(rng.choice(["", "", "smile", "nod", "raise_brows", "close_eyes", "surprised", "shake"]))
        clip = make_clip(seed + i, num_blocks=1, size=size, held_out=held_out, actions=[action])
        pool[i], mouth[i] = clip.frames, clip.mouth_xy
    pool.flush()
    np.save(mouth_path, mouth)
    done.write_text("ok")
    return np.load(path, mmap_mode="r"), mouth


def mouth_mask(mouth_xy: np.ndarray, size: int, y0: int, x0: int, crop: int) -> np.ndarray:
    """``[T, crop, crop]`` float: 1 inside the mouth box (``synth.MOUTH_BOX``) of each frame of a crop.

    Args:
        mouth_xy: ``[T, 2]`` mouth centres (fractions of the ``size``-pixel frame); ``y0, x0`` the crop's
            corner.
    """
    bx0, bx1, by0, by1 = MOUTH_BOX
    ys, xs = (np.arange(crop) + 0.5 + y0) / size, (np.arange(crop) + 0.5 + x0) / size
    inside_y = (ys[None] >= mouth_xy[:, 1:2] + by0) & (ys[None] <= mouth_xy[:, 1:2] + by1)
    inside_x = (xs[None] >= mouth_xy[:, 0:1] + bx0) & (xs[None] <= mouth_xy[:, 0:1] + bx1)
    return (inside_y[:, :, None] & inside_x[:, None, :]).astype(np.float32)


def to_video(frames: np.ndarray) -> torch.Tensor:
    """``[N, T, H, W, 3]`` uint8 -> ``[N, 3, T, H, W]`` float in [-1, 1]."""
    return (
        torch.from_numpy(np.array(frames)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    )  # a copy: pools are read-only


def random_crops(
    pool: np.ndarray,
    rng: np.random.Generator,
    batch: int,
    frames: int,
    crop: int,
    mouth: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Windows of random clips, times and places (8-pixel aligned).

    The autoencoder is fully convolutional, so small crops train it as well as whole frames at a
    fraction of the cost; crops lean to the frame centre, where the face is.

    Returns:
        ``[batch, 3, frames, crop, crop]`` video, and with ``mouth`` (the pool's ``[N, T, 2]`` mouth
        centres) its mouth mask ``[batch, 1, frames, crop, crop]``.
    """
    _, length, size = pool.shape[:3]
    out = np.empty((batch, frames, crop, crop, 3), np.uint8)
    masks = None if mouth is None else np.zeros((batch, 1, frames, crop, crop), np.float32)
    for b in range(batch):
        c = rng.integers(0, len(pool))
        t0 = rng.integers(0, length - frames + 1)
        centre = size / 2 + rng.normal(0, size / 8, size=2)
        y0, x0 = (np.clip(((centre - crop / 2) // 8) * 8, 0, size - crop)).astype(int)
        out[b] = pool[c, t0 : t0 + frames, y0 : y0 + crop, x0 : x0 + crop]
        if masks is not None:
            masks[b, 0] = mouth_mask(mouth[c, t0 : t0 + frames], size, y0, x0, crop)
    return to_video(out), (None if masks is None else torch.from_numpy(masks))


def reconstruction_loss(
    recon: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None, temporal: float = 0.0
) -> torch.Tensor:
    """L1 on pixels plus L1 on horizontal and vertical differences (``[N, 3, T, H, W]``); ``weights``
    ``[N, 1, T, H, W]`` make it a weighted mean. ``temporal`` adds that weight times an L1 on the
    frame-to-frame differences: four frames share one latent frame, and without it the decoder may
    spread their mean (a mouth opening and closing within 160 ms reads as half open)."""

    def mean(x: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        if w is None:
            return x.mean()
        w = w.expand_as(x)
        return (x * w).sum() / w.sum()

    err = recon - target
    l1 = mean(err.abs(), weights)
    dx = mean(err.diff(dim=-1).abs(), None if weights is None else weights[..., 1:])
    dy = mean(err.diff(dim=-2).abs(), None if weights is None else weights[..., 1:, :])
    loss = l1 + 0.5 * (dx + dy)
    if temporal:
        loss = loss + temporal * mean(err.diff(dim=2).abs(), None if weights is None else weights[:, :, 1:])
    return loss


def colour_loss(recon: torch.Tensor, target: torch.Tensor, cell: int = 8) -> torch.Tensor:
    """L1 between the mean colours of ``cell``x``cell`` patches (``[N, 3, T, H, W]``): the per-pixel
    loss lets a flat colour drift as long as edges line up (the first encoder dropped green this way);
    a patch's mean is what one latent cell must carry."""

    def pool(x: torch.Tensor) -> torch.Tensor:
        n, c, t, h, w = x.shape
        return F.avg_pool2d(x.transpose(1, 2).reshape(n * t, c, h, w), cell)

    return (pool(recon) - pool(target)).abs().mean()


def psnr(recon: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB of videos in [-1, 1] (peak-to-peak 2)."""
    mse = F.mse_loss(recon.float().clamp(-1, 1), target.float()).item()
    return 10 * np.log10(4.0 / max(mse, 1e-12))


@torch.no_grad()
def latent_statistics(
    model: TinyAutoencoder, pool: np.ndarray, batches: int = 16, batch: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of the raw latents over part of the pool."""
    model.latent_mean.zero_()
    model.latent_std.fill_(1.0)
    zs = []
    for i in range(batches):
        idx = np.arange(i * batch, (i + 1) * batch) % len(pool)
        zs.append(model.encode_frames(to_video(pool[idx])).float())
    z = torch.cat(zs).transpose(0, 1).flatten(1)
    return z.mean(1), z.std(1)


def within_group_deviations(video: torch.Tensor, mask: torch.Tensor, stride: int) -> torch.Tensor:
    """Pixels' deviations from their latent group's mean, where the mouth box covers the whole group.

    ``video`` ``[N, 3, T, H, W]`` with ``T = 1 + stride * n`` and ``mask`` ``[N, 1, T, H, W]``: frame 0
    is a group of its own (no deviation), the others form groups of ``stride``. Returns a flat vector.
    """
    n, c, _, h, w = video.shape
    groups = video[:, :, 1:].reshape(n, c, -1, stride, h, w)
    inside = (mask[:, :, 1:].reshape(n, 1, -1, stride, h, w) > 0).all(dim=3, keepdim=True)
    return (groups - groups.mean(dim=3, keepdim=True))[inside.expand_as(groups)]


def mouth_motion(
    recon: torch.Tensor, video: torch.Tensor, mask: torch.Tensor, stride: int
) -> tuple[float, float]:
    """How much of the mouth's movement *within* a latent frame survives: correlation of decoded and
    true within-group deviations in the mouth box, and their energy ratio (1, 1 = all of it). Lip-sync
    needs it: a mouth that keeps only each group's mean opening caps the metric at about 0.6."""
    true, decoded = within_group_deviations(video, mask, stride), within_group_deviations(recon, mask, stride)
    if true.numel() < 2 or true.std() < 1e-8 or decoded.std() < 1e-8:
        return 0.0, 0.0
    corr = torch.corrcoef(torch.stack([true, decoded]))[0, 1]
    return float(corr), float(decoded.std() / true.std())


@torch.no_grad()
def evaluate(
    model: TinyAutoencoder, pool: np.ndarray, mouth: np.ndarray, count: int = 16
) -> tuple[float, float, float]:
    """Encode+decode the first ``count`` clips of a (held-out) pool: mean PSNR (dB) over whole frames
    and over the mouth boxes (``mouth``: the pool's mouth centres), and the mouth motion kept within
    latent frames (``mouth_motion``'s correlation)."""
    whole, mouth_only, recons, videos, masks = [], [], [], [], []
    size = pool.shape[2]
    for i in range(0, min(count, len(pool)), 4):
        video = to_video(pool[i : i + 4])
        recon = model.decode_frames(model.encode_frames(video)).float().clamp(-1, 1)
        whole.append(psnr(recon, video))
        mask = torch.from_numpy(np.stack([mouth_mask(m, size, 0, 0, size) for m in mouth[i : i + 4]]))[
            :, None
        ]
        mse = ((recon - video).square() * mask).sum() / (3 * mask.sum())
        mouth_only.append(10 * np.log10(4.0 / max(mse.item(), 1e-12)))
        recons.append(recon)
        videos.append(video)
        masks.append(mask)
    motion, _ = mouth_motion(torch.cat(recons), torch.cat(videos), torch.cat(masks), model.temporal_stride)
    return float(np.mean(whole)), float(np.mean(mouth_only)), motion


def train(
    out: Path,
    steps: int,
    batch: int,
    lr: float,
    pool_clips: int,
    size: int,
    seed: int,
    minutes: float | None,
    latent_noise: float,
    threads: int | None,
    frames: int = 13,
    crop: int = 64,
    config: TAEConfig = NANO_TAE,
    val_every: int = 500,
    init: str = "he",
    start_from: Path | None = None,
    freeze_encoder: bool = False,
    export_only: bool = False,
    mouth_weight: float = 0.0,
    val_clips: int = 16,
    colour_weight: float = 0.0,
    temporal_weight: float = 0.0,
    anchor_weight: float = 0.0,
    new_encoder: bool = False,
) -> None:
    """Train (or resume) the autoencoder; writes ``out/tae.safetensors`` + ``tae.json`` when done.

    ``anchor_weight`` (with ``start_from``) keeps the encoder's latents near the starting encoder's (MSE
    in normalised units), so a diffusion model trained on the old latents needs only a short fine-tune
    on the new ones; the old latent statistics are kept, as with a frozen encoder."""
    if anchor_weight and start_from is None:
        raise ValueError("--anchor_weight keeps latents near a starting encoder's: give --start_from")
    if new_encoder and not anchor_weight:
        raise ValueError(
            "--new_encoder needs --start_from and --anchor_weight (it is distilled into the old latents)"
        )
    set_threads(threads)
    torch.manual_seed(seed)
    pool, pool_mouth = frame_pool(out, pool_clips, size, seed)
    val_pool, val_mouth = frame_pool(out, val_clips, size, 10_000_000 + seed, held_out=True)
    model = TinyAutoencoder(config).train()
    if init == "he":
        he_init(model)
    if start_from is not None:
        # Fine-tune from an exported autoencoder; with a frozen encoder the latent space stays the same,
        # so a diffusion model trained on it keeps working with the better decoder.
        loaded = TinyAutoencoder.from_file(start_from).train().requires_grad_(True)
        anchor = copy.deepcopy(loaded).eval().requires_grad_(False) if anchor_weight else None
        if new_encoder:
            # A fresh encoder of the requested widths under the trained decoder; the anchor distils it
            # into the old latent space first, so the decoder and the models on those latents still fit.
            config = replace(loaded.config, encoder_widths=config.encoder_widths)
            model = TinyAutoencoder(config).train()
            if init == "he":
                he_init(model.encoder)
            model.decoder.load_state_dict(loaded.decoder.state_dict())
            model.latent_mean.copy_(loaded.latent_mean)
            model.latent_std.copy_(loaded.latent_std)
        else:
            model, config = loaded, loaded.config
        stats = (model.latent_mean.clone(), model.latent_std.clone())
        if freeze_encoder:
            model.encoder.requires_grad_(False)
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0, betas=(0.9, 0.99)
    )
    ema = EMA(model, 0.999)
    # A frozen or anchored encoder keeps its latent statistics (what models trained on its latents
    # expect); a freely trained one gets them measured again at export.
    kept_stats = stats if start_from is not None and (freeze_encoder or anchor_weight) else None
    ckpt, log, budget = Checkpoint(out), MetricsLog(out / "metrics.jsonl"), Budget(minutes)
    step = 0
    if ckpt.exists():
        tensors, meta = ckpt.load()
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        ema.load({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        load_optimizer_state(opt, tensors)
        step = meta["step"]
        logger.info("resumed %s at step %d", out, step)
    if export_only:
        export(out, ema, pool, val_pool, val_mouth, config, kept_stats)
        return
    bar = tqdm(total=steps, initial=step, desc="autoencoder", mininterval=10)
    last_save = time.monotonic()
    while step < steps and not budget.exhausted():
        rng = np.random.default_rng((seed, step))  # a function of the step: resuming changes nothing
        torch.manual_seed(seed * 1_000_003 + step)
        video, mask = random_crops(pool, rng, batch, frames, crop, pool_mouth if mouth_weight else None)
        weights = None if mask is None else 1 + mouth_weight * mask
        if rng.random() < 0.5:
            video = video.flip(-1)  # mirror images: free variety
            weights = None if weights is None else weights.flip(-1)
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, lr, 200, steps)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z = model.encode_frames(video)
            z_noisy = z + latent_noise * z.detach().float().std() * torch.randn_like(z)
            recon = model.decode_frames(z_noisy, clamp=False)
            loss = (
                reconstruction_loss(recon.float(), video, weights, temporal_weight)
                + 1e-4 * z.float().square().mean()
            )
            if colour_weight:
                loss = loss + colour_weight * colour_loss(recon.float(), video)
            if anchor_weight:
                with torch.no_grad():
                    z_anchor = anchor.encode_frames(video)
                loss = loss + anchor_weight * F.mse_loss(z.float(), z_anchor.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model, step)
        step += 1
        bar.update(1)
        if step % 25 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            log.write(step=step, loss=loss.item(), lr=opt.param_groups[0]["lr"])
        if step % val_every == 0 or step == steps:
            ev = TinyAutoencoder(config)
            ev.load_state_dict(ema.state_dict(), strict=False)
            val_psnr, val_mouth_psnr, val_motion = evaluate(ev.eval(), val_pool, val_mouth)
            log.write(
                step=step, val_psnr=val_psnr, val_mouth_psnr=val_mouth_psnr, val_mouth_motion=val_motion
            )
        if time.monotonic() - last_save > 300 or step == steps:
            _save(ckpt, model, ema, opt, step)
            last_save = time.monotonic()
    bar.close()
    _save(ckpt, model, ema, opt, step)
    if step >= steps:
        export(out, ema, pool, val_pool, val_mouth, config, kept_stats)


def _save(ckpt: Checkpoint, model: TinyAutoencoder, ema: EMA, opt: torch.optim.Optimizer, step: int) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    tensors.update(optimizer_state(opt))
    ckpt.save(tensors, {"step": step})


def export(
    out: Path,
    ema: EMA,
    pool: np.ndarray,
    val_pool: np.ndarray,
    val_mouth: np.ndarray,
    config: TAEConfig,
    stats: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """Write the EMA weights with latent statistics (measured, or kept from the encoder it was
    fine-tuned from), and the held-out PSNR (whole frames and mouth boxes)."""
    model = TinyAutoencoder(config)
    model.load_state_dict(ema.state_dict(), strict=False)
    model.eval()
    mean, std = stats if stats is not None else latent_statistics(model, pool)
    model.latent_mean.copy_(mean)
    model.latent_std.copy_(std)
    score, mouth_score, motion = evaluate(model, val_pool, val_mouth)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "tae.safetensors"))
    (out / "tae.json").write_text(
        json.dumps(
            {
                "config": config.to_dict(),
                "val_psnr_db": score,
                "val_mouth_psnr_db": mouth_score,
                "val_mouth_motion": motion,
            },
            indent=1,
        )
    )
    logger.info(
        "autoencoder exported to %s: held-out PSNR %.2f dB (mouth %.2f dB), mouth motion within "
        "latent frames %.3f",
        out,
        score,
        mouth_score,
        motion,
    )


def report_main(argv: list[str] | None = None) -> None:
    """``python -m liveact.train autoencoder-report TAE [TAE ...]``: the held-out scores of exported
    autoencoders on the same clips as training's validation (JSON lines)."""
    p = argparse.ArgumentParser(
        prog="python -m liveact.train autoencoder-report", description=report_main.__doc__
    )
    p.add_argument("tae", type=Path, nargs="+", help="exported tae.safetensors files")
    p.add_argument(
        "--cache",
        type=Path,
        default=Path("runs/autoencoder_report"),
        help="where the clips are rendered once",
    )
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0, help="the training run's --seed (its held-out pool)")
    a = p.parse_args(argv)
    a.cache.mkdir(parents=True, exist_ok=True)
    pool, mouth = frame_pool(a.cache, a.clips, a.size, 10_000_000 + a.seed, held_out=True)
    for path in a.tae:
        whole, mouth_psnr, motion = evaluate(TinyAutoencoder.from_file(path), pool, mouth, a.clips)
        print(
            json.dumps(
                {
                    "tae": str(path),
                    "val_psnr_db": round(whole, 2),
                    "val_mouth_psnr_db": round(mouth_psnr, 2),
                    "val_mouth_motion": round(motion, 3),
                }
            ),
            flush=True,
        )


def main(argv: list[str] | None = None) -> None:
    """``python -m liveact.train autoencoder``."""
    p = argparse.ArgumentParser(
        prog="python -m liveact.train autoencoder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, required=True, help="run folder (resumed if it holds a checkpoint)")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=13, help="frames per training window (1 + 4n)")
    p.add_argument("--crop", type=int, default=64, help="training crop size (multiple of 8)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--pool", type=int, default=1200, help="rendered one-block clips to sample from")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latent_noise", type=float, default=0.1)
    p.add_argument("--minutes", type=float, default=None, help="stop (resumably) after this wall time")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--val_every", type=int, default=500)
    p.add_argument("--init", choices=("he", "default"), default="he")
    p.add_argument("--start_from", type=Path, default=None, help="fine-tune this exported autoencoder")
    p.add_argument(
        "--freeze_encoder", action="store_true", help="train the decoder only (keeps the latent space)"
    )
    p.add_argument("--mouth_weight", type=float, default=0.0, help="extra loss weight on the mouth's pixels")
    p.add_argument(
        "--colour_weight",
        type=float,
        default=0.0,
        help="weight of an L1 on 8x8 patch mean colours (keeps flat colours, e.g. green)",
    )
    p.add_argument(
        "--temporal_weight",
        type=float,
        default=0.0,
        help="weight of an L1 on frame-to-frame differences (mouth-weighted like the pixels)",
    )
    p.add_argument(
        "--anchor_weight",
        type=float,
        default=0.0,
        help="with --start_from: keep latents near the starting encoder's (models on them stay close)",
    )
    p.add_argument(
        "--new_encoder",
        action="store_true",
        help="with --start_from and --anchor_weight: a fresh encoder of --encoder_widths under its decoder",
    )
    p.add_argument("--val_clips", type=int, default=16, help="held-out clips for the PSNRs")
    p.add_argument("--export_only", action="store_true", help="export the run's current EMA weights and stop")
    p.add_argument("--encoder_widths", type=int, nargs=3, default=list(NANO_TAE.encoder_widths))
    p.add_argument("--decoder_widths", type=int, nargs=4, default=list(NANO_TAE.decoder_widths))
    a = p.parse_args(argv)
    config = TAEConfig(encoder_widths=tuple(a.encoder_widths), decoder_widths=tuple(a.decoder_widths))
    train(
        a.out,
        a.steps,
        a.batch,
        a.lr,
        a.pool,
        a.size,
        a.seed,
        a.minutes,
        a.latent_noise,
        a.threads,
        a.frames,
        a.crop,
        config,
        a.val_every,
        a.init,
        a.start_from,
        a.freeze_encoder,
        a.export_only,
        a.mouth_weight,
        a.val_clips,
        a.colour_weight,
        a.temporal_weight,
        a.anchor_weight,
        a.new_encoder,
    )
