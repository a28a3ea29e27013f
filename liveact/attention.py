"""One attention entry point; the fast kernel is chosen once, at model build, by a probe.

``attention(q, k, v, backend=name)`` takes ``[B, L, H, D]`` tensors (the layout the transformer
produces). Backends:

* ``sdpa``: PyTorch SDPA with PyTorch's own kernel choice (always there; the reference path);
* ``cudnn``: SDPA preferring cuDNN attention (1.7-2.3x FlashAttention-2 on Hopper), then flash,
  efficient, math for inputs cuDNN cannot take;
* ``flash``: the ``flash-attn`` package;
* ``sage``: SageAttention (INT8 Q/K, FP8 P/V on sm89/sm90): the "FP8 attention" option.

``select_backend`` runs each candidate once on small tensors of the model's device and dtype and
compares it with SDPA in fp32. A backend that is missing, raises or disagrees is logged as a
warning naming the reason and the next candidate is tried; the choice is logged once. Nothing is
chosen per call and nothing reads the environment per call: the model stores the name
(``LiveActTransformer.set_attention_backend``). ``LIVEACT_ATTENTION`` is read once by
``select_backend`` as the preference when none is passed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

logger = logging.getLogger(__name__)

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

CUDNN_FIRST = [
    SDPBackend.CUDNN_ATTENTION,
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
]


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SDPA on ``[B, L, H, D]``: the always-available reference path."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def _sdpa_cudnn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SDPA preferring cuDNN attention (a priority order, so other kernels still take what cuDNN cannot)."""
    with sdpa_kernel(CUDNN_FIRST, set_priority=True):
        return _sdpa(q, k, v)


def _load_flash() -> AttentionFn:
    from flash_attn import flash_attn_func  # optional CUDA kernel

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return flash_attn_func(q, k, v)

    return run


def _load_sage() -> AttentionFn:
    from sageattention import sageattn  # optional CUDA kernel

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return sageattn(q, k, v, tensor_layout="NHD", is_causal=False)

    return run


@dataclass
class Backend:
    """One attention implementation.

    Attributes:
        load: returns the kernel (may raise: missing package, unsupported GPU ...).
        needs_cuda_half: only runs on CUDA in fp16/bf16 (other inputs take SDPA).
        tolerance: largest relative L2 error against fp32 SDPA its probe accepts (quantised kernels
            are allowed more).
        min_capability: smallest CUDA compute capability it is tried on automatically.
    """

    load: Callable[[], AttentionFn]
    needs_cuda_half: bool = True
    tolerance: float = 2e-2
    min_capability: tuple[int, int] = (8, 0)
    fn: AttentionFn | None = None


BACKENDS: dict[str, Backend] = {
    "sdpa": Backend(lambda: _sdpa, needs_cuda_half=False, fn=_sdpa),
    "cudnn": Backend(lambda: _sdpa_cudnn, min_capability=(9, 0)),
    "flash": Backend(_load_flash),
    "sage": Backend(_load_sage, tolerance=8e-2, min_capability=(8, 9)),
}
# What "auto" tries, best first: cuDNN where it is the fastest (Hopper and later), else SDPA's choice.
AUTO_ORDER = ("cudnn", "sdpa")


def default_preference() -> str:
    """The backend named by ``LIVEACT_ATTENTION`` (read once per model build), else ``auto``."""
    return os.environ.get("LIVEACT_ATTENTION", "auto").strip().lower() or "auto"


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def probe(name: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> str | None:
    """Run backend ``name`` once on small random tensors; None if it works, else why not.

    The probe uses the shapes LiveAct attends with (head dim of 128, key lengths that are not a
    multiple of the kernels' tiles) and compares with fp32 SDPA within the backend's tolerance.
    """
    backend = BACKENDS[name]
    if backend.needs_cuda_half and (device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16)):
        return f"needs a CUDA device and fp16/bf16 (have {device.type}, {dtype})"
    try:
        fn = backend.load()
        g = torch.Generator(device="cpu").manual_seed(seed)
        q, k, v = (torch.randn(1, n, 2, 128, generator=g).to(device, dtype) for n in (64, 257, 257))
        out = fn(q, k, v)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    expected = _sdpa(q.float(), k.float(), v.float())
    if tuple(out.shape) != tuple(expected.shape) or out.dtype != dtype:
        return f"returned {tuple(out.shape)} {out.dtype}, expected {tuple(expected.shape)} {dtype}"
    if not torch.isfinite(out).all():
        return "returned non-finite values"
    err = _rel_l2(out, expected)
    if err > backend.tolerance:
        return f"relative error {err:.2e} against SDPA exceeds {backend.tolerance:.0e}"
    backend.fn = fn
    return None


def select_backend(preferred: str | None, device: torch.device | str, dtype: torch.dtype) -> str:
    """Choose the attention backend for a model on ``device`` in ``dtype``, probing once.

    Args:
        preferred: a name of ``BACKENDS``, or ``auto`` (cuDNN on sm90+, else SDPA); None reads
            ``LIVEACT_ATTENTION`` (default ``auto``).

    Returns:
        The name to pass to ``attention``. A preferred backend that fails its probe falls back to
        SDPA with a warning that says why; so does every ``auto`` candidate.
    """
    device = torch.device(device)
    name = (preferred or default_preference()).lower()
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose auto or one of {sorted(BACKENDS)}")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    candidates = list(dict.fromkeys(list(AUTO_ORDER) if name == "auto" else [name, "sdpa"]))
    if name == "auto":
        # Not failures: "auto" only tries the kernels meant for this device.
        candidates = [
            c
            for c in candidates
            if not BACKENDS[c].needs_cuda_half
            or (capability is not None and capability >= BACKENDS[c].min_capability)
        ]
    for i, cand in enumerate(candidates):
        reason = probe(cand, device, dtype) if cand != "sdpa" else None
        if reason is None:
            how = "chosen" if cand == name else f"preference {name}"
            logger.info("attention backend: %s (%s; %s on %s)", cand, how, dtype, device)
            return cand
        fallback = candidates[i + 1] if i + 1 < len(candidates) else "sdpa"
        logger.warning(
            "attention backend %r failed its probe on %s %s: %s; falling back to %r",
            cand,
            device,
            dtype,
            reason,
            fallback,
        )
    return "sdpa"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, backend: str = "sdpa") -> torch.Tensor:
    """Bidirectional multi-head attention without a mask.

    Args:
        q: ``[B, Lq, H, D]`` queries.
        k: ``[B, Lk, H, D]`` keys.
        v: ``[B, Lk, H, D]`` values.
        backend: a name returned by ``select_backend`` (probed); ``sdpa`` by default.

    Returns:
        ``[B, Lq, H, D]``, scaled by ``1/sqrt(D)``. Inputs a fast kernel cannot take (CPU, fp32)
        go to SDPA.
    """
    chosen = BACKENDS[backend]
    if chosen.fn is None or (
        chosen.needs_cuda_half and (not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16))
    ):
        return _sdpa(q, k, v)
    return chosen.fn(q, k, v)
