"""The layout bench (`qrag bench --layouts`): the same questions over the same paragraphs,
written the ways people keep files, so a gain that holds in only one layout shows.

Each layout is indexed through the real `qrag index` code with the default model; on that
one index the default's multi-step episode, BM25 top-k and dense top-k (the untrained
all-MiniLM-L6-v2, whose chunk vectors the default shares) each pick 4 chunks per question
(the default without a stop rule; EM@2 is its first two picks). A question counts at @k
when its picks hold every gold paragraph (longctx.fact_hits).

Two question sets, never mixed:
- validation: the bench's held-out half of the HotpotQA + MuSiQue samples
  (`split(real_examples(), 0.5, 0)[1]`, every paragraph of those questions pooled). It
  has been measured after every change since it was built: choose rules on it.
- test: `hotpotqa_train_evidence_500.jsonl`, the one real file no rule, weight or
  checkpoint was ever checked on (frozen 2026-12-07, before the layout work): the
  two-sentence questions whose evidence shares no sentence with the HotpotQA files used
  for training and validation, over every such question's evidence (all lengths) pooled.
  Each evidence sentence is a note of its own; the file
  gives no titles, so each note is titled "Note N" (N from a seeded shuffle): nothing
  in a heading tells the answer. Run it once per issue, at the end.
"""

from __future__ import annotations

import html
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from qrag_cli import qspec
from qrag_cli.bench import longctx
from qrag_cli.config import ChunkConfig
from qrag_cli.datasets import paragraph, read_jsonl, real_examples, shared_data, split
from qrag_cli.files import atomic_write
from qrag_cli.haystack import Story
from qrag_cli.types import UsageError

if TYPE_CHECKING:  # torch loads only when a run starts (models)
    from qrag_cli.indexer import IndexSummary
    from qrag_cli.qnet import QModel
    from qrag_cli.qtext import QNetwork

BUDGET = 4  # picks per question; EM@2 reads the first two
SPLITS = ("validation", "test")
TEST_FILE = "hotpotqa_train_evidence_500.jsonl"
TEST_SEED = 2026  # the note numbering and every layout's shuffle of the test split
NOTES_PER_FILE = (20, 30)  # articles per notes file / HTML page / rst file


@dataclass(frozen=True)
class Article:
    title: str
    text: str


@dataclass(frozen=True)
class QuestionSet:
    name: str
    articles: tuple[Article, ...]
    stories: tuple[Story, ...]  # gold facts: article texts
    seed: int


def validation_set(n_questions: int | None = None) -> QuestionSet:
    examples = real_examples()
    if examples is None:
        raise UsageError(
            f"the layout bench needs the HotpotQA and MuSiQue samples in {shared_data()}"
        )
    held = split(examples, 0.5, 0)[1]
    articles: dict[tuple[str, str], Article] = {}
    stories = []
    for ex in held:
        parts = [paragraph(c) for c in ex.chunks]
        for title, text in parts:
            articles.setdefault((title, text), Article(title or "Untitled", text))
        texts = tuple(t for _, t in parts)
        stories.append(Story(ex.question, ex.answer or "", texts, ex.support))
    return QuestionSet("validation", tuple(articles.values()), _first(stories, n_questions), 0)


def test_set(n_questions: int | None = None) -> QuestionSet:
    path = shared_data() / TEST_FILE
    if not path.is_file():
        raise UsageError(f"the layout bench's test split needs {path}")
    records = [record for _, record in read_jsonl(path)]
    used = _training_sentences()
    kept, sentences = [], []
    for r in records:
        evidence = [str(e).strip() for e in r["evidence"]]
        if used.intersection(evidence):
            continue
        sentences.extend(evidence)  # every other question's evidence is a distractor
        if len(set(evidence)) == 2:
            kept.append((r["question"], r["answer"], tuple(evidence)))
    sentences = list(dict.fromkeys(sentences))
    numbers = list(range(1, len(sentences) + 1))
    random.Random(TEST_SEED).shuffle(numbers)
    articles = tuple(Article(f"Note {n}", s) for n, s in zip(numbers, sentences, strict=True))
    stories = [Story(q, a, ev, (0, 1)) for q, a, ev in kept]
    return QuestionSet("test", articles, _first(stories, n_questions), TEST_SEED)


def _training_sentences() -> set[str]:
    """Every sentence of the HotpotQA files that training and validation read."""
    out: set[str] = set()
    for name in ("hotpotqa_train_200.json", "hotpotqa_train_500b.json"):
        path = shared_data() / name
        if path.is_file():
            for item in json.loads(path.read_text()):
                out.update(s.strip() for _, sents in item["context"] for s in sents)
    return out


def _first(stories: list[Story], n: int | None) -> tuple[Story, ...]:
    return tuple(stories if n is None else stories[:n])


