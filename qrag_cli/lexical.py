"""Exact-match evidence: BM25 over chunk texts through SQLite FTS5, on disk and in memory.

A 22M-parameter dense encoder cannot match invented names, identifiers, error codes or
keys; BM25 can. One implementation serves both places Q is computed: the index's
`chunks_fts` table (kept in the same SQLite transactions as the chunks, see store/)
and a throwaway in-memory table for training and evaluation episodes, so a model is
trained on exactly the lexical signal `qrag ask` gives it.

Queries are bags of terms OR-ed together; FTS5's bm25() (k1 = 1.2, b = 0.75) scores every
chunk that holds at least one of them. An index also stores each term's postings, from
which `Searcher` computes the same scores without FTS5's row-by-row cost
(store/postings.py). A term found in more than half of the chunks
scores ~0 there (FTS5 floors its IDF): it cannot tell chunks apart.
"""

from __future__ import annotations

import functools
import re
import sqlite3
import unicodedata
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np

from qrag_cli import qspec

FTS_TABLE = "chunks_fts"
# No stemming: Porter turns the name "Ines" into "in" and "Brevik's" keys into others; exact
# names and identifiers are what this term is for (the dense term covers word forms).
TOKENIZE = "unicode61 remove_diacritics 2"
# A query is cut to its first terms (a whole picked chunk is ~100 words); recorded in
# each model's Q registry (qspec.FIXED).
MAX_TERMS = int(qspec.PARTS["question_bm25"][1]["max_terms"])  # type: ignore[call-overload]
# How the lexical queries are read (a model's `lexical_query`; qfeatures.lexical_queries): the
# picked-chunk term's words, and under "names" the question term's phrases too.
PICKED_QUERIES = ("chunk", "names")


def bad_query(value: object) -> str | None:
    """Why `value` is not a picked-chunk query (the flag, the training settings and a
    model folder all check with this), or None when it is one."""
    if value in PICKED_QUERIES:
        return None
    return f"must be one of {', '.join(PICKED_QUERIES)}, not {value!r}"


# Function words carry no evidence; left in, a long query matches every chunk.
STOPWORDS = frozenset(
    """
a about above after again against all also am an and any are as at be because been before
being below between both but by can could did do does doing down during each few for from
further had has have having he her here hers herself him himself his how i if in into is it
its itself just me more most my myself no nor not now of off on once only or other our ours
ourselves out over own same she should so some such than that the their theirs them
themselves then there these they this those through to too under until up very was we were
what when where which while who whom why will with would you your yours yourself yourselves
""".split()
)

_WORD = re.compile(r"[^\W_]+")  # letters and digits, as FTS5's unicode61 tokenizer splits
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def _plain(text: str) -> str:
    if text.isascii():  # nothing to decompose (most text; this runs on every pick, every step)
        return text
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def terms(text: str) -> list[str]:
    """Lower-cased content words of `text` without diacritics (as the FTS5 tokenizer
    stores them), first occurrence order, no repeats."""
    return list(_terms(text))


@functools.lru_cache(maxsize=16384)
def _terms(text: str) -> tuple[str, ...]:
    # Cached by text: every step of an episode reads the same candidates' sentences again
    # (the order term, the overlap rule, the trail).
    return tuple(
        dict.fromkeys(
            w
            for w in (m.group(0).lower() for m in _WORD.finditer(_plain(text)))
            if w not in STOPWORDS
        )
    )


def name_words(text: str) -> set[str]:
    """The terms of `text` written somewhere in it with a capital letter, or with letters
    and digits together: names, keys, codes ("Kurt", "Lind", "ABCDE", "x86"), not prose.
    Bare numbers are left out: they are values and years rather than the name of a next
    hop, and with chunk overlap a picked chunk's own number leads to its neighbour."""
    out = set()
    for word in (m.group(0) for m in _WORD.finditer(_plain(text))):
        low = word.lower()
        if low in STOPWORDS or word.isdigit():
            continue
        if word != low or any(c.isdigit() for c in word):
            out.add(low)
    return out


