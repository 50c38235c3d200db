"""A compact BERT encoder that reads Hugging Face BERT weights as they are.

Why not `transformers.BertModel`: importing it costs ~1.9 s on this class of machine,
more than the whole cold-start budget of `qrag ask`. BERT-family encoders (MiniLM, BGE,
E5, GTE) are a few dozen lines of torch; other architectures still go through
transformers (see model.py). tests/test_model.py checks the outputs match transformers.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class BertLayer(nn.Module):
    def __init__(
        self, hidden: int, heads: int, ffn: int, eps: float, dropout: float, attn_dropout: float
    ) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.attn_out = nn.Linear(hidden, hidden)
        self.attn_norm = nn.LayerNorm(hidden, eps=eps)
        self.ffn_in = nn.Linear(hidden, ffn)
        self.ffn_out = nn.Linear(ffn, hidden)
        self.ffn_norm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.attn_dropout = attn_dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = x.shape
        head_dim = hidden // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.heads, head_dim).transpose(1, 2)

        context = F.scaled_dot_product_attention(
            split(self.query(x)),
            split(self.key(x)),
            split(self.value(x)),
            attn_mask=mask,
            dropout_p=self.attn_dropout if self.training else 0.0,
            scale=1.0 / math.sqrt(head_dim),
        )
        context = context.transpose(1, 2).reshape(batch, length, hidden)
        x = self.attn_norm(x + self.dropout(self.attn_out(context)))
        return self.ffn_norm(x + self.dropout(self.ffn_out(F.gelu(self.ffn_in(x)))))


class Bert(nn.Module):
    """BERT without the pooler; forward returns the last hidden states as a 1-tuple."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        self.config = config
        hidden = config["hidden_size"]
        eps = config.get("layer_norm_eps", 1e-12)
        self.word = nn.Embedding(config["vocab_size"], hidden)
        self.position = nn.Embedding(config["max_position_embeddings"], hidden)
        self.token_type = nn.Embedding(config.get("type_vocab_size", 2), hidden)
        self.embed_norm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(config.get("hidden_dropout_prob", 0.1))
        self.layers = nn.ModuleList(
            BertLayer(
                hidden,
                config["num_attention_heads"],
                config["intermediate_size"],
                eps,
                config.get("hidden_dropout_prob", 0.1),
                config.get("attention_probs_dropout_prob", 0.1),
            )
            for _ in range(config["num_hidden_layers"])
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor]:
        length = input_ids.shape[1]
        positions = torch.arange(length, device=input_ids.device)
        x = self.word(input_ids) + self.position(positions)[None] + self.token_type.weight[0]
        x = self.dropout(self.embed_norm(x))
        mask = attention_mask[:, None, None, :].bool()
        for layer in self.layers:
            x = layer(x, mask)
        return (x,)

    # Hugging Face parameter names <-> ours, so weights load and save unchanged.
    @staticmethod
    def hf_name(ours: str) -> str:
        table = {
            "word.weight": "embeddings.word_embeddings.weight",
            "position.weight": "embeddings.position_embeddings.weight",
            "token_type.weight": "embeddings.token_type_embeddings.weight",
            "embed_norm.weight": "embeddings.LayerNorm.weight",
            "embed_norm.bias": "embeddings.LayerNorm.bias",
        }
        if ours in table:
            return table[ours]
        _, index, module, param = ours.split(".")
        sub = {
            "query": "attention.self.query",
            "key": "attention.self.key",
            "value": "attention.self.value",
            "attn_out": "attention.output.dense",
            "attn_norm": "attention.output.LayerNorm",
            "ffn_in": "intermediate.dense",
            "ffn_out": "output.dense",
            "ffn_norm": "output.LayerNorm",
        }[module]
        return f"encoder.layer.{index}.{sub}.{param}"

    def load_hf_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load a Hugging Face BertModel state dict (with or without a 'bert.' prefix)."""
        clean = {k.removeprefix("bert."): v for k, v in tensors.items()}
        state = {}
        for name in self.state_dict():
            hf = self.hf_name(name)
            if hf not in clean:
                raise KeyError(hf)
            state[name] = clean[hf].float()
        self.load_state_dict(state)

    def hf_state(self) -> dict[str, torch.Tensor]:
        return {self.hf_name(k): v for k, v in self.state_dict().items()}
