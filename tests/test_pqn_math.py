"""The maths of training, on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from qrag_cli.evaluate import calibrate_threshold, fact_scores
from qrag_cli.pqn import (
    TrainConfig,
    alpha_at,
    episode_rewards,
    lambda_returns,
    lr_at,
    polyak_update,
    soft_value,
    td_loss,
)
from qrag_cli.qvalue import relative_positions, rotate
from qrag_cli.types import Episode, Evidence


def test_lambda_returns_by_hand() -> None:
    r = torch.tensor([0.0, 0.0, 1.0])
    v = torch.tensor([0.5, 0.8, 0.0])  # V(s_1), V(s_2), (unused: terminal)
    g = lambda_returns(r, v, gamma=0.9, lam=0.5)
    g2 = 1.0
    g1 = 0.0 + 0.9 * (0.5 * 0.8 + 0.5 * g2)
    g0 = 0.0 + 0.9 * (0.5 * 0.5 + 0.5 * g1)
    assert g.tolist() == pytest.approx([g0, g1, g2])
    # lam = 1 -> Monte Carlo discounted return; lam = 0 -> one-step TD
    assert lambda_returns(r, v, 0.9, 1.0).tolist() == pytest.approx([0.81, 0.9, 1.0])
    assert lambda_returns(r, v, 0.9, 0.0).tolist() == pytest.approx([0.45, 0.72, 1.0])


def test_soft_value_by_hand() -> None:
    q = torch.tensor([1.0, 0.0])
    assert float(soft_value(q, 1.0)) == pytest.approx(math.log(math.e + 1))
    assert float(soft_value(q, 0.01)) == pytest.approx(1.0, abs=1e-3)  # -> max as alpha -> 0
    assert float(soft_value(q, 0.5, soft=False)) == 1.0


def test_polyak_update() -> None:
    target, online = nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)
    target.weight.data.fill_(0.0)
    online.weight.data.fill_(1.0)
    polyak_update(target, online, 0.1)
    assert target.weight.item() == pytest.approx(0.1)
    polyak_update(target, online, 0.1)
    assert target.weight.item() == pytest.approx(0.19)


def test_rewards_paid_once_when_complete() -> None:
    assert episode_rewards([3, 1, 5], [1, 3], False) == [0.0, 1.0, 0.0]
    assert episode_rewards([3, 1, 5], [1, 3], True) == [0.0, 1.0, 0.0]
    assert episode_rewards([3, 7, 1], [1, 3], True) == [0.0, 0.0, 0.5 + 0.5 * 2 / 3]
    assert episode_rewards([2, 4], [1], False) == [0.0, 0.0]


def test_twin_loss() -> None:
    q1, q2, g = torch.tensor([0.25]), torch.tensor([0.5]), torch.tensor([1.0])
    assert float(td_loss(q1, q2, g, twin=True)) == pytest.approx(0.5 * 0.25 + 0.5 * 0.0)
    assert float(td_loss(q1, q2, g, twin=False)) == pytest.approx(0.0625)


def test_schedules() -> None:
    cfg = TrainConfig(lr=1e-4, warmup=10, updates=110, alpha=0.1, alpha_final=0.01)
    assert lr_at(0, cfg) == pytest.approx(1e-5)
    assert lr_at(9, cfg) == pytest.approx(1e-4)
    assert lr_at(110, cfg) == pytest.approx(1e-5)
    assert alpha_at(0, cfg) == pytest.approx(0.1) and alpha_at(110, cfg) == pytest.approx(0.01)


def test_relative_positions_by_hand() -> None:
    # 10 chunks, picked 3 and 7: intervals [-1,3) [3,7) [7,10)
    pos = relative_positions(np.array([0, 2, 5, 9]), [7, 3], total=10)
    assert pos.tolist() == pytest.approx([9 * 1 / 4, 9 * 3 / 4, 10 + 9 * 2 / 4, 20 + 9 * 2 / 3])
    # nothing picked: one interval over the whole document, independent of its length
    assert relative_positions(np.array([50]), [], 100)[0] == pytest.approx(9 * 51 / 101)


def test_rotation_preserves_norm_and_depends_on_relative_angle() -> None:
    torch.manual_seed(0)
    v = torch.randn(2, 8)
    r = rotate(v, torch.tensor([3.0, 3.0]))
    assert torch.allclose(r.norm(dim=-1), v.norm(dim=-1), atol=1e-5)
    assert torch.allclose(rotate(v, torch.zeros(2)), v)
    a, b = rotate(v[:1], torch.tensor([2.0])), rotate(v[1:], torch.tensor([5.0]))
    a2, b2 = rotate(v[:1], torch.tensor([4.0])), rotate(v[1:], torch.tensor([7.0]))
    assert float(a @ b.T) == pytest.approx(float(a2 @ b2.T), abs=1e-5)


def test_fact_scores() -> None:
    assert fact_scores([1, 2], [1, 2]) == (1.0, 1.0)
    assert fact_scores([1, 5, 2, 7], [1, 2]) == (1.0, pytest.approx(2 / 3))
    assert fact_scores([5], [1, 2]) == (0.0, 0.0)


def test_threshold_calibration_by_hand() -> None:
    from qrag_cli.datasets import Example

    def ep(qs, ids):
        return Episode(
            "q",
            [
                Evidence(i + 1, q, c, "p", 0, 0, "", c)
                for i, (q, c) in enumerate(zip(qs, ids, strict=True))
            ],
            "budget",
        )

    # gold complete after 2 picks; the third pick has a low Q: best cut is after step 2
    eps = [ep([0.9, 0.8, 0.1], [1, 2, 3]), ep([0.9, 0.7, 0.2], [4, 5, 6])]
    exs = [Example("a", "q", ("",) * 7, (1, 2)), Example("b", "q", ("",) * 7, (4, 5))]
    thr, metrics, right = calibrate_threshold(eps, exs)
    assert 0.2 < thr <= 0.7 and metrics.fact_f1 == 1.0 and right == 1.0


def test_twin_halves_add_up_to_dense_plus_lexical() -> None:
    """Q1 = dense weight x first half of <s, a> + half the lexical term, Q2 likewise;
    Q = Q1 + Q2."""
    from types import SimpleNamespace

    from qrag_cli.qvalue import q_halves

    model = SimpleNamespace(
        lexical_weights=torch.tensor([0.2, 0.4]), dense_weight=torch.tensor(1.0), head_bias=None
    )
    state = torch.tensor([1.0, 2.0, 3.0, 4.0])
    chunks = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    features = torch.tensor([[0.5, 1.0], [0.0, 0.0]])
    q1, q2 = q_halves(model, state, chunks, features)
    lex = 0.5 * (0.2 * 0.5 + 0.4 * 1.0)  # 0.25 to each half of chunk 0
    assert q1.tolist() == pytest.approx([1.0 + lex, 2.0])
    assert q2.tolist() == pytest.approx([4.0 + lex, 3.0])
    dense = q_halves(
        SimpleNamespace(lexical_weights=None, dense_weight=None, head_bias=None),
        state,
        chunks,
        features,
    )
    assert (dense[0] + dense[1]).tolist() == pytest.approx([5.0, 5.0])
    model.dense_weight = torch.tensor(0.5)  # the learned dense weight scales each half
    q1, q2 = q_halves(model, state, chunks, features)
    assert q1.tolist() == pytest.approx([0.5 + lex, 1.0])
