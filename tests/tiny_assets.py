"""A complete, tiny LiveAct asset folder in the official layout, written from random weights.

``write_tiny_assets(root)`` creates what ``LiveActPipeline.from_pretrained(ckpt_dir, wav2vec_dir)`` reads::

    root/ckpt/config.json + diffusion_pytorch_model.safetensors    DiT (liveact.loading.save_transformer)
    root/ckpt/Wan2.1_VAE.pth                                       original Wan key names, float32
    root/ckpt/models_t5_umt5-xxl-enc-bf16.pth                      original umT5 key names, bfloat16
    root/ckpt/google/umt5-xxl/                                     a tokenizers-backed umT5-like tokenizer
    root/ckpt/models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth   ``visual.*`` open-clip names
    root/ckpt/xlm-roberta-large/                                   empty (optional in resolve_assets)
    root/wav2vec/                                                  transformers Wav2Vec2Model + extractor

Every file is in its ORIGINAL format: the VAE, umT5 and CLIP weights are built as diffusers/transformers
models with random weights and renamed back with the inverses of our loaders' converters
(:func:`vae_to_original`, :func:`umt5_to_original`, :func:`clip_vision_to_original`), so loading the
folder exercises the same key conversion and shape inference as the real checkpoints. The whole folder
is about 5 MB and takes a second or two to write.

The dims are chosen so the pieces fit together: the DiT's ``text_dim`` is the umT5 ``d_model``, its
``clip_dim`` the CLIP width (80, so the loader's ``width // 80`` head rule gives one head), and its audio
projection takes ``audio_window * layers * hidden`` of the tiny wav2vec2. The DiT keeps 4 heads so
sequence-parallel tests with 2 and 4 ranks divide them.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

import torch

from liveact.components.encoders import _CLIP_BLOCK_RENAME, _T5_BLOCK_RENAME
from liveact.components.vae import VAEArch, _decoder_up_names
from liveact.config import PRESETS, ModelConfig
from liveact.loading import (
    CLIP_FILE,
    CLIP_TOKENIZER,
    T5_FILE,
    T5_TOKENIZER,
    VAE_FILE,
    save_transformer,
)

# Tiny component dims. T5_DIM / CLIP_WIDTH / W2V_* also fix the DiT's text_dim, clip_dim and audio input.
T5_VOCAB = 384
T5_DIM = 32
T5_HEADS = 4
T5_LAYERS = 2
T5_BUCKETS = 32
CLIP_WIDTH = 80  # one 80-dim head: the head count the loader infers (width // 80)
CLIP_LAYERS = 2  # the loader builds CLIP_LAYERS - 1 blocks (penultimate-layer features)
CLIP_EMBED = 16
W2V_HIDDEN = 32
W2V_LAYERS = 2
VAE_BASE_DIM = 8

# The DiT: PRESETS["tiny"] narrowed to dim 64, sized to the encoders above.
TINY_DIT: ModelConfig = dataclasses.replace(
    PRESETS["tiny"],
    dim=64,
    ffn_dim=128,
    num_heads=4,
    num_layers=2,
    text_dim=T5_DIM,
    clip_dim=CLIP_WIDTH,
    audio_layers=W2V_LAYERS,
    audio_channels=W2V_HIDDEN,
    output_dim=32,
)

# The umT5 tokenizer's pieces: specials at the ids umT5 uses, every printable ASCII character alone and
# after the word-start marker (so any ASCII prompt tokenizes without <unk>), and a few whole words.
_SPECIALS = ["<pad>", "</s>", "<unk>"]
_WORDS = [
    "a",
    "the",
    "person",
    "woman",
    "man",
    "talks",
    "talking",
    "smiles",
    "camera",
    "looks",
    "at",
    "speaks",
    "to",
    "and",
    "with",
    "hand",
    "head",
    "face",
    "video",
    "portrait",
]
_METASPACE = "\u2581"


# --------------------------------------------------------------------------------------------------
# inverses of the loaders' key converters


def vae_to_original(state: dict[str, torch.Tensor], arch: VAEArch) -> dict[str, torch.Tensor]:
    """``AutoencoderKLWan`` keys -> original ``Wan2.1_VAE.pth`` keys (inverse of
    convert_wan_vae_state_dict)."""
    up_index = {name: i for i, name in enumerate(_decoder_up_names(arch))}
    inner_inverse = {
        "norm1": "residual.0",
        "conv1": "residual.2",
        "norm2": "residual.3",
        "conv2": "residual.6",
        "conv_shortcut": "shortcut",
    }

    def inner(rest: str) -> str:
        head, _, tail = rest.partition(".")
        return f"{inner_inverse[head]}.{tail}" if head in inner_inverse else rest

    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("quant_conv."):
            new = "conv1." + key[len("quant_conv.") :]
        elif key.startswith("post_quant_conv."):
            new = "conv2." + key[len("post_quant_conv.") :]
        else:
            part, rest = key.split(".", 1)
            fixed = {
                "conv_in.": "conv1.",
                "norm_out.": "head.0.",
                "conv_out.": "head.2.",
                "mid_block.attentions.0.": "middle.1.",
            }
            prefix = next((p for p in fixed if rest.startswith(p)), None)
            if prefix is not None:
                new = f"{part}.{fixed[prefix]}{rest[len(prefix) :]}"
            elif m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", rest):
                # original middle = [resblock, attention, resblock]
                new = f"{part}.middle.{2 * int(m.group(1))}.{inner(m.group(2))}"
            elif m := re.match(r"down_blocks\.(\d+)\.(.*)", rest):
                new = f"{part}.downsamples.{m.group(1)}.{inner(m.group(2))}"
            elif m := re.match(r"(up_blocks\.\d+\.(?:resnets\.\d+|upsamplers\.0))\.(.*)", rest):
                new = f"{part}.upsamples.{up_index[f'{part}.{m.group(1)}']}.{inner(m.group(2))}"
            else:
                raise KeyError(f"no original Wan VAE name for {key!r}")
        out[new] = value
    return out


def umt5_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``UMT5EncoderModel`` keys -> original ``models_t5_umt5-xxl-enc-bf16.pth`` keys."""
    inverse = {hf: orig for orig, hf in _T5_BLOCK_RENAME.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in ("shared.weight", "encoder.embed_tokens.weight"):
            out["token_embedding.weight"] = value
        elif key == "encoder.final_layer_norm.weight":
            out["norm.weight"] = value
        elif m := re.match(r"encoder\.block\.(\d+)\.(.+)\.weight$", key):
            out[f"blocks.{m.group(1)}.{inverse[m.group(2)]}.weight"] = value
        else:
            raise KeyError(f"no original umT5 name for {key!r}")
    return out


def clip_vision_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``CLIPVisionModel`` keys -> open-clip ``visual.*`` keys (q/k/v fused into ``to_qkv``)."""
    fixed = {
        "embeddings.class_embedding": ("visual.cls_embedding", lambda t: t.reshape(1, 1, -1)),
        "embeddings.position_embedding.weight": ("visual.pos_embedding", lambda t: t[None]),
        "embeddings.patch_embedding.weight": ("visual.patch_embedding.weight", lambda t: t),
        "pre_layrnorm.weight": ("visual.pre_norm.weight", lambda t: t),
        "pre_layrnorm.bias": ("visual.pre_norm.bias", lambda t: t),
        "post_layernorm.weight": ("visual.post_norm.weight", lambda t: t),
        "post_layernorm.bias": ("visual.post_norm.bias", lambda t: t),
    }
    inverse = {hf: orig for orig, hf in _CLIP_BLOCK_RENAME.items()}
    state = {k.removeprefix("vision_model."): v for k, v in state.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in fixed:
            name, fn = fixed[key]
            out[name] = fn(value)
            continue
        m = re.match(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", key)
        if m is None:
            raise KeyError(f"no open-clip name for {key!r}")
        i, inner, kind = m.groups()
        if inner.startswith("self_attn.") and inner[len("self_attn.") :] in ("q_proj", "k_proj", "v_proj"):
            if inner.startswith("self_attn.q_proj"):
                parts = [state[f"encoder.layers.{i}.self_attn.{p}_proj.{kind}"] for p in "qkv"]
                out[f"visual.transformer.{i}.attn.to_qkv.{kind}"] = torch.cat(parts, dim=0)
            continue
        out[f"visual.transformer.{i}.{inverse[inner]}.{kind}"] = value
    return out


# --------------------------------------------------------------------------------------------------
# random weights


def _randomise(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Overwrite every parameter: matrices ~ N(0, 1/fan_in), 1-D weights (norms) 1, biases ~ N(0, 0.02²).

    Fan-in scaling keeps activations O(1) through the tiny stacks, so outputs are finite and not all
    zero; seeding one generator makes the folder a function of ``seed`` alone.
    """
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                std = 1.0 / math.sqrt(max(1, math.prod(p.shape[1:])))
                p.copy_(torch.randn(p.shape, generator=generator) * std)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
            else:
                p.fill_(1.0)


def _vae_state(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A random tiny Wan2.1 VAE (Wan strides 4x8x8, z_dim 16) in original key names."""
    from diffusers import AutoencoderKLWan

    arch = VAEArch(
        base_dim=VAE_BASE_DIM,
        decoder_base_dim=VAE_BASE_DIM,
        z_dim=16,
        dim_mult=(1, 2, 4, 4),
        num_res_blocks=2,
        temperal_downsample=(False, True, True),
        in_channels=3,
        out_channels=3,
    )
    model = AutoencoderKLWan(
        base_dim=arch.base_dim,
        z_dim=arch.z_dim,
        dim_mult=list(arch.dim_mult),
        num_res_blocks=arch.num_res_blocks,
        temperal_downsample=list(arch.temperal_downsample),
    )
    _randomise(model, generator)
    return vae_to_original(model.state_dict(), arch)


def _t5_state(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A random tiny umT5 encoder in original key names, bfloat16 like the official file."""
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=T5_VOCAB,
        d_model=T5_DIM,
        d_kv=T5_DIM // T5_HEADS,
        d_ff=2 * T5_DIM,
        num_layers=T5_LAYERS,
        num_heads=T5_HEADS,
        relative_attention_num_buckets=T5_BUCKETS,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        is_encoder_decoder=False,
        use_cache=False,
    )
    model = UMT5EncoderModel(config)
    _randomise(model, generator)
    return {k: v.to(torch.bfloat16) for k, v in umt5_to_original(model.state_dict()).items()}


def _clip_state(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A random tiny open-clip visual tower (224 px, patch 14) plus the parts our loader must ignore."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        hidden_size=CLIP_WIDTH,
        intermediate_size=2 * CLIP_WIDTH,
        num_hidden_layers=CLIP_LAYERS,
        num_attention_heads=CLIP_WIDTH // 80,
        image_size=224,
        patch_size=14,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
    )
    model = CLIPVisionModel(config)
    _randomise(model, generator)
    state = clip_vision_to_original(model.state_dict())
    # The official file also holds the projection head, the logit scale and a text tower; a few of
    # those keys check that the loader skips what it does not use.
    state["visual.head"] = torch.randn(CLIP_WIDTH, CLIP_EMBED, generator=generator) / math.sqrt(CLIP_WIDTH)
    state["log_scale"] = torch.tensor(math.log(1 / 0.07))
    state["textual.norm.weight"] = torch.ones(CLIP_EMBED)
    return state


def _write_t5_tokenizer(folder: Path) -> None:
    """A umT5-like tokenizer (Metaspace + Unigram, pad 0, ``</s>`` 1, ``<unk>`` 2, EOS appended)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(33, 127)]
    pieces = _SPECIALS + [_METASPACE + w for w in _WORDS] + [_METASPACE + c for c in chars] + chars
    pieces.append(_METASPACE)
    if len(pieces) > T5_VOCAB:
        raise ValueError(f"tokenizer has {len(pieces)} pieces, more than the umT5 vocab {T5_VOCAB}")
    # Whole words score highest, then marked characters, so "hello" is "▁h e l l o" and "face" one piece.
    vocab = [(p, 0.0) for p in _SPECIALS] + [(_METASPACE + w, -1.0) for w in _WORDS]
    vocab += [(_METASPACE + c, -5.0) for c in chars] + [(c, -6.0) for c in chars] + [(_METASPACE, -8.0)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )
    fast.save_pretrained(str(folder))


def _write_wav2vec(folder: Path, generator: torch.Generator) -> None:
    """A random tiny ``Wav2Vec2Model`` (base-style group-norm CNN) and its feature extractor."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    config = Wav2Vec2Config(
        hidden_size=W2V_HIDDEN,
        num_hidden_layers=W2V_LAYERS,
        num_attention_heads=2,
        intermediate_size=2 * W2V_HIDDEN,
        conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        feat_extract_norm="group",
        do_stable_layer_norm=False,
        vocab_size=32,
    )
    model = Wav2Vec2Model(config)
    _randomise(model, generator)
    model.save_pretrained(str(folder))
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=False
    ).save_pretrained(str(folder))


