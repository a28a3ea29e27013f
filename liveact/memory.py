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
keeps the storage in exact-size pinned host memory; both work in a device ``KVWorkspace`` that the
memories of one sampler share. Offloaded layers are prefetched one layer ahead on a side stream.

What a forward pass does depends on the block only through a host-decided *phase* (first block,
second block, steady) and a compress flag, both set by ``begin_block``: a compiled model compiles
for three phases and then never again, however long the stream.

For training (``differentiable=True``) the same layout and compression run out of place
(``slice_scatter``), so gradients flow from a block's loss into the keys/values earlier blocks wrote
and into the ConvKV taps: the training rollouts use exactly the inference memory.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from liveact.config import MemoryConfig
from liveact.hostmem import host_tensor

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0

FIRST_BLOCK, SECOND_BLOCK, STEADY = 0, 1, 2


def block_phase(block_index: int) -> int:
    """``FIRST_BLOCK``, ``SECOND_BLOCK`` or ``STEADY`` (every block from the third on).

    A forward pass depends on its block only through the phase, so a compiled model sees three
    values where it would otherwise see one per block (and recompile for each).
    """
    if block_index < 0:
        raise ValueError(f"block_index must be >= 0, got {block_index}")
    return min(block_index, STEADY)


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

    def write_start(self, phase: int) -> int:
        """First slot a block of ``phase`` (or block index) writes to, and its query's temporal position."""
        return 0 if phase == FIRST_BLOCK else self.config.current_start

    def visible_frames(self, phase: int) -> int:
        """Slots a block of ``phase`` (or block index) attends to."""
        return self.config.first_block_frames if phase == FIRST_BLOCK else self.config.total_frames


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


def _cuda_stream(device: torch.device) -> torch.cuda.Stream | None:
    return torch.cuda.Stream(device) if device.type == "cuda" else None


