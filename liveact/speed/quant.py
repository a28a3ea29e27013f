"""FP8 (e4m3) linear layers as a converter applied to a built model.

``convert_linears_to_fp8(model)`` swaps ``nn.Linear`` modules for ``FP8Linear`` in place. The
numerics are those of the reference's vLLM FP8 GEMM (REFERENCE.md §8.1):

* weight: float8_e4m3fn with one dynamic **per-tensor** fp32 scale (``amax / 448``), computed once
  at conversion; the high-precision weight is dropped;
* activation: quantised on every call with a dynamic **per-token** fp32 scale (one per row);
* output: the input dtype. fp32 inputs are cast to bf16 first, as the reference does. Row-wise
  scaled ``_scaled_mm`` only writes bf16, so fp16 (and fp32) results are bf16 cast back.

What makes it pay on a GPU (an FP8 GEMM that waits for 6-7 eager quantisation kernels is slower
than the bf16 GEMM it replaces):

* q, k and v of the self-attention share their input: with ``fuse_qkv`` they become one
  ``[3 dim, dim]`` GEMM and the input is quantised once. Each third keeps its own per-tensor scale
  (``weight_scale`` is a ``[1, N]`` row of per-column scales), so the numbers are those of three
  separate layers;
* the ``[1, N]`` weight scale is built once at conversion, not per call;
* the activation quantisation is one ``@island`` function: compiled with the model (where Inductor
  folds it into the norm/modulation before it) or on its own (``enable_compiled_islands``);
* fast accumulation (``use_fast_accum``; vLLM's Hopper kernels accumulate the same way).

Which ``_scaled_mm`` recipe runs is decided once per device by ``choose_recipe``: a tiny GEMM with the
exact recipe (row-wise scales, bf16 bias, M = 1 and 257). Row-wise scaling is missing on some GPUs
(sm100/sm120 cuBLAS, torch < 2.7 on sm89); there the **tensor-wise** kernel runs with unit scales and
an fp32 output, and the per-token and per-column scales and the bias are applied after it (same
numbers, one more elementwise pass), with a warning. If neither runs, the conversion refuses.

``emulate=True`` reproduces the quantisation with a dequantise + fp32 matmul, so conversions run and
are tested on a CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from liveact.islands import island

logger = logging.getLogger(__name__)

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
# Floor of a per-token scale, as vLLM's dynamic quant: an all-zero row must not divide by zero.
MIN_SCALE = 1.0 / (FP8_MAX * 512.0)
MIN_CAPABILITY = (8, 9)
# _scaled_mm (cuBLASLt/CUTLASS) needs both GEMM dims of the weight to be multiples of 16.
DIM_MULTIPLE = 16

ModuleFilter = Callable[[nn.Module, str], bool]
RECIPES = ("rowwise", "tensorwise")


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


@island
def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row dynamic FP8 quantisation of activations (one fused kernel when compiled).

    Args:
        x: ``[M, K]`` activations (bf16/fp16).

    Returns:
        ``q`` ``[M, K]`` float8_e4m3fn (row-major) and ``scale`` ``[M, 1]`` fp32, ``x ~= q * scale``.
    """
    scale = (x.abs().amax(dim=-1, keepdim=True).float() / FP8_MAX).clamp(min=MIN_SCALE)
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale


def scaled_matmul(
    qx: torch.Tensor,
    sx: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    recipe: str = "rowwise",
    fast_accum: bool = True,
) -> torch.Tensor:
    """``(qx * sx) @ (weight * weight_scale)^T + bias`` on FP8 tensor cores, bf16 out.

    Args:
        qx: ``[M, K]`` float8_e4m3fn, row-major; sx: ``[M, 1]`` fp32 per-token scales.
        weight: ``[N, K]`` float8_e4m3fn (used as the column-major ``[K, N]`` view, no copy).
        weight_scale: ``[1, N]`` fp32 per-column scales.
        bias: ``[N]`` bf16 or None.
        recipe: ``rowwise`` (scales and bias in the kernel's epilogue) or ``tensorwise`` (unit-scale
            kernel with an fp32 output; scales and bias applied after it, same numbers).
        fast_accum: ``use_fast_accum`` of the kernel.

    Returns:
        ``[M, N]`` bf16.
    """
    if recipe == "rowwise":
        return torch._scaled_mm(
            qx,
            weight.t(),
            scale_a=sx,
            scale_b=weight_scale,
            bias=bias,
            out_dtype=torch.bfloat16,
            use_fast_accum=fast_accum,
        )
    if recipe != "tensorwise":
        raise ValueError(f"unknown FP8 recipe {recipe!r}; choose one of {RECIPES}")
    one = torch.ones((), dtype=torch.float32, device=qx.device)
    acc = torch._scaled_mm(
        qx, weight.t(), scale_a=one, scale_b=one, out_dtype=torch.float32, use_fast_accum=fast_accum
    )
    out = acc * sx * weight_scale
    return (out if bias is None else out + bias.float()).to(torch.bfloat16)


