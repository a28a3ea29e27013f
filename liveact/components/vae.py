"""Wan2.1 video VAE on diffusers' ``AutoencoderKLWan``, loaded from the original ``Wan2.1_VAE.pth``.

The original checkpoint uses the authors' key names (``encoder.downsamples.*``, ``decoder.upsamples.*``,
``conv1``/``conv2``); :func:`convert_wan_vae_state_dict` renames them to diffusers' layout, and
:func:`infer_vae_config` reads every architecture number (base dim, channel multipliers, residual blocks
per level, temporal downsampling) from the weights' shapes. The latent normalisation uses the reference's
exact arithmetic (``(mu - mean) * (1/std)`` and ``z / (1/std) + mean``) so results are bit-identical.

Decoding is causal in time: the decoder consumes one latent frame at a time and keeps a per-conv cache of
the last frames. :class:`StreamingVAEDecoder` keeps that cache between blocks, so consecutive latent blocks
decode to one continuous video; ``stitch="reference"`` instead reproduces the authors' overlap-and-crop.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

from liveact.loading import AssetError, load_pth

logger = logging.getLogger(__name__)

# Per-channel latent statistics of the Wan2.1 VAE. They are not stored in Wan2.1_VAE.pth.
WAN21_LATENT_MEAN: tuple[float, ...] = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENT_STD: tuple[float, ...] = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip

StitchMode = Literal["continuous", "reference"]

# Inner layer names of one original residual block -> diffusers' WanResidualBlock.
_RESIDUAL_RENAME = {
    "residual.0": "norm1",
    "residual.2": "conv1",
    "residual.3": "norm2",
    "residual.6": "conv2",
}
_RESIDUAL_RENAME_RE = re.compile(r"^(residual\.[0236]|shortcut)\.")


@dataclass(frozen=True)
class VAEArch:
    """Architecture numbers of a Wan2.1-style VAE, all read from a state dict."""

    base_dim: int
    decoder_base_dim: int
    z_dim: int
    dim_mult: tuple[int, ...]
    num_res_blocks: int
    temperal_downsample: tuple[bool, ...]
    in_channels: int
    out_channels: int

    @property
    def temporal_stride(self) -> int:
        """Pixel frames per latent frame (4 for Wan2.1)."""
        return 2 ** sum(self.temperal_downsample)

    @property
    def spatial_stride(self) -> int:
        """Pixels per latent row/column (8 for Wan2.1)."""
        return 2 ** (len(self.dim_mult) - 1)


def _layer_indices(state_dict: dict[str, torch.Tensor], prefix: str) -> list[int]:
    """Sorted distinct integer indices ``i`` of keys ``<prefix>.<i>.*``."""
    pat = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return sorted({int(m.group(1)) for k in state_dict if (m := pat.match(k))})


def infer_vae_config(state_dict: dict[str, torch.Tensor]) -> VAEArch:
    """Read the VAE architecture from an original-format Wan VAE state dict.

    The encoder's flat ``downsamples`` list holds, per level, ``num_res_blocks`` residual blocks followed by
    one resample layer (none after the last level); a resample layer with a ``time_conv`` also halves time.
    """
    try:
        conv_in = state_dict["encoder.conv1.weight"]  # [base_dim, in_ch, 3, 3, 3]
        z_dim = state_dict["conv2.weight"].shape[0]
        head_out = state_dict["decoder.head.2.weight"]  # [out_ch, decoder_dim0, 3, 3, 3]
    except KeyError as err:
        raise ValueError(f"not an original Wan VAE state dict: missing key {err}") from err
    if any("to_qkv" in k and ".middle." not in k for k in state_dict):
        raise NotImplementedError(
            "Wan VAE checkpoints with attention outside the middle block are not supported"
        )
    base_dim = conv_in.shape[0]
    down = _layer_indices(state_dict, "encoder.downsamples")
    resample_idx = [i for i in down if f"encoder.downsamples.{i}.resample.1.weight" in state_dict]
    num_res_blocks = resample_idx[0] if resample_idx else len(down)
    levels = len(resample_idx) + 1
    dim_mult = []
    for level in range(levels):
        last_res = level * (num_res_blocks + 1) + num_res_blocks - 1
        out_dim = state_dict[f"encoder.downsamples.{last_res}.residual.6.weight"].shape[0]
        dim_mult.append(out_dim // base_dim)
    temporal = tuple(f"encoder.downsamples.{i}.time_conv.weight" in state_dict for i in resample_idx)
    return VAEArch(
        base_dim=base_dim,
        decoder_base_dim=head_out.shape[1] // dim_mult[0],
        z_dim=z_dim,
        dim_mult=tuple(dim_mult),
        num_res_blocks=num_res_blocks,
        temperal_downsample=temporal,
        in_channels=conv_in.shape[1],
        out_channels=head_out.shape[0],
    )


def _rename_residual_inner(rest: str) -> str:
    """``residual.2.weight`` -> ``conv1.weight`` etc.; other names (resample, time_conv) are unchanged."""
    m = _RESIDUAL_RENAME_RE.match(rest)
    if not m:
        return rest
    name = m.group(1)
    return ("conv_shortcut" if name == "shortcut" else _RESIDUAL_RENAME[name]) + rest[m.end(1) :]


def _decoder_up_names(arch: VAEArch) -> list[str]:
    """diffusers module prefix for each flat index of the original ``decoder.upsamples`` list.

    Each decoder level has ``num_res_blocks + 1`` residual blocks, then one upsampler except the last level.
    """
    names = []
    levels = len(arch.dim_mult)
    for level in range(levels):
        names += [f"decoder.up_blocks.{level}.resnets.{r}" for r in range(arch.num_res_blocks + 1)]
        if level < levels - 1:
            names.append(f"decoder.up_blocks.{level}.upsamplers.0")
    return names


def _convert_key(key: str, up_names: list[str]) -> str:
    """Map one original Wan VAE key to its diffusers ``AutoencoderKLWan`` name."""
    top = {"conv1.": "quant_conv.", "conv2.": "post_quant_conv."}
    for old, new in top.items():
        if key.startswith(old):
            return new + key[len(old) :]
    part, rest = key.split(".", 1)  # part: encoder | decoder
    fixed = {
        "conv1.": "conv_in.",
        "head.0.": "norm_out.",
        "head.2.": "conv_out.",
        "middle.1.": "mid_block.attentions.0.",
    }
    for old, new in fixed.items():
        if rest.startswith(old):
            return f"{part}.{new}{rest[len(old) :]}"
    m = re.match(r"(middle|downsamples|upsamples)\.(\d+)\.(.*)", rest)
    if m is None:
        raise KeyError(f"unexpected Wan VAE key {key!r}")
    group, idx, inner = m.group(1), int(m.group(2)), _rename_residual_inner(m.group(3))
    if group == "middle":
        # middle = [resblock, attention, resblock]; attention was handled above.
        return f"{part}.mid_block.resnets.{idx // 2}.{inner}"
    if group == "downsamples":
        return f"{part}.down_blocks.{idx}.{inner}"
    return f"{up_names[idx]}.{inner}"


def convert_wan_vae_state_dict(
    state_dict: dict[str, torch.Tensor], arch: VAEArch | None = None
) -> dict[str, torch.Tensor]:
    """Rename an original ``Wan2.1_VAE.pth`` state dict to ``AutoencoderKLWan`` keys (tensors shared)."""
    arch = arch or infer_vae_config(state_dict)
    up_names = _decoder_up_names(arch)
    return {_convert_key(k, up_names): v for k, v in state_dict.items()}


def _new_decoder_cache(model: AutoencoderKLWan) -> list:
    """An empty per-conv feature cache for ``model.decoder`` (one slot per causal conv)."""
    n = sum(isinstance(m, WanCausalConv3d) for m in model.decoder.modules())
    return [None] * n


class WanVAE(torch.nn.Module):
    """Wan2.1 VAE with the reference's latent normalisation.

    Args:
        model: a loaded ``AutoencoderKLWan`` (Wan2.1 layout, no patchify).
        arch: the architecture numbers (for strides).
        mean, std: per-channel latent statistics, ``z_dim`` values each.
    """

    def __init__(
        self,
        model: AutoencoderKLWan,
        arch: VAEArch,
        mean: tuple[float, ...] = WAN21_LATENT_MEAN,
        std: tuple[float, ...] = WAN21_LATENT_STD,
    ) -> None:
        super().__init__()
        if len(mean) != arch.z_dim or len(std) != arch.z_dim:
            raise ValueError(f"latent mean/std need {arch.z_dim} values, got {len(mean)}/{len(std)}")
        self.model = model.eval().requires_grad_(False)
        self.arch = arch
        dtype = next(model.parameters()).dtype
        device = next(model.parameters()).device
        # The reference keeps mean and 1/std in the model dtype and multiplies by 1/std; keep that exactly.
        mean_t = torch.tensor(mean, dtype=dtype, device=device)
        self.register_buffer("latent_mean", mean_t.view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer(
            "latent_inv_std",
            (1.0 / torch.tensor(std, dtype=dtype, device=device)).view(1, -1, 1, 1, 1),
            persistent=False,
        )

    @classmethod
    def from_pth(
        cls,
        path: str | Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        mean: tuple[float, ...] = WAN21_LATENT_MEAN,
        std: tuple[float, ...] = WAN21_LATENT_STD,
    ) -> WanVAE:
        """Load an original-format ``Wan2.1_VAE.pth`` (architecture inferred from its shapes)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"Wan VAE checkpoint not found: {path} (expected the original Wan2.1_VAE.pth)"
            )
        state_dict = load_pth(path, "the Wan2.1 VAE weights")
        try:
            arch = infer_vae_config(state_dict)
        except ValueError as exc:
            raise AssetError(f"{path}: {exc}") from exc
        logger.info("Wan VAE %s: %s", path.name, arch)
        with torch.device("meta"):
            model = AutoencoderKLWan(
                base_dim=arch.base_dim,
                decoder_base_dim=arch.decoder_base_dim,
                z_dim=arch.z_dim,
                dim_mult=list(arch.dim_mult),
                num_res_blocks=arch.num_res_blocks,
                temperal_downsample=list(arch.temperal_downsample),
                in_channels=arch.in_channels,
                out_channels=arch.out_channels,
                latents_mean=list(mean),
                latents_std=list(std),
            )
        converted = {
            k: v.to(device=device, dtype=dtype)
            for k, v in convert_wan_vae_state_dict(state_dict, arch).items()
        }
        result = model.load_state_dict(converted, strict=False, assign=True)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"{path}: Wan VAE weights do not match the inferred architecture {arch}: "
                f"missing {result.missing_keys[:8]}, unexpected {result.unexpected_keys[:8]}"
            )
        return cls(model, arch, mean, std)

    def to_channels_last(self) -> WanVAE:
        """Store the 3-D convolution weights channels-last (``channels_last_3d``), in place.

        cuDNN's fastest 3-D convolution kernels take channels-last tensors; the reference sets
        ``USE_CHANNELS_LAST_3D=1`` for the same reason. Results equal the default layout up to the
        summation order of the chosen kernels.
        """
        for module in self.model.modules():
            # Conv3d weights only: Module.to(memory_format=...) would also try the 4-D norm scales.
            if isinstance(module, torch.nn.Conv3d):
                module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last_3d)
        return self

    @property
    def dtype(self) -> torch.dtype:
        """Parameter dtype."""
        return self.latent_mean.dtype

    @property
    def device(self) -> torch.device:
        """Parameter device."""
        return self.latent_mean.device

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Encode a pixel video to a normalised latent.

        Args:
            video: ``[1, 3, 1+4n, H, W]`` in [-1, 1] (4 = temporal stride).
        Returns:
            ``[z_dim, 1+n, H/8, W/8]`` normalised ``mu`` (the log-variance half is discarded).
        """
        if video.ndim != 5 or video.shape[0] != 1:
            raise ValueError(f"expected video [1, C, T, H, W], got {tuple(video.shape)}")
        if (video.shape[2] - 1) % self.arch.temporal_stride:
            raise ValueError(f"frame count must be 1 + {self.arch.temporal_stride}*n, got {video.shape[2]}")
        mu = self.model.encode(video.to(self.device, self.dtype)).latent_dist.mean
        return ((mu - self.latent_mean) * self.latent_inv_std)[0]

    def _unnormalise(self, latent: torch.Tensor) -> torch.Tensor:
        """``[z_dim, T, h, w]`` normalised -> ``[1, z_dim, T, h, w]`` raw, through ``post_quant_conv``."""
        if latent.ndim != 4 or latent.shape[0] != self.arch.z_dim:
            raise ValueError(f"expected latent [{self.arch.z_dim}, T, h, w], got {tuple(latent.shape)}")
        z = latent.to(self.device, self.dtype)[None] / self.latent_inv_std + self.latent_mean
        # post_quant_conv is 1x1x1, so it needs no temporal cache and can run on the whole block.
        return self.model.post_quant_conv(z)

    @torch.no_grad()
    def decode_frames(self, latent: torch.Tensor, cache: list, first: bool) -> torch.Tensor:
        """Decode latent frames one at a time through a caller-owned causal cache.

        Args:
            latent: ``[z_dim, T, h, w]`` normalised.
            cache: the per-conv feature cache (from :meth:`new_cache`), updated in place.
            first: whether ``latent[:, 0]`` is the first frame of the video (it decodes to one frame).
        Returns:
            ``[1, 3, F, H, W]`` clamped to [-1, 1], ``F = 1 + 4(T-1)`` if ``first`` else ``4T``.
        """
        x = self._unnormalise(latent)
        outs = []
        for i in range(x.shape[2]):
            is_first = first and i == 0
            outs.append(
                self.model.decoder(x[:, :, i : i + 1], feat_cache=cache, feat_idx=[0], first_chunk=is_first)
            )
        return torch.cat(outs, dim=2).clamp_(-1.0, 1.0)

    def new_cache(self) -> list:
        """A fresh causal-conv cache for :meth:`decode_frames`."""
        return _new_decoder_cache(self.model)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Decode a whole latent sequence with a fresh cache.

        Args:
            latent: ``[z_dim, T, h, w]`` normalised.
        Returns:
            ``[1, 3, 1+4(T-1), H, W]`` clamped to [-1, 1].
        """
        return self.decode_frames(latent, self.new_cache(), first=True)

    def stream_decoder(
        self, stitch: StitchMode = "continuous", context_latents: int | None = None
    ) -> StreamingVAEDecoder:
        """A :class:`StreamingVAEDecoder` over this VAE."""
        return StreamingVAEDecoder(self, stitch=stitch, context_latents=context_latents)


