"""The user's text is data: never rich markup, never control codes on a terminal.

Paths, chunk text, questions, answers and error messages are shown literally (brackets
and all); control characters are made visible as Python-style escapes; JSON keeps the
exact text.
"""

from __future__ import annotations

import io
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_qrag
from gguf_tiny import CHAT_TEMPLATE, write_tiny_gguf

from qrag_cli import render
from qrag_cli.documents import read_document

# Code points that must never reach a terminal raw: ESC, BEL, backspace, CR, DEL, C1 CSI,
# a bidi override (Trojan Source) and an isolate.
RAW_CONTROLS = ("\x1b", "\x07", "\x08", "\r", "\x7f", "\x9b", "\u202e", "\u2066")

MARKUP_TEXT = "See [the docs](http://x) and rows[idx] about zebras :smile: here.\n"
# Short enough that the table's 90-character snippet shows all of it, escapes included.
ESCAPE_TEXT = "[/bold] \x1b]0;T\x07 \x1b[2J \x9b1m \u202eab\u2066 b\x08x c\rs d\x7f\n"
HOSTILE_FILES = {
    "[red]weird[i].txt": MARKUP_TEXT,
    "esc.txt": ESCAPE_TEXT,
    "bad\nname\x1b[31m.txt": "Zebras are striped horses of the savanna.\n",
}


def assert_no_raw_controls(text: str) -> None:
    for char in RAW_CONTROLS:
        assert char not in text, f"raw {char!r} reaches the terminal: {text!r}"


# --- the sanitiser --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain text, é ü 中文 👩‍💻", "plain text, é ü 中文 👩‍💻"),  # ZWJ emoji kept
        ("[red]x[/red] [/bold] :smile:", "[red]x[/red] [/bold] :smile:"),  # clean() is not markup
        ("a\x1b]0;TITLE\x07b", "a\\x1b]0;TITLE\\x07b"),
        ("\x1b[2Jc", "\\x1b[2Jc"),
        ("c1 \x9b31m \x85 del\x7f nul\x00", "c1 \\x9b31m \\x85 del\\x7f nul\\x00"),
        ("back\x08space cr\rspoof", "back\\x08space cr\\rspoof"),
        ("\u202eevil\u202c \u2066iso\u2069", "\\u202eevil\\u202c \\u2066iso\\u2069"),
        ("line\u2028sep", "line\\u2028sep"),
        ("tab\tkept", "tab\tkept"),
        ("one\nline", "one\\nline"),
        ("undecodable \udcff byte", "undecodable \\xff byte"),  # os.fsdecode's surrogateescape
        ("lone \ud800", "lone \\ud800"),
    ],
)
def test_clean_makes_controls_visible(raw: str, shown: str) -> None:
    assert render.clean(raw) == shown


def test_clean_multiline_keeps_layout() -> None:
    assert render.clean("a\nb\tc\r\nd\re", multiline=True) == "a\nb\tc\nd\\re"
    assert render.clean("a\nb") == "a\\nb"  # one line unless the layout asks for lines


def test_snippet_is_clean_and_flat() -> None:
    shown = render.snippet("x\x1b[2J\n  y\r\n\x9bz", width=90)
    assert shown == "x\\x1b[2J y \\x9bz"
    assert len(render.snippet("\x1b" * 200, width=20)) == 20


def test_stream_is_cleaned_piece_by_piece() -> None:
    """An LLM can emit escapes token by token; a CR LF split across pieces stays a newline."""
    sink = io.StringIO()
    stream = render.TerminalStream(sink)
    for piece in ("é\x1b", "[2J", "中\r", "\nok\r", "x", "\u202e"):
        stream.write(piece)
    stream.close()
    assert sink.getvalue() == "é\\x1b[2J中\nok\\rx\\u202e"


def test_json_keeps_exact_text() -> None:
    obj = {"text": ESCAPE_TEXT + MARKUP_TEXT + "é \u2028 \udcff", "path": "bad\nname\x1b.txt"}
    line = render.json_line(obj)
    assert json.loads(line) == obj
    assert line.isprintable(), "raw controls must be JSON escapes, not bytes"
    assert "é" in line  # non-ASCII text stays readable


def test_log_is_one_safe_line(capsys) -> None:
    render.log("cannot read /tmp/[red]a\nb\x1b[2J.txt", label="error:", label_style="red")
    err = capsys.readouterr().err
    assert err == "error: cannot read /tmp/[red]a\\nb\\x1b[2J.txt\n"


def test_consoles_show_strings_as_data(capsys) -> None:
    """Even a str handed to a console directly is neither markup nor emoji nor raw control."""
    render.out.print("[bold]x[/bold] [/bold] :smile: \x1b[2J")
    out = capsys.readouterr().out
    assert out == "[bold]x[/bold] [/bold] :smile: \\x1b[2J\n"


# --- through the real CLI ---------------------------------------------------------------


@pytest.fixture
def hostile_index(tmp_path: Path) -> Path:
    root = tmp_path / "hostile"
    root.mkdir()
    for name, text in HOSTILE_FILES.items():
        (root / name).write_text(text, encoding="utf-8", newline="")
    run_qrag("index", str(root), "--model", "base", check=True)
    return root


