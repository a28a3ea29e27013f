"""LiveAct transformer: the Wan2.1-I2V DiT with an audio cross-attention adapter.

Parameter names are those of the official checkpoint (``self_attn.q``, ``cross_attn.k_img``,
``audio_cross_attn.kv_linear``, ``norm3``, ``modulation`` ...), so its safetensors load as they are.
One forward pass denoises one block of ``T`` latent frames at one timestep against a ``KVMemory``.

Precision follows the reference: modulation sums in the model dtype, norms and the modulated-norm
expressions in fp32 ("fp32 islands"), sinusoidal time features in float64.

Work the reference repeats and we do once:
* text/image cross-attention K/V: ``prepare_context()`` per prompt, not per call;
* audio projection: ``audio_tokens()`` for the block's frames only, not the whole 14-frame window;
* RoPE tables: once per resolution in float32 instead of a complex128 re-rope of the cache per call.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from liveact import islands
from liveact.attention import attention, select_backend
from liveact.config import MemoryConfig, ModelConfig
from liveact.memory import GrowingKVMemory, KVMemory, KVWorkspace, LayerKV
from liveact.rope import apply_rope, rope_table

logger = logging.getLogger(__name__)


class RMSNorm(nn.Module):
    """RMS norm over the last dim, computed in fp32 and cast back before the weight."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., dim] -> [..., dim]``."""
        return islands.rms_norm(x, self.weight, self.eps)


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm evaluated in fp32 (affine parameters too), output in the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., dim] -> [..., dim]``."""
        return islands.layer_norm(x, self.weight, self.bias, self.eps)


@dataclass(frozen=True)
class Modulation:
    """Adaptive-norm parameters of one branch, each ``[B, 1, dim]``."""

    shift: torch.Tensor
    scale: torch.Tensor
    gate: torch.Tensor

    def apply(self, normed: torch.Tensor) -> torch.Tensor:
        """``normed * (1 + scale) + shift`` in fp32, cast back to the dtype of ``normed``."""
        return islands.modulate(normed, self.shift, self.scale)


def sinusoidal_embedding(dim: int, t: torch.Tensor) -> torch.Tensor:
    """``[cos(t w), sin(t w)]`` with ``w_j = 10000^(-j / (dim/2))``, computed in float64.

    Args:
        t: ``[B]`` timesteps (any float dtype; promoted to float64 as the reference does).

    Returns:
        ``[B, dim]`` float32.
    """
    half = dim // 2
    pos = t.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = torch.outer(pos, freqs)
    return torch.cat([angles.cos(), angles.sin()], dim=1).float()


@dataclass
class CrossContext:
    """Per-layer cross-attention keys/values of one prompt and one reference image.

    ``text[i]`` and ``image[i]`` are ``(k, v)`` pairs of layer ``i``, each ``[B, L, H, D]``
    (``L`` = ``text_len`` padded text tokens, or the CLIP tokens).
    """

    text: list[tuple[torch.Tensor, torch.Tensor]]
    image: list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class BlockInputs:
    """What every layer needs for one forward pass over a block.

    The layers see the block's tokens ``[token_offset, token_offset + L)`` (all of them in a single
    process; a contiguous shard under sequence parallelism). Only the token-local parts of a layer
    read ``token_offset``: the audio attention (which latent frame a token belongs to) and the
    silent-first-frame zeroing.
    """

    grid: tuple[int, int, int]
    memory: KVMemory
    context: CrossContext
    audio: torch.Tensor | None
    silent_frames: int
    rope_q: tuple[torch.Tensor, torch.Tensor]
    rope_k: tuple[torch.Tensor, torch.Tensor]
    token_offset: int = 0

    @property
    def frame_len(self) -> int:
        """Tokens per latent frame (``h * w`` of the token grid)."""
        return self.grid[1] * self.grid[2]

    @property
    def num_tokens(self) -> int:
        """Tokens of the whole block (``T * h * w``)."""
        return self.grid[0] * self.frame_len

    def layer(self, index: int) -> LayerInputs:
        """What layer ``index`` reads besides the shared inputs: its memory and cross-attention K/V."""
        return LayerInputs(
            kv=self.memory.layer(index), text=self.context.text[index], image=self.context.image[index]
        )


@dataclass
class LayerInputs:
    """Per-layer inputs: tensors and handles, never the layer index.

    A block compiled on its own (``block.compile()``) thus sees the same kind of input for every
    layer and compiles once for all of them.
    """

    kv: LayerKV
    text: tuple[torch.Tensor, torch.Tensor]
    image: tuple[torch.Tensor, torch.Tensor]


class SelfAttention(nn.Module):
    """Block-causal self-attention against the ConvKV memory."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dim = cfg.dim
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, cfg.eps)
        self.norm_k = RMSNorm(dim, cfg.eps)
        conv = {"kernel_size": cfg.memory_ratio, "stride": cfg.memory_ratio, "groups": dim, "bias": False}
        self.memory_proj_k = nn.Conv1d(dim, dim, **conv)
        self.memory_proj_v = nn.Conv1d(dim, dim, **conv)
        # Set by liveact.speed.quant (fused FP8 QKV): one GEMM of [3 dim, dim] replaces q, k and v.
        self.qkv: nn.Module | None = None
        self.attention_backend = "sdpa"

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[B, L, dim]`` -> q, k, v ``[B, L, H, D]`` (q and k RMS-normed over the full dim)."""
        shape = (*x.shape[:2], -1, self.head_dim)
        if self.qkv is not None:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)
        return self.norm_q(q).view(shape), self.norm_k(k).view(shape), v.reshape(shape)

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: LayerInputs, inp: BlockInputs
    ) -> torch.Tensor:
        """Update the layer's memory with ``k, v`` ``[B, L, H, D]`` and attend; returns ``[B, L, H, D]``."""
        k_all, v_all = layer.kv.update(k, v, self.memory_proj_k.weight, self.memory_proj_v.weight)
        q = apply_rope(q, *inp.rope_q)
        k_all = apply_rope(k_all, inp.rope_k[0][: k_all.shape[1]], inp.rope_k[1][: k_all.shape[1]])
        if layer.kv.attended is not None:  # the "none" memory ablation: long-term slots left out
            k_all = torch.cat([k_all[:, s] for s in layer.kv.attended], 1)
            v_all = torch.cat([v_all[:, s] for s in layer.kv.attended], 1)
        return attention(q, k_all, v_all, backend=self.attention_backend)

    def forward(self, x: torch.Tensor, layer: LayerInputs, inp: BlockInputs) -> torch.Tensor:
        """``[B, L, dim] -> [B, L, dim]``."""
        q, k, v = self.project(x)
        return self.o(self.attend(q, k, v, layer, inp).flatten(2))


