"""Model construction, the 14B preset's state dict, loading in the official layout, config validation."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from liveact.config import PRESETS, MemoryConfig, ModelConfig, SamplerConfig
from liveact.loading import AssetError, save_transformer
from liveact.model import LiveActTransformer

# REFERENCE.md §3: the official checkpoint's keys and shapes (dim 5120, ffn 13824, 40 layers).
OFFICIAL_SHAPES = {
    "patch_embedding.weight": (5120, 36, 1, 2, 2),
    "text_embedding.0.weight": (5120, 4096),
    "time_projection.1.weight": (30720, 5120),
    "blocks.0.modulation": (1, 6, 5120),
    "blocks.39.self_attn.memory_proj_k.weight": (5120, 1, 5),
    "blocks.39.self_attn.memory_proj_v.weight": (5120, 1, 5),
    "blocks.0.self_attn.norm_q.weight": (5120,),
    "blocks.0.norm3.weight": (5120,),
    "blocks.0.cross_attn.k_img.weight": (5120, 5120),
    "blocks.0.cross_attn.norm_k_img.weight": (5120,),
    "blocks.0.ffn.0.weight": (13824, 5120),
    "blocks.0.ffn.2.weight": (5120, 13824),
    "blocks.0.audio_cross_attn.q_linear.weight": (5120, 5120),
    "blocks.0.audio_cross_attn.kv_linear.weight": (10240, 768),
    "blocks.0.audio_cross_attn.proj.bias": (5120,),
    "blocks.0.norm_x.bias": (5120,),
    "head.modulation": (1, 2, 5120),
    "head.head.weight": (64, 5120),
    "img_emb.proj.0.weight": (1280,),
    "img_emb.proj.1.weight": (1280, 1280),
    "img_emb.proj.3.weight": (5120, 1280),
    "img_emb.proj.4.weight": (5120,),
    "audio_proj.proj1.weight": (512, 46080),
    "audio_proj.proj1_vf.weight": (512, 73728),
    "audio_proj.proj2.weight": (512, 512),
    "audio_proj.proj3.weight": (24576, 512),
    "audio_proj.norm.weight": (768,),
}


def test_14b_preset_on_meta_matches_official_checkpoint() -> None:
    with torch.device("meta"):
        model = LiveActTransformer(PRESETS["liveact-14b"])
    state = model.state_dict()
    assert len(state) == 1713
    assert sum(p.numel() for p in model.parameters()) == 18_884_094_784
    assert not list(model.buffers()), "the official checkpoint has no buffers"
    for key, shape in OFFICIAL_SHAPES.items():
        assert tuple(state[key].shape) == shape, key
    audio = sum(
        p.numel()
        for n, p in model.named_parameters()
        if n.startswith("audio_proj") or ".audio_cross_attn." in n or ".norm_x." in n
    )
    assert audio == 2_487_168_000
    assert all(p.is_meta for p in model.parameters())


def _random_model(cfg: ModelConfig, seed: int = 0) -> LiveActTransformer:
    torch.manual_seed(seed)
    model = LiveActTransformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model.eval()


@pytest.mark.parametrize("shard_bytes", [None, 2_000_000])
def test_from_pretrained_roundtrip(tmp_path: Path, shard_bytes: int | None) -> None:
    model = _random_model(PRESETS["tiny"])
    save_transformer(model, tmp_path, max_shard_bytes=shard_bytes)
    if shard_bytes:
        assert (tmp_path / "diffusion_pytorch_model.safetensors.index.json").is_file()
    loaded = LiveActTransformer.from_pretrained(tmp_path, torch_dtype=torch.float32)
    assert loaded.config == model.config
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_from_pretrained_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(AssetError, match="not a folder"):
        LiveActTransformer.from_pretrained(tmp_path / "nope")
    with pytest.raises(AssetError, match="diffusion_pytorch_model.safetensors"):
        LiveActTransformer.from_pretrained(tmp_path)
    model = _random_model(PRESETS["tiny"])
    save_transformer(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_layers": 3}))
    with pytest.raises(AssetError, match=r"missing keys, e\.g\. blocks\.2\."):
        LiveActTransformer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "ffn_dim": 300}))
    with pytest.raises(
        AssetError,
        match=r"shape mismatches, e\.g\. blocks\.0\.ffn\.0\.weight: file \(256, 128\), expected \(300, 128\)",
    ):
        LiveActTransformer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(AssetError, match="config.json is not valid JSON"):
        LiveActTransformer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(AssetError, match="not a readable safetensors"):
        LiveActTransformer.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: ModelConfig(dim=130, num_heads=4), "not divisible by num_heads"),
        (lambda: ModelConfig(audio_window=4), "must be odd"),
        (lambda: MemoryConfig(first_block_frames=5), "must equal sink"),
        (lambda: MemoryConfig(block_frames=6), "long_term_frames \\* ratio"),
        (lambda: MemoryConfig(compression="max"), "choose 'conv', 'mean', 'none'"),
        (lambda: SamplerConfig(timesteps=(1000.0, 1000.0, 0.0)), "strictly decreasing"),
        (lambda: SamplerConfig(cfg_steps=(3,)), "outside 0..2"),
        (lambda: SamplerConfig(audio_cfg=0.5), "must be >= 1"),
    ],
)
def test_bad_configs_raise(build, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_memory_config_other_geometry_is_consistent() -> None:
    cfg = MemoryConfig(
        sink_frames=1, long_term_frames=1, short_term_frames=2, first_block_frames=4, block_frames=3, ratio=4
    )
    assert cfg.total_frames == 7 and cfg.current_start == 4
    with pytest.raises(ValueError, match="does not match the model's ConvKV kernel"):
        _random_model(replace(PRESETS["tiny"], num_layers=1)).new_memory(cfg, frame_len=4)
