"""The demo's generation engine: one job at a time on a loaded pipeline, with a visible queue.

A job is either an *upload* job (an image and an audio file) or a *live* job (an image; speech arrives
over a WebSocket into a ``LiveAudio``). The worker thread runs the queued jobs in order; each job
streams its blocks into a :class:`FragmentedMP4Stream` (the live view and the downloadable mp4).
Under ``torchrun`` the other ranks run :func:`follow` and take part in every job's transformer
passes; rank 0 tells them what to run and, before every block, whether to go on (and for live jobs
the block's audio), so a cancel stops all ranks at the same block.
"""

from __future__ import annotations

import logging
import math
import shutil
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from liveact.components.audio import load_audio, select_channel
from liveact.live import LiveAudio, LiveBlock, prepare_live, sample_of_frame, stream_live
from liveact.pipeline import LiveActPipeline, Request
from liveact.serve.stream import FragmentedMP4Stream

logger = logging.getLogger(__name__)

STATUSES = ("queued", "running", "finished", "failed", "cancelled")
ID_HEX = 32
AUDIO_LEAD = 0.25  # seconds of audio sent to the encoder ahead of the frames (upload jobs)


class Busy(Exception):
    """The queue is full; the message says what runs and how many wait."""


def new_id() -> str:
    """A server-made job id: 32 hex characters (never derived from client input)."""
    return uuid.uuid4().hex


@dataclass
class JobSpec:
    """What a job generates; every path is one the server chose under its data folder."""

    folder: Path
    image: Path
    audio: Path | None  # None: live job
    prompt: str
    edits: list[tuple[tuple[int, int], str]]
    fps: int
    size: tuple[int, int]
    seed: int
    sample_rate: int = 16000  # live jobs: rate of the pushed PCM
    stop_when_unwatched: bool = False
    downmix: bool = False  # listen to the mean of the channels, not channel 0


@dataclass
class Job:
    """A job and its progress (what ``GET /api/jobs/{id}`` shows)."""

    id: str
    spec: JobSpec
    status: str = "queued"
    error: str | None = None
    blocks_done: int = 0
    blocks_total: int | None = None
    frames_done: int = 0
    created: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    first_frame_latency: float | None = None  # job start -> first block encoded, seconds
    speech_latency: list[float] = field(default_factory=list)  # live: audio complete -> block published
    # live: (first frame of a block, wall time its audio sample arrived, wall time the block was published)
    timeline: deque = field(default_factory=lambda: deque(maxlen=64))
    stop: threading.Event = field(default_factory=threading.Event)
    live: LiveAudio | None = None
    stream: FragmentedMP4Stream | None = None
    viewers: int = 0
    unwatched_since: float | None = None
    _stream_ready: threading.Event = field(default_factory=threading.Event)

    @property
    def kind(self) -> str:
        """``upload`` or ``live``."""
        return "live" if self.spec.audio is None else "upload"

    @property
    def video_path(self) -> Path:
        """The job's mp4 (grows while it runs)."""
        return self.spec.folder / "video.mp4"

    def wait_stream(self, timeout: float | None = None) -> FragmentedMP4Stream | None:
        """The job's stream once its first block is being encoded (None if the job ended without one)."""
        self._stream_ready.wait(timeout)
        return self.stream

    def public(self, queue_position: int | None) -> dict[str, Any]:
        """JSON view of the job."""
        elapsed = (self.ended or time.time()) - self.started if self.started else 0.0
        seconds = self.frames_done / self.spec.fps
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "error": self.error,
            "blocks_done": self.blocks_done,
            "blocks_total": self.blocks_total,
            "frames_done": self.frames_done,
            "queue_position": queue_position,
            "fps": self.spec.fps,
            "size": f"{self.spec.size[0]}*{self.spec.size[1]}",
            "generation_fps": round(self.frames_done / elapsed, 3) if elapsed > 0 else None,
            "real_time_factor": round(seconds / elapsed, 3) if elapsed > 0 else None,
            "first_frame_latency": None
            if self.first_frame_latency is None
            else round(self.first_frame_latency, 3),
            "speech_latency": round(float(np.median(self.speech_latency)), 3)
            if self.speech_latency
            else None,
            "silence_seconds": round(self.live.silence_samples / self.live.sample_rate, 3)
            if self.live
            else None,
            "timeline": [list(t) for t in self.timeline] if self.live else None,
            "created": self.created,
            "started": self.started,
            "ended": self.ended,
            "stream_url": f"/api/jobs/{self.id}/stream",
            "video_url": f"/api/jobs/{self.id}/video" if self.status == "finished" else None,
            "audio_url": f"/api/jobs/{self.id}/audio" if self.kind == "live" else None,
        }


