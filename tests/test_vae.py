"""Wan VAE: key conversion, parity with the authors' outputs, and streaming decode."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from conftest import case_params, load_meta
from safetensors.torch import load_file

from liveact.components.vae import (
    StreamingVAEDecoder,
    VAEArch,
    WanVAE,
    convert_wan_vae_state_dict,
    infer_vae_config,
)

TOL = 1e-4  # absolute, as the fixture README states


def _load_case(case: Path) -> tuple[WanVAE, dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    meta = load_meta(case)
    norm = meta["latent_normalisation"]
    vae = WanVAE.from_pth(
        case / meta["weights_file"], "cpu", torch.float32, mean=tuple(norm["mean"]), std=tuple(norm["std"])
    )
    return vae, meta, load_file(case / "inputs.safetensors"), load_file(case / "expected.safetensors")


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize("case", case_params("components", "vae"))
def test_infer_config_and_conversion(case: Path) -> None:
    meta = load_meta(case)
    sd = torch.load(case / meta["weights_file"], map_location="cpu", weights_only=True)
    arch = infer_vae_config(sd)
    cfg = meta["config"]
    assert arch.base_dim == cfg["dim"]
    assert arch.z_dim == cfg["z_dim"]
    assert list(arch.dim_mult) == cfg["dim_mult"]
    assert arch.num_res_blocks == cfg["num_res_blocks"]
    assert list(arch.temperal_downsample) == cfg["temperal_downsample"]
    converted = convert_wan_vae_state_dict(sd, arch)
    assert len(converted) == len(sd) == meta["num_state_dict_keys"]


@pytest.mark.parametrize("case", case_params("components", "vae"))
def test_vae_matches_reference(case: Path) -> None:
    vae, _, inputs, expected = _load_case(case)
    assert _max_err(vae.encode(inputs["video"]), expected["latent_video"]) < TOL

    # generate.py's conditioning video: the image followed by zero frames up to the expected latent length.
    n_lat = expected["latent_y"].shape[1]
    frames = 1 + vae.arch.temporal_stride * (n_lat - 1)
    img = inputs["cond_image"]
    y_video = torch.cat([img, img.new_zeros(*img.shape[:2], frames - 1, *img.shape[3:])], dim=2)
    assert _max_err(vae.encode(y_video), expected["latent_y"]) < TOL

    # The reference-stitched stream yields decode(block0) first, then the stitched block 1.
    stream = vae.stream_decoder(stitch="reference")
    assert stream.context_frames == 1 + vae.arch.temporal_stride * (stream.context_latents - 1)
    block0 = stream.decode_block(inputs["latent_block0"])
    assert _max_err(block0, expected["decode_block0"]) < TOL
    assert _max_err(stream.decode_block(inputs["latent_block1"]), expected["decode_block1_stitched"]) < TOL


def _random_vae(base_dim: int, seed: int = 0) -> WanVAE:
    """A Wan2.1-layout VAE (z 16, strides 4x8x8) of another width than the fixture's, random weights."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    down = (False, True, True)
    model = AutoencoderKLWan(
        base_dim=base_dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=list(down)
    )
    arch = VAEArch(
        base_dim=base_dim,
        decoder_base_dim=base_dim,
        z_dim=16,
        dim_mult=(1, 2, 4, 4),
        num_res_blocks=2,
        temperal_downsample=down,
        in_channels=3,
        out_channels=3,
    )
    return WanVAE(model, arch)


def _stream_matches_whole(vae: WanVAE, plane: tuple[int, int]) -> None:
    """Streamed blocks (2, 1, 3 latents) concatenate to one whole decode, within float32 rounding.

    Bit-equality is not guaranteed: the 1x1x1 ``post_quant_conv`` runs on whole blocks, so blocks of other
    lengths can get other oneDNN convolution algorithms (other summation orders), and the ulp differences
    travel through the decoder (measured: up to 8.8e-6 on one machine, 0 on another). The bound is
    therefore the float32 rounding error of the whole decode itself, measured against the same decode in
    float64: two float32 evaluations each within ``e`` of the exact result are within ``2e`` of each other;
    4e leaves room for a less accurate algorithm, and is still ~1e4 times below what a broken cache gives.
    """
    g = torch.Generator().manual_seed(0)
    latent = torch.randn(vae.arch.z_dim, 6, *plane, generator=g)
    whole = vae.decode(latent)
    stride = vae.arch.temporal_stride
    assert whole.shape[2] == 1 + stride * 5

    exact = copy.deepcopy(vae).double().decode(latent.double())
    rounding = (whole.double() - exact).abs().max().item()
    bound = 4 * max(rounding, torch.finfo(torch.float32).eps)

    stream = StreamingVAEDecoder(vae, stitch="continuous")
    parts = [stream.decode_block(latent[:, a:b]) for a, b in ((0, 2), (2, 3), (3, 6))]
    assert [p.shape[2] for p in parts] == [1 + stride, stride, 3 * stride]
    streamed = torch.cat(parts, dim=2)
    assert _max_err(streamed, whole) <= bound, (_max_err(streamed, whole), rounding)
    assert (streamed.double() - exact).abs().max().item() <= bound

    stream.reset()
    assert _max_err(stream.decode_block(latent[:, :2]), whole[:, :, : 1 + stride]) <= bound


@pytest.mark.parametrize("plane", [(2, 2), (6, 10)], ids=["2x2", "6x10"])
@pytest.mark.parametrize("case", case_params("components", "vae"))
def test_continuous_stream_equals_whole_decode(case: Path, plane: tuple[int, int]) -> None:
    vae, _, _, _ = _load_case(case)
    _stream_matches_whole(vae, plane)


def test_continuous_stream_equals_whole_decode_other_width() -> None:
    """Another VAE width (base 16) on a non-square 48x80 frame; needs no fixtures."""
    _stream_matches_whole(_random_vae(16), (6, 10))


def test_loader_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Wan2.1_VAE.pth"):
        WanVAE.from_pth(tmp_path / "Wan2.1_VAE.pth")
    with pytest.raises(ValueError, match="missing key"):
        infer_vae_config({"foo": torch.zeros(1)})