# ---- layouts: each writes every article into `folder` --------------------------------------
def _groups(articles: Sequence[Article], rng: random.Random) -> list[list[Article]]:
    out, i = [], 0
    while i < len(articles):
        n = rng.randint(*NOTES_PER_FILE)
        out.append(list(articles[i : i + n]))
        i += n
    return out


def _write(folder: Path, name: str, text: str) -> None:
    (folder / name).write_text(text, encoding="utf-8")


def plain(folder: Path, articles: Sequence[Article], rng: random.Random) -> None:
    """One text file per article, its title on the first line."""
    for i, a in enumerate(articles):
        _write(folder, f"article-{i:05d}.txt", f"{a.title}\n{a.text}\n")


def markdown(folder: Path, articles: Sequence[Article], rng: random.Random) -> None:
    """One Markdown file per article under `# Title`."""
    for i, a in enumerate(articles):
        _write(folder, f"article-{i:05d}.md", f"# {a.title}\n\n{a.text}\n")


def notes(folder: Path, articles: Sequence[Article], rng: random.Random) -> None:
    """Markdown notes: 20-30 articles per file under `## Title`, the file under `# Notes N`."""
    for i, group in enumerate(_groups(articles, rng)):
        body = "".join(f"## {a.title}\n\n{a.text}\n\n" for a in group)
        _write(folder, f"notes-{i:04d}.md", f"# Notes {i + 1}\n\n{body}")


def html_pages(folder: Path, articles: Sequence[Article], rng: random.Random) -> None:
    """HTML pages of 20-30 articles: `<h1>` for the page, `<h2>` per article."""
    for i, group in enumerate(_groups(articles, rng)):
        body = "".join(
            f"<h2>{html.escape(a.title)}</h2>\n<p>{html.escape(a.text)}</p>\n" for a in group
        )
        page = (
            f"<!doctype html>\n<html><head><title>Pages {i + 1}</title></head>\n"
            f"<body>\n<h1>Pages {i + 1}</h1>\n{body}</body></html>\n"
        )
        _write(folder, f"page-{i:04d}.html", page)


def one_file(folder: Path, articles: Sequence[Article], rng: random.Random) -> None:
    """Everything in one large plain-text file: title line, text, blank line."""
    _write(folder, "everything.txt", "".join(f"{a.title}\n{a.text}\n\n" for a in articles))


def rst(folder: Path, articles: Sequence[Article], rng: random.Random) -> None:
    """reStructuredText files of 20-30 articles: `===` over and under the file title, `---`
    under each article's."""
    for i, group in enumerate(_groups(articles, rng)):
        title = f"Notes {i + 1}"
        bar = "=" * len(title)
        body = "".join(f"{a.title}\n{'-' * len(a.title)}\n\n{a.text}\n\n" for a in group)
        _write(folder, f"notes-{i:04d}.rst", f"{bar}\n{title}\n{bar}\n\n{body}")


Writer = Callable[[Path, Sequence[Article], random.Random], None]
LAYOUTS: dict[str, Writer] = {
    "plain": plain,
    "markdown": markdown,
    "notes": notes,
    "html": html_pages,
    "onefile": one_file,
    "rst": rst,
}
METHODS = ("default", "bm25 top-k", "dense top-k")


def write_layout(layout: str, folder: Path, questions: QuestionSet) -> None:
    """The question set's articles, shuffled (seeded by set and layout), in `layout`."""
    rng = random.Random(f"{questions.seed}:{layout}")
    articles = list(questions.articles)
    rng.shuffle(articles)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():  # a rerun with fewer articles must not keep stale files
        old.unlink()
    LAYOUTS[layout](folder, articles, rng)


# ---- scoring -----------------------------------------------------------------------------
def models(model_spec: str = "default", torch: bool = False) -> tuple[QNetwork, QNetwork]:
    """(the model measured, the dense top-k baseline on its index), loaded once per run.
    Dense top-k is the untrained encoder's, whose chunk vectors the model shares; for a
    model with chunk vectors of its own, its E_s without its lexical terms. The measured
    model runs as `qrag ask` runs it (ONNX where it has graphs), unless `torch` (the
    ablation edits torch models)."""
    from qrag_cli.model import load_model
    from qrag_cli.onnx_model import load_inference_model
    from qrag_cli.qvalue import without_lexical

    measured = (load_model if torch else load_inference_model)(model_spec)
    dense = load_model("base")
    if dense.cfg.fingerprint != measured.cfg.fingerprint:
        dense = without_lexical(measured)  # the same encoders, loaded once
    return measured, dense


