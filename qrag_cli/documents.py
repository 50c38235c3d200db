"""Turn one file into a `Document`: its searchable text plus a map back to source lines.

Markdown, reStructuredText and code are kept raw, since that is what users search for and
cite. HTML is reduced to its visible text; PDFs give their text layer, mapped to pages.

A Document also carries its *sections*: the bodies under each heading, with the heading
path above them (title > section > subsection; for code, the enclosing definitions). The
chunker cuts each section on its own and puts the path in front of every chunk, so a chunk
from the middle of an article still says which article it is. Heading lines belong to no
section (they are the path), except in code, where a definition line is part of its body.
Headings are found from the raw text (markdown, rst, plain text, code: `text_sections`) or
while extracting (HTML headings, a PDF's metadata title). A text with no heading has no
sections: `sections_of` then gives one section, the whole text.
"""

from __future__ import annotations

import codecs
import io
import logging
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING

from qrag_cli.types import Document, ReadError, Section

if TYPE_CHECKING:
    import pypdf

# pypdf logs a warning for every small deviation from the spec; real-world PDFs are full of
# them and they would bury qrag's own output.
logging.getLogger("pypdf").setLevel(logging.ERROR)


def _words(s: str) -> list[str]:
    return s.split()


_KINDS: dict[str, str] = {
    **dict.fromkeys(_words("md markdown mdown mkd"), "markdown"),
    "rst": "rst",
    **dict.fromkeys(_words("html htm xhtml"), "html"),
    "pdf": "pdf",
    **dict.fromkeys(_words("txt text log csv tsv"), "text"),
    **dict.fromkeys(
        _words(
            "py pyi js mjs cjs jsx ts tsx go rs c h cc cpp cxx hpp hh java kt kts scala rb php "
            "pl pm lua r jl swift m mm cs fs vb dart ex exs erl hs ml mli clj sql sh bash zsh "
            "fish ps1 bat toml yaml yml json jsonc ini cfg conf xml css scss less vue svelte "
            "proto graphql tf nix cmake mk gradle el vim zig"
        ),
        "code",
    ),
}
_CODE_NAMES = frozenset({"makefile", "dockerfile", "gnumakefile", "justfile", "rakefile"})
_NON_ASCII_CHAR = re.compile("[^\x00-\x7f\ufffd]")
# UTF-16/32 text is full of NUL bytes, but a BOM marks it as text decode_bytes can read.
_TEXT_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_BE)
_PDF_MAGIC = b"%PDF-"
SNIFF_BYTES = 8192  # the head of a file looked at for NUL bytes (binary)
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_.:-]+)""", re.IGNORECASE)


def kind_of(path: Path) -> str:
    """Document kind from the file name; unknown names are read as plain text."""
    if path.name.lower() in _CODE_NAMES:
        return "code"
    return _KINDS.get(path.suffix.lower().lstrip("."), "text")


def _is_pdf(path: Path, head: bytes) -> bool:
    return kind_of(path) == "pdf" or head.startswith(_PDF_MAGIC)


def is_binary(path: Path, head: bytes) -> bool:
    """Whether a file starting with `head` holds no text qrag can read: a NUL byte in its
    first SNIFF_BYTES, unless it is a PDF (binary, but with a text layer) or BOM-marked
    UTF-16/32 text. The one test: discover() skips such files without reading them whole;
    read_document() refuses them, for paths that did not come through discover()."""
    return b"\0" in head[:SNIFF_BYTES] and not (_is_pdf(path, head) or head.startswith(_TEXT_BOMS))


def read_document(path: Path) -> Document:
    """Read `path`; raises ReadError("<path>: <why>") when it cannot be read or parsed."""
    kind = kind_of(path)
    try:
        # A FIFO or device would block or never end: only regular files are read.
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ReadError(f"{path}: not a regular file")
        data = path.read_bytes()
    except OSError as e:
        raise ReadError(f"{path}: {e.strerror or e}") from e
    if not data:
        return Document("", kind, ())
    if _is_pdf(path, data):
        return _read_pdf(path, data)
    if kind == "html":  # read as its visible text, whatever bytes hide in its markup
        text = _normalise_newlines(_decode_html(data))
        return _html_document(path, text)
    if is_binary(path, data):
        raise ReadError(f"{path}: binary file")
    text = _normalise_newlines(decode_bytes(data))
    return Document(text, kind, _line_starts(text), text_sections(text, kind))


def decode_bytes(data: bytes) -> str:
    """Bytes to text without ever failing: UTF-8, BOM-marked UTF-16/32, else cp1252/latin-1."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    # UTF-32 LE's BOM begins with UTF-16 LE's, so it is tested first.
    for bom, codec in (
        (codecs.BOM_UTF32_LE, "utf-32"),
        (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if data.startswith(bom):
            return data.decode(codec, errors="replace")
    text = data.decode("utf-8", errors="replace")
    bad = text.count("\ufffd") - data.count(b"\xef\xbf\xbd")  # minus genuine U+FFFD
    # Mostly-valid UTF-8 with a few broken bytes stays UTF-8. But when broken sequences are
    # as common as valid multi-byte ones, or there are no valid ones at all, it is a legacy
    # 8-bit file even if few bytes are non-ASCII (French prose in latin-1): read as UTF-8
    # every accent would become U+FFFD, while cp1252 gets them right.
    valid = len(_NON_ASCII_CHAR.findall(text))
    if valid >= bad and bad <= max(1, len(data) // 10):
        return text
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:  # five byte values are undefined in cp1252; latin-1 has all
        return data.decode("latin-1")


def line_span(doc: Document, start: int, end: int) -> str:
    """The extracted text of source lines `start`..`end` (pages, for a PDF)."""
    begin = next((off for off, line in doc.line_map if line >= start), len(doc.text))
    stop = next((off for off, line in doc.line_map if line > end), len(doc.text))
    return doc.text[begin:stop] if stop > begin else ""


def last_line(doc: Document) -> int:
    return doc.line_map[-1][1] if doc.line_map else 0


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _line_starts(text: str) -> tuple[tuple[int, int], ...]:
    """One (offset, line number) entry per line that has characters, lines counted from 1."""
    starts: list[tuple[int, int]] = []
    offset, line, n = 0, 1, len(text)
    while offset < n:
        starts.append((offset, line))
        nl = text.find("\n", offset)
        if nl < 0:
            break
        offset, line = nl + 1, line + 1
    return tuple(starts)


def _read_pdf(path: Path, data: bytes) -> Document:
    import pypdf  # imported here: only PDF users pay for loading it

    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        # Many PDFs are "encrypted" with an empty user password only to set permissions.
        if reader.is_encrypted and not reader.decrypt(""):
            raise ReadError(f"{path}: cannot read PDF: encrypted (password needed)")
        pages = list(reader.pages)
        if not pages:  # pypdf's lenient mode can "recover" garbage as a page-less document
            raise ReadError(f"{path}: cannot read PDF: no pages found")
    except ReadError:
        raise
    except Exception as e:  # pypdf raises many exception types for damaged files
        raise ReadError(f"{path}: cannot read PDF: {_short(e)}") from e
    parts: list[str] = []
    line_map: list[tuple[int, int]] = []
    offset, failures, last_error = 0, 0, ""
    for number, page in enumerate(pages, start=1):
        try:
            page_text = _normalise_newlines(page.extract_text() or "").strip()
        except Exception as e:  # one damaged page should not lose the whole document
            failures, last_error = failures + 1, _short(e)
            continue
        if not page_text:  # blank or scanned pages add nothing searchable
            continue
        if parts:
            offset += 2  # the "\n\n" joining pages
        line_map.append((offset, number))
        parts.append(page_text)
        offset += len(page_text)
    if failures == len(pages):
        raise ReadError(f"{path}: cannot read PDF: {last_error}")
    text = "\n\n".join(parts)
    title = _pdf_title(reader)
    # A PDF's text layer has no reliable headings; its metadata title names the whole file.
    sections = _build_sections(text, [_Mark(0, 0, 0, title)]) if title else ()
    return Document(text, "pdf", tuple(line_map), sections)


# Titles that only name the file the PDF was made from, not the document.
_FILE_NAME_TITLE = re.compile(r"(?i)(?:untitled|.*\.(?:docx?|pdf|tex|dvi|pptx?|odt|rtf|indd))")


def _pdf_title(reader: pypdf.PdfReader) -> str:
    try:
        metadata = reader.metadata
        title = _clean_heading(str(metadata.title or "")) if metadata else ""
    except Exception:  # damaged metadata must not cost the text
        return ""
    return "" if _FILE_NAME_TITLE.fullmatch(title) else title


def _short(e: Exception) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg[:200]


def _decode_html(data: bytes) -> str:
    if not data.startswith(codecs.BOM_UTF8):
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            # Not UTF-8: trust a declared <meta charset> before guessing.
            m = _META_CHARSET.search(data[:4096])
            try:
                codec = codecs.lookup(m.group(1).decode("ascii")).name if m else "utf-8"
            except LookupError:
                codec = "utf-8"
            # A page that claims UTF-8 but is not is left to the guessing below.
            if codec != "utf-8":
                return data.decode(codec, errors="replace")
    return decode_bytes(data)


# Elements whose content is never shown to a reader.
_HIDDEN = frozenset({"script", "style", "noscript", "template"})
# Block elements end a line of text; the bigger ones also leave a blank line, which keeps
# paragraphs apart for the chunker.
_PARAGRAPH = frozenset(
    _words(
        "p h1 h2 h3 h4 h5 h6 pre blockquote section article header footer nav aside main "
        "table ul ol dl figure form hr address details fieldset"
    )
)
_LINE = frozenset(_words("br div li tr dt dd figcaption caption summary title option legend"))
_H_TAGS = frozenset(f"h{n}" for n in range(1, 7))
# <title> is level 0: above every <hN>, like a markdown front-matter title.
_HEADING_LEVELS = {"title": 0, **{f"h{n}": n for n in range(1, 7)}}
_MAX_HTML_HEADING = 300  # chars


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.length = 0
        self.line_map: list[tuple[int, int]] = []
        self.hidden = 0  # depth inside _HIDDEN elements
        self.pre = 0  # depth inside <pre>: whitespace kept as is
        self.pending_space = False
        self.pending_breaks = 0
        self.svg = 0  # depth inside <svg>, whose <title> is a tooltip, not the page's
        self.seen_title = False
        # The heading element being read: (tag, level, offset of its first emitted char,
        # None until it emits some).
        self.heading: tuple[str, int, int | None] | None = None
        self.headings: list[tuple[int, int, int]] = []  # (start, end, level); <title>: 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HIDDEN:
            self.hidden += 1
        elif tag in ("td", "th"):
            self.pending_space = True
        elif tag == "svg":
            self.svg += 1
        self._block(tag)
        if tag == "pre":
            self.pre += 1
        if tag in _HEADING_LEVELS and not (tag == "title" and (self.svg or self.seen_title)):
            self.end_heading()  # an unclosed heading ends where the next one starts
            self.heading = (tag, _HEADING_LEVELS[tag], None)
            self.seen_title = self.seen_title or tag == "title"

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag == "svg":
            self.svg = max(0, self.svg - 1)
        self._block(tag)
        if tag == "pre":
            self.pre = max(0, self.pre - 1)
        # Any </hN> ends an open <hM>: browsers close mismatched headings the same way.
        if self.heading and (tag == self.heading[0] or {tag, self.heading[0]} <= _H_TAGS):
            self.end_heading()

    def end_heading(self) -> None:
        """Record the open heading element, if it emitted any text."""
        if self.heading and self.heading[2] is not None:
            self.headings.append((self.heading[2], self.length, self.heading[1]))
        self.heading = None

    def _block(self, tag: str) -> None:
        if tag in _PARAGRAPH:
            self.pending_breaks = max(self.pending_breaks, 2)
        elif tag in _LINE:
            # <br><br> is a blank line; other line-level tags only end the current line.
            if tag == "br":
                self.pending_breaks += 1
            else:
                self.pending_breaks = max(self.pending_breaks, 1)

    def handle_data(self, data: str) -> None:
        if self.hidden:
            return
        line = self.getpos()[0]
        if self.pre:
            for k, piece in enumerate(data.split("\n")):
                if k:
                    self.pending_breaks += 1
                if piece:
                    self._emit(piece, line + k)
            return
        # Data may span source lines: each piece is mapped to the line it came from, and
        # runs of whitespace (newlines included) collapse to one space.
        for k, piece in enumerate(data.split("\n")):
            words = piece.split()
            if k or piece[:1].isspace():
                self.pending_space = True
            if words:
                self._emit(" ".join(words), line + k)
                self.pending_space = piece[-1:].isspace()

    def _emit(self, text: str, line: int) -> None:
        if self.length:
            if self.pending_breaks:
                sep = "\n" * min(self.pending_breaks, 2)
            else:
                sep = " " if self.pending_space else ""
            self.parts.append(sep)
            self.length += len(sep)
        self.pending_breaks, self.pending_space = 0, False
        if self.heading and self.heading[2] is None:  # its text starts after the separator
            self.heading = (self.heading[0], self.heading[1], self.length)
        if not self.line_map or self.line_map[-1][1] != line:
            if self.line_map and self.line_map[-1][0] == self.length:
                self.line_map[-1] = (self.length, line)
            else:
                self.line_map.append((self.length, line))
        self.parts.append(text)
        self.length += len(text)


def _html_document(path: Path, text: str) -> Document:
    parser = _TextExtractor()
    try:
        parser.feed(text)
        parser.close()
    except Exception as e:  # HTMLParser is lenient; this only guards against the odd crash
        raise ReadError(f"{path}: cannot parse HTML: {_short(e)}") from e
    parser.end_heading()
    text = "".join(parser.parts)
    return Document(text, "html", tuple(parser.line_map), _html_sections(text, parser.headings))


def _html_sections(text: str, headings: list[tuple[int, int, int]]) -> tuple[Section, ...]:
    """Sections under the page's <hN> headings. The <title> is the outermost path element
    only on a page without an <h1>, where it is the best name the page has; otherwise it
    mostly repeats the <h1> (plus a site name). Either way its text is no section's body."""
    # An unclosed <hN> runs to the end of the page: text that long is body, not a name.
    headings = [(s, e, level) for s, e, level in headings if e - s <= _MAX_HTML_HEADING]
    has_h1 = any(level == 1 for _, _, level in headings)
    marks = [
        _Mark(start, end, level, None if level == 0 and has_h1 else _clean_heading(text[start:end]))
        for start, end, level in headings
    ]
    return _build_sections(text, marks)


# ---------------------------------------------------------------- sections


def sections_of(doc: Document) -> tuple[Section, ...]:
    """`doc`'s sections, or one section, the whole text, for a document without any."""
    return doc.sections or (Section(0, len(doc.text)),)


def text_sections(text: str, kind: str) -> tuple[Section, ...]:
    """The sections of `text`, already extracted, of document kind `kind`; () when it has no
    heading (or its kind's headings are found elsewhere: html, pdf)."""
    finder = _MARK_FINDERS.get(kind)
    return _build_sections(text, finder(_lines(text))) if finder else ()


@dataclass(frozen=True)
class _Mark:
    """A heading found in a text: text[start:end] (its own lines) is no section's body. It
    closes every open heading of level >= `level`, then opens `title` (None: a range that
    is only left out, such as front matter without a title)."""

    start: int
    end: int
    level: int
    title: str | None


def _build_sections(text: str, marks: list[_Mark]) -> tuple[Section, ...]:
    """The bodies between `marks` (sorted by start), each under the headings still open."""
    if not marks:
        return ()
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []  # (level, title), outermost first
    pos = 0
    for mark in marks:
        _add_section(sections, text, pos, mark.start, tuple(t for _, t in stack))
        stack = [(level, t) for level, t in stack if level < mark.level]
        if mark.title:
            stack.append((mark.level, mark.title))
        pos = max(pos, mark.end)
    _add_section(sections, text, pos, len(text), tuple(t for _, t in stack))
    return tuple(sections)


def _add_section(
    out: list[Section], text: str, start: int, end: int, path: tuple[str, ...]
) -> None:
    # Trimmed, so a section's offsets are exactly its words; whitespace alone is no body.
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if start < end:
        out.append(Section(start, end, path))


def _lines(text: str) -> list[tuple[int, str]]:
    """(offset, line without its newline) for every line of `text`."""
    out: list[tuple[int, str]] = []
    offset = 0
    for line in text.split("\n"):
        out.append((offset, line))
        offset += len(line) + 1
    return out


def _clean_heading(title: str) -> str:
    return " ".join(title.split())


def _blank(line: str) -> bool:
    return not line.strip()


# --- markdown

_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})(.*)")
_ATX = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t]*")
_ATX_CLOSING = re.compile(r"(?:^|[ \t]+)#+$")  # "## A ##": the closing #s are not the title
_SETEXT_UNDERLINE = re.compile(r" {0,3}(?:=+|-+)[ \t]*")
# Lines that start another block (list item, quote, html, indented code), not a paragraph.
_NOT_PARAGRAPH = re.compile(r" {4}|\t| {0,3}(?:[-*+>]|\d+[.)])(?:[ \t]|$)| {0,3}<")
_YAML_KEY = re.compile(r"[A-Za-z_][\w-]*[ \t]*:")
_YAML_TITLE = re.compile(r"title[ \t]*:[ \t]*(.*)")


