"""Measure stop rules against each other on held-out data (issue 15).

    python experiments/stop/measure_stop.py [TRAIN_DIR] [N_TRAIN] [MODEL]

TRAIN_DIR (default qrag-train) holds `make_training_data.py`'s files: N_TRAIN (default
300) examples of mix.jsonl (seed 0) fit the stop head; val-real + val-gen choose the
thresholds and the head's cut. Held-out, never chosen on: the bench's held-out half of
the pooled real questions (split(real, 0.5, 0)[1]) and fresh generated stories of every
bench task (6 each, seed 2026, among 3 other stories, as tests/test_default_model.py).
Every rule is scored by evaluate.stop_metrics at the model's training budget (the
ceiling); prints one JSON object.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

from qrag_cli.bench.longctx import TASKS, training_examples
from qrag_cli.datasets import load_examples, real_examples, split
from qrag_cli.evaluate import calibrate_threshold, cut_episodes, run_examples, stop_report
from qrag_cli.model import load_model
from qrag_cli.stop import StopRule
from qrag_cli.stopfit import em_threshold, fit_head


def stop_sets(folder: Path, n_train: int) -> dict[str, list]:
    """The stop studies' examples: `train` (N_TRAIN of mix.jsonl, seed 0) fits, `val`
    (val-real + val-gen) chooses, `real` (the bench's held-out half of the pooled real
    questions) and `gen` (fresh stories of every bench task) are held out."""
    mix = load_examples(folder / "mix.jsonl")
    real = real_examples()
    assert real is not None, "../shared/data is needed for the held-out real questions"
    return {
        "train": random.Random(0).sample(mix, min(n_train, len(mix))),
        "val": [
            *load_examples(folder / "val-real.jsonl"),
            *load_examples(folder / "val-gen.jsonl"),
        ],
        "real": split(real, 0.5, 0)[1],
        "gen": [ex for task in TASKS for ex in training_examples(task, 6, 2026, stories=4)],
    }


def stop_runs(model, sets: dict[str, list]) -> tuple[int, dict[str, list], float]:
    """Greedy no-stop episodes of every set at the model's training budget (the ceiling),
    sharing one chunk-vector cache: (budget, episodes by set, seconds they took)."""
    budget = int((model.cfg.train or {}).get("budget") or 5)
    cache: dict = {}
    t0 = time.perf_counter()
    runs = {name: run_examples(model, exs, budget, cache=cache) for name, exs in sets.items()}
    seconds = time.perf_counter() - t0
    print(f"episodes: {seconds:.0f} s", file=sys.stderr)
    return budget, runs, seconds


def _printed(head) -> dict:
    """A head's numbers without its count model's weights (384 x 4)."""
    return {k: v for k, v in head.to_dict().items() if k != "count_model"}


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "qrag-train")
    n_train = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    model = load_model(sys.argv[3] if len(sys.argv) > 3 else None)
    sets = stop_sets(folder, n_train)
    train, val = sets["train"], sets["val"]
    budget, runs, seconds = stop_runs(model, sets)
    examples = sets
    f1_thr, _, _ = calibrate_threshold(runs["val"], val)
    em_thr = em_threshold(runs["val"], val)
    head = fit_head(runs["train"], train, runs["val"], val)
    no_counts = fit_head(runs["train"], train, runs["val"], val, count_model=False)
    rules = {
        "fixed": None,
        "threshold_f1": StopRule(budget, f1_thr),
        "threshold_em": StopRule(budget, em_thr),
        "head": StopRule(budget, head=head),
        "head_without_counts": StopRule(budget, head=no_counts),
    }
    out: dict = {
        "model": model.cfg.name,
        "budget": budget,
        "n": {k: len(v) for k, v in examples.items()},
        "params": {
            "threshold_f1": f1_thr,
            "threshold_em": em_thr,
            "head": _printed(head),
            "head_without_counts": _printed(no_counts),
        },
        "seconds_episodes": round(seconds, 1),
    }
    for name, rule in rules.items():  # each rule's stop metrics per split
        out[name] = {
            split_name: stop_report(
                cut_episodes(runs[split_name], rule), runs[split_name], examples[split_name]
            )
            for split_name in ("val", "real", "gen")
        }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
