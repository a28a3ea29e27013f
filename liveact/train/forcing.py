"""Training objectives of the block-causal DiT: Neighbor, Diffusion and Teacher Forcing.

A training clip is the first ``n`` blocks of a video (6 latent frames, then 8 each). Blocks run in
order through the model against a differentiable ``KVMemory`` with the inference layout, so block
``k`` sees exactly what it sees at inference: sink, ConvKV long-term memory (from the third block on),
short-term frames and itself, with RoPE reset. Each block is noised to ``sigma`` and the model predicts
the flow velocity ``eps - x0`` (``x_sigma = (1 - sigma) x0 + sigma eps``, as the sampler assumes).

- ``neighbor`` (LiveAct §2.2): all blocks of a clip share one ``sigma``; each block attends to its
  neighbours' keys/values computed at that same noise level, as the per-step memories of the sampler.
- ``diffusion``: every block draws its own ``sigma`` (Diffusion Forcing).
- ``teacher``: context blocks are clean: after a block's noisy pass, a clean pass (``sigma = 0``)
  overwrites its memory slots (Teacher Forcing; sampled with a clean-context memory).

Conditioning dropout (text, audio) trains the unconditional branches used for guidance. Optional
per-cell loss weights (``mouth_weights``) make the few latent cells that carry the lip-sync count:
the mouth is ~4% of a 128x128 frame, so unweighted it is a small share of the loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from liveact.components.nano import latent_tokens
from liveact.config import MemoryConfig, SamplerConfig
from liveact.model import CrossContext, LiveActTransformer
from liveact.pipeline import first_frame_mask
from liveact.sampler import audio_rows, block_span
from liveact.train.synth import MOUTH_BOX

Mode = Literal["neighbor", "diffusion", "teacher"]
MODES: tuple[str, ...] = ("neighbor", "diffusion", "teacher")


@dataclass
class Batch:
    """One training batch.

    Attributes:
        latents: ``[B, C, F, h, w]`` clean video latents (``F`` covers ``num_blocks`` blocks).
        y: ``[B, C_y, F_y, h, w]`` mask + conditioning latent (first block and one later block).
        image: ``[B, Li, clip_dim]`` image tokens (the reference latent in patches).
        audio: ``[B, S, layers, channels]`` audio rows, one per video frame (zeros where dropped).
        texts: ``texts[k][b]``: ``[L, text_dim]`` prompt features of block ``k`` of sample ``b``.
        mouth_xy: ``[B, S, 2]`` the mouth's centre per video frame (fractions of the frame), if known.
    """

    latents: torch.Tensor
    y: torch.Tensor
    image: torch.Tensor
    audio: torch.Tensor
    texts: list[list[torch.Tensor]]
    mouth_xy: torch.Tensor | None = None

    @property
    def size(self) -> int:
        """Samples."""
        return self.latents.shape[0]


def conditioning(cond_latent: torch.Tensor, temporal_stride: int) -> torch.Tensor:
    """``[B, C, F, h, w]`` conditioning latents -> ``y`` ``[B, stride + C, F, h, w]`` with the I2V mask."""
    b, _, f, h, w = cond_latent.shape
    mask = first_frame_mask(f, temporal_stride, h, w).to(cond_latent).expand(b, -1, -1, -1, -1)
    return torch.cat([mask, cond_latent], dim=1)


def image_tokens(cond_latent: torch.Tensor, patch: int) -> torch.Tensor:
    """The reference image's tokens from latent 0 of the conditioning latent ``[B, C, F, h, w]``."""
    return latent_tokens(cond_latent[:, :, 0], patch)