def _markdown_marks(lines: list[tuple[int, str]]) -> list[_Mark]:
    marks: list[_Mark] = []
    i = 0
    front = _front_matter(lines)
    if front:
        marks.append(front[0])
        i = front[1]
    fence: tuple[str, int] | None = None  # (char, length) of the open code fence
    block_start = True  # whether lines[i] may start a paragraph (a setext title)
    while i < len(lines):
        offset, line = lines[i]
        if fence:  # nothing in a code block is a heading
            if _closes_fence(line, fence):
                fence, block_start = None, True
            i += 1
            continue
        if fence := _opens_fence(line):
            i += 1
            continue
        if m := _ATX.fullmatch(line):
            title = _clean_heading(_ATX_CLOSING.sub("", m.group(2) or ""))
            if title:
                marks.append(_Mark(offset, offset + len(line), len(m.group(1)), title))
                i, block_start = i + 1, True
                continue
        if mark := _setext(lines, i, block_start):
            marks.append(mark)
            i, block_start = i + 2, True
            continue
        block_start = _blank(line)
        i += 1
    return marks


def _setext(lines: list[tuple[int, str]], i: int, block_start: bool) -> _Mark | None:
    """lines[i] with a ===/--- underline, as a setext heading. Only a one-line paragraph
    counts: a --- under a blank line is a thematic break, and the title of a longer
    paragraph would be the whole paragraph, no heading."""
    if not block_start or i + 1 >= len(lines):
        return None
    offset, line = lines[i]
    next_offset, underline = lines[i + 1]
    if _blank(line) or _NOT_PARAGRAPH.match(line) or _SETEXT_UNDERLINE.fullmatch(line):
        return None
    if not _SETEXT_UNDERLINE.fullmatch(underline):
        return None
    level = 1 if underline.strip()[0] == "=" else 2
    return _Mark(offset, next_offset + len(underline), level, _clean_heading(line))


