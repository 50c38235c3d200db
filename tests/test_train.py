"""`qrag train`: data, converters, CLI, checkpoints and resume (real encoder, cut small)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_qrag

from qrag_cli.bench.tasks import two_hop_task
from qrag_cli.datasets import from_hotpotqa, from_musique, load_examples, write_examples
from qrag_cli.haystack import generated_filler
from qrag_cli.model import load_model
from qrag_cli.types import DataError


def test_convert_real_hotpotqa_and_musique(tmp_path: Path, shared_data: Path) -> None:
    hot = list(from_hotpotqa(shared_data / "hotpotqa_train_200.json"))
    assert len(hot) == 200
    assert all(len(ex.chunks) >= 2 and 1 <= len(ex.support) <= 4 for ex in hot)
    assert sum(len(ex.support) == 2 for ex in hot) > 150  # bridge/comparison: two paragraphs
    mus = list(from_musique(shared_data / "musique_train_100.jsonl"))
    assert len(mus) == 100 and all(2 <= len(ex.support) <= 4 for ex in mus)
    assert all(len(ex.chunks) == 20 for ex in mus)
    proc = run_qrag(
        "train",
        "convert",
        "--from",
        "musique",
        str(shared_data / "musique_train_100.jsonl"),
        str(tmp_path / "m.jsonl"),
        check=True,
    )
    assert "100 examples" in proc.stderr
    assert len(load_examples(tmp_path / "m.jsonl")) == 100


def test_bad_lines_are_named_and_refused_or_skipped(tmp_path: Path) -> None:
    good = two_hop_task(6, seed=0)
    path = tmp_path / "data.jsonl"
    write_examples(good, path)
    lines = path.read_text().splitlines()
    lines.insert(2, '{"question": "q", "chunks": ["a"], "support": [3]}')
    lines.insert(4, "not json")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"data.jsonl:3: support index 3"):
        load_examples(path)
    skipped: list[str] = []
    examples = load_examples(path, skip_bad=True, on_problem=lambda p: skipped.append(str(p)))
    assert len(examples) == 6 and len(skipped) == 2 and ":5:" in skipped[1]
    proc = run_qrag("train", str(path), "--out", str(tmp_path / "m"), "--updates", "1")
    assert proc.returncode != 0 and "data.jsonl:3" in proc.stderr and "--skip-bad" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    # --skip-bad reports the skipped lines of --eval files too (they were dropped silently).
    held_out = tmp_path / "eval.jsonl"
    write_examples(two_hop_task(3, seed=1), held_out)
    held_out.write_text(held_out.read_text() + "not json\n")
    proc = run_qrag(
        "train", str(path), "--eval", str(held_out), "--skip-bad", "--out",
        str(tmp_path / "m"), "--updates", "1", "--layers", "1", "--batch", "2",
        "--budget", "2", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"{held_out}:4: not JSON" in proc.stderr and f"{path}:5: not JSON" in proc.stderr
    assert json.loads(proc.stdout)["after"]["n"] == 3


def test_train_resume_checkpoint_round_trip(tmp_path: Path) -> None:
    write_examples(two_hop_task(12, seed=0), tmp_path / "train.jsonl")
    write_examples(two_hop_task(4, seed=1), tmp_path / "eval.jsonl")
    out = tmp_path / "model"
    args = [
        "train",
        str(tmp_path / "train.jsonl"),
        "--eval",
        str(tmp_path / "eval.jsonl"),
        "--out",
        str(out),
        "--layers",
        "1",
        "--batch",
        "4",
        "--budget",
        "2",
        "--eval-every",
        "2",
        "--json",
    ]
    first = json.loads(run_qrag(*args, "--updates", "2", check=True).stdout)
    assert first["after"]["n"] == 4 and first["before"]["n"] == 4
    resumed = json.loads(
        run_qrag(
            "train",
            str(tmp_path / "train.jsonl"),
            "--resume",
            str(out),
            "--updates",
            "4",
            "--json",
            check=True,
        ).stdout
    )
    assert resumed["before"] == first["before"]  # kept from the first run, not re-measured
    state = json.loads((tmp_path / ".model.checkpoint" / "train_state.json").read_text())
    assert state["update"] == 4
    updates = [
        json.loads(line)["update"]
        for line in (out / "train_log.jsonl").open()
        if '"update"' in line and '"event": "update"' in line
    ]
    assert updates == [1, 2, 3, 4]
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "qrag-model/1" and config["shared"] is False
    assert config["normalize"] is False and config["train"]["data_hash"]
    # What the run reported is what it wrote (--stop apply: the calibrated threshold).
    assert config["threshold"] == config["metrics"]["calibrated_threshold"] == resumed["threshold"]
    assert config["metrics"]["stop_right_share"] == round(resumed["stop_right_share"], 4)
    assert config["train"]["seconds"] > 0
    curve = config["metrics"]["curve"]
    assert [row["update"] for row in curve] == [0, 2, 4]
    # Best on eval, the starting model included; a tie keeps the earlier weights.
    best = max(row["select"] for row in curve)
    assert config["metrics"]["kept_update"] == next(
        r["update"] for r in curve if r["select"] == best
    )
    assert not any(p.suffix in {".pt", ".bin", ".pkl"} for p in out.rglob("*"))

    a, b = load_model(str(out)), load_model(str(out))  # rebuilt without guessing
    texts = ["Ada put the key in the red box.", "The red box is kept in the attic."]
    assert np.allclose(a.embed_chunks(texts), b.embed_chunks(texts))
    assert a.encoder_config["num_hidden_layers"] == 1
    proc = run_qrag(
        "train",
        "eval",
        str(tmp_path / "eval.jsonl"),
        "--model",
        str(out),
        "--budget",
        "1",
        "--budget",
        "2",
        "--json",
        check=True,
    )
    result = json.loads(proc.stdout)
    assert {"budget_1", "budget_2"} <= set(result)


def test_training_learns_what_single_step_cannot(tmp_path: Path) -> None:
    """The learning proof, on the two-hop task: the container fact is findable only through
    the first fact, so single-step top-2 and the untrained episode both fail. `qrag train`
    as the recipe runs it (40 warm-start updates that imitate the oracle over every chunk of
    each visited state, then 60 of soft Q-learning) must lift fact EM to >= 0.9 on held-out
    questions it never selected a checkpoint on, and the soft Q-learning phase must keep it
    there: with the TD targets' reward sign flipped it falls to 0.00 by update 60.

    Soft Q-learning from scratch also gets there, but in ~800 updates (BENCHMARKS.md,
    "Training"): too slow for a test on 2 cores."""
    from qrag_cli.episode import StopRule, example_sources, run_episodes
    from qrag_cli.evaluate import fact_scores
    from qrag_cli.model import from_base

    write_examples(two_hop_task(600, seed=0), tmp_path / "train.jsonl")
    write_examples(two_hop_task(40, seed=1), tmp_path / "select.jsonl")  # checkpoint choice
    held_out = two_hop_task(200, seed=2)  # never seen by training or selection
    write_examples(held_out, tmp_path / "held_out.jsonl")

    base = from_base(layers=2)  # single-step dense top-2: one step, its pick + 1 alternative
    first = run_episodes(
        base,
        [ex.question for ex in held_out],
        example_sources(base, held_out),
        StopRule(1),
        alternatives=2,
    )
    top2 = [[ep.evidence[0].chunk_id, *(a for a, _ in ep.evidence[0].alternatives)] for ep in first]
    single_step_em = np.mean(
        [fact_scores(ids, ex.support)[0] for ids, ex in zip(top2, held_out, strict=True)]
    )
    assert single_step_em <= 0.35

    out = tmp_path / "model"
    proc = run_qrag(
        "train",
        str(tmp_path / "train.jsonl"),
        "--eval",
        str(tmp_path / "select.jsonl"),
        "--out",
        str(out),
        "--layers",
        "2",
        "--budget",
        "2",
        "--updates",
        "100",
        "--warm-start",
        "40",
        "--batch",
        "16",
        "--lr",
        "3e-4",
        "--alpha",
        "0.01",
        "--eval-every",
        "20",
        "--json",
        check=True,
        # Only a guard against a hang: ~1.5 min quiet, ~4 min on a busy 2-core machine.
        # A subprocess, so that the limit applies (3 s of start-up is noise here).
        timeout=3600,
        process=True,
    )
    result = json.loads(proc.stdout)
    assert result["before"]["fact_em"] <= 0.35
    log = [json.loads(line) for line in (out / "train_log.jsonl").open()]
    phases = [row.get("phase") for row in log if row["event"] == "update"]
    assert phases == ["imitation"] * 40 + ["q-learning"] * 60
    curve = {row["update"]: row["fact_em"] for row in log if row["event"] == "eval"}
    assert list(curve) == [0, 20, 40, 60, 80, 100]
    assert min(curve[u] for u in (60, 80, 100)) >= 0.85, curve  # Q-learning keeps it
    # The written folder is the model `ask` would use, measured from disk on held-out data.
    proc = run_qrag(
        "train",
        "eval",
        str(tmp_path / "held_out.jsonl"),
        "--model",
        str(out),
        "--budget",
        "2",
        "--json",
        check=True,
    )
    assert json.loads(proc.stdout)["budget_2"]["fact_em"] >= 0.9


def test_convert_ruler_prepared_jsonl(tmp_path: Path) -> None:
    """RULER's own prepared format: the needle's chunk is gold, the question is kept."""
    import random

    filler = generated_filler(random.Random(0))
    paras = [next(filler) for _ in range(40)]
    paras.insert(23, "One of the special magic numbers for tall-river is: 4417791.")
    record = {
        "index": 7,
        "input": "Some special magic numbers are hidden within the "
        "following text.\n" + "\n\n".join(paras) + "\nWhat is the special magic number "
        "for tall-river mentioned in the provided text?",
        "outputs": ["4417791"],
        "length": 4096,
    }
    src = tmp_path / "niah.jsonl"
    src.write_text(json.dumps(record) + "\n" + json.dumps({**record, "outputs": ["0000"]}) + "\n")
    proc = run_qrag("train", "convert", "--from", "ruler", str(src), str(tmp_path / "o.jsonl"))
    assert proc.returncode != 0 and "niah.jsonl:2: no chunk holds" in proc.stderr
    src.write_text(json.dumps(record) + "\n")
    run_qrag("train", "convert", "--from", "ruler", str(src), str(tmp_path / "o.jsonl"), check=True)
    (ex,) = load_examples(tmp_path / "o.jsonl")
    assert ex.question.startswith("What is the special magic number for tall-river")
    assert len(ex.chunks) > 5 and len(ex.support) == 1
    assert "4417791" in ex.chunks[ex.support[0]] and ex.answer == "4417791"


def test_convert_hotpotqa_evidence(tmp_path: Path) -> None:
    records = [
        {
            "question": f"Q{i}?",
            "answer": "a",
            "evidence": [f"Fact {i}.{j} about topic {i}." for j in range(n)],
        }
        for i, n in enumerate([2, 3, 5, 2])
    ]
    src = tmp_path / "evidence.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    proc = run_qrag(
        "train",
        "convert",
        "--from",
        "hotpotqa-evidence",
        str(src),
        str(tmp_path / "out.jsonl"),
        check=True,
    )
    assert "evidence.jsonl:3: 5 evidence sentences" in proc.stderr  # reported, not dropped
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["question"] for r in rows] == ["Q0?", "Q1?", "Q3?"]  # 5 facts: over budget
    for row, n in zip(rows, [2, 3, 2], strict=True):
        gold = [row["chunks"][i] for i in row["support"]]
        topic = row["question"][1:-1]
        assert len(gold) == n and all(f"topic {topic}." in g for g in gold)
        others = [c for i, c in enumerate(row["chunks"]) if i not in row["support"]]
        assert 0 < len(others) <= 8 and not any(f"topic {topic}." in c for c in others)


def test_frozen_chunks_and_one_eval_file_per_domain(tmp_path: Path) -> None:
    """--frozen-chunks trains E_s only (no chunk weights or E_a target network stored);
    repeated --eval files are scored one by one and selection uses their mean."""
    from safetensors.torch import load_file

    write_examples(two_hop_task(12, seed=0), tmp_path / "train.jsonl")
    write_examples(two_hop_task(3, seed=1), tmp_path / "eval-a.jsonl")
    write_examples(two_hop_task(5, seed=2), tmp_path / "eval-b.jsonl")
    out = tmp_path / "model"
    args = [
        "train",
        str(tmp_path / "train.jsonl"),
        "--eval",
        str(tmp_path / "eval-a.jsonl"),
        "--eval",
        str(tmp_path / "eval-b.jsonl"),
        "--out",
        str(out),
        "--layers",
        "1",
        "--batch",
        "4",
        "--budget",
        "2",
        "--eval-every",
        "2",
        "--frozen-chunks",
        "--json",
    ]
    result = json.loads(run_qrag(*args, "--updates", "2", check=True).stdout)
    by_file = result["after"]["by_file"]
    assert set(by_file) == {"eval-a", "eval-b"} and by_file["eval-b"]["n"] == 5
    assert result["after"]["n"] == 8
    assert result["after"]["select"] == round(
        (by_file["eval-a"]["fact_em"] + by_file["eval-b"]["fact_em"]) / 2, 4
    )
    config = json.loads((out / "config.json").read_text())
    assert config["frozen_chunks"] and config["state_normalize"] is False
    assert all(k.startswith("state.") for k in load_file(str(out / "model.safetensors")))
    state = load_file(str(tmp_path / ".model.checkpoint" / "train_state.safetensors"))
    assert not any(k.startswith("target_chunk.") for k in state)
    resumed = json.loads(
        run_qrag(
            "train",
            str(tmp_path / "train.jsonl"),
            "--resume",
            str(out),
            "--updates",
            "3",
            "--json",
            check=True,
        ).stdout
    )
    assert resumed["after"]["by_file"]["eval-a"]["n"] == 3

    proc = run_qrag(
        "train",
        str(tmp_path / "train.jsonl"),
        "--eval",
        str(tmp_path / "eval-a.jsonl"),
        "--eval",
        str(tmp_path / "eval-a.jsonl"),
        "--out",
        str(tmp_path / "m2"),
        "--layers",
        "1",
        "--updates",
        "1",
    )
    assert proc.returncode != 0 and "different names" in proc.stderr


def test_only_lexical_learns_the_bm25_weights(tmp_path: Path) -> None:
    """Encoders fixed, two scalars learned from zero: the BM25 weights grow (the container
    a first pick names is what finds the second fact) and held-out EM rises."""
    from qrag_cli.model import from_base, save_model
    from qrag_cli.pqn import trainable

    write_examples(two_hop_task(300, seed=0), tmp_path / "train.jsonl")
    write_examples(two_hop_task(40, seed=1), tmp_path / "eval.jsonl")
    start = trainable(from_base(layers=2), frozen_chunks=True, lexical=[0.0, 0.0])
    save_model(start, tmp_path / "start")
    out = tmp_path / "model"
    result = json.loads(
        run_qrag(
            "train",
            str(tmp_path / "train.jsonl"),
            "--eval",
            str(tmp_path / "eval.jsonl"),
            "--base",
            str(tmp_path / "start"),
            "--out",
            str(out),
            "--only-lexical",
            "--state-chunk-cap",
            "48",
            "--budget",
            "2",
            "--updates",
            "30",
            "--warm-start",
            "30",
            "--batch",
            "8",
            "--eval-every",
            "10",
            "--json",
            check=True,
            timeout=1200,
        ).stdout
    )
    # Measured: held-out EM 0.075 -> 0.275, weights 0/0 -> 0.11/0.12 (a 2-layer encoder
    # that never learned the task; the BM25 terms alone carry the gain).
    assert result["after"]["fact_em"] >= result["before"]["fact_em"] + 0.15, result
    config = json.loads((out / "config.json").read_text())
    weights = [t["weight"] for t in config["q"]["terms"]]  # dense, question, picked
    assert weights[2] > 0.05, weights
    assert config["chunk_cap"] == 48 and config["train"]["state_chunk_cap"] == 48
    from safetensors.torch import load_file

    before = load_file(str(tmp_path / "start" / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in after)  # the encoder did not move


def test_soft_q_learning_alone_learns_the_head(tmp_path: Path) -> None:
    """No warm start: every update is soft Q-learning. From small BM25 weights (held-out
    EM ~0.6) the head learns to follow the bridge: held-out EM rises and both weights grow.
    Before the head had a fast bias, the same run drove the weights negative and EM to 0
    (TD matched the returns' level through the weights)."""
    from qrag_cli.model import from_base, save_model
    from qrag_cli.pqn import trainable

    write_examples(two_hop_task(300, seed=0), tmp_path / "train.jsonl")
    write_examples(two_hop_task(40, seed=1), tmp_path / "eval.jsonl")
    start = trainable(from_base(layers=2), frozen_chunks=True, lexical=[0.04, 0.04])
    save_model(start, tmp_path / "start")
    out = tmp_path / "model"
    args = ["--base", str(tmp_path / "start"), "--out", str(out), "--only-lexical"]
    result = json.loads(
        run_qrag(
            "train", str(tmp_path / "train.jsonl"), "--eval", str(tmp_path / "eval.jsonl"),
            *args, "--budget", "2", "--updates", "30", "--warm-start", "0", "--batch", "8",
            "--eval-every", "10", "--json", check=True, timeout=1200,
        ).stdout
    )  # fmt: skip
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    phases = {row["phase"] for row in log if row.get("event") == "update"}
    assert phases == {"q-learning"}  # no imitation update ran
    # Measured: 0.575 -> 1.0 at update 20 (kept), weights 0.04/0.04 -> 0.051/0.073.
    assert result["before"]["fact_em"] <= 0.7
    assert result["after"]["fact_em"] >= result["before"]["fact_em"] + 0.2, result
    terms = json.loads((out / "config.json").read_text())["q"]["terms"]
    assert terms[1]["weight"] > 0.045 and terms[2]["weight"] > 0.045, terms  # from 0.04
