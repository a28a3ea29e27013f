"""A contact sheet of a generated video: every ``--every``-th frame of a time span, in a grid (PNG).

python scripts/frames_sheet.py avatar_2_speech_2.mp4 --start 2.0 --seconds 1.3 --out docs/nano_frames.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from liveact.video import probe_video, read_frames


def contact_sheet(frames: np.ndarray, cols: int) -> np.ndarray:
    """``[N, H, W, 3]`` uint8 -> one ``[rows * H, cols * W, 3]`` image (a short last row is padded black)."""
    rows = -(-len(frames) // cols)
    pad = np.zeros((rows * cols - len(frames), *frames.shape[1:]), np.uint8)
    grid = np.concatenate([frames, pad]).reshape(rows, cols, *frames.shape[1:])
    return grid.transpose(0, 2, 1, 3, 4).reshape(rows * frames.shape[1], cols * frames.shape[2], 3)


def main() -> None:
    """Write the sheet."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("video", type=Path)
    p.add_argument("--start", type=float, default=0.0, help="seconds")
    p.add_argument("--seconds", type=float, default=1.3)
    p.add_argument("--every", type=int, default=2)
    p.add_argument("--cols", type=int, default=8)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    fps = float(probe_video(a.video)["fps"])
    first, count = round(a.start * fps), round(a.seconds * fps)
    frames = read_frames(a.video, max_frames=first + count)[first :: a.every]
    if not len(frames):
        p.error(f"{a.video} has no frames after {a.start} s")
    Image.fromarray(contact_sheet(frames, a.cols)).save(a.out)


if __name__ == "__main__":
    main()
