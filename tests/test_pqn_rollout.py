"""One update's maths, unit by unit: `targets` (the soft lambda-return), the online Q of
the loss, the imitation loss (hand-computed on a toy model whose encoders are lookup
tables), and `collect` (which transitions an episode yields; real 1-layer encoder)."""

from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from qrag_cli import qfeatures, qspec, qvalue
from qrag_cli.bench.tasks import two_hop_task
from qrag_cli.episode import StopRule, greedy, run_episodes
from qrag_cli.evaluate import example_sources
from qrag_cli.model import ModelConfig, from_base
from qrag_cli.pqn import (
    Rollout,
    TrainConfig,
    Transition,
    collect,
    episode_rewards,
    imitation_loss,
    q_online,
    targets,
    trainable,
)
from qrag_cli.qnet import QModel
from qrag_cli.types import Episode


class Lookup(nn.Module):
    """A toy encoder: a sequence's vector is the row of its first token id."""

    def __init__(self, rows: list[list[float]]) -> None:
        super().__init__()
        self.rows = nn.Parameter(torch.tensor(rows, dtype=torch.float32))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.rows[input_ids[:, 0]]


S0, S1 = [1.0, 0.0], [2.0, 1.0]  # state vectors of token 0 and token 1
A0, A1, A2 = [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]  # chunk vectors of tokens 0, 1, 2


def toy_model(state_rows: list[list[float]], chunk_rows: list[list[float]], **settings) -> QModel:
    lexical = settings.pop("lexical", None)
    q = qspec.QSpec(weights=tuple(lexical)).to_json() if lexical else None
    cfg = ModelConfig(dim=2, shared=False, q=q, **settings)
    model = QModel(cfg, Lookup(state_rows), Lookup(chunk_rows), SimpleNamespace(pad_token_id=0), {})
    model.infer_dtype = torch.float32  # exact hand arithmetic, whatever the CPU
    return model


def toy_rollout(features: list[np.ndarray | None] | None = None) -> Rollout:
    """Two episodes of two steps. Example 0 has chunks (tokens) 0, 1, 2; example 1 has
    chunks 2, 0. States are single tokens, rewards are given."""
    steps = [
        (0, [0], 0, [], 0.0),
        (0, [1], 2, [0], 1.0),
        (1, [1], 0, [], 0.0),
        (1, [0], 1, [0], 0.5),
    ]
    features = features or [None] * len(steps)
    trs = [
        Transition(ex, len(before), state, action, before, reward, f)
        for (ex, state, action, before, reward), f in zip(steps, features, strict=True)
    ]
    # The rollout's own E_a vectors are twice the target network's: `targets` must read
    # the target network, unless E_a is frozen (then they are the same vectors).
    vecs = [2 * np.array([A0, A1, A2], np.float32), 2 * np.array([A2, A0], np.float32)]
    return Rollout(trs, 0.5, [[[0], [1], [2]], [[2], [0]]], vecs, [(0, 2), (0,)])


def soft(values: list[float], alpha: float) -> float:
    return alpha * math.log(sum(math.exp(v / alpha) for v in values))


GAMMA, LAM, ALPHA = 0.9, 0.6, 0.5


def expected_returns(v_episode0: float, v_episode1: float) -> list[float]:
    """G_T = r_T (terminal); G_0 = r_0 + gamma ((1 - lam) V(s_1) + lam G_1)."""
    return [
        0.0 + GAMMA * ((1 - LAM) * v_episode0 + LAM * 1.0),
        1.0,
        0.0 + GAMMA * ((1 - LAM) * v_episode1 + LAM * 0.5),
        0.5,
    ]


def run_targets(model: QModel, rollout: Rollout, **cfg) -> list[float]:
    # The online E_s is all zeros: the bootstrap must come from the target networks.
    target_state, target_chunk = Lookup([S0, S1]), Lookup([A0, A1, A2])
    settings = TrainConfig(**{"gamma": GAMMA, "lam": LAM, "top_k": 5, **cfg})
    return targets(model, target_state, target_chunk, rollout, settings, ALPHA).tolist()


