"""One home per concept: the atomic write every writer uses, the one binary test, the one
JSONL reader, and `asking` returning data that only the CLI and the MCP server show."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO

from qrag_cli.datasets import Example, load_examples, read_jsonl, write_examples
from qrag_cli.discover import discover
from qrag_cli.documents import read_document
from qrag_cli.files import atomic_output, atomic_write
from qrag_cli.types import DataError, Problem, ReadError


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_atomic_write_replaces_and_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    atomic_write(target, "first")
    atomic_write(target, b"second")
    assert target.read_text() == "second"
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "second" and leftovers(tmp_path) == []


def test_atomic_write_mode_is_that_of_a_new_file(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "private", "x", mode=0o600)
        atomic_write(tmp_path / "plain", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o644


def test_a_failed_jsonl_write_leaves_no_temp_file(tmp_path: Path) -> None:
    """It used to leave `.data.jsonl.XXXXXXXX.tmp` behind when the examples ran out badly."""
    path = tmp_path / "data.jsonl"
    write_examples([Example("a", "q?", ("x",), (0,))], path)

    def broken() -> Iterator[Example]:
        yield Example("b", "q?", ("y",), (0,))
        raise DataError("in.json:2: not a HotpotQA record")

    with pytest.raises(DataError):
        write_examples(broken(), path)
    assert [ex.id for ex in load_examples(path)] == ["a"]
    assert leftovers(tmp_path) == []


def test_one_jsonl_reader_names_bad_lines_or_reports_them(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text('{"question": "a"}\n\nnot json\n{"question": "b"}\n')
    with pytest.raises(DataError, match=r"q\.jsonl:3: not JSON"):
        list(read_jsonl(path))
    seen: list[Problem] = []
    rows = list(read_jsonl(path, on_problem=seen.append))
    assert [where.rsplit(":", 1)[1] for where, _ in rows] == ["1", "4"]
    assert [str(p) for p in seen] == [f"{path}:3: not JSON (Expecting value)"]


def test_jsonl_records_keep_line_separators_inside_strings(tmp_path: Path) -> None:
    """JSON carries U+2028, U+0085 and friends raw inside strings and write_examples writes
    them so: a record is cut at newlines only, and a chunk reads back as it was written."""
    odd = "a\u2028b\u2029c\x85d\x0be\x0cf\x1cg\rh"
    example = Example("odd-1", "q\u2028?", (odd, "plain"), (0,))
    path = tmp_path / "odd.jsonl"
    write_examples([example, example], path)
    assert path.read_text(encoding="utf-8").count("\n") == 2
    assert load_examples(path) == [example, example]
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))  # written on Windows
    assert load_examples(path) == [example, example]


def test_discover_and_read_document_agree_on_binary(tmp_path: Path) -> None:
    """One test of 'binary': what discover lets through, read_document reads."""
    samples = {
        "nul.txt": b"text\0more",
        "utf16.txt": "h\u00e9llo".encode("utf-16"),  # BOM + NULs: text
        "blob.dat": bytes(range(256)),
        "plain.md": b"# title\n",
    }
    for name, data in samples.items():
        (tmp_path / name).write_bytes(data)
    found = discover([tmp_path])
    admitted = {f.path.name for f in found.files}
    assert admitted == {"utf16.txt", "plain.md"}
    assert {Path(p.where).name: p.why for p in found.skipped} == {
        "nul.txt": "binary",
        "blob.dat": "binary",
    }
    for name in samples:  # a path that did not come through discover is refused alike
        if name in admitted:
            read_document(tmp_path / name)
        else:
            with pytest.raises(ReadError, match="binary file"):
                read_document(tmp_path / name)


def test_asking_returns_data_and_never_loads_the_renderer() -> None:
    code = (
        "import sys, qrag_cli.asking; "
        "print(sorted(m for m in sys.modules if m in ('qrag_cli.render', 'rich')))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert proc.stdout.strip() == "[]"
