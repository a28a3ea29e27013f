"""Progressive mp4 (H.264 + AAC) and live HLS writers fed with RGB frame blocks, plus probing helpers.

Frames go to an ffmpeg child process as raw ``rgb24`` on its stdin, one block at a time, so nothing
accumulates in Python memory and an hour-long run costs the same RAM as a one-block run.

Crash safety of :class:`ProgressiveVideoWriter`:

- the mp4 is *fragmented* (a ``moof``/``mdat`` pair per keyframe, keyframes every
  ``keyframe_seconds``), so the bytes on disk are a playable file after every fragment: even if ffmpeg
  itself is killed, everything up to the last complete fragment plays;
- ffmpeg runs in its own session, so Ctrl-C in the terminal reaches only Python: the writer closes
  ffmpeg's stdin and ffmpeg finishes the file, including the frames still inside the encoder;
- if Python dies (SIGKILL, segfault, OOM kill), ffmpeg sees EOF on its stdin and finalises on its own.

Float frames are converted like the authors' demo (REFERENCE.md §7.1): ``((x + 1) * 127.5)``, clamped
to [0, 255], then truncated to uint8. Inside [-1, 1] this equals ``export_to_video``'s
``(x + 1) / 2 * 255`` truncation (§6.8); the clamp only stops out-of-range values from wrapping.

Output length: the video is trimmed to the audio (the sampler overshoots by up to one block). At most
``ceil(duration * fps)`` frames are encoded. The audio reaches ffmpeg as raw PCM on a second pipe, in
step with the frames: every block carries the samples its frames cover, padded with silence past the
end of the file. So the audio track holds all of the speech after a full run (AAC rounds the last
frame up, never down), and ends with the last frame after an early stop or a kill (the second pipe
needs POSIX ``pass_fds``: Linux and macOS).
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import logging
import math
import os
import re
import select
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from typing_extensions import Self

logger = logging.getLogger(__name__)

__all__ = [
    "FFmpegError",
    "HLSWriter",
    "ProgressiveVideoWriter",
    "audio_duration",
    "audio_format",
    "ffmpeg_exe",
    "probe_video",
    "read_frames",
    "run_ffmpeg",
    "to_uint8_frames",
]

# Fragment at every keyframe; `delay_moov` lets the muxer write the edit list that removes the
# H.264 B-frame delay (without it the video track starts 2 frames late relative to the audio).
FRAGMENTED_MP4_FLAGS = "+frag_keyframe+empty_moov+delay_moov+default_base_moof"
STDERR_TAIL_LINES = 40


class FFmpegError(RuntimeError):
    """ffmpeg failed; the message holds the command's exit status and the tail of its stderr."""


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary shipped with ``imageio-ffmpeg`` (or ``$IMAGEIO_FFMPEG_EXE``)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def run_ffmpeg(args: list[str], what: str) -> None:
    """Run ffmpeg quietly; raise ValueError with its last error lines on failure."""
    proc = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args],
        check=False,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise ValueError(f"ffmpeg could not {what}: {tail or 'unknown error'}")


