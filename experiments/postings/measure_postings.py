"""Stored postings against FTS5 on one index: the same ids and scores, bit for bit, and
the time of each (BENCHMARKS.md "Stored BM25 postings").

    python experiments/postings/measure_postings.py INDEX [QUERIES]

INDEX: an index name or folder (`qrag status` lists them). Queries are bags of words
drawn from the index's own chunks, as Q asks them (1-70 entries, a third with phrases
and text only FTS5's tokenizer reads). Prints one JSON line.
"""

from __future__ import annotations

import json
import random
import sys
import time

import numpy as np

from qrag_cli import lexical
from qrag_cli.config import resolve_index
from qrag_cli.store import open_snapshot

ODD = ["café", "Ünïcode-ß", "don't", "ﬁnance", "İstanbul", "U.S.", "x_y", "."]


def main(index: str, n: int = 400) -> dict:
    rng = random.Random(0)
    with open_snapshot(resolve_index(index)) as snap:
        if not snap.uses_postings:
            raise SystemExit("this index has no stored postings yet: run `qrag index` on it")
        fts5 = lexical.Searcher(snap.conn)
        texts = [f"{c.text} {' '.join(c.heading)}" for c in snap.chunks(snap.live_ids().tolist())]
        same = 0
        clock = {"fts5": 0.0, "postings": 0.0}
        for i in range(n):
            words = lexical.terms(rng.choice(texts)) or ["x"]
            entries = rng.sample(words, min(rng.randint(1, 70), len(words)))
            if i % 3 == 0:
                split = rng.choice(texts).split()
                entries += [" ".join(split[j : j + 2]) for j in range(0, min(6, len(split)), 2)]
                entries += rng.sample(ODD, 3)
                rng.shuffle(entries)
            start = time.perf_counter()
            want = fts5.bm25(entries)
            middle = time.perf_counter()
            got = snap.bm25(entries)
            clock["fts5"] += middle - start
            clock["postings"] += time.perf_counter() - middle
            same += bool(np.array_equal(want[0], got[0]) and np.array_equal(want[1], got[1]))
        return {
            "index": index,
            "chunks": snap.n_chunks,
            "queries": n,
            "identical": same,
            "fts5_ms": round(clock["fts5"] / n * 1e3, 2),
            "postings_ms": round(clock["postings"] / n * 1e3, 2),
        }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], *(int(a) for a in sys.argv[2:]))))
