"""The Q network on ONNX Runtime: how `qrag ask`, `qrag index` and `qrag mcp` run E_s and
E_a without importing torch (2+ s of every cold start on a small machine; onnxruntime
imports in a quarter of that).

A model folder written by qrag holds onnx/ beside its safetensors (onnx_export.py):
state.onnx (E_s), chunk.onnx (E_a; absent where E_a is E_s) and manifest.json, which
records the weights they were written from. `load_inference_model` uses them when they
match the folder; otherwise (an older model folder, the untrained base, a non-BERT
encoder) it loads the torch model (model.py) and says once on stderr how to add them.

Only the encoder that a command needs starts a session: asking never embeds a chunk, so it
never loads E_a.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from qrag_cli import qspec
from qrag_cli.config import env_value
from qrag_cli.model_config import ModelConfig, is_base_name
from qrag_cli.model_dirs import default_model_dir
from qrag_cli.onnx_export import FOLDER, MANIFEST, source_fingerprint
from qrag_cli.onnx_export import FORMAT as ONNX_FORMAT
from qrag_cli.qtext import CPU_BATCH_TOKENS, QNetwork, TextTokenizer, length_batches, pad_ids
from qrag_cli.types import ModelError


def _new_session(path: Path) -> Any:  # an onnxruntime.InferenceSession
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: its warnings are not the user's
    # Extended: the fusions of the int8 layers (DynamicQuantizeMatMul). "All" adds layout
    # changes that cost ~0.1 s per session start and gained nothing here.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types for a bad file
        raise ModelError(f"cannot load {path}: {str(exc).splitlines()[0]}") from exc


class OnnxEncoder:
    """One encoder graph; its session starts on first use."""

    def __init__(self, path: Path, normalize: bool, scale: float) -> None:
        self.path = path
        self.normalize = normalize
        self.scale = scale
        self._session: Any = None

    def session(self) -> Any:  # an onnxruntime.InferenceSession
        if self._session is None:
            self._session = _new_session(self.path)
        return self._session

    def __call__(self, seqs: Sequence[list[int]], pad_id: int, token_budget: int) -> np.ndarray:
        """Vectors of token-id sequences (with special tokens), float32 [n, dim]."""
        session = self.session()
        out: list[np.ndarray | None] = [None] * len(seqs)
        for batch in length_batches(seqs, token_budget):
            ids, mask = pad_ids([seqs[i] for i in batch], pad_id)
            pooled = session.run(["pooled"], {"input_ids": ids, "attention_mask": mask})[0]
            for row, i in enumerate(batch):
                out[i] = pooled[row]
        vectors = np.stack(out).astype(np.float32)  # type: ignore[arg-type]
        if self.normalize:
            norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
            vectors = vectors / np.maximum(norms, 1e-12)  # torch's F.normalize
        return vectors * np.float32(self.scale)


class OnnxQModel(QNetwork):
    """E_s and E_a as ONNX graphs, with the model's tokenizer, settings and Q head."""

    engine = "onnx"

    def __init__(self, cfg: ModelConfig, folder: Path, encoder_config: dict, files: dict) -> None:
        self.cfg = cfg
        self.folder = folder
        self.encoder_config = encoder_config
        self.tokenizer = TextTokenizer(folder / "tokenizer")
        onnx_dir = folder / FOLDER
        state_name = _state_file(files)
        self.state_precision = "int8" if state_name == files.get("state_int8") else "fp32"
        self.state_encoder = OnnxEncoder(onnx_dir / state_name, *cfg.state_settings())
        self.chunk_encoder = (
            OnnxEncoder(onnx_dir / files["chunk"], cfg.normalize, cfg.scale)
            if files.get("chunk")
            else OnnxEncoder(onnx_dir / files["state"], cfg.normalize, cfg.scale)
        )
        self.lexical_weights = self.dense_weight = self.head_bias = None
        self.set_spec(cfg.spec())

    def set_spec(self, spec: qspec.QSpec) -> None:
        if spec.weights is None:
            self.cfg.q = None
            self.lexical_weights = self.dense_weight = self.head_bias = None
            return
        self.cfg.q = spec.to_json()
        self.lexical_weights = np.asarray(spec.weights, dtype=np.float32)
        self.dense_weight = np.float32(spec.dense_weight)
        self.head_bias = np.float32(spec.bias)

    def with_spec(self, spec: qspec.QSpec) -> OnnxQModel:
        twin = copy.copy(self)  # the sessions and the tokenizer are shared, read-only
        twin.cfg = replace(self.cfg)
        twin.set_spec(spec)
        return twin

    def embed_chunks(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.cfg.dim), np.float32)
        pad = self.tokenizer.pad_token_id
        return self.chunk_encoder(self.action_ids(texts), pad, CPU_BATCH_TOKENS)

    def embed_states(self, states: Sequence[list[int]]) -> np.ndarray:
        if not states:
            return np.zeros((0, self.cfg.dim), np.float32)
        return self.state_encoder(states, self.tokenizer.pad_token_id, CPU_BATCH_TOKENS)


