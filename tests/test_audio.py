"""Audio front end: loading errors, tempo, resampler and wav2vec2 parity with the authors' outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import case_params, load_meta
from safetensors.torch import load_file

from liveact.audio import (
    Resampler,
    StreamingAudio,
    Wav2VecEncoder,
    block_window,
    change_tempo,
    load_audio,
    prepare_speech,
    select_channel,
)

TOL = 1e-4  # absolute, as the fixture README states
RESAMPLE_TOL = 1e-5


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def _case_encoder(case: Path) -> tuple[dict, Wav2VecEncoder]:
    # The model folder is the one holding preprocessor_config.json (meta.json names it in free text).
    folder = next(p.parent for p in sorted(case.rglob("preprocessor_config.json")))
    return load_meta(case), Wav2VecEncoder.from_pretrained(folder)


@pytest.mark.parametrize("case", case_params("components", "wav2vec"))
def test_load_and_resample_match_reference(case: Path) -> None:
    meta = load_meta(case)
    inputs = load_file(case / "inputs.safetensors")
    wave, sr = load_audio(case / meta["audio"]["file"])
    assert sr == meta["audio"]["sample_rate"]
    assert _max_err(wave, inputs["waveform_raw"]) == 0.0
    speech = prepare_speech(wave, sr, fps=meta["audio"]["fps"])
    assert _max_err(speech, inputs["audio_16k_x3"][0]) < RESAMPLE_TOL


@pytest.mark.parametrize("case", case_params("components", "wav2vec"))
def test_wav2vec_matches_reference(case: Path) -> None:
    meta, enc = _case_encoder(case)
    inputs, expected = load_file(case / "inputs.safetensors"), load_file(case / "expected.safetensors")
    speech = inputs["audio_16k_x3"][0]
    assert _max_err(enc.input_values(speech), expected["input_values"]) < TOL
    embedding, features = enc.encode(speech, return_features=True)
    assert _max_err(features, expected["features_interpolated"]) < TOL
    assert _max_err(embedding, expected["audio_embedding"]) < TOL
    for k, (start, end) in enumerate(meta["window_ranges"]):
        window = block_window(embedding, start, end)
        assert _max_err(window, expected[f"audio_embs_iter{k}"]) < TOL


@pytest.mark.parametrize("case", case_params("components", "wav2vec"))
def test_streaming_audio_windows(case: Path) -> None:
    meta, enc = _case_encoder(case)
    wave, sr = load_audio(case / meta["audio"]["file"])
    stream = StreamingAudio(enc, select_channel(wave), sr, fps=meta["audio"]["fps"])
    start, end = meta["window_ranges"][2]
    window = stream.window(start, end)
    layers, hidden = load_file(case / "expected.safetensors")["audio_embedding"].shape[1:]
    assert window.shape == (1, end - start, 5, layers, hidden)
    assert torch.isfinite(window).all()
    with pytest.raises(ValueError, match="past the end"):
        stream.window(10_000, 10_053)


def test_resampler_identity_and_lengths() -> None:
    x = torch.randn(2, 1000)
    assert Resampler(16000, 16000)(x) is x
    assert Resampler(8000, 16000)(x).shape == (2, 2000)
    assert Resampler(44100, 16000)(x).shape == (2, 363)  # ceil(1000 * 160 / 441)
    # A tone far below both Nyquist limits survives the round trip.
    t = torch.arange(16000) / 16000
    tone = torch.sin(2 * torch.pi * 440 * t)
    back = Resampler(48000, 16000)(Resampler(16000, 48000)(tone))
    assert _max_err(back[200:-200], tone[200:-200]) < 1e-2


def test_prepare_speech_stretches_all_channels_then_keeps_channel_0() -> None:
    sr = 22050
    t = torch.arange(int(sr * 1.2)) / sr
    stereo = torch.stack([0.4 * torch.sin(2 * torch.pi * 220 * t), 0.3 * torch.sin(2 * torch.pi * 330 * t) * t])
    speech = prepare_speech(stereo, sr, fps=20)
    stretched = change_tempo(stereo, sr, 25 / 20)
    assert speech.ndim == 1
    assert torch.allclose(speech, Resampler(sr, 16000)(stretched[0]) * 3.0, atol=1e-6)
    alone = Resampler(sr, 16000)(change_tempo(stereo[:1], sr, 25 / 20)[0]) * 3.0
    assert _max_err(speech, alone) > 1e-3  # channel 0 stretched alone is another signal
    downmix = prepare_speech(stereo, sr, fps=20, downmix=True)
    assert torch.allclose(downmix, Resampler(sr, 16000)(stretched.mean(dim=0)) * 3.0, atol=1e-6)


def test_streaming_slices_use_the_reference_rounding() -> None:
    stream = StreamingAudio(encoder=None, waveform=torch.zeros(1, 10), sample_rate=44100, fps=20)
    # Block 2 at 20 fps: frames [32, 85) + 2. sr*(87/20) = 191834.99999999997, sr*87/20 = 191835.
    assert stream.sample_range(32, 85) == (70560, 191834)
    # Block 16 at 25 fps (44.1 kHz) and block 13 at 48 kHz: frames [480, 533) and [384, 437).
    assert StreamingAudio(None, torch.zeros(1, 10), 44100, 25).sample_range(480, 533) == (846720, 943739)
    assert StreamingAudio(None, torch.zeros(1, 10), 48000, 25).sample_range(384, 437) == (737280, 842879)


def test_load_audio_errors_and_fallback(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_audio(tmp_path / "missing.wav")

    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"not audio at all" * 10)
    with pytest.raises(ValueError, match="unreadable"):
        load_audio(garbage)

    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros((0, 1), dtype=np.float32), 16000)
    with pytest.raises(ValueError, match="no samples"):
        load_audio(empty)

    silent = tmp_path / "silent.flac"
    sf.write(str(silent), np.zeros((1600, 1), dtype=np.float32), 16000)
    with pytest.raises(ValueError, match="silent"):
        load_audio(silent)
    assert load_audio(silent, allow_silent=True)[0].shape == (1, 1600)

    # Stereo with a silent left channel: channel 0 is refused, the downmix is not.
    stereo = np.zeros((1600, 2), dtype=np.float32)
    stereo[:, 1] = 0.25
    path = tmp_path / "right_only.wav"
    sf.write(str(path), stereo, 16000, subtype="FLOAT")
    wave, _ = load_audio(path)
    with pytest.raises(ValueError, match="downmix"):
        select_channel(wave)
    assert torch.allclose(select_channel(wave, downmix=True), torch.full((1, 1600), 0.125))

    # An unknown suffix goes through ffmpeg; the samples come back unchanged.
    odd = tmp_path / "clip.audio"
    sf.write(str(odd), stereo, 16000, format="WAV", subtype="FLOAT")
    via_ffmpeg, sr = load_audio(odd)
    assert sr == 16000 and torch.equal(via_ffmpeg, wave)


def test_block_window_clamps() -> None:
    emb = torch.arange(10, dtype=torch.float32)[:, None, None].expand(10, 2, 3)
    win = block_window(emb, 0, 3, audio_window=5)
    assert win.shape == (1, 3, 5, 2, 3)
    assert win[0, :, :, 0, 0].tolist() == [[0, 0, 0, 1, 2], [0, 0, 1, 2, 3], [0, 1, 2, 3, 4]]
    assert block_window(emb, 9, 10, audio_window=3)[0, 0, :, 0, 0].tolist() == [8, 9, 9]
    with pytest.raises(ValueError):
        block_window(emb, 0, 3, audio_window=4)
