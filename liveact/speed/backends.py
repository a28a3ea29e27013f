"""Process-wide PyTorch settings for a run, set once by the entry point.

* fp32 on CUDA: TF32 off for matmuls and cuDNN convolutions, so CUDA fp32 results match the CPU's
  (and the parity fixtures) instead of carrying 10-bit-mantissa products. PyTorch leaves
  ``torch.backends.cudnn.allow_tf32`` on by default, which covers the patch embedding and the VAE.
* CUDA: ``cudnn.benchmark`` on: the VAE's 3-D convolutions run at one shape per resolution, so the
  one-off search for the fastest algorithm pays for itself after a block.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def configure_torch(device: torch.device | str, dtype: torch.dtype) -> dict[str, bool]:
    """Set the backend flags for a run on ``device`` in ``dtype``; returns what was set."""
    device = torch.device(device)
    if device.type != "cuda":
        return {}
    settings = {"cudnn.benchmark": True}
    torch.backends.cudnn.benchmark = True
    if dtype == torch.float32:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        settings.update({"cuda.matmul.allow_tf32": False, "cudnn.allow_tf32": False})
    logger.info("PyTorch backend settings: %s", ", ".join(f"{k}={v}" for k, v in settings.items()))
    return settings