def probe_recipe(device: torch.device | str, recipe: str, fast_accum: bool = True) -> str | None:
    """Run ``recipe`` once on ``device`` with the exact operands the layers use; None if it works, else
    why not.

    M = 1 and M = 257 (a single token, and a count no tile divides), K = 64, N = 48, bf16 bias; the
    result must match the same product computed in fp32 from the quantised operands.
    """
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    w_q, w_s = quantize_per_tensor(torch.randn(48, 64, generator=g))
    weight, weight_scale = w_q.to(device), w_s.reshape(1, 1).expand(1, 48).contiguous().to(device)
    bias = torch.randn(48, generator=g).to(device, torch.bfloat16)
    try:
        for m in (1, 257):
            qx, sx = quantize_per_token(torch.randn(m, 64, generator=g).to(device, torch.bfloat16))
            out = scaled_matmul(qx, sx, weight, weight_scale, bias, recipe, fast_accum)
            expected = (qx.float() * sx) @ (weight.float() * weight_scale.T).T + bias.float()
            if out.shape != (m, 48) or out.dtype != torch.bfloat16:
                return f"returned {tuple(out.shape)} {out.dtype} for M={m}"
            err = float((out.float() - expected).norm() / expected.norm())
            if not err < 1e-2:  # bf16 output rounding is ~4e-3; anything larger is a wrong kernel
                return f"relative error {err:.2e} against fp32 for M={m}"
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


_RECIPE_CACHE: dict[tuple[str, bool], str] = {}


def choose_recipe(device: torch.device | str, fast_accum: bool = True) -> str:
    """The ``_scaled_mm`` recipe for ``device``, probed once per device (see the module docstring).

    Row-wise when it runs; else tensor-wise with a warning; else ``RuntimeError`` saying why both
    failed. Call it before loading weights so an unusable ``--fp8_gemm`` fails in seconds.
    """
    device = torch.device(device)
    key = (str(device), fast_accum)
    if key in _RECIPE_CACHE:
        return _RECIPE_CACHE[key]
    reasons = {}
    for recipe in RECIPES:
        reason = probe_recipe(device, recipe, fast_accum)
        if reason is None:
            if recipe != RECIPES[0]:
                logger.warning(
                    "FP8 GEMM: row-wise scaled _scaled_mm does not run on %s (%s); using the "
                    "tensor-wise kernel with the scales applied after it (same results, one more "
                    "elementwise pass per layer)",
                    device,
                    reasons[RECIPES[0]],
                )
            logger.info(
                "FP8 GEMM recipe on %s: %s%s", device, recipe, ", fast accumulation" if fast_accum else ""
            )
            _RECIPE_CACHE[key] = recipe
            return recipe
        reasons[recipe] = reason
    detail = "; ".join(f"{r}: {why}" for r, why in reasons.items())
    raise RuntimeError(f"FP8 GEMM cannot run on {device} ({detail}); run without --fp8_gemm")


