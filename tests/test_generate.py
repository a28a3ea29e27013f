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
from conftest import REPO_ROOT
from PIL import Image
from tiny_assets import write_tiny_assets

from liveact.video import probe_video, read_frames

FPS = 24
SIZE = "64*48"


def default_sigint() -> None:
    """Give a child the default Ctrl-C: a runner started in the background by a non-interactive shell
    ignores SIGINT, children inherit that, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("generate")
    ckpt, w2v = write_tiny_assets(root / "assets")
    inputs = root / "inputs"
    inputs.mkdir()
    yy, xx = np.mgrid[0:96, 0:80]
    face = np.stack([(xx * 3) % 256, (yy * 2) % 256, ((xx + yy) * 5) % 256], -1).astype(np.uint8)
    Image.fromarray(face).save(inputs / "face.png")
    # hello: 2.5 s = 60 frames at 24 fps, which the reference's block count (2 blocks, 53 frames) cuts short.
    for name, seconds in (("hello", 2.5), ("long", 7.0)):
        t = np.arange(int(16000 * seconds)) / 16000
        wave = 0.3 * np.sin(2 * np.pi * 180 * t) * (1.2 + np.sin(2 * np.pi * 2.5 * t))
        sf.write(inputs / f"{name}.wav", wave.astype(np.float32), 16000)
    jobs = [
        {"prompt": "A person talks.", "cond_image": "face.png", "cond_audio": "hello.wav"},
        {
            "prompt": "A person talks.",
            "cond_image": "face.png",
            "cond_audio": "long.wav",
            "edit_prompt": {"[1, 2]": "The person smiles.", "[2, 3]": "The person nods."},
        },
    ]
    (inputs / "jobs.json").write_text(json.dumps(jobs))
    (inputs / "long.json").write_text(json.dumps(jobs[1:]))
    return {"ckpt": ckpt, "w2v": w2v, "inputs": inputs, "root": root}


def _command(ws: dict[str, Path], json_name: str, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(REPO_ROOT / "generate.py"),
        "--ckpt_dir",
        str(ws["ckpt"]),
        "--wav2vec_dir",
        str(ws["w2v"]),
        "--input_json",
        str(ws["inputs"] / json_name),
        "--size",
        SIZE,
        "--fps",
        str(FPS),
        "--device",
        "cpu",
        "--output_dir",
        str(out),
        *extra,
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_two_entries_give_two_playable_mp4s(workspace: dict[str, Path]) -> None:
    out = workspace["root"] / "out"
    proc = subprocess.run(
        _command(workspace, "jobs.json", out, "--dura_print"),
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Done Block 0" in proc.stdout and "real-time factor" in proc.stderr
    # stderr is not a terminal: one line per preparation stage and per block, no progress bar.
    assert "face_hello.mp4: preparing 1/4: encoding the prompts" in proc.stderr
    assert "face_hello.mp4: preparing 4/4: encoding the conditioning video" in proc.stderr
    assert "face_hello.mp4: block 3/3 done" in proc.stderr and "face_long.mp4: block 6/6 done" in proc.stderr
    assert "\r" not in proc.stderr and "done: 2 files written" in proc.stderr
    for stem, audio in (("face_hello", "hello.wav"), ("face_long", "long.wav")):
        info = probe_video(out / f"{stem}.mp4")
        assert info["has_video"] and info["has_audio"]
        assert (info["width"], info["height"]) == (64, 48) and info["fps"] == pytest.approx(FPS)
        seconds = sf.info(str(workspace["inputs"] / audio)).duration
        assert abs(info["video_duration"] - seconds) <= 1 / FPS + 1e-6, (info, seconds)
        assert abs(info["duration"] - seconds) <= 1 / FPS + 1e-6


def test_killed_run_leaves_a_playable_partial_mp4(workspace: dict[str, Path]) -> None:
    out = workspace["root"] / "killed"
    proc = subprocess.Popen(
        _command(workspace, "long.json", out, "--dura_print"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=_env(),
    )
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
        except Exception:
            pass
        time.sleep(0.5)
    frames = read_frames(path)
    assert len(frames) >= 21 + 32, "the two finished blocks (21 + 32 frames) are in the file"
    assert probe_video(path)["has_audio"]


def _interrupt(ws: dict[str, Path], out: Path, when: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Run long.json and send SIGINT (Ctrl-C) when a stdout or stderr line starts with ``when``."""
    import threading

    proc = subprocess.Popen(
        _command(ws, "long.json", out, "--dura_print"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
        preexec_fn=default_sigint,
    )
    lines: list[str] = []
    timer = threading.Timer(600, proc.kill)  # never hang the suite
    timer.start()
    try:
        for line in proc.stdout:
            lines.append(line)
            if when in line:
                proc.send_signal(signal.SIGINT)
                break
        lines += proc.stdout.readlines()
        proc.wait(timeout=120)
    finally:
        timer.cancel()
    return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(lines)), out / "face_long.mp4"


def test_ctrl_c_says_what_is_on_disk(workspace: dict[str, Path]) -> None:
    """While preparing: no file, and it says so; after block 1: the file plays with what it says it holds."""
    proc, path = _interrupt(workspace, workspace["root"] / "early", "face_long.mp4: preparing 2/4")
    assert proc.returncode == 130, proc.stdout[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last == (
        "interrupted while preparing face_long.mp4 (encoding the portrait (image encoder)): "
        "no new video was written"
    ), last
    assert not path.exists()

    proc, path = _interrupt(workspace, workspace["root"] / "late", "Done Block 1")
    assert proc.returncode == 130, proc.stdout[-3000:]
    frames = read_frames(path)
    assert len(frames) >= 21 + 32
    last = proc.stdout.strip().splitlines()[-1]
    seconds = len(frames) / FPS
    assert last == f"interrupted: {path} holds the first {len(frames)} frames ({seconds:.2f} s) and plays"
    assert probe_video(path)["has_audio"]


@pytest.mark.slow
def test_torchrun_two_processes_match_one(workspace: dict[str, Path]) -> None:
    single, multi = workspace["root"] / "single", workspace["root"] / "multi"
    extra = ("--max_blocks", "3", "--audio_cfg", "2.0")
    proc = subprocess.run(
        _command(workspace, "long.json", single, *extra),
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    cmd = _command(workspace, "long.json", multi, *extra)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *cmd[1:]]
    proc = subprocess.run(torchrun, capture_output=True, text=True, timeout=900, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in multi.iterdir()) == ["face_long.mp4"]
    a, b = read_frames(single / "face_long.mp4"), read_frames(multi / "face_long.mp4")
    assert a.shape == b.shape
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
