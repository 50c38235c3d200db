"""The on-disk index: SQLite + append-only exact vectors + hnswlib. No torch here.

Layout of one index folder::

    CURRENT          name of the live store folder (replaced atomically)
    BUILDING         name of a store being rebuilt from scratch (resumable), if any
    index.lock       held by the one writer
    store-<id>/
        index.sqlite   files, chunks, meta, BM25 (FTS5 and its stored postings, postings.py)
                       (WAL; one transaction per commit)
        vectors.f32    float32 rows, row i = chunk id i; only the first meta.n_vectors
                       rows are committed (a killed writer leaves a tail that is ignored)
        hnsw-<gen>.bin the HNSW graph as of commit <gen> (written, then renamed)

A commit appends vectors (fsync), saves hnsw-<gen+1>.bin (temp + rename), then one
SQLite transaction switches meta.generation. Until that transaction commits, readers and
a crashed writer's successor see generation <gen> exactly as it was.

Each commit also records the CRC-32 of the committed vectors region and of the graph file,
so damage that keeps sizes intact (a file overwritten with zeros) is found by reading the
files once. Every writer checks the committed state before it
changes anything and repairs what is damaged (see `IndexWriter._verify`); `check_index`
runs the same checks read-only for `qrag status --check`.
"""

from qrag_cli.store.check import check_index, stored_settings
from qrag_cli.store.layout import (
    FORMAT_VERSION,
    ChunkRow,
    FileRow,
    IndexManifest,
    corrupt_database,
    index_exists,
    live_store,
)
from qrag_cli.store.snapshot import IndexSnapshot, index_status, list_indexes, open_snapshot
from qrag_cli.store.writer import IndexWriter

__all__ = [
    "FORMAT_VERSION",
    "ChunkRow",
    "FileRow",
    "IndexManifest",
    "IndexSnapshot",
    "IndexWriter",
    "check_index",
    "corrupt_database",
    "index_exists",
    "index_status",
    "list_indexes",
    "live_store",
    "open_snapshot",
    "stored_settings",
]
