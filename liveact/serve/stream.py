"""Live fragmented MP4 (H.264 + AAC): one ffmpeg per job, frames and PCM in, fragments out.

Why this transport (numbers in docs/PERFORMANCE.md, ``python -m liveact.serve.bench``): a fragment per
video frame reaches the browser's Media Source Extensions player over a WebSocket within tens of
milliseconds of the block leaving the model, it plays in a plain ``<video>`` element with its audio
track in sync (both come from one muxer with one clock), needs no extra dependency (the same ffmpeg as
the mp4 writer) and the same bytes are the downloadable mp4.

ffmpeg reads raw ``rgb24`` frames on stdin and float32 mono PCM on a second pipe; it writes a
fragmented mp4 (``ftyp`` + ``moov`` once, then a ``moof`` + ``mdat`` per frame duration) to stdout. A reader
thread splits stdout into top-level boxes, appends them to ``path`` and publishes the file length at
fragment boundaries, so every published prefix of the file is a playable mp4. Viewers follow the file
from byte 0 (:meth:`FragmentedMP4Stream.follow`); memory stays constant however long a job runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import struct
import subprocess
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import torch

from liveact.video import FFmpegError, ffmpeg_exe, to_uint8_frames

logger = logging.getLogger(__name__)

READ_CHUNK = 1 << 16
AAC_RATE = 48000


def avc_codec_string(init: bytes) -> str:
    """``avc1.PPCCLL`` from the ``avcC`` box of an init segment (for ``MediaSource.isTypeSupported``)."""
    at = init.find(b"avcC")
    if at < 0 or at + 8 > len(init):
        return "avc1.42E01E"
    profile, compat, level = init[at + 5], init[at + 6], init[at + 7]
    return f"avc1.{profile:02X}{compat:02X}{level:02X}"


class FragmentedMP4Stream:
    """Encode frame blocks and their audio to a growing fragmented mp4 that viewers can follow.

    Args:
        path: the mp4 file (also the download once the job is done).
        fps: video frame rate.
        width, height: frame size (even).
        sample_rate: PCM rate; None for a video-only stream.
        keyframe_seconds: GOP length (viewers that join late and seeks start at keyframes).
        crf: libx264 quality; ``ultrafast`` + ``zerolatency`` keep the encoder from holding frames.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        fps: float,
        width: int,
        height: int,
        sample_rate: int | None,
        keyframe_seconds: float = 1.0,
        crf: int = 23,
    ) -> None:
        self.path = Path(path)
        self.fps, self.width, self.height, self.sample_rate = float(fps), width, height, sample_rate
        self.frames_written = 0
        self.samples_written = 0
        self.mime: str | None = None
        self._published = 0  # bytes of `path` that form complete boxes (init or whole fragments)
        self._done = False
        self._error: str | None = None
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._ready = threading.Event()  # init segment published
        gop = max(1, round(keyframe_seconds * self.fps))
        cmd = [
            ffmpeg_exe(),
            "-hide_banner",
            "-nostdin",
            "-loglevel",
            "error",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-s",
            f"{width}x{height}",
            "-framerate",
            f"{self.fps:g}",
            "-i",
            "pipe:0",
        ]
        audio_read = audio_write = None
        if sample_rate:
            audio_read, audio_write = os.pipe()
            # AAC at 48 kHz: its 1024-sample frames and encoder delay are then ~21 ms each, so the muxer
            # (which holds a video frame until audio past it exists) releases a block's frames as soon
            # as the audio a little past the block's end is written (see `write`).
            cmd += [
                "-f",
                "f32le",
                "-ar",
                str(sample_rate),
                "-ac",
                "1",
                "-i",
                f"pipe:{audio_read}",
                "-map",
                "0:v:0",
                "-map",
                "1:a:0",
                "-c:a",
                "aac",
                "-b:a",
                "96k",
                "-ar",
                str(AAC_RATE),
            ]
        else:
            cmd += ["-map", "0:v:0", "-an"]
        cmd += [
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            "-crf",
            str(crf),
            "-g",
            str(gop),
            "-keyint_min",
            str(gop),
            "-sc_threshold",
            "0",
            # One fragment per frame duration, written as soon as the next packet exists (no
            # interleaving queue). `frag_every_frame` is not used: it cuts at every packet of
            # either track and writes audio fragments with repeated start times (gaps in MSE).
            # `delay_moov` lets the muxer write the edit list that hides the AAC priming.
            "-movflags",
            "+empty_moov+delay_moov+default_base_moof",
            "-frag_duration",
            str(int(1e6 / self.fps)),
            "-max_interleave_delta",
            "1",
            "-flush_packets",
            "1",
            "-f",
            "mp4",
            "pipe:1",
        ]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed by the reader thread at EOF
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(audio_read,) if audio_read is not None else (),
            start_new_session=True,
        )
        if audio_read is not None:
            os.close(audio_read)
        self._audio = os.fdopen(audio_write, "wb", buffering=0) if audio_write is not None else None
        # Video and audio go to two pipes that ffmpeg reads on two threads; feeding them from two
        # threads too means neither pipe can block the other (no deadlock on a full pipe).
        self._queues: list[tuple[queue.Queue, threading.Thread]] = []
        for sink in [self._proc.stdin, self._audio]:
            if sink is not None:
                q: queue.Queue = queue.Queue()
                t = threading.Thread(target=self._feed, args=(sink, q), daemon=True)
                t.start()
                self._queues.append((q, t))
        self._stderr: list[bytes] = []
        self._stderr_reader = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_reader.start()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    # ------------------------------------------------------------------ producer
    def write(self, frames: np.ndarray | torch.Tensor, pcm: np.ndarray | None = None) -> None:
        """Queue a block of frames (any layout ``to_uint8_frames`` takes) and more PCM (float32 ``[n]``).

        Audio and video are one timeline each: the PCM of a call need not match its frames. Send audio
        ~0.1 s *ahead* of the frames when it is known: the mp4 muxer interleaves by time, so a frame
        is only written once audio past it has been encoded. In total, send as much audio as video.
        """
        block = to_uint8_frames(frames)
        if block.shape[1:3] != (self.height, self.width):
            raise ValueError(
                f"frames are {block.shape[2]}x{block.shape[1]}, stream is {self.width}x{self.height}"
            )
        if self._audio is not None:
            samples = np.zeros(0, np.float32) if pcm is None else np.asarray(pcm, dtype="<f4").reshape(-1)
            self._queues[1][0].put(samples.tobytes())
            self.samples_written += samples.size
        self._queues[0][0].put(memoryview(block).cast("B"))
        self.frames_written += block.shape[0]

    def close(self, timeout: float = 60.0) -> None:
        """Finish the file: flush both inputs, wait for ffmpeg and the reader. Raises FFmpegError."""
        for q, _ in self._queues:
            q.put(None)
        for _, t in self._queues:
            t.join(timeout)
        try:
            rc = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            rc = self._proc.wait()
        self._reader.join(timeout)
        self._release_pipes(timeout)
        if rc != 0:
            raise FFmpegError(
                f"live encoder exited with status {rc}: "
                f"{b''.join(self._stderr).decode(errors='replace')[-2000:]}"
            )

    def abort(self) -> None:
        """Stop at once (cancelled job): what was published stays a playable file."""
        for q, _ in self._queues:
            q.put(None)
        self._proc.kill()
        self._proc.wait()
        self._reader.join(10)
        self._release_pipes(10)

    def _release_pipes(self, timeout: float) -> None:
        """Close our ends of ffmpeg's output pipes once their readers are done: an ended job keeps no
        file descriptors while it waits for eviction."""
        self._stderr_reader.join(timeout)
        for pipe in (self._proc.stdout, self._proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    def _feed(self, sink: object, q: queue.Queue) -> None:
        while (data := q.get()) is not None:
            try:
                sink.write(data)  # type: ignore[attr-defined]
            except (BrokenPipeError, OSError, ValueError):
                break  # ffmpeg is gone; close() reports its status
        with contextlib.suppress(OSError):
            sink.close()  # type: ignore[attr-defined]

    def _drain_stderr(self) -> None:
        assert self._proc.stderr is not None
        for line in iter(self._proc.stderr.readline, b""):
            self._stderr.append(line)
            logger.debug("ffmpeg: %s", line.decode(errors="replace").rstrip())

    # ------------------------------------------------------------------ reader
    def _read_exact(self, n: int) -> bytes | None:
        assert self._proc.stdout is not None
        parts, got = [], 0
        while got < n:
            chunk = self._proc.stdout.read(min(n - got, READ_CHUNK))
            if not chunk:
                return None
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def _read(self) -> None:
        try:
            while (header := self._read_exact(8)) is not None:
                size, kind = struct.unpack(">I4s", header)
                extra = b""
                if size == 1:  # 64-bit size
                    extra = self._read_exact(8) or b""
                    size = struct.unpack(">Q", extra)[0] - 8
                body = self._read_exact(size - 8) if size >= 8 else None
                if body is None:
                    break
                self._file.write(header + extra + body)
                if kind == b"moov":
                    self._file.flush()
                    with open(self.path, "rb") as f:
                        self.mime = self._mime(f.read())
                    self._publish()
                    self._ready.set()
                elif kind == b"mdat":
                    self._publish()
        except Exception as exc:
            self._error = str(exc)
            logger.exception("live stream reader failed")
        finally:
            self._publish()  # trailing boxes (ffmpeg's closing `mfra` index) belong to the file too
            self._file.close()
            self._done = True
            self._ready.set()
            self._notify()

    def _mime(self, init: bytes) -> str:
        codecs = avc_codec_string(init) + (",mp4a.40.2" if self.sample_rate else "")
        return f'video/mp4; codecs="{codecs}"'

    def _publish(self) -> None:
        self._file.flush()
        with self._lock:
            self._published = self._file.tell()
        self._notify()

    def _notify(self) -> None:
        with self._lock:
            waiters = list(self._waiters)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that viewer's loop is closed
                loop.call_soon_threadsafe(event.set)

    # ------------------------------------------------------------------ viewers
    @property
    def published(self) -> int:
        """Bytes of the file that are complete boxes."""
        return self._published

    @property
    def done(self) -> bool:
        """True once ffmpeg finished (or died) and everything it wrote is published."""
        return self._done

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait for the init segment (so :attr:`mime` is known)."""
        return self._ready.wait(timeout)

    async def follow(self, start: int = 0) -> AsyncIterator[bytes]:
        """Yield the file's bytes from ``start`` as they are published, until the stream is done."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        entry = (loop, event)
        with self._lock:
            self._waiters.add(entry)
        position = start
        try:
            with open(self.path, "rb") as f:
                while True:
                    event.clear()
                    end, done = self._published, self._done
                    while position < end:
                        f.seek(position)
                        data = f.read(min(end - position, 1 << 20))
                        position += len(data)
                        yield data
                    if done and position >= self._published:
                        return
                    await event.wait()
        finally:
            with self._lock:
                self._waiters.discard(entry)
