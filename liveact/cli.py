"""``generate.py`` / ``liveact-generate``: the authors' command line, writing each mp4 as it is generated.

Same flags and input JSON as SoulX-LiveAct's ``generate.py`` (a drop-in), plus ``--output_dir``,
``--overwrite``, ``--config``, ``--device``, ``--dtype``, ``--max_blocks`` and ``--vae_stitch``.
Under ``torchrun`` every rank runs the model (sequence parallel) and only rank 0 encodes and writes.

Output: one H.264 + AAC fragmented mp4 per JSON entry, ``<image stem>_<audio stem>.mp4``, as long as
its audio; entries that would get the same name get ``_<entry index>`` appended. An existing file is
never replaced without ``--overwrite`` (checked before any model loads).

User errors (missing files, bad JSON, bad sizes ...) end with one ``error: ...`` line and exit
status 2, no traceback. Ctrl-C (exit 130) says what is on disk: the mp4 of the clip in progress
plays up to its last finished block, or was not created when no block had finished.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import re
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path

from liveact.config import preset_names
from liveact.userinput import DefaultsHelpFormatter, UserError, add_compile_flag, parse_edit_range

logger = logging.getLogger("liveact")

SILENCE_PEAK = 1e-4  # -80 dBFS: quieter than any recording of speech


# The authors' generate.py defaults, used for the official 14B folders.
OFFICIAL_SIZE, OFFICIAL_FPS = (480, 832), 24


@dataclass(frozen=True)
class GenerateArgs:
    """Typed ``generate.py`` arguments (names as the reference's flags)."""

    size: str | None = None
    ckpt_dir: str | None = None
    wav2vec_dir: str | None = None
    t5_cpu: bool = False
    offload_cache: bool = False
    fp8_kv_cache: bool = False
    fp8_gemm: bool = False
    block_offload: bool = False
    fps: int | None = None
    audio_cfg: float = 1.0
    edit_cfg: float | None = None
    dura_print: bool = False
    input_json: str = ""
    steam_audio: bool = False
    mean_memory: bool = False
    seed: int = 42
    output_dir: str = "."
    overwrite: bool = False
    config: str | None = None
    device: str | None = None
    dtype: str | None = None
    max_blocks: int | None = None
    vae_stitch: str = "continuous"
    offload_t5: bool = False
    no_memory_check: bool = False
    compile: str = "off"
    downmix: bool = False


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (reference flags first, then ours); ``--help`` shows every default."""
    p = argparse.ArgumentParser(
        prog="generate.py",
        formatter_class=DefaultsHelpFormatter,
        description="Generate talking-human videos with LiveAct: one mp4 (H.264 + AAC, as long as the audio) "
        "per entry of --input_json, written while it is generated.",
    )
    p.add_argument(
        "--size",
        default=None,
        help="WIDTH*HEIGHT of the output, width first, multiples of 16 (default: the model's own; "
        f"{OFFICIAL_SIZE[0]}*{OFFICIAL_SIZE[1]} for the official folders)",
    )
    p.add_argument(
        "--ckpt_dir",
        default=None,
        help="LiveAct checkpoint folder: the official one (DiT + Wan VAE/T5/CLIP files) or a "
        "self-contained one (components.json); default: the embedded LiveAct-Nano",
    )
    p.add_argument(
        "--wav2vec_dir",
        default=None,
        help="transformers wav2vec2 folder (chinese-wav2vec2-base); needed by the official folders only",
    )
    p.add_argument("--t5_cpu", action="store_true", help="run the umT5 text encoder on the CPU")
    p.add_argument("--offload_cache", action="store_true", help="keep the KV memory in host memory")
    p.add_argument("--fp8_kv_cache", action="store_true", help="store the KV memory in FP8 (e4m3)")
    p.add_argument(
        "--fp8_gemm", action="store_true", help="FP8 matmuls for the DiT's linear layers (CUDA, sm89+)"
    )
    p.add_argument(
        "--block_offload", action="store_true", help="keep DiT blocks in host memory, prefetch to the GPU"
    )
    p.add_argument(
        "--fps",
        type=int,
        default=None,
        help=f"output frame rate; for the official folders it also sets the audio tempo 25/fps "
        f"(default: the model's own; {OFFICIAL_FPS} for the official folders)",
    )
    p.add_argument("--audio_cfg", type=float, default=1.0, help="audio guidance scale (> 1 enables it)")
    p.add_argument(
        "--edit_cfg",
        type=float,
        default=None,
        help="edit guidance scale: blocks under an edit prompt also run the main prompt and are pushed "
        "away from it, so the edit shows (> 1 enables it; costs one more pass on those blocks). "
        "Default: the model's own (LiveAct-Nano sets it; off for the official weights)",
    )
    p.add_argument(
        "--dura_print",
        action="store_true",
        help="print the cost of every block on stdout (the reference's 'Done Block k' lines)",
    )
    # Required: the reference's default (examples.json) exists in no checkout, and a default path
    # that only resolves from one folder fails confusingly everywhere else.
    p.add_argument(
        "--input_json",
        required=True,
        help="JSON list of {prompt, cond_image, cond_audio, edit_prompt} (e.g. "
        "examples/example.json); paths inside resolve against the JSON's folder",
    )
    p.add_argument(
        "--steam_audio",
        "--stream_audio",
        dest="steam_audio",
        action="store_true",
        help="encode audio per block on a short slice (streaming audio)",
    )
    p.add_argument(
        "--mean_memory", action="store_true", help="compress memory with a mean instead of the learned conv"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=42,
        help="seed of the sampling noise: the same seed, inputs and flags give the same video",
    )
    p.add_argument(
        "--output_dir", default=".", help="where the <image>_<audio>.mp4 files go (created if missing)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace output files that already exist (otherwise the run refuses to start)",
    )
    p.add_argument(
        "--config",
        default=None,
        help=f"preset name ({', '.join(preset_names())}) or preset JSON file whose 'memory' "
        "and 'sampler' sections set the KV-memory layout and the schedule (default: the "
        "checkpoint config.json's sections, else the defaults); the DiT's geometry comes "
        "from --ckpt_dir",
    )
    p.add_argument(
        "--device",
        default=None,
        help="cuda, cuda:1, cpu ... (default: cuda:LOCAL_RANK if CUDA is available, else cpu)",
    )
    p.add_argument(
        "--dtype",
        default=None,
        choices=["bfloat16", "float16", "float32"],
        help="model dtype (default: bfloat16 on GPU, float32 on CPU)",
    )
    p.add_argument(
        "--max_blocks",
        type=int,
        default=None,
        help="generate at most this many blocks per clip (default: enough to cover the audio)",
    )
    p.add_argument(
        "--vae_stitch",
        default="continuous",
        choices=["continuous", "reference"],
        help="continuous causal decode across blocks, or the reference's overlap-and-crop",
    )
    p.add_argument(
        "--offload_t5",
        action="store_true",
        help="keep umT5 in host memory; it visits the GPU only to encode prompts",
    )
    p.add_argument(
        "--no_memory_check",
        action="store_true",
        help="skip the GPU memory plan that refuses runs that would not fit",
    )
    p.add_argument(
        "--downmix",
        action="store_true",
        help="listen to the mean of the audio's channels instead of channel 0 (the authors' choice); "
        "for files whose speech is not in channel 0 (right-only stereo, 5.1 with speech in the centre)",
    )
    add_compile_flag(p)
    return p


def parse_args(argv: list[str] | None = None) -> GenerateArgs:
    """Parse ``argv`` into ``GenerateArgs``."""
    ns = build_parser().parse_args(argv)
    return GenerateArgs(**{f.name: getattr(ns, f.name) for f in fields(GenerateArgs)})


def load_requests(path: str | Path) -> list:
    """Read and validate the input JSON; relative paths resolve against the JSON's folder.

    Returns:
        ``liveact.pipeline.Request`` per entry.
    """
    from liveact.pipeline import Request

    path = Path(path)
    if path.is_dir():
        raise UserError(f"--input_json {path} is a folder; give the JSON file (e.g. examples/example.json)")
    if not path.is_file():
        raise UserError(f"--input_json {path} not found")
    try:
        entries = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise UserError(f"--input_json {path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise UserError(f"--input_json {path} is nested too deeply to be a list of jobs") from None
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
            if file.is_dir():
                raise UserError(f"{where}: {key} {file} is a folder; give the path of a file")
            if not file.is_file():
                raise UserError(f"{where}: {key} file not found: {file}")
            files[key] = file
        edits_raw = entry.get("edit_prompt", {}) or {}
        if not isinstance(edits_raw, dict):
            raise UserError(f'{where}: edit_prompt must be an object mapping "[a, b]" to a prompt')
        edits = []
        for key, text in edits_raw.items():
            if not isinstance(text, str) or not text.strip():
                raise UserError(f"{where}: edit_prompt {key!r} must map to a non-empty prompt")
            edits.append((parse_edit_range(key, where), text))
        requests.append(
            Request(image=files["cond_image"], audio=files["cond_audio"], prompt=entry["prompt"], edits=edits)
        )
    return requests


def check_media(request, where: str, min_seconds: float, downmix: bool = False) -> None:
    """Open the image and audio of a request up front, so bad files fail before any model loads."""
    from PIL import Image

    from liveact.components.audio import load_audio

    try:
        with Image.open(request.image) as img:
            img.verify()
    except Exception as exc:
        raise UserError(f"{where}: cond_image {request.image} is not a readable image ({exc})") from None
    try:
        # Silence is judged below with a level threshold; load_audio's check would only catch exact zeros.
        waveform, sample_rate = load_audio(request.audio, allow_silent=True)
    except ValueError as exc:
        first_line = str(exc).splitlines()[0]
        if "unreadable" in first_line:
            reason = "not a readable audio file"
        else:
            # load_audio names the file itself ("audio file X holds no samples"); say it once.
            reason = re.sub(rf"^audio file {re.escape(str(request.audio))}\s*", "", first_line)
        raise UserError(f"{where}: cond_audio {request.audio}: {reason}") from None
    seconds = waveform.shape[-1] / sample_rate
    if seconds < min_seconds:
        raise UserError(
            f"{where}: cond_audio {request.audio} is {seconds:.2f} s long; at least "
            f"{min_seconds:.2f} s (the first block of video) is needed"
        )
    if float(waveform.abs().amax()) < SILENCE_PEAK:
        raise UserError(
            f"{where}: cond_audio {request.audio} is silent (peak below -80 dBFS); "
            "the avatar needs speech to lip-sync to"
        )
    channel0 = float(waveform[0].abs().amax())
    if not downmix and waveform.shape[0] > 1 and channel0 < SILENCE_PEAK:
        raise UserError(
            f"{where}: cond_audio {request.audio}: channel 0 is silent but another channel holds the "
            "speech (the model listens to channel 0, as the authors' code does); pass --downmix to use "
            "the mean of all channels"
        )


def output_path(output_dir: str | Path, request) -> Path:
    """``<output_dir>/<image stem>_<audio stem>.mp4`` as the reference names it."""
    return Path(output_dir) / f"{Path(request.image).stem}_{Path(request.audio).stem}.mp4"


def output_paths(output_dir: str | Path, requests: list) -> list[Path]:
    """One distinct output path per entry: the reference's name, ``_<entry index>`` added where names collide.

    Two entries with the same image and audio (say, different prompts) would otherwise write the same
    file and the second would replace the first.
    """
    names = [output_path(output_dir, r).stem for r in requests]
    counts = Counter(names)
    names = [f"{n}_{i}" if counts[n] > 1 else n for i, n in enumerate(names)]
    # A suffixed name can equal another entry's own (image "a" + audio "b_1" is also "a_b_1").
    while len(set(names)) < len(names):
        counts = Counter(names)
        names = [f"{n}_{i}" if counts[n] > 1 else n for i, n in enumerate(names)]
    paths = [Path(output_dir) / f"{n}.mp4" for n in names]
    for plain, path in zip((output_path(output_dir, r) for r in requests), paths):
        if plain != path:
            logger.warning("several entries would write %s: this one writes %s", plain.name, path.name)
    return paths


def check_writable(folder: Path) -> None:
    """Create ``folder`` and write a file in it now, so an unwritable output is found before any model
    loads (a path under a file, a read-only filesystem, no permission)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".liveact-write-test-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(
            f"--output_dir {folder} cannot be written ({reason}); choose another folder"
        ) from None


