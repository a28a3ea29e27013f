"""Audio front end: loading, tempo change, resampling, wav2vec2 features and per-block windows.

The reference (generate.py ``resample_audio`` + ``get_embedding`` + ``get_audio_emb``) does:
load -> sox ``tempo`` by ``25/fps`` on all channels (pitch-preserving) -> torchaudio ``Resample(sr, 16000)``
-> x3 gain -> channel 0 -> wav2vec2 with its CNN features linearly resampled to one row per video frame ->
the 12 transformer-layer outputs ``[S, L, C]`` -> for each pixel frame the rows of its +-2 neighbours.

The tempo change is libsox's own ``tempo`` (``liveact.components.tempo``, sample for sample as
torchaudio calls it); the resampler is our own windowed-sinc implementation, numerically equal to
torchaudio's ``Resample`` (sinc_interp_hann), so torchaudio is not needed.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from liveact.components.tempo import change_tempo
from liveact.video import run_ffmpeg

if TYPE_CHECKING:
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

logger = logging.getLogger(__name__)

# ``trace(name, tensor)``: sees named intermediates as they are made (``LiveActPipeline.trace``).
Trace = Callable[[str, torch.Tensor], None]

WAV2VEC_SAMPLE_RATE = 16000
# The frame rate the reference's audio pipeline is written for: the tempo factor is 25/fps so that the
# embedding, computed at 25 rows per second of stretched audio, has one row per video frame.
AUDIO_FPS = 25.0
REFERENCE_GAIN = 3.0

# Formats libsndfile reads directly; others go through ffmpeg.
_SOUNDFILE_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au", ".w64", ".rf64", ".caf"}


# --------------------------------------------------------------------------------------------------------
# Loading


def _read_soundfile(path: Path) -> tuple[torch.Tensor, int]:
    """Read with libsndfile -> ``[C, N]`` float32 (PCM scaled like torchaudio.load), sample rate."""
    import soundfile as sf

    data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # [N, C]
    return torch.from_numpy(np.ascontiguousarray(data.T)), int(sr)


def _read_with_ffmpeg(path: Path) -> tuple[torch.Tensor, int]:
    """Decode any ffmpeg-readable file to a temporary float WAV and read that."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "decoded.wav"
        run_ffmpeg(["-i", str(path), "-vn", "-c:a", "pcm_f32le", str(wav)], f"decode audio from {path}")
        return _read_soundfile(wav)


