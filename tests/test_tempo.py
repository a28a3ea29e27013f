"""Tempo change against the ``sox`` command line (libsox 14.4.2 ``tempo``, as torchaudio runs it).

The reference is built here independently of ``liveact.components.tempo``: torchaudio's float32 -> int32
conversion, ``sox -D <in> <out> tempo <25/fps>`` on 32-bit integer WAVs, and libsox's
``SOX_SAMPLE_TO_FLOAT_32BIT`` back, each written out in numpy below.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from liveact.components import tempo
from liveact.components.tempo import available_backend, available_backends, change_tempo, tempo_argument

SOX = shutil.which("sox")
needs_sox = pytest.mark.skipif(
    SOX is None, reason="the sox command line is not installed (.ci/run installs it)"
)
EXACT_BACKENDS = [
    pytest.param(
        "cysox", marks=pytest.mark.skipif("cysox" not in available_backends(), reason="no cysox here")
    ),
    pytest.param("sox", marks=needs_sox),
]
FPS = [20, 24, 30, 12.5]  # tempo 25/fps: 1.25, 1.0416666666666667, 0.8333333333333334, 2.0
SAMPLE_RATES = [16000, 22050, 44100, 48000]
# The outputs are libsox's own integers through the same conversions, so they should agree exactly;
# 1e-6 (~2^-20) leaves room only for a float rounding difference in one sample's conversion.
MAX_ABS = 1e-6


def _speechlike(channels: int, sample_rate: int, seconds: float, seed: int) -> torch.Tensor:
    """``[C, N]`` float32: decorrelated voiced harmonics with a syllable envelope, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    out = []
    for c in range(channels):
        f0 = 110 + 40 * c + 20 * np.sin(2 * np.pi * 0.7 * t + c)
        phase = 2 * np.pi * np.cumsum(f0) / sample_rate
        voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
        envelope = np.clip(np.sin(2 * np.pi * (3 + c) * t), 0, None) ** 2
        out.append(0.3 * voiced * envelope + 0.02 * rng.standard_normal(t.size))
    return torch.from_numpy(np.stack(out).astype(np.float32))


def _sox_reference(wave: torch.Tensor, sample_rate: int, argument: str, folder: Path) -> torch.Tensor:
    """torchaudio's ``apply_effects_tensor(wave, sr, [["tempo", argument]])``, with the sox CLI."""
    scaled = np.clip(wave.numpy().astype(np.float64) * 2.0**31, -(2.0**31), 2.0**31 - 1)
    ints = np.trunc(scaled).astype(np.int32)
    src, dst = folder / "in.wav", folder / "out.wav"
    sf.write(src, ints.T, sample_rate, subtype="PCM_32")
    subprocess.run([SOX, "-D", str(src), str(dst), "tempo", argument], check=True, capture_output=True)
    out, rate = sf.read(dst, dtype="int32", always_2d=True)
    assert rate == sample_rate
    s = out.T.astype(np.int64)
    floats = np.where(s > 2**31 - 1 - 64, 1.0, ((s + 64) & ~127) / 2.0**31)
    return torch.from_numpy(floats.astype(np.float32))


def test_tempo_argument_is_pythons_str() -> None:
    assert tempo_argument(25 / 20) == "1.25"
    assert tempo_argument(25 / 24) == "1.0416666666666667"
    assert tempo_argument(25 / 12.5) == "2.0"
    assert float(tempo_argument(25 / 30)) == 25 / 30  # round-trips to the same double


