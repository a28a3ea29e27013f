"""Progressive mp4 / HLS writers: stream layout, trimming to the audio, float input, crash safety."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from liveact.video import (
    FFmpegError,
    HLSWriter,
    ProgressiveVideoWriter,
    audio_duration,
    probe_video,
    read_frames,
    to_uint8_frames,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
H, W = 64, 96
AAC_FRAME_S = 1024 / 16000  # the audio track ends on an AAC frame boundary


def default_sigint() -> None:
    """Give a child the default Ctrl-C: a runner started in the background by a non-interactive shell
    ignores SIGINT, children inherit that, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def make_frames(start: int, n: int, h: int = H, w: int = W) -> np.ndarray:
    """Smooth frames whose mean brightness encodes the frame index (H.264 keeps it within a few levels).

    Returns ``[n, h, w, 3]`` uint8.
    """
    idx = np.arange(start, start + n, dtype=np.float32)[:, None, None, None]
    ramp = np.linspace(0, 40, w, dtype=np.float32)[None, None, :, None]
    level = 30 + (idx * 7) % 160
    return np.broadcast_to(level + ramp, (n, h, w, 3)).astype(np.uint8)


def write_sine(path: Path, seconds: float, sr: int = 16000) -> Path:
    """A 16-bit mono sine wav of the given length."""
    t = np.arange(round(seconds * sr)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sr, subtype="PCM_16")
    return path


def assert_frames_match(decoded: np.ndarray, start: int) -> None:
    """Decoded frames equal ``make_frames(start, len(decoded))`` up to coding noise."""
    expected = make_frames(start, len(decoded), decoded.shape[1], decoded.shape[2]).astype(np.float32)
    err = np.abs(decoded.astype(np.float32) - expected).mean(axis=(1, 2, 3))
    assert err.max() < 4.0, f"per-frame mean abs error {err.max():.2f}"


def test_mp4_streams_size_fps_and_trim_to_audio(tmp_path: Path) -> None:
    fps, audio_s = 24, 1.3
    wav = write_sine(tmp_path / "a.wav", audio_s)
    out = tmp_path / "out.mp4"
    with ProgressiveVideoWriter(out, fps=fps, audio=wav) as writer:
        for b in range(3):  # 48 frames = 2 s: the generator overshoots the 1.3 s of audio
            writer.write(make_frames(16 * b, 16))
    n_expected = math.ceil(audio_s * fps)
    assert writer.frames_written == n_expected and writer.frames_dropped == 48 - n_expected

    info = probe_video(out)
    assert info["has_video"] and info["has_audio"]
    assert (info["video_codec"], info["audio_codec"]) == ("h264", "aac")
    assert (info["width"], info["height"]) == (W, H)
    assert info["fps"] == pytest.approx(fps)
    assert info["num_frames"] == n_expected
    assert abs(info["video_duration"] - audio_s) <= 1 / fps
    assert abs(info["audio_duration"] - info["video_duration"]) <= AAC_FRAME_S
    frames = read_frames(out)
    assert frames.shape == (n_expected, H, W, 3)
    assert_frames_match(frames, 0)


def _decoded_audio(path: Path, sr: int) -> np.ndarray:
    """The mp4's audio decoded to mono float32 at ``sr``."""
    from liveact.video import ffmpeg_exe

    cmd = [ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "f32le", "-ac", "1", "-ar", str(sr), "-"]
    return np.frombuffer(subprocess.run(cmd, capture_output=True, check=True).stdout, np.float32)


@pytest.mark.parametrize(("samples", "fps"), [(144000, 25), (143999, 25), (37123, 25), (100001, 24)])
def test_the_mp4_holds_every_sample_of_the_speech(tmp_path: Path, samples: int, fps: int) -> None:
    """Lengths that are not a multiple of the 1024-sample AAC frame: the last, partial frame stays,
    every run (``-shortest`` dropped it in some), and the samples sit where they were."""
    sr = 16000
    rng = np.random.default_rng(samples)
    speech = (0.3 * np.sin(np.arange(samples) / 9.0) * rng.uniform(0.5, 1.0, samples)).astype(np.float32)
    wav = tmp_path / "speech.wav"
    sf.write(wav, speech, sr, subtype="FLOAT")
    for run in range(3):
        out = tmp_path / f"run{run}.mp4"
        with ProgressiveVideoWriter(out, fps=fps, audio=wav) as writer:
            total = writer.max_frames
            for start in range(0, total, 10):
                writer.write(make_frames(start, min(10, total - start)))
        decoded = _decoded_audio(out, sr)
        assert len(decoded) >= samples, f"run {run}: {len(decoded)} samples decoded of {samples}"
        tail = slice(samples - 2048, samples)
        assert np.corrcoef(decoded[tail], speech[tail])[0, 1] > 0.9, "the speech's last samples moved"


