"""Fact EM per question on the bench's held-out real half, the paper's setting: each
question over its own paragraphs (HotpotQA: 10, MuSiQue: 20), budgets 2 and 4. How
BENCHMARKS.md's "per question" tables were made.

    python experiments/per_question/measure_per_question.py MODEL [MODEL ...]

MODEL: a model folder, "default" or "base". Prints one JSON line per model. The held-out
half is `split(real_examples(), 0.5, 0)[1]` (what `qrag bench --seed 0` holds out): no
training file holds it and nothing is selected on it.
"""

from __future__ import annotations

import json
import sys

from qrag_cli.datasets import real_examples, split
from qrag_cli.evaluate import run_examples, score
from qrag_cli.model import load_model


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    real = real_examples()
    if real is None:
        raise SystemExit("error: ../shared/data is missing")
    held_out = split(real, 0.5, 0)[1]
    groups = {
        "hotpotqa": [i for i, e in enumerate(held_out) if "hop" not in e.id],
        "musique": [i for i, e in enumerate(held_out) if "hop" in e.id],
        "all": list(range(len(held_out))),
    }
    cache: dict = {}  # chunk vectors, shared: models with E_a = the base compute the same
    for name in sys.argv[1:]:
        model = load_model(name)
        # Greedy episodes are deterministic: budget 2's are budget 4's first two picks.
        episodes = run_examples(model, held_out, 4, cache=cache)
        row: dict = {"model": name}
        for budget in (2, 4):
            for group, ids in groups.items():
                metrics = score(
                    [episodes[i] for i in ids], [held_out[i] for i in ids], [budget] * len(ids)
                )
                row[f"{group}_b{budget}"] = round(metrics.fact_em, 3)
                row[f"{group}_n"] = len(ids)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
