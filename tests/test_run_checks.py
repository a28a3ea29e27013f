"""How a run is assembled and checked (``liveact.runtime``), exercised on the CPU with CUDA stubbed.

Process-group teardown on user errors, --device under torchrun, fp16 warning, TF32 off for fp32,
the memory plan that refuses before loading (with the run's own memory layout: a preset's FP8),
--compile refusals, umT5 parked off the GPU between prompts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from torch import nn

from liveact import cli, runtime
from liveact.config import PRESETS, MemoryConfig, SamplerConfig
from liveact.pipeline import LiveActPipeline
from liveact.runtime import RunFlags, RunSpec, UserError, resolve_device
from liveact.speed import memplan, quant
from liveact.speed.backends import configure_torch
from liveact.speed.parallel import DistInfo

GPU0 = DistInfo(rank=0, world_size=2, local_rank=0, device=torch.device("cuda", 0), backend="nccl")


def test_device_under_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(UserError, match=r"--device cuda:1 under torchrun: each process uses cuda:LOCAL_RANK"):
        resolve_device("cuda:1", GPU0)
    assert resolve_device("cuda", GPU0) == torch.device("cuda", 0)
    assert resolve_device("cuda:0", GPU0) == torch.device("cuda", 0)
    assert resolve_device(None, GPU0) == torch.device("cuda", 0)


def test_user_error_after_the_process_group_started_tears_it_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    Image.fromarray(np.full((40, 30, 3), 128, np.uint8)).save(tmp_path / "face.png")
    t = np.arange(16000 * 2) / 16000
    sf.write(tmp_path / "speech.wav", 0.3 * np.sin(2 * np.pi * 220 * t), 16000)
    (tmp_path / "jobs.json").write_text(
        '[{"prompt": "p", "cond_image": "face.png", "cond_audio": "speech.wav"}]'
    )
    cpu_rank = DistInfo(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"), backend="gloo")
    monkeypatch.setattr("liveact.speed.parallel.maybe_init_dist", lambda **kwargs: cpu_rank)
    destroyed = []
    monkeypatch.setattr(torch.distributed, "destroy_process_group", lambda *a, **k: destroyed.append(True))
    # --block_offload on a CPU device is a user error raised after the process group exists.
    rc = cli.main(["--input_json", str(tmp_path / "jobs.json"), "--device", "cpu", "--block_offload"])
    assert rc == 2 and "needs a CUDA device" in capsys.readouterr().err
    assert destroyed == [True]


def _gpu_spec(**changes: object) -> RunSpec:
    """A resolved spec for a (stubbed) CUDA run of an official folder."""
    spec = RunSpec(
        model_dir=Path("unused"),
        own_components=False,
        wav2vec_dir=Path("unused"),
        device=torch.device("cuda"),
        dtype=torch.bfloat16,
        dist=None,
        size=(256, 256),
        fps=24,
        memory=MemoryConfig(),
        sampler=SamplerConfig(),
    )
    return dataclasses.replace(spec, **changes)


def test_float16_warns(caplog: pytest.LogCaptureFixture) -> None:
    spec = runtime.resolve(RunFlags(dtype="float16", device="cpu"))
    with caplog.at_level(logging.WARNING, logger="liveact"):
        runtime.check(spec)
    assert any("float16" in r.message and "bfloat16" in r.message for r in caplog.records)


def test_tf32_off_for_cuda_float32() -> None:
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
    )
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        assert configure_torch("cpu", torch.float32) == {}
        settings = configure_torch("cuda", torch.float32)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cudnn.benchmark and settings["cudnn.allow_tf32"] is False
        torch.backends.cudnn.allow_tf32 = True
        configure_torch("cuda", torch.bfloat16)
        assert torch.backends.cudnn.allow_tf32, "half-precision runs keep PyTorch's defaults"
    finally:
        (
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
            torch.backends.cudnn.benchmark,
        ) = saved


@pytest.mark.parametrize("free_gib, expected", [(1, "no combination"), (13, "add --t5_cpu \\("), (80, None)])
def test_memory_check_refuses_before_loading(
    monkeypatch: pytest.MonkeyPatch, free_gib: int, expected: str | None
) -> None:
    monkeypatch.setattr(memplan, "config_of", lambda folder: PRESETS["tiny"])
    # The VAE's dry run is tested in test_memplan; here only the verdict matters.
    monkeypatch.setattr(memplan, "vae_activation_bytes", lambda options, memory, arch=None: (2**30, 2**30))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free_gib * 2**30, 80 * 2**30))
    monkeypatch.setattr(quant, "fp8_supported", lambda device=None: True)
    monkeypatch.setattr("liveact.speed.backends.configure_torch", lambda device, dtype: {})
    if expected is None:
        runtime.check(_gpu_spec())
        return
    with pytest.raises(UserError, match=expected) as info:
        runtime.check(_gpu_spec())
    assert "--no_memory_check" in str(info.value)
    runtime.check(_gpu_spec(memory_check=False))


def test_a_preset_with_fp8_memory_is_planned_and_run_as_fp8(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``memory.fp8: true`` in a preset, no --fp8_kv_cache: the planner and the sampler both see FP8."""
    preset = json.loads((Path(runtime.__file__).parent / "configs" / "nano.json").read_text())
    preset.setdefault("memory", {})["fp8"] = True
    (tmp_path / "fp8.json").write_text(json.dumps(preset))
    spec = runtime.resolve(RunFlags(config=str(tmp_path / "fp8.json"), device="cpu"))
    assert spec.memory.fp8 and not spec.memory.offload
    planned = []
    monkeypatch.setattr(
        memplan, "preflight", lambda config, options, *a, **kw: planned.append((options, kw)) or None
    )
    monkeypatch.setattr(quant, "fp8_supported", lambda device=None: True)
    assert runtime.memory_plan_message(spec, 80 * 2**30) is None
    options, kwargs = planned[0]
    assert options.fp8_kv_cache and kwargs["memory"].fp8, "planned as FP8"
    pipe = runtime.build(spec)
    assert pipe.sampler.memory_config.fp8, "run as FP8"
    # A flag turns a setting on and never off: the preset's FP8 stays, --offload_cache adds to it.
    both = runtime.resolve(RunFlags(config=str(tmp_path / "fp8.json"), device="cpu", offload_cache=True))
    assert both.memory.fp8 and both.memory.offload


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"device": torch.device("cpu")}, "needs a CUDA device"),
        ({"block_offload": True}, "cannot capture --block_offload"),
        ({"memory": MemoryConfig(offload=True)}, "cannot capture an offloaded KV memory"),
    ],
)
def test_cuda_graphs_refused_where_they_cannot_apply(changes: dict, reason: str) -> None:
    runtime.check_compile(_gpu_spec(compile="islands", **changes))  # the other modes apply anywhere
    with pytest.raises(UserError, match=reason):
        runtime.check_compile(_gpu_spec(compile="cudagraphs", **changes))


