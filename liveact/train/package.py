"""Assemble a self-contained Nano checkpoint folder (what ``liveact/assets/nano`` ships).

    python -m liveact.train package --model runs/stage2/model --tae runs/tae_decoder/tae.safetensors \
        --out liveact/assets/nano

The folder holds the DiT in the official layout (``config.json`` + ``diffusion_pytorch_model.safetensors``,
stored in bfloat16 to halve the size), the tiny autoencoder (``tae.safetensors``) and
``components.json``, which names the text, image and audio encoders, the sampler schedule and the size
and frame rate the model was trained for. ``LiveActPipeline.from_pretrained`` reads exactly this.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from liveact.components.logmel import LogMelConfig
from liveact.components.nano import COMPONENTS_FILE, TAE_FILE
from liveact.components.tae import TinyAutoencoder
from liveact.loading import DIT_CONFIG, DIT_WEIGHTS, load_transformer


def components_spec(text_len: int, size: int, fps: float, edit_cfg: float = 1.0) -> dict:
    """``components.json`` of a Nano model (``edit_cfg``: its default edit guidance, see
    ``SamplerConfig``)."""
    return {
        "family": "liveact-nano",
        "text_encoder": {"type": "minilm", "max_tokens": text_len},
        "image_encoder": {"type": "reference_latent", "patch": 2},
        "audio_encoder": {"type": "logmel", **LogMelConfig().to_dict()},
        "autoencoder": {"type": "tae", "file": TAE_FILE},
        "sampler": {
            "timesteps": [1000.0, 937.5, 833.33333333, 0.0],
            "skip_audio_steps": [],
            "cfg_steps": [1, 2],
            "edit_cfg": edit_cfg,
        },
        "defaults": {"size": [size, size], "fps": fps},
    }


def package(
    model: Path,
    tae: Path,
    out: Path,
    size: int = 128,
    fps: float = 25.0,
    dtype: torch.dtype = torch.bfloat16,
    edit_cfg: float = 1.0,
) -> None:
    """Write ``out`` from a DiT folder and an autoencoder file (validated by loading both)."""
    out.mkdir(parents=True, exist_ok=True)
    dit = load_transformer(model, dtype=torch.float32)
    shutil.copyfile(model / DIT_CONFIG, out / DIT_CONFIG)
    weights = load_file(str(model / DIT_WEIGHTS))
    save_file({k: v.to(dtype).contiguous() for k, v in weights.items()}, str(out / DIT_WEIGHTS))
    TinyAutoencoder.from_file(tae)  # fails loudly on a bad file before anything ships
    shutil.copyfile(tae, out / TAE_FILE)
    spec = components_spec(dit.config.text_len, size, fps, edit_cfg)
    (out / COMPONENTS_FILE).write_text(json.dumps(spec, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    """``python -m liveact.train package``."""
    p = argparse.ArgumentParser(
        prog="python -m liveact.train package",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", type=Path, required=True, help="DiT folder (config.json + safetensors)")
    p.add_argument("--tae", type=Path, required=True, help="autoencoder file (tae.safetensors)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument(
        "--edit_cfg",
        type=float,
        default=1.0,
        help="edit guidance the model runs with by default (chosen on held-out clips: "
        "python -m liveact.eval actions --edit_cfg ...)",
    )
    a = p.parse_args(argv)
    package(a.model, a.tae, a.out, a.size, a.fps, edit_cfg=a.edit_cfg)
