"""Probe (issue 15): does a stop head judge completeness better when it knows how many
gold chunks the question needs, or when it reads the state embedding itself?

    python experiments/stop/probe_stop_hops.py [N_TRAIN] [MODEL]

Same protocol as experiments/stop/probe_stop_features.py: N_TRAIN (default 300) episodes of
qrag-train/mix.jsonl (seed 0) fit each logistic head, val-real + val-gen choose its cut
(the fewest steps with fact EM within 0.02 of the fixed budget), and the bench's held-out
real half and fresh generated stories (6 per task, seed 2026) score it, at the model's
training budget (the ceiling).

Two extra inputs, both free at ask time (E_s already encodes them):
- hops: a softmax regression from the question's state vector (E_s of the question
  alone, the first step's state) to its gold chunk count (1-4), fitted on every
  mix.jsonl question, its L2 chosen by accuracy on the validation questions. The head
  reads P(count <= picks taken).
- the state vector of the decision (384 numbers), appended to the head's features.

Also prints the bounds of rules that stop after a fixed count (the true gold count, an
oracle, and the predicted one) and the count head's trade-off at other cuts (SWEEP).
One JSON line per rule.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from measure_stop import stop_runs, stop_sets  # experiments/stop/: this script's folder

from qrag_cli import qstate, qvalue
from qrag_cli.datasets import load_examples
from qrag_cli.evaluate import Metrics, complete_at, score, stop_metrics
from qrag_cli.model import load_model
from qrag_cli.stop import evidence_view, features
from qrag_cli.stopfit import (
    COUNT_L2,
    MAX_COUNT,
    count_accuracy,
    fewest_steps,
    gold_counts,
    head_cuts,
    logistic,
    softmax_regression,
)

SETS = ("train", "val", "real", "gen")
SWEEP = (0.5, 0.7, 0.8, 0.9, 0.95, 0.97)  # cuts the trade-off is printed at

# (question, picked chunk ids) -> the state vector E_s read before the next pick
state_vecs: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}
_best = qvalue.best


collisions = 0  # keys met twice with different vectors (same question text and picks)


def _recording_best(model, state_vec, source, state, k, bm25_max=None):
    global collisions
    key = (state.question, tuple(r.id for r in state.picked))
    if key in state_vecs and not np.allclose(state_vecs[key], state_vec):
        collisions += 1
    state_vecs[key] = np.array(state_vec)
    return _best(model, state_vec, source, state, k, bm25_max)


def question_vectors(model, examples) -> np.ndarray:
    """E_s of each question alone, as the first step of an episode encodes it."""
    states = qstate.start(model, [ex.question for ex in examples])
    return model.embed_states([qstate.state_tokens(model, s) for s in states])


def main() -> None:
    qvalue.best = _recording_best
    n_train = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    model = load_model(sys.argv[2] if len(sys.argv) > 2 else None)
    sets = stop_sets(Path("qrag-train"), n_train)
    _, runs, _ = stop_runs(model, sets)
    done = {
        name: [
            complete_at([e.chunk_id for e in ep.evidence], ex.support)
            for ep, ex in zip(runs[name], sets[name], strict=True)
        ]
        for name in SETS
    }
    counts = {name: gold_counts(sets[name]) for name in SETS}

    # The count model: every mix question (no episodes: their vectors are encoded here);
    # L2 by accuracy on the validation questions.
    mix = load_examples(Path("qrag-train") / "mix.jsonl")
    mix_x = question_vectors(model, mix)
    fits = {l2: softmax_regression(mix_x, gold_counts(mix) - 1, MAX_COUNT, l2) for l2 in COUNT_L2}
    accuracy = {l2: count_accuracy(f, runs["val"], sets["val"]) for l2, f in fits.items()}
    l2 = max(accuracy, key=lambda k: (accuracy[k], k))
    probs = {
        name: np.stack([fits[l2].probs(ep.question_vec) for ep in runs[name]]) for name in SETS
    }
    held_accuracy = {
        name: round(count_accuracy(fits[l2], runs[name], sets[name]), 3) for name in SETS
    }
    print(json.dumps({"count_l2": l2, "val_accuracy": accuracy, "accuracy": held_accuracy}))
    print(json.dumps({"state_vector_collisions": collisions}))

    def em(name: str, cut: list[int]) -> Metrics:
        return score(runs[name], sets[name], cut)

    def decisions(name: str, hops: bool, state: bool):
        xs, ys, where = [], [], []
        for i, ep in enumerate(runs[name]):
            for t in range(1, len(ep.evidence)):
                question_probs = probs[name][i] if hops else None  # count_done is 0 without
                row = [features(evidence_view(t, ep.evidence, question_probs))]
                if state:
                    key = (ep.question, tuple(e.chunk_id for e in ep.evidence[:t]))
                    row.append(state_vecs[key])
                xs.append(np.concatenate(row))
                ys.append(done[name][i] is not None and done[name][i] <= t)
                where.append((i, t))
        return np.array(xs), np.array(ys, float), where

    def cuts(head, name: str, hops: bool, state: bool, cut: float) -> list[int]:
        x, _, where = decisions(name, hops, state)
        out = [len(ep.evidence) for ep in runs[name]]
        for (i, t), p in zip(where, head.prob(x) if len(x) else [], strict=True):
            if p >= cut and t < out[i]:
                out[i] = t
        return out

    def report(rule: str, steps: dict[str, list[int]], **extra) -> None:
        out = {"rule": rule, **extra}
        for name in ("val", "real", "gen"):
            m = stop_metrics(steps[name], done[name])
            out[name] = {k: round(v, 3) if isinstance(v, float) else v for k, v in m.items()}
        print(json.dumps(out), flush=True)

    full = {name: [len(ep.evidence) for ep in runs[name]] for name in SETS}
    report("fixed budget", full)
    report(
        "stop after the true gold count (oracle)",
        {n: [min(int(c), f) for c, f in zip(counts[n], full[n], strict=True)] for n in SETS},
    )
    report(
        "stop after the predicted gold count",
        {
            n: [min(int(p.argmax()) + 1, f) for p, f in zip(probs[n], full[n], strict=True)]
            for n in SETS
        },
    )
    variants = [
        ("today's 7", False, False, 1e-2),
        ("7 + P(count <= picks)", True, False, 1e-2),
        ("7 + state vector", False, True, 1e-1),
        ("7 + P(count <= picks) + state vector", True, True, 1e-1),
    ]
    for rule, hops, state, reg in variants:
        head = logistic(*decisions("train", hops, state)[:2], l2=reg)
        x_val = decisions("val", hops, state)[0]
        cut = fewest_steps(
            head_cuts(head.prob(x_val)),
            lambda c, h=head, a=hops, s=state: em("val", cuts(h, "val", a, s, c)),
            em("val", full["val"]).fact_em,
        )
        cut = 1.01 if cut is None else float(cut)
        steps = {name: cuts(head, name, hops, state, cut) for name in SETS}
        report(rule, steps, cut=round(cut, 3))
        if hops and not state:  # the trade-off at other cuts: right steps vs EM lost
            for other in SWEEP:
                steps = {name: cuts(head, name, hops, state, other) for name in SETS}
                report(f"{rule}, cut {other}", steps, cut=other)


if __name__ == "__main__":
    main()
