"""What an answer's text says: its normalised words, and whether it repeats the prompt.

One definition (prompt.echoes fills in qrag's own prompt) for the reader, which refuses a
base model's line that only repeats its prompt (local_reader.LocalReader), and for the
answer bench, which counts such echoes for every reader (bench/answers.py).
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from pathlib import Path

from qrag_cli.types import HEADING_JOIN, Evidence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
# A citation as readers write it: [2], [1, 3], [1; 3], [1-3] (a range), [^2] (a footnote).
_ITEM = r"\^?\s*\d+(?:\s*[-\u2013]\s*\d+)?"
CITATION = re.compile(rf"\[\s*({_ITEM}(?:\s*[,;]\s*{_ITEM})*)\s*\]")
_LABEL = re.compile(r"^\s*\[\d+\]\s+\S+:\d+-\d+", re.MULTILINE)  # "[1] notes.md:4-9"
_SCAFFOLD = re.compile(r"^\s*(question|evidence|answer)\s*:", re.IGNORECASE | re.MULTILINE)


def normalise(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, one space."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(_ARTICLES.sub(" ", text).split())


def without_markers(text: str) -> str:
    """The text without its [n] citation markers."""
    return CITATION.sub(" ", text)


def cited_numbers(text: str) -> list[int]:
    """Every number the text's citations name, in order (a range gives each number in it,
    up to 32 of them; a range written backwards gives none)."""
    numbers: list[int] = []
    for group in CITATION.findall(text):
        for item in re.split(r"[,;]", group):
            ends = [int(n) for n in re.findall(r"\d+", item)]
            if len(ends) == 2:
                lo, hi = ends
                numbers.extend(range(lo, hi + 1) if 0 <= hi - lo < 32 else [])
            else:
                numbers.extend(ends)
    return numbers


def grams(text: str, n: int = 5) -> set[tuple[str, ...]]:
    """Runs of `n` normalised words: five words of the instructions in a row are copied,
    not said anew."""
    words = normalise(without_markers(text)).split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def label(ev: Evidence) -> str:
    """How the prompt names an evidence item: its heading path, else its file's name."""
    return HEADING_JOIN.join(ev.heading) if ev.heading else Path(ev.path).name


def echoes(
    answer: str,
    question: str,
    evidence: Sequence[Evidence],
    instructions: Sequence[str],
    example_answer: str,
) -> list[str]:
    """What of the prompt the answer repeats instead of answering: "label" (an evidence
    item's label line as the prompt wrote it, "[n] Title > Section", a "[n] path:lines"
    line, or a path), "prompt" (five words of the instructions in a row, the worked
    example's answer, or "Question:"/"Answer:" scaffolding) or "question" (the question,
    word for word). A bare title is not an echo: the answer is often an article's title."""
    found = []
    answered = normalise(without_markers(answer))
    label_lines = {f"[{n}] {label(ev)}" for n, ev in enumerate(evidence, 1)}
    if (
        _LABEL.search(answer)
        or any(ev.path and ev.path in answer for ev in evidence)
        or any(line.strip() in label_lines for line in answer.splitlines())
    ):
        found.append("label")
    copied = {g for text in instructions for g in grams(text)} & grams(answer)
    example = normalise(without_markers(example_answer))
    if _SCAFFOLD.search(answer) or copied or (answered and answered == example):
        found.append("prompt")
    asked = normalise(question)
    if len(asked.split()) >= 4 and asked in answered:
        found.append("question")
    return found
