"""Verifying an index's committed state: the writer repairs what these checks find;
`qrag status --check` only reports it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import hnswlib
import numpy as np

import qrag_cli.store.postings as postings
from qrag_cli import lexical
from qrag_cli.store.layout import (
    FORMAT_VERSION,
    GRAPH_CRC,
    VECTORS_CRC,
    check_database,
    connect,
    crc32,
    live_store,
    read_meta,
    read_pointer,
)
from qrag_cli.types import CorruptIndexError


class Damage:
    """What is wrong with one store's committed state; empty means healthy."""

    missing_rows: int = 0  # committed vectors past the end of vectors.f32
    checksum: bool = False  # vectors.f32 differs from what was committed
    zero_rows: int = 0  # live chunks whose vector is all zeros (no embedding is)
    graph: str | None = None  # why the HNSW graph cannot be used
    lexical: str | None = None  # why the BM25 table disagrees with the chunks
    postings: str | None = None  # why the stored BM25 postings disagree with it

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
        if self.postings:
            out.append(self.postings)
        return out


def zero_rows(vectors: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The ids among `ids` whose row of `vectors` is all zeros (in blocks: flat memory)."""
    found = []
    for start in range(0, len(ids), 65536):
        part = ids[start : start + 65536]
        found.append(part[~np.asarray(vectors[part]).any(axis=1)])
    return np.concatenate(found) if found else np.zeros(0, np.int64)


def inspect_vectors(folder: Path, meta: dict[str, str], live: np.ndarray, damage: Damage) -> int:
    """Fill in `damage` for vectors.f32; returns how many committed rows are on disk."""
    dim, n_vectors = int(meta["dim"]), int(meta["n_vectors"])
    path = folder / "vectors.f32"
    size = path.stat().st_size if path.exists() else 0
    on_disk = min(size // (dim * 4), n_vectors)
    damage.missing_rows = n_vectors - on_disk
    stored = meta.get(VECTORS_CRC)
    if stored is not None and not damage.missing_rows:
        damage.checksum = crc32(path, n_vectors * dim * 4) != int(stored)
        if not damage.checksum:
            return on_disk  # the rows are as committed, and no committed embedding is zero
    if on_disk:
        rows = np.memmap(path, dtype=np.float32, mode="r", shape=(on_disk, dim))
        damage.zero_rows = len(zero_rows(rows, live[live < on_disk]))
        del rows
    return on_disk


def clearly_damaged(rows: np.ndarray, live: np.ndarray, on_disk: int) -> np.ndarray:
    """Live ids whose vector is past the end of the file or all zeros."""
    return np.union1d(live[live >= on_disk], zero_rows(rows, live[live < on_disk]))


def open_graph(
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
    if stored is not None and crc32(path, path.stat().st_size) != int(stored):
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


def graph_rows(graph: hnswlib.Index, ids: np.ndarray) -> np.ndarray:
    out = [
        np.asarray(
            graph.get_items(ids[start : start + 8192], return_type="numpy"), dtype=np.float32
        )
        for start in range(0, len(ids), 8192)
    ]
    return np.concatenate(out) if out else np.zeros((0, graph.dim), np.float32)


def check_lexical(conn: sqlite3.Connection, full: bool) -> str | None:
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


def check_postings(conn: sqlite3.Connection, meta: dict[str, str]) -> str | None:
    """Why the stored postings disagree with the BM25 table, or None (also when they are
    not kept for this generation: readers then ask FTS5, and the next writer counts them)."""
    if not postings.agree(meta):
        return None
    return postings.disagreement(conn)


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
        conn = connect(db)
    except sqlite3.DatabaseError as exc:
        result["problems"].append(f"index.sqlite is corrupt ({exc})")
        return result
    try:
        conn.execute("PRAGMA busy_timeout=200")  # never wait long for a running writer
        problem = check_database(conn)
        if problem:
            result["problems"].append(problem)
            return result
        meta = read_meta(conn)
        if int(meta.get("format_version", "0")) != FORMAT_VERSION:
            result["problems"].append(
                f"index format {meta.get('format_version')} is not {FORMAT_VERSION}"
            )
            return result
        live = np.array([r[0] for r in conn.execute("SELECT id FROM chunks ORDER BY id")], np.int64)
        damage = Damage()
        inspect_vectors(index_dir / name, meta, live, damage)
        damage.graph = open_graph(index_dir / name, meta, live)[1]
        damage.lexical = check_lexical(conn, full=True)
        if damage.lexical is None:
            damage.postings = check_postings(conn, meta)
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
                read_pointer(index_dir / pointer)
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
                return read_meta(conn)
            finally:
                conn.close()
        except sqlite3.DatabaseError:
            continue
    return {}
