"""Tests of the chunker, with the real (offline) cl100k_base tokenizer."""

from __future__ import annotations

import itertools
import random
import string

import pytest

from qrag_cli.chunk import CHUNKER_VERSION, chunk_document, count_tokens, encoding
from qrag_cli.config import ChunkConfig
from qrag_cli.types import Chunk, Document

WORDS = [
    *("river", "city", "engine", "inventor", "zephyr", "harbor", "museum", "station"),
    *("bridge", "north", "south", "archive", "ledger", "copper", "valley", "signal"),
    *("winter", "garden", "theory", "lantern", "market"),
]


def make_doc(text: str) -> Document:
    """A plain-text Document whose line_map has one entry per line start (1-based)."""
    line_map = [(0, 1)]
    pos = text.find("\n")
    while pos != -1:
        line_map.append((pos + 1, len(line_map) + 1))
        pos = text.find("\n", pos + 1)
    return Document(text, "text", tuple(line_map))


def sentence(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words)).capitalize() + "."


def paragraph(rng: random.Random, n_sentences: int, n_words: int = 10) -> str:
    return " ".join(sentence(rng, n_words) for _ in range(n_sentences))


def char_span(doc: Document, chunk: Chunk) -> tuple[int, int]:
    if doc.text.isascii():  # bytes are chars; keeps the big-input tests linear
        start = chunk.start_byte
    else:
        start = len(doc.text.encode()[: chunk.start_byte].decode())
    return start, start + len(chunk.text)


def check_chunks(doc: Document, chunks: list[Chunk], cfg: ChunkConfig) -> list[tuple[int, int]]:
    """Invariants every chunking must satisfy; returns the chunks' char spans."""
    raw = doc.text.encode()
    spans = []
    for i, chunk in enumerate(chunks):
        assert chunk.seq == i
        assert chunk.text and chunk.text == chunk.text.strip()
        assert chunk.n_tokens == count_tokens(chunk.text) <= cfg.chunk_tokens
        assert raw[chunk.start_byte : chunk.end_byte].decode() == chunk.text
        start, end = char_span(doc, chunk)
        assert doc.text[start:end] == chunk.text
        spans.append((start, end))
    # Every non-whitespace character is in some chunk.
    covered = 0
    for start, end in sorted(spans):
        assert not doc.text[covered:start].strip(), "text left out of every chunk"
        covered = max(covered, end)
    assert not doc.text[covered:].strip()
    return spans


def test_encoding_and_version() -> None:
    assert encoding() is encoding()  # loaded once
    assert count_tokens("hello world") == 2
    assert ChunkConfig().version == CHUNKER_VERSION


@pytest.mark.parametrize("text", ["", "   ", "\n\n \t\n"])
def test_empty_document(text: str) -> None:
    assert chunk_document(make_doc(text), ChunkConfig()) == []


def test_bad_config() -> None:
    with pytest.raises(ValueError):
        chunk_document(make_doc("x"), ChunkConfig(chunk_tokens=64, overlap=64))
    with pytest.raises(ValueError):
        chunk_document(make_doc("x"), ChunkConfig(chunk_tokens=2, overlap=0))


def test_budget_slices_and_line_numbers() -> None:
    rng = random.Random(1)
    paras = [paragraph(rng, rng.randint(1, 9)) for _ in range(30)]
    # Hard-wrapped lines inside paragraphs, leading and trailing blank space.
    text = "\n\n" + "\n\n\n".join(p.replace(". ", ".\n", 2) for p in paras) + "\n  \n"
    doc = make_doc(text)
    cfg = ChunkConfig()
    chunks = chunk_document(doc, cfg)
    assert len(chunks) > 5
    for chunk, (start, end) in zip(chunks, check_chunks(doc, chunks, cfg), strict=True):
        assert chunk.start_line == text.count("\n", 0, start) + 1
        assert chunk.end_line == text.count("\n", 0, end - 1) + 1
    # Blank lines before the text do not count as its first line.
    (only,) = chunk_document(make_doc("\n\n  Alpha beta.\nGamma.\n\nDelta.\n\n"), cfg)
    assert (only.start_line, only.end_line, only.text) == (3, 6, "Alpha beta.\nGamma.\n\nDelta.")


def test_cuts_at_paragraph_boundaries_when_paragraphs_fit() -> None:
    rng = random.Random(2)
    paras = [paragraph(rng, rng.randint(2, 4)) for _ in range(40)]  # ~25-60 tokens each
    assert all(count_tokens(p) < 64 for p in paras)
    text = "\n\n".join(paras)
    doc = make_doc(text)
    cfg = ChunkConfig(chunk_tokens=128, overlap=0)
    chunks = chunk_document(doc, cfg)
    check_chunks(doc, chunks, cfg)
    for chunk in chunks:  # whole paragraphs only
        parts = chunk.text.split("\n\n")
        assert all(part in paras for part in parts)
    assert sum(c.text.count("\n\n") + 1 for c in chunks) == len(paras)
    # Greedy: no two neighbouring chunks could have been merged within the budget.
    for a, b in itertools.pairwise(chunks):
        assert count_tokens(a.text + "\n\n" + b.text.split("\n\n")[0]) > cfg.chunk_tokens


