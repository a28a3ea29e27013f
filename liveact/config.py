"""Frozen configuration of the model, the KV memory layout and the sampler.

Every geometry number of LiveAct lives here: block sizes, memory slots, the compression ratio, the
timestep schedule, the steps that skip audio and the steps that use audio CFG. Code elsewhere reads
these fields and derived properties instead of spelling numbers such as ``6 * frame_len``.

The presets are files, ``liveact/configs/<name>.json`` (shipped inside the package, so an installed
wheel finds them through ``importlib.resources``): the official ``config.json`` fields of the DiT plus
``memory`` and ``sampler`` sections. Copy one, change it, and pass its path wherever a preset name is
accepted (``load_preset``, ``python -m liveact.bench --preset``, ``generate.py --config``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

Compression = Literal["conv", "mean", "none", "grow"]
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
            raise ValueError(
                f"in_dim={self.in_dim} must exceed out_dim={self.out_dim} (latent + conditioning)"
            )

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
        for name in (
            "sink_frames",
            "long_term_frames",
            "short_term_frames",
            "first_block_frames",
            "block_frames",
            "ratio",
        ):
            if getattr(self, name) < (1 if name in ("first_block_frames", "block_frames", "ratio") else 0):
                raise ValueError(f"{name}={getattr(self, name)} is out of range")
        if self.first_block_frames != self.memory_frames:
            raise ValueError(
                f"first_block_frames={self.first_block_frames} must equal sink + long-term + short-term "
                f"= {self.memory_frames}: the first block fills the memory slots"
            )
        if self.long_term_frames * self.ratio != self.long_term_frames + self.block_frames:
            raise ValueError(
                f"long_term_frames * ratio ({self.long_term_frames}*{self.ratio}) must equal "
                f"long_term_frames + block_frames ({self.long_term_frames}+{self.block_frames}): the "
                "compressed span is the old long-term and short-term slots plus the previous block, "
                "less its last short_term_frames frames"
            )
        if self.compression not in ("conv", "mean", "none", "grow"):
            raise ValueError(
                f"compression={self.compression!r}; choose 'conv', 'mean', 'none' (sink + "
                "short-term only) or 'grow' (no compression: an ever-growing cache)"
            )
        if self.grouping not in ("raster", "per_location"):
            raise ValueError(f"grouping={self.grouping!r}; choose 'raster' or 'per_location'")
        if self.value_conv not in ("k", "v"):
            raise ValueError(f"value_conv={self.value_conv!r}; choose 'k' or 'v'")

    def with_flags(
        self, *, fp8_kv_cache: bool = False, offload_cache: bool = False, mean_memory: bool = False
    ) -> MemoryConfig:
        """This layout with the run's KV-memory flags applied: the one rule every layer uses.

        A flag turns its setting on; it never turns off what a preset or checkpoint already set
        (``memory.fp8: true`` in a preset stays FP8 without ``--fp8_kv_cache``).
        """
        return dataclasses.replace(
            self,
            fp8=self.fp8 or fp8_kv_cache,
            offload=self.offload or offload_cache,
            compression="mean" if mean_memory else self.compression,
        )

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
    edit_cfg: float = 1.0
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
        if self.edit_cfg < 1.0:
            raise ValueError(f"edit_cfg={self.edit_cfg} must be >= 1 (1 disables edit guidance)")

    @property
    def num_steps(self) -> int:
        """Denoising steps per block."""
        return len(self.timesteps) - 1

    @property
    def use_cfg(self) -> bool:
        """Whether the null-audio pass runs at all."""
        return self.audio_cfg > 1.0 and bool(self.cfg_steps)

    @property
    def use_edit_cfg(self) -> bool:
        """Whether blocks under an edit prompt also run a main-prompt pass to guide away from."""
        return self.edit_cfg > 1.0


# --------------------------------------------------------------------------------------------------
# presets as files

MODEL_SECTIONS = ("memory", "sampler")


@dataclass(frozen=True)
class Preset:
    """One preset file: the DiT geometry, its memory layout and sampler schedule, plus pass-through fields.

    A preset file is an official ``config.json`` (the DiT fields at the top level, in the official
    naming) with two optional sections, ``"memory"`` (``MemoryConfig`` fields) and ``"sampler"``
    (``SamplerConfig`` fields). Every other top-level key (``_class_name``, a ``components`` section
    naming the text encoder, audio features or autoencoder, ...) is kept untouched in ``extra`` for the
    code that builds those components; unknown fields are never an error there. Inside ``memory`` and
    ``sampler`` an unknown field is an error, because it can only be a typo of a setting we would
    otherwise silently ignore.
    """

    name: str
    model: ModelConfig
    memory: MemoryConfig
    sampler: SamplerConfig
    extra: dict[str, Any]
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The file form: ``extra`` and the model fields at the top level, then the two sections."""
        return {
            **self.extra,
            **self.model.to_dict(),
            "memory": _section_dict(self.memory),
            "sampler": _section_dict(self.sampler),
        }


