"""Probe (issue 15): can a judge that reads the picked text itself tell when the gold
evidence is complete?

    python experiments/stop/probe_stop_judge.py [N_TRAIN] [N_SYNTH] [MODEL]
    python experiments/stop/probe_stop_judge.py --cross N_TRAIN [MODEL]
    python experiments/stop/probe_stop_judge.py --cost [MODEL]

`--cross` fits the judge the frozen ones stand in for: a cross-encoder, a copy of E_s's
backbone fine-tuned whole with a head on [CLS] and the step, 2 passes over every step
of N_TRAIN training episodes (what fits in one session on this CPU; ~0.15 s a
decision a pass). `--cost` only times that fine-tune per decision of 256 tokens, in
batches of 16, bf16 and fp32.

The seventh session's probe (probe_stop_hops.py) found that Q's scalars cannot see a
wrong pick, and that the decision's state vector overfits a linear head fitted on ~900
decisions. This probe gives a judge far more decisions and a reader of the text:

- decisions: every step of N_TRAIN (default 300) greedy episodes of qrag-train/mix.jsonl
  (seed 0, the model's own picks: real hard negatives), and N_SYNTH (default 1600)
  mix.jsonl questions as *pseudo-episodes* (seed 1): the gold chunks in random order,
  mixed with the question's BM25 look-alikes and the gold chunks' neighbours, two per
  question, every prefix a decision (label: the gold set is complete). A pseudo-episode
  costs one E_s pass per prefix and no chunk embedding, so tens of thousands are cheap.
- what a judge reads: E_s's last hidden layer over the step's own state tokens (question
  + picks, as qstate.state_tokens lays them out), which the step computes anyway: a
  shipped judge would add no encoding.
- judges: `vector`, an MLP (128 hidden) on the pooled state vector plus the step;
  `tokens`, a small attention head (a 96-wide transformer layer over the projected token
  outputs, the step added to [CLS], read at [CLS]), a light cross-encoder on top of the
  frozen E_s. Each is fitted on the episodes, on the pseudo-episodes, and on both.

Each judge's cut is chosen on val-real + val-gen as every stop head's is (the fewest
mean steps with fact EM within 0.02 of the fixed budget), and the bench's held-out real
half and fresh generated stories (6 per task, seed 2026) score it, at the model's
training budget (the ceiling), as measure_stop.py does. Also printed at cut 0.5, and the
share of decisions judged right. One JSON line per judge.
"""

from __future__ import annotations

import copy
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from measure_stop import stop_runs, stop_sets  # experiments/stop/: this script's folder
from torch import nn

from qrag_cli import qstate
from qrag_cli.datasets import Example, load_examples
from qrag_cli.episode import MemoryChunk
from qrag_cli.evaluate import Metrics, complete_at, stop_metrics
from qrag_cli.lexical import MemoryLexicon, terms
from qrag_cli.model import load_model
from qrag_cli.qnet import batch_tokens
from qrag_cli.stopfit import TOLERANCE, fewest_steps, head_cuts

EPOCHS = 3  # the token judge's passes over its decisions (the vector judge: 30)
SEED = 0


def encoded(model, seqs: list[list[int]]) -> tuple[list[np.ndarray], np.ndarray]:
    """E_s over token-id sequences, in the model's own length-sorted batches: each one's
    last hidden layer (fp16, [tokens, dim]) and the state vector E_s pools from it."""
    hidden: list[np.ndarray] = [np.zeros(0)] * len(seqs)
    vecs = np.zeros((len(seqs), model.cfg.dim), np.float32)
    encoder, cpu = model.state_encoder, torch.device("cpu")
    dtype = model.infer_dtype
    with (
        torch.inference_mode(),
        torch.autocast("cpu", dtype, enabled=dtype != torch.float32),
    ):
        for batch in model._batches(seqs, batch_tokens(cpu)):
            ids, mask = model._pad([seqs[i] for i in batch], cpu)
            h = encoder.backbone(input_ids=ids, attention_mask=mask)[0]
            vecs[batch] = encoder.pool(h, mask).float().numpy()
            h = h.float().half().numpy()
            for row, i in enumerate(batch):
                hidden[i] = h[row, : len(seqs[i])]
    return hidden, vecs


def prefix_seqs(model, question: str, picks: list[tuple[int, int, str]]) -> list[list[int]]:
    """The state tokens after each pick of `picks` (chunk id, ordinal, text), in order."""
    state, seqs = qstate.start(model, [question])[0], []
    for chunk_id, ordinal, text in picks:
        state = qstate.pick(model, state, MemoryChunk(chunk_id, ordinal, text))
        seqs.append(qstate.state_tokens(model, state))
    return seqs


