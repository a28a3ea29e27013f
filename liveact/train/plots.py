"""PNG plots of training runs (loss curves, validation curves) from their ``metrics.jsonl`` logs.

    python -m liveact.train plot --run runs/stage1 --run runs/ablation_teacher --out docs/stage1_loss.png

Needs matplotlib (``pip install -e .[train]``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np


def read_metrics(run: Path) -> list[dict]:
    """All records of ``run/metrics.jsonl``."""
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Moving average (same length; shorter windows at the start)."""
    if window <= 1 or len(values) < 2:
        return values
    c = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend (needs matplotlib: ``pip install -e .[train]``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, out: Path) -> None:
    """Lay out ``fig``, write it to ``out`` (a PNG, folders created) and free it."""
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    pyplot().close(fig)


def plot_runs(
    runs: list[Path],
    out: Path,
    keys: tuple[str, ...] = ("loss",),
    val_keys: tuple[str, ...] = (),
    labels: list[str] | None = None,
    title: str = "",
    smooth_window: int = 25,
    log_y: bool = True,
) -> None:
    """Training (smoothed) and validation curves of several runs on one figure."""
    plt = pyplot()
    panels = len(keys) + (1 if val_keys else 0)
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    for i, run in enumerate(runs):
        rows = read_metrics(run)
        label = labels[i] if labels else run.name
        for j, key in enumerate(keys):
            pts = [(r["step"], r[key]) for r in rows if key in r and "step" in r]
            if pts:
                steps, vals = map(np.asarray, zip(*pts))
                axes[0, j].plot(steps, smooth(vals, smooth_window), label=label)
                axes[0, j].set_title(f"train {key} (moving average {smooth_window})")
        for key in val_keys:
            pts = [(r["step"], r[key]) for r in rows if key in r]
            if pts:
                steps, vals = map(np.asarray, zip(*pts))
                axes[0, -1].plot(steps, vals, marker="o", label=f"{label} {key}")
                axes[0, -1].set_title("held-out validation")
    for ax in axes[0]:
        ax.set_xlabel("step")
        if log_y:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    save_figure(fig, out)


def main(argv: list[str] | None = None) -> None:
    """``python -m liveact.train plot``."""
    p = argparse.ArgumentParser(
        prog="python -m liveact.train plot",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", type=Path, action="append", required=True, help="run folder (repeat for several)")
    p.add_argument("--label", action="append", default=None)
    p.add_argument("--key", action="append", default=None, help="training metric(s) (default: loss)")
    p.add_argument("--val", action="append", default=[], help="validation metric(s), e.g. val_neighbor")
    p.add_argument("--title", default="")
    p.add_argument("--smooth", type=int, default=25)
    p.add_argument("--linear", action="store_true", help="linear y axis")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    plot_runs(a.run, a.out, tuple(a.key or ["loss"]), tuple(a.val), a.label, a.title, a.smooth, not a.linear)
