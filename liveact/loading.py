"""Loading checkpoints in the official formats, frugally.

The DiT folder is diffusers' layout: ``config.json`` plus ``diffusion_pytorch_model.safetensors`` or
shards listed in ``diffusion_pytorch_model.safetensors.index.json``. The model is built on the meta
device and each tensor is read from the (memory-mapped) file straight to the target device and dtype,
then assigned: no random initialisation of 19 B parameters, no second copy in host memory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from liveact.config import ModelConfig

if TYPE_CHECKING:
    from liveact.model import LiveActTransformer

logger = logging.getLogger(__name__)

# Models up to this many parameters are built on the CPU instead of the meta device.
SMALL_MODEL_PARAMS = 100_000_000


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' per-load ``Loading weights`` progress bar (a run's own log says what loads).

    Scoped, so a program that imports LiveAct keeps its own setting afterwards.
    """
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


DIT_CONFIG = "config.json"
DIT_WEIGHTS = "diffusion_pytorch_model.safetensors"
DIT_INDEX = "diffusion_pytorch_model.safetensors.index.json"


class AssetError(ValueError):
    """A checkpoint file is missing, unreadable or does not match what the model expects.

    ``argument`` names the function argument the problem is about (``"ckpt_dir"``, ``"wav2vec_dir"``)
    when there is one, so a command line can name its own flag; the message itself speaks of the
    argument, never of a flag.
    """

    def __init__(self, message: str, argument: str | None = None) -> None:
        super().__init__(message)
        self.argument = argument


def format_count(n: int) -> str:
    """A parameter count for people: ``18.88B``, ``5.05M``, ``45.1K``, ``12``."""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.2f}{unit}" if unit != "K" else f"{n / scale:.1f}{unit}"
    return str(n)


def dit_shards(folder: Path) -> list[Path]:
    """Safetensors files of a DiT folder: the index's shards, or the single file."""
    index = folder / DIT_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise AssetError(
                f"{index}: not a safetensors index (expected a JSON with 'weight_map'): {exc}"
            ) from exc
        shards = [folder / name for name in dict.fromkeys(weight_map.values())]
        missing = [str(p) for p in shards if not p.is_file()]
        if missing:
            raise AssetError(f"{index} lists shards that are missing: {', '.join(missing)}")
        return shards
    single = folder / DIT_WEIGHTS
    if single.is_file():
        return [single]
    raise AssetError(f"{folder}: no {DIT_WEIGHTS} and no {DIT_INDEX}; is this the DiT checkpoint folder?")


