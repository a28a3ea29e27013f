"""ConvKV memory: the fixed-size, per-layer key/value cache of one denoising step.

One ``KVMemory`` serves one denoising step (Neighbor Forcing: block ``k`` at step ``i`` attends to
the keys/values its neighbours produced at step ``i``). It holds every layer's un-roped K/V in a
named slot layout (``MemoryLayout``); keys are roped by slot position when read ("RoPE reset").

Timeline of one memory, block ``k`` (``MemoryConfig`` numbers: 2 sink, 2 long-term, 2 short-term,
first block 6, later blocks 8, ratio 5):

* ``k = 0``: the block fills slots [0, 6) and attends to them;
* ``k = 1``: the block goes to the current slots [6, 14) and attends to all 14;
* ``k >= 2``: first the span [2, 12) is compressed 5:1 into the long-term slots [2, 4) and the
  previous block's last frames [12, 14) move to the short-term slots [4, 6); then as ``k = 1``.

The storage is allocated once; nothing grows with the number of blocks. Optional FP8 storage
(e4m3, one fp32 scale per token and head) quantises only what changed, and optional CPU placement
keeps the storage in host memory with one device work buffer shared by all layers.

For training (``differentiable=True``) the same layout and compression run out of place
(``slice_scatter``), so gradients flow from a block's loss into the keys/values earlier blocks wrote
and into the ConvKV taps: the training rollouts use exactly the inference memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from liveact.config import MemoryConfig

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0


@dataclass(frozen=True)
class MemoryLayout:
    """Token slices of the cache for one resolution: ``frame_len`` tokens per latent frame."""

    config: MemoryConfig
    frame_len: int

    def frames(self, start: int, count: int) -> slice:
        """Token slice of ``count`` latent-frame slots from slot ``start``."""
        return slice(start * self.frame_len, (start + count) * self.frame_len)

    @property
    def num_tokens(self) -> int:
        """Tokens in the whole cache."""
        return self.config.total_frames * self.frame_len

    @property
    def sink(self) -> slice:
        """Reference frames of the first block; never overwritten."""
        return self.frames(0, self.config.sink_frames)

    @property
    def long_term(self) -> slice:
        """Compressed history."""
        return self.frames(self.config.long_term_start, self.config.long_term_frames)

    @property
    def short_term(self) -> slice:
        """The previous block's last raw frames."""
        return self.frames(self.config.short_term_start, self.config.short_term_frames)

    @property
    def current(self) -> slice:
        """The block being denoised (every block after the first)."""
        return self.frames(self.config.current_start, self.config.block_frames)

    @property
    def compress_source(self) -> slice:
        """The span compressed ``ratio``:1 into the long-term slots."""
        cfg = self.config
        return self.frames(cfg.long_term_start, cfg.long_term_frames * cfg.ratio)

    @property
    def short_term_source(self) -> slice:
        """The previous block's last frames, copied to the short-term slots."""
        cfg = self.config
        return self.frames(cfg.total_frames - cfg.short_term_frames, cfg.short_term_frames)

    def write_start(self, block_index: int) -> int:
        """First slot the block ``block_index`` writes to (and its query's temporal position)."""
        return 0 if block_index == 0 else self.config.current_start

    def visible_frames(self, block_index: int) -> int:
        """Slots the block attends to."""
        return self.config.first_block_frames if block_index == 0 else self.config.total_frames


