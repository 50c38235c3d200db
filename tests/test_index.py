"""`qrag index` with the real embedder, real SQLite and real hnswlib files on disk."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import QRAG, REPO, run_qrag

from qrag_cli.config import ChunkConfig, resolve_index
from qrag_cli.indexer import build_index
from qrag_cli.store import IndexSnapshot, open_snapshot
from qrag_cli.types import NoIndexError


def make_corpus(root: Path, n_files: int, paragraphs: int = 3, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    words = (
        "river town engine ferry salmon plateau inventor mill harbour winter bread "
        "lamp valve turbine patent captain locksmith library festival timetable"
    ).split()
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        paras = []
        for p in range(paragraphs):
            body = " ".join(rng.choice(words, size=60))
            paras.append(f"Note {i}.{p}: the code for item {i}-{p} is {1000 + 7 * i + p}. {body}.")
        (root / f"doc{i:04d}.txt").write_text("\n\n".join(paras) + "\n")
    return root


def check_consistent(index_dir: Path, verify_fts: bool = True) -> int:
    """Every committed chunk has a vector and a graph node, and (`verify_fts`, which needs
    the write lock: not while a writer runs) BM25's table matches the chunks; returns
    the chunk count."""
    with open_snapshot(index_dir) as snapshot:
        ids = snapshot.live_ids()
        assert len(ids) == snapshot.n_chunks
        assert (ids < snapshot.n_vectors).all()
        if len(ids):
            graph = set(snapshot.hnsw.get_ids_list())
            assert set(ids.tolist()) <= graph
            stored = np.asarray(snapshot.hnsw.get_items(ids[:5], return_type="numpy"))
            assert np.allclose(stored, snapshot.vectors[ids[:5]], atol=1e-6)
            files = snapshot.conn.execute("SELECT sum(n_chunks) FROM files").fetchone()[0]
            assert files == snapshot.n_chunks
        # BM25's table holds exactly the committed chunks' words (FTS5 verifies its index
        # against the chunks table; raises on any difference).
        if not verify_fts:
            return snapshot.n_chunks
        check = sqlite3.connect(snapshot.folder / "index.sqlite")
        check.execute("INSERT INTO chunks_fts(chunks_fts, rank) VALUES ('integrity-check', 1)")
        check.close()
        return snapshot.n_chunks


def test_index_and_status(hop_corpus: Path, base_model, qrag_home: Path) -> None:
    summary = build_index([hop_corpus], resolve_index(None), base_model, ChunkConfig())
    assert summary.new == 8 and summary.chunks_total == 8 and summary.failed == 0
    assert check_consistent(resolve_index(None)) == 8
    proc = run_qrag("status", "--json", check=True)
    rows = json.loads(proc.stdout)
    assert rows[0]["files"] == 8 and rows[0]["chunks"] == 8
    assert rows[0]["model"] == "all-MiniLM-L6-v2" and rows[0]["bytes_on_disk"] > 0
    assert str(qrag_home) in rows[0]["index"]


def test_incremental_touch_edit_delete_rename(hop_corpus: Path, base_model) -> None:
    index_dir = resolve_index("inc")
    build_index([hop_corpus], index_dir, base_model, ChunkConfig())
    with open_snapshot(index_dir) as r:
        first_ids = set(r.live_ids().tolist())

    with open_snapshot(index_dir) as r:
        generation = r.generation
    again = build_index([hop_corpus], index_dir, base_model, ChunkConfig())
    assert (again.new, again.changed, again.removed, again.unchanged) == (0, 0, 0, 8)
    assert again.chunks_embedded == 0
    with open_snapshot(index_dir) as r:
        assert r.generation == generation  # a no-op run does not rewrite the graph

    os.utime(hop_corpus / "a.txt", ns=(1, 1))  # touched: same content, new mtime
    (hop_corpus / "b.txt").write_text("Ada Lindqvist was born in Norrvik, not Tarsholm.\n")
    (hop_corpus / "d5.txt").unlink()
    (hop_corpus / "d4.txt").rename(hop_corpus / "d4-renamed.txt")
    s = build_index([hop_corpus], index_dir, base_model, ChunkConfig())
    assert (s.new, s.changed, s.removed, s.unchanged) == (1, 1, 2, 5)
    assert s.chunks_embedded == 2 and s.chunks_total == 7
    assert check_consistent(index_dir) == 7
    with open_snapshot(index_dir) as r:
        rows = r.chunks(r.live_ids().tolist())
        texts = {Path(row.path).name: row.text for row in rows}
        assert "Norrvik" in texts["b.txt"] and "d5.txt" not in texts
        assert "d4-renamed.txt" in texts
        # unchanged files keep their chunk ids; removed ones are gone from the graph
        assert {row.id for row in rows if Path(row.path).name == "c.txt"} <= first_ids
        graph_live = set(r.hnsw.knn_query(r.vectors[r.live_ids()[0]], k=7)[0][0].tolist())
        assert graph_live == set(r.live_ids().tolist())
        ordinals = sorted(row.ordinal for row in rows)
        assert ordinals == list(range(7))


def test_other_roots_are_kept_and_refresh_without_paths(tmp_path: Path, base_model) -> None:
    a = make_corpus(tmp_path / "a", 2, 1)
    b = make_corpus(tmp_path / "b", 3, 1, seed=1)
    index_dir = resolve_index(None)
    build_index([a], index_dir, base_model, ChunkConfig())
    s = build_index([b], index_dir, base_model, ChunkConfig())
    assert s.removed == 0 and s.files_total == 5
    (a / "doc0000.txt").unlink()
    s = build_index([], index_dir, base_model, ChunkConfig())  # refresh every known root
    assert s.removed == 1 and s.files_total == 4


def test_chunking_change_rebuilds_and_old_index_stays_readable(hop_corpus, base_model) -> None:
    index_dir = resolve_index(None)
    build_index([hop_corpus], index_dir, base_model, ChunkConfig())
    s = build_index([hop_corpus], index_dir, base_model, ChunkConfig(chunk_tokens=64))
    assert s.rebuild and "chunking" in s.rebuild
    assert s.new == 8 and s.chunks_total == 8
    with open_snapshot(index_dir) as r:
        assert r.manifest.chunking["chunk_tokens"] == 64
    assert len(list(index_dir.glob("store-*"))) == 1  # the old store was removed


def test_manifest_keeps_the_stored_form_of_existing_indexes(hop_corpus, base_model) -> None:
    """The meta rows an index holds and the keys of `qrag status --json` are what qrag
    wrote before the manifest had a type: existing indexes open, scripts keep working."""
    from qrag_cli.store import IndexManifest

    index_dir = resolve_index(None)
    build_index([hop_corpus], index_dir, base_model, ChunkConfig(), model_spec="base")
    with open_snapshot(index_dir) as snapshot:
        meta = dict(snapshot.conn.execute("SELECT key, value FROM meta").fetchall())
        manifest = snapshot.manifest
    assert meta["format_version"] == "2" and meta["dim"] == "384"
    assert meta["model_name"] == "all-MiniLM-L6-v2" and meta["model_spec"] == "base"
    assert meta["chunking"] == '{"chunk_tokens": 128, "overlap": 16, "version": 2}'
    as_json = {
        "format_version": 2,
        "model": "all-MiniLM-L6-v2",
        "model_spec": "base",
        "model_fingerprint": meta["model_fingerprint"],
        "dim": 384,
        "chunking": {"chunk_tokens": 128, "overlap": 16, "version": 2},
        "generation": int(meta["generation"]),
    }
    assert manifest.to_dict() == as_json
    assert IndexManifest.from_dict(as_json) == manifest
    status = json.loads(run_qrag("status", "--index", "default", "--json", check=True).stdout)
    assert {key: status[key] for key in as_json} == as_json
    # An index from before `model_spec` was stored still opens (and says so with None).
    older = {key: value for key, value in meta.items() if key != "model_spec"}
    assert IndexManifest.from_meta(older).model_spec is None
    assert IndexManifest.from_meta(older).to_dict() == {**as_json, "model_spec": None}


def test_bad_files_are_reported_and_skipped(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    root.mkdir()
    (root / "good.md").write_text("# Title\n\nThe lighthouse keeper counts ships.\n")
    (root / "latin1.txt").write_bytes("Le café de la gare ouvre à six heures.\n".encode("latin-1"))
    (root / "empty.txt").write_text("")
    (root / "binary.dat").write_bytes(b"\x00\x01\x02binary" * 100)
    (root / "huge-line.txt").write_text("word " * 40_000)
    (root / "broken.pdf").write_bytes(b"%PDF-1.4\n garbage without objects")
    (root / ".env").write_text("API_KEY=supersecret\n")
    (root / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n")
    (root / "loop").symlink_to(root, target_is_directory=True)
    os.mkfifo(root / "fifo.txt")  # cannot be read as a file, even by root
    proc = run_qrag("index", str(root), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["failed"] + summary["skipped"] >= 5
    err = proc.stderr
    for name in ("binary.dat", "broken.pdf", ".env", "id_rsa", "fifo.txt"):
        assert name in err, f"{name} not reported: {err}"
    assert "Traceback" not in err
    with open_snapshot(resolve_index(None)) as r:
        texts = " ".join(row.text for row in r.chunks(r.live_ids().tolist()))
        paths = {Path(row.path).name for row in r.chunks(r.live_ids().tolist())}
    assert "café" in texts and "supersecret" not in texts and "PRIVATE KEY" not in texts
    assert {"good.md", "latin1.txt", "huge-line.txt"} <= paths
    assert "binary.dat" not in paths


def _start_index(corpus: Path, home: Path, name: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "QRAG_HOME": str(home),
        "QRAG_COMMIT_INTERVAL": "0",
        "QRAG_EMBED_GROUP": "8",
    }
    return subprocess.Popen(
        [*QRAG, "index", str(corpus), "--index", name],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _generation(index_dir: Path) -> int:
    try:
        with open_snapshot(index_dir) as r:
            return r.generation
    except NoIndexError:
        return -1


@pytest.mark.parametrize("wait_commits", [1, 3])
def test_sigkill_leaves_last_commit_usable_and_rerun_finishes(
    tmp_path: Path, qrag_home: Path, wait_commits: int
) -> None:
    corpus = make_corpus(tmp_path / "corpus", 60)
    index_dir = resolve_index("killed")
    proc = _start_index(corpus, qrag_home, "killed")
    deadline = time.time() + 120
    while _generation(index_dir) < wait_commits and proc.poll() is None:
        assert time.time() < deadline, "no commit within 120 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = check_consistent(index_dir)
    assert partial > 0
    ask = run_qrag("ask", "code for item 3-1", "--index", "killed", "--json", "--steps", "2")
    assert ask.returncode == 0, ask.stderr
    assert json.loads(ask.stdout)["evidence"]
    rerun = run_qrag("index", str(corpus), "--index", "killed", "--json", check=True)
    summary = json.loads(rerun.stdout)
    assert summary["files_total"] == 60
    assert summary["new"] + summary["unchanged"] == 60 and summary["unchanged"] > 0
    assert check_consistent(index_dir) == summary["chunks_total"]


def test_reader_sees_committed_state_while_indexing(
    tmp_path: Path, qrag_home: Path, base_model
) -> None:
    from qrag_cli.episode import IndexCandidates, StopRule, run_episodes

    corpus = make_corpus(tmp_path / "corpus", 40)
    index_dir = resolve_index("live")
    proc = _start_index(corpus, qrag_home, "live")
    reads = 0
    seen_counts = []
    try:
        while proc.poll() is None:
            try:
                snapshot = IndexSnapshot(index_dir)
            except NoIndexError:
                time.sleep(0.02)
                continue
            try:
                seen_counts.append(check_consistent(index_dir, verify_fts=False))
                if snapshot.n_chunks:  # this snapshot, which may be older than the check's
                    episode = run_episodes(
                        base_model, ["code for item 2-0"], [IndexCandidates(snapshot)], StopRule(2)
                    )[0]
                    assert episode.evidence
                reads += 1
            finally:
                snapshot.close()
    finally:
        proc.wait(timeout=300)
    assert proc.returncode == 0, proc.stderr.read().decode()
    assert reads >= 3
    assert seen_counts == sorted(seen_counts)  # commits only ever add here
    assert check_consistent(index_dir) >= max(seen_counts) > 0


def test_second_writer_is_refused(hop_corpus: Path, base_model) -> None:
    from qrag_cli.store import IndexManifest, IndexWriter
    from qrag_cli.types import QragError

    index_dir = resolve_index(None)
    manifest = IndexManifest(
        model_name="m", model_fingerprint="f", dim=4, chunking=ChunkConfig().to_dict()
    )
    first = IndexWriter(index_dir, manifest)
    try:
        with pytest.raises(QragError, match="another `qrag index`"):
            IndexWriter(index_dir, manifest)
    finally:
        first.abort()


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    proc = run_qrag("index", str(tmp_path / "missing"))
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0 and "missing" in proc.stderr
    assert proc.stdout == ""
    proc = run_qrag("index", str(tmp_path), "--chunk-tokens", "4")
    assert proc.returncode == 2 and "chunk-tokens" in proc.stderr


def test_progress_bar_only_on_a_terminal(hop_corpus: Path) -> None:
    proc = run_qrag("index", str(hop_corpus))
    assert proc.returncode == 0
    assert "\r" not in proc.stderr and "━" not in proc.stderr
    assert proc.stdout == ""  # no --json: the summary is a log line on stderr
    assert "8 new" in proc.stderr


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


def test_embedding_groups_are_sized_to_commit_every_interval() -> None:
    """A kill loses at most one embedding group: a slow machine gets groups of about one
    commit interval of work, a fast one the configured cap; never below LEAST_GROUP."""
    from qrag_cli.indexer import FIRST_GROUP, LEAST_GROUP, next_group

    assert FIRST_GROUP < 2048  # the first commit does not wait for a full group
    assert next_group(2048, 120.0, 10.0, 2048) == 170  # 2,048 chunks took two minutes
    assert next_group(2048, 5.0, 10.0, 2048) == 2048  # fast: the cap
    assert next_group(100, 100.0, 0.0, 2048) == LEAST_GROUP
    assert next_group(10, 1.0, 10.0, 8) == 8  # a cap below the floor wins
    assert next_group(0, 0.0, 10.0, 512) == 512
