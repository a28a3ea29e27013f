"""Neighbor Forcing streaming sampler.

The numbered loop, one latent block at a time:

1. reset one ``KVMemory`` per denoising step (and one per CFG step for the null-audio pass);
2. per block ``k``: draw the initial noise, pick the prompt (first matching edit range wins) and
   the block's audio tokens;
3. per step ``i``: ``v = model(latent, t_i, memory_i)`` (audio skipped on ``skip_audio_steps``),
   audio CFG on ``cfg_steps``, ``x0 = latent - sigma_i v``, re-noise to ``sigma_{i+1}`` with fresh
   noise (the last draw is multiplied by ``sigma = 0``);
4. yield ``x0`` of the block.

Because every step has its own memory, block ``k`` at step ``i`` attends to its neighbours'
keys/values computed at the same noise level (Neighbor Forcing). Memory size is fixed: hours of
video take the same memory as one block.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import torch

from liveact.config import MemoryConfig, SamplerConfig
from liveact.memory import KVMemory
from liveact.model import CrossContext, LiveActTransformer

Edit = tuple[tuple[int, int], torch.Tensor]


@dataclass
class Conditions:
    """Everything a clip is conditioned on.

    Attributes:
        text: ``[L, text_dim]`` text-encoder output of the main prompt, unpadded.
        clip: ``[1, Li, clip_dim]`` CLIP penultimate-layer features of the reference image.
        y: ``[1, C_y, F, lh, lw]`` mask channels + VAE latent of (image, zeros...), ``F`` covering
            the first block and one later block (14 latent frames with the default layout).
        audio: ``[S, layers, channels]`` audio-encoder hidden states, one row per video frame.
        edits: ``[((first_block, last_block), text), ...]`` inclusive ranges; first match wins.
        audio_source: streaming audio (``--steam_audio``): ``f(start, end)`` returns the hidden
            states ``[S', layers, channels]`` of a slice whose row 0 is video frame ``start``,
            encoded on that slice alone. When set it replaces ``audio`` for every block.
    """

    text: torch.Tensor
    clip: torch.Tensor
    y: torch.Tensor
    audio: torch.Tensor
    edits: list[Edit] = field(default_factory=list)
    audio_source: Callable[[int, int], torch.Tensor] | None = None

    def prompt_for(self, block: int) -> int:
        """Index of the prompt used by ``block``: 0 = main, ``j + 1`` = ``edits[j]``."""
        for j, ((first, last), _) in enumerate(self.edits):
            if first <= block <= last:
                return j + 1
        return 0

    def text_of(self, prompt: int) -> torch.Tensor:
        """Text tensor of prompt index ``prompt`` (see ``prompt_for``)."""
        return self.text if prompt == 0 else self.edits[prompt - 1][1]


@dataclass(frozen=True)
class BlockSpan:
    """Where block ``index`` sits in the clip.

    ``first_latent``: its first latent frame in the whole video; ``frames``: its latent frames;
    ``y_start``: its first frame in the conditioning ``y``; ``first_video_frame``: the video frame
    its first latent decodes to.
    """

    index: int
    first_latent: int
    frames: int
    y_start: int
    first_video_frame: int

    def video_frames(self, temporal_stride: int) -> int:
        """Video frames the block decodes to: latent 0 gives one frame, every other latent ``stride``."""
        return self.frames * temporal_stride - (temporal_stride - 1 if self.first_latent == 0 else 0)


def block_span(index: int, memory: MemoryConfig, temporal_stride: int) -> BlockSpan:
    """Geometry of block ``index``: the first block is ``first_block_frames``, later ones ``block_frames``."""
    first, later = memory.first_block_frames, memory.block_frames
    if index == 0:
        return BlockSpan(0, 0, first, 0, 0)
    first_latent = first + (index - 1) * later
    # Latent 0 decodes to one video frame, every later latent to `temporal_stride` frames.
    return BlockSpan(index, first_latent, later, first, 1 + (first_latent - 1) * temporal_stride)


def audio_rows(
    span: BlockSpan,
    num_rows: int,
    window: int,
    temporal_stride: int,
    offset: int = 0,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Audio-encoder rows feeding each latent frame of a block, clamped to ``[0, num_rows - 1]``.

    The clip's latent 0 sees video frame 0 and ``window // 2`` neighbours each side; every other latent
    covering video frames ``p .. p + stride - 1`` sees rows ``p - window//2 .. p + stride - 1 + window//2``.
    Row ``r`` holds video frame ``offset + r``.

    Returns:
        ``(first, later)``: ``first`` ``[window]`` row indices (or None when the block does not hold
        latent 0), ``later`` ``[T', window + stride - 1]``.
    """
    half = window // 2
    first_latent = span.first_latent
    first = None
    if first_latent == 0:
        first = (torch.arange(-half, half + 1, device=device) - offset).clamp(0, num_rows - 1)
        first_latent, count = 1, span.frames - 1
    else:
        count = span.frames
    starts = (
        1
        + (torch.arange(first_latent, first_latent + count, device=device) - 1) * temporal_stride
        - half
        - offset
    )
    later = starts[:, None] + torch.arange(window + temporal_stride - 1, device=device)[None]
    return first, later.clamp(0, num_rows - 1)


def audio_window(span: BlockSpan, memory: MemoryConfig, temporal_stride: int) -> tuple[int, int]:
    """Video frames ``[start, end)`` of the reference's per-block audio window.

    The window spans the first block plus one later block (53 frames with the default layout) and
    ends where the block ends; the first two blocks share the window that starts at frame 0.
    """
    length = 1 + (memory.first_block_frames + memory.block_frames - 1) * temporal_stride
    start = max(0, span.first_video_frame + span.video_frames(temporal_stride) - length)
    return start, start + length


class NeighborForcingSampler:
    """Streams latent blocks from a ``LiveActTransformer``.

    Args:
        model: the transformer (single process, or transformed by ``liveact.speed.parallel``).
        audio_cfg: audio guidance scale; > 1 runs a null-audio pass on ``cfg_steps``.
        mean_memory: compress memory with a plain mean instead of the learned ConvKV conv.
        fp8_kv_cache: keep the KV memory in FP8 (e4m3, per token-head scales).
        offload_cache: keep the KV memory in host memory.
        memory: slot layout (``MemoryConfig``); the flags above override its fields.
        sampler: schedule (``SamplerConfig``); ``audio_cfg`` overrides its field.
        max_cached_prompts: text prompts whose cross-attention K/V are kept (LRU).
        context: ``neighbor`` (LiveAct): one memory per step, holding the neighbours' keys/values at
            that step's noise level; ``clean`` (Teacher/Diffusion-Forcing models, as CausVid and
            Self-Forcing sample): one memory for all steps, rewritten with the block's clean keys/values
            by an extra pass at ``t = 0`` after its last step.
    """

    def __init__(
        self,
        model: LiveActTransformer,
        audio_cfg: float = 1.0,
        mean_memory: bool = False,
        fp8_kv_cache: bool = False,
        offload_cache: bool = False,
        memory: MemoryConfig | None = None,
        sampler: SamplerConfig | None = None,
        max_cached_prompts: int = 2,
        context: str = "neighbor",
    ) -> None:
        if context not in ("neighbor", "clean"):
            raise ValueError(f"context must be 'neighbor' or 'clean', got {context!r}")
        self.context = context
        memory = memory or MemoryConfig()
        self.memory_config = memory.with_flags(
            fp8_kv_cache=fp8_kv_cache, offload_cache=offload_cache, mean_memory=mean_memory
        )
        self.config = replace(sampler or SamplerConfig(), audio_cfg=audio_cfg)
        self.model = model
        self.max_cached_prompts = max(1, max_cached_prompts)
        self._memories: list[KVMemory] = []
        self._null_memories: dict[int, KVMemory] = {}
        self._frame_len = -1

    # ----------------------------------------------------------------------------------------

    def memories(self, frame_len: int) -> tuple[list[KVMemory], dict[int, KVMemory]]:
        """Per-step memories (and null-audio ones for CFG steps), allocated once per resolution."""
        if frame_len != self._frame_len:
            # Clean context shares one memory across steps (and one for the null-audio passes).
            count = self.config.num_steps if self.context == "neighbor" else 1
            first = self.model.new_memory(self.memory_config, frame_len)

            def make() -> KVMemory:
                # FP8/offloaded memories run in turn: they share one set of device work buffers.
                return self.model.new_memory(self.memory_config, frame_len, workspace=first.workspace)

            memories = [first] + [make() for _ in range(count - 1)]
            self._memories = [memories[i % count] for i in range(self.config.num_steps)]
            null = [make() for _ in range(min(count, len(self.config.cfg_steps)))]
            self._null_memories = (
                {i: null[j % len(null)] for j, i in enumerate(self.config.cfg_steps)}
                if self.config.use_cfg
                else {}
            )
            self._frame_len = frame_len
        else:
            for mem in {id(m): m for m in [*self._memories, *self._null_memories.values()]}.values():
                mem.reset()
        return self._memories, self._null_memories

    def release_memories(self) -> None:
        """Free the KV memories (the next stream allocates them again), e.g. to make room on the GPU."""
        self._memories, self._null_memories, self._frame_len = [], {}, -1

    def _check(self, cond: Conditions) -> None:
        mcfg, scfg = self.model.config, self.memory_config
        if cond.y.ndim != 5 or cond.y.shape[1] != mcfg.cond_dim:
            raise ValueError(
                f"Conditions.y must be [1, {mcfg.cond_dim}, F, lh, lw], got {tuple(cond.y.shape)}"
            )
        if cond.y.shape[2] < scfg.first_block_frames + scfg.block_frames:
            raise ValueError(
                f"Conditions.y has {cond.y.shape[2]} latent frames; the layout needs "
                f"{scfg.first_block_frames + scfg.block_frames}"
            )
        if cond.audio.ndim != 3 or cond.audio.shape[1] * cond.audio.shape[2] != mcfg.audio_feature_dim:
            raise ValueError(
                f"Conditions.audio must be [S, {mcfg.audio_layers}, {mcfg.audio_channels}], "
                f"got {tuple(cond.audio.shape)}"
            )
        for (first, last), _ in cond.edits:
            if not 0 <= first <= last:
                raise ValueError(f"edit range [{first}, {last}] must satisfy 0 <= first <= last")

    def block_audio(self, cond: Conditions, span: BlockSpan, null: bool = False) -> torch.Tensor:
        """Audio tokens ``[T, N, output_dim]`` of a block (zeros through the projection when ``null``)."""
        window, stride = self.model.config.audio_window, self.config.vae_stride[0]
        audio, offset = cond.audio, 0
        if cond.audio_source is not None and not null:
            offset, end = audio_window(span, self.memory_config, stride)
            audio = cond.audio_source(offset, end)
        first, later = audio_rows(span, audio.shape[0], window, stride, offset, device=audio.device)
        if null:
            audio = torch.zeros(1, *audio.shape[1:], dtype=audio.dtype, device=audio.device)
            first = None if first is None else torch.zeros_like(first)
            later = torch.zeros_like(later)
        return self.model.audio_tokens(None if first is None else audio[first], audio[later])

    @torch.no_grad()
    def stream(
        self,
        cond: Conditions,
        num_blocks: int,
        generator: torch.Generator | None = None,
    ) -> Iterator[torch.Tensor]:
        """Generate ``num_blocks`` latent blocks, one at a time.

        Args:
            cond: the clip's conditioning.
            num_blocks: how many blocks to generate.
            generator: noise source (its device is where noise is drawn; CPU by default).

        Yields:
            ``x0`` ``[C, T, lh, lw]`` per block, ``T = first_block_frames`` for the first block,
            ``block_frames`` after; on the model's device, float32.
        """
        self._check(cond)
        model, scfg = self.model, self.config
        generator = generator or torch.Generator()
        y = cond.y[0].to(model.device)
        lh, lw = y.shape[-2:]
        ph, pw = model.config.patch_size[1:]
        if lh % ph or lw % pw:
            raise ValueError(f"latent size {lh}x{lw} is not divisible by the patch size {ph}x{pw}")
        memories, null_memories = self.memories((lh // ph) * (lw // pw))
        # Fill the RoPE cache here, outside any compiled region, so a compiled forward only reads it.
        model.rope(self.memory_config.total_frames, lh // ph, lw // pw)
        image_kv = model.embed_image(cond.clip)
        text_cache: OrderedDict[int, list] = OrderedDict()
        # Built on the device once: a host tensor used on CUDA would be a blocking copy per step.
        t_all = [torch.tensor([t], dtype=torch.float32, device=model.device) for t in scfg.timesteps]
        sigmas = [t / scfg.num_train_timesteps for t in t_all]

        def text_kv(prompt: int) -> list:
            if prompt not in text_cache:
                text_cache[prompt] = model.embed_text(cond.text_of(prompt))
                while len(text_cache) > max(2, self.max_cached_prompts):
                    text_cache.popitem(last=False)
            text_cache.move_to_end(prompt)
            return text_cache[prompt]

        for k in range(num_blocks):
            span = block_span(k, self.memory_config, scfg.vae_stride[0])
            shape = (scfg.latent_channels, span.frames, lh, lw)
            prompt = cond.prompt_for(k)
            # Edit guidance: on an edited block, push away from what the main prompt alone would make.
            base = CrossContext(text=text_kv(0), image=image_kv) if prompt and scfg.use_edit_cfg else None
            context = CrossContext(text=text_kv(prompt), image=image_kv)
            y_block = y[:, span.y_start : span.y_start + span.frames]
            silent = 1 if span.first_latent == 0 else 0
            audio = self.block_audio(cond, span)
            null_audio = self.block_audio(cond, span, null=True) if scfg.use_cfg else None

            latent = self._noise(shape, generator)
            for i in range(scfg.num_steps):
                step_audio = None if i in scfg.skip_audio_steps else audio
                if base is not None:
                    # Same block over the same history: the edited pass runs last, so the keys/values
                    # the memory keeps for later blocks are the edited ones, as without guidance.
                    memories[i].begin_block(k)
                    v_base = model(
                        latent, y_block, t_all[i], base, memories[i], audio=step_audio, silent_frames=silent
                    )
                memories[i].begin_block(k)
                v = model(
                    latent, y_block, t_all[i], context, memories[i], audio=step_audio, silent_frames=silent
                )
                if base is not None:
                    v = v_base + scfg.edit_cfg * (v - v_base)
                if i in null_memories:
                    null_memories[i].begin_block(k)
                    v_null = model(
                        latent,
                        y_block,
                        t_all[i],
                        context,
                        null_memories[i],
                        audio=null_audio,
                        silent_frames=silent,
                    )
                    v = v_null + scfg.audio_cfg * (v - v_null)
                x0 = latent - sigmas[i] * v.float()
                latent = (1 - sigmas[i + 1]) * x0 + sigmas[i + 1] * self._noise(shape, generator)
            if self.context == "clean":
                # Rewrite this block's memory slots with its clean keys/values for the blocks after it.
                t_clean = torch.zeros_like(t_all[0])
                memories[0].begin_block(k)
                model(x0, y_block, t_clean, context, memories[0], audio=audio, silent_frames=silent)
                if null_memories:
                    null_memories[scfg.cfg_steps[0]].begin_block(k)
                    model(
                        x0,
                        y_block,
                        t_clean,
                        context,
                        null_memories[scfg.cfg_steps[0]],
                        audio=null_audio,
                        silent_frames=silent,
                    )
            yield latent

    def _noise(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        """Standard normal float32 noise drawn on the generator's device, moved to the model's.

        Host noise for a GPU model is drawn into pinned memory: a copy from pageable memory would
        make the host wait for all queued GPU work before it can queue the next step.
        """
        pin = generator.device.type == "cpu" and self.model.device.type == "cuda"
        noise = torch.randn(
            shape, generator=generator, dtype=torch.float32, device=generator.device, pin_memory=pin
        )
        return noise.to(self.model.device, non_blocking=True)
