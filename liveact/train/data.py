"""Nano's training set: synthetic clips turned into exactly what the DiT consumes, stored in shards.

Each clip (``synth.make_clip``) becomes: the video latents ``[16, F_lat, h, w]`` (tiny autoencoder),
the I2V conditioning latent of ``(frame 0, zeros ...)`` ``[16, 14, h, w]`` (its latent 0 is also the
reference image's latent, read by the image branch), the log-mel rows ``[S, 4, 80]`` of the audio
with a random noise floor, the prompt of every block, and the ground truth kept for evaluation
(mouth opening, mouth position and blinks per frame, the action of each block, the person's
accessories).

    python -m liveact.train data --tae runs/tae/tae.safetensors --out runs/data --clips 4000

Shards of ``--shard`` clips are written atomically and skipped when present, so the command resumes.
Shards written before a ground-truth field existed get it with ``--add_mouth_xy`` (the clips are
rendered again from their seeds; nothing is re-encoded, so a model trained on them stays valid).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from liveact.components.logmel import LogMelEncoder
from liveact.components.tae import TinyAutoencoder
from liveact.config import MemoryConfig

logger = logging.getLogger(__name__)

VAL_SEED_OFFSET = 50_000_000  # validation clips: other people, held-out voices and sentences


def conditioning_frames(first_frame: torch.Tensor, memory: MemoryConfig, stride: int) -> torch.Tensor:
    """``[1, 3, F, H, W]``: frame 0 then zeros, ``F`` covering the first block and one later block."""
    latents = memory.first_block_frames + memory.block_frames
    video = torch.zeros(1, 3, 1 + (latents - 1) * stride, *first_frame.shape[-2:])
    video[:, :, 0] = first_frame
    return video


def add_noise_floor(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Background noise at -75..-45 dBFS: silence in real recordings is never digital zero."""
    level = 10 ** (rng.uniform(-75, -45) / 20)
    return (wave + level * rng.standard_normal(len(wave)).astype(np.float32)).astype(np.float32)


def encode_clip(
    seed: int, num_blocks: int, tae: TinyAutoencoder, mel: LogMelEncoder, held_out: bool, size: int
) -> tuple[dict[str, torch.Tensor], dict]:
    """Render clip ``seed`` and turn it into model inputs + ground truth."""
    from liveact.train.synth import make_clip

    clip = make_clip(seed, num_blocks=num_blocks, size=size, held_out=held_out)
    rng = np.random.default_rng(seed + 1)
    wave = add_noise_floor(clip.audio, rng)
    video = torch.from_numpy(clip.frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1  # [1, 3, F, H, W]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        latents = tae.encode_frames(video).float()[0]
        cond = tae.encode_frames(
            conditioning_frames(video[:, :, 0], MemoryConfig(), tae.temporal_stride)
        ).float()[0]
    audio = mel.rows(torch.from_numpy(wave), clip.fps, 0, clip.frames.shape[0])
    tensors = {
        "latents": latents.half(),
        "cond": cond.half(),
        "audio": audio.half(),
        "mouth": torch.from_numpy(clip.mouth),
        "mouth_xy": torch.from_numpy(clip.mouth_xy),
        "blink": torch.from_numpy(clip.blink.astype(np.float32)),
        "wave": torch.from_numpy(wave).half(),
    }
    meta = {
        "seed": seed,
        "prompts": clip.prompts,
        "actions": clip.block_actions,
        "main_prompt": clip.main_prompt,
        "voice": clip.voice,
        "accessories": clip.avatar.accessories,
    }
    return tensors, meta


def _add_mouth_xy_worker(args: tuple) -> None:
    """Add ``mouth_xy`` to one shard, rendering its clips again from their seeds."""
    from liveact.train.synth import make_clip

    shard_path, held_out, size = args
    torch.set_num_threads(1)
    tensors = load_file(str(shard_path))
    meta = json.loads(shard_path.with_suffix(".json").read_text())
    rows = []
    for i, m in enumerate(meta):
        clip = make_clip(m["seed"], num_blocks=len(m["prompts"]), size=size, held_out=held_out)
        if clip.prompts != m["prompts"] or not np.allclose(
            clip.mouth, tensors["mouth"][i].numpy(), atol=1e-5
        ):
            raise RuntimeError(
                f"clip {m['seed']} of {shard_path} renders differently now (was it built with "
                f"{'--held_out' if not held_out else 'no --held_out'}?): rebuild the shard"
            )
        rows.append(torch.from_numpy(clip.mouth_xy))
    tensors["mouth_xy"] = torch.stack(rows)
    tmp = shard_path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, shard_path)


