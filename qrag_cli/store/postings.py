"""Stored BM25 postings: for each term, the chunks that hold it and how often, kept in the
same SQLite transactions as the chunks.

Why: in a corpus of prose a question's words each stand in most chunks, and FTS5's
`bm25()` is evaluated row by row, so one query over a 1M-token index cost ~14-20 ms,
most of a warm step (BENCHMARKS.md "Stored BM25 postings"). Read from these tables, the same
scores take well under a millisecond.

Exactness: `Postings.term_scores` is FTS5's bm25 (fts5_aux.c: k1 = 1.2, b = 0.75, IDF
floored at 1e-6, a phrase's frequency summed over columns with their weights, D = the
chunk's tokens in all columns, avgdl over the table) computed from the same counts, in
the same float64 order. FTS5 scores an OR query as the sum of its phrases' scores in
query order, so `lexical.Searcher` sums the terms in that order and gets FTS5's numbers
bit for bit (tests/test_postings.py). An entry of several tokens (a phrase) still goes to
FTS5: it needs token positions, and phrases match few chunks. FTS5 itself also counts the
tokens stored here (lexical.memory_table, token_instances), so no second tokenizer has to
agree with it.

Tables (layout.MIGRATIONS, step 4):
- `postings(term, part, data)`: int32 rows [ids; counts in the text; counts in the
  heading path] of the chunks with ids in [part << PART_BITS, (part + 1) << PART_BITS)
  that hold `term`, ids ascending. Split by id range so that a commit rewrites only the
  parts it touched (appending new chunks touches the last one).
- `chunk_lengths(part, data)`: int32 tokens (text and heading) of each chunk of the part,
  by id; 0 for ids that are gone.

meta holds the generation the postings were last made to agree with, and their parts'
size. A reader uses them only when both are this index's and this code's (`agree`): a
writer that does not keep them (an older qrag) moves the generation on and leaves them
behind, and the next writer counts them again from the chunks.
"""

from __future__ import annotations

import math
import sqlite3
from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np

from qrag_cli import lexical
from qrag_cli.types import CorruptIndexError

# 8,192 chunk ids a blob row: a commit rewrites the rows of the part it appends to, so a
# row stays small (a term in every chunk: 96 KB), and a query reads a row a part per term.
PART_BITS = 13
GENERATION = "postings_generation"  # meta: the generation they agree with
PARTS = "postings_part_bits"  # meta: PART_BITS they were written with
K1 = 1.2  # FTS5's bm25 constants (fts5_aux.c)
B = 0.75
Row = tuple[int, str, str]  # (chunk id, text, heading column) as the FTS5 table holds it


def agree(meta: dict[str, str]) -> bool:
    """Whether the stored postings are those of meta's generation, in this code's parts."""
    return meta.get(GENERATION) == meta.get("generation") and meta.get(PARTS) == str(PART_BITS)


def stamp(generation: int) -> list[tuple[str, str]]:
    """The meta rows saying the postings agree with `generation` (same transaction)."""
    return [(GENERATION, str(generation)), (PARTS, str(PART_BITS))]


class Counts:
    """Term counts of some chunks: per term an int32 (3, n) array [ids; text counts;
    heading counts] (ids ascending), and each chunk's token count."""

    def __init__(self, rows: Sequence[Row]) -> None:
        self.terms: dict[str, np.ndarray] = {}
        self.lengths: dict[int, int] = {chunk_id: 0 for chunk_id, _, _ in rows}
        if not rows:
            return
        conn = lexical.memory_table(rows)
        table = lexical.token_instances(conn)
        groups = conn.execute(
            f"SELECT term, doc, col, count(*) FROM {table} GROUP BY term, doc, col"
        )
        term: str | None = None
        columns: list[list[int]] = [[], [], []]
        for name, doc, col, n in groups:  # ordered by term, doc, col
            if name != term:
                self._keep(term, columns)
                term, columns = name, [[], [], []]
            if not columns[0] or columns[0][-1] != doc:
                columns[0].append(doc)
                columns[1].append(0)
                columns[2].append(0)
            columns[1 if col == "text" else 2][-1] = n
            self.lengths[doc] += n
        self._keep(term, columns)
        conn.close()

    def _keep(self, term: str | None, columns: list[list[int]]) -> None:
        if term is not None:
            self.terms[term] = np.array(columns, dtype=np.int32)


