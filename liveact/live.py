"""Live audio: speech that arrives while the avatar is generated (a microphone, a TTS engine).

:class:`LiveAudio` is a thread-safe PCM timeline. A producer thread (a WebSocket handler) calls
:meth:`LiveAudio.push` with mono samples as they arrive; the generating thread asks for the samples a
block needs with :meth:`LiveAudio.wait_for` and reads them with :meth:`LiveAudio.read`. When speech
does not arrive in time, the missing stretch becomes silence ("committed"), the avatar idles with its
mouth closed and the stream goes on in real time; speech pushed later lands after the committed
stretch, never in the past.

When a block waits:

- a block needs samples up to ``end`` (the last frame it shows plus the audio window's right half);
- while the producer keeps up, it waits for those samples to arrive (speech-driven pacing);
- if nothing arrives, it waits until the samples *would* have arrived at real-time rate after the
  last push (plus ``grace`` for network jitter), then commits silence: an idle avatar is paced by
  the wall clock, a TTS client that sends faster than real time is not waited for at all.

Features come from :func:`live_audio_source`, a ``Conditions.audio_source`` that encodes the block's
window of the timeline on its own, like the reference's ``--steam_audio``. Only committed samples are
read, so a result does not depend on how far ahead a client has sent (and every rank of a sequence-
parallel run sees the same audio). Encoding goes through a *streaming factory*
``f(waveform [1, N], sample_rate) -> obj`` whose ``obj.embedding(start, end)`` returns
``[S', layers, channels]`` with row 0 = video frame ``start`` of that waveform: ``StreamingAudio``
for wav2vec2, or any encoder with the same call; :func:`default_streaming_factory` picks the
pipeline's.

:func:`prepare_live` and :func:`stream_live` drive a ``LiveActPipeline`` from a ``LiveAudio``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from liveact.components.audio import StreamingAudio
from liveact.sampler import Conditions, audio_window, block_span

if TYPE_CHECKING:
    from PIL import Image

    from liveact.pipeline import LiveActPipeline, PreparedClip

logger = logging.getLogger(__name__)


class Embeds(Protocol):
    """What a streaming factory returns: ``StreamingAudio``'s slice-encoding call."""

    def embedding(self, start: int, end: int) -> torch.Tensor:
        """Features ``[S', layers, channels]`` of video frames ``[start, end)``; row 0 = ``start``."""
        ...


StreamingFactory = Callable[[torch.Tensor, int], Embeds]

# PreparedClip.num_blocks of a live clip: it runs until its audio ends or it is stopped.
UNBOUNDED = 2**62