def _opens_fence(line: str) -> tuple[str, int] | None:
    m = _FENCE.fullmatch(line)
    # A backtick fence's info string cannot hold a backtick (CommonMark): that is inline code.
    if not m or (m.group(1)[0] == "`" and "`" in m.group(2)):
        return None
    return m.group(1)[0], len(m.group(1))


def _closes_fence(line: str, fence: tuple[str, int]) -> bool:
    char, length = fence
    body = line.lstrip(" ")
    run = body.rstrip()
    return len(line) - len(body) <= 3 and len(run) >= length and run == char * len(run)


def _front_matter(lines: list[tuple[int, str]]) -> tuple[_Mark, int] | None:
    """YAML front matter: a first line ---, key: value lines, a closing --- (or ...).
    Returns its mark (its title, if it has one, is the outermost heading) and the index of
    the first line after it. A --- ... --- pair holding no key is two thematic breaks."""
    if not lines or lines[0][1].rstrip() != "---":
        return None
    for j in range(1, len(lines)):
        offset, line = lines[j]
        if line.rstrip() in ("---", "..."):
            inside = [body for _, body in lines[1:j]]
            if not any(_YAML_KEY.match(body) for body in inside):
                return None
            return _Mark(0, offset + len(line), 0, _yaml_title(inside)), j + 1
    return None


