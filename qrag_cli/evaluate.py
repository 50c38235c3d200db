"""Fact EM/F1, steps and stop-threshold calibration, all through `run_episodes` (greedy)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from qrag_cli.datasets import Example
from qrag_cli.episode import example_sources, run_episodes
from qrag_cli.qtext import QNetwork
from qrag_cli.stop import StopRule, evidence_view, rule_for
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
    model: QNetwork,
    examples: Sequence[Example],
    budget: int,
    threshold: float | None = None,
    batch: int = 32,
    cache: dict[str, np.ndarray] | None = None,
    rule: StopRule | None = None,
) -> list[Episode]:
    """Greedy episodes over each example's own chunks, exactly as `ask` acts: with `rule`
    (its ceiling is `budget`), else the threshold rule (none: the fixed budget)."""
    rule = StopRule(budget, threshold) if rule is None else replace(rule, max_steps=budget)
    episodes: list[Episode] = []
    for start in range(0, len(examples), batch):
        part = examples[start : start + batch]
        episodes += run_episodes(
            model,
            [ex.question for ex in part],
            example_sources(model, part, cache),
            rule,
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


def complete_at(picked: Sequence[int], support: Sequence[int]) -> int | None:
    """Picks after which every gold chunk is in: the right step to stop (None: never)."""
    gold, seen = set(support), set()
    for t, chunk in enumerate(picked, start=1):
        seen.add(chunk)
        if gold <= seen:
            return t
    return None


def stop_metrics(steps: Sequence[int], done_at: Sequence[int | None]) -> dict:
    """How a stop did against the evidence it gathered, per episode: `steps` taken with
    the stop, and `done_at`, the step after which the same model's fixed-budget episode
    holds every gold fact (None: not within the budget). A greedy episode with a stop is a
    prefix of the fixed-budget one, so the fact EM of both follows from these two.

    exact: stopped right after the last gold pick; over: stopped later (`over_steps` is the
    mean extra steps over all episodes); under: stopped before a pick within the budget
    would have completed it; never: not complete within the budget (the stop cannot help).
    The four shares add up to 1."""
    n = max(len(steps), 1)
    exact = over = under = never = extra = em_stop = 0
    for took, done in zip(steps, done_at, strict=True):
        if done is None:
            never += 1
            continue
        em_stop += took >= done
        if took == done:
            exact += 1
        elif took > done:
            over += 1
            extra += took - done
        else:
            under += 1
    em_fixed = sum(d is not None for d in done_at)
    return {
        "exact_share": round(exact / n, 4),
        "over_share": round(over / n, 4),
        "over_steps": round(extra / n, 3),
        "under_share": round(under / n, 4),
        "never_share": round(never / n, 4),
        "mean_steps": round(sum(steps) / n, 3),
        "fact_em_stop": round(em_stop / n, 4),
        "fact_em_fixed": round(em_fixed / n, 4),
        "n": len(steps),
    }


def stop_report(
    stopped: Sequence[Episode], fixed: Sequence[Episode], examples: Sequence[Example]
) -> dict:
    """`stop_metrics` of episodes run with the stop against the same model's fixed-budget
    episodes (the budget is the stop's ceiling)."""
    return stop_metrics(
        [len(ep.evidence) for ep in stopped],
        [
            complete_at([ev.chunk_id for ev in ep.evidence], ex.support)
            for ep, ex in zip(fixed, examples, strict=True)
        ],
    )


def _cut_at(episode: Episode, rule: StopRule | float) -> int:
    """Picks kept by a stop rule (a threshold: its rule) on a no-stop greedy episode."""
    if not isinstance(rule, StopRule):
        rule = StopRule(len(episode.evidence), rule)
    count_probs = rule.count_probs(episode.question_vec)
    for t in range(len(episode.evidence)):
        if rule.fires(evidence_view(t, episode.evidence, count_probs)):
            return t
    return len(episode.evidence)


def cut_episodes(episodes: Sequence[Episode], rule: StopRule | float | None) -> list[Episode]:
    """No-stop greedy episodes as a stop rule (a threshold: its rule) would have ended
    them: exactly what `run_episodes` with that rule returns (greedy episodes are
    deterministic; each step's evidence keeps what the rule read), without running them
    again."""
    if rule is None:
        return list(episodes)
    out = []
    for ep in episodes:
        cut = _cut_at(ep, rule)
        stop = "complete" if cut < len(ep.evidence) else ep.stop
        out.append(replace(ep, evidence=ep.evidence[:cut], stop=stop))
    return out


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
    done = [
        complete_at([ev.chunk_id for ev in ep.evidence], ex.support)
        for ep, ex in zip(episodes, examples, strict=True)
    ]
    right = stop_metrics(cuts, done)["exact_share"]
    return threshold, score(episodes, examples, cuts), right


def evaluate(
    model: QNetwork,
    examples: Sequence[Example],
    budgets: Sequence[int],
    threshold: float | None = None,
) -> dict:
    """Fixed budgets, plus the model's stop rule (or the given threshold) with the
    largest budget as its ceiling, and how that stop did (`stop`: see stop_metrics)."""
    # Greedy episodes are deterministic: a smaller budget's episode is a prefix of the
    # ceiling's, and the stop's is the ceiling's cut where the rule fires (cut_episodes),
    # so one run at the ceiling scores every budget and the stop.
    ceiling = max(budgets)
    full = run_examples(model, examples, ceiling)
    out: dict = {
        f"budget_{budget}": score(full, examples, [budget] * len(full)).to_dict()
        for budget in budgets
    }
    rule = rule_for(model.cfg, ceiling, threshold)
    if rule.active:
        episodes = cut_episodes(full, rule)
        name, value = ("head", rule.head.cut) if rule.head else ("threshold", rule.threshold)
        out[name] = {"value": value, **score(episodes, examples).to_dict()}
        out["stop"] = {
            "rule": name,
            "budget": ceiling,
            **stop_report(episodes, full, examples),
        }
    return out