def load_audio(path: str | Path, allow_silent: bool = False) -> tuple[torch.Tensor, int]:
    """Load an audio file with all its channels.

    wav/flac/ogg/mp3 (and other libsndfile formats) are read with soundfile; anything else (m4a, aac,
    video containers, ...) or a file libsndfile rejects is decoded with imageio-ffmpeg's ffmpeg.

    Args:
        path: the audio file.
        allow_silent: accept a file whose samples are all zero (otherwise a ValueError).
    Returns:
        ``waveform [C, N]`` float32 in [-1, 1] (PCM divided by 2^(bits-1), like torchaudio.load), sample rate.
    Raises:
        FileNotFoundError: no such file. ValueError: unreadable, empty, non-finite (inf/NaN
        samples) or silent.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    wave = None
    if path.suffix.lower() in _SOUNDFILE_SUFFIXES:
        try:
            wave, sr = _read_soundfile(path)
        except RuntimeError as err:  # soundfile's errors derive from it; ffmpeg gets a second chance
            logger.debug("soundfile could not read %s (%s); trying ffmpeg", path, err)
    if wave is None:
        try:
            wave, sr = _read_with_ffmpeg(path)
        except ValueError as err:
            raise ValueError(f"unreadable audio file {path}: {err}") from err
    if wave.numel() == 0:
        raise ValueError(f"audio file {path} holds no samples")
    finite = torch.isfinite(wave)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(
            f"audio file {path} holds {bad} non-finite sample(s) (inf or NaN): re-export it as PCM"
        )
    if not allow_silent and not bool(wave.abs().amax() > 0):
        raise ValueError(f"audio file {path} is silent (all samples are zero)")
    return wave, sr


def select_channel(waveform: torch.Tensor, downmix: bool = False) -> torch.Tensor:
    """``[C, N]`` -> ``[1, N]``: channel 0 like the reference, or the mean of all channels with ``downmix``.

    Raises ValueError when channel 0 is silent but another channel is not (a downmix is then needed).
    """
    if downmix:
        return waveform.mean(dim=0, keepdim=True)
    mono = waveform[:1]
    if waveform.shape[0] > 1 and not bool(mono.abs().amax() > 0) and bool(waveform.abs().amax() > 0):
        raise ValueError("audio channel 0 is silent but other channels are not; use downmix=True")
    return mono


# --------------------------------------------------------------------------------------------------------
# Tempo and resampling


def sinc_resample_kernel(
    orig_freq: int, new_freq: int, lowpass_filter_width: int = 6, rolloff: float = 0.99
) -> tuple[torch.Tensor, int]:
    """Hann-windowed sinc interpolation kernel (torchaudio's ``sinc_interp_hann`` definition).

    Args:
        orig_freq, new_freq: already divided by their gcd.
    Returns:
        ``kernel [new_freq, 1, 2*width + orig_freq]`` float32 and ``width`` (samples of padding each side).
    """
    cutoff = min(orig_freq, new_freq) * rolloff  # in units of the reduced rates; below both Nyquists
    width = math.ceil(lowpass_filter_width * orig_freq / cutoff)
    # Input sample offsets of the taps, in input periods; computed in float64 for an accurate kernel.
    taps = torch.arange(-width, width + orig_freq, dtype=torch.float64) / orig_freq
    # Output phase j sits j/new_freq input periods after the tap origin. torchaudio forms this term
    # in float32 before adding the float64 taps; do the same to stay numerically identical.
    phase = (torch.arange(0, -new_freq, -1) / new_freq).to(torch.float64)
    t = ((phase[:, None] + taps[None, :]) * cutoff).clamp(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t)
    kernel = sinc * window * (cutoff / orig_freq)
    return kernel.to(torch.float32)[:, None, :], width


class Resampler:
    """Band-limited resampling between two integer rates, numerically equal to torchaudio's ``Resample``.

    The rates are reduced by their gcd; the output phase ``j`` of every block of ``new`` outputs is one
    row of the kernel, so a strided ``conv1d`` over the padded input computes all outputs at once.
    """

    def __init__(
        self, orig_freq: int, new_freq: int, lowpass_filter_width: int = 6, rolloff: float = 0.99
    ) -> None:
        if orig_freq <= 0 or new_freq <= 0:
            raise ValueError(f"sample rates must be positive, got {orig_freq} -> {new_freq}")
        gcd = math.gcd(int(orig_freq), int(new_freq))
        self.orig, self.new = int(orig_freq) // gcd, int(new_freq) // gcd
        self.kernel, self.width = sinc_resample_kernel(self.orig, self.new, lowpass_filter_width, rolloff)

    def __call__(self, waveform: torch.Tensor) -> torch.Tensor:
        """``[..., N]`` -> ``[..., ceil(N * new / orig)]`` (same dtype); identity when the rates are equal."""
        if self.orig == self.new:
            return waveform
        shape = waveform.shape
        flat = waveform.reshape(-1, shape[-1])
        padded = F.pad(flat, (self.width, self.width + self.orig))
        kernel = self.kernel.to(device=waveform.device, dtype=waveform.dtype)
        out = F.conv1d(padded[:, None], kernel, stride=self.orig)  # [B, new, blocks]
        out = out.transpose(1, 2).reshape(flat.shape[0], -1)
        target = math.ceil(self.new * shape[-1] / self.orig)
        return out[:, :target].reshape(*shape[:-1], -1)


def resample(waveform: torch.Tensor, orig_freq: int, new_freq: int) -> torch.Tensor:
    """Resample ``[..., N]`` from ``orig_freq`` to ``new_freq`` (see :class:`Resampler`)."""
    return Resampler(orig_freq, new_freq)(waveform)


def prepare_speech(
    waveform: torch.Tensor,
    sample_rate: int,
    fps: float,
    target_rate: int = WAV2VEC_SAMPLE_RATE,
    gain: float = REFERENCE_GAIN,
    audio_fps: float = AUDIO_FPS,
    downmix: bool = False,
    trace: Trace | None = None,
) -> torch.Tensor:
    """The reference's ``resample_audio(audio)[0]``: the mono speech wav2vec2 encodes.

    Tempo ``audio_fps/fps`` on all channels together (libsox's overlap search looks at every channel,
    so stretching channel 0 alone gives another waveform), then channel 0 (or the mean of the
    stretched channels with ``downmix``), resampled to ``target_rate``, times ``gain``.

    Args:
        waveform: ``[C, N]`` at ``sample_rate``.
        fps: the output video frame rate.
        trace: sees ``tempo_output`` ``[N']`` (the kept channel after the tempo change) and
            ``speech`` ``[M]`` (the result), for parity tests.
    Returns:
        ``[M]`` at ``target_rate``, with ``M / target_rate * audio_fps`` ~= video frames.
    """
    stretched = change_tempo(waveform, sample_rate, audio_fps / fps)
    mono = stretched.mean(dim=0) if downmix else stretched[0]
    # Resampling is per channel, so resampling only the kept channel equals the reference's
    # resample-all-then-take-channel-0.
    speech = Resampler(sample_rate, target_rate)(mono) * gain
    if trace is not None:
        trace("tempo_output", mono)
        trace("speech", speech)
    return speech


# --------------------------------------------------------------------------------------------------------
# wav2vec2


class Wav2VecEncoder:
    """wav2vec2 hidden states resampled to one row per video frame.

    Args:
        model: a transformers ``Wav2Vec2Model``.
        feature_extractor: its ``Wav2Vec2FeatureExtractor`` (``do_normalize`` from preprocessor_config.json).
        audio_fps: embedding rows per second of (tempo-adjusted) audio.
    """

    def __init__(
        self, model: Wav2Vec2Model, feature_extractor: Wav2Vec2FeatureExtractor, audio_fps: float = AUDIO_FPS
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.feature_extractor = feature_extractor
        self.audio_fps = audio_fps
        self.sample_rate = int(feature_extractor.sampling_rate)

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> Wav2VecEncoder:
        """Load a transformers wav2vec2 folder (config.json, weights, preprocessor_config.json)."""
        from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

        folder = Path(folder)
        for name in ("config.json", "preprocessor_config.json"):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"wav2vec2 folder {folder} lacks {name}")
        # transformers/safetensors/pickle raise many unrelated types for a bad file, and their
        # messages do not always name it; say which file of the folder failed.
        try:
            config = Wav2Vec2Config.from_pretrained(str(folder), local_files_only=True)
        except Exception as exc:
            raise ValueError(f"{folder / 'config.json'}: not a readable wav2vec2 config: {exc}") from exc
        from liveact.loading import quiet_transformers

        try:
            with quiet_transformers():
                model = Wav2Vec2Model.from_pretrained(
                    str(folder), config=config, dtype=dtype, local_files_only=True
                )
        except Exception as exc:
            weights = [
                str(folder / n) for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()
            ]
            raise ValueError(
                f"{' / '.join(weights) or folder}: wav2vec2 weights could not be loaded: {exc}"
            ) from exc
        try:
            extractor = Wav2Vec2FeatureExtractor.from_pretrained(str(folder), local_files_only=True)
        except Exception as exc:
            raise ValueError(
                f"{folder / 'preprocessor_config.json'}: not a readable feature-extractor config: {exc}"
            ) from exc
        return cls(model.to(device), extractor)

    @property
    def device(self) -> torch.device:
        """Where the model's weights live."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Parameter dtype."""
        return next(self.model.parameters()).dtype

    def num_frames(self, num_samples: int) -> int:
        """Embedding rows for ``num_samples`` samples: ``int(N / sr * audio_fps)`` like the reference."""
        return int(num_samples / self.sample_rate * self.audio_fps)

    def input_values(self, speech: torch.Tensor) -> torch.Tensor:
        """``[N]`` speech at 16 kHz -> feature-extractor output ``[1, N]`` float32."""
        values = self.feature_extractor(
            speech.detach().cpu().float().numpy(), sampling_rate=self.sample_rate
        ).input_values
        return torch.from_numpy(np.asarray(values, dtype=np.float32)).reshape(1, -1)

    @torch.no_grad()
    def encode(
        self, speech: torch.Tensor, return_features: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Embed speech.

        Args:
            speech: ``[N]`` mono at 16 kHz (after :func:`prepare_speech`).
            return_features: also return the resampled CNN features ``[1, S, conv_dim]``.
        Returns:
            ``[S, L, hidden]`` with ``S = int(N / 16000 * 25)`` and ``L`` transformer layers.
        """
        if speech.ndim != 1:
            raise ValueError(f"expected mono speech [N], got {tuple(speech.shape)}")
        seq_len = self.num_frames(speech.shape[0])
        if seq_len < 1:
            raise ValueError(f"audio of {speech.shape[0]} samples is shorter than one video frame")
        captured: list[torch.Tensor] = []
        hook = self.model.feature_extractor.register_forward_hook(_interpolate_hook(seq_len, captured))
        try:
            values = self.input_values(speech).to(self.device, self.dtype)
            out = self.model(values, output_hidden_states=True)
        finally:
            hook.remove()
        embedding = torch.stack(out.hidden_states[1:], dim=1)[0].transpose(0, 1)  # [S, L, C]
        if return_features:
            return embedding, captured[0].transpose(1, 2)
        return embedding


def _interpolate_hook(seq_len: int, captured: list[torch.Tensor]) -> Callable:
    """Forward hook resizing CNN output ``[B, C, T50]`` to ``[B, C, seq_len]`` (linear, aligned corners)."""

    def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        resized = F.interpolate(output, size=seq_len, mode="linear", align_corners=True)
        captured.append(resized)
        return resized

    return hook


# --------------------------------------------------------------------------------------------------------
# Streaming (per-block) audio


@dataclass
class StreamingAudio:
    """The reference's ``--steam_audio`` mode: re-encode a short slice of the raw audio for every block.

    Each call slices the original (pre-tempo) mono audio ``[int(sr*(start/fps)) : int(sr*((end+half)/fps))]``
    (the reference's rounding: the division first; ``int(sr*start/fps)`` differs by one sample at some
    blocks, which shifts every later window), runs :func:`prepare_speech` and the encoder on it, and
    returns the rows of frames ``start ..``. Like the reference (``audio_ori[:1, ...]``), only the mono
    signal is sliced and stretched here, not all channels. Cheaper per block than encoding the whole
    file, but wav2vec sees only about two seconds of context.

    The last window's rows are kept: the first two blocks share the window that starts at frame 0, so
    the second block costs no second encode (the reference encodes that slice twice).

    ``trace`` (optional) sees, per encoded window: ``stream_window`` ``[2]`` (start, end frames),
    ``stream_slice`` ``[2]`` (its sample range), ``tempo_output``, ``speech`` and ``audio_embedding``.
    """

    encoder: Wav2VecEncoder
    waveform: torch.Tensor  # [1, N] original mono audio
    sample_rate: int
    fps: float
    audio_window: int = 5
    gain: float = REFERENCE_GAIN
    trace: Trace | None = None
    _last: tuple[tuple[int, int], torch.Tensor] | None = field(default=None, init=False, repr=False)

    def sample_range(self, start: int, end: int) -> tuple[int, int]:
        """Samples ``[lo, hi)`` of the original audio sliced for centre frames ``[start, end)``.

        ``int(sr * (frame / fps))`` exactly as the reference writes it: ``int(sr * frame / fps)`` rounds
        differently (44.1 kHz at 20 fps: frame 87 -> 191834 vs 191835 samples).
        """
        half = self.audio_window // 2
        return int(self.sample_rate * (start / self.fps)), int(self.sample_rate * ((end + half) / self.fps))

    def embedding(self, start: int, end: int) -> torch.Tensor:
        """Encode the slice for centre frames ``[start, end)`` alone -> ``[S', L, C]``, row 0 = frame
        ``start``.

        The slice reaches ``half`` frames past ``end`` (the reference's ``end + 2``) so the right
        neighbours of the last frames exist; the left context at ``start`` is clamped.
        """
        if self._last is not None and self._last[0] == (start, end):
            return self._last[1]
        lo, hi = self.sample_range(start, end)
        piece = self.waveform[:1, lo:hi]
        if piece.shape[-1] == 0:
            raise ValueError(f"frames [{start}, {end}) lie past the end of the audio")
        if self.trace is not None:
            self.trace("stream_window", torch.tensor([start, end]))
            self.trace("stream_slice", torch.tensor([lo, lo + piece.shape[-1]]))
        speech = prepare_speech(
            piece,
            self.sample_rate,
            self.fps,
            self.encoder.sample_rate,
            self.gain,
            self.encoder.audio_fps,
            trace=self.trace,
        )
        rows = self.encoder.encode(speech)
        if self.trace is not None:
            self.trace("audio_embedding", rows)
        self._last = ((start, end), rows)
        return rows
