"""FP8 linear conversion: emulated numerics on the CPU, conversion rules, the capability error."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from liveact.bench.shared import synthetic_conditions
from liveact.config import PRESETS
from liveact.model import LiveActTransformer
from liveact.sampler import NeighborForcingSampler
from liveact.speed.quant import (
    FP8_DTYPE,
    FP8Linear,
    blocks_only,
    convert_linears_to_fp8,
    fp8_supported,
    quantize_per_tensor,
    quantize_per_token,
)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.fixture(scope="module")
def tiny() -> LiveActTransformer:
    torch.manual_seed(0)
    return LiveActTransformer(PRESETS["tiny"]).eval()


def linear_dims(model: nn.Module) -> dict[str, tuple[int, int]]:
    return {n: (m.in_features, m.out_features) for n, m in model.named_modules() if type(m) is nn.Linear}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fp8_linear_close_to_linear(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(256, 512)
    x = torch.randn(3, 37, 256)
    ref = linear(x)
    fp8 = FP8Linear.from_linear(copy.deepcopy(linear).to(dtype), emulate=True)
    out = fp8(x.to(dtype))
    assert out.dtype == dtype and out.shape == (3, 37, 512)
    # e4m3 keeps 3 mantissa bits: each operand alone is off by ~2.6% (Frobenius), and the two
    # independent errors add in quadrature, so a single random layer lands at ~3.7%, not below 3%.
    qx, sx = quantize_per_token(x)
    qw, sw = quantize_per_tensor(linear.weight.detach())
    operand_err = (rel_err(qx.float() * sx, x) ** 2 + rel_err(qw.float() * sw, linear.weight) ** 2) ** 0.5
    assert rel_err(out, ref) < 1.1 * operand_err
    assert rel_err(out, ref) < 0.04
    assert fp8.weight.dtype == FP8_DTYPE and fp8.weight_scale.dtype == torch.float32
    assert fp8.bias.dtype == dtype


def test_emulation_is_the_quantised_product() -> None:
    """The emulated forward equals (q_x * s_x) @ (q_w * s_w)^T + b, rounded to the bf16 GEMM output."""
    torch.manual_seed(1)
    linear = nn.Linear(64, 32)
    x = torch.randn(10, 64)
    fp8 = FP8Linear.from_linear(linear, emulate=True)
    qx, sx = quantize_per_token(x.to(torch.bfloat16))
    qw, sw = quantize_per_tensor(linear.weight)
    bias = linear.bias.detach().to(torch.bfloat16).float()
    expected = ((qx.float() * sx) @ (qw.float() * sw).T + bias).to(torch.bfloat16).float()
    torch.testing.assert_close(fp8(x), expected, rtol=0, atol=0)
    assert sx.shape == (10, 1) and sw.shape == ()


def test_quantisers_handle_zero_rows_and_use_the_fp8_range() -> None:
    x = torch.randn(4, 32)
    x[1] = 0
    q, s = quantize_per_token(x)
    assert torch.isfinite(s).all() and (q[1].float() == 0).all()
    # Each row's largest magnitude maps to the e4m3 maximum.
    torch.testing.assert_close(q.float().abs().amax(-1)[[0, 2, 3]], torch.full((3,), 448.0))
    w = torch.randn(16, 32)
    qw, sw = quantize_per_tensor(w)
    assert qw.float().abs().max() == 448.0
    assert rel_err(qw.float() * sw, w) < 0.05


def test_convert_counts_and_skips_unaligned_dims(tiny: LiveActTransformer) -> None:
    model = copy.deepcopy(tiny)
    dims = linear_dims(model)
    aligned = {n for n, (i, o) in dims.items() if i % 16 == 0 and o % 16 == 0}
    unaligned = set(dims) - aligned
    # tiny's audio projection (intermediate_dim=4) is the part that cannot use FP8 GEMMs.
    assert unaligned == {"audio_proj.proj1", "audio_proj.proj1_vf", "audio_proj.proj2", "audio_proj.proj3"}
    assert convert_linears_to_fp8(model, emulate=True) == len(aligned)
    for name, module in model.named_modules():
        if name in aligned:
            assert isinstance(module, FP8Linear) and module.weight.dtype == FP8_DTYPE, name
        elif name in unaligned:
            assert type(module) is nn.Linear, name
    # No high-precision copy of a converted weight survives anywhere in the model.
    state = model.state_dict()
    fp32_weights = {k for k, v in state.items() if k.endswith(".weight") and v.dtype == torch.float32}
    assert not fp32_weights & {f"{n}.weight" for n in aligned}
    # Nothing left to convert the second time.
    assert convert_linears_to_fp8(model, emulate=True) == 0


def test_module_filter(tiny: LiveActTransformer) -> None:
    model = copy.deepcopy(tiny)
    n_blocks = sum(1 for n in linear_dims(model) if n.startswith("blocks."))
    assert convert_linears_to_fp8(model, module_filter=blocks_only, emulate=True) == n_blocks
    assert type(model.head.head) is nn.Linear and type(model.text_embedding[0]) is nn.Linear
    other = copy.deepcopy(tiny)
    assert convert_linears_to_fp8(other, module_filter=lambda m, fqn: fqn == "head.head", emulate=True) == 1
    assert isinstance(other.head.head, FP8Linear)


def test_state_dict_round_trip() -> None:
    torch.manual_seed(2)
    src = FP8Linear.from_linear(nn.Linear(32, 48), emulate=True)
    dst = FP8Linear(32, 48, emulate=True, dtype=torch.float32)
    dst.load_state_dict(src.state_dict())
    x = torch.randn(5, 32)
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)


def test_converted_model_output_close(tiny: LiveActTransformer) -> None:
    cond = synthetic_conditions(tiny, 64, 64, audio_frames=200, device="cpu")

    def sample(model: LiveActTransformer) -> list[torch.Tensor]:
        return list(NeighborForcingSampler(model).stream(cond, 2, torch.Generator().manual_seed(0)))

    ref = sample(tiny)
    model = copy.deepcopy(tiny)
    convert_linears_to_fp8(model, emulate=True)
    out = sample(model)
    for a, b in zip(out, ref, strict=True):
        assert torch.isfinite(a).all()
        # Measured ~2.3% on this seed: FP8 weights and activations plus the bf16 GEMM output.
        assert rel_err(a, b) < 0.05


@pytest.mark.skipif(fp8_supported(), reason="this machine has an FP8-capable GPU")
def test_actionable_error_without_fp8_gpu(tiny: LiveActTransformer) -> None:
    model = copy.deepcopy(tiny)
    with pytest.raises(RuntimeError, match=r"8\.9\+.*emulate=True") as info:
        convert_linears_to_fp8(model)
    assert "FP8 GEMM" in str(info.value)
    assert not any(isinstance(m, FP8Linear) for m in model.modules()), "nothing converted on failure"
    assert not fp8_supported("cpu")


def test_non_emulated_layer_refuses_cpu_inputs() -> None:
    fp8 = FP8Linear.from_linear(nn.Linear(32, 32), emulate=False)
    with pytest.raises(RuntimeError, match="emulate=True"):
        fp8(torch.randn(2, 32))


@pytest.mark.skipif(not fp8_supported(), reason="needs a CUDA GPU with compute capability 8.9+")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_scaled_mm_matches_emulation(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(512, 1024).to("cuda", dtype)
    x = torch.randn(4, 100, 512, device="cuda", dtype=dtype)
    real = FP8Linear.from_linear(linear)
    emulated = FP8Linear.from_linear(linear, emulate=True)
    out = real(x)
    assert out.dtype == dtype
    assert rel_err(out, emulated(x)) < 0.01
    assert rel_err(out, linear(x)) < 0.03
