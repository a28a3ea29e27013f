"""Download-free metrics: lag correlation, envelopes, drift, the avatar reader's training loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from liveact.eval.metrics import (
    drift_series,
    evaluate_video,
    frame_envelope,
    lag_correlation,
    speech_envelope,
)
from liveact.eval.reader import ACCESSORIES, AvatarReader


def test_lag_correlation_finds_the_delay() -> None:
    rng = np.random.default_rng(0)
    audio = np.convolve(rng.random(300), np.ones(5) / 5, mode="same")
    mouth = np.roll(audio, 3)  # the mouth trails the audio by 3 frames
    corr, lag = lag_correlation(mouth, audio, max_lag=5)
    assert lag == 3 and corr > 0.99
    assert lag_correlation(rng.random(300), audio)[0] < 0.3


def test_envelopes() -> None:
    wave = np.zeros(16000, np.float32)
    wave[4000:8000] = 0.5 * np.sin(np.arange(4000) / 5)
    env = frame_envelope(wave, 25, 25.0)
    assert env[:6].max() == 0 and env[7:11].min() > 0.3 and env[13:].max() == 0
    norm = speech_envelope(wave, 25, 25.0)
    assert norm.max() == pytest.approx(1.0, rel=0.05)


class _FixedReader(AvatarReader):
    """A stand-in reader whose mouth reading is the frame's mean red value (deterministic)."""

    def read(self, frames: np.ndarray, batch: int = 64) -> dict[str, np.ndarray]:
        n = len(frames)
        return {
            "mouth": frames[..., 0].mean(axis=(1, 2)) / 255.0,
            "eyes_closed": np.zeros(n),
            "accessories": np.tile(np.array([[1, 0, 2]]), (n, 1)),
        }


def test_video_metrics_follow_the_signals() -> None:
    fps, n = 25.0, 100
    wave = np.zeros(int(16000 * n / fps), np.float32)
    talking = np.zeros(n, bool)
    talking[20:60] = True
    for f in np.flatnonzero(talking):
        wave[f * 640 : (f + 1) * 640] = 0.4 * np.sin(np.arange(640) / 3) * (0.5 + 0.5 * np.sin(f))
    env = speech_envelope(wave, n, fps)
    frames = np.full((n, 32, 32, 3), 40, np.uint8)
    frames[..., 0] = (255 * env).clip(0, 255).astype(np.uint8)[:, None, None]
    m = evaluate_video(frames, wave, fps, _FixedReader(), mouth_gt=env)
    assert m.lipsync_corr > 0.99 and m.lipsync_lag == 0 and m.mouth_gt_corr > 0.99
    assert m.silence_closed == 1.0 and m.accessory_persistence == 1.0 and m.frames == n
    series = drift_series(frames, frames[0], _FixedReader(), fps, window_seconds=1.0)
    assert len(series) == 4 and all(s["accessory_persistence"] == 1.0 for s in series)


def test_reader_forward_shapes() -> None:
    reader = AvatarReader().eval()
    out = reader.read(np.zeros((3, 64, 64, 3), np.uint8))
    assert out["mouth"].shape == (3,) and out["accessories"].shape == (3, len(ACCESSORIES))
    assert ((out["mouth"] >= 0) & (out["mouth"] <= 1)).all()


@pytest.mark.usefixtures("espeak_voice")
def test_reader_trains_and_reports_its_accuracy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from liveact.eval import reader

    real = reader.labelled_frames
    monkeypatch.setattr(
        reader,
        "labelled_frames",
        lambda seeds, **kw: real(range(seeds.start, seeds.start + 3), size=64, **kw),
    )
    scores = reader.train(tmp_path, steps=3, clips=3, batch=4, seed=1)
    assert set(scores["renders"]) >= {"mouth_mae", "mouth_corr", "glasses_acc"}
    loaded = AvatarReader.load(tmp_path)
    assert torch.equal(next(loaded.parameters()), next(AvatarReader.load(tmp_path).parameters()))


def test_latent_group_mean_bounds_lip_sync() -> None:
    from liveact.eval.ceiling import group_mean, opening_ceilings

    np.testing.assert_allclose(group_mean(np.arange(9.0), 4), [0, 2.5, 2.5, 2.5, 2.5, 6.5, 6.5, 6.5, 6.5])
    fps, hop = 25, 640
    rng = np.random.default_rng(0)

    def speech(opening: np.ndarray) -> np.ndarray:  # loud where the mouth is open, as long as each frame
        return np.concatenate([rng.normal(0, 0.3 if o else 0.01, hop) for o in opening])

    fast = (rng.random(81) < 0.5).astype(np.float32)  # opening and closing within a latent frame
    scores = opening_ceilings(fast, speech(fast), fps)
    assert scores["renderer"] > 0.95  # the opening is the envelope
    assert scores["latent_group_mean"] < scores["renderer"] - 0.2  # four frames' mean loses most of it
    slow = np.r_[1.0, np.repeat(rng.random(20) < 0.5, 4)].astype(np.float32)  # one state per latent frame
    assert opening_ceilings(slow, speech(slow), fps)["latent_group_mean"] > 0.95  # nothing to lose
