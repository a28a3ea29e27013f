"""End-to-end pipeline tests on a tiny asset folder in the official layout (tests/tiny_assets.py).

Covers: the tiny folder's files load through our converters and round-trip; three streamed blocks have
the documented shapes and decode exactly like one whole-sequence decode; the reference VAE stitch and
streaming audio run; every missing or corrupt asset is reported by file name.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import fixtures_root, missing_fixtures
from PIL import Image
from tiny_assets import clip_vision_to_original, umt5_to_original, vae_to_original, write_tiny_assets

from liveact.components.encoders import (
    CLIPImageEncoder,
    T5TextEncoder,
    convert_clip_vision_state_dict,
    convert_umt5_state_dict,
)
from liveact.components.vae import WanVAE, convert_wan_vae_state_dict, infer_vae_config
from liveact.loading import CLIP_FILE, DIT_CONFIG, DIT_WEIGHTS, T5_FILE, T5_TOKENIZER, VAE_FILE, AssetError
from liveact.pipeline import LiveActPipeline, PreparedClip, Request

SIZE = (48, 32)  # (width, height): non-square so a swapped axis fails; 6x4 latents, 3x2 tokens
FPS = 24
SEED = 7
AUDIO_SECONDS = 3.5  # 84 frames at 24 fps: 21 + 32 + 32 = 3 blocks
BLOCKS = 3
BLOCK_FRAMES = [21, 32, 32]  # 1 + 4 * (6 - 1), then 4 * 8 with the default memory layout


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(ckpt_dir, wav2vec_dir)`` of one tiny folder shared by the module (tests only read it)."""
    return write_tiny_assets(tmp_path_factory.mktemp("tiny_assets"), seed=0)


@pytest.fixture(scope="module")
def request_(tmp_path_factory: pytest.TempPathFactory) -> Request:
    """A generated portrait-ish image, a 3.5 s tone-plus-noise wav, a prompt and one edit on block 1."""
    rng = np.random.default_rng(0)
    sr = 16000
    t = np.arange(int(AUDIO_SECONDS * sr)) / sr
    wave = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
    wave = (wave + 0.02 * rng.standard_normal(t.size)).astype(np.float32)
    wav = tmp_path_factory.mktemp("inputs") / "speech.wav"
    sf.write(wav, wave, sr)
    # Portrait 80x96 into a landscape 48x32 output: exercises the cover-resize and centre crop.
    yy, xx = np.mgrid[:96, :80]
    face = ((yy - 40) ** 2 + (xx - 40) ** 2 < 25**2)[..., None] * np.array([220, 180, 150])
    image = Image.fromarray((face + rng.integers(0, 30, (96, 80, 3))).clip(0, 255).astype(np.uint8))
    return Request(
        image=image, audio=wav, prompt="A woman talks to the camera.", edits=[((1, 1), "She smiles.")]
    )


@pytest.fixture(scope="module")
def pipe(assets: tuple[Path, Path]) -> LiveActPipeline:
    """The pipeline loaded from the tiny folder in float32 on the CPU."""
    return LiveActPipeline.from_pretrained(*assets, device="cpu", dtype=torch.float32, size=SIZE, fps=FPS)


@pytest.fixture(scope="module")
def clip(pipe: LiveActPipeline, request_: Request) -> PreparedClip:
    """The request's encoded conditions (shared: prepare() is the costly VAE encode)."""
    return pipe.prepare(request_)


def _variant(pipe: LiveActPipeline, **options: object) -> LiveActPipeline:
    """The same loaded models behind a pipeline with other constructor options."""
    return LiveActPipeline(
        pipe.transformer,
        pipe.vae,
        pipe.text_encoder,
        pipe.image_encoder,
        pipe.audio_encoder,
        size=SIZE,
        fps=FPS,
        **options,
    )


def _check_blocks(blocks: list[torch.Tensor]) -> None:
    """Documented per-block shapes, finite values in [-1, 1], not a constant image."""
    assert [tuple(b.shape) for b in blocks] == [(1, 3, n, SIZE[1], SIZE[0]) for n in BLOCK_FRAMES]
    for b in blocks:
        assert torch.isfinite(b).all()
        assert b.min() >= -1 and b.max() <= 1
        assert b.std() > 1e-3


# --------------------------------------------------------------------------------------------------
# the tiny folder itself


