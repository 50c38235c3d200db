"""The on-disk index: SQLite + append-only exact vectors + hnswlib. No torch here.

Layout of one index folder::

    CURRENT          name of the live store folder (replaced atomically)
    BUILDING         name of a store being rebuilt from scratch (resumable), if any
    index.lock       held by the one writer
    store-<id>/
        index.sqlite   files, chunks, meta (WAL; one transaction per commit)
        vectors.f32    float32 rows, row i = chunk id i; only the first meta.n_vectors
                       rows are committed (a killed writer leaves a tail that is ignored)
        hnsw-<gen>.bin the HNSW graph as of commit <gen> (written, then renamed)

A commit appends vectors (fsync), saves hnsw-<gen+1>.bin (temp + rename), then one
SQLite transaction switches meta.generation. Until that transaction commits, readers and
a crashed writer's successor see generation <gen> exactly as it was.

Each commit also records the CRC-32 of the committed vectors region and of the graph file,
so damage that keeps sizes intact (a file overwritten with zeros) is found by reading the
files once (~7 ms per 10K chunks). Every writer checks the committed state before it
changes anything and repairs what is damaged (see `IndexWriter._verify`); `check_index`
runs the same checks read-only for `qrag status --check`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import sqlite3
import stat
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import hnswlib
import numpy as np

from qrag_cli import lexical
from qrag_cli.config import private_umask
from qrag_cli.files import atomic_output, atomic_write
from qrag_cli.types import Chunk, CorruptIndexError, NoIndexError, QragError, contextual_text

# 2: chunks keep their section's heading path (`chunks.heading`, a BM25 column of its own);
# an index of format 1 is rebuilt once, beside the old one, by the next `qrag index`.
FORMAT_VERSION = 2
FORMAT_CHANGES = {2: "chunks now keep their section headings"}
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 200

MIGRATIONS = [
    # 1: initial schema
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE files (
        id INTEGER PRIMARY KEY,
        path TEXT NOT NULL UNIQUE,      -- absolute path
        hash TEXT NOT NULL,             -- sha256 of content
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        kind TEXT NOT NULL,
        n_chunks INTEGER NOT NULL,
        n_tokens INTEGER NOT NULL
    );
    CREATE TABLE chunks (
        id INTEGER PRIMARY KEY,         -- = vector row = hnsw label
        file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        ordinal INTEGER NOT NULL DEFAULT 0,  -- position in corpus order (path, seq)
        start_line INTEGER NOT NULL,
        end_line INTEGER NOT NULL,
        start_byte INTEGER NOT NULL,
        end_byte INTEGER NOT NULL,
        n_tokens INTEGER NOT NULL,
        text TEXT NOT NULL
    );
    CREATE INDEX chunks_file ON chunks(file_id);
    """,
    # 2: BM25 over chunk texts (lexical.py), kept in step with `chunks` by triggers, so
    # it shares every commit's transaction; an older index gains it, filled from the
    # chunks it already has, on its next `qrag index` (nothing is re-embedded).
    f"""
    CREATE VIRTUAL TABLE {lexical.FTS_TABLE} USING fts5(text, content='chunks',
        content_rowid='id', tokenize='{lexical.TOKENIZE}');
    INSERT INTO {lexical.FTS_TABLE}({lexical.FTS_TABLE}) VALUES ('rebuild');
    CREATE TRIGGER chunks_fts_insert AFTER INSERT ON chunks BEGIN
        INSERT INTO {lexical.FTS_TABLE}(rowid, text) VALUES (new.id, new.text);
    END;
    CREATE TRIGGER chunks_fts_delete AFTER DELETE ON chunks BEGIN
        INSERT INTO {lexical.FTS_TABLE}({lexical.FTS_TABLE}, rowid, text)
        VALUES ('delete', old.id, old.text);
    END;
    """,
    # 3: each chunk's heading path (lines joined by "\n"; "" for none), and BM25 over it
    # as a column of its own (lexical.HEADING_WEIGHT). Only a new store reaches this step:
    # an index of format 1 is rebuilt from its files (FORMAT_VERSION).
    f"""
    ALTER TABLE chunks ADD COLUMN heading TEXT NOT NULL DEFAULT '';
    DROP TRIGGER chunks_fts_insert;
    DROP TRIGGER chunks_fts_delete;
    DROP TABLE {lexical.FTS_TABLE};
    CREATE VIRTUAL TABLE {lexical.FTS_TABLE} USING fts5(text, heading, content='chunks',
        content_rowid='id', tokenize='{lexical.TOKENIZE}');
    INSERT INTO {lexical.FTS_TABLE}({lexical.FTS_TABLE}) VALUES ('rebuild');
    CREATE TRIGGER chunks_fts_insert AFTER INSERT ON chunks BEGIN
        INSERT INTO {lexical.FTS_TABLE}(rowid, text, heading)
        VALUES (new.id, new.text, new.heading);
    END;
    CREATE TRIGGER chunks_fts_delete AFTER DELETE ON chunks BEGIN
        INSERT INTO {lexical.FTS_TABLE}({lexical.FTS_TABLE}, rowid, text, heading)
        VALUES ('delete', old.id, old.text, old.heading);
    END;
    """,
]
VECTORS_CRC = "vectors_crc32"  # meta: CRC-32 of vectors.f32's first n_vectors rows
GRAPH_CRC = "graph_crc32"  # meta: CRC-32 of hnsw-<generation>.bin


@dataclass(frozen=True)
class ChunkRow:
    """One row of the index's chunks table, with its file's path."""

    id: int
    path: str
    seq: int
    ordinal: int
    start_line: int
    end_line: int
    n_tokens: int
    text: str
    heading: tuple[str, ...] = ()  # the heading path of its section (Chunk.heading)


