"""FP8 that pays: fused QKV (one GEMM, one quantisation), the _scaled_mm recipes and their probe.

The probe and the recipes run the real ``torch._scaled_mm`` where this torch has a CPU kernel, and
fakes of it (a GPU without row-wise scaling, a GPU where nothing runs, a kernel with wrong results)
everywhere.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

from liveact.bench.shared import synthetic_conditions
from liveact.config import PRESETS
from liveact.model import LiveActTransformer
from liveact.sampler import NeighborForcingSampler
from liveact.speed import quant
from liveact.speed.quant import (
    FP8Linear,
    choose_recipe,
    convert_linears_to_fp8,
    probe_recipe,
    quantize_per_tensor,
    quantize_per_token,
    scaled_matmul,
)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _cpu_scaled_mm_works() -> bool:
    try:
        a = torch.zeros(1, 16).to(torch.float8_e4m3fn)
        one = torch.ones(())
        torch._scaled_mm(
            a,
            torch.zeros(16, 16).to(torch.float8_e4m3fn).t(),
            scale_a=one,
            scale_b=one,
            out_dtype=torch.float32,
        )
        return True
    except Exception:
        return False


needs_cpu_scaled_mm = pytest.mark.skipif(
    not _cpu_scaled_mm_works(), reason="this torch has no CPU _scaled_mm"
)


@pytest.fixture(autouse=True)
def _fresh_recipe_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quant, "_RECIPE_CACHE", {})


def _qkv(seed: int = 0, dim: int = 128) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    torch.manual_seed(seed)
    # Different magnitudes, so the three per-tensor scales differ.
    layers = tuple(nn.Linear(dim, dim) for _ in range(3))
    with torch.no_grad():
        for i, layer in enumerate(layers):
            layer.weight.mul_(1 + 3 * i)
    return layers


def test_fused_qkv_is_three_fp8_layers_and_close_to_float32() -> None:
    q, k, v = _qkv()
    x = torch.randn(2, 37, 128)
    fused = FP8Linear.from_linears([q, k, v], emulate=True)
    assert fused.weight.shape == (384, 128) and fused.weight_scale.shape == (1, 384)
    scales = [quantize_per_tensor(lin.weight.detach())[1] for lin in (q, k, v)]
    assert len({float(s) for s in scales}) == 3
    for i, s in enumerate(scales):
        assert torch.all(fused.weight_scale[0, 128 * i : 128 * (i + 1)] == s)
    separate = torch.cat([FP8Linear.from_linear(lin, emulate=True)(x) for lin in (q, k, v)], dim=-1)
    out = fused(x)
    # Same quantised operands and scales; only the fp32 summation order of the GEMM may differ,
    # which can move a bf16 rounding by one unit (2^-8 relative).
    torch.testing.assert_close(out, separate, rtol=2**-7, atol=1e-3)
    reference = torch.cat([lin(x) for lin in (q, k, v)], dim=-1)
    qx, sx = quantize_per_token(x.reshape(-1, 128).to(torch.bfloat16))
    x_err = rel_err(qx.float() * sx, x.reshape(-1, 128))
    for i, lin in enumerate((q, k, v)):
        qw, sw = quantize_per_tensor(lin.weight.detach())
        bound = 1.1 * (x_err**2 + rel_err(qw.float() * sw, lin.weight) ** 2) ** 0.5
        part = slice(128 * i, 128 * (i + 1))
        # e4m3 operand errors add in quadrature (~3.7% for random data): bounded, and below 4%.
        assert rel_err(out[..., part], reference[..., part]) < min(bound, 0.04)


def test_fused_qkv_quantises_the_input_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = quant.quantize_per_token
    monkeypatch.setattr(quant, "quantize_per_token", lambda x: calls.append(x.shape) or real(x))
    torch.manual_seed(0)
    model = LiveActTransformer(PRESETS["tiny"]).eval()
    separate = copy.deepcopy(model)
    convert_linears_to_fp8(model, emulate=True)
    convert_linears_to_fp8(separate, emulate=True, fuse_qkv=False)
    attn = model.blocks[0].self_attn
    assert isinstance(attn.qkv, FP8Linear) and attn.q is None and attn.k is None and attn.v is None
    assert separate.blocks[0].self_attn.qkv is None
    x = torch.randn(1, 20, model.config.dim)
    calls.clear()
    fused_out = attn.project(x)
    assert len(calls) == 1
    calls.clear()
    separate_out = separate.blocks[0].self_attn.project(x)
    assert len(calls) == 3
    for a, b in zip(fused_out, separate_out):
        torch.testing.assert_close(a, b, rtol=2**-7, atol=1e-3)


def test_fused_model_close_to_float32_and_to_unfused() -> None:
    torch.manual_seed(0)
    model = LiveActTransformer(PRESETS["tiny"]).eval()
    cond = synthetic_conditions(model, 64, 64, audio_frames=200, device="cpu")

    def sample(m: LiveActTransformer) -> torch.Tensor:
        return torch.cat(
            list(NeighborForcingSampler(m).stream(cond, 3, torch.Generator().manual_seed(0))), dim=1
        )

    ref = sample(model)
    fused, separate = copy.deepcopy(model), copy.deepcopy(model)
    assert convert_linears_to_fp8(fused, emulate=True) == convert_linears_to_fp8(
        separate, emulate=True, fuse_qkv=False
    )
    out = sample(fused)
    # FP8 weights and activations plus bf16 GEMM outputs, over three streamed blocks (~2-3%).
    assert rel_err(out, ref) < 0.05
    assert rel_err(out, sample(separate)) < 5e-3


@needs_cpu_scaled_mm
@pytest.mark.parametrize("fast_accum", [True, False])
def test_recipes_agree_with_the_emulation(fast_accum: bool) -> None:
    q, k, v = _qkv(1)
    fused = FP8Linear.from_linears([q, k, v], emulate=True)
    x = torch.randn(257, 128).to(torch.bfloat16)
    qx, sx = quantize_per_token(x)
    emulated = fused._emulated_mm(qx, sx)
    bias = fused._bias_bf16()
    for recipe in ("rowwise", "tensorwise"):
        out = scaled_matmul(qx, sx, fused.weight, fused.weight_scale, bias, recipe, fast_accum)
        assert out.dtype == torch.bfloat16 and out.shape == (257, 384)
        assert rel_err(out, emulated) < 1e-2, recipe
    with pytest.raises(ValueError, match="unknown FP8 recipe"):
        scaled_matmul(qx, sx, fused.weight, fused.weight_scale, bias, "blockwise")


def _fake_scaled_mm(rowwise_ok: bool, wrong: bool = False, seen: list | None = None):
    """A stand-in for torch._scaled_mm: the math in fp32, refusing row-wise scales if asked."""

    def fake(a, b, scale_a, scale_b, bias=None, out_dtype=None, use_fast_accum=False, **_):
        if seen is not None:
            seen.append({"rowwise": scale_a.dim() > 0, "fast": use_fast_accum, "scale_b": scale_b})
        if scale_a.dim() > 0 and not rowwise_ok:
            raise RuntimeError(
                "Invalid scaling configuration: rowwise scaling is not supported on this device"
            )
        out = (a.float() @ b.float()) * scale_a * scale_b
        out = out if bias is None else out + bias.float()
        return (out * 0 if wrong else out).to(out_dtype)

    return fake


def test_probe_picks_rowwise_when_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list = []
    monkeypatch.setattr(torch, "_scaled_mm", _fake_scaled_mm(rowwise_ok=True, seen=seen))
    assert choose_recipe("cpu") == "rowwise"
    # The exact recipe: row-wise scales, fast accumulation, M = 1 and 257.
    assert [s["rowwise"] for s in seen] == [True, True] and all(s["fast"] for s in seen)
    seen.clear()
    assert choose_recipe("cpu") == "rowwise" and not seen, "probed once per device"


def test_probe_falls_back_to_tensorwise_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(torch, "_scaled_mm", _fake_scaled_mm(rowwise_ok=False))
    with caplog.at_level(logging.WARNING, logger="liveact.speed.quant"):
        assert choose_recipe("cpu", fast_accum=False) == "tensorwise"
    assert any("row-wise" in r.message and "not supported" in r.message for r in caplog.records)
    # And the tensor-wise recipe gives the row-wise numbers (scales after an fp32 GEMM).
    q, k, v = _qkv(2)
    fused = FP8Linear.from_linears([q, k, v], emulate=True)
    qx, sx = quantize_per_token(torch.randn(5, 128).to(torch.bfloat16))
    out = scaled_matmul(qx, sx, fused.weight, fused.weight_scale, fused._bias_bf16(), "tensorwise")
    assert rel_err(out, fused._emulated_mm(qx, sx)) < 1e-2


@pytest.mark.parametrize(
    "fake", [_fake_scaled_mm(rowwise_ok=False, wrong=True), None], ids=["wrong-results", "raises"]
)
def test_probe_refuses_when_nothing_runs(monkeypatch: pytest.MonkeyPatch, fake) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("CUBLAS_STATUS_NOT_SUPPORTED")

    monkeypatch.setattr(torch, "_scaled_mm", fake or broken)
    with pytest.raises(
        RuntimeError,
        match=r"FP8 GEMM cannot run on cpu \(rowwise: .*tensorwise: .*\); run "
        r"without --fp8_gemm",
    ):
        choose_recipe("cpu")
    assert probe_recipe("cpu", "rowwise") is not None


def test_conversion_uses_the_probed_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without emulation the converter checks the GPU and probes it before touching any weight."""
    monkeypatch.setattr(quant, "check_fp8_device", lambda device: None)
    monkeypatch.setattr(quant, "choose_recipe", lambda device, fast_accum=True: "tensorwise")
    torch.manual_seed(0)
    model = LiveActTransformer(PRESETS["tiny"]).eval()
    convert_linears_to_fp8(model, run_device="cuda", fast_accum=False)
    layers = [m for m in model.modules() if isinstance(m, FP8Linear)]
    assert layers and all(m.recipe == "tensorwise" and not m.fast_accum and not m.emulate for m in layers)

    def refuse(device, fast_accum=True):
        raise RuntimeError("FP8 GEMM cannot run on cuda")

    monkeypatch.setattr(quant, "choose_recipe", refuse)
    fresh = LiveActTransformer(PRESETS["tiny"]).eval()
    with pytest.raises(RuntimeError, match="cannot run"):
        convert_linears_to_fp8(fresh, run_device="cuda")
    assert not any(isinstance(m, FP8Linear) for m in fresh.modules()), "nothing converted on refusal"


def test_quantize_on_another_device_gives_the_same_layer() -> None:
    q, _, _ = _qkv(3)
    a = FP8Linear.from_linear(q, emulate=True)
    b = FP8Linear.from_linear(q, emulate=True, quantize_on="cpu")
    assert torch.equal(a.weight.float(), b.weight.float()) and torch.equal(a.weight_scale, b.weight_scale)
    assert b.weight.device.type == "cpu"
