"""Host work off the critical path: the background frame writer and the channels-last VAE."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import case_params, load_meta

from liveact.speed.hostwork import BackgroundWriter, frames_to_uint8
from liveact.video import to_uint8_frames


class _Sink:
    def __init__(self, fail_at: int | None = None) -> None:
        self.blocks: list[np.ndarray] = []
        self.closed = 0
        self.fail_at = fail_at
        self.frames_written = 0

    def write(self, frames: np.ndarray) -> int:
        if self.fail_at is not None and len(self.blocks) == self.fail_at:
            raise OSError("ffmpeg exited")
        self.blocks.append(frames)
        self.frames_written += len(frames)
        return len(frames)

    def close(self) -> None:
        self.closed += 1


def test_blocks_arrive_in_order_as_the_video_writer_would_quantise_them() -> None:
    g = torch.Generator().manual_seed(0)
    blocks = [torch.rand(1, 3, t, 8, 6, generator=g) * 2.2 - 1.1 for t in (1, 4, 4)]
    sink = _Sink()
    writer = BackgroundWriter(sink, max_pending=1)
    for b in blocks:
        writer.write(b)
    writer.flush()
    assert len(sink.blocks) == 3, "flush waits for the queued blocks"
    writer.write(np.zeros((2, 8, 6, 3), np.uint8))
    writer.close()
    writer.close()  # idempotent
    assert sink.closed == 1 and writer.frames_written == 11
    for got, b in zip(sink.blocks, blocks):
        np.testing.assert_array_equal(got, to_uint8_frames(b))
    assert frames_to_uint8(blocks[1]).shape == (4, 8, 6, 3)
    with pytest.raises(RuntimeError, match="closed"):
        writer.write(blocks[0])


def test_a_write_error_reaches_the_producer_and_the_sink_is_closed() -> None:
    sink = _Sink(fail_at=1)
    writer = BackgroundWriter(sink)
    writer.write(torch.zeros(1, 3, 1, 4, 4))
    writer.write(torch.zeros(1, 3, 4, 4, 4))
    with pytest.raises(OSError, match="ffmpeg exited"):
        for _ in range(5):  # raised at a later write, or at close
            writer.write(torch.zeros(1, 3, 4, 4, 4))
        writer.close()
    writer.close()
    assert sink.closed == 1 and len(sink.blocks) == 1


@pytest.mark.parametrize("case", case_params("components", "vae"))
def test_channels_last_vae_decodes_the_same(case: Path) -> None:
    from liveact.components.vae import WanVAE

    meta = load_meta(case)
    norm = meta["latent_normalisation"]
    vae = WanVAE.from_pth(
        case / meta["weights_file"], "cpu", torch.float32, mean=tuple(norm["mean"]), std=tuple(norm["std"])
    )
    latent = torch.randn(vae.arch.z_dim, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    reference = vae.decode(latent)
    vae.to_channels_last()
    conv = next(m for m in vae.model.modules() if isinstance(m, torch.nn.Conv3d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(vae.decode(latent), reference, rtol=1e-5, atol=1e-5)
