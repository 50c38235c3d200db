"""Writing an index: the one writer of an index folder, which verifies and repairs the
committed state before it changes anything; changes become visible only at `commit()`."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sqlite3
import stat
import time
import uuid
import zlib
from collections.abc import Sequence
from pathlib import Path

import hnswlib
import numpy as np

import qrag_cli.store.postings as postings
from qrag_cli import lexical
from qrag_cli.config import private_umask
from qrag_cli.files import atomic_output, atomic_write
from qrag_cli.store.check import (
    Damage,
    check_lexical,
    clearly_damaged,
    graph_rows,
    inspect_vectors,
    open_graph,
)
from qrag_cli.store.layout import (
    FORMAT_VERSION,
    GRAPH_CRC,
    HNSW_EF_CONSTRUCTION,
    HNSW_M,
    VECTORS_CRC,
    FileRow,
    IndexManifest,
    check_database,
    connect,
    crc32,
    format_change,
    live_store,
    migrate,
    newest_store,
    path_column,
    path_value,
    read_meta,
    read_pointer,
)
from qrag_cli.types import Chunk, CorruptIndexError, QragError, contextual_text


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
        make_private(index_dir)
        self.manifest = manifest
        self.rebuild_reason: str | None = None
        self.old_roots: str | None = None
        self.totals = (0, 0)
        self.pointer_repair: str | None = None
        current, lost = self._current(index_dir)
        try:
            building = read_pointer(index_dir / "BUILDING")
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
            found = newest_store(index_dir)
            if found is None:  # nothing to take up: the pointer goes, a new store comes
                (index_dir / "CURRENT").unlink()
            return found, "it named a folder outside this index" if found else None

    def _mismatch(self, folder: Path) -> str | None:
        try:
            conn = connect(folder / "index.sqlite")
            try:
                meta = read_meta(conn)
                self.old_roots = meta.get("roots")
                damaged = check_database(conn)
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            return f"the existing index is unreadable (index.sqlite: {exc})"
        if damaged:  # chunk texts and ids cannot be trusted: start from the files again
            return f"the existing {damaged}"
        want = self.manifest
        if int(meta.get("format_version", 0)) != FORMAT_VERSION:
            return f"the index format changed{format_change(meta.get('format_version'))}"
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
        self.conn = connect(folder / "index.sqlite")
        migrate(self.conn)
        meta = read_meta(self.conn)
        if fresh or "format_version" not in meta:
            meta = {
                "format_version": str(FORMAT_VERSION),
                "model_name": self.manifest.model_name,
                "model_fingerprint": self.manifest.model_fingerprint,
                "dim": str(self.manifest.dim),
                "chunking": json.dumps(self.manifest.chunking, sort_keys=True),
                "generation": "0",
                **dict(postings.stamp(0)),
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
        # Chunks (id, text, heading) removed and added since the last commit, for the
        # stored postings (postings.apply at commit).
        self._removed_rows: list[postings.Row] = []
        self._added_rows: list[postings.Row] = []
        self._dirty = False  # SQLite rows changed
        self._graph_dirty = False  # chunks added or removed: the graph must be saved
        self._verify(folder, meta)
        self.conn.execute("BEGIN IMMEDIATE")
        if self._lexical_damaged:
            self.conn.execute(
                f"INSERT INTO {lexical.FTS_TABLE}({lexical.FTS_TABLE}) VALUES ('rebuild')"
            )
            self._dirty = True
        self._keep_postings(meta)

    def _keep_postings(self, meta: dict[str, str]) -> None:
        """Count the stored postings from the chunks when they are missing (an index from
        before them), behind (an older qrag wrote since) or damaged."""
        behind = not postings.agree(meta)
        damage = None if behind or self._lexical_damaged else postings.disagreement(self.conn)
        if behind or self._lexical_damaged or damage:
            postings.rebuild(self.conn)
            self.conn.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)", postings.stamp(self.generation)
            )
            self._dirty = True
        if damage:
            self.repairs.append(f"BM25 postings counted again from the chunks ({damage})")

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
        on_disk = inspect_vectors(folder, meta, live, damage)
        graph, damage.graph = open_graph(folder, meta, live, max(self.n_vectors, 1024))
        damage.lexical = check_lexical(self.conn, full=True)
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
                    suspects = clearly_damaged(rows, live, on_disk)
                restored = 0
                for start in range(0, len(suspects), 65536):
                    part = suspects[start : start + 65536]
                    copies = graph_rows(graph, part)
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
                bad = live if damage.checksum else clearly_damaged(rows, live, on_disk)
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
        self._vectors_crc = crc32(path, self.n_vectors * self.dim * 4)
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
        files = (FileRow(r[0], path_value(r[1]), *r[2:]) for r in rows)
        return {f.path: f for f in files}

    # -- changes (staged until commit) --
    def remove_file(self, file_id: int) -> int:
        rows = self.conn.execute(
            "SELECT id, text, heading FROM chunks WHERE file_id = ?", (file_id,)
        ).fetchall()
        self._removed_rows += rows
        ids = [r[0] for r in rows]
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
                path_column(path),
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
        self._added_rows += [
            (first + i, c.text, lexical.heading_column(c.heading)) for i, c in enumerate(chunks)
        ]
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
                (GRAPH_CRC, str(crc32(final, final.stat().st_size))),
            ]
            # Corpus order: path, then chunk position in the file.
            self.conn.execute(
                "UPDATE chunks SET ordinal = r.rn FROM (SELECT c.id AS id, row_number() OVER "
                "(ORDER BY f.path, c.seq) - 1 AS rn FROM chunks c JOIN files f ON "
                "f.id = c.file_id) AS r WHERE chunks.id = r.id AND chunks.ordinal != r.rn"
            )
            postings.apply(self.conn, self._removed_rows, self._added_rows)
            meta += postings.stamp(gen)
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
        self._removed_rows, self._added_rows = [], []
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
        current = read_pointer(self.index_dir / "CURRENT")
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


def make_private(index_dir: Path) -> None:
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
