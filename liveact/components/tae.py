"""Tiny causal video autoencoder (TAEHV design): Nano's autoencoder and a fast decoder for Wan latents.

The design is madebyollin's TAEHV (public, MIT): 2-D convolutions per frame, "memory blocks"
``relu(conv(cat[x, x_previous_frame]) + skip(x))`` that see the same layer's input one frame
earlier, 1x1 convolutions that fold ``stride`` frames into channels (encoder) or unfold them
(decoder), 16 latent channels and a 4x8x8 stride. Everything here is our own implementation; the
module layout (``encoder.<i>`` / ``decoder.<i>`` sequences) matches the public ``taew2_1.pth`` so
those weights load as they are (``TinyAutoencoder.from_file``) and users of the 14B model can decode
with it (``--vae tae --tae_path taew2_1.pth``).

Frame alignment is Wan's: latent 0 is video frame 0 alone, latent ``j >= 1`` covers frames
``4j-3 .. 4j``. The encoder therefore sees frame 0 four times (three copies in front), and the
decoder's first three output frames are dropped at the start of a video.

The time recursion is causal, so a video decodes block by block with the per-layer "previous frame"
carried between blocks (``TAEStreamDecoder``): the concatenation equals one decode of all latents.
Within a block all frames of a layer run as one batch, which is what makes it fast.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


def _conv(n_in: int, n_out: int, **kwargs: object) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class Clamp(nn.Module):
    """Soft clamp of latents to about +-3 (``3 tanh(x / 3)``): robust to out-of-range inputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Any shape."""
        return torch.tanh(x / 3) * 3


class MemBlock(nn.Module):
    """Residual block that also sees its input one frame earlier (``past``)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            _conv(n_in * 2, n_out),
            nn.ReLU(inplace=True),
            _conv(n_out, n_out),
            nn.ReLU(inplace=True),
            _conv(n_out, n_out),
        )
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        """``x``, ``past``: ``[N*T, C, H, W]`` -> ``[N*T, C_out, H, W]``."""
        return F.relu(self.conv(torch.cat([x, past], 1)) + self.skip(x))


class TimePool(nn.Module):
    """Fold ``stride`` consecutive frames into one (1x1 conv over the stacked channels)."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels * stride, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N*T, C, H, W]`` -> ``[N*T/stride, C, H, W]``."""
        return self.conv(x.reshape(-1, self.stride * x.shape[1], *x.shape[2:]))


class TimeGrow(nn.Module):
    """Unfold each frame into ``stride`` frames (1x1 conv to ``stride`` channel groups)."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels, channels * stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N*T, C, H, W]`` -> ``[N*T*stride, C, H, W]``."""
        return self.conv(x).reshape(-1, x.shape[1], *x.shape[2:])


