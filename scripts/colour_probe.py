"""How much of each colour an autoencoder keeps, per 8×8 cell's mean red, green and blue (R²):
a linear probe from the cell's 16 latent channels (fitted on half of a frame pool, scored on the other
half: unseen people), and the round trip (the same cell of the decoded frame, on all of the pool).

    python scripts/colour_probe.py runs/tae_frozen.safetensors runs/tae_v2/tae.safetensors \
        --pool runs/tae_v2/pool_val_16_128_10000000.npy

The pool is an autoencoder run's held-out frame cache (``[clips, frames, H, W, 3]`` uint8). Each probed
frame is encoded as a still clip (1 + 4 copies), so its second latent frame sees only that frame.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from liveact.components.tae import TinyAutoencoder
from liveact.train.autoencoder import to_video


def cell_colours(frames: torch.Tensor) -> np.ndarray:
    """``[N, H, W, 3]`` in [0, 1] -> ``[N * H/8 * W/8, 3]`` mean colour of every 8×8 cell."""
    n, h, w, _ = frames.shape
    return frames.reshape(n, h // 8, 8, w // 8, 8, 3).mean(dim=(2, 4)).reshape(-1, 3).numpy()


def cell_features(tae: TinyAutoencoder, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Latent cells, their mean colours, and the same cells' colours after a round trip.

    Args:
        frames: ``[N, H, W, 3]`` uint8.

    Returns:
        ``[N * H/8 * W/8, C]`` latents, ``[N * H/8 * W/8, 3]`` mean colours in [0, 1] of the frames and
        of their decoded copies.
    """
    still = to_video(np.repeat(frames[:, None], 1 + tae.temporal_stride, axis=1))  # [N, 3, 1 + 4, H, W]
    with torch.no_grad():
        latents = tae.encode_frames(still).float()  # [N, C, 2, H/8, W/8]
        decoded = tae.decode_frames(latents)[:, :, -1]  # [N, 3, H, W] in [-1, 1]
    c = latents.shape[1]
    cells = latents[:, :, 1].permute(0, 2, 3, 1).reshape(-1, c).numpy()
    truth = cell_colours(torch.from_numpy(frames).float() / 255)
    return cells, truth, cell_colours(decoded.permute(0, 2, 3, 1) * 0.5 + 0.5)


def r2(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Coefficient of determination per column."""
    return 1 - ((truth - pred) ** 2).sum(0) / ((truth - truth.mean(0)) ** 2).sum(0)


def probe_r2(x_fit: np.ndarray, y_fit: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> np.ndarray:
    """Least-squares linear probe (with bias) fitted on one set, R² per target column on the other."""
    design = np.hstack([x_fit, np.ones((len(x_fit), 1))])
    coef, *_ = np.linalg.lstsq(design, y_fit, rcond=None)
    return r2(y_test, np.hstack([x_test, np.ones((len(x_test), 1))]) @ coef)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tae", nargs="+", type=Path, help="autoencoder files (tae.safetensors)")
    p.add_argument(
        "--pool", type=Path, required=True, help="held-out frame pool .npy [clips, frames, H, W, 3]"
    )
    p.add_argument("--frames_per_clip", type=int, default=4)
    a = p.parse_args()
    pool = np.load(a.pool, mmap_mode="r")
    picks = np.linspace(0, pool.shape[1] - 1, a.frames_per_clip).round().astype(int)
    half = pool.shape[0] // 2  # fit on the first clips, score on the others: unseen people
    fit, test = (
        np.asarray(pool[s][:, picks]).reshape(-1, *pool.shape[2:])
        for s in (slice(0, half), slice(half, None))
    )
    print("| autoencoder | probe R² red / green / blue | round trip R² red / green / blue |\n|---|---|---|")
    for path in a.tae:
        tae = TinyAutoencoder.from_file(path, dtype=torch.float32)
        (x_fit, y_fit, d_fit), (x_test, y_test, d_test) = cell_features(tae, fit), cell_features(tae, test)
        probe = probe_r2(x_fit, y_fit, x_test, y_test)
        trip = r2(np.vstack([y_fit, y_test]), np.vstack([d_fit, d_test]))
        print(
            f"| `{path}` | {' / '.join(f'{v:.2f}' for v in probe)} | {' / '.join(f'{v:.2f}' for v in trip)} |"
        )


if __name__ == "__main__":
    main()
