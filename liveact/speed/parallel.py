"""Ulysses sequence parallelism, applied as a transform to a built ``LiveActTransformer``.

``parallelize(model)`` turns a single-process model into one rank of an N-rank sequence-parallel
model (any N dividing ``num_heads``). Nothing in ``model.py`` knows about ranks; the transform wraps
two extension points:

* ``model.denoise_tokens`` (all layers + head): each rank keeps a contiguous, balanced range of the
  block's tokens after patchify (sizes differ by at most one token, so a 6-frame block on 4 ranks
  needs neither padding nor asserts), runs the layers on it with ``BlockInputs.token_offset`` set,
  and all-gathers the head output so every rank returns the full velocity. The sampler therefore
  runs unchanged, and identically, on every rank.
* ``SelfAttention.attend`` of every layer: the q/k/v projections and their RMS norms (over the full
  dim, hence before any exchange) run on the rank's tokens; one all-to-all turns
  ``[L / N tokens, H heads]`` into ``[L tokens, H / N heads]``; the memory update, RoPE and attention
  run on the full sequence for the rank's heads; a second all-to-all brings the output back.

Each rank's ``KVMemory`` holds only its heads (``model.kv_heads``), i.e. 1/N of the single-process
memory. ConvKV compression, the mean variant and FP8 scales are all per channel or per (token, head),
so the rank's slice of ``memory_proj_k/v`` reproduces the single-process memory exactly. Cross- and
audio attention are token-local and need no communication.

Per layer and forward pass a rank sends ``(N-1)/N`` of its q/k/v shard and of its output shard;
see ``scripts/comm_volume.py`` and ``docs/PERFORMANCE.md``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
from torch import nn

from liveact.model import BlockInputs, LiveActTransformer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a ``torchrun`` job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and logs results."""
        return self.rank == 0


def check_world_size(num_heads: int, world_size: int) -> None:
    """Raise ``ValueError`` unless ``world_size`` ranks can split ``num_heads`` heads evenly.

    Call it before loading any weights (the head count is in the checkpoint's ``config.json``).
    """
    if world_size < 1:
        raise ValueError(f"world size must be >= 1, got {world_size}")
    if num_heads % world_size:
        valid = [n for n in range(1, num_heads + 1) if num_heads % n == 0]
        raise ValueError(
            f"sequence parallelism over {world_size} processes needs num_heads={num_heads} to be divisible "
            f"by the world size (every rank attends with num_heads / world_size heads); run with "
            f"--nproc_per_node in {valid}"
        )


