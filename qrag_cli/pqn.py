"""Q-RAG training: value-based soft Q-learning of the embedder, in one file (cleanrl style).

Read top to bottom: setup (seeding, `trainable`) -> pure maths (schedules, soft value,
lambda-returns, Polyak) -> rollout (the same `run_episodes` that `qrag ask` uses) -> targets
-> loss -> update -> eval, checkpoint, threshold calibration. The settings (`TrainConfig`)
live in config.py with every other default. Only the embedder learns; no LLM in the loop.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from qrag_cli import qfeatures, qstate, qvalue
from qrag_cli.config import TrainConfig
from qrag_cli.datasets import Example, data_hash, load_examples, split
from qrag_cli.episode import StopRule, boltzmann, example_sources, run_episodes
from qrag_cli.evaluate import calibrate_threshold, cut_episodes, run_examples, score, stop_report
from qrag_cli.files import atomic_output, atomic_write
from qrag_cli.lexical import bad_query
from qrag_cli.model import (
    BASE_NAME,
    from_base,
    load_model,
    load_qrag_folder,
    save_model,
    write_model_card,
)
from qrag_cli.qnet import QModel
from qrag_cli.types import DataError, ModelError, Problem, UsageError


# ---- setup: seeding, the model to train --------------------------------------------------
def seed_everything(seed: int) -> None:
    """The one seeding function: `qrag train` and `train eval` call it first."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def trainable(
    model: QModel,
    normalize: bool = False,
    scale: float = 0.1,
    positions: str = "none",
    frozen_chunks: bool = False,
    lexical: list[float] | None = None,
    lexical_query: str | None = None,
    chunk_cap: int | None = None,
) -> QModel:
    """Separate E_s and E_a copies of `model`, set up for Q-learning (raw dot products,
    scaled down so initial Q values are small, as in the reference).

    `frozen_chunks` keeps E_a the untrained base encoder (unit vectors, as it was trained)
    and gives only E_s the Q-learning settings: the trained model starts from exactly the
    base model's ranking, and chunk vectors never drift away from the space the base
    learned from a billion sentence pairs.

    `lexical` starts the lexical terms of Q at these weights (None: the model's own; []:
    none, the pure dense Q). `lexical_query` picks what the picked-chunk term asks for
    (None: the model's own). Every other part of the model's Q registry is kept.
    `chunk_cap` caps each picked chunk inside the state (None: the model's own).
    A frozen-chunk model trains on with its own settings (a second stage of training).
    """
    spec = model.cfg.spec()
    if lexical is not None:
        spec = replace(spec, weights=tuple(lexical) or None)
    if lexical_query is not None:
        spec = spec.with_params("picked_bm25", query=lexical_query)
    q = spec.to_json() if spec.weights is not None else None
    cap = chunk_cap if chunk_cap is not None else model.cfg.chunk_cap
    state = copy.deepcopy(model.state_encoder)
    if model.cfg.chunk_source() == "base":  # a second stage: E_a and every setting stay
        cfg = replace(model.cfg, threshold=None, q=q, chunk_cap=cap)
        chunk = model.chunk_encoder
    elif frozen_chunks:
        if not (model.cfg.chunk_source() == "shared" and model.cfg.base.startswith(BASE_NAME)):
            raise ModelError("--frozen-chunks trains from the untrained base model")
        state.normalize, state.scale = normalize, scale
        chunk = model.chunk_encoder.requires_grad_(False)
        cfg = replace(
            model.cfg,
            shared=False,
            threshold=None,
            positions=positions,
            frozen_chunks=True,
            state_normalize=normalize,
            state_scale=scale,
            q=q,
            chunk_cap=cap,
        )
    else:
        state.normalize, state.scale = normalize, scale
        chunk = copy.deepcopy(model.chunk_encoder)
        chunk.normalize, chunk.scale = normalize, scale
        cfg = replace(
            model.cfg,
            shared=False,
            normalize=normalize,
            scale=scale,
            threshold=None,
            positions=positions,
            q=q,
            chunk_cap=cap,
        )
    return QModel(cfg, state, chunk, model.tokenizer, dict(model.encoder_config), model.folder)


