"""The training switches run, and change what they say (1-layer encoder, 1-2 updates).
Their maths is checked by hand in test_pqn_rollout.py and test_pqn_math.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from conftest import run_qrag

from qrag_cli.bench.tasks import two_hop_task
from qrag_cli.datasets import write_examples
from qrag_cli.model import from_base
from qrag_cli.pqn import (
    TrainConfig,
    collect,
    imitation_loss,
    load_checkpoint,
    q_online,
    targets,
    td_loss,
    trainable,
)


def test_ablation_flags_reach_the_run(tmp_path: Path) -> None:
    """--no-target bootstraps from the online encoders (no target copy moves apart);
    --no-soft, --no-twin, --step-penalty, --positions relative and --warm-start are the
    run's settings, recorded in the model it writes."""
    write_examples(two_hop_task(6, seed=0), tmp_path / "train.jsonl")
    write_examples(two_hop_task(2, seed=1), tmp_path / "eval.jsonl")
    out = tmp_path / "model"
    run_qrag(
        "train",
        str(tmp_path / "train.jsonl"),
        "--eval",
        str(tmp_path / "eval.jsonl"),
        "--out",
        str(out),
        "--layers",
        "1",
        "--batch",
        "2",
        "--budget",
        "2",
        "--updates",
        "2",
        "--warm-start",
        "1",
        "--eval-every",
        "2",
        "--no-target",
        "--no-soft",
        "--no-twin",
        "--step-penalty",
        "--positions",
        "relative",
        check=True,
    )
    config = json.loads((out / "config.json").read_text())
    train = config["train"]
    assert (train["target_network"], train["soft_value"], train["twin"]) == (False,) * 3
    assert train["step_penalty"] and train["warm_start"] == 1
    assert train["positions"] == config["positions"] == "relative"
    phases = [
        json.loads(line).get("phase")
        for line in (out / "train_log.jsonl").open()
        if '"event": "update"' in line
    ]
    assert phases == ["imitation", "q-learning"]
    # With target networks, each update moves the copies by tau only: they would differ.
    model, _, state = load_checkpoint(tmp_path / ".model.checkpoint")
    online = model.state_encoder.state_dict()
    assert {k[len("target_state.") :] for k in state if k.startswith("target_state.")} == set(
        online
    )
    assert all(torch.equal(state["target_state." + k], v) for k, v in online.items())
    assert any(
        not torch.equal(state["target_state." + k], v)
        for k, v in from_base(layers=1).state_encoder.state_dict().items()
    )


def _one_rollout(model, cfg: TrainConfig):
    return collect(model, two_hop_task(2, seed=3), cfg, 0, np.random.default_rng(0))


def test_frozen_chunks_update_moves_e_s_only() -> None:
    """--frozen-chunks: an update (imitation and Q-learning losses) leaves E_a exactly
    the base encoder and moves E_s."""
    model = trainable(from_base(layers=1), frozen_chunks=True)
    cfg = TrainConfig(budget=2, frozen_chunks=True)
    rollout = _one_rollout(model, cfg)
    chunk_before = {k: v.clone() for k, v in model.chunk_encoder.state_dict().items()}
    state_before = {k: v.clone() for k, v in model.state_encoder.state_dict().items()}
    returns = targets(model, model.state_encoder, model.chunk_encoder, rollout, cfg, 0.05)
    loss = td_loss(*q_online(model, rollout), returns, True) + imitation_loss(model, rollout, 0.05)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    loss.backward()
    opt.step()
    assert all(p.grad is None for p in model.chunk_encoder.parameters())
    after = model.chunk_encoder.state_dict()
    assert all(torch.equal(after[k], v) for k, v in chunk_before.items())
    assert any(
        not torch.equal(model.state_encoder.state_dict()[k], v) for k, v in state_before.items()
    )


def test_only_lexical_gradients_reach_the_two_weights_only() -> None:
    """--only-lexical (train_encoder False): the loss's Q reads stored vectors, so the
    lexical weights are all that a gradient reaches."""
    model = trainable(from_base(layers=1), frozen_chunks=True, lexical=[0.2, 0.2])
    cfg = TrainConfig(budget=2, train_encoder=False)
    rollout = _one_rollout(model, cfg)
    q1, q2 = q_online(model, rollout, grad=False)
    td_loss(q1, q2, torch.ones_like(q1), True).backward()
    assert model.lexical_weights.grad.abs().sum() > 0
    encoders = [*model.state_encoder.parameters(), *model.chunk_encoder.parameters()]
    assert all(p.grad is None for p in encoders)
