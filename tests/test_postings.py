"""Stored BM25 postings (store/postings.py): FTS5's own scores, bit for bit, read from
tables kept in step with every change to an index; an index without them, or with them
left behind or damaged, still answers through FTS5 and gets them counted again."""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from conftest import run_qrag

import qrag_cli.store.postings as postings
from qrag_cli import lexical
from qrag_cli.config import resolve_index
from qrag_cli.store import open_snapshot

# Words that stand in most chunks (their IDF is floored), words in some, rare names, and
# text that only FTS5's tokenizer reads right (diacritics, ligatures, apostrophes).
COMMON = "record engine valve river north station mill harbour".split()
SOME = [f"word{i}" for i in range(60)]
ODD = ["café", "Ünïcode-ß", "don't", "ﬁnance", "İstanbul", "Olga Ros", "U.S.", "x_y", "Ωmega"]


def write_corpus(root: Path, seed: int, files: int = 12) -> Path:
    """Markdown notes: a title, sections under `##`, paragraphs of these words."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        lines = [f"# {rng.choice(COMMON).title()} {rng.choice(ODD)} notes {seed}-{f}", ""]
        for s in range(rng.randint(2, 5)):
            lines += [f"## {rng.choice(SOME)} {rng.choice(ODD)} {s}", ""]
            for _ in range(rng.randint(1, 3)):
                words = [rng.choice(COMMON + SOME + ODD) for _ in range(rng.randint(15, 70))]
                lines += [" ".join(words) + ".", ""]
        (root / f"note-{seed}-{f}.md").write_text("\n".join(lines))
    return root


def queries(texts: list[str], seed: int, n: int) -> list[list[str]]:
    """Bags of entries as Q asks them: question words, a picked chunk's first words,
    phrases of two words, odd entries, repeats and more than MAX_TERMS entries."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = lexical.terms(rng.choice(texts))
        entries = rng.sample(words, min(rng.randint(1, 70), len(words)))
        if i % 3 == 0:
            split = rng.choice(texts).split()
            entries += [" ".join(split[j : j + 2]) for j in range(0, min(6, len(split)), 2)]
            entries += [*rng.sample(ODD, 3), ".", entries[0] if entries else "record"]
            rng.shuffle(entries)
        out.append(entries or ["record"])
    return out


def assert_same_as_fts5(index_dir: Path, seed: int, n: int = 150) -> None:
    with open_snapshot(index_dir) as snap:
        assert snap.uses_postings, "the index's postings are not used"
        fts5 = lexical.Searcher(snap.conn)  # the same snapshot, scored by FTS5
        texts = [f"{c.text} {' '.join(c.heading)}" for c in snap.chunks(snap.live_ids().tolist())]
        for entries in queries(texts, seed, n):
            ids, scores = snap.bm25(entries)
            want_ids, want_scores = fts5.bm25(entries)
            assert np.array_equal(ids, want_ids), entries
            assert np.array_equal(scores, want_scores), entries  # bit for bit


def database(index_dir: Path) -> Path:
    return index_dir / (index_dir / "CURRENT").read_text().strip() / "index.sqlite"


def stored_tables(index_dir: Path) -> tuple[list, list]:
    conn = sqlite3.connect(database(index_dir))
    try:
        return (
            conn.execute("SELECT * FROM postings ORDER BY term, part").fetchall(),
            conn.execute("SELECT * FROM chunk_lengths ORDER BY part").fetchall(),
        )
    finally:
        conn.close()


def counted_afresh(index_dir: Path, tmp_path: Path) -> tuple[list, list]:
    """What `rebuild` counts from the chunks, in a copy of the index."""
    copy = Path(shutil.copytree(index_dir, tmp_path / "fresh-count"))
    conn = sqlite3.connect(database(copy), isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    postings.rebuild(conn)
    conn.execute("COMMIT")
    conn.close()
    return stored_tables(copy)


@pytest.fixture
def small_parts(monkeypatch) -> None:
    """Eight chunk ids a blob row, so that a small index spans many parts."""
    monkeypatch.setattr(postings, "PART_BITS", 3)


def test_stored_postings_give_fts5s_scores_bit_for_bit(tmp_path: Path, small_parts) -> None:
    run_qrag("index", str(write_corpus(tmp_path / "notes", 1)), check=True)
    index_dir = resolve_index(None)
    with open_snapshot(index_dir) as snap:
        assert snap.n_chunks > 40
        heads = snap.conn.execute("SELECT count(*) FROM chunks WHERE heading != ''").fetchone()
        assert heads[0] == snap.n_chunks  # every chunk has a heading path to score
        parts = snap.conn.execute("SELECT count(DISTINCT part) FROM postings").fetchone()[0]
        assert parts > 3
    assert_same_as_fts5(index_dir, seed=0)


def test_ascii_entries_are_tokenized_as_fts5_does() -> None:
    rng = random.Random(0)
    alphabet = "abcXYZ019 _-.'\"/\\:;,!?()[]{}#@$%^&*+=<>|~`\t"
    for _ in range(500):
        entry = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 14)))
        assert lexical.query_tokens(entry) == lexical.fts5_tokens(entry), entry
    assert lexical.query_tokens("Olga Ros") == ("olga", "ros")
    assert lexical.query_tokens("Ünïcode-ß") == ("unicode", "ß")  # FTS5 folds the diacritics


