"""One attention entry point with optional fast kernels.

``attention(q, k, v)`` takes ``[B, L, H, D]`` tensors (the layout the transformer produces) and runs
PyTorch SDPA unless another backend is chosen by argument or by ``LIVEACT_ATTENTION`` (``sdpa``,
``sage``, ``flash``). Optional kernels are imported lazily, probed once, and a missing one is said
once in the log and falls back to SDPA: never a silent change of results without a log line.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
BACKENDS = ("sdpa", "sage", "flash")


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SDPA on ``[B, L, H, D]``: the always-available reference path."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def _load_sage() -> AttentionFn | None:
    try:
        from sageattention import sageattn  # optional CUDA kernel
    except Exception as exc:  # noqa: BLE001 - any import failure means "not available"
        logger.warning("sageattention unavailable (%s); using SDPA", exc)
        return None

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return sageattn(q, k, v, tensor_layout="NHD", is_causal=False)

    return run


def _load_flash() -> AttentionFn | None:
    try:
        from flash_attn import flash_attn_func  # optional CUDA kernel
    except Exception as exc:  # noqa: BLE001
        logger.warning("flash-attn unavailable (%s); using SDPA", exc)
        return None

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return flash_attn_func(q, k, v)

    return run


@functools.cache
def _resolve(name: str) -> AttentionFn:
    """The kernel for ``name``, probed once per process."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {BACKENDS}")
    if name == "sdpa":
        return _sdpa
    fn = {"sage": _load_sage, "flash": _load_flash}[name]()
    return fn if fn is not None else _sdpa


def default_backend() -> str:
    """The backend named by ``LIVEACT_ATTENTION``, else ``sdpa``."""
    return os.environ.get("LIVEACT_ATTENTION", "sdpa").lower()


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """Bidirectional multi-head attention without a mask.

    Args:
        q: ``[B, Lq, H, D]`` queries.
        k: ``[B, Lk, H, D]`` keys.
        v: ``[B, Lk, H, D]`` values.
        backend: ``sdpa`` | ``sage`` | ``flash``; ``None`` reads ``LIVEACT_ATTENTION``.

    Returns:
        ``[B, Lq, H, D]``, scaled by ``1/sqrt(D)``. Fast kernels only run on CUDA in fp16/bf16;
        anything else takes SDPA.
    """
    name = backend or default_backend()
    if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
        # The fast kernels take half precision on CUDA only; SDPA covers everything else.
        return _sdpa(q, k, v)
    return _resolve(name)(q, k, v)