def _path_column(path: str) -> str | bytes:
    """How a file path is stored: as text, or, for a name that is not valid UTF-8 (its
    bytes decoded with surrogate escapes, os.fsdecode), as its raw bytes (a BLOB): SQLite
    text must be UTF-8, and the name must come back exactly to open the file again."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path)


def _path_value(column: str | bytes) -> str:
    return os.fsdecode(column) if isinstance(column, bytes) else column


@dataclass(frozen=True)
class IndexManifest:
    """How an index's vectors were made: a different model or chunking means a rebuild.

    Stored as meta rows (`model_name`, `model_fingerprint`, `dim`, `chunking` as sorted JSON,
    `model_spec`, `format_version`, `generation`); `to_dict` is its form in `qrag status
    --json`, whose keys (`model` for the model's name) scripts already read."""

    model_name: str | None  # None only where meta lacks it (an index qrag never wrote)
    model_fingerprint: str | None
    dim: int
    chunking: dict[str, int]  # ChunkConfig.to_dict() of the chunker that cut the files
    # How `--model` named it (indexer.model_spec_key); None in an index from before qrag
    # stored it, and in a writer's manifest (the indexer sets it as a meta row).
    model_spec: str | None = None
    format_version: int = FORMAT_VERSION
    generation: int = 0  # of the committed graph and chunks a snapshot reads

    @classmethod
    def from_meta(cls, meta: dict[str, str]) -> IndexManifest:
        return cls(
            model_name=meta.get("model_name"),
            model_fingerprint=meta.get("model_fingerprint"),
            dim=int(meta["dim"]),
            chunking=json.loads(meta.get("chunking", "{}")),
            model_spec=meta.get("model_spec"),
            format_version=int(meta["format_version"]),
            generation=int(meta["generation"]),
        )

    def to_dict(self) -> dict:
        return {
            "format_version": self.format_version,
            "model": self.model_name,
            "model_spec": self.model_spec,
            "model_fingerprint": self.model_fingerprint,
            "dim": self.dim,
            "chunking": dict(self.chunking),
            "generation": self.generation,
        }

    @classmethod
    def from_dict(cls, data: dict) -> IndexManifest:
        """The inverse of `to_dict`."""
        return cls(
            model_name=data["model"],
            model_fingerprint=data["model_fingerprint"],
            dim=int(data["dim"]),
            chunking=dict(data["chunking"]),
            model_spec=data.get("model_spec"),
            format_version=int(data["format_version"]),
            generation=int(data["generation"]),
        )


@dataclass(frozen=True)
class FileRow:
    id: int
    path: str
    hash: str
    size: int
    mtime_ns: int
    n_chunks: int


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=30, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        # One transaction per migration (executescript: trigger bodies hold ';').
        try:
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version={number};\nCOMMIT;"
            )
        except sqlite3.Error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


STORE_NAME = re.compile(r"store-[0-9a-f]{12}")  # the only names CURRENT and BUILDING hold


def _read_pointer(path: Path) -> str | None:
    """The store folder CURRENT or BUILDING names, or None (missing or empty). A pointer
    to anything but a store folder of this index (`../other/store-...`, an absolute
    path) is refused: it would be served, and a rebuild would delete what it names."""
    try:
        name = path.read_text(errors="replace").strip() or None
    except FileNotFoundError:
        return None
    if name is not None and not STORE_NAME.fullmatch(name):
        raise CorruptIndexError(
            f"{path} names {name!r}, not a store of this index; `qrag index --index "
            f"{path.parent}` takes up its newest intact store"
        )
    return name


def _newest_store(index_dir: Path) -> str | None:
    """The store to use when CURRENT is missing or empty: the most recently written
    store folder whose index.sqlite passes SQLite's check (never the one BUILDING names:
    it is unfinished)."""
    try:
        building = _read_pointer(index_dir / "BUILDING")
    except CorruptIndexError:
        building = None
    found = []
    for folder in index_dir.glob("store-*"):
        db = folder / "index.sqlite"
        if not STORE_NAME.fullmatch(folder.name) or folder.name == building or not db.is_file():
            continue
        try:
            conn = _connect(db)
            try:
                intact = _check_database(conn) is None and "format_version" in _meta(conn)
            finally:
                conn.close()
        except sqlite3.DatabaseError:
            continue
        if intact:
            found.append((db.stat().st_mtime_ns, folder.name))
    return max(found)[1] if found else None


def live_store(index_dir: Path) -> tuple[str | None, bool]:
    """(the live store's folder name, whether CURRENT was missing and it was found by
    `_newest_store`): an index whose CURRENT was lost keeps being served, and the next
    `qrag index` writes CURRENT again instead of starting an empty store over it."""
    name = _read_pointer(index_dir / "CURRENT")
    if name is not None:
        return name, False
    found = _newest_store(index_dir) if index_dir.is_dir() else None
    return found, found is not None


