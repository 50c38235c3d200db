"""The one stop rule (stop.py): a learned stop head decides online exactly as it is scored
offline, it is stored as plain JSON numbers, and `qrag train stop` fits it onto a model
folder without touching the encoders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import HOP_FILES, HOP_QUESTION, run_qrag

from qrag_cli import qstate
from qrag_cli.datasets import write_examples
from qrag_cli.episode import MemoryCandidates, run_episodes
from qrag_cli.evaluate import cut_episodes
from qrag_cli.model import ModelConfig, load_model
from qrag_cli.stop import (
    FEATURES,
    CountModel,
    StopHead,
    StopRule,
    evidence_view,
    features,
    rule_for,
)
from qrag_cli.stopfit import em_threshold, logistic, stop_rows
from qrag_cli.types import ModelError


@pytest.fixture(scope="module")
def lexical_model():
    """The base encoder with a hybrid Q, so the rule also reads BM25 maxima."""
    model = load_model("base")
    model.lexical_weights = torch.nn.Parameter(torch.tensor([0.3, 0.3]))
    return model


def test_a_head_decides_online_as_it_is_scored_offline(lexical_model) -> None:
    texts = list(HOP_FILES.values())
    source = MemoryCandidates(texts, lexical_model.embed_chunks(texts))
    full = run_episodes(lexical_model, [HOP_QUESTION], [source], StopRule(6))[0]
    # The episode keeps E_s of the question alone: what the count model reads.
    question = qstate.state_tokens(lexical_model, qstate.start(lexical_model, [HOP_QUESTION])[0])
    assert np.allclose(full.question_vec, lexical_model.embed_states([question])[0], atol=1e-5)
    rng = np.random.default_rng(0)
    dim = len(full.question_vec)
    count_model = CountModel(rng.normal(size=(dim, 4)).tolist(), [0.0, 0.0, 0.0, 0.0])
    probs_of_count = count_model.probs(full.question_vec)
    assert probs_of_count.sum() == pytest.approx(1.0) and probs_of_count.min() > 0
    views = [evidence_view(t, full.evidence, probs_of_count) for t in range(len(full.evidence))]
    assert all(v.bm25_max is not None for v in views)  # the lexical maxima are kept
    assert views[1].first_q == full.evidence[0].q
    x = np.stack([features(v) for v in views])
    count_done = x[:, FEATURES.index("count_done")]
    assert count_done[0] == 0.0 and count_done[4] == pytest.approx(1.0)  # P(count <= 4)
    assert count_done[1] == pytest.approx(probs_of_count[0])
    weights = rng.normal(size=len(FEATURES))
    head = StopHead(list(weights), 0.0, [0.0] * len(FEATURES), list(x.std(0) + 1e-3))
    head.count_model = count_model
    probs = head.prob(x)[1:]
    if probs.argmax() == 0:  # make the rule fire after step 2, not at the first chance
        head = StopHead(
            [-w for w in head.weights], 0.0, head.mean, head.scale, count_model=count_model
        )
        probs = head.prob(x)[1:]
    head.cut = float((probs[0] + probs.max()) / 2)
    rule = StopRule(6, head=head)
    online = run_episodes(lexical_model, [HOP_QUESTION], [source], rule)[0]
    offline = cut_episodes([full], rule)[0]
    assert online.stop == offline.stop == "complete"
    assert 2 <= len(online.evidence) < 6
    assert [e.chunk_id for e in online.evidence] == [e.chunk_id for e in offline.evidence]


def test_the_model_rule_and_its_overrides() -> None:
    head = StopHead([1.0] * len(FEATURES), 0.0, [0.0] * len(FEATURES), [1.0] * len(FEATURES))
    cfg = ModelConfig(threshold=0.4, stop_head=json.loads(json.dumps(head.to_dict())))
    assert rule_for(cfg, 5).head == head  # the head is the model's stop
    assert rule_for(cfg, 5, threshold=0.2) == StopRule(5, 0.2)  # --threshold overrides
    assert not rule_for(cfg, 5, off=True).active  # --no-stop
    assert rule_for(ModelConfig(threshold=0.4), 3) == StopRule(3, 0.4)
    assert not rule_for(ModelConfig(), 3).active
    bad = {**head.to_dict(), "features": ["q"]}
    with pytest.raises(ModelError, match="refit"):
        rule_for(ModelConfig(stop_head=bad), 3)
    with pytest.raises(ModelError, match="malformed"):
        rule_for(ModelConfig(stop_head={**head.to_dict(), "weights": [1.0]}), 3)
    # A count model travels as plain nested lists and comes back the same.
    head.count_model = CountModel([[0.5, -0.5, 0.0], [1.0, 2.0, -1.0]], [0.1, 0.0, -0.1])
    stored = json.loads(json.dumps(head.to_dict()))
    assert StopHead.from_dict(stored) == head
    with pytest.raises(ModelError, match="question vectors"):  # the encoder makes 384
        rule_for(ModelConfig(stop_head=stored), 4)
    assert rule_for(ModelConfig(dim=2, stop_head=stored), 4).count_probs(np.array([1.0, 0.0])) == (
        pytest.approx(head.count_model.probs(np.array([1.0, 0.0])))
    )
    for bad_counts in (
        {"weights": [[1.0, 2.0], [1.0]], "bias": [0.0, 0.0]},  # ragged
        {"weights": [[1.0, float("nan")]], "bias": [0.0, 0.0]},
        {"weights": [[1.0, 2.0]]},  # no bias
    ):
        with pytest.raises(ModelError, match="malformed"):
            rule_for(ModelConfig(dim=2, stop_head={**stored, "count_model": bad_counts}), 3)


def test_the_count_model_reads_how_many_chunks_a_question_needs() -> None:
    """fit_count_model learns the gold count from the question vectors, its L2 chosen on the
    eval questions; an episode without a question vector cannot be fitted on."""
    from qrag_cli.datasets import Example
    from qrag_cli.stopfit import fit_count_model
    from qrag_cli.types import Episode

    rng = np.random.default_rng(3)
    centres = rng.normal(size=(3, 16))

    def made(n: int) -> tuple[list[Episode], list[Example]]:
        counts = rng.integers(1, 4, size=n)
        vecs = centres[counts - 1] + 0.3 * rng.normal(size=(n, 16))
        episodes = [Episode("q", [], "budget", question_vec=v) for v in vecs]
        examples = [Example(str(i), "q", ("a",) * 5, tuple(range(c))) for i, c in enumerate(counts)]
        return episodes, examples

    train, held = made(120), made(60)
    model = fit_count_model(*train, *held)
    assert len(model.bias) == 4 and len(model.weights) == 16
    guessed = [int(model.probs(ep.question_vec).argmax()) + 1 for ep in held[0]]
    assert np.mean([g == len(ex.support) for g, ex in zip(guessed, held[1], strict=True)]) > 0.9
    with pytest.raises(ValueError, match="question vector"):
        fit_count_model([Episode("q", [], "budget")], train[1][:1], *held)


def test_logistic_fit_separates_and_em_threshold_keeps_em() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, len(FEATURES)))
    y = (x[:, 0] - x[:, 4] > 0).astype(float)
    head = logistic(x, y)
    assert ((head.prob(x) >= 0.5) == (y == 1)).mean() > 0.95
    assert head.weights[0] > 0 > head.weights[4]


@pytest.fixture
def two_hop(tmp_path: Path) -> tuple[Path, Path]:
    from qrag_cli.bench.tasks import two_hop_task

    write_examples(two_hop_task(16, seed=5), tmp_path / "train.jsonl")
    write_examples(two_hop_task(8, seed=6), tmp_path / "val.jsonl")
    return tmp_path / "train.jsonl", tmp_path / "val.jsonl"


def test_em_threshold_loses_at_most_the_tolerance(base_model, two_hop) -> None:
    from qrag_cli.datasets import load_examples
    from qrag_cli.evaluate import run_examples, score

    examples = load_examples(two_hop[0])
    episodes = run_examples(base_model, examples, 4)
    thr = em_threshold(episodes, examples)
    cut = score(cut_episodes(episodes, thr), examples)
    fixed = score(episodes, examples)
    assert cut.fact_em >= fixed.fact_em - 0.02 - 1e-9 and cut.mean_steps < fixed.mean_steps
    x, y = stop_rows(episodes, examples)
    assert len(x) == len(y) == sum(len(ep.evidence) - 1 for ep in episodes)


def test_train_stop_fits_a_head_onto_a_model_folder(tmp_path: Path, two_hop) -> None:
    train, val = two_hop
    src = tmp_path / "src"
    from qrag_cli.model import save_model

    save_model(load_model("base"), src)  # the base, saved as a folder to fit onto
    out = tmp_path / "with-stop"
    args = ["train", "stop", str(src), "--data", str(train), "--eval", str(val)]
    fitted = json.loads(run_qrag(*args, "--out", str(out), "--json", check=True).stdout)
    assert fitted["rule"] == "head" and fitted["budget"] == 4 and fitted["n"] == 8
    assert fitted["fact_em_stop"] >= fitted["fact_em_fixed"] - 0.02 - 1e-9
    assert fitted["count_accuracy"] == 1.0  # every two-hop question needs 2 chunks
    config = json.loads((out / "config.json").read_text())
    head = config["stop_head"]
    assert head["features"] == list(FEATURES) and config["threshold"] is None
    assert all(isinstance(w, float) for w in head["weights"])  # plain numbers, no pickle
    assert len(head["count_model"]["weights"]) == 384 and len(head["count_model"]["bias"]) == 4
    assert config["metrics"]["stop_fit"]["exact_share"] == fitted["exact_share"]
    assert config["fingerprint"] == json.loads((src / "config.json").read_text())["fingerprint"]
    assert "stop fitted" in (out / "MODEL_CARD.md").read_text()
    # The same rule runs in `train eval`: its numbers are the fitted ones.
    evaluated = json.loads(
        run_qrag("train", "eval", str(val), "-m", str(out), "--budget", "4", "--json").stdout
    )
    assert evaluated["stop"]["rule"] == "head"
    for key in ("exact_share", "mean_steps", "fact_em_stop", "fact_em_fixed"):
        assert evaluated["stop"][key] == fitted[key]
    same = run_qrag(*args, "--out", str(src))
    assert same.returncode != 0 and "also the input" in same.stderr  # never its own input
    bad = run_qrag(*args, "--out", str(tmp_path / "x"), "--kind", "nope")
    assert bad.returncode == 2 and "--kind" in bad.stderr
