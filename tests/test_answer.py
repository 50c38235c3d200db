"""`qrag ask --answer` end to end: real index, real llama.cpp, real GGUF files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_qrag
from gguf_tiny import write_tiny_gguf

# One llama.cpp thread: on a busy machine its spinning worker threads slow it many times over.
ONE_THREAD = ("--threads", "1")


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def test_answer_json_with_tiny_model(sample_index, tiny_gguf: Path) -> None:
    proc = run_qrag(
        "ask",
        "Where was Ada Lindqvist born?",
        "--answer",
        "--llm",
        str(tiny_gguf),
        *ONE_THREAD,
        "--max-tokens",
        "8",
        "--json",
        "--steps",
        "2",
        check=True,
    )
    out = json.loads(proc.stdout)  # llama.cpp logs must not leak into stdout
    assert isinstance(out["answer"], str) and isinstance(out["citations"], list)
    assert len(out["evidence"]) == 2 and out["trimmed"] == []
    assert out["timings_ms"]["llm_generated_tokens"] > 0


def test_answer_streams_then_lists_evidence(sample_index, tiny_gguf: Path) -> None:
    proc = run_qrag(
        "ask",
        "Where was Ada Lindqvist born?",
        "--answer",
        "--llm",
        str(tiny_gguf),
        *ONE_THREAD,
        "--max-tokens",
        "8",
        "--steps",
        "2",
        check=True,
    )
    lines = proc.stdout.rstrip("\n").splitlines()
    assert lines[-1].lstrip(" *").startswith("[2] qrag_cli/sample/")
    assert lines[-2].lstrip(" *").startswith("[1] qrag_cli/sample/")


def test_small_context_trims_and_says_so(sample_index, tiny_gguf: Path) -> None:
    proc = run_qrag(
        "ask",
        "Where was Ada Lindqvist born?",
        "--answer",
        "--llm",
        str(tiny_gguf),
        *ONE_THREAD,
        "--max-tokens",
        "8",
        "--steps",
        "3",
        "--n-ctx",
        "1100",
        "--json",
        check=True,
    )
    out = json.loads(proc.stdout)
    assert out["trimmed"], "n_ctx 1100 cannot hold three chunks in a byte-level vocabulary"


def test_reader_errors(sample_index, tmp_path: Path, tiny_gguf: Path) -> None:
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_text("hello")
    for args, needle in (
        (["--llm", str(tmp_path / "missing.gguf")], "no such LLM file"),
        (["--llm", str(not_gguf)], "not a GGUF"),
        (["--llm", str(tiny_gguf), "--n-ctx", "32"], "context too small"),
    ):
        proc = run_qrag("ask", "Where was Ada born?", "--answer", *args)
        assert proc.returncode != 0 and proc.stdout == ""
        assert needle in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr


def test_default_reader_is_configurable(tmp_path: Path, tiny_gguf: Path) -> None:
    proc = run_qrag("config", "--llm", str(tiny_gguf), "--json", check=True)
    assert json.loads(proc.stdout)["llm"] == str(tiny_gguf.resolve())


def test_default_reader_answers_from_the_evidence(sample_index) -> None:
    proc = run_qrag(
        "ask",
        "In which town was Ada Lindqvist born?",
        "--answer",
        "--steps",
        "1",
        "--json",
        *ONE_THREAD,
        check=True,
    )
    out = json.loads(proc.stdout)
    assert any("Tarsholm" in ev["text"] for ev in out["evidence"])
    assert "tarsholm" in out["answer"].lower()


def test_an_answer_citing_nothing_says_so(sample_index, tmp_path: Path) -> None:
    no_brackets = write_tiny_gguf(tmp_path / "plain.gguf", emit=b"abcdefgh ")
    args = ("--answer", "--llm", str(no_brackets), *ONE_THREAD, "--max-tokens", "6", "-n", "2")
    for extra in ((), ("--json",)):
        proc = run_qrag("ask", "Where was Ada Lindqvist born?", *args, *extra, check=True)
        assert "cites none of the evidence" in proc.stderr
        assert "cites none" not in proc.stdout  # a note, not a result


def test_uncited_note_only_for_answers_without_citations() -> None:
    from qrag_cli.prompt import Answer
    from qrag_cli.render import uncited_note

    assert uncited_note(Answer("Tarsholm [1]", [1], [], [])) is None
    assert "cites none" in (uncited_note(Answer("Tarsholm", [], [], [])) or "")
    assert "no answer" in (uncited_note(Answer("  ", [], [], [])) or "")
