"""Timed-action evidence: the signals follow what the renderer drew, block bookkeeping, video check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from liveact.eval.actions import (
    action_contrasts,
    action_signals,
    block_spans,
    check_video,
    default_spans,
    summarise,
    wobble,
)
from liveact.eval.reader import AvatarReader
from liveact.train.synth import ACTIONS, make_clip

SILENT = np.zeros(16000 * 4, np.float32)  # given audio: no eSpeak needed, the mouth stays closed


def truth_read(clip: object) -> dict[str, np.ndarray]:
    """What a perfect reader would read: the renderer's own face state."""
    return {"motion": clip.motion, "eyes_closed": clip.blink.astype(np.float32)}  # type: ignore[attr-defined]


def test_block_spans_tile_the_video() -> None:
    first, later = default_spans()
    assert (first, later) == (21, 32)
    spans = block_spans(90, first, later)
    assert spans == [(0, 21), (21, 53), (53, 85), (85, 90)]
    assert block_spans(21, first, later) == [(0, 21)]


def test_wobble_sees_oscillation_not_drift() -> None:
    t = np.arange(200) / 25.0
    still = wobble(0.001 * t, 20)
    nodding = wobble(0.03 * np.sin(2 * np.pi * 1.3 * t), 20)
    assert nodding[20:-20].min() > 10 * still.max()


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_each_action_shows_in_its_own_evidence(action: str) -> None:
    clip = make_clip(11, num_blocks=3, size=64, actions=["", action, ""], audio=SILENT)
    signals = action_signals(truth_read(clip), clip.fps)
    spans = block_spans(len(clip.frames), *default_spans())
    ((block, name, contrast),) = action_contrasts(signals, clip.block_actions, spans)
    assert (block, name) == (1, action)
    # Well above what the same evidence shows when nothing happens: the same person and motion without
    # the action, block 1 scored as if it acted.
    calm = make_clip(11, num_blocks=3, size=64, actions=["", "", ""], audio=SILENT)
    idle = action_contrasts(action_signals(truth_read(calm), calm.fps), ["", action, ""], spans)[0][2]
    assert contrast > 0.01 and contrast > 5 * abs(idle), (contrast, idle)  # nods: ~0.02 of the frame


def test_contrasts_need_a_neutral_block() -> None:
    signals = {a: np.ones(53, np.float32) for a in ACTIONS}
    assert action_contrasts(signals, ["smile", "nod"], block_spans(53, 21, 32)) == []


def test_summary_thresholds_at_half_the_ground_truth() -> None:
    truth = [(1, "smile", 0.4), (2, "smile", 0.6)]
    model = [(1, "smile", 0.3), (2, "smile", 0.2)]
    out = summarise(model, truth)["smile"]
    assert out["ground_truth"] == pytest.approx(0.5) and out["model"] == pytest.approx(0.25)
    assert out["ratio"] == pytest.approx(0.5) and out["shows"] == pytest.approx(0.5)
    assert out["shows_ground_truth"] == 1.0 and "nod" not in summarise(model, truth)


class _TruthReader(AvatarReader):
    """Reads a rendered clip back by frame index (the video's frames are the clip's, re-encoded)."""

    def __init__(self, clip: object) -> None:
        super().__init__()
        self.clip = clip

    def read(self, frames: np.ndarray, batch: int = 64) -> dict[str, np.ndarray]:
        n = len(frames)
        return {
            **{k: v[:n] for k, v in truth_read(self.clip).items()},
            "mouth": np.zeros(n),
            "accessories": np.zeros((n, 3), np.int64),
        }


def test_check_video_scores_the_edit_ranges(tmp_path: Path) -> None:
    import imageio_ffmpeg

    clip = make_clip(5, num_blocks=4, size=64, actions=["", "smile", "", "raise_brows"], audio=SILENT)
    path = tmp_path / "edit.mp4"
    writer = imageio_ffmpeg.write_frames(str(path), (64, 64), fps=25, quality=9, macro_block_size=1)
    writer.send(None)
    for frame in clip.frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    edits = {"[1, 1]": ACTIONS["smile"][0], "[3, 3]": ACTIONS["raise_brows"][1]}
    result = check_video(path, edits, _TruthReader(clip), plot=tmp_path / "edit.png")
    assert result["frames"] == len(clip.frames)
    assert [(b["block"], b["action"]) for b in result["blocks"]] == [(1, "smile"), (3, "raise_brows")]
    assert all(b["contrast"] > 0.3 for b in result["blocks"])
    assert (tmp_path / "edit.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="action prompts"):
        check_video(path, {"[1, 1]": "The person dances."}, _TruthReader(clip))
