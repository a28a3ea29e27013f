"""Pitch-preserving tempo change, sample for sample as the authors' ``torchaudio.sox_effects`` call.

The reference stretches the audio with ``apply_effects_tensor(audio, sr, [["tempo", f"{rate}"]])``
(``rate = 25 / fps``), i.e. libsox's WSOLA ``tempo`` effect with its default settings. Its output
depends on every detail of that call, so this module reproduces each one:

- the effect argument is Python's ``str`` of the float (``25/24`` -> ``"1.0416666666666667"``), which
  libsox parses back to the same double;
- torchaudio hands libsox 32-bit integers: ``float32 -> float64 * 2**31 -> clamp -> truncate``;
- libsox's ``tempo`` runs on all channels together (its overlap search sums over channels);
- torchaudio turns libsox's integers back into floats with ``SOX_SAMPLE_TO_FLOAT_32BIT`` (rounded to
  a multiple of 2**-24, values above ``1 - 2**-25`` become 1.0).

libsox itself comes from one of, in this order:

1. ``cysox`` (PyPI wheel bundling libsox 14.4.2, the version torchaudio links; wheels for Linux
   x86_64/aarch64 and macOS arm64);
2. a ``sox`` 14.4.x command line on ``PATH``;
3. neither: ffmpeg's ``atempo`` filter, a different algorithm whose output does not match the
   authors' (other sample count, other waveform; at 25 fps nothing changes since the factor is 1).
   A warning says so once per process.

Both exact backends run the chain ``input -> tempo -> output`` on raw 32-bit files, as the ``sox``
command line does; the only values crossing the boundary are the integers torchaudio would pass.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import torch

from liveact.video import run_ffmpeg

logger = logging.getLogger(__name__)

# libsox's `tempo` accepts factors in this range (its option parser rejects anything else).
MIN_FACTOR, MAX_FACTOR = 0.1, 100.0
SOX_SAMPLE_SCALE = 2.0**31
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1

BACKENDS = ("cysox", "sox", "atempo")


def tempo_argument(factor: float) -> str:
    """The effect argument the reference passes: ``f"{25 / fps}"``, Python's shortest round-trip repr."""
    return str(float(factor))


def float_to_sox_samples(waveform: torch.Tensor) -> np.ndarray:
    """torchaudio's float32 -> ``sox_sample_t`` conversion.

    Args:
        waveform: ``[C, N]`` float (used as float32, like torchaudio requires).
    Returns:
        ``[N, C]`` int32, interleaved as libsox expects: ``trunc(clamp(float64(x) * 2**31))``.
    """
    x = waveform.detach().cpu().to(torch.float32).numpy().astype(np.float64) * SOX_SAMPLE_SCALE
    # astype truncates toward zero, as torch's float -> int conversion in torchaudio does.
    return np.ascontiguousarray(np.clip(x, _INT32_MIN, _INT32_MAX).astype(np.int32).T)


def sox_samples_to_float(samples: np.ndarray) -> torch.Tensor:
    """libsox's ``SOX_SAMPLE_TO_FLOAT_32BIT`` (torchaudio's output conversion), channels first.

    Args:
        samples: ``[N, C]`` int32.
    Returns:
        ``[C, N]`` float32: ``((s + 64) & ~127) / 2**31``, and 1.0 where ``s > 2**31 - 65``.
    """
    s = samples.astype(np.int64)
    out = ((s + 64) & ~127).astype(np.float64) / SOX_SAMPLE_SCALE
    out[s > _INT32_MAX - 64] = 1.0
    return torch.from_numpy(np.ascontiguousarray(out.astype(np.float32).T))


# --------------------------------------------------------------------------------------------------------
# Backends: run libsox's `tempo` on a raw file of interleaved native-endian int32 samples.


def _cysox_tempo(src: Path, dst: Path, rate: int, channels: int, argument: str) -> None:
    """libsox through cysox's low-level API: the chain ``input -> tempo -> output``, nothing else."""
    from cysox import sox

    sox.init()
    encoding = sox.EncodingInfo(encoding=int(sox.sox_encoding_t.SOX_ENCODING_SIGN2), bits_per_sample=32)
    signal = sox.SignalInfo(rate=float(rate), channels=channels, precision=32)
    source = sox.Format(str(src), signal=signal, encoding=encoding, filetype="raw")
    try:
        sink = sox.Format(
            str(dst),
            signal=sox.SignalInfo(rate=float(rate), channels=channels, precision=32),
            encoding=encoding,
            filetype="raw",
            mode="w",
        )
        try:
            chain = sox.EffectsChain(source.encoding, sink.encoding)
            # libsox writes the negotiated signal back into `interim`; it must be our own struct.
            interim = sox.SignalInfo(
                rate=float(rate), channels=channels, precision=32, length=source.signal.length
            )
            target = sox.SignalInfo(
                rate=float(rate), channels=channels, precision=32, length=source.signal.length
            )
            for name, options in (("input", [source]), ("tempo", [argument]), ("output", [sink])):
                effect = sox.Effect(sox.find_effect(name))
                if effect.set_options(options) != sox.SUCCESS:
                    raise ValueError(f"libsox rejected the effect options: {name} {options}")
                if chain.add_effect(effect, interim, target) != sox.SUCCESS:
                    raise RuntimeError(f"libsox could not add the {name} effect")
            chain.flow_effects()
        finally:
            sink.close()
    finally:
        source.close()


