"""The Q registry (qspec.py): what a model computes is recorded in its folder, an unknown
part is refused, and each part's output is pinned so a change that alters it must bump
its version."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from qrag_cli import qfeatures, qspec, qstate, qvalue
from qrag_cli.episode import MemoryCandidates
from qrag_cli.model import load_model, load_qrag_folder
from qrag_cli.model_dirs import default_model_dir
from qrag_cli.types import ModelError


def test_the_registry_round_trips_and_records_every_constant() -> None:
    spec = load_model("default").cfg.spec()
    assert qspec.parse(spec.to_json()) == spec
    terms = {t["name"]: t for t in spec.to_json()["terms"]}
    assert list(terms) == ["dense", *qspec.LEXICAL]
    for name, (version, params) in qspec.PARTS.items():
        assert terms[name]["version"] == version and set(terms[name]["params"]) == set(params)


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        (lambda q: q["terms"][3].update(name="recency"), "q term 'recency' is unknown"),
        (lambda q: q["terms"][3].update(version=99), "q term order is version 99"),
        (lambda q: q["terms"][4]["params"].update(half=0.5), "unknown parameters ['half']"),
        (lambda q: q["terms"][1]["params"].update(max_terms=12), "max_terms is 12"),
        (lambda q: q["terms"][4]["params"].update(namesake="half"), "namesake must be like"),
        (lambda q: q["head"].update(name="mlp"), "q head 'mlp' version 1 is unknown"),
        (lambda q: q["terms"][2].update(weight=None), "needs a finite weight"),
    ],
)
def test_a_model_whose_q_this_code_does_not_know_is_refused_with_the_fix(
    tmp_path: Path, edit, said: str
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(default_model_dir(), folder)
    config = json.loads((folder / "config.json").read_text())
    config["q"] = load_model("default").cfg.spec().to_json()
    edit(config["q"])
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=re.escape(said)) as caught:
        load_qrag_folder(folder)
    if "unknown to this qrag" in str(caught.value) or "version" in said:
        assert "retrain it with this qrag" in str(caught.value)


def test_the_registry_parameters_are_what_q_reads(tmp_path: Path) -> None:
    """Q reads its constants from the model: a changed parameter changes the features."""
    texts = [
        "Bob Clark (athlete)\nBob Clark ran for the county.",
        "Robert Butler (director)\nRobert Butler directed films in many countries.",
        "Ada sang.",
    ]
    source = MemoryCandidates(texts, np.zeros((3, 2), np.float32))
    question = "Which director worked in more countries, Robert Butler or Bob Clark?"
    spec = qspec.QSpec(weights=(0.3, 0.3, 0.5, 0.5))
    named = {}
    for half in (0.5, 0.25):
        state = qstate.State(question, [], spec=spec.with_params("named", namesake=half))
        named[half] = qfeatures.lexical_features(source, state, named=True).values[
            :, qfeatures.NAMED
        ]
    assert named[0.5].tolist() == [0.5, 1.0, 0.0] and named[0.25].tolist() == [0.25, 1.0, 0.0]


def test_each_part_s_output_is_pinned() -> None:
    """If this fails after a change on purpose, the part's output changed: bump its
    version in qspec.PARTS (models recorded with the old one are then refused, not
    silently changed), and write the new numbers here."""
    texts = [
        "Ines Varga\nThe copper compass number 7 is kept by Ines Varga.",
        "Tomas Brill\nThe copper compass number 8 is kept by Tomas Brill.",
        "Ines Varga\nInes Varga is a weaver who lives in the town of Arnholt.",
        "Tomas Brill\nTomas Brill is a weaver who lives in the town of Brevik.",
        "Arnholt\nArnholt is a town by the river Lune.",
    ]
    source = MemoryCandidates(texts, np.zeros((5, 2), np.float32))
    spec = qspec.QSpec(weights=(0.3, 0.3, 0.5, 0.5))
    state = qstate.State(
        "Where does the keeper of the copper compass number 7 live?", [], spec=spec
    )
    state = state.then(source.rows([0])[0], [])
    features, proposals, _ = qfeatures.lexical_features(source, state, order=True, named=True)
    assert np.allclose(features, PINNED, atol=1e-3), features.round(3).tolist()
    assert sorted(set(proposals.tolist())) == [1, 2]


# question_bm25, picked_bm25, order, named of each chunk once chunk 0 is picked: the
# look-alike compass by the question's words; the weaver Ines Varga, the article the pick
# names, by the pick's names; no order across articles.
PINNED = [[0, 0, 0, 0], [0.479, 0, 0, 0], [0, 1, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_the_head_bias_moves_q_not_the_picks_and_is_saved(tmp_path: Path) -> None:
    import torch

    from qrag_cli.model import save_model

    model = load_model("default")
    states = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    chunks = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    features = torch.tensor([[0.5, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    before = sum(qvalue.q_halves(model, states, chunks, features))
    with torch.no_grad():
        model.head_bias.fill_(0.75)
    after = sum(qvalue.q_halves(model, states, chunks, features))
    assert torch.allclose(after - before, torch.tensor(0.75))  # the level, every candidate
    assert after.argsort().tolist() == before.argsort().tolist()
    save_model(model, tmp_path / "biased")
    saved = json.loads((tmp_path / "biased" / "config.json").read_text())["q"]["head"]
    assert saved == {"name": "linear", "version": 1, "bias": 0.75}
    assert load_model(str(tmp_path / "biased")).learned_spec().bias == 0.75
