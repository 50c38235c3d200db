"""Hostile flags and files, through the real CLI: every numeric flag is range-checked at
parse time, unreadable paths are skipped by name, outputs never overwrite inputs, damaged
GGUFs and text-less PDFs are named, long questions are noted, failed training leaves
nothing behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HOP_FILES, QRAG, REPO, run_qrag
from gguf_tiny import write_tiny_gguf

from qrag_cli.bench.tasks import two_hop_task
from qrag_cli.datasets import write_examples

# ---- numeric flags ------------------------------------------------------------------------
MISSING = "/nonexistent/qrag-test/data.jsonl"  # never read: the flag is refused first
TOO_BIG_SEED = str(2**32)

NUMERIC_FLAGS = [
    # (command line, the flag the error must name)
    (["index", "--chunk-tokens", "8"], "--chunk-tokens"),
    (["index", "--chunk-tokens", "4096"], "--chunk-tokens"),
    (["index", "--overlap", "-1"], "--overlap"),
    (["index", "--overlap", "64"], "--overlap"),  # must stay under half of --chunk-tokens
    (["index", "--max-file-size", "-5"], "--max-file-size"),
    (["index", "--max-file-size", "0"], "--max-file-size"),
    (["index", "--max-file-size", "inf"], "--max-file-size"),
    (["index", "--max-file-size", "10XB"], "--max-file-size"),
    (["ask", "q", "--steps", "0"], "--steps"),
    (["ask", "q", "--steps", "33"], "--steps"),  # MCP's `ask` has the same range (config)
    (["ask", "q", "--steps", "100000000000000000000"], "--steps"),
    (["ask", "q", "--threshold", "nan"], "--threshold"),
    (["ask", "q", "--max-tokens", "0"], "--max-tokens"),
    (["ask", "q", "--temperature", "-1"], "--temperature"),
    (["ask", "q", "--temperature", "inf"], "--temperature"),
    (["ask", "q", "--seed", "-1"], "--seed"),
    (["ask", "q", "--seed", TOO_BIG_SEED], "--seed"),
    (["ask", "q", "--n-ctx", "0"], "--n-ctx"),
    (["ask", "q", "--threads", "0"], "--threads"),
    (["ask", "q", "--gpu-layers", "-2"], "--gpu-layers"),
    (["train", MISSING, "--eval-split", "0"], "--eval-split"),
    (["train", MISSING, "--eval-split", "1"], "--eval-split"),
    (["train", MISSING, "--layers", "0"], "--layers"),
    (["train", MISSING, "--budget", "0"], "--budget"),
    (["train", MISSING, "--updates", "0"], "--updates"),
    (["train", MISSING, "--batch", "-4"], "--batch"),
    (["train", MISSING, "--lr", "0"], "--lr"),
    (["train", MISSING, "--lr", "nan"], "--lr"),
    (["train", MISSING, "--alpha", "0"], "--alpha"),
    (["train", MISSING, "--seed", "-1"], "--seed"),
    (["train", MISSING, "--eval-every", "0"], "--eval-every"),
    (["train", MISSING, "--warm-start", "-1"], "--warm-start"),
    (["train", MISSING, "--updates", "5", "--warm-start", "6"], "--warm-start"),
    (["train", MISSING, "--lexical", "nan,0.1"], "--lexical"),
    (["train", MISSING, "--lexical", "0.3,0.3,0.1,0.1,0.1"], "--lexical"),
    (["train", MISSING, "--state-chunk-cap", "0"], "--state-chunk-cap"),
    (["train", MISSING, "--state-chunk-cap", "513"], "--state-chunk-cap"),
    (["train", "eval", MISSING, "--budget", "2", "--budget", "0"], "--budget"),
    (["train", "eval", MISSING, "--threshold", "inf"], "--threshold"),
    (["bench", "--length", "100"], "--length"),
    (["bench", "--questions", "0"], "--questions"),
    (["bench", "--steps", "0"], "--steps"),
    (["bench", "--seed", "-1"], "--seed"),
    (["bench", "data", "vt", "/nonexistent/out.jsonl", "--n", "0"], "--n"),
    (["bench", "data", "vt", "/nonexistent/out.jsonl", "--tokens", "10"], "--tokens"),
    (["bench", "data", "vt", "/nonexistent/out.jsonl", "--seed", TOO_BIG_SEED], "--seed"),
]


@pytest.mark.parametrize(
    ("args", "flag"), NUMERIC_FLAGS, ids=[" ".join(a[:1] + a[-2:]) for a, _ in NUMERIC_FLAGS]
)
def test_out_of_range_numbers_are_refused_at_parse_time(args: list[str], flag: str) -> None:
    proc = run_qrag(*args)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert flag in lines[0] and "must be" in lines[0], lines[0]
    assert proc.stdout == ""


def test_negative_max_file_size_leaves_the_index_alone(hop_corpus: Path) -> None:
    run_qrag("index", str(hop_corpus), check=True)
    proc = run_qrag("index", "--max-file-size", "-5")
    assert proc.returncode == 2 and "--max-file-size" in proc.stderr
    status = json.loads(run_qrag("status", "--json", check=True).stdout)
    assert status[0]["files"] == len(HOP_FILES)


def test_sizes_take_units() -> None:
    from qrag_cli.flags import parse_size

    assert parse_size("10MB") == 10 << 20 and parse_size("1.5k") == 1536
    assert parse_size(" 2 GiB ") == 2 << 30 and parse_size("4096") == 4096


# ---- paths named on the command line ----------------------------------------------------
def _unprivileged(args: list[str]) -> subprocess.CompletedProcess:
    """The CLI without root's power to read any folder (so a chmod 000 folder is denied)."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: a permission cannot be denied")
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all"]
    return subprocess.run(
        [*prefix, *QRAG, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ),
        timeout=300,
    )


