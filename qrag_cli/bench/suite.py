"""`qrag bench`: every method through the real `qrag index` / `ask` path, on generated
long-context tasks and the pooled real QA samples, plus speed and scale; one results
folder (JSON, Markdown, PNG).

Methods: BM25 single-step top-k (bm25s), dense single-step top-k (base model),
multi-step without training (base model, the paper's baseline) and each Q-RAG model
given. Single-step methods get k = the multi-step budget, so all see as many chunks.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from qrag_cli.bench import longctx
from qrag_cli.config import ChunkConfig
from qrag_cli.datasets import paragraph, real_examples, write_examples
from qrag_cli.episode import IndexCandidates, StopRule, run_episodes
from qrag_cli.evaluate import stop_metrics
from qrag_cli.files import atomic_output, atomic_write
from qrag_cli.haystack import Story, own_paragraphs
from qrag_cli.indexer import build_index
from qrag_cli.model import load_model
from qrag_cli.onnx_model import load_inference_model
from qrag_cli.qtext import QNetwork
from qrag_cli.qvalue import without_lexical
from qrag_cli.stop import rule_for
from qrag_cli.store import open_snapshot
from qrag_cli.types import UsageError, contextual_text

K = 1024


@dataclass
class Profile:
    tasks: tuple[str, ...] = longctx.TASKS
    lengths: tuple[int, ...] = (4 * K, 16 * K, 64 * K)
    questions: int = 20
    steps: int = 5
    real_eval: int = 150  # held-out questions of the pooled HotpotQA/MuSiQue corpus
    speed_tokens: int = 100_000
    scale_sizes: tuple[int, ...] = (1_000, 10_000)


PROFILES = {
    "quick": Profile(),
    "full": Profile(
        lengths=(4 * K, 16 * K, 64 * K, 128 * K, 1024 * K),
        questions=30,
        speed_tokens=1_000_000,
        scale_sizes=(1_000, 10_000, 100_000, 1_000_000),
    ),
}


@dataclass
class Row:
    """One method on one (task, length): the figures the report tables show."""

    task: str
    tokens: int
    method: str
    fact_em: float
    fact_f1: float
    mean_steps: float
    step_ms: float  # median per retrieval step (single-step methods: the one search)
    question_ms: float  # median end-to-end retrieval per question
    chunks: int
    n: int
    per_question: list[dict] = field(default_factory=list)
    stop: dict | None = None  # a model with a stop rule: evaluate.stop_metrics, else None


# ---- methods: each returns, per question, (picked chunk texts, retrieval ms, steps, the
# texts the same model picks at the fixed budget when it has a stop rule, else None) -------
Retrieved = list[tuple[list[str], float, int, list[str] | None]]


def bm25_top_k(index_dir: Path, questions: Sequence[str], k: int) -> Retrieved:
    """BM25 over the chunks of the base index (the same chunks every method sees), each
    read with its heading path as Q's encoders read it; the picks are their texts."""
    import bm25s

    with open_snapshot(index_dir) as snapshot:
        rows = snapshot.chunks(snapshot.live_ids().tolist())
    texts = [r.text for r in rows]
    read = [contextual_text(r.heading, r.text) for r in rows]
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(read, stopwords="en", show_progress=False), show_progress=False)
    out = []
    for q in questions:
        t0 = time.perf_counter()
        docs, _ = retriever.retrieve(
            bm25s.tokenize([q], stopwords="en", show_progress=False),
            k=min(k, len(texts)),
            show_progress=False,
        )
        out.append(([texts[int(i)] for i in docs[0]], (time.perf_counter() - t0) * 1000, 1, None))
    return out


def episodes(
    model: QNetwork, top_k: bool = False
) -> Callable[[Path, Sequence[str], int], Retrieved]:
    """The episode `qrag ask` runs, one question at a time (its model's calibrated stop,
    when it has one, with the budget as its ceiling; the fixed-budget episode too, untimed,
    to score the stop against). `top_k`: dense single-step top-k, i.e. the first step's
    picks plus its alternatives."""

    def retrieve(index_dir: Path, questions: Sequence[str], budget: int) -> Retrieved:
        stop = StopRule(1) if top_k else rule_for(model.cfg, budget)
        fixed = None
        out = []
        with open_snapshot(index_dir) as snapshot:
            source = IndexCandidates(snapshot)
            run_episodes(model, list(questions[:1]), [source], stop)  # warm-up
            for q in questions:
                t0 = time.perf_counter()
                if top_k:
                    ep = run_episodes(model, [q], [source], stop, alternatives=budget)[0]
                    rest = source.rows([a for a, _ in ep.evidence[0].alternatives])
                else:
                    ep, rest = run_episodes(model, [q], [source], stop)[0], []
                ms = (time.perf_counter() - t0) * 1000
                texts = [ev.text for ev in ep.evidence] + [r.text for r in rest]
                if stop.active:
                    full = run_episodes(model, [q], [source], StopRule(budget))[0]
                    fixed = [ev.text for ev in full.evidence]
                out.append((texts, ms, len(ep.evidence), fixed))
        return out

    return retrieve


