"""umT5 text encoder and CLIP ViT-H/14 image encoder on transformers, loaded from the original ``.pth`` files.

Both loaders rename the authors' keys to transformers' names and read every dimension they can from the
weights' shapes, then build the model on the meta device and load with ``assign=True`` (no random init of
billions of parameters).

- :class:`T5TextEncoder`: ``models_t5_umt5-xxl-enc-bf16.pth`` -> ``UMT5EncoderModel``; the tokenizer comes
  from the ``google/umt5-xxl/`` folder. Output rows are trimmed to the real token count (EOS included).
- :class:`CLIPImageEncoder`: the ``visual.*`` part of the open-clip XLM-Roberta ViT-H/14 ``.pth`` ->
  ``CLIPVisionModel`` built with one block fewer, so ``last_hidden_state`` is the penultimate layer.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    PreTrainedTokenizerBase,
    UMT5Config,
    UMT5EncoderModel,
)

from liveact.loading import load_pth

logger = logging.getLogger(__name__)

# OpenAI CLIP normalisation, used by the open-clip ViT-H/14 checkpoint.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
# open-clip's ViT-H/14 uses 80-dim heads (1280 / 16); head count is not recoverable from weight shapes.
CLIP_DEFAULT_HEAD_DIM = 80


def _load_pth(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """``torch.load`` a flat state dict with a clear error naming the file when missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} checkpoint not found: {path}")
    return load_pth(path, f"{what} weights")


def _load_into(
    model: torch.nn.Module,
    state_dict: dict[str, torch.Tensor],
    source: Path,
    allow_missing: Sequence[str] = (),
) -> None:
    """Load with ``assign=True``; raise naming ``source`` when keys are missing or left over."""
    result = model.load_state_dict(state_dict, strict=False, assign=True)
    missing = [k for k in result.missing_keys if k not in allow_missing]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{source}: weights do not match the inferred model: "
            f"missing {missing[:8]}, unexpected {result.unexpected_keys[:8]}"
        )


# --------------------------------------------------------------------------------------------------------
# umT5


