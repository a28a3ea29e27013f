"""Host work off the GPU's critical path: frames leave the device and reach ffmpeg on a writer thread.

Written inline, each block's device-to-host copy waits for the GPU to finish everything queued
before it, and the blocking pipe write to ffmpeg then keeps the main thread from queueing the next
block: the GPU idles for the copy, the uint8 conversion and the encoder's intake. ``BackgroundWriter``
quantises a block to uint8 where it is (4x fewer bytes to move), starts an asynchronous copy into
pinned memory, and hands the rest to a thread; the main thread goes straight on to the next block.
A bounded queue keeps memory flat when the encoder is slower than the model, and an error on the
thread is raised at the next ``write`` or at ``close``.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Protocol

import numpy as np
import torch

logger = logging.getLogger(__name__)


class FrameSink(Protocol):
    """What ``BackgroundWriter`` wraps (``liveact.video`` writers)."""

    def write(self, frames: np.ndarray | torch.Tensor) -> int:
        """Append a block of frames."""

    def flush(self) -> None:
        """Wait until every queued block has reached the sink (raise a write error if one happened)."""
        self._queue.join()
        self._raise_pending()

    def close(self) -> None:
        """Finish the output."""


def frames_to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """``[1, 3, T, H, W]`` or ``[3, T, H, W]`` in [-1, 1] -> ``[T, H, W, 3]`` uint8 on the same device.

    The mapping of ``liveact.video.to_uint8_frames`` (``((x + 1) * 127.5).clamp(0, 255)``, truncated).
    """
    x = frames[0] if frames.ndim == 5 else frames
    return ((x.float() + 1.0) * 127.5).clamp_(0.0, 255.0).to(torch.uint8).permute(1, 2, 3, 0)


class BackgroundWriter:
    """Writes frame blocks to ``sink`` on a thread (see the module docstring).

    Args:
        sink: a writer with ``write(frames)`` and ``close()``.
        max_pending: blocks queued before ``write`` waits for the thread.
    """

    def __init__(self, sink: FrameSink, max_pending: int = 2) -> None:
        self.sink = sink
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        # Sticky: once a write failed, later blocks are dropped (the sink is broken), even after the
        # producer has taken the error; without it a later block would fail again at close().
        self._failed = False
        self._thread = threading.Thread(target=self._run, name="liveact-writer", daemon=True)
        self._thread.start()
        self._closed = False

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                block, event = item
                if self._failed:
                    continue  # drain: the first error is reported to the producer, once
                if event is not None:
                    event.synchronize()
                self.sink.write(block.numpy())
            except BaseException as exc:
                self._error, self._failed = exc, True
            finally:
                self._queue.task_done()

    def _raise_pending(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def write(self, frames: np.ndarray | torch.Tensor) -> None:
        """Queue a block (float ``[1, 3, T, H, W]`` in [-1, 1] on any device, or uint8 ``[T, H, W, 3]``)."""
        if self._closed:
            raise RuntimeError("BackgroundWriter is closed")
        self._raise_pending()
        event = None
        if isinstance(frames, torch.Tensor) and frames.is_floating_point():
            block = frames_to_uint8(frames.detach())
            if block.is_cuda:
                host = torch.empty(block.shape, dtype=torch.uint8, pin_memory=True)
                host.copy_(block, non_blocking=True)
                event = torch.cuda.Event()
                event.record()
                block = host
        else:
            block = torch.as_tensor(np.ascontiguousarray(frames))
        self._queue.put((block, event))

    def flush(self) -> None:
        """Wait until every queued block has reached the sink (raise a write error if one happened)."""
        self._queue.join()
        self._raise_pending()

    def close(self) -> None:
        """Write what is queued, stop the thread, close the sink; raise a write error if one happened."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        try:
            self._raise_pending()
        finally:
            self.sink.close()

    def __getattr__(self, name: str) -> Any:
        # Counters and paths of the wrapped writer (frames_written, path ...).
        if name == "sink":
            raise AttributeError(name)
        return getattr(self.sink, name)