def test_targets_soft_lambda_return_by_hand() -> None:
    model = toy_model([[0.0, 0.0]] * 2, [[0.0, 0.0]] * 3)
    # Episode 0, V(s_1): s_1 = S1 = (2, 1) over chunks A1 -> 1, A2 -> 3 (A0 was picked).
    # Episode 1, V(s_1): s_1 = S0 = (1, 0) over chunk A0 -> 1 (its chunk 0, A2, was picked).
    returns = run_targets(model, toy_rollout())
    assert returns == pytest.approx(expected_returns(soft([1.0, 3.0], ALPHA), 1.0))
    # Hard max (--no-soft) and a top-1 soft value are both the best available Q.
    assert run_targets(model, toy_rollout(), soft_value=False) == pytest.approx(
        expected_returns(3.0, 1.0)
    )
    assert run_targets(model, toy_rollout(), top_k=1) == pytest.approx(expected_returns(3.0, 1.0))
    # A frozen E_a is its own target network: the rollout's vectors (here 2x) are used.
    frozen = toy_model([[0.0, 0.0]] * 2, [[0.0, 0.0]] * 3, frozen_chunks=True)
    assert run_targets(frozen, toy_rollout()) == pytest.approx(
        expected_returns(soft([2.0, 6.0], ALPHA), 2.0)
    )


def test_targets_add_the_lexical_term_of_the_next_state() -> None:
    model = toy_model([[0.0, 0.0]] * 2, [[0.0, 0.0]] * 3, lexical=[1.0, 2.0])
    # Features of s_1 (the following transition's), [chunk, (question, picked)]:
    # episode 0 adds 1 * 0.5 to A1 and 2 * 0.25 to A2; episode 1 adds 2 * 1.0 to its A0.
    feats = [
        np.zeros((3, 2), np.float32),
        np.array([[1.0, 1.0], [0.5, 0.0], [0.0, 0.25]], np.float32),
        np.zeros((2, 2), np.float32),
        np.array([[0.0, 0.0], [0.0, 1.0]], np.float32),
    ]
    returns = run_targets(model, toy_rollout(feats))
    assert returns == pytest.approx(expected_returns(soft([1.5, 3.5], ALPHA), 3.0))


def turned(v: list[float], p: float) -> list[float]:
    """A 2-d vector rotated by p radians (rotary position p at dim 2)."""
    return [v[0] * math.cos(p) - v[1] * math.sin(p), v[0] * math.sin(p) + v[1] * math.cos(p)]


def dot(a: list[float], b: list[float]) -> float:
    return a[0] * b[0] + a[1] * b[1]


def test_targets_rotate_chunks_relative_to_the_next_state_picks() -> None:
    """dim 2: one rotary frequency (1), so a chunk at position p turns by p radians.
    Episode 0's s_1 picked chunk 0 of 3: chunks 1 and 2 sit at 10 + 9 * 1/3 = 13 and
    10 + 9 * 2/3 = 16. Episode 1's s_1 picked chunk 0 of 2: chunk 1 sits at 10 + 9/2."""
    model = toy_model([[0.0, 0.0]] * 2, [[0.0, 0.0]] * 3, positions="relative")
    v0 = soft([dot(S1, turned(A1, 13.0)), dot(S1, turned(A2, 16.0))], ALPHA)
    v1 = dot(S0, turned(A0, 14.5))
    assert run_targets(model, toy_rollout()) == pytest.approx(expected_returns(v0, v1), abs=1e-5)


