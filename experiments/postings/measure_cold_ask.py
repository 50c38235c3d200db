"""Cold `qrag ask` (4 steps) of two qrag checkouts, alternating, as an installed qrag runs
(bytecode cached; the first run of each side is not counted), 20 counted runs each:

    python experiments/postings/measure_cold_ask.py BEFORE_TREE BEFORE_INDEX AFTER_TREE AFTER_INDEX

Each tree is a checkout (`git worktree add /tmp/before REV`); each index a copy of the
same index (the speed bench's 1M-token prose index in BENCHMARKS.md "Stored BM25
postings"). Prints the median, minimum and maximum seconds of each side.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

import numpy as np

from qrag_cli.bench.speed import WORDS


def main(before_tree: str, before_index: str, after_tree: str, after_index: str) -> None:
    rng = np.random.default_rng(3)
    questions = [
        f"Which record mentions {' '.join(rng.choice(WORDS[6:], size=3))}?" for _ in range(21)
    ]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    sides = {"before": (before_tree, before_index), "after": (after_tree, after_index)}
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    flags = ["--steps", "4", "--json"]
    for n, question in enumerate(questions):
        for name, (tree, index) in sides.items():
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "qrag_cli", "ask", question, "--index", index, *flags],
                check=True,
                capture_output=True,
                env={**env, "PYTHONPATH": tree},
                cwd=tree,
            )
            if n:
                seconds[name].append(time.perf_counter() - start)
    for name, runs in seconds.items():
        print(
            f"{name} median {statistics.median(runs):.3f} min {min(runs):.3f} "
            f"max {max(runs):.3f} n {len(runs)}"
        )


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    main(*sys.argv[1:])
