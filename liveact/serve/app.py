"""HTTP and WebSocket API of the demo (FastAPI), plus the static page.

- ``GET /``: the studio page (``static/index.html``; works offline);
- ``GET /api/health``: ``{"status", "model", "busy", "running", "queued", "queue_size"}``;
- ``POST /api/jobs``: multipart ``image`` file, ``audio`` file (or ``live=1``), ``prompt``,
  ``edits``, ``fps``, ``size``, ``seed``, ``sample_rate`` (live) -> 201 ``{"id", ...}``;
- ``GET /api/jobs/{id}``: ``status``, ``blocks_done``, ``blocks_total``, ``error``, queue place, speeds;
- ``GET /api/jobs/{id}/video``: the mp4 once finished (409 before);
- ``DELETE /api/jobs/{id}``: cancel (queued or running);
- ``WS /api/jobs/{id}/stream``: a JSON ``init`` (``mime``), fragmented-mp4 bytes, a JSON ``end``;
- ``WS /api/jobs/{id}/audio``: live jobs' PCM in (mono at ``sample_rate``, ``?format=f32le|s16le``),
  text ``end`` when the speech is over.

Errors are JSON ``{"error": ...}`` with 400 (bad field), 404 (unknown id), 409 (not ready), 413 (too
large), 415 (wrong type) or 429 (busy, with the reason).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from liveact.serve.engine import ID_HEX, Busy, Engine, Job, JobSpec
from liveact.serve.uploads import (
    UploadError,
    bool_field,
    check_audio,
    check_image,
    edits_field,
    int_field,
    parse_upload,
    size_field,
    text_field,
)

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
_ID_RE = re.compile(rf"[0-9a-f]{{{ID_HEX}}}")
DEFAULT_PROMPT = "A person is speaking naturally to the camera."


@dataclass(frozen=True)
class ServeOptions:
    """Limits and defaults of the API (from the command line)."""

    data_dir: Path
    size: tuple[int, int]
    fps: int = 24
    seed: int = 42
    max_image_mb: int = 10
    max_audio_mb: int = 50
    max_audio_seconds: float = 600.0
    min_audio_seconds: float = 0.5
    max_decoded_mb: int = 256  # rate x channels x seconds x 4 bytes of an upload's audio
    # Host names (besides IP addresses and localhost) a client may reach the server by: names behind
    # a proxy. Anything else is refused before routing (DNS rebinding).
    host_names: tuple[str, ...] = ()


def error(status: int, message: str) -> JSONResponse:
    """The API's error shape."""
    return JSONResponse({"error": message}, status_code=status)


