"""Memory planner: its figures equal measured allocations for small presets, and its verdicts for 14B."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from liveact.config import PRESETS, MemoryConfig
from liveact.model import LiveActTransformer
from liveact.sampler import NeighborForcingSampler
from liveact.speed.memplan import (
    GiB,
    PlanOptions,
    advise,
    dit_activation_bytes,
    dit_weight_bytes,
    kv_memory_bytes,
    ladder,
    plan_memory,
    preflight,
    vae_activation_bytes,
)
from liveact.speed.memtrace import LiveBytes
from liveact.speed.offload import enable_block_offload
from liveact.speed.quant import convert_linears_to_fp8

H100_80GB = 80 * 10**9


def _nbytes(tensors: object) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("preset", ["tiny", "nano"])
@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
def test_dit_weights_match_the_built_model(preset: str, fp8: bool) -> None:
    torch.manual_seed(0)
    model = LiveActTransformer(PRESETS[preset]).to(torch.bfloat16).eval()
    if fp8:
        convert_linears_to_fp8(model, emulate=True)
    whole = _nbytes(list(model.parameters()) + list(model.buffers()))
    assert dit_weight_bytes(PRESETS[preset], torch.bfloat16, fp8) == (whole, 0)
    blocks = _nbytes(list(model.blocks.parameters()) + list(model.blocks.buffers()))
    manager = enable_block_offload(copy.deepcopy(model), "cpu", always_copy=True)
    device, host = dit_weight_bytes(PRESETS[preset], torch.bfloat16, fp8, block_offload=True)
    assert host == manager.host_bytes
    assert device == whole - blocks + manager.slot_bytes


@pytest.mark.parametrize(
    "options",
    [{}, {"fp8": True}, {"offload": True}, {"fp8": True, "offload": True}],
    ids=["bf16", "fp8", "offload", "fp8+offload"],
)
def test_kv_memory_matches_allocated_buffers(options: dict) -> None:
    torch.manual_seed(0)
    cfg = PRESETS["tiny"]
    model = LiveActTransformer(cfg).to(torch.bfloat16).eval()
    memory = replace(MemoryConfig(), **options)
    sampler = NeighborForcingSampler(model, audio_cfg=2.0, memory=memory)
    memories, nulls = sampler.memories(frame_len=12)
    all_memories = [*memories, *nulls.values()]
    assert len(all_memories) == 5
    device, host, workspace = kv_memory_bytes(cfg, memory, 12, torch.bfloat16)
    for mem in all_memories:
        storage = _nbytes(mem.buffers())
        assert storage == (host if memory.offload else device)
    shared = {id(m.workspace) for m in all_memories}
    # One workspace shared by every memory of the sampler (or none without FP8/offload).
    assert len(shared) == 1 and (workspace == 0) == (all_memories[0].workspace is None)
    if workspace:
        assert all_memories[0].workspace.nbytes() == workspace


def _measure_forward_peak(preset: str, size: int) -> int:
    """Peak bytes of tensors one real CPU forward pass creates, over the three block phases."""
    torch.manual_seed(0)
    model = LiveActTransformer(PRESETS[preset]).eval()
    cfg, lh = model.config, size // 8
    fl = (lh // 2) ** 2
    memory = model.new_memory(MemoryConfig(), fl)
    with torch.no_grad():
        context = model.prepare_context(torch.randn(9, cfg.text_dim), torch.randn(1, 257, cfg.clip_dim))
    model.rope(MemoryConfig().total_frames, lh // 2, lh // 2)
    peaks = []
    for k in range(3):
        frames = 6 if k == 0 else 8
        latent, y = torch.randn(cfg.out_dim, frames, lh, lh), torch.randn(cfg.cond_dim, frames, lh, lh)
        audio = torch.randn(frames, cfg.context_tokens, cfg.output_dim)
        memory.begin_block(k)
        with torch.no_grad(), LiveBytes() as tracker:
            model(latent, y, torch.tensor([500.0]), context, memory, audio=audio, silent_frames=int(k == 0))
        peaks.append(tracker.peak)
    return max(peaks)


@pytest.mark.parametrize("preset, size", [("tiny", 128), ("nano", 192)])
def test_dit_activations_match_a_measured_cpu_forward(preset: str, size: int) -> None:
    measured = _measure_forward_peak(preset, size)
    planned = dit_activation_bytes(
        PRESETS[preset], PlanOptions(size, size, dtype=torch.float32), MemoryConfig(), size // 8, size // 8
    )
    # Same code, same tensors: the meta dry run of two layers equals the real forward of all layers.
    # (The GPU kernels hold no score matrix; neither does the CPU's flash SDPA at these sizes.)
    assert planned == pytest.approx(measured, rel=0.02)


def test_profiler_agrees_with_the_tracker() -> None:
    """An independent measurement of one forward's CPU allocations (PyTorch's memory profiler).

    It checks the tracker the other tests measure with.
    """
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action

    torch.manual_seed(0)
    model = LiveActTransformer(PRESETS["tiny"]).eval()
    cfg = model.config
    memory = model.new_memory(MemoryConfig(), 64)
    with torch.no_grad():
        context = model.prepare_context(torch.randn(9, cfg.text_dim), torch.randn(1, 257, cfg.clip_dim))
    model.rope(14, 8, 8)
    memory.begin_block(0)
    args = (
        torch.randn(cfg.out_dim, 6, 16, 16),
        torch.randn(cfg.cond_dim, 6, 16, 16),
        torch.tensor([500.0]),
        context,
        memory,
    )
    with (
        torch.no_grad(),
        profile(
            activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
        ) as prof,
    ):
        model(*args)
    live = peak = 0
    for _, action, (key, _), size in prof._memory_profile().timeline:
        if key.device.type == "cpu" and action in (Action.CREATE, Action.DESTROY):
            live += size if action == Action.CREATE else -size
            peak = max(peak, live)
    memory.begin_block(0)
    with torch.no_grad(), LiveBytes() as tracker:
        model(*args)
    # The profiler also sees kernel-internal scratch (CPU attention buffers) that no tensor holds.
    assert tracker.peak <= peak <= 1.1 * tracker.peak


def test_vae_activations_match_a_measured_cpu_decode() -> None:
    from diffusers import AutoencoderKLWan

    from liveact.components.vae import VAEArch, WanVAE

    arch = VAEArch(8, 8, 16, (1, 2, 4, 4), 2, (False, True, True), 3, 3)
    torch.manual_seed(0)
    model = AutoencoderKLWan(
        base_dim=8,
        decoder_base_dim=8,
        z_dim=16,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=2,
        temperal_downsample=[False, True, True],
    )
    vae = WanVAE(model, arch)
    options, memory = PlanOptions(32, 24, dtype=torch.float32), MemoryConfig()
    decoder = vae.stream_decoder()
    peaks = []
    for frames in (memory.first_block_frames, memory.block_frames):
        with torch.no_grad(), LiveBytes() as tracker:
            decoder.decode_block(torch.randn(16, frames, 3, 4))
        peaks.append(tracker.peak)
    video = torch.zeros(1, 3, 1 + 13 * 4, 24, 32)
    with torch.no_grad(), LiveBytes() as tracker:
        vae.encode(video)
    decode, encode = vae_activation_bytes(options, memory, arch)
    assert decode == pytest.approx(max(peaks), rel=0.02)
    assert encode == pytest.approx(tracker.peak, rel=0.02)


def test_14b_bf16_does_not_fit_one_80gb_gpu_and_the_advice_does() -> None:
    cfg = PRESETS["liveact-14b"]
    plan = plan_memory(cfg, PlanOptions(512, 512))
    items = {i.name.split(" (")[0]: i.device for i in plan.items}
    # The documented sizes: 35.2 GiB of bf16 weights, 10.6 GiB of umT5, 32.8 GiB of KV memory at 512x512.
    assert items["DiT weights"] / GiB == pytest.approx(35.17, abs=0.01)
    assert items["text encoder"] / GiB == pytest.approx(10.58, abs=0.01)
    assert items["KV memory"] / GiB == pytest.approx(32.81, abs=0.01)
    assert not plan.fits(H100_80GB) and plan.device_peak > H100_80GB
    base, fit = advise(cfg, PlanOptions(512, 512), H100_80GB)
    assert base.device_peak == plan.device_peak
    assert fit is not None and fit.fits(H100_80GB) and fit.options != base.options
    message = preflight(cfg, PlanOptions(512, 512), H100_80GB, fp8_capable=True)
    assert message is not None and "add " in message and "--no_memory_check" in message
    for flag in fit.options.flags().split():
        assert flag in message
    # Without FP8 tensor cores (A100) the advice never names --fp8_gemm.
    _, fit_a100 = advise(cfg, PlanOptions(512, 512), H100_80GB, fp8_capable=False)
    assert fit_a100 is not None and not fit_a100.options.fp8_gemm


def test_24gb_mode_fits_under_22_gib_at_720x416() -> None:
    cfg = PRESETS["liveact-14b"]
    mode = ladder(PlanOptions(720, 416))[-1]
    assert (mode.block_offload, mode.offload_cache, mode.fp8_kv_cache, mode.fp8_gemm, mode.text_encoder) == (
        True,
        True,
        True,
        True,
        "cpu",
    )
    plan = plan_memory(cfg, mode)
    assert plan.device_peak < 22 * GiB
    # What moved to the host: the DiT blocks, the KV memory, umT5.
    assert plan.host_peak > 40 * GiB
    assert preflight(cfg, mode, 22 * GiB, fp8_capable=True) is None
