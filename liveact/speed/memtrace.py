"""Peak bytes of the tensors a piece of code creates, on any device, the meta device included.

``LiveBytes`` is a ``TorchDispatchMode``: every storage an operator creates is counted once when it
appears and uncounted when its last tensor dies (a finaliser on the storage, which PyTorch keeps alive
exactly as long as any view of it). Run on the **meta** device it is a dry run: the 14B model's
activations are measured from the real code path (its temporaries, views and in-place writes) without
allocating anything. Kernel-internal workspaces (cuBLAS, cuDNN, SDPA scratch) are not tensors the
code sees and are not counted; ``liveact.speed.memplan`` adds a reserve for them.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    """Tracks the live and peak bytes of storages created inside the ``with`` block.

    Attributes:
        live: bytes of counted storages still alive.
        peak: the largest ``live`` seen.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _drop(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        # Outputs that alias an input (views, in-place results) are not new memory.
        inputs = {
            t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)
        }
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key in self._seen or key in inputs:
                continue
            nbytes = storage.nbytes()
            self._seen.add(key)
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._drop, key, nbytes)
        return out


def peak_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes of tensors ``fn`` creates while it runs (its result included while it is alive)."""
    with torch.no_grad(), LiveBytes() as tracker:
        fn()
    return tracker.peak


def fused_attention_stand_in(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """What a fused attention kernel (flash, cuDNN) allocates: its output and an fp32 log-sum-exp.

    ``q`` ``[B, Lq, H, D]``, ``k``/``v`` ``[B, Lk, H, D]`` -> ``[B, Lq, H, D]`` (values meaningless: dry
    runs only).
    On the meta device SDPA decomposes into the math path and would count the full score matrix.
    """
    lse = q.new_empty(q.shape[0], q.shape[2], q.shape[1], dtype=torch.float32)
    out = q.new_empty(q.shape)
    del lse
    return out