def create_app(engine: Engine, options: ServeOptions) -> FastAPI:
    """The FastAPI app serving ``engine`` (jobs live under ``options.data_dir/jobs``)."""
    app = FastAPI(
        title="LiveAct demo",
        version="1",
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
        redoc_url=None,
    )
    jobs_dir = (options.data_dir / "jobs").resolve()
    jobs_dir.mkdir(parents=True, exist_ok=True)
    app.add_middleware(KnownHostOnly, names=options.host_names)

    @app.middleware("http")
    async def same_origin_only(request: Request, call_next: Any) -> Any:
        # A page on another site may not drive this server through the visitor's browser (a form
        # POST needs no CORS preflight): browsers send Origin on such requests; tools send none.
        if request.method not in ("GET", "HEAD", "OPTIONS") and not _same_origin(request.headers):
            return error(403, "cross-origin request refused")
        return await call_next(request)

    def find(job_id: str) -> Job | None:
        # Only ids we made can match: anything else (dots, slashes, encoded paths) is unknown.
        return engine.jobs.get(job_id) if _ID_RE.fullmatch(job_id) else None

    @app.exception_handler(404)
    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return error(404, "not found")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/health")
    async def health() -> dict[str, Any]:
        """Server state: model name, whether a job runs, how many wait, and the job defaults."""
        width, height = options.size
        return {**engine.health(), "fps": options.fps, "size": f"{width}*{height}"}

    @app.post("/api/jobs", status_code=201, responses={400: {}, 413: {}, 415: {}, 429: {}})
    async def create_job(request: Request) -> JSONResponse:
        """Start a job from an uploaded portrait and audio (or ``live=1``: audio over WebSocket)."""
        if engine.health()["queued"] + engine.busy > engine.queue_size:
            return error(
                429,
                str(
                    Busy(
                        f"busy: job {engine.health()['running']} is running; "
                        f"queue size {engine.queue_size}; try again when it ends"
                    )
                ),
            )
        length = request.headers.get("content-length")
        budget = (options.max_image_mb + options.max_audio_mb) * 2**20 + 2**20
        if length is not None and length.isdigit() and int(length) > budget:
            return error(413, f"request body larger than {budget // 2**20} MiB")
        from liveact.serve.engine import new_id

        job_id = new_id()
        folder = jobs_dir / job_id
        folder.mkdir()
        try:
            limits = {"image": options.max_image_mb * 2**20, "audio": options.max_audio_mb * 2**20}
            upload = await parse_upload(
                request.headers.get("content-type", ""), request.stream(), folder, limits
            )
            spec = await asyncio.to_thread(_spec_from_upload, upload, folder, options)
            job = engine.submit(spec, job_id)
        except UploadError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            return error(exc.status, exc.message)
        except Busy as exc:
            shutil.rmtree(folder, ignore_errors=True)
            return error(429, str(exc))
        except BaseException:  # the client went away mid-upload, or a bug: leave nothing behind
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return JSONResponse({"id": job.id, **job.public(engine.queue_position(job))}, status_code=201)

    @app.get("/api/jobs/{job_id}", responses={404: {}})
    async def job_status(job_id: str) -> JSONResponse:
        """Status and progress of a job."""
        job = find(job_id)
        if job is None:
            return error(404, "unknown job id")
        return JSONResponse(job.public(engine.queue_position(job)))

    @app.get("/api/jobs/{job_id}/video", responses={404: {}, 409: {}})
    async def job_video(job_id: str) -> Any:
        """The finished mp4 (H.264 + AAC)."""
        job = find(job_id)
        if job is None:
            return error(404, "unknown job id")
        if job.status != "finished" or not job.video_path.is_file():
            return error(409, f"job is {job.status}; the video is there once it has finished")
        return FileResponse(job.video_path, media_type="video/mp4", filename=f"liveact_{job.id[:8]}.mp4")

    @app.delete("/api/jobs/{job_id}", responses={404: {}})
    async def cancel_job(job_id: str) -> JSONResponse:
        """Cancel a queued or running job (a running one stops at the next block)."""
        job = find(job_id)
        if job is None:
            return error(404, "unknown job id")
        if job.status in ("queued", "running"):
            engine.cancel(job)
        return JSONResponse({"id": job.id, "status": job.status if job.status != "running" else "cancelling"})

    @app.websocket("/api/jobs/{job_id}/stream")
    async def job_stream(ws: WebSocket, job_id: str) -> None:
        """Live fragmented mp4 of a job, from its first byte."""
        if not _same_origin(ws.headers):
            await ws.close(code=4403, reason="cross-origin request refused")
            return
        job = find(job_id)
        await ws.accept()
        if job is None:
            await ws.close(code=4404, reason="unknown job id")
            return
        engine.viewer(job, joined=True)
        try:
            stream = await asyncio.to_thread(_wait_stream, job)
            if stream is None:
                await ws.send_json({"type": "end", "status": job.status, "error": job.error})
                return
            await ws.send_json(
                {
                    "type": "init",
                    "mime": stream.mime,
                    "fps": job.spec.fps,
                    "width": job.spec.size[0],
                    "height": job.spec.size[1],
                }
            )
            closed = asyncio.ensure_future(_until_closed(ws))
            async for chunk in stream.follow():
                if closed.done():
                    return
                await ws.send_bytes(chunk)
            while job.ended is None and not closed.done():  # the job's status changes right after EOF
                await asyncio.sleep(0.05)
            closed.cancel()
            await ws.send_json({"type": "end", "status": job.status, "error": job.error})
            await ws.close()
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            engine.viewer(job, joined=False)

    @app.websocket("/api/jobs/{job_id}/audio")
    async def job_audio(ws: WebSocket, job_id: str) -> None:
        """Live speech in: binary little-endian PCM chunks; a text ``end`` (or closing) ends the speech."""
        if not _same_origin(ws.headers):
            await ws.close(code=4403, reason="cross-origin request refused")
            return
        job = find(job_id)
        await ws.accept()
        if job is None or job.live is None:
            await ws.close(code=4404, reason="unknown live job id")
            return
        fmt = ws.query_params.get("format", "f32le")
        if fmt not in ("f32le", "s16le"):
            await ws.close(code=4400, reason="format must be f32le or s16le")
            # The job can get no speech from this socket: end it now, not after the connect grace.
            engine.cancel(job)
            return
        dtype, scale = ("<f4", 1.0) if fmt == "f32le" else ("<i2", 1 / 32768)
        try:
            while True:
                message = await ws.receive()
                if message.get("type") == "websocket.disconnect":
                    break
                data = message.get("bytes")
                if data is None:
                    if (message.get("text") or "").strip().lower() in (
                        "end",
                        '{"type":"end"}',
                        '{"type": "end"}',
                    ):
                        break
                    continue
                if len(data) % np.dtype(dtype).itemsize:
                    await ws.close(code=4400, reason=f"{fmt} chunks must hold whole samples")
                    break
                job.live.push(np.frombuffer(data, dtype=dtype).astype(np.float32) * scale)
        except (WebSocketDisconnect, ValueError) as exc:
            logger.info("job %s: live audio ended (%s)", job.id, exc)
        finally:
            job.live.finish()

    return app


