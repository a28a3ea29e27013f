"""One-command GPU benchmark of the 14B DiT: ``python -m liveact.bench gpu``.

The 14B preset is built on the meta device and materialised on the GPU with random weights (no
checkpoint needed), then streamed with synthetic conditioning at each size, in four modes that
share one materialised model (each converts the previous one in place):

* ``bf16``: bf16 weights, the attention backend ``set_attention_backend`` picks (cuDNN on sm90);
* ``fp8``: FP8 linears (fused q/k/v, probed ``_scaled_mm`` recipe, fast accumulation);
* ``fp8+fp8attn``: as ``fp8`` with SageAttention (INT8 Q/K, FP8 P/V) when it is installed and passes
  its probe, else recorded as skipped with the reason;
* ``offload24``: the 24 GB-card recipe: FP8 linears, block offload (two blocks on the GPU), KV
  memory in FP8 in pinned host memory.

Per run (after untimed warm-up blocks that compile every phase): first-block latency (wall, from the
start of the stream), steady-state block latency
(blocks from the third on), per-step latency of each denoising step (CUDA events around each model
call), FPS, achieved TFLOP/s (FLOPs counted on the meta device) against the GPU's dense peak for the
mode's GEMM dtype, peak allocated memory, and the memory planner's figure for the same DiT state.
Results go to a JSON file and a markdown table. fp32 islands and the FP8 activation quantisation run
compiled (``liveact.islands``) unless ``--compile none``; ``--compile regional`` also compiles each
block (six graphs per size; minutes of compilation, outside the 8-minute default); ``--compile
cudagraphs`` replays the steady-state steps as CUDA graphs (``liveact.speed.cudagraphs``; not the
offload mode).

``--device cpu --preset tiny`` runs the same code path in seconds (FP8 emulated, offload
synchronous): the CPU smoke test keeps this module from rotting without a GPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from liveact.config import PRESETS, MemoryConfig, SamplerConfig
from liveact.model import LiveActTransformer
from liveact.sampler import NeighborForcingSampler

logger = logging.getLogger(__name__)

MODES = ("bf16", "fp8", "fp8+fp8attn", "offload24")
DEFAULT_SIZES = ("512*512", "720*416")
# Dense tensor-core peaks in TFLOP/s (bf16, fp8), from NVIDIA's data sheets (SXM parts, no sparsity).
PEAK_TFLOPS = {
    "H200": (989.0, 1979.0),
    "H100 80GB HBM3": (989.0, 1979.0),
    "H100 SXM": (989.0, 1979.0),
    "H100 PCIe": (756.0, 1513.0),
    "H100 NVL": (835.0, 1671.0),
    "H20": (148.0, 296.0),
    "B200": (2250.0, 4500.0),
    "A100": (312.0, None),
    "L40S": (362.0, 733.0),
    "RTX 4090": (165.0, 330.0),
    "RTX 5090": (209.0, 419.0),
}


@dataclass
class RunResult:
    """One (mode, size) run."""

    mode: str
    size: str
    status: str = "ok"
    first_block_s: float | None = None
    block_s: float | None = None
    step_ms: list[float] = field(default_factory=list)
    fps: float | None = None
    tflops: float | None = None
    peak_tflops: float | None = None
    peak_memory_gib: float | None = None
    planned_memory_gib: float | None = None
    attention: str | None = None
    fp8_recipe: str | None = None

    @property
    def utilisation(self) -> float | None:
        """Achieved over peak TFLOP/s."""
        return self.tflops / self.peak_tflops if self.tflops and self.peak_tflops else None


def peak_tflops(device: torch.device, fp8: bool) -> float | None:
    """The device's dense bf16 (or fp8) tensor-core peak, when its name is in ``PEAK_TFLOPS``."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, (bf16, fp8_peak) in sorted(PEAK_TFLOPS.items(), key=lambda kv: -len(kv[0])):
        if key in name:
            return fp8_peak if fp8 else bf16
    return None