def test_every_change_keeps_the_postings_as_a_fresh_count(tmp_path: Path, small_parts) -> None:
    notes = write_corpus(tmp_path / "notes", 2)
    run_qrag("index", str(notes), check=True)
    index_dir = resolve_index(None)
    first = stored_tables(index_dir)
    assert first == counted_afresh(index_dir, tmp_path / "a")
    # A file changed, one removed, two added (one with the words of none before).
    (notes / "note-2-0.md").write_text("# Changed\n\nrecord valve café and zygote words.\n")
    (notes / "note-2-1.md").unlink()
    write_corpus(notes, 3, files=2)
    (notes / "new.md").write_text("# Quasar\n\n## Ωmega\n\nquasar pulsar record.\n")
    run_qrag("index", str(notes), check=True)
    after = stored_tables(index_dir)
    assert after != first
    assert after == counted_afresh(index_dir, tmp_path / "b")
    terms = {row[0] for row in after[0]}
    assert {"quasar", "pulsar", "zygote"} <= terms
    conn = sqlite3.connect(database(index_dir))
    assert postings.disagreement(conn) is None
    conn.close()
    assert_same_as_fts5(index_dir, seed=1, n=60)


def change(index_dir: Path, *statements: str) -> None:
    """Run SQL on the index's live database behind qrag's back (one transaction)."""
    conn = sqlite3.connect(database(index_dir))
    with conn:
        for statement in statements:
            conn.execute(statement)
    conn.close()


def indexed_notes(tmp_path: Path, seed: int) -> tuple[Path, tuple[list, list]]:
    """A small index of notes (the default index) and its stored postings."""
    run_qrag("index", str(write_corpus(tmp_path / "notes", seed, files=4)), check=True)
    index_dir = resolve_index(None)
    return index_dir, stored_tables(index_dir)


@pytest.mark.parametrize("stale", [postings.GENERATION, postings.PARTS])
def test_postings_left_behind_are_not_read_and_are_counted_again(
    tmp_path: Path, stale: str
) -> None:
    index_dir, want = indexed_notes(tmp_path, 4)
    # An older qrag wrote since (the generation moved on without them), or another
    # qrag cut them in parts of another size.
    change(
        index_dir,
        f"UPDATE meta SET value = '99' WHERE key = '{stale}'",
        "DELETE FROM postings WHERE term = 'record'",
    )
    with open_snapshot(index_dir) as snap:
        assert not snap.uses_postings  # FTS5 scores instead
        ids, _ = snap.bm25(["record"])
        assert len(ids) > 0
    ask = run_qrag("ask", "which record mentions the valve?", "--json", "--steps", "2")
    assert ask.returncode == 0 and json.loads(ask.stdout)["evidence"], ask.stderr
    again = run_qrag("index", "--index", str(index_dir), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["repaired"] == []  # behind is not damage
    assert stored_tables(index_dir) == want
    assert_same_as_fts5(index_dir, seed=2, n=30)


def test_an_index_from_before_postings_answers_and_gains_them(tmp_path: Path) -> None:
    index_dir, want = indexed_notes(tmp_path, 5)
    conn = sqlite3.connect(database(index_dir))
    conn.executescript(
        "DROP TABLE postings; DROP TABLE chunk_lengths; PRAGMA user_version = 3;"
        "DELETE FROM meta WHERE key LIKE 'postings_%';"
    )
    conn.close()
    ask = run_qrag("ask", "which record mentions the valve?", "--json", "--steps", "2")
    assert ask.returncode == 0 and json.loads(ask.stdout)["evidence"], ask.stderr
    again = run_qrag("index", "--index", str(index_dir), "--json")
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["chunks_embedded"] == 0 and not summary["rebuild"]  # nothing embedded again
    assert stored_tables(index_dir) == want


def test_damaged_postings_are_reported_and_counted_again(tmp_path: Path) -> None:
    index_dir, want = indexed_notes(tmp_path, 6)
    change(index_dir, "DELETE FROM postings WHERE term = 'valve'")
    check = run_qrag("status", "--check", "--json")
    assert check.returncode != 0
    problems = json.loads(check.stdout)[0]["problems"]
    assert any("postings" in p for p in problems), problems
    again = run_qrag("index", "--index", str(index_dir), "--json")
    assert again.returncode == 0, again.stderr
    assert any("postings" in r for r in json.loads(again.stdout)["repaired"])
    assert stored_tables(index_dir) == want
    assert run_qrag("status", "--check", "--json").returncode == 0


def test_a_posting_of_the_wrong_size_is_one_line_with_the_fix(tmp_path: Path) -> None:
    index_dir, _ = indexed_notes(tmp_path, 7)
    change(index_dir, "UPDATE postings SET data = substr(data, 1, 5) WHERE term = 'valve'")
    ask = run_qrag("ask", "which valve?", "--json", "--steps", "2", "--no-stop")
    assert ask.returncode != 0 and ask.stdout == ""
    assert ask.stderr.count("\n") == 1 and "Traceback" not in ask.stderr, ask.stderr
    assert "postings" in ask.stderr and "qrag index --index" in ask.stderr, ask.stderr
    again = run_qrag("index", "--index", str(index_dir), "--json")
    assert any("wrong size" in r for r in json.loads(again.stdout)["repaired"]), again.stdout