# ---- pure maths ---------------------------------------------------------------------------
def lr_at(update: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if update < cfg.warmup:
        return cfg.lr * (update + 1) / cfg.warmup
    progress = (update - cfg.warmup) / max(1, cfg.updates - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def alpha_at(update: int, cfg: TrainConfig) -> float:
    """Temperature annealed with the learning rate (after warm-up)."""
    ratio = lr_at(max(update, cfg.warmup), cfg) / cfg.lr
    return cfg.alpha_final + (cfg.alpha - cfg.alpha_final) * (ratio - 0.1) / 0.9


def soft_value(q: torch.Tensor, alpha: float, soft: bool = True) -> torch.Tensor:
    """V = alpha * logsumexp(Q / alpha) over the last axis (hard max when not soft)."""
    if not soft or alpha <= 0:
        return q.max(dim=-1).values
    return alpha * torch.logsumexp(q / alpha, dim=-1)


def lambda_returns(
    rewards: torch.Tensor, next_values: torch.Tensor, gamma: float, lam: float
) -> torch.Tensor:
    """G_t = r_t + gamma * ((1 - lam) * V(s_{t+1}) + lam * G_{t+1}); the last step is terminal.

    `rewards[t]` and `next_values[t]` (V of the state after step t) for one episode.
    """
    returns = torch.zeros_like(rewards)
    following = torch.zeros((), dtype=rewards.dtype)
    for t in reversed(range(len(rewards))):
        if t == len(rewards) - 1:
            returns[t] = rewards[t]
        else:
            returns[t] = rewards[t] + gamma * ((1 - lam) * next_values[t] + lam * following)
        following = returns[t]
    return returns


@torch.no_grad()
def polyak_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """target <- (1 - tau) * target + tau * online."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.mul_(1 - tau).add_(o.detach(), alpha=tau)


def episode_rewards(
    picks: Sequence[int], support: Sequence[int], step_penalty: bool
) -> list[float]:
    """Sparse terminal reward, paid once, at the step the gold set becomes complete."""
    gold, got, rewards = set(support), set(), []
    for pick in picks:
        done_before = gold <= got
        got.add(pick)
        complete = gold <= got and not done_before
        pay = (0.5 + 0.5 * len(gold) / len(got)) if step_penalty else 1.0
        rewards.append(pay if complete else 0.0)
    return rewards


# ---- one update's data ----------------------------------------------------------------------
@dataclass
class Transition:
    example: int  # index into the batch
    step: int
    state: list[int]  # token ids of s_t
    action: int  # chunk index
    before: list[int]  # chunks picked before step t
    reward: float
    features: np.ndarray | None  # lexical features of every chunk under s_t ([n, 3])


@dataclass
class Rollout:
    """One update's episodes, with every example tokenised once for collect, targets and
    the loss alike."""

    transitions: list[Transition]
    solved: float
    action_ids: list[list[list[int]]]  # per example, per chunk: E_a input ids
    chunk_vecs: list[np.ndarray]  # per example: the rollout's E_a vectors of its chunks
    support: list[tuple[int, ...]]  # per example: the gold chunks


def collect(
    model: QModel,
    batch: Sequence[Example],
    cfg: TrainConfig,
    update: int,
    rng: np.random.Generator,
    cache: dict[str, np.ndarray] | None = None,
) -> Rollout:
    """Roll out one episode per example with the behaviour policy (no gradients), then
    rebuild each visited state through `qvalue` exactly as the rollout saw it.

    `cache` (frozen E_a only) keeps chunk vectors across updates: they never change."""
    if update < cfg.random_updates:  # warm-up: uniform over every available chunk

        def policy(q: np.ndarray) -> int:
            return int(rng.integers(len(q)))

        alternatives = max(len(ex.chunks) for ex in batch)
    else:
        policy, alternatives = boltzmann(alpha_at(update, cfg), rng), cfg.top_k
    sources = example_sources(model, batch, cache)
    episodes = run_episodes(
        model,
        [ex.question for ex in batch],
        sources,
        StopRule(cfg.budget),
        policy=policy,
        alternatives=alternatives,
    )
    states = qstate.start(model, [ex.question for ex in batch])
    transitions, action_ids, solved = [], [], 0
    for i, (ex, ep) in enumerate(zip(batch, episodes, strict=True)):
        picks = [ev.chunk_id for ev in ep.evidence]
        rows = sources[i].rows(picks)
        rewards = episode_rewards(picks, ex.support, cfg.step_penalty)
        solved += set(ex.support) <= set(picks)
        state = states[i]
        for t, (pick, r) in enumerate(zip(picks, rewards, strict=True)):
            features = (
                qfeatures.lexical_features(
                    sources[i],
                    state,
                    order=qvalue.uses_order(model),
                    named=qvalue.uses_named(model),
                ).values
                if qvalue.uses_lexical(model)
                else None
            )
            transitions.append(
                Transition(i, t, qstate.state_tokens(model, state), pick, picks[:t], r, features)
            )
            state = qstate.pick(model, state, rows[t])
        action_ids.append(model.action_ids(ex.chunks))
    return Rollout(
        transitions,
        solved / len(batch),
        action_ids,
        [src.vectors(np.arange(len(src))) for src in sources],
        [ex.support for ex in batch],
    )


def _features(tr: Transition) -> torch.Tensor | None:
    return torch.from_numpy(tr.features) if tr.features is not None else None


@torch.no_grad()
def targets(
    model: QModel,
    target_state: nn.Module,
    target_chunk: nn.Module,
    rollout: Rollout,
    cfg: TrainConfig,
    alpha: float,
) -> torch.Tensor:
    """Lambda-returns bootstrapped from the target networks' soft value of s_{t+1}."""
    # Inference precision, as in the rollout: no gradients flow through the targets.
    if model.cfg.frozen_chunks:  # E_a is fixed: its target network is itself
        chunk_vecs = torch.from_numpy(np.concatenate(rollout.chunk_vecs))
    else:
        chunk_vecs = (
            model.encode(
                target_chunk,
                [ids for ex in rollout.action_ids for ids in ex],
                dtype=model.infer_dtype,
            )
            .float()
            .cpu()
        )
    offsets = np.cumsum([0] + [len(ex) for ex in rollout.action_ids])
    # s_{t+1} is the state of the episode's next transition; the last one is terminal.
    trs = rollout.transitions
    has_next = [k for k in range(len(trs) - 1) if trs[k + 1].example == trs[k].example]
    state_vecs = (
        model.encode(target_state, [trs[k + 1].state for k in has_next], dtype=model.infer_dtype)
        .float()
        .cpu()
    )
    next_values = torch.zeros(len(trs))
    for row, k in enumerate(has_next):
        i, following = trs[k].example, trs[k + 1]
        vecs = chunk_vecs[offsets[i] : offsets[i + 1]]
        vecs = qvalue.positioned(model, vecs, np.arange(len(vecs)), following.before, len(vecs))
        q1, q2 = qvalue.q_halves(model, state_vecs[row], vecs, _features(following))
        q = q1 + q2
        q[list(following.before)] = -torch.inf
        top = q.topk(min(cfg.top_k, int(torch.isfinite(q).sum()))).values
        next_values[k] = soft_value(top, alpha, cfg.soft_value) if len(top) else 0.0
    returns = torch.zeros(len(trs))
    by_episode: dict[int, list[int]] = {}
    for k, tr in enumerate(trs):
        by_episode.setdefault(tr.example, []).append(k)
    for rows in by_episode.values():
        rewards = torch.tensor([trs[k].reward for k in rows])
        returns[rows] = lambda_returns(rewards, next_values[rows], cfg.gamma, cfg.lam)
    return returns


def _state_vecs(model: QModel, rollout: Rollout, grad: bool, dtype: torch.dtype) -> torch.Tensor:
    states = model.encode(
        model.state_encoder, [tr.state for tr in rollout.transitions], grad=grad, dtype=dtype
    )
    return states if grad else states.clone()  # an inference tensor cannot enter autograd


def _chunk_vecs(
    model: QModel, rollout: Rollout, grad: bool, dtype: torch.dtype, device: torch.device
) -> list[torch.Tensor]:
    """Per example: E_a vectors of all its chunks, with gradients when E_a learns."""
    if model.cfg.frozen_chunks or not grad:
        return [torch.from_numpy(v).to(device) for v in rollout.chunk_vecs]
    flat = model.encode(
        model.chunk_encoder,
        [ids for ex in rollout.action_ids for ids in ex],
        grad=True,
        dtype=dtype,
    )
    return list(flat.split([len(ex) for ex in rollout.action_ids]))


def q_online(
    model: QModel, rollout: Rollout, grad: bool = True, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Q1, Q2 of the taken actions, with gradients (through the encoders when `grad`)."""
    trs = rollout.transitions
    states = _state_vecs(model, rollout, grad, dtype)
    if model.cfg.frozen_chunks or not grad:
        chunks = torch.from_numpy(
            np.stack([rollout.chunk_vecs[tr.example][tr.action] for tr in trs])
        ).to(states.device)
    else:
        chunks = model.encode(
            model.chunk_encoder,
            [rollout.action_ids[tr.example][tr.action] for tr in trs],
            grad=True,
            dtype=dtype,
        )
    chunks = torch.stack(
        [
            qvalue.positioned(
                model,
                chunks[k : k + 1],
                np.array([tr.action]),
                tr.before,
                len(rollout.action_ids[tr.example]),
            )[0]
            for k, tr in enumerate(trs)
        ]
    )
    features = (
        torch.from_numpy(np.stack([tr.features[tr.action] for tr in trs]))
        if trs and trs[0].features is not None
        else None
    )
    return qvalue.q_halves(model, states, chunks, features)


def imitation_loss(
    model: QModel,
    rollout: Rollout,
    temperature: float,
    grad: bool = True,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Warm start: every visited state ranks all of its chunks; the loss is the
    cross-entropy of softmax(Q / temperature) over the available chunks against the set
    of gold chunks not picked yet (any of them is a right next pick)."""
    states = _state_vecs(model, rollout, grad, dtype)
    chunk_vecs = _chunk_vecs(model, rollout, grad, dtype, states.device)
    losses = []
    for k, tr in enumerate(rollout.transitions):
        left = [g for g in rollout.support[tr.example] if g not in tr.before]
        if not left:
            continue  # the evidence is complete: nothing to imitate
        vecs = chunk_vecs[tr.example]
        vecs = qvalue.positioned(model, vecs, np.arange(len(vecs)), tr.before, len(vecs))
        q1, q2 = qvalue.q_halves(model, states[k], vecs, _features(tr))
        logits = (q1 + q2).float() / temperature
        if tr.before:
            logits = logits.index_fill(0, torch.tensor(tr.before), -torch.inf)
        losses.append(torch.logsumexp(logits, 0) - torch.logsumexp(logits[left], 0))
    return torch.stack(losses).mean() if losses else states.sum() * 0.0


def td_loss(q1: torch.Tensor, q2: torch.Tensor, returns: torch.Tensor, twin: bool) -> torch.Tensor:
    """Twin halves each regress to G (scaled x2 so Q1 + Q2 estimates G)."""
    if not twin:
        return nn.functional.mse_loss(q1 + q2, returns)
    return 0.5 * nn.functional.mse_loss(2 * q1, returns) + 0.5 * nn.functional.mse_loss(
        2 * q2, returns
    )


# ---- checkpoints (safetensors + JSON, never pickle) -------------------------------------
def save_checkpoint(
    folder: Path,
    model: QModel,
    target_state: nn.Module,
    target_chunk: nn.Module,
    opt: torch.optim.Optimizer,
    update: int,
    best: float,
    rng: np.random.Generator,
    cfg: TrainConfig,
    run_info: dict | None = None,
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_model(model, folder / "model", onnx=False)  # a checkpoint: torch resumes it
    tensors = {f"target_state.{k}": v.contiguous() for k, v in target_state.state_dict().items()}
    if not model.cfg.frozen_chunks:  # a frozen E_a is the base: nothing to keep
        tensors.update(
            {f"target_chunk.{k}": v.contiguous() for k, v in target_chunk.state_dict().items()}
        )
    opt_state = opt.state_dict()
    for idx, state in opt_state["state"].items():
        for key, value in state.items():
            tensors[f"opt.{idx}.{key}"] = torch.as_tensor(value).contiguous()
    with atomic_output(folder / "train_state.safetensors") as tmp:
        save_file(tensors, str(tmp))
    meta = {
        "update": update,
        "best": best,
        "rng": rng.bit_generator.state,
        **(run_info or {}),
        "param_groups": opt_state["param_groups"],
        "config": asdict(cfg),
    }
    atomic_write(folder / "train_state.json", json.dumps(meta))


def load_checkpoint(folder: Path) -> tuple[QModel, dict, dict[str, torch.Tensor]]:
    if not (folder / "train_state.json").is_file():
        raise UsageError(f"nothing to resume in {folder} (no train_state.json)")
    meta = json.loads((folder / "train_state.json").read_text())
    return (
        load_qrag_folder(folder / "model"),
        meta,
        load_file(str(folder / "train_state.safetensors")),
    )


# ---- the loop ------------------------------------------------------------------------------
@dataclass
class TrainResult:
    out: Path
    before: dict
    after: dict
    threshold: float | None
    stop_right_share: float
    updates_per_s: float
    episodes_per_s: float
    curve: list[dict] = field(default_factory=list)


def _evaluate(
    model: QModel,
    eval_sets: dict[str, list[Example]],
    budget: int,
    cache: dict[str, np.ndarray] | None = None,
) -> dict:
    """Fact EM/F1 over every eval example; with several eval files also each file's, and
    `select`, the mean of their fact EMs (what best-on-eval compares)."""
    everything = [ex for exs in eval_sets.values() for ex in exs]
    episodes = run_examples(model, everything, budget, cache=cache)
    metrics = score(episodes, everything).to_dict()
    metrics["select"] = metrics["fact_em"]
    if len(eval_sets) > 1:
        by_file, start = {}, 0
        for name, exs in eval_sets.items():
            by_file[name] = score(episodes[start : start + len(exs)], exs).to_dict()
            start += len(exs)
        metrics["by_file"] = by_file
        metrics["select"] = round(float(np.mean([m["fact_em"] for m in by_file.values()])), 4)
    return metrics


def _load_data(
    cfg: TrainConfig, log: Callable[[dict], None]
) -> tuple[list[Example], dict[str, list[Example]]]:
    """(training examples, eval examples by file name): `--eval` files, else a held-out
    split of the data."""

    def skipped(problem: Problem) -> None:
        log({"event": "skip", "message": str(problem)})

    data = load_examples(Path(cfg.data), cfg.skip_bad, on_problem=skipped)
    if isinstance(cfg.eval, str):  # a checkpoint written before --eval took several files
        cfg.eval = [cfg.eval]
    if cfg.eval:
        train_set = data
        eval_sets = {
            Path(f).stem: load_examples(Path(f), cfg.skip_bad, on_problem=skipped) for f in cfg.eval
        }
        if len(eval_sets) < len(cfg.eval):
            raise UsageError("--eval files need different names (they label the results)")
    else:
        train_set, held = split(data, cfg.eval_split, cfg.seed)
        eval_sets = {"held-out": held}
    if not train_set or not all(eval_sets.values()):
        raise DataError("need at least two examples (one to train, one to evaluate)")
    return train_set, eval_sets


def _check_settings(cfg: TrainConfig) -> None:
    if cfg.positions not in {"none", "relative"}:
        raise UsageError("--positions must be 'none' or 'relative'")
    if cfg.lexical_query is not None and (why := bad_query(cfg.lexical_query)):
        raise UsageError(f"--lexical-query {why}")


def _starting_model(cfg: TrainConfig) -> QModel:
    """The model a new run starts from: `--base` (or the base encoder) made trainable."""
    base = from_base(layers=cfg.layers) if cfg.base in (None, "base") else load_model(cfg.base)
    return trainable(
        base,
        normalize=cfg.normalize,
        scale=cfg.scale,
        positions=cfg.positions,
        frozen_chunks=cfg.frozen_chunks,
        lexical=cfg.lexical,
        lexical_query=cfg.lexical_query,
        chunk_cap=cfg.state_chunk_cap,
    )


def _freeze(model: QModel, cfg: TrainConfig) -> None:
    """Stop gradients where the settings say: the token tables, or both encoders."""
    if cfg.freeze_embeddings:
        vocab = model.encoder_config.get("vocab_size")
        for module in [*model.state_encoder.modules(), *model.chunk_encoder.modules()]:
            if isinstance(module, nn.Embedding) and module.num_embeddings == vocab:
                module.weight.requires_grad_(False)
    if not cfg.train_encoder:
        model.state_encoder.requires_grad_(False)
        model.chunk_encoder.requires_grad_(False)


def _optimizer(model: QModel, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the encoder's trainable parameters and the Q head, each group with its
    learning-rate scale (read at every update by `lr_at`)."""
    head = model.head_weights()  # the linear Q head: dense and lexical weights, bias
    encoder = [p for p in model.parameters() if p.requires_grad and all(p is not w for w in head)]
    groups = [{"params": encoder, "scale": 1.0}] if encoder else []
    if head:  # no weight decay: the head's weights are the terms' whole strength
        weights = [w for w in head if w is not model.head_bias]
        groups.append({"params": weights, "scale": cfg.lexical_lr / cfg.lr, "weight_decay": 0.0})
        # The bias follows the returns' level `bias_lr_scale` times faster than the weights
        # move: Adam steps every parameter by about its learning rate, and a bias as slow
        # as the weights left the level error to the weights, which TD then pushed
        # negative (BENCHMARKS.md "What each part of Q adds").
        bias_scale = cfg.bias_lr_scale * cfg.lexical_lr / cfg.lr
        groups.append({"params": [model.head_bias], "scale": bias_scale, "weight_decay": 0.0})
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay, foreach=True
    )


def _restore(
    state: dict[str, torch.Tensor],
    meta: dict,
    model: QModel,
    target_state: nn.Module,
    target_chunk: nn.Module,
    opt: torch.optim.Optimizer,
) -> None:
    """A resumed run's target networks and optimizer state, from its checkpoint."""
    target_state.load_state_dict(
        {k[13:]: v for k, v in state.items() if k.startswith("target_state.")}
    )
    if not model.cfg.frozen_chunks:
        target_chunk.load_state_dict(
            {k[13:]: v for k, v in state.items() if k.startswith("target_chunk.")}
        )
    opt_state: dict = {"state": {}, "param_groups": meta["param_groups"]}
    for key, value in state.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            opt_state["state"].setdefault(int(idx), {})[name] = value
    opt.load_state_dict(opt_state)


def _ship(
    cfg: TrainConfig,
    model: QModel,
    out: Path,
    eval_sets: dict[str, list[Example]],
    cache: dict[str, np.ndarray] | None,
    record: dict,
) -> tuple[float | None, float, dict]:
    """Write the run's model: the best-on-eval weights, the stop threshold calibrated on
    the eval data, the metrics and the card. Returns (threshold, right-stop share, the
    kept model's eval metrics)."""
    eval_set = [ex for exs in eval_sets.values() for ex in exs]
    final = load_qrag_folder(out) if (out / "config.json").is_file() else model
    final.state_int8 = False  # the card's numbers in the precision the run trained in
    saved = final.cfg.metrics or {}
    kept = saved.get("update", saved.get("kept_update"))  # the update those weights are from
    episodes = run_examples(final, eval_set, max(cfg.budget, 4), cache=cache)
    threshold, with_stop, right_share = calibrate_threshold(episodes, eval_set)
    after = _evaluate(final, eval_sets, cfg.budget, cache)
    final.cfg.threshold = threshold if cfg.apply_stop else None
    final.cfg.metrics = {
        "before": record["before"],
        "after": after,
        "threshold": with_stop.to_dict(),
        "calibrated_threshold": threshold,
        "stop_right_share": round(right_share, 4),
        "stop": {
            "budget": max(cfg.budget, 4),
            **stop_report(cut_episodes(episodes, threshold), episodes, eval_set),
        },
        "curve": record["curve"],
        "kept_update": kept,
    }
    final.cfg.train = {
        **asdict(cfg),
        "data_hash": data_hash(Path(cfg.data)),
        "train_examples": record["train_examples"],
        "eval_examples": len(eval_set),
        "seconds": record["seconds"],
    }
    final.cfg.name = out.name
    save_model(final, out)
    write_model_card(out, {"config": asdict(final.cfg)})
    return threshold, right_share, after


def train(
    cfg: TrainConfig, resume: Path | None = None, log: Callable[[dict], None] = lambda row: None
) -> TrainResult:
    """Train from `cfg`, or continue the run whose model folder (or checkpoint) is `resume`
    (its saved settings are kept; only `cfg.updates` may extend it)."""
    state: dict[str, torch.Tensor] | None = None
    meta: dict = {}
    if resume is not None:
        ckpt = (
            resume
            if (resume / "train_state.json").is_file()
            else resume.with_name(f".{resume.name}.checkpoint")
        )
        model, meta, state = load_checkpoint(ckpt)
        saved = {**meta["config"], "betas": tuple(meta["config"]["betas"])}
        cfg = TrainConfig(**{**saved, "updates": max(cfg.updates, meta["update"])})
    seed_everything(cfg.seed)
    train_set, eval_sets = _load_data(cfg, log)
    _check_settings(cfg)
    out = Path(cfg.out)
    rng = np.random.default_rng(cfg.seed)
    start, best = 0, -1.0
    if resume is not None:
        start, best = meta["update"], meta["best"]
        rng.bit_generator.state = meta["rng"]
    else:
        ckpt = out.with_name(f".{out.name}.checkpoint")
        model = _starting_model(cfg)
    if not cfg.train_encoder and not qvalue.uses_lexical(model):
        raise UsageError(
            "nothing to train: --only-lexical needs lexical weights "
            "(--lexical W_QUESTION,W_PICKED[,W_ORDER[,W_NAMED]] or a model that has them)"
        )
    device = torch.device(cfg.device)
    model.to(device)
    model.state_int8 = False  # rollouts score with the float weights being learned
    target_state = copy.deepcopy(model.state_encoder).requires_grad_(False)
    # A frozen E_a (this run's --frozen-chunks, or a frozen-chunk model trained further)
    # is its own target network.
    target_chunk = (
        model.chunk_encoder
        if model.cfg.frozen_chunks
        else copy.deepcopy(model.chunk_encoder).requires_grad_(False)
    )
    _freeze(model, cfg)
    head = model.head_weights()
    opt = _optimizer(model, cfg)
    params = [p for group in opt.param_groups for p in group["params"]]  # encoder, then head
    if state is not None:
        _restore(state, meta, model, target_state, target_chunk, opt)
    if not cfg.target_network:
        target_state, target_chunk = model.state_encoder, model.chunk_encoder

    # Chunk vectors that cannot change (a frozen E_a, or no encoder training) are
    # embedded once for the whole run: rollouts, evaluations and calibration.
    fixed_chunks = model.cfg.frozen_chunks or not cfg.train_encoder
    cache: dict[str, np.ndarray] | None = {} if fixed_chunks else None
    # A resumed run keeps the first run's starting scores, curve and training seconds.
    before = (
        _evaluate(model, eval_sets, cfg.budget, cache) if resume is None else meta.get("before", {})
    )
    seconds_before = float(meta.get("seconds", 0.0))
    curve: list[dict] = list(meta.get("curve", []))
    if resume is None:
        log({"event": "eval", "update": 0, **before})
        curve.append({"update": 0, **before})
        # The starting model is a candidate too: a run never ships worse than it began.
        best = before["select"]
        model.cfg.metrics = {"eval": before, "update": 0}
        save_model(model, out, onnx=False)  # the final save below writes the ONNX graphs
    t_start = time.perf_counter()
    done = 0
    for update in range(start, cfg.updates):
        lr, alpha = lr_at(update, cfg), alpha_at(update, cfg)
        for group in opt.param_groups:
            group["lr"] = lr * group.get("scale", 1.0)
        batch = [
            train_set[i]
            for i in rng.choice(len(train_set), size=cfg.batch, replace=len(train_set) < cfg.batch)
        ]
        rollout = collect(model, batch, cfg, update, rng, cache)
        dtype = torch.bfloat16 if cfg.bf16 else torch.float32
        if update < cfg.warm_start:  # imitate the oracle over every chunk of each state
            loss = imitation_loss(model, rollout, cfg.warm_temperature, cfg.train_encoder, dtype)
            q1 = q2 = returns = torch.zeros(1)
        else:
            returns = targets(model, target_state, target_chunk, rollout, cfg, alpha).to(device)
            q1, q2 = q_online(model, rollout, cfg.train_encoder, dtype)
            loss = td_loss(q1, q2, returns, cfg.twin)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(nn.utils.clip_grad_norm_(params, cfg.grad_clip))
        opt.step()
        if cfg.target_network and cfg.train_encoder:
            polyak_update(target_state, model.state_encoder, cfg.tau)
            if not model.cfg.frozen_chunks:
                polyak_update(target_chunk, model.chunk_encoder, cfg.tau)
        done += 1
        row = {
            "event": "update",
            "update": update + 1,
            "loss": round(loss.item(), 6),
            "solved": round(rollout.solved, 4),
            "q_mean": round(float((q1 + q2).detach().mean()), 5),
            "return_mean": round(float(returns.mean()), 5),
            "grad_norm": round(grad_norm, 4),
            "lr": lr,
            "alpha": round(alpha, 6),
            "phase": "imitation" if update < cfg.warm_start else "q-learning",
        }
        if head:
            row["head"] = [
                round(float(w), 4) for w in torch.cat([w.detach().reshape(-1) for w in head])
            ]
        log(row)
        last = update + 1 == cfg.updates
        if (update + 1) % cfg.eval_every == 0 or last:
            metrics = _evaluate(model, eval_sets, cfg.budget, cache)
            curve.append({"update": update + 1, **metrics, "solved": row["solved"]})
            log({"event": "eval", "update": update + 1, **metrics})
            if metrics["select"] > best:  # best-on-eval is what gets shipped
                best = metrics["select"]
                model.cfg.metrics = {"eval": metrics, "update": update + 1}
                save_model(model, out, onnx=False)
            save_checkpoint(
                ckpt,
                model,
                target_state,
                target_chunk,
                opt,
                update + 1,
                best,
                rng,
                cfg,
                {
                    "before": before,
                    "curve": curve,
                    "seconds": round(seconds_before + time.perf_counter() - t_start, 1),
                },
            )
    elapsed = time.perf_counter() - t_start

    # Ship the best checkpoint, with the stop threshold calibrated on eval data.
    record = {
        "before": before,
        "curve": curve,
        "train_examples": len(train_set),
        "seconds": round(seconds_before + elapsed, 1),
    }
    threshold, right_share, after = _ship(cfg, model, out, eval_sets, cache, record)
    return TrainResult(
        out=out,
        before=before,
        after=after,
        threshold=threshold,
        stop_right_share=right_share,
        updates_per_s=done / elapsed if elapsed else 0.0,
        episodes_per_s=done * cfg.batch / elapsed if elapsed else 0.0,
        curve=curve,
    )
