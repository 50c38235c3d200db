"""bAbI: the parser, `qrag train convert --from babi`, and the bench's real qa1-qa3 tasks
(the shared bAbI test files, renamed per story; training draws from the train files)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO, run_qrag

from qrag_cli.bench import longctx
from qrag_cli.chunk import count_tokens
from qrag_cli.datasets import from_babi, load_examples, read_babi
from qrag_cli.haystack import Story
from qrag_cli.types import DataError, Problem, UsageError

BABI = REPO.parent / "shared" / "data" / "babi"
QA2_TEST = BABI / "qa2_two-supporting-facts_test.txt"
QA2_TRAIN = BABI / "qa2_two-supporting-facts_train.txt"

# Two stories (numbering restarts at 1); a two-fact question; a story telling its
# supporting sentence twice (the second telling, line 3, is the gold one).
SMALL = """\
1 Mary moved to the bathroom.
2 John went to the hallway.
3 Where is Mary? \tbathroom\t1
4 Mary got the football there.
5 Sandra journeyed to the garden.
6 Mary travelled to the office.
7 Where is the football? \toffice\t4 6
1 John went to the kitchen.
2 John went to the garden.
3 John went to the kitchen.
4 Where is John? \tkitchen\t3
"""


def test_read_babi_restarts_stories_and_maps_support_lines(tmp_path: Path) -> None:
    src = tmp_path / "small.txt"
    src.write_text(SMALL)
    first, second, third = read_babi(src)
    assert first.sentences == ("Mary moved to the bathroom.", "John went to the hallway.")
    assert (first.question, first.answer, first.support) == ("Where is Mary?", "bathroom", (0,))
    # Question lines are not story sentences: line 6 is the 5th sentence (index 4).
    assert second.sentences[2:] == (
        "Mary got the football there.",
        "Sandra journeyed to the garden.",
        "Mary travelled to the office.",
    )
    assert second.support == (2, 4) and second.where == f"{src}:7"
    assert len(third.sentences) == 3 and third.support == (2,)  # a new story


def test_convert_babi_points_at_the_supporting_sentences(tmp_path: Path) -> None:
    src = tmp_path / "small.txt"
    src.write_text(SMALL)
    skipped: list[Problem] = []
    examples = list(from_babi(src, on_problem=skipped.append))
    assert not skipped and len(examples) == 3
    assert examples == list(from_babi(src))  # seeded by the question: deterministic
    for ex, q in zip(examples, read_babi(src), strict=True):
        assert count_tokens("\n\n".join(ex.chunks)) >= 850  # ~1K tokens of filler
        facts = [q.sentences[i] for i in q.support]
        holding = {i for f in facts for i, c in enumerate(ex.chunks) if f in c}
        if q.sentences.count(facts[0]) == 1:
            assert set(ex.support) == holding  # exactly the chunks of the supporting facts
        gold = " ".join(ex.chunks[i] for i in ex.support)
        assert all(f in gold for f in facts) and ex.answer == q.answer
    # The repeated sentence: the gold chunk holds its second telling (after the garden).
    repeated = examples[2]
    told = "John went to the kitchen."
    places = [i for i, c in enumerate(repeated.chunks) for _ in range(c.count(told))]
    assert len(places) == 2 and repeated.support == (places[1],)
    garden = next(i for i, c in enumerate(repeated.chunks) if "John went to the garden." in c)
    assert places[0] <= garden <= places[1]
    # The real CLI knows the format, and names a bad line's file:line on one line.
    out = tmp_path / "out.jsonl"
    proc = run_qrag("train", "convert", "--from", "babi", str(src), str(out), check=True)
    assert "wrote 3 examples" in proc.stderr
    assert load_examples(out) == examples
    src.write_text(SMALL.replace("\tkitchen\t3", "\tkitchen"))
    proc = run_qrag("train", "convert", "--from", "babi", str(src), str(out))
    assert proc.returncode != 0 and "small.txt:11: a question line" in proc.stderr


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("3 Where is Mary?\tbathroom", "question<TAB>answer<TAB>"),
        ("3 Where is Mary? \tbathroom\t9", "supporting line 9 is not a story line"),
        ("3 Where is Mary? \tbathroom\tone", "are not numbers"),
        ("5 Mary went to the garden.", "line number 5 follows 2"),
        ("three Mary went to the garden.", "expected 'N text'"),
    ],
)
def test_malformed_babi_line_names_file_and_line(tmp_path: Path, line: str, why: str) -> None:
    src = tmp_path / "bad.txt"
    src.write_text("1 Mary moved to the bathroom.\n2 John went to the hallway.\n" + line + "\n")
    with pytest.raises(DataError, match=re.escape(f"{src}:3: ") + ".*" + re.escape(why)):
        read_babi(src)


def _entity_groups(escaped: str) -> str:
    """A regex from an escaped original bAbI sentence: each person or object becomes a
    named group (the same one again where it recurs)."""
    seen: set[str] = set()

    def group(m: re.Match[str]) -> str:
        word = m.group(0)
        first = word not in seen
        seen.add(word)
        return f"(?P<{word}>.+?)" if first else f"(?P={word})"

    words = "|".join((*longctx.BABI_PEOPLE, *longctx.BABI_OBJECTS))
    return re.sub(rf"\b(?:{words})\b", group, escaped)


def _entities(story: Story) -> set[str]:
    """The renamed people ("First Last") and objects ("colour noun") of a story."""
    colours = "|".join(longctx.COLOURS)
    found = set()
    for s in (*story.sentences, story.question):
        found |= set(re.findall(r"\b[A-Z][a-z]+ [A-Z][a-z]+\b", s))
        found |= set(re.findall(rf"\b(?:{colours}) [a-z]+\b", s))
    return found


def test_real_qa2_bench_stories_are_renamed_bAbI_test_questions() -> None:
    paragraphs, stories = longctx.make_eval("qa2", 4096, 20, seed=0)
    text = "\n\n".join(paragraphs)
    originals = {q.line: q for q in read_babi(QA2_TEST)}
    for story in stories:
        name, _, line = story.source.partition(":")
        assert name == QA2_TEST.name
        original = originals[int(line)]
        assert len(story.gold) == 2 and story.gold == original.support
        assert all(f in story.sentences and f in text for f in story.gold_facts)
        assert story.answer == original.answer  # a place: never renamed
        # Every sentence keeps its structure: the original with each person and object
        # swapped, consistently (one new name per old one, one old per new).
        mapping: dict[str, str] = {}
        for old, new in zip(
            (*original.sentences, original.question),
            (*story.sentences, story.question),
            strict=True,
        ):
            pattern = _entity_groups(re.escape(old))
            m = re.fullmatch(pattern, new)
            assert m, (old, new)
            for word, value in m.groupdict().items():
                assert mapping.setdefault(word, value) == value
        assert len(set(mapping.values())) == len(mapping)
        assert not set(mapping) & set(mapping.values())
    # Names and objects are unique across the 20 stories of one haystack.
    seen: set[str] = set()
    for story in stories:
        mine = _entities(story)
        assert mine and not mine & seen, story.question
        seen |= mine
    assert len({s.question for s in stories}) == len(stories)


def test_training_examples_of_real_tasks_come_from_the_train_files(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[tuple[str, str]] = []
    real_path = longctx.babi_path
    monkeypatch.setattr(
        longctx,
        "babi_path",
        lambda task, split: asked.append((task, split)) or real_path(task, split),
    )
    examples = longctx.training_examples("qa2", 4, seed=0, tokens=1024, stories=2)
    assert asked and all(split == "train" for _, split in asked)
    train = {q.line: q for q in read_babi(QA2_TRAIN)}
    for ex in examples:
        source = ex.id.partition("@")[2]
        name, _, line = source.partition(":")
        assert name == QA2_TRAIN.name, ex.id
        original = train[int(line)]
        assert ex.answer == original.answer and len(ex.support) in (1, 2)
        gold = " ".join(ex.chunks[i] for i in ex.support)
        assert ex.answer in gold
    # Generated look-alikes keep working under their new names, without any data.
    assert len(longctx.training_examples("qa2_gen", 2, seed=0, tokens=1024)) == 2


def test_real_tasks_name_the_missing_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QRAG_DATA", str(tmp_path))
    with pytest.raises(UsageError, match=r"qa3_three-supporting-facts_test\.txt.*missing"):
        longctx.make_eval("qa3", 1024, 2, seed=0)
    with pytest.raises(UsageError, match=r"qa1_single-supporting-fact_train\.txt"):
        longctx.training_examples("qa1", 1, seed=0, tokens=1024)
    paragraphs, stories = longctx.make_eval("qa3_gen", 1024, 2, seed=0)
    assert len(stories) == 2 and paragraphs


def test_too_many_questions_is_a_usage_error() -> None:
    pool = len(longctx.babi_questions("qa3", "test"))
    assert 20 <= pool < 1000  # short stories only (see BABI_MAX_SENTENCES)
    rng = longctx.random.Random(0)
    names = longctx.Names(rng)
    tell = longctx.STORIES["qa3"]
    sources = {tell(rng, names).source for _ in range(pool)}
    assert len(sources) == pool  # each question at most once per haystack
    with pytest.raises(UsageError, match="ask for fewer questions"):
        tell(rng, names)