def state_precision() -> str:
    """fp32 or int8 for E_s on ONNX Runtime: int8 unless QRAG_DTYPE says fp32 or bf16 (bf16
    is torch's: ONNX runs its fp32 graph). Chunks are always fp32, so an index is the same
    whichever precision asks it."""
    return "fp32" if env_value("QRAG_DTYPE") in ("fp32", "bf16") else "int8"


def onnx_files(folder: Path, cfg: ModelConfig, encoder_config: dict) -> tuple[dict | None, str]:
    """(the manifest's files, "") where the folder's ONNX graphs can run it, else (None, why
    not: for the note)."""
    path = folder / FOLDER / MANIFEST
    if not path.is_file():
        return None, "has no ONNX encoders"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None, "has an unreadable onnx/manifest.json"
    if not isinstance(manifest, dict) or manifest.get("format") != ONNX_FORMAT:
        return None, "has ONNX encoders of another format"
    if manifest.get("source") != source_fingerprint(folder, cfg, encoder_config):
        return None, "has ONNX encoders written from other weights"
    files = manifest.get("files")
    if not isinstance(files, dict) or not isinstance(files.get("state"), str):
        return None, "has an onnx/manifest.json without a state encoder"
    for name in [*files.values(), manifest.get("data")]:  # the graphs and their weights
        if not (isinstance(name, str) and (folder / FOLDER / name).is_file()):
            return None, f"lacks onnx/{name}"
    return files, ""


def load_inference_model(spec: str | None = None) -> QNetwork:
    """`--model` for the commands that only embed (ask, index, mcp): the ONNX network where
    the folder has current graphs, else the torch one with a note on stderr."""
    engine = env_value("QRAG_ENGINE")  # None: onnx where the folder has graphs
    found = None
    if engine != "torch":
        found = _read(spec)
        if isinstance(found, tuple):
            return OnnxQModel(*found)
        if engine == "onnx":
            raise ModelError(f"QRAG_ENGINE=onnx, but {found}")
    from qrag_cli.model import load_model  # torch: only for a folder without ONNX graphs

    model = load_model(spec)  # a folder that cannot load is one error, without the note
    if isinstance(found, Fallback) and found.packable:  # untrained encoders: as documented
        _note(f"{found.why}; running it on torch (slower to start)")
    return model


@dataclass(frozen=True)
class Fallback:
    """Why a model cannot run on ONNX Runtime; `packable`: a qrag model folder, which
    `qrag train pack` would give graphs (worth a note; the base encoder and plain
    encoder folders run on torch as documented)."""

    why: str
    packable: bool = False

    def __str__(self) -> str:
        return self.why


def _read(spec: str | None) -> tuple[ModelConfig, Path, dict, dict] | Fallback:
    """(config, folder, encoder config, ONNX files) of the model `spec` names, or why it
    cannot run on ONNX Runtime (words for a note or an error). A qrag folder whose
    config.json makes no sense is refused here, as the torch loader would."""
    folder = _folder(spec)
    if folder is None:
        if spec is not None and is_base_name(spec):
            return Fallback("the base encoder has no ONNX graphs")
        return Fallback(f"model {spec!r} has no ONNX graphs")
    try:
        raw = json.loads((folder / "config.json").read_text())
        if not (isinstance(raw, dict) and str(raw.get("format", "")).startswith("qrag-model/")):
            return Fallback(f"{folder} is a plain encoder without ONNX graphs")
        encoder_config = json.loads((folder / "encoder_config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return Fallback(f"{folder} is not a readable qrag model")  # the torch loader says why
    cfg = ModelConfig.from_dict(raw)
    if why := cfg.problem():
        raise ModelError(f"{folder}/config.json: {why}")
    files, why_not = onnx_files(folder, cfg, encoder_config)
    if files is None:
        return Fallback(
            f"model {folder} {why_not} (add them: `qrag train pack {folder} NEW_DIR`)", True
        )
    return cfg, folder, encoder_config, files


def _state_file(files: dict) -> str:
    """E_s's graph in the precision asked for (`state_precision`) where the folder has it."""
    if files.get("state_int8") and state_precision() == "int8":
        return files["state_int8"]
    return files["state"]


def _folder(spec: str | None) -> Path | None:
    """The model folder `--model` names (None for the base encoder or a missing folder:
    the torch loader reports those)."""
    if spec is None or spec == "default":
        return default_model_dir()
    if is_base_name(spec):
        return None
    folder = Path(spec).expanduser()
    return folder if (folder / "config.json").is_file() else None


def _note(text: str) -> None:
    from qrag_cli import render

    render.log(text, label="note:", label_style="yellow")