def _by_part(data: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(part, the columns of `data` whose ids fall in it); ids ascending."""
    parts = data[0] >> PART_BITS
    bounds = np.flatnonzero(np.diff(parts)) + 1
    for piece in np.split(data, bounds, axis=1):
        yield int(piece[0, 0]) >> PART_BITS, piece


def _blob(data: np.ndarray) -> bytes:
    return np.ascontiguousarray(data, dtype="<i4").tobytes()


def _read(conn: sqlite3.Connection, term: str, part: int) -> np.ndarray:
    row = conn.execute(
        "SELECT data FROM postings WHERE term = ? AND part = ?", (term, part)
    ).fetchone()
    return _postings(row[0]) if row else np.zeros((3, 0), np.int32)


def _ints(blob: bytes, rows: int) -> np.ndarray:
    """A stored blob as int32 [rows, n]: a postings row (3 rows) or a lengths part (1)."""
    if len(blob) % (4 * rows):
        raise CorruptIndexError("stored BM25 postings: a row of the wrong size")
    return np.frombuffer(blob, dtype="<i4").reshape(rows, -1)


def _postings(blob: bytes) -> np.ndarray:
    return _ints(blob, 3)


def apply(conn: sqlite3.Connection, removed: Sequence[Row], added: Sequence[Row]) -> None:
    """Take `removed` chunks out of the postings and put `added` ones in (inside the
    caller's transaction). Chunk ids are never reused, so a removed id is never added."""
    gone, new = Counts(removed), Counts(added)
    drop: dict[tuple[str, int], list[np.ndarray]] = defaultdict(list)
    for term, data in gone.terms.items():
        for part, piece in _by_part(data):
            drop[(term, part)].append(piece[0])
    add: dict[tuple[str, int], np.ndarray] = {}
    for term, data in new.terms.items():
        for part, piece in _by_part(data):
            add[(term, part)] = piece
    for key in sorted(drop.keys() | add.keys()):
        data = _read(conn, *key)
        if key in drop:
            data = data[:, ~np.isin(data[0], np.concatenate(drop[key]))]
        if key in add:
            data = np.concatenate([data, add[key]], axis=1)
            if np.any(np.diff(data[0]) < 0):
                data = data[:, np.argsort(data[0], kind="stable")]
        if data.shape[1]:
            conn.execute("INSERT OR REPLACE INTO postings VALUES (?, ?, ?)", (*key, _blob(data)))
        else:
            conn.execute("DELETE FROM postings WHERE term = ? AND part = ?", key)
    lengths = {**dict.fromkeys(gone.lengths, 0), **new.lengths}
    if not lengths:
        return
    ids = np.fromiter(lengths, np.int64, len(lengths))
    values = np.fromiter(lengths.values(), np.int64, len(lengths))
    for part in np.unique(ids >> PART_BITS).tolist():
        row = conn.execute("SELECT data FROM chunk_lengths WHERE part = ?", (part,)).fetchone()
        table = _ints(row[0], 1)[0].copy() if row else np.zeros(0, np.int32)
        mine = (ids >> PART_BITS) == part
        offsets = ids[mine] - (part << PART_BITS)
        if len(table) <= offsets.max():
            table = np.concatenate([table, np.zeros(offsets.max() + 1 - len(table), np.int32)])
        table[offsets] = values[mine]
        # Canonical: without trailing zeros (ids gone, or never there), so the tables a run
        # of changes leaves are the ones a fresh count makes.
        table = np.trim_zeros(table, "b")
        if len(table):
            conn.execute("INSERT OR REPLACE INTO chunk_lengths VALUES (?, ?)", (part, _blob(table)))
        else:
            conn.execute("DELETE FROM chunk_lengths WHERE part = ?", (part,))


REBUILD_BATCH = 8192  # chunks counted at a time (memory stays small on any index)


def rebuild(conn: sqlite3.Connection) -> None:
    """Postings and lengths made again from the chunks (inside the caller's transaction)."""
    conn.execute("DELETE FROM postings")
    conn.execute("DELETE FROM chunk_lengths")
    last = -1
    while True:
        rows = conn.execute(
            "SELECT id, text, heading FROM chunks WHERE id > ? ORDER BY id LIMIT ?",
            (last, REBUILD_BATCH),
        ).fetchall()
        if not rows:
            return
        apply(conn, [], rows)
        last = rows[-1][0]


def disagreement(conn: sqlite3.Connection) -> str | None:
    """Why the stored postings disagree with the FTS5 table, or None. Compares, for every
    term and column, the number of chunks that hold it and its total count with FTS5's own
    vocabulary, and each live chunk's length with FTS5's (the FTS5 table is itself checked
    against the chunk texts: check.check_lexical). ~0.1 s per 1M tokens of prose."""
    rows = conn.execute("SELECT term, data FROM postings ORDER BY term, part").fetchall()
    try:
        stored = _term_totals(rows)
        lengths = _lengths(conn)
    except CorruptIndexError as exc:
        return str(exc)
    conn.execute(
        f"CREATE VIRTUAL TABLE IF NOT EXISTS temp.fts_columns USING "
        f"fts5vocab(main, {lexical.FTS_TABLE}, col)"
    )
    fts = {(t, c): (d, n) for t, c, d, n in conn.execute("SELECT * FROM temp.fts_columns")}
    if fts != stored:
        differ = len(fts.keys() ^ stored.keys()) + sum(
            fts[k] != stored[k] for k in fts.keys() & stored.keys()
        )
        return f"the stored BM25 postings disagree with the BM25 table ({differ} terms differ)"
    total = 0
    for chunk_id, size in conn.execute(f"SELECT id, sz FROM {lexical.FTS_TABLE}_docsize"):
        tokens = sum(_varints(size))
        total += tokens
        if (lengths[chunk_id] if chunk_id < len(lengths) else 0) != tokens:
            return f"the stored BM25 lengths disagree with the BM25 table (chunk {chunk_id})"
    if int(lengths.sum()) != total:  # a length kept for a chunk that is gone
        return "the stored BM25 lengths disagree with the BM25 table (chunks that are gone)"
    return None


def _term_totals(rows: list[tuple[str, bytes]]) -> dict[tuple[str, str], tuple[int, int]]:
    """{(term, column): (chunks holding it there, its count there)} over the stored rows,
    summed in numpy (an index of prose has a row per term and part: tens of thousands)."""
    if not rows:
        return {}
    for _, blob in rows:
        if len(blob) % 12:
            _ints(blob, 3)  # raises, naming the damage
    values = np.frombuffer(b"".join(r[1] for r in rows), "<i4")
    widths = np.array([len(r[1]) // 12 for r in rows], np.int64)  # chunks in each row
    segment = np.repeat(np.arange(3 * len(rows)), np.repeat(widths, 3))  # row * 3 + column
    counts = np.bincount(segment, weights=values, minlength=3 * len(rows)).reshape(-1, 3)
    holding = np.bincount(segment, weights=values != 0, minlength=3 * len(rows)).reshape(-1, 3)
    out: dict[tuple[str, str], tuple[int, int]] = {}
    totals = zip(rows, counts.astype(np.int64), holding.astype(np.int64), strict=True)
    for (term, _), count, held in totals:
        for column, k in (("text", 1), ("heading", 2)):
            if held[k]:
                docs, total = out.get((term, column), (0, 0))
                out[(term, column)] = (docs + int(held[k]), total + int(count[k]))
    return out


def _varints(blob: bytes) -> Iterator[int]:
    """FTS5's docsize record: one SQLite varint per column (token counts)."""
    value = 0
    for byte in blob:
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            yield value
            value = 0


def _lengths(conn: sqlite3.Connection) -> np.ndarray:
    """Every chunk's token count by id (int64; 0 past the end and for ids that are gone)."""
    parts = conn.execute("SELECT part, data FROM chunk_lengths ORDER BY part").fetchall()
    if not parts:
        return np.zeros(0, np.int64)
    out = np.zeros((parts[-1][0] + 1) << PART_BITS, np.int64)
    for part, blob in parts:
        table = _ints(blob, 1)[0]
        out[part << PART_BITS : (part << PART_BITS) + len(table)] = table
    return out


class Postings:
    """One snapshot's stored postings (read in the caller's read transaction)."""

    def __init__(self, conn: sqlite3.Connection, n_rows: int) -> None:
        self.conn = conn
        self.n_rows = n_rows  # chunks in the FTS5 table (its xRowCount)
        self._lengths: np.ndarray | None = None
        self._avgdl = 0.0

    @property
    def lengths(self) -> np.ndarray:
        """Each chunk's tokens by id, as float64 (D in bm25); loaded on first use."""
        if self._lengths is None:
            lengths = _lengths(self.conn)
            # FTS5: avgdl = all columns' tokens / rows, both as doubles.
            self._avgdl = float(lengths.sum()) / float(self.n_rows) if self.n_rows else 0.0
            self._lengths = lengths.astype(np.float64)
        return self._lengths

    def term_scores(self, term: str, heading_weight: float) -> tuple[np.ndarray, np.ndarray]:
        """(ids, float64 bm25 of `term` alone) for every chunk holding it, as FTS5 computes
        a one-token phrase's share of a row's score."""
        parts = self.conn.execute(
            "SELECT data FROM postings WHERE term = ? ORDER BY part", (term,)
        ).fetchall()
        if not parts:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        data = np.concatenate([_postings(p[0]) for p in parts], axis=1)
        lengths = self.lengths
        # FTS5 adds each instance's column weight in turn; with whole-number weights (1.0
        # for both columns, qspec.FIXED) that sum is exact, so the product is the same.
        freq = data[1].astype(np.float64) + data[2].astype(np.float64) * heading_weight
        hits = data.shape[1]
        idf = math.log((self.n_rows - hits + 0.5) / (hits + 0.5))
        if idf <= 0.0:
            idf = 1e-6
        ids = data[0].astype(np.int64)
        size = lengths[ids]
        score = idf * ((freq * (K1 + 1.0)) / (freq + K1 * (1 - B + B * size / self._avgdl)))
        return ids, score