def mouth_weights(
    mouth_xy: torch.Tensor,
    latent_frames: int,
    grid: tuple[int, int],
    stride: int,
    weight: float,
    base: float = 1.0,
) -> torch.Tensor:
    """Per-latent-cell loss weights ``base + weight * m``, ``m`` the share of a cell inside the mouth box.

    Args:
        mouth_xy: ``[B, S, 2]`` mouth centre (x, y) per video frame, fractions of the frame.
        latent_frames: ``F``; latent 0 is video frame 0, latent ``j`` covers frames ``stride (j-1) + 1 ..
            stride j`` (where the mouth is taken as its mean position).
        grid: ``(h, w)`` latent cells.

    Returns:
        ``[B, 1, F, h, w]``.
    """
    centres = [mouth_xy[:, 0]] + [
        mouth_xy[:, 1 + stride * (j - 1) : 1 + stride * j].mean(1) for j in range(1, latent_frames)
    ]
    c = torch.stack(centres, 1).float()  # [B, F, 2]
    x0, x1, y0, y1 = MOUTH_BOX

    def overlap(lo: torch.Tensor, hi: torch.Tensor, n: int) -> torch.Tensor:
        """``[B, F, n]``: the share of each of ``n`` cells along an axis inside ``[lo, hi]``."""
        edges = torch.arange(n, dtype=torch.float32) / n
        return (torch.minimum(hi[..., None], edges + 1 / n) - torch.maximum(lo[..., None], edges)).clamp(
            min=0
        ) * n

    ox = overlap(c[..., 0] + x0, c[..., 0] + x1, grid[1])
    oy = overlap(c[..., 1] + y0, c[..., 1] + y1, grid[0])
    return base + weight * (oy[..., :, None] * ox[..., None, :])[:, None]


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error; with ``weights`` (broadcast to ``pred``) the weighted mean."""
    if weights is None:
        return F.mse_loss(pred, target)
    w = weights.expand_as(pred)
    return ((pred - target).square() * w).sum() / w.sum().clamp(min=1e-8)


def sample_sigmas(
    batch: int, blocks: int, mode: Mode, shift: float, generator: torch.Generator
) -> torch.Tensor:
    """``[blocks, B]`` noise levels: shifted uniform, shared across blocks unless
    ``diffusion``/``teacher``."""
    shape = (blocks, batch) if mode != "neighbor" else (1, batch)
    u = torch.rand(shape, generator=generator)
    sigma = shift * u / (1 + (shift - 1) * u)
    return sigma.expand(blocks, batch)


def block_audio_tokens(
    model: LiveActTransformer, audio: torch.Tensor, span: object, stride: int
) -> torch.Tensor:
    """Audio tokens ``[B, T, N, output_dim]`` of one block from rows ``[B, S, layers, channels]``."""
    first, later = audio_rows(span, audio.shape[1], model.config.audio_window, stride, device=audio.device)
    return model.audio_tokens(None if first is None else audio[:, first], audio[:, later])


def forcing_loss(
    model: LiveActTransformer,
    batch: Batch,
    mode: Mode,
    generator: torch.Generator,
    memory_config: MemoryConfig | None = None,
    schedule: SamplerConfig | None = None,
    shift: float = 3.0,
    sigmas: torch.Tensor | None = None,
    noise: list[torch.Tensor] | None = None,
    collect: list | None = None,
    loss_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[float]]:
    """Flow-matching loss of one batch of clips under a forcing mode.

    Args:
        sigmas: ``[blocks, B]`` to fix the noise levels (validation); drawn when None.
        noise: per-block noise to fix it (validation); drawn from ``generator`` when None.
        collect: if given, each block's clean prediction ``x_t - sigma v`` ``[B, C, T, h, w]`` is appended.
        loss_weights: ``[B, 1, F, h, w]`` per-cell weights over the whole clip (``mouth_weights``).

    Returns:
        the mean loss over blocks, and each block's loss (floats) for logging.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    memory_config, schedule = memory_config or MemoryConfig(), schedule or SamplerConfig()
    stride = schedule.vae_stride[0]
    b, _, total_latents, lh, lw = batch.latents.shape
    ph, pw = model.config.patch_size[1:]
    blocks = _blocks_in(total_latents, memory_config)
    if sigmas is None:
        sigmas = sample_sigmas(b, blocks, mode, shift, generator)
    memory = model.new_memory(memory_config, (lh // ph) * (lw // pw), batch=b, differentiable=True)
    image_kv = model.embed_image(batch.image)
    losses = []
    for k in range(blocks):
        span = block_span(k, memory_config, stride)
        x0 = batch.latents[:, :, span.first_latent : span.first_latent + span.frames].float()
        y = batch.y[:, :, span.y_start : span.y_start + span.frames]
        eps = noise[k] if noise is not None else torch.randn(x0.shape, generator=generator)
        sigma = sigmas[k].view(b, 1, 1, 1, 1)
        x_t = (1 - sigma) * x0 + sigma * eps
        context = CrossContext(text=model.embed_text(batch.texts[k]), image=image_kv)
        audio = block_audio_tokens(model, batch.audio, span, stride)
        silent = 1 if span.first_latent == 0 else 0
        memory.begin_block(k)
        v = model(
            x_t,
            y,
            sigmas[k] * schedule.num_train_timesteps,
            context,
            memory,
            audio=audio,
            silent_frames=silent,
        )
        weights = (
            None
            if loss_weights is None
            else loss_weights[:, :, span.first_latent : span.first_latent + span.frames]
        )
        losses.append(weighted_mse(v.float(), eps - x0, weights))
        if collect is not None:
            collect.append(x_t - sigma * v.float())
        if mode == "teacher" and k < blocks - 1:
            # Overwrite this block's memory slots with its clean keys/values for the blocks after it.
            memory.begin_block(k)
            model(x0, y, torch.zeros(b), context, memory, audio=audio, silent_frames=silent)
    loss = torch.stack(losses).mean()
    return loss, [float(x.detach()) for x in losses]


def _blocks_in(latent_frames: int, memory: MemoryConfig) -> int:
    """Whole blocks in ``latent_frames`` (first block ``first_block_frames``, then ``block_frames``)."""
    if latent_frames < memory.first_block_frames:
        raise ValueError(
            f"a clip needs at least {memory.first_block_frames} latent frames, got {latent_frames}"
        )
    later = latent_frames - memory.first_block_frames
    if later % memory.block_frames:
        raise ValueError(f"{latent_frames} latent frames is not a whole number of blocks")
    return 1 + later // memory.block_frames
