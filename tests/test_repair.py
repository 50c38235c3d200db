"""Damaged indexes: `qrag index` repairs them, `qrag status --check` reports them, a
refresh keeps the settings an index was built with. All through the real CLI."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import hnswlib
import numpy as np
import pytest
from conftest import run_qrag

from qrag_cli import render
from qrag_cli.config import resolve_index
from qrag_cli.episode import IndexCandidates, StopRule, run_episodes
from qrag_cli.store import IndexSnapshot, open_snapshot

SAMPLE = Path(__file__).resolve().parent.parent / "qrag_cli" / "sample"
QUESTION = "Who invented the steam engine and where was he born?"


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return Path(shutil.copytree(SAMPLE, tmp_path / "sample"))


def store(name: str = "default") -> Path:
    index_dir = resolve_index(name)
    return index_dir / (index_dir / "CURRENT").read_text().strip()


def evidence(name: str = "default") -> list[tuple[int, str, float]]:
    proc = run_qrag("ask", QUESTION, "--index", name, "--json", "--steps", "3", "--no-stop")
    assert proc.returncode == 0, proc.stderr
    return [
        (e["chunk_id"], e["path"], round(e["q"], 3)) for e in json.loads(proc.stdout)["evidence"]
    ]


def check(*args: str) -> tuple[int, list[dict]]:
    proc = run_qrag("status", "--check", "--json", *args)
    assert "Traceback" not in proc.stderr
    rows = json.loads(proc.stdout)
    return proc.returncode, rows if isinstance(rows, list) else [rows]


def assert_one_line_error(proc, *words: str) -> None:
    assert proc.returncode != 0 and proc.stdout == ""
    err = proc.stderr.strip()
    assert err.count("\n") == 0, err
    assert "internal error" not in err and "Traceback" not in err
    for word in words:
        assert word in err, err


def test_truncated_vectors_are_repaired_and_ask_gives_the_same_evidence(corpus: Path) -> None:
    run_qrag("index", str(corpus), check=True)
    before = evidence()
    vectors = store() / "vectors.f32"
    cut = vectors.stat().st_size // 3
    with vectors.open("r+b") as fh:
        fh.truncate(cut)

    assert_one_line_error(run_qrag("ask", QUESTION), "vectors.f32", "qrag index")
    code, rows = check()
    assert code == 1 and not rows[0]["ok"] and "truncated" in " ".join(rows[0]["problems"])
    assert vectors.stat().st_size == cut  # the check changed nothing

    proc = run_qrag("index", check=True)  # a plain refresh repairs
    assert "repaired" in proc.stderr and "vectors.f32" in proc.stderr
    assert evidence() == before
    code, rows = check()
    assert code == 0 and rows[0]["ok"] and rows[0]["problems"] == []
    again = run_qrag("index", check=True)  # nothing left to repair
    assert "repaired" not in again.stderr


def test_zeroed_vectors_are_detected_and_repaired(corpus: Path) -> None:
    run_qrag("index", str(corpus), check=True)
    before = evidence()
    vectors = store() / "vectors.f32"
    size = vectors.stat().st_size
    vectors.write_bytes(b"\0" * size)  # same size: only the content says it is damaged

    code, rows = check()
    assert code == 1 and "checksum" in " ".join(rows[0]["problems"])
    proc = run_qrag("index", check=True)
    assert "repaired" in proc.stderr and "vectors.f32" in proc.stderr
    assert vectors.stat().st_size == size
    rows_now = np.fromfile(vectors, dtype=np.float32).reshape(-1, 384)
    assert rows_now.any(axis=1).all()
    assert evidence() == before
    assert check()[0] == 0


def test_zeroed_vectors_without_a_graph_are_embedded_again(corpus: Path) -> None:
    run_qrag("index", str(corpus), check=True)
    before = evidence()
    folder = store()
    vectors = folder / "vectors.f32"
    data = np.fromfile(vectors, dtype=np.float32).reshape(-1, 384)
    data[::2] = 0  # every other vector zeroed, and no graph left to copy them from
    data.tofile(vectors)
    for graph in folder.glob("hnsw-*.bin"):
        graph.unlink()

    code, rows = check()
    problems = " ".join(rows[0]["problems"])
    assert code == 1 and "vectors.f32" in problems and "hnsw" in problems
    proc = run_qrag("index", "--json", check=True)
    summary = json.loads(proc.stdout)
    assert summary["chunks_embedded"] == len(data)  # the checksum cannot tell which: all
    assert "re-embedded" in proc.stderr and "graph rebuilt" in proc.stderr
    assert np.fromfile(vectors, dtype=np.float32).reshape(-1, 384).any(axis=1).all()
    assert [(i, p) for i, p, _ in evidence()] == [(i, p) for i, p, _ in before]
    assert check()[0] == 0


def test_removed_graph_is_rebuilt(corpus: Path) -> None:
    run_qrag("index", str(corpus), check=True)
    before = evidence()
    for graph in store().glob("hnsw-*.bin"):
        graph.unlink()
    assert_one_line_error(run_qrag("ask", QUESTION), "hnsw", "qrag index")
    assert check()[0] == 1

    proc = run_qrag("index", check=True)
    assert "repaired" in proc.stderr and "graph" in proc.stderr
    assert evidence() == before
    assert check()[0] == 0


def _graph_lacking_a_chunk(index_dir: Path) -> None:
    """Replace the committed graph with one that loads but lacks a live chunk (as a stale
    or damaged file would): hnswlib then cannot return as many chunks as asked for."""
    with open_snapshot(index_dir) as snapshot:
        live = snapshot.live_ids()
        vectors = np.asarray(snapshot.vectors[live[1:]])
        path = snapshot.folder / f"hnsw-{snapshot.generation}.bin"
        dim = snapshot.dim
    graph = hnswlib.Index(space="ip", dim=dim)
    graph.init_index(max_elements=len(live), M=16, ef_construction=200)
    graph.add_items(vectors, live[1:])
    graph.save_index(str(path))


def test_failed_graph_search_says_so_and_the_next_snapshot_uses_the_repaired_graph(
    corpus: Path, base_model, capsys
) -> None:
    notice = "HNSW search failed"
    run_qrag("index", str(corpus), "--model", "base", check=True)
    proc = run_qrag("ask", QUESTION, "--json", "--steps", "3", "--no-stop", "--exact")
    exact = json.loads(proc.stdout)["evidence"]
    exact_ids = [e["chunk_id"] for e in exact]
    index_dir = resolve_index(None)
    _graph_lacking_a_chunk(index_dir)

    # `qrag ask` searches every chunk instead, says so once on stderr, and finds the same.
    proc = run_qrag("ask", QUESTION, "--json", "--steps", "3", "--no-stop")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count(notice) == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"qrag index --index {index_dir}" in proc.stderr
    assert json.loads(proc.stdout)["evidence"] == exact
    assert check()[0] == 1

    # A long-lived snapshot (`qrag mcp`): one notice, then exact search while it lives.
    first = IndexSnapshot(index_dir)
    source = IndexCandidates(first, notify=render.log)
    for _ in range(2):
        episode = run_episodes(base_model, [QUESTION], [source], StopRule(3))[0]
        assert [ev.chunk_id for ev in episode.evidence] == exact_ids
    out = capsys.readouterr()
    assert out.err.count(notice) == 1 and out.out == ""
    assert source.fallback is not None

    first.release()  # between questions, as `qrag mcp` does
    proc = run_qrag("index", check=True)
    assert "graph rebuilt" in proc.stderr
    assert not first.renew()  # another state was committed: open a new snapshot
    first.close()
    with open_snapshot(index_dir) as second:
        source = IndexCandidates(second, notify=render.log)
        episode = run_episodes(base_model, [QUESTION], [source], StopRule(3))[0]
        assert [ev.chunk_id for ev in episode.evidence] == exact_ids
        assert source.fallback is None and second._hnsw is not None  # the graph answered
    assert notice not in capsys.readouterr().err
    proc = run_qrag("ask", QUESTION, "--json", "--steps", "3", "--no-stop")
    assert notice not in proc.stderr and json.loads(proc.stdout)["evidence"] == exact


@pytest.mark.parametrize("damage", ["row deleted", "byte flipped"])
def test_damaged_bm25_table_is_rebuilt(corpus: Path, damage: str) -> None:
    run_qrag("index", str(corpus), check=True)
    before = evidence()
    conn = sqlite3.connect(store() / "index.sqlite")
    with conn:
        if damage == "row deleted":  # the chunk's words vanish from BM25, the chunk stays
            chunk_id, text, heading = conn.execute(
                "SELECT id, text, heading FROM chunks LIMIT 1"
            ).fetchone()
            conn.execute(
                "INSERT INTO chunks_fts(chunks_fts, rowid, text, heading) "
                "VALUES ('delete', ?, ?, ?)",
                (chunk_id, text, heading),
            )
        else:  # one byte of FTS5's own index: only its integrity check finds it
            block_id, block = conn.execute(
                "SELECT id, block FROM chunks_fts_data ORDER BY length(block) DESC LIMIT 1"
            ).fetchone()
            flipped = bytearray(block)
            flipped[len(block) // 2] ^= 0xFF
            conn.execute(
                "UPDATE chunks_fts_data SET block = ? WHERE id = ?", (bytes(flipped), block_id)
            )
    conn.close()

    code, rows = check()
    assert code == 1 and "BM25" in " ".join(rows[0]["problems"])
    proc = run_qrag("index", check=True)
    assert "repaired" in proc.stderr and "BM25" in proc.stderr
    assert check()[0] == 0
    assert evidence() == before


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_database_is_named_and_does_not_hide_healthy_indexes(
    corpus: Path, damage: str
) -> None:
    run_qrag("index", str(corpus), "--index", "good", check=True)
    run_qrag("index", str(corpus), "--index", "bad", check=True)
    db = store("bad") / "index.sqlite"
    if damage == "garbage":
        db.write_bytes(b"this is not a database\n" * 2000)
    else:
        data = db.read_bytes()
        db.write_bytes(data[: len(data) // 3])
    bad_dir = str(resolve_index("bad"))

    assert_one_line_error(run_qrag("ask", QUESTION, "--index", "bad"), bad_dir, "qrag index")
    assert_one_line_error(run_qrag("status", "--index", "bad"), bad_dir, "qrag index")

    table = run_qrag("status")
    assert table.returncode == 0, table.stderr
    assert "broken" in table.stdout and "corrupt" in table.stdout
    assert "qrag-default" in table.stdout  # the healthy index's row, with its model
    listing = run_qrag("status", "--json")
    assert listing.returncode == 0, listing.stderr
    rows = {Path(r["index"]).name: r for r in json.loads(listing.stdout)}
    assert rows["bad"]["broken"] and "corrupt" in rows["bad"]["error"]
    assert not rows["good"]["broken"] and rows["good"]["files"] == 6

    code, checked = check()
    assert code == 1
    assert {Path(r["index"]).name: r["ok"] for r in checked} == {"good": True, "bad": False}
    assert check("--index", "good")[0] == 0
    assert check("--index", "bad")[0] == 1

    # The one-line error's advice works: the index is rebuilt from the files.
    proc = run_qrag("index", str(corpus), "--index", "bad", check=True)
    assert "full rebuild" in proc.stderr
    assert check()[0] == 0
    assert evidence("bad") == evidence("good")


def _manifest(name: str = "default") -> dict:
    proc = run_qrag("status", "--index", name, "--json", check=True)
    return json.loads(proc.stdout)


def test_refresh_keeps_chunk_tokens_and_file_size_limit(corpus: Path) -> None:
    run_qrag(
        "index",
        str(corpus),
        "--chunk-tokens",
        "64",
        "--overlap",
        "8",
        "--max-file-size",
        "600",
        check=True,
    )
    first = _manifest()
    assert first["chunking"]["chunk_tokens"] == 64 and first["files"] == 5  # engines.md: 609 B

    for args in ([], [str(corpus)]):
        proc = run_qrag("index", *args, "--json", check=True)
        summary = json.loads(proc.stdout)
        assert summary["rebuild"] is None and summary["chunks_embedded"] == 0
        assert summary["removed"] == 0 and summary["new"] == 0, summary
        now = _manifest()
        assert now["chunking"] == first["chunking"] and now["files"] == 5

    proc = run_qrag("index", "--chunk-tokens", "96", check=True)  # a new value, explicitly
    assert "full rebuild" in proc.stderr and "64 -> 96" in proc.stderr
    assert _manifest()["chunking"]["chunk_tokens"] == 96
    assert _manifest()["chunking"]["overlap"] == 8  # not given again: kept


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> Path:
    """A plain encoder folder whose weights differ from the base's (so its vectors, and
    its fingerprint, differ): the base with every weight scaled slightly."""
    import torch
    from safetensors.torch import load_file, save_file

    from qrag_cli.model import base_model_dir

    base = base_model_dir()
    folder = tmp_path_factory.mktemp("models") / "scaled-minilm"
    shutil.copytree(base, folder)
    tensors = load_file(str(base / "model.safetensors"))
    save_file(
        {
            k: (v * 1.01 if torch.is_floating_point(v) else v).contiguous()
            for k, v in tensors.items()
        },
        str(folder / "model.safetensors"),
    )
    return folder


def test_refresh_keeps_the_model(corpus: Path, other_model: Path) -> None:
    run_qrag("index", str(corpus), "--model", str(other_model), check=True)
    assert _manifest()["model"] == "scaled-minilm"

    for args in ([], [str(corpus)]):
        proc = run_qrag("index", *args, "--json", check=True)
        summary = json.loads(proc.stdout)
        assert summary["rebuild"] is None and summary["chunks_embedded"] == 0
        assert _manifest()["model"] == "scaled-minilm"
    # ask, too, uses the index's own model when none is given
    assert evidence()

    proc = run_qrag("index", "--model", "base", check=True)  # another model, explicitly
    assert "full rebuild" in proc.stderr and "model changed" in proc.stderr
    assert _manifest()["model"] == "all-MiniLM-L6-v2"


@pytest.mark.parametrize("pointer", ["missing", "empty", "outside", "absolute"])
def test_a_lost_current_pointer_keeps_the_index(corpus: Path, tmp_path: Path, pointer: str) -> None:
    """CURRENT missing, empty, or naming a folder outside the index: nothing is lost.
    Readers serve the newest intact store (a pointer outside is never followed), `status
    --check` names the problem, and `qrag index` writes CURRENT again instead of starting
    an empty store over the one that holds the data."""
    run_qrag("index", str(corpus), check=True)
    before, live = evidence(), store()
    index_dir = live.parent
    outside = tmp_path / "elsewhere" / live.name
    shutil.copytree(live, outside)
    current = index_dir / "CURRENT"
    if pointer == "missing":
        current.unlink()
    else:
        current.write_text(
            {"empty": "", "outside": f"../elsewhere/{live.name}", "absolute": str(outside)}[pointer]
        )
    code, rows = check()
    assert code == 1 and len(rows[0]["problems"]) == 1
    if pointer in ("missing", "empty"):
        assert evidence() == before  # served from the newest intact store
    else:
        assert "not a store of this index" in rows[0]["problems"][0]
        proc = run_qrag("ask", QUESTION)
        assert_one_line_error(proc, "not a store of this index", "qrag index --index")
    proc = run_qrag("index", "--json", check=True)
    assert json.loads(proc.stdout)["unchanged"] > 0  # the same store, nothing re-embedded
    assert any("CURRENT restored" in r for r in json.loads(proc.stdout)["repaired"])
    assert current.read_text() == live.name and check()[0] == 0
    assert evidence() == before
    assert sorted(p.name for p in outside.iterdir())  # what it named is never deleted


def test_a_plain_refresh_says_it_finishes_an_interrupted_rebuild(
    corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rebuild with other settings, interrupted, is finished by the next plain `qrag
    index` with those settings (they are an interrupted rebuild's): it says so."""
    from qrag_cli.config import ChunkConfig
    from qrag_cli.indexer import build_index
    from qrag_cli.model import load_model

    run_qrag("index", str(corpus), check=True)
    model = load_model("default")
    monkeypatch.setenv("QRAG_EMBED_GROUP", "2")  # small groups, each committed
    monkeypatch.setenv("QRAG_COMMIT_INTERVAL", "0")
    embed, calls = model.embed_chunks, []

    def interrupted(texts: list[str]) -> np.ndarray:
        calls.append(len(texts))
        if len(calls) == 2:  # after the first group is committed
            raise KeyboardInterrupt
        return embed(texts)

    model.embed_chunks = interrupted
    with pytest.raises(KeyboardInterrupt):
        build_index([corpus], resolve_index(None), model, ChunkConfig(chunk_tokens=64))
    assert (resolve_index(None) / "BUILDING").exists()
    proc = run_qrag("index", check=True)
    assert (
        "full rebuild: the chunking settings changed (chunk_tokens 128 -> 64); finishing the "
        "rebuild an earlier run started (give the live index's settings to keep them instead)"
    ) in proc.stderr
    assert not (resolve_index(None) / "BUILDING").exists() and check()[0] == 0