def check_outputs(paths: list[Path], overwrite: bool) -> None:
    """Refuse to start when an output exists (no lost work) unless ``overwrite``; check the folder."""
    folder = paths[0].parent if paths else Path(".")
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--output_dir {folder} is a file, not a folder")
    for path in paths:
        if path.is_dir():
            raise UserError(f"output {path} is a folder; remove it or choose another --output_dir")
    check_writable(folder)
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise UserError(
            f"{', '.join(existing)} already {'exists' if len(existing) == 1 else 'exist'}; "
            "pass --overwrite to replace, or choose "
            "another --output_dir"
        )


def plural(count: int, noun: str) -> str:
    """``1 block``, ``3 blocks``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


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
        return (
            f"{plural(self.frames, 'frame')} ({seconds:.2f} s of video, {plural(self.blocks, 'block')}) "
            f"in {self.wall:.2f} s: {speed:.2f} FPS, first block {self.first_block:.2f} s, real-time "
            f"factor {seconds / self.wall if self.wall else 0.0:.3f}, peak memory {peak / 2**30:.2f} GiB"
        )


class OutputLocks:
    """Exclusive locks on this run's output files, so that a second run into the same file refuses
    before it loads anything instead of corrupting it (the existence check alone is not atomic).

    Each output ``NAME.mp4`` gets a sidecar ``.NAME.mp4.lock`` holding an ``flock`` and the owner's pid;
    the kernel drops the lock when the process ends, however it ends. A clean exit removes the files.
    """

    def __init__(self, paths: list[Path]) -> None:
        self._held: list[tuple[Path, int]] = []
        try:
            for path in paths:
                self._held.append(self._acquire(path))
        except BaseException:
            self.release()
            raise

    @staticmethod
    def _acquire(path: Path) -> tuple[Path, int]:
        lock = path.with_name(f".{path.name}.lock")
        while True:
            fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise UserError(
                    f"{path} is being written by another run (pid {owner}); wait for it to finish or "
                    "choose another --output_dir"
                ) from None
            # Its last holder may have removed the file between our open and our lock: lock the new one.
            try:
                if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        return lock, fd

    def release(self) -> None:
        """Remove the lock files and drop the locks (idempotent)."""
        for lock, fd in self._held:
            with contextlib.suppress(OSError):
                lock.unlink()
            os.close(fd)
        self._held = []


@dataclass
class RunState:
    """What the run has done so far, so that an interruption is reported truthfully."""

    fps: float = 24.0
    is_main: bool = True
    stage: str = "checking the inputs"
    finished: list[Path] = field(default_factory=list)
    current: Path | None = None
    current_frames: int = 0
    current_existed: bool = False

    def interrupted_message(self) -> str:
        """One line saying what is on disk after Ctrl-C."""
        if not self.is_main:
            return "interrupted"
        done = f"; finished before: {', '.join(map(str, self.finished))}" if self.finished else ""
        if self.current is None:
            return f"interrupted while {self.stage}: no new video was written{done}"
        if self.current_frames == 0:
            kept = " (the existing file is unchanged)" if self.current_existed else ""
            return (
                f"interrupted before the first block of {self.current} was finished: that file was not "
                f"written{kept}{done}"
            )
        return (
            f"interrupted: {self.current} holds the first {plural(self.current_frames, 'frame')} "
            f"({self.current_frames / self.fps:.2f} s) and plays{done}"
        )


class TqdmLoggingHandler(logging.StreamHandler):
    """Writes log records through ``tqdm.write``, so they never land on a progress bar's line."""

    def emit(self, record: logging.LogRecord) -> None:
        """Format and write one record above any active bar."""
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def generate_clip(
    pipe,
    request,
    args: GenerateArgs,
    path: Path,
    is_main: bool,
    state: RunState | None = None,
) -> ClipStats:
    """Generate one clip, writing frames to ``path`` as each block is decoded.

    Progress goes to stderr: one line per preparation stage, then a bar per block on a terminal, or
    one line per block when stderr is not one (logs, CI). ``--dura_print`` lines go to stdout.
    """
    import torch
    from tqdm import tqdm

    from liveact.pipeline import PREPARE_STAGE_TEXT, PREPARE_STAGES
    from liveact.speed.hostwork import BackgroundWriter
    from liveact.video import ProgressiveVideoWriter

    fps = pipe.fps
    state = state or RunState(fps=fps, is_main=is_main)
    stats = ClipStats()
    start = time.perf_counter()

    def report(stage: str) -> None:
        state.stage = f"preparing {path.name} ({PREPARE_STAGE_TEXT[stage]})"
        if is_main:
            logger.info(
                "%s: preparing %d/%d: %s",
                path.name,
                PREPARE_STAGES.index(stage) + 1,
                len(PREPARE_STAGES),
                PREPARE_STAGE_TEXT[stage],
            )

    clip = pipe.prepare(request, progress=report)
    blocks = clip.num_blocks if args.max_blocks is None else min(clip.num_blocks, args.max_blocks)
    state.stage = f"generating {path.name}"
    state.current, state.current_frames, state.current_existed = (path if is_main else None), 0, path.exists()
    # Frames leave the GPU and reach ffmpeg on a thread: the next block starts at once.
    writer = (
        BackgroundWriter(
            ProgressiveVideoWriter(
                path, fps=fps, width=pipe.size[0], height=pipe.size[1], audio=request.audio
            )
        )
        if is_main
        else None
    )
    interactive = sys.stderr.isatty()
    bar = tqdm(total=blocks, desc=path.name, unit="block", disable=not is_main or not interactive)
    try:
        last = time.perf_counter()
        # On a CPU the autoencoder decodes block k on a second core while the DiT makes block k + 1.
        ahead = pipe.device.type == "cpu"
        for k, frames in enumerate(
            pipe.stream(clip, seed=args.seed, max_blocks=blocks, decode=is_main, decode_ahead=ahead)
        ):
            if writer is not None:
                writer.write(frames)
                state.current_frames = writer.frames_written
            now = time.perf_counter()
            if k == 0:
                stats.first_block = now - start
            stats.blocks, stats.frames = k + 1, stats.frames + pipe.frames_of_block(k)
            if is_main and pipe.device.type == "cuda" and args.dura_print:
                torch.cuda.synchronize(pipe.device)
                now = time.perf_counter()
            block_frames = pipe.frames_of_block(k)
            if args.dura_print and is_main:
                # A block reported done is in the encoder (it survives a kill of this process).
                writer.flush()
                if pipe.device.type == "cuda":
                    torch.cuda.synchronize(pipe.device)
                    now = time.perf_counter()
                tqdm.write(
                    f"Done Block {k}: duration {block_frames / fps * 1000:.0f}ms video cost "
                    f"{(now - last) * 1000:.0f}ms",
                    file=sys.stdout,
                )
                sys.stdout.flush()
            if is_main and not interactive:
                logger.info(
                    "%s: block %d/%d done, %d frames (%.2f s of video) in %.2f s",
                    path.name,
                    k + 1,
                    blocks,
                    block_frames,
                    block_frames / fps,
                    now - last,
                )
            last = now
            bar.update(1)
    finally:
        bar.close()
        stats.wall = time.perf_counter() - start
        stats.frames = min(stats.frames, clip.num_frames)
        if writer is not None:
            writer.close()
            state.current_frames = writer.frames_written
            stats.frames = writer.frames_written
    if is_main:
        state.finished.append(path)
    state.current = None
    return stats


