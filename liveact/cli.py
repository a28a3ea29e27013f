"""``generate.py``: the authors' command line, end to end, writing each mp4 as it is generated.

Same flags and input JSON as SoulX-LiveAct's ``generate.py`` (a drop-in), plus ``--output_dir``,
``--device``, ``--dtype``, ``--max_blocks`` and ``--vae_stitch``. Under ``torchrun`` every rank
runs the model (sequence parallel) and only rank 0 encodes and writes video.

User errors (missing files, bad JSON, bad sizes ...) end with one ``error: ...`` line and exit
status 2, no traceback. Ctrl-C leaves a playable mp4 of everything generated so far (exit 130).
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import resource
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from liveact.config import MemoryConfig, SamplerConfig
from liveact.loading import AssetError
from liveact.sampler import block_span

logger = logging.getLogger("liveact")

SILENCE_PEAK = 1e-4  # -80 dBFS: quieter than any recording of speech


class UserError(ValueError):
    """Bad input from the user: reported as one line, exit status 2."""


@dataclass(frozen=True)
class GenerateArgs:
    """Typed ``generate.py`` arguments (names as the reference's flags)."""

    size: str = "480*832"
    ckpt_dir: str | None = None
    wav2vec_dir: str | None = None
    t5_cpu: bool = False
    offload_cache: bool = False
    fp8_kv_cache: bool = False
    fp8_gemm: bool = False
    block_offload: bool = False
    fps: int = 24
    audio_cfg: float = 1.0
    dura_print: bool = False
    input_json: str = "examples.json"
    steam_audio: bool = False
    mean_memory: bool = False
    seed: int = 42
    output_dir: str = "."
    device: str | None = None
    dtype: str | None = None
    max_blocks: int | None = None
    vae_stitch: str = "continuous"
    offload_t5: bool = False
    no_memory_check: bool = False


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (reference flags first, then ours)."""
    p = argparse.ArgumentParser(prog="generate.py", description="Generate talking-human videos with LiveAct.")
    p.add_argument("--size", default="480*832", help="WIDTH*HEIGHT of the output, multiples of 16")
    p.add_argument("--ckpt_dir", default=None, help="LiveAct checkpoint folder (DiT + Wan assets)")
    p.add_argument("--wav2vec_dir", default=None, help="transformers wav2vec2 folder (chinese-wav2vec2-base)")
    p.add_argument("--t5_cpu", action="store_true", help="run the umT5 text encoder on the CPU")
    p.add_argument("--offload_cache", action="store_true", help="keep the KV memory in host memory")
    p.add_argument("--fp8_kv_cache", action="store_true", help="store the KV memory in FP8 (e4m3)")
    p.add_argument("--fp8_gemm", action="store_true", help="FP8 matmuls for the DiT's linear layers (CUDA, sm89+)")
    p.add_argument("--block_offload", action="store_true", help="keep DiT blocks in host memory, prefetch to the GPU")
    p.add_argument("--fps", type=int, default=24, help="output frame rate (also sets the audio tempo 25/fps)")
    p.add_argument("--audio_cfg", type=float, default=1.0, help="audio guidance scale (> 1 enables it)")
    p.add_argument("--dura_print", action="store_true", help="print the cost of every block")
    p.add_argument("--input_json", default="examples.json", help="JSON list of {prompt, cond_image, cond_audio, edit_prompt}")
    p.add_argument("--steam_audio", "--stream_audio", dest="steam_audio", action="store_true",
                   help="encode audio per block on a short slice (streaming audio)")
    p.add_argument("--mean_memory", action="store_true", help="compress memory with a mean instead of the learned conv")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--output_dir", default=".", help="where <image>_<audio>.mp4 files go")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu ... (default: cuda:LOCAL_RANK if available)")
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                   help="model dtype (default bfloat16 on GPU, float32 on CPU)")
    p.add_argument("--max_blocks", type=int, default=None, help="generate at most this many blocks per clip")
    p.add_argument("--vae_stitch", default="continuous", choices=["continuous", "reference"],
                   help="continuous causal decode across blocks, or the reference's overlap-and-crop")
    p.add_argument("--offload_t5", action="store_true",
                   help="keep umT5 in host memory; it visits the GPU only to encode prompts")
    p.add_argument("--no_memory_check", action="store_true",
                   help="skip the GPU memory plan that refuses runs that would not fit")
    return p


def parse_args(argv: list[str] | None = None) -> GenerateArgs:
    """Parse ``argv`` into ``GenerateArgs``."""
    ns = build_parser().parse_args(argv)
    return GenerateArgs(**{f.name: getattr(ns, f.name) for f in fields(GenerateArgs)})


def parse_size(size: str) -> tuple[int, int]:
    """``"W*H"`` -> ``(width, height)``, multiples of 16."""
    try:
        width, height = (int(v) for v in size.replace("x", "*").split("*"))
    except ValueError:
        raise UserError(f"--size {size!r} must be WIDTH*HEIGHT, e.g. 480*832") from None
    if width <= 0 or height <= 0 or width % 16 or height % 16:
        raise UserError(f"--size {size}: width and height must be positive multiples of 16")
    return width, height


def parse_edit_range(key: str, where: str) -> tuple[int, int]:
    """``"[a, b]"`` -> ``(a, b)`` with ``0 <= a <= b`` (inclusive block indices)."""
    try:
        value = ast.literal_eval(key)
    except (ValueError, SyntaxError):
        value = None
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise UserError(f"{where}: edit range {key!r} must look like \"[first_block, last_block]\"")
    first, last = value
    if not 0 <= first <= last:
        raise UserError(f"{where}: edit range {key!r} needs 0 <= first <= last")
    return first, last


def load_requests(path: str | Path) -> list:
    """Read and validate the input JSON; relative paths resolve against the JSON's folder.

    Returns:
        ``liveact.pipeline.Request`` per entry.
    """
    from liveact.pipeline import Request

    path = Path(path)
    if not path.is_file():
        raise UserError(f"--input_json {path} not found")
    try:
        entries = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"--input_json {path} is not valid JSON: {exc}") from None
    if not isinstance(entries, list) or not entries:
        raise UserError(f"--input_json {path} must hold a non-empty JSON list of jobs")
    requests = []
    for i, entry in enumerate(entries):
        where = f"{path.name} entry {i}"
        if not isinstance(entry, dict):
            raise UserError(f"{where}: must be an object with prompt, cond_image and cond_audio")
        for key in ("prompt", "cond_image", "cond_audio"):
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                raise UserError(f"{where}: field {key!r} is missing or not a non-empty string")
        files = {}
        for key in ("cond_image", "cond_audio"):
            file = Path(entry[key]).expanduser()
            file = file if file.is_absolute() else path.parent / file
            if not file.is_file():
                raise UserError(f"{where}: {key} file not found: {file}")
            files[key] = file
        edits_raw = entry.get("edit_prompt", {}) or {}
        if not isinstance(edits_raw, dict):
            raise UserError(f"{where}: edit_prompt must be an object mapping \"[a, b]\" to a prompt")
        edits = []
        for key, text in edits_raw.items():
            if not isinstance(text, str) or not text.strip():
                raise UserError(f"{where}: edit_prompt {key!r} must map to a non-empty prompt")
            edits.append((parse_edit_range(key, where), text))
        requests.append(Request(image=files["cond_image"], audio=files["cond_audio"], prompt=entry["prompt"], edits=edits))
    return requests


def check_media(request, where: str, min_seconds: float) -> None:  # noqa: ANN001 - Request (lazy import)
    """Open the image and audio of a request up front, so bad files fail before any model loads."""
    from PIL import Image

    from liveact.audio import load_audio

    try:
        with Image.open(request.image) as img:
            img.verify()
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files
        raise UserError(f"{where}: cond_image {request.image} is not a readable image ({exc})") from None
    try:
        waveform, sample_rate = load_audio(request.audio)
    except ValueError as exc:
        reason = "not a readable audio file" if "unreadable" in str(exc) else str(exc).splitlines()[0]
        raise UserError(f"{where}: cond_audio {request.audio}: {reason}") from None
    seconds = waveform.shape[-1] / sample_rate
    if seconds < min_seconds:
        raise UserError(f"{where}: cond_audio {request.audio} is {seconds:.2f} s long; at least "
                        f"{min_seconds:.2f} s (the first block of video) is needed")
    if float(waveform.abs().amax()) < SILENCE_PEAK:
        raise UserError(f"{where}: cond_audio {request.audio} is silent (peak below -80 dBFS); "
                        "the avatar needs speech to lip-sync to")


def output_path(output_dir: str | Path, request) -> Path:  # noqa: ANN001 - Request (lazy import)
    """``<output_dir>/<image stem>_<audio stem>.mp4`` as the reference names it."""
    return Path(output_dir) / f"{Path(request.image).stem}_{Path(request.audio).stem}.mp4"


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this process: allocated GPU memory on CUDA, max RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def resolve_device(args: GenerateArgs, dist_info) -> torch.device:  # noqa: ANN001 - DistInfo | None
    """The device: ``--device``, else ``cuda:LOCAL_RANK`` / cpu."""
    if args.device:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"--device {args.device}: CUDA is not available on this machine")
        if dist_info is not None and device.type == "cuda" and device.index not in (None, dist_info.device.index):
            raise UserError(f"--device {args.device} under torchrun: each process uses cuda:LOCAL_RANK "
                            f"({dist_info.device} here); pass --device cuda or no --device")
        return dist_info.device if dist_info is not None and device.type == "cuda" else device
    if dist_info is not None:
        return dist_info.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_hardware_flags(args: GenerateArgs, device: torch.device) -> None:
    """Fail clearly for flags this machine cannot honour (never ignore them silently)."""
    if args.fp8_gemm:
        if device.type != "cuda":
            raise UserError("--fp8_gemm needs a CUDA GPU with FP8 tensor cores (sm89+: L40S, H100, RTX 4090)")
        if torch.cuda.get_device_capability(device) < (8, 9):
            raise UserError(f"--fp8_gemm needs compute capability 8.9+, {torch.cuda.get_device_name(device)} has "
                            f"{torch.cuda.get_device_capability(device)}")
        from liveact.quant import choose_recipe

        try:
            # A tiny GEMM with the exact recipe, before minutes of loading.
            choose_recipe(device)
        except RuntimeError as exc:
            raise UserError(str(exc)) from None
    if args.block_offload and device.type != "cuda":
        raise UserError("--block_offload streams DiT blocks from host memory to a GPU; it needs a CUDA device")


def check_precision_and_memory(args: GenerateArgs, device: torch.device, dtype: torch.dtype,
                               dist_info) -> None:  # noqa: ANN001 - DistInfo | None
    """Set the run's PyTorch backend flags, warn about fp16, and refuse a run the GPU cannot hold."""
    from liveact.backends import configure_torch

    configure_torch(device, dtype)
    if dtype == torch.float16:
        logger.warning("--dtype float16: the DiT's activations can exceed the float16 range (65504) and turn "
                       "into inf/NaN; the model was trained in bfloat16, use --dtype bfloat16 where the GPU has it")
    if device.type != "cuda" or args.no_memory_check or not args.ckpt_dir:
        return
    from liveact.memplan import PlanOptions, config_of, preflight
    from liveact.quant import fp8_supported

    width, height = parse_size(args.size)
    options = PlanOptions(width, height, dtype, fp8_gemm=args.fp8_gemm, fp8_kv_cache=args.fp8_kv_cache,
                          offload_cache=args.offload_cache, block_offload=args.block_offload,
                          audio_cfg=args.audio_cfg, world_size=1 if dist_info is None else dist_info.world_size,
                          text_encoder="cpu" if args.t5_cpu else "park" if args.offload_t5 else "gpu")
    message = preflight(config_of(args.ckpt_dir), options, torch.cuda.mem_get_info(device)[0], fp8_supported(device))
    if message is not None:
        raise UserError(message)


def build_pipeline(args: GenerateArgs, device: torch.device, dtype: torch.dtype, dist_info):  # noqa: ANN001, ANN201
    """Load the pipeline from the asset folders (or say what is missing)."""
    from liveact.pipeline import LiveActPipeline

    if not args.ckpt_dir or not args.wav2vec_dir:
        raise UserError("no embedded default model ships with this version yet: pass --ckpt_dir (LiveAct "
                        "checkpoint folder) and --wav2vec_dir (wav2vec2 folder)")
    width, height = parse_size(args.size)
    pipe = LiveActPipeline.from_pretrained(
        args.ckpt_dir, args.wav2vec_dir, device=device, dtype=dtype, t5_cpu=args.t5_cpu,
        sequence_parallel=dist_info is not None, fp8_gemm=args.fp8_gemm, block_offload=args.block_offload,
        size=(width, height), park_text_encoder=args.offload_t5,
        fps=args.fps, audio_cfg=args.audio_cfg, mean_memory=args.mean_memory, fp8_kv_cache=args.fp8_kv_cache,
        offload_cache=args.offload_cache, vae_stitch=args.vae_stitch, stream_audio=args.steam_audio)
    return pipe


@dataclass
class ClipStats:
    """Numbers of one finished (or interrupted) clip."""

    frames: int = 0
    blocks: int = 0
    wall: float = 0.0
    first_block: float = 0.0

    def summary(self, fps: float, peak: int) -> str:
        """One line: frames, seconds, wall time, FPS, first-block latency, real-time factor, peak memory."""
        seconds = self.frames / fps
        speed = self.frames / self.wall if self.wall else 0.0
        return (f"{self.frames} frames ({seconds:.2f} s of video, {self.blocks} blocks) in {self.wall:.2f} s: "
                f"{speed:.2f} FPS, first block {self.first_block:.2f} s, real-time factor "
                f"{seconds / self.wall if self.wall else 0.0:.3f}, peak memory {peak / 2**30:.2f} GiB")


def generate_clip(pipe, request, args: GenerateArgs, path: Path, is_main: bool) -> ClipStats:  # noqa: ANN001
    """Generate one clip, writing frames to ``path`` as each block is decoded."""
    from tqdm import tqdm

    from liveact.hostwork import BackgroundWriter
    from liveact.video import ProgressiveVideoWriter

    stats = ClipStats()
    start = time.perf_counter()
    clip = pipe.prepare(request)
    blocks = clip.num_blocks if args.max_blocks is None else min(clip.num_blocks, args.max_blocks)
    # Frames leave the GPU and reach ffmpeg on a thread: the next block starts at once.
    writer = BackgroundWriter(ProgressiveVideoWriter(path, fps=args.fps, width=pipe.size[0], height=pipe.size[1],
                                                     audio=request.audio)) if is_main else None
    bar = tqdm(total=blocks, desc=path.name, unit="block", disable=not is_main or not sys.stderr.isatty())
    try:
        last = time.perf_counter()
        for k, frames in enumerate(pipe.stream(clip, seed=args.seed, max_blocks=blocks, decode=is_main)):
            if writer is not None:
                writer.write(frames)
            now = time.perf_counter()
            if k == 0:
                stats.first_block = now - start
            stats.blocks, stats.frames = k + 1, stats.frames + pipe.frames_of_block(k)
            if args.dura_print and is_main:
                # A block reported done is in the encoder (it survives a kill of this process).
                writer.flush()
                if pipe.device.type == "cuda":
                    torch.cuda.synchronize(pipe.device)
                    now = time.perf_counter()
                video_ms = pipe.frames_of_block(k) / args.fps * 1000
                print(f"Done Block {k}: duration {video_ms:.0f}ms video cost {(now - last) * 1000:.0f}ms", flush=True)
            last = now
            bar.update(1)
    finally:
        bar.close()
        stats.wall = time.perf_counter() - start
        stats.frames = min(stats.frames, clip.num_frames)
        if writer is not None:
            writer.close()
    return stats


def main(argv: list[str] | None = None) -> int:
    """Run ``generate.py``; returns the exit status."""
    logging.basicConfig(level=os.environ.get("LIVEACT_LOG", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args = parse_args(argv)
        return run(args)
    except KeyboardInterrupt:
        print("interrupted: the mp4 written so far is playable", file=sys.stderr)
        return 130
    except (UserError, AssetError, FileNotFoundError, ValueError) as exc:
        logger.debug("user error", exc_info=True)
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        print("error: " + "; ".join(lines), file=sys.stderr)
        return 2


def run(args: GenerateArgs) -> int:
    """Validate everything cheap first, then load models and generate every entry."""
    from liveact.parallel import maybe_init_dist

    parse_size(args.size)
    if args.fps <= 0:
        raise UserError(f"--fps must be > 0, got {args.fps}")
    if args.audio_cfg < 1.0:
        raise UserError(f"--audio_cfg must be >= 1 (1 disables guidance), got {args.audio_cfg}")
    if args.max_blocks is not None and args.max_blocks < 1:
        raise UserError(f"--max_blocks must be >= 1, got {args.max_blocks}")
    requests = load_requests(args.input_json)
    stride = SamplerConfig().vae_stride[0]
    first_block_seconds = block_span(0, MemoryConfig(), stride).video_frames(stride) / args.fps
    for i, request in enumerate(requests):
        check_media(request, f"{Path(args.input_json).name} entry {i}", first_block_seconds)
    num_heads = None
    if args.ckpt_dir and Path(args.ckpt_dir, "config.json").is_file():
        num_heads = json.loads(Path(args.ckpt_dir, "config.json").read_text()).get("num_heads")
    wants_cpu = args.device is not None and torch.device(args.device).type == "cpu"
    dist_info = maybe_init_dist(num_heads=num_heads, backend="gloo" if wants_cpu else None)
    try:
        # Everything after the process group exists runs inside the try: errors still tear it down.
        is_main = dist_info is None or dist_info.is_main
        device = resolve_device(args, dist_info)
        dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
        check_hardware_flags(args, device)
        check_precision_and_memory(args, device, dtype, dist_info)
        pipe = build_pipeline(args, device, dtype, dist_info)
        for request in requests:
            path = output_path(args.output_dir, request)
            stats = generate_clip(pipe, request, args, path, is_main)
            if is_main:
                logger.info("%s: %s", path, stats.summary(args.fps, peak_memory_bytes(device)))
    finally:
        if dist_info is not None:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0