def picks(
    index_dir: Path,
    questions: Sequence[str],
    default: QNetwork,
    dense: QNetwork,
    baselines: bool = True,
) -> dict[str, list[list[str]]]:
    """Per method, the texts of the chunks each question picks, in pick order (without
    `baselines`, the default's only)."""
    from qrag_cli.bench.suite import bm25_top_k
    from qrag_cli.episode import IndexCandidates, StopRule, run_episodes
    from qrag_cli.store import open_snapshot

    out: dict[str, list[list[str]]] = {m: [] for m in (METHODS if baselines else METHODS[:1])}
    with open_snapshot(index_dir) as snapshot:
        source = IndexCandidates(snapshot)
        for start in range(0, len(questions), 32):
            batch = list(questions[start : start + 32])
            for ep in run_episodes(default, batch, [source] * len(batch), StopRule(BUDGET)):
                out["default"].append([ev.text for ev in ep.evidence])
            if not baselines:
                continue
            for ep in run_episodes(
                dense, batch, [source] * len(batch), StopRule(1), alternatives=BUDGET
            ):
                first = ep.evidence[0] if ep.evidence else None
                rest = source.rows([a for a, _ in first.alternatives]) if first else []
                out["dense top-k"].append([e.text for e in ep.evidence] + [r.text for r in rest])
    if baselines:
        out["bm25 top-k"] = [texts for texts, *_ in bm25_top_k(index_dir, questions, BUDGET)]
    return out


def _em(picks: list[list[str]], stories: Sequence[Story], k: int) -> float:
    hits = [longctx.fact_hits(p[:k], s)[0] for p, s in zip(picks, stories, strict=True)]
    return round(sum(hits) / max(1, len(hits)), 4)


def question_set(split_name: str, n_questions: int | None = None) -> QuestionSet:
    return (validation_set if split_name == "validation" else test_set)(n_questions)


def check_layouts(layouts: Sequence[str]) -> None:
    """Refuse an unknown layout before anything is written."""
    for name in layouts:
        if name not in LAYOUTS:
            raise UsageError(f"unknown layout {name!r}; choose from {', '.join(LAYOUTS)}")


def indexed(
    out: Path, split_name: str, layout: str, questions: QuestionSet, model: QNetwork
) -> tuple[Path, Path, IndexSummary]:
    """The question set written in `layout` under `out` and indexed there with `model`'s
    chunk vectors (an index from an earlier run with the same vectors is updated): the
    index folder, the corpus folder and what indexing did."""
    from qrag_cli.indexer import build_index

    corpus = out / "work" / split_name / "corpus" / layout
    write_layout(layout, corpus, questions)
    index_dir = out / "work" / split_name / "index" / f"{layout}--{model.cfg.fingerprint}"
    return index_dir, corpus, build_index([corpus], index_dir, model, ChunkConfig())


def run(
    out: Path,
    splits: Sequence[str] = ("validation",),
    layouts: Sequence[str] = tuple(LAYOUTS),
    n_questions: int | None = None,
    model_spec: str = "default",
    log: Callable[[str], None] = lambda msg: None,
) -> dict:
    """Index and score every (split, layout) with the model `model_spec` (the "default"
    method); writes layouts.json and layouts.md to `out`."""
    check_layouts(layouts)
    started = time.perf_counter()
    # The questions first: a bench without its data writes nothing.
    question_sets = {name: question_set(name, n_questions) for name in splits}
    out.mkdir(parents=True, exist_ok=True)
    model, dense = models(model_spec)
    result: dict = {"budget": BUDGET, "model": model.cfg.name, "splits": {}}
    for split_name, questions in question_sets.items():
        asked = [s.question for s in questions.stories]
        rows: dict[str, dict] = {}
        for layout in layouts:
            index_dir, _, summary = indexed(out, split_name, layout, questions, model)
            picked = picks(index_dir, asked, model, dense)
            row: dict = {"chunks": summary.chunks_total}
            for method in METHODS:
                row[method] = {
                    f"em@{k}": _em(picked[method], questions.stories, k) for k in (2, BUDGET)
                }
            rows[layout] = row
            log(
                f"{split_name} {layout}: "
                + ", ".join(
                    f"{m} {row[m]['em@2']:.2f}/{row[m][f'em@{BUDGET}']:.2f}" for m in METHODS
                )
            )
        result["splits"][split_name] = {
            "questions": len(asked),
            "articles": len(questions.articles),
            "layouts": rows,
        }
    result["seconds"] = round(time.perf_counter() - started, 1)
    atomic_write(out / "layouts.json", json.dumps(result, indent=2) + "\n")
    atomic_write(out / "layouts.md", markdown_table(result))
    return result


