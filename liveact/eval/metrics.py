"""Download-free metrics of a generated talking-avatar video.

All take uint8 frames ``[F, H, W, 3]`` and, where audio matters, the 16 kHz waveform; the mouth,
eyes and accessories are read with ``AvatarReader`` (trained here; its own accuracy is stored with it).

- lip-sync: correlation between the mouth opening read from the pixels and the audio envelope, at
  the best lag within +-``max_lag`` frames and at lag 0 (and against the ground-truth opening on
  synthetic clips);
- silence: share of silent frames (audio below -40 dB of the speech level) whose mouth is closed;
- identity drift: mean absolute difference between each frame and the reference frame after a
  16x16 low-pass (colours, hair, clothes, background; mouth motion barely registers), per window;
- accessories: share of frames whose glasses / earrings / hat read the same as the reference frame;
- jitter: mean absolute frame-to-frame change after the low-pass (flicker and shaking), for
  comparison with the ground truth's own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from liveact.eval.reader import ACCESSORIES, AvatarReader


def frame_envelope(wave: np.ndarray, num_frames: int, fps: float, sample_rate: int = 16000) -> np.ndarray:
    """``[num_frames]`` RMS of the audio under each frame (zero past the end of the audio)."""
    hop = sample_rate / fps
    out = np.zeros(num_frames, np.float32)
    for i in range(num_frames):
        seg = wave[int(i * hop) : int((i + 1) * hop)]
        out[i] = np.sqrt(np.mean(np.square(seg))) if len(seg) else 0.0
    return out


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or a.std() < 1e-8 or b.std() < 1e-8:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def lag_correlation(mouth: np.ndarray, envelope: np.ndarray, max_lag: int = 5) -> tuple[float, int]:
    """Best correlation over lags in ``[-max_lag, max_lag]`` (positive lag: the mouth trails the audio)."""
    best, best_lag = -1.0, 0
    for lag in range(-max_lag, max_lag + 1):
        if lag >= 0:
            c = _corr(mouth[lag:], envelope[: len(envelope) - lag])
        else:
            c = _corr(mouth[:lag], envelope[-lag:])
        if c > best:
            best, best_lag = c, lag
    return best, best_lag


def lowpass(frames: np.ndarray, size: int = 16) -> np.ndarray:
    """``[F, size, size, 3]`` float area-averaged frames in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
    return F.adaptive_avg_pool2d(x, size).permute(0, 2, 3, 1).numpy()


@dataclass
class VideoMetrics:
    """Metrics of one clip (see the module docstring); ``None`` where not applicable."""

    lipsync_corr: float
    lipsync_lag: int
    lipsync_corr_lag0: float
    mouth_gt_corr: float | None
    silence_closed: float | None
    identity_drift: float
    accessory_persistence: float
    jitter: float
    frames: int

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return asdict(self)


def speech_envelope(wave: np.ndarray, num_frames: int, fps: float) -> np.ndarray:
    """Frame envelope normalised to the clip's speech level (90th percentile of voiced frames = 1)."""
    env = frame_envelope(wave, num_frames, fps)
    voiced = env[env > 1e-4]
    return env / (np.percentile(voiced, 90) if len(voiced) else 1.0)


def evaluate_video(
    frames: np.ndarray,
    wave: np.ndarray,
    fps: float,
    reader: AvatarReader,
    reference: np.ndarray | None = None,
    mouth_gt: np.ndarray | None = None,
    closed_threshold: float = 0.1,
) -> VideoMetrics:
    """All metrics of one generated clip.

    Args:
        frames: ``[F, H, W, 3]`` uint8 generated frames.
        wave: ``[N]`` 16 kHz audio the clip was driven by.
        reference: ``[H, W, 3]`` the reference image (default: frame 0).
        mouth_gt: ``[F]`` ground-truth opening (synthetic clips).
    """
    reference = frames[0] if reference is None else reference
    read = reader.read(frames)
    ref_read = reader.read(reference[None])
    env = speech_envelope(wave, len(frames), fps)
    corr, lag = lag_correlation(read["mouth"], env)
    silent = env < 0.01
    small = lowpass(frames)
    ref_small = lowpass(reference[None])[0]
    return VideoMetrics(
        lipsync_corr=corr,
        lipsync_lag=lag,
        lipsync_corr_lag0=_corr(read["mouth"], env),
        mouth_gt_corr=None if mouth_gt is None else _corr(read["mouth"], mouth_gt[: len(frames)]),
        silence_closed=float((read["mouth"][silent] < closed_threshold).mean()) if silent.any() else None,
        identity_drift=float(np.abs(small - ref_small).mean()),
        accessory_persistence=float((read["accessories"] == ref_read["accessories"][0]).all(axis=1).mean()),
        jitter=float(np.abs(np.diff(small, axis=0)).mean()) if len(frames) > 1 else 0.0,
        frames=len(frames),
    )


def drift_series(
    frames: np.ndarray, reference: np.ndarray, reader: AvatarReader, fps: float, window_seconds: float = 10.0
) -> list[dict]:
    """Identity drift and accessory persistence per window of ``window_seconds`` (long-run plots)."""
    win = max(1, int(window_seconds * fps))
    ref_small = lowpass(reference[None])[0]
    ref_acc = reader.read(reference[None])["accessories"][0]
    out = []
    for start in range(0, len(frames), win):
        chunk = frames[start : start + win]
        out.append(
            {
                "start_s": start / fps,
                "identity_drift": float(np.abs(lowpass(chunk) - ref_small).mean()),
                "accessory_persistence": float(
                    (reader.read(chunk)["accessories"] == ref_acc).all(axis=1).mean()
                ),
            }
        )
    return out


__all__ = [
    "ACCESSORIES",
    "VideoMetrics",
    "drift_series",
    "evaluate_video",
    "frame_envelope",
    "lag_correlation",
    "lowpass",
    "speech_envelope",
]
