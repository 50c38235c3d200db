"""`qrag bench`: generated tasks are what they claim, and the suite runs every method
through the real index and ask path (real encoder, real hnswlib, real bm25s)."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
from conftest import run_qrag

from qrag_cli.bench import longctx
from qrag_cli.chunk import count_tokens
from qrag_cli.datasets import load_examples, write_examples
from qrag_cli.haystack import Story, own_paragraphs


@pytest.mark.parametrize("task", longctx.TASKS)
def test_every_story_sentence_lands_in_the_haystack_in_order(task: str) -> None:
    paragraphs, stories = longctx.make_eval(task, 3000, 4, seed=3)
    text = "\n\n".join(paragraphs)
    assert 2500 <= count_tokens(text) <= 3400
    for story in stories:
        positions = [text.index(s) for s in story.sentences]
        assert positions == sorted(positions)  # later facts overwrite earlier ones
        assert story.gold and all(g in text for g in story.gold_facts)
    assert len({s.question for s in stories}) == len(stories)  # each story its own entities


def test_story_logic() -> None:
    rng = random.Random(0)
    story = longctx.qa3(rng, longctx.Names(rng))
    pickup, to_answer, to_last = story.gold_facts
    assert "picked up" in pickup and to_answer.endswith(f"the {story.answer}.")
    assert story.question.endswith(f"before the {to_last.split()[-1][:-1]}?")
    story = longctx.vt(rng, longctx.Names(rng))
    chain = story.gold_facts
    assert chain[0].endswith(f"= {story.question.split()[-1][:-1]}.")
    for a, b in itertools.pairwise(chain):
        assert b.endswith(f"= VAR {a.split()[1]}.")  # only the first link names the value
    assert len(story.sentences) == 8  # a decoy chain of the same shape


def test_training_episodes_point_at_their_gold_chunks(tmp_path: Path) -> None:
    examples = longctx.training_examples("qa2_gen", 5, seed=1, tokens=2048)
    for ex in examples:
        assert len(ex.chunks) > 8
        gold_text = " ".join(ex.chunks[i] for i in ex.support)
        assert "picked up" in gold_text and ex.answer in gold_text
    proc = run_qrag(
        "bench",
        "data",
        "vt",
        str(tmp_path / "vt.jsonl"),
        "--n",
        "3",
        "--tokens",
        "1024",
        check=True,
    )
    assert "wrote 3 examples" in proc.stderr
    assert len(load_examples(tmp_path / "vt.jsonl")) == 3


def test_fact_scores_by_sentence() -> None:
    story = Story("q", "a", ("A one.", "B two.", "C three."), (0, 2))
    assert longctx.fact_hits(["x A one. y", "C three. z"], story) == (1.0, 1.0)
    em, f1 = longctx.fact_hits(["A one.", "noise", "more noise"], story)
    assert em == 0.0 and f1 == pytest.approx(2 * (1 / 3) * 0.5 / (1 / 3 + 0.5))
    # A real paragraph cut across chunks: a long piece finds it, a short overlap does not.
    para = " ".join(f"Sentence number {i} of a long paragraph about rivers." for i in range(12))
    story = Story("q", "a", (para,), (0,))
    assert longctx.fact_hits([para[150:420]], story)[0] == 1.0
    assert longctx.fact_hits([para[-60:] + "\n\nAnother paragraph entirely."], story)[0] == 0


def test_bench_runs_every_method_through_the_cli(tmp_path: Path) -> None:
    # A trained model (one update, 1 layer) must get its own index and its own row.
    from qrag_cli.bench.tasks import two_hop_task

    write_examples(two_hop_task(8, seed=0), tmp_path / "t.jsonl")
    run_qrag(
        "train",
        str(tmp_path / "t.jsonl"),
        "--out",
        str(tmp_path / "m"),
        "--layers",
        "1",
        "--updates",
        "1",
        "--batch",
        "2",
        "--budget",
        "2",
        "--lexical",
        "on",
        check=True,
    )
    out = tmp_path / "res"
    proc = run_qrag(
        "bench",
        "--out",
        str(out),
        "--task",
        "qa2",
        "--task",
        "niah_multikey",
        "--length",
        "2048",
        "--questions",
        "3",
        "--steps",
        "3",
        "--no-speed",
        "--no-real",
        "--model",
        str(tmp_path / "m"),
        "--lexical",
        "both",
        "--json",
        check=True,
        timeout=600,
    )
    result = json.loads(proc.stdout)
    methods = {(r["task"], r["method"]) for r in result["rows"]}
    assert {m for _, m in methods} == {
        "bm25 top-k",
        "dense top-k",
        "multi-step untrained",
        "qrag m",
        "qrag m (dense Q)",
    }  # hybrid and ablation
    assert len(methods) == 10
    for row in result["rows"]:
        assert row["n"] == 3 and row["chunks"] > 10 and row["mean_steps"] <= 3
        per_q = row["per_question"]
        assert all(q["fact_em"] in (0.0, 1.0) for q in per_q)  # all gold facts, or not
        assert len(per_q) == 3 and row["fact_em"] == sum(q["fact_em"] for q in per_q) / 3
        stop = row["stop"]
        if not row["method"].startswith("qrag"):
            assert stop is None  # no stop rule: nothing to report
            continue
        # The trained model ships a calibrated stop: scored against its own fixed budget.
        assert stop["budget"] == 3 and stop["n"] == 3 and stop["mean_steps"] == row["mean_steps"]
        shares = ("exact_share", "over_share", "under_share", "never_share")
        assert sum(stop[k] for k in shares) == pytest.approx(1.0)
        assert stop["fact_em_stop"] == pytest.approx(row["fact_em"], abs=1e-4)
    report = (out / "results.md").read_text()
    assert report.count("| qa2 |") == 5 + 2  # every method, then the two stop rows
    assert report.split("## Stop")[1].count("| qa2 |") == 2
    assert (out / "accuracy_vs_length.png").read_bytes()[:4] == b"\x89PNG"
    assert len(load_examples(out / "train" / "qa2.jsonl")) == 200


def test_bench_refuses_unknown_task(tmp_path: Path) -> None:
    proc = run_qrag("bench", "--out", str(tmp_path), "--task", "qa9", "--no-speed")
    assert proc.returncode != 0 and "unknown task 'qa9'" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0


def test_haystack_text_is_read_like_qrag_index(tmp_path: Path) -> None:
    """--haystack goes through the same discovery as `qrag index`: secrets and ignored
    files never become filler."""
    (tmp_path / "story.md").write_text(
        "A long paragraph about the harbour and its boats.\n\n"
        "Another paragraph, about the winter market square.\n"
    )
    (tmp_path / ".env").write_text("SECRET_TOKEN=abcdefabcdefabcdefabcdefabcdefabcdef\n")
    (tmp_path / ".gitignore").write_text("private.txt\n")
    (tmp_path / "private.txt").write_text("A private paragraph that must never be filler text.\n")
    paras = own_paragraphs(tmp_path)
    assert len(paras) == 2 and not any("SECRET" in p or "private" in p for p in paras)
    text = "\n\n".join(longctx.make_eval("qa1", 600, 2, seed=0, own=paras)[0])
    assert "winter market" in text and "Where is" not in text


def test_bench_without_its_extra_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bm25s and matplotlib are the `bench` extra, not qrag's dependencies: a bench started
    without one is refused before any work, naming what is missing and the fix."""
    import qrag_cli.bench

    monkeypatch.setattr(qrag_cli.bench, "EXTRA", ("bm25s", "qrag_no_such_module"))
    out = tmp_path / "results"
    for args in (["--layouts"], ["--answers"], ["--no-speed", "--no-real", "--task", "vt"]):
        proc = run_qrag("bench", *args, "--out", str(out))
        assert proc.returncode == 2, proc.stderr
        assert "qrag_no_such_module" in proc.stderr and "qrag[bench]" in proc.stderr
        assert "bm25s" not in proc.stderr.split("needs")[1].split(":")[0]  # bm25s is there
        assert not out.exists()