class LiveAudio:
    """A mono PCM timeline filled over time; see the module docstring.

    Args:
        sample_rate: samples per second of everything pushed.
        grace: seconds a block waits past the real-time due time of its audio before silence is used.
        max_ahead_seconds: how far past the generator a client may send (bounds the memory a fast
            client can make the server hold); older samples go with :meth:`discard_before`.
        clock: monotonic time source (tests pass a fake one).
    """

    def __init__(
        self,
        sample_rate: int,
        *,
        grace: float = 0.2,
        max_ahead_seconds: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        if grace < 0:
            raise ValueError(f"grace must be >= 0, got {grace}")
        self.sample_rate = int(sample_rate)
        self.grace = float(grace)
        self.max_ahead = int(max_ahead_seconds * sample_rate)
        self._clock = clock
        self._cond = threading.Condition()
        # Samples [base, write) are _buffer[:write - base]; the buffer doubles when full, so pushing n
        # samples costs O(n) in all (re-concatenating on every push was quadratic).
        self._buffer = np.zeros(0, dtype=np.float32)
        self._base = 0
        self._write = 0
        self._committed = 0
        self._finished = False
        # Real-time reference: sample `_ref_pos` was due at time `_ref_time`.
        self._ref_time, self._ref_pos = clock(), 0
        self._arrivals: deque[tuple[int, float]] = deque()  # (end sample of a push, its arrival time)
        self.silence_samples = 0

    # ------------------------------------------------------------------ producer side
    def push(self, samples: np.ndarray | torch.Tensor) -> None:
        """Append mono samples (float in [-1, 1], any shape that flattens to ``[N]``).

        Raises:
            ValueError: after :meth:`finish`, or when the client runs more than ``max_ahead_seconds``
                ahead of what the generator has used.
        """
        pcm = np.asarray(
            samples.detach().cpu() if isinstance(samples, torch.Tensor) else samples, dtype=np.float32
        ).reshape(-1)
        if not np.isfinite(pcm).all():
            raise ValueError("audio samples must be finite")
        with self._cond:
            if self._finished:
                raise ValueError("live audio already finished; no more samples are accepted")
            if self._write < self._committed:
                # The generator already used silence up to `_committed`: speech lands after it.
                self._append(np.zeros(self._committed - self._write, dtype=np.float32))
            if self._write + pcm.size - self._committed > self.max_ahead:
                raise ValueError(
                    f"live audio is more than {self.max_ahead / self.sample_rate:.0f} s ahead "
                    "of the video; send it closer to real time"
                )
            self._append(np.clip(pcm, -1.0, 1.0))
            now = self._clock()
            self._arrivals.append((self._write, now))
            self._ref_time, self._ref_pos = now, self._write
            self._cond.notify_all()

    def finish(self) -> None:
        """No more samples will come: waits end at once and the stream may end after the last sample."""
        with self._cond:
            self._finished = True
            self._cond.notify_all()

    def _append(self, pcm: np.ndarray) -> None:
        size = self._write - self._base
        if size + pcm.size > self._buffer.size:
            grown = np.zeros(max(2 * self._buffer.size, size + pcm.size, 4096), dtype=np.float32)
            grown[:size] = self._buffer[:size]
            self._buffer = grown
        self._buffer[size : size + pcm.size] = pcm
        self._write += pcm.size

    # ------------------------------------------------------------------ generator side
    @property
    def finished(self) -> bool:
        """True after :meth:`finish`."""
        return self._finished

    @property
    def received(self) -> int:
        """End of the timeline: samples pushed so far plus silence committed before them."""
        return self._write

    @property
    def committed(self) -> int:
        """Samples the generator has used (speech or silence); later pushes land after this point."""
        return self._committed

    def due_time(self, end: int) -> float:
        """When sample ``end`` is due at real-time rate after the last push (or commit)."""
        with self._cond:
            return self._ref_time + (end - self._ref_pos) / self.sample_rate

    def wait_for(self, end: int, stop: threading.Event | None = None) -> bool:
        """Block until samples ``[0, end)`` exist, or until they are overdue; then commit them.

        Returns:
            True when all of them are speech that arrived, False when some are silence (late or
            finished input, or ``stop`` was set).
        """
        with self._cond:
            while self._write < end and not self._finished and not (stop is not None and stop.is_set()):
                due = self._ref_time + (end - self._ref_pos) / self.sample_rate
                remaining = due + self.grace - self._clock()
                if remaining <= 0:
                    # Pace the next idle block from this one's due time (not from now), so idle
                    # blocks keep exactly to real time.
                    self._ref_time, self._ref_pos = due, end
                    break
                # Short slices: a stop event is not a condition, so poll it.
                self._cond.wait(min(remaining, 0.05))
            arrived = self._write >= end
            if not arrived:
                self.silence_samples += end - max(self._write, self._committed)
            self._committed = max(self._committed, end)
            return arrived

    def read(self, lo: int, hi: int, committed_only: bool = True) -> np.ndarray:
        """Samples ``[lo, hi)`` as float32 ``[hi - lo]``; silence where nothing (or nothing committed) is.

        ``committed_only`` reads nothing past :attr:`committed`, so the result does not depend on
        how far ahead the producer is.
        """
        out = np.zeros(max(0, hi - lo), dtype=np.float32)
        with self._cond:
            top = min(hi, self._write, self._committed if committed_only else hi)
            a, b = max(lo, self._base), top
            if b > a:
                out[a - lo : b - lo] = self._buffer[a - self._base : b - self._base]
        return out

    def discard_before(self, position: int) -> None:
        """Forget samples before ``position`` (they will read as silence): bounds memory on long runs."""
        with self._cond:
            position = min(position, self._write)
            if position > self._base:
                size, drop = self._write - self._base, position - self._base
                self._buffer[: size - drop] = self._buffer[drop:size]  # only what is kept moves
                self._base = position
            while len(self._arrivals) > 1 and self._arrivals[1][0] <= position:
                self._arrivals.popleft()

    def arrival_time(self, position: int) -> float | None:
        """Clock time at which sample ``position`` arrived (None if it has not, or was silence)."""
        with self._cond:
            for end, when in self._arrivals:
                if end > position:
                    return when
        return None


def sample_of_frame(frame: int, fps: float, sample_rate: int) -> int:
    """First sample of video frame ``frame`` (rounded, so consecutive frame ranges tile the samples)."""
    return round(frame * sample_rate / fps)


def default_streaming_factory(pipe: LiveActPipeline) -> StreamingFactory:
    """The pipeline's ``streaming_audio(waveform, sample_rate)`` when it has one, Nano's log-mel rows
    (``LogMelStream``) for a log-mel encoder, else the reference's per-slice wav2vec2 path
    (``StreamingAudio``: tempo, resample, gain, encode)."""
    hook = getattr(pipe, "streaming_audio", None)
    if hook is not None:
        return hook
    window = pipe.transformer.config.audio_window
    from liveact.components.logmel import LogMelEncoder, LogMelStream

    if isinstance(pipe.audio_encoder, LogMelEncoder):  # Nano: log-mel rows at the video fps
        return lambda waveform, rate: LogMelStream.from_waveform(
            pipe.audio_encoder, waveform, rate, pipe.fps, window
        )
    return lambda waveform, rate: StreamingAudio(pipe.audio_encoder, waveform, rate, pipe.fps, window)


def live_audio_source(
    live: LiveAudio,
    factory: StreamingFactory,
    fps: float,
    audio_window: int,
    device: torch.device | str = "cpu",
) -> Callable[[int, int], torch.Tensor]:
    """A ``Conditions.audio_source`` over a :class:`LiveAudio`.

    ``f(start, end)`` encodes the committed samples of video frames ``[start, end + window // 2)``
    (silence where none arrived) and returns ``[S', layers, channels]`` with row 0 = frame ``start``.
    """
    half = audio_window // 2
    rate = live.sample_rate

    def source(start: int, end: int) -> torch.Tensor:
        # The reference's slice rounding (StreamingAudio.sample_range): the division first.
        lo, hi = int(rate * (start / fps)), int(rate * ((end + half) / fps))
        piece = torch.from_numpy(live.read(lo, hi))[None]
        return factory(piece, rate).embedding(0, end - start).to(device)

    return source


@torch.no_grad()
def prepare_live(
    pipe: LiveActPipeline,
    image: str | Path | Image.Image,
    prompt: str,
    live: LiveAudio,
    edits: list[tuple[tuple[int, int], str]] | None = None,
    factory: StreamingFactory | None = None,
) -> PreparedClip:
    """``pipe.prepare`` for live audio: no audio file, features per block from ``live``.

    The clip is unbounded (``num_blocks`` is huge); :func:`stream_live` ends it when the audio
    finishes or a stop is requested.
    """
    from liveact.pipeline import PreparedClip, Request, cover_crop, load_image

    edits = list(edits or [])
    picture = cover_crop(load_image(image), *pipe.size)
    texts = pipe.encode_text([prompt] + [text for _, text in edits])
    clip_features = pipe.image_encoder.encode(picture.to(pipe.image_encoder.device)).to(pipe.device)
    config = pipe.transformer.config
    source = live_audio_source(
        live, factory or default_streaming_factory(pipe), pipe.fps, config.audio_window, pipe.device
    )
    # `audio` only gives the sampler the feature shape (and the null-audio CFG its zeros): every
    # block's features come from `source`.
    placeholder = torch.zeros(
        1, config.audio_layers, config.audio_channels, device=pipe.device, dtype=pipe.transformer.dtype
    )
    cond = Conditions(
        text=texts[0],
        clip=clip_features,
        y=pipe.conditioning_latent(picture).to(pipe.device),
        audio=placeholder,
        edits=[(rng, t) for (rng, _), t in zip(edits, texts[1:])],
        audio_source=source,
    )
    request = Request(image=image, audio="", prompt=prompt, edits=edits)
    return PreparedClip(request, cond, math.inf, UNBOUNDED, UNBOUNDED)


@dataclass
class LiveBlock:
    """One generated block of a live stream.

    Attributes:
        index: block number.
        frames: ``[1, 3, F, H, W]`` float in [-1, 1] (or the latent when not decoding).
        pcm: float32 ``[n]`` mono samples shown with these frames (exactly ``F / fps`` seconds).
        first_frame: index of the block's first video frame in the stream.
        speech: True when all audio the block needed had arrived (False: silence was used).
        audio_ready: clock time when the block's audio was complete (arrived, or given up on).
        first_arrival: clock time when the sample of the block's first frame arrived (None: silence);
            its display time minus this is the speech-to-screen latency.
    """

    index: int
    frames: torch.Tensor
    pcm: np.ndarray
    first_frame: int
    speech: bool
    audio_ready: float
    first_arrival: float | None = None


class LiveSync(Protocol):
    """Keeps ranks of a sequence-parallel run in step on live input (see ``liveact.serve``).

    The leader decides whether to go on and ships the block's committed samples; followers receive
    them into their own ``LiveAudio``. Every rank calls :meth:`exchange` once per block.
    """

    is_leader: bool

    def exchange(self, go: bool, live: LiveAudio, end: int) -> bool:
        """Agree on ``go``; make ``live`` hold the leader's committed samples ``[.., end)``."""
        ...


def stream_live(
    pipe: LiveActPipeline,
    clip: PreparedClip,
    live: LiveAudio,
    seed: int = 42,
    stop: threading.Event | None = None,
    max_blocks: int | None = None,
    sync: LiveSync | None = None,
    decode: bool = True,
) -> Iterator[LiveBlock]:
    """Generate blocks as their audio arrives (see the module docstring for the pacing).

    Ends after the block that shows the last pushed sample once ``live`` is finished, when ``stop``
    is set, or after ``max_blocks``.

    Yields:
        :class:`LiveBlock` per block.
    """
    memory, stride = pipe.sampler.memory_config, pipe.temporal_stride
    half = pipe.transformer.config.audio_window // 2
    rate, fps = live.sample_rate, pipe.fps
    limit = UNBOUNDED if max_blocks is None else max_blocks
    generator = pipe.stream(clip, seed=seed, max_blocks=limit, decode=decode)
    leader = sync is None or sync.is_leader
    try:
        for k in count():
            if k >= limit:
                break
            span = block_span(k, memory, stride)
            first, frames = span.first_video_frame, span.video_frames(stride)
            end = math.ceil(rate * (first + frames + half) / fps)
            go = True
            speech = False
            if leader:
                nothing_left = live.finished and live.received <= sample_of_frame(first, fps, rate)
                if nothing_left and k > 0:
                    go = False
                else:
                    speech = live.wait_for(end, stop)
                    go = not (stop is not None and stop.is_set())
            if sync is not None:
                go = sync.exchange(go, live, end)
            if not go:
                break
            ready = time.monotonic()
            block = next(generator)
            first_sample = sample_of_frame(first, fps, rate)
            arrival = live.arrival_time(first_sample)
            pcm = live.read(first_sample, sample_of_frame(first + frames, fps, rate))
            # Keep what the next block's window can still read and this block's own samples (a
            # consumer may still read them); older samples are never read again.
            next_start, _ = audio_window(block_span(k + 1, memory, stride), memory, stride)
            live.discard_before(min(int(rate * next_start / fps), first_sample))
            yield LiveBlock(k, block, pcm, first, speech, ready, arrival)
    finally:
        generator.close()


__all__ = [
    "UNBOUNDED",
    "Embeds",
    "LiveAudio",
    "LiveBlock",
    "LiveSync",
    "StreamingFactory",
    "default_streaming_factory",
    "live_audio_source",
    "prepare_live",
    "sample_of_frame",
    "stream_live",
]
