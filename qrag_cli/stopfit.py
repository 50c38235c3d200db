"""Fitting a stop rule on top of a trained model, without touching its encoders.

Everything here reads greedy no-stop episodes: a stop only truncates a greedy episode
(evaluate.cut_episodes), so one run at the ceiling scores every candidate rule exactly as
`run_episodes` with that rule would.

- `choose_rule`: among candidate rules, the one with the fewest mean steps whose fact EM
  stays within `tolerance` of the fixed budget's (a rule that never fires always
  qualifies).
- `em_threshold`: a Q threshold chosen that way (instead of the F1-best one).
- `fit_head`: a logistic stop head (stop.StopHead) fitted on TRAINING episodes, label =
  "the gold set is already complete before this pick", its `cut` chosen on eval episodes;
  first its count model (`fit_count_model`: the question's gold chunk count from E_s of the
  question), whose output the head reads.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import TypeVar

import numpy as np
import torch

from qrag_cli.datasets import Example
from qrag_cli.evaluate import (
    Metrics,
    complete_at,
    cut_episodes,
    run_examples,
    score,
    stop_report,
)
from qrag_cli.qnet import QModel
from qrag_cli.stop import (
    FEATURES,
    CountModel,
    StopHead,
    StopRule,
    evidence_view,
    features,
)
from qrag_cli.types import Episode

TOLERANCE = 0.02  # fact EM a stop may lose against the fixed budget
MAX_COUNT = 4  # count classes: 1, 2, 3, 4 or more gold chunks
COUNT_L2 = (1e-4, 1e-3, 1e-2)  # the count model's L2, chosen by eval accuracy
T = TypeVar("T")


def choose_rule(
    episodes: Sequence[Episode],
    examples: Sequence[Example],
    rules: Sequence[StopRule],
    tolerance: float = TOLERANCE,
) -> StopRule:
    """The rule with the fewest mean steps whose fact EM is within `tolerance` of the
    fixed budget's (ties: the higher EM); none qualifying: a rule that never fires."""
    fixed = score(episodes, examples).fact_em
    chosen = fewest_steps(
        rules, lambda rule: score(cut_episodes(episodes, rule), examples), fixed, tolerance
    )
    if chosen is None:
        raise ValueError("no candidate rules")
    return chosen


def fewest_steps(
    candidates: Iterable[T],
    metrics: Callable[[T], Metrics],
    fixed_em: float,
    tolerance: float = TOLERANCE,
) -> T | None:
    """The candidate whose `metrics` have the fewest mean steps with fact EM within
    `tolerance` of `fixed_em` (ties: the higher EM, then the first), or None when none
    does: the one selection every stop rule and probe is chosen by."""
    best: tuple[float, float] | None = None
    chosen: T | None = None
    for candidate in candidates:
        m = metrics(candidate)
        if m.fact_em < fixed_em - tolerance - 1e-9:
            continue
        key = (m.mean_steps, -m.fact_em)
        if best is None or key < best:
            best, chosen = key, candidate
    return chosen


def head_cuts(probs: np.ndarray) -> list[float]:
    """The cuts a stop head is tried at, highest first: its eval probabilities' 201
    quantiles, and 1.01 (never stop)."""
    return sorted({1.01, *np.quantile(probs, np.linspace(0, 1, 201)).tolist()}, reverse=True)


def _threshold_candidates(episodes: Sequence[Episode]) -> list[float]:
    qs = sorted({ev.q for ep in episodes for ev in ep.evidence[1:]})
    if not qs:
        return []
    out = [qs[0] - 1e-6, *[(a + b) / 2 for a, b in itertools.pairwise(qs)], qs[-1] + 1e-6]
    return list(np.quantile(out, np.linspace(0, 1, 400))) if len(out) > 400 else out


def em_threshold(
    episodes: Sequence[Episode], examples: Sequence[Example], tolerance: float = TOLERANCE
) -> float | None:
    """The Q threshold with the fewest steps whose fact EM stays within `tolerance` of
    the fixed budget's (None: no second picks to judge)."""
    candidates = _threshold_candidates(episodes)
    if not candidates:
        return None
    budget = max(len(ep.evidence) for ep in episodes)
    # The lowest threshold first: ties in steps keep the one that fires least.
    rules = [StopRule(budget, float(t)) for t in candidates]
    return choose_rule(episodes, examples, rules, tolerance).threshold


