"""Do the timed edit prompts show? Action evidence read from the pixels, per block.

Each action of the synthetic family moves one part of the face, which ``AvatarReader`` reads per frame:

- smile -> ``smile``; raise_brows -> ``brows``; surprised -> ``eye_wide``; close_eyes -> eyes-closed
  probability;
- nod / shake -> how much the head moves up-down / side to side: the standard deviation of ``dy`` /
  ``dx`` within a sliding window of about one nod (slow idle sway barely registers).

An action "shows" in a block when its evidence there, minus its evidence in the same clip's neutral
blocks (no action), exceeds half of what the ground truth gives (the clip's own latents decoded by
the same autoencoder and read by the same reader): the model has to make the face do at least half
of what the renderer drew, and the reader's limits are shared by both sides.

    python -m liveact.eval actions --model runs/stage2/model --tae runs/tae_frozen.safetensors \\
        --data runs/data_val --clips 64
    python -m liveact.eval actions --video outputs/example_edit.mp4 --input_json examples/example_edit.json
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch

from liveact.config import MemoryConfig, SamplerConfig
from liveact.eval.reader import AvatarReader, default_reader_dir
from liveact.sampler import block_span
from liveact.train.synth import ACTIONS, FPS, MOTION

logger = logging.getLogger(__name__)

# Frames of a block's start where the action is still ramping in (the renderer ramps over 5 frames).
RAMP_FRAMES = 4


def wobble(x: np.ndarray, window: int) -> np.ndarray:
    """``[F]`` standard deviation of ``x`` within a centred window of ``window`` frames (edges clipped)."""
    half = window // 2
    out = np.empty(len(x), np.float32)
    for i in range(len(x)):
        seg = x[max(0, i - half) : i + half + 1]
        out[i] = seg.std()
    return out


def action_signals(read: dict[str, np.ndarray], fps: float) -> dict[str, np.ndarray]:
    """Per-frame evidence ``[F]`` of every action in ``ACTIONS`` from ``AvatarReader.read`` output."""
    motion = {name: read["motion"][:, i] for i, name in enumerate(MOTION)}
    window = max(3, round(0.8 * fps))  # one nod (1.3 Hz) or most of a shake (1.8 Hz)
    return {
        "smile": motion["smile"],
        "raise_brows": motion["brows"],
        "surprised": motion["eye_wide"],
        "close_eyes": read["eyes_closed"],
        "nod": wobble(motion["dy"], window),
        "shake": wobble(motion["dx"], window),
    }


def block_spans(num_frames: int, first: int, later: int) -> list[tuple[int, int]]:
    """``[(start, end)]`` video frames of each block (first block ``first`` frames, then ``later``)."""
    spans, start, size = [], 0, first
    while start < num_frames:
        spans.append((start, min(num_frames, start + size)))
        start, size = start + size, later
    return spans


def action_contrasts(
    signals: dict[str, np.ndarray], block_actions: list[str], spans: list[tuple[int, int]]
) -> list[tuple[int, str, float]]:
    """``[(block, action, contrast)]`` for every block with an action: mean evidence of that action in
    the block (after the ramp) minus its mean over the clip's neutral blocks. Empty when the clip has no
    neutral block to compare with."""
    neutral = [spans[k] for k, a in enumerate(block_actions[: len(spans)]) if not a]
    if not neutral:
        return []
    out = []
    for k, action in enumerate(block_actions[: len(spans)]):
        if not action:
            continue
        s, e = spans[k]
        sig = signals[action]
        base = float(np.mean(np.concatenate([sig[a:b] for a, b in neutral])))
        out.append((k, action, float(sig[min(e - 1, s + RAMP_FRAMES) : e].mean()) - base))
    return out


def summarise(model: list[tuple[int, str, float]], truth: list[tuple[int, str, float]]) -> dict[str, dict]:
    """Per action: mean contrast of the model and of the ground truth, their ratio, and the share of
    blocks where the action shows (model contrast above half the ground truth's mean contrast)."""
    out: dict[str, dict] = {}
    for action in ACTIONS:
        m = [c for _, a, c in model if a == action]
        t = [c for _, a, c in truth if a == action]
        if not m or not t:
            continue
        threshold = 0.5 * float(np.mean(t))
        out[action] = {
            "blocks": len(m),
            "model": float(np.mean(m)),
            "ground_truth": float(np.mean(t)),
            "ratio": float(np.mean(m) / np.mean(t)) if abs(np.mean(t)) > 1e-8 else None,
            "shows": float(np.mean([c > threshold for c in m])),
            "shows_ground_truth": float(np.mean([c > threshold for c in t])),
        }
    return out


def default_spans() -> tuple[int, int]:
    """Video frames of the first and later blocks under the default memory layout and schedule."""
    mem, stride = MemoryConfig(), SamplerConfig().vae_stride[0]
    return block_span(0, mem, stride).video_frames(stride), block_span(1, mem, stride).video_frames(stride)


def evaluate(
    model_dir: Path,
    tae_path: Path,
    data_dir: Path,
    reader: AvatarReader,
    clips: int,
    schedule: SamplerConfig,
    seed: int = 0,
) -> dict:
    """Sample held-out clips that carry actions and score them against their decoded ground truth."""
    from liveact.eval.runner import NanoParts, clip_conditions, decode_truth, sample_frames
    from liveact.train.data import ClipSet

    parts = NanoParts.load(model_dir, tae_path)
    data = ClipSet.load(data_dir, clips)
    first, later = default_spans()
    model_c, truth_c = [], []
    for i in range(len(data)):
        actions = data.meta[i]["actions"]
        if not any(actions) or all(actions):
            continue
        frames = sample_frames(parts, clip_conditions(parts, data, i), len(actions), schedule, seed + i)
        for video, sink in ((frames, model_c), (decode_truth(parts.tae, data, i), truth_c)):
            spans = block_spans(len(video), first, later)
            sink += action_contrasts(action_signals(reader.read(video), FPS), actions, spans)
    return {
        "per_action": summarise(model_c, truth_c),
        "blocks": len(model_c),
        "model": str(model_dir),
        "steps": len(schedule.timesteps) - 1,
        "edit_cfg": schedule.edit_cfg,
    }


def check_video(video: Path, edits: dict[str, str], reader: AvatarReader, plot: Path | None = None) -> dict:
    """Score one generated video against its ``edit_prompt`` ranges (block indices, inclusive).

    The action of each range is recognised from its prompt (the synthetic family's vocabulary); the
    blocks outside every range are the neutral baseline.
    """
    from liveact.userinput import parse_edit_range
    from liveact.video import probe_video, read_frames

    frames, fps = read_frames(video), float(probe_video(video)["fps"])
    first, later = default_spans()
    spans = block_spans(len(frames), first, later)
    block_actions = [""] * len(spans)
    for key, prompt in edits.items():
        action = next((a for a, texts in ACTIONS.items() if prompt in texts), None)
        if action is None:
            raise ValueError(
                f"edit prompt {prompt!r} is none of the Nano family's action prompts: "
                f"use one from liveact.train.synth.ACTIONS"
            )
        a, b = parse_edit_range(key, str(video))
        for k in range(a, min(b, len(spans) - 1) + 1):
            block_actions[k] = action
    read = reader.read(frames)
    signals = action_signals(read, fps)
    result = {
        "video": str(video),
        "frames": len(frames),
        "blocks": [
            {"block": k, "action": a, "contrast": c}
            for k, a, c in action_contrasts(signals, block_actions, spans)
        ],
    }
    if plot is not None:
        plot_video_check(frames, fps, signals, block_actions, spans, plot)
    return result


def plot_video_check(
    frames: np.ndarray,
    fps: float,
    signals: dict[str, np.ndarray],
    block_actions: list[str],
    spans: list[tuple[int, int]],
    out: Path,
) -> None:
    """PNG: one frame from the middle of every action block above each action's evidence over time."""
    from liveact.train.plots import pyplot, save_figure

    plt = pyplot()
    shown = [k for k, a in enumerate(block_actions) if a]
    neutral = next((k for k, a in enumerate(block_actions) if not a), 0)
    picks = [neutral, *shown]
    fig = plt.figure(figsize=(2.0 * len(picks), 5.5))
    grid = fig.add_gridspec(2, len(picks), height_ratios=[1, 1.3])
    for j, k in enumerate(picks):
        ax = fig.add_subplot(grid[0, j])
        s, e = spans[k]
        ax.imshow(frames[(s + e) // 2])
        ax.set_title(f"block {k}: {block_actions[k] or 'neutral'}", fontsize=8)
        ax.axis("off")
    ax = fig.add_subplot(grid[1, :])
    t = np.arange(len(frames)) / fps
    for action in sorted({a for a in block_actions if a}):
        sig = signals[action]
        (line,) = ax.plot(t, sig / max(1e-6, float(np.abs(sig).max())), label=action, lw=1)
        for k, a in enumerate(block_actions):
            if a == action:
                ax.axvspan(spans[k][0] / fps, spans[k][1] / fps, color=line.get_color(), alpha=0.12)
    ax.set_xlabel("seconds")
    ax.set_ylabel("evidence (scaled to max 1)")
    ax.legend(fontsize=7, ncol=3, loc="upper left")
    save_figure(fig, out)


def main(argv: list[str] | None = None) -> None:
    """``python -m liveact.eval actions``."""
    from liveact.eval.runner import eval_schedule

    p = argparse.ArgumentParser(
        prog="python -m liveact.eval actions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", type=Path, help="DiT folder: sample held-out clips (with --tae, --data)")
    p.add_argument("--tae", type=Path)
    p.add_argument("--data", type=Path, help="held-out shards")
    p.add_argument(
        "--clips", type=int, default=64, help="held-out clips to look at (those with actions are used)"
    )
    p.add_argument("--steps", type=int, default=None, help="multi-step schedule; default: the 3-step one")
    p.add_argument("--edit_cfg", type=float, default=1.0, help="edit guidance scale (1 = off)")
    p.add_argument("--video", type=Path, help="instead: score this generated video ...")
    p.add_argument(
        "--input_json", type=Path, help="... against the edit_prompt ranges of this generate.py input"
    )
    p.add_argument("--entry", type=int, default=0, help="which entry of --input_json made the video")
    p.add_argument("--plot", type=Path, default=None, help="with --video: write a PNG of frames and evidence")
    p.add_argument("--reader", type=Path, default=default_reader_dir())
    p.add_argument("--out", type=Path, default=None, help="write the JSON result here")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    reader = AvatarReader.load(a.reader)
    if a.video is not None:
        if a.input_json is None:
            p.error("--video needs --input_json (the edit ranges it was made with)")
        entry = json.loads(a.input_json.read_text())[a.entry]
        result = check_video(a.video, entry.get("edit_prompt") or {}, reader, a.plot)
    else:
        if a.model is None or a.tae is None or a.data is None:
            p.error("give --model, --tae and --data (or --video and --input_json)")
        result = evaluate(a.model, a.tae, a.data, reader, a.clips, eval_schedule(a.steps, a.edit_cfg))
    print(json.dumps(result, indent=1))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=1))