# ---- one evaluation --------------------------------------------------------------------------
def _score(
    name: str,
    method: Callable[[Path, Sequence[str], int], Retrieved],
    index_dir: Path,
    stories: Sequence[Story],
    budget: int,
    task: str,
    tokens: int,
    chunks: int,
) -> Row:
    results = method(index_dir, [s.question for s in stories], budget)
    per_q, ems, f1s = [], [], []
    for story, (texts, ms, steps, _) in zip(stories, results, strict=True):
        em, f1 = longctx.fact_hits(texts, story)
        ems.append(em)
        f1s.append(f1)
        per_q.append(
            {
                "question": story.question,
                "fact_em": em,
                "fact_f1": round(f1, 4),
                "steps": steps,
                "ms": round(ms, 2),
            }
        )
    steps = [r[2] for r in results]
    return Row(
        task=task,
        tokens=tokens,
        method=name,
        fact_em=float(np.mean(ems)),
        fact_f1=float(np.mean(f1s)),
        mean_steps=float(np.mean(steps)),
        step_ms=statistics.median(r[1] / max(r[2], 1) for r in results),
        question_ms=statistics.median(r[1] for r in results),
        chunks=chunks,
        n=len(stories),
        per_question=per_q,
        stop=_stop(results, stories, budget),
    )


def _stop(results: Retrieved, stories: Sequence[Story], budget: int) -> dict | None:
    """How the stop did, when the method has one: the step after which the fixed-budget
    picks hold every gold fact, against the steps taken with the stop."""
    if any(fixed is None for *_, fixed in results):
        return None
    done_at = []
    for (*_, fixed), story in zip(results, stories, strict=True):
        done_at.append(
            next(
                (t for t in range(1, len(fixed) + 1) if longctx.fact_hits(fixed[:t], story)[0]),
                None,
            )
        )
    return {"budget": budget, **stop_metrics([r[2] for r in results], done_at)}


class Indexes:
    """One index per (corpus, chunk-embedding function), built through the real `qrag
    index` code: models that embed chunks alike (a frozen-chunk model and its base) share
    one. A rerun into the same folder only embeds what changed."""

    def __init__(self, work: Path) -> None:
        self.work, self.stats = work, []

    def get(self, corpus: Path, model: QNetwork) -> tuple[Path, int]:
        index_dir = self.work / "indexes" / f"{corpus.name}--{model.cfg.fingerprint}"
        summary = build_index([corpus], index_dir, model, ChunkConfig())
        if summary.tokens_embedded:
            self.stats.append(
                {
                    "corpus": corpus.name,
                    "model": model.cfg.name,
                    "tokens": summary.tokens_embedded,
                    "seconds": summary.seconds,
                }
            )
        return index_dir, summary.chunks_total


def _pooled_real(work: Path, n_eval: int, seed: int) -> tuple[Path, list[Story]] | None:
    """HotpotQA + MuSiQue samples: every paragraph in one corpus; held-out questions."""
    from qrag_cli.datasets import split

    examples = real_examples()
    if examples is None:
        return None
    train, held = split(examples, 0.5, seed)
    work.mkdir(parents=True, exist_ok=True)
    write_examples(train, work / "real_train.jsonl")  # for `qrag train`; never evaluated
    write_examples(held, work / "real_eval.jsonl")
    paragraphs = list(dict.fromkeys(c for ex in examples for c in ex.chunks))
    corpus = work / "corpus" / "real-pooled"
    longctx.write_corpus(corpus, paragraphs)
    # The gold facts are the paragraphs' sentences (the converters write "Title\nsentences"):
    # a picked chunk holds them, while a title found as a heading is stored apart.
    stories = [
        Story(ex.question, ex.answer or "", tuple(paragraph(c)[1] for c in ex.chunks), ex.support)
        for ex in held[:n_eval]
    ]
    return corpus, stories


