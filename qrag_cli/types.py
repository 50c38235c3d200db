"""Plain data shared by every layer, and the error family. Standard library only."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class QragError(Exception):
    """A failure the user can act on. The message is one sentence that names the fix."""

    exit_code = 1


class UsageError(QragError):
    """Bad arguments or input given on the command line."""

    exit_code = 2


class NoIndexError(QragError):
    """The index asked for does not exist yet."""


class IndexMismatchError(QragError):
    """The index was built with another model or chunking than the one asked for."""


class CorruptIndexError(QragError):
    """Index files are missing, truncated or inconsistent."""


class ModelError(QragError):
    """A model folder cannot be found or loaded."""


class ReadError(QragError):
    """One file could not be read; the indexer reports it and carries on."""


class DataError(QragError):
    """A data file (questions, training JSONL) has a bad line."""


class LLMError(QragError):
    """The reader LLM cannot be loaded or cannot fit the evidence."""


class ConfigError(QragError):
    """config.toml or a qrag environment variable holds a bad value."""


@dataclass(frozen=True)
class Problem:
    """Something left out and carried on past: a file not indexed, a data line or question
    skipped. The one way every layer reports one (never dropped silently); the CLI shows
    `str(problem)`, one line."""

    where: str  # a path as shown to the user, or path:line
    why: str

    def __str__(self) -> str:
        return f"{self.where}: {self.why}"


OnProblem = Callable[[Problem], None]


def ignore_problem(problem: Problem) -> None:
    """The default OnProblem of a library call whose caller did not ask to hear."""


@dataclass(frozen=True)
class Document:
    """Text extracted from one file, with a map back to source lines.

    `line_map` is a sorted list of (char offset in `text`, source line number): the
    character at that offset and those after it, up to the next entry, come from that
    line. For PDFs the "line" is the page number.
    """

    text: str
    kind: str
    line_map: tuple[tuple[int, int], ...]
    sections: tuple[Section, ...] = ()
    """The document's structure: its bodies under each heading, in order (documents.py).
    Empty: one section, the whole text, with no heading. Heading lines themselves belong to
    no section (they are its `path`), so no chunk repeats them in its text."""


@dataclass(frozen=True)
class Section:
    """The body of one section of a Document: text[start:end], under the heading path
    `path` (outermost first: file title > section > subsection; for code the enclosing
    definitions). `path` is () for text before any heading, or in a file without any."""

    start: int
    end: int
    path: tuple[str, ...] = ()


HEADING_JOIN = " > "  # how a heading path is shown and embedded: "Title > Section"


def contextual_text(heading: tuple[str, ...], text: str) -> str:
    """What E_a embeds of a chunk (and the bench's BM25 baseline reads): its heading path
    on a line of its own (a contextual header), then its text. A chunk cut from the middle
    of a section says which article and section it belongs to; without a heading it is
    its text. (E_s reads a pick under its own section title only: qstate.read.)"""
    if not heading:
        return text
    return HEADING_JOIN.join(heading) + "\n" + text


@dataclass(frozen=True)
class Chunk:
    """A token-bounded piece of one file."""

    text: str
    seq: int  # position of the chunk inside its file (0, 1, ...)
    start_line: int
    end_line: int
    start_byte: int  # UTF-8 byte offsets into the extracted text
    end_byte: int
    n_tokens: int  # cl100k_base tokens
    heading: tuple[str, ...] = ()  # the heading path of the section it was cut from


@dataclass(frozen=True)
class Evidence:
    """One picked chunk, as ask, the reader and evaluation see it."""

    step: int
    q: float
    chunk_id: int
    path: str
    start_line: int
    end_line: int
    text: str
    ordinal: int  # position in corpus (document) order
    alternatives: tuple[tuple[int, float], ...] = field(default=())
    heading: tuple[str, ...] = ()  # the heading path of the section it comes from
    bm25_max: tuple[float, float] | None = None
    """Raw BM25 maxima of the two lexical queries over the chunks left at this step (what
    the stop rule reads; qfeatures.lexical_features); None for a dense Q."""


STOP_REASONS = ("complete", "budget", "exhausted")
"""Why an episode ends: the stop rule judged the evidence complete, the step ceiling,
or no chunks left."""


def stop_name(stored: str) -> str:
    """A stop reason as named today: "threshold" (the name before "complete") is read as
    "complete", for anything that kept the old value."""
    return "complete" if stored == "threshold" else stored


@dataclass
class Episode:
    """The outcome of one retrieval episode."""

    question: str
    evidence: list[Evidence]
    stop: str
    """Why it ended: "complete" (the model's stop rule judged the evidence complete),
    "budget" (the step ceiling) or "exhausted" (no chunks left)."""
    more_expected: bool | None = None
    """Budget stops of a model with a stop rule: True when its rule would not have fired
    at the next step (the evidence is likely incomplete). None: no stop rule applied."""
    question_vec: Any = field(default=None, repr=False, compare=False)
    """E_s of the question alone (the first step's state vector, a numpy array): what a
    stop head's count model reads (stop.CountModel); None where no step ran."""
