"""Speed and scale: index throughput vs the raw encoder, ask latency, ANN/exact agreement."""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from qrag_cli.bench.scale import measure
from qrag_cli.config import ChunkConfig
from qrag_cli.indexer import build_index
from qrag_cli.model import load_model
from qrag_cli.store import open_snapshot
from qrag_cli.types import contextual_text

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


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(
    tokens: int = 1_000_000,
    model_spec: str | None = None,
    questions: int = 50,
    steps: int = 4,
    workdir: Path | None = None,
) -> dict:
    tmp = Path(workdir or tempfile.mkdtemp(prefix="qrag-bench-"))
    corpus = make_prose_corpus(tmp / "corpus", tokens)
    model = load_model(model_spec)
    index_dir = tmp / "index"
    result: dict = {
        "tokens_target": tokens,
        "model": model.cfg.name,
        "infer_dtype": str(model.infer_dtype).removeprefix("torch."),
        "state_int8": model.state_int8,
    }

    summary = build_index([corpus], index_dir, model, ChunkConfig())
    result["index"] = {
        "seconds": summary.seconds,
        "chunks": summary.chunks_total,
        "tokens": summary.tokens_embedded,
        "tokens_per_s": summary.tokens_embedded / summary.seconds,
        # The share of indexing spent in the encoder, timed inside the same run: what the
        # rest of the pipeline costs, free of the drift between two runs on a shared
        # machine (the same chunks embedded twice here took 71 s and 84 s).
        "embed_seconds": summary.embed_seconds,
        "embed_share": summary.embed_seconds / summary.seconds,
    }
    with open_snapshot(index_dir) as snapshot:
        rows = snapshot.chunks(snapshot.live_ids().tolist())
        texts = [contextual_text(r.heading, r.text) for r in rows]  # what indexing embedded
        size = sum(p.stat().st_size for p in snapshot.folder.iterdir() if p.is_file())
    result["index"]["bytes_on_disk"] = size
    result["index"]["mb_per_1m_tokens"] = size / 1e6 / (summary.tokens_embedded / 1e6)

    t0 = time.perf_counter()
    model.embed_chunks(texts)
    raw = time.perf_counter() - t0
    result["raw_encoder"] = {"seconds": raw, "tokens_per_s": summary.tokens_embedded / raw}
    result["index_over_raw"] = raw / summary.seconds
    try:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(model.folder), device="cpu")
        t0 = time.perf_counter()
        st.encode(texts, batch_size=32)
        st_s = time.perf_counter() - t0
        result["sentence_transformers"] = {
            "seconds": st_s,
            "tokens_per_s": summary.tokens_embedded / st_s,
        }
    except ImportError:
        result["sentence_transformers"] = None

    rng = np.random.default_rng(1)
    qs = [
        f"Which record mentions {' '.join(rng.choice(WORDS[6:], size=3))}?"
        for _ in range(questions)
    ]
    result["ask"] = measure(index_dir, qs, steps, model=model, model_spec=model_spec)
    result["peak_rss_mb"] = _peak_rss_mb()
    result["workdir"] = str(tmp)
    return result


if __name__ == "__main__":  # python -m qrag_cli.bench.speed [tokens]
    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000), indent=2))