def test_ask_table_shows_text_literally(hostile_index: Path) -> None:
    for extra in ([], ["--show-text"], ["--explain"]):
        proc = run_qrag("ask", "zebras", "--model", "base", "--steps", "5", "--no-stop", *extra)
        assert proc.returncode == 0, proc.stderr
        out = proc.stdout
        for literal in (
            "[the docs](http://x)",
            "rows[idx]",
            ":smile:",
            "[/bold]",
            "[red]weird[i].txt",
            "\\x1b]0;T\\x07",
            "\\x1b[2J",
            "\\x9b1m",
            "\\u202eab\\u2066",
            "b\\x08x",
            "d\\x7f",
            "bad\\nname\\x1b[31m.txt",
        ):
            assert literal in out, (extra, literal, out)
        assert_no_raw_controls(out)
        assert_no_raw_controls(proc.stderr)


def test_ask_json_round_trips_exact_text(hostile_index: Path) -> None:
    proc = run_qrag(
        "ask", "zebras", "--model", "base", "--steps", "5", "--no-stop", "--json", check=True
    )
    assert proc.stdout.endswith("\n") and proc.stdout[:-1].isprintable()  # escapes, no bytes
    assert_no_raw_controls(proc.stdout)
    evidence = json.loads(proc.stdout)["evidence"]
    found = {ev["path"]: ev["text"] for ev in evidence}
    assert {Path(path).name for path in found} == set(HOSTILE_FILES)
    for path, text in found.items():
        # Exactly what was indexed (the reader reads a lone CR as a line break).
        assert text.strip() == read_document(hostile_index / Path(path).name).text.strip()
    escaped = next(text for path, text in found.items() if path.endswith("esc.txt"))
    assert "[/bold] \x1b]0;T\x07 \x1b[2J \x9b1m \u202eab\u2066 b\x08x c" in escaped


def test_status_and_index_show_paths_literally(tmp_path: Path) -> None:
    root = tmp_path / "docs[red]"
    root.mkdir()
    (root / "a.txt").write_text("Zebras are striped.\n")
    index_dir = tmp_path / "idx [bold]x[/bold] [/i]"
    proc = run_qrag("index", str(root), "--index", str(index_dir), "--model", "base")
    assert proc.returncode == 0, proc.stderr
    assert "idx [bold]x[/bold] [/i]" in proc.stderr
    proc = run_qrag("status", "--index", str(index_dir))
    assert proc.returncode == 0, proc.stderr
    assert "[bold]x[/bold]" in proc.stdout  # a word of its own: a wrapped cell keeps it whole


def test_error_message_is_one_safe_line(tmp_path: Path) -> None:
    missing = tmp_path / "no [red]such[/red] [/x]\n\x1b]0;PWNED\x07\x1b[2J"
    proc = run_qrag("ask", "zebras \x1b[2J", "--index", str(missing))
    assert proc.returncode != 0
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.endswith("\n"), proc.stderr
    assert "no [red]such[/red] [/x]\\n\\x1b]0;PWNED\\x07\\x1b[2J" in proc.stderr
    assert_no_raw_controls(proc.stderr)


def test_answer_stream_is_sanitised(hostile_index: Path, tmp_path: Path) -> None:
    """A reader LLM that emits nothing but ESC and BEL bytes cannot reach the terminal."""
    gguf = write_tiny_gguf(tmp_path / "esc.gguf", emit=b"\x1b\x07")
    proc = run_qrag(
        "ask",
        "zebras",
        "--model",
        "base",
        "--answer",
        "--llm",
        str(gguf),
        "--max-tokens",
        "16",
        "--steps",
        "2",
    )
    assert proc.returncode == 0, proc.stderr
    assert "\\x1b" in proc.stdout or "\\x07" in proc.stdout
    assert_no_raw_controls(proc.stdout)
    proc = run_qrag(
        "ask",
        "zebras",
        "--model",
        "base",
        "--answer",
        "--llm",
        str(gguf),
        "--max-tokens",
        "16",
        "--steps",
        "2",
        "--json",
        check=True,
    )
    answer = json.loads(proc.stdout)["answer"]
    assert answer and set(answer) <= {"\x1b", "\x07"}  # JSON keeps the exact answer


def test_llama_logs_are_cleaned(hostile_index: Path, tmp_path: Path) -> None:
    """--verbose shows llama.cpp's logs, which quote the GGUF's own strings."""
    template = "{# \x1b]0;PWNED\x07 #}" + CHAT_TEMPLATE
    gguf = write_tiny_gguf(tmp_path / "t.gguf", chat_template=template)
    proc = run_qrag(
        "ask",
        "zebras",
        "--model",
        "base",
        "--answer",
        "--llm",
        str(gguf),
        "--max-tokens",
        "4",
        "--steps",
        "1",
        "--verbose",
        "--json",
        check=True,
    )
    assert "\\x1b]0;PWNED\\x07" in proc.stderr
    assert "\x1b" not in proc.stderr and "\x07" not in proc.stderr


def test_progress_on_a_terminal(tmp_path: Path) -> None:
    """With stderr on a terminal: the progress bar and the skip lines show names literally."""
    root = tmp_path / "[red]x[i]\x1b[2J"
    root.mkdir()
    (root / "a.txt").write_text("Zebras are striped.\n")
    (root / ".env").write_text("TOKEN=1\n")  # a secret: reported as skipped
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "qrag_cli", "index", str(root), "--model", "base"],
        stdout=subprocess.DEVNULL,
        stderr=follower,
        cwd=REPO,
        env={**os.environ, "TERM": "xterm"},
    )
    os.close(follower)
    shown = b""
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        shown += data
    os.close(leader)
    assert proc.wait(timeout=300) == 0
    text = shown.decode()
    assert "indexing" in text and "[progress.description]" not in text
    assert "[red]x[i]\\x1b[2J/.env" in text  # visible, not a cleared screen
