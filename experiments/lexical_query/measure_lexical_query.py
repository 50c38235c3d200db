"""Fact EM of one model under each picked-chunk query (`lexical_query`), on validation
data only: how BENCHMARKS.md "Picked-chunk query" chose. Never give it the bench's
held-out data (seed 0 stories, the held-out half of the real questions).

    python experiments/lexical_query/measure_lexical_query.py MODEL_DIR TRAIN_DIR \
        [--query Q] [SET ...]

SET (default: all): val-real, val-gen (TRAIN_DIR's validation files, budget 5);
gen7:TASK (8 4K-token documents of 4 stories, seed 7, budget 5); long7:TASK:TOKENS (one
bench-shaped haystack of 20 stories, seed 7, cut without overlap, budget 5);
olap7:TASK:TOKENS (the same, cut with the index's overlap and scored by fact as the
bench scores, budget 5); hp500:BUDGET (the first 200 questions of
hotpotqa_train_500b.json, each over its own 10 paragraphs); pool500 (the same 200
questions over all of their paragraphs pooled into files as the bench pools its real
half, cut with overlap, scored by fact, budget 5). One JSON line per set.
--query Q (repeatable) measures only those queries (default: every one).
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from qrag_cli.bench import longctx
from qrag_cli.chunk import chunk_document
from qrag_cli.config import ChunkConfig
from qrag_cli.datasets import (
    Example,
    from_hotpotqa,
    load_examples,
    shared_data,
    training_chunks,
)
from qrag_cli.episode import MemoryCandidates, StopRule, run_episodes
from qrag_cli.evaluate import run_examples, score
from qrag_cli.haystack import Story, gold_chunks
from qrag_cli.lexical import PICKED_QUERIES
from qrag_cli.model import load_model
from qrag_cli.types import Document

SEED = 7  # no training file and no bench run uses it

DEFAULT_SETS = [
    "val-real",
    "val-gen",
    *(f"gen7:{t}" for t in ("niah_multivalue", "qa2_gen", "qa2", "vt", "qa3", "qa3_gen")),
    *(
        f"long7:{t}:16384"
        for t in ("niah_multiquery", "qa1_gen", "niah_multivalue", "qa2_gen", "qa2")
    ),
    *(
        f"olap7:{t}:{n}"
        for t, n in (
            ("niah_multivalue", 4096),
            ("niah_multivalue", 16384),
            ("niah_multiquery", 4096),
            ("qa1_gen", 16384),
            ("qa2_gen", 4096),
            ("qa2_gen", 16384),
            ("qa2", 4096),
            ("qa1", 4096),
        )
    ),
    "hp500:2",
]


def bench_shaped(task: str, tokens: int) -> list[Example]:
    """One haystack of 20 stories, each story a question over all of its chunks."""
    paragraphs, stories = longctx.make_eval(task, tokens, 20, SEED)
    chunks = tuple(training_chunks("\n\n".join(paragraphs)))
    out = []
    for i, story in enumerate(stories):
        try:
            support = gold_chunks(chunks, stories, i)
        except LookupError:  # a fact cut by a chunk boundary: not scorable by chunk
            continue
        out.append(Example(f"{task}-{i}", story.question, chunks, tuple(sorted(set(support)))))
    return out


def hp500() -> list[Example]:
    """The first 200 questions of hotpotqa_train_500b.json (train questions: validation)."""
    return list(from_hotpotqa(shared_data() / "hotpotqa_train_500b.json"))[:200]


def examples(name: str, train_dir: Path) -> tuple[list[Example], int]:
    kind, _, rest = name.partition(":")
    if kind in ("val-real", "val-gen"):
        return load_examples(train_dir / f"{kind}.jsonl"), 5
    if kind == "gen7":
        return longctx.training_examples(rest, 8, SEED, stories=4), 5
    if kind == "long7":
        task, tokens = rest.split(":")
        return bench_shaped(task, int(tokens)), 5
    if kind == "hp500":
        return hp500(), int(rest)
    raise SystemExit(f"error: unknown set {name!r}")


def overlapped(model, task: str, tokens: int, cache: dict) -> float:
    """Fact EM of a bench-shaped haystack cut as `qrag index` cuts it (with overlap)."""
    paragraphs, stories = longctx.make_eval(task, tokens, 20, SEED)
    doc = Document("\n\n".join(paragraphs), "text", ((0, 1),))
    return fact_em(model, [c.text for c in chunk_document(doc, ChunkConfig())], stories, cache)


def fact_em(model, chunks: list[str], stories: list, cache: dict) -> float:
    """Fact EM of `stories` asked over one corpus of `chunks`, budget 5, scored by fact as
    the bench scores (vectors of chunks seen before come from `cache`)."""
    missing = [c for c in dict.fromkeys(chunks) if c not in cache]
    if missing:
        cache.update(zip(missing, model.embed_chunks(missing), strict=True))
    source = MemoryCandidates(chunks, np.stack([cache[c] for c in chunks]))
    questions = [s.question for s in stories]
    episodes = run_episodes(model, questions, [source] * len(stories), StopRule(5))
    found = [
        longctx.fact_hits([ev.text for ev in ep.evidence], story)[0]
        for ep, story in zip(episodes, stories, strict=True)
    ]
    return float(np.mean(found))


def pooled(model, cache: dict) -> float:
    """Fact EM of hp500's 200 questions over all their paragraphs pooled as the bench's
    real half is (`longctx.write_corpus` files, cut as `qrag index` cuts them): chunks
    that hold the end of one article and the title of the next, or only the middle of
    one."""
    exs = hp500()
    paragraphs = list(dict.fromkeys(c for ex in exs for c in ex.chunks))
    chunks = []
    with tempfile.TemporaryDirectory() as folder:
        longctx.write_corpus(Path(folder), paragraphs)
        for part in sorted(Path(folder).glob("part-*.txt")):
            doc = Document(part.read_text(), "text", ((0, 1),))
            chunks.extend(c.text for c in chunk_document(doc, ChunkConfig()))
    stories = [Story(ex.question, ex.answer or "", ex.chunks, ex.support) for ex in exs]
    return fact_em(model, chunks, stories, cache)


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    model = load_model(sys.argv[1])
    args, queries = sys.argv[3:], []
    while "--query" in args:
        at = args.index("--query")
        queries.append(args[at + 1])
        del args[at : at + 2]
    queries = queries or list(PICKED_QUERIES)
    cache: dict = {}  # chunk vectors: E_a does not depend on the query
    for name in args or DEFAULT_SETS:
        row: dict = {"set": name}
        if name == "pool500":
            for query in queries:
                model.cfg = replace(
                    model.cfg,
                    q=model.learned_spec().with_params("picked_bm25", query=query).to_json(),
                )
                row[query] = round(pooled(model, cache), 3)
            print(json.dumps(row), flush=True)
            continue
        if name.startswith("olap7:"):
            task, tokens = name.split(":")[1:]
            for query in queries:
                model.cfg = replace(
                    model.cfg,
                    q=model.learned_spec().with_params("picked_bm25", query=query).to_json(),
                )
                row[query] = round(overlapped(model, task, int(tokens), cache), 3)
            print(json.dumps(row), flush=True)
            continue
        exs, budget = examples(name, Path(sys.argv[2]))
        row.update(n=len(exs), budget=budget)
        for query in queries:
            model.cfg = replace(
                model.cfg, q=model.learned_spec().with_params("picked_bm25", query=query).to_json()
            )
            row[query] = round(score(run_examples(model, exs, budget, cache=cache), exs).fact_em, 3)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
