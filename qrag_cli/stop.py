"""THE stop rule: when an episode ends before its step ceiling.

One rule for `qrag ask`, `qrag mcp`, `qrag train eval`, the bench and training's
calibration: `rule_for(model, ...)` builds it, `StopRule.fires` decides, and
`run_episodes` (episode.py) is the only caller that acts on it. A decision reads what Q
already computed at that step (`StepView`): no extra encoding, no extra scoring.

Two kinds of model rule:
- a Q threshold (`ModelConfig.threshold`): stop before a pick whose Q is below it;
- a stop head (`ModelConfig.stop_head`): logistic regression over a few features of the
  step (best Q, its ratio to the first pick's, the margin to the runner-up, the step
  index, the lexical queries' raw BM25 maxima), estimating P(the gold evidence is
  already complete); stop when it reaches the head's `cut`. Plain JSON numbers in
  config.json, fitted on top of a trained model (`qrag train stop`).
Neither fires before the first pick.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

FEATURES = (
    "q",  # the best candidate's Q
    "q_over_first",  # ... divided by the first pick's Q
    "q_minus_first",
    "margin",  # best Q minus the runner-up's
    "steps_taken",
    "log_bm25_question",  # log(1 + raw BM25 max of the question's words, what is left)
    "log_bm25_picked",  # log(1 + raw BM25 max of the picked chunks' new words)
)


@dataclass(frozen=True)
class StepView:
    """What the rule sees before a pick: `q`, the top candidates' Q, best first;
    `first_q`, the first pick's Q (None before it); `bm25_max`, the two lexical queries'
    raw BM25 maxima over the chunks left (None for a dense model)."""

    step: int  # 0-based: picks already taken
    q: np.ndarray
    first_q: float | None = None
    bm25_max: tuple[float, float] | None = None


def features(view: StepView) -> np.ndarray:
    best = float(view.q[0])
    first = best if view.first_q is None else view.first_q
    ratio = best / first if abs(first) > 1e-6 else 1.0
    margin = best - float(view.q[1]) if len(view.q) > 1 else 0.0
    lex = view.bm25_max or (0.0, 0.0)
    return np.array(
        [
            best,
            ratio,
            best - first,
            margin,
            float(view.step),
            math.log1p(max(lex[0], 0.0)),
            math.log1p(max(lex[1], 0.0)),
        ],
        dtype=np.float64,
    )


@dataclass
class StopHead:
    """P(evidence complete) = sigmoid(weights . (features - mean) / scale + bias)."""

    weights: list[float]
    bias: float
    mean: list[float]
    scale: list[float]
    cut: float = 0.5
    """Stop when P(complete) >= cut (chosen on eval data)."""

    def prob(self, x: np.ndarray) -> np.ndarray:
        z = (np.atleast_2d(x) - np.asarray(self.mean)) / np.asarray(self.scale)
        logit = z @ np.asarray(self.weights) + self.bias
        return 1.0 / (1.0 + np.exp(-np.clip(logit, -60, 60)))

    def to_dict(self) -> dict:
        return {"features": list(FEATURES), **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> StopHead:
        from qrag_cli.types import ModelError

        if data.get("features") != list(FEATURES):
            raise ModelError(
                f"the model's stop head reads features {data.get('features')}, this qrag "
                f"computes {list(FEATURES)}; refit it with `qrag train stop`"
            )
        n = len(FEATURES)
        try:
            head = cls(
                weights=[float(w) for w in data["weights"]],
                bias=float(data["bias"]),
                mean=[float(m) for m in data["mean"]],
                scale=[float(s) for s in data["scale"]],
                cut=float(data["cut"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"the model's stop head is malformed ({exc})") from exc
        numbers = [*head.weights, *head.mean, *head.scale, head.bias, head.cut]
        if not (len(head.weights) == len(head.mean) == len(head.scale) == n) or not all(
            math.isfinite(v) for v in numbers
        ):
            raise ModelError("the model's stop head is malformed (sizes or values)")
        return head


@dataclass
class StopRule:
    """The stop: `max_steps` is a ceiling; the model's rule (a stop head, or a Q
    threshold) ends the episode earlier once it judges the evidence complete."""

    max_steps: int = 4
    threshold: float | None = None
    """Stop before a pick whose Q is below this (never before the first pick)."""
    head: StopHead | None = None
    """A learned rule (takes the place of `threshold`)."""

    @property
    def active(self) -> bool:
        """Whether a rule besides the ceiling applies."""
        return self.head is not None or self.threshold is not None

    def fires(self, view: StepView, choice: int = 0) -> bool:
        """Stop instead of taking candidate `choice` (an index into `view.q`)."""
        if view.step == 0 or not self.active:
            return False
        if self.head is not None:
            return bool(self.head.prob(features(view))[0] >= self.head.cut)
        return float(view.q[choice]) < self.threshold


def rule_for(
    model_cfg, max_steps: int, threshold: float | None = None, off: bool = False
) -> StopRule:
    """The rule an episode of this model runs: none (`off`: a fixed budget), the given
    `threshold` (an override), else the model's own (its stop head, else its threshold)."""
    if off:
        return StopRule(max_steps)
    if threshold is not None:
        return StopRule(max_steps, threshold)
    head = StopHead.from_dict(model_cfg.stop_head) if model_cfg.stop_head else None
    return StopRule(max_steps, model_cfg.threshold, head)


def evidence_view(step: int, evidence: Sequence) -> StepView:
    """The view the rule had before pick `step` of a greedy no-stop episode: that pick's
    Q and its alternatives', the first pick's Q, that step's BM25 maxima."""
    ev = evidence[step]
    q = np.array([ev.q, *(b for _, b in ev.alternatives)], dtype=np.float64)
    return StepView(step, q, evidence[0].q if step else None, ev.bm25_max)
