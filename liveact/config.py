"""Frozen configuration of the model, the KV memory layout and the sampler.

Every geometry number of LiveAct lives here: block sizes, memory slots, the compression ratio, the
timestep schedule, the steps that skip audio and the steps that use audio CFG. Code elsewhere reads
these fields and derived properties instead of spelling numbers such as ``6 * frame_len``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

Compression = Literal["conv", "mean"]
Grouping = Literal["raster", "per_location"]
ValueConv = Literal["k", "v"]


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the LiveAct DiT (Wan2.1-I2V + audio cross-attention adapter).

    Field names follow the official ``config.json`` so a checkpoint's config maps one-to-one.
    ``clip_dim``/``clip_tokens`` and ``audio_layers``/``audio_channels`` are not written in the
    official config; the loader infers the ones it can from the weights.
    """

    dim: int = 5120
    ffn_dim: int = 13824
    num_heads: int = 40
    num_layers: int = 40
    in_dim: int = 36
    out_dim: int = 16
    freq_dim: int = 256
    text_dim: int = 4096
    text_len: int = 512
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    clip_dim: int = 1280
    # audio adapter (MultiTalk/InfiniteTalk lineage)
    audio_window: int = 5
    vae_scale: int = 4
    audio_layers: int = 12
    audio_channels: int = 768
    intermediate_dim: int = 512
    output_dim: int = 768
    context_tokens: int = 32
    norm_input_visual: bool = True
    norm_output_audio: bool = True
    memory_ratio: int = 5
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} is not divisible by num_heads={self.num_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if self.freq_dim % 2:
            raise ValueError(f"freq_dim={self.freq_dim} must be even (cos and sin halves)")
        if self.audio_window % 2 == 0:
            raise ValueError(f"audio_window={self.audio_window} must be odd (a centred window)")
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"patch_size={self.patch_size} must be three positive ints (t, h, w)")
        if self.memory_ratio < 1:
            raise ValueError(f"memory_ratio={self.memory_ratio} must be >= 1")
        if self.in_dim <= self.out_dim:
            raise ValueError(f"in_dim={self.in_dim} must exceed out_dim={self.out_dim} (latent + conditioning)")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.dim // self.num_heads

    @property
    def cond_dim(self) -> int:
        """Channels of the I2V conditioning ``y`` (mask + VAE latent) concatenated to the latent."""
        return self.in_dim - self.out_dim

    @property
    def audio_feature_dim(self) -> int:
        """Width of one audio-encoder frame after flattening its layers: ``layers * channels``."""
        return self.audio_layers * self.audio_channels

    @property
    def rope_split(self) -> tuple[int, int, int]:
        """Complex rotary pairs given to (time, height, width): ``[c - 2(c//3), c//3, c//3]``."""
        c = self.head_dim // 2
        return (c - 2 * (c // 3), c // 3, c // 3)

    @classmethod
    def from_diffusers_config(cls, config: dict[str, Any], **overrides: Any) -> ModelConfig:
        """Build from an official ``config.json`` dict; unknown keys (``_class_name``, ...) are ignored."""
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in config.items() if k in names}
        if "patch_size" in kwargs:
            kwargs["patch_size"] = tuple(kwargs["patch_size"])
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict in the official ``config.json`` naming."""
        out = asdict(self)
        out["patch_size"] = list(self.patch_size)
        return out


@dataclass(frozen=True)
class MemoryConfig:
    """Slot layout of the per-step, per-layer KV memory (ConvKV), in latent frames.

    Layout of the cache, each slot ``frame_len`` tokens::

        [ sink | long-term (compressed) | short-term (recent raw) | current block ]

    The first block (``first_block_frames``) fills sink + long-term + short-term. Before each block
    from the third on, the span that starts at the long-term slots and covers
    ``long_term_frames * ratio`` frames is compressed ``ratio``:1 into the long-term slots, and the
    last ``short_term_frames`` frames of the previous block move to the short-term slots.
    """

    sink_frames: int = 2
    long_term_frames: int = 2
    short_term_frames: int = 2
    first_block_frames: int = 6
    block_frames: int = 8
    ratio: int = 5
    compression: Compression = "conv"
    # Reference compatibility (the official weights expect both): the conv pools `ratio`
    # consecutive tokens in raster order, and V is compressed with the K conv.
    grouping: Grouping = "raster"
    value_conv: ValueConv = "k"
    fp8: bool = False
    offload: bool = False

    def __post_init__(self) -> None:
        for name in ("sink_frames", "long_term_frames", "short_term_frames", "first_block_frames",
                     "block_frames", "ratio"):
            if getattr(self, name) < (1 if name in ("first_block_frames", "block_frames", "ratio") else 0):
                raise ValueError(f"{name}={getattr(self, name)} is out of range")
        if self.first_block_frames != self.memory_frames:
            raise ValueError(
                f"first_block_frames={self.first_block_frames} must equal sink + long-term + short-term "
                f"= {self.memory_frames}: the first block fills the memory slots")
        if self.long_term_frames * self.ratio != self.long_term_frames + self.block_frames:
            raise ValueError(
                f"long_term_frames * ratio ({self.long_term_frames}*{self.ratio}) must equal "
                f"long_term_frames + block_frames ({self.long_term_frames}+{self.block_frames}): the "
                "compressed span is the old long-term and short-term slots plus the previous block, "
                "less its last short_term_frames frames")
        if self.compression not in ("conv", "mean"):
            raise ValueError(f"compression={self.compression!r}; choose 'conv' or 'mean'")
        if self.grouping not in ("raster", "per_location"):
            raise ValueError(f"grouping={self.grouping!r}; choose 'raster' or 'per_location'")
        if self.value_conv not in ("k", "v"):
            raise ValueError(f"value_conv={self.value_conv!r}; choose 'k' or 'v'")

    @property
    def memory_frames(self) -> int:
        """Frames held as memory in front of the current block."""
        return self.sink_frames + self.long_term_frames + self.short_term_frames

    @property
    def total_frames(self) -> int:
        """Slots of the cache: memory plus one current block."""
        return self.memory_frames + self.block_frames

    @property
    def long_term_start(self) -> int:
        """First slot of the compressed long-term memory."""
        return self.sink_frames

    @property
    def short_term_start(self) -> int:
        """First slot of the short-term (raw recent) memory."""
        return self.sink_frames + self.long_term_frames

    @property
    def current_start(self) -> int:
        """First slot of the current block (for every block after the first)."""
        return self.memory_frames


@dataclass(frozen=True)
class SamplerConfig:
    """Few-step schedule and guidance of the Neighbor Forcing sampler.

    ``timesteps`` has one more entry than there are denoising steps: the last is the target (0).
    ``sigma = t / num_train_timesteps``.
    """

    timesteps: tuple[float, ...] = (1000.0, 937.5, 833.33333333, 0.0)
    num_train_timesteps: float = 1000.0
    skip_audio_steps: tuple[int, ...] = (0,)
    cfg_steps: tuple[int, ...] = (1, 2)
    audio_cfg: float = 1.0
    latent_channels: int = 16
    vae_stride: tuple[int, int, int] = (4, 8, 8)

    def __post_init__(self) -> None:
        if len(self.timesteps) < 2:
            raise ValueError("timesteps needs at least one step and the final target")
        if any(a <= b for a, b in zip(self.timesteps, self.timesteps[1:])):
            raise ValueError(f"timesteps={self.timesteps} must be strictly decreasing")
        for name in ("skip_audio_steps", "cfg_steps"):
            bad = [s for s in getattr(self, name) if not 0 <= s < self.num_steps]
            if bad:
                raise ValueError(f"{name} has steps {bad} outside 0..{self.num_steps - 1}")
        if self.audio_cfg < 1.0:
            raise ValueError(f"audio_cfg={self.audio_cfg} must be >= 1 (1 disables guidance)")

    @property
    def num_steps(self) -> int:
        """Denoising steps per block."""
        return len(self.timesteps) - 1

    @property
    def use_cfg(self) -> bool:
        """Whether the null-audio pass runs at all."""
        return self.audio_cfg > 1.0 and bool(self.cfg_steps)


PRESETS: dict[str, ModelConfig] = {
    # Wan2.1-I2V-14B + audio adapter: 18,884,094,784 parameters, 1713 state-dict keys.
    "liveact-14b": ModelConfig(),
    # LiveAct-Nano: the embedded default model, small enough to run and test on a CPU.
    "nano": ModelConfig(dim=256, ffn_dim=768, num_heads=4, num_layers=4, intermediate_dim=64,
                        output_dim=128, context_tokens=8),
    # The shape of the parity fixtures' model A: the tiniest model the reference can build.
    "tiny": ModelConfig(dim=128, ffn_dim=256, num_heads=4, num_layers=2, intermediate_dim=4,
                        output_dim=64, context_tokens=4),
}
