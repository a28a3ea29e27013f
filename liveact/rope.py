"""3-D rotary position embedding (time, height, width) of the Wan DiT.

Each head's ``D/2`` complex pairs are split into time/height/width groups (``ModelConfig.rope_split``);
group ``i`` with ``n_i`` pairs uses angles ``pos * theta^(-2j / (2 n_i))``. Adjacent channels
``(2j, 2j+1)`` form one complex number.

The reference re-ropes the whole key cache in complex128 on every call. We compute the angle table
once per geometry in float64 (exact angles), keep cos/sin in float32, and rotate in float32: within
4e-7 relative of the float64 path and a quarter of its memory traffic.
"""

from __future__ import annotations

import torch

from liveact.islands import island


def _axis_angles(positions: torch.Tensor, pairs: int, theta: float) -> torch.Tensor:
    """Angles ``[P, pairs]`` (float64) for integer ``positions`` ``[P]`` along one axis."""
    exponents = torch.arange(0, 2 * pairs, 2, dtype=torch.float64) / (2 * pairs)
    return torch.outer(positions.to(torch.float64), theta**-exponents)


def rope_table(
    frames: int,
    height: int,
    width: int,
    split: tuple[int, int, int],
    theta: float = 10000.0,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables for a ``frames x height x width`` token grid in raster (t, h, w) order.

    Args:
        frames, height, width: token grid; frame ``f`` gets temporal position ``f``.
        split: complex pairs per axis (time, height, width).

    Returns:
        ``(cos, sin)``, each ``[frames * height * width, sum(split)]`` float32 on ``device``.
    """
    t_ang = _axis_angles(torch.arange(frames), split[0], theta)
    h_ang = _axis_angles(torch.arange(height), split[1], theta)
    w_ang = _axis_angles(torch.arange(width), split[2], theta)
    angles = torch.cat(
        [
            t_ang[:, None, None, :].expand(frames, height, width, split[0]),
            h_ang[None, :, None, :].expand(frames, height, width, split[1]),
            w_ang[None, None, :, :].expand(frames, height, width, split[2]),
        ],
        dim=-1,
    ).reshape(frames * height * width, -1)
    return angles.cos().float().to(device), angles.sin().float().to(device)


@island
def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of ``x`` by the per-token angles.

    Args:
        x: ``[B, L, H, D]``.
        cos, sin: ``[L, D/2]`` float32.

    Returns:
        ``[B, L, H, D]`` in the dtype of ``x`` (rotation computed in float32).
    """
    pairs = x.float().unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    c, s = cos[:, None, :], sin[:, None, :]
    rotated = torch.stack((even * c - odd * s, even * s + odd * c), dim=-1)
    return rotated.flatten(-2).type_as(x)