def test_online_q_is_the_taken_action_halves_with_gradients() -> None:
    """Q1 = s[0] a[0], Q2 = s[1] a[1] (+ half the lexical term each) for the action taken
    at each transition, from the online encoders, gradients flowing into both."""
    feats = [
        np.array([[0.2, 0.0], [0.0, 0.0], [0.0, 0.0]], np.float32),
        np.zeros((3, 2)),
        np.zeros((2, 2)),
        np.array([[0.0, 0.0], [0.0, 0.5]], np.float32),
    ]
    feats = [f.astype(np.float32) for f in feats]
    model = toy_model([S0, S1], [A0, A1, A2], lexical=[1.0, 2.0])
    q1, q2 = q_online(model, toy_rollout(feats))
    # (state, action): (S0, A0) + 0.2; (S1, A2); (S1, A2 = example 1's chunk 0);
    # (S0, A0 = example 1's chunk 1) + 2 * 0.5.
    assert q1.tolist() == pytest.approx([1.0 + 0.1, 2.0, 2.0, 1.0 + 0.5])
    assert q2.tolist() == pytest.approx([0.0 + 0.1, 1.0, 1.0, 0.0 + 0.5])
    (q1 + q2).sum().backward()
    assert model.state_encoder.rows.grad.abs().sum() > 0
    assert model.chunk_encoder.rows.grad.abs().sum() > 0
    assert model.lexical_weights.grad.tolist() == pytest.approx([0.2, 0.5])
    # A frozen E_a: the rollout's vectors (2x), and no gradient can reach E_a.
    frozen = toy_model([S0, S1], [A0, A1, A2], frozen_chunks=True)
    q1, q2 = q_online(frozen, toy_rollout())
    assert (q1 + q2).tolist() == pytest.approx([2.0, 6.0, 6.0, 2.0])
    (q1 + q2).sum().backward()
    assert frozen.chunk_encoder.rows.grad is None
    # Relative positions: the taken chunk turned by its position among the picked ones;
    # the second step of episode 0 took chunk 2 of 3 after chunk 0 (position 16).
    rel = toy_model([S0, S1], [A0, A1, A2], positions="relative")
    q1, q2 = (q.detach() for q in q_online(rel, toy_rollout()))
    expected = 2 * (math.cos(16.0) - math.sin(16.0)) + (math.sin(16.0) + math.cos(16.0))
    assert float(q1[1] + q2[1]) == pytest.approx(expected, abs=1e-5)
    first = 9 * 1 / 4  # nothing picked: chunk 0 of 3 sits at 9 * (0 - (-1)) / (3 - (-1))
    assert float(q1[0] + q2[0]) == pytest.approx(math.cos(first), abs=1e-5)


def test_imitation_loss_by_hand() -> None:
    """Cross-entropy of softmax(Q / T) over the chunks not yet picked against the gold
    chunks not yet picked; a state whose gold is all picked teaches nothing."""
    model = toy_model([[1.0, 0.0], [0.0, 1.0]], [A0, A1, A2])
    t = 0.5
    # Example 0 (gold 0, 2): s = (1, 0) -> Q (1, 0, 1), gold left {0, 2};
    # then s = (0, 1) after chunk 0 -> Q (-, 1, 1), gold left {2}.
    loss0 = math.log(2 * math.exp(2) + 1) - math.log(2 * math.exp(2))
    loss1 = math.log(2 * math.exp(2)) - 2.0
    # Example 1 (gold 0; chunks A2, A0): s = (0, 1) -> Q (1, 0), gold left {0};
    # then chunk 0 is picked: nothing left to imitate, left out of the mean.
    loss2 = math.log(math.exp(2) + 1) - 2.0
    loss = imitation_loss(model, toy_rollout(), t)
    assert float(loss.detach()) == pytest.approx((loss0 + loss1 + loss2) / 3)
    loss.backward()
    assert model.chunk_encoder.rows.grad.abs().sum() > 0

    # Relative positions: each state's chunks turned by their place among its picks.
    def cross_entropy(q: dict[int, float], left: list[int]) -> float:
        return math.log(sum(math.exp(v / t) for v in q.values())) - math.log(
            sum(math.exp(q[g] / t) for g in left)
        )

    s0, s1 = [1.0, 0.0], [0.0, 1.0]
    first = {
        0: dot(s0, turned(A0, 2.25)),
        1: dot(s0, turned(A1, 4.5)),
        2: dot(s0, turned(A2, 6.75)),
    }  # nothing picked: 9 * (ordinal + 1) / 4
    second = {1: dot(s1, turned(A1, 13.0)), 2: dot(s1, turned(A2, 16.0))}  # after chunk 0
    other = {0: dot(s1, turned(A2, 3.0)), 1: dot(s1, turned(A0, 6.0))}  # 9 * (o + 1) / 3
    expected = (
        cross_entropy(first, [0, 2]) + cross_entropy(second, [2]) + cross_entropy(other, [0])
    ) / 3
    rel = toy_model([s0, s1], [A0, A1, A2], positions="relative")
    assert float(imitation_loss(rel, toy_rollout(), t).detach()) == pytest.approx(expected)