# ---- the whole run ---------------------------------------------------------------------------
def run(
    out: Path,
    profile: Profile,
    models: Sequence[str] = (),
    seed: int = 0,
    haystack: Path | None = None,
    speed: bool = True,
    lexical: str = "on",
    log: Callable[[str], None] = lambda msg: None,
) -> dict:
    """`lexical`: "on" scores Q-RAG models with their BM25 terms, "off" without, "both"
    each model both ways (the dense-vs-hybrid ablation)."""
    for task in profile.tasks:
        if task not in longctx.STORIES:
            raise UsageError(f"unknown task {task!r}; choose from {', '.join(longctx.TASKS)}")
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    base = load_model("base")
    trained = []
    for spec in models:
        model = load_inference_model(spec)  # once: the dense-Q twin shares its encoders
        if lexical in ("on", "both"):
            trained.append(("", model))
        if lexical in ("off", "both"):
            trained.append((" (dense Q)", without_lexical(model)))
    indexes = Indexes(work)
    own = own_paragraphs(haystack) if haystack else None
    rows: list[Row] = []

    def evaluate(corpus: Path, stories: Sequence[Story], task: str, tokens: int) -> None:
        base_index, chunks = indexes.get(corpus, base)
        methods = [
            ("bm25 top-k", bm25_top_k, base_index),
            ("dense top-k", episodes(base, top_k=True), base_index),
            ("multi-step untrained", episodes(base), base_index),
        ]
        for label, model in trained:
            methods.append(
                (f"qrag {model.cfg.name}{label}", episodes(model), indexes.get(corpus, model)[0])
            )
        for name, method, index_dir in methods:
            row = _score(name, method, index_dir, stories, profile.steps, task, tokens, chunks)
            rows.append(row)
            log(
                f"{task} {_length(tokens)} {row.method}: fact EM {row.fact_em:.2f} "
                f"F1 {row.fact_f1:.2f} steps {row.mean_steps:.1f} "
                f"{row.question_ms:.0f} ms/question"
            )

    for task in profile.tasks:
        # Regenerated every run (milliseconds): files left by a run with another seed,
        # question count or haystack must never be scored against this run's stories.
        (out / "train").mkdir(parents=True, exist_ok=True)
        write_examples(
            longctx.training_examples(task, 200, seed, 4 * K, own), out / "train" / f"{task}.jsonl"
        )  # 4K-token episodes for `qrag train`
        for tokens in profile.lengths:
            paragraphs, stories = longctx.make_eval(task, tokens, profile.questions, seed, own)
            corpus = work / "corpus" / f"{task}-{tokens}"
            longctx.write_corpus(corpus, paragraphs)
            evaluate(corpus, stories, task, tokens)
    real = _pooled_real(work, profile.real_eval, seed) if profile.real_eval else None
    if real is not None:
        corpus, stories = real
        evaluate(corpus, stories, "hotpotqa+musique", 0)
    else:
        log("real data: no HotpotQA/MuSiQue samples (QRAG_DATA unset or without them), skipped")

    result: dict = {
        "profile": asdict(profile),
        "seed": seed,
        "models": list(models),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "python": platform.python_version(),
            "cpus": len(os.sched_getaffinity(0)),
        },
        "rows": [asdict(r) for r in rows],
        "index_builds": indexes.stats,
    }
    if speed:
        from qrag_cli.bench import scale
        from qrag_cli.bench import speed as speed_bench

        # Indexing speed needs a cold index: one left by an earlier run embeds nothing.
        shutil.rmtree(work / "speed", ignore_errors=True)
        result["speed"] = speed_bench.run(
            (profile.speed_tokens,), workdir=work / "speed", questions=20, log=log
        )
        source = next((work / "speed").glob(f"index-{profile.speed_tokens}-*"))
        curve = []
        for size in profile.scale_sizes:
            target = work / "scale" / f"synthetic-{size}"
            if not (target / "CURRENT").exists():
                scale.build_synthetic(target, source, size)
            log(f"scale: {size} chunks")
            curve.append(scale.measure(target, scale.QUESTIONS, profile.steps))
        result["scale"] = curve
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["seconds"] = round(time.perf_counter() - started, 1)
    atomic_write(out / "results.json", json.dumps(result, indent=2))
    atomic_write(out / "results.md", markdown(result))
    plots(result, out)
    return result