def _yaml_title(lines: list[str]) -> str | None:
    for line in lines:
        if m := _YAML_TITLE.fullmatch(line.rstrip()):
            value = m.group(1).strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            # "title: |" or ">" starts a block scalar, which is not worth parsing here.
            return _clean_heading(value) if value not in ("", "|", ">", "|-", ">-") else None
    return None


# --- reStructuredText

_RST_ADORNMENT_CHARS = frozenset("=-~^\"'`#*+:._<>")


def _rst_adornment(line: str) -> str | None:
    """The char of an adornment line (one punctuation char repeated, at least twice)."""
    run = line.rstrip()
    if len(run) >= 2 and run[0] in _RST_ADORNMENT_CHARS and run == run[0] * len(run):
        return run[0]
    return None


def _rst_marks(lines: list[tuple[int, str]]) -> list[_Mark]:
    marks: list[_Mark] = []
    # Levels follow the order adornment styles are first met, as docutils assigns them.
    styles: dict[tuple[str, bool], int] = {}
    i, block_start = 0, True
    while i < len(lines):
        found = _rst_title(lines, i) if block_start else None
        if found:
            title, style, used = found
            level = styles.setdefault(style, len(styles) + 1)
            end_offset, end_line = lines[i + used - 1]
            marks.append(_Mark(lines[i][0], end_offset + len(end_line), level, title))
            i, block_start = i + used, True
            continue
        block_start = _blank(lines[i][1])
        i += 1
    return marks


