"""What lip-sync can the data itself reach, and what does a latent frame's time stride leave of it?

The lip-sync metric correlates a mouth opening with the audio envelope frame by frame. Even a perfect
model is bounded by the renderer's own opening (visemes and loudness do not follow the envelope
exactly), and a video autoencoder that folds ``stride`` frames into one latent frame bounds it further
if its latents keep only each group's mean opening. Both bounds are computed here from the held-out
shards' ground truth, with no model and no reader:

    python -m liveact.eval ceiling --data runs/data_val --clips 16

``--plot`` draws one clip's envelope, opening and group mean; with ``--tae`` also what the reader
reads from the clip's ground-truth latents decoded by that autoencoder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from liveact.eval.metrics import lag_correlation, speech_envelope


def group_mean(opening: np.ndarray, stride: int) -> np.ndarray:
    """``[F]`` -> ``[F]``: frame 0 alone, then every ``stride`` frames replaced by their mean (the
    causal video latent layout: 1 + stride * n frames)."""
    out = opening.astype(np.float64).copy()
    for start in range(1, len(out), stride):
        out[start : start + stride] = out[start : start + stride].mean()
    return out


def opening_ceilings(opening: np.ndarray, wave: np.ndarray, fps: float, stride: int = 4) -> dict[str, float]:
    """Lip-sync (best-lag correlation with the speech envelope) of the ground-truth opening ``[F]`` and
    of its latent-group mean, for audio ``wave`` ``[N]`` at 16 kHz."""
    env = speech_envelope(wave, len(opening), fps)
    return {
        "renderer": lag_correlation(opening, env)[0],
        "latent_group_mean": lag_correlation(group_mean(opening, stride), env)[0],
    }


def plot_clip(
    envelope: np.ndarray,
    opening: np.ndarray,
    stride: int,
    fps: float,
    out: Path,
    decoded: np.ndarray | None = None,
) -> None:
    """PNG of one clip (all ``[F]``): the speech envelope, the renderer's opening, its latent-group mean,
    and optionally the opening read from decoded frames."""
    from liveact.train.plots import pyplot, save_figure

    plt = pyplot()
    t = np.arange(len(opening)) / fps
    fig, ax = plt.subplots(figsize=(9, 3))
    ax.fill_between(t, 0, envelope / max(1e-6, float(envelope.max())), color="0.85", label="speech envelope")
    ax.plot(t, opening, lw=1.2, label="renderer's opening")
    ax.step(
        t, group_mean(opening, stride), where="mid", lw=1.2, label=f"mean of each {stride}-frame latent group"
    )
    if decoded is not None:
        ax.plot(t, decoded, lw=1.2, label="read from decoded ground-truth latents")
    ax.set_xlabel("seconds")
    ax.set_ylabel("mouth opening")
    ax.legend(fontsize=7, ncol=2, loc="upper right")
    save_figure(fig, out)


def main(argv: list[str] | None = None) -> None:
    """``python -m liveact.eval ceiling``."""
    from liveact.train.data import ClipSet

    p = argparse.ArgumentParser(
        prog="python -m liveact.eval ceiling",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", type=Path, required=True, help="held-out shards")
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--stride", type=int, default=4, help="video frames per latent frame")
    p.add_argument("--plot", type=Path, default=None, help="PNG of the first clip")
    p.add_argument("--tae", type=Path, default=None, help="with --plot: also read the clip's decoded latents")
    a = p.parse_args(argv)
    clips = ClipSet.load(a.data, a.clips)
    rows = [
        opening_ceilings(clips.mouth[i].numpy(), clips.wave[i].float().numpy(), a.fps, a.stride)
        for i in range(len(clips))
    ]
    print(
        json.dumps(
            {"clips": len(rows), **{k: float(np.mean([r[k] for r in rows])) for k in rows[0]}}, indent=1
        )
    )
    if a.plot is not None:
        decoded = None
        if a.tae is not None:
            from liveact.components.tae import TinyAutoencoder
            from liveact.eval.reader import AvatarReader, default_reader_dir
            from liveact.eval.runner import decode_truth

            frames = decode_truth(TinyAutoencoder.from_file(a.tae), clips, 0)
            decoded = AvatarReader.load(default_reader_dir()).read(frames)["mouth"]
        opening = clips.mouth[0].numpy()
        plot_clip(
            speech_envelope(clips.wave[0].float().numpy(), len(opening), a.fps),
            opening,
            a.stride,
            a.fps,
            a.plot,
            decoded,
        )