# ---- ablation: what each part of Q adds ----------------------------------------------------
def variants(model: QModel, base: QModel | None = None) -> dict[str, QModel]:
    """The model and its Q with one part changed at a time, each a model of its own (a
    registry edit, qspec.py; the model itself is not touched): E_s untrained (the base
    encoder under the same Q; only for a model whose E_a is the base's), dense only, each
    lexical term dropped (weight 0), each rule off. `base`: the untrained base model when
    the caller has it loaded already (the layout bench's dense baseline; its weights are
    not touched)."""
    from qrag_cli.model import load_model
    from qrag_cli.pqn import trainable

    spec = model.learned_spec()
    out = {"model": model}
    if model.cfg.chunk_source() == "base" and spec.weights is not None:
        base = trainable(
            base
            if base is not None and base.cfg.chunk_source() == "shared"
            else load_model("base"),
            normalize=model.cfg.state_settings()[0],
            scale=model.cfg.state_settings()[1],
            frozen_chunks=True,
            chunk_cap=model.cfg.chunk_cap,
        )
        base.set_spec(spec)
        out["base E_s"] = base
    if spec.weights is None:
        return out

    def edited(new: qspec.QSpec | None) -> QModel:
        """The model's encoders under another registry (its own config and head)."""
        return model.with_spec(new if new is not None else qspec.QSpec())

    out["dense only"] = edited(None)

    weights = spec.weights
    for i, term in enumerate(qspec.LEXICAL[: len(weights)]):
        out[f"- {term}"] = edited(replace(spec, weights=(*weights[:i], 0.0, *weights[i + 1 :])))
    out["- open words"] = edited(spec.with_params("question_bm25", open_words=False))
    out["- beside picks"] = edited(spec.with_params("picked_bm25", min_shared=0))
    out["- names query"] = edited(spec.with_params("picked_bm25", query="chunk"))
    return out


def ablation(
    out: Path,
    splits: Sequence[str] = ("validation",),
    layouts: Sequence[str] = ("plain", "notes"),
    n_questions: int | None = None,
    model_spec: str = "default",
    log: Callable[[str], None] = lambda msg: None,
) -> dict:
    """Each of `variants` on the layout bench's indexes, beside BM25 and dense top-k on the
    same index; writes ablation.json and ablation.md to `out`."""
    check_layouts(layouts)
    started = time.perf_counter()
    question_sets = {name: question_set(name, n_questions) for name in splits}
    out.mkdir(parents=True, exist_ok=True)
    model, dense = models(model_spec, torch=True)
    kinds = variants(model, base=dense)  # type: ignore[arg-type]
    result: dict = {"budget": BUDGET, "model": model.cfg.name, "splits": {}}
    for split_name, questions in question_sets.items():
        asked = [s.question for s in questions.stories]
        rows: dict[str, dict] = {}
        for layout in layouts:
            index_dir, _, _ = indexed(out, split_name, layout, questions, model)
            row: dict = {}
            for name, variant in kinds.items():
                picked = picks(index_dir, asked, variant, dense, baselines=not row)
                for method, texts in picked.items():
                    label = name if method == "default" else method
                    row[label] = {f"em@{k}": _em(texts, questions.stories, k) for k in (2, BUDGET)}
                log(
                    f"{split_name} {layout} {name}: {row[name]['em@2']:.2f}/{row[name]['em@4']:.2f}"
                )
            rows[layout] = row
        result["splits"][split_name] = {"questions": len(asked), "layouts": rows}
    result["seconds"] = round(time.perf_counter() - started, 1)
    atomic_write(out / "ablation.json", json.dumps(result, indent=2) + "\n")
    atomic_write(out / "ablation.md", ablation_table(result))
    return result


def ablation_table(result: dict) -> str:
    lines = []
    for name, part in result["splits"].items():
        layouts = list(part["layouts"])
        lines += [
            f"### ablation, {name}: {part['questions']} questions (model {result['model']}, "
            f"EM@2 / EM@{result['budget']})",
            "",
            "| Q | " + " | ".join(layouts) + " |",
            "|---|" + "---|" * len(layouts),
        ]
        top = f"em@{result['budget']}"
        for label in part["layouts"][layouts[0]]:
            ems = [part["layouts"][lay][label] for lay in layouts]
            cells = [f"{em['em@2']:.2f} / {em[top]:.2f}" for em in ems]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def markdown_table(result: dict) -> str:
    lines = []
    for name, part in result["splits"].items():
        lines += [
            f"### {name}: {part['questions']} questions, {part['articles']} articles pooled "
            f"(model {result['model']}, budget {result['budget']})",
            "",
            "| layout | chunks | default EM@2 | default EM@4 | BM25 EM@2 | BM25 EM@4 "
            "| dense EM@2 | dense EM@4 |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for layout, row in part["layouts"].items():
            cells = [f"{row[m][f'em@{k}']:.2f}" for m in METHODS for k in (2, result["budget"])]
            lines.append(f"| {layout} | {row['chunks']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
