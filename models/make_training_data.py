"""Rebuild the training data of models/qrag-default (run by `make train-default`).

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
from qrag_cli.datasets import (
    from_hotpotqa,
    from_hotpotqa_evidence,
    from_musique,
    split,
)

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def lines(examples) -> list[str]:
    return [ex.to_json() + "\n" for ex in examples]


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    real = list(from_hotpotqa(SHARED / "hotpotqa_train_200.json"))
    real += list(from_musique(SHARED / "musique_train_100.jsonl"))
    real_train, _held_out = split(real, 0.5, 0)  # the same split as `qrag bench --seed 0`
    rows = lines(real_train)
    random.Random(5).shuffle(rows)
    real_val, real_fit = rows[:20], rows[20:]
    mix, val = [], []
    for task in TASKS:
        mix += lines(training_examples(task, 400, 11))
        val += lines(training_examples(task, 10, 99))[:5]
    mix += real_fit * 3
    mix += lines(from_hotpotqa_evidence(SHARED / "hotpotqa_train_evidence_500.jsonl"))
    random.Random(7).shuffle(mix)
    (out / "mix.jsonl").write_text("".join(mix))
    (out / "val.jsonl").write_text("".join(val + real_val))
    print(f"{out}/mix.jsonl: {len(mix)} episodes; {out}/val.jsonl: {len(val + real_val)}",
          file=sys.stderr)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("qrag-train"))
