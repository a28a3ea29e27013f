"""Presets as files (liveact/configs/*.json): loading, pass-through fields, errors, packaging."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from liveact.config import (
    PRESETS,
    MemoryConfig,
    ModelConfig,
    SamplerConfig,
    load_preset,
    preset_from_dict,
    preset_names,
)


def test_shipped_presets() -> None:
    assert preset_names() == ["liveact-14b", "nano", "tiny"] == sorted(PRESETS)
    big = load_preset("liveact-14b")
    # The official geometry (REFERENCE.md §2.2, §5, §6.1), read from the file.
    assert big.model == ModelConfig() and big.memory == MemoryConfig() and big.sampler == SamplerConfig()
    assert (big.model.dim, big.model.num_heads, big.model.num_layers, big.model.ffn_dim) == (
        5120,
        40,
        40,
        13824,
    )
    assert big.extra["_class_name"] == "WanModel" and big.extra["model_type"] == "i2v"
    assert PRESETS["tiny"].dim == 128 and PRESETS["tiny"].num_heads == 4
    for name in preset_names():
        preset = load_preset(name)
        assert preset_from_dict(preset.to_dict(), name=name) == replace(preset, source=None)


def test_presets_are_read_lazily() -> None:
    """Importing liveact.config reads no file (nothing runs at import time)."""
    code = "import liveact.config as c; print(c.PRESETS._models is None)"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.stdout.strip() == "True", proc.stderr


def test_a_copied_and_edited_file_is_a_preset(tmp_path: Path) -> None:
    data = load_preset("nano").to_dict()
    data["num_layers"] = 2
    data["sampler"]["timesteps"] = [1000.0, 500.0, 0.0]
    data["sampler"]["cfg_steps"] = [1]
    data["components"] = {"text_encoder": {"kind": "tiny-t5", "dim": 256}, "audio_features": "log-mel"}
    data["autoencoder"] = "tae"
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(data))
    preset = load_preset(path)
    assert preset.name == "mine" and preset.model.num_layers == 2 and preset.sampler.num_steps == 2
    # Fields the loader does not know pass through untouched, for the code that builds those components.
    assert preset.extra["components"]["audio_features"] == "log-mel" and preset.extra["autoencoder"] == "tae"


def test_missing_fields_take_the_defaults() -> None:
    preset = preset_from_dict({"dim": 256, "num_heads": 4, "ffn_dim": 512, "num_layers": 1})
    assert preset.model == ModelConfig(dim=256, num_heads=4, ffn_dim=512, num_layers=1)
    assert preset.memory == MemoryConfig() and preset.sampler == SamplerConfig() and preset.extra == {}


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"memory": {"blok_frames": 8}},
            r"mine.json memory: unknown field\(s\) blok_frames; known: sink_frames",
        ),
        ({"memory": {"block_frames": 7}}, r"mine.json memory: long_term_frames \* ratio"),
        ({"sampler": {"timesteps": [0.0, 1000.0]}}, r"mine.json sampler: timesteps=.* strictly decreasing"),
        ({"dim": 100, "num_heads": 3}, r"mine.json: dim=100 is not divisible by num_heads=3"),
        ({"sampler": [1, 2]}, r"mine.json: 'sampler' must be an object"),
    ],
)
def test_bad_files_name_the_file_and_field(tmp_path: Path, change: dict, message: str) -> None:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({**load_preset("tiny").to_dict(), **change}))
    with pytest.raises(ValueError, match=message):
        load_preset(path)


def test_unknown_names_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown preset 'huge': choose one of liveact-14b, nano, tiny"):
        load_preset("huge")
    with pytest.raises(ValueError, match="not found"):
        load_preset(tmp_path / "absent.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json is not valid JSON"):
        load_preset(tmp_path / "broken.json")


def test_preset_files_are_package_data() -> None:
    """An installed wheel holds the files: pyproject's package-data covers liveact/configs/*.json."""
    tomllib = pytest.importorskip("tomllib")
    patterns = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    files = sorted(
        p.relative_to(REPO_ROOT / "liveact") for p in (REPO_ROOT / "liveact" / "configs").glob("*.json")
    )
    assert files and all(any(f.match(pattern) for pattern in patterns["liveact"]) for f in files)
