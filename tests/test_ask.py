"""`qrag ask`: the episode, stop rules, ANN vs exact, JSON, batch mode and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import HOP_QUESTION, run_qrag
from test_index import make_corpus

from qrag_cli import qstate
from qrag_cli.config import ChunkConfig, resolve_index
from qrag_cli.episode import (
    IndexCandidates,
    MemoryCandidates,
    MemoryChunk,
    StopRule,
    boltzmann,
    run_episodes,
)
from qrag_cli.indexer import build_index
from qrag_cli.model import load_model, save_model
from qrag_cli.store import ChunkRow, open_snapshot

EVIDENCE_KEYS = {"step", "q", "chunk_id", "path", "start_line", "end_line", "text"}


@pytest.fixture
def hop_index(hop_corpus: Path, base_model) -> Path:
    index_dir = resolve_index(None)
    build_index([hop_corpus], index_dir, base_model, ChunkConfig())
    return index_dir


def test_each_step_is_conditioned_on_the_picked_chunks(base_model, hop_corpus) -> None:
    """Step t's pick is argmax <E_s(question + picked, document order), E_a(chunk)>."""
    from conftest import HOP_FILES

    texts = list(HOP_FILES.values())
    vectors = base_model.embed_chunks(texts)
    source = MemoryCandidates(texts, vectors)
    episode = run_episodes(base_model, [HOP_QUESTION], [source], StopRule(3))[0]
    picked = [ev.chunk_id for ev in episode.evidence]
    assert len(set(picked)) == 3
    rows = source.rows(range(len(texts)))
    state = qstate.start(base_model, [HOP_QUESTION])[0]
    first_state = base_model.embed_states([qstate.state_tokens(base_model, state)])[0]
    for step, ev in enumerate(episode.evidence):
        before = sorted(picked[:step])  # ordinal == index for in-memory chunks
        tokens = qstate.state_tokens(base_model, state)
        cls, sep = base_model.tokenizer.cls_token_id, base_model.tokenizer.sep_token_id
        expected = [cls, *base_model.chunk_ids([HOP_QUESTION], 64)[0], sep]
        for i in before:  # picked chunks in document order, each capped, each closed by SEP
            expected += [*base_model.chunk_ids([texts[i]], base_model.cfg.chunk_cap)[0], sep]
        assert tokens == expected[: base_model.cfg.state_max_tokens]
        scores = vectors @ base_model.embed_states([tokens])[0]
        scores[before] = -np.inf
        assert int(np.argmax(scores)) == ev.chunk_id
        assert ev.q == pytest.approx(float(scores.max()), abs=1e-5)
        state = qstate.pick(base_model, state, rows[ev.chunk_id])
    # Conditioning matters: the second pick's Q differs from its single-step score.
    second = episode.evidence[1]
    assert abs(float(vectors[second.chunk_id] @ first_state) - second.q) > 1e-4


def test_picked_chunks_are_excluded_and_exhaustion_stops(hop_index: Path, base_model) -> None:
    with open_snapshot(hop_index) as snapshot:
        episode = run_episodes(
            base_model, [HOP_QUESTION], [IndexCandidates(snapshot)], StopRule(max_steps=20)
        )[0]
    ids = [ev.chunk_id for ev in episode.evidence]
    assert len(ids) == len(set(ids)) == 8
    assert episode.stop == "exhausted"
    assert all(ev.chunk_id not in dict(ev.alternatives) for ev in episode.evidence)


def test_threshold_and_budget_stops(hop_index: Path, base_model) -> None:
    with open_snapshot(hop_index) as snapshot:
        src = IndexCandidates(snapshot)
        high = run_episodes(base_model, [HOP_QUESTION], [src], StopRule(4, threshold=10.0))[0]
        low = run_episodes(base_model, [HOP_QUESTION], [src], StopRule(4, threshold=-10.0))[0]
        mid_q = high.evidence[0].alternatives[1][1]
        mid = run_episodes(base_model, [HOP_QUESTION], [src], StopRule(6, threshold=mid_q))[0]
    assert len(high.evidence) == 1 and high.stop == "complete"  # never before the first pick
    assert len(low.evidence) == 4 and low.stop == "budget"
    assert mid.stop == "complete" and all(ev.q >= mid_q for ev in mid.evidence)