class StreamingVAEDecoder:
    """Decode consecutive latent blocks of one video.

    ``stitch="continuous"`` (default) keeps the causal conv cache between blocks: the first block of ``T``
    latents gives ``1 + 4(T-1)`` frames, each later block ``4T`` frames, and the concatenation equals one
    decode of all latents.

    ``stitch="reference"`` reproduces the authors' generate.py: every block after the first is decoded with a
    fresh cache after prepending the previous ``context_latents`` latents, and the frames those context
    latents produce (``1 + stride*(context_latents-1)``) are dropped. ``context_latents`` defaults to
    ``temporal_stride - 1`` (= 3 for Wan2.1, the reference's value).
    """

    def __init__(
        self, vae: WanVAE, stitch: StitchMode = "continuous", context_latents: int | None = None
    ) -> None:
        if stitch not in ("continuous", "reference"):
            raise ValueError(f"stitch must be 'continuous' or 'reference', got {stitch!r}")
        self.vae = vae
        self.stitch = stitch
        stride = vae.arch.temporal_stride
        self.context_latents = stride - 1 if context_latents is None else context_latents
        if self.context_latents < 1:
            raise ValueError(f"context_latents must be >= 1, got {self.context_latents}")
        # Frames decoded from the context latents with a fresh cache: 1 for the first, stride for each other.
        self.context_frames = 1 + stride * (self.context_latents - 1)
        self.reset()

    def reset(self) -> None:
        """Forget the previous blocks: the next block starts a new video."""
        self._cache: list | None = None
        self._tail: torch.Tensor | None = None

    @torch.no_grad()
    def decode_block(self, latent: torch.Tensor) -> torch.Tensor:
        """Decode the next latent block.

        Args:
            latent: ``[z_dim, T, h, w]`` normalised.
        Returns:
            ``[1, 3, F, H, W]``: ``F = 1 + 4(T-1)`` for the first block after a reset, ``4T`` afterwards.
        """
        if self.stitch == "continuous":
            first = self._cache is None
            if first:
                self._cache = self.vae.new_cache()
            return self.vae.decode_frames(latent, self._cache, first=first)
        return self._decode_reference(latent)

    def _decode_reference(self, latent: torch.Tensor) -> torch.Tensor:
        """Overlap-and-crop decode of generate.py (fresh cache per call)."""
        if self._tail is None:
            out = self.vae.decode(latent)
            history = latent
        else:
            history = torch.cat([self._tail, latent.to(self._tail)], dim=1)
            ctx = self._tail.shape[1]
            frames_dropped = 1 + self.vae.arch.temporal_stride * (ctx - 1)
            out = self.vae.decode(history)[:, :, frames_dropped:]
        self._tail = history[:, -self.context_latents :]
        return out
