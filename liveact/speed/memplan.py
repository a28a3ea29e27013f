"""Memory planner: will a run fit on this GPU, and if not, which flags make it fit.

``plan_memory(config, options)`` adds up, before any weight is read:

* weights: the DiT (built on the meta device and, with ``fp8_gemm``, converted there: FP8 weights,
  fused q/k/v, scales; with ``block_offload`` two device slots and the rest in pinned host memory),
  the text encoder (on the GPU, parked in host memory after encoding, or on the CPU), CLIP, the VAE,
  wav2vec2;
* the KV memory: one per denoising step plus one per CFG step, bf16 or FP8 with scales, on the GPU
  or in pinned host memory, and the device workspace the sampler's memories share;
* the cross-attention K/V of the cached prompts and the image;
* activations, measured by a dry run of the real code on the meta device (``liveact.speed.memtrace``):
  one DiT forward pass at the block size that needs most, one VAE decode of a block, the VAE encode of
  the conditioning video;
* a reserve for what tensors do not show (CUDA context, cuBLAS/cuDNN workspaces, fragmentation).

The device peak is the resident part plus the larger of the *prepare* phase (text encoder, VAE
encode) and the *generate* phase (KV memory when the text encoder is parked, since the pipeline then
releases it before encoding; cross-attention K/V; the larger of a DiT forward and a VAE decode).
``advise`` walks a ladder of options
from the cheapest (park the text encoder) to the slowest (block offload) to the first plan that
fits, then drops the savings that are not needed. Numbers for the small presets are checked against
measured allocations on the CPU.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch

from liveact.config import MemoryConfig, ModelConfig, SamplerConfig

logger = logging.getLogger(__name__)

GiB = 2**30
TextEncoderPlacement = Literal["gpu", "park", "cpu"]
# CUDA context, cuBLAS/cuDNN workspaces and allocator fragmentation: not tensors the code sees.
RESERVE_BYTES = 2 * GiB
RESERVE_FRACTION = 0.05
MAX_TEXT_CONTEXTS = 3  # the sampler's LRU keeps 2 prompts; a third exists while one is replaced


@dataclass(frozen=True)
class EncoderSizes:
    """Parameters of the conditioning encoders (the 14B asset set by default) and their input sizes."""

    text_encoder: int = 5_680_910_336
    image_encoder: int = 632_076_800
    vae: int = 126_892_531
    audio_encoder: int = 94_395_552
    clip_tokens: int = 257


@dataclass(frozen=True)
class PlanOptions:
    """A run's memory-relevant options (the ``generate.py`` flags of the same names)."""

    width: int
    height: int
    dtype: torch.dtype = torch.bfloat16
    fp8_gemm: bool = False
    fp8_kv_cache: bool = False
    offload_cache: bool = False
    block_offload: bool = False
    audio_cfg: float = 1.0
    text_encoder: TextEncoderPlacement = "gpu"
    world_size: int = 1

    def flags(self) -> str:
        """The ``generate.py`` flags that select these options."""
        out = [
            flag
            for flag, on in (
                ("--fp8_gemm", self.fp8_gemm),
                ("--fp8_kv_cache", self.fp8_kv_cache),
                ("--offload_cache", self.offload_cache),
                ("--block_offload", self.block_offload),
                ("--t5_cpu", self.text_encoder == "cpu"),
                ("--offload_t5", self.text_encoder == "park"),
            )
            if on
        ]
        return " ".join(out) or "(defaults)"


@dataclass(frozen=True)
class PlanItem:
    """One line of a plan: bytes on the GPU and in host memory, and the phase it belongs to."""

    name: str
    device: int
    host: int = 0
    phase: Literal["resident", "prepare", "generate"] = "resident"
    note: str = ""
    # Items of one group run one after another (a DiT forward, then a VAE decode): the largest counts.
    group: str | None = None