def episode_decisions(model, episodes, examples: list[Example], hidden: bool = True) -> dict:
    """Every prefix of every episode: its state's tokens and (`hidden`) their outputs, the
    episode, the step, and the step after which the episode's picks hold the gold set
    (-1: never)."""
    seqs, ep_of, step_of = [], [], []
    for e, ep in enumerate(episodes):
        picks = [(ev.chunk_id, ev.ordinal, ev.text) for ev in ep.evidence]
        seqs += prefix_seqs(model, ep.question, picks)
        ep_of += [e] * len(picks)
        step_of += range(1, len(picks) + 1)
    done = [
        complete_at([ev.chunk_id for ev in ep.evidence], ex.support)
        for ep, ex in zip(episodes, examples, strict=True)
    ]
    done_arr = np.array([-1 if d is None else d for d in done])
    ep_arr, t_arr = np.array(ep_of), np.array(step_of)
    label = (done_arr[ep_arr] >= 0) & (t_arr >= done_arr[ep_arr])
    h, vecs = encoded(model, seqs) if hidden else ([], np.zeros(0))
    return {
        "seqs": seqs,
        "h": h,
        "vec": vecs,
        "ep": ep_arr,
        "t": t_arr,
        "done": done_arr,
        "label": label,
    }


def pseudo_decisions(model, examples: list[Example], rng: random.Random) -> dict:
    """Two pseudo-episodes per question (see the module doc), one decision per new prefix."""
    seqs, steps, labels = [], [], []
    for ex in examples:
        gold = list(ex.support)
        ids, scores = MemoryLexicon(ex.chunks).bm25(terms(ex.question))
        alike = [int(i) for i in ids[np.argsort(-scores)] if int(i) not in gold][:8]
        near = [
            g + d
            for g in gold
            for d in (-1, 1)
            if 0 <= g + d < len(ex.chunks) and g + d not in gold
        ]
        pool = list(dict.fromkeys(alike + near)) or [
            i for i in range(len(ex.chunks)) if i not in gold
        ]
        seen: set[tuple[int, ...]] = set()
        for _ in range(2):
            picks, left = [], rng.sample(gold, len(gold))
            p_gold = rng.choice([0.5, 0.7, 0.9])
            while len(picks) < 5:
                complete = not left
                if left and rng.random() < p_gold:
                    picks.append(left.pop())
                else:
                    others = [c for c in pool if c not in picks]
                    if not others:
                        break
                    picks.append(rng.choice(others))
                if complete and rng.random() < 0.5:
                    break
            prefixes = prefix_seqs(model, ex.question, [(p, p, ex.chunks[p]) for p in picks])
            for t, seq in enumerate(prefixes, start=1):
                key = tuple(sorted(picks[:t]))
                if key in seen:
                    continue
                seen.add(key)
                seqs.append(seq)
                steps.append(t)
                labels.append(set(gold) <= set(picks[:t]))
    h, vecs = encoded(model, seqs)
    return {"h": h, "vec": vecs, "t": np.array(steps), "label": np.array(labels)}


class TokenJudge(nn.Module):
    def __init__(self, dim: int, width: int = 96) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, width)
        self.step = nn.Embedding(6, width)
        layer = nn.TransformerEncoderLayer(width, 4, 2 * width, dropout=0.1, batch_first=True)
        self.layer = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.out = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        z = self.proj(x)
        z = torch.cat([z[:, :1] + self.step(step).unsqueeze(1), z[:, 1:]], 1)
        return self.out(self.layer(z, src_key_padding_mask=~mask)[:, 0]).squeeze(-1)


class VectorJudge(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 6, 128), nn.ReLU(), nn.Linear(128, 1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, nn.functional.one_hot(step, 6).float()], 1)).squeeze(-1)


