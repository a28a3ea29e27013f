"""Block offload: transformer blocks live in (pinned) host memory and visit the device one at a time.

``enable_block_offload(model, device)`` is a policy applied to a built model (REFERENCE.md §8.3):

* every child except ``model.blocks`` moves to ``device`` and stays there;
* each block's parameters and buffers are kept in host memory, packed into **one flat buffer per
  block** (page-locked at its exact size when ``device`` is CUDA: ``liveact.hostmem``; pinning tensor
  by tensor through PyTorch's caching allocator would round each up to a power of two, ~1.4x the
  model), so copies are asynchronous DMA;
* a forward pre-hook on block ``i`` makes it resident (waiting for its prefetch, or copying it
  synchronously) and starts copying block ``i + 1`` on a side CUDA stream, so the transfer overlaps
  block ``i``'s compute; after the last block it prefetches block 0 for the next model call;
* a forward hook releases block ``i`` by pointing its tensors back at the host copies. Nothing is
  copied back: inference weights are read-only.

On CUDA the device copies go into two preallocated **slots** (when all blocks have the same tensor
shapes and dtypes, as in LiveAct), so exactly two blocks' worth of device memory is used however far
the host runs ahead of the GPU. A slot is one flat device buffer laid out like the host block, so
loading a block is a single host-to-device copy.
Calls that reach a block's submodule outside the block's forward
(``model.embed_text`` / ``embed_image`` call ``cross_attn.k`` etc. directly) load just that
submodule's tensors for the call.

With ``device`` on the CPU, or without CUDA streams, the same bookkeeping runs synchronously (the
"copy" to the CPU is the host tensor itself), which is what the CPU tests exercise.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from liveact.hostmem import aligned_size, carve, pinned_buffer

logger = logging.getLogger(__name__)

_ATTR = "_block_offload"
NUM_SLOTS = 2

PreHook = Callable[[nn.Module, tuple], None]
PostHook = Callable[[nn.Module, tuple, object], None]


@dataclass
class _TensorRef:
    """One parameter or buffer of a block: where it is attached and its host copy."""

    module: nn.Module
    name: str
    is_param: bool
    host: torch.Tensor

    def point_at(self, tensor: torch.Tensor) -> None:
        """Attach ``tensor`` in place of the current data (the Parameter object is kept)."""
        if self.is_param:
            self.module._parameters[self.name].data = tensor
        else:
            self.module._buffers[self.name] = tensor


def _direct_tensors(module: nn.Module) -> list[tuple[str, bool, torch.Tensor]]:
    """``(name, is_param, tensor)`` of a module's own parameters and buffers (not its children's)."""
    out = [(n, True, p) for n, p in module._parameters.items() if p is not None]
    return out + [(n, False, b) for n, b in module._buffers.items() if b is not None]


def _to_host(t: torch.Tensor, pin: bool) -> torch.Tensor:
    """A host copy of ``t`` (page-locked if ``pin``); a CPU tensor that needs no pinning is reused."""
    t = t.detach()
    if t.device.type == "cpu" and (not pin or t.is_pinned()):
        return t
    host = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=pin)
    host.copy_(t)
    return host


class BlockOffloadManager:
    """Moves ``model.blocks`` between host memory and ``device`` around their forward passes.

    Use ``enable_block_offload`` rather than building one directly.

    Args:
        model: a model with a ``blocks`` ``nn.ModuleList`` (e.g. ``LiveActTransformer``).
        device: the compute device.
        prefetch: copy block ``i + 1`` while block ``i`` runs (on a side stream when on CUDA).
        always_copy: copy into device slots even when ``device`` is the CPU, so the slot path that
            CUDA takes is exercised (and tested) without a GPU.
    """

    def __init__(
        self, model: nn.Module, device: torch.device | str, prefetch: bool = True, always_copy: bool = False
    ) -> None:
        self.model = model
        self.device = torch.device(device)
        self.prefetch = prefetch
        self.copies = always_copy or self.device.type != "cpu"
        self.blocks: list[nn.Module] = list(model.blocks)
        self.pin = self.device.type == "cuda"
        self.stream = self._side_stream() if prefetch else None
        self.tensors: list[list[_TensorRef]] = []
        self.slots: list[list[torch.Tensor]] | None = None
        # Host copies packed into one flat buffer per block (whenever copies are made), and the
        # matching flat device slot buffers: one DMA per block load.
        self.flat = self.copies
        self.host_blocks: list[torch.Tensor] = []
        self.slot_buffers: list[torch.Tensor] = []
        self._slot_of: dict[int, int] = {}
        self._slot_block: list[int | None] = [None] * NUM_SLOTS
        self._events: dict[int, torch.cuda.Event] = {}
        self._active: set[int] = set()
        self._temp: dict[nn.Module, list[tuple[str, bool]]] = {}
        self._handles: list[RemovableHandle] = []
        self.peak_resident = 0
        self.loads = 0

    # ----------------------------------------------------------------------------------------
    # setup / teardown

    def _side_stream(self) -> torch.cuda.Stream | None:
        if self.device.type != "cuda":
            return None
        try:
            return torch.cuda.Stream(self.device)
        except RuntimeError as exc:
            logger.warning("block offload: no CUDA side stream (%s); blocks are copied synchronously", exc)
            return None

    def install(self) -> None:
        """Place the model, build the host copies and slots, and register the hooks."""
        for name, child in self.model.named_children():
            if name != "blocks":
                child.to(self.device)
        for t_name, is_param, t in _direct_tensors(self.model):
            ref = _TensorRef(self.model, t_name, is_param, t)
            ref.point_at(t.detach().to(self.device))
        for block in self.blocks:
            owned = [
                (module, name, is_param, t)
                for module in block.modules()
                for name, is_param, t in _direct_tensors(module)
            ]
            if self.flat:
                buffer = pinned_buffer(
                    sum(aligned_size(tuple(t.shape), t.dtype) for *_, t in owned), self.pin
                )
                self.host_blocks.append(buffer)
            refs, offset = [], 0
            for module, name, is_param, t in owned:
                # One tensor at a time, so a model already on the device never needs 2x memory.
                if self.flat:
                    host = carve(buffer, offset, tuple(t.shape), t.dtype).copy_(t.detach())
                    offset += aligned_size(tuple(t.shape), t.dtype)
                else:
                    host = _to_host(t, self.pin)
                ref = _TensorRef(module, name, is_param, host)
                ref.point_at(ref.host)
                refs.append(ref)
            self.tensors.append(refs)
        self.slots = self._make_slots()
        for i, block in enumerate(self.blocks):
            self._handles.append(block.register_forward_pre_hook(self._pre_hook(i)))
            self._handles.append(block.register_forward_hook(self._post_hook(i), always_call=True))
            for module in block.modules():
                if module is not block and _direct_tensors(module):
                    self._handles += [
                        module.register_forward_pre_hook(self._leaf_pre_hook(i)),
                        module.register_forward_hook(self._leaf_post_hook(i), always_call=True),
                    ]
        block_bytes = sum(r.host.numel() * r.host.element_size() for r in (self.tensors or [[]])[0])
        logger.info(
            "block offload: %d blocks of %.1f MiB in %s host memory, device %s, %s, %s",
            len(self.blocks),
            block_bytes / 2**20,
            "pinned" if self.pin else "pageable",
            self.device,
            "two device slots" if self.slots else "per-load device copies",
            "prefetch on a side stream" if self.stream else "synchronous copies",
        )

    def _make_slots(self) -> list[list[torch.Tensor]] | None:
        """Two device buffers per block tensor, if every block has the same tensor signature."""
        if not self.copies or not self.tensors:
            return None
        signature = [(r.host.shape, r.host.dtype) for r in self.tensors[0]]
        if any([(r.host.shape, r.host.dtype) for r in refs] != signature for refs in self.tensors[1:]):
            logger.info("block offload: blocks differ in shapes/dtypes; device copies are allocated per load")
            return None
        slots = []
        for _ in range(NUM_SLOTS):
            flat = torch.empty(self.host_blocks[0].numel(), dtype=torch.uint8, device=self.device)
            self.slot_buffers.append(flat)
            views, offset = [], 0
            for shape, dtype in signature:
                views.append(carve(flat, offset, tuple(shape), dtype))
                offset += aligned_size(tuple(shape), dtype)
            slots.append(views)
        return slots

    @property
    def host_bytes(self) -> int:
        """Bytes of the blocks' host copies (what is pinned on CUDA)."""
        if self.host_blocks:
            return sum(b.numel() for b in self.host_blocks)
        return sum(r.host.numel() * r.host.element_size() for refs in self.tensors for r in refs)

    @property
    def slot_bytes(self) -> int:
        """Device bytes of the two block slots."""
        return sum(b.numel() for b in self.slot_buffers)

    def remove(self) -> None:
        """Remove the hooks and put every block on the device, as a plain model."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for i in list(self._slot_of):
            self._evict(i)
        for refs in self.tensors:
            for ref in refs:
                ref.point_at(ref.host.to(self.device))
        self.tensors.clear()
        self.slots = None
        self.host_blocks.clear()
        self.slot_buffers.clear()

    # ----------------------------------------------------------------------------------------
    # residency

    @property
    def resident_blocks(self) -> list[int]:
        """Indices of the blocks whose tensors are on the device (running or prefetched)."""
        return sorted(self._slot_of)

    @property
    def resident_count(self) -> int:
        """How many blocks are on the device now (at most two)."""
        return len(self._slot_of)

    def _compute_stream(self) -> torch.cuda.Stream | None:
        return torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None

    def _load(self, i: int, slot: int, async_copy: bool) -> None:
        """Point block ``i``'s tensors at device copies in ``slot`` (side stream if ``async_copy``)."""
        compute = self._compute_stream()
        use_stream = async_copy and self.stream is not None
        ctx = torch.cuda.stream(self.stream) if use_stream else contextlib.nullcontext()
        with ctx:
            if use_stream:
                # The slot was last read by kernels already queued on the compute stream.
                self.stream.wait_stream(compute)
            if self.slots is not None:
                # The whole block in one copy: host and slot share the layout.
                self.slot_buffers[slot].copy_(self.host_blocks[i], non_blocking=True)
            for k, ref in enumerate(self.tensors[i]):
                if not self.copies:
                    dev = ref.host
                elif self.slots is not None:
                    dev = self.slots[slot][k]
                else:
                    dev = ref.host.to(self.device, non_blocking=True, copy=True)
                ref.point_at(dev)
            if use_stream:
                event = torch.cuda.Event()
                event.record(self.stream)
                self._events[i] = event
        self._slot_of[i] = slot
        self._slot_block[slot] = i
        self.loads += 1
        self.peak_resident = max(self.peak_resident, len(self._slot_of))

    def _wait(self, i: int) -> None:
        """Make the compute stream wait for block ``i``'s pending prefetch, if any."""
        event = self._events.pop(i, None)
        if event is None:
            return
        compute = self._compute_stream()
        compute.wait_event(event)
        if self.slots is None:
            # Per-load copies were allocated on the side stream; keep them alive for compute's use.
            for ref in self.tensors[i]:
                tensor = ref.module._parameters[ref.name] if ref.is_param else ref.module._buffers[ref.name]
                tensor.record_stream(compute)

    def _evict(self, i: int) -> None:
        """Point block ``i``'s tensors back at the host copies and free its slot."""
        # A prefetch still in flight into this slot must finish before anything else writes it.
        self._wait(i)
        for ref in self.tensors[i]:
            ref.point_at(ref.host)
        self._slot_block[self._slot_of.pop(i)] = None

    def _claim_slot(self, keep: set[int]) -> int | None:
        """A slot free of blocks in ``keep`` and of running blocks, evicting its occupant; or None."""
        for slot in range(NUM_SLOTS):
            if self._slot_block[slot] is None:
                return slot
        for slot in range(NUM_SLOTS):
            occupant = self._slot_block[slot]
            if occupant not in keep and occupant not in self._active:
                self._evict(occupant)
                return slot
        return None

    def acquire(self, i: int) -> None:
        """Make block ``i`` resident and ready on the compute stream, then prefetch its successor."""
        if i in self._slot_of:
            self._wait(i)
        else:
            slot = self._claim_slot(keep={i})
            if slot is None:
                raise RuntimeError(
                    f"block offload: both device slots hold running blocks "
                    f"{sorted(self._active)}; cannot run block {i} inside another block"
                )
            self._load(i, slot, async_copy=False)
        self._active.add(i)
        if self.prefetch and len(self.blocks) > 1:
            nxt = (i + 1) % len(self.blocks)
            if nxt not in self._slot_of:
                slot = self._claim_slot(keep={i})
                if slot is not None:
                    self._load(nxt, slot, async_copy=True)

    def release(self, i: int) -> None:
        """Block ``i`` finished: point it back at host memory (its slot is then free for a prefetch)."""
        self._active.discard(i)
        if i in self._slot_of:
            self._evict(i)

    # ----------------------------------------------------------------------------------------
    # hooks

    def _pre_hook(self, i: int) -> PreHook:
        def hook(module: nn.Module, args: tuple) -> None:
            self.acquire(i)

        return hook

    def _post_hook(self, i: int) -> PostHook:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            self.release(i)

        return hook

    def _leaf_pre_hook(self, i: int) -> PreHook:
        def hook(module: nn.Module, args: tuple) -> None:
            if i in self._active:
                return
            if i in self._slot_of:
                self._wait(i)
                return
            # Called outside its block's forward (e.g. text/image K/V): load only this module.
            self._temp[module] = [(n, is_param) for n, is_param, _ in _direct_tensors(module)]
            for name, is_param, t in _direct_tensors(module):
                _TensorRef(module, name, is_param, t).point_at(
                    t.to(self.device, non_blocking=True, copy=self.copies)
                )

        return hook

    def _leaf_post_hook(self, i: int) -> PostHook:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            names = self._temp.pop(module, None)
            if names is None:
                return
            hosts = {(r.name, r.is_param): r for r in self.tensors[i] if r.module is module}
            for key in names:
                hosts[key].point_at(hosts[key].host)

        return hook