def test_audio_cut_when_video_stops_early(tmp_path: Path) -> None:
    wav = write_sine(tmp_path / "a.wav", 3.0)
    out = tmp_path / "short.mp4"
    with ProgressiveVideoWriter(out, fps=25, audio=wav) as writer:
        writer.write(make_frames(0, 20))
    info = probe_video(out)
    assert info["num_frames"] == 20
    assert abs(info["audio_duration"] - 0.8) <= AAC_FRAME_S


def test_explicit_duration_and_audio_helper(tmp_path: Path) -> None:
    wav = write_sine(tmp_path / "a.wav", 2.0)
    assert audio_duration(wav) == pytest.approx(2.0)
    out = tmp_path / "d.mp4"
    with ProgressiveVideoWriter(out, fps=10, audio=wav, duration=0.5) as writer:
        writer.write(make_frames(0, 12))
    assert probe_video(out)["num_frames"] == 5


def test_float_tensor_input_video_only(tmp_path: Path) -> None:
    x = torch.rand(1, 3, 10, H, W, generator=torch.Generator().manual_seed(0)) * 2.2 - 1.1
    u8 = to_uint8_frames(x)
    assert u8.shape == (10, H, W, 3) and u8.dtype == np.uint8
    expected = ((x[0].permute(1, 2, 3, 0).double() + 1) * 127.5).clamp(0, 255).floor().to(torch.uint8).numpy()
    np.testing.assert_array_equal(u8, expected)
    np.testing.assert_array_equal(to_uint8_frames(x[0]), u8)
    np.testing.assert_array_equal(to_uint8_frames(torch.from_numpy(u8)), u8)

    out = tmp_path / "float.mp4"
    with ProgressiveVideoWriter(out, fps=8) as writer:
        writer.write(x)
        writer.write(x[0, :, :3])
    info = probe_video(out)
    assert info["has_video"] and not info["has_audio"]
    assert info["num_frames"] == 13 and info["video_duration"] == pytest.approx(13 / 8)