@dataclass
class MemoryPlan:
    """The items of a plan and the peaks they add up to."""

    options: PlanOptions
    items: list[PlanItem] = field(default_factory=list)

    def _phase(self, phase: str) -> int:
        items = [i for i in self.items if i.phase == phase]
        groups: dict[str, int] = {}
        for i in items:
            if i.group is not None:
                groups[i.group] = max(groups.get(i.group, 0), i.device)
        return sum(i.device for i in items if i.group is None) + sum(groups.values())

    @property
    def tensors_peak(self) -> int:
        """Peak bytes of tensors on the device."""
        return self._phase("resident") + max(self._phase("prepare"), self._phase("generate"))

    @property
    def reserve(self) -> int:
        """Bytes kept for what tensors do not show."""
        return RESERVE_BYTES + int(RESERVE_FRACTION * self.tensors_peak)

    @property
    def device_peak(self) -> int:
        """Planned peak GPU memory: tensors plus the reserve."""
        return self.tensors_peak + self.reserve

    @property
    def host_peak(self) -> int:
        """Planned host memory held by the run (pinned blocks and KV memory, parked encoders)."""
        return sum(i.host for i in self.items)

    def fits(self, capacity: int) -> bool:
        """Whether the planned device peak is within ``capacity`` bytes."""
        return self.device_peak <= capacity

    def table(self) -> str:
        """A markdown table of the plan."""
        rows = ["| item | phase | GPU GiB | host GiB | note |", "|---|---|---|---|---|"]
        for i in self.items:
            rows.append(f"| {i.name} | {i.phase} | {i.device / GiB:.2f} | {i.host / GiB:.2f} | {i.note} |")
        rows.append(f"| reserve (CUDA context, workspaces, fragmentation) | | {self.reserve / GiB:.2f} | | |")
        rows.append(f"| **peak** | | **{self.device_peak / GiB:.2f}** | **{self.host_peak / GiB:.2f}** | |")
        return "\n".join(rows)


def _nbytes(tensors: object) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@functools.cache
def _meta_model(config: ModelConfig, dtype: torch.dtype, fp8_gemm: bool) -> torch.nn.Module:
    from liveact.model import LiveActTransformer
    from liveact.speed.quant import convert_linears_to_fp8

    with torch.device("meta"):
        model = LiveActTransformer(config).to(dtype).eval()
    if fp8_gemm:
        convert_linears_to_fp8(model, emulate=True)
        for m in model.modules():
            if hasattr(m, "emulate"):
                m.emulate = False  # the dry run takes the _scaled_mm path (it has meta kernels)
    return model


def dit_weight_bytes(
    config: ModelConfig, dtype: torch.dtype, fp8_gemm: bool = False, block_offload: bool = False
) -> tuple[int, int]:
    """``(device, host)`` bytes of the DiT's weights (see the module docstring)."""
    from liveact.hostmem import aligned_size

    model = _meta_model(config, dtype, fp8_gemm)
    tensors = list(model.parameters()) + list(model.buffers())
    if not block_offload:
        return _nbytes(tensors), 0
    blocks = [
        sum(aligned_size(tuple(t.shape), t.dtype) for t in list(b.parameters()) + list(b.buffers()))
        for b in model.blocks
    ]
    return _nbytes(tensors) - _nbytes(
        list(model.blocks.parameters()) + list(model.blocks.buffers())
    ) + 2 * blocks[0], sum(blocks)


def kv_memory_bytes(
    config: ModelConfig,
    memory: MemoryConfig,
    frame_len: int,
    dtype: torch.dtype,
    world_size: int = 1,
    batch: int = 1,
) -> tuple[int, int, int]:
    """``(device, host, workspace)`` bytes of one ``KVMemory`` (workspace: device, shared by a sampler)."""
    tokens = memory.total_frames * frame_len
    heads = config.num_heads // world_size
    elems = batch * tokens * heads * config.head_dim  # one layer's keys
    dt = torch.empty((), dtype=dtype).element_size()
    store = (
        2
        * config.num_layers
        * (elems * (1 if memory.fp8 else dt) + (batch * tokens * heads * 4 if memory.fp8 else 0))
    )
    workspace = 0
    if memory.fp8:
        workspace += 2 * elems * dt
    if memory.offload:
        workspace += (
            2 * 2 * (elems * (1 if memory.fp8 else dt) + (batch * tokens * heads * 4 if memory.fp8 else 0))
        )
    return (0, store, workspace) if memory.offload else (store, 0, workspace)


