"""Reading an index: a consistent snapshot of its last commit, its status row, the list of
indexes."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import hnswlib
import numpy as np

import qrag_cli.store.postings as postings
from qrag_cli import lexical
from qrag_cli.store.layout import (
    FORMAT_VERSION,
    ChunkRow,
    IndexManifest,
    connect,
    corrupt_database,
    format_change,
    index_exists,
    live_store,
    path_column,
    path_value,
    read_meta,
    read_pointer,
    rebuild_hint,
    repair_hint,
)
from qrag_cli.types import CorruptIndexError, NoIndexError, QragError


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
                        f"index files are missing in {index_dir}; {rebuild_hint(index_dir)}"
                    ) from None
                time.sleep(0.05)

    def _open(self, folder: Path) -> None:
        db = folder / "index.sqlite"
        if not db.is_file():
            raise FileNotFoundError(db)
        self.folder = folder
        try:
            self.conn = connect(db)
        except sqlite3.DatabaseError as exc:
            raise corrupt_database(self.index_dir, exc) from exc
        try:
            self.conn.execute("BEGIN")  # snapshot: later commits stay invisible to us
            self.meta = read_meta(self.conn)
            self.n_chunks = self.conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            raise corrupt_database(self.index_dir, exc) from exc
        if int(self.meta.get("format_version", "0")) != FORMAT_VERSION:
            self.conn.close()
            raise CorruptIndexError(
                f"index {self.index_dir} has format {self.meta.get('format_version')}, this qrag "
                f"reads {FORMAT_VERSION}{format_change()}; {rebuild_hint(self.index_dir)}"
            )
        self.dim = int(self.meta["dim"])
        self.n_vectors = int(self.meta["n_vectors"])
        self.generation = int(self.meta["generation"])
        self._hnsw: hnswlib.Index | None = None
        # The snapshot's chunks never change (`renew` keeps it only while meta, and so the
        # generation, is the same): what FTS5 answered once holds.
        stored = postings.Postings(self.conn, self.n_chunks) if postings.agree(self.meta) else None
        self._searcher = lexical.Searcher(self.conn, stored)  # without postings: FTS5 scores
        vec_path = folder / "vectors.f32"
        expected = self.n_vectors * self.dim * 4
        size = vec_path.stat().st_size if vec_path.exists() else -1
        if size < expected:
            self.conn.close()
            raise CorruptIndexError(
                f"index {self.index_dir} is damaged ({vec_path.name} is "
                f"truncated); {repair_hint(self.index_dir)}"
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
                    f"be read: {exc}); {repair_hint(self.index_dir)}"
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

    @property
    def uses_postings(self) -> bool:
        """Whether BM25 is scored from the stored postings (else by FTS5: postings.py)."""
        return self._searcher.stored is not None

    def bm25(self, words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(chunk ids, BM25 scores) of every chunk matching any of `words` (read-only
        arrays, remembered while this snapshot lives: lexical.Searcher)."""
        try:
            return self._searcher.bm25(words)
        except CorruptIndexError as exc:  # a stored posting of the wrong size
            raise CorruptIndexError(
                f"index {self.index_dir} is damaged ({exc}); {repair_hint(self.index_dir)}"
            ) from exc

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
                    row[0], path_value(row[1]), *row[2:-1], lexical.heading_path(row[-1])
                )
        missing = [i for i in ids if i not in out]
        if missing:
            raise CorruptIndexError(
                f"index {self.index_dir} refers to missing chunks "
                f"{missing[:3]}; {rebuild_hint(self.index_dir)}"
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
        found = self.conn.execute("SELECT 1 FROM files WHERE path = ?", (path_column(path),))
        return found.fetchone() is not None

    def release(self) -> None:
        """End the read snapshot. A long-lived reader (`qrag mcp`) calls this between uses:
        a snapshot held open would make the writer's final WAL checkpoint wait for it."""
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("ROLLBACK")

    def renew(self) -> bool:
        """Start a new snapshot. False (and no snapshot held) when another state was committed
        since this reader was opened: its vectors and graph are stale, open a new reader."""
        if read_pointer(self.index_dir / "CURRENT") != self.folder.name:
            return False  # rebuilt beside us; our folder may be gone
        self.release()
        try:
            self.conn.execute("BEGIN")
            # A commit that changes chunks bumps meta's generation (and the roots live in
            # meta too): equal meta means the chunks, vectors and graph this reader holds.
            if read_meta(self.conn) == self.meta:
                return True
        except sqlite3.DatabaseError as exc:
            raise corrupt_database(self.index_dir, exc) from exc
        self.release()
        return False

    def close(self) -> None:
        self.release()
        self.conn.close()


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
    return sorted(p for p in folder.iterdir() if (p / "CURRENT").is_file() or holds_store(p))


def holds_store(folder: Path) -> bool:
    try:
        return folder.is_dir() and index_exists(folder)
    except CorruptIndexError:
        return True
