"""Speed, paired: the torch path and the ONNX path (onnx_model.py) on the same corpus, in
one run, so machine drift between runs cannot tell them apart.

For each corpus size (100K and 1M tokens of varied prose by default) and each engine:
index throughput (a fresh index each), the raw encoder on the same chunks, the warm step
and its state encode (one question at a time, as `ask` runs them) and a cold `qrag ask`
(process wall time; the first run, which writes bytecode and fills the page cache, is not
counted). `qrag bench speed` writes speed.json and speed.md; `qrag bench` includes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from qrag_cli.bench.scale import measure
from qrag_cli.config import ChunkConfig
from qrag_cli.files import atomic_write
from qrag_cli.indexer import build_index
from qrag_cli.onnx_model import load_inference_model
from qrag_cli.store import open_snapshot
from qrag_cli.types import contextual_text

ENGINES = ("torch", "onnx")
SIZES = (100_000, 1_000_000)
WORDS = (
    "the a of to in river town engine ferry salmon plateau inventor mill harbour winter "
    "bread lamp valve turbine patent captain locksmith library festival timetable north "
    "south old new small great built opened closed crossed lived worked sold bought "
    "was is were had many few every before after during because while"
).split()


def make_prose_corpus(root: Path, tokens: int, seed: int = 0) -> Path:
    """Varied prose in files of ~4K tokens, each sentence carrying a findable fact."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    per_file = 4000
    for f in range(max(1, tokens // per_file)):
        paras, n = [], 0
        while n < per_file:
            sents = []
            for _ in range(int(rng.integers(3, 7))):
                body = " ".join(rng.choice(WORDS, size=int(rng.integers(8, 20))))
                sents.append(f"Record {f}-{len(paras)}-{len(sents)} {body}.")
            para = " ".join(sents)
            n += int(len(para.split()) * 1.3)
            paras.append(para)
        (root / f"part{f:05d}.txt").write_text("\n\n".join(paras) + "\n")
    return root


@contextlib.contextmanager
def engine_set(engine: str) -> Iterator[None]:
    """QRAG_ENGINE=`engine` for this process and the `qrag ask` processes it starts."""
    saved = os.environ.get("QRAG_ENGINE")
    os.environ["QRAG_ENGINE"] = engine
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("QRAG_ENGINE", None)
        else:
            os.environ["QRAG_ENGINE"] = saved


def one_engine(
    corpus: Path,
    index_dir: Path,
    model_spec: str | None,
    questions: Sequence[str],
    steps: int,
    index: bool = True,
) -> dict:
    """Index `corpus` into a fresh `index_dir` (unless not `index`: then it is there), then
    time the encoder and asking, on the engine QRAG_ENGINE names."""
    model = load_inference_model(model_spec)
    row: dict = {
        "engine": model.engine,
        "state_precision": getattr(model, "state_precision", None)
        or ("int8" if getattr(model, "state_int8", False) else "fp32"),
    }
    if index:
        summary = build_index([corpus], index_dir, model, ChunkConfig())
        row["index"] = {
            "seconds": summary.seconds,
            "chunks": summary.chunks_total,
            "tokens": summary.tokens_embedded,
            "tokens_per_s": summary.tokens_embedded / summary.seconds,
            "embed_share": summary.embed_seconds / summary.seconds,
        }
        with open_snapshot(index_dir) as snapshot:
            rows = snapshot.chunks(snapshot.live_ids().tolist())
            texts = [contextual_text(r.heading, r.text) for r in rows]  # what was embedded
        t0 = time.perf_counter()
        model.embed_chunks(texts)
        row["raw_encoder_tokens_per_s"] = summary.tokens_embedded / (time.perf_counter() - t0)
    row["ask"] = measure(index_dir, questions, steps, model=model, model_spec=model_spec)
    return row


def run(
    sizes: Sequence[int] = SIZES,
    model_spec: str | None = None,
    questions: int = 30,
    steps: int = 4,
    workdir: Path | None = None,
    engines: Sequence[str] = ENGINES,
    log: Callable[[str], None] = lambda _: None,
    index_each: int = 200_000,
) -> dict:
    """Corpora of up to `index_each` tokens are indexed by each engine (index throughput,
    paired); a larger one once, by the last engine, and asked by every engine (the same
    chunk vectors up to fp32 rounding; embedding 1M tokens twice took ~20 minutes here)."""
    tmp = Path(workdir or tempfile.mkdtemp(prefix="qrag-bench-"))
    rng = np.random.default_rng(1)
    qs = [
        f"Which record mentions {' '.join(rng.choice(WORDS[6:], size=3))}?"
        for _ in range(questions)
    ]
    result: dict = {"steps": steps, "questions": questions, "sizes": []}
    for tokens in sizes:
        corpus = make_prose_corpus(tmp / f"corpus-{tokens}", tokens)
        paired: dict = {"tokens": tokens}
        each = tokens <= index_each
        order = list(engines) if each else list(engines)[::-1]  # the index first
        for n, engine in enumerate(order):
            log(f"speed: {tokens} tokens on {engine}")
            index_dir = tmp / f"index-{tokens}-{engine if each else 'shared'}"
            with engine_set(engine):
                paired[engine] = one_engine(
                    corpus, index_dir, model_spec, qs, steps, index=each or n == 0
                )
        if each and set(ENGINES) <= set(engines):
            paired["index_onnx_over_torch"] = (
                paired["onnx"]["index"]["tokens_per_s"] / paired["torch"]["index"]["tokens_per_s"]
            )
        result["sizes"].append(paired)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["workdir"] = str(tmp)
    return result


def markdown(result: dict) -> list[str]:
    """The paired table (one row per corpus size and engine)."""
    lines = [
        f"Steps {result['steps']}, {result['questions']} questions, one at a time. Cold ask: "
        "process wall time of `qrag ask` (median).",
        "",
        "| tokens | engine | E_s | index tokens/s | raw encoder tokens/s | warm step ms "
        "(median / p95) | state encode ms/step | search ms/step | cold ask s | ANN = exact |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for paired in result["sizes"]:
        for engine in ENGINES:
            if engine not in paired:
                continue
            r, a = paired[engine], paired[engine]["ask"]
            index = f"{r['index']['tokens_per_s']:.0f}" if "index" in r else "(shared)"
            raw = f"{r['raw_encoder_tokens_per_s']:.0f}" if "index" in r else ""
            lines.append(
                f"| {paired['tokens']:,} | {engine} | {r['state_precision']} | "
                f"{index} | {raw} | "
                f"{a['warm_step_ms_median']:.1f} / {a['warm_step_ms_p95']:.1f} | "
                f"{a['encode_ms_per_step_median']:.1f} | {a['search_ms_per_step_median']:.1f} | "
                f"{a['cold_ask_s_median']:.2f} | {a['ann_exact_agreement']:.3f} |"
            )
        if "index_onnx_over_torch" in paired:
            lines.append(
                f"| {paired['tokens']:,} | onnx / torch | | "
                f"{paired['index_onnx_over_torch']:.2f}x | | | | | | |"
            )
    return lines


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "speed.json", json.dumps(result, indent=2))
    atomic_write(out / "speed.md", "\n".join(["# qrag bench speed", "", *markdown(result), ""]))


if __name__ == "__main__":  # python -m qrag_cli.bench.speed [tokens ...]
    chosen = [int(x) for x in sys.argv[1:]] or list(SIZES)
    print(json.dumps(run(chosen, log=lambda m: print(m, file=sys.stderr)), indent=2))
