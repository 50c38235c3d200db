"""The answer bench: its scores, its echo check, and one real run (real index, real
llama.cpp, a tiny GGUF) on a small question set of its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_qrag
from gguf_tiny import write_tiny_gguf

from qrag_cli.bench import answers, layouts
from qrag_cli.config import ReaderSettings
from qrag_cli.haystack import Story
from qrag_cli.types import Evidence


def test_scores_follow_squad_normalisation_without_citation_markers() -> None:
    assert answers.exact_match("The Eiffel Tower [2].", "eiffel tower") == 1.0
    assert answers.exact_match("Eiffel Tower in Paris", "Eiffel Tower") == 0.0
    assert answers.token_f1("Eiffel Tower in Paris [1]", "Eiffel Tower") == pytest.approx(2 / 3)
    assert answers.token_f1("", "Paris") == 0.0
    assert answers.contains("It is in Paris, France [1][3]", "paris") == 1.0
    assert answers.contains("Parisian", "Paris") == 0.0  # whole words only


def test_echo_check_finds_labels_prompt_and_question_but_not_facts() -> None:
    ev = [Evidence(1, 0.0, 1, "notes/ada.md", 4, 9, "Ada Lindqvist was born in Tarsholm.", 0)]
    question = "In which town was Ada Lindqvist born?"
    assert answers.echoes("Tarsholm [1]", question, ev) == []
    assert answers.echoes("Ada Lindqvist was born in Tarsholm [1].", question, ev) == []
    assert answers.echoes("[1] notes/ada.md:4-9 Ada", question, ev) == ["label"]
    assert answers.echoes("see notes/ada.md", question, ev) == ["label"]
    assert answers.echoes("[1] ada.md", question, ev) == ["label"]  # its label line
    titled = [Evidence(1, 0.0, 1, "n.md", 1, 1, "Tarsholm is a town.", 0, heading=("Tarsholm",))]
    assert answers.echoes("Tarsholm", question, titled) == []  # a title can be the answer
    assert answers.echoes("Tarsholm\nQuestion: where", question, ev) == ["prompt"]
    assert answers.echoes("Cite the evidence you used as [n]. Tarsholm", question, ev) == ["prompt"]
    assert answers.echoes(" Warsaw [1]", question, ev) == ["prompt"]  # the worked example's
    assert answers.echoes("In which town was Ada Lindqvist born? Tarsholm", question, ev) == [
        "question"
    ]


ARTICLES = (
    layouts.Article("Ada Lindqvist", "Ada Lindqvist invented the Zephyr engine in 1911."),
    layouts.Article("Tarsholm", "Tarsholm is the town where Ada Lindqvist was born."),
    layouts.Article("Barley soup", "Barley soup is made with onions, carrots and thyme."),
    layouts.Article("Velmar", "The river Dalby flows through Velmar in spring."),
)
STORIES = (
    Story(
        "Where was the inventor of the Zephyr engine born?",
        "Tarsholm",
        (ARTICLES[0].text, ARTICLES[1].text),
        (0, 1),
    ),
    Story("What flows through Velmar?", "river Dalby", (ARTICLES[3].text,), (0,)),
)


def test_answer_bench_runs_every_source_with_a_real_reader(tmp_path: Path, monkeypatch) -> None:
    small = layouts.QuestionSet("validation", ARTICLES, STORIES, seed=1)
    monkeypatch.setattr(layouts, "question_set", lambda split, n=None: small)
    tiny = write_tiny_gguf(tmp_path / "tiny.gguf")
    reader = ReaderSettings(llm=str(tiny), max_tokens=6, threads=1)
    result = answers.run(tmp_path / "out", reader, layout="markdown", n_questions=2)
    assert list(result["sources"]) == list(answers.SOURCES) and result["questions"] == 2
    for row in result["sources"].values():
        assert 0.0 <= row["f1"] <= 1.0 and 0 <= row["echoes"] <= 2
    written = json.loads((tmp_path / "out" / "answers.json").read_text())
    gold = written["answers"][0]["answers"]["gold"]
    assert isinstance(gold["text"], str) and isinstance(gold["citations"], list)
    assert "| gold |" in (tmp_path / "out" / "answers.md").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--llm", "x.gguf"], "go with --answers"),
        (["--answers", "--layouts"], "one at a time"),
        (["--answers", "--split", "both"], "one --split"),
        (["--answers", "--layout", "notes", "--layout", "plain"], "one --layout"),
        (["--answers", "--llm", "ftp://h/v1"], "http:// or https://"),
        (["--answers", "--ablation"], "--ablation goes with --layouts"),
    ],
)
def test_answer_bench_flags_are_checked(tmp_path: Path, args: list[str], message: str) -> None:
    r = run_qrag("bench", *args, "--out", str(tmp_path / "out"))
    assert r.returncode != 0 and message in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()