def test_bad_input_and_ffmpeg_failure(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        to_uint8_frames(torch.zeros(4, 8, 8, 3))  # float frames must be channels-first
    with pytest.raises(ValueError):
        to_uint8_frames(np.zeros((2, 8, 8, 4), np.uint8))
    with ProgressiveVideoWriter(tmp_path / "m.mp4", fps=8, width=W, height=H) as writer:
        with pytest.raises(ValueError, match="differs"):
            writer.write(make_frames(0, 2, h=32))
        writer.write(make_frames(0, 2))
    with (
        pytest.raises(FFmpegError, match="status"),
        ProgressiveVideoWriter(tmp_path / "bad.mp4", fps=8, preset="no-such-preset") as writer,
    ):
        writer.write(make_frames(0, 4))


def test_keyboard_interrupt_finalises(tmp_path: Path) -> None:
    out = tmp_path / "ctrlc.mp4"
    with pytest.raises(KeyboardInterrupt), ProgressiveVideoWriter(out, fps=25) as writer:
        writer.write(make_frames(0, 25))
        writer.write(make_frames(25, 25))
        raise KeyboardInterrupt
    assert_frames_match(read_frames(out), 0)
    assert probe_video(out)["num_frames"] == 50


def test_hls_playlist_and_segments(tmp_path: Path) -> None:
    wav = write_sine(tmp_path / "a.wav", 2.5)
    playlist = tmp_path / "hls" / "live.m3u8"
    with HLSWriter(playlist, fps=20, audio=wav, segment_seconds=1) as writer:
        for b in range(3):
            writer.write(make_frames(20 * b, 20))
        # Live: finished segments are listed while the writer is still open.
        deadline = time.monotonic() + 10
        while not (playlist.exists() and ".ts" in playlist.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "#EXT-X-ENDLIST" not in playlist.read_text()
    text = playlist.read_text()
    assert "#EXT-X-ENDLIST" in text
    segments = writer.segments()
    assert len(segments) == 3 and all(s.stat().st_size > 0 for s in segments)
    assert all(s.name in text for s in segments)
    info = probe_video(playlist)
    assert info["has_video"] and info["has_audio"] and info["num_frames"] == 50


# ---------------------------------------------------------------------- crash safety

CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {root!r})
    from tests.test_video import make_frames
    from liveact.video import ProgressiveVideoWriter
    writer = ProgressiveVideoWriter({out!r}, fps=25, audio={wav!r}, tune={tune!r})
    with writer:
        for b in range(100):
            writer.write(make_frames(25 * b, 25))
            print("block", b + 1, writer.pid, flush=True)
            time.sleep(0.2)
    """
)


def _run_child(tmp_path: Path, tune: str | None) -> tuple[subprocess.Popen, Path]:
    wav = write_sine(tmp_path / "a.wav", 30.0)
    out = tmp_path / "partial.mp4"
    code = CHILD.format(root=str(REPO_ROOT), out=str(out), wav=str(wav), tune=tune)
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=default_sigint,
    )
    return proc, out


def _wait_block(proc: subprocess.Popen, n: int) -> int:
    """Read the child's progress lines until block ``n`` is written; returns ffmpeg's pid."""
    assert proc.stdout is not None
    for line in proc.stdout:
        _, block, pid = line.split()
        if int(block) == n:
            return int(pid)
    raise AssertionError(f"child exited before block {n} (status {proc.wait()})")


def _wait_exit(pid: int, timeout: float = 20.0) -> None:
    """Wait for a process we are not the parent of (exited, or a zombie nobody reaped)."""
    stat = Path(f"/proc/{pid}/stat")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return
        except (FileNotFoundError, ProcessLookupError):
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still running after {timeout} s")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to watch ffmpeg")
def test_sigkill_of_python_keeps_every_written_frame(tmp_path: Path) -> None:
    proc, out = _run_child(tmp_path, tune=None)
    ffmpeg_pid = _wait_block(proc, 2)
    proc.kill()
    proc.wait()
    _wait_exit(ffmpeg_pid)  # ffmpeg saw EOF on stdin and finishes the file by itself
    info = probe_video(out)
    assert info["has_audio"] and info["num_frames"] >= 50
    assert abs(info["audio_duration"] - info["video_duration"]) <= AAC_FRAME_S
    frames = read_frames(out)
    assert len(frames) == info["num_frames"]
    assert_frames_match(frames, 0)


@pytest.mark.skipif(os.name != "posix", reason="process groups are POSIX")
def test_terminal_ctrl_c_finalises(tmp_path: Path) -> None:
    proc, out = _run_child(tmp_path, tune=None)
    _wait_block(proc, 2)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends to the foreground group
    assert proc.wait(timeout=20) != 0
    frames = read_frames(out)
    assert len(frames) >= 50
    assert_frames_match(frames, 0)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to watch ffmpeg")
def test_hard_kill_of_ffmpeg_leaves_playable_fragments(tmp_path: Path) -> None:
    proc, out = _run_child(tmp_path, tune="zerolatency")
    ffmpeg_pid = _wait_block(proc, 3)
    os.kill(proc.pid, signal.SIGSTOP)  # freeze the writer: no more frames, yet ffmpeg's stdin stays open
    time.sleep(1.0)  # let ffmpeg encode and flush the completed fragments
    os.kill(ffmpeg_pid, signal.SIGKILL)
    proc.kill()
    proc.wait()
    _wait_exit(ffmpeg_pid)
    frames = read_frames(out)
    # Fragments are cut at keyframes (every 25 frames); the one in progress is lost.
    assert 25 <= len(frames) <= 75
    assert_frames_match(frames, 0)