def compress(
    x: torch.Tensor, weight: torch.Tensor | None, config: MemoryConfig, frame_len: int
) -> torch.Tensor:
    """Pool ``ratio`` tokens into one.

    Args:
        x: ``[B, N * ratio * frame_len, H, D]`` un-roped keys or values of the source span.
        weight: depthwise conv taps ``[H * D, 1, ratio]`` (``None`` for the mean variant).
        config: selects ``compression`` (conv | mean) and ``grouping``: ``raster`` pools consecutive
            tokens of the flattened span (what the official weights were trained with), while
            ``per_location`` pools the same spatial token across ``ratio`` frames.

    Returns:
        ``[B, N * frame_len, H, D]``.
    """
    b, n, h, d = x.shape
    r = config.ratio
    if config.grouping == "raster" and config.compression == "conv":
        # The conv view keeps the reference's exact summation order.
        flat = x.reshape(b, n, h * d).transpose(1, 2)
        out = F.conv1d(flat, weight.to(x.dtype), stride=r, groups=h * d)
        return out.transpose(1, 2).reshape(b, n // r, h, d)
    if config.grouping == "raster":
        groups = x.reshape(b, n // r, r, h, d)
    else:
        groups = x.reshape(b, n // (r * frame_len), r, frame_len, h, d).transpose(2, 3)
        groups = groups.reshape(b, n // r, r, h, d)
    if config.compression == "mean":
        return groups.mean(dim=2)
    taps = weight.to(x.dtype).reshape(h, d, r).permute(2, 0, 1)  # [r, H, D]
    return (groups * taps).sum(dim=2)


def quantize_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (token, head) FP8 quantisation over the head dim.

    Args:
        x: ``[..., D]``.

    Returns:
        ``(q, scale)``: ``q`` float8_e4m3fn ``[..., D]`` and fp32 ``scale`` ``[..., 1]`` with
        ``x ~= q * scale``. The division runs in fp32 so no value can round past the FP8 range.
    """
    xf = x.float()
    scale = (xf.abs().amax(dim=-1, keepdim=True) / FP8_MAX).clamp_min(1e-12)
    return (xf / scale).to(FP8_DTYPE), scale


class KVMemory(nn.Module):
    """Keys/values of every layer for one denoising step, in a fixed slot layout.

    Args:
        config: slot layout, compression and storage options.
        num_layers, num_heads, head_dim: the attention geometry (``num_heads`` is the local head
            count under sequence parallelism: each rank keeps only its heads' memory).
        frame_len: tokens per latent frame at this resolution.
        device: compute device (where attention reads the cache).
        dtype: compute dtype of keys/values.
        batch: samples per forward pass.
        differentiable: keep autograd history (training): writes are out of place and each layer's
            keys/values are plain tensors instead of preallocated buffers. Not with FP8 or offload.
    """

    def __init__(
        self, config: MemoryConfig, num_layers: int, num_heads: int, head_dim: int, frame_len: int,
        device: torch.device | str, dtype: torch.dtype, batch: int = 1, differentiable: bool = False,
    ) -> None:
        super().__init__()
        if differentiable and (config.fp8 or config.offload):
            raise ValueError("a differentiable (training) memory cannot be FP8 or offloaded")
        self.differentiable = differentiable
        self.config = config
        self.layout = MemoryLayout(config, frame_len)
        self.num_layers = num_layers
        self.device = torch.device(device)
        self.dtype = dtype
        store_device = torch.device("cpu") if config.offload else self.device
        store_dtype = FP8_DTYPE if config.fp8 else dtype
        shape = (num_layers, batch, self.layout.num_tokens, num_heads, head_dim)
        pin = config.offload and self.device.type == "cuda"
        self.block_index = -1
        self._compressed_for = [-1] * num_layers
        if differentiable:
            # Per-layer tensors replaced (not written) on every update; zeros are never attended to.
            zeros = torch.zeros(shape[1:], dtype=dtype, device=self.device)
            self._layers = [(zeros, zeros) for _ in range(num_layers)]
            return

        def alloc(shape_: tuple[int, ...], dt: torch.dtype) -> torch.Tensor:
            return torch.zeros(shape_, dtype=dt, device=store_device, pin_memory=pin)

        self.register_buffer("k", alloc(shape, store_dtype), persistent=False)
        self.register_buffer("v", alloc(shape, store_dtype), persistent=False)
        if config.fp8:
            self.register_buffer("k_scale", alloc(shape[:-1] + (1,), torch.float32), persistent=False)
            self.register_buffer("v_scale", alloc(shape[:-1] + (1,), torch.float32), persistent=False)
        if self._needs_work_buffer:
            # One device-side dequantised/fetched copy, shared by all layers (they run in turn).
            self.register_buffer("k_work", torch.zeros(shape[1:], dtype=dtype, device=self.device), persistent=False)
            self.register_buffer("v_work", torch.zeros(shape[1:], dtype=dtype, device=self.device), persistent=False)

    @property
    def _needs_work_buffer(self) -> bool:
        return self.config.fp8 or self.config.offload

    def reset(self) -> None:
        """Forget everything: the next block is a new clip's first block.

        Only the counters: block 0 writes every slot it reads and block 1 every slot after that, so
        stale contents are never attended to (and zeroing gigabytes per clip would cost seconds).
        """
        self.block_index = -1
        self._compressed_for = [-1] * self.num_layers
        if self.differentiable:
            # Drop the autograd history of the previous clip.
            self._layers = [(k.detach(), v.detach()) for k, v in self._layers]

    def begin_block(self, block_index: int) -> None:
        """Announce the block the next forward pass belongs to (host-side counter, no sync)."""
        if block_index < 0:
            raise ValueError(f"block_index must be >= 0, got {block_index}")
        if block_index > self.block_index + 1 and self.block_index >= 0:
            raise ValueError(f"blocks must come in order: got {block_index} after {self.block_index}")
        if block_index == 0:
            self._compressed_for = [-1] * self.num_layers
        self.block_index = block_index

    @property
    def query_start_frame(self) -> int:
        """Temporal RoPE position of the current block's first frame."""
        return self.layout.write_start(self.block_index)

    @property
    def visible_frames(self) -> int:
        """Slots the current block attends to."""
        return self.layout.visible_frames(self.block_index)

    def nbytes(self) -> int:
        """Bytes held by all buffers (storage, scales and work buffers)."""
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def update(
        self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor,
        k_conv: torch.Tensor | None, v_conv: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Compress if due, write the block's K/V and return what the block attends to.

        Args:
            layer: layer index.
            k_new, v_new: ``[B, T * frame_len, H, D]`` un-roped keys/values of the current block.
            k_conv, v_conv: the layer's ConvKV taps ``[H * D, 1, ratio]``; which one compresses V is
                ``MemoryConfig.value_conv`` (the reference uses the K conv for both).

        Returns:
            ``(k, v)``, each ``[B, visible_frames * frame_len, H, D]`` un-roped, compute dtype.
        """
        if self.block_index < 0:
            raise RuntimeError("call begin_block() before the forward pass")
        lay = self.layout
        k_buf, v_buf = self._load(layer)
        if self.block_index >= 2 and self._compressed_for[layer] != self.block_index:
            v_taps = k_conv if self.config.value_conv == "k" else v_conv
            k_buf = self._compress(k_buf, k_conv)
            v_buf = self._compress(v_buf, v_taps)
            self._compressed_for[layer] = self.block_index
        written = lay.frames(lay.write_start(self.block_index), k_new.shape[1] // lay.frame_len)
        k_buf = self._write(k_buf, written, k_new)
        v_buf = self._write(v_buf, written, v_new)
        if self.differentiable:
            self._layers[layer] = (k_buf, v_buf)
        self._store(layer, written)
        visible = lay.frames(0, self.visible_frames)
        return k_buf[:, visible], v_buf[:, visible]

    def _write(self, buf: torch.Tensor, where: slice, x: torch.Tensor) -> torch.Tensor:
        """``buf[:, where] = x``: in place, or out of place (``slice_scatter``) when differentiable."""
        if self.differentiable:
            return buf.slice_scatter(x.to(buf.dtype), dim=1, start=where.start, end=where.stop)
        buf[:, where] = x
        return buf

    def _compress(self, buf: torch.Tensor, taps: torch.Tensor | None) -> torch.Tensor:
        """Compress the source span into the long-term slots, then move the short-term frames."""
        lay = self.layout
        buf = self._write(buf, lay.long_term, compress(buf[:, lay.compress_source], taps, self.config, lay.frame_len))
        return self._write(buf, lay.short_term, buf[:, lay.short_term_source])

    def _load(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Working K/V of ``layer`` on the compute device (the storage itself when possible)."""
        if self.differentiable:
            return self._layers[layer]
        if not self._needs_work_buffer:
            return self.k[layer], self.v[layer]
        # Block 0 overwrites everything it reads; block 1 reads the memory slots; later blocks
        # also read the previous block (it feeds the compression and the short-term slots).
        frames = {0: 0, 1: self.config.memory_frames}.get(self.block_index, self.config.total_frames)
        needed = self.layout.frames(0, frames)
        for work, store, scale in ((self.k_work, self.k, "k_scale"), (self.v_work, self.v, "v_scale")):
            src = store[layer, :, needed].to(self.device, non_blocking=True)
            if self.config.fp8:
                src = src.to(self.dtype) * getattr(self, scale)[layer, :, needed].to(self.device, self.dtype)
            work[:, needed] = src
        return self.k_work, self.v_work

    def _store(self, layer: int, written: slice) -> None:
        """Write back what this call changed (quantising it when the storage is FP8)."""
        if not self._needs_work_buffer:
            return
        changed = [written]
        if self.block_index >= 2:
            changed += [self.layout.long_term, self.layout.short_term]
        for work, store, scale in ((self.k_work, self.k, "k_scale"), (self.v_work, self.v, "v_scale")):
            for sl in changed:
                if self.config.fp8:
                    q, s = quantize_fp8(work[:, sl])
                    store[layer, :, sl].copy_(q, non_blocking=True)
                    getattr(self, scale)[layer, :, sl].copy_(s, non_blocking=True)
                else:
                    store[layer, :, sl].copy_(work[:, sl], non_blocking=True)
