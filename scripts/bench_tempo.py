"""Wall time of the audio tempo change per backend (libsox via cysox, the sox CLI, ffmpeg atempo).

    python scripts/bench_tempo.py                        # 60 s of synthetic stereo 44.1 kHz speech
    python scripts/bench_tempo.py --audio speech.wav --fps 20 --repeats 5

Prints the median of ``--repeats`` runs per backend and its ratio to ffmpeg's atempo (the previous
path), all measured in this one run.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import numpy as np
import torch

from liveact.components.audio import AUDIO_FPS, load_audio
from liveact.components.tempo import BACKENDS, available_backends, change_tempo


def synthetic_speech(seconds: float, sample_rate: int, channels: int) -> torch.Tensor:
    """``[C, N]`` float32 voiced harmonics with a syllable envelope (deterministic)."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    rows = []
    for c in range(channels):
        phase = 2 * np.pi * np.cumsum(120 + 30 * c + 20 * np.sin(2 * np.pi * 0.5 * t)) / sample_rate
        rows.append(0.3 * sum(np.sin(k * phase) / k for k in range(1, 8)) * np.sin(2 * np.pi * 3 * t) ** 2)
    return torch.from_numpy(np.stack(rows).astype(np.float32))


def main() -> None:
    """Parse arguments, time each available backend, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audio", default=None, help="an audio file (default: synthetic speech)")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the synthetic speech")
    parser.add_argument("--sample_rate", type=int, default=44100)
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument("--fps", type=float, default=20.0, help="video fps; the tempo factor is 25/fps")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    if args.audio:
        wave, sr = load_audio(args.audio)
    else:
        wave, sr = synthetic_speech(args.seconds, args.sample_rate, args.channels), args.sample_rate
    seconds = wave.shape[1] / sr
    available = available_backends()
    factor = AUDIO_FPS / args.fps
    print(
        f"{wave.shape[0]} channel(s), {seconds:.1f} s at {sr} Hz, tempo {factor:g} (fps {args.fps:g}), "
        f"median of {args.repeats}"
    )
    times: dict[str, float] = {}
    for backend in BACKENDS:
        if backend not in available:
            print(f"{backend:>7}: not available")
            continue
        runs = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = change_tempo(wave, sr, factor, backend=backend)
            runs.append(time.perf_counter() - start)
        times[backend] = statistics.median(runs)
        print(
            f"{backend:>7}: {times[backend]:.3f} s ({seconds / times[backend]:.0f}x real time), "
            f"{out.shape[1]} samples out"
        )
    for backend, t in times.items():
        print(f"{backend:>7} / atempo time ratio: {t / times['atempo']:.2f}")


if __name__ == "__main__":
    main()