def tiny_dit_config(overrides: dict[str, Any] | None = None) -> ModelConfig:
    """The tiny DiT's config, with ``overrides`` applied (they must keep the encoder-facing dims)."""
    return dataclasses.replace(TINY_DIT, **(overrides or {}))


def write_tiny_assets(
    root: Path, seed: int = 0, dit_config_overrides: dict[str, Any] | None = None
) -> tuple[Path, Path]:
    """Write a complete tiny asset folder under ``root`` from seeded random weights.

    Args:
        root: parent folder (created); ``root/ckpt`` and ``root/wav2vec`` are written.
        seed: every weight is drawn from this seed, so equal seeds give equal files.
        dit_config_overrides: ``ModelConfig`` fields to change on the tiny DiT (e.g. ``num_layers``);
            ``text_dim``, ``clip_dim``, ``audio_layers * audio_channels`` must stay as they are, because
            the encoders are fixed.

    Returns:
        ``(ckpt_dir, wav2vec_dir)`` for ``LiveActPipeline.from_pretrained``.
    """
    from liveact.model import LiveActTransformer

    root = Path(root)
    ckpt, w2v = root / "ckpt", root / "wav2vec"
    ckpt.mkdir(parents=True, exist_ok=True)
    w2v.mkdir(parents=True, exist_ok=True)
    config = tiny_dit_config(dit_config_overrides)
    fixed = (TINY_DIT.text_dim, TINY_DIT.clip_dim, TINY_DIT.audio_feature_dim)
    if (config.text_dim, config.clip_dim, config.audio_feature_dim) != fixed:
        raise ValueError(
            "dit_config_overrides may not change text_dim, clip_dim or the audio feature width "
            f"(fixed by the tiny encoders at {fixed})"
        )

    generator = torch.Generator().manual_seed(seed)
    model = LiveActTransformer(config)
    _randomise(model, generator)
    save_transformer(model, ckpt)
    torch.save(_vae_state(generator), ckpt / VAE_FILE)
    torch.save(_t5_state(generator), ckpt / T5_FILE)
    _write_t5_tokenizer(ckpt / T5_TOKENIZER)
    torch.save(_clip_state(generator), ckpt / CLIP_FILE)
    # Only the folder's presence matters: the CLIP text tower is never used.
    (ckpt / CLIP_TOKENIZER).mkdir(exist_ok=True)
    _write_wav2vec(w2v, generator)
    return ckpt, w2v


__all__ = [
    "TINY_DIT",
    "clip_vision_to_original",
    "tiny_dit_config",
    "umt5_to_original",
    "vae_to_original",
    "write_tiny_assets",
]