class FP8Linear(nn.Module):
    """``y = x W^T + b`` with an FP8 weight (per-tensor scales) and FP8 activations (per-token scales).

    Build it with ``FP8Linear.from_linear`` (or ``from_linears`` to fuse layers that share an input).
    Buffers: ``weight`` ``[N, K]`` float8_e4m3fn and ``weight_scale`` ``[1, N]`` fp32 (the per-tensor
    scale of the layer each output column came from); ``bias`` ``[N]`` stays a parameter in the
    compute dtype.

    Args:
        in_features, out_features: ``K`` and ``N``.
        bias: whether there is a bias.
        emulate: dequantise and matmul in fp32 instead of ``torch._scaled_mm`` (any device).
        device, dtype: where and in which compute dtype the (empty) bias is allocated.
        recipe: the ``_scaled_mm`` recipe (``choose_recipe``); fast_accum: its accumulation mode.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        emulate: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        recipe: str = "rowwise",
        fast_accum: bool = True,
    ) -> None:
        super().__init__()
        if recipe not in RECIPES:
            raise ValueError(f"unknown FP8 recipe {recipe!r}; choose one of {RECIPES}")
        self.in_features = in_features
        self.out_features = out_features
        self.emulate = emulate
        self.recipe, self.fast_accum = recipe, fast_accum
        # Buffers, not parameters: optimisers and `requires_grad_` have nothing to do with them, and
        # they still follow `.to(device)` and appear in the state dict.
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=FP8_DTYPE, device=device))
        self.register_buffer("weight_scale", torch.ones(1, out_features, dtype=torch.float32, device=device))
        self.bias = (
            nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), requires_grad=False)
            if bias
            else None
        )

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        emulate: bool = False,
        recipe: str = "rowwise",
        fast_accum: bool = True,
        quantize_on: torch.device | str | None = None,
    ) -> FP8Linear:
        """Quantise ``linear`` (no extra high-precision copy kept; see ``from_linears``)."""
        return cls.from_linears(
            [linear], emulate=emulate, recipe=recipe, fast_accum=fast_accum, quantize_on=quantize_on
        )

    @classmethod
    @torch.no_grad()
    def from_linears(
        cls,
        linears: Sequence[nn.Linear],
        emulate: bool = False,
        recipe: str = "rowwise",
        fast_accum: bool = True,
        quantize_on: torch.device | str | None = None,
    ) -> FP8Linear:
        """One FP8 layer computing the concatenated outputs of ``linears`` (same input width).

        Each linear is quantised with its own per-tensor scale, so the fused layer's outputs are
        those of the separate FP8 layers. ``quantize_on``: quantise there (e.g. the GPU for weights
        kept in host memory for block offload) and bring the FP8 result back to the weights' device.
        """
        first = linears[0]
        if any(lin.in_features != first.in_features for lin in linears):
            raise ValueError("fused linears must share their input width")
        has_bias = [lin.bias is not None for lin in linears]
        if any(has_bias) != all(has_bias):
            raise ValueError("fused linears must all have a bias or all have none")
        home = first.weight.device
        n = sum(lin.out_features for lin in linears)
        # Built on meta so no placeholder weight is allocated; every tensor is replaced below.
        out = cls(
            first.in_features,
            n,
            bias=all(has_bias),
            emulate=emulate,
            device="meta",
            dtype=first.weight.dtype,
            recipe=recipe,
            fast_accum=fast_accum,
        )
        weights, scales = [], []
        for lin in linears:
            q, scale = quantize_per_tensor(lin.weight.detach().to(quantize_on or home))
            weights.append(q.to(home))
            scales.append(scale.to(home).reshape(1, 1).expand(1, lin.out_features))
        out.weight = weights[0] if len(weights) == 1 else torch.cat(weights)
        out.weight_scale = torch.cat(scales, dim=1).contiguous()
        if all(has_bias):
            out.bias = nn.Parameter(torch.cat([lin.bias.detach() for lin in linears]), requires_grad=False)
        return out

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, emulate={self.emulate}, recipe={self.recipe}, "
            f"fast_accum={self.fast_accum}"
        )

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
        w = self.weight.float() * self.weight_scale.T
        bias = self._bias_bf16()
        return F.linear(qx.float() * sx, w, None if bias is None else bias.float()).to(torch.bfloat16)

    def _scaled_mm(self, qx: torch.Tensor, sx: torch.Tensor) -> torch.Tensor:
        """FP8 tensor-core GEMM (``scaled_matmul``): ``[M, K]`` -> ``[M, N]`` bf16.

        Row-wise scaling in ``_scaled_mm`` only produces bf16, so fp16 and fp32 callers get their
        dtype back by a cast in ``forward``.
        """
        if qx.device.type not in ("cuda", "meta") or self.weight.dtype != FP8_DTYPE:
            raise RuntimeError(
                f"FP8Linear got input on {qx.device} with weight dtype {self.weight.dtype}: the FP8 GEMM "
                "needs a CUDA sm89+ device and a float8 weight (convert after any model.to(dtype)); "
                "use emulate=True to run elsewhere"
            )
        return scaled_matmul(
            qx, sx, self.weight, self.weight_scale, self._bias_bf16(), self.recipe, self.fast_accum
        )


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
        raise RuntimeError(
            f"FP8 GEMM needs torch._scaled_mm, missing in torch {torch.__version__}; "
            "upgrade torch, or pass emulate=True to test the numerics without it"
        )
    if not torch.cuda.is_available():
        raise RuntimeError(
            "FP8 GEMM needs a CUDA GPU with FP8 tensor cores (compute capability 8.9+: L40S, RTX 4090, "
            "H100, H200, B200) and none is available; pass emulate=True to test the numerics on this machine"
        )
    if not fp8_supported(target):
        cap = torch.cuda.get_device_capability(target)
        raise RuntimeError(
            f"FP8 GEMM needs compute capability {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]}+ but "
            f"{torch.cuda.get_device_name(target)} ({target}) has {cap[0]}.{cap[1]}; run without FP8 GEMMs "
            "on this GPU, or pass emulate=True to test the numerics"
        )


def _eligible(linear: nn.Module, fqn: str, module_filter: ModuleFilter | None) -> bool:
    if type(linear) is not nn.Linear or (module_filter is not None and not module_filter(linear, fqn)):
        return False
    if linear.in_features % DIM_MULTIPLE or linear.out_features % DIM_MULTIPLE:
        logger.debug(
            "FP8: skipping %s (%d -> %d, not multiples of %d)",
            fqn,
            linear.in_features,
            linear.out_features,
            DIM_MULTIPLE,
        )
        return False
    return True


def _qkv_owners(model: nn.Module) -> list[str]:
    """Names of modules with ``q``, ``k``, ``v`` linears and an empty ``qkv`` slot (``SelfAttention``)."""
    return [
        fqn
        for fqn, m in model.named_modules()
        if "qkv" in m.__dict__
        and m.__dict__["qkv"] is None
        and all(type(getattr(m, n, None)) is nn.Linear for n in ("q", "k", "v"))
    ]


def convert_linears_to_fp8(
    model: nn.Module,
    module_filter: ModuleFilter | None = None,
    emulate: bool = False,
    run_device: torch.device | str | None = None,
    fuse_qkv: bool = True,
    fast_accum: bool = True,
    recipe: str | None = None,
    quantize_on: torch.device | str | None = None,
) -> int:
    """Replace eligible ``nn.Linear`` modules of ``model`` by ``FP8Linear``, in place.

    A linear is eligible when both ``in_features`` and ``out_features`` are multiples of 16 and
    ``module_filter(module, fqn)`` is true. With no filter **every** eligible linear is converted,
    like the reference (which also converts the text/time embeddings, ``img_emb``, ``audio_proj``
    and the head); pass ``blocks_only`` to keep those in high precision.

    Each weight is quantised on the device it is on (or ``quantize_on``) and the high-precision copy
    is released as soon as its module is replaced, so peak memory grows by at most one weight's fp32
    temporary.

    Args:
        model: a built model (weights on a CUDA device, or on the CPU to be moved later).
        module_filter: ``(module, fully qualified name) -> bool``.
        emulate: build emulated layers (no GPU needed); otherwise a CUDA sm89+ device is required.
        run_device: where the layers will run, when that is not where the weights are now (block
            offload quantises host-resident weights that later stream to the GPU).
        fuse_qkv: one fused layer (one GEMM, one activation quantisation) for the self-attention's
            q, k and v when all three are eligible (stored as ``qkv``; ``q``, ``k``, ``v`` become None).
        fast_accum: FP8 fast accumulation.
        recipe: the ``_scaled_mm`` recipe; None probes ``run_device`` (``choose_recipe``).
        quantize_on: quantise each weight on this device and bring the result back (e.g. the GPU
            for weights kept in host memory: seconds instead of minutes on the CPU).

    Returns:
        How many linears were converted (a fused q/k/v counts three).
    """
    if not emulate:
        first = next((m.weight for m in model.modules() if isinstance(m, nn.Linear)), None)
        where = torch.device(
            run_device if run_device is not None else (first.device if first is not None else "cuda")
        )
        check_fp8_device(where)
        recipe = recipe or choose_recipe(where if where.type == "cuda" else torch.device("cuda"), fast_accum)
    recipe = recipe or "rowwise"
    options = {"emulate": emulate, "recipe": recipe, "fast_accum": fast_accum, "quantize_on": quantize_on}
    converted = fused = 0
    if fuse_qkv:
        for fqn in _qkv_owners(model):
            owner = model.get_submodule(fqn)
            prefix = f"{fqn}." if fqn else ""
            if all(_eligible(getattr(owner, n), prefix + n, module_filter) for n in ("q", "k", "v")):
                owner.qkv = FP8Linear.from_linears([owner.q, owner.k, owner.v], **options)
                owner.q = owner.k = owner.v = None
                converted += 3
                fused += 1
    # Names only: holding the modules themselves would keep every high-precision weight alive
    # until the end of the conversion.
    names = [fqn for fqn, m in model.named_modules() if type(m) is nn.Linear]
    skipped = 0
    for fqn in names:
        linear = model.get_submodule(fqn)
        if module_filter is not None and not module_filter(linear, fqn):
            continue
        if not _eligible(linear, fqn, None):
            skipped += 1
            continue
        parent_name, _, child = fqn.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, FP8Linear.from_linear(linear, **options))
        converted += 1
    logger.info(
        "FP8: converted %d linear layers (%d fused q/k/v)%s, recipe %s, skipped %d with dims not "
        "divisible by %d",
        converted,
        fused,
        " (emulated)" if emulate else "",
        recipe,
        skipped,
        DIM_MULTIPLE,
    )
    return converted