class KVWorkspace:
    """Device buffers that an FP8 or offloaded ``KVMemory`` works in.

    Memories that run one after another (the per-step memories of one sampler) share one workspace:
    a layer's keys/values only need to be on the device, in the compute dtype, during that layer's
    attention, so one set of buffers serves every layer of every memory.

    * ``work``: one ``(k, v)`` pair in the compute dtype where FP8 storage is dequantised.
    * ``staging`` (offload only): two slots of the storage dtype (FP8 + scales, or the compute dtype,
      in which case a slot is itself the work buffer). While layer ``i`` runs, layer ``i + 1`` is
      copied into the other slot on a side CUDA stream; CUDA events order the copies against compute.

    Args:
        shape: ``(B, N, H, D)`` of one layer's keys (``N`` the cache tokens).
        dtype: compute dtype.
        device: compute device.
        fp8, offload: the storage options of the memories that use it.
    """

    def __init__(
        self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str, fp8: bool, offload: bool
    ) -> None:
        self.shape, self.dtype, self.device = tuple(shape), dtype, torch.device(device)
        self.fp8, self.offload = fp8, offload
        store_dtype = FP8_DTYPE if fp8 else dtype
        scale_shape = self.shape[:-1] + (1,)

        def slot() -> dict[str, torch.Tensor]:
            bufs = {
                name: torch.zeros(self.shape, dtype=store_dtype, device=self.device) for name in ("k", "v")
            }
            if fp8:
                bufs.update({f"{n}_scale": torch.ones(scale_shape, device=self.device) for n in ("k", "v")})
            return bufs

        self.staging = [slot(), slot()] if offload else []
        self.work = (
            (
                torch.zeros(self.shape, dtype=dtype, device=self.device),
                torch.zeros(self.shape, dtype=dtype, device=self.device),
            )
            if fp8
            else None
        )
        self.stream = _cuda_stream(self.device) if offload else None
        # What each staging slot holds: (memory id, layer, frames) and the event of its copy.
        self._holds: list[tuple[int, int, int] | None] = [None] * len(self.staging)
        self._events: list[torch.cuda.Event | None] = [None] * len(self.staging)
        self.sync_loads = 0
        self.prefetched_loads = 0

    def matches(
        self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, fp8: bool, offload: bool
    ) -> bool:
        """Whether a memory with these properties can use this workspace."""
        return (self.shape, self.dtype, self.device, self.fp8, self.offload) == (
            tuple(shape),
            dtype,
            device,
            fp8,
            offload,
        )

    def nbytes(self) -> int:
        """Device bytes of all buffers."""
        tensors = [t for s in self.staging for t in s.values()] + list(self.work or ())
        return sum(t.numel() * t.element_size() for t in tensors)

    # -- offload: staging slots ---------------------------------------------------------------

    def _copy_in(self, memory: KVMemory, layer: int, frames: int, slot: int, side: bool) -> None:
        """Copy the first ``frames`` slots of ``layer``'s host storage into staging ``slot``."""
        needed = memory.layout.frames(0, frames)
        compute = torch.cuda.current_stream(self.device) if self.stream is not None else None
        ctx = torch.cuda.stream(self.stream) if side and self.stream is not None else contextlib.nullcontext()
        with ctx:
            if side and self.stream is not None:
                # The slot was last read by kernels already queued on the compute stream.
                self.stream.wait_stream(compute)
            for name, buf in self.staging[slot].items():
                buf[:, needed].copy_(getattr(memory, name)[layer, :, needed], non_blocking=True)
            event = None
            if side and self.stream is not None:
                event = torch.cuda.Event()
                event.record(self.stream)
        self._holds[slot] = (id(memory), layer, frames)
        self._events[slot] = event

    def fetch(self, memory: KVMemory, layer: int, frames: int) -> dict[str, torch.Tensor]:
        """Staging slot holding ``layer``'s first ``frames`` slots (ready on the compute stream).

        Starts copying ``layer + 1`` into the other slot so it overlaps this layer's compute.
        """
        slot = layer % 2
        key = (id(memory), layer, frames)
        if frames and self._holds[slot] == key:
            event = self._events[slot]
            if event is not None:
                torch.cuda.current_stream(self.device).wait_event(event)
            self.prefetched_loads += 1
        elif frames:
            self._copy_in(memory, layer, frames, slot, side=False)
            self.sync_loads += 1
        self._holds[slot] = None
        self._events[slot] = None
        if frames and layer + 1 < memory.num_layers:
            self._copy_in(memory, layer + 1, frames, 1 - slot, side=True)
        return self.staging[slot]

    def store(self, memory: KVMemory, layer: int, parts: list[tuple[str, slice, torch.Tensor]]) -> None:
        """Copy each ``(name, where, src)`` into ``getattr(memory, name)[layer, :, where]`` (host storage).

        On CUDA the copies run on the side stream after the compute that produced them, so the GPU
        goes on with the next layer; the stream's order keeps them ahead of any later copy-in.
        """
        compute = torch.cuda.current_stream(self.device) if self.stream is not None else None
        ctx = torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()
        with ctx:
            if self.stream is not None:
                self.stream.wait_stream(compute)
            for name, where, src in parts:
                getattr(memory, name)[layer, :, where].copy_(src, non_blocking=True)
                if self.stream is not None:
                    # Temporaries made on the compute stream must outlive the copy.
                    src.record_stream(self.stream)

    def forget(self, memory: KVMemory) -> None:
        """Drop prefetched data of ``memory`` (its storage is about to be rewritten or reset)."""
        for slot, held in enumerate(self._holds):
            if held is not None and held[0] == id(memory):
                self._holds[slot] = None
                self._events[slot] = None