def env_world_size() -> int:
    """``WORLD_SIZE`` set by ``torchrun`` (1 outside it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def maybe_init_dist(num_heads: int | None = None, backend: str | None = None) -> DistInfo | None:
    """Join the ``torchrun`` process group, or return None when running as a single process.

    Args:
        num_heads: when given, ``check_world_size`` runs before the process group is created, so a
            bad ``--nproc_per_node`` fails fast with a clear message.
        backend: ``nccl`` or ``gloo``; default ``nccl`` when CUDA is available, else ``gloo``.

    Returns:
        ``DistInfo`` with ``device = cuda:LOCAL_RANK`` (the GPU of this node, not the global rank)
        under NCCL, CPU under gloo; None when ``WORLD_SIZE`` is unset or 1.
    """
    world_size = env_world_size()
    if world_size <= 1:
        return None
    if num_heads is not None:
        check_world_size(num_heads, world_size)
    missing = [name for name in ("RANK", "LOCAL_RANK") if name not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={world_size} but {missing} unset: launch with torchrun")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world_size,
            device_id=device if device.type == "cuda" else None,
        )
    logger.info("rank %d/%d (local %d) on %s, backend %s", rank, world_size, local_rank, device, backend)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device, backend=backend)


def token_splits(num_tokens: int, world_size: int) -> list[int]:
    """Balanced contiguous shard sizes: the first ``num_tokens % world_size`` ranks get one more."""
    base, extra = divmod(num_tokens, world_size)
    return [base + (r < extra) for r in range(world_size)]


@dataclass(frozen=True)
class _Shard:
    """The communication context captured by the wrappers."""

    group: dist.ProcessGroup
    rank: int
    world_size: int


def _seq_to_heads(x: torch.Tensor, splits: list[int], sp: _Shard) -> torch.Tensor:
    """All-to-all ``[S, B, L_r, H, D]`` (local tokens, all heads) -> ``[S, B, L, H/N, D]``.

    ``S`` stacks q, k and v so the three travel in one collective.
    """
    s, b, lr, h, d = x.shape
    hl = h // sp.world_size
    # Chunk j of the send buffer (heads of rank j) goes to rank j; dim 0 is what the splits cut.
    send = x.view(s, b, lr, sp.world_size, hl, d).permute(3, 2, 0, 1, 4, 5)
    send = send.reshape(sp.world_size * lr, s, b, hl, d)
    recv = x.new_empty(sum(splits), s, b, hl, d)
    dist.all_to_all_single(
        recv, send, output_split_sizes=splits, input_split_sizes=[lr] * sp.world_size, group=sp.group
    )
    return recv.permute(1, 2, 0, 3, 4)


def _heads_to_seq(y: torch.Tensor, splits: list[int], sp: _Shard) -> torch.Tensor:
    """All-to-all ``[B, L, H/N, D]`` (all tokens, local heads) -> ``[B, L_r, H, D]``."""
    b, _, hl, d = y.shape
    lr = splits[sp.rank]
    send = y.permute(1, 0, 2, 3).contiguous()
    recv = y.new_empty(sp.world_size * lr, b, hl, d)
    dist.all_to_all_single(
        recv, send, output_split_sizes=[lr] * sp.world_size, input_split_sizes=splits, group=sp.group
    )
    # Rank j sent heads [j*H/N, (j+1)*H/N): put the rank axis in front of the local head axis.
    return recv.view(sp.world_size, lr, b, hl, d).permute(2, 1, 0, 3, 4).reshape(b, lr, sp.world_size * hl, d)


def _gather_tokens(x: torch.Tensor, splits: list[int], sp: _Shard) -> torch.Tensor:
    """All-gather ``[B, L_r, C]`` shards into ``[B, L, C]`` on every rank (shards padded to equal size)."""
    b, lr, c = x.shape
    longest = max(splits)
    send = x.new_zeros(longest, b, c)
    send[:lr] = x.transpose(0, 1)
    recv = x.new_empty(sp.world_size * longest, b, c)
    dist.all_gather_into_tensor(recv, send, group=sp.group)
    parts = recv.view(sp.world_size, longest, b, c)
    return torch.cat([parts[r, :n] for r, n in enumerate(splits)], dim=0).transpose(0, 1)


def _shard_depthwise_conv(conv: nn.Conv1d, channels: slice) -> None:
    """Keep the taps of ``channels`` only (depthwise: output channel ``i`` reads input channel ``i``)."""
    width = channels.stop - channels.start
    taps = conv.weight.detach()[channels].clone()
    conv.weight = nn.Parameter(taps, requires_grad=conv.weight.requires_grad)
    conv.in_channels = conv.out_channels = conv.groups = width


def _wrap_attend(attend: Callable[..., torch.Tensor], sp: _Shard) -> Callable[..., torch.Tensor]:
    """``attend`` on local tokens x all heads, computed as full sequence x local heads."""

    def sp_attend(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int, inp: BlockInputs
    ) -> torch.Tensor:
        """q, k, v ``[B, L_r, H, D]`` (this rank's tokens) -> ``[B, L_r, H, D]``."""
        splits = token_splits(inp.num_tokens, sp.world_size)
        q_h, k_h, v_h = _seq_to_heads(torch.stack((q, k, v)), splits, sp).unbind(0)
        return _heads_to_seq(attend(q_h, k_h, v_h, layer, inp), splits, sp)

    return sp_attend


def _wrap_denoise(
    denoise: Callable[..., torch.Tensor], local_heads: int, sp: _Shard
) -> Callable[..., torch.Tensor]:
    """``denoise_tokens`` on this rank's token range, output gathered from all ranks."""

    def sp_denoise(x: torch.Tensor, e: torch.Tensor, e0: torch.Tensor, inp: BlockInputs) -> torch.Tensor:
        """``x`` ``[B, L, dim]`` (whole block, same on every rank) -> ``[B, L, prod(patch) * out_dim]``."""
        if inp.token_offset or x.shape[1] != inp.num_tokens:
            raise ValueError("the sequence-parallel model takes the whole block's tokens")
        heads = inp.memory.k.shape[-2]
        if heads != local_heads:
            raise ValueError(
                f"this KVMemory holds {heads} heads but this rank attends with {local_heads}: create "
                "memories with model.new_memory() after parallelize()"
            )
        splits = token_splits(x.shape[1], sp.world_size)
        start = sum(splits[: sp.rank])
        local = x[:, start : start + splits[sp.rank]]
        out = denoise(local, e, e0, replace(inp, token_offset=start))
        return _gather_tokens(out, splits, sp)

    return sp_denoise


def parallelize(model: LiveActTransformer, group: dist.ProcessGroup | None = None) -> LiveActTransformer:
    """Make ``model`` this rank's part of a Ulysses sequence-parallel model, in place.

    Every rank must hold the same weights and call the model with the same inputs (the sampler with
    the same seed); every rank then returns the full, identical velocity. Apply before creating
    memories: ``model.new_memory`` then sizes them for this rank's ``num_heads / world_size`` heads.

    Args:
        model: a built single-process model (weights loaded, on this rank's device).
        group: the process group to split over; default the whole world.

    Returns:
        ``model`` itself. A world of one leaves it unchanged.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("parallelize() needs an initialised process group (see maybe_init_dist)")
    if getattr(model, "_sp_world_size", None) is not None:
        raise RuntimeError("model is already sequence-parallel")
    group = group or dist.group.WORLD
    world_size, rank = dist.get_world_size(group), dist.get_rank(group)
    cfg = model.config
    check_world_size(cfg.num_heads, world_size)
    if world_size == 1:
        return model
    sp = _Shard(group=group, rank=rank, world_size=world_size)
    local_heads = cfg.num_heads // world_size
    width = local_heads * cfg.head_dim
    channels = slice(rank * width, (rank + 1) * width)
    for block in model.blocks:
        attn = block.self_attn
        _shard_depthwise_conv(attn.memory_proj_k, channels)
        _shard_depthwise_conv(attn.memory_proj_v, channels)
        attn.attend = _wrap_attend(attn.attend, sp)
    model.denoise_tokens = _wrap_denoise(model.denoise_tokens, local_heads, sp)
    model._local_heads = local_heads
    model._sp_world_size = world_size
    logger.info(
        "sequence parallel: rank %d/%d attends with heads [%d, %d) of %d",
        rank,
        world_size,
        rank * local_heads,
        (rank + 1) * local_heads,
        cfg.num_heads,
    )
    return model