def test_budget_stop_says_whether_more_evidence_was_expected(hop_index: Path, base_model) -> None:
    """One extra scoring after a budget stop asks the rule about step budget + 1; it never
    changes the evidence, and a model without a rule is not asked at all."""
    with open_snapshot(hop_index) as snapshot:
        src = IndexCandidates(snapshot)
        plain = run_episodes(base_model, [HOP_QUESTION], [src], StopRule(3))[0]
        third_q = plain.evidence[2].q
        assert plain.evidence[1].q > third_q  # the rule below fires at step 3, not before
        rules = {
            "never": StopRule(2, threshold=-10.0),
            "at_step_3": StopRule(2, threshold=(plain.evidence[1].q + third_q) / 2),
            "off": StopRule(2),
        }
        runs = {
            name: run_episodes(base_model, [HOP_QUESTION], [src], rule)[0]
            for name, rule in rules.items()
        }
        exhausted = run_episodes(base_model, [HOP_QUESTION], [src], StopRule(20, -10.0))[0]
    for ep in runs.values():
        assert ep.stop == "budget"
        assert [e.chunk_id for e in ep.evidence] == [e.chunk_id for e in plain.evidence[:2]]
        assert [e.q for e in ep.evidence] == [e.q for e in plain.evidence[:2]]
    assert runs["never"].more_expected is True
    assert runs["at_step_3"].more_expected is False
    assert runs["off"].more_expected is None and plain.more_expected is None
    assert exhausted.stop == "exhausted" and exhausted.more_expected is False


def test_cli_threshold_flags(hop_index: Path) -> None:
    stopped = json.loads(
        run_qrag("ask", HOP_QUESTION, "--json", "--threshold", "5", check=True).stdout
    )
    assert stopped["stop"] == "complete" and len(stopped["evidence"]) == 1
    assert stopped["more_expected"] is False
    full = json.loads(
        run_qrag(
            "ask",
            HOP_QUESTION,
            "--json",
            "--threshold",
            "5",
            "--no-stop",
            "--steps",
            "3",
            check=True,
        ).stdout
    )
    assert full["stop"] == "budget" and len(full["evidence"]) == 3
    assert full["more_expected"] is None  # --no-stop: no rule to ask


def test_cli_says_when_the_budget_cut_the_evidence_short(hop_index: Path) -> None:
    short = run_qrag("ask", HOP_QUESTION, "--json", "--threshold", "-10", "--steps", "2")
    out = json.loads(short.stdout)
    assert out["stop"] == "budget" and out["more_expected"] is True
    assert short.stderr.count("note:") == 1 and "larger --steps" in short.stderr
    table = run_qrag("ask", HOP_QUESTION, "--threshold", "-10", "--steps", "2", check=True)
    assert "larger --steps" in table.stderr and "more evidence expected" in table.stderr
    done = run_qrag("ask", HOP_QUESTION, "--threshold", "5", check=True)
    assert "evidence complete" in done.stderr and "--steps" not in done.stderr
    for args in (["--steps", "2"], ["--threshold", "-10", "--steps", "2", "--no-stop"]):
        quiet = run_qrag("ask", HOP_QUESTION, "--json", *args, check=True)
        assert json.loads(quiet.stdout)["more_expected"] is None and "note" not in quiet.stderr


def test_json_schema_and_explain(hop_index: Path) -> None:
    proc = run_qrag("ask", HOP_QUESTION, "--json", "--steps", "2", "--explain", check=True)
    out = json.loads(proc.stdout)
    assert set(out) >= {"question", "model", "index", "evidence", "stop", "answer", "timings_ms"}
    assert out["question"] == HOP_QUESTION and out["answer"] is None
    assert out["stop"] in {"complete", "budget", "exhausted"}
    assert out["more_expected"] is None  # the base model has no stop rule
    assert [ev["step"] for ev in out["evidence"]] == [1, 2]
    for ev in out["evidence"]:
        assert set(ev) >= EVIDENCE_KEYS
        assert ev["path"].endswith(".txt") and ev["start_line"] == ev["end_line"] == 1
        assert len(ev["alternatives"]) == 4
    assert out["evidence"][0]["q"] >= out["evidence"][0]["alternatives"][0]["q"]
    assert {"encode_ms", "search_ms", "load_model_ms"} <= set(out["timings_ms"])


