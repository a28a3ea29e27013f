"""Stage 2: distil the stage-1 model into the 3-step sampler, on its own rollouts with the ConvKV memory.

    python -m liveact.train stage2 --teacher runs/stage1/model --data runs/data --val runs/data_val \
        --out runs/stage2 --objective dmd --steps 1500

The student starts from the teacher and is trained on ``rollout``s: the production 3-step schedule,
one memory per step (Neighbor Forcing), sink / ConvKV long-term / short-term slots with RoPE reset,
the ConvKV taps trained jointly, clips long enough for the memory to compress.

Objectives:
- ``dmd`` (the paper's): Distribution Matching Distillation. The student's rollout output ``x`` is
  noised to a random level; the frozen teacher (with audio guidance) gives the "real" score, a
  "fake" copy trained online on student samples gives the "fake" score, and ``x`` moves along their
  difference (normalised as in DMD). Each iteration exits at a random step of the 3 so every step is
  trained; the fake model takes ``fake_updates`` flow-matching steps per student step (DMD2's TTUR).
- ``regress``: the documented fallback. Every step's clean prediction along the student's own
  rollout regresses to the ground-truth latents of the clip.
"""

from __future__ import annotations

import argparse
import copy
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from liveact.components.nano import MiniLMTextEncoder
from liveact.config import SamplerConfig
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
from liveact.train.forcing import Batch, forcing_loss, sample_sigmas, weighted_mse
from liveact.train.rollout import generator_noise, rollout
from liveact.train.stage1 import TextBank, batch_mouth_weights, make_batch

logger = logging.getLogger(__name__)

OBJECTIVES = ("dmd", "regress")


def student_schedule() -> SamplerConfig:
    """The production 3-step schedule; Nano runs audio attention at every step."""
    return replace(SamplerConfig(), skip_audio_steps=())


def guided_x0(
    model: LiveActTransformer,
    batch: Batch,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    generator: torch.Generator,
    audio_cfg: float,
) -> torch.Tensor:
    """The model's clean estimate of the noised clip ``(1 - s) x + s eps``, with audio guidance.

    Runs the clip's blocks through a Neighbor-Forcing memory at one shared noise level (the stage-1
    forward). Returns ``[B, C, F, h, w]``.
    """
    noise = [
        torch.randn(x[:, :, : (6 if k == 0 else 8)].shape, generator=generator)
        for k in range(len(batch.texts))
    ]
    cond = _predict_x0(model, replace(batch, latents=x), sigmas, noise)
    if audio_cfg == 1.0:
        return cond
    null = _predict_x0(model, replace(batch, latents=x, audio=torch.zeros_like(batch.audio)), sigmas, noise)
    return null + audio_cfg * (cond - null)


def _predict_x0(
    model: LiveActTransformer, batch: Batch, sigmas: torch.Tensor, noise: list[torch.Tensor]
) -> torch.Tensor:
    """Clean predictions of every block (``forcing_loss``'s forward, returning x0 instead of a loss)."""
    preds: list[torch.Tensor] = []
    forcing_loss(model, batch, "neighbor", torch.Generator(), sigmas=sigmas, noise=noise, collect=preds)
    return torch.cat(preds, dim=2)


def dmd_step(
    student: LiveActTransformer,
    teacher: LiveActTransformer,
    fake: LiveActTransformer,
    batch: Batch,
    generator: torch.Generator,
    exit_step: int,
    audio_cfg: float,
) -> tuple[torch.Tensor, dict]:
    """Student loss of one DMD iteration (``x`` moves along ``fake - real``)."""
    schedule = student_schedule()
    out = rollout(student, batch, schedule, generator_noise(generator), grad_steps={exit_step})
    x = out.video(exit_step)
    b = x.shape[0]
    sigma = sample_sigmas(b, len(batch.texts), "neighbor", 1.0, generator).clamp(0.02, 0.98)
    with torch.no_grad():
        real = guided_x0(teacher, batch, x.detach(), sigma, generator, audio_cfg)
        fake_x0 = guided_x0(fake, batch, x.detach(), sigma, generator, 1.0)
        scale = (x.detach() - real).abs().mean(dim=(1, 2, 3, 4), keepdim=True).clamp_min(1e-4)
        grad = (fake_x0 - real) / scale
        target = (x.detach() - grad).detach()
    loss = 0.5 * F.mse_loss(x, target)
    return loss, {"dmd_grad": float(grad.abs().mean()), "x_std": float(x.detach().std())}