def host_is_known(host_header: str | None, names: tuple[str, ...] = ()) -> bool:
    """Whether a ``Host`` header names this server: an IP address, ``localhost``, or one of ``names``
    (lower case).

    A DNS-rebinding page reaches a local server under the attacker's own domain name (its Origin then
    matches its Host), never under an IP literal: refusing unknown names is what stops it.
    """
    if not host_header:
        return False
    host = host_header.strip().lower()
    if host.startswith("["):  # [::1]:5001
        host = host[1 : host.find("]")] if "]" in host else ""
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return host == "localhost" or host in names


class KnownHostOnly:
    """ASGI middleware: HTTP and WebSocket requests whose ``Host`` this server does not answer to get
    400 (or a closed socket) before any route runs (see :func:`host_is_known`)."""

    def __init__(self, app: Any, names: tuple[str, ...] = ()) -> None:
        self.app, self.names = app, tuple(n.lower() for n in names)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            if not host_is_known(host, self.names):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 4400, "reason": "unknown Host"})
                    return
                response = error(400, "unknown Host: start the server with --host_name NAME to serve it")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _same_origin(headers: Any) -> bool:
    """True without an Origin header (API clients) or when Origin names this server's Host."""
    origin = headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc.lower() == (headers.get("host") or "").lower()


def _wait_stream(job: Job) -> Any:
    while job.ended is None:
        stream = job.wait_stream(0.5)
        if stream is not None:
            stream.wait_ready(30)
            return stream
    return job.stream


async def _until_closed(ws: WebSocket) -> None:
    """Returns when the viewer closes its socket (viewers send nothing else)."""
    try:
        while (await ws.receive()).get("type") != "websocket.disconnect":
            pass
    except (WebSocketDisconnect, RuntimeError):
        pass


def _spec_from_upload(upload: Any, folder: Path, options: ServeOptions) -> JobSpec:
    """Validate the form (cheap checks first, then decode the files)."""
    live = bool_field(upload, "live")
    prompt = text_field(upload, "prompt", DEFAULT_PROMPT).strip() or DEFAULT_PROMPT
    edits = edits_field(upload)
    fps = int_field(upload, "fps", options.fps, 1, 60)
    seed = int_field(upload, "seed", options.seed, 0, 2**31 - 1)
    size = size_field(upload, options.size, options.size[0] * options.size[1])
    sample_rate = int_field(upload, "sample_rate", 16000, 8000, 48000)
    stop_when_unwatched = bool_field(upload, "stop_when_unwatched")
    downmix = bool_field(upload, "downmix")
    unknown = set(upload.fields) - {
        "downmix",
        "live",
        "prompt",
        "edits",
        "fps",
        "seed",
        "size",
        "sample_rate",
        "stop_when_unwatched",
    }
    if unknown:
        raise UploadError(400, f"unknown field(s): {', '.join(sorted(repr(u[:40]) for u in unknown))}")
    if "image" not in upload.files:
        raise UploadError(400, "missing file field 'image' (the portrait)")
    check_image(upload.files["image"])
    audio = upload.files.get("audio")
    if live and audio is not None:
        raise UploadError(400, "a live job takes its audio over the WebSocket; do not upload 'audio'")
    if not live:
        if audio is None:
            raise UploadError(400, "missing file field 'audio' (or set live=1 to stream it)")
        check_audio(
            audio,
            options.min_audio_seconds,
            options.max_audio_seconds,
            options.max_decoded_mb * 2**20,
            downmix=downmix,
        )
    return JobSpec(
        folder=folder,
        image=upload.files["image"],
        audio=audio,
        prompt=prompt,
        edits=edits,
        fps=fps,
        size=size,
        seed=seed,
        sample_rate=sample_rate,
        stop_when_unwatched=stop_when_unwatched,
        downmix=downmix,
    )


__all__ = ["ServeOptions", "create_app"]
