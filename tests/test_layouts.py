"""The layout bench: every layout keeps each article whole under its own title (read by
the real readers and chunker), and `qrag bench --layouts` scores a layout end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import run_qrag

from qrag_cli.bench import layouts
from qrag_cli.chunk import chunk_document
from qrag_cli.config import ChunkConfig
from qrag_cli.discover import discover
from qrag_cli.documents import read_document
from qrag_cli.model_dirs import default_model_dir

ARTICLES = [
    layouts.Article(
        "Scott Derrickson",
        "Scott Derrickson (born July 16, 1966) is an American director, screenwriter and "
        "producer. He lives in Los Angeles, California.",
    ),
    layouts.Article("Ed Wood", "Edward Davis Wood Jr. was an American filmmaker & actor."),
    layouts.Article("Woodson, Arkansas", "Woodson is a census-designated place in Arkansas."),
    layouts.Article(
        "Doctor Strange (2016 film)",
        "Doctor Strange is a 2016 American superhero film based on the Marvel Comics "
        "character of the same name, directed by Scott Derrickson. " * 6,
    ),
]


@pytest.mark.parametrize("layout", list(layouts.LAYOUTS))
def test_every_layout_keeps_each_article_under_its_title(tmp_path: Path, layout: str) -> None:
    layouts.LAYOUTS[layout](tmp_path, ARTICLES, random.Random(0))
    under: dict[str, str] = {}
    for path in sorted(p for p in tmp_path.iterdir()):
        doc = read_document(path)
        for chunk in chunk_document(doc, ChunkConfig()):
            assert chunk.heading, f"{layout}: a chunk without a heading: {chunk.text!r}"
            title = chunk.heading[-1]
            under[title] = (under.get(title, "") + " " + chunk.text).strip()
            # The title is the heading, never text of a chunk (it would be read twice).
            assert not chunk.text.startswith(title + "\n")
    assert set(under) == {a.title for a in ARTICLES}
    for a in ARTICLES:
        assert a.text.split(".")[0] in under[a.title]  # no article's text under another


def test_layouts_shuffle_the_same_articles(tmp_path: Path) -> None:
    questions = layouts.QuestionSet("demo", tuple(ARTICLES), (), seed=3)
    layouts.write_layout("onefile", tmp_path / "a", questions)
    layouts.write_layout("onefile", tmp_path / "b", questions)
    one = (tmp_path / "a" / "everything.txt").read_text()
    assert one == (tmp_path / "b" / "everything.txt").read_text()  # seeded
    assert all(a.text in one for a in ARTICLES)
    assert len(discover([tmp_path / "a"]).files) == 1


def test_the_validation_split_pools_every_held_out_paragraph(shared_data: Path) -> None:
    """`--questions N` asks the first N questions over all of the held-out half's
    paragraphs, pooled: the other questions' paragraphs are the distractors."""
    few, every = layouts.validation_set(4), layouts.validation_set()
    assert len(few.stories) == 4 and few.stories == every.stories[:4]
    assert few.articles == every.articles and len(few.articles) > 1000
    texts = {a.text for a in few.articles}
    assert all(set(story.sentences) <= texts for story in every.stories)


def test_bench_layouts_scores_a_layout_end_to_end(
    tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The 4 questions' own paragraphs and 60 others: the mechanics end to end, without
    # embedding the whole pool on every run (the test above checks the pooling).
    full = layouts.validation_set(4)
    gold = {text for story in full.stories for text in story.sentences}
    kept = [a for a in full.articles if a.text in gold]
    kept += [a for a in full.articles if a.text not in gold][:60]
    small = layouts.QuestionSet(full.name, tuple(kept), full.stories, full.seed)
    monkeypatch.setattr(layouts, "validation_set", lambda n_questions=None: small)
    out = tmp_path / "bench"
    r = run_qrag(
        "bench", "--layouts", "--layout", "markdown", "--questions", "4", "--out", str(out),
        "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    row = result["splits"]["validation"]["layouts"]["markdown"]
    assert result["splits"]["validation"]["questions"] == 4
    assert row["chunks"] >= len(kept)  # every paragraph written, indexed and asked
    for method in layouts.METHODS:
        assert 0.0 <= row[method]["em@2"] <= row[method]["em@4"] <= 1.0
    assert "| markdown |" in (out / "layouts.md").read_text()
    assert "test" not in result["splits"]  # the test split runs only when asked
    # The recipe packs the validation table into the model's metrics and card.
    packed = tmp_path / "packed"
    r = run_qrag(
        "train", "pack", str(default_model_dir()), str(packed),
        "--layouts", str(out / "layouts.json"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    metrics = json.loads((packed / "config.json").read_text())["metrics"]["layouts"]
    assert metrics["layouts"]["markdown"] == row and metrics["questions"] == 4
    card = (packed / "MODEL_CARD.md").read_text()
    assert "Layout bench, validation split (4 questions" in card
    assert f"| markdown | {row['default']['em@2']:.2f} / " in card
    bad = run_qrag("train", "pack", str(default_model_dir()), str(tmp_path / "x"),
                   "--layouts", str(out / "layouts.md"))  # fmt: skip
    assert bad.returncode != 0 and "not a layout bench result" in bad.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--split", "test"], "--layout and --split go with --layouts or --answers"),
        (["--ablation"], "--ablation goes with --layouts"),
        (["--layouts", "--ablation", "--layout", "scroll"], "unknown layout 'scroll'"),
        (["--layouts", "--split", "dev"], "--split must be"),
        (["--layouts", "--layout", "scroll"], "unknown layout 'scroll'"),
    ],
)
def test_bench_layout_flags_are_checked(tmp_path: Path, args: list[str], message: str) -> None:
    r = run_qrag("bench", *args, "--out", str(tmp_path / "out"))
    assert r.returncode != 0 and message in r.stderr
    assert not (tmp_path / "out").exists()


def test_ablation_variants_change_one_part_each_and_leave_the_model_alone() -> None:
    from qrag_cli.model import load_model

    model = load_model("default")
    before = model.learned_spec()
    kinds = layouts.variants(model)
    assert list(kinds) == [
        "model", "base E_s", "dense only", "- question_bm25", "- picked_bm25", "- order",
        "- named", "- open words", "- beside picks", "- names query",
    ]  # fmt: skip
    assert model.learned_spec() == before and kinds["model"] is model
    assert kinds["dense only"].lexical_weights is None
    assert kinds["- named"].learned_spec().weights == (*before.weights[:3], 0.0)
    assert kinds["- beside picks"].cfg.spec().param("picked_bm25", "min_shared") == 0
    assert kinds["base E_s"].learned_spec() == before
    assert kinds["base E_s"].state_encoder is not model.state_encoder
    assert kinds["- order"].state_encoder is model.state_encoder  # encoders shared


def test_a_bench_without_the_shared_data_names_the_fix_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the shared data lives comes from QRAG_DATA, never from where qrag's code sits:
    unset, the benches that need it stop before writing anything, saying how to set it."""
    monkeypatch.delenv("QRAG_DATA", raising=False)
    for args in (["--layouts"], ["--layouts", "--split", "test"], ["--answers"]):
        out = tmp_path / "out"
        r = run_qrag("bench", *args, "--out", str(out))
        assert r.returncode == 2 and "set QRAG_DATA" in r.stderr, r.stderr
        assert not out.exists()
    # Set to a folder without the files: the file it needs is named.
    monkeypatch.setenv("QRAG_DATA", str(tmp_path))
    r = run_qrag("bench", "--layouts", "--split", "test", "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and str(tmp_path) in r.stderr
    assert not (tmp_path / "out").exists()
