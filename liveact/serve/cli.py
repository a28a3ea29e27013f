"""``demo.py`` / ``liveact-demo``: load the model once, warm it up, serve the studio and the API.

The authors' demo flags (``--ckpt_dir``, ``--wav2vec_dir``, ``--t5_cpu``, ``--port``, ``--seed``,
``--size``, ``--video_save_path``, ``--fp8_kv_cache``, ``--block_offload``) plus ``--host`` (default
127.0.0.1: a LAN address must be asked for), ``--data_dir`` (every upload and output lives under it),
``--fps``, ``--queue_size``, upload limits, ``--device``/``--dtype`` and ``--fp8_gemm``.

Under ``torchrun`` every rank loads the model; rank 0 serves HTTP and the others follow its jobs
(``liveact.serve.engine.follow``) over a gloo control group.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("liveact.serve")

OFFICIAL_SIZE, OFFICIAL_FPS = (720, 416), 24  # the authors' demo defaults, for folders that name none


@dataclass(frozen=True)
class DemoArgs:
    """Typed ``demo.py`` arguments."""

    ckpt_dir: str | None = None
    wav2vec_dir: str | None = None
    t5_cpu: bool = False
    host: str = "127.0.0.1"
    port: int = 5001
    seed: int = 42
    size: str | None = None
    fps: int | None = None
    video_save_path: str | None = None
    data_dir: str = "liveact_data"
    fp8_kv_cache: bool = False
    fp8_gemm: bool = False
    block_offload: bool = False
    device: str | None = None
    dtype: str | None = None
    queue_size: int = 0
    max_image_mb: int = 10
    max_audio_mb: int = 50
    max_audio_seconds: float = 600.0
    max_decoded_mb: int = 256
    warmup_blocks: int = 2
    edit_cfg: float | None = None
    compile: str = "off"
    host_name: tuple[str, ...] = ()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (the authors' flags first, then ours)."""
    from liveact.userinput import DefaultsHelpFormatter, add_compile_flag

    p = argparse.ArgumentParser(
        prog="demo.py",
        description="LiveAct web studio and HTTP API.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("--ckpt_dir", default=None, help="LiveAct checkpoint folder (default: the embedded model)")
    p.add_argument("--wav2vec_dir", default=None, help="transformers wav2vec2 folder (chinese-wav2vec2-base)")
    p.add_argument("--t5_cpu", action="store_true", help="run the umT5 text encoder on the CPU")
    p.add_argument("--port", type=int, default=5001, help="HTTP port (0: any free port)")
    p.add_argument("--seed", type=int, default=42, help="default seed of a job")
    p.add_argument(
        "--size",
        default=None,
        help="default WIDTH*HEIGHT of a job, jobs may ask for at most its area (default: the model's "
        "own size; 720*416 for the official folders, as the authors' demo)",
    )
    p.add_argument("--video_save_path", default=None, help="also copy every finished mp4 here as <id>.mp4")
    p.add_argument("--fp8_kv_cache", action="store_true", help="store the KV memory in FP8 (e4m3)")
    p.add_argument(
        "--block_offload", action="store_true", help="keep DiT blocks in host memory, prefetch to the GPU"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 serves the LAN")
    p.add_argument(
        "--host_name",
        action="append",
        default=[],
        help="a host name clients reach the server by, besides IP addresses and localhost (repeatable; "
        "e.g. the name a reverse proxy serves). Requests for any other name are refused (DNS rebinding)",
    )
    p.add_argument("--data_dir", default="liveact_data", help="folder for uploads and outputs (one per job)")
    p.add_argument(
        "--fps", type=int, default=None, help="default frame rate of a job (default: the model's, or 24)"
    )
    p.add_argument(
        "--fp8_gemm",
        action="store_true",
        help="FP8 matmuls for the DiT (CUDA sm89+; always on in the authors' demo)",
    )
    p.add_argument(
        "--device", default=None, help="cuda, cuda:1, cpu ... (default: cuda:LOCAL_RANK if available)"
    )
    p.add_argument(
        "--dtype",
        default=None,
        choices=["bfloat16", "float16", "float32"],
        help="model dtype (default bfloat16 on GPU, float32 on CPU)",
    )
    p.add_argument(
        "--edit_cfg",
        type=float,
        default=None,
        help="edit guidance scale for jobs with timed edits (> 1 enables it; default: the model's own)",
    )
    p.add_argument("--queue_size", type=int, default=0, help="jobs that may wait behind the running one")
    p.add_argument("--max_image_mb", type=int, default=10, help="upload limit of the portrait")
    p.add_argument("--max_audio_mb", type=int, default=50, help="upload limit of the audio file")
    p.add_argument("--max_audio_seconds", type=float, default=600.0, help="longest audio a job may have")
    p.add_argument(
        "--max_decoded_mb",
        type=int,
        default=256,
        help="largest decoded audio of an upload (rate x channels x seconds x 4 bytes, from its header)",
    )
    p.add_argument(
        "--warmup_blocks", type=int, default=2, help="blocks generated at start-up (0: no warm-up)"
    )
    add_compile_flag(p)
    return p


def parse_args(argv: list[str] | None = None) -> DemoArgs:
    """Parse ``argv`` into ``DemoArgs``."""
    ns = build_parser().parse_args(argv)
    values = {f.name: getattr(ns, f.name) for f in fields(DemoArgs)}
    return DemoArgs(**{**values, "host_name": tuple(values["host_name"])})


def load_pipeline(args: DemoArgs, dist_info: Any = None) -> tuple[Any, str]:
    """The demo's model, assembled by ``liveact.runtime`` as ``generate.py``'s is (the embedded model
    when no ``--ckpt_dir`` is given). Returns ``(pipeline, model name)``."""
    from liveact import runtime

    flags = runtime.flags_from(args)
    spec = runtime.resolve(flags, official_size=OFFICIAL_SIZE, official_fps=OFFICIAL_FPS)
    spec = runtime.attach_distributed(spec, dist_info, flags.device)
    runtime.check(spec)
    name = Path(args.ckpt_dir).name if args.ckpt_dir else "default"
    return runtime.build(spec), name


def warm_up(pipe: Any, blocks: int, seed: int) -> float:
    """Generate ``blocks`` blocks from a random portrait and noise audio (compiles kernels, allocates
    the memory); returns the seconds it took."""
    from PIL import Image

    from liveact.live import LiveAudio, prepare_live, stream_live

    if blocks <= 0:
        return 0.0
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (pipe.size[1], pipe.size[0], 3), dtype=np.uint8))
    live = LiveAudio(16000)
    live.push((0.1 * rng.standard_normal(16000 * 6)).astype(np.float32))
    live.finish()
    clip = prepare_live(pipe, image, "A person is speaking naturally.", live)
    for _ in stream_live(pipe, clip, live, seed=seed, max_blocks=blocks):
        pass
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """Run the demo server; returns the exit status."""
    logging.basicConfig(
        level=os.environ.get("LIVEACT_LOG", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        args = parse_args(argv)
        return run(args)
    except KeyboardInterrupt:
        return 130
    except (FileNotFoundError, ValueError) as exc:  # UserError and AssetError are ValueErrors
        logger.debug("user error", exc_info=True)
        print(
            "error: " + "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()),
            file=sys.stderr,
        )
        return 2


def run(args: DemoArgs) -> int:
    """Validate, load, warm up, then serve (rank 0) or follow (other ranks)."""
    from liveact import runtime
    from liveact.userinput import UserError, parse_size

    if args.size is not None:
        parse_size(args.size)
    if args.fps is not None and not 1 <= args.fps <= 60:
        raise UserError(f"--fps must be between 1 and 60, got {args.fps}")
    if args.queue_size < 0:
        raise UserError(f"--queue_size must be >= 0, got {args.queue_size}")
    data_dir = Path(args.data_dir).expanduser().resolve()
    save_dir = Path(args.video_save_path).expanduser().resolve() if args.video_save_path else None
    dist_info = runtime.init_distributed(runtime.flags_from(args))
    try:
        # Everything after the process group exists runs inside the try: errors still tear it down.
        pipe, model_name = load_pipeline(args, dist_info)
        group = None
        if dist_info is not None:
            import torch.distributed as dist

            group = dist.new_group(backend="gloo")  # control messages travel on the CPU
        seconds = warm_up(pipe, args.warmup_blocks, args.seed)
        logger.info(
            "model %s loaded and warmed up (%d blocks in %.1f s) on %s",
            model_name,
            args.warmup_blocks,
            seconds,
            pipe.device,
        )
        if dist_info is not None and not dist_info.is_main:
            from liveact.serve.engine import follow

            follow(pipe, group)
            return 0
        serve(pipe, model_name, args, tuple(pipe.size), data_dir, save_dir, group)
    finally:
        if dist_info is not None:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0


def serve(
    pipe: Any,
    model_name: str,
    args: DemoArgs,
    size: tuple[int, int],
    data_dir: Path,
    save_dir: Path | None,
    group: Any,
) -> None:
    """Run uvicorn on rank 0 until interrupted."""
    import uvicorn

    from liveact.serve.app import ServeOptions, create_app
    from liveact.serve.engine import DistControl, Engine

    data_dir.mkdir(parents=True, exist_ok=True)
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)

    def on_finished(job: Any) -> None:
        # --video_save_path: the authors' <task id>.mp4 beside the job folder's copy.
        if save_dir is not None:
            shutil.copyfile(job.video_path, save_dir / f"{job.id}.mp4")

    engine = Engine(
        pipe,
        model_name,
        queue_size=args.queue_size,
        control=DistControl(group) if group is not None else None,
        on_finished=on_finished,
    )
    options = ServeOptions(
        data_dir=data_dir,
        size=size,
        fps=args.fps or round(pipe.fps),
        seed=args.seed,
        max_image_mb=args.max_image_mb,
        max_audio_mb=args.max_audio_mb,
        max_audio_seconds=args.max_audio_seconds,
        max_decoded_mb=args.max_decoded_mb,
        host_names=args.host_name,
    )
    app = create_app(engine, options)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", ws_max_size=1 << 20)
    server = uvicorn.Server(config)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("serving on %s: anyone who can reach this address can use the model", args.host)

    def announce() -> None:
        while not server.started:
            time.sleep(0.05)
        for sock in server.servers[0].sockets if server.servers else []:
            host, port = sock.getsockname()[:2]
            print(f"LiveAct demo on http://{host}:{port}/  (API docs: /api/docs)", flush=True)

    threading.Thread(target=announce, daemon=True).start()
    try:
        server.run()
    finally:
        engine.close()


__all__ = ["DemoArgs", "build_parser", "load_pipeline", "main", "parse_args", "run", "warm_up"]