def to_uint8_frames(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    """Convert a block of frames to contiguous uint8 RGB, channels last.

    Accepted layouts (the dtype decides which one is meant, so T = 3 is never ambiguous):

    - uint8, numpy or torch: ``[T, H, W, 3]`` or a single frame ``[H, W, 3]``; passed through;
    - floating point in [-1, 1], numpy or torch: ``[3, T, H, W]`` or ``[1, 3, T, H, W]`` (the VAE
      decoder's output); mapped with ``((x + 1) * 127.5).clamp(0, 255)`` and truncated.

    Returns:
        ``[T, H, W, 3]`` uint8 numpy array, C-contiguous.
    """
    if isinstance(frames, np.ndarray) and frames.dtype == np.uint8:
        out = frames
    elif isinstance(frames, torch.Tensor) and frames.dtype == torch.uint8:
        out = frames.detach().cpu().numpy()
    else:
        x = torch.as_tensor(frames).detach()
        if not x.is_floating_point():
            raise TypeError(f"frames must be uint8 or floating point, got {x.dtype}")
        if x.ndim == 5:
            if x.shape[0] != 1:
                raise ValueError(f"float frames [B, 3, T, H, W] need B == 1, got shape {tuple(x.shape)}")
            x = x[0]
        if x.ndim != 4 or x.shape[0] != 3:
            raise ValueError(f"float frames must be [3, T, H, W] or [1, 3, T, H, W], got {tuple(x.shape)}")
        # Quantise on the tensor's own device: a GPU block then crosses to the host at 1/4 the bytes.
        x = ((x.float() + 1.0) * 127.5).clamp_(0.0, 255.0).to(torch.uint8)
        out = x.permute(1, 2, 3, 0).cpu().numpy()
    if out.ndim == 3:
        out = out[None]
    if out.ndim != 4 or out.shape[-1] != 3:
        raise ValueError(f"uint8 frames must be [T, H, W, 3] or [H, W, 3], got shape {out.shape}")
    return np.ascontiguousarray(out)


class _StderrTail:
    """Drains a pipe on a daemon thread so ffmpeg never blocks on a full stderr; keeps the last lines."""

    def __init__(self, stream: Any, max_lines: int = STDERR_TAIL_LINES) -> None:
        self._lines: collections.deque[str] = collections.deque(maxlen=max_lines)
        self._thread = threading.Thread(target=self._drain, args=(stream,), daemon=True)
        self._thread.start()

    def _drain(self, stream: Any) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip()
            if line:
                self._lines.append(line)
                logger.debug("ffmpeg: %s", line)
        stream.close()

    def text(self, join_timeout: float = 5.0) -> str:
        """The collected tail; waits briefly for the pipe to reach EOF first."""
        self._thread.join(timeout=join_timeout)
        return "\n".join(self._lines)


class _AudioFeed:
    """An audio file's PCM, fed to the encoder's audio pipe in step with the video frames.

    An ffmpeg decoder child turns any format ffmpeg reads into 16-bit samples at the file's own rate
    and channel count. :meth:`queue` adds exactly the samples that the frames written so far cover
    (``round(frames * rate / fps)`` in all, so blocks never drift), padded with silence past the end
    of the file. Both children run in their own session (a terminal Ctrl-C reaches only Python); when
    Python dies, the encoder sees EOF on both pipes and finishes the file by itself.

    Writes never wait for the encoder: ffmpeg takes audio only as far as its video output has got
    (x264 holds frames back for its lookahead), so a blocking audio write would wait for video that
    the writer can only send after it. Samples the pipe cannot take yet stay in :attr:`pending`; the
    pipe is enlarged (Linux) so that they normally sit in the kernel, which hands them to ffmpeg even
    after Python is killed.
    """

    PIPE_BYTES = 1 << 20  # Linux's default /proc/sys/fs/pipe-max-size

    def __init__(self, path: Path, fps: float) -> None:
        self.fps = fps
        self.rate, self.channels = audio_format(path)
        self.samples_queued = 0
        self.pending = bytearray()
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.write_fd, False)
        with contextlib.suppress(AttributeError, OSError):
            fcntl.fcntl(self.write_fd, fcntl.F_SETPIPE_SZ, self.PIPE_BYTES)
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(path)]
        cmd += ["-map", "0:a:0", "-f", "s16le", "-ac", str(self.channels), "-ar", str(self.rate), "pipe:1"]
        self._decoder = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True
        )
        self._exhausted = False
        self._closed = False

    def started(self) -> None:
        """The encoder holds the pipe's read end now; drop ours so it sees EOF when we close."""
        os.close(self.read_fd)

    def queue(self, frames: int) -> None:
        """Add the samples up to the end of frame ``frames`` (exclusive index) to :attr:`pending`."""
        target = round(frames * self.rate / self.fps)
        count = max(0, target - self.samples_queued)
        width = 2 * self.channels
        data = b""
        if count and not self._exhausted:
            assert self._decoder.stdout is not None
            data = self._decoder.stdout.read(count * width)
            self._exhausted = len(data) < count * width
        self.samples_queued = max(target, self.samples_queued)
        self.pending += data + bytes(count * width - len(data))

    def send(self) -> None:
        """Write as much of :attr:`pending` as the pipe takes now, without waiting."""
        while self.pending:
            try:
                sent = os.write(self.write_fd, self.pending)
            except BlockingIOError:
                return
            del self.pending[:sent]

    def finish(self, timeout: float | None = None) -> None:
        """Write the rest (the encoder takes it once its video has ended), then close the pipe."""
        if self._closed:
            return
        try:
            deadline = None if timeout is None else time.monotonic() + timeout
            while self.pending:
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not select.select([], [self.write_fd], [], wait)[1]:
                    raise subprocess.TimeoutExpired("ffmpeg audio input", timeout or 0.0)
                self.send()
        finally:
            self.close()

    def close(self) -> None:
        """Close the encoder's audio pipe and stop the decoder (it may still hold unread samples)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            os.close(self.write_fd)
        if self._decoder.poll() is None:
            self._decoder.kill()
        self._decoder.wait()
        if self._decoder.stdout is not None:
            self._decoder.stdout.close()


def _write_video(fd: int, data: memoryview, audio: _AudioFeed | None) -> None:
    """Write ``data`` to the non-blocking video pipe, sending pending audio whenever its pipe has room.

    ffmpeg reads its inputs one at a time while it opens them (it probes the video pipe, then the
    audio pipe), and later takes audio only as its video advances: both pipes are served together.
    """
    while len(data):
        wanted = [fd] + ([audio.write_fd] if audio is not None and audio.pending else [])
        _, writable, _ = select.select([], wanted, [])
        if audio is not None and audio.write_fd in writable:
            audio.send()
        if fd in writable:
            try:
                data = data[os.write(fd, data) :]
            except BlockingIOError:
                continue
    if audio is not None:
        audio.send()


def _channels_of_layout(layout: str) -> int | None:
    """ffmpeg's channel layout name -> channel count: mono, stereo, "6 channels", "5.1(side)", "7.1"."""
    if layout in ("mono", "stereo"):
        return 1 if layout == "mono" else 2
    if m := re.fullmatch(r"(\d+) channels.*", layout):
        return int(m.group(1))
    if m := re.fullmatch(r"(\d+)\.(\d+).*", layout):
        return int(m.group(1)) + int(m.group(2))
    return None