def read_dit_config(folder: Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a DiT folder, with a clear error when absent or malformed."""
    path = folder / DIT_CONFIG
    if not path.is_file():
        raise AssetError(f"{path} is missing: the DiT folder needs its diffusers config.json")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AssetError(f"{path} is not valid JSON: {exc}") from exc


def iter_safetensors(
    paths: list[Path], device: torch.device | str = "cpu"
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(key, tensor)`` from safetensors files, each tensor read straight onto ``device``."""
    from safetensors import SafetensorError, safe_open

    for path in paths:
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                for key in f.keys():
                    yield key, f.get_tensor(key)
        except SafetensorError as exc:
            raise AssetError(f"{path} is not a readable safetensors file: {exc}") from exc


def _shapes(paths: list[Path]) -> dict[str, tuple[int, ...]]:
    """Key -> shape of every tensor in the files, from their headers alone."""
    from safetensors import SafetensorError, safe_open

    out: dict[str, tuple[int, ...]] = {}
    for path in paths:
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    out[key] = tuple(f.get_slice(key).get_shape())
        except SafetensorError as exc:
            raise AssetError(f"{path} is not a readable safetensors file: {exc}") from exc
    return out


def infer_model_config(config: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> ModelConfig:
    """``ModelConfig`` from ``config.json``, with the dims the official config leaves out read off the
    weights."""
    overrides: dict[str, Any] = {}
    if "img_emb.proj.0.weight" in shapes:
        overrides["clip_dim"] = shapes["img_emb.proj.0.weight"][0]
    if "text_embedding.0.weight" in shapes:
        overrides["text_dim"] = shapes["text_embedding.0.weight"][1]
    if "blocks.0.self_attn.memory_proj_k.weight" in shapes:
        overrides["memory_ratio"] = shapes["blocks.0.self_attn.memory_proj_k.weight"][-1]
    if "patch_embedding.weight" in shapes:
        overrides["patch_size"] = tuple(shapes["patch_embedding.weight"][2:])
    if "audio_proj.proj1.weight" in shapes:
        # Only layers * channels is in the weights; keep the config's split when it agrees.
        window = config.get("audio_window", ModelConfig.audio_window)
        feat = shapes["audio_proj.proj1.weight"][1] // window
        layers = config.get("audio_layers", ModelConfig.audio_layers)
        channels = config.get("audio_channels", ModelConfig.audio_channels)
        if layers * channels != feat:
            layers = layers if feat % layers == 0 else 1
            channels = feat // layers
        overrides.update(audio_layers=layers, audio_channels=channels)
    return ModelConfig.from_diffusers_config(config, **overrides)


def check_state_dict_shapes(model: torch.nn.Module, shapes: dict[str, tuple[int, ...]], source: str) -> None:
    """Raise ``AssetError`` naming every missing, unexpected or mis-shaped key."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = [
        f"{k}: file {shapes[k]}, expected {expected[k]}"
        for k in expected
        if k in shapes and shapes[k] != expected[k]
    ]
    problems = []
    if missing:
        problems.append(
            f"{len(missing)} missing keys, e.g. " + ", ".join(f"{k} {expected[k]}" for k in missing[:5])
        )
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys, e.g. " + ", ".join(unexpected[:5]))
    if wrong:
        problems.append(f"{len(wrong)} shape mismatches, e.g. " + "; ".join(wrong[:5]))
    if problems:
        raise AssetError(f"{source} does not match the LiveAct transformer: " + " | ".join(problems))


def load_transformer(
    folder: str | Path, dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu"
) -> LiveActTransformer:
    """Build ``LiveActTransformer`` on the meta device (small models: the CPU) and assign the folder's
    weights.

    Args:
        folder: diffusers-layout DiT folder (``config.json`` + safetensors, single or sharded).
        dtype: parameter dtype (the official files hold bf16).
        device: where the parameters end up; tensors are read straight there.
    """
    from liveact.model import LiveActTransformer

    folder = Path(folder)
    if not folder.is_dir():
        raise AssetError(
            f"{folder} is not a folder: expected the DiT checkpoint folder ({DIT_CONFIG} + safetensors)"
        )
    shards = dit_shards(folder)
    shapes = _shapes(shards)
    config = infer_model_config(read_dit_config(folder), shapes)
    # The meta device keeps 19 B parameters from ever being allocated; its first use also imports
    # PyTorch's meta kernels (seconds), which a small model (Nano) need not pay: it is built on the
    # CPU, random-initialised for a moment, then overwritten.
    params = sum(math.prod(shape) for shape in shapes.values())
    with torch.device("meta" if params > SMALL_MODEL_PARAMS else "cpu"):
        model = LiveActTransformer(config)
    check_state_dict_shapes(model, shapes, str(folder))
    state = {key: t.to(dtype) for key, t in iter_safetensors(shards, device)}
    model.load_state_dict(state, strict=True, assign=True)
    count = format_count(sum(p.numel() for p in model.parameters()))
    logger.info("loaded %s: %s parameters, %s", folder, count, dtype)
    return model.eval().requires_grad_(False)


def save_transformer(
    model: LiveActTransformer, folder: str | Path, max_shard_bytes: int | None = None
) -> None:
    """Write a model in the official layout (``config.json`` + safetensors, sharded above
    ``max_shard_bytes``)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"_class_name": "WanModel", "model_type": "i2v", **model.config.to_dict()}
    (folder / DIT_CONFIG).write_text(json.dumps(config, indent=2))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if max_shard_bytes is None:
        save_file(state, str(folder / DIT_WEIGHTS))
        return
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / name))
        weight_map.update(dict.fromkeys(shard, name))
    (folder / DIT_INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))


# --------------------------------------------------------------------------------------------------
# the official asset folder

VAE_FILE = "Wan2.1_VAE.pth"
T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
T5_TOKENIZER = "google/umt5-xxl"
CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
CLIP_TOKENIZER = "xlm-roberta-large"
WAV2VEC_FILES = ("config.json", "preprocessor_config.json")
WAV2VEC_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class AssetPaths:
    """Every file of the official layout (the ``ckpt_dir`` and ``wav2vec_dir`` folders)."""

    dit: Path
    vae: Path
    t5: Path
    t5_tokenizer: Path
    clip: Path
    wav2vec: Path


