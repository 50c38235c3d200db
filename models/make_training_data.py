"""Build the training data for models/qrag-default (run by `make train-default`).

Writes, into the folder given (default: ./qrag-train):
  mix.jsonl  8 generated long-context tasks x 400 4K-token episodes (seed 11), the
             training half of the pooled HotpotQA+MuSiQue split (`qrag bench` holds the
             other half out; 20 of this half go to validation) repeated 3x, and the
             HotpotQA gold-evidence sample (469 questions, 8 distractor sentences each);
  val.jsonl  5 episodes per task (seed 99) + 20 real questions: best-on-eval selection
             and threshold calibration only ever see this file.
The bench's held-out real questions and its long-context stories (other seeds) are in
neither file.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from qrag_cli.bench.longctx import TASKS, training_examples
from qrag_cli.bench.suite import SHARED_DATA, real_examples
from qrag_cli.datasets import from_hotpotqa_evidence, split, write_examples


def main(out: Path) -> None:
    real = real_examples()
    if real is None:
        sys.exit(f"error: no HotpotQA/MuSiQue samples in {SHARED_DATA}")
    out.mkdir(parents=True, exist_ok=True)
    real_train, _held_out = split(real, 0.5, 0)  # the same split as `qrag bench --seed 0`
    random.Random(5).shuffle(real_train)
    real_val, real_fit = real_train[:20], real_train[20:]
    mix, val = [], []
    for task in TASKS:
        mix += training_examples(task, 400, 11)
        val += training_examples(task, 10, 99)[:5]
    mix += real_fit * 3
    mix += from_hotpotqa_evidence(SHARED_DATA / "hotpotqa_train_evidence_500.jsonl",
                                  on_skip=lambda msg: print(f"skip {msg}", file=sys.stderr))
    random.Random(7).shuffle(mix)
    n_mix = write_examples(mix, out / "mix.jsonl")
    n_val = write_examples(val + real_val, out / "val.jsonl")
    print(f"{out}/mix.jsonl: {n_mix} episodes; {out}/val.jsonl: {n_val}", file=sys.stderr)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("qrag-train"))