def _bad_path(kind: str, tmp_path: Path) -> Path:
    path = tmp_path / f"bad-{kind}"
    if kind == "symlink loop":
        (tmp_path / "other").symlink_to(path)
        path.symlink_to(tmp_path / "other")
    elif kind == "broken symlink":
        path.symlink_to(tmp_path / "gone")
    elif kind == "unreadable":
        path.mkdir()
        (path / "note.txt").write_text("a note nobody may read\n")
        path.chmod(0)
    return path  # "no such file or directory": never created


@pytest.mark.parametrize(
    "kind", ["symlink loop", "broken symlink", "no such file or directory", "unreadable"]
)
def test_unusable_path_is_skipped_by_name(kind: str, tmp_path: Path) -> None:
    good = tmp_path / "good.txt"
    good.write_text("The lighthouse keeper counts the ships at dusk.\n")
    bad = _bad_path(kind, tmp_path)
    try:
        mixed = _unprivileged(["index", str(good), str(bad), "--json"])
        alone = _unprivileged(["index", str(bad), "--index", str(tmp_path / "idx2")])
    finally:
        if kind == "unreadable":
            bad.chmod(0o700)
    reason = kind + (": Permission denied" if kind == "unreadable" else "")
    # With a good path beside it: one line naming it and why, and the rest is indexed.
    assert mixed.returncode == 0, mixed.stderr
    summary = json.loads(mixed.stdout)
    assert summary["files_total"] == 1 and summary["skipped"] == 1
    assert summary["problems"] == [{"path": str(bad), "reason": reason}]
    assert [ln for ln in mixed.stderr.splitlines() if str(bad) in ln] == [
        f"skip {bad}: {reason}"
    ], mixed.stderr
    # Alone: an error (not an empty index), in one line that says why.
    assert alone.returncode == 1, alone.stderr
    assert alone.stderr.strip() == f"error: nothing to index: {bad}: {reason}", alone.stderr
    assert "Traceback" not in mixed.stderr + alone.stderr


