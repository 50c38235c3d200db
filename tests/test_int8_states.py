"""QRAG_DTYPE=int8: states go through an int8 copy of E_s that follows its weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.ao.nn.quantized import dynamic as qdynamic

from qrag_cli import pqn, qnet
from qrag_cli.bench.tasks import two_hop_task
from qrag_cli.datasets import write_examples
from qrag_cli.model import load_model

QUESTION = "Which river flows through the city where the inventor of the Zephyr engine was born?"
CHUNKS = [
    "The Zephyr engine was invented by Marta Kell in 1887 in a workshop by the harbour.",
    "Marta Kell was born in Orvieto and later worked in the mills of the north.",
    "Orvieto stands on a plateau above the river Paglia.",
    "The ferry timetable changes every winter; the salmon run starts in spring.",
    "A locksmith opened a shop near the library after the festival.",
    "The turbine patent was sold to a captain who built a new mill.",
]


def _states(model) -> list[list[int]]:
    """The question alone, then with one and two picks: [CLS] q [SEP] chunk [SEP] ..."""
    tok = model.tokenizer
    question, first, second = tok.ids([QUESTION, CHUNKS[0], CHUNKS[1]])
    start = [tok.cls_token_id, *question, tok.sep_token_id]
    return [
        start,
        [*start, *first, tok.sep_token_id],
        [*start, *first, tok.sep_token_id, *second, tok.sep_token_id],
    ]


def test_int8_states_rank_chunks_as_fp32_does(monkeypatch) -> None:
    monkeypatch.setenv("QRAG_DTYPE", "fp32")
    # The base encoder: a fixed wheel, so what this asserts does not move with each retrained
    # default (the default's own int8 graph is checked against fp32 in test_onnx.py).
    exact = load_model("base")
    monkeypatch.setenv("QRAG_DTYPE", "int8")
    small = load_model("base")
    assert small.state_int8 and not exact.state_int8
    assert small.infer_dtype == torch.float32  # chunks: fp32, the index is the same
    chunks = exact.embed_chunks(CHUNKS)
    assert np.array_equal(chunks, small.embed_chunks(CHUNKS))
    states = _states(exact)
    a, b = exact.embed_states(states), small.embed_states(states)
    assert not np.allclose(a, b, atol=1e-4)  # the int8 copy really ran
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.97, cos
    # The best two in the same order, and fp32's third within int8's best four (int8 may
    # swap two close runners-up).
    top_a, top_b = (a @ chunks.T).argsort(1)[:, ::-1], (b @ chunks.T).argsort(1)[:, ::-1]
    assert (top_a[:, :2] == top_b[:, :2]).all()
    assert all(set(x[:3]) <= set(y[:4]) for x, y in zip(top_a, top_b, strict=True))
    # Layers 1+ hold int8 weights; layer 0 stays fp32; the model's own E_s is untouched.
    copy = small._int8_copy[1]
    first = [type(m) for m in copy.backbone.layers[0].modules()]
    rest = [type(m) for m in copy.backbone.layers[1:].modules()]
    assert torch.nn.Linear in first and qdynamic.Linear not in first
    assert qdynamic.Linear in rest and torch.nn.Linear not in rest
    assert not any(isinstance(m, qdynamic.Linear) for m in small.state_encoder.modules())


def test_int8_copy_follows_in_place_weight_changes(monkeypatch) -> None:
    monkeypatch.setenv("QRAG_DTYPE", "int8")
    model = load_model("base")
    states = _states(model)
    before = model.embed_states(states)
    first_copy = model._int8_copy[1]
    assert np.array_equal(before, model.embed_states(states))  # unchanged: reused
    assert model._int8_copy[1] is first_copy
    with torch.no_grad():  # what an optimiser step does to a weight
        model.state_encoder.backbone.layers[3].ffn_out.weight.mul_(0.5)
    after = model.embed_states(states)
    assert model._int8_copy[1] is not first_copy
    fresh = model.encode(qnet.int8_state_encoder(model.state_encoder), states).numpy()
    assert np.allclose(after, fresh, atol=1e-6)
    assert not np.allclose(before, after, atol=1e-3)


def test_training_never_scores_with_the_int8_copy(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QRAG_DTYPE", "int8")

    def refuse(encoder):
        raise AssertionError("training rollouts went through the int8 copy")

    monkeypatch.setattr(qnet, "int8_state_encoder", refuse)
    data, held = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    write_examples(two_hop_task(4, seed=0), data)
    write_examples(two_hop_task(2, seed=1), held)
    cfg = pqn.TrainConfig(
        data=str(data),
        eval=[str(held)],
        out=str(tmp_path / "m"),
        updates=1,
        batch=2,
        budget=2,
        layers=1,
        eval_every=1,
    )
    result = pqn.train(cfg)
    assert (tmp_path / "m" / "config.json").is_file(), result


@pytest.mark.parametrize("value", ["int8", "INT8 "])
def test_int8_is_an_accepted_dtype(monkeypatch, value: str) -> None:
    monkeypatch.setenv("QRAG_DTYPE", value)
    assert qnet.inference_precision({"avx512_bf16"}) == "int8"  # the variable wins


def test_the_cpu_chooses_the_precision_when_unset(monkeypatch) -> None:
    monkeypatch.delenv("QRAG_DTYPE", raising=False)
    assert qnet.inference_precision({"avx2", "avx512_bf16"}) == "bf16"
    assert qnet.inference_precision({"avx2", "amx_bf16"}) == "bf16"
    x86 = {"x86", "fbgemm"} & set(torch.backends.quantized.supported_engines)
    assert qnet.inference_precision({"avx2"}) == ("int8" if x86 else "fp32")
    monkeypatch.setattr(qnet, "has_x86_int8", lambda: False)  # e.g. an ARM CPU
    assert qnet.inference_precision({"neon"}) == "fp32"