@dataclass(frozen=True)
class TAEConfig:
    """Widths and strides of a tiny autoencoder (defaults: the public TAEW2.1)."""

    latent_channels: int = 16
    encoder_widths: tuple[int, int, int] = (64, 64, 64)
    decoder_widths: tuple[int, int, int, int] = (256, 128, 64, 64)
    encoder_time_downscale: tuple[bool, bool, bool] = (True, True, False)
    decoder_time_upscale: tuple[bool, bool, bool] = (False, True, True)
    blocks_per_stage: int = 3

    @property
    def temporal_stride(self) -> int:
        """Video frames per latent frame (after the first)."""
        return 2 ** sum(self.decoder_time_upscale)

    @property
    def spatial_stride(self) -> int:
        """Pixels per latent row/column."""
        return 8

    def to_dict(self) -> dict:
        """JSON-serialisable fields."""
        return {
            "latent_channels": self.latent_channels,
            "encoder_widths": list(self.encoder_widths),
            "decoder_widths": list(self.decoder_widths),
            "encoder_time_downscale": list(self.encoder_time_downscale),
            "decoder_time_upscale": list(self.decoder_time_upscale),
            "blocks_per_stage": self.blocks_per_stage,
        }

    @classmethod
    def from_dict(cls, d: dict) -> TAEConfig:
        """Inverse of ``to_dict`` (unknown keys are an error)."""
        d = dict(d)
        for key in ("encoder_widths", "decoder_widths", "encoder_time_downscale", "decoder_time_upscale"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


def _encoder(cfg: TAEConfig) -> nn.Sequential:
    widths, n = cfg.encoder_widths, cfg.blocks_per_stage
    layers: list[nn.Module] = [_conv(3, widths[0]), nn.ReLU(inplace=True)]
    w_in = widths[0]
    for w, down in zip(widths, cfg.encoder_time_downscale):
        layers += [TimePool(w_in, 2 if down else 1), _conv(w_in, w, stride=2, bias=False)]
        layers += [MemBlock(w, w) for _ in range(n)]
        w_in = w
    layers.append(_conv(w_in, cfg.latent_channels))
    return nn.Sequential(*layers)


def _decoder(cfg: TAEConfig) -> nn.Sequential:
    widths, n = cfg.decoder_widths, cfg.blocks_per_stage
    layers: list[nn.Module] = [Clamp(), _conv(cfg.latent_channels, widths[0]), nn.ReLU(inplace=True)]
    for stage, up in enumerate(cfg.decoder_time_upscale):
        layers += [MemBlock(widths[stage], widths[stage]) for _ in range(n)]
        layers += [
            nn.Upsample(scale_factor=2),
            TimeGrow(widths[stage], 2 if up else 1),
            _conv(widths[stage], widths[stage + 1], bias=False),
        ]
    layers += [nn.ReLU(inplace=True), _conv(widths[-1], 3)]
    return nn.Sequential(*layers)


def run_causal(layers: nn.Sequential, x: torch.Tensor, batch: int, state: list | None = None) -> torch.Tensor:
    """Apply a sequence of frame layers to all frames at once, causally in time.

    Args:
        layers: the encoder or decoder sequence.
        x: ``[N*T, C, H, W]`` frames, sample-major (``N = batch``).
        state: per-layer last input frame ``[N, C, H, W]`` of the previous call (a stream), updated in
            place; None = the video starts here (zero "previous frame").

    Returns:
        ``[N*T', C', H', W']`` (``T'`` after the time pooling / growth).
    """
    for i, layer in enumerate(layers):
        if isinstance(layer, MemBlock):
            frames = x.unflatten(0, (batch, -1))  # [N, T, C, H, W]
            first = (
                frames.new_zeros(frames[:, :1].shape)
                if state is None or state[i] is None
                else state[i][:, None]
            )
            past = torch.cat([first, frames[:, :-1]], dim=1).flatten(0, 1)
            if state is not None:
                state[i] = frames[:, -1].detach()
            x = layer(x, past)
        else:
            x = layer(x)
    return x


class TinyAutoencoder(nn.Module):
    """Encoder + decoder with Wan's latent interface (``[-1, 1]`` video, ``[C, T, h, w]`` latents).

    ``latent_mean`` / ``latent_std`` map the network's latent to the diffusion model's: zero and one
    for TAEW2.1 (it already works in the Wan DiT's normalised space), per-channel statistics for
    Nano's own autoencoder.
    """

    def __init__(self, config: TAEConfig = TAEConfig()) -> None:
        super().__init__()
        self.config = config
        self.encoder = _encoder(config)
        self.decoder = _decoder(config)
        self.register_buffer("latent_mean", torch.zeros(config.latent_channels))
        self.register_buffer("latent_std", torch.ones(config.latent_channels))

    # -------------------------------------------------------------------------------- loading

    @classmethod
    def from_file(
        cls, path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> TinyAutoencoder:
        """Load a ``.pth`` or ``.safetensors`` state dict in the TAEHV layout; widths inferred from it."""
        from liveact.loading import AssetError, load_pth

        path = Path(path)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            try:
                state = load_file(str(path))
            except Exception as exc:
                raise AssetError(f"{path} is not a readable safetensors file: {exc}") from exc
        else:
            state = load_pth(path, "tiny autoencoder weights (TAEHV layout, e.g. taew2_1.pth)")
        try:
            config = infer_tae_config(state)
        except (KeyError, ValueError) as exc:
            raise AssetError(f"{path}: not a tiny autoencoder in the TAEHV layout ({exc})") from exc
        model = cls(config)
        state = dict(state)
        state.setdefault("latent_mean", model.latent_mean)
        state.setdefault("latent_std", model.latent_std)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise AssetError(f"{path}: weights do not match the inferred layout {config}: {exc}") from exc
        return model.to(device=device, dtype=dtype).eval().requires_grad_(False)

    @property
    def device(self) -> torch.device:
        """Parameter device."""
        return self.latent_mean.device

    @property
    def dtype(self) -> torch.dtype:
        """Parameter dtype."""
        return self.decoder[1].weight.dtype

    @property
    def temporal_stride(self) -> int:
        """Video frames per latent frame."""
        return self.config.temporal_stride

    # -------------------------------------------------------------------------------- encode / decode

    def encode_frames(self, video: torch.Tensor) -> torch.Tensor:
        """Differentiable encode of a batch of videos (training).

        Args:
            video: ``[N, 3, 1 + 4n, H, W]`` in [-1, 1] (``H, W`` multiples of 8).

        Returns:
            ``[N, C, 1 + n, H/8, W/8]`` normalised latents.
        """
        n, _, t = video.shape[:3]
        stride = self.temporal_stride
        if (t - 1) % stride:
            raise ValueError(f"frame count must be 1 + {stride}*n, got {t}")
        padded = torch.cat([video[:, :, :1].expand(-1, -1, stride - 1, -1, -1), video], dim=2)
        frames = padded.transpose(1, 2).flatten(0, 1).to(self.dtype) * 0.5 + 0.5  # [N*T, 3, H, W] in [0, 1]
        z = run_causal(self.encoder, frames, n).unflatten(0, (n, -1)).transpose(1, 2)
        return (z - self.latent_mean.view(1, -1, 1, 1, 1)) / self.latent_std.view(1, -1, 1, 1, 1)

    def decode_frames(
        self, latent: torch.Tensor, state: list | None = None, first: bool = True, clamp: bool = True
    ) -> torch.Tensor:
        """Differentiable decode (training) or one streamed block (with ``state``).

        Args:
            latent: ``[N, C, T, h, w]`` normalised latents.
            state: per-layer previous frames of a stream (see ``run_causal``), or None.
            first: the block starts the video (its first 3 frames are dropped).
            clamp: clamp to [-1, 1]. Training turns it off: a clamp passes no gradient to pixels out
                of range, which stalls learning.

        Returns:
            ``[N, 3, 4T - 3 (first) or 4T, 8h, 8w]`` in [-1, 1].
        """
        n = latent.shape[0]
        z = latent * self.latent_std.view(1, -1, 1, 1, 1) + self.latent_mean.view(1, -1, 1, 1, 1)
        x = run_causal(self.decoder, z.transpose(1, 2).flatten(0, 1).to(self.dtype), n, state)
        video = x.unflatten(0, (n, -1)).transpose(1, 2)
        video = (video.clamp(0, 1) if clamp else video) * 2 - 1
        return video[:, :, self.temporal_stride - 1 :] if first else video

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Wan-VAE-compatible encode: ``[1, 3, 1+4n, H, W]`` in [-1, 1] -> ``[C, 1+n, H/8, W/8]``."""
        if video.ndim != 5 or video.shape[0] != 1:
            raise ValueError(f"expected video [1, 3, T, H, W], got {tuple(video.shape)}")
        return self.encode_frames(video.to(self.device)).float()[0]

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Wan-VAE-compatible whole decode: ``[C, T, h, w]`` -> ``[1, 3, 1 + 4(T-1), H, W]``."""
        return self.decode_frames(latent.to(self.device)[None], None, first=True).float()

    def stream_decoder(self, stitch: str = "continuous") -> TAEStreamDecoder:
        """A block-by-block decoder (the tiny autoencoder decodes continuously only)."""
        if stitch != "continuous":
            raise ValueError(
                f"the tiny autoencoder decodes continuously; stitch={stitch!r} applies to the Wan VAE only"
            )
        return TAEStreamDecoder(self)


class TAEStreamDecoder:
    """Decode consecutive latent blocks of one video with the time recursion carried across blocks."""

    def __init__(self, tae: TinyAutoencoder) -> None:
        self.tae = tae
        self.reset()

    def reset(self) -> None:
        """The next block starts a new video."""
        self._state: list | None = None

    @torch.no_grad()
    def decode_block(self, latent: torch.Tensor) -> torch.Tensor:
        """``[C, T, h, w]`` -> ``[1, 3, F, H, W]`` in [-1, 1]: ``F = 4T - 3`` for the first block, else
        ``4T``."""
        first = self._state is None
        if first:
            self._state = [None] * len(self.tae.decoder)
        return self.tae.decode_frames(
            latent.to(self.tae.device, self.tae.dtype)[None], self._state, first
        ).float()


def infer_tae_config(state: dict[str, torch.Tensor]) -> TAEConfig:
    """Read widths, latent channels and time strides off a TAEHV-layout state dict."""
    latent = state["decoder.1.weight"].shape[1]
    dec_first = state["decoder.1.weight"].shape[0]

    def one_by_one(part: str) -> list[int]:
        # TimePool / TimeGrow: 1x1 convs directly under the sequence index (no deeper module path).
        return sorted(
            int(k.split(".")[1])
            for k in state
            if k.startswith(f"{part}.")
            and k.endswith(".conv.weight")
            and k.count(".") == 3
            and state[k].ndim == 4
            and state[k].shape[-1] == 1
        )

    pools, grows = one_by_one("encoder"), one_by_one("decoder")
    if len(pools) != 3 or len(grows) != 3:
        raise ValueError(f"expected 3 time-pool and 3 time-grow layers, found {len(pools)} and {len(grows)}")
    enc_down, enc_widths = [], []
    for i in pools:
        w = state[f"encoder.{i}.conv.weight"]
        enc_down.append(w.shape[1] // w.shape[0] == 2)
        enc_widths.append(state[f"encoder.{i + 1}.weight"].shape[0])  # the strided conv after the pool
    dec_up = tuple(
        state[f"decoder.{i}.conv.weight"].shape[0] // state[f"decoder.{i}.conv.weight"].shape[1] == 2
        for i in grows
    )
    widths = [dec_first] + [state[f"decoder.{i + 1}.weight"].shape[0] for i in grows]
    per_stage = (grows[1] - grows[0]) - 3
    return TAEConfig(
        latent_channels=latent,
        encoder_widths=tuple(enc_widths),
        decoder_widths=tuple(widths),
        encoder_time_downscale=tuple(enc_down),
        decoder_time_upscale=dec_up,
        blocks_per_stage=per_stage,
    )


def he_init(model: nn.Module) -> None:
    """He (fan-in, ReLU) initialisation of every convolution, zero biases: deep ReLU stacks keep their
    signal scale from the first step, which makes training from scratch converge much sooner."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