def test_tiny_vae_file_loads_and_round_trips(assets: tuple[Path, Path]) -> None:
    """Wan2.1_VAE.pth has original names: WanVAE.from_pth loads it and holds exactly its tensors."""
    ckpt, _ = assets
    original = torch.load(ckpt / VAE_FILE, map_location="cpu", weights_only=True)
    assert any(k.startswith("decoder.upsamples.") for k in original)
    assert all(k.split(".")[0] in ("encoder", "decoder", "conv1", "conv2") for k in original)
    arch = infer_vae_config(original)
    assert (arch.temporal_stride, arch.spatial_stride, arch.z_dim) == (4, 8, 16)
    vae = WanVAE.from_pth(ckpt / VAE_FILE, dtype=torch.float32)
    loaded = vae.model.state_dict()
    converted = convert_wan_vae_state_dict(original, arch)
    assert converted.keys() == loaded.keys()
    assert all(torch.equal(converted[k], loaded[k]) for k in loaded)
    assert vae_to_original(loaded, arch).keys() == original.keys()


def test_tiny_encoder_files_load(assets: tuple[Path, Path]) -> None:
    """umT5 (bf16) + tokenizer and the CLIP visual tower load from the original-format files."""
    ckpt, _ = assets
    t5_state = torch.load(ckpt / T5_FILE, map_location="cpu", weights_only=True)
    assert {v.dtype for v in t5_state.values()} == {torch.bfloat16}
    t5 = T5TextEncoder.from_pth(ckpt / T5_FILE, ckpt / T5_TOKENIZER, dtype=torch.float32, text_len=16)
    tok = t5.tokenizer
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert len(tok) <= t5.model.config.vocab_size
    ids, mask = t5.tokenize(["A person talks, smiling: 42!"])
    assert ids[0, mask[0].sum() - 1] == 1 and tok.unk_token_id not in ids[0].tolist()
    out = t5.encode(["A person talks."])[0]
    assert out.shape[1] == t5.model.config.d_model and torch.isfinite(out).all()

    image = CLIPImageEncoder.from_pth(ckpt / CLIP_FILE, dtype=torch.float32)
    feats = image.encode(torch.rand(1, 3, 1, 64, 64) * 2 - 1)
    assert feats.shape == (1, 257, 80) and torch.isfinite(feats).all()


def test_tiny_assets_are_deterministic(tmp_path: Path, assets: tuple[Path, Path]) -> None:
    """Equal seeds give byte-equal DiT weights; the folder stays small."""
    ckpt, _ = write_tiny_assets(tmp_path, seed=0)
    assert (ckpt / DIT_WEIGHTS).read_bytes() == (assets[0] / DIT_WEIGHTS).read_bytes()
    total = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert total < 20 * 2**20


@pytest.mark.parametrize("component", ["vae", "t5", "clip"])
def test_inverse_converters_on_reference_files(component: str) -> None:
    """The inverse converters reproduce the reference's own key names (component fixtures)."""
    path = fixtures_root() / "components" / component
    files = {"vae": VAE_FILE, "t5": T5_FILE, "clip": CLIP_FILE}
    if not (path / files[component]).is_file():
        missing_fixtures(f"no {files[component]} under components/{component}/")
    original = torch.load(path / files[component], map_location="cpu", weights_only=True)
    if component == "vae":
        arch = infer_vae_config(original)
        assert vae_to_original(convert_wan_vae_state_dict(original, arch), arch).keys() == original.keys()
    elif component == "t5":
        assert umt5_to_original(convert_umt5_state_dict(original)).keys() == original.keys()
    else:
        visual = {k for k in original if k.startswith("visual.") and k != "visual.head"}
        layers = 1 + max(int(k.split(".")[2]) for k in visual if k.startswith("visual.transformer."))
        back = clip_vision_to_original(convert_clip_vision_state_dict(original, layers))
        assert back.keys() == visual
        assert all(torch.equal(back[k], original[k]) for k in visual)


# --------------------------------------------------------------------------------------------------
# end to end


def test_stream_three_blocks_equals_whole_decode(pipe: LiveActPipeline, clip: PreparedClip) -> None:
    """Streamed blocks have the documented shapes and concatenate to one decode of all latents."""
    assert clip.num_blocks == BLOCKS
    blocks = list(pipe.stream(clip, seed=SEED, max_blocks=BLOCKS))
    _check_blocks(blocks)
    assert [pipe.frames_of_block(i) for i in range(BLOCKS)] == BLOCK_FRAMES

    generator = torch.Generator().manual_seed(SEED)
    latents = list(pipe.sampler.stream(clip.conditions, BLOCKS, generator=generator))
    whole = pipe.vae.decode(torch.cat(latents, dim=1)).float()
    torch.testing.assert_close(torch.cat(blocks, dim=2), whole, atol=1e-4, rtol=0)


