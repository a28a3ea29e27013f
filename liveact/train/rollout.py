"""Differentiable autoregressive rollouts of the few-step sampler, with exactly the inference memory.

``rollout`` is ``NeighborForcingSampler.stream`` for a batch during training: one differentiable
``KVMemory`` per denoising step (Neighbor Forcing), the same schedule, the same noise procedure (a fresh
draw for the block's initial latent, one more after every step, the last multiplied by ``sigma = 0``),
the same audio windows and block-wise prompts, and the ConvKV compression from the third block on.
Gradients reach the model through the chosen steps and through the keys/values earlier blocks wrote
at those steps (the ConvKV taps included); the latent handed from one step to the next is detached
(gradient truncation, as in Self-Forcing).

With batch 1 and the sampler's generator, it returns exactly what the sampler yields (tested).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from liveact.config import MemoryConfig, SamplerConfig
from liveact.model import CrossContext, LiveActTransformer
from liveact.sampler import block_span
from liveact.train.forcing import Batch, block_audio_tokens

NoiseFn = Callable[[tuple[int, ...]], torch.Tensor]


@dataclass
class Rollout:
    """What a rollout produced.

    ``x0[k][i]``: block ``k``'s clean prediction after step ``i`` ``[B, C, T, h, w]`` (with gradient on the
    steps in ``grad_steps``); ``final[k]``: the block's output (the last step's prediction).
    """

    x0: list[list[torch.Tensor]]

    @property
    def final(self) -> list[torch.Tensor]:
        """Each block's output."""
        return [steps[-1] for steps in self.x0]

    def video(self, step: int = -1) -> torch.Tensor:
        """All blocks' predictions after ``step`` concatenated in time ``[B, C, F, h, w]``."""
        return torch.cat([steps[step] for steps in self.x0], dim=2)


def rollout(
    model: LiveActTransformer,
    batch: Batch,
    schedule: SamplerConfig,
    noise: NoiseFn,
    grad_steps: set[int] | None = None,
    memory_config: MemoryConfig | None = None,
    blocks: int | None = None,
    null_audio: bool = False,
) -> Rollout:
    """Generate ``blocks`` blocks for every sample of ``batch`` (its latents are only read for the size).

    Args:
        schedule: the sampler's timesteps and audio-skipping steps (no CFG in training rollouts).
        noise: ``noise(shape)`` returns standard normal noise (the sampler's draws).
        grad_steps: steps run with autograd (default: all); the others run under ``no_grad``.
        null_audio: condition on null audio (zeros through the projection), e.g. for a CFG branch.
    """
    memory_config = memory_config or MemoryConfig()
    stride = schedule.vae_stride[0]
    b, c, _, lh, lw = batch.latents.shape
    ph, pw = model.config.patch_size[1:]
    steps = schedule.num_steps
    grad_steps = set(range(steps)) if grad_steps is None else grad_steps
    memories = [
        model.new_memory(memory_config, (lh // ph) * (lw // pw), batch=b, differentiable=True)
        for _ in range(steps)
    ]
    t_all = [torch.full((b,), t, dtype=torch.float32) for t in schedule.timesteps]
    sigmas = [t / schedule.num_train_timesteps for t in t_all]
    image_kv = model.embed_image(batch.image)
    audio_rows = torch.zeros_like(batch.audio) if null_audio else batch.audio
    blocks = blocks or len(batch.texts)
    out: list[list[torch.Tensor]] = []
    for k in range(blocks):
        span = block_span(k, memory_config, stride)
        y = batch.y[:, :, span.y_start : span.y_start + span.frames]
        context = CrossContext(text=model.embed_text(batch.texts[k]), image=image_kv)
        audio = block_audio_tokens(model, audio_rows, span, stride)
        silent = 1 if span.first_latent == 0 else 0
        shape = (b, c, span.frames, lh, lw)
        latent = noise(shape)
        preds = []
        for i in range(steps):
            with torch.set_grad_enabled(torch.is_grad_enabled() and i in grad_steps):
                memories[i].begin_block(k)
                v = model(
                    latent,
                    y,
                    t_all[i],
                    context,
                    memories[i],
                    audio=None if i in schedule.skip_audio_steps else audio,
                    silent_frames=silent,
                )
                x0 = latent - sigmas[i].view(b, 1, 1, 1, 1) * v.float()
            preds.append(x0)
            s_next = sigmas[i + 1].view(b, 1, 1, 1, 1)
            latent = (1 - s_next) * x0.detach() + s_next * noise(shape)
        out.append(preds)
    return Rollout(out)


def generator_noise(generator: torch.Generator, device: torch.device | str = "cpu") -> NoiseFn:
    """Noise drawn like the sampler's: float32 standard normal from ``generator``."""

    def draw(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=generator, dtype=torch.float32, device=generator.device).to(
            device
        )

    return draw