def _rst_title(lines: list[tuple[int, str]], i: int) -> tuple[str, tuple[str, bool], int] | None:
    """(title, style, lines used) of a section title starting at lines[i]: an overline,
    title and identical underline, or a title and its underline."""
    line = lines[i][1]
    char = _rst_adornment(line)
    if char and i + 2 < len(lines):  # overline form; the title may be inset
        title = lines[i + 1][1].strip()
        under = lines[i + 2][1].rstrip()
        if (
            title
            and not _rst_adornment(title)
            and under == line.rstrip()
            and len(under) >= len(title)
        ):
            return _clean_heading(title), (char, True), 3
    if char or _blank(line) or line[0].isspace() or i + 1 >= len(lines):
        return None  # an indented "title" is a block quote's text
    under_char = _rst_adornment(lines[i + 1][1])
    if under_char and len(lines[i + 1][1].rstrip()) >= len(line.strip()):
        return _clean_heading(line), (under_char, False), 2
    return None


# --- plain text

# Plain text has no markup, so a title line is guessed, and guessed conservatively: a
# false heading misleads every chunk under it, a missed one only leaves chunks without.
_SENTENCE_PUNCT = ".!?,;:"
_CLOSERS = "\"'”’»)]}"
_LIST_OR_QUOTE = re.compile(r"(?:[-*+>#]|\d+[.)])")
_CSV_COMMA = re.compile(r",\S")
# A line ending in one of these words runs on into the next: hard-wrapped prose.
_RUN_ON_WORDS = frozenset(
    _words(
        "a an the of to in on at for with and or but nor by from as into onto that which who "
        "whose than then is are was were be been has have had our your their its his her my "
        "if when while because so not about over under between through after before during "
        "without within upon"
    )
)