def add_mouth_xy(out: Path, held_out: bool, size: int, workers: int) -> None:
    """Give every shard of ``out`` that lacks it the per-frame mouth position (resumable, atomic)."""
    from safetensors import safe_open

    jobs = []
    for path in sorted(out.glob("shard_*.safetensors")):
        with safe_open(str(path), "pt") as f:
            if "mouth_xy" not in f.keys():  # a safetensors file has keys(), not "in"
                jobs.append((path, held_out, size))
    _run_pool(_add_mouth_xy_worker, jobs, workers, f"mouth_xy -> {out}")


def _run_pool(worker: Callable[[tuple], None], jobs: list[tuple], workers: int, desc: str) -> None:
    """Run ``worker(job)`` for every job in ``workers`` spawned processes, with a progress bar."""
    if not jobs:
        return
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers) as pool:
        for _ in tqdm(pool.imap_unordered(worker, jobs), total=len(jobs), desc=desc):
            pass


def _worker(args: tuple) -> None:
    """Write one shard (in a worker process with one thread)."""
    shard_path, seeds, num_blocks, tae_path, held_out, size = args
    torch.set_num_threads(1)
    tae = TinyAutoencoder.from_file(tae_path)
    mel = LogMelEncoder()
    items = [encode_clip(s, num_blocks, tae, mel, held_out, size) for s in seeds]
    tensors = {k: torch.stack([t[k] for t, _ in items]) for k in items[0][0]}
    tmp = shard_path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    shard_path.with_suffix(".json").write_text(json.dumps([m for _, m in items]))
    os.replace(tmp, shard_path)


def build(
    out: Path,
    tae_path: Path,
    clips: int,
    shard: int,
    num_blocks: int,
    workers: int,
    seed: int,
    held_out: bool,
    size: int,
) -> None:
    """Render and encode ``clips`` clips into ``out/shard_*.safetensors`` (resumable)."""
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for i in range(0, clips, shard):
        path = out / f"shard_{i // shard:05d}.safetensors"
        if not path.is_file():
            jobs.append(
                (
                    path,
                    list(range(seed + i, seed + min(clips, i + shard))),
                    num_blocks,
                    tae_path,
                    held_out,
                    size,
                )
            )
    _run_pool(_worker, jobs, workers, f"shards -> {out}")


@dataclass
class ClipSet:
    """All shards of a folder in memory (float16 tensors, a few hundred MB)."""

    latents: torch.Tensor  # [N, 16, F_lat, h, w]
    cond: torch.Tensor  # [N, 16, 14, h, w]
    audio: torch.Tensor  # [N, S, sub, mels]
    mouth: torch.Tensor  # [N, S]
    blink: torch.Tensor  # [N, S]
    wave: torch.Tensor  # [N, samples]
    meta: list[dict]
    mouth_xy: torch.Tensor | None = None  # [N, S, 2] mouth centre (x, y), fractions of the frame

    @classmethod
    def load(cls, folder: Path, limit: int | None = None) -> ClipSet:
        """Read every complete shard of ``folder`` (at most ``limit`` clips)."""
        shards = sorted(folder.glob("shard_*.safetensors"))
        if not shards:
            raise FileNotFoundError(f"no shards in {folder}: build them with `python -m liveact.train data`")
        parts, meta = [], []
        for path in shards:
            parts.append(load_file(str(path)))
            meta += json.loads(path.with_suffix(".json").read_text())
            if limit and len(meta) >= limit:
                break
        keys = set.intersection(*(set(p) for p in parts))  # a field older shards lack is left out
        cat = {k: torch.cat([p[k] for p in parts])[:limit] for k in keys}
        return cls(meta=meta[:limit], **cat)

    def __len__(self) -> int:
        return len(self.meta)


def main(argv: list[str] | None = None) -> None:
    """``python -m liveact.train data``."""
    p = argparse.ArgumentParser(
        prog="python -m liveact.train data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--tae", type=Path, default=None, help="trained autoencoder (tae.safetensors); needed to build"
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--clips", type=int, default=4000)
    p.add_argument("--shard", type=int, default=200)
    p.add_argument("--blocks", type=int, default=3, help="blocks per clip (3 = 85 frames, 3.4 s at 25 fps)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=1_000_000)
    p.add_argument("--held_out", action="store_true", help="validation clips: held-out voices and sentences")
    p.add_argument("--size", type=int, default=128)
    p.add_argument(
        "--add_mouth_xy",
        action="store_true",
        help="add the mouth position to existing shards of --out (same --held_out as when built)",
    )
    a = p.parse_args(argv)
    if a.add_mouth_xy:
        add_mouth_xy(a.out, a.held_out, a.size, a.workers)
        return
    if a.tae is None:
        p.error("--tae is required to build shards (the autoencoder that encodes the clips)")
    build(a.out, a.tae, a.clips, a.shard, a.blocks, a.workers, a.seed, a.held_out, a.size)