_JOINS_NAME = re.compile(r"[ \t'\u2019-]+")  # "Sandra Nord", "Jean-Paul", "O'Brien"


def name_runs(text: str) -> list[tuple[str, ...]]:
    """The names of several words in `text` (see `name_words`): name words standing next to
    each other, apart only by spaces, hyphens or apostrophes ("Sandra Nord" -> ("sandra",
    "nord")). A person or a title of several words is one run; its surname alone is not
    it, and a name of one word is no run."""
    plain = _plain(text)
    runs: list[list[str]] = []
    end = -1
    for m in _WORD.finditer(plain):
        word, low = m.group(0), m.group(0).lower()
        is_name = (
            low not in STOPWORDS
            and not word.isdigit()
            and (word != low or any(c.isdigit() for c in word))
        )
        if not is_name:
            end = -1
            continue
        if end >= 0 and _JOINS_NAME.fullmatch(plain[end : m.start()]):
            runs[-1].append(low)
        else:
            runs.append([low])
        end = m.end()
    return [tuple(r) for r in runs if len(r) > 1]


_COMPOUND = re.compile(r"[^\W_]+(?:-[^\W_]+)+")  # "brisk-quarry", "covid-19", "x86-64"


def compounds(text: str) -> list[tuple[str, ...]]:
    """The words of `text` joined by hyphens into one ("brisk-quarry" -> ("brisk",
    "quarry")), in any case: keys, codes and compound names are one identifier, and the
    chunk about "brisk-quarry" must outrank one about "mellow-quarry" and "brisk-island"
    that holds both words apart."""
    plain = _plain(text)
    return [tuple(w.lower() for w in m.group(0).split("-")) for m in _COMPOUND.finditer(plain)]


def sentences(text: str) -> list[str]:
    """`text` cut after sentence-ending punctuation and at line breaks."""
    return [s for s in _SENTENCE_END.split(text) if s.strip()]


def _at_sentence_start(text: str, i: int) -> bool:
    head = text[:i].rstrip()
    return not head or head[-1] in ".!?" or "\n" in text[len(head) : i + 1]


def sentence_start(text: str, i: int) -> int:
    """Where the sentence that position `i` of `text` falls in starts (`i` itself when a
    sentence starts there, as `sentences` cuts)."""
    if _at_sentence_start(text, i):
        return i
    return max((m.end() for m in _SENTENCE_END.finditer(text, 0, i)), default=0)


def sentence_end(text: str, i: int) -> int:
    """Where the sentence that position `i` of `text` falls in ends (`i` itself when a
    sentence starts there)."""
    if _at_sentence_start(text, i):
        return i
    found = _SENTENCE_END.search(text, i)
    return found.start() if found else len(text)


_QUALIFIER = re.compile(r"\([^()]*\)")  # "Bob Clark (athlete)": which Bob Clark, not the name


def title_words(title: str) -> tuple[str, ...]:
    """The words of a title (stopwords too), lower-cased without diacritics, without its
    qualifier in parentheses: "Bob Clark (athlete)" and "Bob Clark" are ("bob", "clark")."""
    return tuple(m.group(0).lower() for m in _WORD.finditer(_plain(_QUALIFIER.sub(" ", title))))


def qualifier(title: str) -> list[str]:
    """The content words of a title's qualifier in parentheses: "Bob Clark (athlete)" ->
    ["athlete"]; [] without one."""
    return [w for part in _QUALIFIER.findall(title) for w in terms(part)]


