"""Fact EM/F1, steps and stop-threshold calibration, all through `run_episodes` (greedy)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qrag_cli.datasets import Example
from qrag_cli.episode import StopRule, example_sources, run_episodes
from qrag_cli.qnet import QModel
from qrag_cli.types import Episode


def fact_scores(picked: Sequence[int], support: Sequence[int]) -> tuple[float, float]:
    """(fact EM, fact F1): EM = every gold chunk picked; F1 of picked vs gold sets."""
    got, gold = set(picked), set(support)
    hit = len(got & gold)
    em = float(gold <= got)
    if hit == 0:
        return em, 0.0
    precision, recall = hit / len(got), hit / len(gold)
    return em, 2 * precision * recall / (precision + recall)


def run_examples(
    model: QModel,
    examples: Sequence[Example],
    budget: int,
    threshold: float | None = None,
    batch: int = 32,
    cache: dict[str, np.ndarray] | None = None,
) -> list[Episode]:
    """Greedy episodes over each example's own chunks, exactly as `ask` acts."""
    episodes: list[Episode] = []
    for start in range(0, len(examples), batch):
        part = examples[start : start + batch]
        episodes += run_episodes(
            model,
            [ex.question for ex in part],
            example_sources(model, part, cache),
            StopRule(budget, threshold),
        )
    return episodes


@dataclass
class Metrics:
    fact_em: float
    fact_f1: float
    mean_steps: float
    n: int

    def to_dict(self) -> dict:
        return {
            "fact_em": round(self.fact_em, 4),
            "fact_f1": round(self.fact_f1, 4),
            "mean_steps": round(self.mean_steps, 3),
            "n": self.n,
        }


def score(
    episodes: Sequence[Episode], examples: Sequence[Example], cut: Sequence[int] | None = None
) -> Metrics:
    """Metrics of episodes, optionally truncated to `cut[i]` picks."""
    ems, f1s, steps = [], [], []
    for i, (ep, ex) in enumerate(zip(episodes, examples, strict=True)):
        picked = [ev.chunk_id for ev in ep.evidence][: cut[i] if cut else None]
        em, f1 = fact_scores(picked, ex.support)
        ems.append(em)
        f1s.append(f1)
        steps.append(len(picked))
    return Metrics(float(np.mean(ems)), float(np.mean(f1s)), float(np.mean(steps)), len(ems))


def _cut_at(episode: Episode, threshold: float) -> int:
    """Picks kept by the threshold rule: the first pick always, then while Q >= threshold."""
    keep = 1
    for ev in episode.evidence[1:]:
        if ev.q < threshold:
            break
        keep += 1
    return min(keep, len(episode.evidence))


def calibrate_threshold(
    episodes: Sequence[Episode], examples: Sequence[Example]
) -> tuple[float | None, Metrics, float]:
    """The Q threshold that maximises fact F1 on no-stop greedy episodes.

    Greedy episodes are deterministic, so cutting a full-budget episode where the rule
    would stop gives exactly what `ask` with that threshold returns. Also returns the
    share of episodes that stop at the right step (right after the last gold pick).
    """
    qs = sorted({ev.q for ep in episodes for ev in ep.evidence[1:]})
    if not qs:
        return None, score(episodes, examples), 0.0
    candidates = [qs[0] - 1e-6, *[(a + b) / 2 for a, b in itertools.pairwise(qs)], qs[-1] + 1e-6]
    if len(candidates) > 400:
        candidates = list(np.quantile(candidates, np.linspace(0, 1, 400)))
    best: tuple[float, float, float] | None = None
    for thr in candidates:
        m = score(episodes, examples, [_cut_at(ep, thr) for ep in episodes])
        key = (m.fact_f1, m.fact_em, thr)  # ties: the higher threshold (fewer steps)
        if best is None or key > best:
            best = key
    threshold = float(best[2])
    cuts = [_cut_at(ep, threshold) for ep in episodes]
    right = 0
    for ep, ex, cut in zip(episodes, examples, cuts, strict=True):
        picked = [ev.chunk_id for ev in ep.evidence]
        done_at = next(
            (t + 1 for t in range(len(picked)) if set(ex.support) <= set(picked[: t + 1])), None
        )
        right += done_at is not None and cut == done_at
    return threshold, score(episodes, examples, cuts), right / max(len(episodes), 1)


def evaluate(
    model: QModel,
    examples: Sequence[Example],
    budgets: Sequence[int],
    threshold: float | None = None,
) -> dict:
    """Fixed budgets, plus the stored (or given) threshold with the largest budget."""
    out: dict = {}
    for budget in budgets:
        episodes = run_examples(model, examples, budget)
        out[f"budget_{budget}"] = score(episodes, examples).to_dict()
    threshold = threshold if threshold is not None else model.cfg.threshold
    if threshold is not None:
        episodes = run_examples(model, examples, max(budgets), threshold)
        out["threshold"] = {"value": threshold, **score(episodes, examples).to_dict()}
    return out