def _batch(
    data: dict, idx: np.ndarray, kind: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    step = torch.from_numpy(np.minimum(data["t"][idx], 5))
    if kind == "vector":
        return torch.from_numpy(data["vec"][idx]), torch.ones(len(idx), 1, dtype=torch.bool), step
    width = max(len(data["h"][i]) for i in idx)
    x = torch.zeros(len(idx), width, data["h"][idx[0]].shape[1])
    mask = torch.zeros(len(idx), width, dtype=torch.bool)
    for row, i in enumerate(idx):
        n = len(data["h"][i])
        x[row, :n] = torch.from_numpy(data["h"][i].astype(np.float32))
        mask[row, :n] = True
    return x, mask, step


def fit(kind: str, parts: list[dict], dim: int) -> nn.Module:
    data = {
        k: np.concatenate([p[k] for p in parts]) if k != "h" else [x for p in parts for x in p["h"]]
        for k in ("h", "vec", "t", "label")
    }
    torch.manual_seed(SEED)
    net = VectorJudge(dim) if kind == "vector" else TokenJudge(dim)
    opt = torch.optim.AdamW(net.parameters(), 5e-4 if kind == "tokens" else 1e-3, weight_decay=0.01)
    y = torch.from_numpy(data["label"].astype(np.float32))
    rng = np.random.default_rng(SEED)
    for _ in range(EPOCHS if kind == "tokens" else 30):
        perm = rng.permutation(len(y))
        for start in range(0, len(y), 64):
            idx = perm[start : start + 64]
            loss = nn.functional.binary_cross_entropy_with_logits(
                net(*_batch(data, idx, kind)), y[idx]
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def judge(net: nn.Module, kind: str, data: dict) -> np.ndarray:
    n = len(data["t"])
    order = np.argsort([len(x) for x in data["h"]])
    probs = np.zeros(n)
    for start in range(0, n, 128):
        idx = order[start : start + 128]
        probs[idx] = torch.sigmoid(net(*_batch(data, idx, kind))).numpy()
    return probs


def stop_at(data: dict, probs: np.ndarray, cut: float, budget: int) -> dict:
    """stop_metrics of the rule "stop before the next pick once P(complete) >= cut"."""
    n = len(data["done"])
    took = np.bincount(data["ep"], minlength=n)
    for i in np.lexsort((data["t"], data["ep"])):
        e, t = data["ep"][i], data["t"][i]
        if t < budget and probs[i] >= cut and t < took[e]:
            took[e] = t
    return stop_metrics([int(t) for t in took], [None if d < 0 else int(d) for d in data["done"]])


def fine_tune_cost(model) -> None:
    """ms per decision of one optimiser step over E_s's whole backbone plus a head."""
    torch.manual_seed(SEED)
    backbone = model.state_encoder.backbone.train()
    head = nn.Linear(model.cfg.dim, 1)
    opt = torch.optim.AdamW([*backbone.parameters(), *head.parameters()], 2e-5)
    ids = torch.randint(1000, 20000, (16, 256))
    mask = torch.ones_like(ids)
    for dtype in (torch.bfloat16, torch.float32):
        seconds = []
        for _ in range(4):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype, enabled=dtype != torch.float32):
                cls = backbone(input_ids=ids, attention_mask=mask)[0][:, 0]
                logit = head(cls.float()).squeeze(-1)
            loss = nn.functional.binary_cross_entropy_with_logits(logit, torch.ones(16))
            opt.zero_grad()
            loss.backward()
            opt.step()
            seconds.append(time.perf_counter() - t0)
        best = min(seconds[1:])  # the first step warms up
        print(json.dumps({"dtype": str(dtype), "ms_per_decision": round(1000 * best / 16)}))


class CrossJudge(nn.Module):
    """A copy of E_s's backbone, fine-tuned whole, with a head on [CLS] and the step."""

    def __init__(self, model) -> None:
        super().__init__()
        self.backbone = copy.deepcopy(model.state_encoder.backbone)
        self.head = nn.Linear(model.cfg.dim + 6, 1)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        cls = self.backbone(input_ids=ids, attention_mask=mask)[0][:, 0].float()
        return self.head(torch.cat([cls, nn.functional.one_hot(step, 6).float()], 1)).squeeze(-1)


def cross_judge(model, train: dict, epochs: int, batch: int = 16):
    """Fine-tune a CrossJudge on `train`'s decisions (batches of like lengths); returns
    the function that judges a decision set."""
    torch.manual_seed(SEED)
    net = CrossJudge(model).train()
    opt = torch.optim.AdamW(
        [
            {"params": net.backbone.parameters(), "lr": 2e-5},
            {"params": net.head.parameters(), "lr": 1e-3},
        ],
        weight_decay=0.01,
    )
    dtype = model.infer_dtype
    rng = np.random.default_rng(SEED)
    y = torch.from_numpy(train["label"].astype(np.float32))
    lengths = np.array([len(s) for s in train["seqs"]])
    for epoch in range(epochs):
        t0 = time.perf_counter()
        perm = rng.permutation(len(y))
        groups = [perm[i : i + 256] for i in range(0, len(perm), 256)]
        batches = [
            g[np.argsort(lengths[g])][i : i + batch]
            for g in groups
            for i in range(0, len(g), batch)
        ]
        for b in (batches[i] for i in rng.permutation(len(batches))):
            ids, mask = model._pad([train["seqs"][i] for i in b], torch.device("cpu"))
            step = torch.from_numpy(np.minimum(train["t"][b], 5))
            with torch.autocast("cpu", dtype, enabled=dtype != torch.float32):
                logit = net(ids, mask, step)
            loss = nn.functional.binary_cross_entropy_with_logits(logit.float(), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"epoch {epoch}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    net.eval()

    @torch.inference_mode()
    def judged(data: dict) -> np.ndarray:
        probs = np.zeros(len(data["seqs"]))
        cpu = torch.device("cpu")
        for b in map(np.array, model._batches(data["seqs"], batch_tokens(cpu))):
            ids, mask = model._pad([data["seqs"][j] for j in b], cpu)
            step = torch.from_numpy(np.minimum(data["t"][b], 5))
            with torch.autocast("cpu", dtype, enabled=dtype != torch.float32):
                probs[b] = torch.sigmoid(net(ids, mask, step).float()).numpy()
        return probs

    return judged


def scored(probs: dict[str, np.ndarray], data: dict, budget: int) -> dict:
    """A judge's cut, chosen on val as every stop head's is (stopfit.fewest_steps over
    stopfit.head_cuts: the fewest mean steps with fact EM within 0.02 of the fixed budget),
    and its stop metrics on val, real and gen at that cut and at 0.5, with the share of
    decisions it judges right."""
    val = data["val"]
    fixed = stop_at(val, probs["val"], 1.01, budget)["fact_em_fixed"]

    def on_val(cut: float) -> Metrics:
        m = stop_at(val, probs["val"], cut, budget)
        return Metrics(m["fact_em_stop"], 0.0, m["mean_steps"], m["n"])

    cut = fewest_steps(head_cuts(probs["val"]), on_val, fixed, TOLERANCE) or 1.01
    line: dict = {"cut": round(cut, 3)}
    for n in ("val", "real", "gen"):
        d = data[n]
        line[n] = stop_at(d, probs[n], cut, budget)
        line[n + "_cut_0.5"] = stop_at(d, probs[n], 0.5, budget)
        live = d["t"] < budget  # the decisions a rule takes (none after the ceiling)
        right = (probs[n] >= cut) == d["label"]
        line[n + "_decisions_right"] = round(float(right[live].mean()), 3)
    return line


def cross_main(n_train: int, model, epochs: int = 2) -> None:
    """The cross-encoder judge, fitted on every step of N_TRAIN training episodes."""
    sets = stop_sets(Path("qrag-train"), n_train)
    budget, runs, _ = stop_runs(model, sets)
    data = {n: episode_decisions(model, runs[n], sets[n], hidden=False) for n in runs}
    print(f"decisions: { {k: len(v['t']) for k, v in data.items()} }", file=sys.stderr)
    t0 = time.perf_counter()
    judged = cross_judge(model, data["train"], epochs)
    probs = {n: judged(data[n]) for n in ("val", "real", "gen")}
    line = {"judge": "cross", "fitted_on": f"train {n_train}", **scored(probs, data, budget)}
    print(json.dumps({**line, "seconds": round(time.perf_counter() - t0, 1)}), flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--cost":
        fine_tune_cost(load_model(sys.argv[2] if len(sys.argv) > 2 else None))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--cross":
        cross_main(int(sys.argv[2]), load_model(sys.argv[3] if len(sys.argv) > 3 else None))
        return
    n_train = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    n_synth = int(sys.argv[2]) if len(sys.argv) > 2 else 1600
    model = load_model(sys.argv[3] if len(sys.argv) > 3 else None)
    folder = Path("qrag-train")
    sets = stop_sets(folder, n_train)
    budget, runs, _ = stop_runs(model, sets)
    t0 = time.perf_counter()
    data = {name: episode_decisions(model, runs[name], sets[name]) for name in runs}
    mix = load_examples(folder / "mix.jsonl")
    data["synth"] = pseudo_decisions(model, random.Random(1).sample(mix, n_synth), random.Random(1))
    counts = {k: len(v["t"]) for k, v in data.items()}
    print(f"decisions: {counts}, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    dim = model.cfg.dim
    for kind in ("vector", "tokens"):
        for fitted_on in (["train"], ["synth"], ["train", "synth"]):
            t1 = time.perf_counter()
            net = fit(kind, [data[n] for n in fitted_on], dim)
            probs = {n: judge(net, kind, data[n]) for n in ("val", "real", "gen")}
            line = scored(probs, data, budget)
            line = {"judge": kind, "fitted_on": "+".join(fitted_on), **line}
            line["seconds"] = round(time.perf_counter() - t1, 1)
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
