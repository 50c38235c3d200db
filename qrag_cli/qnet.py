"""The Q network: what Q-RAG computes, Q(s, a) = <E_s(state), E_a(chunk)>.

Two encoders, the state encoder E_s and the chunk (action) encoder E_a, turn token ids into
vectors; `QModel` binds them to their tokenizer and settings (`ModelConfig`) and embeds
chunks and states in length-sorted batches. Nothing here reads or writes a model folder:
that is model.py (config, discovery, load/save/compact, fingerprints, card).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from qrag_cli import qspec
from qrag_cli.config import env_value
from qrag_cli.qtext import CPU_BATCH_TOKENS, QNetwork, TextTokenizer, length_batches, pad_ids

if TYPE_CHECKING:
    from qrag_cli.model_config import ModelConfig


class Encoder(nn.Module):
    """A Hugging Face encoder with mean pooling (the base model's own pooling)."""

    def __init__(self, backbone: nn.Module, normalize: bool, scale: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.normalize = normalize
        self.scale = scale

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask)[0]
        return self.pool(hidden, attention_mask)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The vector of the backbone's last hidden layer [batch, tokens, dim]."""
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        if self.normalize:
            pooled = nn.functional.normalize(pooled.float(), dim=-1)
        return pooled.float() * self.scale


class HFBackbone(nn.Module):
    """Any other transformers encoder (slower import; BERT-family models avoid it)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        return (self.model(input_ids=input_ids, attention_mask=attention_mask)[0],)


class QModel(nn.Module, QNetwork):
    """State encoder E_s, chunk encoder E_a, tokenizer and the settings that bind them: the
    torch Q network, which trains (and runs where a model folder has no ONNX encoders)."""

    engine = "torch"

    def __init__(
        self,
        cfg: ModelConfig,
        state_encoder: Encoder,
        chunk_encoder: Encoder,
        tokenizer: TextTokenizer,
        encoder_config: dict,
        folder: Path | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.state_encoder = state_encoder
        self.chunk_encoder = chunk_encoder
        self.tokenizer = tokenizer
        self.encoder_config = encoder_config
        self.folder = folder
        # The linear Q head (qspec.py): the weight of the dense term and of each lexical
        # term. Parameters, so `qrag train` learns them; saved in config.json's registry.
        # A pure dense Q (no lexical terms) has none: Q is the dot product, as in the paper.
        self.lexical_weights: nn.Parameter | None = None
        self.dense_weight: nn.Parameter | None = None
        self.head_bias: nn.Parameter | None = None
        self._set_head(cfg.spec())
        # Inference (chunks at index time, states at each step) runs in bf16 where the CPU
        # has native bf16 (AVX512-BF16/AMX): ~2x faster, scores move by ~1e-3. Training
        # rollouts and evaluation use the same path, so a model is measured as it is used.
        precision = inference_precision()
        self.infer_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        # int8 (other x86 CPUs): states go through an int8 copy of E_s (30-45% faster encodes);
        # chunks stay fp32, so an index is the same whichever precision asks it. `qrag
        # train` turns it off: its rollouts score with the float weights it is learning.
        self.state_int8 = precision == "int8"
        self._int8_copy: tuple[tuple[int, ...], nn.Module] | None = None

    def head_weights(self) -> list[nn.Parameter]:
        """The Q head's parameters (none for a pure dense Q)."""
        head = (self.dense_weight, self.lexical_weights, self.head_bias)
        return [w for w in head if w is not None]

    def _set_head(self, spec: qspec.QSpec) -> None:
        self.lexical_weights = self.dense_weight = self.head_bias = None
        if spec.weights is not None:

            def scalar(value: object) -> nn.Parameter:
                return nn.Parameter(torch.tensor(value, dtype=torch.float32))

            self.lexical_weights = scalar(spec.weights)
            self.dense_weight = scalar(spec.dense_weight)
            self.head_bias = scalar(spec.bias)

    def set_spec(self, spec: qspec.QSpec) -> None:
        self.cfg.q = spec.to_json() if spec.weights is not None else None
        self._set_head(spec)

    def with_spec(self, spec: qspec.QSpec) -> QModel:
        cfg = replace(self.cfg, q=spec.to_json() if spec.weights is not None else None)
        return QModel(
            cfg,
            self.state_encoder,
            self.chunk_encoder,
            self.tokenizer,
            self.encoder_config,
            self.folder,
        )

    def learned_spec(self) -> qspec.QSpec:
        """The model's registry with the head weights as they are now (learned)."""
        spec = self.cfg.spec()
        if self.lexical_weights is None or self.dense_weight is None or self.head_bias is None:
            return spec  # a pure dense Q: no head (the three exist together, `_set_head`)
        weights = tuple(round(float(w), 6) for w in self.lexical_weights.detach().cpu())
        dense = round(float(self.dense_weight.detach()), 6)
        return replace(
            spec, weights=weights, dense_weight=dense, bias=round(float(self.head_bias.detach()), 6)
        )

    # ---- embedding --------------------------------------------------------------------
    def _pad(self, seqs: Sequence[list[int]], device: torch.device):
        ids, mask = pad_ids(seqs, self.tokenizer.pad_token_id)
        return torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)

    def encode(
        self,
        encoder: Encoder,
        seqs: Sequence[list[int]],
        token_budget: int | None = None,
        grad: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Embed token-id sequences (with special tokens) in length-sorted batches of at most
        `token_budget` padded tokens (unset: `batch_tokens` for the encoder's device)."""
        device = next(encoder.parameters()).device
        token_budget = token_budget or batch_tokens(device)
        if not seqs:
            return torch.zeros((0, self.cfg.dim), device=device)
        out: list[torch.Tensor | None] = [None] * len(seqs)
        ctx = torch.enable_grad() if grad else torch.inference_mode()
        autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
        with ctx, autocast:
            for batch in length_batches(seqs, token_budget):
                ids, mask = self._pad([seqs[i] for i in batch], device)
                vecs = encoder(ids, mask)
                for row, i in enumerate(batch):
                    out[i] = vecs[row]
        return torch.stack(out)  # type: ignore[arg-type]

    def embed_chunks(self, texts: Sequence[str]) -> np.ndarray:
        """E_a over chunk texts -> float32 [n, dim] (what `qrag index` stores)."""
        return (
            self.encode(self.chunk_encoder, self.action_ids(texts), dtype=self.infer_dtype)
            .float()
            .cpu()
            .numpy()
        )

    def embed_states(self, states: Sequence[list[int]]) -> np.ndarray:
        """E_s over assembled state token ids -> float32 [n, dim]."""
        encoder = self._state_int8_encoder() if self.state_int8 else self.state_encoder
        return self.encode(encoder, states, dtype=self.infer_dtype).float().cpu().numpy()

    def _state_int8_encoder(self) -> nn.Module:
        """The int8 copy of E_s, made again whenever E_s's weights changed in place (every
        in-place write bumps a tensor's version: an optimiser step, load_state_dict)."""
        version = tuple(p._version for p in self.state_encoder.parameters())
        if self._int8_copy is None or self._int8_copy[0] != version:
            self._int8_copy = (version, int8_state_encoder(self.state_encoder))
        return self._int8_copy[1]


def int8_state_encoder(encoder: Encoder) -> nn.Module:
    """A copy of E_s for a CPU whose linear layers after the first transformer layer hold
    int8 weights (one scale per output channel) and quantise their inputs per call: one
    state alone encodes faster. The first layer stays fp32: quantising it moved the state
    vector most (BENCHMARKS.md "int8 states"). A backbone other than qrag's own BERT (or
    one not on the CPU) is returned as it is."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    layers = getattr(encoder.backbone, "layers", None)
    if layers is None or next(encoder.parameters()).device.type != "cpu":
        return encoder
    first = {id(m) for m in layers[0].modules()}
    spec = {
        name: per_channel_dynamic_qconfig
        for name, module in encoder.named_modules()
        if isinstance(module, nn.Linear) and id(module) not in first
    }
    # The copy shares every float tensor with E_s (the memo maps each to itself): only the
    # int8 layers are new, and a cold `qrag ask` pays ~0.2 s for them, not for 90 MB.
    clone = copy.deepcopy(encoder, {id(p): p for p in encoder.parameters()}).eval()
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore")
        return quantize_dynamic(clone, spec, dtype=torch.qint8, inplace=True)


def batch_tokens(device: torch.device) -> int:
    """Padded tokens per forward pass (qtext.CPU_BATCH_TOKENS on a CPU)."""
    return CPU_BATCH_TOKENS if device.type == "cpu" else 16384


def inference_precision(cpu_flags: set[str] | None = None) -> str:
    """How a fixed model embeds: bf16 where the CPU computes it natively; else int8 states
    where torch has an x86 int8 engine (chunks in fp32); else fp32. QRAG_DTYPE=fp32|bf16|
    int8 overrides. `cpu_flags`: /proc/cpuinfo's (unset: read them)."""
    forced = env_value("QRAG_DTYPE")  # config validates it: fp32, bf16 or int8
    if forced:
        return forced
    if cpu_flags is None:
        try:
            cpu_flags = set(Path("/proc/cpuinfo").read_text().split())
        except OSError:
            cpu_flags = set()
    if {"avx512_bf16", "amx_bf16"} & cpu_flags:
        return "bf16"
    return "int8" if has_x86_int8() else "fp32"


def has_x86_int8() -> bool:
    """Whether torch has fbgemm's per-channel int8 kernels (x86); qnnpack (ARM) has not."""
    return bool({"x86", "fbgemm"} & set(torch.backends.quantized.supported_engines))