@torch.no_grad()
def materialise(preset: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> LiveActTransformer:
    """Build ``preset`` on the meta device and give it random weights directly on ``device``.

    Linear and conv weights are ``N(0, 1/fan_in)`` (activations keep their scale through 40 layers),
    biases zero, norms one, modulation tables ``N(0, 1/dim)`` as in the constructor.
    """
    with torch.device("meta"):
        model = LiveActTransformer(PRESETS[preset]).to(dtype)
    # Straight to the target dtype on the device: no fp32 copy of 19 B parameters.
    model = model.to_empty(device=device).eval().requires_grad_(False)
    g = torch.Generator(device=device).manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("modulation"):
            p.normal_(0, p.shape[-1] ** -0.5, generator=g)
        elif p.ndim >= 2:
            p.normal_(0, math.prod(p.shape[1:]) ** -0.5, generator=g)
        elif name.endswith("bias"):
            p.zero_()
        else:
            p.fill_(1.0)
    return model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TimedModel:
    """Wraps the model the sampler calls and times every call (CUDA events on the GPU, else wall clock).

    Everything else (config, device, embed_text ...) is forwarded to the wrapped model.
    """

    def __init__(self, target: object, device: torch.device) -> None:
        self.target = target
        self.device = device
        self.marks: list[tuple[object, object]] = []

    def __getattr__(self, name: str) -> object:
        if name == "target":
            raise AttributeError(name)
        return getattr(self.target, name)

    def _now(self) -> object:
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def __call__(self, *args: object, **kwargs: object) -> torch.Tensor:
        """Call the wrapped model and record when the call started and ended."""
        start = self._now()
        out = self.target(*args, **kwargs)
        self.marks.append((start, self._now()))
        return out

    def take(self) -> list[float]:
        """Milliseconds of the calls since the last ``take`` (synchronises the device)."""
        _sync(self.device)
        out = [a.elapsed_time(b) if self.device.type == "cuda" else (b - a) * 1000 for a, b in self.marks]
        self.marks = []
        return out


def stream_once(
    model: LiveActTransformer,
    size: str,
    blocks: int,
    device: torch.device,
    memory: MemoryConfig,
    audio_cfg: float = 1.0,
    warmup_blocks: int = 0,
    cuda_graphs: bool = False,
) -> RunResult:
    """Stream ``blocks`` blocks at ``size``; latency, per-step times, FPS and peak memory.

    ``warmup_blocks`` are streamed first, untimed (compilation of every phase, cuDNN autotuning), so
    the first-block latency is that of a warm process starting a new clip. ``cuda_graphs`` replays
    the steady-state steps as CUDA graphs (``liveact.speed.cudagraphs``).
    """
    from liveact.bench.shared import synthetic_conditions
    from liveact.speed.cudagraphs import GraphedSteadySteps
    from liveact.userinput import parse_size

    width, height = parse_size(size)
    cond = synthetic_conditions(model, width, height, audio_frames=32 * blocks + 64, device=device)
    target = model
    if cuda_graphs:
        # Off CUDA the stand-in capture keeps the closure: the same bookkeeping, no graph.
        target = GraphedSteadySteps(model, capture=None if device.type == "cuda" else (lambda fn: fn))
    timer = TimedModel(target, device)
    sampler = NeighborForcingSampler(timer, audio_cfg=audio_cfg, memory=memory)
    if warmup_blocks:
        for _ in sampler.stream(cond, warmup_blocks, torch.Generator().manual_seed(1)):
            pass
    timer.take()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    walls, steps = [], []
    _sync(device)
    start = time.perf_counter()
    for _ in sampler.stream(cond, blocks, torch.Generator().manual_seed(0)):
        _sync(device)
        now = time.perf_counter()
        walls.append(now - start)
        steps.append(timer.take())
        start = now
    steady_walls = walls[2:] or walls[1:]
    steady_steps = steps[2:] or steps[1:]
    block_s = sum(steady_walls) / len(steady_walls)
    frames = memory.block_frames * SamplerConfig().vae_stride[0]
    per_step = [sum(s[i] for s in steady_steps) / len(steady_steps) for i in range(len(steady_steps[0]))]
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return RunResult(
        mode="",
        size=size,
        first_block_s=walls[0],
        block_s=block_s,
        step_ms=per_step,
        fps=frames / block_s,
        peak_memory_gib=peak,
    )


def planned_dit_gib(preset: str, mode: str, size: str, dtype: torch.dtype) -> float:
    """The memory planner's figure for what the benchmark holds: DiT weights, KV memory, activations."""
    from liveact.speed.memplan import PlanOptions, plan_memory
    from liveact.userinput import parse_size

    width, height = parse_size(size)
    fp8, offload = mode != "bf16", mode == "offload24"
    plan = plan_memory(
        PRESETS[preset],
        PlanOptions(
            width,
            height,
            dtype,
            fp8_gemm=fp8,
            fp8_kv_cache=offload,
            offload_cache=offload,
            block_offload=offload,
        ),
    )
    dit = [i for i in plan.items if i.name.startswith(("DiT", "KV", "cross-attention"))]
    return sum(i.device for i in dit) / 2**30


def run_gpu_bench(
    preset: str = "liveact-14b",
    sizes: tuple[str, ...] = DEFAULT_SIZES,
    modes: tuple[str, ...] = MODES,
    blocks: int = 6,
    device: str = "cuda",
    compile_mode: str = "islands",
    budget_s: float = 480.0,
    plan: bool = True,
    warmup_blocks: int = 3,
) -> list[RunResult]:
    """Run every (mode, size); later runs are skipped (and say so) once ``budget_s`` is spent."""
    # Four modes x two sizes x three phases: more graphs than Dynamo's default limit of 8. Raised
    # through Dynamo's own scoped patch, so the process's setting is restored when the run ends.
    limit = max(torch._dynamo.config.recompile_limit, 64)
    with torch._dynamo.config.patch(recompile_limit=limit):
        return _run_modes(preset, sizes, modes, blocks, device, compile_mode, budget_s, plan, warmup_blocks)


def _run_modes(
    preset: str,
    sizes: tuple[str, ...],
    modes: tuple[str, ...],
    blocks: int,
    device: str,
    compile_mode: str,
    budget_s: float,
    plan: bool,
    warmup_blocks: int,
) -> list[RunResult]:
    """``run_gpu_bench``'s body, inside the Dynamo settings it needs."""
    from liveact.bench.shared import count_flops
    from liveact.islands import enable_compiled_islands
    from liveact.speed import quant
    from liveact.speed.offload import enable_block_offload

    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    if dev.type == "cuda":
        from liveact.speed.backends import configure_torch

        configure_torch(dev, dtype)
    if compile_mode in ("islands", "regional", "cudagraphs"):
        enable_compiled_islands()
    began = time.perf_counter()
    flops = {size: count_flops(preset, size).block_flops for size in sizes}
    model = materialise(preset, dev, dtype)
    logger.info("materialised %s on %s in %.1f s", preset, dev, time.perf_counter() - began)
    results: list[RunResult] = []
    recipe = None
    for mode in MODES:
        if mode not in modes:
            continue
        attention = "sage" if mode == "fp8+fp8attn" else None
        if mode != "bf16" and recipe is None:
            emulate = dev.type != "cuda"
            quant.convert_linears_to_fp8(model, emulate=emulate)
            recipe = "emulated" if emulate else quant.choose_recipe(dev)
        chosen = model.set_attention_backend(attention)
        memory = MemoryConfig()
        if mode == "offload24":
            for block in model.blocks:
                # Offload hooks move tensors and record CUDA events: they stay eager.
                block._compiled_call_impl = None
            enable_block_offload(model, dev, always_copy=dev.type != "cuda")
            memory = MemoryConfig(fp8=True, offload=True)
        elif compile_mode == "regional":
            for block in model.blocks:
                block.compile()
        for size in sizes:
            result = RunResult(
                mode=mode, size=size, attention=chosen, fp8_recipe=recipe if mode != "bf16" else None
            )
            if attention is not None and chosen != attention:
                result.status = f"skipped: {attention} attention unavailable (probe failed or not installed)"
            elif time.perf_counter() - began > budget_s:
                result.status = f"skipped: time budget of {budget_s:.0f} s spent"
            else:
                run = stream_once(
                    model,
                    size,
                    blocks,
                    dev,
                    memory,
                    warmup_blocks=warmup_blocks,
                    cuda_graphs=compile_mode == "cudagraphs" and mode != "offload24",
                )
                for key in ("first_block_s", "block_s", "step_ms", "fps", "peak_memory_gib"):
                    setattr(result, key, getattr(run, key))
                result.tflops = flops[size] / run.block_s / 1e12
                result.peak_tflops = peak_tflops(dev, fp8=mode != "bf16")
                if plan:
                    result.planned_memory_gib = planned_dit_gib(preset, mode, size, dtype)
            logger.info(
                "%s %s: %s",
                mode,
                size,
                result.status
                if result.status != "ok"
                else f"{result.fps:.1f} FPS, block {result.block_s:.3f} s",
            )
            results.append(result)
    return results


def markdown(results: list[RunResult], device: str) -> str:
    """The results as a markdown table."""
    header = (
        "| mode | size | first block s | steady block s | step ms | FPS | TFLOP/s | % of peak | peak GiB "
        "| planned GiB | attention | FP8 recipe | status |"
    )
    rows = [f"Device: {device}", "", header, "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def fmt(v: float | None, spec: str) -> str:
        return "" if v is None else format(v, spec)

    for r in results:
        util = r.utilisation
        rows.append(
            f"| {r.mode} | {r.size} | {fmt(r.first_block_s, '.2f')} | {fmt(r.block_s, '.3f')} | "
            f"{' / '.join(format(s, '.0f') for s in r.step_ms)} | {fmt(r.fps, '.1f')} | "
            f"{fmt(r.tflops, '.0f')} | {'' if util is None else format(util, '.0%')} | "
            f"{fmt(r.peak_memory_gib, '.1f')} | {fmt(r.planned_memory_gib, '.1f')} | {r.attention or ''} | "
            f"{r.fp8_recipe or ''} | {r.status} |"
        )
    return "\n".join(rows)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``gpu`` subcommand on ``liveact.bench``'s subparsers."""
    gp = sub.add_parser("gpu", help="14B DiT on one GPU: bf16, FP8, FP8 + FP8 attention, 24 GB offload mode")
    gp.add_argument("--preset", default="liveact-14b", choices=sorted(PRESETS))
    gp.add_argument(
        "--size", action="append", help=f"W*H, repeatable (default {' and '.join(DEFAULT_SIZES)})"
    )
    gp.add_argument("--mode", action="append", choices=MODES, help="repeatable (default: all)")
    gp.add_argument(
        "--blocks", type=int, default=6, help="timed blocks per run; from the third on is steady state"
    )
    gp.add_argument(
        "--warmup_blocks", type=int, default=3, help="untimed blocks before each run (compilation)"
    )
    gp.add_argument("--device", default="cuda")
    gp.add_argument(
        "--compile",
        dest="compile_mode",
        default="islands",
        choices=["none", "islands", "regional", "cudagraphs"],
        help="islands: fp32 islands + FP8 quantisation compiled; regional: also each block; "
        "cudagraphs: islands + steady-state steps replayed as CUDA graphs",
    )
    gp.add_argument("--budget_s", type=float, default=480.0, help="skip the remaining runs after this long")
    gp.add_argument("--no_plan", action="store_true", help="skip the memory planner's figures")
    gp.add_argument("--out", default="gpu_bench.json", help="JSON results")
    gp.add_argument("--markdown", default="gpu_bench.md", help="markdown table")


def run_command(args: argparse.Namespace) -> int:
    """Run the ``gpu`` subcommand; writes ``--out`` and ``--markdown`` and prints the table."""
    if args.blocks < 3:
        raise SystemExit("--blocks must be >= 3 (two warm-up blocks, then steady state)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(
            "no CUDA device: run on a GPU machine (or --device cpu --preset tiny for a smoke test)"
        )
    start = time.perf_counter()
    results = run_gpu_bench(
        args.preset,
        tuple(args.size or DEFAULT_SIZES),
        tuple(args.mode or MODES),
        args.blocks,
        args.device,
        args.compile_mode,
        args.budget_s,
        plan=not args.no_plan,
        warmup_blocks=args.warmup_blocks,
    )
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    table = markdown(results, name)
    payload = {
        "device": name,
        "preset": args.preset,
        "torch": torch.__version__,
        "compile": args.compile_mode,
        "dtype": "bfloat16" if dev.type == "cuda" else "float32",
        "blocks": args.blocks,
        "warmup_blocks": args.warmup_blocks,
        "wall_s": time.perf_counter() - start,
        "results": [asdict(r) | {"utilisation": r.utilisation} for r in results],
    }
    Path(args.out).write_text(json.dumps(payload, indent=2))
    Path(args.markdown).write_text(table + "\n")
    print(table)
    print(f"\nwrote {args.out} and {args.markdown} in {payload['wall_s']:.0f} s")
    return 0