class CrossAttention(nn.Module):
    """I2V cross-attention: text and image tokens in two attentions, outputs summed."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dim = cfg.dim
        self.head_dim = cfg.head_dim
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.k_img = nn.Linear(dim, dim)
        self.v_img = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, cfg.eps)
        self.norm_k = RMSNorm(dim, cfg.eps)
        self.norm_k_img = RMSNorm(dim, cfg.eps)
        self.attention_backend = "sdpa"

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:2], -1, self.head_dim)

    def text_kv(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embedded text ``[B, Lt, dim]`` -> k, v ``[B, Lt, H, D]``."""
        return self._heads(self.norm_k(self.k(text))), self._heads(self.v(text))

    def image_kv(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embedded image tokens ``[B, Li, dim]`` -> k, v ``[B, Li, H, D]``."""
        return self._heads(self.norm_k_img(self.k_img(image))), self._heads(self.v_img(image))

    def forward(
        self,
        x: torch.Tensor,
        text_kv: tuple[torch.Tensor, torch.Tensor],
        image_kv: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """``[B, L, dim] -> [B, L, dim]``."""
        q = self._heads(self.norm_q(self.q(x)))
        out = attention(q, *text_kv, backend=self.attention_backend) + attention(
            q, *image_kv, backend=self.attention_backend
        )
        return self.o(out.flatten(2))


class AudioCrossAttention(nn.Module):
    """Each latent frame's tokens attend to that frame's audio tokens (no q/k norm)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.head_dim = cfg.head_dim
        self.q_linear = nn.Linear(cfg.dim, cfg.dim)
        self.kv_linear = nn.Linear(cfg.output_dim, 2 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.attention_backend = "sdpa"

    def forward(
        self, x: torch.Tensor, audio: torch.Tensor, frame_len: int, token_offset: int = 0
    ) -> torch.Tensor:
        """Frame-wise audio attention over a contiguous range of the block's tokens.

        Args:
            x: ``[B, L, dim]`` visual tokens ``[token_offset, token_offset + L)`` of the block,
                frame-major (the whole block, ``L = T * frame_len``, in a single process).
            audio: ``[T, N, output_dim]`` audio tokens of all T frames of the block, shared by the
                batch, or ``[B, T, N, output_dim]`` per sample.
            frame_len: tokens per latent frame.
            token_offset: block index of the first token of ``x``.

        Returns:
            ``[B, L, dim]``.
        """
        b, n, dim = x.shape
        q = self.q_linear(x).view(b, n, -1, self.head_dim)
        runs = frame_runs(token_offset, n, frame_len)
        if not runs:
            return self.proj(x.new_zeros(b, n, dim))
        if audio.ndim == 3:
            audio = audio[None]
        # Project only the audio of the frames these tokens belong to.
        first = runs[0][2]
        used = audio[:, first : runs[-1][2] + runs[-1][3]]
        k, v = self.kv_linear(used).unflatten(-1, (2, -1, self.head_dim)).unbind(-3)  # [Ba, T', N, H, D]
        outs = []
        for lo, hi, frame, frames in runs:
            # One "batch" entry per (sample, frame): each frame attends only to its own audio tokens.
            q_run = q[:, lo:hi].reshape(b * frames, (hi - lo) // frames, *q.shape[2:])
            k_run, v_run = (
                t[:, frame - first : frame - first + frames]
                .expand(b, -1, -1, -1, -1)
                .reshape(b * frames, *t.shape[2:])
                for t in (k, v)
            )
            outs.append(
                attention(q_run, k_run, v_run, backend=self.attention_backend).reshape(b, hi - lo, dim)
            )
        return self.proj(outs[0] if len(outs) == 1 else torch.cat(outs, dim=1))


def frame_runs(token_offset: int, num_tokens: int, frame_len: int) -> list[tuple[int, int, int, int]]:
    """Split tokens ``[token_offset, token_offset + num_tokens)`` into runs of whole or partial frames.

    Returns:
        ``(lo, hi, frame, frames)`` per run: local token range ``[lo, hi)`` covering ``frames``
        latent frames from ``frame`` on, each with ``(hi - lo) // frames`` tokens. Whole frames are
        grouped into one run; a partial frame at either end is a run of its own. Host integers only.
    """
    runs = []
    lo, end = 0, num_tokens
    head = (-token_offset) % frame_len
    if head and end:
        hi = min(head, end)
        runs.append((0, hi, token_offset // frame_len, 1))
        lo = hi
    whole = (end - lo) // frame_len
    if whole:
        runs.append((lo, lo + whole * frame_len, (token_offset + lo) // frame_len, whole))
        lo += whole * frame_len
    if lo < end:
        runs.append((lo, end, (token_offset + lo) // frame_len, 1))
    return runs


class AttentionBlock(nn.Module):
    """One DiT block: modulated self-attention, cross-attention, audio attention, modulated FFN."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dim = cfg.dim
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)
        self.norm1 = FP32LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(cfg)
        self.norm3 = FP32LayerNorm(dim, cfg.eps, elementwise_affine=True)
        self.cross_attn = CrossAttention(cfg)
        self.norm2 = FP32LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(
            nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, dim)
        )
        self.audio_cross_attn = AudioCrossAttention(cfg)
        self.norm_x = (
            FP32LayerNorm(dim, cfg.eps, elementwise_affine=True) if cfg.norm_input_visual else nn.Identity()
        )

    def forward(
        self, x: torch.Tensor, e0: torch.Tensor, layer: LayerInputs, inp: BlockInputs
    ) -> torch.Tensor:
        """``x`` ``[B, L, dim]``, ``e0`` ``[B, 6, dim]`` time projection -> ``[B, L, dim]``."""
        c = (self.modulation + e0).chunk(6, dim=1)
        attn_mod, ffn_mod = Modulation(c[0], c[1], c[2]), Modulation(c[3], c[4], c[5])
        eps = self.norm1.eps

        attn_in = islands.norm_modulate(x, attn_mod.shift, attn_mod.scale, eps)
        x = islands.gated_residual(x, self.self_attn(attn_in, layer, inp), attn_mod.gate)
        x = x + self.cross_attn(self.norm3(x), layer.text, layer.image)
        if inp.audio is not None:
            x_audio = self.audio_cross_attn(self.norm_x(x), inp.audio, inp.frame_len, inp.token_offset)
            silent = inp.silent_frames * inp.frame_len - inp.token_offset
            if silent > 0:
                # The clip's very first latent frame is the reference image: it gets no audio.
                x_audio[:, :silent] = 0
            x = x + x_audio
        ffn_in = islands.norm_modulate(x, ffn_mod.shift, ffn_mod.scale, self.norm2.eps)
        return islands.gated_residual(x, self.ffn(ffn_in), ffn_mod.gate)


class Head(nn.Module):
    """Output projection with its own 2-way modulation driven by the time embedding."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dim = cfg.dim
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)
        self.norm = FP32LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(dim, math.prod(cfg.patch_size) * cfg.out_dim)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, L, dim]``, ``e`` ``[B, dim]`` -> ``[B, L, prod(patch) * out_dim]``."""
        shift, scale = (self.modulation + e.unsqueeze(1)).chunk(2, dim=1)
        # The reference modulates the head in the model dtype (no fp32 island here).
        return self.head(self.norm(x) * (1 + scale) + shift)


class ImageProjection(nn.Module):
    """CLIP features -> model width: LayerNorm, Linear, GELU (exact), Linear, LayerNorm."""

    def __init__(self, clip_dim: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.LayerNorm(clip_dim),
            nn.Linear(clip_dim, clip_dim),
            nn.GELU(),
            nn.Linear(clip_dim, dim),
            nn.LayerNorm(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, Li, clip_dim] -> [B, Li, dim]``."""
        return self.proj(x)


class AudioProjection(nn.Module):
    """wav2vec windows -> ``context_tokens`` audio tokens per latent frame.

    The clip's first latent frame sees a ``audio_window``-frame window (``proj1``); every other
    latent frame covers ``vae_scale`` video frames and sees ``audio_window + vae_scale - 1`` frames
    (``proj1_vf``).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        feat = cfg.audio_feature_dim
        self.context_tokens = cfg.context_tokens
        self.output_dim = cfg.output_dim
        self.proj1 = nn.Linear(cfg.audio_window * feat, cfg.intermediate_dim)
        self.proj1_vf = nn.Linear((cfg.audio_window + cfg.vae_scale - 1) * feat, cfg.intermediate_dim)
        self.proj2 = nn.Linear(cfg.intermediate_dim, cfg.intermediate_dim)
        self.proj3 = nn.Linear(cfg.intermediate_dim, cfg.context_tokens * cfg.output_dim)
        self.norm = nn.LayerNorm(cfg.output_dim) if cfg.norm_output_audio else nn.Identity()

    def forward(self, first: torch.Tensor | None, later: torch.Tensor) -> torch.Tensor:
        """Project audio windows.

        Args:
            first: ``[audio_window, layers, channels]`` window of the clip's first frame, or None;
                ``[B, audio_window, layers, channels]`` when batched.
            later: ``[T', audio_window + vae_scale - 1, layers, channels]`` windows of other frames;
                ``[B, T', ...]`` when batched.

        Returns:
            ``[T, context_tokens, output_dim]`` with ``T = T' + (first is not None)``, or
            ``[B, T, context_tokens, output_dim]`` when batched.
        """
        batched = later.ndim == 5
        if not batched:
            later = later[None]
            first = None if first is None else first[None]
        hidden = F.relu(self.proj1_vf(later.flatten(2)))  # [B, T', inter]
        if first is not None:
            hidden = torch.cat([F.relu(self.proj1(first.flatten(1)))[:, None], hidden], dim=1)
        tokens = self.proj3(F.relu(self.proj2(hidden)))
        tokens = self.norm(tokens.unflatten(-1, (self.context_tokens, self.output_dim)))
        return tokens if batched else tokens[0]


class LiveActTransformer(nn.Module):
    """The LiveAct DiT.

    Args:
        config: the architecture (``liveact.config.PRESETS`` or a checkpoint's config).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = cfg = config
        dim = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(
            nn.Linear(cfg.text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim)
        )
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(AttentionBlock(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)
        self.img_emb = ImageProjection(cfg.clip_dim, dim)
        self.audio_proj = AudioProjection(cfg)
        self._rope_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    # ----------------------------------------------------------------------------------------
    # loading

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, torch_dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu"
    ) -> LiveActTransformer:
        """Load an official diffusers-layout folder (``config.json`` + single or sharded safetensors).

        The model is built on the meta device and the weights are assigned straight from the
        (memory-mapped) files, so 19 B parameters are never randomly initialised first.
        """
        from liveact.loading import load_transformer

        return load_transformer(folder, dtype=torch_dtype, device=device)

    def compile(self, *args: object, **kwargs: object) -> None:
        """``nn.Module.compile`` (in place, same arguments) with static shapes unless ``dynamic`` is given.

        A forward pass differs between blocks only by the memory's phase (first, second, steady),
        whether audio is present and the block length that goes with the phase, so static shapes
        give at most six graphs, all built by the third block; none after, however long the stream.
        (Automatic dynamic shapes would also settle, but on symbolic block lengths.)
        """
        kwargs.setdefault("dynamic", False)
        super().compile(*args, **kwargs)

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.patch_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype (the parameters' dtype)."""
        return self.patch_embedding.weight.dtype

    @property
    def kv_heads(self) -> int:
        """Heads whose K/V this process keeps (all of them unless sequence-parallel)."""
        return getattr(self, "_local_heads", self.config.num_heads)

    def new_memory(
        self,
        memory_config: MemoryConfig,
        frame_len: int,
        batch: int = 1,
        differentiable: bool = False,
        workspace: KVWorkspace | None = None,
    ) -> KVMemory:
        """A fresh ``KVMemory`` sized for this model and resolution (``differentiable`` for training).

        ``workspace``: device buffers to share with other FP8/offloaded memories (``KVMemory.workspace``
        of one made before); the memories of one sampler run in turn and can share them.
        """
        if memory_config.ratio != self.config.memory_ratio:
            raise ValueError(
                f"MemoryConfig.ratio={memory_config.ratio} does not match the model's ConvKV kernel "
                f"size {self.config.memory_ratio}"
            )
        if memory_config.compression == "grow":
            if differentiable or memory_config.fp8 or memory_config.offload or batch != 1:
                raise ValueError(
                    "the growing (uncompressed) memory is an inference ablation: batch 1, no "
                    "training, FP8 or offload"
                )
            return GrowingKVMemory(memory_config, self.config.num_layers, frame_len, self.device, self.dtype)
        return KVMemory(
            memory_config,
            self.config.num_layers,
            self.kv_heads,
            self.config.head_dim,
            frame_len,
            self.device,
            self.dtype,
            batch=batch,
            differentiable=differentiable,
            workspace=workspace,
        )

    @property
    def attention_backend(self) -> str:
        """The attention backend every attention of the model uses (``sdpa`` until set)."""
        return self.blocks[0].self_attn.attention_backend if len(self.blocks) else "sdpa"

    def set_attention_backend(self, preferred: str | None = None) -> str:
        """Choose the attention kernel once for this model's device and dtype (``attention.select_backend``).

        Probes ``preferred`` (None: ``LIVEACT_ATTENTION``, default ``auto``) on a small tensor against
        SDPA, falls back loudly, and stores the result in every attention module.

        Returns:
            The backend chosen.
        """
        name = select_backend(preferred, self.device, self.dtype)
        for module in self.modules():
            if isinstance(module, (SelfAttention, CrossAttention, AudioCrossAttention)):
                module.attention_backend = name
        return name

    # ----------------------------------------------------------------------------------------
    # conditioning computed once

    def embed_text(self, text: torch.Tensor | list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer text K/V of one prompt, or of one prompt per sample.

        Args:
            text: ``[L, text_dim]`` unpadded text-encoder output (``L <= text_len``), or a list of
                ``B`` such tensors (one per sample).

        Returns:
            per layer ``(k, v)``, each ``[B, text_len, H, D]`` (``B = 1`` for a single tensor). Like
            the reference, the text is zero-padded to ``text_len`` and the padded rows are attended
            to (no mask).
        """
        cfg = self.config
        texts = [text] if isinstance(text, torch.Tensor) else list(text)
        padded = texts[0].new_zeros(len(texts), cfg.text_len, cfg.text_dim)
        for i, t in enumerate(texts):
            if t.ndim != 2 or t.shape[1] != cfg.text_dim:
                raise ValueError(f"text must be [L, {cfg.text_dim}], got {tuple(t.shape)}")
            if t.shape[0] > cfg.text_len:
                raise ValueError(f"text has {t.shape[0]} tokens, more than text_len={cfg.text_len}")
            padded[i, : t.shape[0]] = t
        ctx = self.text_embedding(padded.to(self.device, self.dtype))
        return [block.cross_attn.text_kv(ctx) for block in self.blocks]

    def embed_image(self, clip: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer image K/V: ``clip`` ``[B, Li, clip_dim]`` -> per layer ``(k, v)`` ``[B, Li, H, D]``."""
        ctx = self.img_emb(clip.to(self.device, self.dtype))
        return [block.cross_attn.image_kv(ctx) for block in self.blocks]

    def prepare_context(self, text: torch.Tensor | list[torch.Tensor], clip: torch.Tensor) -> CrossContext:
        """Cross-attention K/V of prompts (see ``embed_text``) and images ``[B, Li, clip_dim]``.

        Not wrapped in ``no_grad``: training differentiates through it; inference callers run under
        ``torch.no_grad()`` (the sampler does).
        """
        return CrossContext(text=self.embed_text(text), image=self.embed_image(clip))

    def audio_tokens(self, first: torch.Tensor | None, later: torch.Tensor) -> torch.Tensor:
        """Audio tokens of a block: see ``AudioProjection.forward`` (``[T, N, output_dim]`` or batched)."""
        dt = self.dtype
        return self.audio_proj(
            None if first is None else first.to(self.device, dt), later.to(self.device, dt)
        )

    def rope(self, frames: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached cos/sin tables ``[frames * height * width, D/2]`` for a token grid."""
        key = (frames, height, width, self.device)
        if key not in self._rope_cache:
            self._rope_cache[key] = rope_table(
                frames, height, width, self.config.rope_split, self.config.rope_theta, device=self.device
            )
        return self._rope_cache[key]

    # ----------------------------------------------------------------------------------------
    # forward

    def patchify(self, latent: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """``latent`` ``[B, C, T, lh, lw]`` + ``y`` ``[B, C_y, T, lh, lw]`` -> tokens ``[B, T*h*w, dim]``
        and grid."""
        x = self.patch_embedding(torch.cat([latent, y], dim=1).to(self.dtype))
        grid = tuple(x.shape[2:])
        return x.flatten(2).transpose(1, 2), grid

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """``[B, T*h*w, prod(patch)*C]`` -> ``[B, C, T*pt, h*ph, w*pw]``."""
        t, h, w = grid
        pt, ph, pw = self.config.patch_size
        c = self.config.out_dim
        x = x.view(x.shape[0], t, h, w, pt, ph, pw, c)
        return torch.einsum("bfhwpqrc->bcfphqwr", x).reshape(x.shape[0], c, t * pt, h * ph, w * pw)

    def time_embed(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``t`` ``[B]`` -> ``e`` ``[B, dim]`` and block modulation input ``e0`` ``[B, 6, dim]``."""
        e = self.time_embedding(sinusoidal_embedding(self.config.freq_dim, t.to(self.device)).to(self.dtype))
        return e, self.time_projection(e).unflatten(1, (6, self.config.dim))

    def forward(
        self,
        latent: torch.Tensor,
        y: torch.Tensor,
        t: torch.Tensor,
        context: CrossContext,
        memory: KVMemory,
        audio: torch.Tensor | None = None,
        silent_frames: int = 0,
    ) -> torch.Tensor:
        """Predict the flow velocity of one block at one timestep.

        Args:
            latent: ``[C, T, lh, lw]`` noisy latent block, or ``[B, C, T, lh, lw]`` for a batch.
            y: ``[C_y, T, lh, lw]`` (or ``[B, C_y, T, lh, lw]``) I2V conditioning of the same frames
                (mask + image latent).
            t: ``[1]`` timestep (float32, 0..1000), or ``[B]`` one per sample.
            context: cross-attention K/V of the prompt and image (``prepare_context``), batch 1 or B.
            memory: this step's KV memory (batch B); ``memory.begin_block(k)`` must have been called.
            audio: ``[T, N, output_dim]`` audio tokens (``audio_tokens``) shared by the batch, or
                ``[B, T, N, output_dim]``; None skips audio.
            silent_frames: leading latent frames that get no audio (1 for the clip's first block).

        Returns:
            ``[C, T, lh, lw]`` velocity (``[B, C, T, lh, lw]`` for batched input).
        """
        batched = latent.ndim == 5
        if not batched:
            latent, y = latent[None], y[None]
        x, grid = self.patchify(latent.to(self.device), y.to(self.device))
        e, e0 = self.time_embed(t)
        inp = self.block_inputs(grid, memory, context, audio, silent_frames)
        out = self.unpatchify(self.denoise_tokens(x, e, e0, inp), grid)
        return out if batched else out[0]

    def block_inputs(
        self,
        grid: tuple[int, int, int],
        memory: KVMemory,
        context: CrossContext,
        audio: torch.Tensor | None,
        silent_frames: int,
    ) -> BlockInputs:
        """Per-call inputs shared by all layers (RoPE tables of the query frames and the whole cache).

        The tables come from ``rope()``'s cache: call ``rope(total_frames, h, w)`` once outside a
        compiled region (the sampler does) so a compiled forward finds them there.
        """
        start = memory.query_start_frame
        cos, sin = self.rope(memory.rope_frames, grid[1], grid[2])
        fl = grid[1] * grid[2]
        q_tokens = slice(start * fl, (start + grid[0]) * fl)
        return BlockInputs(
            grid=grid,
            memory=memory,
            context=context,
            audio=audio,
            silent_frames=silent_frames,
            rope_q=(cos[q_tokens], sin[q_tokens]),
            rope_k=(cos, sin),
        )

    def denoise_tokens(
        self, x: torch.Tensor, e: torch.Tensor, e0: torch.Tensor, inp: BlockInputs
    ) -> torch.Tensor:
        """All layers then the head: tokens ``[B, L, dim]`` -> ``[B, L, prod(patch) * out_dim]``.

        ``x`` holds the block's tokens from ``inp.token_offset`` on. This is the extension point of
        ``liveact.speed.parallel``, which shards the tokens around it.
        """
        for index, block in enumerate(self.blocks):
            x = block(x, e0, inp.layer(index), inp)
        return self.head(x, e)