def _sox_cli_tempo(src: Path, dst: Path, rate: int, channels: int, argument: str) -> None:
    """The ``sox`` command line, as the fixtures were made: ``sox -D ... tempo <factor>``."""
    raw = ["-t", "raw", "-e", "signed-integer", "-b", "32", "-c", str(channels), "-r", str(rate)]
    proc = subprocess.run(
        [_sox_exe() or "sox", "-D", "-V1", *raw, str(src), *raw, str(dst), "tempo", argument],
        check=False,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"sox tempo failed (status {proc.returncode}): {proc.stderr.strip()}")


@cache
def _sox_exe() -> str | None:
    """Path of a ``sox`` 14.4.x binary on PATH, else None (other versions may change ``tempo``)."""
    exe = shutil.which("sox")
    if exe is None:
        return None
    try:
        version = subprocess.run([exe, "--version"], check=False, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return exe if "v14.4." in version.stdout else None


@cache
def _has_cysox() -> bool:
    try:
        from cysox import sox  # noqa: F401
    except ImportError:
        return False
    return True


def available_backends() -> list[str]:
    """The backends usable here, best first (``atempo``, inexact, is always last)."""
    found = {"cysox": _has_cysox(), "sox": _sox_exe() is not None, "atempo": True}
    return [name for name in BACKENDS if found[name]]


def available_backend() -> str:
    """The backend :func:`change_tempo` uses by default: ``cysox``, ``sox`` or ``atempo`` (inexact)."""
    return available_backends()[0]


_LIBSOX_RUNNERS: dict[str, Callable[[Path, Path, int, int, str], None]] = {
    "cysox": _cysox_tempo,
    "sox": _sox_cli_tempo,
}


def _libsox_tempo(waveform: torch.Tensor, sample_rate: int, argument: str, backend: str) -> torch.Tensor:
    samples = float_to_sox_samples(waveform)
    channels = samples.shape[1]
    with tempfile.TemporaryDirectory(prefix="liveact-tempo-") as tmp:
        src, dst = Path(tmp) / "in.s32", Path(tmp) / "out.s32"
        samples.tofile(src)
        _LIBSOX_RUNNERS[backend](src, dst, int(sample_rate), channels, argument)
        out = np.fromfile(dst, dtype=np.int32)
    return sox_samples_to_float(out.reshape(-1, channels))


_warned_inexact = False


def _atempo(waveform: torch.Tensor, sample_rate: int, factor: float) -> torch.Tensor:
    """ffmpeg's ``atempo`` (the fallback): same intent, different algorithm and length."""
    global _warned_inexact
    if not _warned_inexact:
        _warned_inexact = True
        logger.warning(
            "audio tempo %.6g runs through ffmpeg's atempo, which is NOT the authors' sox tempo: "
            "at fps != 25 the "
            "audio features, and so the video, differ from the official pipeline's. Install libsox for exact "
            "results: `pip install cysox` (Linux x86_64/aarch64, macOS arm64) or sox 14.4 on PATH.",
            factor,
        )
    import soundfile as sf

    with tempfile.TemporaryDirectory(prefix="liveact-tempo-") as tmp:
        src, dst = Path(tmp) / "in.wav", Path(tmp) / "out.wav"
        sf.write(str(src), waveform.detach().cpu().float().T.numpy(), sample_rate, subtype="FLOAT")
        run_ffmpeg(
            ["-i", str(src), "-filter:a", _atempo_chain(factor), "-c:a", "pcm_f32le", str(dst)],
            "change the audio tempo",
        )
        data, _ = sf.read(str(dst), dtype="float32", always_2d=True)
    return torch.from_numpy(np.ascontiguousarray(data.T))


def _atempo_chain(factor: float) -> str:
    """ffmpeg ``atempo`` filters whose product is ``factor`` (each stage limited to [0.5, 100])."""
    stages = []
    while factor < 0.5:
        stages.append(0.5)
        factor /= 0.5
    while factor > 100.0:
        stages.append(100.0)
        factor /= 100.0
    stages.append(factor)
    return ",".join(f"atempo={s:.10g}" for s in stages)


def change_tempo(
    waveform: torch.Tensor, sample_rate: int, factor: float, backend: str | None = None
) -> torch.Tensor:
    """Pitch-preserving time stretch of all channels together, identical to the reference's sox call.

    Args:
        waveform: ``[C, N]`` float in [-1, 1] (values outside are clipped, as torchaudio does).
        sample_rate: its rate (unchanged).
        factor: speed factor in [0.1, 100]; the result plays ``factor`` times faster.
        backend: ``cysox``, ``sox`` or ``atempo``; None picks :func:`available_backend`.
    Returns:
        ``[C, round(N / factor)]`` float32 on ``waveform``'s device. At factor 1 libsox's ``tempo`` is a
        no-op, so only torchaudio's int32 round trip remains (exact for 8/16/24-bit PCM input).
    """
    if waveform.ndim != 2 or waveform.shape[1] == 0:
        raise ValueError(f"expected a non-empty waveform [channels, samples], got {tuple(waveform.shape)}")
    if not MIN_FACTOR <= factor <= MAX_FACTOR:
        raise ValueError(
            f"tempo factor {factor:g} is outside sox's range [{MIN_FACTOR:g}, {MAX_FACTOR:g}] "
            f"(the factor is 25/fps, so fps must lie in [0.25, 250])"
        )
    backend = backend or available_backend()
    if backend not in BACKENDS:
        raise ValueError(f"unknown tempo backend {backend!r}; expected one of {BACKENDS}")
    if float(factor) == 1.0:
        out = sox_samples_to_float(float_to_sox_samples(waveform))
    elif backend == "atempo":
        out = _atempo(waveform, sample_rate, factor)
    else:
        out = _libsox_tempo(waveform, sample_rate, tempo_argument(factor), backend)
    return out.to(waveform.device)
