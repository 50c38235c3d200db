"""Build the training data for models/qrag-default (run by `make train-default`).

Writes, into the folder given (default: ./qrag-train):
  mix.jsonl  the bench's long-context tasks, 4K-token episodes in the bench's shape
             (the asked story among 3 others of the same task, seed 11; real bAbI
             qa1-qa3 stories come from the bAbI *train* files, the bench asks test ones),
             and real multi-hop questions in the pooled shape: each question's own
             paragraphs among those of 24 other training questions (~300 candidates).
             The real questions are the training half of the pooled HotpotQA+MuSiQue
             split (`qrag bench` holds the other half out), drawn 4 times, and the 500
             HotpotQA questions of hotpotqa_train_500b.json (never in the bench), twice;
  val-real.jsonl, val-gen.jsonl
             20 real training-half questions pooled the same way (never in mix.jsonl),
             and 5 generated episodes per task (seed 99): best-on-eval selection and
             threshold calibration only ever see these.
  val-bench.jsonl
             the layout bench's validation questions (the bench's held-out half), each
             among the paragraphs of 24 others: val-real and val-gen are too small and
             too easy to tell checkpoints apart (both stage-1 encoders score 0.947 on
             them), so best-on-eval also reads this validation set. Never trained on.
The bench's long-context stories (other seeds) and the layout bench's test split are in
none of the files.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from qrag_cli.bench.longctx import TASKS, training_examples
from qrag_cli.datasets import (
    Example,
    from_hotpotqa,
    real_examples,
    shared_data,
    split,
    write_examples,
)

GENERATED_PER_TASK = 300
EXTRA_HOTPOT = "hotpotqa_train_500b.json"
EXTRA_DRAWS = 2
STORIES_PER_DOC = 4
POOLED_WITH = 24  # other questions whose paragraphs join each real episode
REAL_DRAWS = 4


def pooled(example: Example, others: list[Example], rng: random.Random) -> Example:
    """`example` with the paragraphs of `others` mixed in, support re-pointed."""
    chunks = list(dict.fromkeys([*example.chunks, *(c for o in others for c in o.chunks)]))
    gold = {example.chunks[i] for i in example.support}
    rng.shuffle(chunks)
    return Example(
        id=f"{example.id}-pooled",
        question=example.question,
        chunks=tuple(chunks),
        support=tuple(sorted(i for i, c in enumerate(chunks) if c in gold)),
        answer=example.answer,
    )


def pool_all(
    examples: list[Example], others: list[Example], draws: int, seed: int
) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for _ in range(draws):
        for ex in examples:
            rest = [o for o in others if o.id != ex.id]
            out.append(pooled(ex, rng.sample(rest, POOLED_WITH), rng))
    return out


def main(out: Path) -> None:
    real = real_examples()
    if real is None:
        sys.exit(f"error: no HotpotQA/MuSiQue samples in {shared_data()}")
    out.mkdir(parents=True, exist_ok=True)
    real_train, held_out = split(real, 0.5, 0)  # the same split as `qrag bench --seed 0`
    random.Random(5).shuffle(real_train)
    real_val, real_fit = real_train[:20], real_train[20:]
    mix, val_gen = [], []
    for task in TASKS:
        mix += training_examples(task, GENERATED_PER_TASK, 11, stories=STORIES_PER_DOC)
        val_gen += training_examples(task, 5, 99, stories=STORIES_PER_DOC)
    mix += pool_all(real_fit, real_fit, REAL_DRAWS, 3)
    extra = list(
        from_hotpotqa(
            shared_data() / EXTRA_HOTPOT, on_problem=lambda p: print(f"note: {p}", file=sys.stderr)
        )
    )
    mix += pool_all(extra, [*extra, *real_fit], EXTRA_DRAWS, 6)
    random.Random(7).shuffle(mix)
    n_mix = write_examples(mix, out / "mix.jsonl")
    n_real = write_examples(pool_all(real_val, real_fit, 1, 4), out / "val-real.jsonl")
    n_gen = write_examples(val_gen, out / "val-gen.jsonl")
    n_bench = write_examples(pool_all(held_out, held_out, 1, 8), out / "val-bench.jsonl")
    print(
        f"{out}: mix.jsonl {n_mix} episodes, val-real.jsonl {n_real}, "
        f"val-gen.jsonl {n_gen}, val-bench.jsonl {n_bench}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("qrag-train"))