def _looks_like_wav2vec(folder: Path) -> bool:
    """A transformers wav2vec2 folder: a preprocessor config and a config naming a Wav2Vec2 model."""
    if not (folder / "preprocessor_config.json").is_file() or not (folder / DIT_CONFIG).is_file():
        return False
    try:
        config = json.loads((folder / DIT_CONFIG).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(config, dict) and "wav2vec2" in str(config.get("model_type", "")).lower()


def resolve_assets(ckpt_dir: str | Path, wav2vec_dir: str | Path) -> AssetPaths:
    """Check the official asset folders and return their paths.

    Raises:
        AssetError: a folder that is not there or is the other kind of folder, or every missing file
            by name with what it should be (``argument`` names the folder's parameter).
    """
    ckpt, w2v = Path(ckpt_dir), Path(wav2vec_dir)
    if not ckpt.is_dir():
        raise AssetError(
            f"ckpt_dir {ckpt} is not a folder (expected the LiveAct checkpoint folder: "
            f"{DIT_CONFIG}, the DiT safetensors, {VAE_FILE}, {T5_FILE}, ...)",
            argument="ckpt_dir",
        )
    if not w2v.is_dir():
        raise AssetError(
            f"wav2vec_dir {w2v} is not a folder (expected a transformers wav2vec2 folder such "
            "as chinese-wav2vec2-base)",
            argument="wav2vec_dir",
        )
    if _looks_like_wav2vec(ckpt):
        swapped = " (the two folders look swapped)" if (w2v / VAE_FILE).is_file() else ""
        raise AssetError(
            f"ckpt_dir {ckpt} is a wav2vec2 folder, not the LiveAct checkpoint "
            f"folder{swapped}: pass it as wav2vec_dir and the folder holding {DIT_CONFIG} + "
            f"{VAE_FILE} as ckpt_dir",
            argument="ckpt_dir",
        )
    if (w2v / VAE_FILE).is_file() and not _looks_like_wav2vec(w2v):
        raise AssetError(
            f"wav2vec_dir {w2v} holds {VAE_FILE}: it looks like the LiveAct checkpoint folder; "
            "pass a transformers wav2vec2 folder (chinese-wav2vec2-base) as wav2vec_dir",
            argument="wav2vec_dir",
        )
    expected = {
        DIT_CONFIG: "the DiT's diffusers config.json",
        VAE_FILE: "the Wan2.1 VAE weights",
        T5_FILE: "the umT5-XXL encoder weights",
        CLIP_FILE: "the open-clip XLM-RoBERTa ViT-H/14 weights",
    }
    problems = [f"{ckpt / name} ({what})" for name, what in expected.items() if not (ckpt / name).is_file()]
    if not (ckpt / DIT_WEIGHTS).is_file() and not (ckpt / DIT_INDEX).is_file():
        problems.append(f"{ckpt / DIT_WEIGHTS} or {ckpt / DIT_INDEX} (the DiT weights)")
    if not (ckpt / T5_TOKENIZER).is_dir():
        problems.append(f"{ckpt / T5_TOKENIZER}/ (the umT5 tokenizer folder)")
    ckpt_problems = len(problems)
    problems += [f"{w2v / name} (wav2vec2 {name})" for name in WAV2VEC_FILES if not (w2v / name).is_file()]
    if not any((w2v / name).is_file() for name in WAV2VEC_WEIGHTS):
        problems.append(f"{w2v / WAV2VEC_WEIGHTS[0]} or {w2v / WAV2VEC_WEIGHTS[1]} (wav2vec2 weights)")
    if problems:
        argument = "ckpt_dir" if len(problems) == ckpt_problems else None if ckpt_problems else "wav2vec_dir"
        raise AssetError(
            f"{len(problems)} asset file(s) missing:\n  " + "\n  ".join(problems), argument=argument
        )
    if not (ckpt / CLIP_TOKENIZER).is_dir():
        logger.info(
            "%s is absent; it is not needed (the CLIP text tower is never used)", ckpt / CLIP_TOKENIZER
        )
    return AssetPaths(
        dit=ckpt,
        vae=ckpt / VAE_FILE,
        t5=ckpt / T5_FILE,
        t5_tokenizer=ckpt / T5_TOKENIZER,
        clip=ckpt / CLIP_FILE,
        wav2vec=w2v,
    )


def load_pth(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """``torch.load`` of an original ``.pth`` state dict (memory-mapped), with an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise AssetError(f"{path} is missing ({what})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as plain_exc:
            # Report the plain load's error: the mmap attempt's ("mmap can only be used with ...")
            # says nothing about what is wrong with the file.
            raise AssetError(f"{path} is not a readable PyTorch state dict ({what}): {plain_exc}") from exc
    if not isinstance(state, dict):
        raise AssetError(f"{path} holds a {type(state).__name__}, expected a state dict ({what})")
    return state
