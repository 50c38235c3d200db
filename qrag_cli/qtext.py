"""What both Q networks share: the torch one that trains (qnet.QModel) and the ONNX one
that asks and indexes (onnx_model.OnnxQModel). That is the encoder's tokenizer, text to
encoder ids, the length-sorted batches both embed in, and the Q head's numbers. No torch
here: `qrag ask` must start without it (issue 39)."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qrag_cli.types import ModelError

if TYPE_CHECKING:
    from qrag_cli import qspec
    from qrag_cli.model_config import ModelConfig

CPU_BATCH_TOKENS = 2048
"""Padded tokens per forward pass on a CPU. Batches whose activations stay in cache
(2048 tokens: ~12 MB for MiniLM's widest layer) embedded the same chunks 8-25% faster
than batches of 16384 (BENCHMARKS.md "Embedding batches"); a GPU wants large batches."""


class TextTokenizer:
    """The encoder's own tokenizer through `tokenizers` (no transformers import at ask time)."""

    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer

        path = folder / "tokenizer.json"
        try:
            self.tok = Tokenizer.from_file(str(path))
        except Exception as exc:
            raise ModelError(f"cannot load tokenizer {path}: {exc}") from exc
        self.tok.no_truncation()
        self.tok.no_padding()
        self.folder = folder
        special = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            with contextlib.suppress(OSError, json.JSONDecodeError):
                special.update(json.loads((folder / name).read_text()))

        def token_id(key: str, default: str) -> int:
            value = special.get(key, default)
            value = value.get("content", default) if isinstance(value, dict) else value
            found = self.tok.token_to_id(value)
            if found is None:
                raise ModelError(f"{path} has no {key} {value!r}")
            return found

        self.cls_token_id = token_id("cls_token", "[CLS]")
        self.sep_token_id = token_id("sep_token", "[SEP]")
        self.pad_token_id = token_id("pad_token", "[PAD]")

    def ids(self, texts: Sequence[str], cap: int | None = None) -> list[list[int]]:
        encoded = self.tok.encode_batch(list(texts), add_special_tokens=False)
        return [e.ids[:cap] if cap is not None else e.ids for e in encoded]

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name in (
            "tokenizer.json",
            "special_tokens_map.json",
            "tokenizer_config.json",
            "vocab.txt",
        ):
            if (self.folder / name).is_file():
                shutil.copyfile(self.folder / name, folder / name)


def length_batches(seqs: Sequence[list[int]], token_budget: int) -> Iterator[list[int]]:
    """Positions of `seqs` in length-sorted batches bounded by padded tokens: no wasted
    padding."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    start = 0
    while start < len(order):
        end = start + 1
        while end < len(order) and len(seqs[order[end]]) * (end - start + 1) <= token_budget:
            end += 1
        yield order[start:end]
        start = end


def pad_ids(seqs: Sequence[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, attention mask), int64 [len(seqs), longest], padded with `pad_id`."""
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return ids, mask


def _numbers(value: Any) -> np.ndarray:
    """A head parameter (a torch tensor or numpy) as float32 numpy."""
    if hasattr(value, "detach"):
        value = value.detach().float().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


class QNetwork:
    """The part of a Q network that does not depend on how its encoders run.

    Subclasses set `cfg`, `tokenizer`, `encoder_config`, `folder` and the Q head
    (`lexical_weights`, `dense_weight`, `head_bias`: all None for a pure dense Q), and
    embed: `embed_chunks` (E_a, what `qrag index` stores) and `embed_states` (E_s)."""

    engine: str
    """What runs the encoders: "onnx" or "torch"."""
    cfg: ModelConfig
    tokenizer: TextTokenizer
    encoder_config: dict
    folder: Path | None
    lexical_weights: Any
    dense_weight: Any
    head_bias: Any

    # ---- text -> token ids ----------------------------------------------------------
    def chunk_ids(self, texts: Sequence[str], cap: int) -> list[list[int]]:
        """Token ids without special tokens, each cut to `cap`."""
        return self.tokenizer.ids(texts, cap)

    def fits(self, text: str) -> bool:
        """Whether a chunk embeds without truncation (the chunker asks this)."""
        return len(self.tokenizer.ids([text])[0]) + 2 <= self.cfg.max_tokens

    def action_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """[CLS] chunk [SEP], cut to the chunk encoder's length: E_a's input."""
        cls_id, sep_id = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        return [[cls_id, *s, sep_id] for s in self.chunk_ids(texts, self.cfg.max_tokens - 2)]

    # ---- the Q head -----------------------------------------------------------------
    def head_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(lexical weights, dense weight, bias) as float32 numpy, or None (pure dense Q)."""
        if self.lexical_weights is None or self.dense_weight is None:
            return None
        return (
            _numbers(self.lexical_weights),
            _numbers(self.dense_weight),
            _numbers(0.0 if self.head_bias is None else self.head_bias),
        )

    def set_spec(self, spec: qspec.QSpec) -> None:
        """Make `spec` the model's Q (config and head alike)."""
        raise NotImplementedError

    def with_spec(self, spec: qspec.QSpec) -> QNetwork:
        """The same encoders and tokenizer under another Q, with a config and head of its
        own; this model is left as it is."""
        raise NotImplementedError

    # ---- embedding --------------------------------------------------------------------
    def embed_chunks(self, texts: Sequence[str]) -> np.ndarray:
        """E_a over chunk texts -> float32 [n, dim] (what `qrag index` stores)."""
        raise NotImplementedError

    def embed_states(self, states: Sequence[list[int]]) -> np.ndarray:
        """E_s over assembled state token ids -> float32 [n, dim]."""
        raise NotImplementedError
