"""read_document on real files: encodings, line maps, HTML, PDF and failures; sections."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qrag_cli.documents import decode_bytes, read_document, sections_of, text_sections
from qrag_cli.types import Document, ReadError, Section


def make_pdf(pages: list[str], title: str | None = None) -> bytes:
    """A minimal valid PDF, one Helvetica text line per page, with a correct xref table
    (and an Info dictionary holding `title`, if given)."""
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
    info = b""
    if title is not None:
        objs.append(f"<< /Title ({title}) >>".encode())
        info = b" /Info %d 0 R" % len(objs)
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objs, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R%s >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objs) + 1,
        info,
        xref,
    )
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


# ---------------------------------------------------------------- sections


def bodies(text: str, sections: tuple[Section, ...]) -> list[tuple[tuple[str, ...], str]]:
    """(path, body) of each section, after checking the invariants every section keeps:
    in order, non-overlapping, within the text, trimmed, non-empty."""
    end = 0
    for section in sections:
        assert end <= section.start < section.end <= len(text), section
        body = text[section.start : section.end]
        assert body == body.strip() and body, section
        end = section.end
    return [(s.path, text[s.start : s.end]) for s in sections]


def test_markdown_atx_nesting_and_bodies_without_headings() -> None:
    text = "intro\n\n# A\na text\n## B\nb text\n### C ###\nc text\n\n## D\nd text\n"
    assert bodies(text, text_sections(text, "markdown")) == [
        ((), "intro"),
        (("A",), "a text"),
        (("A", "B"), "b text"),
        (("A", "B", "C"), "c text"),
        (("A", "D"), "d text"),
    ]


def test_markdown_fences_lone_hash_and_atx_rules() -> None:
    text = (
        "# Real\n"
        "```python\n# not a heading\n~~~\n```\n"
        "~~~~\n## nor this\n~~~~\n"
        "#\n#hashtag\n    # indented code\n"
        "## C# ##\nafter\n"
    )
    assert bodies(text, text_sections(text, "markdown")) == [
        (
            ("Real",),
            "```python\n# not a heading\n~~~\n```\n~~~~\n## nor this\n~~~~\n"
            "#\n#hashtag\n    # indented code",
        ),
        (("Real", "C#"), "after"),
    ]


def test_markdown_setext_and_thematic_break() -> None:
    text = "Title\n=====\nintro\n\nPart\n----\npart text\n\n---\nstill part\n"
    assert bodies(text, text_sections(text, "markdown")) == [
        (("Title",), "intro"),
        (("Title", "Part"), "part text\n\n---\nstill part"),
    ]


def test_markdown_front_matter_title_is_outermost_and_not_body() -> None:
    text = '---\ntitle: "Guide: Setup"\ntags: [a, b]\n---\nIntro text.\n\n# Install\nRun it.\n'
    assert bodies(text, text_sections(text, "markdown")) == [
        (("Guide: Setup",), "Intro text."),
        (("Guide: Setup", "Install"), "Run it."),
    ]
    # Without a title it is still left out; two rules with no keys are not front matter.
    untitled = "---\ndraft: true\n---\nbody"
    assert bodies(untitled, text_sections(untitled, "markdown")) == [((), "body")]
    assert text_sections("---\nplain\n---\nbody", "markdown") == ()


def test_markdown_without_headings_has_no_sections() -> None:
    assert text_sections("just *text*\n\nmore\n", "markdown") == ()
    assert text_sections("", "markdown") == ()


def test_rst_levels_follow_adornment_order() -> None:
    text = (
        "=========\n Manual\n=========\n\nintro\n\n"
        "Install\n-------\n\nsteps\n\n"
        "Linux\n~~~~~\n\napt\n\n"
        "Usage\n-----\n\nrun\n\n"
        "    Quoted\n    ------\n"
    )
    assert bodies(text, text_sections(text, "rst")) == [
        (("Manual",), "intro"),
        (("Manual", "Install"), "steps"),
        (("Manual", "Install", "Linux"), "apt"),
        (("Manual", "Usage"), "run\n\n    Quoted\n    ------"),
    ]
    # An underline shorter than its title is not one.
    assert text_sections("Title\n===\n\nbody\n", "rst") == ()


ARTICLES = (
    "Scott Derrickson\n"
    "Scott Derrickson (born July 16, 1966) is an American director, screenwriter and producer.\n"
    "\n"
    "Ed Wood\n"
    "Ed Wood is a 1994 American biographical period comedy-drama film.\n"
    "It was directed by Tim Burton.\n"
)


def test_plain_text_title_lines() -> None:
    assert bodies(ARTICLES, text_sections(ARTICLES, "text")) == [
        (
            ("Scott Derrickson",),
            "Scott Derrickson (born July 16, 1966) is an American director, screenwriter and "
            "producer.",
        ),
        (
            ("Ed Wood",),
            "Ed Wood is a 1994 American biographical period comedy-drama film.\n"
            "It was directed by Tim Burton.",
        ),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "1 Mary moved to the bathroom.\n2 John went to the hallway.\n"
        "3 Where is Mary? \tbathroom\t1\n",
        "It was a dark and stormy night. The rain fell in torrents, except at\n"
        "occasional intervals, when it was checked by a violent gust of wind.\n\n"
        "The lamps struggled against the darkness.\n",
        "The meeting was held in the small town of\nSpringfield, where the mayor spoke.\n",
        "name,age,city\nAlice,30,New York City\nBob,25,Boston\n",
        "2024-01-01 12:00:00 INFO server started\n"
        "2024-01-01 12:00:01 INFO listening on port 8080 with four workers and a backlog\n",
        "Roses are red\nViolets are blue\n\nJohn Smith\n123 Main Street\n",
        "- item one\n- item two is longer than the first\n",
    ],
    ids=["babi", "prose", "wrapped", "csv", "log", "verse-address", "list"],
)
def test_plain_text_without_titles(text: str) -> None:
    assert text_sections(text, "text") == ()


def test_code_definitions_keep_their_line() -> None:
    text = (
        "import re\n\n\n"
        "class Parser:\n"
        "    @staticmethod\n"
        "    def parse(text):\n"
        "        return text\n\n"
        "    async def close(self):\n"
        "        pass\n\n\n"
        "def main():\n"
        "    Parser.parse('x')\n"
    )
    assert bodies(text, text_sections(text, "code")) == [
        ((), "import re"),
        (("Parser",), "class Parser:"),
        (("Parser", "parse"), "@staticmethod\n    def parse(text):\n        return text"),
        (("Parser", "close"), "async def close(self):\n        pass"),
        (("main",), "def main():\n    Parser.parse('x')"),
    ]


def test_code_brace_languages() -> None:
    text = (
        "package main\n\n"
        "// Start runs the server.\n"
        "func (s *Server) Start() error {\n\treturn nil\n}\n\n"
        "type Server struct {\n\tport int\n}\n\n"
        "impl<T> Stack<T> {\n    pub fn push(&mut self) {}\n}\n"
    )
    assert [path for path, _ in bodies(text, text_sections(text, "code"))] == [
        (),
        ("Start",),
        ("Server",),
        ("Stack",),
    ]
    assert text_sections(text, "code")[1] == Section(
        text.index("// Start"), text.index("}\n\ntype") + 1, ("Start",)
    )


def test_kinds_without_text_sections() -> None:
    for kind in ("html", "pdf", "other"):
        assert text_sections("# A\nbody", kind) == ()


SECTIONED_HTML = """<html><head><title>Site | Page</title></head><body>
<p>lead</p>
<h1>Guide</h1><p>guide text</p>
<h2>Install</h2><p>install text</p>
<h3>Linux</h3><p>apt</p>
<h2>Usage</h2><p>usage text</p>
</body></html>"""


def test_html_heading_paths_and_bodies(tmp_path: Path) -> None:
    doc = read_document(write(tmp_path / "s.html", SECTIONED_HTML.encode()))
    assert bodies(doc.text, doc.sections) == [
        ((), "lead"),
        (("Guide",), "guide text"),
        (("Guide", "Install"), "install text"),
        (("Guide", "Install", "Linux"), "apt"),
        (("Guide", "Usage"), "usage text"),
    ]
    # Headings and the <title> are in the text (and its line map), but in no body.
    assert "Site | Page" in doc.text and "Install" in doc.text
    for heading in ("Site | Page", "Guide", "Install", "Linux", "Usage"):
        assert all(heading not in body for _, body in bodies(doc.text, doc.sections))
    assert line_of(doc, doc.text.index("apt")) == 5


def test_html_title_names_a_page_without_h1(tmp_path: Path) -> None:
    page = "<title>My  page</title><p>intro</p><h2>Part</h2><p>part text</p>"
    doc = read_document(write(tmp_path / "t.html", page.encode()))
    assert bodies(doc.text, doc.sections) == [
        (("My page",), "intro"),
        (("My page", "Part"), "part text"),
    ]
    assert read_document(write(tmp_path / "n.html", b"<p>no headings</p>")).sections == ()


def test_existing_html_fixture_gets_sections(tmp_path: Path) -> None:
    doc = read_document(write(tmp_path / "p.html", HTML.encode()))
    assert [path for path, _ in bodies(doc.text, doc.sections)] == [("Big heading",)]


def test_pdf_metadata_title(tmp_path: Path) -> None:
    doc = read_document(write(tmp_path / "t.pdf", make_pdf(["One", "Two"], title="The Report")))
    assert doc.sections == (Section(0, len(doc.text), ("The Report",)),)
    untitled = read_document(write(tmp_path / "u.pdf", make_pdf(["One"], title="doc1.docx")))
    assert untitled.sections == ()


def test_read_document_fills_sections(tmp_path: Path) -> None:
    doc = read_document(write(tmp_path / "r.md", b"# Top\r\n\r\ntext\r\n## Sub\r\nmore\r\n"))
    assert bodies(doc.text, doc.sections) == [(("Top",), "text"), (("Top", "Sub"), "more")]
    assert sections_of(doc) == doc.sections
    assert read_document(write(tmp_path / "a.txt", ARTICLES.encode())).sections != ()
    assert read_document(write(tmp_path / "m.py", b"def f():\n    pass\n")).sections == (
        Section(0, 17, ("f",)),
    )


def test_sections_of_defaults_to_whole_text() -> None:
    assert sections_of(Document("plain", "text", ((0, 1),))) == (Section(0, 5),)
