"""Audio front end: loading errors, tempo, resampler and wav2vec2 parity with the authors' outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import case_params, load_meta
from safetensors.torch import load_file

from liveact.components.audio import (
    Resampler,
    StreamingAudio,
    Wav2VecEncoder,
    change_tempo,
    load_audio,
    prepare_speech,
    select_channel,
)
from liveact.config import MemoryConfig
from liveact.sampler import audio_rows, audio_window, block_span

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
    for k, window in enumerate(meta["window_ranges"]):
        rows, expected_rows = _block_rows(embedding, expected[f"audio_embs_iter{k}"][0], k, window)
        assert _max_err(rows, expected_rows) < TOL


def _block_rows(
    embedding: torch.Tensor, reference_window: torch.Tensor, block: int, window: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows the sampler feeds block ``block`` and the same rows picked from the reference's window.

    ``reference_window`` ``[F, 5, L, C]`` holds each frame of ``window`` with neighbours -2..+2. The
    reference's audio projection reads, per latent covering frames ``p .. p+3``, frame ``p``'s -2..0,
    the centres of ``p+1 .. p+2`` and frame ``p+3``'s 0..+2: eight consecutive rows, which is what
    :func:`audio_rows` picks (the clip's latent 0 reads all five neighbours of frame 0).
    """
    memory, stride = MemoryConfig(), 4
    span = block_span(block, memory, stride)
    start, end = audio_window(span, memory, stride)
    assert [start, end] == window, "the fixture's windows follow the default block layout"
    first, later = audio_rows(span, embedding.shape[0], window=5, temporal_stride=stride)
    got, picked = [embedding[later]], []
    if first is not None:
        got.insert(0, embedding[first])
        picked.append(reference_window[0 - start])
    latents = range(max(span.first_latent, 1), span.first_latent + span.frames)
    for p in (1 + (latent - 1) * stride - start for latent in latents):
        q = p + stride - 1
        picked.append(
            torch.cat([reference_window[p, :3], reference_window[p + 1 : q, 2], reference_window[q, 2:]])
        )
    return torch.cat([g.flatten() for g in got]), torch.cat([r.flatten() for r in picked])


@pytest.mark.parametrize("case", case_params("components", "wav2vec"))
def test_streaming_audio_windows(case: Path) -> None:
    meta, enc = _case_encoder(case)
    wave, sr = load_audio(case / meta["audio"]["file"])
    stream = StreamingAudio(enc, select_channel(wave), sr, fps=meta["audio"]["fps"])
    start, end = meta["window_ranges"][2]
    rows = stream.embedding(start, end)
    layers, hidden = load_file(case / "expected.safetensors")["audio_embedding"].shape[1:]
    # Row 0 is frame ``start``; the slice reaches ``audio_window // 2`` frames past ``end`` for the
    # right neighbours of the last frames.
    assert rows.shape == (end - start + stream.audio_window // 2, layers, hidden)
    assert torch.isfinite(rows).all()
    with pytest.raises(ValueError, match="past the end"):
        stream.embedding(10_000, 10_053)


def test_streaming_audio_encodes_a_shared_window_once() -> None:
    calls = []

    class CountingEncoder:
        sample_rate, audio_fps = 16000, 50

        def encode(self, speech: torch.Tensor) -> torch.Tensor:
            calls.append(speech.shape[-1])
            return torch.zeros(speech.shape[-1] // 640, 2, 3)

    wave = torch.sin(torch.arange(48000) / 7.0)[None]
    stream = StreamingAudio(CountingEncoder(), wave, 16000, fps=25)
    first = stream.embedding(0, 53)
    assert stream.embedding(0, 53) is first  # block 1 reuses block 0's window
    stream.embedding(32, 85)
    assert len(calls) == 2


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
    stereo = torch.stack(
        [0.4 * torch.sin(2 * torch.pi * 220 * t), 0.3 * torch.sin(2 * torch.pi * 330 * t) * t]
    )
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
