"""How a LiveAct run is assembled: flags -> :class:`RunSpec` -> checks -> :class:`LiveActPipeline`.

Every product surface (``generate.py``, ``demo.py``, ``python -m liveact.bench speed``) builds its run
here, so each setting has one source and one rule::

    dist = init_distributed(flags)     # torchrun's process group, or None
    spec = resolve(flags, dist)        # model folder, size, fps, device, dtype, memory, schedule ...
    check(spec)                        # hardware and the GPU memory plan, before any weight is read
    pipe = build(spec)                 # load -> parallelize -> FP8 -> offload -> attention -> compile

Where a setting comes from: an explicit flag, else ``--config`` (a preset), else the checkpoint folder
(``components.json`` for Nano-style folders, the ``memory``/``sampler`` sections of an official
``config.json``), else the defaults. The KV-memory flags only ever turn a setting on
(:meth:`MemoryConfig.with_flags`). Nothing here reads ``sys.argv`` or prints; errors are
:class:`UserError` (a ``ValueError``) saying what to change.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import resource
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from liveact.config import MemoryConfig, SamplerConfig, load_preset, settings_from_dict
from liveact.loading import AssetError
from liveact.userinput import UserError, parse_size

if TYPE_CHECKING:
    from liveact.pipeline import LiveActPipeline
    from liveact.speed.parallel import DistInfo

logger = logging.getLogger(__name__)

__all__ = [
    "COMPILE_MODES",
    "RunFlags",
    "RunSpec",
    "UserError",
    "attach_distributed",
    "build",
    "check",
    "flags_from",
    "init_distributed",
    "parse_size",
    "peak_memory_bytes",
    "resolve",
]

CompileMode = Literal["off", "islands", "regional", "cudagraphs"]
COMPILE_MODES: tuple[str, ...] = ("off", "islands", "regional", "cudagraphs")
TextEncoderPlacement = Literal["gpu", "cpu", "park"]
# The authors' generate.py defaults, for official folders that name no size or fps.
OFFICIAL_SIZE, OFFICIAL_FPS = (480, 832), 24
# The latent stride (8) times the DiT's patch (2): sizes are multiples of it.
SIZE_UNIT = 16


@dataclass(frozen=True)
class RunFlags:
    """The run-assembly flags ``generate.py`` and ``demo.py`` share (named as the authors' flags).

    ``None`` means "not given": :func:`resolve` fills it from the preset, the folder or the defaults.
    """

    ckpt_dir: str | None = None
    wav2vec_dir: str | None = None
    size: str | None = None
    fps: int | None = None
    device: str | None = None
    dtype: str | None = None
    config: str | None = None
    t5_cpu: bool = False
    offload_t5: bool = False
    fp8_kv_cache: bool = False
    offload_cache: bool = False
    mean_memory: bool = False
    fp8_gemm: bool = False
    block_offload: bool = False
    audio_cfg: float = 1.0
    edit_cfg: float | None = None
    steam_audio: bool = False
    vae_stitch: str = "continuous"
    compile: str = "off"
    no_memory_check: bool = False
    downmix: bool = False


def flags_from(args: object) -> RunFlags:
    """The :class:`RunFlags` of any object that carries some of their names (a CLI's parsed args)."""
    return RunFlags(**{f.name: getattr(args, f.name) for f in fields(RunFlags) if hasattr(args, f.name)})


@dataclass(frozen=True)
class RunSpec:
    """Everything a run is built from, resolved and validated (see :func:`resolve`).

    Attributes:
        model_dir: the checkpoint folder (the embedded Nano when none was given).
        own_components: the folder names its components (``components.json``); else official.
        wav2vec_dir: the wav2vec2 folder (official folders only).
        device, dtype: where and in what precision the models run.
        dist: torchrun's process group (sequence parallel), or None.
        size: ``(width, height)`` of the video; fps: its frame rate.
        memory: KV-memory layout with the FP8 / host-offload / mean-compression settings applied.
        sampler: the denoising schedule (timesteps, CFG steps ...).
        text_encoder: ``gpu``, ``cpu`` (``--t5_cpu``) or ``park`` (``--offload_t5``).
        compile: ``off``, ``islands`` (fp32 islands and FP8 quantisation), ``regional`` (also every
            DiT block) or ``cudagraphs`` (islands, and steady-state steps replayed as CUDA graphs).
        memory_check: plan GPU memory before loading and refuse a run that would not fit.
        downmix: condition on the mean of the audio channels instead of channel 0.
    """

    model_dir: Path
    own_components: bool
    wav2vec_dir: Path | None
    device: torch.device
    dtype: torch.dtype
    dist: DistInfo | None
    size: tuple[int, int]
    fps: int
    memory: MemoryConfig
    sampler: SamplerConfig
    audio_cfg: float = 1.0
    edit_cfg: float | None = None
    fp8_gemm: bool = False
    block_offload: bool = False
    text_encoder: TextEncoderPlacement = "gpu"
    stream_audio: bool = False
    vae_stitch: str = "continuous"
    compile: CompileMode = "off"
    memory_check: bool = True
    downmix: bool = False

    @property
    def world_size(self) -> int:
        """Processes in the sequence-parallel group (1 without torchrun)."""
        return 1 if self.dist is None else self.dist.world_size


# ------------------------------------------------------------------------------------------ resolve


def model_folder(ckpt_dir: str | None) -> tuple[Path, dict | None]:
    """The checkpoint folder (the embedded Nano for None) and its ``components.json`` (None: official)."""
    from liveact.components.nano import default_model_dir, read_components

    folder = Path(ckpt_dir) if ckpt_dir is not None else default_model_dir()
    if ckpt_dir is None and not (folder / "components.json").is_file():
        raise UserError(
            f"no --ckpt_dir given and this install has no embedded model ({folder} is missing): "
            "pass --ckpt_dir (and --wav2vec_dir for the official weights)"
        )
    if not folder.is_dir():
        raise UserError(f"--ckpt_dir {folder} is not a folder")
    try:
        return folder, read_components(folder)
    except AssetError as exc:
        raise UserError(f"--ckpt_dir: {exc}") from None


def run_settings(
    flags: RunFlags, folder: Path, components: dict | None
) -> tuple[MemoryConfig, SamplerConfig]:
    """Memory layout and schedule: ``--config``, else the folder's, else the defaults; flags applied."""
    from liveact.components.nano import components_schedule

    if flags.config:
        try:
            preset = load_preset(flags.config)
        except ValueError as exc:
            raise UserError(f"--config: {exc}") from None
        memory, sampler = preset.memory, preset.sampler
    elif components is not None:
        memory, sampler = MemoryConfig(), components_schedule(components)
    else:
        memory, sampler = MemoryConfig(), SamplerConfig()
        config = folder / "config.json"
        if config.is_file():
            # A bad config.json is reported with its name by the loader when it reads the DiT.
            with contextlib.suppress(ValueError, UnicodeDecodeError, AttributeError):
                memory, sampler = settings_from_dict(json.loads(config.read_text()), str(config))
    memory = memory.with_flags(
        fp8_kv_cache=flags.fp8_kv_cache, offload_cache=flags.offload_cache, mean_memory=flags.mean_memory
    )
    return memory, sampler


def resolve_device(requested: str | None, dist: DistInfo | None) -> torch.device:
    """``requested`` (checked to exist here), else ``cuda:LOCAL_RANK`` under torchrun, else cuda / cpu."""
    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError as exc:
            raise UserError(f"--device {requested!r}: {exc}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"--device {requested}: CUDA is not available on this machine")
        if dist is not None and device.type == "cuda" and device.index not in (None, dist.device.index):
            raise UserError(
                f"--device {requested} under torchrun: each process uses cuda:LOCAL_RANK "
                f"({dist.device} here); pass --device cuda or no --device"
            )
        return dist.device if dist is not None and device.type == "cuda" else device
    if dist is not None:
        return dist.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(requested: str | None, device: torch.device) -> torch.dtype:
    """``requested`` (bfloat16, float16, float32), else bfloat16 on CUDA and float32 on a CPU."""
    if not requested:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if requested not in ("bfloat16", "float16", "float32"):
        raise UserError(f"--dtype {requested!r}: choose bfloat16, float16 or float32")
    return getattr(torch, requested)


def resolve(
    flags: RunFlags,
    dist: DistInfo | None = None,
    official_size: tuple[int, int] = OFFICIAL_SIZE,
    official_fps: int = OFFICIAL_FPS,
) -> RunSpec:
    """Turn ``flags`` into a validated :class:`RunSpec` (cheap: reads JSON files, never weights).

    ``official_size`` / ``official_fps`` are the defaults for an official folder (the authors'
    ``generate.py`` and demo differ); a ``components.json`` folder brings its own.
    """
    from liveact.components.nano import model_defaults

    folder, components = model_folder(flags.ckpt_dir)
    own = model_defaults(folder) if components is not None else {}
    size = parse_size(flags.size, SIZE_UNIT) if flags.size else tuple(own.get("size", official_size))
    fps = flags.fps if flags.fps is not None else own.get("fps", official_fps)
    if fps <= 0:
        raise UserError(f"--fps must be > 0, got {fps}")
    # `not x >= 1` also refuses NaN; inf would scale the guidance into an all-black video.
    if not (math.isfinite(flags.audio_cfg) and flags.audio_cfg >= 1.0):
        raise UserError(f"--audio_cfg must be finite and >= 1 (1 disables guidance), got {flags.audio_cfg}")
    if flags.edit_cfg is not None and not (math.isfinite(flags.edit_cfg) and flags.edit_cfg >= 1.0):
        raise UserError(
            f"--edit_cfg must be finite and >= 1 (1 disables edit guidance), got {flags.edit_cfg}"
        )
    if flags.vae_stitch not in ("continuous", "reference"):
        raise UserError(f"--vae_stitch {flags.vae_stitch!r}: choose continuous or reference")
    memory, sampler = run_settings(flags, folder, components)
    device = resolve_device(flags.device, dist)
    dtype = resolve_dtype(flags.dtype, device)
    if components is None and flags.wav2vec_dir is None:
        raise UserError(
            f"--ckpt_dir {folder} is an official LiveAct checkpoint folder: it also needs "
            "--wav2vec_dir, the wav2vec2 folder (chinese-wav2vec2-base)"
        )
    spec = RunSpec(
        model_dir=folder,
        own_components=components is not None,
        wav2vec_dir=Path(flags.wav2vec_dir) if flags.wav2vec_dir and components is None else None,
        device=device,
        dtype=dtype,
        dist=dist,
        size=size,
        fps=int(fps),
        memory=memory,
        sampler=sampler,
        audio_cfg=flags.audio_cfg,
        edit_cfg=flags.edit_cfg,
        fp8_gemm=flags.fp8_gemm,
        block_offload=flags.block_offload,
        text_encoder="cpu" if flags.t5_cpu else "park" if flags.offload_t5 else "gpu",
        stream_audio=flags.steam_audio,
        vae_stitch=flags.vae_stitch,
        compile=flags.compile,  # type: ignore[arg-type]  (checked next)
        memory_check=not flags.no_memory_check,
        downmix=flags.downmix,
    )
    check_compile(spec)
    return spec


def check_compile(spec: RunSpec) -> None:
    """Refuse a compile mode that cannot apply to this run, saying why."""
    if spec.compile not in COMPILE_MODES:
        raise UserError(f"--compile {spec.compile!r}: choose one of {', '.join(COMPILE_MODES)}")
    if spec.compile != "cudagraphs":
        return
    if spec.device.type != "cuda":
        raise UserError("--compile cudagraphs replays CUDA graphs: it needs a CUDA device")
    if spec.block_offload:
        raise UserError(
            "--compile cudagraphs cannot capture --block_offload (its hooks copy weights from the host); "
            "use --compile islands or regional"
        )
    if spec.memory.offload:
        raise UserError(
            "--compile cudagraphs cannot capture an offloaded KV memory (--offload_cache: host copies on a "
            "side stream); use --compile islands or regional"
        )


def attach_distributed(spec: RunSpec, dist: DistInfo | None, requested_device: str | None) -> RunSpec:
    """``spec`` in torchrun's process group: its device becomes this rank's (``cuda:LOCAL_RANK``)."""
    if dist is None:
        return spec
    return dataclasses.replace(spec, dist=dist, device=resolve_device(requested_device, dist))


def init_distributed(flags: RunFlags) -> DistInfo | None:
    """Join torchrun's process group (None for one process); the head count is checked first."""
    from liveact.speed.parallel import maybe_init_dist

    num_heads = None
    config = Path(flags.ckpt_dir, "config.json") if flags.ckpt_dir else None
    if config is not None and config.is_file():
        try:
            num_heads = json.loads(config.read_text()).get("num_heads")
        except (ValueError, UnicodeDecodeError, AttributeError):
            num_heads = None  # the loader names the bad file later
    wants_cpu = flags.device is not None and flags.device.split(":")[0] == "cpu"
    return maybe_init_dist(num_heads=num_heads, backend="gloo" if wants_cpu else None)


# ------------------------------------------------------------------------------------------ check


def check(spec: RunSpec) -> None:
    """Refuse what this machine cannot honour (never ignore a flag silently), set PyTorch's backend
    flags for the device, and plan GPU memory with the run's own memory layout before loading."""
    from liveact.speed.backends import configure_torch

    check_hardware(spec)
    configure_torch(spec.device, spec.dtype)
    if spec.dtype == torch.float16:
        logger.warning(
            "--dtype float16: the DiT's activations can exceed the float16 range (65504) and turn "
            "into inf/NaN; the model was trained in bfloat16, use --dtype bfloat16 where the GPU has it"
        )
    if spec.device.type == "cuda" and spec.memory_check:
        message = memory_plan_message(spec, torch.cuda.mem_get_info(spec.device)[0])
        if message is not None:
            raise UserError(message)


def check_hardware(spec: RunSpec) -> None:
    """FP8 GEMMs need an sm89+ GPU whose recipe works; block offload needs a GPU."""
    if spec.fp8_gemm:
        if spec.device.type != "cuda":
            raise UserError("--fp8_gemm needs a CUDA GPU with FP8 tensor cores (sm89+: L40S, H100, RTX 4090)")
        capability = torch.cuda.get_device_capability(spec.device)
        if capability < (8, 9):
            raise UserError(
                f"--fp8_gemm needs compute capability 8.9+, {torch.cuda.get_device_name(spec.device)} "
                f"has {capability}"
            )
        from liveact.speed.quant import choose_recipe

        try:
            choose_recipe(spec.device)  # a tiny GEMM with the exact recipe, before minutes of loading
        except RuntimeError as exc:
            raise UserError(str(exc)) from None
    if spec.block_offload and spec.device.type != "cuda":
        raise UserError(
            "--block_offload streams DiT blocks from host memory to a GPU; it needs a CUDA device"
        )


def memory_plan_message(spec: RunSpec, free_bytes: int, fp8_capable: bool | None = None) -> str | None:
    """The planner's verdict on ``spec`` for ``free_bytes`` of GPU memory: None if it fits, else what
    to change. It plans the memory layout the run will use (a preset's ``memory.fp8`` included)."""
    from liveact.speed.memplan import PlanOptions, config_of, preflight
    from liveact.speed.quant import fp8_supported

    width, height = spec.size
    options = PlanOptions(
        width,
        height,
        spec.dtype,
        fp8_gemm=spec.fp8_gemm,
        fp8_kv_cache=spec.memory.fp8,
        offload_cache=spec.memory.offload,
        block_offload=spec.block_offload,
        audio_cfg=spec.audio_cfg,
        world_size=spec.world_size,
        text_encoder=spec.text_encoder,
    )
    capable = fp8_supported(spec.device) if fp8_capable is None else fp8_capable
    return preflight(
        config_of(spec.model_dir), options, free_bytes, capable, memory=spec.memory, sampler=spec.sampler
    )


# ------------------------------------------------------------------------------------------ build


def build(spec: RunSpec) -> LiveActPipeline:
    """Load the pipeline ``spec`` describes, then apply its compile mode."""
    from liveact.pipeline import LiveActPipeline

    pipe = LiveActPipeline.from_pretrained(
        spec.model_dir,
        spec.wav2vec_dir,
        device=spec.device,
        dtype=spec.dtype,
        t5_cpu=spec.text_encoder == "cpu",
        sequence_parallel=spec.dist is not None,
        fp8_gemm=spec.fp8_gemm,
        block_offload=spec.block_offload,
        size=spec.size,
        fps=spec.fps,
        park_text_encoder=spec.text_encoder == "park",
        audio_cfg=spec.audio_cfg,
        edit_cfg=spec.edit_cfg,
        vae_stitch=spec.vae_stitch,
        stream_audio=spec.stream_audio,
        downmix=spec.downmix,
        memory=spec.memory,
        schedule=spec.sampler,
    )
    apply_compile(pipe, spec.compile)
    return pipe


def apply_compile(pipe: LiveActPipeline, mode: str) -> None:
    """Compile what ``mode`` names (see :class:`RunSpec`); the first blocks then pay for compilation."""
    if mode == "off":
        return
    from liveact.islands import enable_compiled_islands

    enable_compiled_islands()
    if mode == "regional":
        for block in pipe.transformer.blocks:
            block.compile()
    elif mode == "cudagraphs":
        from liveact.speed.cudagraphs import GraphedSteadySteps

        pipe.sampler.model = GraphedSteadySteps(pipe.transformer)
    logger.info("compile mode %s: the first blocks compile kernels and run slower", mode)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this process: allocated GPU memory on CUDA, max RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cpu_threads_for_generation(device: torch.device) -> None:
    """On a CPU without ``OMP_NUM_THREADS``: the DiT and the decode-ahead thread get half the cores each."""
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, torch.get_num_threads() // 2))