def _meta(conn: sqlite3.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT key, value FROM meta").fetchall())


def _crc32(path: Path, length: int, crc: int = 0) -> int:
    """CRC-32 of the first `length` bytes of `path`, read in blocks (memory stays flat)."""
    with path.open("rb") as fh:
        while length > 0:
            block = fh.read(min(length, 1 << 24))
            if not block:
                break
            crc = zlib.crc32(block, crc)
            length -= len(block)
    return crc


def _format_change(old: object = None) -> str:
    """ " (1 -> 2: why)": what the current format changed, for the one line that says why an
    index is rebuilt."""
    step = f"{old} -> {FORMAT_VERSION}: " if old is not None else ""
    why = FORMAT_CHANGES.get(FORMAT_VERSION)
    return f" ({step}{why})" if why else ""


def _rebuild_hint(index_dir: Path) -> str:
    return f"rebuild it with `qrag index PATH --index {index_dir}`"


def _repair_hint(index_dir: Path) -> str:
    return f"repair it with `qrag index --index {index_dir}`"


def corrupt_database(index_dir: Path, exc: BaseException) -> CorruptIndexError:
    """The one-line error for an index.sqlite that SQLite cannot read."""
    return CorruptIndexError(
        f"index {index_dir} is corrupt (index.sqlite: {exc}); {_rebuild_hint(index_dir)}"
    )


def index_exists(index_dir: Path) -> bool:
    """Whether `index_dir` holds an index (CorruptIndexError: a CURRENT naming something
    outside it)."""
    return live_store(index_dir)[0] is not None


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------
class IndexSnapshot:
    """A consistent snapshot of the last committed index (one read transaction)."""

    def __init__(self, index_dir: Path) -> None:
        self.index_dir = index_dir
        for attempt in range(3):  # a rebuild may swap CURRENT between our two reads
            name = live_store(index_dir)[0]
            if name is None:
                raise NoIndexError(f"no index at {index_dir}; run `qrag index PATH` first")
            try:
                self._open(index_dir / name)
                return
            except FileNotFoundError:
                if attempt == 2:
                    raise CorruptIndexError(
                        f"index files are missing in {index_dir}; {_rebuild_hint(index_dir)}"
                    ) from None
                time.sleep(0.05)

    def _open(self, folder: Path) -> None:
        db = folder / "index.sqlite"
        if not db.is_file():
            raise FileNotFoundError(db)
        self.folder = folder
        try:
            self.conn = _connect(db)
        except sqlite3.DatabaseError as exc:
            raise corrupt_database(self.index_dir, exc) from exc
        try:
            self.conn.execute("BEGIN")  # snapshot: later commits stay invisible to us
            self.meta = _meta(self.conn)
            self.n_chunks = self.conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            raise corrupt_database(self.index_dir, exc) from exc
        if int(self.meta.get("format_version", "0")) != FORMAT_VERSION:
            self.conn.close()
            raise CorruptIndexError(
                f"index {self.index_dir} has format {self.meta.get('format_version')}, this qrag "
                f"reads {FORMAT_VERSION}{_format_change()}; {_rebuild_hint(self.index_dir)}"
            )
        self.dim = int(self.meta["dim"])
        self.n_vectors = int(self.meta["n_vectors"])
        self.generation = int(self.meta["generation"])
        self._hnsw: hnswlib.Index | None = None
        # The snapshot's chunks never change (`renew` keeps it only while meta, and so the
        # generation, is the same): what FTS5 answered once holds.
        self._searcher = lexical.Searcher(self.conn)
        vec_path = folder / "vectors.f32"
        expected = self.n_vectors * self.dim * 4
        size = vec_path.stat().st_size if vec_path.exists() else -1
        if size < expected:
            self.conn.close()
            raise CorruptIndexError(
                f"index {self.index_dir} is damaged ({vec_path.name} is "
                f"truncated); {_repair_hint(self.index_dir)}"
            )
        self.vectors = (
            np.memmap(vec_path, dtype=np.float32, mode="r", shape=(self.n_vectors, self.dim))
            if self.n_vectors
            else np.zeros((0, self.dim), np.float32)
        )

    @property
    def hnsw(self) -> hnswlib.Index:
        """Loaded on first use: `--exact` and tiny indexes never pay for it."""
        if self._hnsw is None:
            path = self.folder / f"hnsw-{self.generation}.bin"
            index = hnswlib.Index(space="ip", dim=self.dim)
            try:
                index.load_index(str(path))
            except (RuntimeError, OSError) as exc:
                raise CorruptIndexError(
                    f"index {self.index_dir} is damaged ({path.name} cannot "
                    f"be read: {exc}); {_repair_hint(self.index_dir)}"
                ) from exc
            index.set_num_threads(1)
            self._hnsw = index
        return self._hnsw

    @property
    def manifest(self) -> IndexManifest:
        return IndexManifest.from_meta(self.meta)

    def live_ids(self) -> np.ndarray:
        rows = self.conn.execute("SELECT id FROM chunks ORDER BY id").fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def ordinal_table(self) -> np.ndarray:
        """ordinal of every chunk id (-1 for deleted ids), for position-aware models."""
        table = np.full(self.n_vectors, -1, dtype=np.int64)
        for chunk_id, ordinal in self.conn.execute("SELECT id, ordinal FROM chunks"):
            table[chunk_id] = ordinal
        return table

    def bm25(self, words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(chunk ids, BM25 scores) of every chunk matching any of `words` (read-only
        arrays, remembered while this snapshot lives: lexical.Searcher)."""
        return self._searcher.bm25(words)

    def chunks(self, ids: Iterable[int]) -> list[ChunkRow]:
        ids = list(ids)
        out: dict[int, ChunkRow] = {}
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            marks = ",".join("?" * len(part))
            for row in self.conn.execute(
                "SELECT c.id, f.path, c.seq, c.ordinal, c.start_line, c.end_line, c.n_tokens, "
                "c.text, c.heading FROM chunks c JOIN files f ON f.id = c.file_id "
                f"WHERE c.id IN ({marks})",
                part,
            ):
                out[row[0]] = ChunkRow(
                    row[0], _path_value(row[1]), *row[2:-1], lexical.heading_path(row[-1])
                )
        missing = [i for i in ids if i not in out]
        if missing:
            raise CorruptIndexError(
                f"index {self.index_dir} refers to missing chunks "
                f"{missing[:3]}; {_rebuild_hint(self.index_dir)}"
            )
        return [out[i] for i in ids]

    def stats(self) -> dict:
        files, tokens = self.conn.execute(
            "SELECT count(*), coalesce(sum(n_tokens), 0) FROM files"
        ).fetchone()
        size = sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())
        return {
            "files": files,
            "chunks": self.n_chunks,
            "tokens": tokens,
            "bytes_on_disk": size,
            "updated": self.meta.get("updated"),
            "roots": [str(root) for root in self.roots],
            **self.manifest.to_dict(),
        }

    @property
    def roots(self) -> list[Path]:
        """The files and folders this index was built from (absolute, resolved)."""
        return [Path(p) for p in json.loads(self.meta.get("roots") or "[]")]

    def has_file(self, path: str) -> bool:
        found = self.conn.execute("SELECT 1 FROM files WHERE path = ?", (_path_column(path),))
        return found.fetchone() is not None

    def release(self) -> None:
        """End the read snapshot. A long-lived reader (`qrag mcp`) calls this between uses:
        a snapshot held open would make the writer's final WAL checkpoint wait for it."""
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("ROLLBACK")

    def renew(self) -> bool:
        """Start a new snapshot. False (and no snapshot held) when another state was committed
        since this reader was opened: its vectors and graph are stale, open a new reader."""
        if _read_pointer(self.index_dir / "CURRENT") != self.folder.name:
            return False  # rebuilt beside us; our folder may be gone
        self.release()
        try:
            self.conn.execute("BEGIN")
            # A commit that changes chunks bumps meta's generation (and the roots live in
            # meta too): equal meta means the chunks, vectors and graph this reader holds.
            if _meta(self.conn) == self.meta:
                return True
        except sqlite3.DatabaseError as exc:
            raise corrupt_database(self.index_dir, exc) from exc
        self.release()
        return False

    def close(self) -> None:
        self.release()
        self.conn.close()


# ---------------------------------------------------------------------------------------
# Verifying (the writer repairs what these find; `qrag status --check` only reports it)
# ---------------------------------------------------------------------------------------
@dataclass
class Damage:
    """What is wrong with one store's committed state; empty means healthy."""

    missing_rows: int = 0  # committed vectors past the end of vectors.f32
    checksum: bool = False  # vectors.f32 differs from what was committed
    zero_rows: int = 0  # live chunks whose vector is all zeros (no embedding is)
    graph: str | None = None  # why the HNSW graph cannot be used
    lexical: str | None = None  # why the BM25 table disagrees with the chunks

    @property
    def vectors(self) -> bool:
        return bool(self.missing_rows or self.checksum or self.zero_rows)

    def problems(self) -> list[str]:
        out = []
        if self.missing_rows:
            out.append(f"vectors.f32 is truncated ({self.missing_rows} vectors missing)")
        elif self.checksum:
            out.append("vectors.f32 does not match its checksum")
        if self.zero_rows:
            out.append(f"vectors.f32 has {self.zero_rows} zeroed vectors")
        if self.graph:
            out.append(self.graph)
        if self.lexical:
            out.append(self.lexical)
        return out


def _zero_rows(vectors: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The ids among `ids` whose row of `vectors` is all zeros (in blocks: flat memory)."""
    found = []
    for start in range(0, len(ids), 65536):
        part = ids[start : start + 65536]
        found.append(part[~np.asarray(vectors[part]).any(axis=1)])
    return np.concatenate(found) if found else np.zeros(0, np.int64)


def _inspect_vectors(folder: Path, meta: dict[str, str], live: np.ndarray, damage: Damage) -> int:
    """Fill in `damage` for vectors.f32; returns how many committed rows are on disk."""
    dim, n_vectors = int(meta["dim"]), int(meta["n_vectors"])
    path = folder / "vectors.f32"
    size = path.stat().st_size if path.exists() else 0
    on_disk = min(size // (dim * 4), n_vectors)
    damage.missing_rows = n_vectors - on_disk
    stored = meta.get(VECTORS_CRC)
    if stored is not None and not damage.missing_rows:
        damage.checksum = _crc32(path, n_vectors * dim * 4) != int(stored)
        if not damage.checksum:
            return on_disk  # the rows are as committed, and no committed embedding is zero
    if on_disk:
        rows = np.memmap(path, dtype=np.float32, mode="r", shape=(on_disk, dim))
        damage.zero_rows = len(_zero_rows(rows, live[live < on_disk]))
        del rows
    return on_disk


def _clearly_damaged(rows: np.ndarray, live: np.ndarray, on_disk: int) -> np.ndarray:
    """Live ids whose vector is past the end of the file or all zeros."""
    return np.union1d(live[live >= on_disk], _zero_rows(rows, live[live < on_disk]))


def _open_graph(
    folder: Path, meta: dict[str, str], live: np.ndarray, max_elements: int | None = None
) -> tuple[hnswlib.Index | None, str | None]:
    """The committed HNSW graph, or (None, why it cannot be used)."""
    generation = int(meta["generation"])
    path = folder / f"hnsw-{generation}.bin"
    if not len(live) and not path.exists():
        return None, None  # nothing committed yet needs a graph
    if not path.exists():
        return None, f"{path.name} is missing"
    stored = meta.get(GRAPH_CRC)
    if stored is not None and _crc32(path, path.stat().st_size) != int(stored):
        return None, f"{path.name} does not match its checksum"
    graph = hnswlib.Index(space="ip", dim=int(meta["dim"]))
    try:
        if max_elements is None:
            graph.load_index(str(path))
        else:
            graph.load_index(str(path), max_elements=max_elements, allow_replace_deleted=False)
    except (RuntimeError, OSError, ValueError) as exc:
        return None, f"{path.name} cannot be read ({exc})"
    lacking = len(set(live.tolist()) - set(graph.get_ids_list()))
    if lacking:
        return None, f"{path.name} lacks {lacking} chunks"
    return graph, None


def _graph_rows(graph: hnswlib.Index, ids: np.ndarray) -> np.ndarray:
    out = [
        np.asarray(
            graph.get_items(ids[start : start + 8192], return_type="numpy"), dtype=np.float32
        )
        for start in range(0, len(ids), 8192)
    ]
    return np.concatenate(out) if out else np.zeros((0, graph.dim), np.float32)


def _check_lexical(conn: sqlite3.Connection, full: bool) -> str | None:
    """Why the BM25 table disagrees with `chunks`, or None. Always: it holds exactly the
    chunk ids (a few ms per 10K chunks). `full`: FTS5 also compares its whole index with
    the chunk texts (~0.4 s per 10K chunks: `qrag status --check`, and every writer, so
    that `qrag index` repairs what the check finds); that statement takes SQLite's write
    lock, so `status --check` skips it while a writer runs."""
    docs = f"{lexical.FTS_TABLE}_docsize"
    odd = conn.execute(
        f"SELECT (SELECT count(*) FROM chunks c LEFT JOIN {docs} d ON d.id = c.id "
        f"WHERE d.id IS NULL) + (SELECT count(*) FROM {docs} d LEFT JOIN chunks c "
        "ON c.id = d.id WHERE c.id IS NULL)"
    ).fetchone()[0]
    if odd:
        return f"the BM25 table disagrees with the chunks ({odd} rows differ)"
    if not full:
        return None
    try:
        conn.execute(
            f"INSERT INTO {lexical.FTS_TABLE}({lexical.FTS_TABLE}, rank) "
            "VALUES ('integrity-check', 1)"
        )
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc) and "busy" not in str(exc):
            return f"the BM25 table is unusable ({exc})"
    except sqlite3.DatabaseError:
        return "the BM25 table's index disagrees with the chunk texts"
    return None


def _check_database(conn: sqlite3.Connection) -> str | None:
    """SQLite's own page-level check of index.sqlite (reads the whole file once)."""
    rows = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
    return None if rows == ["ok"] else f"index.sqlite is damaged ({rows[0]})"


def check_index(index_dir: Path) -> dict:
    """Verify the live store of `index_dir` without changing anything: database pages,
    vector sizes and checksum, zeroed vectors, graph present, intact and complete, BM25
    table. Returns {"index", "ok", "problems": [one line each]}."""
    result: dict = {"index": str(index_dir), "ok": False, "problems": []}
    try:
        name, found = live_store(index_dir)
    except CorruptIndexError as exc:
        result["problems"].append(str(exc))
        return result
    if found:  # served from the newest intact store; `qrag index` writes CURRENT again
        result["problems"].append(f"CURRENT is missing or empty (the newest store is {name})")
    db = index_dir / name / "index.sqlite" if name else None
    if db is None or not db.is_file():
        result["problems"].append("index.sqlite is missing")
        return result
    try:
        conn = _connect(db)
    except sqlite3.DatabaseError as exc:
        result["problems"].append(f"index.sqlite is corrupt ({exc})")
        return result
    try:
        conn.execute("PRAGMA busy_timeout=200")  # never wait long for a running writer
        problem = _check_database(conn)
        if problem:
            result["problems"].append(problem)
            return result
        meta = _meta(conn)
        if int(meta.get("format_version", "0")) != FORMAT_VERSION:
            result["problems"].append(
                f"index format {meta.get('format_version')} is not {FORMAT_VERSION}"
            )
            return result
        live = np.array([r[0] for r in conn.execute("SELECT id FROM chunks ORDER BY id")], np.int64)
        damage = Damage()
        _inspect_vectors(index_dir / name, meta, live, damage)
        damage.graph = _open_graph(index_dir / name, meta, live)[1]
        damage.lexical = _check_lexical(conn, full=True)
        result["problems"] += damage.problems()
    except sqlite3.DatabaseError as exc:
        result["problems"].append(f"index.sqlite is corrupt ({exc})")
    finally:
        conn.close()
    result["ok"] = not result["problems"]
    return result


def stored_settings(index_dir: Path) -> dict[str, str]:
    """How the index was built (meta: model_spec, chunking, max_file_size, ...) as the next
    `qrag index` continues it: an interrupted rebuild's settings first (it resumes), else
    the live store's; {} when there is none or it cannot be read."""
    for pointer in ("BUILDING", "CURRENT"):
        try:
            name = (
                _read_pointer(index_dir / pointer)
                if pointer == "BUILDING"
                else live_store(index_dir)[0]
            )
        except CorruptIndexError:
            continue
        db = index_dir / name / "index.sqlite" if name else None
        if db is None or not db.is_file():
            continue
        try:
            conn = sqlite3.connect(str(db), timeout=30)
            try:
                return _meta(conn)
            finally:
                conn.close()
        except sqlite3.DatabaseError:
            continue
    return {}


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------
class IndexWriter:
    """The one writer of an index folder. Changes become visible only at `commit()`."""

    def __init__(self, index_dir: Path, manifest: IndexManifest) -> None:
        """`manifest`: the model and chunking the index is (to be) built with; an existing
        index built otherwise is rebuilt beside the live one."""
        # Everything the writer creates (folders, SQLite and its -wal/-shm, vectors, graphs,
        # temp files, the lock) is private while it runs: the umask covers files that SQLite
        # and hnswlib create themselves. Restored in _release().
        self._private = contextlib.ExitStack()
        self._private.enter_context(private_umask())
        try:
            self._start(index_dir, manifest)
        except BaseException:
            self._private.close()
            raise

    def _start(self, index_dir: Path, manifest: IndexManifest) -> None:
        self.index_dir = index_dir
        index_dir.mkdir(parents=True, exist_ok=True)
        self._lock = (index_dir / "index.lock").open("a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise QragError(f"another `qrag index` is writing {index_dir}; wait for it") from None
        _make_private(index_dir)
        self.manifest = manifest
        self.rebuild_reason: str | None = None
        self.old_roots: str | None = None
        self.totals = (0, 0)
        self.pointer_repair: str | None = None
        current, lost = self._current(index_dir)
        try:
            building = _read_pointer(index_dir / "BUILDING")
        except CorruptIndexError:  # names something outside: forget it, never delete it
            (index_dir / "BUILDING").unlink()
            building = None
        if lost and current:  # the newest intact store goes on, never an empty one over it
            atomic_write(index_dir / "CURRENT", current.encode())
            self.pointer_repair = f"CURRENT restored ({lost}): {current}"
        if current and (index_dir / current / "index.sqlite").is_file():
            reason = self._mismatch(index_dir / current)
            if reason is None:
                self._open(index_dir / current)
                self._drop_stale_build(building)
                return
            self.rebuild_reason = reason
        # A fresh store: resume an interrupted rebuild for the same model, else start one.
        if (
            building
            and (index_dir / building / "index.sqlite").is_file()
            and self._mismatch(index_dir / building) is None
        ):
            # Its settings are the ones a plain `qrag index` took (stored_settings reads an
            # interrupted rebuild's first): say so, since they are not the live index's.
            if self.rebuild_reason:
                self.rebuild_reason += (
                    "; finishing the rebuild an earlier run started (give the live index's "
                    "settings to keep them instead)"
                )
            self._open(index_dir / building)
            return
        self._drop_stale_build(building)
        name = f"store-{uuid.uuid4().hex[:12]}"
        (index_dir / name).mkdir()
        self._open(index_dir / name, fresh=True)
        # A first index goes live at once (each commit is then usable and a killed run
        # resumes); a rebuild stays beside the live index until `finish()` swaps it in.
        atomic_write(index_dir / ("BUILDING" if current else "CURRENT"), name.encode())

    # -- setup --
    @staticmethod
    def _current(index_dir: Path) -> tuple[str | None, str | None]:
        """(the live store, why CURRENT must be written again or None): live_store, where
        a CURRENT naming something outside this index counts as lost (the writer puts
        the newest intact store back; it never follows such a pointer)."""
        try:
            name, found = live_store(index_dir)
            return name, "it was missing or empty" if found else None
        except CorruptIndexError:
            found = _newest_store(index_dir)
            if found is None:  # nothing to take up: the pointer goes, a new store comes
                (index_dir / "CURRENT").unlink()
            return found, "it named a folder outside this index" if found else None

    def _mismatch(self, folder: Path) -> str | None:
        try:
            conn = _connect(folder / "index.sqlite")
            try:
                meta = _meta(conn)
                self.old_roots = meta.get("roots")
                damaged = _check_database(conn)
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            return f"the existing index is unreadable (index.sqlite: {exc})"
        if damaged:  # chunk texts and ids cannot be trusted: start from the files again
            return f"the existing {damaged}"
        want = self.manifest
        if int(meta.get("format_version", 0)) != FORMAT_VERSION:
            return f"the index format changed{_format_change(meta.get('format_version'))}"
        if meta.get("model_fingerprint") != want.model_fingerprint:
            return f"the model changed ({meta.get('model_name')} -> {want.model_name})"
        had = json.loads(meta.get("chunking", "{}"))
        if had != want.chunking:
            changes = ", ".join(
                f"{key} {had.get(key)} -> {value}"
                for key, value in want.chunking.items()
                if had.get(key) != value
            )
            return f"the chunking settings changed ({changes})"
        return None

    def _drop_stale_build(self, building: str | None) -> None:
        if building:
            shutil.rmtree(self.index_dir / building, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                (self.index_dir / "BUILDING").unlink()

    def _open(self, folder: Path, fresh: bool = False) -> None:
        self.folder = folder
        self.conn = _connect(folder / "index.sqlite")
        _migrate(self.conn)
        meta = _meta(self.conn)
        if fresh or "format_version" not in meta:
            meta = {
                "format_version": str(FORMAT_VERSION),
                "model_name": self.manifest.model_name,
                "model_fingerprint": self.manifest.model_fingerprint,
                "dim": str(self.manifest.dim),
                "chunking": json.dumps(self.manifest.chunking, sort_keys=True),
                "generation": "0",
                "n_vectors": "0",
                VECTORS_CRC: "0",
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta.items())
            self.conn.execute("COMMIT")
        self.dim = int(meta["dim"])
        self.generation = int(meta["generation"])
        self.n_vectors = int(meta["n_vectors"])
        self.repairs: list[str] = [self.pointer_repair] if self.pointer_repair else []
        self.damaged_rows = np.zeros(0, np.int64)  # vectors to re-embed: `restore_vectors`
        self._pending_vectors: list[np.ndarray] = []
        self._dirty = False  # SQLite rows changed
        self._graph_dirty = False  # chunks added or removed: the graph must be saved
        self._verify(folder, meta)
        self.conn.execute("BEGIN IMMEDIATE")
        if self._lexical_damaged:
            self.conn.execute(
                f"INSERT INTO {lexical.FTS_TABLE}({lexical.FTS_TABLE}) VALUES ('rebuild')"
            )
            self._dirty = True

    def _verify(self, folder: Path, meta: dict[str, str]) -> None:
        """Check the committed state and repair what is damaged (vectors from the graph's
        copies or, without a usable graph, marked for re-embedding from their text; the
        graph from the vectors; the BM25 table from the chunks). What a killed writer left
        beyond the committed state is dropped first: it is not damage."""
        vec_path = folder / "vectors.f32"
        with vec_path.open("ab") as fh:
            if fh.tell() > self.n_vectors * self.dim * 4:
                fh.truncate(self.n_vectors * self.dim * 4)
        for stale in folder.glob("hnsw-*.bin"):
            gen = stale.stem.split("-")[-1]
            if gen.isdigit() and int(gen) > self.generation:
                stale.unlink()
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink()
        live = np.sort(self._live_ids())
        damage = Damage()
        on_disk = _inspect_vectors(folder, meta, live, damage)
        graph, damage.graph = _open_graph(folder, meta, live, max(self.n_vectors, 1024))
        damage.lexical = _check_lexical(self.conn, full=True)
        self._lexical_damaged = damage.lexical is not None
        if damage.lexical:
            self.repairs.append(f"BM25 table rebuilt from the chunks ({damage.lexical})")
        if damage.vectors:
            with vec_path.open("ab") as fh:  # a short file gets its missing rows, as zeros
                fh.truncate(self.n_vectors * self.dim * 4)
            if graph is not None:
                # The graph holds an exact copy of every live vector (in blocks: flat memory).
                rows = np.memmap(
                    vec_path, dtype=np.float32, mode="r+", shape=(self.n_vectors, self.dim)
                )
                suspects = live
                if GRAPH_CRC not in meta:  # a graph nothing vouches for fixes only clear damage
                    suspects = _clearly_damaged(rows, live, on_disk)
                restored = 0
                for start in range(0, len(suspects), 65536):
                    part = suspects[start : start + 65536]
                    copies = _graph_rows(graph, part)
                    differ = ~(np.asarray(rows[part]) == copies).all(axis=1)
                    rows[part[differ]] = copies[differ]
                    restored += int(differ.sum())
                rows.flush()
                del rows
                self.repairs.append(
                    f"{vec_path.name}: {restored} damaged vectors restored "
                    f"from the graph ({'; '.join(damage.problems())})"
                )
            else:
                rows = np.memmap(
                    vec_path, dtype=np.float32, mode="r", shape=(self.n_vectors, self.dim)
                )
                # Without a copy, a checksum mismatch cannot say which rows: all of them.
                bad = live if damage.checksum else _clearly_damaged(rows, live, on_disk)
                del rows
                self.damaged_rows = bad
                self.repairs.append(
                    f"{vec_path.name}: {len(bad)} damaged vectors re-embedded "
                    f"from their chunk text ({'; '.join(damage.problems())})"
                )
        if graph is None:
            graph = hnswlib.Index(space="ip", dim=self.dim)
            graph.init_index(
                max_elements=max(self.n_vectors, 1024),
                M=HNSW_M,
                ef_construction=HNSW_EF_CONSTRUCTION,
            )
            if len(live):  # graph lost or damaged but vectors committed: rebuild it
                self._graph_dirty = self._dirty = True
                self.repairs.append(f"HNSW graph rebuilt from the vectors ({damage.graph})")
        self.hnsw = graph
        stored_crc = meta.get(VECTORS_CRC)
        if damage.vectors:
            if not len(self.damaged_rows):
                self._store_vectors_checksum()
        elif stored_crc is None:  # an index from before checksums: start recording them
            self._store_vectors_checksum()
        else:
            self._vectors_crc = int(stored_crc)
        if self._graph_dirty and not len(self.damaged_rows):
            self._fill_graph(live)

    def _fill_graph(self, ids: np.ndarray) -> None:
        rows = np.memmap(
            self.folder / "vectors.f32",
            dtype=np.float32,
            mode="r",
            shape=(self.n_vectors, self.dim),
        )
        for start in range(0, len(ids), 65536):
            part = ids[start : start + 65536]
            self.hnsw.add_items(np.asarray(rows[part]), part)
        del rows

    def _store_vectors_checksum(self) -> None:
        """After vectors were rewritten in place: fsync them, then record their checksum
        (committed with the next commit; a kill before that leaves a mismatch, which the
        next run repairs again)."""
        path = self.folder / "vectors.f32"
        with path.open("rb+") as fh:
            os.fsync(fh.fileno())
        self._vectors_crc = _crc32(path, self.n_vectors * self.dim * 4)
        self._dirty = True

    def chunk_texts(self, ids: Sequence[int]) -> list[str]:
        """What E_a embedded of chunks `ids` (chunk.contextual_text: heading path and
        text), in that order: a damaged vector is re-embedded from exactly this."""
        rows = (
            self.conn.execute(
                f"SELECT id, heading, text FROM chunks WHERE id IN ({','.join('?' * len(ids))})",
                [int(i) for i in ids],
            ).fetchall()
            if len(ids)
            else []
        )
        texts = {r[0]: contextual_text(lexical.heading_path(r[1]), r[2]) for r in rows}
        return [texts[int(i)] for i in ids]

    def restore_vectors(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Write re-embedded vectors for `damaged_rows` in place, then rebuild the graph."""
        if not np.array_equal(np.asarray(ids), self.damaged_rows):
            raise ValueError("restore exactly the damaged rows")
        rows = np.memmap(
            self.folder / "vectors.f32",
            dtype=np.float32,
            mode="r+",
            shape=(self.n_vectors, self.dim),
        )
        rows[self.damaged_rows] = np.asarray(vectors, dtype=np.float32)
        rows.flush()
        del rows
        self.damaged_rows = np.zeros(0, np.int64)
        self._store_vectors_checksum()
        if self._graph_dirty:
            self._fill_graph(np.sort(self._live_ids()))

    def _live_ids(self) -> np.ndarray:
        return np.array([r[0] for r in self.conn.execute("SELECT id FROM chunks")], np.int64)

    # -- queries the indexer needs --
    def meta_get(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def meta_set(self, key: str, value: str) -> None:
        if self.meta_get(key) != value:
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
            self._dirty = True

    def files(self) -> dict[str, FileRow]:
        rows = self.conn.execute(
            "SELECT id, path, hash, size, mtime_ns, n_chunks FROM files"
        ).fetchall()
        files = (FileRow(r[0], _path_value(r[1]), *r[2:]) for r in rows)
        return {f.path: f for f in files}

    # -- changes (staged until commit) --
    def remove_file(self, file_id: int) -> int:
        ids = [
            r[0] for r in self.conn.execute("SELECT id FROM chunks WHERE file_id = ?", (file_id,))
        ]
        for label in ids:
            with contextlib.suppress(RuntimeError):  # already gone from the graph
                self.hnsw.mark_deleted(label)
        self.conn.execute("DELETE FROM chunks WHERE file_id = ?", (file_id,))
        self.conn.execute("DELETE FROM files WHERE id = ?", (file_id,))
        self._dirty = self._graph_dirty = True
        return len(ids)

    def touch_file(self, file_id: int, size: int, mtime_ns: int) -> None:
        """Same content, new stat: remember it so the next run skips hashing."""
        self.conn.execute(
            "UPDATE files SET size = ?, mtime_ns = ? WHERE id = ?", (size, mtime_ns, file_id)
        )
        self._dirty = True

    def add_file(
        self,
        path: str,
        hash_: str,
        size: int,
        mtime_ns: int,
        kind: str,
        chunks: Sequence[Chunk],
        vectors: np.ndarray,
    ) -> None:
        if len(chunks) != len(vectors):
            raise ValueError("one vector per chunk")
        cur = self.conn.execute(
            "INSERT INTO files (path, hash, size, mtime_ns, kind, n_chunks, n_tokens) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                _path_column(path),
                hash_,
                size,
                mtime_ns,
                kind,
                len(chunks),
                sum(c.n_tokens for c in chunks),
            ),
        )
        file_id = cur.lastrowid
        first = self.n_vectors + sum(len(v) for v in self._pending_vectors)
        self.conn.executemany(
            "INSERT INTO chunks (id, file_id, seq, start_line, end_line, start_byte, end_byte, "
            "n_tokens, text, heading) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    first + i,
                    file_id,
                    c.seq,
                    c.start_line,
                    c.end_line,
                    c.start_byte,
                    c.end_byte,
                    c.n_tokens,
                    c.text,
                    lexical.heading_column(c.heading),
                )
                for i, c in enumerate(chunks)
            ],
        )
        if len(vectors):
            vecs = np.ascontiguousarray(vectors, dtype=np.float32)
            self._pending_vectors.append(vecs)
            needed = first + len(vecs)
            if needed > self.hnsw.get_max_elements():
                self.hnsw.resize_index(max(needed, 2 * self.hnsw.get_max_elements()))
            self.hnsw.add_items(vecs, np.arange(first, needed))
        self._dirty = self._graph_dirty = True

    @property
    def pending_chunks(self) -> int:
        return sum(len(v) for v in self._pending_vectors)

    def commit(self) -> None:
        """Make every staged change durable and visible, all or nothing."""
        if len(self.damaged_rows):
            raise RuntimeError("restore_vectors() must come before commit()")
        if not self._dirty:
            return
        new_vectors = self.pending_chunks
        crc = self._vectors_crc
        if new_vectors:
            with (self.folder / "vectors.f32").open("ab") as fh:
                for block in self._pending_vectors:
                    data = block.tobytes()
                    fh.write(data)
                    crc = zlib.crc32(data, crc)  # append-only: the checksum extends
                fh.flush()
                os.fsync(fh.fileno())
        meta = [("generation", str(self.generation)), (VECTORS_CRC, str(crc))]
        # Stat-only changes (touched files, roots) leave the graph alone: saving it costs
        # seconds on a large index and would make every no-op run rewrite it.
        gen = self.generation + 1 if self._graph_dirty else self.generation
        if self._graph_dirty:
            final = self.folder / f"hnsw-{gen}.bin"
            with atomic_output(final) as tmp:
                self.hnsw.save_index(str(tmp))
            meta = [
                ("generation", str(gen)),
                (VECTORS_CRC, str(crc)),
                (GRAPH_CRC, str(_crc32(final, final.stat().st_size))),
            ]
            # Corpus order: path, then chunk position in the file.
            self.conn.execute(
                "UPDATE chunks SET ordinal = r.rn FROM (SELECT c.id AS id, row_number() OVER "
                "(ORDER BY f.path, c.seq) - 1 AS rn FROM chunks c JOIN files f ON "
                "f.id = c.file_id) AS r WHERE chunks.id = r.id AND chunks.ordinal != r.rn"
            )
        self.conn.executemany(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)",
            [
                *meta,
                ("n_vectors", str(self.n_vectors + new_vectors)),
                ("updated", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
            ],
        )
        self.conn.execute("COMMIT")
        self.generation = gen
        self._vectors_crc = crc
        self.n_vectors += new_vectors
        self._pending_vectors = []
        self._dirty = self._graph_dirty = False
        # Keep the previous graph for readers that read the old generation a moment ago.
        for old in self.folder.glob("hnsw-*.bin"):
            number = old.stem.split("-")[-1]
            if number.isdigit() and int(number) < gen - 1:
                old.unlink(missing_ok=True)
        self.conn.execute("BEGIN IMMEDIATE")

    def finish(self) -> None:
        """Commit; if this was a rebuild beside a live index, make it the live one."""
        self.commit()
        self.totals = self.conn.execute(
            "SELECT (SELECT count(*) FROM files), (SELECT count(*) FROM chunks)"
        ).fetchone()
        self.conn.execute("COMMIT")
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.conn.close()
        current = _read_pointer(self.index_dir / "CURRENT")
        if current != self.folder.name:
            atomic_write(self.index_dir / "CURRENT", self.folder.name.encode())
            with contextlib.suppress(FileNotFoundError):
                (self.index_dir / "BUILDING").unlink()
            if current:
                shutil.rmtree(self.index_dir / current, ignore_errors=True)
        self._release()

    def abort(self) -> None:
        """Drop uncommitted changes (the last commit stays)."""
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("ROLLBACK")
            self.conn.close()
        self._release()

    def _release(self) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
        self._private.close()


def _make_private(index_dir: Path) -> None:
    """Make an index written before qrag kept its files private 0600/0700 (a no-op after)."""
    if not (index_dir / "CURRENT").exists():
        return  # a new index: created under private_umask; a folder the user made stays
    paths = [index_dir, *index_dir.iterdir()]
    paths += [p for store in index_dir.glob("store-*") if store.is_dir() for p in store.iterdir()]
    for path in paths:
        # Gone: a reader's -wal/-shm, removed when it closed. Another user's file cannot be
        # changed, and is no reason to refuse to index.
        with contextlib.suppress(FileNotFoundError, PermissionError):
            st = path.lstat()
            if stat.S_IMODE(st.st_mode) & 0o077 and not stat.S_ISLNK(st.st_mode):
                path.chmod(0o700 if stat.S_ISDIR(st.st_mode) else 0o600)


@contextlib.contextmanager
def open_snapshot(index_dir: Path) -> Iterator[IndexSnapshot]:
    snapshot = IndexSnapshot(index_dir)
    try:
        yield snapshot
    finally:
        snapshot.close()


def index_status(index_dir: Path, strict: bool = False) -> dict:
    """`qrag status`'s row for one index: {"index", "broken": False, **stats}, or, when it
    cannot be opened, {"index", "broken": True, "error"} (`strict`: raise that error)."""
    try:
        with open_snapshot(index_dir) as snapshot:
            try:
                return {"index": str(index_dir), "broken": False, **snapshot.stats()}
            except sqlite3.DatabaseError as exc:
                raise corrupt_database(index_dir, exc) from exc
    except QragError as exc:
        if strict:
            raise
        return {"index": str(index_dir), "broken": True, "error": str(exc)}


def list_indexes(root: Path) -> list[Path]:
    folder = root / "indexes"
    if not folder.is_dir():
        return []
    # An index whose CURRENT was lost is still listed (and `status --check` says so).
    return sorted(p for p in folder.iterdir() if (p / "CURRENT").is_file() or _holds_store(p))


def _holds_store(folder: Path) -> bool:
    try:
        return folder.is_dir() and index_exists(folder)
    except CorruptIndexError:
        return True
