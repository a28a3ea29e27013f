"""Bytes moved by Ulysses sequence parallelism (``liveact.speed.parallel``) per block and per video frame.

Everything is derived from the configs (model preset, memory layout, sampler schedule); only the link
bandwidths are assumptions, given as flags. Per layer and forward pass, with ``L`` block tokens,
``N`` ranks, ``dim`` model width and ``b`` bytes per element, each rank

* holds ``L/N`` tokens of q, k and v (all heads) and sends the ``(N-1)/N`` of them that belong to the
  other ranks' heads: ``3 * (L/N) * dim * b * (N-1)/N``;
* holds the attention output of all ``L`` tokens for ``dim/N`` channels and sends back the other
  ranks' tokens: ``L * (dim/N) * b * (N-1)/N``;

so ``4 * L * dim * b * (N-1) / N**2`` per rank (``N`` times that over all ranks). Once per forward the
head output (``prod(patch) * out_dim`` channels per token) is all-gathered. A block runs
``num_steps`` forwards, plus one per CFG step with audio guidance.

    PYTHONPATH=. python scripts/comm_volume.py        # 14B preset, 512x512 and 720x416, N = 2, 4, 8
    PYTHONPATH=. python scripts/comm_volume.py --audio-cfg --resolution 1280x720
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass

from liveact.config import PRESETS, MemoryConfig, ModelConfig, SamplerConfig

logger = logging.getLogger("comm_volume")

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4, "fp8": 1}


@dataclass(frozen=True)
class Volume:
    """Bytes one rank sends per steady-state block, and the derived quantities."""

    frame_len: int
    block_tokens: int
    per_layer_forward: float
    per_block: float
    gather_per_block: float

    def per_rank_total(self) -> float:
        """All bytes one rank sends per block (all-to-alls + output gather)."""
        return self.per_block + self.gather_per_block


def frame_len(width: int, height: int, model: ModelConfig, sampler: SamplerConfig) -> int:
    """Tokens per latent frame of a ``width x height`` video."""
    _, sh, sw = sampler.vae_stride
    _, ph, pw = model.patch_size
    return (height // sh // ph) * (width // sw // pw)


def volume(
    model: ModelConfig,
    memory: MemoryConfig,
    sampler: SamplerConfig,
    fl: int,
    world: int,
    elem_bytes: int,
    forwards: int,
) -> Volume:
    """Per-rank bytes for one steady-state block (``block_frames`` latent frames)."""
    tokens = memory.block_frames * fl
    a2a = 4 * tokens * model.dim * elem_bytes * (world - 1) / world**2
    out_channels = math.prod(model.patch_size) * model.out_dim
    # all_gather of equal (padded) shards: a rank sends its shard to each of the N-1 others.
    gather = (world - 1) * math.ceil(tokens / world) * out_channels * elem_bytes
    return Volume(fl, tokens, a2a, a2a * model.num_layers * forwards, gather * forwards)


def main() -> None:
    """Log the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="liveact-14b", choices=sorted(PRESETS))
    parser.add_argument("--resolution", nargs="+", default=["512x512", "720x416"], help="WIDTHxHEIGHT")
    parser.add_argument("--world", nargs="+", type=int, default=[2, 4, 8])
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPE_BYTES))
    parser.add_argument(
        "--audio-cfg", action="store_true", help="add the null-audio forwards of the CFG steps"
    )
    parser.add_argument(
        "--nvlink-gbps",
        type=float,
        default=450.0,
        help="per-GPU, per-direction GB/s (H100 SXM NVLink 4: 900 GB/s both ways)",
    )
    parser.add_argument(
        "--pcie-gbps", type=float, default=25.0, help="per-GPU, per-direction GB/s (PCIe 4.0 x16)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    model, memory, sampler = PRESETS[args.preset], MemoryConfig(), SamplerConfig()
    forwards = sampler.num_steps + (len(sampler.cfg_steps) if args.audio_cfg else 0)
    video_frames = memory.block_frames * sampler.vae_stride[0]
    logger.info(
        "%s: dim %d, %d layers, %s; %d forwards per block of %d latent frames (%d video frames)",
        args.preset,
        model.dim,
        model.num_layers,
        args.dtype,
        forwards,
        memory.block_frames,
        video_frames,
    )
    logger.info(
        "per rank sent: per layer+forward, per block (all-to-alls + head gather), per video frame; "
        "all ranks per block; link time per block / per video frame"
    )
    header = (
        f"{'res':>8} {'fl':>5} {'N':>2} {'layer MB':>9} {'block GB':>9} {'frame MB':>9} {'all GB':>7} "
        f"{'NVLink ms/blk':>13} {'ms/frm':>6} {'PCIe ms/blk':>11} {'ms/frm':>6}"
    )
    logger.info(header)
    logger.info("-" * len(header))
    for res in args.resolution:
        width, height = (int(v) for v in res.lower().split("x"))
        fl = frame_len(width, height, model, sampler)
        for world in args.world:
            if model.num_heads % world:
                logger.info(f"{res:>8} {fl:>5} {world:>2}  (does not divide {model.num_heads} heads)")
                continue
            vol = volume(model, memory, sampler, fl, world, DTYPE_BYTES[args.dtype], forwards)
            rank_bytes = vol.per_rank_total()
            nv_ms, pcie_ms = (rank_bytes / (gbps * 1e9) * 1e3 for gbps in (args.nvlink_gbps, args.pcie_gbps))
            logger.info(
                f"{res:>8} {fl:>5} {world:>2} {vol.per_layer_forward / 1e6:>9.1f} {rank_bytes / 1e9:>9.2f} "
                f"{rank_bytes / video_frames / 1e6:>9.1f} {rank_bytes * world / 1e9:>7.1f} "
                f"{nv_ms:>13.1f} {nv_ms / video_frames:>6.2f} "
                f"{pcie_ms:>11.0f} {pcie_ms / video_frames:>6.1f}"
            )


if __name__ == "__main__":
    main()
