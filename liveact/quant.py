"""FP8 (e4m3) linear layers as a converter applied to a built model.

``convert_linears_to_fp8(model)`` swaps ``nn.Linear`` modules for ``FP8Linear`` in place. The
numerics are those of the reference's vLLM FP8 GEMM (REFERENCE.md §8.1):

* weight: float8_e4m3fn with one dynamic **per-tensor** fp32 scale (``amax / 448``), computed once
  at conversion; the high-precision weight is dropped;
* activation: quantised on every call with a dynamic **per-token** fp32 scale (one per row);
* output: the input dtype. fp32 inputs are cast to bf16 first, as the reference does. Row-wise
  scaled ``_scaled_mm`` only writes bf16, so fp16 (and fp32) results are bf16 cast back.

On CUDA with compute capability 8.9+ (Ada, Hopper, Blackwell) the product is one
``torch._scaled_mm`` with row-wise scales (``scale_a`` ``[M, 1]``, ``scale_b`` ``[1, N]`` = the weight's
per-tensor scale broadcast). ``emulate=True`` reproduces the same quantisation with a dequantise +
fp32 matmul, so conversions run and are tested on a CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
# Floor of a per-token scale, as vLLM's dynamic quant: an all-zero row must not divide by zero.
MIN_SCALE = 1.0 / (FP8_MAX * 512.0)
MIN_CAPABILITY = (8, 9)
# _scaled_mm (cuBLASLt/CUTLASS) needs both GEMM dims of the weight to be multiples of 16.
DIM_MULTIPLE = 16

ModuleFilter = Callable[[nn.Module, str], bool]


def fp8_supported(device: torch.device | str | None = None) -> bool:
    """Whether ``device`` (default: the current CUDA device) can run FP8 tensor-core GEMMs.

    True only for a CUDA device of compute capability 8.9+ with a torch that has ``_scaled_mm``.
    """
    if not torch.cuda.is_available() or not hasattr(torch, "_scaled_mm"):
        return False
    device = torch.device("cuda") if device is None else torch.device(device)
    if device.type != "cuda":
        return False
    return torch.cuda.get_device_capability(device) >= MIN_CAPABILITY


def quantize_per_tensor(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor dynamic FP8 quantisation of a weight.

    Args:
        w: ``[N, K]`` weight in any float dtype, on any device.

    Returns:
        ``q`` ``[N, K]`` float8_e4m3fn and ``scale`` ``[]`` fp32 with ``w ~= q * scale``.
    """
    scale = (w.abs().amax().float() / FP8_MAX).clamp(min=MIN_SCALE)
    return (w.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row dynamic FP8 quantisation of activations.

    Args:
        x: ``[M, K]`` activations (bf16/fp16).

    Returns:
        ``q`` ``[M, K]`` float8_e4m3fn (row-major) and ``scale`` ``[M, 1]`` fp32, ``x ~= q * scale``.
    """
    scale = (x.abs().amax(dim=-1, keepdim=True).float() / FP8_MAX).clamp(min=MIN_SCALE)
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale


class FP8Linear(nn.Module):
    """``y = x W^T + b`` with an FP8 weight (per-tensor scale) and FP8 activations (per-token scales).

    Build it with ``FP8Linear.from_linear``. Buffers: ``weight`` ``[N, K]`` float8_e4m3fn and
    ``weight_scale`` ``[]`` fp32; ``bias`` ``[N]`` stays a parameter in the compute dtype.

    Args:
        in_features, out_features: ``K`` and ``N``.
        bias: whether there is a bias.
        emulate: dequantise and matmul in fp32 instead of ``torch._scaled_mm`` (any device).
        device, dtype: where and in which compute dtype the (empty) bias is allocated.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, emulate: bool = False,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.emulate = emulate
        # Buffers, not parameters: optimisers and `requires_grad_` have nothing to do with them, and
        # they still follow `.to(device)` and appear in the state dict.
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=FP8_DTYPE, device=device))
        self.register_buffer("weight_scale", torch.ones((), dtype=torch.float32, device=device))
        self.bias = (
            nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), requires_grad=False)
            if bias else None
        )

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, emulate: bool = False) -> FP8Linear:
        """Quantise ``linear`` on the device its weight is on (no host round trip, no extra copy kept)."""
        w = linear.weight
        # Built on meta so no placeholder weight is allocated; every tensor is replaced below.
        out = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, emulate=emulate,
                  device="meta", dtype=w.dtype)
        out.weight, out.weight_scale = quantize_per_tensor(w)
        if linear.bias is not None:
            out.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
        return out

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, emulate={self.emulate}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., K] -> [..., N]`` in the dtype of ``x``."""
        in_dtype = x.dtype
        # The reference (vLLM) only multiplies bf16/fp16 activations; anything else goes through bf16.
        mm_dtype = in_dtype if in_dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
        qx, sx = quantize_per_token(x.reshape(-1, self.in_features).to(mm_dtype))
        y = self._emulated_mm(qx, sx) if self.emulate else self._scaled_mm(qx, sx)
        return y.to(in_dtype).reshape(*x.shape[:-1], self.out_features)

    def _bias_bf16(self) -> torch.Tensor | None:
        # Row-wise scaled GEMMs take a bf16 bias, added to the fp32 accumulator in the epilogue.
        return None if self.bias is None else self.bias.to(torch.bfloat16)

    def _emulated_mm(self, qx: torch.Tensor, sx: torch.Tensor) -> torch.Tensor:
        """``_scaled_mm`` on any device: same operands and bf16 bias, fp32 accumulation, bf16 out."""
        w = self.weight.float() * self.weight_scale
        bias = self._bias_bf16()
        return F.linear(qx.float() * sx, w, None if bias is None else bias.float()).to(torch.bfloat16)

    def _scaled_mm(self, qx: torch.Tensor, sx: torch.Tensor) -> torch.Tensor:
        """FP8 tensor-core GEMM: ``qx`` ``[M, K]`` row-major times the column-major view ``[K, N]``.

        Returns ``[M, N]`` bf16: row-wise scaling in ``_scaled_mm`` only produces bf16, so fp16 and
        fp32 callers get their dtype back by a cast in ``forward``.
        """
        if qx.device.type != "cuda" or self.weight.dtype != FP8_DTYPE:
            raise RuntimeError(
                f"FP8Linear got input on {qx.device} with weight dtype {self.weight.dtype}: the FP8 GEMM "
                "needs a CUDA sm89+ device and a float8 weight (convert after any model.to(dtype)); "
                "use emulate=True to run elsewhere")
        # The per-tensor weight scale as the [1, N] row-wise scale the kernel expects.
        scale_w = self.weight_scale.reshape(1, 1).expand(1, self.out_features).contiguous()
        return torch._scaled_mm(qx, self.weight.t(), scale_a=sx, scale_b=scale_w, bias=self._bias_bf16(),
                                out_dtype=torch.bfloat16)


def blocks_only(module: nn.Module, fqn: str) -> bool:
    """A ``module_filter`` that keeps embeddings, projections and the head in high precision.

    Only linears inside ``blocks.*`` are converted (what the reference's FP4 path does).
    """
    return fqn.startswith("blocks.")


def check_fp8_device(device: torch.device) -> None:
    """Raise an actionable ``RuntimeError`` unless FP8 GEMMs can run for weights on ``device``.

    Weights on the CPU (or meta) are accepted when a capable CUDA device exists: the model can be
    moved there after conversion.
    """
    target = device if device.type == "cuda" else torch.device("cuda")
    if not hasattr(torch, "_scaled_mm"):
        raise RuntimeError(f"FP8 GEMM needs torch._scaled_mm, missing in torch {torch.__version__}; "
                           "upgrade torch, or pass emulate=True to test the numerics without it")
    if not torch.cuda.is_available():
        raise RuntimeError(
            "FP8 GEMM needs a CUDA GPU with FP8 tensor cores (compute capability 8.9+: L40S, RTX 4090, "
            "H100, H200, B200) and none is available; pass emulate=True to test the numerics on this machine")
    if not fp8_supported(target):
        cap = torch.cuda.get_device_capability(target)
        raise RuntimeError(
            f"FP8 GEMM needs compute capability {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]}+ but "
            f"{torch.cuda.get_device_name(target)} ({target}) has {cap[0]}.{cap[1]}; run without FP8 GEMMs "
            "on this GPU, or pass emulate=True to test the numerics")


def convert_linears_to_fp8(model: nn.Module, module_filter: ModuleFilter | None = None,
                           emulate: bool = False, run_device: torch.device | str | None = None) -> int:
    """Replace eligible ``nn.Linear`` modules of ``model`` by ``FP8Linear``, in place.

    A linear is eligible when both ``in_features`` and ``out_features`` are multiples of 16 and
    ``module_filter(module, fqn)`` is true. With no filter **every** eligible linear is converted,
    like the reference (which also converts the text/time embeddings, ``img_emb``, ``audio_proj``
    and the head); pass ``blocks_only`` to keep those in high precision.

    Each weight is quantised on the device it is on and the high-precision copy is released as soon
    as its module is replaced, so peak memory grows by at most one weight's fp32 temporary.

    Args:
        model: a built model (weights on a CUDA device, or on the CPU to be moved later).
        module_filter: ``(module, fully qualified name) -> bool``.
        emulate: build emulated layers (no GPU needed); otherwise a CUDA sm89+ device is required.
        run_device: where the layers will run, when that is not where the weights are now (block
            offload quantises host-resident weights that later stream to the GPU).

    Returns:
        How many linears were converted.
    """
    if not emulate:
        first = next((m.weight for m in model.modules() if isinstance(m, nn.Linear)), None)
        where = run_device if run_device is not None else (first.device if first is not None else "cuda")
        check_fp8_device(torch.device(where))
    # Names only: holding the modules themselves would keep every high-precision weight alive
    # until the end of the conversion.
    names = [fqn for fqn, m in model.named_modules() if type(m) is nn.Linear]
    converted = skipped = 0
    for fqn in names:
        linear = model.get_submodule(fqn)
        if module_filter is not None and not module_filter(linear, fqn):
            continue
        if linear.in_features % DIM_MULTIPLE or linear.out_features % DIM_MULTIPLE:
            skipped += 1
            logger.debug("FP8: skipping %s (%d -> %d, not multiples of %d)", fqn, linear.in_features,
                         linear.out_features, DIM_MULTIPLE)
            continue
        parent_name, _, child = fqn.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, FP8Linear.from_linear(linear, emulate=emulate))
        converted += 1
    logger.info("FP8: converted %d linear layers%s, skipped %d with dims not divisible by %d",
                converted, " (emulated)" if emulate else "", skipped, DIM_MULTIPLE)
    return converted
