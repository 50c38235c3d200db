"""Indexing time against the raw encoder on the same chunk texts, for one folder: how
BENCHMARKS.md's layout speed lines were made (run it alone on the machine; repeat it,
the spread between runs is several percent).

    python experiments/index_speed/measure_index_speed.py FOLDER

Prints one JSON line: chunks, tokens, index seconds, of which embedding, the raw encoder's
seconds over the texts the index embedded (heading path and text), and their ratio.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from qrag_cli.config import ChunkConfig
from qrag_cli.indexer import build_index
from qrag_cli.model import load_model
from qrag_cli.store import open_snapshot
from qrag_cli.types import contextual_text


def main(corpus: Path) -> None:
    model = load_model("default")
    with tempfile.TemporaryDirectory() as tmp:
        summary = build_index([corpus], Path(tmp) / "index", model, ChunkConfig())
        with open_snapshot(Path(tmp) / "index") as snapshot:
            rows = snapshot.chunks(snapshot.live_ids().tolist())
    texts = [contextual_text(r.heading, r.text) for r in rows]
    t0 = time.perf_counter()
    model.embed_chunks(texts)
    raw = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "chunks": summary.chunks_total,
                "tokens": summary.tokens_embedded,
                "index_s": round(summary.seconds, 2),
                "embed_s": round(summary.embed_seconds, 2),
                "raw_s": round(raw, 2),
                "index_over_raw": round(raw / summary.seconds, 3),
            }
        )
    )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
