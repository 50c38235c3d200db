"""The answer bench (`qrag bench --answers`): what retrieval does to answers, as a number.

The layout bench's real questions (validation or test split) are written in one layout and
indexed with the default model; for each question, one reader (a GGUF file or a served
URL) answers four times from four kinds of evidence of the same size:
- qrag: the default's multi-step episode (BUDGET picks, no stop rule);
- bm25 top-k and dense top-k: the baselines' picks on the same index;
- gold: the question's gold paragraphs (the ceiling a perfect retriever gives the reader).
Scores, with the reader's [n] markers taken out: exact match and token F1 (SQuAD's
normalisation), "contains" (the gold answer appears in the answer), how many answers cite
no evidence, and how many echo the prompt (evidence labels or paths, instructions,
"Question:"/"Answer:" scaffolding, the question itself).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from qrag_cli.answer_text import normalise, without_markers
from qrag_cli.bench import layouts
from qrag_cli.config import ReaderSettings
from qrag_cli.files import atomic_write
from qrag_cli.haystack import Story
from qrag_cli.prompt import Reader, echoes
from qrag_cli.reader import open_reader
from qrag_cli.types import Evidence

if TYPE_CHECKING:  # torch-free until a run loads the models
    from qrag_cli.qtext import QNetwork

SOURCES = ("qrag", "bm25 top-k", "dense top-k", "gold")
METHOD_OF = {"qrag": "default", "bm25 top-k": "bm25 top-k", "dense top-k": "dense top-k"}
"""The layout bench's method (layouts.METHODS) behind each retrieved source."""
DEFAULT_QUESTIONS = 30
DEFAULT_LAYOUT = "notes"  # the way people keep notes: many articles per file, under headings


# ---- scoring --------------------------------------------------------------------------------
def exact_match(answer: str, gold: str) -> float:
    return float(normalise(without_markers(answer)) == normalise(gold))


def token_f1(answer: str, gold: str) -> float:
    answered, wanted = normalise(without_markers(answer)).split(), normalise(gold).split()
    common = sum((Counter(answered) & Counter(wanted)).values())
    if not answered or not wanted or common == 0:
        return float(answered == wanted)
    precision, recall = common / len(answered), common / len(wanted)
    return 2 * precision * recall / (precision + recall)


def contains(answer: str, gold: str) -> float:
    wanted = normalise(gold)
    return float(bool(wanted) and f" {wanted} " in f" {normalise(without_markers(answer))} ")


# ---- evidence -------------------------------------------------------------------------------
def _gold_evidence(story: Story, titles: dict[str, str]) -> list[Evidence]:
    return [
        Evidence(
            step=i + 1,
            q=0.0,
            chunk_id=-(i + 1),
            path=f"gold-{i + 1}",
            start_line=1,
            end_line=1,
            text=text,
            ordinal=i,
            heading=(titles[text],) if titles.get(text) else (),
        )
        for i, text in enumerate(story.gold_facts)
    ]


def evidence_sets(
    index_dir: Path,
    corpus: Path,
    questions: layouts.QuestionSet,
    model: QNetwork,
    dense: QNetwork,
) -> dict[str, list[list[Evidence]]]:
    """Per source, each question's evidence: the chunks the layout bench's methods pick
    (layouts.picks) and the gold paragraphs, with paths relative to the corpus folder
    (the reader sees short paths, as `qrag ask` shows it)."""
    from qrag_cli.store import open_snapshot

    picks = layouts.picks(index_dir, [s.question for s in questions.stories], model, dense)
    with open_snapshot(index_dir) as snapshot:
        rows = snapshot.chunks(snapshot.live_ids().tolist())
    by_text = {r.text: r for r in reversed(rows)}  # the first chunk of a repeated text
    root = str(corpus.resolve()) + "/"

    def as_evidence(texts: Sequence[str]) -> list[Evidence]:
        return [
            Evidence(
                step=n,
                q=0.0,
                chunk_id=r.id,
                path=r.path.removeprefix(root),
                start_line=r.start_line,
                end_line=r.end_line,
                text=r.text,
                ordinal=r.ordinal,
                heading=r.heading,
            )
            for n, r in enumerate((by_text[t] for t in texts), start=1)
        ]

    out = {
        source: [as_evidence(texts) for texts in picks[method]]
        for source, method in METHOD_OF.items()
    }
    titles = {a.text: a.title for a in questions.articles}
    out["gold"] = [_gold_evidence(s, titles) for s in questions.stories]
    return out