def regress_step(
    student: LiveActTransformer, batch: Batch, generator: torch.Generator, mouth_weight: float = 0.0
) -> tuple[torch.Tensor, dict]:
    """Every step's prediction along the student's rollout regresses to the ground truth (the mouth's
    latent cells weighted ``1 + mouth_weight``)."""
    schedule = student_schedule()
    out = rollout(student, batch, schedule, generator_noise(generator))
    truth = batch.latents.float()
    weights = batch_mouth_weights(batch, mouth_weight, stride=schedule.vae_stride[0])
    losses = torch.stack([weighted_mse(out.video(i), truth, weights) for i in range(schedule.num_steps)])
    return losses.mean(), {f"step{i}": float(v) for i, v in enumerate(losses.detach())}


@torch.no_grad()
def rollout_error(
    model: LiveActTransformer, val: ClipSet, texts: TextBank, clips: int = 8, blocks: int = 3
) -> float:
    """Mean squared error of the 3-step rollout's output against the held-out clips' latents (fixed noise):
    comparable across objectives and over time."""
    patch, stride = model.config.patch_size[1], SamplerConfig().vae_stride[0]
    idx = np.arange(min(clips, len(val)))
    batch = make_batch(val, idx, texts, np.random.default_rng(0), patch, stride, blocks=blocks)
    out = rollout(
        model, batch, student_schedule(), generator_noise(torch.Generator().manual_seed(0)), grad_steps=set()
    )
    return float(F.mse_loss(out.video(), batch.latents.float()))


