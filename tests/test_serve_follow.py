"""The torchrun follower protocol of the demo (rank 0 serves, the other ranks follow its jobs).

``torch.distributed.broadcast_object_list`` is replaced by an in-process channel and the follower
runs on a thread with its own pipeline, so the message sequence (job, one go/stop + live audio per
block, done, quit) is checked without a process group: the follower must run exactly the blocks
rank 0 runs, for finished, cancelled and live jobs, and leave when the server closes.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from tiny_assets import write_tiny_assets

from liveact.pipeline import LiveActPipeline
from liveact.serve.engine import DistControl, Engine, JobSpec, follow

SIZE, FPS, RATE = (32, 32), 25, 16000


class Counting:
    """A pipeline proxy that counts the blocks its ``stream`` yields."""

    def __init__(self, pipe: LiveActPipeline) -> None:
        object.__setattr__(self, "_pipe", pipe)
        object.__setattr__(self, "blocks", 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._pipe, name, value)

    def stream(self, clip: Any, **kwargs: Any) -> Iterator[torch.Tensor]:
        for block in self._pipe.stream(clip, **kwargs):
            object.__setattr__(self, "blocks", self.blocks + 1)
            yield block


@pytest.fixture()
def channel(monkeypatch: pytest.MonkeyPatch) -> queue.Queue:
    """Broadcast from rank 0 (a non-None payload) to one follower (a ``[None]`` box)."""
    messages: queue.Queue = queue.Queue()

    def broadcast_object_list(box: list, src: int = 0, group: Any = None) -> None:
        if box[0] is not None:
            messages.put(box[0])
        else:
            box[0] = messages.get(timeout=120)

    monkeypatch.setattr(torch.distributed, "broadcast_object_list", broadcast_object_list)
    return messages


def test_follower_runs_the_same_blocks(channel: queue.Queue, tmp_path: Path) -> None:
    ckpt, w2v = write_tiny_assets(tmp_path / "assets", seed=0)

    def load() -> Counting:
        return Counting(
            LiveActPipeline.from_pretrained(ckpt, w2v, device="cpu", dtype=torch.float32, size=SIZE, fps=FPS)
        )

    leader, follower = load(), load()
    thread = threading.Thread(target=follow, args=(follower, None), daemon=True)
    thread.start()
    engine = Engine(leader, "tiny", queue_size=2, control=DistControl(None))  # type: ignore[arg-type]
    image = tmp_path / "face.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(image)
    audio = tmp_path / "speech.wav"
    t = np.arange(int(2.0 * RATE)) / RATE
    sf.write(audio, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), RATE)

    def spec(name: str, audio_path: Path | None) -> JobSpec:
        folder = tmp_path / name
        folder.mkdir()
        return JobSpec(
            folder=folder,
            image=image,
            audio=audio_path,
            prompt="a person talks",
            edits=[],
            fps=FPS,
            size=SIZE,
            seed=1,
        )

    def wait(job: Any) -> None:
        # Without collectives the follower runs beside rank 0, not in lock-step: wait for both.
        deadline = time.monotonic() + 300
        while (job.ended is None or follower.blocks != leader.blocks) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert job.ended is not None, job.status

    upload = engine.submit(spec("upload", audio))
    wait(upload)
    assert upload.status == "finished" and upload.blocks_done == 2
    assert follower.blocks == leader.blocks == 2

    live = engine.submit(spec("live", None))
    live.live.push((0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32))  # 2 s of speech
    live.live.finish()
    wait(live)
    assert live.status == "finished" and live.blocks_done == 2
    assert follower.blocks == leader.blocks == 4

    # A cancelled live job (no audio ever comes): both ranks stop at the same block.
    idle = engine.submit(spec("idle", None))
    while idle.blocks_done < 1:
        time.sleep(0.05)
    engine.cancel(idle)
    wait(idle)
    assert idle.status == "cancelled" and idle.blocks_done >= 1
    assert follower.blocks == leader.blocks

    engine.close()
    thread.join(timeout=60)
    assert not thread.is_alive()  # "quit" reached the follower
