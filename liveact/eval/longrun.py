"""Long-run evidence: one stream of many minutes, with latency, memory and quality over time.

    python -m liveact.eval longrun --minutes 30 --memory conv --out runs/longrun/conv
    python -m liveact.eval longrun --minutes 3 --memory grow --out runs/longrun/grow
    python -m liveact.eval longrun-plot runs/longrun/*/longrun.json --out docs/longrun.png

One portrait (``examples/avatar_1.png`` by default) is driven by synthetic speech from a held-out
espeak voice (sentences and pauses) through the real pipeline (``LiveActPipeline``, streaming audio,
the tiny autoencoder's streaming decoder), block after block, in one process. Per block it records
the wall time and the process's resident memory; per frame the mouth opening and accessories read
by the reader (``liveact.eval.reader``) and the low-pass distance to the portrait. Per window
(default 60 s): lip-sync correlation with the audio envelope, identity drift and accessory
persistence. Accessories are compared with what the first block shows (its most common reading), not
with the portrait: the reader sees the crisp portrait differently from generated (autoencoder-soft)
frames, and persistence is about keeping over time what the stream started with. Frames are not kept:
memory stays what the model needs.

``--memory`` picks the long-term memory: ``conv`` (ConvKV, the default), ``mean`` (a plain mean),
``none`` (sink + short-term only) or ``grow`` (no compression: every block's keys/values are kept
and attended to; ``--max_block_seconds`` / ``--max_rss_gb`` end it when it no longer keeps up).

``--steps N`` samples with an N-step flow schedule instead of the folder's own (e.g. a stage-1 teacher,
which has no few-step schedule of its own), ``--audio_cfg`` adds audio guidance on every step:

    python -m liveact.eval longrun --ckpt_dir runs/nano_teacher --steps 20 --minutes 1 --window 20 \\
        --out runs/longrun_teacher
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from liveact.config import SamplerConfig
from liveact.eval.metrics import lag_correlation, lowpass, speech_envelope
from liveact.eval.reader import AvatarReader
from liveact.video import to_uint8_frames

logger = logging.getLogger(__name__)

MEMORY_CHOICES = ("conv", "mean", "none", "grow")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def resident_bytes() -> int:
    """Resident set size of this process now (Linux ``/proc``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@dataclass
class LongRunRecord:
    """Everything one long run measured (written as ``longrun.json``)."""

    memory: str
    fps: float
    size: tuple[int, int]
    block_seconds: list[float] = field(default_factory=list)
    block_frames: list[int] = field(default_factory=list)
    rss_bytes: list[int] = field(default_factory=list)
    windows: list[dict] = field(default_factory=list)
    stopped: str = "finished"
    steps: int = 0
    audio_cfg: float = 1.0

    def slope(self, values: list[float], skip: int = 3) -> float:
        """Least-squares slope per block of ``values`` from block ``skip`` on (0 when too short)."""
        y = np.asarray(values[skip:], dtype=np.float64)
        return float(np.polyfit(np.arange(len(y)), y, 1)[0]) if len(y) >= 2 else 0.0

    def summary(self) -> dict:
        """Headline numbers: video seconds, speed, slopes, first/last window metrics."""
        video = sum(self.block_frames) / self.fps
        wall = sum(self.block_seconds)
        steady = self.block_seconds[3:] or self.block_seconds
        out = {
            "memory": self.memory,
            "video_seconds": video,
            "blocks": len(self.block_seconds),
            "wall_seconds": wall,
            "real_time_factor": video / wall if wall else 0.0,
            "steady_block_seconds_median": float(np.median(steady)) if steady else 0.0,
            "block_seconds_slope_per_block": self.slope(self.block_seconds),
            "rss_mb_slope_per_block": self.slope([r / 2**20 for r in self.rss_bytes]),
            "rss_mb_first": self.rss_bytes[0] / 2**20 if self.rss_bytes else 0.0,
            "rss_mb_last": self.rss_bytes[-1] / 2**20 if self.rss_bytes else 0.0,
            "stopped": self.stopped,
            "steps": self.steps,
            "audio_cfg": self.audio_cfg,
        }
        for key in ("lipsync_corr", "identity_drift", "accessory_persistence"):
            values = [w[key] for w in self.windows if w.get(key) is not None]
            if values:
                out[f"{key}_first_window"] = values[0]
                out[f"{key}_last_window"] = values[-1]
                out[f"{key}_later_windows_range"] = [min(values[1:] or values), max(values[1:] or values)]
                out[f"{key}_mean"] = float(np.mean(values))
        return out

    def to_json(self) -> dict:
        """The record and its summary as plain JSON."""
        return {
            "summary": self.summary(),
            "memory": self.memory,
            "fps": self.fps,
            "size": list(self.size),
            "block_seconds": self.block_seconds,
            "block_frames": self.block_frames,
            "rss_bytes": self.rss_bytes,
            "windows": self.windows,
            "stopped": self.stopped,
        }


def long_speech(path: Path, seconds: float, seed: int) -> np.ndarray:
    """Write ``seconds`` of held-out synthetic speech (sentences and pauses) to ``path``; ``[N]`` at
    16 kHz."""
    from liveact.train.synth import SAMPLE_RATE, _speech_track

    wave, _, voice = _speech_track(seed, seconds, held_out=True, silence=0.15)
    sf.write(path, wave, SAMPLE_RATE)
    logger.info("speech: %.0f s, held-out voice %s -> %s", seconds, voice, path)
    return wave


def window_metrics(
    mouth: np.ndarray,
    ident: np.ndarray,
    acc_ok: np.ndarray,
    env: np.ndarray,
    fps: float,
    window_seconds: float,
) -> list[dict]:
    """Per-window lip-sync correlation (best lag within ±5 frames), identity drift, accessory persistence.

    Args: per-frame ``[F]`` arrays: mouth opening, low-pass distance to the portrait, accessories as in
    the portrait (bool), and the audio envelope.
    """
    win = max(1, round(window_seconds * fps))
    out = []
    for start in range(0, len(mouth), win):
        sl = slice(start, start + win)
        voiced = env[sl] > 0.05
        corr = lag_correlation(mouth[sl], env[sl])[0] if voiced.mean() > 0.2 and len(mouth[sl]) > 20 else None
        out.append(
            {
                "start_s": start / fps,
                "frames": len(mouth[sl]),
                "lipsync_corr": None if corr is None or np.isnan(corr) else float(corr),
                "identity_drift": float(ident[sl].mean()),
                "accessory_persistence": float(acc_ok[sl].mean()),
            }
        )
    return out


def memory_options(memory: str) -> dict:
    """Pipeline options of a ``--memory`` choice."""
    from liveact.config import MemoryConfig

    if memory not in MEMORY_CHOICES:
        raise ValueError(f"--memory must be one of {', '.join(MEMORY_CHOICES)}, got {memory!r}")
    return {"memory": MemoryConfig(compression=memory)}


def run(
    ckpt_dir: Path | None,
    image: Path,
    minutes: float,
    memory: str,
    reader_dir: Path,
    out: Path,
    seed: int = 0,
    window_seconds: float = 60.0,
    max_block_seconds: float = 0.0,
    max_rss_gb: float = 0.0,
    schedule: SamplerConfig | None = None,
    audio_cfg: float = 1.0,
) -> LongRunRecord:
    """Stream ``minutes`` of video in one process and record it (see the module docstring).

    ``schedule`` replaces the folder's own sampler schedule (None: keep it); ``audio_cfg`` > 1 adds audio
    guidance on its ``cfg_steps``.
    """
    from liveact.pipeline import LiveActPipeline, Request, load_image

    out.mkdir(parents=True, exist_ok=True)
    pipe = LiveActPipeline.from_pretrained(
        ckpt_dir,
        dtype=torch.float32,
        stream_audio=True,
        schedule=schedule,
        audio_cfg=audio_cfg,
        **memory_options(memory),
    )
    reader = AvatarReader.load(reader_dir)
    speech = out / "speech.wav"
    wave = long_speech(speech, minutes * 60.0, seed)
    clip = pipe.prepare(Request(image=image, audio=speech, prompt="A person talks to the camera."))
    width, height = pipe.size
    portrait = np.array(load_image(image).resize((width, height)))
    ref_small = lowpass(portrait[None])[0]
    ref_acc: np.ndarray | None = None
    record = LongRunRecord(
        memory=memory,
        fps=pipe.fps,
        size=(width, height),
        steps=pipe.sampler.config.num_steps,
        audio_cfg=audio_cfg,
    )
    mouth, ident, acc_ok = [], [], []
    stream = pipe.stream(clip, seed=seed)
    start = time.perf_counter()
    for k in range(clip.num_blocks):
        frames = next(stream)
        now = time.perf_counter()
        block = to_uint8_frames(frames)
        read = reader.read(block)
        mouth.append(read["mouth"])
        if ref_acc is None:
            rows, counts = np.unique(read["accessories"], axis=0, return_counts=True)
            ref_acc = rows[counts.argmax()]
        acc_ok.append((read["accessories"] == ref_acc).all(axis=1))
        ident.append(np.abs(lowpass(block) - ref_small).mean(axis=(1, 2, 3)))
        record.block_seconds.append(now - start)
        record.block_frames.append(len(block))
        record.rss_bytes.append(resident_bytes())
        if k % 25 == 0:
            video = sum(record.block_frames) / pipe.fps
            logger.info(
                "block %d/%d: %.0f s of video, block %.3f s, RSS %.0f MB",
                k + 1,
                clip.num_blocks,
                video,
                now - start,
                record.rss_bytes[-1] / 2**20,
            )
        if max_block_seconds and k >= 3 and now - start > max_block_seconds:
            record.stopped = f"block {k} took {now - start:.2f} s > --max_block_seconds {max_block_seconds}"
            break
        if max_rss_gb and record.rss_bytes[-1] > max_rss_gb * 2**30:
            record.stopped = f"RSS {record.rss_bytes[-1] / 2**30:.1f} GB > --max_rss_gb {max_rss_gb}"
            break
        start = time.perf_counter()
    mouth_all, ident_all, acc_all = (np.concatenate(x) for x in (mouth, ident, acc_ok))
    n = min(len(mouth_all), clip.num_frames)
    env = speech_envelope(wave, n, pipe.fps)
    record.windows = window_metrics(mouth_all[:n], ident_all[:n], acc_all[:n], env, pipe.fps, window_seconds)
    (out / "longrun.json").write_text(json.dumps(record.to_json(), indent=1))
    logger.info("summary: %s", json.dumps(record.summary(), indent=1))
    return record


def plot(records: list[dict], out: Path) -> None:
    """Per-block latency, resident memory and per-window metrics of several runs in one PNG."""
    from liveact.train.plots import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for rec in records:
        label = rec["memory"]
        frames = np.cumsum(rec["block_frames"]) / rec["fps"] / 60
        axes[0, 0].plot(frames, rec["block_seconds"], lw=0.8, label=label)
        axes[0, 1].plot(frames, np.asarray(rec["rss_bytes"]) / 2**20, lw=1.0, label=label)
        starts = [w["start_s"] / 60 for w in rec["windows"]]
        axes[1, 0].plot(
            starts,
            [np.nan if w["lipsync_corr"] is None else w["lipsync_corr"] for w in rec["windows"]],
            marker=".",
            label=label,
        )
        axes[1, 1].plot(starts, [w["identity_drift"] for w in rec["windows"]], marker=".", label=label)
    titles = [
        ("seconds per block", "block wall time"),
        ("MB", "process resident memory"),
        ("correlation", "lip-sync: mouth vs audio envelope, per window"),
        ("mean |low-pass difference|", "identity drift vs the portrait, per window"),
    ]
    for ax, (ylabel, title) in zip(axes.flat, titles):
        ax.set_xlabel("minutes of video")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, out)
    logger.info("wrote %s", out)


