"""fp32 islands as pure functions, optionally compiled on their own.

The reference computes norms, the adaptive modulation, RoPE and the FP8 activation quantisation in
fp32 between bf16 matmuls. Eagerly each of those expressions is 4-10 kernels with a full fp32
round trip through memory per kernel (~0.65 s per 14B block at 512x512). Each is written here as
one pure function; decorated with ``@island`` it runs

* eagerly (default; bit-identical to writing the expression inline),
* inlined into the surrounding graph when the whole model is compiled (``model.compile()``),
* compiled on its own (one fused kernel per call site) after ``enable_compiled_islands()``: the
  choice for models that cannot be compiled whole (block offload hooks, optional attention kernels,
  sequence-parallel collectives).

Compiled islands accept any shape (``dynamic=None``: automatic dynamic shapes after the second
size), so the three block phases and all layers share a handful of kernels.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

logger = logging.getLogger(__name__)

Fn = TypeVar("Fn", bound=Callable[..., object])


class _IslandState:
    """Process-wide switch (compilation is a process-level choice, like ``torch.backends`` flags)."""

    enabled = False
    backend = "inductor"
    compiled: ClassVar[dict[Callable, Callable]] = {}


def enable_compiled_islands(backend: str = "inductor") -> None:
    """Compile every ``@island`` function on first use (with ``backend``) instead of running it eagerly."""
    _IslandState.enabled, _IslandState.backend = True, backend
    _IslandState.compiled = {}
    logger.info("fp32 islands compiled with torch.compile(backend=%r)", backend)


def disable_compiled_islands() -> None:
    """Run ``@island`` functions eagerly again."""
    _IslandState.enabled = False
    _IslandState.compiled = {}


def compiled_islands_enabled() -> bool:
    """Whether ``@island`` functions run compiled."""
    return _IslandState.enabled


def island(fn: Fn) -> Fn:
    """Mark a pure tensor function as an fp32 island (see the module docstring)."""

    @functools.wraps(fn)
    def run(*args: object) -> object:
        # Dry runs and FLOP counts (dispatch modes, meta tensors) take the plain function.
        if (
            _IslandState.enabled
            and not torch.compiler.is_compiling()
            and not is_in_torch_dispatch_mode()
            and not (isinstance(args[0], torch.Tensor) and args[0].is_meta)
        ):
            compiled = _IslandState.compiled.get(fn)
            if compiled is None:
                compiled = torch.compile(fn, backend=_IslandState.backend, fullgraph=True)
                _IslandState.compiled[fn] = compiled
            return compiled(*args)
        return fn(*args)

    return run  # type: ignore[return-value]


@island
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS norm over the last dim in fp32, cast back to ``x.dtype`` before the weight: ``[..., C]``."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight


@island
def layer_norm(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """LayerNorm over the last dim in fp32 (affine parameters too), output in ``x.dtype``: ``[..., C]``."""
    w = weight.float() if weight is not None else None
    b = bias.float() if bias is not None else None
    return F.layer_norm(x.float(), x.shape[-1:], w, b, eps).type_as(x)


@island
def modulate(normed: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``normed * (1 + scale) + shift`` in fp32, cast back to ``normed.dtype``.

    Args:
        normed: ``[B, L, C]``; shift, scale: ``[B, 1, C]``.
    """
    return (normed.float() * (1 + scale) + shift).type_as(normed)


@island
def norm_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """Affine-free fp32 LayerNorm then ``modulate``, with the reference's cast in between: ``[B, L, C]``."""
    normed = F.layer_norm(x.float(), x.shape[-1:], None, None, eps).type_as(x)
    return (normed.float() * (1 + scale) + shift).type_as(x)


@island
def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``x + y * gate`` (the reference's order and dtype promotion): ``[B, L, C]``, gate ``[B, 1, C]``."""
    return x + y * gate