def enable_block_offload(
    model: nn.Module, device: torch.device | str, prefetch: bool = True, always_copy: bool = False
) -> BlockOffloadManager:
    """Keep ``model.blocks`` in host memory and stream them to ``device`` around each block's forward.

    Call it last, after any FP8 conversion or parallel transform, and do not ``model.to(...)``
    afterwards (that would move the host copies' replacements, not the policy).

    Args:
        model: a model with a ``blocks`` ``nn.ModuleList`` (``LiveActTransformer``), on any device.
        device: the compute device; CUDA gets pinned host memory, two device slots and a prefetch
            stream, the CPU runs the same residency bookkeeping synchronously.
        prefetch: copy block ``i + 1`` while block ``i`` runs.
        always_copy: for tests: copy blocks into device slots even on the CPU (the CUDA code path).

    Returns:
        The manager (also reachable as ``block_offload_manager(model)``); ``resident_count``,
        ``peak_resident`` and ``loads`` describe what it did.
    """
    if getattr(model, _ATTR, None) is not None:
        raise ValueError("block offload is already enabled on this model")
    if not isinstance(getattr(model, "blocks", None), nn.ModuleList):
        raise TypeError(f"{type(model).__name__} has no `blocks` ModuleList to offload")
    manager = BlockOffloadManager(model, device, prefetch=prefetch, always_copy=always_copy)
    manager.install()
    setattr(model, _ATTR, manager)
    return manager


def block_offload_manager(model: nn.Module) -> BlockOffloadManager | None:
    """The model's offload manager, or None when offload is not enabled."""
    return getattr(model, _ATTR, None)


def disable_block_offload(model: nn.Module) -> None:
    """Undo ``enable_block_offload``: remove the hooks and move every block to the offload device."""
    manager = block_offload_manager(model)
    if manager is None:
        raise ValueError("block offload is not enabled on this model")
    manager.remove()
    delattr(model, _ATTR)
    logger.info("block offload disabled: all %d blocks on %s", len(manager.blocks), manager.device)