def main(argv: list[str] | None = None) -> int:
    """Run ``generate.py``; returns the exit status."""
    logging.basicConfig(
        level=os.environ.get("LIVEACT_LOG", "INFO"),
        handlers=[TqdmLoggingHandler()],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    state = RunState()
    try:
        args = parse_args(argv)
        return run(args, state)
    except KeyboardInterrupt:
        print(state.interrupted_message(), file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError) as exc:  # UserError and AssetError are ValueErrors
        logger.debug("user error", exc_info=True)
        print("error: " + one_line(exc), file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as exc:
        from liveact.video import FFmpegError

        if not isinstance(exc, (OSError, FFmpegError)):
            raise
        # Writing failed (disk full, the folder went away, ffmpeg died): one line, and what is on disk.
        logger.debug("write error", exc_info=True)
        print(
            f"error: writing the video failed: {one_line(exc)}; {state.interrupted_message()}",
            file=sys.stderr,
        )
        return 2


def one_line(exc: BaseException) -> str:
    """An error message on one line; an ``AssetError`` about a folder argument names the flag."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = ""
    for line in lines:
        # "2 asset file(s) missing:" + one file per line -> "...missing: a; b"
        text += line if not text else (" " if text.endswith(":") else "; ") + line
    from liveact.loading import AssetError

    if isinstance(exc, AssetError):
        # The library names its arguments; here they are flags. Paths (a/ckpt_dir/x) stay as they are.
        text = re.sub(r"(?<![-\w/.])(ckpt_dir|wav2vec_dir)(?![\w/.])", r"--\1", text)
        if exc.argument and not text.startswith(f"--{exc.argument}"):
            text = f"--{exc.argument}: {text}"
    return text


def run(args: GenerateArgs, state: RunState | None = None) -> int:
    """Validate everything cheap first (flags, input JSON, media, outputs), then load and generate."""
    # Said before torch loads (a second or more), so the command shows it is alive at once.
    model = args.ckpt_dir or "the embedded LiveAct-Nano"
    logger.info("checking %s, then loading %s", args.input_json or "--input_json", model)
    from liveact import runtime
    from liveact.sampler import block_span

    state = state or RunState()
    if args.max_blocks is not None and args.max_blocks < 1:
        raise UserError(f"--max_blocks must be >= 1, got {args.max_blocks}")
    if not 0 <= args.seed < 2**63:
        raise UserError(f"--seed must be between 0 and 2**63 - 1, got {args.seed}")
    flags = runtime.flags_from(args)
    spec = runtime.resolve(flags, official_size=OFFICIAL_SIZE, official_fps=OFFICIAL_FPS)
    state.fps = spec.fps
    requests = load_requests(args.input_json)
    stride = spec.sampler.vae_stride[0]
    first_block_seconds = block_span(0, spec.memory, stride).video_frames(stride) / spec.fps
    for i, request in enumerate(requests):
        check_media(request, f"{Path(args.input_json).name} entry {i}", first_block_seconds, args.downmix)
    paths = output_paths(args.output_dir, requests)
    check_outputs(paths, args.overwrite)
    dist_info = runtime.init_distributed(flags)
    is_main = state.is_main = dist_info is None or dist_info.is_main
    pipe = None
    locks = None
    try:
        if is_main:  # only rank 0 writes
            locks = OutputLocks(paths)
        # Everything after the process group exists runs inside the try: errors still tear it down.
        spec = runtime.attach_distributed(spec, dist_info, flags.device)
        runtime.check(spec)
        state.stage = "loading the models"
        runtime.cpu_threads_for_generation(spec.device)
        pipe = runtime.build(spec)
        for request, path in zip(requests, paths):
            stats = generate_clip(pipe, request, args, path, is_main, state)
            if is_main:
                logger.info("%s: %s", path, stats.summary(spec.fps, runtime.peak_memory_bytes(spec.device)))
        if is_main:
            logger.info("done: %s written: %s", plural(len(paths), "file"), ", ".join(map(str, paths)))
    finally:
        if locks is not None:
            locks.release()
        if dist_info is not None:
            import gc

            import torch.distributed as dist

            # The sequence-parallel model sits in a reference cycle that holds the process group. Free
            # it now, so destroy_process_group() really ends the group and joins its threads: a gloo
            # thread still running at interpreter exit can abort the process (tests/test_parallel.py).
            pipe = None
            gc.collect()
            dist.destroy_process_group()
    return 0