class Namings:
    """Where texts name things: a title is named where its words stand together, the
    first written with a capital or as a number ("the film Places in the Heart", "a
    Canadian football player"); "the astronomical clock" names no article "Astronomical
    clock", it says what something is."""

    def __init__(self, texts: Iterable[str]) -> None:
        self.starts: dict[str, list[tuple[int, int]]] = {}  # word -> (text, position)
        self.words: list[list[str]] = []
        for t, text in enumerate(texts):
            written = [m.group(0) for m in _WORD.finditer(_plain(text))]
            self.words.append([w.lower() for w in written])
            for i, word in enumerate(written):
                if word[0].isupper() or word[0].isdigit():
                    self.starts.setdefault(word.lower(), []).append((t, i))
        self.vocabulary = {w for words in self.words for w in words}  # every word, lower-case

    def has_name(self, title: str) -> bool:
        """Whether one of the texts names `title` whole, written as a name."""
        words = title_words(title)
        if not words:
            return False
        for t, i in self.starts.get(words[0], ()):
            if tuple(self.words[t][i : i + len(words)]) == words:
                return True
        return False


# BM25 weight of the heading column against the text's 1.0: a word of the heading path
# counts as much as one in the text (FTS5 sums the columns' scores). Chosen on the layout
# bench's validation split against 0 and 2 (BENCHMARKS.md "Layouts").
HEADING_WEIGHT = float(qspec.PARTS["question_bm25"][1]["heading_weight"])  # type: ignore[arg-type]


def heading_column(path: tuple[str, ...]) -> str:
    """A heading path as the FTS5 `heading` column (and `chunks.heading`) holds it: one
    heading a line; "" for none."""
    return "\n".join(path)


def heading_path(column: str) -> tuple[str, ...]:
    """`heading_column`, read back."""
    return tuple(column.split("\n")) if column else ()


def match_expression(words: Sequence[str]) -> str:
    """An FTS5 MATCH string OR-ing quoted terms (quotes make every word a plain string;
    an entry of several words, "olga ros", is a phrase: its words in that order, in the
    text or the heading path)."""
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in words[:MAX_TERMS])


def create_table(conn: sqlite3.Connection, external: bool) -> None:
    """The FTS5 table (a chunk's text and its heading path); `external` indexes the
    `chunks` table's columns by chunk id."""
    content = ", content='chunks', content_rowid='id'" if external else ""
    conn.execute(
        f"CREATE VIRTUAL TABLE {FTS_TABLE} USING fts5(text, heading{content}, "
        f"tokenize='{TOKENIZE}')"
    )


def memory_table(rows: Iterable[tuple[int, str, str]]) -> sqlite3.Connection:
    """An in-memory FTS5 table with the index's columns and tokenizer, holding (rowid, text,
    heading column) rows."""
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    create_table(conn, external=False)
    conn.executemany(f"INSERT INTO {FTS_TABLE}(rowid, text, heading) VALUES (?, ?, ?)", rows)
    return conn


def token_instances(conn: sqlite3.Connection) -> str:
    """The name of a temp fts5vocab table listing each token FTS5 stored in `conn`'s table
    (term, doc, col, offset): FTS5 itself says what the tokens are."""
    conn.execute(
        f"CREATE VIRTUAL TABLE temp.instances USING fts5vocab(main, {FTS_TABLE}, instance)"
    )
    return "temp.instances"


@functools.lru_cache(maxsize=4096)
def query_tokens(entry: str) -> tuple[str, ...]:
    """The tokens FTS5 makes of a quoted query entry (one token: a term; several: a
    phrase). ASCII is split here: unicode61 keeps ASCII letters and digits, folds case and
    splits on everything else, as `_WORD` does (tests/test_postings.py checks the two
    agree). Other text is tokenized by FTS5 itself."""
    if entry.isascii():
        return tuple(w.lower() for w in _WORD.findall(entry))
    return fts5_tokens(entry)


def fts5_tokens(text: str) -> tuple[str, ...]:
    """The tokens FTS5's tokenizer makes of `text`, in order."""
    conn = memory_table([(1, text, "")])
    table = token_instances(conn)
    found = tuple(r[0] for r in conn.execute(f"SELECT term FROM {table} ORDER BY offset"))
    conn.close()
    return found