TABLE_HEADER = (
    "| memory | minutes of video | real-time factor | median steady block (s) | latency slope (ms/block) "
    "| RSS first → last (MB) | RSS slope (KB/block) | lip-sync corr: first / last / mean of windows "
    "| identity drift first → last window | accessory persistence (mean of windows) | ended |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


def table_row(summary: dict) -> str:
    """One markdown row of ``TABLE_HEADER`` from a record's ``summary``."""

    def get(key: str) -> float:
        return float(summary.get(key, float("nan")))

    return (
        f"| {summary['memory']} | {summary['video_seconds'] / 60:.1f} | {get('real_time_factor'):.2f} "
        f"| {get('steady_block_seconds_median'):.3f} | {1000 * get('block_seconds_slope_per_block'):+.3f} "
        f"| {get('rss_mb_first'):.0f} → {get('rss_mb_last'):.0f} "
        f"| {1024 * get('rss_mb_slope_per_block'):+.1f} "
        f"| {get('lipsync_corr_first_window'):.2f} / {get('lipsync_corr_last_window'):.2f} / "
        f"{get('lipsync_corr_mean'):.2f} | {get('identity_drift_first_window'):.4f} → "
        f"{get('identity_drift_last_window'):.4f} | {get('accessory_persistence_mean'):.2f} "
        f"| {summary['stopped']} |"
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m liveact.eval longrun``."""
    p = argparse.ArgumentParser(
        prog="python -m liveact.eval longrun",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--ckpt_dir", type=Path, default=None, help="model folder (default: the embedded Nano)")
    p.add_argument("--image", type=Path, default=EXAMPLES / "avatar_1.png")
    p.add_argument("--minutes", type=float, default=30.0, help="minutes of speech (and video)")
    p.add_argument("--memory", choices=MEMORY_CHOICES, default="conv")
    p.add_argument("--reader", type=Path, default=None, help="reader folder (default: the embedded one)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--window", type=float, default=60.0, help="seconds per metric window")
    p.add_argument(
        "--max_block_seconds", type=float, default=0.0, help="stop when a block takes longer (0: never)"
    )
    p.add_argument("--max_rss_gb", type=float, default=0.0, help="stop above this resident memory (0: never)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="sample with this many flow-schedule steps (default: the folder's schedule)",
    )
    p.add_argument("--audio_cfg", type=float, default=1.0, help="audio guidance with --steps (1: off)")
    a = p.parse_args(argv)
    if a.steps is None and a.audio_cfg != 1.0:
        p.error("--audio_cfg needs --steps (the folder's own schedule carries its own guidance)")
    if a.steps is not None and a.steps < 1:
        p.error(f"--steps {a.steps}: give at least one step")
    torch.set_num_threads(a.threads)
    from liveact.eval.reader import default_reader_dir
    from liveact.eval.runner import flow_schedule

    schedule = None if a.steps is None else flow_schedule(a.steps)
    run(
        a.ckpt_dir,
        a.image,
        a.minutes,
        a.memory,
        a.reader or default_reader_dir(),
        a.out,
        a.seed,
        a.window,
        a.max_block_seconds,
        a.max_rss_gb,
        schedule,
        a.audio_cfg,
    )


def plot_main(argv: list[str] | None = None) -> None:
    """``python -m liveact.eval longrun-plot``."""
    p = argparse.ArgumentParser(prog="python -m liveact.eval longrun-plot")
    p.add_argument("records", nargs="+", type=Path, help="longrun.json files")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    records = [json.loads(r.read_text()) for r in a.records]
    plot(records, a.out)
    print(TABLE_HEADER)  # the table docs/PERFORMANCE.md shows
    for rec in records:
        print(table_row(rec["summary"]))


__all__ = [
    "TABLE_HEADER",
    "LongRunRecord",
    "long_speech",
    "main",
    "memory_options",
    "plot",
    "resident_bytes",
    "run",
    "table_row",
    "window_metrics",
]
