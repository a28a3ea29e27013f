"""Training plumbing shared by the autoencoder and transformer trainers.

Resumable checkpoints (safetensors for tensors, JSON for the rest), a JSONL metrics log, an EMA of
the weights, learning-rate schedules and a wall-clock budget: every run can be stopped at any time
and resumed with the same command.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

logger = logging.getLogger(__name__)


def set_threads(threads: int | None) -> None:
    """Pin torch's intra-op threads (one thread per process is steadiest on a shared 2-core machine)."""
    if threads:
        torch.set_num_threads(threads)


def cosine_lr(step: int, base: float, warmup: int, total: int, floor: float = 0.1) -> float:
    """Linear warm-up then cosine decay to ``floor * base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


class EMA:
    """Exponential moving average of a module's floating-point parameters."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {
            k: v.detach().float().clone() for k, v in model.state_dict().items() if v.is_floating_point()
        }

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Blend the current weights in (a shorter horizon early on, as in Karras et al.)."""
        decay = min(self.decay, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v.detach().float(), 1 - decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights."""
        return self.shadow

    def load(self, state: dict[str, torch.Tensor]) -> None:
        """Restore averaged weights saved by ``state_dict``."""
        for k in self.shadow:
            if k in state:
                self.shadow[k].copy_(state[k])


@dataclass
class Checkpoint:
    """Everything a run needs to continue exactly where it stopped."""

    folder: Path

    @property
    def weights(self) -> Path:
        return self.folder / "train_state.safetensors"

    @property
    def meta(self) -> Path:
        return self.folder / "train_state.json"

    def exists(self) -> bool:
        """Whether a resumable state is there."""
        return self.weights.is_file() and self.meta.is_file()

    def save(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Write atomically (a crash mid-write never corrupts the previous checkpoint)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp_w, tmp_m = self.weights.with_suffix(".safetensors.tmp"), self.meta.with_suffix(".json.tmp")
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp_w))
        tmp_m.write_text(json.dumps(meta, indent=1))
        os.replace(tmp_w, self.weights)
        os.replace(tmp_m, self.meta)

    def load(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors and metadata of the last save."""
        return load_file(str(self.weights)), json.loads(self.meta.read_text())


def optimizer_state(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter tensors as a flat dict (step counts included)."""
    out = {}
    for idx, st in opt.state_dict()["state"].items():
        for key, value in st.items():
            out[f"opt.{idx}.{key}"] = value if isinstance(value, torch.Tensor) else torch.tensor(float(value))
    return out


def load_optimizer_state(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """Inverse of ``optimizer_state`` (hyper-parameters come from the optimizer as built)."""
    sd = opt.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if not name.startswith("opt."):
            continue
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    sd["state"] = state
    opt.load_state_dict(sd)


class MetricsLog:
    """Append-only JSONL of training metrics (one object per line), readable while training runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **values: Any) -> None:
        """Append one record (with a wall-clock time stamp)."""
        with self.path.open("a") as f:
            f.write(json.dumps({"time": time.time(), **values}) + "\n")

    def read(self) -> list[dict[str, Any]]:
        """All records so far."""
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


class Budget:
    """Wall-clock budget of one invocation (a run stops cleanly and is resumed by the next one)."""

    def __init__(self, minutes: float | None) -> None:
        self.deadline = None if not minutes else time.monotonic() + 60 * minutes

    def exhausted(self) -> bool:
        """Whether the time is up."""
        return self.deadline is not None and time.monotonic() > self.deadline
