"""THE stop rule: when an episode ends before its step ceiling.

One rule for `qrag ask`, `qrag mcp`, `qrag train eval`, the bench and training's
calibration: `rule_for(model, ...)` builds it, `StopRule.fires` decides, and
`run_episodes` (episode.py) is the only caller that acts on it. A decision reads what Q
already computed at that step (`StepView`): no extra encoding, no extra scoring.

Two kinds of model rule:
- a Q threshold (`ModelConfig.threshold`): stop before a pick whose Q is below it;
- a stop head (`ModelConfig.stop_head`): logistic regression over a few features of the
  step (best Q, its ratio to the first pick's, the margin to the runner-up, the step
  index, the lexical queries' raw BM25 maxima, and P(the question needs no more chunks
  than were picked) from the head's count model), estimating P(the gold evidence is
  already complete); stop when it reaches the head's `cut`. Plain JSON numbers in
  config.json, fitted on top of a trained model (`qrag train stop`).
Neither fires before the first pick.

The count model (`CountModel`) reads E_s of the question alone, the state vector the
first step encodes anyway: how many chunks a question needs is mostly in how it is asked
("Where is X?" one, "Where was X before Y?" three). BENCHMARKS.md "Stop: the question's
chunk count" measured it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np

from qrag_cli.types import ModelError

FEATURES = (
    "q",  # the best candidate's Q
    "q_over_first",  # ... divided by the first pick's Q
    "q_minus_first",
    "margin",  # best Q minus the runner-up's
    "steps_taken",
    "log_bm25_question",  # log(1 + raw BM25 max of the question's words, what is left)
    "log_bm25_picked",  # log(1 + raw BM25 max of the picked chunks' new words)
    "count_done",  # P(the question needs at most the chunks picked), CountModel
)


@dataclass(frozen=True)
class StepView:
    """What the rule sees before a pick: `q`, the top candidates' Q, best first;
    `first_q`, the first pick's Q (None before it); `bm25_max`, the two lexical queries'
    raw BM25 maxima over the chunks left (None for a dense model); `count_probs`, the count
    model's P(the question needs 1, 2, ... chunks) (None: the rule has none)."""

    step: int  # 0-based: picks already taken
    q: np.ndarray
    first_q: float | None = None
    bm25_max: tuple[float, float] | None = None
    count_probs: np.ndarray | None = None


def features(view: StepView) -> np.ndarray:
    best = float(view.q[0])
    first = best if view.first_q is None else view.first_q
    ratio = best / first if abs(first) > 1e-6 else 1.0
    margin = best - float(view.q[1]) if len(view.q) > 1 else 0.0
    lex = view.bm25_max or (0.0, 0.0)
    probs = view.count_probs
    count_done = float(probs[: view.step].sum()) if probs is not None else 0.0
    return np.array(
        [
            best,
            ratio,
            best - first,
            margin,
            float(view.step),
            math.log1p(max(lex[0], 0.0)),
            math.log1p(max(lex[1], 0.0)),
            count_done,
        ],
        dtype=np.float64,
    )


@dataclass
class CountModel:
    """P(a question needs 1, 2, ..., len(bias) chunks; the last: that many or more) =
    softmax(E_s(question) @ weights + bias): a linear read of the question's state vector."""

    weights: list[list[float]]  # [dim][classes]
    bias: list[float]

    @cached_property
    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:  # not a field: asdict skips it
        return np.asarray(self.weights, np.float64), np.asarray(self.bias, np.float64)

    def probs(self, question_vec: np.ndarray) -> np.ndarray:
        weights, bias = self._arrays
        z = np.asarray(question_vec, np.float64) @ weights + bias
        z = np.exp(z - z.max())
        return z / z.sum()

    @classmethod
    def from_dict(cls, data: dict) -> CountModel:
        weights = [[float(v) for v in row] for row in data["weights"]]
        bias = [float(v) for v in data["bias"]]
        if not bias or any(len(row) != len(bias) for row in weights):
            raise ValueError("count model sizes differ")
        if not all(math.isfinite(v) for row in [bias, *weights] for v in row):
            raise ValueError("count model values are not finite")
        return cls(weights, bias)


@dataclass
class StopHead:
    """P(evidence complete) = sigmoid(weights . (features - mean) / scale + bias)."""

    weights: list[float]
    bias: float
    mean: list[float]
    scale: list[float]
    cut: float = 0.5
    """Stop when P(complete) >= cut (chosen on eval data)."""
    count_model: CountModel | None = None
    """Reads the question's chunk count for `count_done` (None: that feature is 0)."""

    def prob(self, x: np.ndarray) -> np.ndarray:
        z = (np.atleast_2d(x) - np.asarray(self.mean)) / np.asarray(self.scale)
        logit = z @ np.asarray(self.weights) + self.bias
        return 1.0 / (1.0 + np.exp(-np.clip(logit, -60, 60)))

    def to_dict(self) -> dict:
        return {"features": list(FEATURES), **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> StopHead:
        if data.get("features") != list(FEATURES):
            raise ModelError(
                f"the model's stop head reads features {data.get('features')}, this qrag "
                f"computes {list(FEATURES)}; refit it with `qrag train stop`"
            )
        n = len(FEATURES)
        try:
            stored = data.get("count_model")
            head = cls(
                weights=[float(w) for w in data["weights"]],
                bias=float(data["bias"]),
                mean=[float(m) for m in data["mean"]],
                scale=[float(s) for s in data["scale"]],
                cut=float(data["cut"]),
                count_model=CountModel.from_dict(stored) if stored is not None else None,
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

    def count_probs(self, question_vec: np.ndarray | None) -> np.ndarray | None:
        """The head's P(the question needs 1, 2, ... chunks), from E_s of the question
        (None: no head, no count model, or no vector)."""
        if self.head is None or self.head.count_model is None or question_vec is None:
            return None
        return self.head.count_model.probs(question_vec)

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
    count_model = head.count_model if head is not None else None
    if count_model is not None and len(count_model.weights) != model_cfg.dim:
        raise ModelError(
            f"the model's stop head reads {len(count_model.weights)}-number question vectors, "
            f"its encoder makes {model_cfg.dim}; refit it with `qrag train stop`"
        )
    return StopRule(max_steps, model_cfg.threshold, head)


def evidence_view(step: int, evidence: Sequence, count_probs: np.ndarray | None = None) -> StepView:
    """The view the rule had before pick `step` of a greedy no-stop episode: that pick's
    Q and its alternatives', the first pick's Q, that step's BM25 maxima, and the
    question's chunk-count probabilities (`StopRule.count_probs` of the episode's
    `question_vec`)."""
    ev = evidence[step]
    q = np.array([ev.q, *(b for _, b in ev.alternatives)], dtype=np.float64)
    return StepView(step, q, evidence[0].q if step else None, ev.bm25_max, count_probs)