def _section_dict(config: MemoryConfig | SamplerConfig) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    """``cls(**values)`` with JSON lists turned into tuples; unknown or invalid fields name ``where``."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(known)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None


def settings_from_dict(data: dict[str, Any], where: str = "config") -> tuple[MemoryConfig, SamplerConfig]:
    """The ``memory`` and ``sampler`` sections of a preset or a checkpoint's ``config.json`` (or defaults)."""
    sections = {}
    for section in MODEL_SECTIONS:
        value = data.get(section, {})
        if not isinstance(value, dict):
            raise ValueError(f"{where}: {section!r} must be an object of {section} settings")
        sections[section] = value
    return (
        _build(MemoryConfig, sections["memory"], f"{where} memory"),
        _build(SamplerConfig, sections["sampler"], f"{where} sampler"),
    )


def preset_from_dict(data: dict[str, Any], name: str = "custom", source: str | None = None) -> Preset:
    """Parse the file form of a preset (see ``Preset``); missing fields take the dataclass defaults."""
    where = source or name
    if not isinstance(data, dict):
        raise ValueError(f"{where}: a preset is a JSON object, got {type(data).__name__}")
    memory, sampler = settings_from_dict(data, where)
    model_fields = {f.name for f in fields(ModelConfig)}
    model = _build(ModelConfig, {k: v for k, v in data.items() if k in model_fields}, where)
    extra = {k: v for k, v in data.items() if k not in model_fields and k not in MODEL_SECTIONS}
    return Preset(name=name, model=model, memory=memory, sampler=sampler, extra=extra, source=source)


def preset_names() -> list[str]:
    """Names of the presets shipped in ``liveact/configs/`` (file stems), sorted."""
    from importlib import resources

    folder = resources.files("liveact").joinpath("configs")
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def load_preset(name_or_path: str | Path) -> Preset:
    """A shipped preset by name (``"liveact-14b"``, ``"nano"``, ``"tiny"``) or any preset JSON file.

    Raises:
        ValueError: unknown name, unreadable file, invalid JSON or invalid values (the message names
            the file and the field).
    """
    from importlib import resources

    text_source = str(name_or_path)
    path = Path(name_or_path)
    if text_source in preset_names():
        resource = resources.files("liveact").joinpath("configs", f"{text_source}.json")
        name, where, text = text_source, f"preset {text_source} ({resource})", resource.read_text()
    elif path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise ValueError(f"preset file {path} not found (or not a file)")
        name, where = path.stem, str(path)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"preset file {path} is not readable: {exc}") from None
    else:
        raise ValueError(
            f"unknown preset {text_source!r}: choose one of {', '.join(preset_names())} "
            "or give the path of a preset .json file"
        )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where} is not valid JSON: {exc}") from None
    return preset_from_dict(data, name=name, source=where)


class _PresetModels(Mapping[str, ModelConfig]):
    """``name -> ModelConfig`` of the shipped preset files, read on first use (nothing at import time)."""

    def __init__(self) -> None:
        self._models: dict[str, ModelConfig] | None = None

    def _load(self) -> dict[str, ModelConfig]:
        if self._models is None:
            self._models = {name: load_preset(name).model for name in preset_names()}
        return self._models

    def __getitem__(self, name: str) -> ModelConfig:
        return self._load()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())

    def __repr__(self) -> str:
        return f"PRESETS({', '.join(self._load())})"


# The DiT geometry of every shipped preset: "liveact-14b", "nano", "tiny" (liveact/configs/<name>.json).
PRESETS: Mapping[str, ModelConfig] = _PresetModels()