@needs_sox
@pytest.mark.parametrize("backend", EXACT_BACKENDS)
@pytest.mark.parametrize("sample_rate", SAMPLE_RATES)
@pytest.mark.parametrize("fps", FPS)
def test_matches_sox_command_line(backend: str, sample_rate: int, fps: float, tmp_path: Path) -> None:
    channels = 2 if SAMPLE_RATES.index(sample_rate) % 2 == 0 else 1  # stereo and mono across the grid
    wave = _speechlike(channels, sample_rate, 1.3, seed=sample_rate)
    ours = change_tempo(wave, sample_rate, 25 / fps, backend=backend)
    theirs = _sox_reference(wave, sample_rate, tempo_argument(25 / fps), tmp_path)
    assert ours.dtype == torch.float32
    assert ours.shape == theirs.shape  # exact sample count: round(N / factor)
    assert ours.shape[1] == int(wave.shape[1] / (25 / fps) + 0.5)
    assert (ours - theirs).abs().max().item() <= MAX_ABS


@needs_sox
@pytest.mark.parametrize("backend", EXACT_BACKENDS)
def test_stereo_is_stretched_as_one_signal(backend: str, tmp_path: Path) -> None:
    # The overlap search sums over channels: channel 0 of a stereo stretch is not channel 0 stretched alone.
    wave = _speechlike(2, 44100, 1.5, seed=3)
    both = change_tempo(wave, 44100, 1.25, backend=backend)
    alone = change_tempo(wave[:1], 44100, 1.25, backend=backend)
    assert both.shape[1] == alone.shape[1]
    assert (both[0] - alone[0]).abs().max().item() > 0.01
    assert (both - _sox_reference(wave, 44100, "1.25", tmp_path)).abs().max().item() <= MAX_ABS


@needs_sox
def test_factor_one_is_torchaudios_round_trip(tmp_path: Path) -> None:
    # libsox's tempo is a no-op at 1, but torchaudio's int32 round trip still quantises float input
    # to multiples of 2^-24 and clips at [-1, 1].
    wave = _speechlike(2, 16000, 0.5, seed=5) * 4
    wave[0, :3] = torch.tensor([1.0, -1.0, 0.999999])
    ours = change_tempo(wave, 16000, 1.0)
    assert torch.equal(ours, _sox_reference(wave, 16000, "1.0", tmp_path))
    assert ours.abs().max().item() == 1.0
    pcm16 = torch.round(wave.clamp(-1, 1) * 32767) / 32768
    assert torch.equal(change_tempo(pcm16, 16000, 1.0), pcm16)  # exact for PCM input


def test_short_inputs_and_errors() -> None:
    tiny = _speechlike(1, 16000, 0.01, seed=1)  # shorter than one WSOLA segment
    assert change_tempo(tiny, 16000, 1.25).shape == (1, round(tiny.shape[1] / 1.25))
    with pytest.raises(ValueError, match="outside sox's range"):
        change_tempo(tiny, 16000, 0.05)
    with pytest.raises(ValueError, match="outside sox's range"):
        change_tempo(tiny, 16000, 250.0)
    with pytest.raises(ValueError, match="non-empty waveform"):
        change_tempo(torch.zeros(1, 0), 16000, 1.25)
    with pytest.raises(ValueError, match="unknown tempo backend"):
        change_tempo(tiny, 16000, 1.25, backend="rubberband")


def test_fallback_is_atempo_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tempo, "_has_cysox", lambda: False)
    monkeypatch.setattr(tempo, "_sox_exe", lambda: None)
    monkeypatch.setattr(tempo, "_warned_inexact", False)
    assert available_backend() == "atempo"
    sr = 16000
    t = torch.arange(sr * 2) / sr
    tone = (0.5 * torch.sin(2 * torch.pi * 440 * t))[None]
    with caplog.at_level(logging.WARNING, logger="liveact.components.tempo"):
        fast = change_tempo(tone, sr, 1.25)
        change_tempo(tone, sr, 1.25)
    warnings = [r for r in caplog.records if "NOT the authors' sox tempo" in r.getMessage()]
    assert len(warnings) == 1  # once per process, not once per streaming block
    # Pitch-preserving and about N / factor long, but not sox's output.
    assert abs(fast.shape[1] - tone.shape[1] / 1.25) < 0.02 * sr
    spectrum = np.abs(np.fft.rfft(fast[0].numpy()))
    assert abs(np.argmax(spectrum) * sr / fast.shape[1] - 440) < 5
