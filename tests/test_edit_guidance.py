"""Edit guidance: edited blocks are pushed away from the main prompt; the memory stays the unguided one's."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from tiny_models import small_model

from liveact.config import SamplerConfig
from liveact.model import LiveActTransformer
from liveact.sampler import Conditions, NeighborForcingSampler


def conditions(model: LiveActTransformer, edit_text: torch.Tensor | None = None) -> Conditions:
    cfg = model.config
    g = torch.Generator().manual_seed(1)
    text = torch.randn(5, cfg.text_dim, generator=g)
    edit = torch.randn(7, cfg.text_dim, generator=g) if edit_text is None else edit_text
    return Conditions(
        text=text,
        clip=torch.randn(1, 257, cfg.clip_dim, generator=g),
        y=torch.randn(1, cfg.cond_dim, 14, 4, 4, generator=g),
        audio=torch.randn(200, cfg.audio_layers, cfg.audio_channels, generator=g),
        edits=[((2, 3), edit)],
    )


def blocks(
    model: LiveActTransformer, cond: Conditions, edit_cfg: float, audio_cfg: float = 1.0
) -> list[torch.Tensor]:
    sampler = NeighborForcingSampler(model, audio_cfg=audio_cfg, sampler=SamplerConfig(edit_cfg=edit_cfg))
    return list(sampler.stream(cond, 6, torch.Generator().manual_seed(4)))


@pytest.mark.parametrize("audio_cfg", [1.0, 2.0])
def test_guidance_changes_only_edited_blocks_and_amplifies_the_edit(audio_cfg: float) -> None:
    model = small_model()
    cond = conditions(model)
    plain, guided = blocks(model, cond, 1.0, audio_cfg), blocks(model, cond, 3.0, audio_cfg)
    for k in (0, 1):  # before the edit: untouched
        torch.testing.assert_close(guided[k], plain[k], rtol=0, atol=0)
    for k in (2, 3):
        assert (guided[k] - plain[k]).abs().max() > 1e-3, f"block {k} is not guided"
    # Guidance moves the edited blocks further from what the main prompt alone makes.
    main_only = blocks(model, replace(cond, edits=[]), 1.0, audio_cfg)
    for k in (2, 3):
        assert (guided[k] - main_only[k]).norm() > (plain[k] - main_only[k]).norm()


def test_guidance_with_the_main_prompt_as_edit_is_a_no_op() -> None:
    """v_base == v_edit, so the guided blocks and the memory left for later blocks equal the unguided run's:
    the extra pass over the same block leaves no trace in the memory (the edited pass runs last)."""
    model = small_model()
    g = torch.Generator().manual_seed(1)
    main_text = torch.randn(5, model.config.text_dim, generator=g)
    cond = conditions(model, edit_text=main_text.clone())
    for a, b in zip(blocks(model, cond, 1.0), blocks(model, cond, 4.0)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_edit_cfg_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="edit_cfg"):
        SamplerConfig(edit_cfg=0.5)