class StoredTerms(Protocol):
    """Per-term postings stored with an index (store/postings.py)."""

    def term_scores(self, term: str, heading_weight: float) -> tuple[np.ndarray, np.ndarray]: ...


class Searcher:
    """BM25 over one FTS5 table that does not change while this object lives (an index
    snapshot, an episode's in-memory table), remembering its latest answers.

    An episode asks the same question query at every step (and the order term asks it
    again), and FTS5 scores every chunk that matches: in a large corpus of prose, whose
    words each stand in most chunks, that was most of a step's search. With `stored`
    postings (an index's), each one-token entry is scored from them instead, exactly as
    FTS5 would (store/postings.py), and only phrases go to FTS5. The answers are the same
    arrays each time, read-only, so no caller can change what the next one gets."""

    RECENT = 32  # queries remembered: a few episodes' worth

    def __init__(self, conn: sqlite3.Connection, stored: StoredTerms | None = None) -> None:
        self.conn = conn
        self.stored = stored
        self._recent: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def bm25(self, words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(chunk ids ascending, BM25 scores > 0) of every chunk matching any of `words`."""
        if not words:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        expression = match_expression(words)
        hit = self._recent.get(expression)
        if hit is not None:
            self._recent.move_to_end(expression)
            return hit
        if self.stored is None:
            ids, scores = self._fts5(expression)
        else:
            ids, scores = self._from_postings(words[:MAX_TERMS], self.stored)
        scores = scores.astype(np.float32)
        ids.flags.writeable = False
        scores.flags.writeable = False
        self._recent[expression] = (ids, scores)
        if len(self._recent) > self.RECENT:
            self._recent.popitem(last=False)
        return ids, scores

    def _fts5(self, expression: str) -> tuple[np.ndarray, np.ndarray]:
        rows = self.conn.execute(
            f"SELECT rowid, bm25({FTS_TABLE}, 1.0, {HEADING_WEIGHT}) FROM {FTS_TABLE} "
            f"WHERE {FTS_TABLE} MATCH ?",
            (expression,),
        ).fetchall()
        ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        scores = -np.fromiter((r[1] for r in rows), np.float64, len(rows))  # lower = better
        return ids, scores

    def _from_postings(
        self, entries: Sequence[str], stored: StoredTerms
    ) -> tuple[np.ndarray, np.ndarray]:
        """FTS5's score of the OR of `entries`: the sum of each entry's own score, added in
        query order as FTS5 adds them (so the float64 sums are the same)."""
        parts: list[tuple[np.ndarray, np.ndarray]] = []
        for entry in entries:
            tokens = query_tokens(entry)
            if len(tokens) == 1:
                parts.append(stored.term_scores(tokens[0], HEADING_WEIGHT))
            elif tokens:  # a phrase: its positions are FTS5's
                parts.append(self._fts5(match_expression([entry])))
        size = max((int(ids[-1]) + 1 for ids, _ in parts if len(ids)), default=0)
        total = np.zeros(size, np.float64)
        found = np.zeros(size, bool)
        for ids, scores in parts:
            total[ids] += scores
            found[ids] = True
        ids = np.flatnonzero(found)
        return ids.astype(np.int64), total[ids]


def holds(words: set[str], entry: str) -> bool:
    """Whether a bag of terms holds a query entry: a word, or every word of a phrase."""
    return words.issuperset(entry.split())


class MemoryLexicon(Searcher):
    """An in-memory FTS5 table over an episode's chunk texts and their heading paths (ids
    = list positions; no headings: none)."""

    def __init__(
        self, texts: Iterable[str], headings: Iterable[tuple[str, ...]] | None = None
    ) -> None:
        texts = list(texts)
        paths = list(headings) if headings is not None else [()] * len(texts)
        rows = zip(range(len(texts)), texts, map(heading_column, paths), strict=True)
        super().__init__(memory_table(rows))
