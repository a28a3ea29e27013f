"""Parity with the authors' DiT + AR loop on every fixture under ``dit_parity/`` (float32, CPU).

Each case's ``meta.json`` gives the seed, number of blocks, schedule, CFG, memory variant and edits;
the model folder and every dim come from its files.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import case_params, load_meta
from safetensors.torch import load_file

from liveact.config import MemoryConfig, SamplerConfig
from liveact.model import LiveActTransformer
from liveact.sampler import Conditions, NeighborForcingSampler

_MODELS: dict[Path, LiveActTransformer] = {}


def _model(folder: Path) -> LiveActTransformer:
    folder = folder.resolve()
    if folder not in _MODELS:
        _MODELS[folder] = LiveActTransformer.from_pretrained(folder, torch_dtype=torch.float32)
    return _MODELS[folder]


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _sampler_for(meta: dict, model: LiveActTransformer) -> NeighborForcingSampler:
    first, later = meta["block_sizes"]
    memory = replace(MemoryConfig(), first_block_frames=first, block_frames=later)
    schedule = SamplerConfig(
        timesteps=tuple(meta["timesteps"]),
        skip_audio_steps=tuple(meta["skip_audio_steps"]),
        cfg_steps=tuple(meta["cfg_steps"]),
    )
    return NeighborForcingSampler(
        model,
        audio_cfg=meta["audio_cfg"],
        mean_memory=meta["mean_memory"],
        fp8_kv_cache=meta["fp8_kv_cache"],
        memory=memory,
        sampler=schedule,
    )


@pytest.mark.parametrize("case", case_params("dit_parity"))
def test_dit_parity(case: Path) -> None:
    meta = load_meta(case)
    model = _model(case / meta["model_dir"])
    inputs = {k: v.float() for k, v in load_file(case / "inputs.safetensors").items()}
    expected = load_file(case / "expected.safetensors")
    cond = Conditions(
        text=inputs["text"],
        clip=inputs["clip_fea"],
        y=inputs["y"],
        audio=inputs["audio_emb"],
        edits=[((a, b), inputs[name]) for (a, b), name in meta["edits"]],
    )
    sampler = _sampler_for(meta, model)
    # Record every noise tensor the sampler draws, to check the reference's drawing order too.
    drawn: list[torch.Tensor] = []
    draw = sampler._noise

    def recording_draw(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        drawn.append(draw(shape, generator))
        return drawn[-1]

    sampler._noise = recording_draw
    bound = 3e-4 if meta["fp8_kv_cache"] else 1e-5
    gen = torch.Generator().manual_seed(meta["seed"])
    blocks = list(sampler.stream(cond, num_blocks=meta["num_blocks"], generator=gen))
    assert len(blocks) == meta["num_blocks"]
    errors = [_rel_l2(x0, expected[f"x0_block_{k}"]) for k, x0 in enumerate(blocks)]
    assert max(errors) <= bound, f"per-block relative L2 {[f'{e:.2e}' for e in errors]} exceeds {bound}"
    steps = len(meta["timesteps"])
    assert len(drawn) == meta["num_blocks"] * steps
    for n, noise in enumerate(drawn):
        torch.testing.assert_close(noise, expected[f"noise_block_{n // steps}_{n % steps}"])
