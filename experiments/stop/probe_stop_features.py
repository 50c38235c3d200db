"""Probe (issue 15): would a logistic stop head read the evidence better with more of
what Q computed at the step?

    python experiments/stop/probe_stop_features.py [N_TRAIN] [MODEL]

As experiments/stop/measure_stop.py: N_TRAIN (default 150) episodes of qrag-train/mix.jsonl (seed
0) fit each head, val-real + val-gen choose its cut (the fewest steps with fact EM within
0.02 of the fixed budget), and the bench's held-out real half and fresh generated
stories (6 per task, seed 2026) score it, at the model's training budget.

The extra features are read by wrapping qvalue.best and qvalue.lexical_features (a
probe, not the product): the best question match left over the best overall, the best
candidate's four lexical features, the runner-up's question feature, and how many chunks
left match the question fully. Prints one JSON line per feature set.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from measure_stop import stop_runs, stop_sets  # experiments/stop/: this script's folder

from qrag_cli import qfeatures, qvalue
from qrag_cli.evaluate import complete_at, score, stop_metrics
from qrag_cli.model import load_model
from qrag_cli.stop import evidence_view, features
from qrag_cli.stopfit import fewest_steps, head_cuts, logistic

EXTRA = 7  # extra features per decision (see the module docstring)
VARIANTS = {
    "today's 7": list(range(7)),
    "+ left/whole, + chunks fully matching": [*range(7), 7, 13],
    "+ best candidate's features": [*range(7), 8, 9, 10, 11, 12],
    "all 14": list(range(14)),
}

# (question, picked chunk ids) -> the extra features of the decision before the next pick
extras: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}
_last: dict[str, np.ndarray] = {}
_lexical_features, _best = qvalue.lexical_features, qvalue.best


def _recording_features(source, state, order=False, named=False):
    found = _lexical_features(source, state, order, named)
    _last["features"] = found.values
    return found


def _recording_best(model, state_vec, source, state, k):
    _last.clear()
    ranked = _best(model, state_vec, source, state, k)
    ids = ranked.ids
    feats = _last.get("features")
    row = np.zeros(EXTRA)
    if feats is not None and len(ids):
        left = np.ones(feats.shape[0], bool)
        left[list(state.exclude)] = False
        question_left = feats[left, qfeatures.QUESTION]
        row[0] = question_left.max(initial=0.0)  # best match left / best of all chunks
        row[1:5] = feats[ids[0]]
        row[5] = feats[ids[1], qfeatures.QUESTION] if len(ids) > 1 else 0.0
        row[6] = (question_left >= 0.999).sum()
    extras[(state.question, tuple(r.id for r in state.picked))] = row
    return ranked


def decisions(episodes, examples, columns):
    """One row per decision (before each pick but the first): its features, whether the
    gold set was already complete, and (episode, step)."""
    xs, ys, where = [], [], []
    for i, (ep, ex) in enumerate(zip(episodes, examples, strict=True)):
        done = complete_at([e.chunk_id for e in ep.evidence], ex.support)
        for t in range(1, len(ep.evidence)):
            key = (ep.question, tuple(e.chunk_id for e in ep.evidence[:t]))
            both = np.concatenate([features(evidence_view(t, ep.evidence)), extras[key]])
            xs.append(both[columns])
            ys.append(done is not None and done <= t)
            where.append((i, t))
    return np.array(xs), np.array(ys, float), where


def cuts(head, episodes, examples, columns, cut):
    """Picks kept per episode when the head stops at P(complete) >= cut."""
    x, _, where = decisions(episodes, examples, columns)
    probs = head.prob(x) if len(x) else np.zeros(0)
    out = [len(ep.evidence) for ep in episodes]
    for (i, t), p in zip(where, probs, strict=True):
        if p >= cut and t < out[i]:
            out[i] = t
    return out


def main() -> None:
    # qvalue.best calls the name qvalue imported: the wrapper goes there.
    qvalue.lexical_features, qvalue.best = _recording_features, _recording_best
    n_train = int(sys.argv[1]) if len(sys.argv) > 1 else 150
    model = load_model(sys.argv[2] if len(sys.argv) > 2 else None)
    sets = stop_sets(Path("qrag-train"), n_train)
    _, runs, _ = stop_runs(model, sets)
    for name, columns in VARIANTS.items():
        head = logistic(*decisions(runs["train"], sets["train"], columns)[:2])
        x_val, _, _ = decisions(runs["val"], sets["val"], columns)
        val_eps, val_exs = runs["val"], sets["val"]
        best_cut = fewest_steps(
            head_cuts(head.prob(x_val)),
            lambda cut, h=head, e=val_eps, x=val_exs, c=columns: score(e, x, cuts(h, e, x, c, cut)),
            score(val_eps, val_exs).fact_em,
        )
        best_cut = 1.01 if best_cut is None else best_cut
        out: dict = {"features": name, "cut": best_cut}
        for split_name in ("val", "real", "gen"):
            eps, exs = runs[split_name], sets[split_name]
            done = [
                complete_at([e.chunk_id for e in ep.evidence], ex.support)
                for ep, ex in zip(eps, exs, strict=True)
            ]
            out[split_name] = stop_metrics(cuts(head, eps, exs, columns, best_cut), done)
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
