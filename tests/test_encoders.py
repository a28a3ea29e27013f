"""umT5 and CLIP encoders: key conversion, inferred dims, parity with the authors' outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import case_params, load_meta
from safetensors.torch import load_file

from liveact.components.encoders import (
    CLIPImageEncoder,
    T5TextEncoder,
    clean_prompt,
    clip_preprocess,
    infer_clip_vision_config,
    infer_umt5_config,
)

TOL = 1e-4  # relative to the max abs of the expected tensor


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("case", case_params("components", "t5"))
def test_t5_matches_reference(case: Path) -> None:
    meta = load_meta(case)
    path = case / meta["weights_file"]
    config = infer_umt5_config(torch.load(path, map_location="cpu", weights_only=True))
    want = meta["hf_equivalent_config"]
    for key in (
        "vocab_size",
        "d_model",
        "d_kv",
        "d_ff",
        "num_layers",
        "num_heads",
        "relative_attention_num_buckets",
    ):
        assert getattr(config, key) == want[key], key

    enc = T5TextEncoder.from_pth(path, device="cpu", dtype=torch.float32, text_len=meta["config"]["text_len"])
    inputs, expected = load_file(case / "inputs.safetensors"), load_file(case / "expected.safetensors")
    contexts = enc.encode_ids(inputs["input_ids"], inputs["attention_mask"])
    assert len(contexts) == inputs["input_ids"].shape[0]
    for b, ctx in enumerate(contexts):
        assert _rel_err(ctx, expected[f"context_{b}"]) < TOL
        # Each sample alone, unpadded and without a mask, gives the same rows.
        alone = enc.encode_ids(
            inputs["input_ids"][b : b + 1, : ctx.shape[0]], torch.ones(1, ctx.shape[0], dtype=torch.long)
        )
        assert _rel_err(alone[0], expected[f"context_{b}"]) < TOL


@pytest.mark.parametrize("case", case_params("components", "t5"))
def test_t5_text_path_with_tokenizer(case: Path, tmp_path: Path) -> None:
    """encode(prompts) cleans, pads to text_len, and trims to the real tokens incl. EOS."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    meta = load_meta(case)
    words = ["a", "b", "c", "&", "hello", "world"]
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: 3 + i for i, w in enumerate(words)}
    assert len(vocab) <= meta["config"]["vocab"]
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(tmp_path)

    text_len = meta["config"]["text_len"]
    enc = T5TextEncoder.from_pth(
        case / meta["weights_file"], tokenizer_dir=tmp_path, dtype=torch.float32, text_len=text_len
    )
    ids, mask = enc.tokenize(["hello  world", "a &amp;amp; b\n\tc"])
    assert ids.shape == mask.shape == (2, text_len)
    assert mask.sum(1).tolist() == [3, 5]
    out = enc.encode(["hello  world", "a &amp;amp; b\n\tc"])
    assert [o.shape for o in out] == [(3, meta["config"]["dim"]), (5, meta["config"]["dim"])]
    assert torch.allclose(out[0], enc.encode_ids(ids[:1, :3], mask[:1, :3])[0], atol=1e-5)


def test_clean_prompt() -> None:
    assert clean_prompt("  a &amp;amp; b\n\t c  ") == "a & b c"


@pytest.mark.parametrize("case", case_params("components", "clip"))
def test_clip_matches_reference(case: Path) -> None:
    meta = load_meta(case)
    path = case / meta["weights_file"]
    # The head count is not recoverable from weight shapes; the fixture states it in meta.json.
    heads = meta["config"]["vision_heads"]
    config = infer_clip_vision_config(torch.load(path, map_location="cpu", weights_only=True), heads)
    want = meta["hf_equivalent_config"]
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "image_size", "patch_size"):
        assert getattr(config, key) == want[key], key

    enc = CLIPImageEncoder.from_pth(path, device="cpu", dtype=torch.float32, num_heads=heads)
    inputs, expected = load_file(case / "inputs.safetensors"), load_file(case / "expected.safetensors")
    pixels = clip_preprocess(inputs["image"], config.image_size)
    assert _rel_err(pixels, expected["pixel_values_224"]) < TOL
    assert _rel_err(enc.encode(inputs["image"]), expected["clip_fea"]) < TOL


def test_clip_head_rule_and_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="CLIP checkpoint"):
        CLIPImageEncoder.from_pth(tmp_path / "missing.pth")
    sd = {
        "visual.cls_embedding": torch.zeros(1, 1, 1280),
        "visual.patch_embedding.weight": torch.zeros(1280, 3, 14, 14),
        "visual.pos_embedding": torch.zeros(1, 257, 1280),
        "visual.transformer.0.mlp.0.weight": torch.zeros(5120, 1280),
        "visual.transformer.31.mlp.0.weight": torch.zeros(5120, 1280),
    }
    config = infer_clip_vision_config(sd)
    assert (config.num_attention_heads, config.num_hidden_layers, config.image_size) == (16, 32, 224)
    sd["visual.cls_embedding"] = torch.zeros(1, 1, 64)
    with pytest.raises(ValueError, match="num_heads"):
        infer_clip_vision_config(sd)
