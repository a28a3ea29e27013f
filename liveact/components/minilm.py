"""all-MiniLM-L6-v2 (a 6-layer BERT) in plain PyTorch, for LiveAct-Nano's prompts.

The same weights and numbers as transformers' ``BertModel`` (``tests/test_nano_components.py``
compares them), without importing transformers: its import and model build cost seconds of every
Nano run's start-up, for a 22 M parameter encoder. The tokenizer is the folder's own
``tokenizer.json``, read by the ``tokenizers`` library.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class BertConfig:
    """The fields of a transformers BERT ``config.json`` that the forward pass uses."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_file(cls, path: Path) -> BertConfig:
        """Read ``config.json``; only absolute position embeddings and GELU are supported."""
        raw = json.loads(path.read_text())
        if (
            raw.get("hidden_act", "gelu") != "gelu"
            or raw.get("position_embedding_type", "absolute") != "absolute"
        ):
            raise ValueError(f"{path}: only BERT with GELU and absolute positions is supported")
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


class BertLayer(nn.Module):
    """Post-norm self-attention + GELU feed-forward, parameter names as transformers' BERT layer."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        width, eps = config.hidden_size, config.layer_norm_eps
        self.heads = config.num_attention_heads
        self.attention = nn.Module()
        self.attention.self = nn.Module()
        for name in ("query", "key", "value"):
            setattr(self.attention.self, name, nn.Linear(width, width))
        self.attention.output = nn.Module()
        self.attention.output.dense = nn.Linear(width, width)
        self.attention.output.LayerNorm = nn.LayerNorm(width, eps=eps)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(width, config.intermediate_size)
        self.output = nn.Module()
        self.output.dense = nn.Linear(config.intermediate_size, width)
        self.output.LayerNorm = nn.LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, L, D]`` -> ``[B, L, D]`` (no padding: every token attends to every token)."""
        b, length, width = x.shape
        attn = self.attention

        def heads(linear: nn.Linear) -> torch.Tensor:
            return linear(x).view(b, length, self.heads, width // self.heads).transpose(1, 2)

        q, k, v = heads(attn.self.query), heads(attn.self.key), heads(attn.self.value)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(width // self.heads)
        mixed = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, length, width)
        x = attn.output.LayerNorm(attn.output.dense(mixed) + x)
        hidden = F.gelu(self.intermediate.dense(x))
        return self.output.LayerNorm(self.output.dense(hidden) + x)


class BertEncoder(nn.Module):
    """Embeddings + layers of a BERT; :meth:`forward` returns the last hidden state."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embeddings.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.embeddings.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.embeddings.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` token ids (one segment, no padding) -> ``[B, L, hidden_size]``."""
        emb = self.embeddings
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = emb.word_embeddings(input_ids) + emb.position_embeddings(positions)[None]
        x = emb.LayerNorm(x + emb.token_type_embeddings.weight[0])
        for layer in self.encoder.layer:
            x = layer(x)
        return x

    @classmethod
    def from_folder(cls, folder: Path, dtype: torch.dtype = torch.float32) -> BertEncoder:
        """Build from a transformers BERT folder (``config.json`` + ``model.safetensors``)."""
        from safetensors.torch import load_file

        model = cls(BertConfig.from_file(folder / "config.json"))
        state = load_file(str(folder / "model.safetensors"))
        wanted = model.state_dict()
        missing = sorted(set(wanted) - set(state))
        if missing:
            raise ValueError(f"{folder / 'model.safetensors'} lacks {missing[:3]} ...: not a BERT checkpoint")
        model.load_state_dict({k: state[k] for k in wanted})
        return model.to(dtype).eval().requires_grad_(False)


def load_tokenizer(folder: Path, max_tokens: int) -> object:
    """The folder's ``tokenizer.json``: truncates to ``max_tokens`` ([CLS] and [SEP] included), no padding."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_tokens)
    return tokenizer
