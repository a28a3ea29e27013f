"""Page-locked host memory of exactly the size asked for.

``torch.empty(..., pin_memory=True)`` goes through PyTorch's caching host allocator, which rounds
every request up to a power of two: pinning a 0.9 GB block costs 1 GB, and pinning the 14B model
tensor by tensor costs ~1.4x its bytes. ``pinned_buffer`` instead allocates ordinary host memory
and registers it with the CUDA driver (``cudaHostRegister``, as ``torch.distributed.checkpoint``
does for its staging buffers), so the pinned size is the tensor size. Callers allocate one flat
buffer and carve their tensors out of it as views (``carve``).

Without CUDA, or if registration fails, the buffer is plain pageable memory (or falls back to
``pin_memory=True``); the contents and views are the same either way.
"""

from __future__ import annotations

import logging
import math
import weakref

import torch

logger = logging.getLogger(__name__)

ALIGN = 256  # bytes: every carved tensor starts on a 256-byte boundary (DMA- and vector-friendly)


def _register(t: torch.Tensor) -> bool:
    """``cudaHostRegister`` the storage of ``t``; unregistered when ``t`` is garbage-collected."""
    try:
        cudart = torch.cuda.cudart()
        ptr, size = t.data_ptr(), t.untyped_storage().nbytes()
        if int(cudart.cudaHostRegister(ptr, size, 0)) != 0:
            return False
    except Exception as exc:
        logger.debug("cudaHostRegister unavailable: %s", exc)
        return False
    weakref.finalize(t, cudart.cudaHostUnregister, ptr)
    return True


def pinned_buffer(nbytes: int, pin: bool) -> torch.Tensor:
    """A flat ``uint8`` host buffer of ``nbytes``, page-locked when ``pin`` (and CUDA is usable).

    The pinned size is ``nbytes`` (registered memory), or the caching allocator's rounded size when
    registration is not possible. Keep the returned tensor alive as long as views of it are used
    for asynchronous copies: it is unregistered when it is collected.
    """
    buf = torch.empty(max(nbytes, 1), dtype=torch.uint8)
    if not pin or not torch.cuda.is_available():
        return buf
    if _register(buf):
        return buf
    logger.warning(
        "cudaHostRegister failed; pinning %.2f GiB through the caching allocator (rounded up to a "
        "power of two)",
        nbytes / 2**30,
    )
    return torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=True)


def aligned_size(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    """Bytes a tensor of ``shape`` and ``dtype`` takes in a carved buffer (rounded up to ``ALIGN``)."""
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    return -(-nbytes // ALIGN) * ALIGN


def carve(buffer: torch.Tensor, offset: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A view of ``buffer`` (flat ``uint8``) from byte ``offset`` as a contiguous ``shape`` tensor of
    ``dtype``."""
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if offset % ALIGN or offset + nbytes > buffer.numel():
        raise ValueError(f"cannot carve {nbytes} bytes at offset {offset} of a {buffer.numel()}-byte buffer")
    return buffer[offset : offset + nbytes].view(dtype).view(shape)


def host_tensor(shape: tuple[int, ...], dtype: torch.dtype, pin: bool) -> torch.Tensor:
    """A zeroed host tensor, page-locked at its exact size when ``pin`` (see ``pinned_buffer``).

    The tensor keeps its flat buffer alive (views taken from it do not: keep the tensor itself).
    """
    buffer = pinned_buffer(aligned_size(shape, dtype), pin)
    out = carve(buffer, 0, shape, dtype).zero_()
    out._pinned_buffer = buffer  # the registration lasts as long as this tensor
    return out