def stop_rows(
    episodes: Sequence[Episode], examples: Sequence[Example], count_model: CountModel | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One row per decision a stop could take in greedy no-stop episodes (before each pick
    but the first): the features the rule reads (`count_done` from `count_model`), and whether
    the gold set was already complete (stopping there loses nothing)."""
    xs, ys = [], []
    vecs = _question_vecs(episodes) if count_model is not None else [None] * len(episodes)
    for ep, ex, vec in zip(episodes, examples, vecs, strict=True):
        done = complete_at([ev.chunk_id for ev in ep.evidence], ex.support)
        probs = None if count_model is None else count_model.probs(vec)
        for t in range(1, len(ep.evidence)):
            xs.append(features(evidence_view(t, ep.evidence, probs)))
            ys.append(done is not None and done <= t)
    return np.array(xs, np.float64).reshape(-1, len(FEATURES)), np.array(ys, np.float64)


def logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, iters: int = 50) -> StopHead:
    """L2-regularised logistic regression by Newton steps, on standardised features."""
    mean = x.mean(0)
    scale = x.std(0)
    scale[scale < 1e-9] = 1.0
    z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    w = np.zeros(z.shape[1])
    reg = np.full(z.shape[1], l2)
    reg[-1] = 0.0  # the bias is not shrunk
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w, -60, 60)))
        grad = z.T @ (p - y) / len(y) + reg * w
        hess = (z * (p * (1 - p))[:, None]).T @ z / len(y) + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return StopHead(
        weights=[float(v) for v in w[:-1]],
        bias=float(w[-1]),
        mean=[float(v) for v in mean],
        scale=[float(v) for v in scale],
    )


def gold_counts(examples: Sequence[Example]) -> np.ndarray:
    """Each example's gold chunk count, read as 1 to MAX_COUNT (the count classes)."""
    return np.array([min(max(len(set(ex.support)), 1), MAX_COUNT) for ex in examples])


def _question_vecs(episodes: Sequence[Episode]) -> np.ndarray:
    if any(ep.question_vec is None for ep in episodes):
        raise ValueError("an episode without its question vector (no step ran)")
    return np.stack([np.asarray(ep.question_vec, np.float64) for ep in episodes])


def softmax_regression(x: np.ndarray, labels: np.ndarray, classes: int, l2: float) -> CountModel:
    """Multinomial logistic regression (L-BFGS, L2 on the weights) of labels 0..classes-1."""
    xt = torch.tensor(x, dtype=torch.float64)
    yt = torch.tensor(labels, dtype=torch.long)
    w = torch.zeros(x.shape[1], classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        opt.zero_grad()
        value = torch.nn.functional.cross_entropy(xt @ w + b, yt) + l2 * (w**2).sum()
        value.backward()
        return value

    opt.step(loss)
    return CountModel(w.detach().tolist(), b.detach().tolist())


def count_accuracy(
    model: CountModel, episodes: Sequence[Episode], examples: Sequence[Example]
) -> float:
    """Share of the episodes' questions whose most likely count is their gold count."""
    guessed = np.array([model.probs(v).argmax() + 1 for v in _question_vecs(episodes)])
    return float((guessed == gold_counts(examples)).mean())


def fit_count_model(
    train_episodes: Sequence[Episode],
    train_examples: Sequence[Example],
    eval_episodes: Sequence[Episode],
    eval_examples: Sequence[Example],
) -> CountModel:
    """The count model: each training question's vector -> its gold chunk count (1 to
    MAX_COUNT), the L2 of COUNT_L2 with the best accuracy on the eval questions (ties:
    the stronger L2)."""
    x, y = _question_vecs(train_episodes), gold_counts(train_examples) - 1
    best: tuple[float, float] | None = None
    chosen: CountModel | None = None
    for l2 in COUNT_L2:
        model = softmax_regression(x, y, MAX_COUNT, l2)
        key = (count_accuracy(model, eval_episodes, eval_examples), l2)
        if best is None or key > best:
            best, chosen = key, model
    assert chosen is not None
    return chosen


def fit_head(
    train_episodes: Sequence[Episode],
    train_examples: Sequence[Example],
    eval_episodes: Sequence[Episode],
    eval_examples: Sequence[Example],
    tolerance: float = TOLERANCE,
    count_model: bool = True,
) -> StopHead:
    """A stop head fitted on training episodes (its count model first; `count_model`
    False for the ablation: `count_done` stays 0); its `cut` and the count model's L2
    chosen on the eval episodes."""
    count_model = (
        fit_count_model(train_episodes, train_examples, eval_episodes, eval_examples)
        if count_model
        else None
    )
    x, y = stop_rows(train_episodes, train_examples, count_model)
    if len(y) == 0 or y.min() == y.max():
        raise ValueError("the training episodes need stops that are both right and wrong")
    head = replace(logistic(x, y), count_model=count_model)
    ex, _ = stop_rows(eval_episodes, eval_examples, count_model)
    probs = head.prob(ex) if len(ex) else np.zeros(0)
    budget = max(len(ep.evidence) for ep in eval_episodes)
    rules = [StopRule(budget, head=replace(head, cut=float(c))) for c in head_cuts(probs)]
    return choose_rule(eval_episodes, eval_examples, rules, tolerance).head


def fit_model_stop(
    model: QModel,
    train_examples: Sequence[Example],
    eval_examples: Sequence[Example],
    budget: int,
    kind: str = "head",
    tolerance: float = TOLERANCE,
) -> dict:
    """Fit the model's stop (`kind`: "head", or "threshold" chosen for fact EM) on greedy
    episodes at `budget`, set it in `model.cfg` (the other kind is cleared) and return
    what it did on the eval examples (evaluate.stop_metrics, as `metrics.stop`; a head
    adds `count_accuracy`, its count model's share of eval questions read right)."""
    cache: dict[str, np.ndarray] = {}
    eval_runs = run_examples(model, eval_examples, budget, cache=cache)
    extra: dict = {}
    if kind == "head":
        train_runs = run_examples(model, train_examples, budget, cache=cache)
        head = fit_head(train_runs, train_examples, eval_runs, eval_examples, tolerance)
        model.cfg.stop_head, model.cfg.threshold = head.to_dict(), None
        rule = StopRule(budget, head=head)
        assert head.count_model is not None  # fit_head fits one unless told not to
        extra["count_accuracy"] = count_accuracy(head.count_model, eval_runs, eval_examples)
    else:
        threshold = em_threshold(eval_runs, eval_examples, tolerance)
        model.cfg.stop_head, model.cfg.threshold = None, threshold
        rule = StopRule(budget, threshold)
    return {
        "rule": kind,
        "budget": budget,
        "train_examples": len(train_examples) if kind == "head" else 0,
        "eval_examples": len(eval_examples),
        **stop_report(cut_episodes(eval_runs, rule), eval_runs, eval_examples),
        **extra,
    }
