"""Block offload: same latents as the plain model, at most two blocks resident, clean undo."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from torch import nn

from liveact.bench.shared import synthetic_conditions
from liveact.config import PRESETS
from liveact.model import LiveActTransformer
from liveact.sampler import Conditions, NeighborForcingSampler
from liveact.speed.offload import block_offload_manager, disable_block_offload, enable_block_offload
from liveact.speed.quant import convert_linears_to_fp8

NUM_BLOCKS = 3  # the third streamed block is the first to compress the memory


@pytest.fixture(scope="module")
def model() -> LiveActTransformer:
    # Four layers, so "at most two resident" is a real constraint (tiny has two).
    torch.manual_seed(0)
    return LiveActTransformer(replace(PRESETS["tiny"], num_layers=4)).eval()


@pytest.fixture(scope="module")
def cond(model: LiveActTransformer) -> Conditions:
    return synthetic_conditions(model, 48, 48, audio_frames=200, device="cpu")


def sample(model: LiveActTransformer, cond: Conditions) -> list[torch.Tensor]:
    return list(NeighborForcingSampler(model).stream(cond, NUM_BLOCKS, torch.Generator().manual_seed(0)))


@pytest.fixture(scope="module")
def reference(model: LiveActTransformer, cond: Conditions) -> list[torch.Tensor]:
    return sample(model, cond)


def watch_residency(model: LiveActTransformer) -> list[tuple[int, list[int]]]:
    """Record ``(block, resident blocks)`` at every block forward (hooks run after the manager's)."""
    manager = block_offload_manager(model)
    seen: list[tuple[int, list[int]]] = []
    for i, block in enumerate(model.blocks):
        block.register_forward_pre_hook(lambda m, a, i=i: seen.append((i, manager.resident_blocks)))
    return seen


def all_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


@pytest.mark.parametrize("always_copy", [False, True], ids=["in-place", "slot-copies"])
def test_offload_matches_plain_model(
    model: LiveActTransformer, cond: Conditions, reference: list[torch.Tensor], always_copy: bool
) -> None:
    m = copy.deepcopy(model)
    manager = enable_block_offload(m, "cpu", always_copy=always_copy)
    seen = watch_residency(m)
    out = sample(m, cond)
    for a, b in zip(out, reference, strict=True):
        assert torch.equal(a, b)
    # 3 streamed blocks x 3 steps = 9 model calls, each running layers 0..3 in order.
    assert [i for i, _ in seen] == list(range(4)) * 9
    for i, resident in seen:
        assert i in resident and len(resident) <= 2
        assert resident == sorted({i, (i + 1) % 4}), "block i runs while i + 1 is prefetched"
    assert manager.peak_resident == 2 and manager.resident_count <= 2
    if always_copy:
        assert manager.slots is not None and len(manager.slots) == 2
        slot_ptrs = {t.data_ptr() for slot in manager.slots for t in slot}
        for i, block in enumerate(m.blocks):
            q = block.self_attn.q
            host = next(r.host for r in manager.tensors[i] if r.module is q and r.name == "weight")
            # Released blocks point at their host copies; only the prefetched one sits in a slot.
            assert (q.weight.data_ptr() in slot_ptrs) == (i in manager.resident_blocks)
            assert (q.weight.data_ptr() == host.data_ptr()) == (i not in manager.resident_blocks)
    disable_block_offload(m)


def test_block_runs_on_device_copy() -> None:
    """With slot copies, a block computes from slot tensors, never from its host copy."""
    torch.manual_seed(0)
    m = LiveActTransformer(replace(PRESETS["tiny"], num_layers=3)).eval()
    manager = enable_block_offload(m, "cpu", always_copy=True)
    ptrs: list[tuple[int, int]] = []
    for i, block in enumerate(m.blocks):
        block.ffn[0].register_forward_pre_hook(lambda mod, a, i=i: ptrs.append((i, mod.weight.data_ptr())))
    x = torch.randn(1, 8, m.config.dim)
    for _i, block in enumerate(m.blocks):
        block.ffn(x)
    slot_ptrs = {t.data_ptr() for slot in manager.slots for t in slot}
    host_ptrs = {i: m.blocks[i].ffn[0].weight.data_ptr() for i in range(3)}
    assert all(p not in slot_ptrs for p in host_ptrs.values()), "nothing resident outside a forward"
    # Submodules called outside the block's forward get a temporary copy of their own tensors.
    assert all(p != host_ptrs[i] for i, p in ptrs)


def test_without_prefetch_one_block_resident(
    model: LiveActTransformer, cond: Conditions, reference: list[torch.Tensor]
) -> None:
    m = copy.deepcopy(model)
    manager = enable_block_offload(m, "cpu", prefetch=False, always_copy=True)
    seen = watch_residency(m)
    out = sample(m, cond)
    assert all(torch.equal(a, b) for a, b in zip(out, reference, strict=True))
    assert all(resident == [i] for i, resident in seen)
    assert manager.peak_resident == 1 and manager.resident_count == 0
    assert manager.loads == 4 * 9


def test_disable_restores_plain_model(
    model: LiveActTransformer, cond: Conditions, reference: list[torch.Tensor]
) -> None:
    m = copy.deepcopy(model)
    params_before = {n: (p, p.detach().clone()) for n, p in m.named_parameters()}
    hooks_before = all_hooks(m)
    enable_block_offload(m, "cpu", always_copy=True)
    with pytest.raises(ValueError, match="already enabled"):
        enable_block_offload(m, "cpu")
    assert all_hooks(m) > hooks_before
    sample(m, cond)
    disable_block_offload(m)
    assert block_offload_manager(m) is None and all_hooks(m) == hooks_before
    for n, p in m.named_parameters():
        # The same Parameter objects, values unchanged (with slot copies the data now lives in the
        # packed per-block host buffers).
        obj, value = params_before[n]
        assert p is obj and torch.equal(p.detach(), value), n
    assert all(torch.equal(a, b) for a, b in zip(sample(m, cond), reference, strict=True))
    with pytest.raises(ValueError, match="not enabled"):
        disable_block_offload(m)


def test_offload_with_fp8_layers(model: LiveActTransformer, cond: Conditions) -> None:
    """FP8 buffers (weight, scale) travel like parameters; the result equals the converted model's."""
    m = copy.deepcopy(model)
    convert_linears_to_fp8(m, emulate=True)
    ref = sample(m, cond)
    manager = enable_block_offload(m, "cpu", always_copy=True)
    assert manager.slots is not None
    assert any(t.dtype == torch.float8_e4m3fn for t in manager.slots[0])
    assert all(torch.equal(a, b) for a, b in zip(sample(m, cond), ref, strict=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_offload_matches_and_bounds_memory(model: LiveActTransformer, cond: Conditions) -> None:
    gpu = copy.deepcopy(model).cuda()
    cond_gpu = synthetic_conditions(gpu, 48, 48, audio_frames=200, device="cuda")
    ref = sample(gpu, cond_gpu)
    m = copy.deepcopy(model)
    manager = enable_block_offload(m, "cuda")
    assert manager.stream is not None and manager.slots is not None
    assert all(r.host.is_pinned() for refs in manager.tensors for r in refs)
    seen = watch_residency(m)
    out = sample(m, cond_gpu)
    for a, b in zip(out, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert all(len(resident) <= 2 for _, resident in seen)
    assert all(
        p.device.type == "cpu"
        for i, b in enumerate(m.blocks)
        if i not in manager.resident_blocks
        for p in b.parameters()
    )


def test_blocks_are_packed_in_one_host_buffer_each(model: LiveActTransformer) -> None:
    """One flat host buffer and one flat slot buffer per block: exact sizes, one copy per load."""
    from liveact.hostmem import ALIGN, aligned_size

    m = copy.deepcopy(model)
    sizes = [
        sum(aligned_size(tuple(t.shape), t.dtype) for t in list(b.parameters()) + list(b.buffers()))
        for b in m.blocks
    ]
    manager = enable_block_offload(m, "cpu", always_copy=True)
    assert len(manager.host_blocks) == len(m.blocks)
    assert [b.numel() for b in manager.host_blocks] == sizes and manager.host_bytes == sum(sizes)
    assert manager.slot_bytes == 2 * sizes[0]
    for i, refs in enumerate(manager.tensors):
        base = manager.host_blocks[i].untyped_storage().data_ptr()
        for ref in refs:
            # Every host copy is a view into its block's buffer, on an aligned offset.
            assert ref.host.untyped_storage().data_ptr() == base
            assert (ref.host.data_ptr() - base) % ALIGN == 0
    for slot, views in zip(manager.slot_buffers, manager.slots):
        assert all(v.untyped_storage().data_ptr() == slot.untyped_storage().data_ptr() for v in views)
    x = torch.randn(1, 8, m.config.dim)
    with torch.no_grad():
        plain = copy.deepcopy(model).blocks[1].ffn(x)
        manager.acquire(1)
        torch.testing.assert_close(m.blocks[1].ffn(x), plain, rtol=0, atol=0)
        manager.release(1)
