"""generate.py end to end on a tiny asset folder in the official layout: mp4s, interruption, torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from conftest import REPO_ROOT
from liveact.video import probe_video, read_frames
from tiny_assets import write_tiny_assets

FPS = 24
SIZE = "64*48"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("generate")
    ckpt, w2v = write_tiny_assets(root / "assets")
    inputs = root / "inputs"
    inputs.mkdir()
    yy, xx = np.mgrid[0:96, 0:80]
    face = np.stack([(xx * 3) % 256, (yy * 2) % 256, ((xx + yy) * 5) % 256], -1).astype(np.uint8)
    Image.fromarray(face).save(inputs / "face.png")
    for name, seconds in (("hello", 1.7), ("long", 7.0)):
        t = np.arange(int(16000 * seconds)) / 16000
        wave = 0.3 * np.sin(2 * np.pi * 180 * t) * (1.2 + np.sin(2 * np.pi * 2.5 * t))
        sf.write(inputs / f"{name}.wav", wave.astype(np.float32), 16000)
    jobs = [
        {"prompt": "A person talks.", "cond_image": "face.png", "cond_audio": "hello.wav"},
        {"prompt": "A person talks.", "cond_image": "face.png", "cond_audio": "long.wav",
         "edit_prompt": {"[1, 2]": "The person smiles.", "[2, 3]": "The person nods."}},
    ]
    (inputs / "jobs.json").write_text(json.dumps(jobs))
    (inputs / "long.json").write_text(json.dumps(jobs[1:]))
    return {"ckpt": ckpt, "w2v": w2v, "inputs": inputs, "root": root}


def _command(ws: dict[str, Path], json_name: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO_ROOT / "generate.py"), "--ckpt_dir", str(ws["ckpt"]), "--wav2vec_dir",
            str(ws["w2v"]), "--input_json", str(ws["inputs"] / json_name), "--size", SIZE, "--fps", str(FPS),
            "--device", "cpu", "--output_dir", str(out), *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_two_entries_give_two_playable_mp4s(workspace: dict[str, Path]) -> None:
    out = workspace["root"] / "out"
    proc = subprocess.run(_command(workspace, "jobs.json", out, "--dura_print"), capture_output=True, text=True,
                          timeout=600, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Done Block 0" in proc.stdout and "real-time factor" in proc.stderr
    for stem, audio in (("face_hello", "hello.wav"), ("face_long", "long.wav")):
        info = probe_video(out / f"{stem}.mp4")
        assert info["has_video"] and info["has_audio"]
        assert (info["width"], info["height"]) == (64, 48) and info["fps"] == pytest.approx(FPS)
        seconds = sf.info(str(workspace["inputs"] / audio)).duration
        assert abs(info["video_duration"] - seconds) <= 1 / FPS + 1e-6, (info, seconds)
        assert abs(info["duration"] - seconds) <= 1 / FPS + 1e-6


def test_killed_run_leaves_a_playable_partial_mp4(workspace: dict[str, Path]) -> None:
    out = workspace["root"] / "killed"
    proc = subprocess.Popen(_command(workspace, "long.json", out, "--dura_print"), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=_env())
    try:
        for line in proc.stdout:
            if line.startswith("Done Block 1"):
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    path = out / "face_long.mp4"
    deadline = time.time() + 30  # ffmpeg finalises on its own once its stdin closes
    while time.time() < deadline:
        try:
            frames = read_frames(path)
            if len(frames) >= 21 + 32:
                break
        except Exception:  # noqa: BLE001 - the file may still be being finalised
            pass
        time.sleep(0.5)
    frames = read_frames(path)
    assert len(frames) >= 21 + 32, "the two finished blocks (21 + 32 frames) are in the file"
    assert probe_video(path)["has_audio"]


@pytest.mark.slow
def test_torchrun_two_processes_match_one(workspace: dict[str, Path]) -> None:
    single, multi = workspace["root"] / "single", workspace["root"] / "multi"
    extra = ("--max_blocks", "3", "--audio_cfg", "2.0")
    proc = subprocess.run(_command(workspace, "long.json", single, *extra), capture_output=True, text=True,
                          timeout=600, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    cmd = _command(workspace, "long.json", multi, *extra)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *cmd[1:]]
    proc = subprocess.run(torchrun, capture_output=True, text=True, timeout=900, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in multi.iterdir()) == ["face_long.mp4"]
    a, b = read_frames(single / "face_long.mp4"), read_frames(multi / "face_long.mp4")
    assert a.shape == b.shape
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
