"""The index folder's format: its files, tables, manifest and checksums, and where the live
store is. Shared by reading (snapshot.py), checking (check.py) and writing (writer.py)."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import zlib
from dataclasses import dataclass
from pathlib import Path

from qrag_cli import lexical
from qrag_cli.types import CorruptIndexError

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
    # 4: per-term BM25 postings and chunk lengths (store/postings.py), kept by the writer
    # in each commit's transaction; an index gains them on its next `qrag index`, counted
    # from the chunks it has (nothing is re-embedded). Until then FTS5 scores queries.
    """
    CREATE TABLE postings (
        term TEXT NOT NULL,
        part INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (term, part)
    ) WITHOUT ROWID;
    CREATE TABLE chunk_lengths (part INTEGER PRIMARY KEY, data BLOB NOT NULL);
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


def path_column(path: str) -> str | bytes:
    """How a file path is stored: as text, or, for a name that is not valid UTF-8 (its
    bytes decoded with surrogate escapes, os.fsdecode), as its raw bytes (a BLOB): SQLite
    text must be UTF-8, and the name must come back exactly to open the file again."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path)


def path_value(column: str | bytes) -> str:
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


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=30, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def migrate(conn: sqlite3.Connection) -> None:
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


def read_pointer(path: Path) -> str | None:
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


def newest_store(index_dir: Path) -> str | None:
    """The store to use when CURRENT is missing or empty: the most recently written
    store folder whose index.sqlite passes SQLite's check (never the one BUILDING names:
    it is unfinished)."""
    try:
        building = read_pointer(index_dir / "BUILDING")
    except CorruptIndexError:
        building = None
    found = []
    for folder in index_dir.glob("store-*"):
        db = folder / "index.sqlite"
        if not STORE_NAME.fullmatch(folder.name) or folder.name == building or not db.is_file():
            continue
        try:
            conn = connect(db)
            try:
                intact = check_database(conn) is None and "format_version" in read_meta(conn)
            finally:
                conn.close()
        except sqlite3.DatabaseError:
            continue
        if intact:
            found.append((db.stat().st_mtime_ns, folder.name))
    return max(found)[1] if found else None


def live_store(index_dir: Path) -> tuple[str | None, bool]:
    """(the live store's folder name, whether CURRENT was missing and it was found by
    `newest_store`): an index whose CURRENT was lost keeps being served, and the next
    `qrag index` writes CURRENT again instead of starting an empty store over it."""
    name = read_pointer(index_dir / "CURRENT")
    if name is not None:
        return name, False
    found = newest_store(index_dir) if index_dir.is_dir() else None
    return found, found is not None


def read_meta(conn: sqlite3.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT key, value FROM meta").fetchall())


def crc32(path: Path, length: int, crc: int = 0) -> int:
    """CRC-32 of the first `length` bytes of `path`, read in blocks (memory stays flat)."""
    with path.open("rb") as fh:
        while length > 0:
            block = fh.read(min(length, 1 << 24))
            if not block:
                break
            crc = zlib.crc32(block, crc)
            length -= len(block)
    return crc


def format_change(old: object = None) -> str:
    """ " (1 -> 2: why)": what the current format changed, for the one line that says why an
    index is rebuilt."""
    step = f"{old} -> {FORMAT_VERSION}: " if old is not None else ""
    why = FORMAT_CHANGES.get(FORMAT_VERSION)
    return f" ({step}{why})" if why else ""


def rebuild_hint(index_dir: Path) -> str:
    return f"rebuild it with `qrag index PATH --index {index_dir}`"


def repair_hint(index_dir: Path) -> str:
    return f"repair it with `qrag index --index {index_dir}`"


def corrupt_database(index_dir: Path, exc: BaseException) -> CorruptIndexError:
    """The one-line error for an index.sqlite that SQLite cannot read."""
    return CorruptIndexError(
        f"index {index_dir} is corrupt (index.sqlite: {exc}); {rebuild_hint(index_dir)}"
    )


def index_exists(index_dir: Path) -> bool:
    """Whether `index_dir` holds an index (CorruptIndexError: a CURRENT naming something
    outside it)."""
    return live_store(index_dir)[0] is not None


def check_database(conn: sqlite3.Connection) -> str | None:
    """SQLite's own page-level check of index.sqlite (reads the whole file once)."""
    rows = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
    return None if rows == ["ok"] else f"index.sqlite is damaged ({rows[0]})"
