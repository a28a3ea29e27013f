"""Log-mel audio features, shaped like wav2vec2 hidden states for the audio adapter: Nano's audio encoder.

The 14B model reads ``[S, 12 layers, 768]`` wav2vec2 states, one row per video frame. Nano reads
``[S, sub, n_mels]``: row ``r`` holds ``sub`` log-mel spectra centred inside video frame ``r``
(``sub`` plays the part of the layer axis). The hop follows the frame rate, so features are computed at
the output fps directly: no tempo change, and any fps works. Each spectrum depends only on its own
25 ms window, so a slice of audio gives exactly the rows of the whole file (streaming and live input
need no context). Costs well under a millisecond per second of audio.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from liveact.components.audio import Resampler


@dataclass(frozen=True)
class LogMelConfig:
    """Feature geometry and normalisation (``mean``/``std`` of log10 mel power, set from training data)."""

    sample_rate: int = 16000
    n_mels: int = 80
    sub_frames: int = 4
    window_ms: float = 25.0
    n_fft: int = 512
    f_min: float = 60.0
    f_max: float = 7600.0
    floor: float = 1e-6  # -60 dB: quieter than any room, so silence and noise floors look alike
    mean: float = -3.0
    std: float = 2.5

    def to_dict(self) -> dict:
        """JSON-serialisable fields."""
        return asdict(self)


def mel_filterbank(cfg: LogMelConfig) -> torch.Tensor:
    """HTK-scale triangular filters ``[n_mels, n_fft // 2 + 1]``."""

    def to_mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def to_hz(m: np.ndarray) -> np.ndarray:
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    edges = to_hz(np.linspace(to_mel(np.array(cfg.f_min)), to_mel(np.array(cfg.f_max)), cfg.n_mels + 2))
    bins = np.linspace(0, cfg.sample_rate / 2, cfg.n_fft // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None] - lower) / (centre - lower)
    falling = (upper - bins[None]) / (upper - centre)
    return torch.from_numpy(np.clip(np.minimum(rising, falling), 0, None)).float()


class LogMelEncoder:
    """Log-mel rows per video frame (``[S, sub_frames, n_mels]``), the audio encoder of Nano.

    Args:
        config: feature geometry and normalisation.
    """

    def __init__(self, config: LogMelConfig = LogMelConfig()) -> None:
        self.config = config
        self.filters = mel_filterbank(config)
        self.window_len = round(config.sample_rate * config.window_ms / 1000)
        self.window = torch.hann_window(self.window_len, periodic=False)
        self._resamplers: dict[int, Resampler] = {}

    @property
    def sample_rate(self) -> int:
        """The rate features are computed at."""
        return self.config.sample_rate

    @property
    def feature_shape(self) -> tuple[int, int]:
        """``(layers, channels)`` of one row, as the DiT's ``audio_layers`` / ``audio_channels``."""
        return self.config.sub_frames, self.config.n_mels

    def to_rate(self, mono: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """``[N]`` at ``sample_rate`` -> ``[N']`` at the feature rate."""
        if sample_rate == self.config.sample_rate:
            return mono.float()
        if sample_rate not in self._resamplers:
            self._resamplers[sample_rate] = Resampler(sample_rate, self.config.sample_rate)
        return self._resamplers[sample_rate](mono.float())

    def rows(self, speech: torch.Tensor, fps: float, start: int, end: int) -> torch.Tensor:
        """Rows for video frames ``[start, end)`` of 16 kHz speech ``[N]`` (zeros past its ends).

        Returns:
            ``[end - start, sub_frames, n_mels]`` float32, normalised.
        """
        cfg = self.config
        frames = torch.arange(start, end, dtype=torch.float64)
        offsets = (torch.arange(cfg.sub_frames, dtype=torch.float64) + 0.5) / cfg.sub_frames
        centres = ((frames[:, None] + offsets[None]) / fps * cfg.sample_rate).round().long().flatten()
        half = self.window_len // 2
        # Pad so every window lies inside; windows past the audio read zeros (silence).
        lo = int(centres.min()) - half if centres.numel() else 0
        hi = int(centres.max()) + half + 1 if centres.numel() else 0
        pad_left, pad_right = max(0, -lo), max(0, hi - speech.shape[0])
        padded = torch.nn.functional.pad(speech.float(), (pad_left, pad_right))
        idx = (centres - half + pad_left)[:, None] + torch.arange(self.window_len)[None]
        windows = padded[idx] * self.window
        power = torch.fft.rfft(windows, n=cfg.n_fft).abs().square()
        mel = power @ self.filters.T
        logmel = (torch.log10(mel + cfg.floor) - cfg.mean) / cfg.std
        return logmel.view(end - start, cfg.sub_frames, cfg.n_mels)

    def num_rows(self, num_samples: int, sample_rate: int, fps: float) -> int:
        """Rows for a whole file: one per video frame that starts inside the audio."""
        return max(1, math.ceil(num_samples / sample_rate * fps - 1e-9))

    @torch.no_grad()
    def features(
        self, waveform: torch.Tensor, sample_rate: int, fps: float, downmix: bool = False
    ) -> torch.Tensor:
        """Whole-file features.

        Args:
            waveform: ``[C, N]`` audio (channel 0 is used, or the mean of all with ``downmix``).
            sample_rate: its rate.
            fps: the video frame rate.

        Returns:
            ``[S, sub_frames, n_mels]`` with ``S = ceil(seconds * fps)``.
        """
        mono = waveform.mean(0) if downmix else waveform[0]
        speech = self.to_rate(mono, sample_rate)
        return self.rows(speech, fps, 0, self.num_rows(mono.shape[-1], sample_rate, fps))


@dataclass
class LogMelStream:
    """Per-block slices of a recording, with the interface of ``liveact.components.audio.StreamingAudio``.

    ``embedding(start, end)`` returns rows of frames ``[start, end + window // 2)`` (row 0 = frame
    ``start``): the right neighbours the audio windows read. Log-mel rows need no context, so they
    equal the whole-file rows exactly.
    """

    encoder: LogMelEncoder
    speech: torch.Tensor  # [N] at the encoder's rate
    fps: float
    audio_window: int = 5

    @classmethod
    def from_waveform(
        cls,
        encoder: LogMelEncoder,
        waveform: torch.Tensor,
        sample_rate: int,
        fps: float,
        audio_window: int = 5,
    ) -> LogMelStream:
        """From ``[C, N]`` audio (channel 0)."""
        return cls(encoder, encoder.to_rate(waveform[0], sample_rate), fps, audio_window)

    def embedding(self, start: int, end: int) -> torch.Tensor:
        """``[end - start + window // 2, sub_frames, n_mels]`` rows from frame ``start``."""
        return self.encoder.rows(self.speech, self.fps, start, end + self.audio_window // 2)
