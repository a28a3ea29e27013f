"""The model paths training relies on: batched forward passes and the differentiable KV memory.

A batched block equals the same samples run one by one, and the differentiable memory holds the same
values as the inference memory while letting gradients reach earlier blocks and the ConvKV taps.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_model

from liveact.config import MemoryConfig
from liveact.model import LiveActTransformer

LH = LW = 4  # latent plane -> 2x2 tokens per frame with the 2x2 patch


def _inputs(model: LiveActTransformer, batch: int, frames: int, seed: int) -> dict:
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    return {
        "latent": torch.randn(batch, cfg.out_dim, frames, LH, LW, generator=g),
        "y": torch.randn(batch, cfg.cond_dim, frames, LH, LW, generator=g),
        "text": [torch.randn(3 + i, cfg.text_dim, generator=g) for i in range(batch)],
        "clip": torch.randn(batch, 5, cfg.clip_dim, generator=g),
        "audio": torch.randn(batch, frames, cfg.context_tokens, cfg.output_dim, generator=g),
    }


def _run_blocks(
    model: LiveActTransformer,
    blocks: list[dict],
    t: torch.Tensor,
    differentiable: bool,
    sample: int | None = None,
) -> list[torch.Tensor]:
    """Run consecutive blocks against one memory; ``sample`` selects one sample of the batch."""
    pick = (lambda x: x) if sample is None else (lambda x: x[sample : sample + 1])
    batch = blocks[0]["latent"].shape[0] if sample is None else 1
    memory = model.new_memory(MemoryConfig(), LH * LW // 4, batch=batch, differentiable=differentiable)
    outs = []
    for k, inp in enumerate(blocks):
        texts = inp["text"] if sample is None else [inp["text"][sample]]
        context = model.prepare_context(texts, pick(inp["clip"]))
        memory.begin_block(k)
        outs.append(
            model(
                pick(inp["latent"]),
                pick(inp["y"]),
                pick(t),
                context,
                memory,
                audio=pick(inp["audio"]),
                silent_frames=1 if k == 0 else 0,
            )
        )
    return outs


def test_batched_blocks_equal_samples_run_alone() -> None:
    model = tiny_model()
    blocks = [_inputs(model, 3, 6, 1), _inputs(model, 3, 8, 2), _inputs(model, 3, 8, 3)]
    t = torch.tensor([1000.0, 500.0, 20.0])
    with torch.no_grad():
        batched = _run_blocks(model, blocks, t, differentiable=False)
        for s in range(3):
            alone = _run_blocks(model, blocks, t, differentiable=False, sample=s)
            for a, b in zip(alone, batched):
                torch.testing.assert_close(a, b[s : s + 1], rtol=1e-4, atol=1e-5)


def test_differentiable_memory_matches_inference_and_passes_gradients() -> None:
    model = tiny_model()
    blocks = [_inputs(model, 2, 6, 4), _inputs(model, 2, 8, 5), _inputs(model, 2, 8, 6)]
    t = torch.tensor([700.0, 700.0])
    with torch.no_grad():
        reference = _run_blocks(model, blocks, t, differentiable=False)
    blocks[0]["latent"].requires_grad_(True)
    outs = _run_blocks(model, blocks, t, differentiable=True)
    for a, b in zip(outs, reference):
        torch.testing.assert_close(a.detach(), b, rtol=1e-5, atol=1e-6)
    # Block 2's output depends on block 0 only through the memory, and on the conv taps only through
    # the compression that runs before block 2.
    outs[2].square().mean().backward()
    assert blocks[0]["latent"].grad is not None and blocks[0]["latent"].grad.abs().sum() > 0
    taps = model.blocks[0].self_attn.memory_proj_k.weight.grad
    assert taps is not None and taps.abs().sum() > 0
    # The reference compresses V with the K conv: the V taps get no gradient.
    assert model.blocks[0].self_attn.memory_proj_v.weight.grad is None


def test_differentiable_memory_refuses_fp8_and_offload() -> None:
    model = tiny_model()
    for cfg in (MemoryConfig(fp8=True), MemoryConfig(offload=True)):
        with pytest.raises(ValueError, match="differentiable"):
            model.new_memory(cfg, 4, differentiable=True)
