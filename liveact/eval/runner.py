"""Sample a trained Nano model on held-out synthetic clips and score the videos.

The clips come from held-out shards (``python -m liveact.train data --held_out``: people, voices and
sentences never seen in training), so the conditioning is exactly what training saw and the ground
truth (mouth opening per frame) is known. Sampling is the production sampler
(``NeighborForcingSampler``) with any schedule: the multi-step teacher schedule or the 3-step one.

    python -m liveact.eval run --model runs/stage1/model --tae runs/tae/tae.safetensors \
        --data runs/data_val --clips 16 --steps 20
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from liveact.components.nano import MiniLMTextEncoder
from liveact.components.tae import TinyAutoencoder
from liveact.config import SamplerConfig
from liveact.eval.metrics import VideoMetrics, evaluate_video
from liveact.eval.reader import AvatarReader, default_reader_dir
from liveact.model import LiveActTransformer
from liveact.sampler import Conditions, NeighborForcingSampler
from liveact.train.data import ClipSet
from liveact.train.forcing import conditioning, image_tokens
from liveact.video import to_uint8_frames

logger = logging.getLogger(__name__)


def flow_schedule(steps: int, shift: float = 3.0, skip_audio_steps: tuple[int, ...] = ()) -> SamplerConfig:
    """An ``steps``-step schedule: ``sigma = shift u / (1 + (shift - 1) u)`` on a uniform ``u`` grid."""
    u = np.linspace(1.0, 0.0, steps + 1)
    sigma = shift * u / (1 + (shift - 1) * u)
    return SamplerConfig(
        timesteps=tuple(float(1000 * s) for s in sigma),
        skip_audio_steps=skip_audio_steps,
        cfg_steps=tuple(range(steps)),
    )


def eval_schedule(steps: int | None, edit_cfg: float = 1.0, shift: float = 3.0) -> SamplerConfig:
    """What the evaluations sample with: ``flow_schedule(steps)``, or the 3-step student schedule with
    audio on every step (as Nano's ``components.json``) when ``steps`` is None; ``edit_cfg`` on top."""
    schedule = flow_schedule(steps, shift) if steps else replace(SamplerConfig(), skip_audio_steps=())
    return replace(schedule, edit_cfg=edit_cfg)


@dataclass
class NanoParts:
    """The pieces of a Nano model the evaluation drives directly."""

    transformer: LiveActTransformer
    tae: TinyAutoencoder
    text: MiniLMTextEncoder

    @classmethod
    def load(cls, model_dir: Path, tae_path: Path) -> NanoParts:
        """Load a stage-1/2 export folder and an autoencoder file."""
        transformer = LiveActTransformer.from_pretrained(model_dir, torch_dtype=torch.float32)
        return cls(
            transformer,
            TinyAutoencoder.from_file(tae_path),
            MiniLMTextEncoder(max_tokens=transformer.config.text_len),
        )


def clip_conditions(parts: NanoParts, data: ClipSet, index: int) -> Conditions:
    """Sampler conditions of held-out clip ``index``: its reference, audio rows and per-block prompts."""
    meta = data.meta[index]
    cond = data.cond[index : index + 1].float()
    prompts = meta["prompts"]
    texts = parts.text.encode([meta["main_prompt"], *prompts])
    edits = [((k, k), texts[1 + k]) for k, p in enumerate(prompts) if p != meta["main_prompt"]]
    return Conditions(
        text=texts[0],
        clip=image_tokens(cond, parts.transformer.config.patch_size[1]),
        y=conditioning(cond, 4),
        audio=data.audio[index].float(),
        edits=edits,
    )


@torch.no_grad()
def decode_truth(tae: TinyAutoencoder, data: ClipSet, index: int) -> np.ndarray:
    """Held-out clip ``index``'s own latents decoded: ``[F, H, W, 3]`` uint8 (the metrics' ceiling)."""
    return to_uint8_frames(tae.decode_frames(data.latents[index : index + 1].float()))


@torch.no_grad()
def sample_frames(
    parts: NanoParts,
    cond: Conditions,
    num_blocks: int,
    schedule: SamplerConfig,
    seed: int,
    context: str = "neighbor",
    audio_cfg: float = 1.0,
) -> np.ndarray:
    """Generate ``num_blocks`` blocks and decode them: ``[F, H, W, 3]`` uint8."""
    sampler = NeighborForcingSampler(
        parts.transformer, audio_cfg=audio_cfg, sampler=schedule, context=context
    )
    decoder = parts.tae.stream_decoder()
    blocks = [
        to_uint8_frames(decoder.decode_block(x0))
        for x0 in sampler.stream(cond, num_blocks, generator=torch.Generator().manual_seed(seed))
    ]
    return np.concatenate(blocks)


def evaluate_clips(
    parts: NanoParts,
    data: ClipSet,
    reader: AvatarReader,
    clips: int,
    schedule: SamplerConfig,
    context: str = "neighbor",
    audio_cfg: float = 1.0,
    seed: int = 0,
    ground_truth: bool = False,
) -> dict[str, float]:
    """Mean metrics over the first ``clips`` held-out clips (one sample each).

    With ``ground_truth`` the clips' own latents are decoded instead of sampled: the ceiling every
    metric can reach through this autoencoder and this reader.
    """
    scores: list[VideoMetrics] = []
    for i in range(min(clips, len(data))):
        blocks = len(data.meta[i]["prompts"])
        if ground_truth:
            frames = decode_truth(parts.tae, data, i)
        else:
            frames = sample_frames(
                parts, clip_conditions(parts, data, i), blocks, schedule, seed + i, context, audio_cfg
            )
        wave = data.wave[i].float().numpy()
        scores.append(evaluate_video(frames, wave, 25.0, reader, mouth_gt=data.mouth[i].numpy()))
    return summarise(scores)


def summarise(scores: list[VideoMetrics]) -> dict[str, float]:
    """Means of every metric (skipping ``None``), plus the clip count."""
    out: dict[str, float] = {"clips": float(len(scores))}
    for key in scores[0].to_dict():
        values = [getattr(s, key) for s in scores if getattr(s, key) is not None]
        if values:
            out[key] = float(np.mean(values))
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m liveact.eval run``."""
    p = argparse.ArgumentParser(
        prog="python -m liveact.eval run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", type=Path, required=True, help="DiT folder (config.json + safetensors)")
    p.add_argument("--tae", type=Path, required=True)
    p.add_argument("--reader", type=Path, default=default_reader_dir())
    p.add_argument("--data", type=Path, required=True, help="held-out shards")
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--steps", type=int, default=None, help="multi-step schedule; default: the 3-step one")
    p.add_argument("--shift", type=float, default=3.0)
    p.add_argument("--context", choices=("neighbor", "clean"), default="neighbor")
    p.add_argument("--audio_cfg", type=float, default=1.0)
    p.add_argument(
        "--edit_cfg", type=float, default=1.0, help="edit guidance on blocks with an action prompt"
    )
    p.add_argument(
        "--ground_truth",
        action="store_true",
        help="decode the clips' own latents instead of sampling (the metrics' ceiling)",
    )
    p.add_argument("--out", type=Path, default=None, help="write the metrics JSON here")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    schedule = eval_schedule(a.steps, a.edit_cfg, a.shift)
    parts = NanoParts.load(a.model, a.tae)
    result = evaluate_clips(
        parts,
        ClipSet.load(a.data, a.clips),
        AvatarReader.load(a.reader),
        a.clips,
        schedule,
        a.context,
        a.audio_cfg,
        ground_truth=a.ground_truth,
    )
    result.update(
        model="ground truth" if a.ground_truth else str(a.model),
        steps=schedule.num_steps,
        context=a.context,
        audio_cfg=a.audio_cfg,
        edit_cfg=a.edit_cfg,
    )
    print(json.dumps(result, indent=1))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=1))
