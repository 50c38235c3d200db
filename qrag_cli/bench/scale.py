"""Step latency and ANN/exact agreement vs index size, beyond what 2 cores can embed.

Embedding 1e5-1e6 chunks takes hours on 2 cores, so large indexes are filled with
perturbed copies of real chunk vectors (each a real embedding plus Gaussian noise,
renormalised): the graph, the vectors file and the search are real and full-size; only
the texts are placeholders. Questions are embedded with the real state encoder.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from qrag_cli.config import ChunkConfig
from qrag_cli.episode import IndexCandidates, StopRule, run_episodes
from qrag_cli.onnx_model import load_inference_model
from qrag_cli.qtext import QNetwork
from qrag_cli.store import IndexManifest, IndexWriter, open_snapshot
from qrag_cli.types import Chunk

QUESTIONS = [
    "Which river flows through the town where the engine's inventor was born?",
    "Who sold the patent to a boat builder?",
    "Where does the ferry cross in winter?",
    "What did the committee decide about the library budget?",
    "How is rye bread baked?",
    "Which locomotive was built in a workshop?",
    "Where do salmon swim in spring?",
    "Who taught mechanics for thirty years?",
    "When was the coastal railway opened?",
    "What powered the sawmills along the coast?",
]


def build_synthetic(
    index_dir: Path, source_index: Path, n_chunks: int, seed: int = 0, noise: float = 0.35
) -> None:
    model = load_inference_model(None)
    with open_snapshot(source_index) as snapshot:
        real = np.asarray(snapshot.vectors[snapshot.live_ids()], dtype=np.float32)
    rng = np.random.default_rng(seed)
    writer = IndexWriter(
        index_dir,
        IndexManifest(
            model_name=model.cfg.name,
            model_fingerprint=model.cfg.fingerprint,
            dim=model.cfg.dim,
            chunking=ChunkConfig().to_dict(),
        ),
    )
    per_file = 1000
    for f in range(0, n_chunks, per_file):
        n = min(per_file, n_chunks - f)
        base = real[rng.integers(0, len(real), size=n)]
        vecs = base + rng.normal(0, noise / np.sqrt(base.shape[1]), size=base.shape)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        chunks = [
            Chunk(
                text=f"synthetic chunk {f + i}",
                seq=i,
                start_line=i + 1,
                end_line=i + 1,
                start_byte=0,
                end_byte=0,
                n_tokens=4,
            )
            for i in range(n)
        ]
        writer.add_file(
            str(index_dir / f"synthetic-{f // per_file:05d}.txt"),
            f"h{f}",
            0,
            0,
            "text",
            chunks,
            vecs.astype(np.float32),
        )
    writer.finish()


def measure(
    index_dir: Path,
    questions: Sequence[str] = QUESTIONS * 3,
    steps: int = 4,
    model: QNetwork | None = None,
    model_spec: str | None = None,
) -> dict:
    """Warm per-step latency, ANN/exact agreement and cold `qrag ask`, one question at a
    time as `ask` runs them (batching changes bf16 rounding, not the search)."""
    model = model or load_inference_model(model_spec)
    with open_snapshot(index_dir) as snapshot:
        ann, exact = IndexCandidates(snapshot), IndexCandidates(snapshot, exact=True)
        t0 = time.perf_counter()
        _ = snapshot.hnsw
        load_s = time.perf_counter() - t0
        run_episodes(model, list(questions[:1]), [ann], StopRule(steps))  # warm-up
        step_ms, encode_ms, search_ms, agree, total = [], [], [], 0, 0
        for q in questions:
            clock: dict[str, float] = {}
            t0 = time.perf_counter()
            a = run_episodes(model, [q], [ann], StopRule(steps), timings=clock)[0]
            step_ms.append((time.perf_counter() - t0) * 1000 / steps)
            encode_ms.append(clock["encode_ms"] / steps)
            search_ms.append(clock["search_ms"] / steps)
            b = run_episodes(model, [q], [exact], StopRule(steps))[0]
            for x, y in zip(a.evidence, b.evidence, strict=False):
                total += 1
                agree += x.chunk_id == y.chunk_id
        n_chunks = snapshot.n_chunks
    cold = []
    extra = ["--model", model_spec] if model_spec else []
    # As an installed qrag runs: bytecode cached (the first run writes it and fills the
    # page cache, and is not counted), the engine QRAG_ENGINE names.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for n, q in enumerate(questions[:6]):
        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "qrag_cli",
                "ask",
                q,
                "--index",
                str(index_dir),
                "--steps",
                str(steps),
                "--json",
                *extra,
            ],
            check=True,
            capture_output=True,
            env=env,
        )
        if n:
            cold.append(time.perf_counter() - t0)
    return {
        "chunks": n_chunks,
        "warm_step_ms_median": statistics.median(step_ms),
        "warm_step_ms_p95": float(np.percentile(step_ms, 95)),
        "encode_ms_per_step_median": statistics.median(encode_ms),
        "search_ms_per_step_median": statistics.median(search_ms),
        "hnsw_load_s": load_s,
        "ann_exact_agreement": agree / max(total, 1),
        "steps_compared": total,
        "cold_ask_s_median": statistics.median(cold),
    }


if __name__ == "__main__":  # python -m qrag_cli.bench.scale SOURCE_INDEX WORKDIR N [N ...]
    source, work = Path(sys.argv[1]), Path(sys.argv[2])
    for size in [int(x) for x in sys.argv[3:]]:
        target = work / f"synthetic-{size}"
        t0 = time.perf_counter()
        if not (target / "CURRENT").exists():
            build_synthetic(target, source, size)
        built = time.perf_counter() - t0
        print(json.dumps({**measure(target), "build_s": round(built, 1)}), flush=True)