def clean_prompt(text: str) -> str:
    """The reference's prompt cleaning: ftfy (when installed), HTML-unescape twice, collapse whitespace."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def infer_umt5_config(state_dict: dict[str, torch.Tensor], max_distance: int = 128) -> UMT5Config:
    """``UMT5Config`` from an original umT5 encoder state dict.

    vocab/d_model from the token embedding, heads and relative buckets from the per-layer position table
    ``[buckets, heads]``, d_kv from the q projection, d_ff from ``fc1``, layers from the block count.
    The relative-position ``max_distance`` is not stored in the weights (umT5 uses 128).
    """
    try:
        vocab, d_model = state_dict["token_embedding.weight"].shape
        buckets, heads = state_dict["blocks.0.pos_embedding.embedding.weight"].shape
        inner = state_dict["blocks.0.attn.q.weight"].shape[0]
        d_ff = state_dict["blocks.0.ffn.fc1.weight"].shape[0]
    except KeyError as err:
        raise ValueError(f"not an original umT5 encoder state dict: missing key {err}") from err
    num_layers = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
    return UMT5Config(
        vocab_size=vocab,
        d_model=d_model,
        d_kv=inner // heads,
        d_ff=d_ff,
        num_layers=num_layers,
        num_heads=heads,
        relative_attention_num_buckets=buckets,
        relative_attention_max_distance=max_distance,
        feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6,
        dropout_rate=0.0,
        is_encoder_decoder=False,
        use_cache=False,
    )


_T5_BLOCK_RENAME = {
    "norm1": "layer.0.layer_norm",
    "attn.q": "layer.0.SelfAttention.q",
    "attn.k": "layer.0.SelfAttention.k",
    "attn.v": "layer.0.SelfAttention.v",
    "attn.o": "layer.0.SelfAttention.o",
    "pos_embedding.embedding": "layer.0.SelfAttention.relative_attention_bias",
    "norm2": "layer.1.layer_norm",
    "ffn.gate.0": "layer.1.DenseReluDense.wi_0",  # GELU branch
    "ffn.fc1": "layer.1.DenseReluDense.wi_1",  # linear branch
    "ffn.fc2": "layer.1.DenseReluDense.wo",
}


def convert_umt5_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename original umT5 encoder keys to ``UMT5EncoderModel`` keys (tensors shared)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key == "token_embedding.weight":
            # Same tensor under both names keeps transformers' tied embedding tied after assign=True.
            out["shared.weight"] = out["encoder.embed_tokens.weight"] = value
        elif key == "norm.weight":
            out["encoder.final_layer_norm.weight"] = value
        else:
            m = re.match(r"blocks\.(\d+)\.(.+)\.weight$", key)
            if m is None or m.group(2) not in _T5_BLOCK_RENAME:
                raise KeyError(f"unexpected umT5 key {key!r}")
            out[f"encoder.block.{m.group(1)}.{_T5_BLOCK_RENAME[m.group(2)]}.weight"] = value
    return out


class T5TextEncoder:
    """umT5 encoder + tokenizer producing the DiT text context.

    Args:
        model: a loaded ``UMT5EncoderModel``.
        tokenizer: a transformers tokenizer for umT5 (``None`` allows only :meth:`encode_ids`).
        text_len: padded token length (512 in the reference).
    """

    def __init__(
        self, model: UMT5EncoderModel, tokenizer: PreTrainedTokenizerBase | None = None, text_len: int = 512
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.text_len = text_len

    @classmethod
    def from_pth(
        cls,
        path: str | Path,
        tokenizer_dir: str | Path | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        text_len: int = 512,
    ) -> T5TextEncoder:
        """Load ``models_t5_umt5-xxl-enc-bf16.pth`` (and the ``google/umt5-xxl`` tokenizer folder if given).

        ``device`` is where the encoder runs; the reference can keep it on the CPU (``--t5_cpu``).
        """
        state_dict = _load_pth(path, "umT5 encoder")
        try:
            config = infer_umt5_config(state_dict)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
        logger.info(
            "umT5 %s: d_model %d, %d layers, %d heads",
            Path(path).name,
            config.d_model,
            config.num_layers,
            config.num_heads,
        )
        with torch.device("meta"):
            model = UMT5EncoderModel(config)
        converted = {
            k: v.to(device=device, dtype=dtype) for k, v in convert_umt5_state_dict(state_dict).items()
        }
        _load_into(model, converted, Path(path))
        tokenizer = None
        if tokenizer_dir is not None:
            from transformers import AutoTokenizer

            if not Path(tokenizer_dir).is_dir():
                raise FileNotFoundError(
                    f"umT5 tokenizer folder not found: {tokenizer_dir} (expected google/umt5-xxl/)"
                )
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        return cls(model, tokenizer, text_len)

    @property
    def device(self) -> torch.device:
        """Where the encoder's weights live."""
        return self.model.shared.weight.device

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Clean and tokenize prompts -> ``input_ids``, ``attention_mask``, both ``[B, text_len]`` int64."""
        if self.tokenizer is None:
            raise RuntimeError("T5TextEncoder was built without a tokenizer; pass tokenizer_dir to from_pth")
        cleaned = [clean_prompt(p) for p in prompts]
        batch = self.tokenizer(
            cleaned,
            padding="max_length",
            truncation=True,
            max_length=self.text_len,
            add_special_tokens=True,
            return_tensors="pt",
        )
        for text, mask in zip(cleaned, batch["attention_mask"]):
            if int(mask.sum()) == self.text_len and len(self.tokenizer(text)["input_ids"]) > self.text_len:
                logger.warning(
                    "prompt %r is longer than umT5's %d tokens: the rest is cut", text[:60], self.text_len
                )
        return batch["input_ids"], batch["attention_mask"]

    @torch.no_grad()
    def encode_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        """Encode token ids.

        Args:
            input_ids, attention_mask: ``[B, L]`` (right padding, mask 1 for real tokens).
        Returns:
            ``B`` tensors ``[L_i, d_model]``, each trimmed to its ``L_i`` real tokens.
        """
        ids = input_ids.to(self.device)
        mask = attention_mask.to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        lengths = mask.gt(0).sum(dim=1).tolist()
        return [h[:n] for h, n in zip(hidden, lengths)]

    def encode(self, prompts: Sequence[str], device: torch.device | str | None = None) -> list[torch.Tensor]:
        """Encode prompts -> ``B`` tensors ``[L_i, d_model]`` (real tokens incl. EOS, no padding).

        ``device`` moves the results (e.g. to the GPU when the encoder itself is kept on the CPU).
        """
        contexts = self.encode_ids(*self.tokenize(prompts))
        return contexts if device is None else [c.to(device) for c in contexts]


# --------------------------------------------------------------------------------------------------------
# CLIP


def infer_clip_vision_config(
    state_dict: dict[str, torch.Tensor], num_heads: int | None = None
) -> CLIPVisionConfig:
    """``CLIPVisionConfig`` for the *full* open-clip visual tower from its ``visual.*`` weights.

    Width from the class embedding, patch size from the patch conv, image size from the position table,
    layers from the block count, MLP width from ``mlp.0``. The head count is not in any shape: give
    ``num_heads`` or get ``width // 80`` (open-clip ViT-H/14's 80-dim heads).
    """
    try:
        width = state_dict["visual.cls_embedding"].shape[-1]
        patch = state_dict["visual.patch_embedding.weight"].shape[-1]
        positions = state_dict["visual.pos_embedding"].shape[1]
        mlp = state_dict["visual.transformer.0.mlp.0.weight"].shape[0]
    except KeyError as err:
        raise ValueError(f"not an open-clip XLM-Roberta CLIP state dict: missing key {err}") from err
    grid = round((positions - 1) ** 0.5)
    if grid * grid != positions - 1:
        raise ValueError(f"position table of {positions} rows is not 1 + a square grid")
    layers = 1 + max(int(k.split(".")[2]) for k in state_dict if k.startswith("visual.transformer."))
    if num_heads is None:
        if width % CLIP_DEFAULT_HEAD_DIM:
            raise ValueError(f"cannot infer CLIP heads for width {width}; pass num_heads explicitly")
        num_heads = width // CLIP_DEFAULT_HEAD_DIM
    if width % num_heads:
        raise ValueError(f"CLIP width {width} is not divisible by num_heads {num_heads}")
    return CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=num_heads,
        image_size=grid * patch,
        patch_size=patch,
        num_channels=state_dict["visual.patch_embedding.weight"].shape[1],
        hidden_act="gelu",  # exact erf GELU; transformers' default quick_gelu is wrong for this checkpoint
        layer_norm_eps=1e-5,
    )


_CLIP_BLOCK_RENAME = {
    "norm1": "layer_norm1",
    "norm2": "layer_norm2",
    "attn.proj": "self_attn.out_proj",
    "mlp.0": "mlp.fc1",
    "mlp.2": "mlp.fc2",
}


def convert_clip_vision_state_dict(
    state_dict: dict[str, torch.Tensor], num_layers: int
) -> dict[str, torch.Tensor]:
    """Rename the first ``num_layers`` blocks of the open-clip visual tower to ``CLIPVisionModel`` keys.

    Keys outside ``visual.*``, the projection ``visual.head`` and blocks past ``num_layers`` are dropped.
    """
    out: dict[str, torch.Tensor] = {}
    fixed = {
        "visual.cls_embedding": ("embeddings.class_embedding", lambda t: t.reshape(-1)),  # [1,1,D] -> [D]
        "visual.pos_embedding": ("embeddings.position_embedding.weight", lambda t: t[0]),  # [1,P,D] -> [P,D]
        "visual.patch_embedding.weight": ("embeddings.patch_embedding.weight", lambda t: t),
        "visual.pre_norm.weight": ("pre_layrnorm.weight", lambda t: t),
        "visual.pre_norm.bias": ("pre_layrnorm.bias", lambda t: t),
        "visual.post_norm.weight": ("post_layernorm.weight", lambda t: t),
        "visual.post_norm.bias": ("post_layernorm.bias", lambda t: t),
    }
    for key, value in state_dict.items():
        if key in fixed:
            name, fn = fixed[key]
            out[name] = fn(value)
            continue
        m = re.match(r"visual\.transformer\.(\d+)\.(.+)\.(weight|bias)$", key)
        if m is None or int(m.group(1)) >= num_layers:
            continue
        i, inner, kind = int(m.group(1)), m.group(2), m.group(3)
        prefix = f"encoder.layers.{i}"
        if inner == "attn.to_qkv":
            # Fused projection, q/k/v stacked along the output dim.
            for part, chunk in zip("qkv", value.chunk(3, dim=0)):
                out[f"{prefix}.self_attn.{part}_proj.{kind}"] = chunk
        else:
            out[f"{prefix}.{_CLIP_BLOCK_RENAME[inner]}.{kind}"] = value
    return out


def clip_preprocess(image: torch.Tensor, size: int) -> torch.Tensor:
    """The reference's CLIP preprocessing.

    Args:
        image: ``[1, 3, 1, H, W]`` (or ``[B, 3, H, W]``) in [-1, 1].
        size: the model's input size (224).
    Returns:
        ``[B, 3, size, size]``: bicubic resize (no antialias, align_corners False), to [0, 1], CLIP mean/std.
    """
    if image.ndim == 5:
        image = image.transpose(1, 2).flatten(0, 1)  # [B, 3, T, H, W] -> [B*T, 3, H, W]
    x = F.interpolate(image, size=(size, size), mode="bicubic", align_corners=False)
    x = x.mul(0.5).add(0.5)
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class CLIPImageEncoder:
    """open-clip ViT-H/14 visual tower returning penultimate-layer tokens ``[B, 257, width]``.

    The model is built with one transformer block fewer than the checkpoint, so its ``last_hidden_state``
    (taken before ``post_layernorm``) is exactly the reference's ``use_31_block`` output.
    """

    def __init__(self, model: CLIPVisionModel) -> None:
        self.model = model.eval().requires_grad_(False)

    @classmethod
    def from_pth(
        cls,
        path: str | Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        num_heads: int | None = None,
    ) -> CLIPImageEncoder:
        """Load ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`` (only ``visual.*`` is used).

        ``num_heads`` defaults to ``width // 80`` (16 for the real ViT-H/14).
        """
        state_dict = _load_pth(path, "CLIP")
        try:
            full = infer_clip_vision_config(state_dict, num_heads)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
        config = CLIPVisionConfig(**{**full.to_dict(), "num_hidden_layers": full.num_hidden_layers - 1})
        logger.info(
            "CLIP %s: width %d, %d of %d blocks, %d heads",
            Path(path).name,
            config.hidden_size,
            config.num_hidden_layers,
            full.num_hidden_layers,
            config.num_attention_heads,
        )
        with torch.device("meta"):
            model = CLIPVisionModel(config)
        converted = convert_clip_vision_state_dict(state_dict, config.num_hidden_layers)
        converted = {k: v.to(device=device, dtype=dtype) for k, v in converted.items()}
        _load_into(model, converted, Path(path))
        _rebuild_position_ids(model, device)
        return cls(model)

    @property
    def device(self) -> torch.device:
        """Where the encoder's weights live."""
        return self.model.embeddings.patch_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Parameter dtype."""
        return self.model.embeddings.patch_embedding.weight.dtype

    @torch.no_grad()
    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """``[1, 3, 1, H, W]`` in [-1, 1] -> penultimate-layer tokens ``[1, 1+grid², width]``."""
        size = self.model.config.image_size
        pixels = clip_preprocess(image.to(self.device, torch.float32), size).to(self.dtype)
        return self.model(pixel_values=pixels).last_hidden_state


def _rebuild_position_ids(model: CLIPVisionModel, device: torch.device | str) -> None:
    """Recreate the non-persistent ``position_ids`` buffer, which stays on meta after a meta-device build."""
    emb = model.embeddings
    emb.register_buffer(
        "position_ids", torch.arange(emb.num_positions, device=device).unsqueeze(0), persistent=False
    )