def train(args: argparse.Namespace) -> None:
    """Train or resume (see ``main``)."""
    set_threads(args.threads)
    data, val = ClipSet.load(args.data, args.limit), ClipSet.load(args.val, 64)
    student = (
        LiveActTransformer.from_pretrained(args.teacher, torch_dtype=torch.float32)
        .train()
        .requires_grad_(True)
    )
    config = student.config
    texts = TextBank(MiniLMTextEncoder(max_tokens=config.text_len))
    teacher = fake = None
    params = list(student.parameters())
    opt = torch.optim.AdamW(
        params, lr=args.lr, weight_decay=0.0, betas=(0.0 if args.objective == "dmd" else 0.9, 0.99)
    )
    fake_opt = None
    if args.objective == "dmd":
        teacher = LiveActTransformer.from_pretrained(args.teacher, torch_dtype=torch.float32).eval()
        fake = copy.deepcopy(student).train()
        fake_opt = torch.optim.AdamW(fake.parameters(), lr=args.fake_lr, weight_decay=0.0, betas=(0.0, 0.99))
    ema = EMA(student, args.ema)
    out = args.out
    ckpt, log, budget = Checkpoint(out), MetricsLog(out / "metrics.jsonl"), Budget(args.minutes)
    step = 0
    if ckpt.exists():
        tensors, meta = ckpt.load()
        student.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("student.")})
        ema.load({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        load_optimizer_state(opt, {k[2:]: v for k, v in tensors.items() if k.startswith("s.opt.")})
        if fake is not None:
            fake.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("fake.")})
            load_optimizer_state(fake_opt, {k[2:]: v for k, v in tensors.items() if k.startswith("f.opt.")})
        step = meta["step"]
        logger.info("resumed %s at step %d", out, step)
    else:
        log.write(
            event="start",
            objective=args.objective,
            teacher=str(args.teacher),
            clips=len(data),
            mouth_weight=args.mouth_weight,
        )
    patch, stride = config.patch_size[1], SamplerConfig().vae_stride[0]
    bar = tqdm(total=args.steps, initial=step, desc=f"stage2 {args.objective}", mininterval=10)
    last_save, started = time.monotonic(), time.monotonic()
    while step < args.steps and not budget.exhausted():
        rng = np.random.default_rng((args.seed, step))
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        idx = rng.integers(0, len(data), size=args.batch)
        batch = make_batch(data, idx, texts, rng, patch, stride, blocks=args.blocks)
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, args.lr, args.warmup, args.steps)
        stats: dict = {}
        if args.objective == "dmd":
            for _ in range(args.fake_updates):
                with torch.no_grad():
                    sample = rollout(
                        student, batch, student_schedule(), generator_noise(generator), grad_steps=set()
                    ).video(int(rng.integers(3)))
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    fake_loss, _ = forcing_loss(fake, replace(batch, latents=sample), "neighbor", generator)
                fake_opt.zero_grad(set_to_none=True)
                fake_loss.backward()
                torch.nn.utils.clip_grad_norm_(fake.parameters(), 1.0)
                fake_opt.step()
            stats["fake_loss"] = float(fake_loss.detach())
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss, extra = dmd_step(
                    student, teacher, fake, batch, generator, int(rng.integers(3)), args.audio_cfg
                )
        else:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss, extra = regress_step(student, batch, generator, args.mouth_weight)
        stats.update(extra)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update(student, step)
        step += 1
        bar.update(1)
        if step % args.log_every == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            log.write(
                step=step, loss=loss.item(), grad=float(grad), seconds=time.monotonic() - started, **stats
            )
        if step % args.val_every == 0 or step == args.steps:
            ev = LiveActTransformer(config)
            ev.load_state_dict(ema.state_dict())
            log.write(step=step, val_rollout_mse=rollout_error(ev.eval(), val, texts))
        if time.monotonic() - last_save > 60 * args.save_minutes or step == args.steps:
            _save(ckpt, student, ema, opt, fake, fake_opt, step)
            last_save = time.monotonic()
    bar.close()
    _save(ckpt, student, ema, opt, fake, fake_opt, step)
    model = LiveActTransformer(config)
    model.load_state_dict(ema.state_dict())
    save_transformer(model.eval(), out / "model")


def _save(
    ckpt: Checkpoint,
    student: LiveActTransformer,
    ema: EMA,
    opt: torch.optim.Optimizer,
    fake: LiveActTransformer | None,
    fake_opt: torch.optim.Optimizer | None,
    step: int,
) -> None:
    tensors = {f"student.{k}": v for k, v in student.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    tensors.update({f"s.{k}": v for k, v in optimizer_state(opt).items()})
    if fake is not None:
        tensors.update({f"fake.{k}": v for k, v in fake.state_dict().items()})
        tensors.update({f"f.{k}": v for k, v in optimizer_state(fake_opt).items()})
    ckpt.save(tensors, {"step": step})


def main(argv: list[str] | None = None) -> None:
    """``python -m liveact.train stage2``."""
    p = argparse.ArgumentParser(
        prog="python -m liveact.train stage2",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--teacher", type=Path, required=True, help="stage-1 model folder (its EMA export)")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--val", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--objective", choices=OBJECTIVES, default="dmd")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument(
        "--blocks", type=int, default=3, help="blocks per rollout (>= 3 exercises the ConvKV memory)"
    )
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--fake_lr", type=float, default=2e-5)
    p.add_argument("--fake_updates", type=int, default=2, help="fake-score updates per student update (TTUR)")
    p.add_argument("--audio_cfg", type=float, default=2.0, help="audio guidance of the real (teacher) score")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument(
        "--mouth_weight",
        type=float,
        default=0.0,
        help="regress: extra weight on the mouth's latent cells (needs mouth_xy in the shards)",
    )
    p.add_argument("--ema", type=float, default=0.99)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--log_every", type=int, default=5)
    p.add_argument("--val_every", type=int, default=100)
    p.add_argument("--save_minutes", type=float, default=5.0)
    p.add_argument("--minutes", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    train(p.parse_args(argv))
