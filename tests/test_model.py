"""QModel: the compact BERT matches transformers; models rebuild from their folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_qrag

from qrag_cli import qstate
from qrag_cli.model import from_base, load_model, save_model
from qrag_cli.pqn import trainable
from qrag_cli.types import ModelError


def test_compact_bert_matches_transformers(base_model) -> None:
    from transformers import AutoModel

    hf = AutoModel.from_pretrained(str(base_model.folder), local_files_only=True).eval()
    texts = ["The river Sillen flows through Tarsholm.", "Ada was born in 1889, a locksmith."]
    tok = base_model.tokenizer
    ids = [[tok.cls_token_id, *s, tok.sep_token_id] for s in base_model.chunk_ids(texts, 64)]
    ours = base_model.encode(base_model.chunk_encoder, ids)  # fp32
    padded, mask = base_model._pad(ids, torch.device("cpu"))
    with torch.no_grad():
        hidden = hf(input_ids=padded, attention_mask=mask)[0]
    m = mask.unsqueeze(-1).float()
    ref = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_embeddings_do_not_depend_on_the_batch_size(base_model) -> None:
    """Chunks embed in batches of `qnet.batch_tokens` padded tokens on a CPU: one chunk per
    batch, the default and one batch for all give the same vectors."""
    from qrag_cli.qnet import batch_tokens

    texts = [
        f"Record {i}: the ferry crossed the river {'north ' * (i % 40)}at dawn." for i in range(90)
    ]
    ids = base_model.action_ids(texts)
    assert sum(map(len, ids)) > batch_tokens(torch.device("cpu"))  # several batches
    default = base_model.encode(base_model.chunk_encoder, ids)
    for budget in (1, 1 << 20):
        other = base_model.encode(base_model.chunk_encoder, ids, token_budget=budget)
        assert torch.allclose(default, other, atol=1e-5)


def test_save_load_round_trip_and_fingerprint(tmp_path: Path) -> None:
    model = trainable(from_base(layers=2), scale=0.1)
    save_model(model, tmp_path / "m")
    again = load_model(str(tmp_path / "m"))
    texts = ["Ada put the key in the red box.", "The red box is kept in the attic."]
    assert np.allclose(model.embed_chunks(texts), again.embed_chunks(texts), atol=1e-6)
    assert again.cfg.fingerprint == model.cfg.fingerprint
    assert again.cfg.shared is False and again.encoder_config["num_hidden_layers"] == 2
    base = load_model("base")
    assert base.cfg.fingerprint != again.cfg.fingerprint
    with torch.no_grad():
        again.chunk_encoder.backbone.layers[0].ffn_out.bias.add_(0.01)
    save_model(again, tmp_path / "m")  # different weights -> different fingerprint
    assert load_model(str(tmp_path / "m")).cfg.fingerprint != model.cfg.fingerprint


def test_compact_save_keeps_only_what_training_changed(tmp_path: Path, monkeypatch) -> None:
    from safetensors.torch import load_file

    # fp16 packing is what is measured: in fp32, not through int8 states (whose rounding
    # of two nearly equal weights differs by more than the packing's).
    monkeypatch.setenv("QRAG_DTYPE", "fp32")

    model = trainable(from_base(layers=2), scale=0.1, positions="relative")
    with torch.no_grad():  # what training does: every layer moves, token tables stay
        for enc in (model.state_encoder, model.chunk_encoder):
            for name, p in enc.backbone.named_parameters():
                if name.startswith("layers."):
                    p.add_(torch.randn_like(p) * 1e-3)
    save_model(model, tmp_path / "full")
    run_qrag("train", "pack", str(tmp_path / "full"), str(tmp_path / "small"), check=True)
    stored = load_file(str(tmp_path / "small" / "model.safetensors"))
    assert all(v.dtype == torch.float16 for v in stored.values())
    assert not any("word_embeddings" in k for k in stored)
    assert any(k.startswith("chunk.encoder.layer.1.") for k in stored)
    full_size = (tmp_path / "full" / "model.safetensors").stat().st_size
    assert (tmp_path / "small" / "model.safetensors").stat().st_size < full_size / 4

    small = load_model(str(tmp_path / "small"))
    assert small.cfg.positions == "relative" and small.cfg.delta_base
    assert small.cfg.fingerprint != model.cfg.fingerprint  # an index notices fp16 weights
    texts = ["Ada put the key in the red box.", "The red box is kept in the attic."]
    for a, b in ((model, small), (small, model)):
        state = qstate.state_tokens(a, qstate.start(a, ["where is the key"])[0])
        assert np.allclose(a.embed_states([state]), b.embed_states([state]), atol=2e-3)
    assert np.allclose(model.embed_chunks(texts), small.embed_chunks(texts), atol=2e-3)

    config = tmp_path / "small" / "config.json"  # a base that is not the one trained from
    config.write_text(config.read_text().replace(small.cfg.delta_base, "0" * 16))
    with pytest.raises(ModelError, match="not the one it was trained from"):
        load_model(str(tmp_path / "small"))


def test_frozen_chunk_model_keeps_the_base_vectors_and_indexes(
    tmp_path: Path, hop_corpus, monkeypatch
) -> None:
    """Only E_s trains: the folder holds no chunk weights, chunk vectors are the base's to
    the bit, and an index built with the base serves the trained model without re-indexing."""
    from safetensors.torch import load_file

    monkeypatch.setenv("QRAG_DTYPE", "fp32")  # fp16 packing measured in fp32, as above

    base = from_base()
    model = trainable(base, scale=0.1, frozen_chunks=True)
    with torch.no_grad():
        for name, p in model.state_encoder.backbone.named_parameters():
            if name.startswith("layers."):
                p.add_(torch.randn_like(p) * 1e-3)
    save_model(model, tmp_path / "full")
    run_qrag("train", "pack", str(tmp_path / "full"), str(tmp_path / "small"), check=True)
    for folder in ("full", "small"):
        stored = load_file(str(tmp_path / folder / "model.safetensors"))
        assert stored and all(k.startswith("state.") for k in stored)
    small = load_model(str(tmp_path / "small"))
    assert small.cfg.frozen_chunks and small.cfg.fingerprint == base.cfg.fingerprint
    texts = ["Ada put the key in the red box.", "The red box is kept in the attic."]
    assert np.array_equal(small.embed_chunks(texts), base.embed_chunks(texts))
    state = qstate.state_tokens(small, qstate.start(small, ["where is the key"])[0])
    assert np.allclose(small.embed_states([state]), model.embed_states([state]), atol=2e-3)
    assert not np.allclose(
        small.embed_states([state]), 0.1 * base.embed_states([state]), atol=1e-3
    )  # E_s is the trained one, stored unnormalised
    again = trainable(small, lexical=[0.2, 0.3])  # a second stage keeps E_a and settings
    assert again.chunk_encoder is small.chunk_encoder and again.cfg.frozen_chunks
    assert again.cfg.spec().weights == (0.2, 0.3) and small.cfg.spec().weights is None
    # --lexical: None (`model`, the default) keeps a model's terms, [] (`off`) drops them.
    assert trainable(again).cfg.spec().weights == (0.2, 0.3)
    dense = trainable(again, lexical=[])
    assert dense.cfg.q is None and dense.lexical_weights is None

    index = str(tmp_path / "idx")
    run_qrag("index", str(hop_corpus), "--index", index, "--model", "base", check=True)
    proc = run_qrag(
        "ask",
        "Which river flows past the inventor's city?",
        "--index",
        index,
        "--model",
        str(tmp_path / "small"),
        "--steps",
        "2",
        "--json",
        check=True,
    )
    import json

    assert len(json.loads(proc.stdout)["evidence"]) == 2


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("chunk_cap", -5, "chunk_cap must be a whole number of at least 1, not -5"),
        ("question_cap", 0, "question_cap must be a whole number of at least 1, not 0"),
        ("max_tokens", 12.5, "max_tokens must be a whole number of at least 1, not 12.5"),
        ("scale", -1.0, "scale must be a positive number, not -1.0"),
        ("positions", "sideways", 'positions must be "none" or "relative", not \'sideways\''),
        ("normalize", "yes", "normalize must be true or false, not 'yes'"),
        ("threshold", "high", "threshold must be a number or null, not 'high'"),
    ],
)
def test_a_model_folder_with_nonsense_settings_is_refused_by_name(
    tmp_path: Path, key: str, value: object, why: str
) -> None:
    import json

    folder = tmp_path / "model"
    save_model(from_base(), folder)
    config = json.loads((folder / "config.json").read_text())
    config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError) as caught:
        load_model(str(folder))
    assert str(caught.value) == f"{folder}/config.json: {why}"
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "note.txt").write_text("Ines Varga is a weaver in Dunmore.\n")
    index = tmp_path / "idx"
    proc = run_qrag("index", str(tmp_path / "docs"), "--model", str(folder), "--index", str(index))
    assert proc.returncode != 0 and why in proc.stderr and proc.stderr.count("\n") == 1
    assert not index.exists()