def test_terminal_table(hop_index: Path) -> None:
    proc = run_qrag("ask", HOP_QUESTION, "--steps", "2", check=True)
    assert "a.txt:1-1" in proc.stdout and "step" in proc.stdout
    assert "stopped" in proc.stderr and "stopped" not in proc.stdout


def test_batch_mode_jsonl(hop_index: Path, tmp_path: Path) -> None:
    qfile = tmp_path / "q.jsonl"
    qfile.write_text(
        json.dumps({"id": "q1", "question": HOP_QUESTION})
        + "\n\n"
        + json.dumps({"question": "Where was Emil Strand born?"})
        + "\n"
    )
    proc = run_qrag("ask", "--questions", str(qfile), "--steps", "2", check=True)
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["id"] for line in lines] == ["q1", None]
    assert all(len(line["evidence"]) == 2 for line in lines)
    assert "Emil Strand was born" in lines[1]["evidence"][0]["text"]


def test_ann_agrees_with_exact(tmp_path: Path, base_model) -> None:
    corpus = make_corpus(tmp_path / "c", 150, paragraphs=4)
    index_dir = resolve_index("agree")
    build_index([corpus], index_dir, base_model, ChunkConfig(chunk_tokens=48, overlap=0))
    questions = [f"what is the code for item {i}-{i % 4}" for i in range(0, 150, 5)]
    with open_snapshot(index_dir) as snapshot:
        assert snapshot.n_chunks > 400
        ann = run_episodes(
            base_model, questions, [IndexCandidates(snapshot)] * len(questions), StopRule(3)
        )
        exact = run_episodes(
            base_model,
            questions,
            [IndexCandidates(snapshot, exact=True)] * len(questions),
            StopRule(3),
        )
    same = sum(
        a.chunk_id == b.chunk_id
        for ea, eb in zip(ann, exact, strict=True)
        for a, b in zip(ea.evidence, eb.evidence, strict=True)
    )
    assert same / (3 * len(questions)) >= 0.99


def test_in_memory_chunks_are_not_store_rows() -> None:
    """Training and evaluation chunks have no file: their own type, no made-up path."""
    source = MemoryCandidates(["alpha beta", "gamma delta"], np.zeros((2, 4), np.float32))
    rows = source.rows([1, 0])
    assert rows == [
        MemoryChunk(id=1, ordinal=1, text="gamma delta"),
        MemoryChunk(id=0, ordinal=0, text="alpha beta"),
    ]
    assert not any(isinstance(row, ChunkRow) for row in rows)


def test_boltzmann_policy_explores_but_prefers_the_best() -> None:
    rng = np.random.default_rng(0)
    pick = boltzmann(0.1, rng)
    q = np.array([1.0, 0.9, 0.5])
    counts = np.bincount([pick(q) for _ in range(2000)], minlength=3)
    assert counts[0] > counts[1] > counts[2] > 0


def test_errors_are_one_clear_line(hop_index: Path, tmp_path: Path, base_model) -> None:
    def one_line_error(proc, needle: str) -> None:
        assert proc.returncode != 0
        assert proc.stdout == ""
        assert needle in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr
        assert "Traceback" not in proc.stderr

    one_line_error(run_qrag("ask", "x", "--index", "nothere"), "run `qrag index")
    one_line_error(run_qrag("ask", "   "), "empty")
    one_line_error(run_qrag("ask", "x", "--steps", "0"), "--steps")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok"}\nnot json\n')
    one_line_error(run_qrag("ask", "--questions", str(bad)), "bad.jsonl:2")

    other = tmp_path / "other-model"
    model = load_model("base")
    model.cfg.scale = 0.5  # a different embedding function -> a different fingerprint
    save_model(model, other)
    one_line_error(run_qrag("ask", "x", "--model", str(other)), "re-index")

    with open_snapshot(hop_index) as snapshot:
        folder = snapshot.folder
        gen = snapshot.generation
    (folder / f"hnsw-{gen}.bin").write_bytes(b"garbage")
    one_line_error(run_qrag("ask", "x"), "repair it with `qrag index --index")
    with (folder / "vectors.f32").open("r+b") as fh:
        fh.truncate(100)
    one_line_error(run_qrag("ask", "x", "--exact"), "truncated")