def test_reference_stitch_frame_counts(pipe: LiveActPipeline, clip: PreparedClip) -> None:
    """The authors' overlap-and-crop decode gives the same frame count per block."""
    blocks = list(_variant(pipe, vae_stitch="reference").stream(clip, seed=SEED, max_blocks=BLOCKS))
    _check_blocks(blocks)


def test_streaming_audio_runs(pipe: LiveActPipeline, request_: Request) -> None:
    """--steam_audio: per-block audio re-encoding drives three blocks end to end."""
    streaming = _variant(pipe, stream_audio=True)
    clip = streaming.prepare(request_)
    assert clip.conditions.audio_source is not None
    _check_blocks(list(streaming.stream(clip, seed=SEED, max_blocks=BLOCKS)))


# --------------------------------------------------------------------------------------------------
# missing and corrupt files


def _delete(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink()


def _corrupt(path: Path) -> None:
    # Bytes that are neither a zip (torch.save), a pickle, nor a safetensors header.
    path.write_bytes(b"\x00garbage, not a checkpoint\xff" * 64)


ASSET_CASES = {
    "dit config": ("ckpt", DIT_CONFIG),
    "dit weights": ("ckpt", DIT_WEIGHTS),
    "vae": ("ckpt", VAE_FILE),
    "t5": ("ckpt", T5_FILE),
    "t5 tokenizer": ("ckpt", T5_TOKENIZER),
    "clip": ("ckpt", CLIP_FILE),
    "wav2vec config": ("wav2vec", "config.json"),
    "wav2vec preprocessor": ("wav2vec", "preprocessor_config.json"),
    "wav2vec weights": ("wav2vec", "model.safetensors"),
}
CORRUPTIBLE = [
    "dit config",
    "dit weights",
    "vae",
    "t5",
    "clip",
    "wav2vec config",
    "wav2vec preprocessor",
    "wav2vec weights",
]


@pytest.mark.parametrize(
    ("case", "damage"),
    [(c, _delete) for c in ASSET_CASES] + [(c, _corrupt) for c in CORRUPTIBLE],
    ids=[f"missing {c}" for c in ASSET_CASES] + [f"corrupt {c}" for c in CORRUPTIBLE],
)
def test_bad_asset_is_named(
    assets: tuple[Path, Path], tmp_path: Path, case: str, damage: Callable[[Path], None]
) -> None:
    """A missing or unreadable asset raises an error whose message names that file."""
    ckpt, w2v = (shutil.copytree(p, tmp_path / p.name) for p in assets)
    folder, name = ASSET_CASES[case]
    target = (ckpt if folder == "ckpt" else w2v) / name
    damage(target)
    with pytest.raises((AssetError, FileNotFoundError, ValueError)) as info:
        LiveActPipeline.from_pretrained(ckpt, w2v, device="cpu", dtype=torch.float32, size=SIZE, fps=FPS)
    # The full path, so ckpt/config.json and wav2vec/config.json are told apart.
    assert str(target) in str(info.value)


# --------------------------------------------------------------------------------------------------
# the whole speech, stages, library errors


def _at_fps(pipe: LiveActPipeline, fps: float) -> LiveActPipeline:
    return LiveActPipeline(
        pipe.transformer,
        pipe.vae,
        pipe.text_encoder,
        pipe.image_encoder,
        pipe.audio_encoder,
        size=SIZE,
        fps=fps,
    )


@pytest.mark.parametrize("fps", [16, 20, 24, 25, 30])
def test_blocks_cover_the_whole_audio(pipe: LiveActPipeline, fps: int) -> None:
    """The fewest blocks whose frames reach the end of the audio, at every duration."""
    at = _at_fps(pipe, fps)
    first, later = at.frames_of_block(0), at.frames_of_block(1)
    for step in range(1, 400):
        seconds = step * 0.037
        needed = at.num_frames_for(seconds)
        blocks = at.num_blocks_for(seconds)
        frames = first + later * (blocks - 1)
        assert frames >= needed, (fps, seconds, blocks)
        assert blocks == 1 or frames - later < needed, (fps, seconds, blocks)


def test_reference_block_count_loses_the_end_and_ours_does_not(pipe: LiveActPipeline) -> None:
    at = _at_fps(pipe, 24)
    seconds = 5.2  # 125 frames at 24 fps
    reference = int(seconds / (32 / 24)) + 1
    assert (reference, 21 + 32 * (reference - 1)) == (4, 117)  # 0.33 s of speech without video
    assert at.num_frames_for(seconds) == 125 and at.num_blocks_for(seconds) == 5  # 149 frames


@pytest.fixture(scope="module")
def short_request(tmp_path_factory: pytest.TempPathFactory, request_: Request) -> Request:
    """2.5 s of audio at 24 fps: 60 frames, which the reference's 2 blocks (53 frames) do not reach."""
    sr = 16000
    t = np.arange(int(2.5 * sr)) / sr
    wav = tmp_path_factory.mktemp("short") / "short.wav"
    sf.write(wav, (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), sr)
    return Request(
        image=request_.image,
        audio=wav,
        prompt=request_.prompt,
        edits=[((50, 60), "never"), ((1, 9), "partly")],
    )


def test_prepare_reports_stages_and_unused_edits(
    pipe: LiveActPipeline, short_request: Request, caplog: pytest.LogCaptureFixture
) -> None:
    from liveact.pipeline import PREPARE_STAGES

    stages: list[str] = []
    with caplog.at_level("WARNING", logger="liveact.pipeline"):
        clip = pipe.prepare(short_request, progress=stages.append)
    assert stages == list(PREPARE_STAGES) and list(clip.timings) == list(PREPARE_STAGES)
    assert all(t >= 0 for t in clip.timings.values())
    assert (clip.num_frames, clip.num_blocks) == (60, 3)
    assert "edit [50, 60]" in caplog.text and "never applies" in caplog.text
    assert "edit [1, 9]" in caplog.text and "blocks 1..2 only" in caplog.text

    # The extra block changes nothing before it: the blocks both counts generate are identical.
    generator = torch.Generator().manual_seed(SEED)
    ours = list(pipe.sampler.stream(clip.conditions, clip.num_blocks, generator=generator))
    generator = torch.Generator().manual_seed(SEED)
    reference = list(pipe.sampler.stream(clip.conditions, 2, generator=generator))
    assert len(ours) == 3 and all(torch.equal(a, b) for a, b in zip(ours, reference))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_clear_error(tmp_path: Path) -> None:
    from liveact.pipeline import check_device

    with pytest.raises(ValueError, match="device='cuda'.*device='cpu'"):
        # Checked before the (missing) folders: no pin_memory or driver error from deep inside.
        LiveActPipeline.from_pretrained(tmp_path / "nope", tmp_path / "nope", device="cuda")
    with pytest.raises(ValueError, match="not a torch device name"):
        check_device("gpu")
    assert check_device("cpu") == torch.device("cpu")


def test_library_errors_name_arguments_not_flags(tmp_path: Path) -> None:
    from liveact.loading import format_count, resolve_assets
    from liveact.pipeline import load_image

    with pytest.raises(AssetError) as info:
        resolve_assets(tmp_path / "missing", tmp_path)
    assert info.value.argument == "ckpt_dir" and str(info.value).startswith("ckpt_dir ")
    assert "--" not in str(info.value)
    with pytest.raises(ValueError, match="is a folder, not an image file"):
        load_image(tmp_path)
    counts = [format_count(n) for n in (18_884_094_784, 5_050_000, 45_100, 12)]
    assert counts == ["18.88B", "5.05M", "45.1K", "12"]


def test_checkpoint_config_sections_set_memory_and_schedule(
    assets: tuple[Path, Path], tmp_path: Path
) -> None:
    """A checkpoint's config.json may carry the preset file's memory/sampler sections; others pass through."""
    import json

    ckpt = shutil.copytree(assets[0], tmp_path / "ckpt")
    config = json.loads((ckpt / DIT_CONFIG).read_text())
    config.update(
        sampler={"timesteps": [1000.0, 750.0, 0.0], "cfg_steps": [1], "skip_audio_steps": [0]},
        components={"text_encoder": "some-other-encoder"},
    )
    (ckpt / DIT_CONFIG).write_text(json.dumps(config))
    pipe = LiveActPipeline.from_pretrained(
        ckpt, assets[1], device="cpu", dtype=torch.float32, size=SIZE, fps=FPS
    )
    assert pipe.sampler.config.timesteps == (1000.0, 750.0, 0.0) and pipe.sampler.config.num_steps == 2
    assert pipe.sampler.memory_config.block_frames == 8


def test_a_16_bit_grey_portrait_keeps_its_tones(tmp_path: Path) -> None:
    """PIL's convert("RGB") clips 16-bit values to white; the loader scales them to 8 bits."""
    from PIL import Image

    from liveact.pipeline import load_image

    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "grey16.png")
    rgb = np.asarray(load_image(tmp_path / "grey16.png"))
    assert rgb.shape == (64, 64, 3) and abs(rgb.mean() - 127.5) < 2 and rgb.min() == 0 and rgb.max() == 255
