"""read_document on real files: encodings, line maps, HTML, PDF and failures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qrag_cli.documents import decode_bytes, read_document
from qrag_cli.types import Document, ReadError


def make_pdf(pages: list[str]) -> bytes:
    """A minimal valid PDF, one Helvetica text line per page, with a correct xref table."""
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(len(pages)))
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for i, text in enumerate(pages):
        content = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        objs.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % (5 + 2 * i)
        )
        objs.append(b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objs, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return bytes(out)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def line_of(doc: Document, offset: int) -> int:
    """Source line of the char at `offset`, as a consumer of line_map would compute it."""
    return [line for start, line in doc.line_map if start <= offset][-1]


def test_utf8_text_line_map(tmp_path: Path) -> None:
    doc = read_document(write(tmp_path / "a.txt", "alpha\nβeta\n\ngamma\n".encode()))
    assert doc == Document("alpha\nβeta\n\ngamma\n", "text", ((0, 1), (6, 2), (11, 3), (12, 4)))


def test_utf8_bom_is_stripped(tmp_path: Path) -> None:
    doc = read_document(write(tmp_path / "b.txt", b"\xef\xbb\xbfhello\nworld"))
    assert doc.text == "hello\nworld"
    assert doc.line_map == ((0, 1), (6, 2))


def test_utf16_with_bom(tmp_path: Path) -> None:
    doc = read_document(write(tmp_path / "u16.txt", "naïve\r\ntext".encode("utf-16")))
    assert doc.text == "naïve\ntext"
    assert doc.line_map == ((0, 1), (6, 2))


def test_latin1_comes_out_readable(tmp_path: Path) -> None:
    assert read_document(write(tmp_path / "l.txt", b"caf\xe9")).text == "café"
    prose = ("Les élèves ont été à l'école. " * 20).encode("latin-1") + b"x" * 2000
    assert "élèves" in read_document(write(tmp_path / "fr.txt", prose)).text


def test_mostly_utf8_keeps_utf8_with_replacement() -> None:
    text = decode_bytes("déjà vu, ça marche ".encode() * 10 + b"\xff")
    assert text.startswith("déjà vu") and text.endswith("\ufffd")


def test_crlf_and_cr_line_map(tmp_path: Path) -> None:
    doc = read_document(write(tmp_path / "crlf.txt", b"one\r\ntwo\rthree\r\n"))
    assert doc.text == "one\ntwo\nthree\n"
    assert doc.line_map == ((0, 1), (4, 2), (8, 3))


def test_huge_single_line(tmp_path: Path) -> None:
    data = b"word " * (1024 * 1024)  # 5 MiB, no newline
    doc = read_document(write(tmp_path / "big.txt", data))
    assert len(doc.text) == len(data)
    assert doc.line_map == ((0, 1),)


def test_empty_file(tmp_path: Path) -> None:
    assert read_document(write(tmp_path / "e.md", b"")) == Document("", "markdown", ())


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("n.md", "markdown"),
        ("n.markdown", "markdown"),
        ("n.rst", "rst"),
        ("n.py", "code"),
        ("n.toml", "code"),
        ("Makefile", "code"),
        ("n.txt", "text"),
        ("n.weird", "text"),
        ("noext", "text"),
    ],
)
def test_kinds_keep_raw_text(tmp_path: Path, name: str, kind: str) -> None:
    raw = "# Title\n\n*emph* `code`\n"
    doc = read_document(write(tmp_path / name, raw.encode()))
    assert (doc.kind, doc.text) == (kind, raw)


HTML = """<!DOCTYPE html>
<html><head><title>My &amp; page</title>
<style>body { color: red }</style>
<script>var x = "<p>not text</p>";</script>
</head>
<body>
<h1>Big   heading</h1>
<p>First paragraph
continues here &lt;ok&gt;.</p>
<!-- a comment -->
<ul><li>one</li><li>two</li></ul>
<noscript>enable js</noscript><template><p>tmpl</p></template>
<p>last<br>line</p>
</body></html>
"""


def test_html_visible_text_and_lines(tmp_path: Path) -> None:
    doc = read_document(write(tmp_path / "p.html", HTML.replace("\n", "\r\n").encode()))
    assert doc.kind == "html"
    assert doc.text == (
        "My & page\n\nBig heading\n\nFirst paragraph continues here <ok>.\n\none\ntwo\n\nlast\nline"
    )
    for hidden in ("color", "var x", "not text", "comment", "enable js", "tmpl"):
        assert hidden not in doc.text
    expected = {"My &": 2, "Big": 7, "First": 8, "continues": 9, "one": 11, "two": 11, "last": 13}
    for needle, line in expected.items():
        assert line_of(doc, doc.text.index(needle)) == line, needle
    assert line_of(doc, len(doc.text) - 1) == 13
    offsets = [o for o, _ in doc.line_map]
    assert offsets == sorted(offsets)


def test_pdf_pages(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    doc = read_document(write(tmp_path / "d.pdf", make_pdf(["Hello page one", "Second page"])))
    assert doc == Document("Hello page one\n\nSecond page", "pdf", ((0, 1), (16, 2)))
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize(
    "data",
    [b"%PDF-1.4\ngarbage that is not a pdf\n", make_pdf(["truncated"])[:300]],
)
def test_broken_pdf_raises(tmp_path: Path, capfd: pytest.CaptureFixture[str], data: bytes) -> None:
    path = write(tmp_path / "bad.pdf", data)
    with pytest.raises(ReadError, match=r"bad\.pdf: cannot read PDF: "):
        read_document(path)
    assert capfd.readouterr().err == ""  # pypdf's warnings are silenced


def test_directory_cannot_be_read(tmp_path: Path) -> None:
    # Fails even as root, unlike a chmod 000 file.
    (tmp_path / "dir.txt").mkdir()
    with pytest.raises(ReadError, match=r"dir\.txt: "):
        read_document(tmp_path / "dir.txt")


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.txt")
    with pytest.raises(ReadError, match="not a regular file"):
        read_document(tmp_path / "pipe.txt")


def test_missing_and_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ReadError, match="No such file"):
        read_document(tmp_path / "missing.txt")
    path = write(tmp_path / "locked.txt", b"secret")
    path.chmod(0)
    if _can_open(path):
        pytest.skip("running as root: file permissions are not enforced")
    with pytest.raises(ReadError, match="Permission denied"):
        read_document(path)


def _can_open(path: Path) -> bool:
    try:
        path.open("rb").close()
    except PermissionError:
        return False
    return True


def test_binary_with_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(ReadError, match="binary"):
        read_document(write(tmp_path / "blob.dat", b"\x00\x01\x02binary"))


def test_html_declared_charset(tmp_path: Path) -> None:
    page = '<html><head><meta charset="windows-1252"></head><body><p>“Quoted” café</p>'
    doc = read_document(write(tmp_path / "w.htm", page.encode("cp1252")))
    assert doc.text == "“Quoted” café"
    assert doc.line_map == ((0, 1),)
