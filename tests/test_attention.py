"""Attention backends: chosen once per model by a probe against SDPA, loud fallback, never per call."""

from __future__ import annotations

import logging
import re

import pytest
import torch

from liveact import attention
from liveact.attention import BACKENDS, Backend, select_backend
from liveact.attention import attention as attend
from liveact.config import PRESETS
from liveact.model import AudioCrossAttention, CrossAttention, LiveActTransformer, SelfAttention


def _fake(fn, calls: list | None = None) -> Backend:
    def load():
        def run(q, k, v):
            if calls is not None:
                calls.append(q.shape)
            return fn(q, k, v)

        return run

    # Runs anywhere, so the probe and the fallback are exercised on a CPU.
    return Backend(load, needs_cuda_half=False)


def _broken(q, k, v):
    raise RuntimeError("no kernel image is available for execution on the device")


@pytest.fixture()
def fakes(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    calls: dict[str, list] = {"good": []}
    monkeypatch.setitem(BACKENDS, "good", _fake(attention._sdpa, calls["good"]))
    monkeypatch.setitem(BACKENDS, "wrong", _fake(lambda q, k, v: torch.zeros_like(q)))
    monkeypatch.setitem(BACKENDS, "raises", _fake(_broken))
    monkeypatch.setitem(BACKENDS, "nan", _fake(lambda q, k, v: attention._sdpa(q, k, v) * float("nan")))
    return calls


@pytest.mark.parametrize(
    "name, reason",
    [
        ("wrong", "relative error .* against SDPA exceeds"),
        ("raises", "RuntimeError: no kernel image"),
        ("nan", "non-finite"),
    ],
)
def test_a_backend_whose_probe_fails_falls_back_loudly(
    fakes: dict, name: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="liveact.attention"):
        assert select_backend(name, "cpu", torch.float32) == "sdpa"
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert (
        f"attention backend {name!r} failed its probe" in warnings[0]
        and "falling back to 'sdpa'" in warnings[0]
    )
    assert re.search(reason, warnings[0])
    assert any("attention backend: sdpa" in r.message for r in caplog.records), "the choice is logged"


def test_a_working_backend_is_chosen_and_used_by_every_attention(
    fakes: dict, caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(0)
    model = LiveActTransformer(PRESETS["tiny"]).eval()
    with caplog.at_level(logging.INFO, logger="liveact.attention"):
        assert model.set_attention_backend("good") == "good"
    assert any("attention backend: good" in r.message for r in caplog.records)
    kinds = (SelfAttention, CrossAttention, AudioCrossAttention)
    assert all(m.attention_backend == "good" for m in model.modules() if isinstance(m, kinds))
    assert model.attention_backend == "good"
    probe_calls = len(fakes["good"])
    q, k = torch.randn(1, 7, 2, 16), torch.randn(1, 9, 2, 16)
    torch.testing.assert_close(attend(q, k, k, backend="good"), attention._sdpa(q, k, k))
    assert len(fakes["good"]) == probe_calls + 1


def test_the_environment_is_read_once_at_build_not_per_call(
    fakes: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    model = LiveActTransformer(PRESETS["tiny"]).eval()
    monkeypatch.setenv("LIVEACT_ATTENTION", "good")
    assert model.set_attention_backend() == "good"
    monkeypatch.setenv("LIVEACT_ATTENTION", "raises")
    q = torch.randn(1, 5, 2, 16)
    before = len(fakes["good"])
    attend(q, q, q, backend=model.attention_backend)
    assert len(fakes["good"]) == before + 1, "the call used the backend chosen at build"


def test_auto_and_unknown_names() -> None:
    # On a CPU "auto" tries nothing that needs CUDA: SDPA, without a warning.
    assert select_backend("auto", "cpu", torch.float32) == "sdpa"
    with pytest.raises(ValueError, match="unknown attention backend 'flash3'"):
        select_backend("flash3", "cpu", torch.float32)
    # A CUDA-only backend asked for on a CPU falls back with the reason.
    assert select_backend("cudnn", "cpu", torch.bfloat16) == "sdpa"
    assert attention.probe("cudnn", torch.device("cpu"), torch.bfloat16).startswith("needs a CUDA device")


def test_fast_backends_only_take_cuda_half_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA kernel that passed its probe (on a GPU) never receives CPU or fp32 tensors: SDPA does."""
    calls: list = []

    def kernel(q, k, v):
        calls.append((q.device.type, q.dtype))
        return attention._sdpa(q, k, v)

    monkeypatch.setitem(BACKENDS, "probed_gpu_kernel", Backend(lambda: kernel, fn=kernel))
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        q = torch.randn(1, 4, 2, 16).to(dtype)
        torch.testing.assert_close(attend(q, q, q, backend="probed_gpu_kernel"), attention._sdpa(q, q, q))
    assert calls == [], f"CPU inputs reached the CUDA-only kernel: {calls}"
    # The same kernel without the CUDA restriction does take them: the route above is the guard's.
    monkeypatch.setitem(BACKENDS, "anywhere", Backend(lambda: kernel, needs_cuda_half=False, fn=kernel))
    attend(q, q, q, backend="anywhere")
    assert calls == [("cpu", torch.float16)]