def test_generate_refuses_an_unknown_compile_mode(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        cli.parse_args(["--input_json", "x.json", "--compile", "max-autotune"])
    assert "invalid choice" in capsys.readouterr().err


class _Recorder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(2))
        self.moves: list[str] = []

    def to(self, device: torch.device | str) -> _Recorder:  # type: ignore[override]
        self.moves.append(str(device))
        return self


@pytest.mark.parametrize("fails", [False, True])
def test_parked_text_encoder_visits_the_device_only_to_encode(fails: bool) -> None:
    model = _Recorder()

    def encode_ids(ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        assert model.moves[-1] == "meta", "encoding happens on the device"
        if fails:
            raise RuntimeError("encoder failed")
        return [torch.ones(3, 4) for _ in ids]

    released = []
    fake = SimpleNamespace(
        park_text_encoder=True,
        device=torch.device("meta"),
        sampler=SimpleNamespace(release_memories=lambda: released.append(True)),
        transformer=SimpleNamespace(dtype=torch.float32),
        _trace=lambda name, tensor: None,
        text_encoder=SimpleNamespace(
            model=model,
            encode_ids=encode_ids,
            tokenize=lambda p: (torch.zeros(len(p), 5), torch.ones(len(p), 5)),
        ),
    )
    if fails:
        with pytest.raises(RuntimeError, match="encoder failed"):
            LiveActPipeline.encode_text(fake, ["a"])
    else:
        out = LiveActPipeline.encode_text(fake, ["a", "b"])
        assert len(out) == 2 and out[0].device.type == "meta"
    assert model.moves == ["meta", "cpu"], "back in host memory afterwards, error or not"
    assert released == [True], "the KV memory made room first"
