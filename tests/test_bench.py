"""``python -m liveact.bench``: every stage of an end-to-end run is timed and adds up to the wall time."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from liveact.bench import cpu as bench
from liveact.bench.cli import main as bench_main
from liveact.config import load_preset
from liveact.pipeline import PREPARE_STAGE_TEXT, PREPARE_STAGES

# Components small enough for a CPU test (the real sets are bench.ENCODER_SETS).
CHEAP = bench.EncoderSet(vae_base_dim=8, t5_layers=1, t5_vocab=64, t5_ffn=64, clip_layers=1, what="test set")


def _cheap_preset():
    tiny = load_preset("tiny")
    model = replace(tiny.model, text_dim=64, clip_dim=80, audio_layers=2, audio_channels=64, num_layers=1)
    return replace(tiny, model=model)


def test_speed_times_every_stage() -> None:
    pipe = bench.random_pipeline(_cheap_preset(), CHEAP, (32, 32), 25, torch.device("cpu"), torch.float32)
    report = bench.run_speed(pipe, blocks=2)
    assert list(report.prepare) == list(PREPARE_STAGES)
    assert len(report.dit) == len(report.vae) == len(report.mp4) == 2
    assert all(t > 0 for t in [*report.prepare.values(), *report.dit, *report.vae, *report.mp4])
    parts = (
        sum(report.prepare.values()) + sum(report.dit) + sum(report.vae) + sum(report.mp4) + report.mp4_close
    )
    assert parts <= report.wall
    assert report.audio_seconds == pytest.approx((21 + 32) / 25, abs=1e-3)
    assert report.real_time_factor == pytest.approx(report.audio_seconds / report.wall)
    assert report.block_seconds == pytest.approx([21 / 25, 32 / 25])

    lines = bench.format_speed(report, "header")
    text = "\n".join(lines)
    for name in [*PREPARE_STAGE_TEXT.values(), "DiT", "decode to frames", "mp4 encode + mux"]:
        assert name in text
    assert f"real-time factor {report.real_time_factor:.3f}" in text and "steady state" in text


def test_speed_command_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Presets by file path; every subcommand has its parser; bad values are refused."""
    preset = _cheap_preset()
    path = tmp_path / "cheap.json"
    path.write_text(json.dumps(preset.to_dict()))
    monkeypatch.setitem(bench.ENCODER_SETS, "small", CHEAP)
    bench_main(["speed", "--preset", str(path), "--size", "32*32", "--blocks", "1", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "preset cheap (random weights) with small components: test set" in out
    assert "end to end:" in out and "real-time factor" in out
    with pytest.raises(SystemExit, match="--blocks must be >= 1"):
        bench_main(["speed", "--preset", str(path), "--blocks", "0", "--device", "cpu"])
    assert set(bench.SUBCOMMANDS) >= {"flops", "load", "speed"}


def test_flops_accepts_a_preset_file(tmp_path: Path) -> None:
    path = tmp_path / "tiny-copy.json"
    path.write_text(json.dumps(load_preset("tiny").to_dict()))
    report = bench.count_flops(str(path), "64*64")
    assert report.block_flops > 0 and report.frame_len == 16