def dit_activation_bytes(
    config: ModelConfig, options: PlanOptions, memory: MemoryConfig, lh: int, lw: int
) -> int:
    """Peak bytes one DiT forward pass creates (dry run of two layers on the meta device, every phase)."""
    traced = _dit_activation_bytes(
        config, options.dtype, options.fp8_gemm, replace(memory, offload=False), lh, lw
    )
    return traced // options.world_size


@functools.cache
def _dit_activation_bytes(
    config: ModelConfig, dtype: torch.dtype, fp8_gemm: bool, memory: MemoryConfig, lh: int, lw: int
) -> int:
    from liveact import attention
    from liveact.model import CrossContext
    from liveact.speed.memtrace import fused_attention_stand_in, peak_bytes

    small = replace(config, num_layers=min(2, config.num_layers))
    model = _meta_model(small, dtype, fp8_gemm)
    ph, pw = config.patch_size[1:]
    fl = (lh // ph) * (lw // pw)
    kv = model.new_memory(memory, fl)
    heads = config.num_heads
    context = CrossContext(
        text=[
            tuple(
                torch.empty(1, config.text_len, heads, config.head_dim, device="meta", dtype=dtype)
                for _ in range(2)
            )
            for _ in range(small.num_layers)
        ],
        image=[
            tuple(torch.empty(1, 257, heads, config.head_dim, device="meta", dtype=dtype) for _ in range(2))
            for _ in range(small.num_layers)
        ],
    )
    model.rope(memory.total_frames, lh // ph, lw // pw)
    sdpa = attention.BACKENDS["sdpa"].fn
    attention.BACKENDS["sdpa"].fn = fused_attention_stand_in  # the GPU kernels never hold the score matrix
    peaks = []
    try:
        for k in range(3):
            frames = memory.first_block_frames if k == 0 else memory.block_frames
            latent = torch.empty(config.out_dim, frames, lh, lw, device="meta")
            y = torch.empty(config.cond_dim, frames, lh, lw, device="meta")
            audio = torch.empty(frames, config.context_tokens, config.output_dim, device="meta", dtype=dtype)
            kv.begin_block(k)
            step = torch.empty(1, device="meta")
            peaks.append(
                peak_bytes(
                    functools.partial(
                        model, latent, y, step, context, kv, audio=audio, silent_frames=int(k == 0)
                    )
                )
            )
    finally:
        attention.BACKENDS["sdpa"].fn = sdpa
    return max(peaks)


def _wan_vae(dtype: torch.dtype, arch: object | None = None) -> torch.nn.Module:
    from diffusers import AutoencoderKLWan

    from liveact.components.vae import VAEArch, WanVAE

    arch = arch or VAEArch(96, 96, 16, (1, 2, 4, 4), 2, (False, True, True), 3, 3)
    with torch.device("meta"):
        model = AutoencoderKLWan(
            base_dim=arch.base_dim,
            decoder_base_dim=arch.decoder_base_dim,
            z_dim=arch.z_dim,
            dim_mult=list(arch.dim_mult),
            num_res_blocks=arch.num_res_blocks,
            temperal_downsample=list(arch.temperal_downsample),
            in_channels=arch.in_channels,
            out_channels=arch.out_channels,
        )
    # nn.Module.to: diffusers' own .to() warns about fp32 modules, irrelevant for a dry run.
    return WanVAE(torch.nn.Module.to(model, dtype), arch)


def vae_activation_bytes(
    options: PlanOptions, memory: MemoryConfig, vae_arch: object | None = None
) -> tuple[int, int]:
    """``(decode, encode)`` peak bytes: one later block decoded with a warm cache, the conditioning encode."""
    return _vae_activation_bytes(
        options.width, options.height, options.dtype, memory.first_block_frames, memory.block_frames, vae_arch
    )


@functools.cache
def _vae_activation_bytes(
    width: int,
    height: int,
    dtype: torch.dtype,
    first_block_frames: int,
    block_frames: int,
    vae_arch: object | None,
) -> tuple[int, int]:
    from liveact.speed.memtrace import peak_bytes

    vae = _wan_vae(dtype, vae_arch)
    stride = vae.arch.spatial_stride
    lh, lw = height // stride, width // stride
    z = vae.arch.z_dim
    decoder = vae.stream_decoder()
    first = peak_bytes(
        lambda: decoder.decode_block(torch.empty(z, first_block_frames, lh, lw, device="meta"))
    )
    later = peak_bytes(lambda: decoder.decode_block(torch.empty(z, block_frames, lh, lw, device="meta")))
    frames = 1 + (first_block_frames + block_frames - 1) * vae.arch.temporal_stride
    video = torch.empty(1, 3, frames, height, width, device="meta", dtype=dtype)
    return max(first, later), peak_bytes(lambda: vae.encode(video))


def plan_memory(
    config: ModelConfig,
    options: PlanOptions,
    memory: MemoryConfig | None = None,
    sampler: SamplerConfig | None = None,
    encoders: EncoderSizes | None = None,
    vae_arch: object | None = None,
) -> MemoryPlan:
    """Plan the GPU and host memory of a ``generate.py`` run (see the module docstring)."""
    memory = (memory or MemoryConfig()).with_flags(
        fp8_kv_cache=options.fp8_kv_cache, offload_cache=options.offload_cache
    )
    sampler = replace(sampler or SamplerConfig(), audio_cfg=options.audio_cfg)
    encoders = encoders or EncoderSizes()
    dt = torch.empty((), dtype=options.dtype).element_size()
    stride = sampler.vae_stride[1]
    lh, lw = options.height // stride, options.width // stride
    ph, pw = config.patch_size[1:]
    frame_len = (lh // ph) * (lw // pw)
    plan = MemoryPlan(options)
    add = plan.items.append

    dev, host = dit_weight_bytes(config, options.dtype, options.fp8_gemm, options.block_offload)
    add(
        PlanItem(
            "DiT weights",
            dev,
            host,
            note=("FP8 linears, fused q/k/v; " if options.fp8_gemm else "")
            + ("two blocks on the GPU, the rest pinned in host memory" if options.block_offload else ""),
        )
    )
    t5 = encoders.text_encoder * dt
    if options.text_encoder == "gpu":
        add(PlanItem("text encoder (umT5)", t5))
    elif options.text_encoder == "park":
        add(
            PlanItem(
                "text encoder (umT5), on the GPU while encoding",
                t5,
                t5,
                phase="prepare",
                note="parked in host memory after encoding",
            )
        )
    else:
        add(PlanItem("text encoder (umT5), on the CPU", 0, t5))
    add(
        PlanItem(
            "image encoder, VAE, audio encoder",
            (encoders.image_encoder + encoders.vae + encoders.audio_encoder) * dt,
        )
    )

    steps = sampler.num_steps + (len(sampler.cfg_steps) if sampler.use_cfg else 0)
    kv_dev, kv_host, workspace = kv_memory_bytes(config, memory, frame_len, options.dtype, options.world_size)
    # A parked text encoder comes back to the GPU after the KV memory of the last clip is released.
    kv_phase = "generate" if options.text_encoder == "park" else "resident"
    add(
        PlanItem(
            f"KV memory ({steps} x {memory.total_frames} frames x {frame_len} tokens)",
            steps * kv_dev,
            steps * kv_host,
            phase=kv_phase,
            note=("FP8 + scales; " if memory.fp8 else "") + ("pinned host memory" if memory.offload else ""),
        )
    )
    if workspace:
        add(PlanItem("KV workspace (shared by the memories)", workspace, phase=kv_phase))
    # Every rank holds the whole cross-attention context (it is token-local, not sharded).
    kv_per_prompt = 2 * config.num_layers * config.dim * dt
    add(
        PlanItem(
            "cross-attention K/V (prompts, image)",
            kv_per_prompt * (MAX_TEXT_CONTEXTS * config.text_len + encoders.clip_tokens),
            phase="generate",
        )
    )
    add(
        PlanItem(
            "DiT forward activations (eager, dry run)",
            dit_activation_bytes(config, options, memory, lh, lw),
            phase="generate",
            group="activations",
        )
    )
    decode, encode = vae_activation_bytes(options, memory, vae_arch)
    add(PlanItem("VAE decode of one block (dry run)", decode, phase="generate", group="activations"))
    add(PlanItem("VAE encode of the conditioning video (dry run)", encode, phase="prepare"))
    return plan


def ladder(options: PlanOptions, fp8_capable: bool = True) -> list[PlanOptions]:
    """``options`` and ever more memory-saving variants of it, cheapest first (each adds to the last)."""
    steps = [
        options,
        replace(options, text_encoder="park" if options.text_encoder == "gpu" else options.text_encoder),
    ]
    if fp8_capable:
        steps.append(replace(steps[-1], fp8_gemm=True))
    steps.append(replace(steps[-1], fp8_kv_cache=True))
    steps.append(replace(steps[-1], offload_cache=True))
    steps.append(replace(steps[-1], block_offload=True))
    steps.append(replace(steps[-1], text_encoder="cpu"))
    unique: list[PlanOptions] = []
    for s in steps:
        if s not in unique:
            unique.append(s)
    return unique


def _relaxations(options: PlanOptions, base: PlanOptions) -> list[PlanOptions]:
    """``options`` with one saving undone that ``base`` did not ask for, slowest saving first."""
    out = []
    for name in ("block_offload", "offload_cache", "fp8_kv_cache", "fp8_gemm"):
        if getattr(options, name) and not getattr(base, name):
            out.append(replace(options, **{name: False}))
    order = ("gpu", "park", "cpu")
    for placement in order[order.index(base.text_encoder) : order.index(options.text_encoder)]:
        out.append(replace(options, text_encoder=placement))
    return out


def advise(
    config: ModelConfig, options: PlanOptions, capacity: int, fp8_capable: bool = True, **kwargs: object
) -> tuple[MemoryPlan, MemoryPlan | None]:
    """The plan of ``options`` and the cheapest plan that fits ``capacity`` (or None).

    Walks ``ladder(options)`` to the first variant that fits, then undoes every saving (slowest
    first) that is not needed to fit, so the advice names only the flags that matter.
    """
    base = plan_memory(config, options, **kwargs)
    if base.fits(capacity):
        return base, base
    for variant in ladder(options, fp8_capable)[1:]:
        plan = plan_memory(config, variant, **kwargs)
        if plan.fits(capacity):
            break
    else:
        return base, None
    relaxed = True
    while relaxed:
        relaxed = False
        for candidate in _relaxations(plan.options, options):
            trial = plan_memory(config, candidate, **kwargs)
            if trial.fits(capacity):
                plan, relaxed = trial, True
                break
    return base, plan


def config_of(ckpt_dir: str | Path) -> ModelConfig:
    """The DiT's ``ModelConfig`` from its folder's ``config.json`` and safetensors headers (no weights
    read)."""
    from liveact.loading import _shapes, dit_shards, infer_model_config, read_dit_config

    folder = Path(ckpt_dir)
    return infer_model_config(read_dit_config(folder), _shapes(dit_shards(folder)))


def host_available() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes (None where there is no such file)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def preflight(
    config: ModelConfig, options: PlanOptions, free: int, fp8_capable: bool, **kwargs: object
) -> str | None:
    """Check a run against ``free`` GPU bytes before loading: None if it fits, else what to do.

    Logs the plan; warns (does not refuse) when the host memory the plan needs exceeds what is
    available. The message names the flags of the cheapest variant that fits, or says none does.
    ``kwargs`` go to :func:`plan_memory` (``memory``, ``sampler``: the run's own layout and schedule).
    """
    plan, fit = advise(config, options, free, fp8_capable=fp8_capable, **kwargs)
    logger.info("memory plan (%s):\n%s", options.flags(), plan.table())
    chosen = plan if plan.fits(free) else fit
    available = host_available()
    if chosen is not None and available is not None and chosen.host_peak > available:
        logger.warning(
            "the plan holds %.1f GiB in host memory but %.1f GiB is available",
            chosen.host_peak / GiB,
            available / GiB,
        )
    if plan.fits(free):
        return None
    need = f"needs ~{plan.device_peak / GiB:.1f} GiB of GPU memory and {free / GiB:.1f} GiB is free"
    if fit is None:
        return (
            f"this run ({options.flags()}) {need}, and no combination of --offload_t5, --fp8_gemm, "
            "--fp8_kv_cache, --offload_cache, --block_offload, --t5_cpu fits: use a smaller --size or a "
            "larger GPU (--no_memory_check skips this check)"
        )
    added = " ".join(f for f in fit.options.flags().split() if f not in options.flags().split())
    return (
        f"this run ({options.flags()}) {need}; add {added} (planned ~{fit.device_peak / GiB:.1f} GiB), "
        "or pass --no_memory_check to try anyway"
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m liveact.speed.memplan``: print the plan of a run (and the advice for a GPU size) without a
    GPU."""
    import argparse

    from liveact.config import PRESETS
    from liveact.userinput import parse_size

    p = argparse.ArgumentParser(prog="python -m liveact.speed.memplan", description=main.__doc__)
    p.add_argument(
        "--ckpt_dir", default=None, help="DiT folder (config + safetensors headers); default --preset"
    )
    p.add_argument("--preset", default="liveact-14b", choices=sorted(PRESETS))
    p.add_argument("--size", default="480*832", help="WIDTH*HEIGHT")
    p.add_argument(
        "--gpu_gib", type=float, default=None, help="GPU memory to plan for (GiB): prints the advice"
    )
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--audio_cfg", type=float, default=1.0)
    p.add_argument("--nproc_per_node", type=int, default=1)
    for flag in ("fp8_gemm", "fp8_kv_cache", "offload_cache", "block_offload", "t5_cpu", "offload_t5"):
        p.add_argument(f"--{flag}", action="store_true")
    args = p.parse_args(argv)
    width, height = parse_size(args.size)
    config = config_of(args.ckpt_dir) if args.ckpt_dir else PRESETS[args.preset]
    options = PlanOptions(
        width,
        height,
        getattr(torch, args.dtype),
        args.fp8_gemm,
        args.fp8_kv_cache,
        args.offload_cache,
        args.block_offload,
        args.audio_cfg,
        "cpu" if args.t5_cpu else "park" if args.offload_t5 else "gpu",
        args.nproc_per_node,
    )
    plan = plan_memory(config, options)
    print(f"{options.flags()} at {args.size}:\n\n{plan.table()}")
    if args.gpu_gib is not None:
        capacity = int(args.gpu_gib * GiB)
        _, fit = advise(config, options, capacity)
        verdict = (
            "fits"
            if plan.fits(capacity)
            else f"does not fit; {fit.options.flags()} does (~{fit.device_peak / GiB:.1f} GiB)"
            if fit
            else "does not fit with any combination of the memory-saving flags"
        )
        print(f"\n{args.gpu_gib:g} GiB GPU: {verdict}")


if __name__ == "__main__":
    main()