class LayerKV:
    """One layer's keys/values in a ``KVMemory``, for the current block.

    Holds the layer's tensors, not its index, where it can: a block compiled on its own
    (regional compilation) then sees the same kind of input for all layers and compiles once.
    The memory's host-decided ``phase`` and ``compress_due`` are all it reads of the block.
    """

    def __init__(self, memory: KVMemory, index: int) -> None:
        self.memory = memory
        self.index = index
        if memory.differentiable:
            self.cell = memory._layers[index]
        elif not memory.uses_workspace:
            self.k, self.v = memory.k[index], memory.v[index]

    def update(
        self,
        k_new: torch.Tensor,
        v_new: torch.Tensor,
        k_conv: torch.Tensor | None,
        v_conv: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Compress if due, write the block's K/V and return what the block attends to.

        Args:
            k_new, v_new: ``[B, T * frame_len, H, D]`` un-roped keys/values of the current block.
            k_conv, v_conv: the layer's ConvKV taps ``[H * D, 1, ratio]``; which one compresses V is
                ``MemoryConfig.value_conv`` (the reference uses the K conv for both).

        Returns:
            ``(k, v)``, each ``[B, visible_frames * frame_len, H, D]`` un-roped, compute dtype.
        """
        mem = self.memory
        if mem.phase < 0:
            raise RuntimeError("call begin_block() before the forward pass")
        lay = mem.layout
        k_buf, v_buf = self._load()
        if mem.compress_due:
            v_taps = k_conv if mem.config.value_conv == "k" else v_conv
            k_buf = mem._compress(k_buf, k_conv)
            v_buf = mem._compress(v_buf, v_taps)
        written = lay.frames(lay.write_start(mem.phase), k_new.shape[1] // lay.frame_len)
        k_buf = mem._write(k_buf, written, k_new)
        v_buf = mem._write(v_buf, written, v_new)
        if mem.differentiable:
            self.cell[0], self.cell[1] = k_buf, v_buf
        elif mem.uses_workspace:
            self._store(k_buf, v_buf, written)
        visible = lay.frames(0, lay.visible_frames(mem.phase))
        return k_buf[:, visible], v_buf[:, visible]

    @property
    def attended(self) -> tuple[slice, ...] | None:
        """Token slices of the returned keys/values that attention uses (after RoPE); None: all.

        Only the ``none`` ablation leaves slots out: the long-term slots, from the second block on.
        """
        mem = self.memory
        if mem.config.compression != "none" or mem.phase == FIRST_BLOCK:
            return None
        lay = mem.layout
        return lay.sink, slice(lay.short_term.start, lay.frames(0, lay.visible_frames(mem.phase)).stop)

    def _load(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Working K/V of this layer on the compute device (the storage itself when possible)."""
        mem = self.memory
        if mem.differentiable:
            return self.cell[0], self.cell[1]
        if not mem.uses_workspace:
            return self.k, self.v
        # Block 0 overwrites everything it reads; block 1 reads the memory slots; later blocks
        # also read the previous block (it feeds the compression and the short-term slots).
        frames = {FIRST_BLOCK: 0, SECOND_BLOCK: mem.config.memory_frames}.get(
            mem.phase, mem.config.total_frames
        )
        needed = mem.layout.frames(0, frames)
        ws = mem.workspace
        src: dict[str, torch.Tensor] = (
            ws.fetch(mem, self.index, frames)
            if mem.config.offload
            else {n: getattr(mem, n)[self.index] for n in ("k", "v", "k_scale", "v_scale") if hasattr(mem, n)}
        )
        if not mem.config.fp8:
            return src["k"], src["v"]
        for work, name in zip(ws.work, ("k", "v")):
            if frames:
                # Scales cast to the compute dtype before the product, as the reference does.
                work[:, needed] = src[name][:, needed].to(mem.dtype) * src[f"{name}_scale"][:, needed].to(
                    mem.dtype
                )
        return ws.work

    def _store(self, k_buf: torch.Tensor, v_buf: torch.Tensor, written: slice) -> None:
        """Write back what this call changed (quantising it when the storage is FP8)."""
        mem = self.memory
        changed = [written]
        if mem.compress_due:
            changed += [mem.layout.long_term, mem.layout.short_term]
        parts = []
        for sl in changed:
            for name, buf in (("k", k_buf), ("v", v_buf)):
                if mem.config.fp8:
                    # Quantised on the device: only FP8 bytes and scales cross the bus.
                    q, scale = quantize_fp8(buf[:, sl])
                    parts += [(name, sl, q), (f"{name}_scale", sl, scale)]
                else:
                    parts.append((name, sl, buf[:, sl]))
        if mem.config.offload:
            mem.workspace.store(mem, self.index, parts)
        else:
            for name, sl, src in parts:
                getattr(mem, name)[self.index, :, sl].copy_(src)


class KVMemory(nn.Module):
    """Keys/values of every layer for one denoising step, in a fixed slot layout.

    Call ``begin_block(k)`` before each forward pass: it decides on the host, once per block, the
    phase (first block / second block / steady) and whether the memory is compressed. A forward
    pass reads only those flags, never the block index, so a compiled model stops recompiling
    after the third block.

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
        workspace: device work buffers shared with other memories (FP8 / offload only); default a
            new one of this memory's own.
    """

    def __init__(
        self,
        config: MemoryConfig,
        num_layers: int,
        num_heads: int,
        head_dim: int,
        frame_len: int,
        device: torch.device | str,
        dtype: torch.dtype,
        batch: int = 1,
        differentiable: bool = False,
        workspace: KVWorkspace | None = None,
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
        self.phase = -1
        self.compress_due = False
        self._compressed_block = -1
        self.workspace: KVWorkspace | None = None
        self.owns_workspace = False
        if differentiable:
            # Per-layer tensors replaced (not written) on every update; zeros are never attended to.
            zeros = torch.zeros(shape[1:], dtype=dtype, device=self.device)
            self._layers = [[zeros, zeros] for _ in range(num_layers)]
            return

        def alloc(shape_: tuple[int, ...], dt: torch.dtype) -> torch.Tensor:
            if pin:
                # Exact-size page-locked memory (the caching allocator would round up to 2^n).
                return host_tensor(shape_, dt, pin=True)
            return torch.zeros(shape_, dtype=dt, device=store_device)

        self.register_buffer("k", alloc(shape, store_dtype), persistent=False)
        self.register_buffer("v", alloc(shape, store_dtype), persistent=False)
        if config.fp8:
            self.register_buffer("k_scale", alloc(shape[:-1] + (1,), torch.float32), persistent=False)
            self.register_buffer("v_scale", alloc(shape[:-1] + (1,), torch.float32), persistent=False)
        if self.uses_workspace:
            if workspace is not None and not workspace.matches(
                shape[1:], dtype, self.device, config.fp8, config.offload
            ):
                raise ValueError(
                    "the shared KVWorkspace does not fit this memory (shape, dtype, device or "
                    "storage options differ)"
                )
            self.owns_workspace = workspace is None
            self.workspace = workspace or KVWorkspace(
                shape[1:], dtype, self.device, config.fp8, config.offload
            )

    @property
    def uses_workspace(self) -> bool:
        """Whether layers are worked on in device buffers apart from the storage (FP8 or offload)."""
        return not self.differentiable and (self.config.fp8 or self.config.offload)

    def reset(self) -> None:
        """Forget everything: the next block is a new clip's first block.

        Only the counters: block 0 writes every slot it reads and block 1 every slot after that, so
        stale contents are never attended to (and zeroing gigabytes per clip would cost seconds).
        """
        self.block_index = self.phase = -1
        self.compress_due = False
        self._compressed_block = -1
        if self.workspace is not None:
            self.workspace.forget(self)
        if self.differentiable:
            # Drop the autograd history of the previous clip.
            self._layers = [[k.detach(), v.detach()] for k, v in self._layers]

    def begin_block(self, block_index: int) -> None:
        """Announce the block the next forward pass belongs to (host-side, no sync).

        Decides the phase and, for the first forward pass of each block from the third on, that
        the memory is compressed before the block is written. Call it once per forward pass;
        calling it again with the same index re-runs that block against the compressed memory.
        """
        if block_index < 0:
            raise ValueError(f"block_index must be >= 0, got {block_index}")
        if block_index > self.block_index + 1 and self.block_index >= 0:
            raise ValueError(f"blocks must come in order: got {block_index} after {self.block_index}")
        if block_index == 0:
            self._compressed_block = -1
        self.block_index = block_index
        self.phase = block_phase(block_index)
        self.compress_due = self.phase == STEADY and self._compressed_block != block_index
        if self.compress_due:
            self._compressed_block = block_index

    @property
    def query_start_frame(self) -> int:
        """Temporal RoPE position of the current block's first frame."""
        return self.layout.write_start(self.phase)

    @property
    def visible_frames(self) -> int:
        """Slots the current block attends to."""
        return self.layout.visible_frames(self.phase)

    @property
    def rope_frames(self) -> int:
        """Frames of the RoPE table the keys are roped with (the whole slot layout)."""
        return self.config.total_frames

    def nbytes(self) -> int:
        """Bytes held by all buffers (storage, scales and, when not shared, the device workspace)."""
        own = sum(b.numel() * b.element_size() for b in self.buffers())
        return own + (self.workspace.nbytes() if self.owns_workspace else 0)

    def layer(self, index: int) -> LayerKV:
        """The handle of layer ``index`` for the current block."""
        return LayerKV(self, index)

    def update(
        self,
        layer: int,
        k_new: torch.Tensor,
        v_new: torch.Tensor,
        k_conv: torch.Tensor | None,
        v_conv: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``self.layer(layer).update(...)``: see ``LayerKV.update``."""
        return self.layer(layer).update(k_new, v_new, k_conv, v_conv)

    def _write(self, buf: torch.Tensor, where: slice, x: torch.Tensor) -> torch.Tensor:
        """``buf[:, where] = x``: in place, or out of place (``slice_scatter``) when differentiable."""
        if self.differentiable:
            return buf.slice_scatter(x.to(buf.dtype), dim=1, start=where.start, end=where.stop)
        buf[:, where] = x
        return buf

    def _compress(self, buf: torch.Tensor, taps: torch.Tensor | None) -> torch.Tensor:
        """Compress the source span into the long-term slots, then move the short-term frames."""
        lay = self.layout
        if self.config.compression != "none":  # "none" never attends to the long-term slots
            buf = self._write(
                buf, lay.long_term, compress(buf[:, lay.compress_source], taps, self.config, lay.frame_len)
            )
        return self._write(buf, lay.short_term, buf[:, lay.short_term_source])


class GrowingLayerKV:
    """A layer of a ``GrowingKVMemory`` (the ``LayerKV`` interface)."""

    attended = None

    def __init__(self, memory: GrowingKVMemory, index: int) -> None:
        self.memory = memory
        self.index = index

    def update(
        self,
        k_new: torch.Tensor,
        v_new: torch.Tensor,
        k_conv: torch.Tensor | None,
        v_conv: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the block's keys/values ``[B, T * frame_len, H, D]`` to all earlier ones and return
        them all."""
        mem = self.memory
        if mem.phase < 0:
            raise RuntimeError("call begin_block() before the forward pass")
        keep = mem.committed_frames * mem.layout.frame_len
        k_old, v_old = mem.kv[self.index]
        k = torch.cat([k_old[:, :keep], k_new.to(mem.dtype)], 1) if keep else k_new.to(mem.dtype)
        v = torch.cat([v_old[:, :keep], v_new.to(mem.dtype)], 1) if keep else v_new.to(mem.dtype)
        mem.kv[self.index] = (k, v)
        return k, v


class GrowingKVMemory(nn.Module):
    """The ablation without compression: every block's keys/values are kept and attended to.

    Same interface as ``KVMemory`` for the sampler and the model (``begin_block``, ``layer``,
    ``query_start_frame``, ``rope_frames``); memory and attention cost grow with every block, which
    is what the long-run benchmark measures (``python -m liveact.eval longrun --memory grow``).
    Temporal RoPE positions keep increasing (no reset).
    """

    differentiable = False
    workspace = None

    def __init__(
        self,
        config: MemoryConfig,
        num_layers: int,
        frame_len: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        self.config = config
        self.layout = MemoryLayout(config, frame_len)
        self.device, self.dtype = torch.device(device), dtype
        empty = torch.zeros(0, device=self.device, dtype=dtype)
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] = [(empty, empty)] * num_layers
        self.block_index = self.phase = -1
        self.committed_frames = 0
        self._block_start = 0

    def reset(self) -> None:
        """Forget everything (the next block is a new clip's first)."""
        empty = torch.zeros(0, device=self.device, dtype=self.dtype)
        self.kv = [(empty, empty)] * len(self.kv)
        self.block_index = self.phase = -1
        self.committed_frames = self._block_start = 0

    def begin_block(self, block_index: int) -> None:
        """Announce the next forward pass's block; the same index again re-runs it over the same history."""
        if block_index == 0:
            self.committed_frames = self._block_start = 0
        elif block_index != self.block_index:
            first = self.config.first_block_frames if self.block_index == 0 else self.config.block_frames
            self._block_start += first
            self.committed_frames = self._block_start
        self.block_index = block_index
        self.phase = block_phase(block_index)

    @property
    def query_start_frame(self) -> int:
        """Temporal RoPE position of the current block's first frame."""
        return self._block_start

    @property
    def rope_frames(self) -> int:
        """Frames the RoPE table must cover (rounded up to a power of two: few tables, reused)."""
        needed = self._block_start + max(self.config.first_block_frames, self.config.block_frames)
        return 1 << (needed - 1).bit_length()

    def nbytes(self) -> int:
        """Bytes of all kept keys/values."""
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.kv)

    def layer(self, index: int) -> GrowingLayerKV:
        """The handle of layer ``index`` for the current block."""
        return GrowingLayerKV(self, index)