def audio_format(path: str | os.PathLike) -> tuple[int, int]:
    """``(sample rate, channels)`` of an audio file: soundfile's header, else ffmpeg's description."""
    try:
        import soundfile

        meta = soundfile.info(str(path))
        return int(meta.samplerate), int(meta.channels)
    except Exception:
        info = probe_video(path)
        if not info["has_audio"] or info["sample_rate"] is None:
            raise ValueError(f"{path} has no audio stream ffmpeg can describe") from None
        return int(info["sample_rate"]), int(info["channels"] or 2)


class _RawVideoWriter:
    """Shared machinery: an ffmpeg child fed raw rgb24 frames; subclasses supply the output arguments.

    ffmpeg starts on the first :meth:`write`, so width and height may be left to the first block.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        fps: float,
        width: int | None,
        height: int | None,
        audio: str | os.PathLike | None,
        duration: float | None,
        trim_to_audio: bool,
        audio_bitrate: str | None,
    ) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.path = Path(path)
        self.fps = float(fps)
        self.width = width
        self.height = height
        self.audio = Path(audio) if audio is not None else None
        if self.audio is not None and not self.audio.is_file():
            raise FileNotFoundError(f"audio file not found: {self.audio}")
        self.audio_bitrate = audio_bitrate
        limit = duration
        if limit is None and trim_to_audio and self.audio is not None:
            limit = audio_duration(self.audio)
        # The small epsilon keeps float noise (e.g. 4.0 s * 24 fps = 96.00000001) from adding a frame.
        self.max_frames: int | None = None if limit is None else max(0, math.ceil(limit * self.fps - 1e-6))
        self.frames_written = 0
        self.frames_dropped = 0
        self._proc: subprocess.Popen | None = None
        self._audio_feed: _AudioFeed | None = None
        self._stderr: _StderrTail | None = None
        self._closed = False

    # ------------------------------------------------------------------ subclass hooks
    def _output_args(self) -> list[str]:
        raise NotImplementedError

    def _prepare_output(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ command
    def _video_codec_args(self, preset: str, crf: int, tune: str | None, gop: int) -> list[str]:
        args = ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", preset, "-crf", str(crf)]
        if tune:
            args += ["-tune", tune]
        # Fixed GOP, no scene-cut keyframes: fragments/segments then have a predictable length.
        args += ["-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0"]
        assert self.width is not None and self.height is not None
        if self.width % 2 or self.height % 2:
            # yuv420p needs even sides; pad one black row/column rather than fail.
            args += ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"]
        return args

    def _command(self) -> list[str]:
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", "warning", "-y"]
        cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{self.width}x{self.height}"]
        cmd += ["-framerate", f"{self.fps:g}", "-i", "pipe:0"]
        if self.audio is not None:
            assert self._audio_feed is not None
            feed = self._audio_feed
            # Raw PCM on its own pipe, written in step with the frames: the audio ends exactly where
            # the video ends (a finished run, a stopped one or a killed Python alike), with no
            # `-shortest`, whose sync queue dropped the last AAC frame in some runs.
            cmd += ["-f", "s16le", "-ar", str(feed.rate), "-ac", str(feed.channels)]
            cmd += ["-thread_queue_size", "1024", "-i", f"pipe:{feed.read_fd}"]
            cmd += ["-map", "0:v:0", "-map", "1:a:0", "-c:a", "aac"]
            if self.audio_bitrate:
                cmd += ["-b:a", self.audio_bitrate]
        else:
            cmd += ["-map", "0:v:0", "-an"]
        return cmd + self._output_args()

    def _start(self, height: int, width: int) -> None:
        if self.width is None:
            self.width = width
        if self.height is None:
            self.height = height
        self._prepare_output()
        if self.audio is not None:
            self._audio_feed = _AudioFeed(self.audio, self.fps)
        cmd = self._command()
        logger.debug("starting ffmpeg: %s", " ".join(cmd))
        popen_kwargs: dict[str, Any] = {}
        if self._audio_feed is not None:
            popen_kwargs["pass_fds"] = (self._audio_feed.read_fd,)
        if os.name == "posix":
            # Own session: a terminal Ctrl-C (SIGINT to the foreground group) must not kill ffmpeg
            # before Python has closed its stdin; ffmpeg then finalises the file itself.
            popen_kwargs["start_new_session"] = True
        else:
            popen_kwargs["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **popen_kwargs
        )
        self._stderr = _StderrTail(self._proc.stderr)
        assert self._proc.stdin is not None
        os.set_blocking(self._proc.stdin.fileno(), False)
        if self._audio_feed is not None:
            self._audio_feed.started()

    @property
    def pid(self) -> int | None:
        """Process id of the ffmpeg child, or None before the first write."""
        return self._proc.pid if self._proc is not None else None

    # ------------------------------------------------------------------ public API
    def write(self, frames: np.ndarray | torch.Tensor) -> int:
        """Append a block of frames (any layout :func:`to_uint8_frames` accepts).

        Frames beyond ``max_frames`` (the audio length or the explicit ``duration``) are dropped.
        Blocks until ffmpeg has taken the bytes, which throttles a producer faster than the encoder.

        Returns:
            The number of frames of this block that were sent to ffmpeg.
        """
        if self._closed:
            raise RuntimeError(f"writer for {self.path} is closed")
        block = to_uint8_frames(frames)
        t, h, w, _ = block.shape
        if self._proc is None:
            self._start(h, w)
        if (h, w) != (self.height, self.width):
            raise ValueError(f"frame size {w}x{h} differs from the stream's {self.width}x{self.height}")
        if self.max_frames is not None:
            keep = max(0, min(t, self.max_frames - self.frames_written))
            if keep < t:
                self.frames_dropped += t - keep
                logger.debug("dropping %d frame(s) past the %d-frame limit", t - keep, self.max_frames)
            block = block[:keep]
        if len(block) == 0:
            return 0
        assert self._proc is not None and self._proc.stdin is not None
        if self._audio_feed is not None:
            self._audio_feed.queue(self.frames_written + len(block))
        try:
            _write_video(self._proc.stdin.fileno(), memoryview(block).cast("B"), self._audio_feed)
        except (BrokenPipeError, OSError) as err:
            rc = self._proc.wait()
            self._closed = True
            if self._audio_feed is not None:
                self._audio_feed.close()
            raise FFmpegError(self._failure_message(rc)) from err
        self.frames_written += len(block)
        return len(block)

    def close(self, timeout: float | None = None) -> None:
        """Flush, let ffmpeg finish the file and wait for it; idempotent.

        Raises:
            FFmpegError: ffmpeg exited with a non-zero status (the message holds its stderr tail).
            subprocess.TimeoutExpired: ffmpeg did not finish within ``timeout`` seconds.
        """
        if self._closed:
            return
        self._closed = True
        if self._proc is None:
            logger.warning("no frames were written; %s was not created", self.path)
            return
        assert self._proc.stdin is not None
        # on error ffmpeg already exited; its status below tells whether that was a failure
        with contextlib.suppress(BrokenPipeError, OSError):
            self._proc.stdin.close()
        if self._audio_feed is not None:
            with contextlib.suppress(BrokenPipeError, OSError):
                self._audio_feed.finish(timeout)
        try:
            rc = self._proc.wait(timeout=timeout)
        except KeyboardInterrupt:
            # A second Ctrl-C while ffmpeg drains: it has EOF and its own session, so it finishes
            # the file without us.
            logger.warning(
                "interrupted while ffmpeg finalises %s; it keeps running (pid %d)", self.path, self._proc.pid
            )
            raise
        if rc != 0:
            raise FFmpegError(self._failure_message(rc))
        logger.info(
            "wrote %s: %d frames (%.2f s at %g fps)%s",
            self.path,
            self.frames_written,
            self.frames_written / self.fps,
            self.fps,
            f", {self.frames_dropped} past the audio dropped" if self.frames_dropped else "",
        )

    def _failure_message(self, rc: int) -> str:
        tail = self._stderr.text() if self._stderr is not None else ""
        return f"ffmpeg exited with status {rc} while writing {self.path}:\n{tail or '(no stderr)'}"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
            return
        # Unwinding from an error or Ctrl-C: still finalise what was written, but never let an
        # ffmpeg failure hide the original exception.
        if exc_type is KeyboardInterrupt:
            logger.warning("interrupted: finalising %s with %d frames", self.path, self.frames_written)
        try:
            self.close()
        except FFmpegError as err:
            logger.error("%s", err)


class ProgressiveVideoWriter(_RawVideoWriter):
    """Write an H.264 + AAC fragmented mp4 block by block; the file plays while it grows.

    Example::

        with ProgressiveVideoWriter("out.mp4", fps=24, audio="speech.wav") as writer:
            for block in pipeline.stream(...):   # [1, 3, T, H, W] floats in [-1, 1]
                writer.write(block)

    Args:
        path: output ``.mp4``; parent folders are created.
        fps: frame rate of the frames you write.
        width, height: frame size; inferred from the first block when None (checked when given).
        audio: an audio file ffmpeg can read (wav, mp3, ...), muxed as AAC; None for video only.
        duration: explicit length limit in seconds (wins over the audio's length).
        trim_to_audio: encode at most ``ceil(audio seconds * fps)`` frames.
        crf, preset, tune: libx264 quality, speed preset and optional tune (e.g. ``"zerolatency"``,
            which removes the encoder's lookahead so fragments reach the disk sooner).
        keyframe_seconds: keyframe (= fragment) interval; a hard kill of ffmpeg loses at most this much.
        audio_bitrate: AAC bitrate such as ``"128k"``; None lets ffmpeg pick for the input's rate.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        fps: float,
        width: int | None = None,
        height: int | None = None,
        audio: str | os.PathLike | None = None,
        duration: float | None = None,
        trim_to_audio: bool = True,
        crf: int = 18,
        preset: str = "veryfast",
        tune: str | None = None,
        keyframe_seconds: float = 1.0,
        audio_bitrate: str | None = None,
    ) -> None:
        super().__init__(
            path,
            fps=fps,
            width=width,
            height=height,
            audio=audio,
            duration=duration,
            trim_to_audio=trim_to_audio,
            audio_bitrate=audio_bitrate,
        )
        self.crf = crf
        self.preset = preset
        self.tune = tune
        self.gop = max(1, round(keyframe_seconds * self.fps))

    def _output_args(self) -> list[str]:
        args = self._video_codec_args(self.preset, self.crf, self.tune, self.gop)
        # flush_packets: push each finished fragment to the file at once instead of when avio's buffer
        # fills, so a hard kill loses at most the fragment in progress.
        return args + ["-movflags", FRAGMENTED_MP4_FLAGS, "-flush_packets", "1", "-f", "mp4", str(self.path)]


class HLSWriter(_RawVideoWriter):
    """Live HLS stream (H.264 + AAC in MPEG-TS segments) from frame blocks, for a browser player.

    The playlist appears once the first segment is complete; on close ffmpeg appends
    ``#EXT-X-ENDLIST``. Segments start with a keyframe (GOP = ``segment_seconds * fps``) and are
    written to a temporary name first, so a web server never serves a half-written segment.

    Args:
        playlist: output ``.m3u8``; segments ``<stem>_00000.ts`` ... go beside it.
        fps, width, height, audio, duration, trim_to_audio, audio_bitrate: as for
            :class:`ProgressiveVideoWriter`.
        segment_seconds: target segment length (the live latency is about two to three of these).
        list_size: segments kept in the playlist; 0 keeps all (an "event" playlist that can be
            replayed from the start).
        delete_segments: delete segments that left the playlist (only meaningful with list_size > 0).
        crf, preset, tune: libx264 settings; the defaults favour latency over compression.
    """

    def __init__(
        self,
        playlist: str | os.PathLike,
        *,
        fps: float,
        width: int | None = None,
        height: int | None = None,
        audio: str | os.PathLike | None = None,
        duration: float | None = None,
        trim_to_audio: bool = True,
        segment_seconds: float = 1.0,
        list_size: int = 0,
        delete_segments: bool = False,
        crf: int = 23,
        preset: str = "ultrafast",
        tune: str | None = "zerolatency",
        audio_bitrate: str | None = None,
    ) -> None:
        if segment_seconds <= 0:
            raise ValueError(f"segment_seconds must be positive, got {segment_seconds}")
        super().__init__(
            playlist,
            fps=fps,
            width=width,
            height=height,
            audio=audio,
            duration=duration,
            trim_to_audio=trim_to_audio,
            audio_bitrate=audio_bitrate,
        )
        self.segment_seconds = float(segment_seconds)
        self.list_size = list_size
        self.delete_segments = delete_segments
        self.crf = crf
        self.preset = preset
        self.tune = tune
        self.gop = max(1, round(self.segment_seconds * self.fps))

    def segments(self) -> list[Path]:
        """The finished ``.ts`` segments currently on disk, in order."""
        return sorted(self.path.parent.glob(f"{self.path.stem}_*.ts"))

    def _output_args(self) -> list[str]:
        flags = "independent_segments+temp_file" + ("+delete_segments" if self.delete_segments else "")
        args = self._video_codec_args(self.preset, self.crf, self.tune, self.gop)
        args += [
            "-f",
            "hls",
            "-hls_time",
            f"{self.segment_seconds:g}",
            "-hls_list_size",
            str(self.list_size),
            "-hls_segment_type",
            "mpegts",
            "-hls_flags",
            flags,
            "-hls_segment_filename",
            str(self.path.parent / f"{self.path.stem}_%05d.ts"),
        ]
        if self.list_size == 0:
            args += ["-hls_playlist_type", "event"]
        return args + [str(self.path)]


# ---------------------------------------------------------------------- probing

_STREAM_RE = re.compile(r"Stream #\d+:\d+.*?: (Video|Audio): (.*)")
_FPS_RE = re.compile(r"([\d.]+)(k?) fps")
_SIZE_RE = re.compile(r"\b(\d{2,5})x(\d{2,5})\b")
_RATE_RE = re.compile(r"(\d+) Hz")
_LAYOUT_RE = re.compile(r"\d+ Hz, ([^,]+)")
_DURATION_RE = re.compile(r"Duration: (\d+):(\d+):([\d.]+)")


def probe_video(path: str | os.PathLike) -> dict[str, Any]:
    """Describe a media file (mp4, HLS playlist, wav, ...) with the bundled ffmpeg, without decoding.

    Packets are stream-copied to ffmpeg's ``framecrc`` muxer, so frame counts and stream end times
    are exact even for a fragmented or truncated mp4 whose header states no duration.

    Returns:
        dict with ``has_video``, ``has_audio``, ``video_codec``, ``audio_codec``, ``width``,
        ``height``, ``fps`` (float), ``num_frames`` (video packets), ``video_duration`` and
        ``audio_duration`` (end of the last packet, seconds), ``duration`` (the longer of the two),
        ``sample_rate``, ``channels`` (from ffmpeg's layout name; None if it names none) and
        ``container_duration`` (the header's, None if absent); fields of a
        missing stream are None.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such media file: {path}")
    cmd = [
        ffmpeg_exe(),
        "-hide_banner",
        "-nostdin",
        "-i",
        str(path),
        "-map",
        "0:v:0?",
        "-map",
        "0:a:0?",
        "-c",
        "copy",
        "-f",
        "framecrc",
        "-",
    ]
    res = subprocess.run(cmd, capture_output=True, check=False)  # a truncated file still counts
    err = res.stderr.decode(errors="replace")
    out = res.stdout.decode(errors="replace")

    info: dict[str, Any] = dict.fromkeys(
        [
            "video_codec",
            "audio_codec",
            "width",
            "height",
            "fps",
            "sample_rate",
            "channels",
            "container_duration",
        ]
    )
    for kind, desc in _STREAM_RE.findall(err.split("Output #0")[0]):
        codec = desc.split(",")[0].split()[0]
        if kind == "Video" and info["video_codec"] is None:
            info["video_codec"] = codec
            if m := _SIZE_RE.search(desc):
                info["width"], info["height"] = int(m.group(1)), int(m.group(2))
            if m := _FPS_RE.search(desc):
                info["fps"] = float(m.group(1)) * (1000 if m.group(2) else 1)
        elif kind == "Audio" and info["audio_codec"] is None:
            info["audio_codec"] = codec
            if m := _RATE_RE.search(desc):
                info["sample_rate"] = int(m.group(1))
            if m := _LAYOUT_RE.search(desc):
                info["channels"] = _channels_of_layout(m.group(1).strip())
    if m := _DURATION_RE.search(err):
        info["container_duration"] = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))

    # framecrc: "#tb i: num/den", "#media_type i: video", then "i, dts, pts, duration, size, crc".
    timebase: dict[int, float] = {}
    media: dict[int, str] = {}
    count: dict[int, int] = collections.Counter()
    end: dict[int, float] = collections.defaultdict(float)
    for line in out.splitlines():
        if line.startswith("#tb "):
            idx, tb = line[4:].split(":")
            num, den = tb.strip().split("/")
            timebase[int(idx)] = int(num) / int(den)
        elif line.startswith("#media_type "):
            idx, kind = line[len("#media_type ") :].split(":")
            media[int(idx)] = kind.strip()
        elif line and not line.startswith("#"):
            fields = [f.strip() for f in line.split(",")]
            idx, pts, dur = int(fields[0]), int(fields[2]), int(fields[3])
            count[idx] += 1
            end[idx] = max(end[idx], (pts + dur) * timebase.get(idx, 0.0))
    if not media:
        raise FFmpegError(
            f"ffmpeg found no audio or video stream in {path} (status {res.returncode}):\n"
            + "\n".join(err.splitlines()[-STDERR_TAIL_LINES:])
        )
    if res.returncode != 0:
        logger.warning("ffmpeg reported errors reading %s (a truncated file?); counted what it read", path)

    v = next((i for i, k in media.items() if k == "video"), None)
    a = next((i for i, k in media.items() if k == "audio"), None)
    info["has_video"] = v is not None
    info["has_audio"] = a is not None
    info["num_frames"] = count[v] if v is not None else None
    info["video_duration"] = end[v] if v is not None else None
    info["audio_duration"] = end[a] if a is not None else None
    if v is not None and info["fps"] is None and end[v] > 0:
        info["fps"] = count[v] / end[v]
    info["duration"] = max(d for d in (info["video_duration"], info["audio_duration"]) if d is not None)
    return info


def audio_duration(path: str | os.PathLike) -> float:
    """Length of an audio file in seconds (soundfile's header when it can read it, else ffmpeg)."""
    try:
        import soundfile

        meta = soundfile.info(str(path))
        return meta.frames / meta.samplerate
    except Exception:
        info = probe_video(path)
        if not info["has_audio"]:
            raise ValueError(f"{path} has no audio stream") from None
        return float(info["audio_duration"])


def read_frames(path: str | os.PathLike, max_frames: int | None = None) -> np.ndarray:
    """Decode the video stream of a file to RGB.

    Returns:
        ``[N, H, W, 3]`` uint8 array (N capped at ``max_frames`` when given).
    """
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    meta = next(gen)
    width, height = meta["size"]
    frames: list[np.ndarray] = []
    try:
        for raw in gen:
            frames.append(np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3))
            if max_frames is not None and len(frames) >= max_frames:
                break
    finally:
        gen.close()
    if not frames:
        return np.zeros((0, height, width, 3), dtype=np.uint8)
    return np.stack(frames)