def _text_marks(lines: list[tuple[int, str]]) -> list[_Mark]:
    bodies = [line for _, line in lines]
    return [
        _Mark(offset, offset + len(line), 1, _clean_heading(line))
        for i, (offset, line) in enumerate(lines)
        if _is_text_title(bodies, i)
    ]


def _is_text_title(lines: list[str], i: int) -> bool:
    """Whether lines[i] is a title line sitting directly on its body: "Scott Derrickson"
    over "Scott Derrickson (born July 16, 1966) is an American director..."."""
    line = lines[i]
    if (i and not _blank(lines[i - 1])) or i + 1 >= len(lines) or _blank(lines[i + 1]):
        return False  # a title starts a block and has a body under it
    if line[:1].isspace() or not _titleish(line):
        return False  # an indented short line is code or verse
    title, body = line.strip(), lines[i + 1].strip()
    last_word = title.split()[-1]
    if last_word.islower() and last_word in _RUN_ON_WORDS:
        return False
    if body[0].islower():  # the body continues the line's sentence: wrapped prose
        return False
    if not title[0].isalpha() and _char_class(title[0]) == _char_class(body[0]):
        return False  # lines alike from their first char: log lines, numbered rows
    # Two short lines (verse, an address) are not title and body: the body must be a
    # longer line, or a sentence.
    if len(body) <= len(title) and body.rstrip(_CLOSERS)[-1:] not in ".!?":
        return False
    return not (_titleish(body) and len(body) < 2 * len(title) + 20)


