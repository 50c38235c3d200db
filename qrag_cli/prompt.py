"""What a reader is asked and what it gives back, shared by both kinds of reader
(local_reader.py runs a GGUF through llama.cpp, served_reader.py asks an OpenAI-compatible
server): the prompt, the Answer, and the citations read from it. Which reader answers is
reader.py's job."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from qrag_cli import answer_text
from qrag_cli.answer_text import cited_numbers, label
from qrag_cli.types import Evidence

ORDERS = ("document", "retrieval")

# What a chat model is told (served models and GGUFs with a chat template). The format is
# shown, not only named: "cite as [n]" alone got almost no citations from small models.
SYSTEM_PROMPT = (
    "Answer the question from the evidence only, in a few words, and cite the evidence you "
    "used as [n], for example: Paris [2]. If the evidence does not contain the answer, say "
    "you cannot tell."
)

# A GGUF without a chat template is a base model: it continues text rather than follows
# instructions, so it gets a completion prompt with one worked example, and its answer is
# the first line it writes (a base model goes on to invent the next "Question:").
COMPLETION_INSTRUCTION = "Answer each question from its evidence in a few words; cite it as [n]."
EXAMPLE_QUESTION = "In which city was Marie Curie born?"
EXAMPLE_EVIDENCE = (
    ("Marie Curie", "Marie Curie was born in Warsaw in 1867."),
    ("Ulm", "Ulm is a city on the Danube."),
)
EXAMPLE_ANSWER = "Warsaw [1]"


@dataclass
class Answer:
    text: str
    citations: list[int]  # valid evidence numbers [n] cited, in first-cited order
    used: list[Evidence]  # evidence in the prompt, in prompt order; [n] is used[n-1]
    trimmed: list[Evidence]  # evidence dropped to fit the context, in drop order
    timings: dict[str, float] = field(default_factory=dict)


class Reader(Protocol):
    """What ask, mcp and the answer bench need of a reader, local or served."""

    source: str  # the GGUF path or the server URL, as shown to the user
    load_ms: float

    def answer(
        self,
        question: str,
        evidence: Sequence[Evidence],
        on_token: Callable[[str], None] | None = None,
    ) -> Answer: ...

    def close(self) -> None: ...


# --- the prompt ----------------------------------------------------------------------


def order_evidence(evidence: Sequence[Evidence], order: str) -> list[Evidence]:
    """Prompt order: "document" (corpus order) or "retrieval" (pick order)."""
    key = (lambda e: e.ordinal) if order == "document" else (lambda e: e.step)
    return sorted(evidence, key=key)


def evidence_block(evidence: Sequence[Evidence]) -> str:
    """Each item as `[n] Title > Section`, then its text as the file has it. The label is
    the heading path (the file's name where it has none), without folders or line numbers:
    small readers copied "[1] notes/x.md:37-37" labels back as their answer, and the user
    gets paths and lines from qrag's list of sources anyway."""
    items = [f"[{n}] {label(e)}\n{e.text.strip()}" for n, e in enumerate(evidence, 1)]
    return "\n\n".join(items) if items else "(no evidence found)"


def chat_messages(question: str, evidence: Sequence[Evidence]) -> list[dict[str, str]]:
    """The chat both kinds of reader are given (evidence already ordered)."""
    # Evidence first, bare question last: small models answer best with the question
    # nearest to where they start writing (a "Question:" header did worse).
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"{evidence_block(evidence)}\n\n{question.strip()}"},
    ]


def completion_prompt(question: str, evidence: Sequence[Evidence]) -> str:
    """The prompt of a base model (no chat template): the instruction, one worked example,
    then this question's evidence and the question; the answer follows "Answer:"."""
    example = [
        Evidence(n, 0.0, -n, title, 1, 1, text, n, heading=(title,))
        for n, (title, text) in enumerate(EXAMPLE_EVIDENCE, 1)
    ]
    return (
        f"{COMPLETION_INSTRUCTION}\n\n"
        f"Evidence:\n{evidence_block(example)}\n\n"
        f"Question: {EXAMPLE_QUESTION}\nAnswer: {EXAMPLE_ANSWER}\n\n"
        f"Evidence:\n{evidence_block(evidence)}\n\n"
        f"Question: {question.strip()}\nAnswer:"
    )


def finished_answer(
    text: str,
    used: list[Evidence],
    trimmed: list[Evidence],
    *,
    load_ms: float,
    prompt_tokens: int,
    generated: int,
    start: float,
    first: float | None,
    end: float,
    decoding_from: float | None,
) -> Answer:
    """The Answer, its citations and its timings (perf_counter seconds): `start` of the
    call, `first` piece shown, `end`. tokens_per_s is the decode speed after the first
    token when `decoding_from` is when it came (prompt evaluation excluded), else
    `generated` over the whole call."""
    if decoding_from is not None and generated > 1 and end > decoding_from:
        rate = (generated - 1) / (end - decoding_from)
    else:
        rate = generated / (end - start) if end > start else 0.0
    return Answer(
        text=text,
        citations=parse_citations(text, len(used)),
        used=used,
        trimmed=trimmed,
        timings={
            "load_ms": load_ms,
            "prompt_tokens": float(prompt_tokens),
            "first_token_ms": ((first if first is not None else end) - start) * 1000,
            "generated_tokens": float(generated),
            "tokens_per_s": rate,
            "total_ms": (end - start) * 1000,
        },
    )


def drop_last_picked(used: list[Evidence], trimmed: list[Evidence]) -> None:
    """Move the last-picked chunk from `used` to `trimmed`: it added the least to the
    retrieval, so it is the first to go when the prompt does not fit."""
    victim = max(range(len(used)), key=lambda i: used[i].step)
    trimmed.append(used.pop(victim))


def parse_citations(text: str, n_evidence: int) -> list[int]:
    """Evidence numbers cited ([n], [n, m], [n][m], [n-m], [^n]: answer_text.CITATION),
    first-cited first, valid ones only."""
    seen: list[int] = []
    for n in cited_numbers(text):
        if 1 <= n <= n_evidence and n not in seen:
            seen.append(n)
    return seen


def echoes(answer: str, question: str, evidence: Sequence[Evidence]) -> list[str]:
    """What of qrag's prompt (either kind: its instructions, worked example, labels and
    question) the answer repeats instead of answering (answer_text.echoes). One definition:
    the local reader passes over a base model's line that only echoes, and the answer bench
    counts echoes with it."""
    return answer_text.echoes(
        answer, question, evidence, (SYSTEM_PROMPT, COMPLETION_INSTRUCTION), EXAMPLE_ANSWER
    )