class DistControl:
    """Rank 0's side of the follower protocol (a gloo group): jobs, per-block go/stop, live audio."""

    def __init__(self, group: Any) -> None:
        self.group = group
        self.is_leader = True

    def send(self, message: Any) -> None:
        """Broadcast one picklable message to the followers."""
        import torch.distributed as dist

        dist.broadcast_object_list([message], src=0, group=self.group)

    def exchange(self, go: bool, live: LiveAudio, end: int) -> bool:
        """Per block: tell the followers ``go`` and the live samples they do not have yet."""
        sent = getattr(live, "_sent_to_followers", 0)
        pcm = live.read(sent, end) if go else None
        live._sent_to_followers = end  # type: ignore[attr-defined]
        self.send(("block", go, sent, pcm))
        return go


class _FollowerSync:
    """A follower's side of the per-block exchange."""

    is_leader = False

    def __init__(self, group: Any) -> None:
        self.group = group
        self.saw_done = False

    def receive(self) -> Any:
        import torch.distributed as dist

        box = [None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def exchange(self, go: bool, live: LiveAudio | None, end: int) -> bool:
        message = self.receive()
        if message[0] != "block":
            self.saw_done = True
            return False
        _, go, start, pcm = message
        if go and live is not None and pcm is not None:
            if live.received < start + len(pcm):
                live.push(pcm[max(0, live.received - start) :])
            live.wait_for(end)  # already present: only commits
        return go


class Engine:
    """Runs jobs one at a time on ``pipe`` in a worker thread.

    Args:
        pipe: the loaded pipeline.
        model_name: shown by ``/api/health``.
        queue_size: jobs that may wait behind the running one (0: a second job gets 429).
        control: rank 0's link to the other ranks under torchrun, else None.
        unwatched_grace: seconds a ``stop_when_unwatched`` job runs without a viewer before it stops.
        live_connect_grace: seconds a live job waits for its audio socket before it stops.
        live_grace: seconds a live block waits past the real-time due time of its audio before it
            uses silence (network jitter allowance; see ``LiveAudio``).
        max_jobs: ended jobs kept (status, video); older ones and their folders are deleted.
        on_finished: called with each job that finished (in the worker thread).
    """

    def __init__(
        self,
        pipe: LiveActPipeline,
        model_name: str,
        queue_size: int = 0,
        control: DistControl | None = None,
        unwatched_grace: float = 5.0,
        live_connect_grace: float = 30.0,
        live_grace: float = 0.2,
        max_jobs: int = 100,
        on_finished: Callable[[Job], None] | None = None,
    ) -> None:
        self.pipe = pipe
        self.model_name = model_name
        self.queue_size = queue_size
        self.control = control
        self.unwatched_grace = unwatched_grace
        self.live_connect_grace = live_connect_grace
        self.live_grace = live_grace
        self.max_jobs = max_jobs
        self.on_finished = on_finished
        self.jobs: dict[str, Job] = {}
        self._queue: deque[str] = deque()
        self._running: str | None = None
        self._lock = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="liveact-engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ API side
    @property
    def busy(self) -> bool:
        """A job is running."""
        return self._running is not None

    def health(self) -> dict[str, Any]:
        """``/api/health`` body."""
        with self._lock:
            return {
                "status": "ok",
                "model": self.model_name,
                "busy": self.busy,
                "running": self._running,
                "queued": len(self._queue),
                "queue_size": self.queue_size,
            }

    def submit(self, spec: JobSpec, job_id: str | None = None) -> Job:
        """Queue a job. Raises :class:`Busy` when the queue is full, ``ValueError`` for a size or fps
        the model cannot make (before the job is queued)."""
        self.pipe.check_output(spec.size, spec.fps)
        with self._lock:
            if self._closed:
                raise Busy("the server is shutting down")
            waiting = len(self._queue) + (1 if self._running else 0)
            if waiting > self.queue_size:
                raise Busy(
                    f"busy: job {self._running} is running and {len(self._queue)} job(s) wait "
                    f"(queue size {self.queue_size}); try again when it ends"
                )
            self._forget_old_jobs()
            job = Job(job_id or new_id(), spec)
            if spec.audio is None:
                job.live = LiveAudio(spec.sample_rate, grace=self.live_grace)
            self.jobs[job.id] = job
            self._queue.append(job.id)
            self._lock.notify_all()
        logger.info("job %s queued (%s)", job.id, job.kind)
        return job

    def _forget_old_jobs(self) -> None:
        """Keep at most ``max_jobs`` ended jobs (with their folders): a long-running server stays bounded."""
        ended = sorted((j for j in self.jobs.values() if j.ended is not None), key=lambda j: j.ended or 0.0)
        for job in ended[: max(0, len(ended) - self.max_jobs)]:
            del self.jobs[job.id]
            shutil.rmtree(job.spec.folder, ignore_errors=True)

    def queue_position(self, job: Job) -> int | None:
        """1-based place in the queue, None if not queued."""
        with self._lock:
            return self._queue.index(job.id) + 1 if job.id in self._queue else None

    def cancel(self, job: Job) -> None:
        """Stop a running job at the next block boundary, or drop a queued one."""
        with self._lock:
            if job.id in self._queue:
                self._queue.remove(job.id)
                job.status, job.ended = "cancelled", time.time()
                job._stream_ready.set()
                return
        job.stop.set()
        if job.live is not None:
            job.live.finish()

    def viewer(self, job: Job, joined: bool) -> None:
        """Count stream viewers (``stop_when_unwatched`` jobs stop when the last one leaves)."""
        with self._lock:
            job.viewers += 1 if joined else -1
            job.unwatched_since = None if job.viewers > 0 else time.monotonic()

    def close(self) -> None:
        """Cancel everything and stop the worker (and the followers)."""
        with self._lock:
            self._closed = True
            for job_id in list(self._queue):
                self.cancel(self.jobs[job_id])
            if self._running:
                self.cancel(self.jobs[self._running])
            self._lock.notify_all()
        self._thread.join(timeout=60)
        if self.control is not None:
            self.control.send(("quit",))

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._lock.wait(1.0)
                if self._closed:
                    return
                job = self.jobs[self._queue.popleft()]
                self._running = job.id
            try:
                self._run(job)
            finally:
                with self._lock:
                    self._running = None
                    job._stream_ready.set()
                    self._lock.notify_all()

    def _run(self, job: Job) -> None:
        job.status, job.started = "running", time.time()
        with self._lock:
            if job.viewers == 0:
                job.unwatched_since = time.monotonic()
        logger.info("job %s running", job.id)
        if self.control is not None:
            self.control.send(("job", job.spec))
        try:
            frames = run_job(self.pipe, job, self._watchdog(job), self.control)
            job.status = "cancelled" if job.stop.is_set() else "finished"
            logger.info("job %s %s: %d frames", job.id, job.status, frames)
            if job.status == "finished" and self.on_finished is not None:
                self.on_finished(job)
        except Exception as exc:
            job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
            logger.exception("job %s failed", job.id)
        finally:
            job.ended = time.time()
            if self.control is not None:
                self.control.send(("done",))

    def _watchdog(self, job: Job) -> Callable[[], None]:
        """Called between blocks: stop jobs nobody watches (page closed) or live jobs never connected."""

        def check() -> None:
            now = time.monotonic()
            if (
                job.spec.stop_when_unwatched
                and job.unwatched_since is not None
                and now - job.unwatched_since > self.unwatched_grace
            ):
                logger.info("job %s: no viewer for %.0f s, stopping", job.id, self.unwatched_grace)
                self.cancel(job)
            if (
                job.live is not None
                and job.live.received == 0
                and job.started
                and time.time() - job.started > self.live_connect_grace
            ):
                logger.info("job %s: no live audio within %.0f s, stopping", job.id, self.live_connect_grace)
                self.cancel(job)

        return check


def configure(pipe: LiveActPipeline, spec: JobSpec) -> None:
    """Point the shared pipeline at a job's fps, size (checked by the pipeline's own rule) and channel
    choice; one job runs at a time."""
    pipe.set_output(spec.size, spec.fps)
    pipe.downmix = bool(spec.downmix)


def run_job(
    pipe: LiveActPipeline, job: Job, between_blocks: Callable[[], None], control: DistControl | None = None
) -> int:
    """Generate a job into its stream; returns the frames written.

    Upload jobs stream ``ceil(duration * fps)`` frames with the file's audio; live jobs run until
    their audio ends or they are stopped.
    """
    spec = job.spec
    configure(pipe, spec)
    if job.live is not None:
        clip = prepare_live(pipe, spec.image, spec.prompt, job.live, spec.edits)
        rate = job.live.sample_rate
        blocks = _live_blocks(stream_live(pipe, clip, job.live, seed=spec.seed, stop=job.stop, sync=control))
        pcm_of = None
        total_frames = math.inf
    else:
        assert spec.audio is not None
        clip = pipe.prepare(Request(image=spec.image, audio=spec.audio, prompt=spec.prompt, edits=spec.edits))
        job.blocks_total = clip.num_blocks
        waveform, rate = load_audio(spec.audio)
        pcm_all = select_channel(waveform, spec.downmix)[0].numpy().astype(np.float32)
        total_frames = clip.num_frames
        blocks = _upload_blocks(pipe, clip, spec.seed, job.stop, control)

        def pcm_of(lo: int, hi: int) -> np.ndarray:
            out = np.zeros(hi - lo, np.float32)
            part = pcm_all[lo:hi]
            out[: part.size] = part
            return out

    stream = FragmentedMP4Stream(
        job.video_path, fps=spec.fps, width=spec.size[0], height=spec.size[1], sample_rate=rate
    )
    job.stream = stream
    job._stream_ready.set()
    fed = 0  # samples sent to the encoder
    lead = round(AUDIO_LEAD * rate)
    ok = False
    try:
        for block in blocks:
            frames, first, ready, arrival = block
            if job.live is not None and job.live.finished:
                # The speech has ended: show it to its last sample, not the silence after it.
                total_frames = max(1, math.ceil(job.live.received * spec.fps / job.live.sample_rate - 1e-9))
            count = (
                min(frames.shape[2], int(total_frames - first))
                if math.isfinite(total_frames)
                else frames.shape[2]
            )
            if count <= 0:
                break
            frames = frames[:, :, :count]
            # Audio a little ahead of the frames (see FragmentedMP4Stream.write): from the file for
            # uploads; for live jobs what the block committed (its end plus the window's right half).
            block_end = sample_of_frame(first + count, spec.fps, rate)
            if job.live is not None:
                upto = max(block_end, job.live.committed) if not job.live.finished else block_end
                audio = job.live.read(fed, upto) if upto > fed else np.zeros(0, np.float32)
            else:
                upto = min(block_end + lead, sample_of_frame(int(total_frames), spec.fps, rate))
                audio = pcm_of(fed, upto) if upto > fed else np.zeros(0, np.float32)
            fed = max(fed, upto)
            stream.write(frames, audio)
            job.blocks_done += 1
            job.frames_done = first + count
            if job.first_frame_latency is None:
                job.first_frame_latency = time.time() - (job.started or time.time())
            if ready is not None:
                job.speech_latency.append(time.monotonic() - ready)
                wall = time.time() - time.monotonic()  # monotonic -> wall clock, for browser timestamps
                job.timeline.append(
                    (
                        first,
                        None if arrival is None else round(arrival + wall, 4),
                        round(time.monotonic() + wall, 4),
                    )
                )
            between_blocks()
            if job.stop.is_set() or job.frames_done >= total_frames:
                break
        ok = True
    finally:
        if ok:
            stream.close()
        else:
            stream.abort()
    return job.frames_done


def _upload_blocks(
    pipe: LiveActPipeline, clip: Any, seed: int, stop: threading.Event, control: DistControl | None
):
    """Upload job blocks as ``(frames, first_frame, None, None)``, checking ``stop`` before each."""
    from liveact.sampler import block_span

    generator = pipe.stream(clip, seed=seed)
    try:
        for k in range(clip.num_blocks):
            go = not stop.is_set()
            if control is not None:
                control.send(("block", go, 0, None))
            if not go:
                return
            frames = next(generator)
            first = block_span(k, pipe.sampler.memory_config, pipe.temporal_stride).first_video_frame
            yield frames, first, None, None
    finally:
        generator.close()


def _live_blocks(blocks: Iterator[LiveBlock]) -> Iterator[tuple[torch.Tensor, int, float, float | None]]:
    """Live blocks as ``(frames, first_frame, audio_ready, first_arrival)`` tuples."""
    for b in blocks:
        yield b.frames, b.first_frame, b.audio_ready, b.first_arrival


def follow(pipe: LiveActPipeline, group: Any) -> None:
    """A non-zero rank under torchrun: take part in rank 0's jobs until it quits."""
    sync = _FollowerSync(group)
    while True:
        message = sync.receive()
        if message[0] == "quit":
            return
        if message[0] != "job":
            continue
        spec: JobSpec = message[1]
        sync.saw_done = False
        try:
            configure(pipe, spec)
            if spec.audio is None:
                live = LiveAudio(spec.sample_rate)
                clip = prepare_live(pipe, spec.image, spec.prompt, live, spec.edits)
                for _ in stream_live(pipe, clip, live, seed=spec.seed, sync=sync, decode=False):
                    pass
            else:
                clip = pipe.prepare(
                    Request(image=spec.image, audio=spec.audio, prompt=spec.prompt, edits=spec.edits)
                )
                generator = pipe.stream(clip, seed=spec.seed, decode=False)
                for _ in range(clip.num_blocks):
                    if not sync.exchange(True, None, 0):
                        break
                    next(generator)
                generator.close()
        except Exception:
            logger.exception("follower: job failed")
        while not sync.saw_done:  # rank 0 ends every job with "done", however it ended
            sync.exchange(False, None, 0)