# ---- collect and the online Q against qvalue, with the real encoder (1 layer) -----------
def greedy_rollout(model: QModel, batch: list, cfg: TrainConfig) -> tuple[Rollout, list[Episode]]:
    """`collect` with a near-zero temperature, and the greedy episodes `ask` would run."""
    cfg = replace(cfg, random_updates=0, alpha=1e-9, alpha_final=1e-9)
    rollout = collect(model, batch, cfg, 0, np.random.default_rng(0))
    episodes = run_episodes(
        model,
        [ex.question for ex in batch],
        example_sources(model, batch),
        StopRule(cfg.budget),
        policy=greedy,
    )
    return rollout, episodes


@pytest.mark.parametrize(
    "settings",
    [
        {"lexical": [0.3, 0.2]},
        {"frozen_chunks": True, "positions": "relative"},
    ],
    ids=["hybrid", "frozen-relative"],
)
def test_collect_yields_one_transition_per_pick_and_q_is_qvalues(
    monkeypatch, settings: dict
) -> None:
    monkeypatch.setenv("QRAG_DTYPE", "fp32")  # the rollout and the loss in one precision
    model = trainable(from_base(layers=1), **settings)
    batch = two_hop_task(3, seed=4)
    cfg = TrainConfig(budget=3, step_penalty=True)
    rollout, episodes = greedy_rollout(model, batch, cfg)
    tok = model.tokenizer
    trs = rollout.transitions
    assert len(trs) == 3 * 3
    solved = [
        set(ex.support) <= {e.chunk_id for e in ep.evidence}
        for ex, ep in zip(batch, episodes, strict=True)
    ]
    assert rollout.solved == pytest.approx(np.mean(solved))
    for i, (ex, ep) in enumerate(zip(batch, episodes, strict=True)):
        mine = [tr for tr in trs if tr.example == i]
        picks = [ev.chunk_id for ev in ep.evidence]
        assert [tr.action for tr in mine] == picks  # the episode's own picks, in order
        assert [tr.step for tr in mine] == [0, 1, 2]
        assert [tr.before for tr in mine] == [[], picks[:1], picks[:2]]
        assert [tr.reward for tr in mine] == episode_rewards(picks, ex.support, True)
        # s_t = [CLS] question [SEP] picked chunks in document order, each + [SEP].
        question = tok.ids([ex.question])[0]
        for tr in mine:
            expected = [tok.cls_token_id, *question, tok.sep_token_id]
            for c in sorted(tr.before):
                expected += [*tok.ids([ex.chunks[c]])[0], tok.sep_token_id]
            assert tr.state == expected
            if qvalue.uses_lexical(model):
                assert tr.features.shape == (len(ex.chunks), qfeatures.FEATURES)
                assert (tr.features[tr.before] == 0).all()  # picked: no longer an action
            else:
                assert tr.features is None
        assert rollout.action_ids[i] == model.action_ids(ex.chunks)
        assert np.allclose(rollout.chunk_vecs[i], model.embed_chunks(list(ex.chunks)), atol=1e-5)
    # The loss's Q of each taken action is the Q the episode scored it with (qvalue),
    # through the stored vectors (no gradients) and through the encoders (gradients).
    scored = [ev.q for ep in episodes for ev in ep.evidence]
    for grad in (False, True):
        q1, q2 = q_online(model, rollout, grad=grad)
        assert (q1 + q2).tolist() == pytest.approx(scored, abs=1e-4)