# ---- outputs that are inputs ------------------------------------------------------------
def test_train_convert_refuses_to_overwrite_its_input(tmp_path: Path) -> None:
    src = tmp_path / "hotpot.json"
    src.write_text(
        json.dumps(
            [
                {
                    "_id": "a1",
                    "question": "Where was the inventor of the Zephyr engine born?",
                    "answer": "Tarsholm",
                    "supporting_facts": [["Ada", 0], ["Zephyr", 0]],
                    "context": [
                        ["Ada", ["Ada Lindqvist was born in Tarsholm."]],
                        ["Zephyr", ["The Zephyr engine was invented by Ada Lindqvist."]],
                        ["Soup", ["Barley soup has thyme."]],
                    ],
                }
            ]
        )
    )
    before = src.read_bytes()
    (tmp_path / "hard.json").hardlink_to(src)
    (tmp_path / "link.json").symlink_to(src)
    for dest in (
        src,
        tmp_path / "." / "hotpot.json",
        tmp_path / "hard.json",
        tmp_path / "link.json",
    ):
        proc = run_qrag("train", "convert", "--from", "hotpotqa", str(src), str(dest))
        assert proc.returncode == 2, proc.stderr
        assert "is also the input" in proc.stderr and proc.stderr.count("\n") == 1
        assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "hard.json",
        "hotpot.json",
        "link.json",
    ]  # no temp files
    proc = run_qrag("train", "convert", "--from", "hotpotqa", str(src), str(tmp_path))
    assert proc.returncode == 2 and "is a folder" in proc.stderr
    # The sanity check: another output path works.
    run_qrag(
        "train", "convert", "--from", "hotpotqa", str(src), str(tmp_path / "out.jsonl"), check=True
    )