# ---- report ----------------------------------------------------------------------------------
def _length(tokens: int) -> str:
    if not tokens:
        return "pooled"
    return f"{tokens // (K * K)}M" if tokens >= K * K else f"{tokens // K}K"


def markdown(result: dict) -> str:
    rows = result["rows"]
    lines = [
        f"# qrag bench ({result['seconds']} s)",
        "",
        f"Machine: {result['machine']['processor'] or result['machine']['platform']}, "
        f"{result['machine']['cpus']} CPUs. Budget {result['profile']['steps']} steps; "
        f"single-step methods take top-{result['profile']['steps']}.",
        "",
        "| task | length | method | fact EM | fact F1 | steps | ms/step | ms/question | "
        "chunks | n |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {_length(r['tokens'])} | {r['method']} | "
            f"{r['fact_em']:.3f} | {r['fact_f1']:.3f} | {r['mean_steps']:.2f} | "
            f"{r['step_ms']:.1f} | {r['question_ms']:.1f} | {r['chunks']} | {r['n']} |"
        )
    stopped = [r for r in rows if r.get("stop")]
    if stopped:
        lines += [
            "",
            "## Stop (models with a stop rule; ceiling = the budget)",
            "",
            "| task | length | method | right step | over (+steps) | under | never complete | "
            "steps | fact EM stop / fixed |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in stopped:
            m = r["stop"]
            lines.append(
                f"| {r['task']} | {_length(r['tokens'])} | {r['method']} | "
                f"{m['exact_share']:.2f} | {m['over_share']:.2f} (+{m['over_steps']:.2f}) | "
                f"{m['under_share']:.2f} | {m['never_share']:.2f} | {m['mean_steps']:.2f} | "
                f"{m['fact_em_stop']:.3f} / {m['fact_em_fixed']:.3f} |"
            )
    if "speed" in result:
        from qrag_cli.bench import speed as speed_bench

        lines += ["", "## Indexing and asking: torch and ONNX, paired", ""]
        lines += speed_bench.markdown(result["speed"])
        lines += [
            "",
            "Scale (synthetic vectors, ONNX): ",
            "",
            "| chunks | warm step ms (median) | p95 | ANN = exact | cold ask s |",
            "|---|---|---|---|---|",
        ]
        for m in result.get("scale", []):
            lines.append(
                f"| {m['chunks']} | {m['warm_step_ms_median']:.1f} | "
                f"{m['warm_step_ms_p95']:.1f} | {m['ann_exact_agreement']:.3f} | "
                f"{m['cold_ask_s_median']:.2f} |"
            )
    lines += ["", f"Peak memory (RSS): {result['peak_rss_mb']:.0f} MB", ""]
    return "\n".join(lines)


def plots(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["tokens"]]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    if tasks:
        cols = min(4, len(tasks))
        fig, axes = plt.subplots(
            (len(tasks) + cols - 1) // cols,
            cols,
            squeeze=False,
            figsize=(4 * cols, 3.2 * ((len(tasks) + cols - 1) // cols)),
        )
        for ax, task in zip(axes.flat, tasks, strict=False):
            for method in dict.fromkeys(r["method"] for r in rows):
                pts = sorted(
                    (r["tokens"], r["fact_f1"])
                    for r in rows
                    if r["task"] == task and r["method"] == method
                )
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
            ax.set_xscale("log", base=2)
            ax.set_title(task)
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel("context tokens")
            ax.set_ylabel("fact F1")
        for ax in list(axes.flat)[len(tasks) :]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=7)
        fig.tight_layout()
        with atomic_output(out / "accuracy_vs_length.png") as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
    if result.get("scale"):
        pts = sorted(result["scale"], key=lambda m: m["chunks"])
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(
            [m["chunks"] for m in pts],
            [m["warm_step_ms_median"] for m in pts],
            marker="o",
            label="warm step (median)",
        )
        ax.plot(
            [m["chunks"] for m in pts],
            [m["search_ms_per_step_median"] for m in pts],
            marker="s",
            label="of which search",
        )
        ax.set_xscale("log")
        ax.set_xlabel("chunks in index")
        ax.set_ylabel("ms")
        ax.legend()
        fig.tight_layout()
        with atomic_output(out / "latency_vs_size.png") as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