def test_long_paragraph_cut_at_sentence_ends() -> None:
    rng = random.Random(3)
    text = paragraph(rng, 60, n_words=12)  # one paragraph, ~800 tokens
    doc = make_doc(text)
    cfg = ChunkConfig(chunk_tokens=100, overlap=0)
    chunks = chunk_document(doc, cfg)
    check_chunks(doc, chunks, cfg)
    assert len(chunks) >= 8
    for chunk in chunks:
        assert chunk.text.endswith(".")
        assert chunk.text[0].isupper()
    assert all(c.n_tokens >= 50 for c in chunks[:-1])  # close to the target, not tiny


def test_overlap_present_and_bounded() -> None:
    rng = random.Random(4)
    text = "\n\n".join(paragraph(rng, rng.randint(3, 12)) for _ in range(20))
    doc = make_doc(text)
    cfg = ChunkConfig(chunk_tokens=96, overlap=16)
    chunks = chunk_document(doc, cfg)
    spans = check_chunks(doc, chunks, cfg)
    shared_sizes = []
    for (s0, e0), (s1, e1) in itertools.pairwise(spans):
        assert s0 < s1 and e0 < e1  # progress
        assert s1 < e0  # the next chunk repeats the end of this one
        shared = text[s1:e0]
        assert 0 < count_tokens(shared) <= cfg.overlap
        assert text[s1 - 1].isspace()  # snapped to a word start
        shared_sizes.append(count_tokens(shared))
    assert sum(shared_sizes) / len(shared_sizes) >= cfg.overlap / 2

    no_overlap = chunk_document(doc, ChunkConfig(chunk_tokens=96, overlap=0))
    spans = check_chunks(doc, no_overlap, ChunkConfig(chunk_tokens=96, overlap=0))
    for (_, e0), (s1, _) in itertools.pairwise(spans):
        assert s1 >= e0


def test_huge_line_without_spaces() -> None:
    rng = random.Random(5)
    alphabet = string.ascii_letters + string.digits + "_/+="
    text = "".join(rng.choices(alphabet, k=2_000_000))
    doc = make_doc(text)
    cfg = ChunkConfig()
    chunks = chunk_document(doc, cfg)
    spans = check_chunks(doc, chunks, cfg)  # includes complete coverage
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(c.start_line == c.end_line == 1 for c in chunks)
    sizes = [c.n_tokens for c in chunks[:-1]]
    assert sum(sizes) / len(sizes) > 0.8 * cfg.chunk_tokens


def test_huge_line_of_one_letter() -> None:
    # One giant pre-token: must be tokenized in bounded slices, not as a whole.
    text = "intro words here\n" + "a" * 300_000 + "\ntail line"
    doc = make_doc(text)
    cfg = ChunkConfig(chunk_tokens=64, overlap=8)
    chunks = chunk_document(doc, cfg)
    check_chunks(doc, chunks, cfg)
    assert chunks[-1].end_line == 3


def test_utf8_byte_offsets() -> None:
    rng = random.Random(6)
    pieces = ["Café crème brûlée.", "漢字の文章です。", "Emoji 🎉🚀 here!", "Ünïcödé ñ."]
    paras = [" ".join(rng.choice(pieces) for _ in range(rng.randint(2, 12))) for _ in range(15)]
    paras.append("🎉漢é" * 400)  # multi-byte run with no whitespace: cut between tokens
    text = "\n\n".join(paras)
    doc = make_doc(text)
    cfg = ChunkConfig(chunk_tokens=48, overlap=8)
    chunks = chunk_document(doc, cfg)
    assert len(chunks) > 10
    check_chunks(doc, chunks, cfg)
    raw = text.encode()
    for chunk in chunks:
        assert raw[chunk.start_byte : chunk.end_byte].decode() == chunk.text


def test_fits_predicate_forces_further_splits() -> None:
    rng = random.Random(7)
    text = "\n\n".join(paragraph(rng, rng.randint(2, 10)) for _ in range(15))
    doc = make_doc(text)
    cfg = ChunkConfig()
    plain = chunk_document(doc, cfg)
    calls: list[str] = []

    def fits(chunk_text: str) -> bool:
        calls.append(chunk_text)
        return len(chunk_text) <= 160

    split = chunk_document(doc, cfg, fits=fits)
    assert calls
    check_chunks(doc, split, cfg)
    assert len(split) > len(plain)
    assert all(fits(c.text) for c in split)
    assert all(c.text[-1] != " " and c.text[0] != " " for c in split)


def test_million_tokens() -> None:
    # No timing assertion (machines differ); this checks a corpus-sized input completes
    # with every invariant intact.
    rng = random.Random(8)
    paras = [paragraph(rng, rng.randint(1, 12), n_words=rng.randint(4, 25)) for _ in range(400)]
    code = "\n".join(f"    value_{i} = compute(x[{i}], y={i * 7})  # step {i}" for i in range(300))
    block = "\n\n".join(paras) + "\n\n" + code + "\n\n"
    text = block * (1_000_000 // count_tokens(block) + 1)
    doc = make_doc(text)
    assert count_tokens(text) >= 1_000_000
    cfg = ChunkConfig()
    chunks = chunk_document(doc, cfg)
    check_chunks(doc, chunks, cfg)
    assert len(chunks) > 1_000_000 // cfg.chunk_tokens