def test_other_outputs_refuse_their_inputs(tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    write_examples(two_hop_task(4, seed=0), data)
    before = data.read_bytes()
    proc = run_qrag("train", str(data), "--out", str(data))
    assert proc.returncode == 2 and "is also the input DATA" in proc.stderr
    assert data.read_bytes() == before
    (tmp_path / "hay").mkdir()
    proc = run_qrag(
        "bench",
        "data",
        "vt",
        str(tmp_path / "hay"),
        "--haystack",
        str(tmp_path / "hay"),
        "--n",
        "1",
    )
    assert proc.returncode == 2 and "is also the input --haystack" in proc.stderr
    proc = run_qrag("bench", "--out", str(tmp_path / "hay"), "--haystack", str(tmp_path / "hay"))
    assert proc.returncode == 2 and "is also the input --haystack" in proc.stderr
    assert list((tmp_path / "hay").iterdir()) == []


# ---- damaged GGUF files -----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def hop_index(tmp_path_factory) -> Path:
    """One index of the two-hop corpus for the tests that only ask."""
    root = tmp_path_factory.mktemp("hop")
    for name, text in HOP_FILES.items():
        (root / name).write_text(text)
    index = root.parent / "hop-index"
    run_qrag(
        "index",
        str(root),
        "--index",
        str(index),
        check=True,
        env={"QRAG_HOME": str(root.parent / "home")},
    )
    return index


def _damaged(kind: str, good: bytes) -> bytes:
    if kind == "garbage after the header":
        # The magic, version and tensor count are right; what follows is noise (here all
        # 0xff bytes: every length read from it is about 2**64).
        return good[:16] + b"\xff" * 4096
    if kind == "truncated":
        return good[: len(good) // 2]
    if kind == "truncated header":
        return good[:1000]
    return b""  # "empty"


@pytest.mark.parametrize(
    "kind", ["garbage after the header", "truncated", "truncated header", "empty"]
)
def test_damaged_gguf_is_named_in_one_line(
    kind: str, tiny_gguf: Path, hop_index: Path, tmp_path: Path, qrag_home: Path
) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_bytes(_damaged(kind, tiny_gguf.read_bytes()))
    proc = run_qrag(
        "ask",
        "Who invented the Zephyr engine?",
        "--index",
        str(hop_index),
        "--answer",
        "--llm",
        str(bad),
        "--threads",
        "1",
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert f"error: {bad} is not a valid GGUF model" in proc.stderr
    assert "internal error" not in proc.stderr
    # `qrag config --llm` checks the same way, and keeps no damaged file as the default.
    proc = run_qrag("config", "--llm", str(bad))
    assert proc.returncode == 1 and "is not a valid GGUF model" in proc.stderr
    assert not list(qrag_home.rglob("config.toml"))


def test_gguf_check_accepts_real_models(tiny_gguf: Path) -> None:
    from qrag_cli import bundled_reader
    from qrag_cli.gguf_file import read_header

    assert read_header(tiny_gguf).architecture == "llama"
    # Real quantised models (Q4_1; Q4_K_M and others): every tensor type must be sized right.
    smollm2, gemma = bundled_reader.smollm2(), bundled_reader.gemma()
    if smollm2 is not None:
        assert read_header(smollm2).architecture == "llama"
    if gemma is not None:
        assert read_header(bundled_reader.ready(gemma)).architecture == "gemma3"


# ---- files without text -----------------------------------------------------------------
def test_pdf_without_text_is_reported_as_skipped(tmp_path: Path) -> None:
    import pypdf

    root = tmp_path / "docs"
    root.mkdir()
    writer = pypdf.PdfWriter()
    writer.add_blank_page(612, 792)  # what a scanned page is to a text extractor
    with open(root / "scan.pdf", "wb") as f:
        writer.write(f)
    (root / "page.html").write_text("<html><body><p>The ferry leaves at noon.</p></body></html>")
    (root / "notes.txt").write_text("The lighthouse keeper counts ships.\n")
    proc = run_qrag("index", str(root), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["new"] == 2 and summary["skipped"] == 1
    assert [p["reason"] for p in summary["problems"] if p["path"].endswith("scan.pdf")] == [
        "no text"
    ]
    assert "scan.pdf: no text" in proc.stderr
    # A page that loses its text: the old chunks go, and it is reported the same way.
    (root / "page.html").write_text("<html><script>var x = 1;</script></html>")
    proc = run_qrag("index", "--json")
    summary = json.loads(proc.stdout)
    assert summary["removed"] == 1 and summary["files_total"] == 1
    assert "page.html: no text" in proc.stderr and "scan.pdf: no text" in proc.stderr


# ---- long questions ---------------------------------------------------------------------
def test_long_question_is_noted(hop_index: Path, tmp_path: Path) -> None:
    question = "Which river flows through the birthplace of the inventor? " * 350  # 20K chars
    proc = run_qrag("ask", question, "--index", str(hop_index), "--json")
    assert proc.returncode == 0, proc.stderr
    json.loads(proc.stdout)
    assert "note: the question is" in proc.stderr
    assert "retrieval reads only its first 64" in proc.stderr
    short = run_qrag("ask", "Who invented the Zephyr engine?", "--index", str(hop_index), "--json")
    assert "note:" not in short.stderr
    batch = tmp_path / "q.jsonl"
    batch.write_text(
        json.dumps({"id": "long-one", "question": question})
        + "\n"
        + json.dumps({"question": "Who was born in Velmar?"})
        + "\n"
    )
    proc = run_qrag("ask", "--questions", str(batch), "--index", str(hop_index))
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 2
    notes = [ln for ln in proc.stderr.splitlines() if ln.startswith("note:")]
    assert len(notes) == 1 and re.fullmatch(
        r"note: question long-one is \d{4} tokens long; retrieval reads only its first 64 "
        r"\(put the key words first\)",
        notes[0],
    ), proc.stderr


# ---- failed training leaves nothing ------------------------------------------------------
def test_failed_train_validation_creates_no_output(tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    write_examples(two_hop_task(6, seed=0), data)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(data.read_text() + "not json\n")
    out = tmp_path / "model"
    proc = run_qrag("train", str(bad), "--out", str(out), "--updates", "1")
    assert proc.returncode != 0 and "bad.jsonl:7" in proc.stderr
    assert not out.exists()
    proc = run_qrag(
        "train",
        str(data),
        "--eval",
        str(tmp_path / "missing.jsonl"),
        "--out",
        str(out),
        "--updates",
        "1",
    )
    assert proc.returncode != 0 and "missing.jsonl" in proc.stderr
    assert not out.exists()
    proc = run_qrag(
        "train",
        str(data),
        "--base",
        str(tmp_path / "no-such-model"),
        "--out",
        str(out),
        "--updates",
        "1",
    )
    assert proc.returncode != 0 and not out.exists()
    # A folder the user already had keeps exactly what it held.
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    proc = run_qrag("train", str(bad), "--out", str(out), "--updates", "1")
    assert proc.returncode != 0
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert not list(tmp_path.glob(".model*"))  # no checkpoint or temp folder either


def test_a_file_name_that_is_not_utf8_is_indexed_and_shown_escaped(tmp_path: Path) -> None:
    """A name of raw bytes (`bad\\xff\\xfe.txt`) must not stop the run: it is stored
    losslessly, found unchanged next time, shown as `\\xff` on screen, and its JSON path
    names the same file (Python's surrogate escapes, os.fsdecode)."""
    docs = tmp_path / "docs"
    docs.mkdir()
    odd = os.path.join(os.fsencode(docs), b"bad\xff\xfe.txt")
    with open(odd, "wb") as fh:
        fh.write(b"The lighthouse keeper of Brevik rows to Calder.\n")
    (docs / "good.txt").write_text("Ines Varga is a weaver in Dunmore.\n")
    index = tmp_path / "idx"
    first = run_qrag("index", str(docs), "--index", str(index), "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["files_total"] == 2
    again = run_qrag("index", str(docs), "--index", str(index), "--json")
    assert json.loads(again.stdout)["unchanged"] == 2
    shown = run_qrag("ask", "Who rows to Calder?", "--index", str(index), "--steps", "1")
    assert shown.returncode == 0 and "bad\\xff\\xfe.txt:1-1" in shown.stdout
    found = run_qrag("ask", "Who rows to Calder?", "--index", str(index), "--steps", "1", "--json")
    path = json.loads(found.stdout)["evidence"][0]["path"]
    assert os.fsencode(path) == odd


def test_ctrl_c_while_the_cli_is_still_importing_ends_in_one_line(tmp_path: Path) -> None:
    """Ctrl-C lands in the first tenth of a second of a run (importing typer and rich)
    as often as later: the entry point ends it as `interrupted`, exit code 130, no
    traceback. The import is made to be interrupted, so the test does not race a timer."""
    script = (
        "import builtins, sys\n"
        "real = builtins.__import__\n"
        "def interrupted(name, *args, **kwargs):\n"
        "    if name == 'qrag_cli.cli':\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, *args, **kwargs)\n"
        "builtins.__import__ = interrupted\n"
        "sys.argv = ['qrag', 'status']\n"
        "from qrag_cli.launch import main\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 130 and proc.stderr == "interrupted\n"


@pytest.mark.parametrize("where", [".", "..", "./"])
def test_index_in_the_current_folder_or_above_is_refused(
    tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "note.txt").write_text("Ines Varga is a weaver in Dunmore.\n")
    monkeypatch.chdir(docs)
    proc = run_qrag("index", ".", "--index", where)
    assert proc.returncode == 2 and "current folder or one above it" in proc.stderr
    assert sorted(p.name for p in docs.iterdir()) == ["note.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs"]


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ('{"question": 5}', 'expected {"question": "..."} with a non-empty string'),
        ('{"question": ["a"]}', 'expected {"question": "..."} with a non-empty string'),
        ('{"question": "q", "id": true}', '"id" must be a string or an integer'),
        ('{"question": ' + "[" * 100_000 + "]" * 100_000 + "}", "not JSON (nested too deeply)"),
    ],
)
def test_bad_question_lines_are_named_by_file_and_line(tmp_path: Path, line: str, why: str) -> None:
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "fine"}\n' + line + "\n")
    proc = run_qrag("ask", "--questions", str(questions), "--index", str(tmp_path / "none"))
    assert proc.returncode != 0 and proc.stderr == f"error: {questions}:2: {why}\n"


def test_deeply_nested_training_line_is_a_bad_line(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    write_examples(two_hop_task(3, seed=1), data)
    with data.open("a") as fh:
        fh.write("[" * 100_000 + "]" * 100_000 + "\n")
    proc = run_qrag("train", str(data), "--out", str(tmp_path / "m"), "--updates", "1")
    assert proc.returncode != 0 and f"{data}:4: not JSON (nested too deeply)" in proc.stderr
    assert "internal error" not in proc.stderr and not (tmp_path / "m").exists()


@pytest.mark.parametrize("error", ["sqlite", "oserror"])
def test_a_full_disk_is_said_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: str
) -> None:
    import errno
    import sqlite3

    from qrag_cli.store import IndexWriter

    def full(*args: object, **kwargs: object) -> None:
        if error == "sqlite":
            raise sqlite3.OperationalError("database or disk is full")
        raise OSError(errno.ENOSPC, "No space left on device")

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "note.txt").write_text("Ines Varga is a weaver in Dunmore.\n")
    monkeypatch.setattr(IndexWriter, "add_file", full)
    proc = run_qrag("index", str(docs), "--index", str(tmp_path / "idx"))
    assert proc.returncode == 1 and proc.stderr.startswith("error: disk full: ")
    assert proc.stderr.count("\n") == 1 and "internal error" not in proc.stderr
