"""The small random transformers the tests build, in one place (other tests: ``tiny_assets.py``).

``small_model()``: the ``tiny`` preset shrunk to 2 layers of width 32 (fast sampler and memory tests).
``tiny_model()``: the ``tiny`` preset itself, weights redrawn from N(0, 0.05) so that activations are
large enough for compiled, graphed and batched paths to differ visibly if they were wrong.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from liveact.config import PRESETS
from liveact.model import LiveActTransformer


def small_model(seed: int = 0) -> LiveActTransformer:
    """2 layers, width 32, 2 heads; default initialisation after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    cfg = replace(
        PRESETS["tiny"],
        dim=32,
        ffn_dim=64,
        num_heads=2,
        num_layers=2,
        clip_dim=16,
        text_dim=32,
        audio_layers=2,
        audio_channels=8,
    )
    return LiveActTransformer(cfg).eval()


def tiny_model(seed: int = 0, num_layers: int | None = None, std: float = 0.05) -> LiveActTransformer:
    """The ``tiny`` preset (``num_layers`` overridden when given), every weight drawn from N(0, std)."""
    torch.manual_seed(seed)
    cfg = PRESETS["tiny"] if num_layers is None else replace(PRESETS["tiny"], num_layers=num_layers)
    model = LiveActTransformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model