# ---- the run --------------------------------------------------------------------------------
def run(
    out: Path,
    reader: ReaderSettings,
    split: str = "validation",
    layout: str = DEFAULT_LAYOUT,
    n_questions: int = DEFAULT_QUESTIONS,
    model_spec: str = "default",
    log: Callable[[str], None] = lambda msg: None,
) -> dict:
    """Answer every question from every source with one reader; writes answers.json (with
    every answer) and answers.md to `out`."""
    layouts.check_layouts([layout])
    started = time.perf_counter()
    questions = layouts.question_set(split, n_questions)  # first: without data, no folder
    out.mkdir(parents=True, exist_ok=True)
    model, dense = layouts.models(model_spec)
    index_dir, corpus, _ = layouts.indexed(out, split, layout, questions, model)
    evidence = evidence_sets(index_dir, corpus, questions, model, dense)
    llm: Reader = open_reader(reader)
    try:
        rows: dict[str, dict] = {}
        records: list[dict] = [
            {"question": s.question, "gold": s.answer, "answers": {}} for s in questions.stories
        ]
        for name in SOURCES:
            scores: dict[str, list[float]] = {k: [] for k in ("em", "f1", "contains", "seconds")}
            uncited = echoed = 0
            for story, evs, record in zip(questions.stories, evidence[name], records, strict=True):
                t0 = time.perf_counter()
                ans = llm.answer(story.question, evs)
                scores["seconds"].append(time.perf_counter() - t0)
                scores["em"].append(exact_match(ans.text, story.answer))
                scores["f1"].append(token_f1(ans.text, story.answer))
                scores["contains"].append(contains(ans.text, story.answer))
                echo = echoes(ans.text, story.question, ans.used)
                uncited += not ans.citations
                echoed += bool(echo)
                record["answers"][name] = {
                    "text": ans.text,
                    "citations": ans.citations,
                    "echo": echo,
                }
            n = max(1, len(questions.stories))
            rows[name] = {
                **{k: round(sum(v) / n, 4) for k, v in scores.items()},
                "uncited": uncited,
                "echoes": echoed,
            }
            log(
                f"{name}: EM {rows[name]['em']:.3f}, F1 {rows[name]['f1']:.3f}, contains "
                f"{rows[name]['contains']:.3f}, echoes {echoed}, uncited {uncited}, "
                f"{rows[name]['seconds']:.1f} s/answer"
            )
    finally:
        llm.close()
    result = {
        "reader": llm.source,
        "split": split,
        "layout": layout,
        "questions": len(questions.stories),
        "budget": layouts.BUDGET,
        "model": model.cfg.name,
        "max_tokens": reader.max_tokens,
        "sources": rows,
        "seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write(out / "answers.json", json.dumps({**result, "answers": records}, indent=2) + "\n")
    atomic_write(out / "answers.md", markdown_table(result))
    return result


def markdown_table(result: dict) -> str:
    reader = result["reader"]
    lines = [
        f"Answers of {reader if '://' in reader else Path(reader).name} "
        f"on {result['questions']} {result['split']} questions ({result['layout']} layout, "
        f"{result['budget']} chunks of evidence each, model {result['model']})",
        "",
        "| evidence | EM | F1 | contains | uncited | echoes | s/answer |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in result["sources"].items():
        lines.append(
            f"| {name} | {row['em']:.3f} | {row['f1']:.3f} | {row['contains']:.3f} | "
            f"{row['uncited']} | {row['echoes']} | {row['seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"
