"""Turn one file into a `Document`: its searchable text plus a map back to source lines.

Markdown, reStructuredText and code are kept raw, since that is what users search for and
cite. HTML is reduced to its visible text; PDFs give their text layer, mapped to pages.
"""

from __future__ import annotations

import codecs
import io
import logging
import os
import re
import stat
from html.parser import HTMLParser
from pathlib import Path

from qrag_cli.types import Document, ReadError

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
    return Document(text, kind, _line_starts(text))


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
    return Document("\n\n".join(parts), "pdf", tuple(line_map))


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

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HIDDEN:
            self.hidden += 1
        elif tag in ("td", "th"):
            self.pending_space = True
        self._block(tag)
        if tag == "pre":
            self.pre += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        self._block(tag)
        if tag == "pre":
            self.pre = max(0, self.pre - 1)

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
    return Document("".join(parser.parts), "html", tuple(parser.line_map))