def _titleish(line: str) -> bool:
    """Whether `line` could be a title: short, not a sentence, has a letter, is not a list
    item, quote, table row or CSV record."""
    text = line.strip()
    if not text or len(text) > 120 or "\t" in text or len(text.split()) > 12:
        return False
    if text.rstrip(_CLOSERS)[-1:] in _SENTENCE_PUNCT:  # also true when nothing is left
        return False
    return (
        any(c.isalpha() for c in text)
        and not _LIST_OR_QUOTE.match(text)
        and not _CSV_COMMA.search(text)
    )


def _char_class(c: str) -> str:
    return "0" if c.isdigit() else c


# --- code

_PY_DEF = re.compile(r"([ \t]*)(?:async[ \t]+)?(?:def|class)[ \t]+([A-Za-z_]\w*)")
# Unindented definitions in brace languages (Go, Rust, JS/TS, Java, Kotlin, C++, shell...).
_BRACE_DEF = re.compile(
    r"(?:(?:export|default|pub(?:\([\w:]+\))?|public|private|protected|internal|static"
    r"|abstract|final|sealed|open|data|async|unsafe|extern)[ \t]+)*"
    r"(?:func|function\*?|fn|fun|class|struct|impl|interface|trait|enum|object|record"
    r"|type(?=[ \t]+\w+[ \t]+(?:struct|interface)\b))"
    r"(?:[ \t]*\([^)]*\))?"  # a Go method's receiver: func (s *Server) Start()
    r"(?:[ \t]*<[^>]*>)?"  # Rust generics: impl<T> Stack<T>
    r"[ \t]+"
    r"([A-Za-z_$][\w$]*)"
)
# Lines that belong to the definition below them: decorators, attributes, doc comments.
_DEF_PREAMBLE = ("@", "#[", "//", "/*", "*")


def _code_marks(lines: list[tuple[int, str]]) -> list[_Mark]:
    """Each definition opens a section at its own line, so its signature stays in its body.
    Its level is its indentation: a def closes open definitions indented as far or more."""
    marks: list[_Mark] = []
    for i, (_, line) in enumerate(lines):
        if m := _PY_DEF.match(line):
            indent, name = len(m.group(1).expandtabs(4)), m.group(2)
        elif m := _BRACE_DEF.match(line):
            indent, name = 0, m.group(1)
        else:
            continue
        first = _preamble_start(lines, i, indent)
        marks.append(_Mark(lines[first][0], lines[first][0], indent, name))
    return marks


def _preamble_start(lines: list[tuple[int, str]], i: int, indent: int) -> int:
    """Index of the first of the decorator and comment lines right above lines[i]."""
    while i > 0:
        line = lines[i - 1][1]
        body = line.lstrip()
        depth = len(line[: len(line) - len(body)].expandtabs(4))
        if not body.startswith(_DEF_PREAMBLE) or not indent <= depth <= indent + 1:
            break
        i -= 1
    return i


_MARK_FINDERS: dict[str, Callable[[list[tuple[int, str]]], list[_Mark]]] = {
    "markdown": _markdown_marks,
    "rst": _rst_marks,
    "text": _text_marks,
    "code": _code_marks,
}
